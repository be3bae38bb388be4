//! The idempotent-producer table of one partition: producer id → epoch and the last few
//! batches it appended, and the check a leader runs on a produced batch before proposing
//! it. Pure: inputs are batch headers, outputs are decisions.
//!
//! # Where it comes from
//!
//! The table is derived from the partition log (plus what retention took from it, see
//! "What it keeps"): every data entry appended to the local log
//! ([`ProducerTable::appended`], called by `ReplicatedPartition` for each batch of a
//! `Write::Append`, on the leader and on followers alike) adds its batch; opening the
//! partition builds it from every stored batch header ([`ProducerTable::from_headers`]);
//! a suffix cut rebuilds it from the headers left ([`ProducerTable::rebuilt`]); a log
//! reset leaves only the producers retention took (here, or on the leader, which sends
//! them with its log start). So every replica holds the same table
//! for the same log, and a new leader
//! after a failover knows every producer whose batches are in its log (Raft's leader
//! completeness: that is every committed batch, and maybe some uncommitted ones it will
//! commit).
//!
//! # The rules ([`ProducerTable::check`])
//!
//! A batch is idempotent when its `producer_id` is not `NO_PRODUCER_ID` (-1). Sequences
//! are `0..=i32::MAX` and wrap from `i32::MAX` to 0 (as Kafka's do); a batch of `n`
//! records covers `base_sequence ..= base_sequence + n - 1`.
//!
//! 1. Not idempotent (`producer_id == -1`): no check.
//! 2. A negative producer id other than -1, or an idempotent batch with a negative epoch
//!    or sequence: refused as malformed.
//! 3. A producer the table does not know: accepted, whatever its sequence (a new one,
//!    or one the table evicted for room).
//! 4. An epoch older than the producer's: [`SequenceCheck::Fenced`].
//! 5. A newer epoch: accepted when its sequence is 0 (a producer that bumps its epoch
//!    starts its sequences again), otherwise out of order (expected 0).
//! 6. The same epoch, and the same sequences as one of the last
//!    [`BATCHES_REMEMBERED`] batches: [`SequenceCheck::Duplicate`] with where that batch
//!    is (the caller answers per its commit state).
//! 7. The same epoch and `base_sequence == last_sequence + 1`: accepted.
//! 8. The same epoch and a sequence before the oldest batch remembered:
//!    [`SequenceCheck::Stale`] (appended long ago, or never: the table cannot tell the
//!    offsets; nothing is appended).
//! 9. Anything else (a gap, or an overlap with a remembered batch that does not match it
//!    exactly): [`SequenceCheck::OutOfOrder`].
//!
//! # What it keeps
//!
//! Per producer, the epoch and the last [`BATCHES_REMEMBERED`] batches; at most
//! [`PRODUCERS_MAX`] producers per partition (past that, the one that appended least
//! recently is forgotten). Retention does not remove producers: what the table learned
//! from batches that retention later deleted is still true (only committed batches are
//! ever deleted), so a producer retrying a batch that retention took still gets its
//! duplicate answer. A rebuild after a suffix cut keeps those producers too. So that a
//! reopen does not forget them either, the producers whose every remembered batch lies
//! below the new log start are written to a small snapshot beside the log
//! ([`ProducerTable::encode_below`], `producers.state`) before retention deletes
//! anything, and merged back at open ([`ProducerTable::merge_below`]). A leader sends the
//! same bytes with its log-start marker (the Raft snapshot), so a follower restarted at
//! the leader's log start (a log reset) learns them too ([`ProducerTable::union_newest`]).

use std::collections::{BTreeMap, VecDeque};

use sluice_proto::{BatchHeader, NO_PRODUCER_ID};

/// How many of a producer's last batches a partition remembers for duplicate detection
/// (Kafka's 5: a producer may have that many requests in flight per partition).
pub const BATCHES_REMEMBERED: usize = 5;

/// Most producers one partition remembers.
pub const PRODUCERS_MAX: usize = 4096;

/// The file beside the segments that holds the producers retention took from the log.
pub const PRODUCERS_FILE: &str = "producers.state";

const SNAPSHOT_VERSION: u8 = 1;

/// A forward-only reader; running out is an error.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or("truncated producer snapshot")?;
        self.0 = rest;
        Ok(*head)
    }
}

/// Sequences run `0..=SEQUENCE_MAX`, then wrap to 0.
pub const SEQUENCE_MAX: i32 = i32::MAX;

/// The sequence `delta` after `sequence`, wrapping from [`SEQUENCE_MAX`] to 0 (Kafka's
/// `DefaultRecordBatch.incrementSequence`). `sequence` must be in `0..=SEQUENCE_MAX`.
pub fn add_sequence(sequence: i32, delta: u32) -> i32 {
    let modulus = i64::from(SEQUENCE_MAX) + 1;
    let sum = (i64::from(sequence) + i64::from(delta)).rem_euclid(modulus);
    // `sum` is in 0..=SEQUENCE_MAX.
    i32::try_from(sum).unwrap_or(0)
}

/// How far `from` is behind `to` going forward with wrap-around: `(to - from) mod 2^31`.
fn distance(from: i32, to: i32) -> i64 {
    let modulus = i64::from(SEQUENCE_MAX) + 1;
    (i64::from(to) - i64::from(from)).rem_euclid(modulus)
}

/// The idempotence fields of a batch header, when it has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: i64,
    pub epoch: i16,
    pub base_sequence: i32,
    /// Records in the batch (at least 1).
    pub records: u32,
}

impl ProducerBatch {
    /// The idempotence fields of `header`, or `None` for a batch from a non-idempotent
    /// producer (`producer_id == NO_PRODUCER_ID`).
    pub fn of(header: &BatchHeader) -> Option<ProducerBatch> {
        (header.producer_id != NO_PRODUCER_ID).then_some(ProducerBatch {
            producer_id: header.producer_id,
            epoch: header.producer_epoch,
            base_sequence: header.base_sequence,
            records: header.record_count,
        })
    }

    /// Why these fields cannot be an idempotent batch's, if they cannot.
    pub fn malformed(&self) -> Option<&'static str> {
        if self.producer_id < 0 {
            Some("negative producer id other than -1")
        } else if self.epoch < 0 {
            Some("idempotent batch with a negative producer epoch")
        } else if self.base_sequence < 0 {
            Some("idempotent batch with a negative base sequence")
        } else if self.records == 0 {
            Some("idempotent batch without records")
        } else {
            None
        }
    }

    /// The sequence of its last record.
    pub fn last_sequence(&self) -> i32 {
        add_sequence(self.base_sequence, self.records.saturating_sub(1))
    }
}

/// A batch a producer appended: its sequences and where it is in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendedBatch {
    pub base_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: u64,
    pub last_offset: u64,
}

/// What one producer has appended to the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerState {
    /// The producer's current epoch here.
    pub epoch: i16,
    /// Its last batches of that epoch, oldest first (at least one, at most
    /// [`BATCHES_REMEMBERED`]).
    pub batches: VecDeque<AppendedBatch>,
}

impl ProducerState {
    /// The newest batch remembered.
    pub fn last(&self) -> Option<&AppendedBatch> {
        self.batches.back()
    }

    /// The sequence its next batch must start at.
    pub fn next_sequence(&self) -> Option<i32> {
        self.last().map(|b| add_sequence(b.last_sequence, 1))
    }

    fn last_offset(&self) -> u64 {
        self.last().map_or(0, |b| b.last_offset)
    }
}

/// The decision on a produced batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it (also: not idempotent, or a producer the table does not know).
    Accept,
    /// The fields cannot be an idempotent batch's.
    Malformed(&'static str),
    /// This batch was appended already, here.
    Duplicate(AppendedBatch),
    /// A sequence older than every batch remembered: appended long ago (or never). No
    /// offsets to give.
    Stale,
    /// Not the next sequence.
    OutOfOrder { expected: i32, got: i32 },
    /// An epoch older than the producer's current one.
    Fenced { current: i16, got: i16 },
}

/// The producer table of one partition. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerTable {
    producers: BTreeMap<i64, ProducerState>,
}

impl ProducerTable {
    /// An empty table (an empty log).
    pub fn new() -> ProducerTable {
        ProducerTable::default()
    }

    /// The table of a log holding these batches, in log order.
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = &'a BatchHeader>) -> ProducerTable {
        let mut t = ProducerTable::new();
        for h in headers {
            t.appended(h);
        }
        t
    }

    /// The table after a suffix cut, from the headers of the batches left (in log
    /// order) and the log start: producers whose every remembered batch lies below the
    /// log start (deleted by retention, so committed, so never cut) and that do not
    /// appear in the log are kept from `self`.
    pub fn rebuilt<'a>(
        &self,
        headers: impl IntoIterator<Item = &'a BatchHeader>,
        log_start: u64,
    ) -> ProducerTable {
        let mut t = ProducerTable::from_headers(headers);
        t.merge_below(self, log_start);
        t
    }

    /// Forgets every producer (the log was reset).
    pub fn clear(&mut self) {
        self.producers.clear();
    }

    /// The producers whose every remembered batch lies below `log_start`: what a table
    /// rebuilt from a log starting there would not know.
    pub fn below(&self, log_start: u64) -> ProducerTable {
        ProducerTable {
            producers: self
                .producers
                .iter()
                .filter(|(_, s)| s.last().is_some_and(|b| b.last_offset < log_start))
                .map(|(id, s)| (*id, s.clone()))
                .collect(),
        }
    }

    /// Adds the producers of `other` that lie wholly below `log_start` and that this
    /// table does not know (what a log starting at `log_start` cannot tell).
    pub fn merge_below(&mut self, other: &ProducerTable, log_start: u64) {
        for (id, s) in &other.producers {
            if s.last().is_some_and(|b| b.last_offset < log_start)
                && !self.producers.contains_key(id)
                && self.producers.len() < PRODUCERS_MAX
            {
                self.producers.insert(*id, s.clone());
            }
        }
    }

    /// Adds every producer of `other`, keeping for a producer both know the state with
    /// the newer last batch (both tables describe the same committed history).
    pub fn union_newest(&mut self, other: &ProducerTable) {
        for (id, s) in &other.producers {
            match self.producers.get(id) {
                Some(mine) if mine.last_offset() >= s.last_offset() => {}
                Some(_) => {
                    self.producers.insert(*id, s.clone());
                }
                None if self.producers.len() < PRODUCERS_MAX => {
                    self.producers.insert(*id, s.clone());
                }
                None => {}
            }
        }
    }

    /// The snapshot encoding of [`below`](Self::below)`(log_start)`: version 1, then per
    /// producer its id, epoch and batches; little-endian.
    pub fn encode_below(&self, log_start: u64) -> Vec<u8> {
        self.below(log_start).encode()
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![SNAPSHOT_VERSION];
        let count = u32::try_from(self.producers.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for (id, s) in self.producers.iter().take(count as usize) {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&s.epoch.to_le_bytes());
            // At most BATCHES_REMEMBERED (5).
            out.push(u8::try_from(s.batches.len()).unwrap_or(u8::MAX));
            for b in &s.batches {
                out.extend_from_slice(&b.base_sequence.to_le_bytes());
                out.extend_from_slice(&b.last_sequence.to_le_bytes());
                out.extend_from_slice(&b.base_offset.to_le_bytes());
                out.extend_from_slice(&b.last_offset.to_le_bytes());
            }
        }
        out
    }

    /// Decodes a snapshot written by [`encode_below`](Self::encode_below). Bounded:
    /// at most [`PRODUCERS_MAX`] producers of at most [`BATCHES_REMEMBERED`] batches.
    pub fn decode(bytes: &[u8]) -> Result<ProducerTable, &'static str> {
        let mut r = Reader(bytes);
        if r.take::<1>()? != [SNAPSHOT_VERSION] {
            return Err("unknown producer snapshot version");
        }
        let count = u32::from_le_bytes(r.take()?) as usize;
        if count > PRODUCERS_MAX {
            return Err("too many producers in the snapshot");
        }
        let mut t = ProducerTable::new();
        for _ in 0..count {
            let id = i64::from_le_bytes(r.take()?);
            let epoch = i16::from_le_bytes(r.take()?);
            let [n] = r.take::<1>()?;
            if n == 0 || usize::from(n) > BATCHES_REMEMBERED {
                return Err("bad batch count in the producer snapshot");
            }
            let mut batches = VecDeque::new();
            for _ in 0..n {
                let b = AppendedBatch {
                    base_sequence: i32::from_le_bytes(r.take()?),
                    last_sequence: i32::from_le_bytes(r.take()?),
                    base_offset: u64::from_le_bytes(r.take()?),
                    last_offset: u64::from_le_bytes(r.take()?),
                };
                if b.base_offset > b.last_offset || b.base_sequence < 0 || b.last_sequence < 0 {
                    return Err("bad batch in the producer snapshot");
                }
                batches.push_back(b);
            }
            if id < 0
                || epoch < 0
                || t.producers
                    .insert(id, ProducerState { epoch, batches })
                    .is_some()
            {
                return Err("bad producer in the producer snapshot");
            }
        }
        if !r.0.is_empty() {
            return Err("trailing bytes in the producer snapshot");
        }
        Ok(t)
    }

    /// Producers known.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is known.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// What the table holds for `producer_id`.
    pub fn get(&self, producer_id: i64) -> Option<&ProducerState> {
        self.producers.get(&producer_id)
    }

    /// Checks a produced batch before it is proposed. See the module docs for the rules.
    pub fn check(&self, header: &BatchHeader) -> SequenceCheck {
        let Some(b) = ProducerBatch::of(header) else {
            return SequenceCheck::Accept;
        };
        if let Some(why) = b.malformed() {
            return SequenceCheck::Malformed(why);
        }
        let Some(state) = self.producers.get(&b.producer_id) else {
            return SequenceCheck::Accept;
        };
        if b.epoch < state.epoch {
            return SequenceCheck::Fenced {
                current: state.epoch,
                got: b.epoch,
            };
        }
        if b.epoch > state.epoch {
            return if b.base_sequence == 0 {
                SequenceCheck::Accept
            } else {
                SequenceCheck::OutOfOrder {
                    expected: 0,
                    got: b.base_sequence,
                }
            };
        }
        let last_sequence = b.last_sequence();
        if let Some(seen) = state
            .batches
            .iter()
            .find(|s| s.base_sequence == b.base_sequence && s.last_sequence == last_sequence)
        {
            return SequenceCheck::Duplicate(*seen);
        }
        let (Some(expected), Some(oldest)) = (state.next_sequence(), state.batches.front()) else {
            return SequenceCheck::Accept;
        };
        if b.base_sequence == expected {
            return SequenceCheck::Accept;
        }
        // Behind the next sequence (within half the sequence space), and before the
        // remembered window: stale. Inside the window but not a remembered batch, or
        // ahead: out of order.
        let behind = distance(b.base_sequence, expected);
        let window = distance(oldest.base_sequence, expected);
        let half = (i64::from(SEQUENCE_MAX) + 1) / 2;
        if behind > window && behind <= half {
            SequenceCheck::Stale
        } else {
            SequenceCheck::OutOfOrder {
                expected,
                got: b.base_sequence,
            }
        }
    }

    /// Records a batch appended to the log (its base offset set). Non-idempotent and
    /// malformed batches change nothing; a batch of an older epoch than the producer's
    /// (which a leader would have fenced) is ignored; a newer epoch replaces the
    /// producer's state.
    pub fn appended(&mut self, header: &BatchHeader) {
        let Some(b) = ProducerBatch::of(header) else {
            return;
        };
        if b.malformed().is_some() {
            return;
        }
        let batch = AppendedBatch {
            base_sequence: b.base_sequence,
            last_sequence: b.last_sequence(),
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
        };
        if !self.producers.contains_key(&b.producer_id) && self.producers.len() >= PRODUCERS_MAX {
            self.evict_one();
        }
        let state = self
            .producers
            .entry(b.producer_id)
            .or_insert_with(|| ProducerState {
                epoch: b.epoch,
                batches: VecDeque::new(),
            });
        if b.epoch < state.epoch {
            return;
        }
        if b.epoch > state.epoch {
            state.epoch = b.epoch;
            state.batches.clear();
        }
        if state.batches.len() >= BATCHES_REMEMBERED {
            state.batches.pop_front();
        }
        state.batches.push_back(batch);
    }

    /// Forgets the producer that appended least recently.
    fn evict_one(&mut self) {
        if let Some(id) = self
            .producers
            .iter()
            .min_by_key(|(_, s)| s.last_offset())
            .map(|(id, _)| *id)
        {
            self.producers.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{BatchBuilder, Limits, NO_PRODUCER_EPOCH, NO_SEQUENCE};

    /// A header of `records` records from producer `id`/`epoch` at `seq`, stored at
    /// `offset`.
    fn header(id: i64, epoch: i16, seq: i32, records: u32, offset: u64) -> BatchHeader {
        let mut b = BatchBuilder::new(Limits::default()).producer(id, epoch, seq);
        for _ in 0..records {
            b.push(0, None, Some(b"v"), &[]).unwrap();
        }
        let bytes = b.finish().unwrap();
        let mut h = BatchHeader::parse(&bytes, &Limits::default()).unwrap();
        h.base_offset = offset;
        h
    }

    #[test]
    fn sequences_wrap_like_kafkas() {
        assert_eq!(add_sequence(0, 0), 0);
        assert_eq!(add_sequence(5, 3), 8);
        assert_eq!(add_sequence(i32::MAX, 1), 0);
        assert_eq!(add_sequence(i32::MAX - 1, 3), 1);
        assert_eq!(distance(i32::MAX, 0), 1);
        assert_eq!(distance(3, 3), 0);
    }

    #[test]
    fn non_idempotent_and_unknown_producers_are_accepted() {
        let t = ProducerTable::new();
        let plain = header(NO_PRODUCER_ID, NO_PRODUCER_EPOCH, NO_SEQUENCE, 3, 0);
        assert_eq!(t.check(&plain), SequenceCheck::Accept);
        // Any sequence from a producer not in the table.
        assert_eq!(t.check(&header(7, 0, 12_345, 2, 0)), SequenceCheck::Accept);
        let mut t = ProducerTable::new();
        t.appended(&plain);
        assert!(t.is_empty(), "a plain batch records nothing");
    }

    #[test]
    fn malformed_fields_are_refused() {
        let t = ProducerTable::new();
        for h in [
            header(-2, 0, 0, 1, 0),
            header(1, -1, 0, 1, 0),
            header(1, 0, -5, 1, 0),
        ] {
            assert!(matches!(t.check(&h), SequenceCheck::Malformed(_)), "{h:?}");
        }
    }

    #[test]
    fn next_sequence_accepted_duplicate_found_gap_refused() {
        let mut t = ProducerTable::new();
        t.appended(&header(1, 0, 0, 3, 100)); // seq 0..=2 at 100..=102
        t.appended(&header(1, 0, 3, 2, 110)); // seq 3..=4 at 110..=111
        assert_eq!(t.check(&header(1, 0, 5, 1, 0)), SequenceCheck::Accept);
        assert_eq!(
            t.check(&header(1, 0, 3, 2, 0)),
            SequenceCheck::Duplicate(AppendedBatch {
                base_sequence: 3,
                last_sequence: 4,
                base_offset: 110,
                last_offset: 111
            })
        );
        assert!(matches!(
            t.check(&header(1, 0, 0, 3, 0)),
            SequenceCheck::Duplicate(AppendedBatch {
                base_offset: 100,
                ..
            })
        ));
        assert_eq!(
            t.check(&header(1, 0, 7, 1, 0)),
            SequenceCheck::OutOfOrder {
                expected: 5,
                got: 7
            }
        );
        // Inside the window but not a remembered batch (a different record count).
        assert_eq!(
            t.check(&header(1, 0, 3, 1, 0)),
            SequenceCheck::OutOfOrder {
                expected: 5,
                got: 3
            }
        );
        // Another producer is independent.
        assert_eq!(t.check(&header(2, 0, 40, 1, 0)), SequenceCheck::Accept);
    }

    #[test]
    fn only_the_last_five_batches_are_remembered_older_ones_are_stale() {
        let mut t = ProducerTable::new();
        for i in 0..8u32 {
            t.appended(&header(1, 0, i as i32, 1, u64::from(i)));
        }
        let s = t.get(1).unwrap();
        assert_eq!(s.batches.len(), BATCHES_REMEMBERED);
        assert_eq!(s.batches.front().unwrap().base_sequence, 3);
        assert!(matches!(
            t.check(&header(1, 0, 3, 1, 0)),
            SequenceCheck::Duplicate(_)
        ));
        assert_eq!(t.check(&header(1, 0, 2, 1, 0)), SequenceCheck::Stale);
        assert_eq!(t.check(&header(1, 0, 0, 1, 0)), SequenceCheck::Stale);
        assert_eq!(t.check(&header(1, 0, 8, 1, 0)), SequenceCheck::Accept);
        // Far ahead (more than half the space behind is "ahead"): out of order.
        assert!(matches!(
            t.check(&header(1, 0, 1 << 30, 1, 0)),
            SequenceCheck::OutOfOrder { expected: 8, .. }
        ));
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        let mut t = ProducerTable::new();
        t.appended(&header(1, 0, i32::MAX - 1, 3, 0)); // MAX-1, MAX, 0
        assert_eq!(t.get(1).unwrap().batches[0].last_sequence, 0);
        assert_eq!(t.check(&header(1, 0, 1, 1, 0)), SequenceCheck::Accept);
        assert!(matches!(
            t.check(&header(1, 0, i32::MAX - 1, 3, 0)),
            SequenceCheck::Duplicate(_)
        ));
        t.appended(&header(1, 0, 1, 1, 3));
        assert_eq!(t.check(&header(1, 0, 2, 1, 0)), SequenceCheck::Accept);
    }

    #[test]
    fn epochs_fence_older_and_restart_newer_at_zero() {
        let mut t = ProducerTable::new();
        t.appended(&header(1, 3, 0, 1, 0));
        t.appended(&header(1, 3, 1, 1, 1));
        assert_eq!(
            t.check(&header(1, 2, 2, 1, 0)),
            SequenceCheck::Fenced { current: 3, got: 2 }
        );
        assert_eq!(t.check(&header(1, 4, 0, 1, 0)), SequenceCheck::Accept);
        assert_eq!(
            t.check(&header(1, 4, 2, 1, 0)),
            SequenceCheck::OutOfOrder {
                expected: 0,
                got: 2
            }
        );
        t.appended(&header(1, 4, 0, 2, 2));
        let s = t.get(1).unwrap();
        assert_eq!(
            (s.epoch, s.batches.len()),
            (4, 1),
            "a new epoch starts over"
        );
        // An older epoch's batch in the log (never accepted by a leader) is ignored.
        t.appended(&header(1, 3, 2, 1, 4));
        assert_eq!(t.get(1).unwrap().batches.len(), 1);
        assert_eq!(t.check(&header(1, 4, 2, 1, 0)), SequenceCheck::Accept);
    }

    #[test]
    fn rebuilt_after_a_cut_keeps_only_producers_entirely_below_the_log_start() {
        let mut t = ProducerTable::new();
        let old = header(9, 0, 0, 2, 0); // retained away: 0..=1
        t.appended(&old);
        let a = header(1, 0, 0, 1, 10);
        let b = header(1, 0, 1, 1, 11); // cut
        let c = header(2, 0, 5, 1, 12); // cut: producer 2 only here
        for h in [&a, &b, &c] {
            t.appended(h);
        }
        // The log now starts at 10 and was cut at 11: only `a` is left.
        let r = t.rebuilt([&a], 10);
        assert_eq!(
            r.get(9),
            t.get(9),
            "knowledge from retained batches is kept"
        );
        assert_eq!(r.get(1).unwrap().batches.len(), 1);
        assert!(
            r.get(2).is_none(),
            "a producer only in the cut suffix is gone"
        );
        assert_eq!(
            r.check(&b),
            SequenceCheck::Accept,
            "the cut batch may come again"
        );
        assert_eq!(r, ProducerTable::from_headers([&old, &a]));
    }

    #[test]
    fn the_snapshot_of_retained_producers_round_trips_and_merges_back() {
        let mut t = ProducerTable::new();
        t.appended(&header(1, 0, 0, 2, 0)); // 0..=1
        t.appended(&header(2, 3, 7, 1, 2)); // 2
        t.appended(&header(1, 0, 2, 1, 3)); // 3: producer 1 is not wholly below 3
        let bytes = t.encode_below(3);
        let snap = ProducerTable::decode(&bytes).unwrap();
        assert_eq!(snap.len(), 1);
        assert_eq!(snap.get(2), t.get(2));
        // Reopened with the log starting at 3: only producer 1's last batch is in it.
        let mut reopened = ProducerTable::from_headers([&header(1, 0, 2, 1, 3)]);
        reopened.merge_below(&snap, 3);
        assert_eq!(reopened.get(2), t.get(2));
        assert!(matches!(
            reopened.check(&header(2, 3, 7, 1, 0)),
            SequenceCheck::Duplicate(AppendedBatch { base_offset: 2, .. })
        ));
        // Bad bytes are refused, never a panic.
        for n in 0..bytes.len() {
            assert!(ProducerTable::decode(&bytes[..n]).is_err(), "{n}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(ProducerTable::decode(&extra).is_err());
        assert!(ProducerTable::decode(&[2, 0, 0, 0, 0]).is_err());
        assert_eq!(
            ProducerTable::decode(&ProducerTable::new().encode_below(9)),
            Ok(ProducerTable::new())
        );
    }

    #[test]
    fn a_union_keeps_the_newer_state_of_each_producer() {
        let mut a = ProducerTable::from_headers([&header(1, 0, 0, 1, 0), &header(2, 0, 0, 1, 1)]);
        let b = ProducerTable::from_headers([&header(1, 0, 0, 1, 0), &header(1, 0, 1, 1, 5)]);
        a.union_newest(&b);
        assert_eq!(a.get(1), b.get(1));
        assert_eq!(a.len(), 2);
        let older = ProducerTable::from_headers([&header(2, 0, 0, 1, 1)]);
        let before = a.clone();
        a.union_newest(&older);
        assert_eq!(a, before);
    }

    #[test]
    fn the_least_recent_producer_is_evicted_at_the_limit() {
        let mut t = ProducerTable::new();
        for id in 0..PRODUCERS_MAX as i64 {
            t.appended(&header(id, 0, 0, 1, id as u64 + 10));
        }
        // Producer 0 appends again: producer 1 is now the least recent.
        t.appended(&header(0, 0, 1, 1, 1_000_000));
        t.appended(&header(-5 + 10_000_000, 0, 0, 1, 1_000_001));
        assert_eq!(t.len(), PRODUCERS_MAX);
        assert!(t.get(0).is_some());
        assert!(t.get(1).is_none());
    }

    proptest::proptest! {
        /// Appending a log batch by batch and building from its headers give the same
        /// table; every appended batch is then a duplicate or stale, never accepted.
        #[test]
        fn incremental_and_rebuilt_tables_agree(
            batches in proptest::collection::vec((0i64..4, 1u32..4), 1..60),
        ) {
            let mut next: BTreeMap<i64, i32> = BTreeMap::new();
            let mut offset = 0u64;
            let mut headers = Vec::new();
            let mut t = ProducerTable::new();
            for (id, n) in batches {
                let seq = next.entry(id).or_insert(0);
                let h = header(id, 0, *seq, n, offset);
                proptest::prop_assert_eq!(t.check(&h), SequenceCheck::Accept);
                t.appended(&h);
                *seq = add_sequence(*seq, n);
                offset += u64::from(n);
                headers.push(h);
            }
            proptest::prop_assert_eq!(&t, &ProducerTable::from_headers(&headers));
            for h in &headers {
                let c = t.check(h);
                proptest::prop_assert!(
                    matches!(c, SequenceCheck::Duplicate(d) if d.base_offset == h.base_offset)
                        || c == SequenceCheck::Stale,
                    "{:?}", c
                );
            }
        }
    }
}
