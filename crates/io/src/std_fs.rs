//! The std backend: buffered `std::fs` files, blocking syscalls, and the shared
//! memory-mapped index.
//!
//! Every future here completes on its first poll (the syscalls block the calling
//! thread), so any executor, or `pollster`, can drive them. Use it where no glommio
//! executor runs: tools, tests, benchmarks as a baseline.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;
use sluice_storage::{IndexFile, LogFile, OpenMode, Storage};

use crate::{child_path, create_dir_durable, fsync_dir, list_files};

/// A partition directory of plain files.
#[derive(Debug, Clone)]
pub struct StdStorage {
    dir: PathBuf,
}

impl StdStorage {
    /// Opens the directory `path`, creating it (and its parents, durably) if missing.
    pub fn open_dir(path: impl AsRef<Path>) -> io::Result<Self> {
        let dir = create_dir_durable(path.as_ref())?;
        Ok(Self { dir })
    }

    /// The directory (canonical).
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Storage for StdStorage {
    type File = StdFile;
    type Index = MmapIndex;

    async fn open(&self, name: &str, mode: OpenMode) -> io::Result<StdFile> {
        StdFile::open(&child_path(&self.dir, name)?, mode)
    }

    async fn open_index(&self, name: &str, len: Option<u64>) -> io::Result<MmapIndex> {
        MmapIndex::open(&child_path(&self.dir, name)?, len)
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(child_path(&self.dir, name)?)
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(child_path(&self.dir, from)?, child_path(&self.dir, to)?)
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        list_files(&self.dir)
    }

    async fn sync_dir(&self) -> io::Result<()> {
        fsync_dir(&self.dir)
    }
}

/// A data file of [`StdStorage`]: positional writes at the logical end, positional
/// reads clamped to it.
#[derive(Debug)]
pub struct StdFile {
    file: File,
    /// Logical length: what reads see and appends extend.
    len: u64,
    /// Upper bound of the size on disk: above `len` after a failed append.
    disk_len: u64,
}

impl StdFile {
    fn open(path: &Path, mode: OpenMode) -> io::Result<Self> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if mode == OpenMode::Create {
            opts.create(true).truncate(true);
        }
        let file = opts.open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            len,
            disk_len: len,
        })
    }
}

impl LogFile for StdFile {
    fn len(&self) -> u64 {
        self.len
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let end = pos.saturating_add(len as u64).min(self.len);
        if pos >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0; to_usize(end - pos)?];
        self.file.read_exact_at(&mut buf, pos)?;
        Ok(buf)
    }

    async fn append(&mut self, data: &[u8]) -> io::Result<()> {
        let end = self.len + data.len() as u64;
        if let Err(e) = self.file.write_all_at(data, self.len) {
            // Some prefix may have landed past the logical end.
            self.disk_len = self.disk_len.max(end);
            return Err(e);
        }
        self.len = end;
        self.disk_len = self.disk_len.max(end);
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        if self.disk_len != self.len {
            self.file.set_len(self.len)?;
            self.disk_len = self.len;
        }
        self.file.sync_data()
    }

    async fn truncate(&mut self, len: u64) -> io::Result<()> {
        if len > self.len && self.disk_len > self.len {
            // Growing must zero-fill: first drop what a failed append left.
            self.file.set_len(self.len)?;
            self.disk_len = self.len;
        }
        self.file.set_len(len)?;
        self.len = len;
        self.disk_len = len;
        Ok(())
    }
}

/// A memory-mapped index file (both backends). A zero-length file cannot be mapped:
/// it is an empty mapping.
///
/// `write` copies into the shared mapping (the page cache); `sync` is `msync` then
/// `fsync`; `set_len` unmaps, resizes the file and maps it again. All calls are
/// synchronous.
#[derive(Debug)]
pub struct MmapIndex {
    file: File,
    map: Option<MmapMut>,
}

impl MmapIndex {
    /// Opens `path`, creating it empty if missing; with `Some(len)` sets its length
    /// (zero-filling any extension), with `None` keeps it.
    pub fn open(path: &Path, len: Option<u64>) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let current = file.metadata()?.len();
        let len = match len {
            Some(len) if len != current => {
                file.set_len(len)?;
                len
            }
            _ => current,
        };
        let map = map_file(&file, len)?;
        Ok(Self { file, map })
    }

    /// The mapped length in bytes.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Whether nothing is mapped (a zero-length file).
    pub fn is_empty(&self) -> bool {
        self.map.is_none()
    }
}

/// Maps `len` bytes of `file` shared and writable; `None` for an empty file.
fn map_file(file: &File, len: u64) -> io::Result<Option<MmapMut>> {
    if len == 0 {
        return Ok(None);
    }
    let len = to_usize(len)?;
    // SAFETY: the mapping is valid as long as the file is not truncated under it by
    // someone else. The partition directory belongs to this process alone (the server
    // holds its data directory exclusively), and this handle resizes the file only
    // after dropping the mapping (`set_len`).
    let map = unsafe { memmap2::MmapOptions::new().len(len).map_mut(file)? };
    // No read-around on a fault: an index is preallocated sparse and filled from the
    // front, entry by entry, so each fault on a hole read (zero-filled) a whole
    // read-around window of pages the index would not reach for a long time (ext4's
    // large folios made that a few percent of a shard's CPU at full speed). A hint: a
    // kernel that refuses it costs only that read-around.
    let _ = map.advise(memmap2::Advice::Random);
    Ok(Some(map))
}

impl IndexFile for MmapIndex {
    fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    fn write(&mut self, pos: usize, data: &[u8]) -> io::Result<()> {
        let out_of_bounds = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("index write of {} bytes at {pos} out of bounds", data.len()),
            )
        };
        if data.is_empty() {
            return if pos <= self.len() {
                Ok(())
            } else {
                Err(out_of_bounds())
            };
        }
        let end = pos.checked_add(data.len()).ok_or_else(out_of_bounds)?;
        let dst = self
            .map
            .as_deref_mut()
            .and_then(|m| m.get_mut(pos..end))
            .ok_or_else(out_of_bounds)?;
        dst.copy_from_slice(data);
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        if let Some(map) = &self.map {
            map.flush()?;
        }
        // fsync, not fdatasync: the length changes with `set_len`.
        self.file.sync_all()
    }

    async fn set_len(&mut self, len: u64) -> io::Result<()> {
        // Unmap first: a mapping past the end of the file would fault (SIGBUS).
        self.map = None;
        match self.file.set_len(len) {
            Ok(()) => {
                self.map = map_file(&self.file, len)?;
                Ok(())
            }
            Err(e) => {
                // Map the length the file still has, so `bytes` stays truthful.
                let now = self.file.metadata()?.len();
                self.map = map_file(&self.file, now)?;
                Err(e)
            }
        }
    }
}

fn to_usize(v: u64) -> io::Result<usize> {
    usize::try_from(v).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{v} bytes do not fit in memory"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_index_is_an_empty_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.index");
        let mut idx = MmapIndex::open(&path, None).unwrap();
        assert!(idx.is_empty());
        assert_eq!(idx.bytes(), &[] as &[u8]);
        assert!(idx.write(0, &[1]).is_err());
        idx.write(0, &[]).unwrap();
        pollster::block_on(idx.set_len(16)).unwrap();
        idx.write(8, &[7; 8]).unwrap();
        assert_eq!(&idx.bytes()[8..], &[7; 8]);
        assert!(idx.write(9, &[0; 8]).is_err());
        assert!(idx.write(usize::MAX, &[0; 8]).is_err());
    }
}
