//! The pure parts of the `sluice-bench` load generator (`src/bin/sluice_bench.rs`):
//! what it sends, when, what it measured and whether the data came back intact.
//!
//! # The model
//!
//! The binary is the edge: it owns tokio, the SDK's clients, the clock and the
//! terminal. Everything it *decides* lives here, takes time as plain nanoseconds and
//! is tested without a broker:
//!
//! - [`payload`]: every message starts with a 32-byte header (magic, run id,
//!   producer id, sequence number, send time), so each message of a run is unique and
//!   carries the time it was (meant to be) sent; the rest is filler.
//! - [`schedule`]: the open-loop send schedule (record `k` of producer `i` is due at a
//!   fixed time from the start, whatever happened to earlier records, so latency is
//!   measured from the *scheduled* send time and coordinated omission cannot hide a
//!   stall), how a count is split between producers, which partition each record goes
//!   to and which partitions each consumer reads.
//! - [`stats`]: latency histograms (hdrhistogram, microsecond resolution), error counts
//!   by kind, throughput in msgs/s and MB/s (MB = 10^6 bytes).
//! - [`verify`]: the checker of `--verify`: given what the producers were told about
//!   every record (acked at partition/offset, failed, never resolved) and the log read
//!   back in offset order, it counts lost, duplicated, misplaced and reordered records.
//! - [`report`]: the final report, as the readable block and as the `--json` object.
//!
//! Call order of one run (the binary): build the [`schedule::Schedule`]s, send records
//! whose payload is [`payload::encode`]d, feed each delivery into a
//! [`stats::Latency`] / [`stats::ErrorCounts`] and, with `--verify`, into
//! [`verify::Checker::sent`]; read the partitions back through
//! [`verify::Checker::consumed`]; [`verify::Checker::finish`]; fill a
//! [`report::Report`].

pub mod payload;
pub mod report;
pub mod schedule;
pub mod stats;
pub mod verify;
