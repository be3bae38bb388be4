//! The pure parts of `sluice cluster certs` and `sluice cluster up`: which certificates
//! to issue, which ports a local cluster uses, and the config file of each of its nodes
//! (the `sluice-server --config` schema of `crates/server/src/config.rs`). No I/O here,
//! so `tests/layout.rs` checks it without processes.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// `cluster up --base-port` default: node `id` listens for clients on `base + id`
/// (UDP), for peers on `base + 100 + id` (UDP) and for admin HTTP on `base + 80 + id`
/// (TCP): 7001.., 7101.., 7081...
pub const BASE_PORT_DEFAULT: u16 = 7000;
/// Admin HTTP port offset from the base port.
pub const ADMIN_OFFSET: u16 = 80;
/// Peer-link port offset from the base port.
pub const PEER_OFFSET: u16 = 100;
/// At most this many nodes in a local cluster (so the port ranges stay apart).
pub const LOCAL_NODES_MAX: u64 = 20;
/// `cluster up --dir` default.
pub const LOCAL_DIR_DEFAULT: &str = "./sluice-cluster";
/// Cluster name default (the CA's name, `cluster_id` in the configs).
pub const CLUSTER_ID_DEFAULT: &str = "sluice";

/// `--node ID[=HOST[,HOST...]]`: a node id and the extra names its certificate holds.
pub fn parse_node_spec(text: &str) -> Result<(u64, Vec<String>), String> {
    let (id, hosts) = match text.split_once('=') {
        Some((id, hosts)) => (id, Some(hosts)),
        None => (text, None),
    };
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|e| format!("node id {id:?} in {text:?}: {e} (expected ID=HOST[,HOST...])"))?;
    if id == 0 || id > u64::from(u32::MAX) {
        return Err(format!("node id {id} must be in 1..=4294967295"));
    }
    let mut names = Vec::new();
    if let Some(hosts) = hosts {
        for host in hosts.split(',').map(str::trim) {
            if host.is_empty() {
                return Err(format!("empty host name in {text:?}"));
            }
            names.push(host.to_owned());
        }
    }
    Ok((id, names))
}

/// The `(node id, extra hosts)` list `write_cluster_certs` takes, from `--nodes N` (ids
/// 1..=N), `--node ID=HOSTS` entries and `--host` names added to every node. Sorted by
/// id, hosts deduplicated.
pub fn cert_plan(
    nodes: Option<u64>,
    specs: &[(u64, Vec<String>)],
    hosts: &[String],
) -> Result<Vec<(u64, Vec<String>)>, String> {
    let mut plan: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    if let Some(n) = nodes {
        if n == 0 || n > u64::from(u32::MAX) {
            return Err(format!("--nodes {n}: expected 1 or more"));
        }
        for id in 1..=n {
            plan.insert(id, Vec::new());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (id, names) in specs {
        if !seen.insert(*id) {
            return Err(format!("--node {id} is given twice"));
        }
        plan.entry(*id).or_default().extend(names.iter().cloned());
    }
    if plan.is_empty() {
        return Err("name the nodes: --nodes N, or --node ID[=HOST,...] per node".to_owned());
    }
    for names in plan.values_mut() {
        names.extend(hosts.iter().cloned());
        let mut unique = Vec::new();
        for name in names.drain(..) {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        *names = unique;
    }
    Ok(plan.into_iter().collect())
}

/// One node of a local cluster: its addresses and files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    pub id: u64,
    /// Client QUIC (UDP).
    pub client: SocketAddr,
    /// Admin HTTP (TCP): `/ready`, `/health`, `/metrics`.
    pub admin: SocketAddr,
    /// Peer links (UDP).
    pub peer: SocketAddr,
    /// `DIR/node-<id>.toml`.
    pub config: PathBuf,
    /// `DIR/node-<id>/data`.
    pub data_dir: PathBuf,
    /// `DIR/node-<id>/server.log`: the server's stdout and stderr.
    pub log: PathBuf,
    /// `DIR/certs/node-<id>.pem` and `.key`.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A local cluster laid out in one directory (`sluice cluster up`):
///
/// ```text
/// DIR/certs/ca.pem, ca.key, node-<id>.pem, node-<id>.key
/// DIR/node-<id>.toml
/// DIR/node-<id>/data/      the node's data directory
/// DIR/node-<id>/server.log
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCluster {
    pub dir: PathBuf,
    pub certs: PathBuf,
    pub cluster_id: String,
    pub proxy: bool,
    /// Engine shards per node (`None`: the server's default, one per core).
    pub shards: Option<usize>,
    /// Network threads per node (`None`, what [`LocalCluster::plan`] leaves: the
    /// server's default).
    pub network_threads: Option<usize>,
    pub nodes: Vec<LocalNode>,
}

impl LocalCluster {
    /// The layout of `nodes` nodes in `dir` on loopback ports from `base_port` (see
    /// [`BASE_PORT_DEFAULT`]).
    pub fn plan(
        dir: &Path,
        nodes: u64,
        base_port: u16,
        cluster_id: &str,
        proxy: bool,
        shards: Option<usize>,
    ) -> Result<LocalCluster, String> {
        if nodes == 0 || nodes > LOCAL_NODES_MAX {
            return Err(format!(
                "--nodes {nodes}: a local cluster has 1..={LOCAL_NODES_MAX} nodes"
            ));
        }
        let top = u64::from(base_port) + u64::from(PEER_OFFSET) + nodes;
        if base_port == 0 || top > u64::from(u16::MAX) {
            return Err(format!(
                "--base-port {base_port}: the ports base+1 ..= base+{} must be valid \
                 (base 1..={})",
                u64::from(PEER_OFFSET) + nodes,
                u64::from(u16::MAX) - u64::from(PEER_OFFSET) - nodes
            ));
        }
        if cluster_id.is_empty() {
            return Err("--cluster-id must not be empty".to_owned());
        }
        let certs = dir.join("certs");
        let port = |offset: u16, id: u64| -> SocketAddr {
            // In range: checked against u16::MAX above.
            let p = u64::from(base_port) + u64::from(offset) + id;
            SocketAddr::from((Ipv4Addr::LOCALHOST, u16::try_from(p).unwrap_or(u16::MAX)))
        };
        let nodes = (1..=nodes)
            .map(|id| {
                let home = dir.join(format!("node-{id}"));
                LocalNode {
                    id,
                    client: port(0, id),
                    admin: port(ADMIN_OFFSET, id),
                    peer: port(PEER_OFFSET, id),
                    config: dir.join(format!("node-{id}.toml")),
                    data_dir: home.join("data"),
                    log: home.join("server.log"),
                    cert: certs.join(format!("node-{id}.pem")),
                    key: certs.join(format!("node-{id}.key")),
                }
            })
            .collect();
        Ok(LocalCluster {
            dir: dir.to_path_buf(),
            certs,
            cluster_id: cluster_id.to_owned(),
            proxy,
            shards,
            network_threads: None,
            nodes,
        })
    }

    /// `DIR/certs/ca.pem`, the CA clients trust.
    pub fn ca(&self) -> PathBuf {
        self.certs.join("ca.pem")
    }

    /// The config file of the node at `self.nodes[index]`: TOML that `sluice-server
    /// --config` reads. Fails only for a path that is not UTF-8.
    pub fn config_toml(&self, index: usize) -> Result<String, String> {
        let me = self
            .nodes
            .get(index)
            .ok_or_else(|| format!("no node at index {index}"))?;
        let ca = self.ca();
        let config = ConfigOut {
            node_id: me.id,
            data_dir: utf8(&me.data_dir)?,
            listen: me.client,
            admin_listen: me.admin,
            advertised_addr: me.client.to_string(),
            shards: self.shards,
            network_threads: self.network_threads,
            tls: TlsOut {
                cert: utf8(&me.cert)?,
                key: utf8(&me.key)?,
            },
            cluster: ClusterOut {
                cluster_id: &self.cluster_id,
                peer_listen: me.peer,
                ca: utf8(&ca)?,
                proxy: self.proxy,
                nodes: self
                    .nodes
                    .iter()
                    .map(|n| NodeOut {
                        id: n.id,
                        addr: n.client.to_string(),
                        peer_addr: n.peer,
                    })
                    .collect(),
            },
        };
        let body = toml::to_string(&config).map_err(|e| format!("encoding the config: {e}"))?;
        Ok(format!(
            "# Node {id} of the local cluster {name:?}, written by `sluice cluster up` (it \
             rewrites this file on every run).\n# Client QUIC {client}, admin HTTP {admin}, \
             peer links {peer}.\n\n{body}",
            id = me.id,
            name = self.cluster_id,
            client = me.client,
            admin = me.admin,
            peer = me.peer,
        ))
    }
}

fn utf8(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("path {} is not UTF-8", path.display()))
}

// The config file's shape, in the order TOML needs (plain keys before tables).

#[derive(Serialize)]
struct ConfigOut<'a> {
    node_id: u64,
    data_dir: &'a str,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    advertised_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    shards: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network_threads: Option<usize>,
    tls: TlsOut<'a>,
    cluster: ClusterOut<'a>,
}

#[derive(Serialize)]
struct TlsOut<'a> {
    cert: &'a str,
    key: &'a str,
}

#[derive(Serialize)]
struct ClusterOut<'a> {
    cluster_id: &'a str,
    peer_listen: SocketAddr,
    ca: &'a str,
    proxy: bool,
    nodes: Vec<NodeOut>,
}

#[derive(Serialize)]
struct NodeOut {
    id: u64,
    addr: String,
    peer_addr: SocketAddr,
}
