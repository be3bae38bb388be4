//! What one simulation run is: the seed, the cluster's shape, the workload and the
//! fault mix. [`SimConfig::replay_args`] renders a config back into the command line
//! that reproduces it exactly.

/// Virtual milliseconds between two ticks of a node (`ReplicatedPartition::tick`).
pub const TICK_MS: u64 = 10;

/// How often each fault is injected. Message faults are probabilities per message;
/// the others are rates in events per virtual second (0 = never).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FaultMix {
    /// Probability that a Raft message is dropped.
    pub drop: f64,
    /// Probability that a Raft message is delivered twice.
    pub dup: f64,
    /// Probability that a Raft message gets 1-30 ms of extra latency, so it overtakes
    /// or is overtaken by its neighbours.
    pub reorder: f64,
    /// Probability that a Raft message is held back 50-300 ms.
    pub delay: f64,
    /// Network partitions per second: an isolated node, an isolated leader, a
    /// one-way cut, a majority/minority split; each healed after 50-1500 ms.
    pub partitions: f64,
    /// Crashes of one node per second (lose unsynced bytes, a torn prefix, or a
    /// random subset of them), restarted after 20-300 ms.
    pub crashes: f64,
    /// Crashes of every node at once (power loss) per second.
    pub power_losses: f64,
    /// Failed fsyncs per second (the next sync of one node fails: it crashes).
    pub fsync_errors: f64,
    /// Failed writes per second (the next data write of one node fails after half
    /// of it landed: it crashes).
    pub write_errors: f64,
    /// Clock jumps per second: one node's ticks stall and then arrive bunched, or a
    /// burst of ticks at once.
    pub clock_jumps: f64,
    /// Disk stalls per second: one node's flushes are held back 5-100 ms.
    pub disk_stalls: f64,
}

impl FaultMix {
    /// The default mix: every kind of fault, often enough that a few-second run sees
    /// each of them.
    pub const DEFAULT: FaultMix = FaultMix {
        drop: 0.02,
        dup: 0.01,
        reorder: 0.02,
        delay: 0.005,
        partitions: 0.6,
        crashes: 0.6,
        power_losses: 0.15,
        fsync_errors: 0.3,
        write_errors: 0.2,
        clock_jumps: 0.6,
        disk_stalls: 2.0,
    };

    /// No faults at all.
    pub const NONE: FaultMix = FaultMix {
        drop: 0.0,
        dup: 0.0,
        reorder: 0.0,
        delay: 0.0,
        partitions: 0.0,
        crashes: 0.0,
        power_losses: 0.0,
        fsync_errors: 0.0,
        write_errors: 0.0,
        clock_jumps: 0.0,
        disk_stalls: 0.0,
    };
}

impl Default for FaultMix {
    fn default() -> Self {
        FaultMix::DEFAULT
    }
}

/// One simulation run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    pub seed: u64,
    /// Nodes in the cluster (3 or 5), each one replica of the one partition.
    pub nodes: usize,
    /// Virtual duration of the faulty phase, in ticks of [`TICK_MS`].
    pub ticks: u64,
    /// Most ticks the final phase (faults healed, every node up) may take to converge.
    pub quiesce_ticks: u64,
    /// Simulated producers.
    pub producers: usize,
    /// Simulated consumers.
    pub consumers: usize,
    /// Raft messages take 1 to this many ms.
    pub latency_max_ms: u64,
    /// Retention keeps a random 0 to this many committed offsets below the high
    /// watermark, on each node every 100-400 ms (0: no retention).
    pub retain_offsets: u64,
    /// Producers are idempotent: they stamp batches with a producer id and sequences,
    /// each node checks a produce against its producer table before proposing
    /// (`ReplicatedPartition::check_sequence`), and indeterminate outcomes (a timeout, a
    /// lost leadership) are retried, which must never duplicate a value.
    pub idempotent: bool,
    /// Half the flushes are pipelined, as the engine's shard driver runs them: the
    /// fdatasync begins (`ReplicatedPartition::begin_sync`), the node goes on taking
    /// messages and appending for 0-3 ms, then it completes (`finish_sync`). Off by
    /// default: it changes every seed's schedule, and the CI seed set is pinned.
    pub pipelined: bool,
    pub faults: FaultMix,
}

impl SimConfig {
    /// The defaults for `seed`.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            nodes: 3,
            ticks: 300,
            quiesce_ticks: 500,
            producers: 3,
            consumers: 2,
            latency_max_ms: 5,
            retain_offsets: 400,
            idempotent: false,
            pipelined: false,
            faults: FaultMix::DEFAULT,
        }
    }

    /// The arguments of `sluice-sim` that run exactly this config (every option
    /// spelled out, so a change of defaults does not change the replay).
    pub fn replay_args(&self) -> String {
        let f = &self.faults;
        format!(
            "--seed {} --nodes {} --ticks {} --quiesce-ticks {} --producers {} --consumers {} \
             --latency-max-ms {} --retain-offsets {} --drop {} --dup {} --reorder {} --delay {} \
             --partitions {} --crashes {} --power-losses {} --fsync-errors {} --write-errors {} \
             --clock-jumps {} --disk-stalls {}{}{}",
            self.seed,
            self.nodes,
            self.ticks,
            self.quiesce_ticks,
            self.producers,
            self.consumers,
            self.latency_max_ms,
            self.retain_offsets,
            f.drop,
            f.dup,
            f.reorder,
            f.delay,
            f.partitions,
            f.crashes,
            f.power_losses,
            f.fsync_errors,
            f.write_errors,
            f.clock_jumps,
            f.disk_stalls,
            if self.idempotent { " --idempotent" } else { "" },
            if self.pipelined { " --pipelined" } else { "" }
        )
    }

    /// The full command that replays this config with a trace.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release -p sluice-sim -- {} --trace",
            self.replay_args()
        )
    }
}
