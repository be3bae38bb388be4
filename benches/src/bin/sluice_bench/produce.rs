//! The producers: one task per producer sends; its delivery callbacks measure.
//!
//! The sender, per record: decide when it is due (open loop: its scheduled time; closed
//! loop: now), take a slot of the `--in-flight` window (a semaphore) and
//! `Producer::send_with` it, with a delivery callback that takes the time the record
//! resolved, gives the window slot back and records the outcome in the producer's
//! tally (a lock, taken for that record only). Neither waits on a single record, so
//! nothing serialises the records of a producer but the window itself. (A delivery
//! future per record, polled in a `FuturesUnordered`, cost the load generator about a
//! tenth of its CPU more: a oneshot, a task node and a wake-up per record; a collector
//! task fed by a channel cost two channel sends and a wake-up per record.)

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sluice_bench::load::payload::{self, Header, RecordId};
use sluice_bench::load::schedule::{partition_for, Schedule};
use sluice_bench::load::stats::{ErrorCounts, Latency};
use sluice_bench::load::verify::Sent;
use sluice_client::{
    Client, ClientError, DeliveryError, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};
use tokio::sync::{Notify, Semaphore};

use crate::cli::{Bound, PartitionerArg, Plan};
use crate::Run;

/// Acknowledged records a producer counts before it adds them to the progress count.
const PROGRESS_STEP: u64 = 256;

/// How long the producers wait, after the last send, for outstanding deliveries.
pub const DRAIN: Duration = Duration::from_secs(30);

/// Why a producer stopped sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Its share of `--count` was sent.
    Count,
    /// `--duration` is over.
    Duration,
    /// `--max-secs` came first.
    MaxSecs,
    /// `--verify` cannot track more records.
    VerifyCap,
    /// Another producer failed, or the run was stopped.
    Stopped,
    /// `send` failed; every later one would too.
    Failed(String),
}

/// What one producer measured.
#[derive(Debug)]
pub struct ProducerResult {
    pub latency: Latency,
    pub errors: ErrorCounts,
    /// Measured records acknowledged, and their value bytes.
    pub msgs: u64,
    pub bytes: u64,
    /// Records sent during the warm-up.
    pub warmup_msgs: u64,
    /// When the last measured acknowledgement came (ns since the epoch).
    pub last_ack_ns: u64,
    /// Per partition, the highest offset acknowledged.
    pub max_offset: Vec<Option<u64>>,
    /// With `--verify`: what became of each record, indexed by sequence number.
    pub outcomes: Vec<Sent>,
    pub stop: Stop,
}

impl ProducerResult {
    /// Nothing measured yet, over `partitions` partitions.
    fn empty(partitions: usize) -> ProducerResult {
        ProducerResult {
            latency: Latency::new(),
            errors: ErrorCounts::default(),
            msgs: 0,
            bytes: 0,
            warmup_msgs: 0,
            last_ack_ns: 0,
            max_offset: vec![None; partitions],
            outcomes: Vec::new(),
            stop: Stop::Stopped,
        }
    }
}

/// The `ProducerConfig` the flags ask for.
pub fn config(plan: &Plan) -> ProducerConfig {
    ProducerConfig {
        batch_bytes_max: usize::try_from(plan.opts.batch_bytes).unwrap_or(usize::MAX),
        linger_ms: plan.opts.linger_ms,
        acks: plan.opts.acks.into(),
        in_flight_max: usize::try_from(plan.opts.requests_in_flight).unwrap_or(usize::MAX),
        ..ProducerConfig::default()
    }
}

/// A delivery error as an error kind: the SDK error's kind and whether the record may
/// have been written.
pub fn delivery_kind(e: &DeliveryError) -> String {
    let outcome = if e.is_definite() {
        "definite"
    } else {
        "indeterminate"
    };
    format!("{} ({outcome})", client_kind(e.error()))
}

/// A client error's kind: the broker's error code, or what went wrong locally.
pub fn client_kind(e: &ClientError) -> String {
    match e {
        ClientError::Broker(b) => b.code.name().to_owned(),
        ClientError::Config(_) => "config".to_owned(),
        ClientError::Connect { .. } => "connect".to_owned(),
        ClientError::InvalidRequest(_) => "invalid request".to_owned(),
        ClientError::ConnectionLost { .. } => "connection lost".to_owned(),
        ClientError::Timeout { .. } => "timeout".to_owned(),
        ClientError::Refused { .. } => "refused".to_owned(),
        ClientError::Protocol { .. } => "protocol".to_owned(),
        _ => "other".to_owned(),
    }
}

/// A producer's tally: what its delivery callbacks and its sender record. The callbacks
/// run on the SDK's task and the sender on its own; each takes the lock for one record.
struct Tally {
    run: Arc<Run>,
    state: Mutex<ProducerResult>,
    /// Records handed to `send_with` whose callback has not run (nor will: a refused or
    /// abandoned call takes its record back off).
    outstanding: AtomicU64,
    /// Notified when a callback brings `outstanding` to zero.
    settled: Notify,
}

impl Tally {
    fn new(run: Arc<Run>) -> Tally {
        let partitions = run.partitions as usize;
        Tally {
            run,
            state: Mutex::new(ProducerResult::empty(partitions)),
            outstanding: AtomicU64::new(0),
            settled: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ProducerResult> {
        // Nothing panics while holding it; a poisoned tally is still a tally.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A record is about to be handed to the SDK.
    fn handing(&self) {
        self.outstanding.fetch_add(1, Ordering::AcqRel);
    }

    /// The SDK did not take record `seq` after all (`send_with` refused it, or the wait
    /// for buffer space was abandoned): no callback will run for it.
    fn not_taken(&self, seq: u64, refused: bool) {
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        if refused && self.run.plan.opts.verify {
            let mut r = self.lock();
            if let Some(i) = slot(&mut r.outcomes, seq) {
                r.outcomes[i] = Sent::FailedDefinite;
            }
        }
    }

    /// The SDK took record `seq` (with `--verify` it gets a slot, `Unresolved` until its
    /// callback runs, which may have happened already).
    fn taken(&self, seq: u64) {
        if self.run.plan.opts.verify {
            slot(&mut self.lock().outcomes, seq);
        }
    }

    /// Record `seq`'s callback ran, at `at_ns`.
    fn resolved(
        &self,
        seq: u64,
        send_ns: u64,
        measured: bool,
        result: Result<RecordMetadata, DeliveryError>,
        at_ns: u64,
    ) {
        {
            let run = &self.run;
            let mut r = self.lock();
            let outcome = match result {
                Ok(meta) => {
                    if measured {
                        r.latency.record_ns(at_ns.saturating_sub(send_ns));
                        r.msgs += 1;
                        r.bytes += run.plan.size as u64;
                        r.last_ack_ns = r.last_ack_ns.max(at_ns);
                        // The progress bar's count, shared by every producer thread,
                        // moves every `PROGRESS_STEP` records (and once more at the end).
                        if run.producers_count_progress && r.msgs % PROGRESS_STEP == 0 {
                            run.progress.fetch_add(PROGRESS_STEP, Ordering::Relaxed);
                        }
                    }
                    if let Some(m) = r.max_offset.get_mut(meta.partition as usize) {
                        *m = Some(m.map_or(meta.offset, |o: u64| o.max(meta.offset)));
                    }
                    Sent::Acked {
                        partition: meta.partition,
                        offset: meta.offset,
                    }
                }
                Err(e) => {
                    r.errors.add(delivery_kind(&e));
                    if e.is_definite() {
                        Sent::FailedDefinite
                    } else {
                        Sent::FailedIndeterminate
                    }
                }
            };
            if run.plan.opts.verify {
                if let Some(i) = slot(&mut r.outcomes, seq) {
                    r.outcomes[i] = outcome;
                }
            }
        }
        if self.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.settled.notify_one();
        }
    }

    /// Once the sender is done: waits until every record the SDK took has resolved, or
    /// [`DRAIN`] (the rest stay `Unresolved` and count as errors), and hands over the
    /// tally.
    async fn settle(&self) -> ProducerResult {
        let deadline = tokio::time::Instant::now() + DRAIN;
        loop {
            // `notify_one` leaves a permit when nobody waits: no wake-up is lost between
            // the check and the wait.
            let left = self.outstanding.load(Ordering::Acquire);
            if left == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, self.settled.notified())
                .await
                .is_err()
            {
                let left = self.outstanding.load(Ordering::Acquire);
                self.lock().errors.add_n("unresolved at exit", left);
                break;
            }
        }
        let partitions = self.run.partitions as usize;
        let result = std::mem::replace(&mut *self.lock(), ProducerResult::empty(partitions));
        if self.run.producers_count_progress {
            self.run
                .progress
                .fetch_add(result.msgs % PROGRESS_STEP, Ordering::Relaxed);
        }
        result
    }
}

/// With `--verify`: the index of record `seq`'s outcome, `Unresolved` until known.
fn slot(outcomes: &mut Vec<Sent>, seq: u64) -> Option<usize> {
    let i = usize::try_from(seq).ok()?;
    if outcomes.len() <= i {
        outcomes.resize(i + 1, Sent::Unresolved);
    }
    Some(i)
}

/// Producer `id`: sends its share, then waits (at most [`DRAIN`]) for the rest of its
/// deliveries and closes. `count` is its share of a `--count`.
pub async fn run_producer(
    run: Arc<Run>,
    id: u32,
    client: Client,
    producer: Producer,
    count: Option<u64>,
) -> ProducerResult {
    let tally = Arc::new(Tally::new(run.clone()));
    let mut errors = ErrorCounts::default();
    let (stop, warmup_msgs) = send_loop(&run, id, &producer, count, &tally, &mut errors).await;
    // Close at once: what lingers goes out now, and the tally sees it resolve.
    let (_, mut result) = tokio::join!(
        tokio::time::timeout(DRAIN, producer.close()),
        tally.settle()
    );
    client.close().await;
    result.errors.merge(&errors);
    result.warmup_msgs = warmup_msgs;
    result.stop = stop;
    result
}

/// Sends until the bound; returns why it stopped and how many warm-up records it sent.
async fn send_loop(
    run: &Run,
    id: u32,
    producer: &Producer,
    count: Option<u64>,
    tally: &Arc<Tally>,
    errors: &mut ErrorCounts,
) -> (Stop, u64) {
    let plan = &run.plan;
    let schedule = plan
        .opts
        .rate
        .and_then(|r| Schedule::new(r, plan.opts.producers, id).ok());
    let window = Arc::new(Semaphore::new(
        usize::try_from(plan.opts.in_flight).unwrap_or(Semaphore::MAX_PERMITS),
    ));
    let filler = payload::filler(plan.size - payload::HEADER_BYTES);
    // One name, shared by every record (not a `String` each).
    let topic: Arc<str> = Arc::from(plan.opts.topic.as_str());
    let verify_cap = plan
        .opts
        .verify
        .then(|| crate::cli::VERIFY_RECORDS_MAX / u64::from(plan.opts.producers));
    let deadline = run.instant(run.send_end_ns);
    let mut seq = 0u64;
    let mut measured_sent = 0u64;
    let mut warmup_sent = 0u64;
    loop {
        if run.stop.load(Ordering::Relaxed) {
            return (Stop::Stopped, warmup_sent);
        }
        if verify_cap.is_some_and(|cap| seq >= cap) {
            return (Stop::VerifyCap, warmup_sent);
        }
        let due_ns = schedule.map(|s| s.due_ns(seq));
        if let Some(due) = due_ns {
            if due >= run.send_end_ns {
                return (run.end_stop(), warmup_sent);
            }
            if count.is_some_and(|c| measured_sent >= c) && due >= run.warmup_ns {
                return (Stop::Count, warmup_sent);
            }
            if due > run.now_ns() {
                tokio::time::sleep_until(run.instant(due)).await;
            }
        }
        // A full window (or a full SDK buffer) waits here; past the end of the run the
        // wait is cut short.
        // (A free slot is taken without arming a timer.)
        let permit = match window.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout_at(deadline, window.clone().acquire_owned()).await
            {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return (Stop::Stopped, warmup_sent),
                Err(_) => return (run.end_stop(), warmup_sent),
            },
        };
        let send_ns = match due_ns {
            Some(due) => due,
            None => {
                let now = run.now_ns();
                if now >= run.send_end_ns {
                    return (run.end_stop(), warmup_sent);
                }
                if count.is_some_and(|c| measured_sent >= c) && now >= run.warmup_ns {
                    return (Stop::Count, warmup_sent);
                }
                now
            }
        };
        let measured = send_ns >= run.warmup_ns;
        let header = Header {
            run_id: run.run_id,
            id: RecordId { producer: id, seq },
            send_ns,
        };
        let value = payload::encode(&header, plan.size, &filler);
        let record = ProducerRecord::new(topic.clone(), value);
        let record = match plan.opts.partitioner {
            PartitionerArg::Sticky => record,
            PartitionerArg::RoundRobin => record.partition(partition_for(id, seq, run.partitions)),
        };
        // The callback runs once, on the producer's task: the time, the window slot back,
        // the outcome into the tally.
        let callback = {
            let tally = Arc::clone(tally);
            let epoch = run.epoch;
            move |result: Result<RecordMetadata, DeliveryError>| {
                let at_ns = ns_since(epoch);
                drop(permit);
                tally.resolved(seq, send_ns, measured, result, at_ns);
            }
        };
        tally.handing();
        // Most sends find buffer space at once: only one that waits arms the deadline.
        let send = producer.send_with(record, callback);
        tokio::pin!(send);
        let once = std::future::poll_fn(|cx| std::task::Poll::Ready(send.as_mut().poll(cx))).await;
        let sent = match once {
            std::task::Poll::Ready(r) => Ok(r),
            std::task::Poll::Pending => tokio::time::timeout_at(deadline, send).await,
        };
        match sent {
            Ok(Ok(())) => tally.taken(seq),
            Ok(Err(e)) => {
                errors.add(format!("send: {}", client_kind(&e)));
                tally.not_taken(seq, true);
                run.stop.store(true, Ordering::Relaxed);
                return (Stop::Failed(e.to_string()), warmup_sent);
            }
            // Waited for SDK buffer space past the end: the record was not taken.
            Err(_) => {
                tally.not_taken(seq, false);
                return (run.end_stop(), warmup_sent);
            }
        }
        seq += 1;
        if measured {
            measured_sent += 1;
        } else {
            warmup_sent += 1;
        }
    }
}

fn ns_since(epoch: std::time::Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Splits the run's bound into each producer's count (`None`: time-bounded).
pub fn share(plan: &Plan, id: u32) -> Option<u64> {
    match plan.bound {
        Bound::Count(n) => Some(sluice_bench::load::schedule::split_count(
            n,
            plan.opts.producers,
            id,
        )),
        Bound::Duration(_) | Bound::All => None,
    }
}
