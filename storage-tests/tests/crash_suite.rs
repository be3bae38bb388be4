//! The crash-consistency suite: scripted and seeded random workloads, a crash after
//! every file-system operation under every crash model. Prints the summary line and
//! fails unless lost, corrupt-exposed and index-mismatch are all zero.
//!
//! `SLUICE_CRASH_SEEDS=N` runs N random seeds (default 24); `SLUICE_CRASH_SEED=S` runs
//! only seed S (to replay a failure).

use sluice_storage_tests::{
    random_workload, run_workload, scripted_workloads, small_config, Summary,
};

const STEPS_PER_SEED: usize = 220;

#[test]
fn crash_suite() {
    let config = small_config();
    let mut total = Summary::default();
    let only: Option<u64> = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    if only.is_none() {
        for (name, steps) in scripted_workloads() {
            total.merge(run_workload(name, 0, &steps, &config));
        }
    }
    let seeds: u64 = std::env::var("SLUICE_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let seeds: Vec<u64> = match only {
        Some(s) => vec![s],
        None => (1..=seeds).collect(),
    };
    for seed in seeds {
        let steps = random_workload(seed, STEPS_PER_SEED);
        total.merge(run_workload("random", seed, &steps, &config));
    }
    for f in &total.failures {
        eprintln!("FAIL {f}");
    }
    println!("{}", total.line());
    eprintln!("{}", total.line());
    assert!(total.ok(), "{}", total.line());
    if only.is_none() {
        assert!(
            total.crash_points >= 10_000,
            "too few crash points: {}",
            total.line()
        );
    }
}
