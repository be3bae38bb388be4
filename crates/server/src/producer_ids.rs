//! Idempotent-producer ids (`InitProducer`): unique across the cluster and across
//! restarts, without a round trip per producer.
//!
//! An id is `(node_id << 40) | counter`: the node id keeps nodes apart (each hands out
//! its own ids, no coordination), the 40-bit counter keeps this node's ids apart. The
//! counter is reserved in blocks of [`BLOCK`]: before the first id of a block is handed
//! out, the block's end is written durably to `<data_dir>/producer_ids` (temp file,
//! fsync, rename over, fsync of the directory), and a restart continues from the end
//! written, so an id is never handed out twice even if the broker crashes mid-block
//! (at most the rest of one block is skipped). One fsync per [`BLOCK`] producers.
//!
//! The counter also never starts below the milliseconds since 2024-01-01 (UTC): a node
//! whose data directory was wiped (or replaced) does not hand out the ids it handed out
//! before, which other nodes' producer tables may still hold — unless it gave out more
//! than one id per millisecond on average. 40 bits of milliseconds last until 2058.
//!
//! Every id has epoch 0. Node ids must be below 2^23 (so ids stay positive).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_proto::wire::{ErrorBody, ErrorCode, ProducerIdOk};

/// The file in the data directory.
pub const FILE: &str = "producer_ids";
/// Ids reserved per durable write.
pub const BLOCK: u64 = 1000;
/// Bits of the per-node counter.
pub const COUNTER_BITS: u32 = 40;
/// Largest node id that keeps ids positive.
pub const NODE_ID_MAX: u32 = (1 << (63 - COUNTER_BITS)) - 1;
/// 2024-01-01T00:00:00Z, ms since the Unix epoch: the clock floor's zero.
const FLOOR_EPOCH_MS: u64 = 1_704_067_200_000;
const HEADER: &str = "sluice producer_ids v1";

/// Why no id could be handed out.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("node id {0} is too large for producer ids (at most {NODE_ID_MAX})")]
    NodeId(u32),
    #[error("the producer id counter of this node is exhausted")]
    Exhausted,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: unreadable contents ({what}); refusing to hand out ids that may repeat")]
    Corrupt { path: PathBuf, what: &'static str },
}

#[derive(Debug)]
struct Counter {
    /// The next counter value to hand out.
    next: u64,
    /// The end of the block reserved durably (`next == end`: nothing left).
    end: u64,
}

/// The allocator of one node. See the module docs.
#[derive(Debug)]
pub struct ProducerIds {
    dir: PathBuf,
    node_id: u32,
    /// `None` until the first id is asked for (the file is read then).
    counter: Mutex<Option<Counter>>,
    /// The counter's lower bound on load, ms of the clock (tests pass their own).
    floor: fn() -> u64,
}

fn clock_floor() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(now.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_sub(FLOOR_EPOCH_MS)
}

impl ProducerIds {
    /// The allocator of node `node_id`, keeping its file in `dir` (the data directory).
    /// Nothing is read until the first id is asked for.
    pub fn new(dir: impl Into<PathBuf>, node_id: u32) -> ProducerIds {
        ProducerIds::with_floor(dir, node_id, clock_floor)
    }

    fn with_floor(dir: impl Into<PathBuf>, node_id: u32, floor: fn() -> u64) -> ProducerIds {
        ProducerIds {
            dir: dir.into(),
            node_id,
            counter: Mutex::new(None),
            floor,
        }
    }

    /// A new producer id (its epoch is 0). Blocks for a durable write once per
    /// [`BLOCK`] ids: call it off the async threads.
    pub fn next_id(&self) -> Result<i64, IdError> {
        if self.node_id > NODE_ID_MAX {
            return Err(IdError::NodeId(self.node_id));
        }
        let mut guard = self
            .counter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Taken out while in use: after an error the file is read again next time.
        let mut counter = match guard.take() {
            Some(c) => c,
            None => {
                let start = self.load()?.max((self.floor)());
                Counter {
                    next: start,
                    end: start,
                }
            }
        };
        if counter.next >= counter.end {
            let end = counter
                .next
                .checked_add(BLOCK)
                .filter(|e| *e <= 1 << COUNTER_BITS)
                .ok_or(IdError::Exhausted)?;
            self.store(end)?;
            counter.end = end;
        }
        let id = (u64::from(self.node_id) << COUNTER_BITS) | counter.next;
        counter.next += 1;
        *guard = Some(counter);
        i64::try_from(id).map_err(|_| IdError::NodeId(self.node_id))
    }

    fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// The end of the last block reserved (0 when there is no file yet).
    fn load(&self) -> Result<u64, IdError> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(source) => return Err(IdError::Io { path, source }),
        };
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(IdError::Corrupt {
                path,
                what: "no header",
            });
        }
        let value = lines
            .next()
            .and_then(|l| l.strip_prefix("next="))
            .and_then(|v| v.parse::<u64>().ok());
        match (value, lines.next()) {
            (Some(v), None) => Ok(v),
            _ => Err(IdError::Corrupt {
                path,
                what: "no next= line",
            }),
        }
    }

    /// Writes `end` durably: temp file, fsync, rename over, fsync the directory
    /// (`sluice_node::topics::write_atomic`).
    fn store(&self, end: u64) -> Result<(), IdError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| IdError::Io { path, source }
        };
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        sluice_node::topics::write_atomic(
            &self.dir,
            FILE,
            &format!("{FILE}.tmp"),
            format!("{HEADER}\nnext={end}\n").as_bytes(),
        )
        .map_err(io(&self.path()))
    }
}

/// Answers `InitProducer`: a new id from `ids` (off the async threads: a new block is
/// a durable write), epoch 0.
pub async fn init_producer(ids: Option<Arc<ProducerIds>>) -> Result<ProducerIdOk, ErrorBody> {
    let Some(ids) = ids else {
        return Err(ErrorBody::new(
            ErrorCode::InvalidRequest,
            "this broker does not hand out producer ids",
        ));
    };
    let result = tokio::task::spawn_blocking(move || ids.next_id())
        .await
        .map_err(|e| ErrorBody::new(ErrorCode::Unknown, format!("producer id task: {e}")))?;
    match result {
        Ok(producer_id) => Ok(ProducerIdOk {
            producer_id,
            producer_epoch: 0,
        }),
        Err(e) => {
            tracing::error!("InitProducer: {e}");
            let code = match e {
                IdError::Io { .. } | IdError::Corrupt { .. } => ErrorCode::StorageFailed,
                IdError::NodeId(_) | IdError::Exhausted => ErrorCode::Unknown,
            };
            Err(ErrorBody::new(code, e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn zero() -> u64 {
        0
    }

    #[test]
    fn ids_carry_the_node_id_and_never_repeat_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = BTreeSet::new();
        for restart in 0..4 {
            let ids = ProducerIds::with_floor(dir.path(), 3, zero);
            // Less than a block, a whole block, more than one: every restart skips the
            // rest of its block.
            for _ in 0..[10, 1000, 2500, 1][restart] {
                let id = ids.next_id().unwrap();
                assert_eq!(id >> COUNTER_BITS, 3);
                assert!(seen.insert(id), "id {id} handed out twice");
            }
        }
        let text = fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(text.starts_with(HEADER), "{text}");
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
        // Another node's ids are disjoint by construction.
        let other = tempfile::tempdir().unwrap();
        let id = ProducerIds::with_floor(other.path(), 4, zero)
            .next_id()
            .unwrap();
        assert_eq!(id, 4 << COUNTER_BITS);
    }

    #[test]
    fn a_block_is_durable_before_its_first_id_is_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::with_floor(dir.path(), 1, zero);
        assert_eq!(ids.next_id().unwrap(), 1 << COUNTER_BITS);
        // A crash now (the allocator is simply dropped): the file already covers it.
        let ids = ProducerIds::with_floor(dir.path(), 1, zero);
        assert_eq!(ids.next_id().unwrap(), (1 << COUNTER_BITS) | BLOCK as i64);
    }

    #[test]
    fn a_wiped_data_dir_starts_at_the_clock_floor() {
        let dir = tempfile::tempdir().unwrap();
        let id = ProducerIds::new(dir.path(), 2).next_id().unwrap();
        let counter = (id as u64) & ((1 << COUNTER_BITS) - 1);
        assert!(
            counter > 60_000_000_000,
            "counter {counter} below the clock"
        );
        assert!(id > 0);
    }

    #[test]
    fn bad_files_and_node_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), "garbage").unwrap();
        let ids = ProducerIds::with_floor(dir.path(), 1, zero);
        assert!(matches!(ids.next_id(), Err(IdError::Corrupt { .. })));
        let ids = ProducerIds::with_floor(dir.path(), NODE_ID_MAX + 1, zero);
        assert!(matches!(ids.next_id(), Err(IdError::NodeId(_))));
        let top = tempfile::tempdir().unwrap();
        let id = ProducerIds::with_floor(top.path(), NODE_ID_MAX, zero)
            .next_id()
            .unwrap();
        assert!(id > 0);
    }
}
