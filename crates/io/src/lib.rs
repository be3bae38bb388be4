//! Storage backends for the Sluice partition log: the [`sluice_storage::Storage`]
//! trait over real files.
//!
//! # The model
//!
//! The log (`sluice-storage`) is pure: it asks for append-only data files with
//! positional reads, fdatasync and truncate; small memory-mapped index files; and a
//! handful of directory operations. This crate answers with two backends.
//!
//! - [`glommio_fs::GlommioStorage`] is the engine's backend. Each engine shard is a
//!   glommio `LocalExecutor` pinned to a core; every data-file operation is submitted
//!   through io_uring, so an append or an fdatasync never blocks the shard thread. Its
//!   data files come in two [`glommio_fs::DataFileMode`]s:
//!   - `Direct` (the default; [`glommio::io::DmaFile`], [`glommio_fs::DmaLogFile`]):
//!     `O_DIRECT`, no double buffering, no writeback storms, no reclaim stalls, at the
//!     price of alignment (every position, length and buffer a multiple of the block
//!     size) and reads that go to the device. On this project's ext4/virtio machines
//!     the broker's full-speed produce measured 1.5-1.9x `Buffered`'s: there, the
//!     page cache's first touch of fresh memory was most of a shard's CPU;
//!   - `Buffered` ([`glommio_buffered::BufferedLogFile`]): through the page cache, for
//!     file systems that refuse `O_DIRECT` ([`glommio_fs::direct_io_supported`] tells;
//!     the server falls back to it). Hot-log reads come from memory.
//! - [`std_fs::StdStorage`] uses plain `std::fs::File`s (buffered, page cache,
//!   blocking syscalls). It is for tools, tests, the CLI, benchmarks as a baseline and
//!   any caller that runs no glommio executor; its futures complete without yielding,
//!   so any executor (or `pollster`) can drive them.
//!
//! Both backends share [`std_fs::MmapIndex`] for the sparse indexes.
//!
//! # DMA files (`Direct` mode): the tail block
//!
//! A [`glommio_fs::DmaLogFile`] keeps the file's last partial block (the bytes from
//! the last aligned position to the logical end, the *tail*) in memory. An append
//! builds one DMA buffer holding the tail followed by the new bytes, and writes its
//! whole blocks at the tail's aligned position in a single `write_at` (appends larger
//! than [`glommio_fs::WRITE_BYTES_MAX`] become a few writes of that size); the
//! remainder becomes the new tail. An append that does not complete a block costs no
//! I/O at all. [`sluice_storage::LogFile::sync`] writes the tail, unpadded, through a
//! buffered descriptor of the same inode (a `pwrite` into the page cache, on the shard
//! thread), then issues one fdatasync (which covers both). So:
//!
//! - the file on disk is never longer than the logical length, and after a sync it
//!   is exactly the logical bytes: on open a file's length is its size on disk, and
//!   the log needs a sealed segment to end at its last batch (zeros after it would
//!   read as corruption);
//! - reads below the tail go to the device, the tail is served from memory, so reads
//!   see every appended byte, synced or not;
//! - a crash loses at most the unsynced bytes (whole blocks written since the last
//!   sync may survive, the tail does not), which the durability contract allows; a
//!   handle dropped without a sync still writes its tail to the page cache.
//!
//! The two obvious alternatives were measured (see `README.md`): rewriting the tail
//! block zero-padded at every append and leaving the padding on disk is not correct
//! for the log (sealed segments would end in zeros); cutting the padding with an
//! ftruncate before each fdatasync is correct but costs 1.15x to 2.3x the latency of
//! the padding variant for small appends + sync on ext4, where the buffered tail
//! costs 0.6x (group commits of small batches) to 1.35x (one small append per sync).
//!
//! Reads go straight to the device (`O_DIRECT`, aligned, then sliced): there is no
//! page cache behind a DMA file, so hot-tail reads by caught-up consumers are the
//! engine's to cache, not the file system's.
//!
//! # The mmap index
//!
//! Indexes are small fixed-size files mapped shared and read-write
//! ([`std_fs::MmapIndex`]): lookups are plain memory reads, an entry is a copy into
//! the map. `msync` + `fsync` happen only when a segment is sealed, rebuilt or closed,
//! so their synchronous cost is off the per-append path (under glommio they block the
//! shard for that one call; see `README.md`).
//!
//! # glommio executors and locked memory
//!
//! glommio preallocates `io_memory` bytes per executor and registers them with each
//! of its three io_uring rings; registered buffers count against `RLIMIT_MEMLOCK`
//! (three times: once per ring). Build executors with [`executor_builder`] (or pass
//! [`IO_MEMORY_BYTES`] to your own builder) so that two shards stay inside an 8 MiB
//! memlock limit. Buffers beyond the registered pool come from the heap and work the
//! same, just without the fixed-buffer fast path.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod glommio_buffered;
pub mod glommio_fs;
pub mod std_fs;

use std::io;
use std::path::{Path, PathBuf};

pub use glommio_buffered::BufferedLogFile;
pub use glommio_fs::{direct_io_supported, DataFileMode, DmaLogFile, GlommioFile, GlommioStorage};
pub use std_fs::{MmapIndex, StdFile, StdStorage};

/// Registered I/O memory per glommio executor. glommio registers it with its three
/// rings, pinning `3 * IO_MEMORY_BYTES` (measured: `VmPin` 3072 kB); two shards then
/// pin 6 MiB, inside an 8 MiB `RLIMIT_MEMLOCK`. Buffers over half of it (a large
/// batch) come from the heap instead; 1 MiB appends showed no consistent difference
/// between 64 KiB, 1 MiB and 16 MiB pools (see `README.md`).
pub const IO_MEMORY_BYTES: usize = 1 << 20;

/// A glommio executor builder with this crate's `io_memory` ([`IO_MEMORY_BYTES`]).
pub fn executor_builder(placement: glommio::Placement) -> glommio::LocalExecutorBuilder {
    glommio::LocalExecutorBuilder::new(placement).io_memory(IO_MEMORY_BYTES)
}

/// `dir/name` for a plain file name; anything that could leave the directory (a
/// separator, `.`, `..`, an empty name, a NUL) is refused.
pub(crate) fn child_path(dir: &Path, name: &str) -> io::Result<PathBuf> {
    let bad = name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']);
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a plain file name: {name:?}"),
        ));
    }
    Ok(dir.join(name))
}

/// Creates `path` and any missing parents, making each new directory entry durable
/// (fsync of the parent of every directory created). Returns the canonical path.
pub(crate) fn create_dir_durable(path: &Path) -> io::Result<PathBuf> {
    let mut missing = Vec::new();
    let mut cur = Some(path);
    while let Some(p) = cur {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    std::fs::create_dir_all(path)?;
    // Oldest ancestor first: each parent's entry for the next level.
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        fsync_dir(parent)?;
    }
    let dir = std::fs::canonicalize(path)?;
    if !dir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", dir.display()),
        ));
    }
    Ok(dir)
}

/// fsync (not fdatasync) of a directory: on ext4 an fdatasync of a directory need
/// not commit a rename or unlink that left the directory's size unchanged.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The file names in `dir` (not sub-directories), in directory order. Names that
/// are not UTF-8 cannot be Sluice files and are skipped.
pub(crate) fn list_files(dir: &Path) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            continue;
        }
        if let Ok(name) = entry.file_name().into_string() {
            out.push(name);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_path_refuses_escapes() {
        let dir = Path::new("/data/p0");
        assert_eq!(child_path(dir, "a.log").unwrap(), dir.join("a.log"));
        for bad in ["", ".", "..", "a/b", "/etc", "x\0"] {
            let err = child_path(dir, bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
