//! The Sluice node: the glommio engine driver around the pure shard core
//! (`sluice-engine`), and the single-node topic registry.
//!
//! # Threading model
//!
//! ```text
//!  tokio gateway tasks (any thread)          glommio shard threads (one per core, pinned)
//!  ───────────────────────────────           ──────────────────────────────────────────────
//!  EngineHandle::produce(tp, batch)
//!    shard = shard_for(topic, partition, N)
//!    queue[shard].send(Request) ──bounded──▶ loop { take queued requests (≤ cycle cap)
//!      (full: the caller waits)  async-channel         hand each to Shard (append/read)
//!                                                      Shard::flush  ← one group commit
//!                                                      Shard::tick   ← deadlines
//!    oneshot.await ◀────────── futures-channel ──────  poll_reply → oneshot per token }
//! ```
//!
//! - **What runs where.** Every partition lives on exactly one shard thread, picked
//!   by [`sluice_engine::shard_for`]; its log, waiters and counters are touched only
//!   there (shared nothing, no lock on the data path). A shard thread is a glommio
//!   `LocalExecutor` built with [`sluice_io::executor_builder`] (small registered
//!   io_memory: 3 MiB locked per shard, so two shards fit an 8 MiB memlock limit),
//!   pinned to its own CPU when there are no more shards than CPUs. Its partitions'
//!   files are [`sluice_io::GlommioStorage`] directories at
//!   `<data_dir>/topics/<topic>/<partition>/`, so appends and fdatasyncs go through
//!   io_uring and never block the thread. The [`EngineHandle`] is `Clone + Send +
//!   Sync`; its futures wait only on `async-channel` and `futures-channel`, so a tokio
//!   runtime (the QUIC gateway), another executor or a `block_on` can drive them.
//!   Placement does not decide directories: a node may restart with another shard
//!   count.
//! - **The flush cycle (group commit).** A shard takes whatever is queued (up to
//!   [`EngineConfig::cycle_requests_max`]), hands each request to the core in order,
//!   then calls `Shard::flush` once if anything was appended: one fdatasync per
//!   dirty partition, all issued together, makes every append of the cycle durable;
//!   producers with `acks=all`/`acks=leader` are answered then, `acks=none` right
//!   after their append. Requests arriving during the fsync form the next cycle, so
//!   the group grows with the load. The flush is pipelined: appends go on while its
//!   fdatasyncs run, and a partition with none in flight starts its own group at once
//!   (`driver` module docs). `Shard::tick` runs every
//!   [`EngineConfig::tick_ms`] while anything waits (ack timeouts, long-poll
//!   deadlines); an idle shard with nothing waiting sleeps on its queue. Time given to
//!   the core is the wall clock in milliseconds.
//! - **Backpressure.** Each shard's queue is bounded
//!   ([`EngineConfig::queue_depth`]); a caller that finds it full waits (counted in
//!   [`EngineStats::queue_full_waits`]), so a slow disk slows producers instead of
//!   growing memory. Inside a shard the core bounds waiting requests per partition
//!   (`WaitLimits`) and refuses past them with `TooManyWaiting`.
//! - **Errors.** Bad input is answered by the core with a typed
//!   [`sluice_engine::EngineError`] (an unknown partition never reaches a log), and
//!   the driver adds only [`RequestError::ShuttingDown`] (definite) and
//!   [`RequestError::Stopped`] (indeterminate). Topic administration returns
//!   [`TopicError`].
//! - **Start and stop.** [`Engine::start`] loads the [`TopicRegistry`], finishes
//!   interrupted deletions, spawns the shards and recovers every partition before it
//!   returns (the [`StartupReport`] says how long and whether each was clean).
//!   [`EngineHandle::shutdown`] refuses new requests, lets queued ones finish, does a
//!   final flush, closes every partition cleanly and joins the threads. Dropping the
//!   last handle without it stops the shards without closing the partitions: the next
//!   start recovers them as after a crash (nothing acknowledged is lost).
//!
//! Until replication exists the high watermark is the local durable end; the Raft
//! issue slots in behind `Shard::flush` without changing this driver's shape, and its
//! controller replaces [`TopicRegistry`].
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod driver;
pub mod engine;
pub mod provider;
pub mod stats;
pub mod topics;

pub use driver::RaftOutbox;
pub use engine::{
    controller_log, controller_partition, Engine, EngineConfig, EngineHandle, Fetched, Produced,
    ReplicaToOpen, RequestError, StartError, StartupReport, CONTROLLER_TOPIC, FETCH_BYTES_MAX,
    FETCH_WAIT_MS_MAX, PRODUCE_TIMEOUT_MS_MAX, QUEUE_DEPTH_MAX, SHARDS_MAX, TICK_MS_MAX,
};
pub use provider::GlommioProvider;
pub use sluice_engine::{AckPolicy, EngineError, OffsetQuery, ShardStats, TopicPartition};
pub use stats::{EngineStats, LatencyHistogram, PartitionStats, ShardSnapshot, LATENCY_BOUNDS_US};
pub use topics::{RegistryError, TopicConfig, TopicError, TopicInfo, TopicRegistry};
