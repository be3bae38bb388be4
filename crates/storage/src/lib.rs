//! The Sluice partition log: an append-only sequence of segments, each a file of
//! whole record batches (as the producer sent them, with the broker's base offset
//! written in) plus a sparse offset index and a sparse time index, memory-mapped.
//!
//! The crate is pure: it names no runtime, socket, clock or real file. All I/O goes
//! through the narrow [`fs::Storage`] trait, implemented by `sluice-io` (std files,
//! glommio DMA files) and by [`memfs::MemFs`], the fault-injecting disk of the crash
//! suite. Time is an argument (`now_ms`).
//!
//! Durability is explicit: `append` writes, `sync` makes everything appended so far
//! durable with one fdatasync (group commit) and moves the durable watermark; a
//! failed fsync poisons the log. `open` recovers: it scans the active segment (from
//! its last index entry after a clean stop, from the start otherwise), cuts it at
//! the first batch whose length or CRC is wrong and rebuilds the index tail. A bad
//! batch in a sealed segment is reported as corruption, never dropped.
//!
//! See `docs/STORAGE_FORMAT.md` for the bytes on disk.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod fs;
pub mod index;
mod log;
pub mod memfs;
mod segment;

pub use crate::log::{
    Appended, Batches, LogConfig, LogError, LogStats, PartitionLog, RecoveryReport, Retained,
    CLEAN_SHUTDOWN_FILE, LOG_START_FILE,
};
pub use fs::{IndexFile, LogFile, OpenMode, Storage};
pub use memfs::{CrashModel, MemFs, Op};
