//! The consumers (`consume`, `e2e`) and the read-back pass of `--verify`.
//!
//! A consumer owns a connection and an SDK `Consumer` assigned its share of the
//! partitions, each sought to where the run starts reading. It polls until every one
//! of its partitions has reached its end offset: the high watermark when the run
//! started (`consume`), or the end the producers reached, known once they are done
//! (`e2e`). Every wait is bounded: the run's deadline, and an idle limit once the ends
//! are known.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{anyhow, Result};
use sluice_bench::load::payload;
use sluice_bench::load::stats::{ErrorCounts, Latency};
use sluice_bench::load::verify::Checker;
use sluice_client::{Client, Consumer, ConsumerConfig, ConsumerError, SeekTo};
use tokio::sync::watch;

use crate::produce::client_kind;
use crate::Run;

/// How long a consumer that knows its ends may go without a record before it gives up.
pub const IDLE: Duration = Duration::from_secs(10);

/// How long one `poll` waits for a first record (short, so the bounds are checked often).
const POLL: Duration = Duration::from_millis(100);

/// Where a consumer stops, per assigned partition.
#[derive(Debug, Clone)]
pub enum Ends {
    /// Known now (`consume`, read-back): `ends[partition]`.
    Known(Vec<u64>),
    /// Sent once the producers are done (`e2e`).
    Later(watch::Receiver<Option<Vec<u64>>>),
}

/// What one consumer measured.
#[derive(Debug, Default)]
pub struct ConsumerResult {
    /// e2e: produce -> consume latency of measured records.
    pub latency: Latency,
    pub errors: ErrorCounts,
    /// Measured records and value bytes.
    pub msgs: u64,
    pub bytes: u64,
    pub warmup_msgs: u64,
    /// When the last measured record came (ns since the epoch).
    pub last_ns: u64,
    /// Records not of this run (e2e), not measured.
    pub foreign: u64,
    /// Whether every partition reached its end.
    pub complete: bool,
}

/// A consumer of `partitions` of the run's topic, each sought to `starts[partition]`.
pub async fn positioned(
    run_plan: &crate::cli::Plan,
    client: &Client,
    partitions: &[u32],
    starts: &[u64],
) -> Result<Consumer> {
    let topic = &run_plan.opts.topic;
    let config = ConsumerConfig {
        fetch_max_bytes: run_plan.opts.fetch_bytes,
        ..ConsumerConfig::default()
    };
    let mut consumer = client
        .consumer(config)
        .map_err(|e| anyhow!("consumer: {e}"))?;
    consumer.assign(topic, partitions.iter().copied());
    for &p in partitions {
        let start = starts.get(p as usize).copied().unwrap_or(0);
        consumer
            .seek(topic, p, SeekTo::Offset(start))
            .await
            .map_err(|e| anyhow!("seek {topic}/{p} to {start}: {e}"))?;
    }
    Ok(consumer)
}

/// A consumer error as an error kind.
fn consumer_kind(e: &ConsumerError) -> String {
    match e {
        ConsumerError::Request { source, .. } => format!("fetch: {}", client_kind(source)),
        ConsumerError::OffsetOutOfRange { .. } => "fetch: OffsetOutOfRange".to_owned(),
        ConsumerError::CorruptBatch { .. } => "fetch: corrupt batch".to_owned(),
        ConsumerError::NoPosition { .. } => "fetch: no position".to_owned(),
        _ => "fetch: other".to_owned(),
    }
}

/// The partition an error pauses (the SDK pauses it until a seek), if any.
fn paused_partition(e: &ConsumerError) -> Option<u32> {
    match e {
        ConsumerError::OffsetOutOfRange { partition, .. }
        | ConsumerError::CorruptBatch { partition, .. }
        | ConsumerError::NoPosition { partition, .. } => Some(*partition),
        ConsumerError::Request {
            partition: Some(p),
            source,
            ..
        } if !source.is_retriable() => Some(*p),
        _ => None,
    }
}

/// What to do with each record a consumer reads.
pub enum Sink<'a> {
    /// `consume`: count it (measured after the warm-up; at most `count` over all
    /// consumers, via `run.progress`).
    Throughput { count: Option<u64> },
    /// `e2e`: count it and measure produce -> consume latency from its header.
    EndToEnd,
    /// `--verify`: hand it to the checker.
    Verify(&'a mut Checker),
}

/// Reads `partitions` until each reaches its end, `deadline_ns` passes, or (ends
/// known) nothing arrives for [`IDLE`].
pub async fn run_consumer(
    run: &Run,
    mut consumer: Consumer,
    partitions: &[u32],
    starts: &[u64],
    mut ends: Ends,
    deadline_ns: u64,
    mut sink: Sink<'_>,
) -> ConsumerResult {
    let topic = run.plan.opts.topic.clone();
    let mut r = ConsumerResult::default();
    // Next offset to read, per partition (indexed by partition number).
    let mut next: Vec<u64> = starts.to_vec();
    let mut active: Vec<u32> = partitions.to_vec();
    let mut last_progress = run.now_ns();
    let mut ends_known = false;
    loop {
        if run.stop.load(Ordering::Relaxed) {
            break;
        }
        let now = run.now_ns();
        if now >= deadline_ns {
            break;
        }
        let known = match &mut ends {
            Ends::Known(e) => Some(e.clone()),
            Ends::Later(rx) => rx.borrow_and_update().clone(),
        };
        if let Some(end) = &known {
            if !ends_known {
                // The idle limit runs from when the ends are known, not from a quiet
                // spell before (a slow open-loop run can leave a partition idle a while).
                ends_known = true;
                last_progress = last_progress.max(now);
            }
            let at_end = |p: &u32| {
                let p = *p as usize;
                next.get(p).copied().unwrap_or(0) >= end.get(p).copied().unwrap_or(0)
            };
            active.retain(|p| !at_end(p));
            if active.is_empty() {
                r.complete = partitions.iter().all(at_end);
                break;
            }
            if now.saturating_sub(last_progress) > IDLE.as_nanos() as u64 {
                break;
            }
        }
        let records = match consumer.poll(POLL).await {
            Ok(records) => records,
            Err(e) => {
                r.errors.add(consumer_kind(&e));
                if let Some(p) = paused_partition(&e) {
                    consumer.unassign(&topic, p);
                    active.retain(|q| *q != p);
                    if active.is_empty() {
                        break;
                    }
                }
                continue;
            }
        };
        if records.is_empty() {
            continue;
        }
        let at_ns = run.now_ns();
        last_progress = at_ns;
        for rec in records {
            let p = rec.partition as usize;
            if let Some(n) = next.get_mut(p) {
                *n = (*n).max(rec.offset + 1);
            }
            // Beyond the end known now (someone else writing): not this run's to count.
            if let Some(end) = known.as_ref().and_then(|e| e.get(p)) {
                if rec.offset >= *end {
                    continue;
                }
            }
            let len = rec.value.as_ref().map_or(0, |v| v.len()) as u64;
            match &mut sink {
                Sink::Verify(checker) => {
                    checker.consumed(rec.partition, rec.offset, rec.value.as_deref());
                }
                Sink::Throughput { count } => {
                    if at_ns < run.warmup_ns {
                        r.warmup_msgs += 1;
                        continue;
                    }
                    let before = run.progress.fetch_add(1, Ordering::Relaxed);
                    if count.is_some_and(|c| before >= c) {
                        run.stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    r.msgs += 1;
                    r.bytes += len;
                    r.last_ns = at_ns;
                }
                Sink::EndToEnd => {
                    let header = rec.value.as_deref().and_then(|v| payload::decode(v).ok());
                    let Some(h) = header.filter(|h| h.run_id == run.run_id) else {
                        r.foreign += 1;
                        continue;
                    };
                    if h.send_ns < run.warmup_ns {
                        r.warmup_msgs += 1;
                        continue;
                    }
                    r.latency.record_ns(at_ns.saturating_sub(h.send_ns));
                    run.progress.fetch_add(1, Ordering::Relaxed);
                    r.msgs += 1;
                    r.bytes += len;
                    r.last_ns = at_ns;
                }
            }
        }
    }
    r
}
