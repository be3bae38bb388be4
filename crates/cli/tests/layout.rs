//! The pure parts of `sluice cluster certs` and `sluice cluster up` (`sluice_cli::layout`):
//! `--node` parsing, the certificate plan, the port plan and the node config files, plus
//! `cluster certs` run as a process (it needs no broker).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use sluice_cli::layout::{cert_plan, parse_node_spec, LocalCluster, BASE_PORT_DEFAULT};

/// The keys `sluice-server` accepts (`crates/server/src/config.rs`, every struct
/// `deny_unknown_fields`), per table.
const TOP_KEYS: &[&str] = &[
    "data_dir",
    "listen",
    "admin_listen",
    "shards",
    "network_threads",
    "node_id",
    "advertised_addr",
    "tls",
    "storage",
    "limits",
    "cluster",
];
const TLS_KEYS: &[&str] = &["cert", "key"];
const CLUSTER_KEYS: &[&str] = &[
    "cluster_id",
    "peer_listen",
    "ca",
    "proxy",
    "raft_tick_ms",
    "nodes",
];
const NODE_KEYS: &[&str] = &["id", "addr", "peer_addr"];

fn keys_within(table: &toml::Table, allowed: &[&str], what: &str) {
    for key in table.keys() {
        assert!(allowed.contains(&key.as_str()), "{what}: unknown key {key}");
    }
}

#[test]
fn node_specs_parse() {
    assert_eq!(parse_node_spec("3"), Ok((3, vec![])));
    assert_eq!(
        parse_node_spec("1=10.0.0.1,sluice-1.example"),
        Ok((
            1,
            vec!["10.0.0.1".to_owned(), "sluice-1.example".to_owned()]
        ))
    );
    assert_eq!(parse_node_spec(" 2 = a "), Ok((2, vec!["a".to_owned()])));
    for bad in ["", "x", "0", "0=a", "1=", "1=a,,b", "-1=a", "4294967296"] {
        assert!(parse_node_spec(bad).is_err(), "{bad:?} parsed");
    }
}

#[test]
fn cert_plans_merge_nodes_specs_and_hosts() {
    let plan = cert_plan(Some(3), &[], &["lb.example".to_owned()]).unwrap();
    assert_eq!(plan.len(), 3);
    assert!(plan.iter().all(|(_, h)| h == &["lb.example".to_owned()]));
    let plan = cert_plan(
        Some(2),
        &[
            (2, vec!["10.0.0.2".to_owned()]),
            (5, vec!["10.0.0.5".to_owned(), "lb".to_owned()]),
        ],
        &["lb".to_owned()],
    )
    .unwrap();
    assert_eq!(
        plan,
        vec![
            (1, vec!["lb".to_owned()]),
            (2, vec!["10.0.0.2".to_owned(), "lb".to_owned()]),
            (5, vec!["10.0.0.5".to_owned(), "lb".to_owned()]),
        ]
    );
    assert!(cert_plan(None, &[], &[]).is_err());
    assert!(cert_plan(Some(0), &[], &[]).is_err());
    assert!(cert_plan(None, &[(1, vec![]), (1, vec![])], &[]).is_err());
}

#[test]
fn ports_follow_the_documented_plan() {
    let c = LocalCluster::plan(
        Path::new("/srv/c"),
        3,
        BASE_PORT_DEFAULT,
        "sluice",
        false,
        None,
    )
    .unwrap();
    let ports: Vec<(u16, u16, u16)> = c
        .nodes
        .iter()
        .map(|n| (n.client.port(), n.admin.port(), n.peer.port()))
        .collect();
    assert_eq!(
        ports,
        [(7001, 7081, 7101), (7002, 7082, 7102), (7003, 7083, 7103)]
    );
    assert!(c.nodes.iter().all(|n| n.client.ip().is_loopback()));
    assert_eq!(c.nodes[1].data_dir, Path::new("/srv/c/node-2/data"));
    assert_eq!(c.nodes[1].config, Path::new("/srv/c/node-2.toml"));
    assert_eq!(c.ca(), Path::new("/srv/c/certs/ca.pem"));
    for (nodes, base) in [(0, 7000), (21, 7000), (3, 0), (3, 65_433)] {
        assert!(
            LocalCluster::plan(Path::new("/x"), nodes, base, "s", false, None).is_err(),
            "{nodes} nodes at base {base}"
        );
    }
    assert!(LocalCluster::plan(Path::new("/x"), 3, 65_432, "s", false, None).is_ok());
}

#[test]
fn every_config_parses_names_every_node_and_uses_only_server_keys() {
    let dir = Path::new("/tmp/sluice \"quoted\" dir");
    let mut c = LocalCluster::plan(dir, 3, 17_000, "test-c", true, Some(2)).unwrap();
    c.network_threads = Some(1);
    let mut peers = BTreeSet::new();
    for (i, me) in c.nodes.iter().enumerate() {
        let text = c.config_toml(i).unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        keys_within(&doc, TOP_KEYS, "top level");
        assert_eq!(
            doc["node_id"].as_integer(),
            Some(i64::try_from(me.id).unwrap())
        );
        assert_eq!(doc["shards"].as_integer(), Some(2));
        assert_eq!(doc["network_threads"].as_integer(), Some(1));
        assert_eq!(doc["listen"].as_str(), Some(me.client.to_string().as_str()));
        assert_eq!(doc["advertised_addr"].as_str(), doc["listen"].as_str());
        assert_eq!(
            doc["admin_listen"].as_str(),
            Some(me.admin.to_string().as_str())
        );
        assert_eq!(
            doc["data_dir"].as_str().map(Path::new),
            Some(me.data_dir.as_path())
        );
        let tls = doc["tls"].as_table().expect("[tls]");
        keys_within(tls, TLS_KEYS, "[tls]");
        assert_eq!(tls["cert"].as_str().map(Path::new), Some(me.cert.as_path()));
        assert_eq!(tls["key"].as_str().map(Path::new), Some(me.key.as_path()));
        let cluster = doc["cluster"].as_table().expect("[cluster]");
        keys_within(cluster, CLUSTER_KEYS, "[cluster]");
        assert_eq!(cluster["cluster_id"].as_str(), Some("test-c"));
        assert_eq!(cluster["proxy"].as_bool(), Some(true));
        assert_eq!(
            cluster["ca"].as_str().map(Path::new),
            Some(dir.join("certs/ca.pem").as_path())
        );
        assert_eq!(
            cluster["peer_listen"].as_str(),
            Some(me.peer.to_string().as_str())
        );
        peers.insert(me.peer);
        let nodes = cluster["nodes"].as_array().expect("[[cluster.nodes]]");
        let mut ids = Vec::new();
        for (n, want) in nodes.iter().zip(&c.nodes) {
            let n = n.as_table().expect("a node table");
            keys_within(n, NODE_KEYS, "[[cluster.nodes]]");
            ids.push(n["id"].as_integer().expect("id"));
            assert_eq!(n["addr"].as_str(), Some(want.client.to_string().as_str()));
            // peer_addr must be an IP:port (the server reads a SocketAddr).
            let peer: std::net::SocketAddr = n["peer_addr"].as_str().unwrap().parse().unwrap();
            assert_eq!(peer, want.peer);
        }
        assert_eq!(ids, [1, 2, 3], "every node, this one included");
    }
    assert_eq!(peers.len(), 3);
    let no_shards = LocalCluster::plan(dir, 1, 17_000, "s", false, None).unwrap();
    let doc: toml::Table = toml::from_str(&no_shards.config_toml(0).unwrap()).unwrap();
    assert!(!doc.contains_key("shards"));
    assert!(!doc.contains_key("network_threads"));
    assert!(no_shards.config_toml(1).is_err());
}

#[test]
fn cluster_certs_writes_the_ca_and_node_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("certs");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["cluster", "certs", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .expect("run sluice cluster certs")
    };
    let first = run(&[
        "--nodes",
        "2",
        "--node",
        "3=10.0.0.3,sluice-3.example",
        "--host",
        "lb.example",
        "--output",
        "json",
    ]);
    assert!(first.status.success(), "{first:?}");
    let json: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(json["ca_reused"], false);
    let nodes = json["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let names: Vec<&str> = nodes[2]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "node-3.sluice.internal",
            "localhost",
            "127.0.0.1",
            "10.0.0.3",
            "sluice-3.example",
            "lb.example"
        ]
    );
    for f in [
        "ca.pem",
        "ca.key",
        "node-1.pem",
        "node-1.key",
        "node-2.pem",
        "node-3.key",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let ca = std::fs::read(out.join("ca.pem")).unwrap();
    // Again: the CA is kept, the node's certificate is new.
    let node1 = std::fs::read(out.join("node-1.pem")).unwrap();
    let again = run(&["--node", "1"]);
    assert!(again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("reused CA"));
    assert_eq!(std::fs::read(out.join("ca.pem")).unwrap(), ca);
    assert_ne!(std::fs::read(out.join("node-1.pem")).unwrap(), node1);
    // Usage errors exit 2.
    let none = run(&["--node", "0"]);
    assert_eq!(none.status.code(), Some(2), "{none:?}");
    let missing = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["cluster", "certs", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
}
