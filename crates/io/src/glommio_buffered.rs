//! Buffered data files through glommio's io_uring reactor (page cache, no `O_DIRECT`).
//!
//! Why this exists beside [`crate::glommio_fs::DmaLogFile`]: on ext4 over a virtio
//! disk (this project's machines) an appending `O_DIRECT` write pays block
//! allocation, unwritten-extent conversion and an i_size update in the journal on
//! every write, and measured about 0.65x of buffered writes for 1 MiB appends each
//! followed by an fdatasync (see `README.md`); buffered reads of a hot log also come
//! from the page cache instead of the device. Reads, fdatasync and truncation go
//! through io_uring; appends are a plain `pwrite(2)` on the shard thread (a copy into
//! the page cache, cheaper than an io_uring write the kernel punts to an io-wq worker;
//! it can block only under dirty-page throttling, like any buffered writer's `write`).
//! [`crate::glommio_fs::DataFileMode`] picks the mode.

use std::fmt;
use std::io;
use std::path::Path;
use std::rc::Rc;

use glommio::io::{BufferedFile, OpenOptions};
use sluice_storage::{DetachedSync, LogFile, OpenMode};

/// An append-only buffered data file driven by glommio.
pub struct BufferedLogFile {
    /// Shared only with detached fdatasyncs in flight (`sync_detached`).
    file: Rc<BufferedFile>,
    /// Logical length: what reads see and appends extend.
    len: u64,
}

impl fmt::Debug for BufferedLogFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufferedLogFile")
            .field("path", &self.file.path().map(|p| p.to_path_buf()))
            .field("len", &self.len)
            .finish()
    }
}

impl BufferedLogFile {
    /// Opens or creates `path`; an existing file's length is its size on disk.
    /// Appends with `pwrite(2)` on the shard thread: a copy into the page cache, with
    /// no io_uring round trip through an io-wq worker thread and no owned buffer.
    fn append_pwrite(&mut self, data: &[u8]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        let mut done = 0usize;
        while let Some(rest) = data.get(done..).filter(|r| !r.is_empty()) {
            let at = libc::off_t::try_from(self.len)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
            // SAFETY: `fd` stays open while `self.file` lives (for this call), and `rest`
            // is a valid, initialised buffer of `rest.len()` bytes that pwrite only reads.
            let n = unsafe { libc::pwrite(fd, rest.as_ptr().cast(), rest.len(), at) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "write wrote nothing",
                ));
            }
            // What landed is visible, as after a short write; the log truncates back
            // if the whole append does not succeed.
            self.len += n as u64;
            done += n as usize;
        }
        Ok(())
    }

    /// Appends to `out`, up to `goal` bytes in all, what of the file from `pos` on the
    /// page cache holds, without waiting for the device; stops at the first byte that is
    /// not resident (or when the kernel cannot read without waiting at all). `out` has
    /// the capacity.
    fn read_resident(&self, pos: u64, goal: usize, out: &mut Vec<u8>) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        let start = out.len();
        while out.len() < goal {
            let at = libc::off_t::try_from(pos + (out.len() - start) as u64)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
            let rest = goal - out.len();
            let spare = out.spare_capacity_mut();
            let len = rest.min(spare.len());
            let iov = libc::iovec {
                iov_base: spare.as_mut_ptr().cast(),
                iov_len: len,
            };
            // SAFETY: `fd` stays open while `self.file` lives (for this call); `iov`
            // points at `len` bytes of `out`'s spare capacity, which preadv2 only writes.
            let n = unsafe { libc::preadv2(fd, &iov, 1, at, libc::RWF_NOWAIT) };
            if n > 0 {
                // SAFETY: preadv2 initialised the first `n` (<= `len`) spare bytes.
                unsafe { out.set_len(out.len() + n as usize) };
                continue;
            }
            if n == 0 {
                // The file ends here: the io_uring read reports it.
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Not resident, or no RWF_NOWAIT here: io_uring reads the rest.
                Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => {
                    return Ok(())
                }
                _ => return Err(e),
            }
        }
        Ok(())
    }

    pub(crate) async fn open(path: &Path, mode: OpenMode) -> io::Result<Self> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if mode == OpenMode::Create {
            opts.create(true).truncate(true);
        }
        let file = opts.buffered_open(path).await?;
        let len = file.file_size().await?;
        Ok(Self {
            file: Rc::new(file),
            len,
        })
    }
}

impl LogFile for BufferedLogFile {
    fn len(&self) -> u64 {
        self.len
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.read_append(pos, len, &mut out).await?;
        Ok(out)
    }

    /// What is in the page cache is copied straight into `out` on the shard thread
    /// (`preadv2` with `RWF_NOWAIT`, which never waits for the device); the rest, if
    /// any, is read through io_uring. A hot log's fetch is then one copy from the page
    /// cache into the response, instead of one into glommio's buffer and a second into
    /// `out`.
    async fn read_append(&self, pos: u64, len: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let end = pos.saturating_add(len as u64).min(self.len);
        let want = usize::try_from(end.saturating_sub(pos))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "read too large"))?;
        let base = out.len();
        let goal = base + want;
        out.try_reserve_exact(want)
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "read buffer"))?;
        self.read_resident(pos, goal, out)?;
        while out.len() < goal {
            let at = pos + (out.len() - base) as u64;
            let got = self.file.read_at(at, goal - out.len()).await?;
            if got.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file on disk ends before its logical length {}", self.len),
                ));
            }
            out.extend_from_slice(&got);
        }
        Ok(())
    }

    async fn append(&mut self, data: &[u8]) -> io::Result<()> {
        // A buffered write is a copy into the page cache: done inline it costs less than
        // an io_uring submission that the kernel hands to an io-wq worker thread (measured
        // with sluice-bench: ~10% more produce throughput, benches/README.md).
        self.append_pwrite(data)
    }

    async fn sync(&mut self) -> io::Result<()> {
        self.file.fdatasync().await?;
        Ok(())
    }

    /// fdatasync on the same open file, through io_uring, holding its own reference:
    /// appends (`pwrite` on the shard thread) go on while it runs. fdatasync covers
    /// every write that completed before it was issued, and each append completes
    /// before `append` returns.
    fn sync_detached(&self) -> Option<DetachedSync> {
        let file = Rc::clone(&self.file);
        Some(Box::pin(async move {
            file.fdatasync().await?;
            Ok(())
        }))
    }

    async fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await?;
        self.len = len;
        Ok(())
    }
}
