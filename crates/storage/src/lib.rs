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
//!
//! ```
//! use sluice_proto::{BatchBuilder, Limits};
//! use sluice_storage::{LogConfig, MemFs, PartitionLog};
//!
//! pollster::block_on(async {
//!     let (mut log, _) = PartitionLog::open(MemFs::new(), LogConfig::default(), 0).await?;
//!     let mut b = BatchBuilder::new(Limits::default());
//!     b.push(1_000, Some(b"key"), Some(b"value"), &[]).unwrap();
//!     let mut batch = b.finish().unwrap();
//!     let at = log.append(&mut batch, 1_000).await?; // base offset written in place
//!     assert_eq!(log.sync().await?, at.last_offset + 1); // durable end
//!     let read = log.read(at.base_offset, 1 << 20).await?;
//!     assert_eq!(read.bytes, batch); // served as stored
//!     Ok::<_, sluice_storage::LogError>(())
//! })
//! .unwrap();
//! ```
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
    SyncStart, SyncTicket, CLEAN_SHUTDOWN_FILE, LOG_START_FILE,
};
pub use fs::{DetachedSync, IndexFile, LogFile, OpenMode, Storage};
pub use memfs::{CrashModel, MemFs, Op};
