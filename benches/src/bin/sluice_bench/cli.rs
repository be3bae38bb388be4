//! The command line: clap derive, the checks clap cannot express, and the resolved
//! [`Plan`] a run follows.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;
use sluice_bench::load::payload::HEADER_BYTES;
use sluice_client::wire::Acks;

/// Where the dev broker (`sluice-server` with no arguments) listens.
pub const SERVER_DEFAULT: &str = "127.0.0.1:7878";
/// Where the dev broker writes its generated CA, relative to where it was started
/// (the `sluice` CLI's default too).
pub const CA_DEFAULT: &str = "./sluice-data/tls/ca.pem";
/// Default `--count`.
pub const COUNT_DEFAULT: u64 = 1_000_000;
/// Largest `--size`: the broker's default value limit (8 MiB).
pub const SIZE_BYTES_MAX: u64 = 8 << 20;
/// Most records `--verify` keeps track of (24 bytes each: about 480 MB at the limit).
pub const VERIFY_RECORDS_MAX: u64 = 20_000_000;

#[derive(Debug, Parser, Serialize)]
#[command(
    name = "sluice-bench",
    version,
    about = "Load generator for the Sluice broker: produce, consume and end-to-end \
             throughput and latency, with an optional exactly-once-in-order check",
    after_help = "Every run is bounded: --count (default 1,000,000 measured messages) or \
                  --duration, and always --max-secs.\n\
                  MB = 10^6 bytes of message values. Latency percentiles come from an \
                  HdrHistogram with microsecond resolution.\n\
                  Exit codes: 0 ok, 1 the run failed (cannot connect, errors, nothing \
                  measured, or --verify found anomalies), 2 usage."
)]
pub struct Cli {
    #[command(subcommand)]
    pub mode: Mode,
    #[command(flatten)]
    pub opts: Opts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Producers send as fast as allowed (or at --rate); reports acknowledgement
    /// latency and throughput.
    Produce,
    /// Consumers read the topic from its start (a hot log) up to its end when the run
    /// starts, or --count messages; reports throughput.
    Consume,
    /// Consumers (positioned at the end first) and producers together; reports
    /// produce -> consume latency from the send time in each payload.
    E2e,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Produce => "produce",
            Mode::Consume => "consume",
            Mode::E2e => "e2e",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AcksArg {
    /// After the record is fsynced by a quorum (the leader, on one node).
    All,
    /// After the leader's fsync.
    Leader,
    /// After the leader's append, before any fsync.
    None,
}

/// How a producer spreads its records over the partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionerArg {
    /// Keyless records, partition chosen by the SDK: sticky to one partition until its
    /// batch is handed out (what `kafka-producer-perf-test` does with null keys).
    Sticky,
    /// Each record names its partition, rotating per record (the worst case for
    /// batching: every partition gets a share of every producer's window).
    RoundRobin,
}

impl AcksArg {
    pub fn name(self) -> &'static str {
        match self {
            AcksArg::All => "all",
            AcksArg::Leader => "leader",
            AcksArg::None => "none",
        }
    }
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

/// Every flag (global: they may come before or after the mode).
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Opts {
    /// Broker address, HOST:PORT.
    #[arg(long, global = true, env = "SLUICE_SERVER", default_value = SERVER_DEFAULT)]
    pub server: String,
    /// PEM file of the CA that signed the broker's certificate.
    #[arg(long, global = true, env = "SLUICE_CA", default_value = CA_DEFAULT)]
    pub ca: PathBuf,
    /// Name the broker's certificate must be valid for.
    #[arg(long, global = true, default_value = "localhost")]
    pub tls_server_name: String,
    /// Topic to use.
    #[arg(long, global = true, default_value = "sluice-bench")]
    pub topic: String,
    /// Create the topic if it is missing (the default for produce and e2e).
    #[arg(long, global = true, overrides_with = "no_create")]
    pub create: bool,
    /// Fail instead of creating a missing topic.
    #[arg(long, global = true, overrides_with = "create")]
    pub no_create: bool,
    /// Partitions of a topic this run creates (an existing topic keeps its own).
    #[arg(long, global = true, default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub partitions: u32,
    /// Producers, each with its own connection and SDK Producer.
    #[arg(long, global = true, default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub producers: u32,
    /// Threads the producers run on, each a single-threaded tokio runtime with every
    /// Nth producer, its connection and its SDK tasks (0: one per CPU, at most one per
    /// producer).
    #[arg(long, global = true, default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=1024))]
    pub threads: u32,
    /// Consumers, each with its own connection, splitting the partitions (capped at
    /// the partition count).
    #[arg(long, global = true, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub consumers: u32,
    /// Message (value) size in bytes; at least the 32-byte header every payload carries.
    #[arg(long, global = true, default_value_t = 1024, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(HEADER_BYTES as u64..=SIZE_BYTES_MAX))]
    pub size: u64,
    /// Producer batch size limit (ProducerConfig::batch_bytes_max).
    #[arg(long, global = true, default_value_t = sluice_client::producer::BATCH_BYTES_MAX_DEFAULT as u64,
          value_name = "BYTES", value_parser = clap::value_parser!(u64).range(65..=(16 << 20)))]
    pub batch_bytes: u64,
    /// How long a producer batch may wait to fill (ProducerConfig::linger_ms).
    #[arg(long, global = true, default_value_t = sluice_client::producer::LINGER_MS_DEFAULT,
          value_name = "MS", value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub linger_ms: u64,
    /// Most records in flight per producer (sent, not yet acknowledged): a window this
    /// tool enforces around the delivery futures.
    #[arg(long, global = true, default_value_t = 256, value_name = "RECORDS",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub in_flight: u64,
    /// Most produce requests in flight per producer over all partitions
    /// (ProducerConfig::in_flight_max; each partition has at most one).
    #[arg(long, global = true, default_value_t = sluice_client::producer::IN_FLIGHT_MAX_DEFAULT as u64,
          value_name = "REQUESTS", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub requests_in_flight: u64,
    /// Durability the broker acknowledges at.
    #[arg(long, global = true, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// How producers choose partitions.
    #[arg(long, global = true, value_enum, default_value_t = PartitionerArg::Sticky)]
    pub partitioner: PartitionerArg,
    /// Open loop: total messages per second over all producers, each record's latency
    /// counted from its scheduled send time. Without it: closed loop, max speed.
    #[arg(long, global = true, value_name = "MSGS_PER_SEC",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    pub rate: Option<u64>,
    /// Measured messages (warm-up excluded) over all producers (consume: at most this
    /// many, default everything in the topic). Default 1,000,000.
    #[arg(long, global = true, conflicts_with = "duration",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Measure for this long instead of a count.
    #[arg(long, global = true, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: Option<u64>,
    /// Safety cap: stop sending (or consuming) this long after the start, whatever
    /// --count says.
    #[arg(long, global = true, default_value_t = 60, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub max_secs: u64,
    /// Run this long first; what is sent (or consumed) meanwhile is not measured.
    #[arg(long, global = true, default_value_t = 0, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(0..=3_600))]
    pub warmup: u64,
    /// Consumer fetch budget per partition (ConsumerConfig::fetch_max_bytes).
    #[arg(long, global = true, default_value_t = sluice_client::consumer::FETCH_MAX_BYTES_DEFAULT,
          value_name = "BYTES", value_parser = clap::value_parser!(u32).range(1..))]
    pub fetch_bytes: u32,
    /// Also write the report as one JSON object to FILE.
    #[arg(long, global = true, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// produce, e2e: afterwards read every partition back and check that every
    /// acknowledged message is there exactly once, at its acknowledged offset, in order.
    #[arg(long, global = true)]
    pub verify: bool,
    /// No live progress bar (it is also off when stdout is not a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,
}

/// A usage error clap could not catch (exit code 2).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// How a run stops sending (or consuming).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// This many measured records in total.
    Count(u64),
    /// Measure for this long after the warm-up.
    Duration(Duration),
    /// consume without --count: everything in the topic at the start.
    All,
}

/// The flags resolved and checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    pub opts: Opts,
    pub addr: SocketAddr,
    pub bound: Bound,
    pub warmup: Duration,
    pub max: Duration,
    pub size: usize,
    pub create: bool,
}

impl Plan {
    /// Checks what clap cannot; `Usage` for a bad combination.
    pub fn new(cli: Cli) -> Result<Plan, Usage> {
        let Cli { mode, opts } = cli;
        let addr = resolve(&opts.server)?;
        if opts.verify && mode == Mode::Consume {
            return Err(Usage(
                "--verify checks what this run produced: use it with produce or e2e".into(),
            ));
        }
        if opts.warmup >= opts.max_secs {
            return Err(Usage(format!(
                "--warmup {} must be shorter than --max-secs {}",
                opts.warmup, opts.max_secs
            )));
        }
        let bound = match (opts.count, opts.duration) {
            (Some(n), _) => Bound::Count(n),
            (None, Some(secs)) => Bound::Duration(Duration::from_secs(secs)),
            (None, None) if mode == Mode::Consume => Bound::All,
            (None, None) => Bound::Count(COUNT_DEFAULT),
        };
        if opts.verify {
            if let Bound::Count(n) = bound {
                if n > VERIFY_RECORDS_MAX {
                    return Err(Usage(format!(
                        "--verify keeps every record in memory: --count at most {VERIFY_RECORDS_MAX}"
                    )));
                }
            }
        }
        if opts.topic.is_empty() {
            return Err(Usage("--topic must not be empty".into()));
        }
        let size = usize::try_from(opts.size).map_err(|_| Usage("--size too large".into()))?;
        let create = mode != Mode::Consume && !opts.no_create || opts.create;
        Ok(Plan {
            mode,
            addr,
            bound,
            warmup: Duration::from_secs(opts.warmup),
            max: Duration::from_secs(opts.max_secs),
            size,
            create,
            opts,
        })
    }
}

/// `HOST:PORT` to one socket address.
fn resolve(server: &str) -> Result<SocketAddr, Usage> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = |why: String| Usage(format!("--server {server:?}: {why}"));
    let port_ok = server
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err(bad("expected HOST:PORT, e.g. 127.0.0.1:7878".into()));
    }
    server
        .to_socket_addrs()
        .map_err(|e| bad(format!("cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| bad("resolves to no address".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let cli = Cli::try_parse_from(std::iter::once("sluice-bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Plan::new(cli).map_err(|e| e.0)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let p = plan(&["produce"]).unwrap();
        assert_eq!(p.addr.to_string(), "127.0.0.1:7878");
        assert_eq!(p.opts.ca, PathBuf::from(CA_DEFAULT));
        assert_eq!(p.opts.topic, "sluice-bench");
        assert_eq!(p.opts.partitions, 8);
        assert_eq!(p.opts.producers, 4);
        assert_eq!(p.size, 1024);
        assert_eq!(p.opts.in_flight, 256);
        assert_eq!(p.opts.acks, AcksArg::All);
        assert_eq!(p.bound, Bound::Count(1_000_000));
        assert_eq!(p.max, Duration::from_secs(60));
        assert!(p.create);
        let c = plan(&["consume"]).unwrap();
        assert_eq!(c.bound, Bound::All);
        assert!(!c.create);
    }

    #[test]
    fn flags_may_come_before_or_after_the_mode() {
        let p = plan(&["--count", "5", "e2e", "--rate", "100", "--no-create"]).unwrap();
        assert_eq!(p.mode, Mode::E2e);
        assert_eq!(p.bound, Bound::Count(5));
        assert_eq!(p.opts.rate, Some(100));
        assert!(!p.create);
    }

    #[test]
    fn bad_usage_is_refused() {
        for args in [
            &["produce", "--size", "31"][..],
            &["produce", "--count", "0"],
            &["produce", "--count", "5", "--duration", "5"],
            &["produce", "--acks", "some"],
            &["produce", "--rate", "0"],
            &["consume", "--verify"],
            &["produce", "--warmup", "60"],
            &["produce", "--server", "nowhere"],
            &["produce", "--verify", "--count", "20000001"],
            &["fly"],
        ] {
            assert!(plan(args).is_err(), "{args:?} was accepted");
        }
    }
}
