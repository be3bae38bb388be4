//! One broker per data directory: an exclusive `flock` on `<data>/.lock`, held for
//! the life of the process (the kernel drops it when the process dies, even by
//! SIGKILL, so a crash never leaves a stale lock).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// The held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Creates `dir` if needed and locks it, failing at once if another process holds it.
pub fn lock_data_dir(dir: &Path) -> io::Result<DataDirLock> {
    std::fs::create_dir_all(dir)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is in use by another sluice-server", dir.display()),
            )
        } else {
            err
        });
    }
    Ok(DataDirLock { _file: file })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_second_lock_on_the_same_dir_fails() {
        let dir = tempfile::tempdir().unwrap();
        let held = super::lock_data_dir(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open conflicts.
        let err = super::lock_data_dir(dir.path()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
        drop(held);
        super::lock_data_dir(dir.path()).unwrap();
    }
}
