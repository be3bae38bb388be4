//! `sluice-sim`: run seeds of the deterministic simulator and summarise them.
//!
//! A failure prints the seed, the broken invariant and the command that replays it,
//! and exits 1. See `crates/sim/README.md`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use sluice_sim::cli::{check_fault_mix, Args};
use sluice_sim::{run, Failure, FaultCounts, Report, SimConfig};

#[derive(Default)]
struct Totals {
    seeds: u64,
    events: u64,
    proposals: u64,
    acks: u64,
    fetches: u64,
    acked: u64,
    committed: u64,
    faults: FaultCounts,
}

impl Totals {
    fn add(&mut self, r: &Report) {
        self.seeds += 1;
        self.events += r.events;
        self.proposals += r.proposals;
        self.acks += r.acks;
        self.fetches += r.fetches;
        self.acked += r.acked_values;
        self.committed += r.committed;
        self.faults.add(&r.faults);
    }
}

/// Prints `text` to stdout, ignoring a closed pipe (`| head`).
fn say(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn main() -> ExitCode {
    // The release profile aborts on panic: name the run before that happens, and exit
    // 1 like any other failure.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        if let Some(cfg) = sluice_sim::current_run() {
            say(&format!(
                "seed {} FAILED: invariant panic violated: {info}\nreplay: {}\n",
                cfg.seed,
                cfg.replay_command()
            ));
            std::process::exit(1);
        }
    }));
    let args = Args::parse();
    let base = args.config();
    if let Err(e) = check_fault_mix(&base.faults) {
        eprintln!("sluice-sim: {e}");
        return ExitCode::from(2);
    }
    let started = Instant::now();
    let end = args.seed.saturating_add(args.seeds);
    let mut totals = Totals::default();
    let failure: Option<Box<Failure>> = if args.trace || args.jobs <= 1 {
        let stdout = std::io::stdout();
        let mut failure = None;
        for seed in args.seed..end {
            let cfg = SimConfig {
                seed,
                ..base.clone()
            };
            let result = if args.trace {
                let mut out = stdout.lock();
                let _ = writeln!(out, "=== seed {seed}");
                run(&cfg, Some(&mut out))
            } else {
                run(&cfg, None)
            };
            match result {
                Ok(r) => totals.add(&r),
                Err(f) => {
                    failure = Some(f);
                    break;
                }
            }
            if args.seeds >= 1000 && (seed - args.seed + 1) % 1000 == 0 {
                eprintln!("sluice-sim: {} seeds passed", seed - args.seed + 1);
            }
        }
        failure
    } else {
        run_parallel(&base, args.seed, end, args.jobs, &mut totals)
    };
    let wall = started.elapsed().as_secs_f64();
    if let Some(f) = failure {
        say(&format!("{f}\n"));
        return ExitCode::from(1);
    }
    let ops = totals.proposals + totals.acks + totals.fetches;
    say(&format!(
        "sluice-sim: {} seeds passed ({} nodes, {} ticks + up to {} to converge)\n\
         \x20 events {}, simulated ops {} (proposals {}, acks {}, fetches {}), acked writes {}, \
         committed offsets {}\n\
         \x20 faults {} ({})\n\
         \x20 wall {:.2} s: {:.0} simulated ops/s, {:.0} events/s, {:.1} seeds/min\n",
        totals.seeds,
        base.nodes,
        base.ticks,
        base.quiesce_ticks,
        totals.events,
        ops,
        totals.proposals,
        totals.acks,
        totals.fetches,
        totals.acked,
        totals.committed,
        totals.faults.total(),
        totals.faults,
        wall,
        ops as f64 / wall,
        totals.events as f64 / wall,
        totals.seeds as f64 * 60.0 / wall
    ));
    ExitCode::SUCCESS
}

/// Runs seeds on `jobs` threads; the failure reported is the lowest failing seed.
fn run_parallel(
    base: &SimConfig,
    start: u64,
    end: u64,
    jobs: usize,
    totals: &mut Totals,
) -> Option<Box<Failure>> {
    let next = AtomicU64::new(start);
    let stop = AtomicBool::new(false);
    let results: Mutex<(Totals, Option<Box<Failure>>)> = Mutex::new((Totals::default(), None));
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let cfg = SimConfig {
                    seed,
                    ..base.clone()
                };
                let result = run(&cfg, None);
                let mut guard = results.lock().unwrap_or_else(|e| e.into_inner());
                match result {
                    Ok(r) => guard.0.add(&r),
                    Err(f) => {
                        stop.store(true, Ordering::Relaxed);
                        if guard.1.as_ref().is_none_or(|g| g.config.seed > seed) {
                            guard.1 = Some(f);
                        }
                    }
                }
            });
        }
    });
    let (t, failure) = results.into_inner().unwrap_or_else(|e| e.into_inner());
    *totals = t;
    failure
}
