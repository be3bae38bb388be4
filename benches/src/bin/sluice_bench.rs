//! `sluice-bench`: the load generator for a Sluice broker, in the spirit of Kafka's
//! `kafka-producer-perf-test` / `kafka-consumer-perf-test` and `rpk topic produce`.
//!
//! ```text
//! sluice-bench produce --count 1000000 --size 1024 --producers 4 --acks all
//! sluice-bench produce --rate 50000 --duration 30 --warmup 5 --json out.json
//! sluice-bench consume --consumers 2
//! sluice-bench e2e --rate 10000 --count 200000 --verify
//! ```
//!
//! The model: this binary is the edge (tokio, the SDK, the clock, the terminal); every
//! decision it takes (the open-loop schedule, payload bytes, statistics, the verify
//! checker, the report) is in the library's `sluice_bench::load`, tested on its own.
//!
//! A run: parse and check the flags ([`cli`]); connect an admin client and make sure
//! the topic exists ([`setup`]); connect every producer and consumer (each its own
//! QUIC connection; the producers on their own threads, [`threads`]); fix the run's
//! epoch; run the mode ([`produce`], [`consume`]), bounded by `--count`/`--duration`
//! and always by `--max-secs`; with `--verify`, read back what was produced and check
//! it; print the report and write `--json`.
//!
//! Exit codes: 0 ok; 1 the run failed (cannot connect or set up, delivery or fetch
//! errors, nothing measured, `--verify` anomalies); 2 usage.

// The binary's own modules live in `sluice_bench/` beside this file (a crate root in
// `src/bin/` looks for modules in `src/bin/`, where cargo would take them for binaries).
#[path = "sluice_bench/cli.rs"]
mod cli;
#[path = "sluice_bench/consume.rs"]
mod consume;
#[path = "sluice_bench/machine.rs"]
mod machine;
#[path = "sluice_bench/produce.rs"]
mod produce;
#[path = "sluice_bench/progress.rs"]
mod progress;
#[path = "sluice_bench/setup.rs"]
mod setup;
#[path = "sluice_bench/threads.rs"]
mod threads;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Parser;
use sluice_bench::load::payload::RecordId;
use sluice_bench::load::report::{Report, Setup};
use sluice_bench::load::schedule::partitions_of;
use sluice_bench::load::stats::{mb_per_sec, per_sec, Latency};
use sluice_bench::load::verify::{Checker, VerifyReport};
use sluice_client::Client;
use tokio::sync::watch;

use crate::cli::{Bound, Cli, Mode, Plan};
use crate::consume::{ConsumerResult, Ends, Sink};
use crate::produce::{ProducerResult, Stop};
use crate::progress::Progress;
use crate::threads::ProducerThreads;

/// mimalloc, not glibc's malloc: every record's value is allocated on the task that
/// sends it and freed on the producer's driver task, often on the other thread, and
/// glibc then takes the allocating arena's lock (futex waits in `_int_free` in the
/// profile). Measured on 1M records at the 256 window, six interleaved rounds: load
/// generator CPU 2.34-2.83 s against 2.67-3.78 s (benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code: the run failed.
const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage (clap's own errors exit 2 too).
const EXIT_USAGE: u8 = 2;

/// Longest the `--verify` read-back may take, at least.
const VERIFY_READ_SECS_MIN: u64 = 60;

/// One run's shared state: the plan, its clock and its bounds.
#[derive(Debug)]
pub struct Run {
    pub plan: Plan,
    /// Time zero of the run: every `*_ns` is nanoseconds since this.
    pub epoch: Instant,
    /// In every payload's header.
    pub run_id: u64,
    pub partitions: u32,
    /// End of the warm-up: records sent (or consumed) before it are not measured.
    pub warmup_ns: u64,
    /// No record is sent at or after this (`--duration` or `--max-secs`).
    pub send_end_ns: u64,
    /// Set to stop every producer (a failed send) or consumer (`--count` consumed).
    pub stop: AtomicBool,
    /// Measured messages so far, for the progress bar and the consume count.
    pub progress: AtomicU64,
    /// Whether producers count into `progress` (not in e2e, where consumers do).
    pub producers_count_progress: bool,
}

impl Run {
    fn new(plan: Plan, run_id: u64, partitions: u32) -> Run {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let warmup_ns = ns(plan.warmup);
        let max_ns = ns(plan.max);
        let send_end_ns = match plan.bound {
            Bound::Duration(d) => warmup_ns.saturating_add(ns(d)).min(max_ns),
            Bound::Count(_) | Bound::All => max_ns,
        };
        Run {
            producers_count_progress: plan.mode != Mode::E2e,
            plan,
            epoch: Instant::now(),
            run_id,
            partitions,
            warmup_ns,
            send_end_ns,
            stop: AtomicBool::new(false),
            progress: AtomicU64::new(0),
        }
    }

    /// Nanoseconds since the epoch.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The tokio instant `ns` after the epoch.
    pub fn instant(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + Duration::from_nanos(ns))
    }

    /// Why sending stops at `send_end_ns`.
    pub fn end_stop(&self) -> Stop {
        match self.plan.bound {
            Bound::Duration(d) if self.plan.warmup.saturating_add(d) <= self.plan.max => {
                Stop::Duration
            }
            _ => Stop::MaxSecs,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut params = serde_json::to_value(&cli.opts).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut params {
        map.insert("mode".into(), cli.mode.name().into());
    }
    let plan = match Plan::new(cli) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sluice-bench: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let json = plan.opts.json.clone();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice-bench: error: cannot start the tokio runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let result = runtime.block_on(run(plan, params));
    // Tasks still waiting on a broker that went away must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice-bench: error: {e:#}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    print!("{}", report.render());
    if let Some(path) = json {
        let written = serde_json::to_string_pretty(&report)
            .map_err(anyhow::Error::from)
            .and_then(|text| {
                std::fs::write(&path, text + "\n")
                    .with_context(|| format!("write {}", path.display()))
            });
        if let Err(e) = written {
            eprintln!("sluice-bench: error: --json: {e:#}");
            return ExitCode::from(EXIT_FAILED);
        }
    }
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// A run id unlikely to repeat: the wall clock and the pid, mixed (splitmix64).
fn make_run_id() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos ^ (u64::from(std::process::id()) << 40);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

async fn run(plan: Plan, params: serde_json::Value) -> Result<Report> {
    let admin = setup::connect(&plan, "admin").await?;
    let description = setup::ensure_topic(&admin, &plan).await?;
    let offsets = setup::offsets(&description)?;
    let partitions = u32::try_from(offsets.len()).context("partition count")?;
    if partitions == 0 {
        bail!("topic {} has no partitions", plan.opts.topic);
    }
    if partitions != plan.opts.partitions {
        eprintln!(
            "note: topic {} has {partitions} partitions (--partitions only applies to a topic \
             this run creates)",
            plan.opts.topic
        );
    }
    let consumers = plan.opts.consumers.min(partitions);
    if consumers < plan.opts.consumers && plan.mode != Mode::Produce {
        eprintln!("note: {consumers} consumers, one per partition at most");
    }
    let run_id = make_run_id();
    let setup = Setup {
        server: plan.addr.to_string(),
        topic: plan.opts.topic.clone(),
        partitions,
        producers: if plan.mode == Mode::Consume {
            0
        } else {
            plan.opts.producers
        },
        consumers: if plan.mode == Mode::Produce {
            0
        } else {
            consumers
        },
        size_bytes: plan.size,
        acks: plan.opts.acks.name().to_owned(),
        rate_per_sec: plan.opts.rate,
        run_id: format!("{run_id:016x}"),
    };
    let mode = plan.mode;
    let mut report = Report::new(mode.name(), machine::describe(), params, setup);
    let result = match mode {
        Mode::Produce => produce_mode(plan, &admin, &offsets, run_id, &mut report).await,
        Mode::Consume => consume_mode(plan, &offsets, consumers, run_id, &mut report).await,
        Mode::E2e => e2e_mode(plan, &admin, &offsets, consumers, run_id, &mut report).await,
    };
    admin.close().await;
    result?;
    report.errors = report.errors_by_kind.total();
    report.msgs_per_sec = per_sec(report.msgs, report.secs);
    report.mb_per_sec = mb_per_sec(report.bytes, report.secs);
    report.judge();
    Ok(report)
}

/// What the producers' results add up to, into `report`; returns the ack latency.
fn add_producers(run: &Run, results: &[ProducerResult], report: &mut Report) -> Latency {
    let mut latency = Latency::new();
    let (mut msgs, mut bytes, mut last) = (0u64, 0u64, 0u64);
    for r in results {
        latency.merge(&r.latency);
        report.errors_by_kind.merge(&r.errors);
        msgs += r.msgs;
        bytes += r.bytes;
        last = last.max(r.last_ack_ns);
        if run.plan.mode == Mode::Produce {
            report.warmup_msgs += r.warmup_msgs;
        }
    }
    if run.plan.mode == Mode::Produce {
        report.msgs = msgs;
        report.bytes = bytes;
        report.secs = last.saturating_sub(run.warmup_ns) as f64 / 1e9;
    } else {
        report.produced = Some(msgs);
    }
    let stops: Vec<&Stop> = results.iter().map(|r| &r.stop).collect();
    let failed = stops.iter().find_map(|s| match s {
        Stop::Failed(m) => Some(m.clone()),
        _ => None,
    });
    let counted = matches!(run.plan.bound, Bound::Count(_));
    report.stop = if let Some(m) = failed {
        format!("a send failed: {m}")
    } else if stops.contains(&&Stop::VerifyCap) {
        format!(
            "--verify tracks at most {} records",
            cli::VERIFY_RECORDS_MAX
        )
    } else if stops.contains(&&Stop::MaxSecs) {
        report.capped = counted;
        format!("--max-secs {} reached", run.plan.opts.max_secs)
    } else if stops.contains(&&Stop::Duration) {
        "--duration over".to_owned()
    } else if stops.iter().all(|s| **s == Stop::Count) {
        "--count sent".to_owned()
    } else {
        "stopped".to_owned()
    };
    latency
}

/// Per partition, one past the highest acknowledged offset (0 when none).
fn acked_ends(results: &[ProducerResult], partitions: u32) -> Vec<u64> {
    (0..partitions as usize)
        .map(|p| {
            results
                .iter()
                .filter_map(|r| r.max_offset.get(p).copied().flatten())
                .max()
                .map_or(0, |o| o + 1)
        })
        .collect()
}

async fn produce_mode(
    plan: Plan,
    admin: &Client,
    offsets: &[(u64, u64)],
    run_id: u64,
    report: &mut Report,
) -> Result<()> {
    let producers = ProducerThreads::start(&plan).await?;
    let total = match plan.bound {
        Bound::Count(n) => Some(n),
        _ => None,
    };
    let run = Arc::new(Run::new(plan, run_id, offsets.len() as u32));
    let progress = Progress::start(&run, "produce", total);
    let results = producers.run(&run).await;
    progress.finish();
    let results = results?;
    let latency = add_producers(&run, &results, report);
    report.set_latency("ack", latency.summary());
    if run.plan.opts.verify {
        let starts: Vec<u64> = offsets.iter().map(|(_, hw)| *hw).collect();
        report.verify = Some(verify(&run, admin, &starts, &results, report).await?);
    }
    Ok(())
}

async fn consume_mode(
    plan: Plan,
    offsets: &[(u64, u64)],
    consumers: u32,
    run_id: u64,
    report: &mut Report,
) -> Result<()> {
    let starts: Vec<u64> = offsets.iter().map(|(start, _)| *start).collect();
    let ends: Vec<u64> = offsets.iter().map(|(_, hw)| *hw).collect();
    let available: u64 = offsets.iter().map(|(s, e)| e.saturating_sub(*s)).sum();
    if available == 0 {
        bail!(
            "topic {topic} has no records to consume; fill it first, e.g. \
             `sluice-bench produce --topic {topic} --count 1000000`",
            topic = plan.opts.topic
        );
    }
    let partitions = offsets.len() as u32;
    let count = match plan.bound {
        Bound::Count(n) => Some(n),
        Bound::All | Bound::Duration(_) => None,
    };
    let mut positioned = Vec::new();
    for i in 0..consumers {
        let client = setup::connect(&plan, &format!("consumer-{i}")).await?;
        let mine = partitions_of(i, consumers, partitions);
        let consumer = consume::positioned(&plan, &client, &mine, &starts).await?;
        positioned.push((client, consumer, mine));
    }
    let run = Arc::new(Run::new(plan, run_id, partitions));
    let total = match run.plan.bound {
        Bound::Duration(_) => None,
        _ => Some(count.map_or(available, |c| c.min(available))),
    };
    let progress = Progress::start(&run, "consume", total);
    let results = run_consumers(&run, positioned, &starts, |_| Ends::Known(ends.clone()), {
        move || Sink::Throughput { count }
    })
    .await;
    progress.finish();
    let results = results?;
    let count_reached = count.is_some_and(|c| run.progress.load(Ordering::Relaxed) >= c);
    let complete = results.iter().all(|r| r.complete);
    add_consumers(&run, &results, report);
    report.stop = if count_reached {
        "--count consumed".to_owned()
    } else if complete {
        format!(
            "read the whole topic as of the start ({} records)",
            sluice_bench::load::report::thousands(available)
        )
    } else if run.now_ns() >= run.send_end_ns {
        report.capped = !matches!(run.end_stop(), Stop::Duration);
        match run.end_stop() {
            Stop::Duration => "--duration over".to_owned(),
            _ => format!("--max-secs {} reached", run.plan.opts.max_secs),
        }
    } else {
        report.errors_by_kind.add("consume stalled");
        format!(
            "no records for {} s before the end",
            consume::IDLE.as_secs()
        )
    };
    Ok(())
}

async fn e2e_mode(
    plan: Plan,
    admin: &Client,
    offsets: &[(u64, u64)],
    consumers: u32,
    run_id: u64,
    report: &mut Report,
) -> Result<()> {
    let starts: Vec<u64> = offsets.iter().map(|(_, hw)| *hw).collect();
    let partitions = offsets.len() as u32;
    // Consumers first, at the end of every partition, so they see every record.
    let mut positioned = Vec::new();
    for i in 0..consumers {
        let client = setup::connect(&plan, &format!("consumer-{i}")).await?;
        let mine = partitions_of(i, consumers, partitions);
        let consumer = consume::positioned(&plan, &client, &mine, &starts).await?;
        positioned.push((client, consumer, mine));
    }
    let producers = ProducerThreads::start(&plan).await?;
    let total = match plan.bound {
        Bound::Count(n) => Some(n),
        _ => None,
    };
    let run = Arc::new(Run::new(plan, run_id, partitions));
    let progress = Progress::start(&run, "e2e", total);
    let (ends_tx, ends_rx) = watch::channel(None);
    let consuming = {
        let run = run.clone();
        let starts = starts.clone();
        tokio::spawn(async move {
            run_consumers(
                &run,
                positioned,
                &starts,
                |_| Ends::Later(ends_rx.clone()),
                || Sink::EndToEnd,
            )
            .await
        })
    };
    let produced = producers.run(&run).await;
    let ends = match &produced {
        Ok(results) => acked_ends(results, partitions)
            .into_iter()
            .zip(&starts)
            .map(|(e, s)| e.max(*s))
            .collect(),
        // Nothing to wait for: let the consumers stop at once.
        Err(_) => starts.clone(),
    };
    let _ = ends_tx.send(Some(ends));
    let consumed = consuming.await.map_err(|e| anyhow!("consumer task: {e}"));
    progress.finish();
    let results = produced?;
    let consumed = consumed??;
    let ack = add_producers(&run, &results, report);
    report.ack = ack.summary();
    add_consumers(&run, &consumed, report);
    if !consumed.iter().all(|r| r.complete) {
        report
            .errors_by_kind
            .add("e2e: consumers did not reach the produced end");
    }
    if run.plan.opts.verify {
        report.verify = Some(verify(&run, admin, &starts, &results, report).await?);
    }
    Ok(())
}

/// Starts the consumers (already positioned) and waits for all of them.
async fn run_consumers<E, S>(
    run: &Arc<Run>,
    positioned: Vec<(Client, sluice_client::Consumer, Vec<u32>)>,
    starts: &[u64],
    ends: E,
    sink: S,
) -> Result<Vec<ConsumerResult>>
where
    E: Fn(usize) -> Ends,
    S: Fn() -> Sink<'static>,
{
    // e2e consumers go on after the last send until they have read what was acked.
    let deadline_ns = match run.plan.mode {
        Mode::E2e => run
            .send_end_ns
            .saturating_add(produce::DRAIN.as_nanos() as u64),
        _ => run.send_end_ns,
    };
    let handles: Vec<_> = positioned
        .into_iter()
        .enumerate()
        .map(|(i, (client, consumer, mine))| {
            let run = run.clone();
            let starts = starts.to_vec();
            let ends = ends(i);
            let sink = sink();
            tokio::spawn(async move {
                let r =
                    consume::run_consumer(&run, consumer, &mine, &starts, ends, deadline_ns, sink)
                        .await;
                client.close().await;
                r
            })
        })
        .collect();
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.map_err(|e| anyhow!("consumer task: {e}"))?);
    }
    Ok(results)
}

/// What the consumers' results add up to, into `report` (consume, e2e).
fn add_consumers(run: &Run, results: &[ConsumerResult], report: &mut Report) {
    let mut latency = Latency::new();
    let mut last = 0u64;
    for r in results {
        latency.merge(&r.latency);
        report.errors_by_kind.merge(&r.errors);
        report.msgs += r.msgs;
        report.bytes += r.bytes;
        report.warmup_msgs += r.warmup_msgs;
        last = last.max(r.last_ns);
    }
    report.secs = last.saturating_sub(run.warmup_ns) as f64 / 1e9;
    if run.plan.mode == Mode::E2e {
        report.set_latency("end-to-end", latency.summary());
    }
}

/// `--verify`: reads back every partition from where the run started to past the last
/// acknowledged offset (and at least the high watermark now) and checks it.
async fn verify(
    run: &Arc<Run>,
    admin: &Client,
    starts: &[u64],
    results: &[ProducerResult],
    report: &mut Report,
) -> Result<VerifyReport> {
    let plan = &run.plan;
    let mut checker = Checker::new(run.run_id, plan.opts.producers, run.partitions);
    for (r, producer) in results.iter().zip(0u32..) {
        for (s, seq) in r.outcomes.iter().zip(0u64..) {
            checker.sent(RecordId { producer, seq }, *s);
        }
    }
    let now = admin
        .describe_topic(&plan.opts.topic)
        .await
        .map_err(|e| anyhow!("verify: describe topic: {e}"))?;
    let now = setup::offsets(&now)?;
    let acked = acked_ends(results, run.partitions);
    let ends: Vec<u64> = (0..run.partitions as usize)
        .map(|p| {
            let start = starts.get(p).copied().unwrap_or(0);
            let hw = now.get(p).map_or(0, |(_, hw)| *hw);
            hw.max(acked.get(p).copied().unwrap_or(0)).max(start)
        })
        .collect();
    for (p, (s, e)) in starts.iter().zip(&ends).enumerate() {
        checker.expect(p as u32, *s, *e);
    }
    let client = setup::connect(plan, "verify").await?;
    let all: Vec<u32> = (0..run.partitions).collect();
    let consumer = consume::positioned(plan, &client, &all, starts).await?;
    // A failed producer stopped the run; the read-back still has to happen.
    run.stop.store(false, Ordering::Relaxed);
    let secs = plan.opts.max_secs.max(VERIFY_READ_SECS_MIN);
    let deadline = run
        .now_ns()
        .saturating_add(secs.saturating_mul(1_000_000_000));
    let read = consume::run_consumer(
        run,
        consumer,
        &all,
        starts,
        Ends::Known(ends),
        deadline,
        Sink::Verify(&mut checker),
    )
    .await;
    client.close().await;
    for (kind, n) in read.errors.iter() {
        report.errors_by_kind.add_n(format!("verify {kind}"), n);
    }
    Ok(checker.finish())
}
