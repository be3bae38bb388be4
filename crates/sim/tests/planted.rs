//! The checker's self-test. With each planted bug switched on in `sluice-replica`
//! (feature `planted-bugs`, enabled for this crate's tests only, each bug off until
//! `planted::set`), the CI seed set must report a violation. For each bug the test
//! prints how many seeds caught it and by which invariant, and pins which invariants
//! may catch it.

use std::collections::BTreeMap;

use sluice_replica::planted::{self, Bug};
use sluice_sim::{run, Failure, SimConfig};

/// The CI seed set's default-mix seeds.
const SEEDS: u64 = 200;

fn tally(bug: Bug) -> (Vec<Failure>, BTreeMap<&'static str, u64>) {
    planted::set(bug);
    let failures: Vec<Failure> = (0..SEEDS)
        .filter_map(|seed| run(&SimConfig::new(seed), None).err().map(|f| *f))
        .collect();
    planted::set(Bug::None);
    let mut by = BTreeMap::new();
    for f in &failures {
        *by.entry(f.violation.invariant).or_insert(0) += 1;
    }
    (failures, by)
}

fn caught(bug: Bug, by_one_of: &[&str]) {
    let (failures, by) = tally(bug);
    let Some(f) = failures.first() else {
        panic!("{bug:?}: no violation in {SEEDS} seeds: the checker misses it");
    };
    println!(
        "{bug:?}: caught in {} of {SEEDS} seeds, by {by:?}; first: {f}",
        failures.len()
    );
    for f in &failures {
        assert!(
            by_one_of.contains(&f.violation.invariant),
            "{bug:?} caught by an unexpected invariant: {f}"
        );
    }
}

#[test]
fn ack_before_quorum_is_caught() {
    caught(Bug::AckBeforeQuorum, &["acked-not-committed"]);
}

#[test]
fn ack_before_fsync_is_caught() {
    caught(Bug::AckBeforeFsync, &["quorum-durability"]);
}

#[test]
fn skip_conflict_truncation_is_caught() {
    // The stale suffix stays in the log: the replica's end and the log's disagree at
    // once, or the next append lands after the stale suffix (the engine's pair check).
    caught(
        Bug::SkipConflictTruncation,
        &["replica-log-agreement", "unexpected-failure"],
    );
}

#[test]
fn the_switch_is_off_by_default() {
    assert_eq!(planted::get(), Bug::None);
    run(&SimConfig::new(1), None).unwrap_or_else(|f| panic!("{f}"));
}
