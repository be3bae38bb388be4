//! Partition directories on glommio storage: the shard core's
//! [`StorageProvider`] for the engine.

use std::io;
use std::path::{Path, PathBuf};

use sluice_engine::{StorageProvider, TopicPartition};
use sluice_io::{DataFileMode, GlommioStorage};

use crate::topics::{fsync_dir, partition_dir, validate_topic_name};

/// One [`GlommioStorage`] per partition, at `<data_dir>/topics/<topic>/<partition>/`.
///
/// Runs on a shard thread: `open` and `remove` are synchronous directory calls (at
/// topic create/delete and at start, never per request). The storage it returns
/// must be used inside a glommio executor.
#[derive(Debug, Clone)]
pub struct GlommioProvider {
    data_dir: PathBuf,
    mode: DataFileMode,
}

impl GlommioProvider {
    /// Partitions under `data_dir`, their data files in `mode`.
    pub fn new(data_dir: impl Into<PathBuf>, mode: DataFileMode) -> Self {
        Self {
            data_dir: data_dir.into(),
            mode,
        }
    }

    /// The directory of `tp`, refusing a topic name that is not a plain, valid one
    /// (it becomes a path component).
    pub fn dir(&self, tp: &TopicPartition) -> io::Result<PathBuf> {
        validate_topic_name(&tp.topic)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        Ok(partition_dir(&self.data_dir, tp))
    }
}

impl StorageProvider for GlommioProvider {
    type S = GlommioStorage;

    fn open(&self, tp: &TopicPartition) -> io::Result<GlommioStorage> {
        Ok(GlommioStorage::open_dir(self.dir(tp)?)?.with_mode(self.mode))
    }

    fn remove(&self, tp: &TopicPartition) -> io::Result<()> {
        let dir = self.dir(tp)?;
        remove_dir_durable(&dir)
    }
}

/// Removes `dir` and everything in it (already gone is fine), then fsyncs its parent
/// so the removal survives a crash.
pub(crate) fn remove_dir_durable(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => fsync_dir(parent),
        _ => Ok(()),
    }
}
