//! Sluice's deterministic simulator: a whole cluster of one partition, every node the
//! real [`sluice_engine::ReplicatedPartition`] (the real `sluice-replica` Raft core
//! over the real `sluice-storage` partition log) on its own fault-injecting in-memory
//! disk ([`sluice_storage::MemFs`]), with a simulated network, simulated clocks and
//! simulated clients, all driven by one seed.
//!
//! The model, in the order a run uses it:
//!
//! - [`config`]: what a run is (seed, nodes, duration, workload, fault mix) and the
//!   command line that replays it.
//! - [`queue`]: the discrete event queue, ordered by (virtual ms, sequence).
//! - [`sim`]: the cluster, the producers (the SDK's pure `Accumulator` and
//!   `RetryPolicy` from `sluice_client::session`) and consumers, the faults, and the
//!   event loop; [`sim::run`] runs one config.
//! - [`net`]: which directed links partitions cut.
//! - [`shadow`]: each node's partition log read back, for the checks.
//! - [`check`]: the invariants, checked after every event (the table is there).
//! - [`cli`]: the options of the `sluice-sim` binary.
//!
//! Determinism: nothing reads a clock or iterates a hash map; every random choice
//! comes from one `SmallRng` seeded with the config's seed, in event order; raft-rs's
//! election timeouts are drawn from each replica's seeded RNG. The same config gives
//! the same run, event for event, which the tests check by comparing traces.
//!
//! Everything here is single-threaded and pure: the `MemFs` futures complete at once
//! and are driven with `pollster::block_on`. Only the binary reads the wall clock, to
//! time the summary.

pub mod check;
pub mod cli;
pub mod config;
pub mod net;
pub mod queue;
pub mod shadow;
pub mod sim;

pub use check::Violation;
pub use config::{FaultMix, SimConfig, TICK_MS};
pub use sim::{current_run, run, Failure, FaultCounts, Report, Sim};

/// Runs every seed in `seeds` with `base` (its seed replaced), stopping at the first
/// failure: the reports of the seeds that passed, or that failure.
pub fn run_seeds(
    base: &SimConfig,
    seeds: std::ops::Range<u64>,
) -> Result<Vec<Report>, Box<Failure>> {
    let mut reports = Vec::new();
    for seed in seeds {
        let cfg = SimConfig {
            seed,
            ..base.clone()
        };
        reports.push(run(&cfg, None)?);
    }
    Ok(reports)
}
