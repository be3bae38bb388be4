//! The engine backend: `O_DIRECT` data files through glommio's io_uring reactor.
//!
//! Everything here must be polled inside a glommio `LocalExecutor` (glommio itself
//! panics when its I/O is used outside one: that is a wiring bug, not an I/O error).
//! The executor should be built with a small `io_memory`: see
//! [`crate::executor_builder`].
//!
//! Data files are [`DmaLogFile`]s (the tail-block scheme is described in the crate
//! doc). Index files are [`MmapIndex`], shared with the std backend: mmap access is
//! synchronous by nature and its msync/fsync runs only when a segment is sealed.
//! Directory operations: `remove` and `rename` go through glommio
//! ([`glommio::io::remove`], [`glommio::io::rename`]); `sync_dir` runs an `fsync` of
//! the directory on glommio's blocking thread pool, because glommio 0.9's
//! `Directory::sync` issues an fdatasync, which on ext4 need not commit a rename or
//! unlink; `list` reads the directory with `std::fs::read_dir` (a cheap metadata
//! call, and glommio 0.9 has no asynchronous one).
//!
//! What still runs synchronously on the shard thread: [`GlommioStorage::open_dir`],
//! `list`, the index calls, the once-per-thread iopoll probe below, and a
//! [`DmaLogFile`]'s tail write at a sync or drop (less than a block, into the page
//! cache).
//!
//! # glommio 0.9's iopoll probe
//!
//! The first `O_DIRECT` open on a device in a thread makes glommio probe whether the
//! device supports polled I/O by reading the first block of the file being opened,
//! and caches the answer for that thread. When that file is empty the read ends at
//! EOF before the kernel checks for polling, so the probe wrongly says yes, and every
//! later read on that device from that thread fails with `EOPNOTSUPP` (glommio issues
//! #605, #670). A log creates empty files all the time, so before its first open in a
//! thread, [`GlommioStorage`] lets glommio probe a non-empty scratch file instead (an
//! `O_TMPFILE` in the directory, opened through `/proc/self/fd`). Other code opening
//! `DmaFile`s in the same thread must not open an empty one first.
//!
//! Two more glommio 0.9 behaviours to know: opening a DMA file panics inside glommio
//! if `statfs` of its path fails right after the open (a race with a concurrent
//! removal; the log never does that), and glommio issue #633 reports hangs on some
//! kernels for single transfers of several MiB on the poll ring, hence
//! [`WRITE_BYTES_MAX`] and [`READ_BYTES_MAX`].

use std::cell::RefCell;
use std::fmt;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions};
use sluice_storage::{LogFile, OpenMode, Storage};

use crate::glommio_buffered::BufferedLogFile;
use crate::std_fs::MmapIndex;
use crate::{child_path, create_dir_durable, fsync_dir, list_files};

/// Largest single write an append issues; larger appends are split into writes of
/// this size, issued one after another. 4 MiB is a common device `max_sectors_kb`
/// (the kernel splits larger transfers anyway), and glommio issue #633 reports hangs
/// on some kernels for single transfers of several MiB.
pub const WRITE_BYTES_MAX: usize = 4 << 20;
/// Largest single read a `read_at` issues; larger reads are split.
pub const READ_BYTES_MAX: usize = 4 << 20;
/// Bytes of the scratch file glommio's iopoll probe reads (at least one block).
const PROBE_FILE_BYTES: usize = 64 << 10;

thread_local! {
    /// Devices (`st_dev`) on which glommio has probed iopoll support in this thread
    /// against a non-empty file.
    static PROBED_DEVICES: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Name of the scratch file for the probe where `O_TMPFILE` is not supported.
const PROBE_FILE_NAME: &str = ".sluice-iopoll-probe";

/// Largest alignment taken from the file system's block size (a larger reported
/// block size is ignored in favour of the device's logical block size).
const FS_BLOCK_BYTES_MAX: u64 = 64 << 10;

/// How the data files of a [`GlommioStorage`] do their I/O. Both submit through
/// glommio's io_uring reactor and never block the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataFileMode {
    /// Through the page cache ([`BufferedLogFile`]): for file systems that refuse
    /// `O_DIRECT` ([`direct_io_supported`]). Every append copies into page-cache pages
    /// and the fdatasync writes them back; hot-log reads come from memory.
    Buffered,
    /// `O_DIRECT` ([`DmaLogFile`]), the default: appends go from a DMA buffer to the
    /// device, no page cache, no writeback. On this project's ext4/virtio machines it
    /// measured 1.5-1.9x the broker's full-speed produce of `Buffered` and a steadier
    /// 256-record window (`benches/README.md`, 2026-12-04's eighth sitting): there,
    /// the page cache's first touch of fresh memory was most of a shard's CPU. Reads
    /// below the in-memory tail go to the device.
    #[default]
    Direct,
}

/// Name of the scratch file [`direct_io_supported`] writes where `O_TMPFILE` is not
/// supported.
const DIRECT_PROBE_FILE_NAME: &str = ".sluice-direct-probe";

/// Whether the file system under `dir` (an existing directory) takes `O_DIRECT`: an
/// open with it and one aligned write of [`FS_BLOCK_BYTES_MAX`] bytes (a multiple of
/// every alignment [`DmaLogFile`] picks) into a scratch file, removed again.
/// `Ok(false)` when either is refused with `EINVAL` (tmpfs before Linux 6.6, some FUSE
/// and network file systems); any other failure is the directory's and is returned.
/// Synchronous: call it at startup.
pub fn direct_io_supported(dir: &Path) -> io::Result<bool> {
    let refused = |e: &io::Error| e.raw_os_error() == Some(libc::EINVAL);
    // An EINVAL from the unnamed open may be O_TMPFILE's as much as O_DIRECT's: the
    // named file `open_scratch` falls back to tells.
    let (file, named) = match open_scratch(dir, DIRECT_PROBE_FILE_NAME, libc::O_DIRECT) {
        Ok(opened) => opened,
        Err(e) if refused(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    // A block-aligned slice of a plain buffer: O_DIRECT wants the memory aligned too.
    let block = FS_BLOCK_BYTES_MAX as usize;
    let buf = vec![0u8; 2 * block];
    let skip = buf.as_ptr().align_offset(block);
    let aligned = buf.get(skip..skip + block).unwrap_or_default();
    let written = file.write_at(aligned, 0);
    drop(file);
    if let Some(path) = named {
        std::fs::remove_file(&path)?;
    }
    match written {
        Ok(n) if n == block => Ok(true),
        Ok(n) => Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("O_DIRECT probe wrote {n} of {block} bytes"),
        )),
        Err(e) if refused(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A scratch file in `dir`, opened read-write with the open `flags`: an unnamed
/// `O_TMPFILE` where the file system has them (a crash leaves nothing behind), else
/// the file `name`, created, whose path is returned for the caller to remove. A failed
/// named open removes what it may have created.
fn open_scratch(
    dir: &Path,
    name: &str,
    flags: libc::c_int,
) -> io::Result<(std::fs::File, Option<PathBuf>)> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).mode(0o600);
    if let Ok(f) = options
        .clone()
        .custom_flags(flags | libc::O_TMPFILE)
        .open(dir)
    {
        return Ok((f, None));
    }
    let path = dir.join(name);
    match options
        .create(true)
        .truncate(true)
        .custom_flags(flags)
        .open(&path)
    {
        Ok(f) => Ok((f, Some(path))),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// A partition directory whose data files are glommio files ([`DataFileMode`]). Use
/// it only inside a glommio `LocalExecutor`.
#[derive(Debug, Clone)]
pub struct GlommioStorage {
    dir: PathBuf,
    /// The directory's device, for the iopoll probe.
    dev: u64,
    mode: DataFileMode,
}

impl GlommioStorage {
    /// Opens the directory `path`, creating it (and its parents, durably) if missing,
    /// with the default [`DataFileMode`]. Synchronous: call it at startup or from a
    /// blocking context.
    pub fn open_dir(path: impl AsRef<Path>) -> io::Result<Self> {
        let dir = create_dir_durable(path.as_ref())?;
        let dev = std::fs::metadata(&dir)?.dev();
        Ok(Self {
            dir,
            dev,
            mode: DataFileMode::default(),
        })
    }

    /// The same directory with data files in `mode`.
    pub fn with_mode(mut self, mode: DataFileMode) -> Self {
        self.mode = mode;
        self
    }

    /// The data-file mode.
    pub fn mode(&self) -> DataFileMode {
        self.mode
    }

    /// The directory (canonical).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Makes sure glommio's per-thread iopoll probe for this device has run against
    /// a non-empty file (see the module doc).
    async fn ensure_probed(&self) -> io::Result<()> {
        if PROBED_DEVICES.with(|p| p.borrow().contains(&self.dev)) {
            return Ok(());
        }
        let (mut scratch, named) = open_scratch(&self.dir, PROBE_FILE_NAME, 0)?;
        let probed = async {
            scratch.write_all(&[0; PROBE_FILE_BYTES])?;
            DmaFile::open(&proc_fd_path(scratch.as_raw_fd()))
                .await?
                .close()
                .await?;
            Ok::<(), io::Error>(())
        }
        .await;
        drop(scratch);
        if let Some(path) = named {
            std::fs::remove_file(&path)?;
        }
        probed?;
        PROBED_DEVICES.with(|p| p.borrow_mut().push(self.dev));
        Ok(())
    }
}

/// A data file of a [`GlommioStorage`], in either [`DataFileMode`].
#[derive(Debug)]
pub enum GlommioFile {
    /// Page-cache I/O.
    Buffered(BufferedLogFile),
    /// `O_DIRECT` I/O.
    Direct(Box<DmaLogFile>),
}

impl LogFile for GlommioFile {
    fn len(&self) -> u64 {
        match self {
            Self::Buffered(f) => f.len(),
            Self::Direct(f) => f.len(),
        }
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        match self {
            Self::Buffered(f) => f.read_at(pos, len).await,
            Self::Direct(f) => f.read_at(pos, len).await,
        }
    }

    async fn read_append(&self, pos: u64, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
        match self {
            Self::Buffered(f) => f.read_append(pos, len, out).await,
            Self::Direct(f) => f.read_append(pos, len, out).await,
        }
    }

    async fn append(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Buffered(f) => f.append(data).await,
            Self::Direct(f) => f.append(data).await,
        }
    }

    async fn sync(&mut self) -> io::Result<()> {
        match self {
            Self::Buffered(f) => f.sync().await,
            Self::Direct(f) => f.sync().await,
        }
    }

    /// Buffered files only: a direct file's sync first writes its partial tail block,
    /// which a later append rewrites, so the two must not overlap.
    fn sync_detached(&self) -> Option<sluice_storage::DetachedSync> {
        match self {
            Self::Buffered(f) => f.sync_detached(),
            Self::Direct(_) => None,
        }
    }

    async fn truncate(&mut self, len: u64) -> io::Result<()> {
        match self {
            Self::Buffered(f) => f.truncate(len).await,
            Self::Direct(f) => f.truncate(len).await,
        }
    }
}

impl Storage for GlommioStorage {
    type File = GlommioFile;
    type Index = MmapIndex;

    async fn open(&self, name: &str, mode: OpenMode) -> io::Result<GlommioFile> {
        let path = child_path(&self.dir, name)?;
        match self.mode {
            DataFileMode::Buffered => Ok(GlommioFile::Buffered(
                BufferedLogFile::open(&path, mode).await?,
            )),
            DataFileMode::Direct => {
                self.ensure_probed().await?;
                Ok(GlommioFile::Direct(Box::new(
                    DmaLogFile::open(&path, mode).await?,
                )))
            }
        }
    }

    async fn open_index(&self, name: &str, len: Option<u64>) -> io::Result<MmapIndex> {
        MmapIndex::open(&child_path(&self.dir, name)?, len)
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        glommio::io::remove(child_path(&self.dir, name)?).await?;
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (child_path(&self.dir, from)?, child_path(&self.dir, to)?);
        glommio::io::rename(from, to).await?;
        Ok(())
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        list_files(&self.dir)
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || fsync_dir(&dir))
            .await
    }
}

/// An append-only `O_DIRECT` data file with its last partial block in memory.
///
/// Appends write whole blocks only; the partial last block (the tail) stays in
/// memory until [`LogFile::sync`] writes it through a buffered descriptor of the same
/// inode, just before the fdatasync (see the crate doc for why).
///
/// Invariants, between calls: the file's bytes `[0, tail_start)` on disk are the
/// logical content, and so are `[tail_start, len)` when `tail_on_disk`; `tail` is the
/// logical bytes `[tail_start, len)` (shorter than `align`, `tail_start` aligned);
/// the file on disk is at most `disk_len` bytes long, and at least `len` once synced.
pub struct DmaLogFile {
    file: DmaFile,
    /// The same inode opened buffered (through `/proc/self/fd`), for the tail; opened
    /// on first use. Written with `pwrite` on the shard thread: a copy of less than a
    /// block into the page cache.
    buffered: Option<std::fs::File>,
    /// Alignment of every position, length and buffer of an I/O (a power of two).
    align: u64,
    /// Logical length.
    len: u64,
    /// The last partial block: logical bytes `[len - tail.len(), len)`.
    tail: Vec<u8>,
    /// Whether `tail` is also on disk (in the page cache at least).
    tail_on_disk: bool,
    /// Upper bound of the size on disk: above `len` only after a failed write left
    /// bytes past the logical end.
    disk_len: u64,
}

impl fmt::Debug for DmaLogFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaLogFile")
            .field("path", &self.file.path().map(|p| p.to_path_buf()))
            .field("align", &self.align)
            .field("len", &self.len)
            .field("tail_len", &self.tail.len())
            .field("tail_on_disk", &self.tail_on_disk)
            .field("disk_len", &self.disk_len)
            .finish()
    }
}

impl DmaLogFile {
    /// Opens or creates `path` for reads and appends. An existing file's logical
    /// length is its size on disk, and its last partial block is read back.
    pub(crate) async fn open(path: &Path, mode: OpenMode) -> io::Result<Self> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if mode == OpenMode::Create {
            opts.create(true).truncate(true);
        }
        let file = opts.dma_open(path).await?;
        let stat = file.stat().await?;
        let align = choose_alignment(file.alignment(), stat.fs_cluster_size)?;
        let len = stat.file_size;
        let mut this = Self {
            file,
            buffered: None,
            align,
            len,
            tail: Vec::new(),
            tail_on_disk: true,
            disk_len: len,
        };
        let tail_start = this.align_down(len);
        this.tail = this
            .read_block_prefix(tail_start, to_usize(len - tail_start)?)
            .await?;
        Ok(this)
    }

    /// The alignment this file's I/O uses.
    pub fn alignment(&self) -> u64 {
        self.align
    }

    fn align_down(&self, v: u64) -> u64 {
        v & !(self.align - 1)
    }

    fn align_up(&self, v: u64) -> u64 {
        self.align_down(v + self.align - 1)
    }

    /// Where the in-memory tail starts (aligned).
    fn tail_start(&self) -> u64 {
        self.len - self.tail.len() as u64
    }

    /// The first `n` bytes of the aligned block at `pos` (n < align), from disk.
    async fn read_block_prefix(&self, pos: u64, n: usize) -> io::Result<Vec<u8>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let block = self
            .file
            .read_at_aligned(pos, to_usize(self.align)?)
            .await?;
        match block.get(..n) {
            Some(bytes) => Ok(bytes.to_vec()),
            None => Err(short_file(pos + n as u64)),
        }
    }

    /// Writes the in-memory tail at its place through the buffered descriptor (no
    /// padding, so the file does not grow past the logical length).
    fn write_tail(&mut self) -> io::Result<()> {
        if self.tail_on_disk || self.tail.is_empty() {
            self.tail_on_disk = true;
            return Ok(());
        }
        let start = self.tail_start();
        let fd = self.file.as_raw_fd();
        buffered_descriptor(&mut self.buffered, fd)?.write_all_at(&self.tail, start)?;
        self.disk_len = self.disk_len.max(self.len);
        self.tail_on_disk = true;
        Ok(())
    }
}

impl Drop for DmaLogFile {
    /// A handle dropped without a sync still leaves its unsynced tail in the page
    /// cache, as a buffered file would: a clean process stop loses nothing, only a
    /// crash does (which the durability contract allows). Best effort: a failure here
    /// has nobody to report to and costs only unsynced bytes.
    fn drop(&mut self) {
        let write_tail = !self.tail_on_disk && !self.tail.is_empty();
        let trim = self.disk_len > self.len;
        if !(write_tail || trim) {
            return;
        }
        let (len, start, fd) = (self.len, self.tail_start(), self.file.as_raw_fd());
        let Ok(file) = buffered_descriptor(&mut self.buffered, fd) else {
            return;
        };
        if trim {
            // What a failed write left past the logical end.
            let _ = file.set_len(len);
        }
        if write_tail {
            let _ = file.write_all_at(&self.tail, start);
        }
    }
}

/// A buffered descriptor of the inode behind `fd` (a [`DmaLogFile`]'s), opened into
/// `slot` on first use.
fn buffered_descriptor(
    slot: &mut Option<std::fs::File>,
    fd: std::os::unix::io::RawFd,
) -> io::Result<&std::fs::File> {
    let file = match slot.take() {
        Some(f) => f,
        None => std::fs::OpenOptions::new()
            .write(true)
            .open(proc_fd_path(fd))?,
    };
    Ok(slot.insert(file))
}

/// `/proc/self/fd/N`: opening it makes a new description (buffered, unless asked
/// otherwise) of the inode behind descriptor `fd`, even if the file was renamed or
/// unlinked.
fn proc_fd_path(fd: std::os::unix::io::RawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

/// The file system's block size when it is a sane power of two above the device's
/// logical block size: writes that cover whole file-system blocks spare ext4/xfs the
/// sub-block zeroing (an extra I/O) and serialization of unaligned direct I/O.
fn choose_alignment(device: u64, fs_block: u32) -> io::Result<u64> {
    let fs = u64::from(fs_block);
    let align = if fs.is_power_of_two() && fs <= FS_BLOCK_BYTES_MAX {
        device.max(fs)
    } else {
        device
    };
    if !align.is_power_of_two() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("direct I/O alignment {align} is not a power of two"),
        ));
    }
    Ok(align)
}

fn short_file(end: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("file on disk is shorter than its logical length (needed {end} bytes)"),
    )
}

fn to_usize(v: u64) -> io::Result<usize> {
    usize::try_from(v).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{v} bytes do not fit in memory"),
        )
    })
}

/// Copies `tail ++ data`, from byte `from` of that concatenation, into the front of
/// `dst` (as much as fits); returns how many bytes were copied.
fn copy_joined(dst: &mut [u8], tail: &[u8], data: &[u8], from: usize) -> usize {
    let mut n = 0;
    let pieces = [
        tail.get(from..).unwrap_or_default(),
        data.get(from.saturating_sub(tail.len())..)
            .unwrap_or_default(),
    ];
    for src in pieces {
        let Some(out) = dst.get_mut(n..) else { break };
        let take = src.len().min(out.len());
        if let (Some(o), Some(s)) = (out.get_mut(..take), src.get(..take)) {
            o.copy_from_slice(s);
        }
        n += take;
    }
    n
}

impl LogFile for DmaLogFile {
    fn len(&self) -> u64 {
        self.len
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let end = pos.saturating_add(len as u64).min(self.len);
        if pos >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(to_usize(end - pos)?);
        let tail_start = self.tail_start();
        // Below the tail: aligned reads from the device, sliced.
        let disk_end = end.min(tail_start);
        let mut at = pos;
        while at < disk_end {
            let block = self.align_down(at);
            let stop = disk_end.min(block + READ_BYTES_MAX as u64);
            // `tail_start` is aligned, so this never reaches past the whole blocks.
            let size = to_usize(self.align_up(stop) - block)?;
            let got = self.file.read_at_aligned(block, size).await?;
            let skip = to_usize(at - block)?;
            let want = to_usize(stop - at)?;
            let bytes = got.get(skip..skip + want).ok_or_else(|| short_file(stop))?;
            out.extend_from_slice(bytes);
            at = stop;
        }
        // The rest from the in-memory tail.
        if end > tail_start {
            let from = to_usize(at.max(tail_start) - tail_start)?;
            let to = to_usize(end - tail_start)?;
            let bytes = self.tail.get(from..to).ok_or_else(|| short_file(end))?;
            out.extend_from_slice(bytes);
        }
        Ok(out)
    }

    async fn append(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let start = self.tail_start();
        // `tail ++ data` from the tail's aligned position: its whole blocks go to
        // disk now (one write, or a few of WRITE_BYTES_MAX), the rest is the new tail.
        let total = self.tail.len() + data.len();
        let whole = to_usize(self.align_down(total as u64))?;
        let mut done = 0usize;
        while done < whole {
            let chunk = (whole - done).min(WRITE_BYTES_MAX);
            let mut buf = self.file.alloc_dma_buffer(chunk);
            let copied = copy_joined(buf.as_bytes_mut(), &self.tail, data, done);
            if copied != chunk {
                return Err(io::Error::other("append: buffer not filled"));
            }
            let pos = start + done as u64;
            // Whatever happens next, the file may now reach this far.
            self.disk_len = self.disk_len.max(pos + chunk as u64);
            let written = self.file.write_at(buf, pos).await?;
            if written >= chunk {
                done += chunk;
            } else {
                // Short write (a full disk, typically): go on from the last whole
                // block that landed; the next try reports the error.
                let landed = to_usize(self.align_down(written as u64))?;
                if landed == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        format!("direct write of {chunk} bytes at {pos} wrote {written}"),
                    ));
                }
                done += landed;
            }
        }
        self.len += data.len() as u64;
        // The new tail: the last `total - whole` bytes of `tail ++ data`. Without a
        // whole block it is the old tail grown; otherwise it lies within `data`.
        if whole == 0 {
            self.tail.extend_from_slice(data);
        } else {
            let keep = total - whole;
            self.tail.clear();
            self.tail
                .extend_from_slice(data.get(data.len() - keep..).unwrap_or_default());
        }
        self.tail_on_disk = self.tail.is_empty();
        Ok(())
    }

    async fn sync(&mut self) -> io::Result<()> {
        if self.disk_len > self.len {
            // A failed write left bytes past the logical end: cut them.
            self.file.truncate(self.len).await?;
            self.disk_len = self.len;
        }
        self.write_tail()?;
        self.file.fdatasync().await?;
        Ok(())
    }

    async fn truncate(&mut self, len: u64) -> io::Result<()> {
        let old_start = self.tail_start();
        let new_start = self.align_down(len);
        let keep = to_usize(len - new_start)?;
        if new_start > old_start {
            // The old tail's block becomes a whole block below the new tail: it must
            // be on disk (followed by the zeros the resize adds).
            self.write_tail()?;
        }
        // Work out the new tail before resizing, so a failure leaves the handle as
        // it was.
        let (tail, on_disk) = if new_start == old_start {
            let mut t = self.tail.clone();
            t.resize(keep, 0);
            (t, self.tail_on_disk)
        } else if new_start > old_start {
            (vec![0; keep], true)
        } else {
            // Cutting into an earlier block, which lies whole on disk.
            (self.read_block_prefix(new_start, keep).await?, true)
        };
        if len > self.len && self.disk_len > self.len {
            // Growing must zero-fill: first drop what lies past the logical end.
            self.file.truncate(self.len).await?;
            self.disk_len = self.len;
        }
        self.file.truncate(len).await?;
        self.len = len;
        self.disk_len = len;
        self.tail = tail;
        self.tail_on_disk = on_disk;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_joined_spans_tail_and_data() {
        let (tail, data) = (b"abc".as_slice(), b"defgh".as_slice());
        let mut dst = [0u8; 4];
        assert_eq!(copy_joined(&mut dst, tail, data, 0), 4);
        assert_eq!(&dst, b"abcd");
        assert_eq!(copy_joined(&mut dst, tail, data, 2), 4);
        assert_eq!(&dst, b"cdef");
        let mut dst = [0u8; 8];
        assert_eq!(copy_joined(&mut dst, tail, data, 5), 3);
        assert_eq!(&dst[..3], b"fgh");
        assert_eq!(copy_joined(&mut dst, tail, data, 8), 0);
        assert_eq!(copy_joined(&mut dst, &[], data, 1), 4);
        assert_eq!(&dst[..4], b"efgh");
    }

    #[test]
    fn the_direct_io_probe_answers_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let supported = direct_io_supported(dir.path()).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "the probe left {left:?}");
        // ext4 takes O_DIRECT; elsewhere the answer is the file system's.
        let mut fs = std::mem::MaybeUninit::<libc::statfs>::zeroed();
        let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string and a zeroed statfs for the kernel to fill.
        let fs = unsafe {
            assert_eq!(libc::statfs(path.as_ptr(), fs.as_mut_ptr()), 0);
            fs.assume_init()
        };
        const EXT4_SUPER_MAGIC: i64 = 0xEF53;
        if fs.f_type as i64 == EXT4_SUPER_MAGIC {
            assert!(supported, "ext4 refused O_DIRECT");
        }
        let gone = dir.path().join("missing");
        assert!(
            direct_io_supported(&gone).is_err(),
            "a missing directory is an error"
        );
    }

    #[test]
    fn alignment_prefers_the_fs_block() {
        assert_eq!(choose_alignment(512, 4096).unwrap(), 4096);
        assert_eq!(choose_alignment(4096, 512).unwrap(), 4096);
        assert_eq!(choose_alignment(512, 1 << 20).unwrap(), 512);
        assert_eq!(choose_alignment(512, 3000).unwrap(), 512);
        assert!(choose_alignment(1000, 0).is_err());
    }
}
