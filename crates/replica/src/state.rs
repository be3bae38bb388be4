//! `raft.state`: what a replica keeps beside its partition log, replaced atomically.
//!
//! The partition log holds the data entries (one record batch each, the Raft term in the
//! batch header's leader-term field). Everything else Raft must not forget lives here:
//! the hard state (term, vote, commit), the configuration, the log-start marker (the
//! index, term and record offset just before the first entry — the replica's
//! "snapshot") and the *markers*: the Raft entries that carry no records (the no-op a
//! new leader appends, configuration changes), each with the record offset at which it
//! sits. Markers are rare (one per election or membership change), so rewriting this
//! small file for each is cheap.
//!
//! Layout, little-endian (documented in `docs/STORAGE_FORMAT.md`, "raft.state"):
//!
//! ```text
//! magic  u32 = 0x534C_5253 ("SRLS")   version u16 = 1   flags u16 (bit 0: catching up)
//! term u64  vote u64  commit u64
//! start_index u64  start_term u64  start_offset u64
//! voters: count u32, ids u64...   learners: count u32, ids u64...
//! voters_outgoing: count u32, ids u64...   learners_next: count u32, ids u64...
//! auto_leave u8
//! markers: count u32, then per marker:
//!     index u64  term u64  offset u64  entry_type u8  data_len u32  data  context_len u32  context
//! crc u32   (CRC-32 of everything before it)
//! ```

use thiserror::Error;

const MAGIC: u32 = 0x534C_5253;
const VERSION: u16 = 1;
/// Header flag: [`PersistentState::catching_up`].
const FLAG_CATCHING_UP: u16 = 1;
/// Upper bound on one marker's payload (a configuration change is a few dozen bytes).
const MARKER_BYTES_MAX: usize = 1 << 20;
/// Upper bound on the members of one configuration.
const MEMBERS_MAX: usize = 1024;
/// Upper bound on markers kept (one per election since the log start).
const MARKERS_MAX: usize = 1 << 20;

/// The Raft entry type of a marker, as raft-rs numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    /// An `EntryNormal` with no data: the no-op a new leader appends.
    NoOp,
    /// `EntryConfChange`.
    ConfChange,
    /// `EntryConfChangeV2`.
    ConfChangeV2,
}

impl MarkerKind {
    fn code(self) -> u8 {
        match self {
            MarkerKind::NoOp => 0,
            MarkerKind::ConfChange => 1,
            MarkerKind::ConfChangeV2 => 2,
        }
    }

    fn from_code(code: u8) -> Option<MarkerKind> {
        match code {
            0 => Some(MarkerKind::NoOp),
            1 => Some(MarkerKind::ConfChange),
            2 => Some(MarkerKind::ConfChangeV2),
            _ => None,
        }
    }
}

/// A Raft entry that takes no record offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub index: u64,
    pub term: u64,
    /// The record offset at which it sits: the next data entry's base offset.
    pub offset: u64,
    pub kind: MarkerKind,
    pub data: Vec<u8>,
    pub context: Vec<u8>,
}

/// The entry just before the first one the replica holds: Raft's snapshot metadata,
/// and the record offset at which the replica's log starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStart {
    pub index: u64,
    pub term: u64,
    pub offset: u64,
}

/// A membership configuration (raft-rs `ConfState`, joint consensus included).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Membership {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub voters_outgoing: Vec<u64>,
    pub learners_next: Vec<u64>,
    pub auto_leave: bool,
}

/// The whole of `raft.state`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PersistentState {
    pub term: u64,
    pub vote: u64,
    /// A lower bound on the commit index (persisted lazily; never above the durable log).
    pub commit: u64,
    pub start: LogStart,
    pub membership: Membership,
    /// Markers at indexes above `start.index`, in index order.
    pub markers: Vec<Marker>,
    /// The replica started empty and has not yet caught up with a leader: it withholds
    /// its vote from candidates with a non-empty log (see `Replica`'s vote guard).
    /// Flag bit 0 of the header (the reserved field of earlier builds, always 0 there).
    pub catching_up: bool,
}

/// Why `raft.state` could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StateError {
    #[error("raft.state is truncated")]
    Truncated,
    #[error("raft.state has a bad magic number {0:#x}")]
    BadMagic(u32),
    #[error("raft.state version {0} is not supported (this build reads {VERSION})")]
    UnsupportedVersion(u16),
    #[error("raft.state CRC mismatch (stored {stored:#x}, computed {computed:#x})")]
    BadCrc { stored: u32, computed: u32 },
    #[error("raft.state field {0} is out of bounds")]
    OutOfBounds(&'static str),
    #[error("raft.state has {0} bytes after its CRC")]
    TrailingBytes(usize),
    #[error(
        "raft.state markers are not in increasing index order, or sit at or below the log start"
    )]
    MarkersUnordered,
}

impl PersistentState {
    /// Encodes the state, CRC included.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(128 + self.markers.len() * 48);
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&u16::from(self.catching_up).to_le_bytes());
        for v in [
            self.term,
            self.vote,
            self.commit,
            self.start.index,
            self.start.term,
            self.start.offset,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let m = &self.membership;
        for ids in [&m.voters, &m.learners, &m.voters_outgoing, &m.learners_next] {
            put_len(&mut b, ids.len());
            for id in ids {
                b.extend_from_slice(&id.to_le_bytes());
            }
        }
        b.push(u8::from(m.auto_leave));
        put_len(&mut b, self.markers.len());
        for mk in &self.markers {
            b.extend_from_slice(&mk.index.to_le_bytes());
            b.extend_from_slice(&mk.term.to_le_bytes());
            b.extend_from_slice(&mk.offset.to_le_bytes());
            b.push(mk.kind.code());
            put_len(&mut b, mk.data.len());
            b.extend_from_slice(&mk.data);
            put_len(&mut b, mk.context.len());
            b.extend_from_slice(&mk.context);
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a state written by [`PersistentState::encode`]. Bounded: no
    /// input makes it allocate more than the input's own size or panic.
    pub fn decode(buf: &[u8]) -> Result<PersistentState, StateError> {
        let body_len = buf.len().checked_sub(4).ok_or(StateError::Truncated)?;
        let (body, crc) = buf.split_at(body_len);
        let stored = u32::from_le_bytes(crc.try_into().map_err(|_| StateError::Truncated)?);
        let mut r = Reader { buf: body };
        let magic = r.u32()?;
        if magic != MAGIC {
            return Err(StateError::BadMagic(magic));
        }
        let version = r.u16()?;
        if version != VERSION {
            return Err(StateError::UnsupportedVersion(version));
        }
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(StateError::BadCrc { stored, computed });
        }
        let flags = r.u16()?;
        if flags & !FLAG_CATCHING_UP != 0 {
            return Err(StateError::OutOfBounds("flags"));
        }
        let term = r.u64()?;
        let vote = r.u64()?;
        let commit = r.u64()?;
        let start = LogStart {
            index: r.u64()?,
            term: r.u64()?,
            offset: r.u64()?,
        };
        let voters = r.ids()?;
        let learners = r.ids()?;
        let voters_outgoing = r.ids()?;
        let learners_next = r.ids()?;
        let auto_leave = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(StateError::OutOfBounds("auto_leave")),
        };
        let count = r.len(MARKERS_MAX, "marker count")?;
        let mut markers = Vec::with_capacity(count.min(body.len() / 37));
        let mut prev = start.index;
        for _ in 0..count {
            let index = r.u64()?;
            let term = r.u64()?;
            let offset = r.u64()?;
            let kind =
                MarkerKind::from_code(r.u8()?).ok_or(StateError::OutOfBounds("marker type"))?;
            let n = r.len(MARKER_BYTES_MAX, "marker data")?;
            let data = r.bytes(n)?.to_vec();
            let n = r.len(MARKER_BYTES_MAX, "marker context")?;
            let context = r.bytes(n)?.to_vec();
            if index <= prev {
                return Err(StateError::MarkersUnordered);
            }
            prev = index;
            markers.push(Marker {
                index,
                term,
                offset,
                kind,
                data,
                context,
            });
        }
        if !r.buf.is_empty() {
            return Err(StateError::TrailingBytes(r.buf.len()));
        }
        Ok(PersistentState {
            term,
            vote,
            commit,
            start,
            membership: Membership {
                voters,
                learners,
                voters_outgoing,
                learners_next,
                auto_leave,
            },
            markers,
            catching_up: flags & FLAG_CATCHING_UP != 0,
        })
    }
}

fn put_len(b: &mut Vec<u8>, n: usize) {
    // Lengths are bounded far below u32::MAX by the limits above and by raft-rs.
    b.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.buf.len() < n {
            return Err(StateError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        let b = self.bytes(N)?;
        b.try_into().map_err(|_| StateError::Truncated)
    }

    fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, StateError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn len(&mut self, max: usize, what: &'static str) -> Result<usize, StateError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(StateError::OutOfBounds(what));
        }
        Ok(n)
    }

    fn ids(&mut self) -> Result<Vec<u64>, StateError> {
        let n = self.len(MEMBERS_MAX, "member count")?;
        if self.buf.len() < n * 8 {
            return Err(StateError::Truncated);
        }
        (0..n).map(|_| self.u64()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> PersistentState {
        PersistentState {
            term: 7,
            vote: 2,
            commit: 40,
            start: LogStart {
                index: 10,
                term: 3,
                offset: 1000,
            },
            membership: Membership {
                voters: vec![1, 2, 3],
                learners: vec![4],
                ..Membership::default()
            },
            markers: vec![
                Marker {
                    index: 12,
                    term: 4,
                    offset: 1100,
                    kind: MarkerKind::NoOp,
                    data: vec![],
                    context: vec![],
                },
                Marker {
                    index: 30,
                    term: 7,
                    offset: 2000,
                    kind: MarkerKind::ConfChangeV2,
                    data: vec![1, 2, 3],
                    context: vec![9],
                },
            ],
            catching_up: true,
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(PersistentState::decode(&s.encode()), Ok(s));
        let empty = PersistentState::default();
        assert_eq!(PersistentState::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(PersistentState::decode(&b).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(
                PersistentState::decode(&bytes[..n]).is_err(),
                "prefix {n} accepted"
            );
        }
    }

    #[test]
    fn unordered_markers_are_refused() {
        let mut s = sample();
        s.markers.swap(0, 1);
        assert_eq!(
            PersistentState::decode(&s.encode()),
            Err(StateError::MarkersUnordered)
        );
        let mut s = sample();
        s.markers[0].index = s.start.index;
        assert_eq!(
            PersistentState::decode(&s.encode()),
            Err(StateError::MarkersUnordered)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = PersistentState::decode(&bytes);
        }
    }
}
