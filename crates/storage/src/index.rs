//! Sparse per-segment indexes over a memory-mapped [`IndexFile`].
//!
//! Offset index entry (8 bytes, LE): relative offset `u32`, file position `u32` of the
//! batch whose base offset is that relative offset. Time index entry (12 bytes, LE):
//! timestamp `i64`, relative offset `u32`, meaning "every batch before this offset has
//! a max timestamp at or below this timestamp". Both are appended every
//! `index_interval_bytes` of log; the time index only when the running max grew.
//!
//! Indexes are derived data: the log can always rebuild them by scanning its segment,
//! and does so whenever one fails validation.

use std::io;

use crate::fs::IndexFile;

/// A fixed-size index entry.
pub trait Entry: Copy + std::fmt::Debug {
    /// Encoded size.
    const BYTES: usize;
    /// Decodes from exactly `BYTES` bytes.
    fn decode(b: &[u8]) -> Option<Self>;
    /// Encodes into exactly `BYTES` bytes.
    fn encode(&self, out: &mut Vec<u8>);
    /// The relative offset the entry points at.
    fn rel_offset(&self) -> u32;
    /// Whether `self` may follow `prev` (both keys strictly increase).
    fn follows(&self, prev: &Self) -> bool;
}

fn u32_at(b: &[u8], pos: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(pos..pos + 4)?.try_into().ok()?))
}

/// One offset-index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Offset relative to the segment's base offset.
    pub rel_offset: u32,
    /// Position of the batch in the segment's log file.
    pub position: u32,
}

impl Entry for OffsetEntry {
    const BYTES: usize = 8;
    fn decode(b: &[u8]) -> Option<Self> {
        Some(Self {
            rel_offset: u32_at(b, 0)?,
            position: u32_at(b, 4)?,
        })
    }
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.rel_offset.to_le_bytes());
        out.extend_from_slice(&self.position.to_le_bytes());
    }
    fn rel_offset(&self) -> u32 {
        self.rel_offset
    }
    fn follows(&self, prev: &Self) -> bool {
        self.rel_offset > prev.rel_offset && self.position > prev.position
    }
}

/// One time-index entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    /// Every batch before `rel_offset` has max timestamp at or below this.
    pub timestamp: i64,
    /// Offset relative to the segment's base offset; always an offset-index entry.
    pub rel_offset: u32,
}

impl Entry for TimeEntry {
    const BYTES: usize = 12;
    fn decode(b: &[u8]) -> Option<Self> {
        Some(Self {
            timestamp: i64::from_le_bytes(b.get(0..8)?.try_into().ok()?),
            rel_offset: u32_at(b, 8)?,
        })
    }
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        out.extend_from_slice(&self.rel_offset.to_le_bytes());
    }
    fn rel_offset(&self) -> u32 {
        self.rel_offset
    }
    fn follows(&self, prev: &Self) -> bool {
        self.timestamp > prev.timestamp && self.rel_offset > prev.rel_offset
    }
}

/// A sparse index of one segment: `entries` valid entries at the start of a mapping.
#[derive(Debug)]
pub struct SparseIndex<M, E> {
    map: M,
    entries: usize,
    _entry: std::marker::PhantomData<E>,
}

/// The offset index of a segment.
pub type OffsetIndex<M> = SparseIndex<M, OffsetEntry>;
/// The time index of a segment.
pub type TimeIndex<M> = SparseIndex<M, TimeEntry>;

impl<M: IndexFile, E: Entry> SparseIndex<M, E> {
    /// Wraps a mapping, trusting nothing: call [`SparseIndex::load`] or `push`.
    pub fn empty(map: M) -> Self {
        Self {
            map,
            entries: 0,
            _entry: std::marker::PhantomData,
        }
    }

    /// Wraps a mapping whose first `entries` entries are claimed valid, if they are
    /// in order, fit the mapping and point below `rel_offset_end`. `None` means the
    /// caller must rebuild the index.
    pub fn load(map: M, entries: usize, rel_offset_end: u64) -> Result<Self, M> {
        let mut index = Self::empty(map);
        if entries * E::BYTES > index.map.bytes().len() {
            return Err(index.map);
        }
        index.entries = entries;
        let mut prev: Option<E> = None;
        for i in 0..entries {
            let ok = match (index.entry(i), prev) {
                (Some(e), Some(p)) => e.follows(&p) && u64::from(e.rel_offset()) < rel_offset_end,
                (Some(e), None) => u64::from(e.rel_offset()) < rel_offset_end,
                (None, _) => false,
            };
            if !ok {
                return Err(index.map);
            }
            prev = index.entry(i);
        }
        Ok(index)
    }

    /// Gives the mapping back.
    pub fn into_map(self) -> M {
        self.map
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Whether another entry fits in the mapping.
    pub fn is_full(&self) -> bool {
        (self.entries + 1) * E::BYTES > self.map.bytes().len()
    }

    /// Entry `i`, if held.
    pub fn entry(&self, i: usize) -> Option<E> {
        if i >= self.entries {
            return None;
        }
        E::decode(self.map.bytes().get(i * E::BYTES..(i + 1) * E::BYTES)?)
    }

    /// The last entry.
    pub fn last(&self) -> Option<E> {
        self.entries.checked_sub(1).and_then(|i| self.entry(i))
    }

    /// The last entry for which `before(entry)` holds, given that `before` is true
    /// for a prefix of the entries and false after it.
    pub fn last_where(&self, before: impl Fn(&E) -> bool) -> Option<E> {
        let (mut lo, mut hi) = (0usize, self.entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.entry(mid) {
                Some(e) if before(&e) => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo.checked_sub(1).and_then(|i| self.entry(i))
    }

    /// Appends an entry; the caller checked `is_full`.
    pub fn push(&mut self, e: E) -> io::Result<()> {
        if let Some(last) = self.last() {
            assert!(e.follows(&last), "storage: index entry out of order");
        }
        let mut buf = Vec::with_capacity(E::BYTES);
        e.encode(&mut buf);
        self.map.write(self.entries * E::BYTES, &buf)?;
        self.entries += 1;
        Ok(())
    }

    /// Forgets entries at or beyond `rel_offset` (suffix truncation). The bytes are
    /// zeroed so a later reopen cannot count them.
    pub fn truncate_to(&mut self, rel_offset: u64) -> io::Result<()> {
        let keep = self.count_below(rel_offset);
        let zeros = vec![0u8; (self.entries - keep) * E::BYTES];
        self.map.write(keep * E::BYTES, &zeros)?;
        self.entries = keep;
        Ok(())
    }

    fn count_below(&self, rel_offset: u64) -> usize {
        (0..self.entries)
            .take_while(|&i| {
                self.entry(i)
                    .is_some_and(|e| u64::from(e.rel_offset()) < rel_offset)
            })
            .count()
    }

    /// The mapping, for sync and resize.
    pub fn map_mut(&mut self) -> &mut M {
        &mut self.map
    }

    /// Bytes the held entries occupy (the trimmed file length).
    pub fn used_bytes(&self) -> u64 {
        (self.entries * E::BYTES) as u64
    }
}
