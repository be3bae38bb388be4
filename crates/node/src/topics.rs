//! The single-node broker's topic metadata: which topics exist, how many partitions
//! each has and their per-topic log settings, persisted in `<data_dir>/topics.json`.
//!
//! Call order: [`TopicRegistry::load`] once at start (a missing file is an empty
//! registry, a damaged one a typed [`RegistryError`]), then any mix of
//! [`TopicRegistry::create`], [`TopicRegistry::delete`], [`TopicRegistry::get`] and
//! [`TopicRegistry::list`]. Every change is durable when the call returns: the whole
//! file is written to `topics.json.tmp`, fsynced, renamed over `topics.json`, and the
//! directory is fsynced, so a crash leaves either the old or the new file, never a
//! torn one.
//!
//! Deleting is two steps, so that a crash in between is finished rather than
//! forgotten: [`TopicRegistry::delete`] removes the topic and records its name as
//! *deleting*; once its directories are gone the caller calls
//! [`TopicRegistry::forget_deleted`]. At start the engine removes the directories of
//! every name still deleting. A directory under `topics/` that the registry names
//! nowhere is left alone (it may be data whose `topics.json` was lost): the engine
//! warns and refuses to create a topic over it.
//!
//! The registry decides nothing about placement or files beyond naming the
//! directories ([`TopicRegistry::partition_dir`]): the engine opens them. The
//! controller of the replication issue (Raft group 0) replaces this type; keep
//! callers on the small API here.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_engine::TopicPartition;
use sluice_storage::LogConfig;
use thiserror::Error;

/// The registry's file in the data directory.
pub const TOPICS_FILE: &str = "topics.json";
const TOPICS_TMP: &str = "topics.json.tmp";
/// The directory under the data directory that holds one directory per topic.
pub const TOPICS_DIR: &str = "topics";
/// Version of the `topics.json` layout; a file of another version is refused.
pub const TOPICS_FILE_VERSION: u32 = 1;

/// Longest topic name, in bytes (Kafka's limit, so names move between the two).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Most partitions one topic may have.
pub const PARTITIONS_MAX: u32 = 4096;
/// Smallest `segment_bytes` a topic may ask for: below it a log rolls on almost
/// every batch, paying a seal (fsync + index trim) each time.
pub const SEGMENT_BYTES_MIN: u64 = 64 << 10;
/// Largest `topics.json` that `load` reads (4096-partition topics are small: a
/// topic is about 150 bytes of JSON).
pub const TOPICS_FILE_BYTES_MAX: u64 = 64 << 20;

/// Per-topic overrides of the broker's log defaults; `None` keeps the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Delete the oldest sealed segments while the partition is larger than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<u64>,
    /// Delete sealed segments whose newest record is older than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
    /// Roll the active segment at this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<u64>,
}

impl TopicConfig {
    /// The partition log configuration: `defaults` with this topic's overrides.
    pub fn log_config(&self, defaults: &LogConfig) -> LogConfig {
        let mut c = defaults.clone();
        if let Some(b) = self.retention_bytes {
            c.retention_bytes_max = Some(b);
        }
        if let Some(ms) = self.retention_ms {
            c.retention_age_ms_max = Some(ms);
        }
        if let Some(b) = self.segment_bytes {
            c.segment_bytes_max = b;
        }
        c
    }

    /// Checks the overrides against the limits and `defaults` (the resulting log
    /// configuration must be consistent).
    pub fn validate(&self, defaults: &LogConfig) -> Result<(), TopicError> {
        if let Some(b) = self.segment_bytes {
            if b < SEGMENT_BYTES_MIN {
                return Err(TopicError::InvalidConfig(format!(
                    "segment_bytes {b} is below the minimum {SEGMENT_BYTES_MIN}"
                )));
            }
        }
        if self.retention_bytes == Some(0) {
            return Err(TopicError::InvalidConfig(
                "retention_bytes must be positive".into(),
            ));
        }
        self.log_config(defaults)
            .validate()
            .map_err(|e| TopicError::InvalidConfig(e.to_string()))
    }
}

/// One topic as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicInfo {
    /// 1..=249 bytes of `[A-Za-z0-9._-]`, not `.` or `..`.
    pub name: String,
    /// Partitions `0..partitions`.
    pub partitions: u32,
    /// Overrides of the broker's log defaults.
    #[serde(default)]
    pub config: TopicConfig,
}

impl TopicInfo {
    /// Every partition of the topic.
    pub fn topic_partitions(&self) -> impl Iterator<Item = TopicPartition> + '_ {
        (0..self.partitions).map(|p| TopicPartition::new(self.name.clone(), p))
    }
}

/// Why a topic request was refused or failed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TopicError {
    /// The name breaks the naming rule (definite: nothing was created).
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// The partition count is outside `1..=4096`.
    #[error("invalid partition count {0} (must be 1..={PARTITIONS_MAX})")]
    InvalidPartitions(u32),
    /// The topic config is inconsistent.
    #[error("invalid topic config: {0}")]
    InvalidConfig(String),
    /// A topic of this name exists.
    #[error("topic {0} exists")]
    Exists(String),
    /// No topic of this name.
    #[error("unknown topic {0}")]
    Unknown(String),
    /// Persisting the registry or a partition directory operation failed. For a
    /// create, the topic may or may not exist afterwards: list topics to find out.
    #[error("storage failed: {0}")]
    Storage(String),
    /// The engine is shutting down; nothing was changed.
    #[error("engine is shutting down")]
    ShuttingDown,
}

/// Errors loading the registry at start.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not a registry this version understands.
    #[error("corrupt topic registry {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// Checks a topic name: 1..=249 bytes of `[A-Za-z0-9._-]`, and not `.` or `..`
/// (the name is a directory name).
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    let bad = |reason| {
        Err(TopicError::InvalidName {
            name: name.chars().take(TOPIC_NAME_BYTES_MAX + 1).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return bad("longer than 249 bytes");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only [A-Za-z0-9._-] are allowed");
    }
    Ok(())
}

/// Checks a partition count: `1..=4096`.
pub fn validate_partitions(partitions: u32) -> Result<(), TopicError> {
    if partitions == 0 || partitions > PARTITIONS_MAX {
        return Err(TopicError::InvalidPartitions(partitions));
    }
    Ok(())
}

/// The bytes of `topics.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFile {
    version: u32,
    topics: Vec<TopicInfo>,
    /// Deleted topics whose directories may still exist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    deleting: Vec<String>,
}

/// The topics of the node, persisted in `<data_dir>/topics.json`.
#[derive(Debug, Clone)]
pub struct TopicRegistry {
    data_dir: PathBuf,
    topics: BTreeMap<String, TopicInfo>,
    deleting: BTreeSet<String>,
}

impl TopicRegistry {
    /// Loads `<data_dir>/topics.json` (creating `data_dir` if missing); no file is
    /// an empty registry. A leftover `topics.json.tmp` (a crash mid-write, before the
    /// rename) is removed: the file it would have replaced is still whole.
    pub fn load(data_dir: impl AsRef<Path>) -> Result<Self, RegistryError> {
        let data_dir = data_dir.as_ref().to_path_buf();
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| RegistryError::Io { op, path, source }
        };
        if !data_dir.exists() {
            fs::create_dir_all(&data_dir).map_err(io("create", &data_dir))?;
            // The new directory's entry, so topics.json is not left in a directory
            // a crash forgets.
            if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsync_dir(parent).map_err(io("fsync", parent))?;
            }
        }
        let tmp = data_dir.join(TOPICS_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => fsync_dir(&data_dir).map_err(io("fsync", &data_dir))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &tmp)(e)),
        }
        let path = data_dir.join(TOPICS_FILE);
        let bytes = match read_bounded(&path, TOPICS_FILE_BYTES_MAX) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Self {
                    data_dir,
                    topics: BTreeMap::new(),
                    deleting: BTreeSet::new(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
                return Err(RegistryError::Corrupt {
                    path,
                    reason: format!("larger than {TOPICS_FILE_BYTES_MAX} bytes"),
                })
            }
            Err(e) => return Err(io("read", &path)(e)),
        };
        let (topics, deleting) = parse(&bytes).map_err(|reason| RegistryError::Corrupt {
            path: path.clone(),
            reason,
        })?;
        Ok(Self {
            data_dir,
            topics,
            deleting,
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The topic named `name`.
    pub fn get(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.get(name)
    }

    /// Every topic, by name.
    pub fn list(&self) -> impl Iterator<Item = &TopicInfo> {
        self.topics.values()
    }

    /// How many topics there are.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Adds a topic (validated: name, partition count, config against
    /// `log_defaults`) and makes it durable.
    pub fn create(&mut self, info: TopicInfo, log_defaults: &LogConfig) -> Result<(), TopicError> {
        validate_topic_name(&info.name)?;
        validate_partitions(info.partitions)?;
        info.config.validate(log_defaults)?;
        if self.topics.contains_key(&info.name) {
            return Err(TopicError::Exists(info.name));
        }
        if self.deleting.contains(&info.name) {
            return Err(TopicError::Storage(format!(
                "topic {} is still being deleted",
                info.name
            )));
        }
        let name = info.name.clone();
        self.topics.insert(name.clone(), info);
        if let Err(e) = self.persist() {
            // Not durable: not created (the file on disk is the old one, or, after a
            // failed directory fsync, maybe the new one: `Storage` says so).
            self.topics.remove(&name);
            return Err(e);
        }
        Ok(())
    }

    /// Removes a topic from the registry, durably, and records it as deleting; returns
    /// it. Its partition directories are the caller's to remove, then
    /// [`TopicRegistry::forget_deleted`].
    pub fn delete(&mut self, name: &str) -> Result<TopicInfo, TopicError> {
        let Some(info) = self.topics.remove(name) else {
            return Err(TopicError::Unknown(name.to_string()));
        };
        self.deleting.insert(name.to_string());
        if let Err(e) = self.persist() {
            self.deleting.remove(name);
            self.topics.insert(name.to_string(), info);
            return Err(e);
        }
        Ok(info)
    }

    /// Deleted topics whose directories may still exist.
    pub fn deleting(&self) -> impl Iterator<Item = &str> {
        self.deleting.iter().map(String::as_str)
    }

    /// Whether `name` was deleted and its directories may still exist.
    pub fn is_deleting(&self, name: &str) -> bool {
        self.deleting.contains(name)
    }

    /// The directories of the deleted topic `name` are gone: forget it, durably.
    pub fn forget_deleted(&mut self, name: &str) -> Result<(), TopicError> {
        if !self.deleting.remove(name) {
            return Ok(());
        }
        if let Err(e) = self.persist() {
            self.deleting.insert(name.to_string());
            return Err(e);
        }
        Ok(())
    }

    /// `<data_dir>/topics`.
    pub fn topics_dir(&self) -> PathBuf {
        self.data_dir.join(TOPICS_DIR)
    }

    /// `<data_dir>/topics/<topic>`.
    pub fn topic_dir(&self, topic: &str) -> PathBuf {
        self.topics_dir().join(topic)
    }

    /// `<data_dir>/topics/<topic>/<partition>`: the partition log's directory.
    pub fn partition_dir(&self, tp: &TopicPartition) -> PathBuf {
        partition_dir(&self.data_dir, tp)
    }

    fn persist(&self) -> Result<(), TopicError> {
        let file = TopicsFile {
            version: TOPICS_FILE_VERSION,
            topics: self.topics.values().cloned().collect(),
            deleting: self.deleting.iter().cloned().collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| TopicError::Storage(format!("encoding {TOPICS_FILE}: {e}")))?;
        bytes.push(b'\n');
        write_atomic(&self.data_dir, TOPICS_FILE, TOPICS_TMP, &bytes)
            .map_err(|e| TopicError::Storage(format!("writing {TOPICS_FILE}: {e}")))
    }
}

/// `<data_dir>/topics/<topic>/<partition>`.
pub fn partition_dir(data_dir: &Path, tp: &TopicPartition) -> PathBuf {
    data_dir
        .join(TOPICS_DIR)
        .join(&tp.topic)
        .join(tp.partition.to_string())
}

/// Decodes and checks `topics.json`: every rule `create` enforces must hold, so a
/// hand-edited or damaged file cannot bring an invalid topic (a path-escaping name,
/// say) into the engine.
type Parsed = (BTreeMap<String, TopicInfo>, BTreeSet<String>);

fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let file: TopicsFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if file.version != TOPICS_FILE_VERSION {
        return Err(format!(
            "version {} (this build reads version {TOPICS_FILE_VERSION})",
            file.version
        ));
    }
    let mut topics = BTreeMap::new();
    for t in file.topics {
        validate_topic_name(&t.name).map_err(|e| e.to_string())?;
        validate_partitions(t.partitions).map_err(|e| format!("topic {}: {e}", t.name))?;
        if topics.contains_key(&t.name) {
            return Err(format!("topic {} listed twice", t.name));
        }
        topics.insert(t.name.clone(), t);
    }
    let mut deleting = BTreeSet::new();
    for name in file.deleting {
        validate_topic_name(&name).map_err(|e| e.to_string())?;
        if topics.contains_key(&name) {
            return Err(format!("topic {name} both live and deleting"));
        }
        deleting.insert(name);
    }
    Ok((topics, deleting))
}

/// Reads a whole file of at most `max` bytes (`FileTooLarge` past that).
fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let len = fs::metadata(path)?.len();
    if len > max {
        return Err(io::Error::from(io::ErrorKind::FileTooLarge));
    }
    fs::read(path)
}

/// Replaces `dir/name` with `bytes` atomically and durably: write `dir/tmp`, fsync
/// it, rename it over `name`, fsync `dir`.
pub fn write_atomic(dir: &Path, name: &str, tmp: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp_path = dir.join(tmp);
    let mut f = fs::File::create(&tmp_path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp_path, dir.join(name))?;
    fsync_dir(dir)
}

/// fsync of a directory (makes a rename, create or unlink in it durable).
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn topic(name: &str, partitions: u32) -> TopicInfo {
        TopicInfo {
            name: name.into(),
            partitions,
            config: TopicConfig::default(),
        }
    }

    #[test]
    fn names_follow_the_rule() {
        for ok in ["a", "orders", "A.b_c-9", &"x".repeat(249), "..."] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", "a\0", &"x".repeat(250)] {
            assert!(
                matches!(
                    validate_topic_name(bad),
                    Err(TopicError::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(validate_partitions(0).is_err());
        assert!(validate_partitions(4097).is_err());
        validate_partitions(4096).unwrap();
    }

    #[test]
    fn topics_survive_a_reload_and_deletes_stick() {
        let dir = tmp();
        let defaults = LogConfig::default();
        let mut reg = TopicRegistry::load(dir.path()).unwrap();
        assert!(reg.is_empty());
        let mut t = topic("orders", 8);
        t.config.retention_ms = Some(60_000);
        t.config.segment_bytes = Some(1 << 20);
        reg.create(t.clone(), &defaults).unwrap();
        reg.create(topic("b", 1), &defaults).unwrap();
        assert_eq!(
            reg.create(topic("b", 3), &defaults),
            Err(TopicError::Exists("b".into()))
        );
        let reg2 = TopicRegistry::load(dir.path()).unwrap();
        assert_eq!(reg2.get("orders"), Some(&t));
        assert_eq!(
            reg2.list().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["b", "orders"]
        );
        let log = t.config.log_config(&defaults);
        assert_eq!(log.retention_age_ms_max, Some(60_000));
        assert_eq!(log.segment_bytes_max, 1 << 20);
        assert_eq!(log.retention_bytes_max, defaults.retention_bytes_max);

        assert_eq!(reg.delete("orders").unwrap(), t);
        assert_eq!(
            reg.delete("orders"),
            Err(TopicError::Unknown("orders".into()))
        );
        assert!(
            matches!(
                reg.create(topic("orders", 1), &defaults),
                Err(TopicError::Storage(_))
            ),
            "no re-create before the old directories are gone"
        );
        let mut reg3 = TopicRegistry::load(dir.path()).unwrap();
        assert!(reg3.get("orders").is_none());
        assert_eq!(reg3.len(), 1);
        assert_eq!(
            reg3.deleting().collect::<Vec<_>>(),
            ["orders"],
            "a crash here is finished at start"
        );
        reg3.forget_deleted("orders").unwrap();
        reg3.create(topic("orders", 1), &defaults).unwrap();
        let reg4 = TopicRegistry::load(dir.path()).unwrap();
        assert!(!reg4.is_deleting("orders"));
        assert_eq!(reg4.get("orders").map(|t| t.partitions), Some(1));
        assert!(!dir.path().join(TOPICS_TMP).exists());
    }

    #[test]
    fn invalid_configs_are_refused_before_anything_is_written() {
        let dir = tmp();
        let defaults = LogConfig::default();
        let mut reg = TopicRegistry::load(dir.path()).unwrap();
        let mut t = topic("t", 1);
        t.config.segment_bytes = Some(10);
        assert!(matches!(
            reg.create(t.clone(), &defaults),
            Err(TopicError::InvalidConfig(_))
        ));
        t.config.segment_bytes = Some(u64::from(u32::MAX));
        assert!(matches!(
            reg.create(t, &defaults),
            Err(TopicError::InvalidConfig(_))
        ));
        assert_eq!(
            reg.create(topic("t", 0), &defaults),
            Err(TopicError::InvalidPartitions(0))
        );
        assert!(!dir.path().join(TOPICS_FILE).exists());
    }

    #[test]
    fn a_damaged_file_is_a_typed_error() {
        let dir = tmp();
        let path = dir.path().join(TOPICS_FILE);
        let cases: [&[u8]; 7] = [
            b"{not json",
            b"",
            br#"{"version":2,"topics":[]}"#,
            br#"{"version":1,"topics":[{"name":"../etc","partitions":1}]}"#,
            br#"{"version":1,"topics":[{"name":"a","partitions":0}]}"#,
            br#"{"version":1,"topics":[{"name":"a","partitions":1},{"name":"a","partitions":2}]}"#,
            br#"{"version":1,"topics":[{"name":"a","partitions":1}],"deleting":["a"]}"#,
        ];
        for bytes in cases {
            fs::write(&path, bytes).unwrap();
            let err = TopicRegistry::load(dir.path()).unwrap_err();
            assert!(
                matches!(err, RegistryError::Corrupt { .. }),
                "{:?}: {err}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn a_leftover_temp_file_is_ignored_and_removed() {
        let dir = tmp();
        let defaults = LogConfig::default();
        let mut reg = TopicRegistry::load(dir.path()).unwrap();
        reg.create(topic("kept", 2), &defaults).unwrap();
        fs::write(dir.path().join(TOPICS_TMP), b"{half a wri").unwrap();
        let reg = TopicRegistry::load(dir.path()).unwrap();
        assert_eq!(reg.get("kept").map(|t| t.partitions), Some(2));
        assert!(!dir.path().join(TOPICS_TMP).exists());
        assert_eq!(
            reg.partition_dir(&TopicPartition::new("kept", 1)),
            dir.path().join("topics").join("kept").join("1")
        );
    }
}
