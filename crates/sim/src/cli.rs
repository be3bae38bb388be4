//! The command line of `sluice-sim`, here so that tests can check that the replay
//! command a failure prints ([`SimConfig::replay_args`]) parses back to the same run.

use clap::Parser;

use crate::config::{FaultMix, SimConfig};

#[derive(Debug, Parser)]
#[command(
    name = "sluice-sim",
    about = "Deterministic simulation of a Sluice cluster: real replicas, simulated disks, network and clocks"
)]
pub struct Args {
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How many seeds to run: seed, seed+1, ...
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    /// Virtual duration of the faulty phase, in 10 ms ticks.
    #[arg(long, default_value_t = 300)]
    pub ticks: u64,
    /// Most ticks the healed cluster may take to converge at the end.
    #[arg(long, default_value_t = 500)]
    pub quiesce_ticks: u64,
    /// Nodes in the cluster: 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = parse_nodes)]
    pub nodes: usize,
    #[arg(long, default_value_t = 3)]
    pub producers: usize,
    #[arg(long, default_value_t = 2)]
    pub consumers: usize,
    /// Raft messages take 1 to this many ms.
    #[arg(long, default_value_t = 5)]
    pub latency_max_ms: u64,
    /// Retention keeps 0 to this many committed offsets (0: no retention).
    #[arg(long, default_value_t = 400)]
    pub retain_offsets: u64,
    /// Idempotent producers: retried indeterminate outcomes must not duplicate.
    #[arg(long)]
    pub idempotent: bool,
    /// Half the flushes are pipelined, as the engine's shard driver runs them
    /// (`begin_sync`, appends go on for 0-3 ms, `finish_sync`).
    #[arg(long)]
    pub pipelined: bool,
    /// No faults at all (options below still add the ones they name).
    #[arg(long)]
    pub no_faults: bool,
    /// Probability a Raft message is dropped.
    #[arg(long)]
    pub drop: Option<f64>,
    /// Probability a Raft message is duplicated.
    #[arg(long)]
    pub dup: Option<f64>,
    /// Probability a Raft message is reordered (1-30 ms extra).
    #[arg(long)]
    pub reorder: Option<f64>,
    /// Probability a Raft message is delayed 50-300 ms.
    #[arg(long)]
    pub delay: Option<f64>,
    /// Network partitions per virtual second.
    #[arg(long)]
    pub partitions: Option<f64>,
    /// Single-node crashes per virtual second.
    #[arg(long)]
    pub crashes: Option<f64>,
    /// Whole-cluster power losses per virtual second.
    #[arg(long)]
    pub power_losses: Option<f64>,
    /// Failed fsyncs per virtual second.
    #[arg(long)]
    pub fsync_errors: Option<f64>,
    /// Failed data writes per virtual second.
    #[arg(long)]
    pub write_errors: Option<f64>,
    /// Clock jumps (stalls, leaps) per virtual second.
    #[arg(long)]
    pub clock_jumps: Option<f64>,
    /// Disk stalls (flushes held 5-100 ms) per virtual second.
    #[arg(long)]
    pub disk_stalls: Option<f64>,
    /// Print every event (one seed at a time).
    #[arg(long)]
    pub trace: bool,
    /// Seeds run in parallel (each run is single-threaded and independent).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
}

fn parse_nodes(s: &str) -> Result<usize, String> {
    match s {
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err(format!("a cluster has 3 or 5 nodes, not {s}")),
    }
}

impl Args {
    /// The run these options describe (its seed is the first seed).
    pub fn config(&self) -> SimConfig {
        let mut f = if self.no_faults {
            FaultMix::NONE
        } else {
            FaultMix::DEFAULT
        };
        let set = |slot: &mut f64, v: Option<f64>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut f.drop, self.drop);
        set(&mut f.dup, self.dup);
        set(&mut f.reorder, self.reorder);
        set(&mut f.delay, self.delay);
        set(&mut f.partitions, self.partitions);
        set(&mut f.crashes, self.crashes);
        set(&mut f.power_losses, self.power_losses);
        set(&mut f.fsync_errors, self.fsync_errors);
        set(&mut f.write_errors, self.write_errors);
        set(&mut f.clock_jumps, self.clock_jumps);
        set(&mut f.disk_stalls, self.disk_stalls);
        SimConfig {
            seed: self.seed,
            nodes: self.nodes,
            ticks: self.ticks,
            quiesce_ticks: self.quiesce_ticks,
            producers: self.producers,
            consumers: self.consumers,
            latency_max_ms: self.latency_max_ms,
            retain_offsets: self.retain_offsets,
            idempotent: self.idempotent,
            pipelined: self.pipelined,
            faults: f,
        }
    }
}

/// Checks the fault options: probabilities in [0, 1], rates finite and >= 0.
pub fn check_fault_mix(f: &FaultMix) -> Result<(), String> {
    for (name, p) in [
        ("drop", f.drop),
        ("dup", f.dup),
        ("reorder", f.reorder),
        ("delay", f.delay),
    ] {
        if !(0.0..=1.0).contains(&p) {
            return Err(format!("--{name} must be a probability in [0, 1], not {p}"));
        }
    }
    for (name, r) in [
        ("partitions", f.partitions),
        ("crashes", f.crashes),
        ("power-losses", f.power_losses),
        ("fsync-errors", f.fsync_errors),
        ("write-errors", f.write_errors),
        ("clock-jumps", f.clock_jumps),
        ("disk-stalls", f.disk_stalls),
    ] {
        if !(r >= 0.0 && r.is_finite()) {
            return Err(format!("--{name} must be a rate >= 0, not {r}"));
        }
    }
    Ok(())
}
