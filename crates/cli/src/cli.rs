//! The command line (clap derive) and the parsers of its values.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sluice_proto::wire::Acks;

use sluice_cli::layout::{
    parse_node_spec, BASE_PORT_DEFAULT, CLUSTER_ID_DEFAULT, LOCAL_DIR_DEFAULT,
};

use crate::time::parse_rfc3339_ms;

/// Where the dev broker (`sluice-server` with no arguments) listens.
pub const SERVER_DEFAULT: &str = "127.0.0.1:7878";
/// Where the dev broker writes its generated CA, relative to where it was started.
pub const CA_DEFAULT: &str = "./sluice-data/tls/ca.pem";

/// Records are batched up to about this many bytes per partition...
pub const BATCH_BYTES_DEFAULT: u32 = 256 << 10;
/// ...or until the first record of the batch is this old.
pub const LINGER_MS_DEFAULT: u64 = 10;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Command-line tool for the Sluice event-stream broker",
    after_help = "Exit codes: 0 ok, 1 broker error or failed request, 2 usage, 3 cannot connect."
)]
pub struct Cli {
    /// Broker address, HOST:PORT.
    #[arg(long, global = true, env = "SLUICE_SERVER", default_value = SERVER_DEFAULT)]
    pub server: String,
    /// PEM file of the CA that signed the broker's certificate.
    #[arg(long, global = true, env = "SLUICE_CA", default_value = CA_DEFAULT)]
    pub ca: PathBuf,
    /// Name the broker's certificate must be valid for.
    #[arg(
        long,
        global = true,
        env = "SLUICE_TLS_SERVER_NAME",
        default_value = "localhost"
    )]
    pub tls_server_name: String,
    /// How long to wait for the QUIC + TLS handshake.
    #[arg(long, global = true, default_value_t = 5000, value_name = "MS")]
    pub connect_timeout_ms: u64,
    /// How long to wait for one answer, on top of the request's own wait (produce
    /// --timeout-ms, consume --max-wait-ms).
    #[arg(long, global = true, default_value_t = 30_000, value_name = "MS")]
    pub request_timeout_ms: u64,
    /// Output format: readable text, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe and delete topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Append one record per line of stdin to a topic; prints each acked offset. A
    /// batch the broker refused with nothing appended (a partition electing a leader)
    /// is sent again for about 6 s; one that may have been appended is not.
    Produce(ProduceArgs),
    /// Print a topic's records.
    Consume(ConsumeArgs),
    /// The cluster as the broker sees it.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions.
        #[arg(long)]
        partitions: u32,
        /// Delete segments whose newest record is older than this ("unlimited" for no
        /// limit; broker default when not given).
        #[arg(long, value_name = "MS", value_parser = parse_limit)]
        retention_ms: Option<u64>,
        /// Per partition, delete oldest segments while the log is larger than this
        /// ("unlimited" for no limit; broker default when not given).
        #[arg(long, value_name = "BYTES", value_parser = parse_limit)]
        retention_bytes: Option<u64>,
        /// Roll the active segment at this size (broker default when not given).
        #[arg(long, value_name = "BYTES")]
        segment_bytes: Option<u64>,
        /// Replicas per partition (cluster mode; without it the cluster's default, 3 when
        /// it has 3 or more nodes).
        #[arg(long, value_name = "R", value_parser = clap::value_parser!(u32).range(1..))]
        replication_factor: Option<u32>,
    },
    /// List topics with their partition counts.
    List,
    /// A topic's config and, per partition, leader, log start, high watermark and size.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Every node with its liveness as the answering node sees it, the controller,
    /// leaderless partitions, and each topic's partition leaders.
    Status {
        /// Exit 1 unless every node is alive, there is a controller and no partition
        /// is without a leader (for scripts, e.g. between the steps of a rolling restart).
        #[arg(long)]
        check: bool,
    },
    /// Write a cluster CA and one certificate per node (no broker needed).
    Certs(CertsArgs),
    /// Run a local cluster: certificates, one config and one `sluice-server` per node,
    /// until Ctrl-C or SIGTERM (no broker needed).
    Up(UpArgs),
}

#[derive(Debug, Args)]
#[command(
    after_help = "Files in DIR: ca.pem (every node and client trusts it), ca.key (keep \
it offline; only needed to issue node certificates), node-<ID>.pem and node-<ID>.key (one \
pair per node). Each node certificate names node-<ID>.sluice.internal, localhost, \
127.0.0.1 and the given hosts. An existing CA in DIR (ca.pem + ca.key) is reused; the \
listed nodes' certificates are issued anew."
)]
pub struct CertsArgs {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Issue certificates for nodes 1..=N.
    #[arg(long, value_name = "N", required_unless_present = "node")]
    pub nodes: Option<u64>,
    /// A node and the addresses it is reached at, e.g. `--node 1=10.0.0.1,sluice-1.example`
    /// (repeat per node); adds to --nodes.
    #[arg(long, value_name = "ID[=HOST,...]", value_parser = parse_node_spec)]
    pub node: Vec<(u64, Vec<String>)>,
    /// An extra DNS name or IP for every node's certificate (repeatable), e.g. a load
    /// balancer's name.
    #[arg(long, value_name = "HOST")]
    pub host: Vec<String>,
    /// The cluster's name, in the CA certificate's common name.
    #[arg(long, default_value = CLUSTER_ID_DEFAULT)]
    pub cluster_id: String,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Ports (loopback): node ID takes client QUIC BASE+ID (UDP), admin \
HTTP BASE+80+ID (TCP) and peer links BASE+100+ID (UDP); with the default base 7000: \
7001.., 7081.., 7101... Layout: DIR/certs/, DIR/node-<ID>.toml, DIR/node-<ID>/data/, \
DIR/node-<ID>/server.log. Re-running on the same DIR reuses its certificates and data \
(the node configs are rewritten). Exit: 0 after a clean stop, 1 when a node failed to \
start or did not stop cleanly, 2 usage."
)]
pub struct UpArgs {
    /// Number of nodes (ids 1..=N).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub nodes: u64,
    /// Directory for certificates, configs, data and logs.
    #[arg(long, default_value = LOCAL_DIR_DEFAULT, value_name = "DIR")]
    pub dir: PathBuf,
    /// Base of the port ranges (see below).
    #[arg(long, default_value_t = BASE_PORT_DEFAULT, value_name = "P")]
    pub base_port: u16,
    /// Nodes forward produce and fetch to the partition's leader instead of answering
    /// NotLeader.
    #[arg(long)]
    pub proxy: bool,
    /// The `sluice-server` binary (default: next to this `sluice`, else on $PATH).
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Engine shards per node.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub shards: usize,
    /// Network threads per node (gateway, peer links, admin HTTP). The nodes share this
    /// machine's cores: one each keeps three nodes' threads near a small machine's
    /// core count.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub network_threads: usize,
    /// Cluster name (`cluster_id`, and the CA's name when it is created).
    #[arg(long, default_value = CLUSTER_ID_DEFAULT)]
    pub cluster_id: String,
    /// How long every node together may take to answer /ready.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub ready_timeout_secs: u64,
    /// On stop, how long the nodes may take to exit after SIGTERM before SIGKILL.
    #[arg(long, default_value_t = 20, value_name = "SECS")]
    pub stop_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// After a quorum has the record fsynced.
    All,
    /// After the leader's fsync.
    Leader,
    /// After the leader's append, before any fsync.
    None,
}

impl From<AcksArg> for Acks {
    fn from(a: AcksArg) -> Acks {
        match a {
            AcksArg::All => Acks::All,
            AcksArg::Leader => Acks::Leader,
            AcksArg::None => Acks::None,
        }
    }
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Key of every record; keyed records go to the key's partition. Without a key (and
    /// without --partition) lines go round-robin over the partitions.
    #[arg(long)]
    pub key: Option<String>,
    /// Send every record to this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    /// How durable a record must be before it is acked.
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// How long the broker may wait for that durability.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub timeout_ms: u32,
    /// Close a partition's batch at about this many bytes.
    #[arg(long, default_value_t = BATCH_BYTES_DEFAULT, value_name = "BYTES")]
    pub batch_bytes: u32,
    /// Close a partition's batch when its first record has waited this long.
    #[arg(long, default_value_t = LINGER_MS_DEFAULT, value_name = "MS")]
    pub linger_ms: u64,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Where to start in each partition: earliest, latest, an offset (e.g. 42), or a
    /// timestamp (ts:MILLIS, or RFC 3339 like 2024-05-01T12:00:00Z or
    /// 2024-05-01T14:00:00.250+02:00).
    #[arg(long, default_value = "earliest", value_parser = parse_start)]
    pub from: Start,
    /// Read only this partition (default: all).
    #[arg(long)]
    pub partition: Option<u32>,
    /// Stop after this many records (over all partitions).
    #[arg(long)]
    pub count: Option<u64>,
    /// Keep waiting for new records instead of stopping at the high watermark seen at
    /// start. Ctrl-C ends it (exit 0).
    #[arg(long)]
    pub follow: bool,
    /// Fetch budget per request and partition.
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub fetch_bytes: u32,
    /// With --follow, how long one fetch waits on the broker for new records.
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub max_wait_ms: u32,
}

/// `consume --from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
    Offset(u64),
    /// Milliseconds since the Unix epoch: the first record at or after it.
    Timestamp(i64),
}

pub fn parse_start(text: &str) -> Result<Start, String> {
    const EXPECTED: &str = "expected earliest, latest, an offset, ts:MILLIS or an RFC 3339 \
                            time like 2024-05-01T12:00:00Z";
    match text {
        "earliest" => return Ok(Start::Earliest),
        "latest" => return Ok(Start::Latest),
        _ => {}
    }
    if let Some(ms) = text.strip_prefix("ts:") {
        return ms
            .parse::<i64>()
            .map(Start::Timestamp)
            .map_err(|e| format!("bad ts:MILLIS {ms:?}: {e}"));
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .map(Start::Offset)
            .map_err(|e| format!("bad offset {text:?}: {e}"));
    }
    if text.len() >= 10 && text.as_bytes().get(4) == Some(&b'-') {
        return parse_rfc3339_ms(text)
            .map(Start::Timestamp)
            .map_err(|e| format!("bad RFC 3339 time {text:?}: {e} ({EXPECTED})"));
    }
    Err(EXPECTED.to_owned())
}

/// A byte or millisecond limit, or `unlimited` (sent as `u64::MAX`, the wire's "no limit").
pub fn parse_limit(text: &str) -> Result<u64, String> {
    if text == "unlimited" {
        return Ok(u64::MAX);
    }
    text.parse::<u64>()
        .map_err(|e| format!("expected a number or \"unlimited\": {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn start_positions_parse() {
        assert_eq!(parse_start("earliest"), Ok(Start::Earliest));
        assert_eq!(parse_start("latest"), Ok(Start::Latest));
        assert_eq!(parse_start("0"), Ok(Start::Offset(0)));
        assert_eq!(parse_start("123456"), Ok(Start::Offset(123_456)));
        assert_eq!(parse_start("ts:-5"), Ok(Start::Timestamp(-5)));
        assert_eq!(
            parse_start("ts:1700000000000"),
            Ok(Start::Timestamp(1_700_000_000_000))
        );
        assert_eq!(
            parse_start("2023-11-14T22:13:20Z"),
            Ok(Start::Timestamp(1_700_000_000_000))
        );
        for bad in ["", "-1", "first", "ts:", "ts:soon", "2023-11-14", "1e3"] {
            assert!(parse_start(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn limits_parse() {
        assert_eq!(parse_limit("unlimited"), Ok(u64::MAX));
        assert_eq!(parse_limit("1024"), Ok(1024));
        assert!(parse_limit("1k").is_err());
    }
}
