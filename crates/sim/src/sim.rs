//! One run: the cluster, the workload, the faults and the event loop.
//!
//! Every node is a real [`ReplicatedPartition`] over its own [`MemFs`]. Time is
//! virtual (ms) and advances only from event to event; the only randomness is one
//! `SmallRng` seeded from the config, drawn in event order. Each event is one of:
//! a node's tick (every [`TICK_MS`]), a Raft message delivery, a node's flush cycle
//! (`sync`, the group commit, 1-2 ms after the partition becomes dirty), a producer's
//! or consumer's step, a produce request reaching a node or its reply reaching the
//! producer, or a fault. After every event the [`Checker`] runs over every node.
//!
//! A run has two phases: the faulty phase (`ticks` long), then the quiet phase — all
//! partitions healed, every node restarted, no more message faults, producers finish
//! what they hold — which must converge (a ready leader, every log identical and
//! committed) within `quiesce_ticks`, and ends with the final checks.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::rc::Rc;

use pollster::block_on;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_client::session::{
    Accumulator, BatchConfig, Outcome, ReadyBatch, RecordRef, RetryPolicy,
};
use sluice_engine::{EngineError, PendingSync, ReplicatedPartition, StepError};
use sluice_proto::wire::WriteOutcome;
use sluice_proto::{batches, BatchHeader, Limits};
use sluice_replica::{Acks, Message, Produced, ProposeError, ReplicaConfig, ReplyError};
use sluice_storage::{CrashModel, DetachedSync, LogConfig, MemFs};

use crate::check::{Checker, Violation};
use crate::config::{SimConfig, TICK_MS};
use crate::net::{isolate, split, Net};
use crate::queue::EventQueue;
use crate::shadow::{show_value, value_bytes, watch, FsFlags, Shadow, Value};

/// A produce request's answer, as it travels back to the producer.
#[derive(Debug, Clone)]
enum Answer {
    Produced(Produced),
    Refused(ProposeError),
    Lost(ReplyError),
    /// Refused by the idempotent producer's check before proposing.
    Checked(EngineError),
}

/// The kinds of injected fault that are scheduled on a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Partition,
    Crash,
    PowerLoss,
    FsyncError,
    WriteError,
    ClockJump,
    DiskStall,
}

#[derive(Debug)]
enum Event {
    Tick {
        node: usize,
        inc: u64,
    },
    Deliver {
        msg: Message,
        inc: u64,
    },
    Flush {
        node: usize,
        inc: u64,
    },
    /// A pipelined flush's fdatasync completes (`ReplicatedPartition::finish_sync`).
    Synced {
        node: usize,
        inc: u64,
    },
    Produce {
        p: usize,
    },
    Request {
        p: usize,
        attempt: u64,
        node: usize,
        inc: u64,
    },
    Reply {
        p: usize,
        attempt: u64,
        answer: Answer,
    },
    Timeout {
        p: usize,
        attempt: u64,
    },
    Fetch {
        c: usize,
    },
    Retain {
        node: usize,
        inc: u64,
    },
    Inject(Kind),
    Heal {
        id: u64,
    },
    Restart {
        node: usize,
        inc: u64,
    },
    EndFaults,
    Converge,
}

/// Faults injected in a run, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub delayed: u64,
    pub partitions: u64,
    pub crashes: u64,
    pub power_losses: u64,
    pub fsync_errors: u64,
    pub write_errors: u64,
    pub clock_jumps: u64,
    pub disk_stalls: u64,
}

impl FaultCounts {
    /// Adds another run's counts.
    pub fn add(&mut self, o: &FaultCounts) {
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.delayed += o.delayed;
        self.partitions += o.partitions;
        self.crashes += o.crashes;
        self.power_losses += o.power_losses;
        self.fsync_errors += o.fsync_errors;
        self.write_errors += o.write_errors;
        self.clock_jumps += o.clock_jumps;
        self.disk_stalls += o.disk_stalls;
    }

    /// Every fault.
    pub fn total(&self) -> u64 {
        self.dropped
            + self.duplicated
            + self.reordered
            + self.delayed
            + self.partitions
            + self.crashes
            + self.power_losses
            + self.fsync_errors
            + self.write_errors
            + self.clock_jumps
            + self.disk_stalls
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dropped {}, duplicated {}, reordered {}, delayed {}, partitions {}, crashes {}, \
             power losses {}, fsync errors {}, write errors {}, clock jumps {}, disk stalls {}",
            self.dropped,
            self.duplicated,
            self.reordered,
            self.delayed,
            self.partitions,
            self.crashes,
            self.power_losses,
            self.fsync_errors,
            self.write_errors,
            self.clock_jumps,
            self.disk_stalls
        )
    }
}

/// What a run that held every invariant did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub seed: u64,
    pub events: u64,
    /// Produce requests that reached a node.
    pub proposals: u64,
    /// `Ok` replies received by producers.
    pub acks: u64,
    /// Consumer reads served.
    pub fetches: u64,
    pub records_consumed: u64,
    pub faults: FaultCounts,
    /// Distinct values acknowledged.
    pub acked_values: u64,
    /// Committed offsets at the end.
    pub committed: u64,
    /// The highest term that had a leader.
    pub max_term: u64,
    /// Virtual time at the end, ms.
    pub virtual_ms: u64,
}

impl Report {
    /// Simulated operations: proposals, acks and fetches.
    pub fn ops(&self) -> u64 {
        self.proposals + self.acks + self.fetches
    }
}

/// A run that broke an invariant.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub config: SimConfig,
    /// Virtual time of the event after which the check failed.
    pub at_ms: u64,
    pub event: u64,
    pub violation: Violation,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} FAILED at {} ms (event {}): invariant {} violated: {}\nreplay: {}",
            self.config.seed,
            self.at_ms,
            self.event,
            self.violation.invariant,
            self.violation.detail,
            self.config.replay_command()
        )
    }
}

/// A pipelined flush in flight: what `finish_sync` needs, and the fdatasync.
struct Syncing(PendingSync, DetachedSync);

impl fmt::Debug for Syncing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Syncing")
            .field(&self.0)
            .finish_non_exhaustive()
    }
}

/// One node: its disk, its partition (when running), what it owes producers.
#[derive(Debug)]
struct Node {
    id: u64,
    fs: MemFs,
    flags: Rc<FsFlags>,
    part: Option<ReplicatedPartition<MemFs>>,
    /// Bumped at every crash: events for an older incarnation are void.
    inc: u64,
    flush_scheduled: bool,
    /// A pipelined flush whose fdatasync runs: the partition takes messages and
    /// appends meanwhile, and no other flush begins until it completes.
    syncing: Option<Syncing>,
    /// Ticks are held back until then (a clock stall), then run bunched.
    paused_until: u64,
    missed_ticks: u32,
    /// Flushes wait until then (a slow disk).
    disk_stall_until: u64,
    /// Produce tokens → (producer, attempt).
    tokens: BTreeMap<u64, (usize, u64)>,
    shadow: Shadow,
    last_hw: u64,
    /// The highest term seen at the end of an event the node survived.
    durable_term: u64,
    /// `MemFs::faults_injected` when last looked at: a failure with no new injected
    /// fault behind it is a bug.
    faults_seen: u64,
}

#[derive(Debug)]
struct InFlight {
    attempt: u64,
    batch: ReadyBatch<Value>,
    failures: u32,
}

/// A producer: values `p<id>-<seq>`, batched by the SDK's `Accumulator`, one batch in
/// flight, retried by the SDK's `RetryPolicy`.
#[derive(Debug)]
struct Producer {
    id: u64,
    next_seq: u64,
    acc: Accumulator<Value>,
    inflight: Option<InFlight>,
    retry: Option<(ReadyBatch<Value>, u32)>,
    retry_at: u64,
    guess: usize,
    next_attempt: u64,
}

impl Producer {
    fn idle(&self) -> bool {
        self.inflight.is_none() && self.retry.is_none() && self.acc.is_empty()
    }
}

/// After a batch failed for good: an idempotent producer's sequences start over (no
/// batch of it waits elsewhere: it holds one at a time, the rest in its accumulator).
fn restart_sequences(producer: &mut Producer) {
    // Not idempotent: nothing to do. Re-stamping the accumulator's sealed batches
    // cannot fail (they were built by it).
    let _ = producer.acc.restart_sequences(0, std::iter::empty());
}

#[derive(Debug)]
struct Consumer {
    pos: u64,
    guess: usize,
    /// The value seen at each offset so far.
    seen: BTreeMap<u64, Value>,
}

/// Produce requests time out after this long without a reply (indeterminate).
const REQUEST_TIMEOUT_MS: u64 = 400;
/// Largest read a consumer asks for.
const FETCH_BYTES_MAX: usize = 2048;
/// How often each node applies retention, ms.
const RETAIN_EVERY_MS: std::ops::RangeInclusive<u64> = 100..=400;
/// How often the quiet phase checks for convergence.
const CONVERGE_EVERY_MS: u64 = 20;

/// The simulation. See the module docs.
///
/// Call order: [`Sim::new`], then [`Sim::run`] once (or just [`run`]).
pub struct Sim<'t> {
    cfg: SimConfig,
    rng: SmallRng,
    now: u64,
    events: u64,
    queue: EventQueue<Event>,
    nodes: Vec<Node>,
    net: Net,
    producers: Vec<Producer>,
    consumers: Vec<Consumer>,
    checker: Checker,
    report: Report,
    trace: Option<&'t mut dyn Write>,
    faults_end_ms: u64,
    deadline_ms: u64,
    quiet: bool,
    done: bool,
    next_token: u64,
    limits: Limits,
    policy: RetryPolicy,
}

impl fmt::Debug for Sim<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.cfg.seed)
            .field("now", &self.now)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

fn log_config() -> LogConfig {
    LogConfig {
        // Small segments and indexes: rolls, multi-segment truncation and reads.
        segment_bytes_max: 16 << 10,
        index_interval_bytes: 1024,
        index_bytes_max: 4096,
        retention_bytes_max: None,
        retention_age_ms_max: None,
        ..LogConfig::default()
    }
}

fn mix_seed(a: u64, b: u64) -> u64 {
    let mut x = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^ (x >> 29)
}

fn show_msg(m: &Message) -> String {
    format!(
        "{:?} {}->{} term {} index {} log_term {} entries {} commit {}{}",
        m.get_msg_type(),
        m.from,
        m.to,
        m.term,
        m.index,
        m.log_term,
        m.entries.len(),
        m.commit,
        if m.reject { " reject" } else { "" }
    )
}

impl<'t> Sim<'t> {
    /// A simulation of `cfg`, writing one line per event to `trace` if given.
    pub fn new(cfg: SimConfig, trace: Option<&'t mut dyn Write>) -> Sim<'t> {
        assert!(
            cfg.nodes == 3 || cfg.nodes == 5,
            "sim: a cluster has 3 or 5 nodes"
        );
        assert!(cfg.latency_max_ms >= 1, "sim: latency_max_ms must be >= 1");
        let rng = SmallRng::seed_from_u64(cfg.seed);
        let nodes = (0..cfg.nodes)
            .map(|i| {
                let fs = MemFs::new();
                let flags = Rc::new(FsFlags::default());
                watch(&fs, &flags);
                Node {
                    id: i as u64 + 1,
                    fs,
                    flags,
                    part: None,
                    inc: 0,
                    flush_scheduled: false,
                    syncing: None,
                    paused_until: 0,
                    missed_ticks: 0,
                    disk_stall_until: 0,
                    tokens: BTreeMap::new(),
                    shadow: Shadow::default(),
                    last_hw: 0,
                    durable_term: 0,
                    faults_seen: 0,
                }
            })
            .collect();
        let batch = BatchConfig {
            batch_bytes_max: 200,
            linger_ms: 2,
            buffer_bytes_max: 4096,
            limits: Limits::DEFAULT,
        };
        let producers = (0..cfg.producers)
            .map(|i| {
                let mut acc = Accumulator::new(batch);
                if cfg.idempotent {
                    acc.set_producer(i as i64 + 1, 0);
                }
                Producer {
                    id: i as u64 + 1,
                    next_seq: 0,
                    acc,
                    inflight: None,
                    retry: None,
                    retry_at: 0,
                    guess: i % cfg.nodes,
                    next_attempt: 0,
                }
            })
            .collect();
        let consumers = (0..cfg.consumers)
            .map(|i| Consumer {
                pos: 0,
                guess: i % cfg.nodes,
                seen: BTreeMap::new(),
            })
            .collect();
        let idempotent = cfg.idempotent;
        let faults_end_ms = cfg.ticks * TICK_MS;
        let deadline_ms = faults_end_ms + cfg.quiesce_ticks * TICK_MS;
        Sim {
            report: Report {
                seed: cfg.seed,
                ..Report::default()
            },
            cfg,
            rng,
            now: 0,
            events: 0,
            queue: EventQueue::default(),
            nodes,
            net: Net::default(),
            producers,
            consumers,
            checker: Checker::default(),
            trace,
            faults_end_ms,
            deadline_ms,
            quiet: false,
            done: false,
            next_token: 0,
            limits: Limits::DEFAULT,
            policy: RetryPolicy {
                retries: 40,
                backoff_ms: 5,
                backoff_max_ms: 100,
                // Safe only for the idempotent producer.
                retry_indeterminate: idempotent,
            },
        }
    }

    /// Runs to the end: the report, or the first broken invariant.
    pub fn run(mut self) -> Result<Report, Box<Failure>> {
        match self.run_inner() {
            Ok(()) => {
                self.report.events = self.events;
                self.report.acked_values = self.checker.acked() as u64;
                self.report.committed = self.checker.committed_end();
                self.report.max_term = self.checker.max_leader_term();
                self.report.virtual_ms = self.now;
                Ok(self.report)
            }
            Err(violation) => {
                let failure = Failure {
                    config: self.cfg.clone(),
                    at_ms: self.now,
                    event: self.events,
                    violation,
                };
                self.trace(|| format!("VIOLATION {}", failure.violation));
                Err(Box::new(failure))
            }
        }
    }

    fn run_inner(&mut self) -> Result<(), Violation> {
        for i in 0..self.nodes.len() {
            self.open_node(i)?;
        }
        for p in 0..self.producers.len() {
            let at = self.rng.random_range(1..=10);
            self.queue.push(at, Event::Produce { p });
        }
        for c in 0..self.consumers.len() {
            let at = self.rng.random_range(1..=20);
            self.queue.push(at, Event::Fetch { c });
        }
        for kind in [
            Kind::Partition,
            Kind::Crash,
            Kind::PowerLoss,
            Kind::FsyncError,
            Kind::WriteError,
            Kind::ClockJump,
            Kind::DiskStall,
        ] {
            self.schedule_fault(kind);
        }
        self.queue.push(self.faults_end_ms, Event::EndFaults);
        self.check()?;
        while let Some((at, event)) = self.queue.pop() {
            debug_assert!(at >= self.now, "sim: time went backwards");
            self.now = at;
            self.events += 1;
            PROGRESS.with(|p| p.set((at, self.events)));
            self.handle(event)?;
            self.check()?;
            if self.done {
                return Ok(());
            }
        }
        Err(Violation::new("convergence", "the event queue ran dry"))
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = self.trace.as_mut() {
            let _ = writeln!(t, "{:>7} {}", self.now, line());
        }
    }

    fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    fn latency(&mut self) -> u64 {
        self.rng.random_range(1..=self.cfg.latency_max_ms)
    }

    fn client_latency(&mut self) -> u64 {
        self.rng.random_range(1..=2)
    }

    fn up(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].part.is_some())
            .collect()
    }

    fn pick_up(&mut self) -> Option<usize> {
        let up = self.up();
        if up.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..up.len());
        Some(up[i])
    }

    /// The node that leads the highest term, if any.
    fn leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter_map(|i| {
                let s = self.nodes[i].part.as_ref()?.replica().status();
                s.is_leader.then_some((s.term, i))
            })
            .max()
            .map(|(_, i)| i)
    }

    // ---------------------------------------------------------------- nodes

    fn replica_config(&self, i: usize) -> ReplicaConfig {
        let node = &self.nodes[i];
        let voters = (1..=self.nodes.len() as u64).collect();
        let mut c = ReplicaConfig::new(node.id, voters);
        c.seed = mix_seed(mix_seed(self.cfg.seed, node.id), node.inc);
        // Small: catching up reads cold batches back from the log.
        c.cache_bytes = 16 << 10;
        c.max_size_per_msg = 8 << 10;
        c.max_inflight_msgs = 32;
        // The group is created at time 0 on every node, and no node ever loses what it
        // synced (crashes lose unsynced bytes only): no replica has anything to forget.
        c.new_group = true;
        c
    }

    fn open_node(&mut self, i: usize) -> Result<(), Violation> {
        let config = self.replica_config(i);
        let now = self.now as i64;
        let fs = self.nodes[i].fs.clone();
        let part = match block_on(ReplicatedPartition::open(fs, log_config(), config, now)) {
            Ok((p, _)) => p,
            Err(e) => {
                return Err(Violation::new(
                    "recovery-failed",
                    format!("node {} does not reopen after its crash: {e}", i + 1),
                ))
            }
        };
        let status = part.replica().status();
        let node = &mut self.nodes[i];
        if status.term < node.durable_term {
            return Err(Violation::new(
                "term-durability",
                format!(
                    "node {} restarted at term {} but had run at term {}",
                    node.id, status.term, node.durable_term
                ),
            ));
        }
        node.last_hw = part.replica().high_watermark();
        node.faults_seen = node.fs.faults_injected();
        node.flags.truncated.set(true);
        node.part = Some(part);
        node.flush_scheduled = false;
        node.syncing = None;
        node.missed_ticks = 0;
        let inc = node.inc;
        self.trace(|| {
            format!(
                "n{} open: term {} commit {} hw {} log end {}",
                i + 1,
                status.term,
                status.commit_index,
                status.high_watermark,
                status.log_end_offset
            )
        });
        let first_tick = self.now + self.rng.random_range(1..=TICK_MS);
        self.queue.push(first_tick, Event::Tick { node: i, inc });
        if self.cfg.retain_offsets > 0 {
            let at = self.now + self.rng.random_range(RETAIN_EVERY_MS);
            self.queue.push(at, Event::Retain { node: i, inc });
        }
        self.drain(i);
        Ok(())
    }

    /// Crashes node `i`: what survives is `MemFs::crash` under a random model.
    fn crash(&mut self, i: usize, why: &str) {
        let model = CrashModel::ALL[self.rng.random_range(0..CrashModel::ALL.len())];
        let node = &mut self.nodes[i];
        node.part = None;
        node.fs = node.fs.crash(model, &mut self.rng);
        watch(&node.fs, &node.flags);
        node.inc += 1;
        node.tokens.clear();
        node.flush_scheduled = false;
        node.syncing = None;
        node.shadow.clear();
        let inc = node.inc;
        self.trace(|| format!("n{} CRASH ({why}), disk keeps {model:?}", i + 1));
        let at = self.now + self.rng.random_range(20..=300);
        self.queue.push(at, Event::Restart { node: i, inc });
    }

    /// After a call into node `i`'s partition: a failure is a crash if an injected
    /// fault explains it and a violation if not; otherwise send what it produced.
    fn after_call(&mut self, i: usize, err: Option<String>) -> Result<(), Violation> {
        let node = &mut self.nodes[i];
        let Some(part) = node.part.as_ref() else {
            return Ok(());
        };
        let failure = part.failure().map(str::to_string).or(err);
        if let Some(why) = failure {
            let injected = node.fs.faults_injected() > node.faults_seen;
            if !injected {
                return Err(Violation::new(
                    "unexpected-failure",
                    format!("node {} failed with no injected fault: {why}", i + 1),
                ));
            }
            self.trace(|| format!("n{} failed: {why}", i + 1));
            self.crash(i, "injected I/O error");
            return Ok(());
        }
        self.drain(i);
        Ok(())
    }

    /// Sends node `i`'s messages and replies, and schedules its flush if it is dirty.
    fn drain(&mut self, i: usize) {
        let Some(part) = self.nodes[i].part.as_mut() else {
            return;
        };
        let msgs = part.take_messages();
        let replies = part.take_replies();
        let dirty = part.needs_sync();
        for m in msgs {
            self.send(m);
        }
        for (token, result) in replies {
            let Some((p, attempt)) = self.nodes[i].tokens.remove(&token) else {
                continue;
            };
            let answer = match result {
                Ok(produced) => Answer::Produced(produced),
                Err(e) => Answer::Lost(e),
            };
            let at = self.now + self.client_latency();
            self.queue.push(at, Event::Reply { p, attempt, answer });
        }
        if dirty && !self.nodes[i].flush_scheduled && self.nodes[i].syncing.is_none() {
            let at = (self.now + self.rng.random_range(1..=2)).max(self.nodes[i].disk_stall_until);
            let node = &mut self.nodes[i];
            node.flush_scheduled = true;
            let inc = node.inc;
            self.queue.push(at, Event::Flush { node: i, inc });
        }
    }

    fn live(&self, i: usize, inc: u64) -> bool {
        self.nodes[i].inc == inc && self.nodes[i].part.is_some()
    }

    fn send(&mut self, msg: Message) {
        let (Some(from), Some(to)) = (
            (msg.from as usize).checked_sub(1),
            (msg.to as usize).checked_sub(1),
        ) else {
            return;
        };
        if to >= self.nodes.len() || self.net.is_cut(from, to) || self.nodes[to].part.is_none() {
            return;
        }
        let f = self.cfg.faults;
        let faulty = !self.quiet;
        if faulty && self.rng.random_bool(f.drop) {
            self.report.faults.dropped += 1;
            self.trace(|| format!("drop {}", show_msg(&msg)));
            return;
        }
        let copies = if faulty && self.rng.random_bool(f.dup) {
            self.report.faults.duplicated += 1;
            2
        } else {
            1
        };
        let inc = self.nodes[to].inc;
        for _ in 0..copies {
            let mut at = self.now + self.latency();
            if faulty && self.rng.random_bool(f.reorder) {
                self.report.faults.reordered += 1;
                at += self.rng.random_range(1..=30);
            }
            if faulty && self.rng.random_bool(f.delay) {
                self.report.faults.delayed += 1;
                at += self.rng.random_range(50..=300);
            }
            self.queue.push(
                at,
                Event::Deliver {
                    msg: msg.clone(),
                    inc,
                },
            );
        }
    }

    // ---------------------------------------------------------------- events

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Tick { node, inc } => self.on_tick(node, inc),
            Event::Deliver { msg, inc } => self.on_deliver(msg, inc),
            Event::Flush { node, inc } => self.on_flush(node, inc),
            Event::Synced { node, inc } => self.on_synced(node, inc),
            Event::Produce { p } => self.on_produce(p),
            Event::Request {
                p,
                attempt,
                node,
                inc,
            } => self.on_request(p, attempt, node, inc),
            Event::Reply { p, attempt, answer } => self.on_reply(p, attempt, answer),
            Event::Timeout { p, attempt } => self.on_timeout(p, attempt),
            Event::Fetch { c } => self.on_fetch(c),
            Event::Retain { node, inc } => self.on_retain(node, inc),
            Event::Inject(kind) => self.on_inject(kind),
            Event::Heal { id } => {
                self.trace(|| format!("heal partition {id}"));
                self.net.heal(id);
                Ok(())
            }
            Event::Restart { node, inc } => {
                if self.nodes[node].inc == inc && self.nodes[node].part.is_none() {
                    self.open_node(node)?;
                }
                Ok(())
            }
            Event::EndFaults => self.on_end_faults(),
            Event::Converge => self.on_converge(),
        }
    }

    fn on_tick(&mut self, i: usize, inc: u64) -> Result<(), Violation> {
        if !self.live(i, inc) {
            return Ok(());
        }
        self.queue
            .push(self.now + TICK_MS, Event::Tick { node: i, inc });
        let node = &mut self.nodes[i];
        if node.paused_until > self.now {
            node.missed_ticks += 1;
            return Ok(());
        }
        let count = 1 + std::mem::take(&mut node.missed_ticks);
        self.trace(|| format!("n{} tick x{count}", i + 1));
        self.ticks(i, count)
    }

    fn ticks(&mut self, i: usize, count: u32) -> Result<(), Violation> {
        let now = self.now as i64;
        for _ in 0..count {
            let Some(part) = self.nodes[i].part.as_mut() else {
                return Ok(());
            };
            let err = block_on(part.tick(now)).err().map(|e| e.to_string());
            self.after_call(i, err)?;
        }
        Ok(())
    }

    fn on_deliver(&mut self, msg: Message, inc: u64) -> Result<(), Violation> {
        let i = msg.to as usize - 1;
        if !self.live(i, inc) {
            return Ok(());
        }
        self.trace(|| format!("deliver {}", show_msg(&msg)));
        let now = self.now as i64;
        let Some(part) = self.nodes[i].part.as_mut() else {
            return Ok(());
        };
        match block_on(part.step(msg, now)) {
            Ok(()) => self.after_call(i, None),
            Err(StepError::Engine(e)) => self.after_call(i, Some(e.to_string())),
            Err(StepError::Replica(e)) => Err(Violation::new(
                "unexpected-failure",
                format!("node {} refused a Raft message: {e}", i + 1),
            )),
        }
    }

    fn on_flush(&mut self, i: usize, inc: u64) -> Result<(), Violation> {
        if !self.live(i, inc) {
            return Ok(());
        }
        let stall = self.nodes[i].disk_stall_until;
        if stall > self.now {
            self.queue.push(stall, Event::Flush { node: i, inc });
            return Ok(());
        }
        self.nodes[i].flush_scheduled = false;
        let now = self.now as i64;
        // With `pipelined`, half the flushes run as the engine's driver runs them: the
        // fdatasync completes 0-3 ms later, while messages and appends go on.
        let pipelined = self.cfg.pipelined && self.rng.random_bool(0.5);
        self.trace(|| format!("n{} sync{}", i + 1, if pipelined { " begins" } else { "" }));
        let Some(part) = self.nodes[i].part.as_mut() else {
            return Ok(());
        };
        if !pipelined {
            let err = block_on(part.sync(now)).err().map(|e| e.to_string());
            return self.after_call(i, err);
        }
        match block_on(part.begin_sync(now)) {
            Ok(Some((pending, sync))) => {
                let at = self.now + self.rng.random_range(0..=3);
                self.nodes[i].syncing = Some(Syncing(pending, sync));
                self.queue.push(at, Event::Synced { node: i, inc });
                self.after_call(i, None)
            }
            Ok(None) => self.after_call(i, None),
            Err(e) => self.after_call(i, Some(e.to_string())),
        }
    }

    fn on_synced(&mut self, i: usize, inc: u64) -> Result<(), Violation> {
        if !self.live(i, inc) {
            return Ok(());
        }
        let stall = self.nodes[i].disk_stall_until;
        if stall > self.now {
            self.queue.push(stall, Event::Synced { node: i, inc });
            return Ok(());
        }
        let Some(Syncing(pending, sync)) = self.nodes[i].syncing.take() else {
            return Ok(());
        };
        self.trace(|| format!("n{} sync completes", i + 1));
        let now = self.now as i64;
        let result = block_on(sync);
        let Some(part) = self.nodes[i].part.as_mut() else {
            return Ok(());
        };
        let err = block_on(part.finish_sync(pending, result, now))
            .err()
            .map(|e| e.to_string());
        self.after_call(i, err)
    }

    /// Retention: the node drops what is committed below `hw - keep`, keep random up to
    /// `retain_offsets`; a follower that falls behind that restarts from the leader's
    /// log start (`ResetLog`).
    fn on_retain(&mut self, i: usize, inc: u64) -> Result<(), Violation> {
        if !self.live(i, inc) {
            return Ok(());
        }
        let at = self.now + self.rng.random_range(RETAIN_EVERY_MS);
        self.queue.push(at, Event::Retain { node: i, inc });
        let keep = self.rng.random_range(0..=self.cfg.retain_offsets);
        let now = self.now as i64;
        let Some(part) = self.nodes[i].part.as_mut() else {
            return Ok(());
        };
        let to = part.replica().high_watermark().saturating_sub(keep);
        if to <= part.log().log_start_offset() {
            return Ok(());
        }
        let result = block_on(part.retain_from(to, now));
        self.trace(|| format!("n{} retain from {to}: {result:?}", i + 1));
        let err = result.err().map(|e| e.to_string());
        self.after_call(i, err)
    }

    // ---------------------------------------------------------------- producers

    fn on_produce(&mut self, p: usize) -> Result<(), Violation> {
        let now = self.now;
        let producer = &mut self.producers[p];
        if self.quiet {
            producer.acc.seal_all();
        } else if producer.acc.buffered_bytes() < 1024 {
            let n = self.rng.random_range(1..=3);
            for _ in 0..n {
                let v = (producer.id << 40) | producer.next_seq;
                producer.next_seq += 1;
                let value = value_bytes(v);
                let record = RecordRef::new(now as i64, None, Some(&value));
                if producer.acc.push(now as i64, 0, record, v).is_err() {
                    // Buffer full: the value was never offered.
                    producer.next_seq -= 1;
                    break;
                }
            }
        }
        self.try_send(p);
        let next = self.now + self.rng.random_range(2..=8);
        let producer = &self.producers[p];
        if !(self.quiet && producer.idle()) {
            self.queue.push(next, Event::Produce { p });
        }
        Ok(())
    }

    fn try_send(&mut self, p: usize) {
        let now = self.now;
        let producer = &mut self.producers[p];
        if producer.inflight.is_some() || producer.retry_at > now {
            return;
        }
        let (batch, failures) = match producer.retry.take() {
            Some(r) => r,
            None => match producer.acc.poll_ready(now as i64) {
                Some(b) => (b, 0),
                None => return,
            },
        };
        producer.next_attempt += 1;
        let attempt = producer.next_attempt;
        let node = producer.guess;
        let values = batch.records.clone();
        producer.inflight = Some(InFlight {
            attempt,
            batch,
            failures,
        });
        let inc = self.nodes[node].inc;
        let at = now + self.client_latency();
        self.queue.push(
            at,
            Event::Request {
                p,
                attempt,
                node,
                inc,
            },
        );
        self.queue
            .push(now + REQUEST_TIMEOUT_MS, Event::Timeout { p, attempt });
        self.trace(|| {
            format!(
                "p{} send #{attempt} to n{} ({} records from {})",
                p + 1,
                node + 1,
                values.len(),
                values.first().map_or(String::new(), |v| show_value(*v))
            )
        });
    }

    fn on_request(&mut self, p: usize, attempt: u64, i: usize, inc: u64) -> Result<(), Violation> {
        if !self.live(i, inc) {
            return Ok(());
        }
        let Some(bytes) = self.producers[p]
            .inflight
            .as_ref()
            .filter(|f| f.attempt == attempt)
            .map(|f| f.batch.bytes.clone())
        else {
            return Ok(());
        };
        self.report.proposals += 1;
        if self.cfg.idempotent {
            // What `Shard::produce` does before proposing.
            let limits = self.limits;
            let checked = match self.nodes[i].part.as_ref() {
                Some(part) => BatchHeader::parse(&bytes, &limits)
                    .map_err(EngineError::InvalidBatch)
                    .and_then(|h| part.check_sequence(&h, Acks::All)),
                None => return Ok(()),
            };
            if let Err(e) = checked {
                self.trace(|| format!("n{} check p{} #{attempt}: {e}", i + 1, p + 1));
                let at = self.now + self.client_latency();
                self.queue.push(
                    at,
                    Event::Reply {
                        p,
                        attempt,
                        answer: Answer::Checked(e),
                    },
                );
                return Ok(());
            }
        }
        self.next_token += 1;
        let token = self.next_token;
        let now = self.now as i64;
        let Some(part) = self.nodes[i].part.as_mut() else {
            return Ok(());
        };
        let result = block_on(part.propose(token, bytes, Acks::All, now));
        self.trace(|| format!("n{} propose p{} #{attempt}: {result:?}", i + 1, p + 1));
        match result {
            Ok(()) => {
                self.nodes[i].tokens.insert(token, (p, attempt));
                self.after_call(i, None)
            }
            Err(e) => {
                let at = self.now + self.client_latency();
                self.queue.push(
                    at,
                    Event::Reply {
                        p,
                        attempt,
                        answer: Answer::Refused(e),
                    },
                );
                self.after_call(i, None)
            }
        }
    }

    fn on_reply(&mut self, p: usize, attempt: u64, answer: Answer) -> Result<(), Violation> {
        let n = self.nodes.len();
        let producer = &mut self.producers[p];
        if producer
            .inflight
            .as_ref()
            .is_none_or(|f| f.attempt != attempt)
        {
            return Ok(());
        }
        let Some(f) = producer.inflight.take() else {
            return Ok(());
        };
        self.trace(|| format!("p{} reply #{attempt}: {answer:?}", p + 1));
        let producer = &mut self.producers[p];
        match answer {
            Answer::Produced(r) => {
                self.report.acks += 1;
                producer.acc.release(f.batch.bytes.len());
                self.checker
                    .on_ack(&f.batch.records, r.base_offset, r.last_offset)
            }
            Answer::Checked(EngineError::DuplicateSequence {
                base_offset: Some(base),
                last_offset: Some(last),
            }) => {
                // An earlier attempt landed: the duplicate answer is the acknowledgement.
                self.report.acks += 1;
                producer.acc.release(f.batch.bytes.len());
                self.checker.on_ack(&f.batch.records, base, last)
            }
            Answer::Checked(EngineError::TimedOut) => {
                // Appended by an earlier attempt, not committed yet: ask again later.
                self.retry_or_give_up(p, f, WriteOutcome::Indeterminate)
            }
            Answer::Checked(e) => Err(Violation::new(
                "unexpected-failure",
                format!("an idempotent producer's batch was refused: {e}"),
            )),
            Answer::Lost(ReplyError::LeadershipLost) | Answer::Refused(ProposeError::Failed(_))
                if self.cfg.idempotent =>
            {
                producer.guess = (producer.guess + 1) % n;
                self.retry_or_give_up(p, f, WriteOutcome::Indeterminate)
            }
            Answer::Lost(ReplyError::LeadershipLost) | Answer::Refused(ProposeError::Failed(_)) => {
                // Indeterminate: it may or may not be in the log; not retried (no
                // idempotent producer), so it appears at most once.
                producer.acc.release(f.batch.bytes.len());
                producer.guess = (producer.guess + 1) % n;
                Ok(())
            }
            Answer::Refused(ProposeError::Invalid(e)) => Err(Violation::new(
                "unexpected-failure",
                format!("a producer's batch was refused as invalid: {e}"),
            )),
            Answer::Refused(e) => {
                if let ProposeError::NotLeader { leader } = e {
                    producer.guess = match leader {
                        Some(l) if (1..=n as u64).contains(&l) => l as usize - 1,
                        _ => (producer.guess + 1) % n,
                    };
                }
                let failures = f.failures + 1;
                let decision = self.policy.decide(
                    self.now as i64,
                    failures,
                    true,
                    WriteOutcome::Definite,
                    None,
                );
                match decision {
                    Outcome::RetryAt(t) => {
                        producer.retry = Some((f.batch, failures));
                        producer.retry_at = u64::try_from(t).unwrap_or(u64::MAX);
                        Ok(())
                    }
                    Outcome::Failed | Outcome::Done => {
                        producer.acc.release(f.batch.bytes.len());
                        restart_sequences(producer);
                        self.checker.on_definite_failure(&f.batch.records)
                    }
                }
            }
        }
    }

    fn on_timeout(&mut self, p: usize, attempt: u64) -> Result<(), Violation> {
        let n = self.nodes.len();
        let idempotent = self.cfg.idempotent;
        let producer = &mut self.producers[p];
        if producer
            .inflight
            .as_ref()
            .is_some_and(|f| f.attempt == attempt)
        {
            let inflight = producer.inflight.take();
            producer.guess = (producer.guess + 1) % n;
            self.trace(|| format!("p{} timeout #{attempt}", p + 1));
            if let Some(f) = inflight {
                if idempotent {
                    return self.retry_or_give_up(p, f, WriteOutcome::Indeterminate);
                }
                self.producers[p].acc.release(f.batch.bytes.len());
            }
        }
        Ok(())
    }

    /// An idempotent producer's failed attempt: retried per the policy, or given up
    /// (the batch may or may not be in the log; its partition's sequences start over).
    fn retry_or_give_up(
        &mut self,
        p: usize,
        f: InFlight,
        outcome: WriteOutcome,
    ) -> Result<(), Violation> {
        let failures = f.failures + 1;
        let decision = self
            .policy
            .decide(self.now as i64, failures, true, outcome, None);
        let producer = &mut self.producers[p];
        match decision {
            Outcome::RetryAt(t) => {
                producer.retry = Some((f.batch, failures));
                producer.retry_at = u64::try_from(t).unwrap_or(u64::MAX);
            }
            Outcome::Failed | Outcome::Done => {
                producer.acc.release(f.batch.bytes.len());
                restart_sequences(producer);
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- consumers

    fn on_fetch(&mut self, c: usize) -> Result<(), Violation> {
        let next = self.now + self.rng.random_range(3..=15);
        if !self.done {
            self.queue.push(next, Event::Fetch { c });
        }
        let n = self.nodes.len();
        let i = self.consumers[c].guess;
        let Some(part) = self.nodes[i].part.as_ref() else {
            self.consumers[c].guess = self.rng.random_range(0..n);
            return Ok(());
        };
        if !part.replica().is_ready_leader() {
            self.consumers[c].guess = match part.replica().leader() {
                Some(l) if (1..=n as u64).contains(&l) && l as usize - 1 != i => l as usize - 1,
                _ => self.rng.random_range(0..n),
            };
            return Ok(());
        }
        // Now and then, seek back and read again: what was read must not change.
        if self.rng.random_bool(0.03) {
            let pos = self.consumers[c].pos;
            self.consumers[c].pos = self.rng.random_range(0..=pos);
        }
        let pos = self.consumers[c].pos;
        let hw = part.replica().high_watermark();
        let read = match block_on(part.read(pos, FETCH_BYTES_MAX)) {
            Ok(r) => r,
            // A leader that has not heard of the latest commit yet (a deposed one).
            Err(EngineError::OffsetOutOfRange { .. }) if pos > hw => return Ok(()),
            // Retention passed the consumer: it restarts at the log start, as a
            // consumer with `auto.offset.reset = earliest` would.
            Err(EngineError::OffsetOutOfRange { log_start, .. }) if pos < log_start => {
                self.consumers[c].pos = log_start;
                self.trace(|| format!("c{c} skips to the log start {log_start}"));
                return Ok(());
            }
            Err(e) => {
                return Err(Violation::new(
                    "consumer-order",
                    format!("consumer {c} read at {pos} from node {}: {e}", i + 1),
                ))
            }
        };
        self.report.fetches += 1;
        let mut pos = pos;
        let mut got = 0u64;
        for view in batches(&read.bytes, &self.limits) {
            let view = view.map_err(|e| {
                Violation::new("consumer-content", format!("a fetched batch is bad: {e}"))
            })?;
            let h = view.header();
            if h.base_offset + u64::from(h.record_count) > hw {
                return Err(Violation::new(
                    "consumer-order",
                    format!(
                        "node {} served a batch at {}..{} beyond its high watermark {hw}",
                        i + 1,
                        h.base_offset,
                        h.base_offset + u64::from(h.record_count)
                    ),
                ));
            }
            for r in view.records() {
                if r.offset < pos {
                    continue;
                }
                if r.offset != pos {
                    return Err(Violation::new(
                        "consumer-order",
                        format!("consumer {c} expected offset {pos} and got {}", r.offset),
                    ));
                }
                let v = r
                    .value
                    .and_then(crate::shadow::parse_value)
                    .ok_or_else(|| {
                        Violation::new("consumer-content", format!("offset {pos}: foreign value"))
                    })?;
                let consumer = &mut self.consumers[c];
                match consumer.seen.get(&pos) {
                    Some(old) if *old != v => {
                        return Err(Violation::new(
                            "consumer-content",
                            format!(
                                "consumer {c} read {} at offset {pos}, and {} before",
                                show_value(v),
                                show_value(*old)
                            ),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        consumer.seen.insert(pos, v);
                    }
                }
                if self.checker.value_at_offset(pos) != Some(v) {
                    return Err(Violation::new(
                        "consumer-content",
                        format!(
                            "consumer {c} read {} at offset {pos}; the committed record holds {:?}",
                            show_value(v),
                            self.checker.value_at_offset(pos).map(show_value)
                        ),
                    ));
                }
                pos += 1;
                got += 1;
            }
        }
        self.consumers[c].pos = pos;
        self.report.records_consumed += got;
        self.trace(|| format!("c{c} fetch from n{}: {got} records, now at {pos}", i + 1));
        Ok(())
    }

    // ---------------------------------------------------------------- faults

    fn rate(&self, kind: Kind) -> f64 {
        let f = &self.cfg.faults;
        match kind {
            Kind::Partition => f.partitions,
            Kind::Crash => f.crashes,
            Kind::PowerLoss => f.power_losses,
            Kind::FsyncError => f.fsync_errors,
            Kind::WriteError => f.write_errors,
            Kind::ClockJump => f.clock_jumps,
            Kind::DiskStall => f.disk_stalls,
        }
    }

    fn schedule_fault(&mut self, kind: Kind) {
        let rate = self.rate(kind);
        if rate <= 0.0 {
            return;
        }
        // Uniform on [1, 2/rate s]: mean 1/rate s.
        let span = ((2000.0 / rate) as u64).max(2);
        let at = self.now + self.rng.random_range(1..=span);
        if at < self.faults_end_ms {
            self.queue.push(at, Event::Inject(kind));
        }
    }

    fn on_inject(&mut self, kind: Kind) -> Result<(), Violation> {
        if self.quiet {
            return Ok(());
        }
        self.schedule_fault(kind);
        let n = self.nodes.len();
        match kind {
            Kind::Partition => {
                let shape = self.rng.random_range(0..6);
                let (what, links) = match shape {
                    0 => {
                        let a = self.rng.random_range(0..n);
                        (format!("isolate n{}", a + 1), isolate(a, n))
                    }
                    1 => {
                        let a = self.leader().unwrap_or_else(|| self.rng.random_range(0..n));
                        (format!("isolate leader n{}", a + 1), isolate(a, n))
                    }
                    2 => {
                        let a = self.rng.random_range(0..n);
                        let links = (0..n).filter(|o| *o != a).map(|o| (o, a)).collect();
                        (format!("n{} hears nobody", a + 1), links)
                    }
                    3 => {
                        let a = self.rng.random_range(0..n);
                        let links = (0..n).filter(|o| *o != a).map(|o| (a, o)).collect();
                        (format!("nobody hears n{}", a + 1), links)
                    }
                    4 => {
                        let a = self.rng.random_range(0..n);
                        let b = (a + self.rng.random_range(1..n)) % n;
                        (format!("cut n{} -> n{}", a + 1, b + 1), vec![(a, b)])
                    }
                    _ => {
                        let mut side: Vec<usize> = Vec::new();
                        while side.len() < n / 2 {
                            let x = self.rng.random_range(0..n);
                            if !side.contains(&x) {
                                side.push(x);
                            }
                        }
                        side.sort_unstable();
                        let names: Vec<String> =
                            side.iter().map(|x| format!("n{}", x + 1)).collect();
                        (format!("split off {}", names.join(",")), split(&side, n))
                    }
                };
                let id = self.net.cut(links);
                let heal = self.now + self.rng.random_range(50..=1500);
                self.queue.push(heal, Event::Heal { id });
                self.report.faults.partitions += 1;
                self.trace(|| format!("PARTITION {id}: {what}"));
            }
            Kind::Crash => {
                if let Some(i) = self.pick_up() {
                    self.report.faults.crashes += 1;
                    self.crash(i, "injected");
                }
            }
            Kind::PowerLoss => {
                self.report.faults.power_losses += 1;
                self.trace(|| "POWER LOSS".to_string());
                for i in self.up() {
                    self.crash(i, "power loss");
                }
            }
            Kind::FsyncError => {
                if let Some(i) = self.pick_up() {
                    self.report.faults.fsync_errors += 1;
                    self.nodes[i].fs.fail_syncs(1);
                    self.trace(|| format!("n{}: next fsync fails", i + 1));
                }
            }
            Kind::WriteError => {
                if let Some(i) = self.pick_up() {
                    self.report.faults.write_errors += 1;
                    self.nodes[i].fs.fail_writes(1);
                    self.trace(|| format!("n{}: next write fails", i + 1));
                }
            }
            Kind::ClockJump => {
                if let Some(i) = self.pick_up() {
                    self.report.faults.clock_jumps += 1;
                    if self.rng.random_bool(0.5) {
                        let until = self.now + self.rng.random_range(30..=300);
                        self.nodes[i].paused_until = until;
                        self.trace(|| format!("n{} clock stalls until {until}", i + 1));
                    } else {
                        let k = self.rng.random_range(3..=20);
                        self.trace(|| format!("n{} clock leaps {k} ticks", i + 1));
                        self.ticks(i, k)?;
                    }
                }
            }
            Kind::DiskStall => {
                if let Some(i) = self.pick_up() {
                    self.report.faults.disk_stalls += 1;
                    let until = self.now + self.rng.random_range(5..=100);
                    self.nodes[i].disk_stall_until = until;
                    self.trace(|| format!("n{} disk stalls until {until}", i + 1));
                }
            }
        }
        Ok(())
    }

    fn on_end_faults(&mut self) -> Result<(), Violation> {
        self.quiet = true;
        self.trace(|| "END OF FAULTS: heal, restart, quiesce".to_string());
        self.net.heal_all();
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            node.paused_until = 0;
            node.disk_stall_until = 0;
            node.fs.fail_syncs(0);
            node.fs.fail_writes(0);
            if node.part.is_none() {
                self.open_node(i)?;
            }
        }
        self.queue
            .push(self.now + CONVERGE_EVERY_MS, Event::Converge);
        Ok(())
    }

    fn on_converge(&mut self) -> Result<(), Violation> {
        let converged = self.converged();
        match converged {
            Ok(()) => {
                let logs: Vec<(u64, &Shadow)> =
                    self.nodes.iter().map(|n| (n.id, &n.shadow)).collect();
                self.checker.final_check(&logs)?;
                let (end, acked) = (self.checker.committed_end(), self.checker.acked());
                self.trace(|| {
                    format!("CONVERGED: committed {end} offsets, {acked} values acknowledged")
                });
                self.done = true;
                Ok(())
            }
            Err(why) if self.now >= self.deadline_ms => Err(Violation::new(
                "convergence",
                format!(
                    "{} ms after the faults ended the cluster has not converged: {why}",
                    self.now - self.faults_end_ms
                ),
            )),
            Err(_) => {
                self.queue
                    .push(self.now + CONVERGE_EVERY_MS, Event::Converge);
                Ok(())
            }
        }
    }

    /// Whether the quiet phase is over: every node up and agreeing, everything
    /// committed, every producer done.
    fn converged(&self) -> Result<(), String> {
        if let Some(p) = self.producers.iter().position(|p| !p.idle()) {
            return Err(format!("producer {} still has writes", p + 1));
        }
        let Some(l) = self.leader() else {
            return Err("no leader".into());
        };
        let leader = &self.nodes[l];
        let ready = leader
            .part
            .as_ref()
            .is_some_and(|p| p.replica().is_ready_leader());
        if !ready {
            return Err(format!("leader n{} is not ready", l + 1));
        }
        let end = leader.shadow.end();
        let chain = leader.shadow.end_chain();
        for n in &self.nodes {
            let Some(part) = n.part.as_ref() else {
                return Err(format!("n{} is down", n.id));
            };
            let s = part.replica().status();
            if s.high_watermark != end
                || n.shadow.end() != end
                || n.shadow.verified_end() != end
                || n.shadow.end_chain() != chain
            {
                return Err(format!(
                    "n{}: hw {} log end {} verified {} (leader n{} log end {end})",
                    n.id,
                    s.high_watermark,
                    n.shadow.end(),
                    n.shadow.verified_end(),
                    l + 1
                ));
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- checks

    /// Every invariant that can be checked between two events.
    fn check(&mut self) -> Result<(), Violation> {
        let mut down = 0;
        let mut ends = Vec::with_capacity(self.nodes.len());
        for node in &mut self.nodes {
            let Some(part) = node.part.as_ref() else {
                down += 1;
                continue;
            };
            let checker = &self.checker;
            node.shadow
                .refresh(part.log(), &node.flags, &self.limits, |o| {
                    checker.chain_at(o)
                })
                .map_err(|e| {
                    Violation::new("committed-content", format!("node {}: {e}", node.id))
                })?;
            let s = part.replica().status();
            let log = part.log();
            if s.log_end_offset != log.next_offset()
                || s.log_start_offset != log.log_start_offset()
                || s.high_watermark > s.log_end_offset
            {
                return Err(Violation::new(
                    "replica-log-agreement",
                    format!(
                        "node {}: replica says log {}..{} hw {}, the log is {}..{}",
                        node.id,
                        s.log_start_offset,
                        s.log_end_offset,
                        s.high_watermark,
                        log.log_start_offset(),
                        log.next_offset()
                    ),
                ));
            }
            if s.high_watermark < node.last_hw {
                return Err(Violation::new(
                    "hw-monotonic",
                    format!(
                        "node {}'s high watermark moved back from {} to {}",
                        node.id, node.last_hw, s.high_watermark
                    ),
                ));
            }
            node.last_hw = s.high_watermark;
            node.durable_term = node.durable_term.max(s.term);
            node.faults_seen = node.fs.faults_injected();
            if s.is_leader {
                self.checker.observe_leader(s.term, node.id)?;
            }
            self.checker.verify_node(
                node.id,
                &mut node.shadow,
                s.high_watermark,
                s.term,
                s.is_leader,
            )?;
        }
        // Again, now that every node's newly committed batches are in the record: a
        // node checked before another extended it has not been compared with them yet.
        for node in &mut self.nodes {
            let Some(part) = node.part.as_ref() else {
                continue;
            };
            let s = part.replica().status();
            self.checker.verify_node(
                node.id,
                &mut node.shadow,
                s.high_watermark,
                s.term,
                s.is_leader,
            )?;
            // What a crash would keep: the agreeing prefix, as far as it is fsynced.
            let durable = node.shadow.verified_end().min(part.log().durable_end());
            ends.push((node.id, durable));
        }
        self.checker.quorum(ends, down, self.majority())?;
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                let (x, y) = (&self.nodes[a], &self.nodes[b]);
                if x.part.is_none() || y.part.is_none() {
                    continue;
                }
                if x.shadow.changed || y.shadow.changed {
                    Checker::log_matching(x.id, &x.shadow, y.id, &y.shadow)?;
                }
            }
        }
        Ok(())
    }
}

thread_local! {
    static CURRENT: std::cell::RefCell<Option<SimConfig>> = const { std::cell::RefCell::new(None) };
    /// (virtual ms, events) of the run on this thread, for a panic's report.
    static PROGRESS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// The config being run on this thread, if any: a panic hook (the release profile
/// aborts on panic) prints its replay command.
pub fn current_run() -> Option<SimConfig> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Runs `cfg` to the end, tracing into `trace` if given. A panic in the code under
/// test (an assertion in raft-rs, the replica or the log) is a failure too, with
/// invariant `panic`, where panics unwind (tests); where they abort, [`current_run`]
/// names the run.
pub fn run(cfg: &SimConfig, trace: Option<&mut dyn Write>) -> Result<Report, Box<Failure>> {
    CURRENT.with(|c| *c.borrow_mut() = Some(cfg.clone()));
    PROGRESS.with(|p| p.set((0, 0)));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Sim::new(cfg.clone(), trace).run()
    }));
    CURRENT.with(|c| *c.borrow_mut() = None);
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with no message".to_string());
            let (at_ms, event) = PROGRESS.with(std::cell::Cell::get);
            Err(Box::new(Failure {
                config: cfg.clone(),
                at_ms,
                event,
                violation: Violation::new("panic", msg),
            }))
        }
    }
}
