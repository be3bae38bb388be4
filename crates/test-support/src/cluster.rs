//! A local cluster of real `sluice-server` processes on loopback: certificates from
//! `sluice-peer` (one cluster CA, a certificate per node), one config file per node
//! naming every node, fixed ports per node so a restarted node keeps its addresses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::netproxy::Relays;
use crate::{free_tcp_addr, free_udp_addr, Broker};

/// One node's addresses.
#[derive(Debug, Clone, Copy)]
pub struct NodeAddrs {
    pub id: u64,
    pub quic: SocketAddr,
    pub admin: SocketAddr,
    pub peer: SocketAddr,
    /// What peers dial: `peer` itself, or its relay's port.
    pub peer_front: SocketAddr,
}

/// A running cluster. Every node is SIGKILLed on drop.
#[derive(Debug)]
pub struct TestCluster {
    pub nodes: Vec<Broker>,
    pub addrs: Vec<NodeAddrs>,
    ca: PathBuf,
    relays: Option<Relays>,
    _dir: tempfile::TempDir,
}

/// `[cluster] leader_rebalance_ms` of test clusters: a tenth of the default, so a
/// restarted preferred leader gets its partitions back within a test's patience.
pub const LEADER_REBALANCE_MS: u64 = 1000;

/// The config file of node `me`.
pub fn node_config(
    me: &NodeAddrs,
    all: &[NodeAddrs],
    certs: &Path,
    proxy: bool,
    raft_tick_ms: u64,
) -> String {
    let mut s = format!(
        "node_id = {id}\nadvertised_addr = \"{quic}\"\nshards = 1\n\n[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
         [cluster]\ncluster_id = \"test\"\npeer_listen = \"{peer}\"\nca = \"{ca}\"\nproxy = {proxy}\nraft_tick_ms = {raft_tick_ms}\n\
         leader_rebalance_ms = {LEADER_REBALANCE_MS}\n",
        id = me.id,
        quic = me.quic,
        peer = me.peer,
        cert = certs.join(format!("node-{}.pem", me.id)).display(),
        key = certs.join(format!("node-{}.key", me.id)).display(),
        ca = certs.join("ca.pem").display(),
    );
    for n in all {
        s.push_str(&format!(
            "\n[[cluster.nodes]]\nid = {}\naddr = \"{}\"\npeer_addr = \"{}\"\n",
            n.id, n.quic, n.peer_front
        ));
    }
    s
}

impl TestCluster {
    /// Starts `n` nodes (ids 1..=n) and waits until each is ready (its listeners up;
    /// the controller may still be electing).
    pub fn start(n: u64, proxy: bool) -> TestCluster {
        TestCluster::start_with(n, proxy, false)
    }

    /// [`TestCluster::start`]; `relayed`: peer traffic passes through [`Relays`], so
    /// [`TestCluster::isolate`] can cut a node off.
    pub fn start_with(n: u64, proxy: bool, relayed: bool) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        if std::env::var_os("SLUICE_KEEP_CLUSTER").is_some() {
            eprintln!("test cluster in {}", dir.path().display());
        }
        let certs = dir.path().join("certs");
        let hosts: Vec<(u64, Vec<String>)> = (1..=n).map(|id| (id, vec![])).collect();
        sluice_peer::write_cluster_certs(&certs, "test", &hosts).expect("cluster certs");
        let mut relays = relayed.then(Relays::new);
        let addrs: Vec<NodeAddrs> = (1..=n)
            .map(|id| {
                let peer = free_udp_addr();
                let peer_front = match relays.as_mut() {
                    Some(r) => {
                        let front = free_udp_addr();
                        r.add(front, peer);
                        front
                    }
                    None => peer,
                };
                NodeAddrs {
                    id,
                    quic: free_udp_addr(),
                    admin: free_tcp_addr(),
                    peer,
                    peer_front,
                }
            })
            .collect();
        let mut brokers = Vec::new();
        for a in &addrs {
            let config = dir.path().join(format!("node-{}.toml", a.id));
            std::fs::write(&config, node_config(a, &addrs, &certs, proxy, 30))
                .expect("write node config");
            let b = Broker::builder(dir.path().join(format!("node-{}", a.id)))
                .addrs(a.quic, a.admin)
                .ca(certs.join("ca.pem"))
                .arg("--config")
                .arg(&config);
            brokers.push(b);
        }
        // Spawn all, then wait: a node is ready once its listeners are up.
        let nodes = brokers.into_iter().map(|b| b.start()).collect();
        TestCluster {
            nodes,
            addrs,
            ca: certs.join("ca.pem"),
            relays,
            _dir: dir,
        }
    }

    /// Cuts node `id` off its peers both ways (clients still reach it). Needs
    /// [`TestCluster::start_with`] `relayed`.
    pub fn isolate(&self, id: u64) {
        let a = self.addrs.iter().find(|a| a.id == id).expect("a node");
        self.relays
            .as_ref()
            .expect("a relayed cluster")
            .isolate(a.peer);
    }

    /// Heals every cut.
    pub fn heal(&self) {
        self.relays.as_ref().expect("a relayed cluster").heal();
    }

    /// The cluster CA clients trust.
    pub fn ca_path(&self) -> &Path {
        &self.ca
    }

    /// Every node's client address.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.iter().map(|a| a.quic).collect()
    }

    /// The node with id `id`.
    pub fn node(&mut self, id: u64) -> &mut Broker {
        let i = self
            .addrs
            .iter()
            .position(|a| a.id == id)
            .expect("a node of this cluster");
        &mut self.nodes[i]
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::env::var_os("SLUICE_KEEP_CLUSTER").is_some() {
            for n in &mut self.nodes {
                n.kill();
            }
            let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("temp dir"));
            let _ = dir.keep();
        }
    }
}

/// One record batch holding `values`, in order (fixed timestamp, no keys).
pub fn values_batch(values: &[String]) -> Vec<u8> {
    let mut b = sluice_proto::BatchBuilder::new(sluice_proto::Limits::default());
    for v in values {
        b.push(1_700_000_000_000, None, Some(v.as_bytes()), &[])
            .expect("a small record fits a batch");
    }
    b.finish().expect("a valid batch")
}

/// What partition `partition` must hold, as `(offset, value)`, given acknowledged
/// writes `(partition, base offset, values)`: each value at its batch's base offset
/// plus its index, in acknowledgement order.
pub fn expected_records(acked: &[(u32, u64, Vec<String>)], partition: u32) -> Vec<(u64, String)> {
    acked
        .iter()
        .filter(|(p, _, _)| *p == partition)
        .flat_map(|(_, base, values)| {
            values
                .iter()
                .enumerate()
                .map(move |(i, v)| (base + i as u64, v.clone()))
        })
        .collect()
}
