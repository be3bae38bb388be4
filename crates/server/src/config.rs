//! The broker's configuration: a TOML file, then command-line flags over it. With
//! neither, a dev broker: data in `./sluice-data`, QUIC on `127.0.0.1:7878`, admin
//! HTTP on `127.0.0.1:7879`, a generated dev CA, one shard per core.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

use crate::cluster::{ClusterSettings, NodeEntry};

/// Default QUIC listen address of a dev broker.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7878));
/// Default admin HTTP address of a dev broker.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7879));
/// Default data directory of a dev broker.
pub const DEFAULT_DATA_DIR: &str = "./sluice-data";
/// Default worker threads of the network runtime (gateway, peer links, admin HTTP).
pub const DEFAULT_NETWORK_THREADS: usize = 2;
/// The most network threads a broker takes.
pub const NETWORK_THREADS_MAX: usize = 256;

/// Command-line flags; each overrides the same setting of the config file.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sluice-server",
    version,
    about = "The Sluice event-stream broker"
)]
pub struct Flags {
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (topics, partition logs, dev TLS material).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// QUIC listen address for clients.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// HTTP listen address for /metrics, /health and /ready.
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Engine shards (threads, one per core by default).
    #[arg(long)]
    pub shards: Option<usize>,
    /// Threads for the network side: the QUIC gateway, the peer links and the admin
    /// HTTP server (default 2).
    #[arg(long, value_name = "N")]
    pub network_threads: Option<usize>,
}

/// The config file's shape. Every field is optional; see [`Settings`] for defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub shards: Option<usize>,
    pub network_threads: Option<usize>,
    pub node_id: Option<u32>,
    /// Address clients are told to use (defaults to `listen`).
    pub advertised_addr: Option<String>,
    #[serde(default)]
    pub tls: TlsFile,
    #[serde(default)]
    pub storage: StorageFile,
    #[serde(default)]
    pub limits: LimitsFile,
    /// Cluster mode; absent: a single-node broker.
    pub cluster: Option<ClusterFile>,
}

/// `[cluster]`: this node's part of a multi-node cluster (`docs/deploy/README.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Names the cluster in `sluice cluster status` (default `sluice`).
    pub cluster_id: Option<String>,
    /// UDP address the peer links listen on.
    pub peer_listen: SocketAddr,
    /// The cluster CA (PEM): peers must present certificates it signed; this node's
    /// own certificate is `[tls] cert`/`key`, signed by it.
    pub ca: PathBuf,
    /// Forward produce and fetch requests for partitions led elsewhere to their leader
    /// (for clients behind a load balancer) instead of answering `NotLeader`.
    #[serde(default)]
    pub proxy: bool,
    /// Raft tick (default 30 ms): heartbeats every 2 ticks, elections after 10–20.
    pub raft_tick_ms: Option<u64>,
    /// How often (ms) a leader hands partitions back to their preferred leader once it
    /// is up and caught up (default 10000; 0 turns it off).
    pub leader_rebalance_ms: Option<u64>,
    /// Every node of the cluster, this one included.
    pub nodes: Vec<NodeFile>,
}

/// One `[[cluster.nodes]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub id: u64,
    /// Client address (host:port) handed to clients in metadata.
    pub addr: String,
    /// Peer-link address other nodes dial.
    pub peer_addr: SocketAddr,
}

/// `[tls]`: with neither path, dev mode.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `[storage]`: broker defaults for every partition log.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageFile {
    pub segment_bytes: Option<u64>,
    pub retention_bytes: Option<u64>,
    pub retention_ms: Option<u64>,
    /// `"auto"` (default: `"direct"` where the data directory's file system takes
    /// O_DIRECT, else `"buffered"`), `"direct"` (O_DIRECT, or refuse to start) or
    /// `"buffered"` (the page cache).
    pub data_file_mode: Option<String>,
}

/// `[limits]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub in_flight_per_connection: Option<u32>,
    pub connections: Option<u32>,
    pub queue_depth: Option<usize>,
    /// A request frame must arrive whole (its stream finished) this soon after the
    /// stream opens, else the stream is reset with `STREAM_ERROR_TIMEOUT`. Default 10 s.
    pub stream_read_timeout_ms: Option<u64>,
}

/// Everything resolved: file, then flags, then defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub shards: Option<usize>,
    /// Worker threads of the tokio runtime that runs the gateway, the peer links and
    /// the admin server.
    pub network_threads: usize,
    pub node_id: u32,
    pub advertised_addr: String,
    pub tls: TlsFile,
    pub storage: StorageFile,
    pub limits: LimitsFile,
    pub cluster: Option<ClusterSettings>,
}

/// Why the configuration could not be used (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Settings {
    /// Reads the config file named by `flags` (if any) and applies the flags.
    pub fn resolve(flags: &Flags) -> Result<Settings, ConfigError> {
        let file = match &flags.config {
            Some(path) => load(path)?,
            None => FileConfig::default(),
        };
        Self::merge(file, flags)
    }

    fn merge(file: FileConfig, flags: &Flags) -> Result<Settings, ConfigError> {
        let listen = flags.listen.or(file.listen).unwrap_or(DEFAULT_LISTEN);
        let admin_listen = flags
            .admin_listen
            .or(file.admin_listen)
            .unwrap_or(DEFAULT_ADMIN_LISTEN);
        if file.tls.cert.is_some() != file.tls.key.is_some() {
            return Err(ConfigError::Invalid(
                "[tls] needs both cert and key (or neither, for dev mode)".into(),
            ));
        }
        if file.limits.stream_read_timeout_ms == Some(0) {
            return Err(ConfigError::Invalid(
                "[limits] stream_read_timeout_ms must be positive".into(),
            ));
        }
        if let Some(mode) = &file.storage.data_file_mode {
            if !["auto", "buffered", "direct"].contains(&mode.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "[storage] data_file_mode must be \"auto\", \"buffered\" or \"direct\", not {mode:?}"
                )));
            }
        }
        let network_threads = flags
            .network_threads
            .or(file.network_threads)
            .unwrap_or(DEFAULT_NETWORK_THREADS);
        if network_threads == 0 || network_threads > NETWORK_THREADS_MAX {
            return Err(ConfigError::Invalid(format!(
                "network_threads must be 1..={NETWORK_THREADS_MAX}, not {network_threads}"
            )));
        }
        let node_id = file.node_id.unwrap_or(1);
        let cluster = match file.cluster {
            None => None,
            Some(c) => Some(cluster_settings(c, node_id, &file.tls)?),
        };
        Ok(Settings {
            cluster,
            data_dir: flags
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            listen,
            admin_listen,
            shards: flags.shards.or(file.shards),
            network_threads,
            node_id,
            advertised_addr: file.advertised_addr.unwrap_or_else(|| listen.to_string()),
            tls: file.tls,
            storage: file.storage,
            limits: file.limits,
        })
    }
}

fn cluster_settings(
    c: ClusterFile,
    node_id: u32,
    tls: &TlsFile,
) -> Result<ClusterSettings, ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(m));
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return bad(
            "cluster mode needs this node's certificate in [tls] cert/key, signed by the \
             cluster CA ([cluster] ca); `sluice cluster certs` makes them"
                .into(),
        );
    };
    let mut ids = std::collections::BTreeSet::new();
    for n in &c.nodes {
        if n.id == 0 || n.id > u64::from(u32::MAX) {
            return bad(format!(
                "[[cluster.nodes]] id {} must be in 1..=4294967295",
                n.id
            ));
        }
        if !ids.insert(n.id) {
            return bad(format!("[[cluster.nodes]] id {} appears twice", n.id));
        }
        if n.addr.is_empty() {
            return bad(format!("[[cluster.nodes]] id {} has an empty addr", n.id));
        }
    }
    if !ids.contains(&u64::from(node_id)) {
        return bad(format!(
            "node_id {node_id} is not among [[cluster.nodes]] (every node, this one included)"
        ));
    }
    if c.raft_tick_ms.is_some_and(|t| t == 0 || t > 1000) {
        return bad("[cluster] raft_tick_ms must be 1..=1000".into());
    }
    Ok(ClusterSettings {
        cluster_id: c.cluster_id.unwrap_or_else(|| "sluice".into()),
        peer_listen: c.peer_listen,
        proxy: c.proxy,
        nodes: c
            .nodes
            .into_iter()
            .map(|n| NodeEntry {
                id: n.id,
                addr: n.addr,
                peer_addr: n.peer_addr,
            })
            .collect(),
        ca: c.ca,
        cert: cert.clone(),
        key: key.clone(),
        raft_tick_ms: c.raft_tick_ms.unwrap_or(30),
        leader_rebalance_ms: c.leader_rebalance_ms.unwrap_or(10_000),
    })
}

fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        Flags::parse_from(std::iter::once("sluice-server").chain(args.iter().copied()))
    }

    #[test]
    fn no_arguments_is_a_dev_broker() {
        let s = Settings::resolve(&flags(&[])).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("./sluice-data"));
        assert_eq!(s.listen.to_string(), "127.0.0.1:7878");
        assert_eq!(s.admin_listen.to_string(), "127.0.0.1:7879");
        assert!(s.tls.cert.is_none());
    }

    #[test]
    fn network_threads_come_from_the_file_or_the_flag_and_must_be_positive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "network_threads = 3\n").unwrap();
        let p = path.to_str().unwrap();
        let s = Settings::resolve(&flags(&["--config", p])).unwrap();
        assert_eq!(s.network_threads, 3);
        let s = Settings::resolve(&flags(&["--config", p, "--network-threads", "1"])).unwrap();
        assert_eq!(s.network_threads, 1);
        for bad in ["0", "257"] {
            assert!(matches!(
                Settings::resolve(&flags(&["--network-threads", bad])),
                Err(ConfigError::Invalid(m)) if m.contains("network_threads")
            ));
        }
    }

    #[test]
    fn flags_override_the_file_and_bad_files_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/sluice\"\nlisten = \"0.0.0.0:9000\"\nshards = 2\n[storage]\nsegment_bytes = 1048576\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = Settings::resolve(&flags(&["--config", p, "--shards", "1"])).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/srv/sluice"));
        assert_eq!(s.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(s.shards, Some(1));
        assert_eq!(s.network_threads, DEFAULT_NETWORK_THREADS);
        assert_eq!(s.storage.segment_bytes, Some(1 << 20));
        std::fs::write(&path, "listen = 7\n").unwrap();
        assert!(matches!(
            Settings::resolve(&flags(&["--config", p])),
            Err(ConfigError::Parse { .. })
        ));
        std::fs::write(&path, "bogus = 1\n").unwrap();
        assert!(matches!(
            Settings::resolve(&flags(&["--config", p])),
            Err(ConfigError::Parse { .. })
        ));
        std::fs::write(&path, "[tls]\ncert = \"a.pem\"\n").unwrap();
        assert!(matches!(
            Settings::resolve(&flags(&["--config", p])),
            Err(ConfigError::Invalid(_))
        ));
        std::fs::write(&path, "[limits]\nstream_read_timeout_ms = 0\n").unwrap();
        assert!(matches!(
            Settings::resolve(&flags(&["--config", p])),
            Err(ConfigError::Invalid(_))
        ));
        std::fs::write(&path, "[limits]\nstream_read_timeout_ms = 500\n").unwrap();
        let s = Settings::resolve(&flags(&["--config", p])).unwrap();
        assert_eq!(s.limits.stream_read_timeout_ms, Some(500));
    }
}
