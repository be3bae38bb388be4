//! The replica's view of its Raft log, served to raft-rs through [`raft::Storage`].
//!
//! raft-rs reads its log synchronously. The log itself is the partition log, which is
//! read asynchronously by the engine, so this store keeps in memory:
//!
//! - the *metadata* of every entry from the log start to the end (term, record offset,
//!   record count, size): 24 bytes per batch, enough to answer `term`, `first_index`,
//!   `last_index` and to map indexes to record offsets without touching the disk;
//! - the *markers* (no-op and configuration entries), whole; they live in `raft.state`;
//! - a bounded cache of recent data entries' batch bytes, which is what replication
//!   sends. A data entry that is not cached is fetched from the partition log: for
//!   replication (`SendAppend`, the only context raft-rs lets be asynchronous) `entries`
//!   records a [`FetchRequest`] and returns `LogTemporarilyUnavailable`; the replica
//!   turns it into an [`crate::Action::Fetch`] and, when the engine hands the bytes back,
//!   calls `on_entries_fetched`. Every other context (committed entries for apply,
//!   conf-change scans) needs only entry types and terms, so an uncached data entry is
//!   returned there with its metadata and empty data: apply derives offsets from the
//!   metadata and never reads the payload.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::state::{LogStart, Marker, MarkerKind, Membership};

/// One entry's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub term: u64,
    /// The record offset at which the entry sits: its base offset when it is data.
    pub offset: u64,
    /// Records it holds; 0 for a marker.
    pub records: u32,
    /// Its batch's size in bytes; 0 for a marker.
    pub bytes: u32,
}

impl Meta {
    /// The record offset after the entry.
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.records)
    }
}

/// A range of entries raft-rs asked for that is not cached.
#[derive(Debug)]
pub(crate) struct FetchRequest {
    pub low: u64,
    pub high: u64,
    pub context: GetEntriesContext,
}

/// The in-memory model of the log. See the module docs.
#[derive(Debug)]
pub struct LogStore {
    pub(crate) hard: HardState,
    pub(crate) conf: ConfState,
    pub(crate) start: LogStart,
    pub(crate) metas: VecDeque<Meta>,
    pub(crate) markers: BTreeMap<u64, Marker>,
    cache: BTreeMap<u64, Bytes>,
    cache_bytes: usize,
    cache_budget: usize,
    pub(crate) fetches: RefCell<Vec<FetchRequest>>,
    /// Opaque bytes sent after the log-start offset in a snapshot (the engine's
    /// idempotent producers below the log start).
    pub(crate) snapshot_extra: Vec<u8>,
}

impl LogStore {
    pub(crate) fn new(start: LogStart, cache_budget: usize) -> LogStore {
        LogStore {
            hard: HardState::default(),
            conf: ConfState::default(),
            start,
            metas: VecDeque::new(),
            markers: BTreeMap::new(),
            cache: BTreeMap::new(),
            cache_bytes: 0,
            cache_budget,
            fetches: RefCell::new(Vec::new()),
            snapshot_extra: Vec::new(),
        }
    }

    pub(crate) fn first(&self) -> u64 {
        self.start.index + 1
    }

    pub(crate) fn last(&self) -> u64 {
        self.start.index + self.metas.len() as u64
    }

    pub(crate) fn meta(&self, index: u64) -> Option<&Meta> {
        let i = index.checked_sub(self.first())?;
        self.metas.get(usize::try_from(i).ok()?)
    }

    /// The record offset after the last entry: the log's end.
    pub(crate) fn end_offset(&self) -> u64 {
        self.metas.back().map_or(self.start.offset, Meta::end)
    }

    /// The record offset after entry `index` (the log start for `start.index`).
    pub(crate) fn end_offset_at(&self, index: u64) -> u64 {
        if index <= self.start.index {
            return self.start.offset;
        }
        self.meta(index).map_or(self.end_offset(), Meta::end)
    }

    pub(crate) fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.start.index {
            return Some(self.start.term);
        }
        self.meta(index).map(|m| m.term)
    }

    pub(crate) fn membership(&self) -> Membership {
        Membership {
            voters: self.conf.voters.clone(),
            learners: self.conf.learners.clone(),
            voters_outgoing: self.conf.voters_outgoing.clone(),
            learners_next: self.conf.learners_next.clone(),
            auto_leave: self.conf.auto_leave,
        }
    }

    pub(crate) fn set_membership(&mut self, m: &Membership) {
        self.conf = ConfState {
            voters: m.voters.clone(),
            learners: m.learners.clone(),
            voters_outgoing: m.voters_outgoing.clone(),
            learners_next: m.learners_next.clone(),
            auto_leave: m.auto_leave,
            ..ConfState::default()
        };
    }

    /// Appends an entry's metadata (and its bytes to the cache, when data). The index must
    /// be `last() + 1`.
    pub(crate) fn push(&mut self, meta: Meta, payload: Option<Bytes>) {
        let index = self.last() + 1;
        self.metas.push_back(meta);
        if let Some(b) = payload {
            self.cache_insert(index, b);
        }
    }

    /// Drops every entry from `index` on.
    pub(crate) fn truncate_from(&mut self, index: u64) {
        let keep = index.saturating_sub(self.first());
        let keep = usize::try_from(keep).unwrap_or(usize::MAX);
        self.metas.truncate(keep);
        let _ = self.markers.split_off(&index);
        for (_, b) in self.cache.split_off(&index) {
            self.cache_bytes -= b.len();
        }
    }

    /// Drops every entry up to and including `start.index` and makes `start` the new
    /// log-start marker.
    pub(crate) fn compact_to(&mut self, start: LogStart) {
        let drop = start.index.saturating_sub(self.start.index);
        let drop = usize::try_from(drop).unwrap_or(usize::MAX);
        if drop >= self.metas.len() {
            self.metas.clear();
        } else {
            self.metas.drain(..drop);
        }
        self.markers = self.markers.split_off(&(start.index + 1));
        let kept = self.cache.split_off(&(start.index + 1));
        for b in self.cache.values() {
            self.cache_bytes -= b.len();
        }
        self.cache = kept;
        self.start = start;
    }

    /// Replaces the whole log with an empty one starting after `start`.
    pub(crate) fn reset(&mut self, start: LogStart) {
        self.metas.clear();
        self.markers.clear();
        self.cache.clear();
        self.cache_bytes = 0;
        self.start = start;
    }

    pub(crate) fn cache_insert(&mut self, index: u64, bytes: Bytes) {
        if self.meta(index).is_none_or(|m| m.records == 0) {
            return;
        }
        self.cache_bytes += bytes.len();
        if let Some(old) = self.cache.insert(index, bytes) {
            self.cache_bytes -= old.len();
        }
    }

    /// Evicts cached batches at or below `held`, the last index every replica that may
    /// be sent entries from here already has (and this one applied), whatever the
    /// budget; then batches at or below `applied`, oldest first, while over budget.
    /// Entries above `applied` stay: raft-rs may still need them for replication and
    /// they are bounded by its uncommitted-size limit.
    ///
    /// So the cache holds what replication may still send: on a single voter, or a
    /// group whose followers keep up, next to nothing beyond the entries in flight
    /// (an idle partition keeps none), instead of the whole budget per partition.
    pub(crate) fn evict(&mut self, applied: u64, held: u64) {
        let held = held.min(applied);
        while let Some((&index, _)) = self.cache.first_key_value() {
            let over_budget = self.cache_bytes > self.cache_budget;
            if index > applied || (index > held && !over_budget) {
                break;
            }
            if let Some(b) = self.cache.remove(&index) {
                self.cache_bytes -= b.len();
            }
        }
    }

    pub(crate) fn cached_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// The index of the data entry holding record `offset`, if any.
    pub(crate) fn index_of_offset(&self, offset: u64) -> Option<u64> {
        // Metas are in offset order; markers have records == 0 and never hold an offset.
        let pos = self.metas.partition_point(|m| m.end() <= offset);
        let m = self.metas.get(pos)?;
        (m.records > 0 && m.offset <= offset).then(|| self.first() + pos as u64)
    }

    fn entry(&self, index: u64, allow_empty: bool) -> Option<Entry> {
        let meta = self.meta(index)?;
        let mut e = Entry {
            index,
            term: meta.term,
            ..Entry::default()
        };
        if meta.records == 0 {
            let m = self.markers.get(&index)?;
            e.entry_type = match m.kind {
                MarkerKind::NoOp => EntryType::EntryNormal,
                MarkerKind::ConfChange => EntryType::EntryConfChange,
                MarkerKind::ConfChangeV2 => EntryType::EntryConfChangeV2,
            };
            e.data = Bytes::from(m.data.clone());
            e.context = Bytes::from(m.context.clone());
            return Some(e);
        }
        e.entry_type = EntryType::EntryNormal;
        match self.cache.get(&index) {
            Some(b) => e.data = b.clone(),
            None if allow_empty => {}
            None => return None,
        }
        Some(e)
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard.clone(), self.conf.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let can_async = context.can_async();
        let mut out = Vec::new();
        let mut size = 0u64;
        for index in low..high {
            match self.entry(index, !can_async) {
                Some(e) => {
                    size += (e.data.len() + e.context.len() + 16) as u64;
                    if !out.is_empty() && size > max_size {
                        break;
                    }
                    out.push(e);
                }
                None if out.is_empty() => {
                    self.fetches
                        .borrow_mut()
                        .push(FetchRequest { low, high, context });
                    return Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable));
                }
                // Hand over what is cached; the rest is asked for on the next send.
                None => break,
            }
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.start.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The snapshot is the log-start marker: the follower's log restarts empty at
        // this index and record offset and is filled from the leader's log.
        if self.start.index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut data = Vec::with_capacity(8 + self.snapshot_extra.len());
        data.extend_from_slice(&self.start.offset.to_le_bytes());
        data.extend_from_slice(&self.snapshot_extra);
        let mut snap = Snapshot {
            data: Bytes::from(data),
            ..Snapshot::default()
        };
        let md = snap.mut_metadata();
        md.index = self.start.index;
        md.term = self.start.term;
        md.set_conf_state(self.conf.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn data(term: u64, offset: u64, records: u32) -> Meta {
        Meta {
            term,
            offset,
            records,
            bytes: 100,
        }
    }

    fn store() -> LogStore {
        let mut s = LogStore::new(
            LogStart {
                index: 10,
                term: 2,
                offset: 500,
            },
            1 << 20,
        );
        s.push(data(2, 500, 5), Some(Bytes::from_static(b"a")));
        s.markers.insert(
            12,
            Marker {
                index: 12,
                term: 3,
                offset: 505,
                kind: MarkerKind::NoOp,
                data: vec![],
                context: vec![],
            },
        );
        s.push(data(3, 505, 0), None);
        s.push(data(3, 505, 3), Some(Bytes::from_static(b"b")));
        s
    }

    #[test]
    fn indexes_terms_and_offsets() {
        let s = store();
        assert_eq!((s.first(), s.last()), (11, 13));
        assert_eq!(s.term(10), Ok(2));
        assert_eq!(s.term(12), Ok(3));
        assert!(s.term(9).is_err());
        assert_eq!(s.end_offset(), 508);
        assert_eq!(s.end_offset_at(11), 505);
        assert_eq!(s.end_offset_at(12), 505);
        assert_eq!(s.index_of_offset(500), Some(11));
        assert_eq!(s.index_of_offset(504), Some(11));
        assert_eq!(s.index_of_offset(505), Some(13));
        assert_eq!(s.index_of_offset(508), None);
        assert_eq!(s.index_of_offset(499), None);
    }

    #[test]
    fn uncached_data_is_fetched_only_for_replication() {
        let mut s = store();
        s.cache.clear();
        s.cache_bytes = 0;
        // Apply-style context: metadata only.
        let es = s
            .entries(11, 14, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(es.len(), 3);
        assert!(es[0].data.is_empty());
        assert_eq!(es[1].term, 3);
        // Replication context: a fetch request.
        let err = s.entries(11, 14, None, GetEntriesContext::empty(true));
        assert_eq!(
            err,
            Err(raft::Error::Store(StorageError::LogTemporarilyUnavailable))
        );
        assert_eq!(s.fetches.borrow().len(), 1);
        s.cache_insert(11, Bytes::from_static(b"a"));
        // A cached prefix is handed over without a fetch.
        let es = s
            .entries(11, 14, None, GetEntriesContext::empty(true))
            .unwrap();
        assert_eq!(es.len(), 2, "data 11 and the marker 12");
    }

    #[test]
    fn truncate_and_compact() {
        let mut s = store();
        s.truncate_from(12);
        assert_eq!(s.last(), 11);
        assert!(s.markers.is_empty());
        assert_eq!(s.end_offset(), 505);
        let mut s = store();
        s.compact_to(LogStart {
            index: 12,
            term: 3,
            offset: 505,
        });
        assert_eq!((s.first(), s.last()), (13, 13));
        assert_eq!(s.term(12), Ok(3));
        assert_eq!(s.cached_bytes(), 1);
        assert!(s.markers.is_empty());
    }

    #[test]
    fn eviction_keeps_unapplied_entries() {
        let mut s = store();
        s.cache_budget = 0;
        s.evict(11, 0);
        assert_eq!(s.cached_bytes(), 1, "entry 13 is above applied and stays");
        s.evict(13, 0);
        assert_eq!(s.cached_bytes(), 0);
    }

    #[test]
    fn entries_every_replica_holds_are_evicted_within_budget_but_not_past_applied() {
        let mut s = store();
        assert_eq!(s.cached_bytes(), 2);
        s.evict(13, 11);
        assert_eq!(
            s.cached_bytes(),
            1,
            "entry 11 is held everywhere, 13 is not"
        );
        s.evict(11, 13);
        assert_eq!(
            s.cached_bytes(),
            1,
            "13 is held everywhere but not applied here"
        );
        s.evict(13, 13);
        assert_eq!(s.cached_bytes(), 0);
    }
}
