//! The narrow file-system interface the log is written against.
//!
//! One [`Storage`] is one partition directory. The log needs only: append-only data
//! files with positional reads, fdatasync and truncate; small fixed-size
//! memory-mapped index files; and directory operations (create, remove, rename,
//! list, fsync the directory). Three backends implement it: `sluice-io` provides std
//! files and glommio DMA files (io_uring); [`crate::memfs::MemFs`] is an in-memory,
//! fault-injecting one for the crash suite and the simulator.
//!
//! Durability contract every backend honours (and `MemFs` models exactly):
//! - bytes appended to a [`LogFile`] are durable only after [`LogFile::sync`];
//! - bytes written to an [`IndexFile`] are durable only after [`IndexFile::sync`];
//! - creating, removing or renaming a file is durable only after
//!   [`Storage::sync_dir`].
//!
//! The futures are not required to be `Send`: the engine runs one log per glommio
//! shard thread, and tests drive them with a trivial executor.

use std::future::Future;
use std::io;
use std::pin::Pin;

/// An fdatasync that runs on its own, borrowing nothing: see [`LogFile::sync_detached`].
pub type DetachedSync = Pin<Box<dyn Future<Output = io::Result<()>>>>;

/// How [`Storage::open`] treats a missing or existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Open a file that must exist.
    Existing,
    /// Create a new, empty file; an existing one is truncated to zero.
    Create,
}

/// A partition directory.
pub trait Storage {
    /// An append-only data file.
    type File: LogFile + std::fmt::Debug;
    /// A memory-mapped index file.
    type Index: IndexFile + std::fmt::Debug;

    /// Opens (or creates) a data file.
    async fn open(&self, name: &str, mode: OpenMode) -> io::Result<Self::File>;
    /// Opens a memory-mapped file, creating it (empty) if missing. With `Some(len)`
    /// its length is set to `len` bytes (zero-filling any extension); with `None` it
    /// keeps the length it has.
    async fn open_index(&self, name: &str, len: Option<u64>) -> io::Result<Self::Index>;
    /// Removes a file. Removing a missing file is an error of kind `NotFound`.
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to`.
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// The names of the files in the directory, in any order.
    async fn list(&self) -> io::Result<Vec<String>>;
    /// Makes every create, remove and rename so far durable.
    async fn sync_dir(&self) -> io::Result<()>;
}

/// An append-only data file with positional reads.
pub trait LogFile {
    /// The logical length: every byte appended through this handle, after truncation.
    fn len(&self) -> u64;
    /// Whether the file holds no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads up to `len` bytes at `pos`; fewer only when the file ends first.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Like [`LogFile::read_at`], but appends the bytes to `out`. The default reads
    /// with `read_at` and copies; a backend that can read straight into `out` (a fetch's
    /// response buffer) overrides it and saves that copy.
    async fn read_append(&self, pos: u64, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let got = self.read_at(pos, len).await?;
        out.extend_from_slice(&got);
        Ok(())
    }
    /// Appends `data` at the end. On error the file may hold any prefix of `data`;
    /// the caller truncates back to the length it knows.
    async fn append(&mut self, data: &[u8]) -> io::Result<()>;
    /// fdatasync: every byte appended so far becomes durable.
    async fn sync(&mut self) -> io::Result<()>;
    /// An fdatasync of this file that holds no borrow of it, so the caller may go on
    /// appending while it runs (a pipelined group commit). When it completes without
    /// error, every byte appended **before this call** is durable; bytes appended while
    /// it runs may or may not be. `None`: this backend cannot sync apart from its handle
    /// (the caller uses [`LogFile::sync`]).
    fn sync_detached(&self) -> Option<DetachedSync> {
        None
    }
    /// Cuts the file to `len` bytes (not yet durable: follow with `sync`).
    async fn truncate(&mut self, len: u64) -> io::Result<()>;
}

/// A fixed-length memory-mapped file (the sparse indexes).
pub trait IndexFile {
    /// The mapped bytes.
    fn bytes(&self) -> &[u8];
    /// Copies `data` into the mapping at `pos`. Errors if it does not fit.
    fn write(&mut self, pos: usize, data: &[u8]) -> io::Result<()>;
    /// msync + fsync: the mapped bytes and the length become durable.
    async fn sync(&mut self) -> io::Result<()>;
    /// Changes the file length (trim when a segment is sealed, extend when it is
    /// reopened for appends) and remaps it.
    async fn set_len(&mut self, len: u64) -> io::Result<()>;
}
