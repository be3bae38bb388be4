//! The command line (clap derive) and the parsers of its values.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use sluice_proto::wire::Acks;

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
    /// Append one record per line of stdin to a topic; prints each acked offset.
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
    /// Brokers, controller, topics and partition leaders.
    Status,
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
