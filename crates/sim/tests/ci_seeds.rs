//! The CI seed set: seeds 0..400 with the default fault mix, 3 nodes, 1000 ticks (10
//! virtual seconds) of faults and then convergence, in groups of 50 that nextest runs
//! in parallel; plus 50 seeds of 5-node clusters and 10 long runs (30 virtual
//! seconds). Every invariant must hold. A failure prints the seed, the invariant and
//! the command that replays it.

use sluice_sim::{run, SimConfig};

/// The CI runs: the defaults with a longer faulty phase.
fn ci(seed: u64) -> SimConfig {
    SimConfig {
        ticks: 1000,
        ..SimConfig::new(seed)
    }
}

fn seeds(cfg: impl Fn(u64) -> SimConfig, range: std::ops::Range<u64>) {
    let mut failures = Vec::new();
    for seed in range {
        if let Err(f) = run(&cfg(seed), None) {
            failures.push(f.to_string());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn seeds_000_049() {
    seeds(ci, 0..50);
}

#[test]
fn seeds_050_099() {
    seeds(ci, 50..100);
}

#[test]
fn seeds_100_149() {
    seeds(ci, 100..150);
}

#[test]
fn seeds_150_199() {
    seeds(ci, 150..200);
}

#[test]
fn seeds_200_249() {
    seeds(ci, 200..250);
}

#[test]
fn seeds_250_299() {
    seeds(ci, 250..300);
}

#[test]
fn seeds_300_349() {
    seeds(ci, 300..350);
}

#[test]
fn seeds_350_399() {
    seeds(ci, 350..400);
}

#[test]
fn five_nodes_seeds_000_049() {
    seeds(
        |seed| SimConfig {
            nodes: 5,
            ..ci(seed)
        },
        0..50,
    );
}

#[test]
fn long_runs_seeds_000_009() {
    seeds(
        |seed| SimConfig {
            ticks: 3000,
            ..ci(seed)
        },
        0..10,
    );
}

/// Idempotent producers (retrying every indeterminate outcome): no value may be
/// committed twice, through leader changes, crashes and retention.
#[test]
fn idempotent_seeds_000_039() {
    seeds(
        |seed| SimConfig {
            idempotent: true,
            ..ci(seed)
        },
        0..40,
    );
}

/// The same with retention off (no producer history is ever lost to it) on 5 nodes.
#[test]
fn idempotent_five_nodes_no_retention_seeds_000_019() {
    seeds(
        |seed| SimConfig {
            idempotent: true,
            nodes: 5,
            retain_offsets: 0,
            ..ci(seed)
        },
        0..20,
    );
}

/// The CI runs with pipelined flushes (the engine's group commit: the fdatasync runs
/// while the node goes on appending, and vouches only for what came before it).
fn pipelined(seed: u64) -> SimConfig {
    SimConfig {
        pipelined: true,
        ..ci(seed)
    }
}

#[test]
fn pipelined_seeds_000_099() {
    seeds(pipelined, 0..100);
}

#[test]
fn pipelined_seeds_100_199() {
    seeds(pipelined, 100..200);
}
