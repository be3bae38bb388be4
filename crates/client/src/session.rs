//! The producer's session logic, pure (DESIGN §6: "client (session logic)"): which
//! partition a record goes to, how records gather into batches, and which batch is
//! sent next. No runtime, socket or clock: time is an argument, so the simulator can
//! run the same code.
//!
//! Call order for a producer driver:
//! 1. [`Partitioner::partition`] picks the partition of each record;
//! 2. [`Accumulator::push`] adds it to that partition's open batch (sealing the batch
//!    when the record does not fit);
//! 3. [`Accumulator::poll_ready`] hands out batches that are full or whose linger has
//!    passed (call again at [`Accumulator::next_deadline`]);
//! 4. [`SendQueue::enqueue`] queues them; [`SendQueue::next`] gives the next batch to
//!    send, at most `in_flight_per_partition_max` per partition so a partition's
//!    batches are acknowledged in the order they were produced;
//! 5. [`SendQueue::complete`] with the outcome: done, retry later (the batch goes back
//!    to the front of its partition's queue, after a backoff), or failed;
//!    [`RetryPolicy::decide`] says which, from the error's facts;
//! 6. [`Accumulator::release`] the batch's bytes once it is done or failed for good.
//!
//! The idempotent producer (`proto/PROTOCOL.md`, "Idempotent producer"): once the
//! broker gave a producer id ([`Accumulator::set_producer`]), every batch is stamped
//! when it is sealed with the id, its partition's epoch and the partition's next base
//! sequence ([`Sequences`]); a retry resends the same bytes, so the broker recognises
//! it. When a batch fails for good, [`Accumulator::restart_sequences`] starts its
//! partition over (epoch + 1, sequence 0) and re-stamps the batches queued behind it,
//! which were never sent (one request in flight per partition), so the failed
//! batch's sequences leave no gap the broker would refuse.
#![warn(missing_docs)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use sluice_proto::wire::{ErrorBody, ErrorCode, ErrorDetail, WriteOutcome};
use sluice_proto::{BatchBuilder, BatchError, BatchView, Limits};

/// Sequences run `0..=i32::MAX`, then wrap to 0 (as Kafka's do).
pub fn add_sequence(sequence: i32, delta: u32) -> i32 {
    let modulus = i64::from(i32::MAX) + 1;
    let sum = (i64::from(sequence) + i64::from(delta)).rem_euclid(modulus);
    i32::try_from(sum).unwrap_or(0)
}

/// An idempotent producer's stamps: its id, and per partition the epoch and the base
/// sequence of the next batch. A partition starts at the producer's epoch and sequence
/// 0; [`restart`](Self::restart) moves it to the next epoch, sequence 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequences {
    producer_id: i64,
    epoch: i16,
    partitions: BTreeMap<u32, (i16, i32)>,
}

/// Why a partition's sequences cannot start over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    /// The partition used every epoch up to `i16::MAX`: the producer needs a new id.
    #[error("producer epoch exhausted on this partition; use a new producer")]
    EpochExhausted,
    /// A queued batch could not be re-stamped.
    #[error("cannot re-stamp a batch: {0}")]
    Batch(BatchError),
}

impl Sequences {
    /// The stamps of producer `producer_id` at `epoch`, every partition at sequence 0.
    pub fn new(producer_id: i64, epoch: i16) -> Self {
        Self {
            producer_id,
            epoch,
            partitions: BTreeMap::new(),
        }
    }

    /// The producer id.
    pub fn producer_id(&self) -> i64 {
        self.producer_id
    }

    /// The epoch and base sequence the next batch of `partition` gets.
    pub fn peek(&self, partition: u32) -> (i16, i32) {
        self.partitions
            .get(&partition)
            .copied()
            .unwrap_or((self.epoch, 0))
    }

    /// The epoch and base sequence of a batch of `records` records on `partition`; the
    /// partition's next batch starts after it.
    pub fn take(&mut self, partition: u32, records: u32) -> (i16, i32) {
        let (epoch, base) = self.peek(partition);
        let next = add_sequence(base, records);
        self.partitions.insert(partition, (epoch, next));
        (epoch, base)
    }

    /// Starts `partition` over at the next epoch, sequence 0 (the broker accepts a newer
    /// epoch from sequence 0, and fences the older one). Returns the new epoch.
    pub fn restart(&mut self, partition: u32) -> Result<i16, SequenceError> {
        let (epoch, _) = self.peek(partition);
        let next = epoch.checked_add(1).ok_or(SequenceError::EpochExhausted)?;
        self.partitions.insert(partition, (next, 0));
        Ok(next)
    }
}

/// `batch` re-encoded with new idempotence fields (they are covered by the CRC, so the
/// batch is built again from its records; the bytes keep their length).
pub fn restamp(
    batch: &[u8],
    limits: &Limits,
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
) -> Result<Vec<u8>, BatchError> {
    let view = BatchView::parse(batch, limits)?;
    let mut b = BatchBuilder::new(*limits)
        .producer(producer_id, epoch, base_sequence)
        .control(view.header().is_control());
    for r in view.records() {
        b.push_record(&r.to_record())?;
    }
    b.finish()
}

/// The stable hash from record key to partition, shared by every Sluice SDK:
/// FNV-1a 64 of the key bytes, modulo the partition count. Changing it moves keys
/// between partitions, so it is part of the protocol (`proto/PROTOCOL.md`).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "client: topic without partitions");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(partitions)) as u32
}

/// How records are spread over partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PartitionStrategy {
    /// Records with a key go to [`partition_for_key`]; records without one stick to
    /// one partition until its batch is sealed, then move to the next (large
    /// batches, even spread). A keyless record that does not fit the sticky batch
    /// seals it and starts the next partition's batch (not a batch of its own behind
    /// the full one).
    #[default]
    KeyHash,
    /// Every record to the next partition in turn.
    RoundRobin,
}

/// Picks partitions per [`PartitionStrategy`].
#[derive(Debug, Clone, Default)]
pub struct Partitioner {
    strategy: PartitionStrategy,
    next: u32,
}

impl Partitioner {
    /// A partitioner with `strategy`.
    pub fn new(strategy: PartitionStrategy) -> Self {
        Self { strategy, next: 0 }
    }

    /// The partition for a record with `key`, of `partitions`.
    pub fn partition(&mut self, key: Option<&[u8]>, partitions: u32) -> u32 {
        assert!(partitions > 0, "client: topic without partitions");
        // `next` is kept below `partitions`, so `sealed` can compare it with a partition
        // number (it once grew past the count and the sticky choice then froze).
        self.next %= partitions;
        match (self.strategy, key) {
            (PartitionStrategy::KeyHash, Some(k)) => partition_for_key(k, partitions),
            (PartitionStrategy::KeyHash, None) => self.next,
            (PartitionStrategy::RoundRobin, _) => {
                let p = self.next;
                self.next = (p + 1) % partitions;
                p
            }
        }
    }

    /// Whether a record with `key` and no explicit partition would go to the sticky
    /// partition (and move with it when its batch is sealed).
    pub fn is_sticky(&self, key: Option<&[u8]>) -> bool {
        self.strategy == PartitionStrategy::KeyHash && key.is_none()
    }

    /// A batch was sealed on `partition`: if keyless records were sticking to it, the
    /// sticky choice moves on to the next partition. Calling it again for the same
    /// batch, or for a partition that is not the sticky one, changes nothing.
    pub fn sealed(&mut self, partition: u32) {
        if self.strategy == PartitionStrategy::KeyHash && self.next == partition {
            self.next = self.next.wrapping_add(1);
        }
    }
}

/// Batching limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Seal a batch before it would pass this many encoded bytes.
    pub batch_bytes_max: usize,
    /// Seal a batch this long after its first record, full or not.
    pub linger_ms: u64,
    /// Total bytes of records held (open and sealed, not yet acknowledged); a push
    /// past it is refused so the caller waits (backpressure).
    pub buffer_bytes_max: usize,
    /// Record-batch limits (the broker's must be at least these).
    pub limits: Limits,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            batch_bytes_max: 256 * 1024,
            linger_ms: 5,
            buffer_bytes_max: 64 << 20,
            limits: Limits::default(),
        }
    }
}

/// A record to batch, borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
    /// The record key (`None`: null key).
    pub key: Option<&'a [u8]>,
    /// The record value (`None`: null value, a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers in order: (key, value), a null value as `None`.
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
}

impl<'a> RecordRef<'a> {
    /// A record with no headers.
    pub fn new(timestamp: i64, key: Option<&'a [u8]>, value: Option<&'a [u8]>) -> Self {
        Self {
            timestamp,
            key,
            value,
            headers: &[],
        }
    }
}

/// A close estimate of a record's encoded size, used to seal a batch before it would
/// pass `batch_bytes_max`: its bytes plus a few bytes of varints per field.
fn record_bytes_estimate(record: &RecordRef<'_>) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len) + 4)
        .sum();
    record.key.map_or(0, <[u8]>::len) + record.value.map_or(0, <[u8]>::len) + headers + 16
}

/// Most encoded varint bytes around one record (body length, timestamp and offset
/// deltas, key and value lengths, header count: at most 10 bytes each) plus its
/// attributes byte.
const RECORD_OVERHEAD_BYTES_MAX: usize = 6 * 10 + 1;
/// Most encoded varint bytes around one header (key and value lengths).
const HEADER_OVERHEAD_BYTES_MAX: usize = 2 * 10;

/// An upper bound of the bytes `record` adds to a batch: a producer that reserves this
/// much buffer space per record never holds more than it reserved.
pub fn record_bytes_max(record: &RecordRef<'_>) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len) + HEADER_OVERHEAD_BYTES_MAX)
        .sum();
    record.key.map_or(0, <[u8]>::len)
        + record.value.map_or(0, <[u8]>::len)
        + headers
        + RECORD_OVERHEAD_BYTES_MAX
}

/// Re-stamps `bytes` with `partition`'s next sequences.
fn stamp_next(
    seq: &mut Sequences,
    partition: u32,
    bytes: &mut Vec<u8>,
    limits: &Limits,
) -> Result<(), SequenceError> {
    let view = BatchView::parse(bytes, limits).map_err(SequenceError::Batch)?;
    let (epoch, base) = seq.take(partition, view.header().record_count);
    let stamped =
        restamp(bytes, limits, seq.producer_id(), epoch, base).map_err(SequenceError::Batch)?;
    // Same records, same encoding: the buffer accounting still holds.
    assert_eq!(
        stamped.len(),
        bytes.len(),
        "client: re-stamp changed the size"
    );
    *bytes = stamped;
    Ok(())
}

/// A sealed batch ready to send, with the caller's handle for each record.
#[derive(Debug)]
pub struct ReadyBatch<T> {
    /// The partition the batch is for.
    pub partition: u32,
    /// The encoded batch (`BatchBuilder::finish`), what a produce request carries.
    pub bytes: Vec<u8>,
    /// One handle per record, in record order (record `i` gets offset `base + i`).
    pub records: Vec<T>,
}

/// A record [`Accumulator::push`] did not take, with the caller's handle given back so
/// the driver can resolve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected<T> {
    /// Why.
    pub error: PushError,
    /// The handle that came with the record.
    pub handle: T,
}

/// Why a record was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The buffer is full: wait for acknowledgements, then push again.
    #[error("producer buffer full")]
    BufferFull,
    /// The record can never be sent (it breaks a batch limit on its own).
    #[error("record rejected: {0}")]
    Invalid(BatchError),
}

/// Buffers of acknowledged batches, kept for the next batches to fill: Kafka's producer
/// pools its batch buffers too. A fresh buffer of a megabyte costs a page fault and the
/// zeroing of each of its pages on first touch (on a virtual machine also the host
/// backing the page), which a reused one has paid once. Cloning shares the pool: one
/// producer's topics draw from one. At most `bytes_max` bytes of capacity are kept.
#[derive(Debug, Clone)]
pub struct BufferPool {
    inner: Arc<Mutex<PoolState>>,
}

#[derive(Debug)]
struct PoolState {
    free: Vec<Vec<u8>>,
    /// Capacity of the buffers in `free`.
    bytes: usize,
    bytes_max: usize,
}

impl BufferPool {
    /// An empty pool that keeps at most `bytes_max` bytes of idle buffers.
    pub fn new(bytes_max: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(PoolState {
                free: Vec::new(),
                bytes: 0,
                bytes_max,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // The state is a list and a sum updated together: a panic elsewhere cannot
        // leave it half-changed, so a poisoned lock's state is fine to use.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `buf` for reuse, or drops it if the pool is full.
    pub fn put(&self, buf: Vec<u8>) {
        let mut state = self.state();
        let cap = buf.capacity();
        if cap == 0 || state.bytes.saturating_add(cap) > state.bytes_max {
            return;
        }
        state.bytes += cap;
        state.free.push(buf);
    }

    /// The largest kept buffer, if it holds at least `bytes`: `bytes` is only the
    /// batch's expected size, and a batch that outgrows its buffer reallocates and
    /// copies it, so the most room is the best pick. One smaller than `bytes` is
    /// dropped rather than grown (growing copies its old allocation), and `None` says
    /// to allocate.
    pub fn take(&self, bytes: usize) -> Option<Vec<u8>> {
        let mut state = self.state();
        let (largest, _) = state
            .free
            .iter()
            .enumerate()
            .max_by_key(|(_, b)| b.capacity())?;
        let buf = state.free.swap_remove(largest);
        state.bytes -= buf.capacity();
        (buf.capacity() >= bytes).then_some(buf)
    }

    /// Bytes of capacity held idle.
    pub fn idle_bytes(&self) -> usize {
        self.state().bytes
    }
}

#[derive(Debug)]
struct OpenBatch<T> {
    builder: BatchBuilder,
    records: Vec<T>,
    opened_ms: i64,
}

/// Gathers records into per-partition batches.
#[derive(Debug)]
pub struct Accumulator<T> {
    config: BatchConfig,
    open: BTreeMap<u32, OpenBatch<T>>,
    sealed: VecDeque<ReadyBatch<T>>,
    buffered_bytes: usize,
    /// Set for an idempotent producer: every batch is stamped when sealed.
    sequences: Option<Sequences>,
    /// Per partition: the encoded size and record count of its last sealed batch, from
    /// which its next one's capacity is sized (see `open_batch`).
    last_sealed: BTreeMap<u32, (usize, usize)>,
    /// Where new batches take their buffers from and [`Accumulator::recycle`] puts them.
    pool: BufferPool,
}

impl<T> Accumulator<T> {
    /// An empty accumulator, with a buffer pool of its own that keeps up to a quarter
    /// of `buffer_bytes_max`.
    pub fn new(config: BatchConfig) -> Self {
        let pool = BufferPool::new(config.buffer_bytes_max / 4);
        Self::with_pool(config, pool)
    }

    /// An empty accumulator drawing batch buffers from `pool` (shared with others).
    pub fn with_pool(config: BatchConfig, pool: BufferPool) -> Self {
        Self {
            config,
            open: BTreeMap::new(),
            sealed: VecDeque::new(),
            buffered_bytes: 0,
            sequences: None,
            last_sealed: BTreeMap::new(),
            pool,
        }
    }

    /// Gives back an acknowledged batch's buffer, for a later batch to fill.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.pool.put(buf);
    }

    /// Stamps every batch sealed from now on as idempotent producer `producer_id` at
    /// `epoch`, with per-partition sequences from 0. Call it before the first push.
    pub fn set_producer(&mut self, producer_id: i64, epoch: i16) {
        self.sequences = Some(Sequences::new(producer_id, epoch));
    }

    /// The idempotent producer's stamps, if set.
    pub fn sequences(&self) -> Option<&Sequences> {
        self.sequences.as_ref()
    }

    /// A batch of `partition` failed for good: starts the partition's sequences over
    /// (next epoch, sequence 0) and re-stamps, in order, the batches that follow it and
    /// were never sent: first `queued` (those already handed out, oldest first), then
    /// those sealed here and not yet handed out. The open batch is stamped when sealed.
    /// Nothing to do without a producer id.
    pub fn restart_sequences<'a>(
        &mut self,
        partition: u32,
        queued: impl IntoIterator<Item = &'a mut Vec<u8>>,
    ) -> Result<(), SequenceError> {
        let Some(seq) = self.sequences.as_mut() else {
            return Ok(());
        };
        seq.restart(partition)?;
        let limits = self.config.limits;
        for bytes in queued {
            stamp_next(seq, partition, bytes, &limits)?;
        }
        for b in self.sealed.iter_mut().filter(|b| b.partition == partition) {
            stamp_next(seq, partition, &mut b.bytes, &limits)?;
        }
        Ok(())
    }

    /// Bytes held, open or sealed, not yet released: every batch's encoded bytes,
    /// header included.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Adds a record to `partition`'s open batch. Returns the partition whose batch
    /// it sealed, if any (for [`Partitioner::sealed`]), or the handle back with the
    /// reason the record was refused.
    pub fn push(
        &mut self,
        now_ms: i64,
        partition: u32,
        record: RecordRef<'_>,
        handle: T,
    ) -> Result<Option<u32>, Rejected<T>> {
        let RecordRef {
            timestamp: ts,
            key,
            value,
            headers,
        } = record;
        let size = record_bytes_estimate(&record);
        if self.buffered_bytes > 0
            && self.buffered_bytes.saturating_add(size) > self.config.buffer_bytes_max
        {
            return Err(Rejected {
                error: PushError::BufferFull,
                handle,
            });
        }
        let mut sealed = None;
        let max = self.config.batch_bytes_max;
        if self.overflows(partition, size) {
            self.seal(partition);
            sealed = Some(partition);
        }
        loop {
            let open = self.open_batch(partition, now_ms);
            let before = open.builder.encoded_len();
            match open.builder.push(ts, key, value, headers) {
                Ok(()) => {
                    open.records.push(handle);
                    let grown = open.builder.encoded_len() - before;
                    let full = open.builder.encoded_len() >= max;
                    self.buffered_bytes += grown;
                    if full {
                        self.seal(partition);
                        sealed = Some(partition);
                    }
                    return Ok(sealed);
                }
                // The open batch is full by a batch limit (its size or record count): seal
                // it and try once more in a fresh one (whose builder is empty, so this arm
                // cannot match twice).
                Err(BatchError::BadLength { .. } | BatchError::TooManyRecords { .. })
                    if !open.builder.is_empty() =>
                {
                    self.seal(partition);
                    sealed = Some(partition);
                }
                // A record limit, or a fresh batch that still refuses it: it can never go.
                // The open batch (if it has records) is left as it was.
                Err(e) => {
                    self.discard_if_empty(partition);
                    return Err(Rejected {
                        error: PushError::Invalid(e),
                        handle,
                    });
                }
            }
        }
    }

    /// The open batch of `partition`, opened now if there is none. A new batch's header
    /// bytes count as buffered from here on, so that releasing a sealed batch's
    /// `bytes.len()` frees exactly what it held.
    fn open_batch(&mut self, partition: u32, now_ms: i64) -> &mut OpenBatch<T> {
        let limits = self.config.limits;
        let buffered = &mut self.buffered_bytes;
        let pool = &self.pool;
        // Twice the last batch: one that grows less than that never reallocates (each
        // reallocation copies everything pushed so far). A batch's size follows the
        // timing of its partition's requests, so consecutive batches differ widely.
        let (bytes, records) = self
            .last_sealed
            .get(&partition)
            .map_or((0, 0), |&(b, r)| (b.saturating_mul(2), r.saturating_mul(2)));
        self.open.entry(partition).or_insert_with(|| {
            let bytes = bytes.min(self.config.batch_bytes_max);
            // No pooled buffer that fits: an empty `Vec`, which `with_buffer` sizes.
            let buf = pool.take(bytes).unwrap_or_default();
            let builder = BatchBuilder::with_buffer(limits, buf, bytes);
            *buffered += builder.encoded_len();
            OpenBatch {
                builder,
                records: Vec::with_capacity(records),
                opened_ms: now_ms,
            }
        })
    }

    fn discard_if_empty(&mut self, partition: u32) {
        if self
            .open
            .get(&partition)
            .is_some_and(|b| b.builder.is_empty())
        {
            if let Some(open) = self.open.remove(&partition) {
                self.buffered_bytes = self
                    .buffered_bytes
                    .saturating_sub(open.builder.encoded_len());
            }
        }
    }

    /// Whether `record` does not fit in `partition`'s open batch: pushing it there would
    /// seal that batch and start the partition's next one with this record alone. (A
    /// sticky record goes to the next partition instead: `Driver`'s `push_record`.)
    pub fn would_overflow(&self, partition: u32, record: &RecordRef<'_>) -> bool {
        self.overflows(partition, record_bytes_estimate(record))
    }

    /// Whether `size` more bytes do not fit in `partition`'s open batch (an empty one
    /// takes any record the limits allow).
    fn overflows(&self, partition: u32, size: usize) -> bool {
        self.open.get(&partition).is_some_and(|b| {
            !b.builder.is_empty()
                && b.builder.encoded_len().saturating_add(size) > self.config.batch_bytes_max
        })
    }

    /// Seals `partition`'s open batch, if it has one; `poll_ready` hands it out next.
    pub fn seal(&mut self, partition: u32) {
        let Some(open) = self.open.remove(&partition) else {
            return;
        };
        let held = open.builder.encoded_len();
        let builder = match self.sequences.as_mut() {
            Some(seq) if !open.builder.is_empty() => {
                let records = u32::try_from(open.builder.len()).unwrap_or(u32::MAX);
                let (epoch, base) = seq.take(partition, records);
                open.builder.producer(seq.producer_id(), epoch, base)
            }
            _ => open.builder,
        };
        match builder.finish() {
            Ok(bytes) => {
                // Pair assertion with `open_batch`/`push`: what was counted is what goes.
                assert_eq!(bytes.len(), held, "client: batch size accounting");
                self.last_sealed
                    .insert(partition, (bytes.len(), open.records.len()));
                self.sealed.push_back(ReadyBatch {
                    partition,
                    bytes,
                    records: open.records,
                });
            }
            // An empty builder has no records to lose; give its header bytes back.
            Err(_) => {
                assert!(open.records.is_empty(), "client: records in an empty batch");
                self.buffered_bytes = self.buffered_bytes.saturating_sub(held);
            }
        }
    }

    /// The next batch to send: sealed ones first, then open ones whose linger passed.
    pub fn poll_ready(&mut self, now_ms: i64) -> Option<ReadyBatch<T>> {
        self.poll_ready_unless(now_ms, |_| false)
    }

    /// Like [`poll_ready`](Self::poll_ready), but an open batch of a partition for which
    /// `busy` is true stays open past its linger and keeps filling (Kafka's behaviour:
    /// while a partition's request is in flight its next batch grows, so a small linger
    /// under load still makes large batches); full batches are handed out regardless.
    pub fn poll_ready_unless(
        &mut self,
        now_ms: i64,
        busy: impl Fn(u32) -> bool,
    ) -> Option<ReadyBatch<T>> {
        if self.sealed.is_empty() {
            let linger = i64::try_from(self.config.linger_ms).unwrap_or(i64::MAX);
            let due: Vec<u32> = self
                .open
                .iter()
                .filter(|(p, b)| now_ms.saturating_sub(b.opened_ms) >= linger && !busy(**p))
                .map(|(p, _)| *p)
                .collect();
            for p in due {
                self.seal(p);
            }
        }
        self.sealed.pop_front()
    }

    /// Seals every open batch (a flush): `poll_ready` then hands all of them out.
    pub fn seal_all(&mut self) {
        let all: Vec<u32> = self.open.keys().copied().collect();
        for p in all {
            self.seal(p);
        }
    }

    /// When the next open batch's linger passes, if any is open.
    pub fn next_deadline(&self) -> Option<i64> {
        self.next_deadline_unless(|_| false)
    }

    /// When the next open batch of a partition that is not `busy` lingers out (a busy
    /// partition's batch is handed out when the partition frees, not on a timer).
    pub fn next_deadline_unless(&self, busy: impl Fn(u32) -> bool) -> Option<i64> {
        let linger = i64::try_from(self.config.linger_ms).unwrap_or(i64::MAX);
        self.open
            .iter()
            .filter(|(p, _)| !busy(**p))
            .map(|(_, b)| b.opened_ms.saturating_add(linger))
            .min()
    }

    /// A sent batch of `bytes` was acknowledged or failed for good: its buffer
    /// space is free.
    pub fn release(&mut self, bytes: usize) {
        self.buffered_bytes = self.buffered_bytes.saturating_sub(bytes);
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.sealed.is_empty()
    }
}

/// What happened to a sent batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged.
    Done,
    /// Failed retriably: send it again, first in its partition, not before this time.
    RetryAt(i64),
    /// Failed for good.
    Failed,
}

/// Orders sends: per partition in produce order, at most N in flight per partition.
/// Partitions take turns: [`next`](Self::next) looks first at the partitions after the
/// one it served last, so a total in-flight limit above this queue cannot starve the
/// higher-numbered partitions.
#[derive(Debug)]
pub struct SendQueue<B> {
    in_flight_per_partition_max: usize,
    queues: BTreeMap<u32, PartitionQueue<B>>,
    /// Where the next search starts: one past the partition served last.
    cursor: u32,
}

#[derive(Debug)]
struct PartitionQueue<B> {
    waiting: VecDeque<B>,
    in_flight: usize,
    not_before_ms: i64,
}

impl<B> SendQueue<B> {
    /// A queue allowing `in_flight_per_partition_max` (at least 1) sends per partition.
    pub fn new(in_flight_per_partition_max: usize) -> Self {
        Self {
            in_flight_per_partition_max: in_flight_per_partition_max.max(1),
            queues: BTreeMap::new(),
            cursor: 0,
        }
    }

    /// Whether `partition` already has its in-flight sends or a batch waiting: a new
    /// batch for it would only queue.
    pub fn is_busy(&self, partition: u32) -> bool {
        self.queues.get(&partition).is_some_and(|q| {
            q.in_flight >= self.in_flight_per_partition_max || !q.waiting.is_empty()
        })
    }

    /// The batches waiting (not in flight) on `partition`, in queue order.
    pub fn waiting_mut(&mut self, partition: u32) -> impl Iterator<Item = &mut B> {
        self.queues
            .get_mut(&partition)
            .into_iter()
            .flat_map(|q| q.waiting.iter_mut())
    }

    /// Queues a batch behind `partition`'s others.
    pub fn enqueue(&mut self, partition: u32, batch: B) {
        self.queue(partition).waiting.push_back(batch);
    }

    fn queue(&mut self, partition: u32) -> &mut PartitionQueue<B> {
        self.queues
            .entry(partition)
            .or_insert_with(|| PartitionQueue {
                waiting: VecDeque::new(),
                in_flight: 0,
                not_before_ms: i64::MIN,
            })
    }

    /// The next batch to send now, with its partition.
    pub fn next(&mut self, now_ms: i64) -> Option<(u32, B)> {
        let max = self.in_flight_per_partition_max;
        let ready = |q: &PartitionQueue<B>| {
            q.in_flight < max && !q.waiting.is_empty() && q.not_before_ms <= now_ms
        };
        let p = self
            .queues
            .range(self.cursor..)
            .chain(self.queues.range(..self.cursor))
            .find(|(_, q)| ready(q))
            .map(|(p, _)| *p)?;
        let q = self.queues.get_mut(&p)?;
        let batch = q.waiting.pop_front()?;
        q.in_flight += 1;
        self.cursor = p.wrapping_add(1);
        Some((p, batch))
    }

    /// A send on `partition` finished. On `RetryAt`, the batch (handed back here) goes
    /// to the front of its partition's queue and the partition pauses until then.
    pub fn complete(&mut self, partition: u32, outcome: Outcome, batch: Option<B>) {
        let q = self.queue(partition);
        q.in_flight = q.in_flight.saturating_sub(1);
        if let (Outcome::RetryAt(at), Some(b)) = (outcome, batch) {
            q.waiting.push_front(b);
            q.not_before_ms = at;
        }
    }

    /// Takes out every waiting batch of the partitions numbered `first` and above (0:
    /// all of them), each partition's in queue order; sends in flight are not touched
    /// and are still to be [`complete`](Self::complete)d. For a topic that was deleted
    /// or shrank.
    pub fn drain_waiting(&mut self, first: u32) -> Vec<(u32, B)> {
        let mut out = Vec::new();
        for (p, q) in self.queues.range_mut(first..) {
            out.extend(q.waiting.drain(..).map(|b| (*p, b)));
            q.not_before_ms = i64::MIN;
        }
        out
    }

    /// Takes out, per partition, the waiting batches at the front of its queue for
    /// which `expired` holds, stopping at the first that does not. A partition's batches
    /// wait in the order they were made (a retried one, the oldest, goes back to the
    /// front), so with a deadline per batch this takes exactly the expired ones. For
    /// delivery timeouts.
    pub fn drain_expired(&mut self, mut expired: impl FnMut(&B) -> bool) -> Vec<(u32, B)> {
        let mut out = Vec::new();
        for (p, q) in &mut self.queues {
            while q.waiting.front().is_some_and(&mut expired) {
                if let Some(b) = q.waiting.pop_front() {
                    out.push((*p, b));
                }
            }
        }
        out
    }

    /// The least `key` over the batches first in line in each partition (e.g. the
    /// earliest delivery deadline, to wake for [`drain_expired`](Self::drain_expired)).
    pub fn min_front<K: Ord>(&self, key: impl Fn(&B) -> K) -> Option<K> {
        self.queues
            .values()
            .filter_map(|q| q.waiting.front().map(&key))
            .min()
    }

    /// Batches waiting or in flight.
    pub fn pending(&self) -> usize {
        self.queues
            .values()
            .map(|q| q.waiting.len() + q.in_flight)
            .sum()
    }

    /// Sends in flight.
    pub fn in_flight(&self) -> usize {
        self.queues.values().map(|q| q.in_flight).sum()
    }

    /// The earliest time a paused partition may send again, if one is paused.
    pub fn next_retry(&self, now_ms: i64) -> Option<i64> {
        self.queues
            .values()
            .filter(|q| !q.waiting.is_empty() && q.not_before_ms > now_ms)
            .map(|q| q.not_before_ms)
            .min()
    }
}

/// How a producer reads a failed produce: an acknowledgement after all, or a failure
/// with the facts [`RetryPolicy::decide`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProduceFailure {
    /// `DuplicateSequence` with the batch's offsets: an earlier attempt of this batch
    /// appended it there. The idempotent producer takes it as its acknowledgement.
    AlreadyAppended {
        /// Offset of the batch's first record.
        base_offset: u64,
        /// Offset of its last record.
        last_offset: u64,
    },
    /// A failure: whether sending it again may succeed, and what it may have left.
    Failed {
        /// Whether a retry may succeed.
        retriable: bool,
        /// Whether this attempt may have appended the batch.
        outcome: WriteOutcome,
    },
}

/// Classifies a failed produce from the error's facts (`broker`: the broker's error, if
/// it answered; `retriable` and `outcome` as `ClientError` reports them). For an
/// idempotent producer, `DuplicateSequence` with offsets is an acknowledgement and
/// `StorageFailed` (a poisoned partition, reopened by the broker or replaced by a new
/// leader) is worth retrying, since a retry cannot duplicate; everything else is as
/// reported. `OutOfOrderSequence` stays definite and not retriable: the batch fails.
pub fn classify_failure(
    idempotent: bool,
    broker: Option<&ErrorBody>,
    retriable: bool,
    outcome: WriteOutcome,
) -> ProduceFailure {
    if idempotent {
        match broker {
            Some(ErrorBody {
                code: ErrorCode::DuplicateSequence,
                detail:
                    ErrorDetail::Duplicate {
                        base_offset,
                        last_offset,
                    },
                ..
            }) => {
                return ProduceFailure::AlreadyAppended {
                    base_offset: *base_offset,
                    last_offset: *last_offset,
                }
            }
            Some(e) if e.code == ErrorCode::StorageFailed => {
                return ProduceFailure::Failed {
                    retriable: true,
                    outcome,
                }
            }
            _ => {}
        }
    }
    ProduceFailure::Failed { retriable, outcome }
}

/// When a failed send is tried again. Pure: the driver supplies the facts of the error
/// (see `ClientError::is_retriable` and `ClientError::write_outcome`).
///
/// A failure is retried when it is retriable, the batch has been retried fewer than
/// `retries` times, and either nothing can have been appended (definite) or
/// `retry_indeterminate` allows it. Without the idempotent producer, retrying an
/// indeterminate failure (a timeout, a connection lost after the request left) may
/// append the batch twice: order is kept (the retry goes first in its partition), but
/// records may be duplicated. That is why `retry_indeterminate` defaults to off. An
/// idempotent producer sets it: the broker recognises a retried batch by its sequence
/// and answers `DuplicateSequence` with the offsets it was appended at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most retries of one batch after its first attempt.
    pub retries: u32,
    /// Backoff before the first retry; it doubles for each further one.
    pub backoff_ms: u64,
    /// Cap on the backoff.
    pub backoff_max_ms: u64,
    /// Whether a failure that may have appended the batch is retried (may duplicate).
    pub retry_indeterminate: bool,
}

impl Default for RetryPolicy {
    /// 10 retries, 100 ms doubling up to 5 s, indeterminate failures not retried.
    fn default() -> Self {
        RetryPolicy {
            retries: 10,
            backoff_ms: 100,
            backoff_max_ms: 5_000,
            retry_indeterminate: false,
        }
    }
}

impl RetryPolicy {
    /// The backoff after the `failures`-th consecutive failure (1 = the first):
    /// `backoff_ms * 2^(failures - 1)`, at most `backoff_max_ms`.
    pub fn backoff_after(&self, failures: u32) -> u64 {
        let doublings = failures.saturating_sub(1).min(63);
        self.backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(self.backoff_max_ms)
    }

    /// What to do with a batch after its `failures`-th failed attempt (1 = the first
    /// send failed): [`Outcome::RetryAt`] (not before the backoff, nor before the
    /// broker's `retry_after_ms` when it throttled) or [`Outcome::Failed`].
    pub fn decide(
        &self,
        now_ms: i64,
        failures: u32,
        retriable: bool,
        outcome: WriteOutcome,
        retry_after_ms: Option<u32>,
    ) -> Outcome {
        let allowed = retriable
            && failures <= self.retries
            && (outcome == WriteOutcome::Definite || self.retry_indeterminate);
        if !allowed {
            return Outcome::Failed;
        }
        let wait = self
            .backoff_after(failures)
            .max(retry_after_ms.map_or(0, u64::from));
        Outcome::RetryAt(now_ms.saturating_add(i64::try_from(wait).unwrap_or(i64::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::BatchView;

    fn cfg(batch_bytes_max: usize, linger_ms: u64) -> BatchConfig {
        BatchConfig {
            batch_bytes_max,
            linger_ms,
            ..BatchConfig::default()
        }
    }

    #[test]
    fn the_buffer_pool_keeps_what_fits_its_bound_and_hands_back_the_largest() {
        let pool = BufferPool::new(12_000);
        let largest = Vec::<u8>::with_capacity(5_000);
        let largest_ptr = largest.as_ptr();
        pool.put(largest);
        pool.put(Vec::new()); // no allocation: nothing to keep
        pool.put(Vec::with_capacity(4_000));
        pool.put(Vec::with_capacity(2_000));
        pool.put(Vec::with_capacity(1_001)); // 12,001 bytes would pass the bound
        assert_eq!(pool.idle_bytes(), 11_000);
        // Asked for little, it still gives the most room.
        let got = pool.take(100).unwrap();
        assert_eq!(got.as_ptr(), largest_ptr);
        assert_eq!(pool.idle_bytes(), 6_000);
        // The 4,000-byte one is too small for 4,001: dropped, and the caller allocates.
        assert!(pool.take(4_001).is_none());
        assert_eq!(pool.idle_bytes(), 2_000);
        assert_eq!(pool.take(2_000).map(|b| b.capacity()), Some(2_000));
        assert!(pool.take(0).is_none());
    }

    #[test]
    fn a_recycled_batch_buffer_is_the_next_batchs_and_the_pool_is_shared() {
        let pool = BufferPool::new(1 << 20);
        let mut a: Accumulator<u32> = Accumulator::with_pool(cfg(100_000, 0), pool.clone());
        let mut b: Accumulator<u32> = Accumulator::with_pool(cfg(100_000, 0), pool.clone());
        let value = [4u8; 500];
        a.push(0, 0, RecordRef::new(0, None, Some(&value)), 0)
            .unwrap();
        let sent = a.poll_ready(1).unwrap();
        let ptr = sent.bytes.as_ptr();
        a.recycle(sent.bytes);
        assert!(pool.idle_bytes() > 0);
        // Another topic's accumulator takes it for its next batch, which holds only
        // its own record.
        b.push(2, 3, RecordRef::new(0, None, Some(b"x")), 1)
            .unwrap();
        assert_eq!(pool.idle_bytes(), 0);
        let next = b.poll_ready(3).unwrap();
        assert_eq!(next.bytes.as_ptr(), ptr);
        let view = BatchView::parse(&next.bytes, &Limits::DEFAULT).unwrap();
        let values: Vec<_> = view.records().map(|r| r.value).collect();
        assert_eq!(values, vec![Some(&b"x"[..])]);
    }

    #[test]
    fn key_hash_is_stable_golden() {
        // FNV-1a 64, computed independently.
        assert_eq!(partition_for_key(b"", 7), 2);
        assert_eq!(partition_for_key(b"a", 1000), 996);
        let mut p = Partitioner::new(PartitionStrategy::KeyHash);
        assert_eq!(p.partition(Some(b"a"), 1000), 996);
    }

    #[test]
    fn keyless_records_stick_until_sealed_round_robin_rotates() {
        let mut p = Partitioner::new(PartitionStrategy::KeyHash);
        assert_eq!(p.partition(None, 3), 0);
        assert_eq!(p.partition(None, 3), 0);
        p.sealed(0);
        assert_eq!(p.partition(None, 3), 1);
        let mut rr = Partitioner::new(PartitionStrategy::RoundRobin);
        let got: Vec<u32> = (0..5).map(|_| rr.partition(Some(b"k"), 3)).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1]);
    }

    #[test]
    fn batches_seal_by_size_and_by_linger_with_records_in_order() {
        let mut acc = Accumulator::new(cfg(1_000, 10));
        let value = [7u8; 300];
        for i in 0..7u32 {
            acc.push(0, i % 2, RecordRef::new(0, None, Some(&value)), i)
                .unwrap();
        }
        // Partition 0 got records 0,2,4,6 (4 x ~310 bytes): one sealed batch of 3.
        let first = acc.poll_ready(0).unwrap();
        assert_eq!((first.partition, first.records.clone()), (0, vec![0, 2, 4]));
        assert!(first.bytes.len() <= 1_000);
        let view = BatchView::parse(&first.bytes, &Limits::default()).unwrap();
        assert_eq!(view.records().count(), 3);
        assert!(acc.poll_ready(5).is_none(), "linger not passed");
        assert_eq!(acc.next_deadline(), Some(10));
        let mut rest: Vec<(u32, Vec<u32>)> = std::iter::from_fn(|| acc.poll_ready(10))
            .map(|b| (b.partition, b.records))
            .collect();
        rest.sort();
        assert_eq!(rest, vec![(0, vec![6]), (1, vec![1, 3, 5])]);
        assert!(acc.is_empty());
    }

    #[test]
    fn a_busy_partitions_batch_keeps_filling_past_its_linger() {
        let mut acc = Accumulator::new(cfg(100_000, 0));
        let mut queue: SendQueue<u32> = SendQueue::new(1);
        queue.enqueue(0, 99);
        assert!(queue.next(0).is_some());
        assert!(queue.is_busy(0) && !queue.is_busy(1));
        let value = [3u8; 100];
        for i in 0..4u32 {
            acc.push(0, i % 2, RecordRef::new(0, None, Some(&value)), i)
                .unwrap();
        }
        // Linger 0 has passed for both, but partition 0 has a request in flight.
        let b = acc.poll_ready_unless(5, |p| queue.is_busy(p)).unwrap();
        assert_eq!((b.partition, b.records), (1, vec![1, 3]));
        assert!(acc.poll_ready_unless(5, |p| queue.is_busy(p)).is_none());
        assert_eq!(
            acc.next_deadline_unless(|p| queue.is_busy(p)),
            None,
            "no timer while busy"
        );
        acc.push(0, 0, RecordRef::new(0, None, Some(&value)), 4)
            .unwrap();
        queue.complete(0, Outcome::Done, None);
        assert!(!queue.is_busy(0));
        let b = acc.poll_ready_unless(6, |p| queue.is_busy(p)).unwrap();
        assert_eq!(
            (b.partition, b.records),
            (0, vec![0, 2, 4]),
            "one grown batch"
        );
    }

    #[test]
    fn buffer_limit_applies_backpressure_and_release_frees_it() {
        let mut acc = Accumulator::new(BatchConfig {
            buffer_bytes_max: 1_000,
            ..cfg(100_000, 0)
        });
        let value = [1u8; 400];
        acc.push(0, 0, RecordRef::new(0, None, Some(&value)), 0)
            .unwrap();
        acc.push(0, 0, RecordRef::new(0, None, Some(&value)), 1)
            .unwrap();
        assert_eq!(
            acc.push(0, 0, RecordRef::new(0, None, Some(&value)), 2),
            Err(Rejected {
                error: PushError::BufferFull,
                handle: 2
            })
        );
        let b = acc.poll_ready(0).unwrap();
        acc.release(acc.buffered_bytes());
        assert_eq!(b.records, vec![0, 1]);
        acc.push(0, 0, RecordRef::new(0, None, Some(&value)), 2)
            .unwrap();
    }

    #[test]
    fn an_oversized_record_is_rejected_alone() {
        let mut acc = Accumulator::new(BatchConfig {
            limits: Limits {
                value_bytes_max: 10,
                ..Limits::default()
            },
            ..cfg(1_000, 0)
        });
        let err = acc
            .push(0, 0, RecordRef::new(0, None, Some(&[0u8; 11])), 7)
            .unwrap_err();
        assert!(matches!(
            err.error,
            PushError::Invalid(BatchError::RecordTooLarge { .. })
        ));
        assert_eq!(err.handle, 7, "the handle comes back");
        assert!(acc.is_empty());
    }

    #[test]
    fn send_queue_keeps_partition_order_through_retries() {
        let mut q = SendQueue::new(1);
        q.enqueue(0, "a0");
        q.enqueue(0, "a1");
        q.enqueue(1, "b0");
        assert_eq!(q.next(0), Some((0, "a0")));
        assert_eq!(q.next(0), Some((1, "b0")), "partition 0 has one in flight");
        assert_eq!(q.next(0), None);
        q.complete(0, Outcome::RetryAt(50), Some("a0"));
        assert_eq!(q.next(10), None, "backing off");
        assert_eq!(q.next_retry(10), Some(50));
        assert_eq!(q.next(50), Some((0, "a0")), "the retried batch goes first");
        q.complete(0, Outcome::Done, None);
        assert_eq!(q.next(50), Some((0, "a1")));
        q.complete(0, Outcome::Done, None);
        q.complete(1, Outcome::Done, None);
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn sticky_choice_keeps_moving_past_the_partition_count() {
        let mut p = Partitioner::new(PartitionStrategy::KeyHash);
        let mut seen = Vec::new();
        for _ in 0..7 {
            let chosen = p.partition(None, 3);
            seen.push(chosen);
            p.sealed(chosen);
            p.sealed(chosen); // a second notice for the same batch changes nothing
        }
        assert_eq!(seen, vec![0, 1, 2, 0, 1, 2, 0]);
        let mut rr = Partitioner::new(PartitionStrategy::RoundRobin);
        let got: Vec<u32> = (0..4).map(|_| rr.partition(None, 2)).collect();
        assert_eq!(got, vec![0, 1, 0, 1]);
    }

    #[test]
    fn releasing_every_batch_frees_exactly_what_was_buffered() {
        let mut acc = Accumulator::new(cfg(500, 0));
        let value = [3u8; 90];
        let headers = [("h", Some(&b"v"[..]))];
        for i in 0..40u32 {
            let record = RecordRef {
                headers: &headers,
                ..RecordRef::new(i64::from(i), Some(b"key"), Some(&value))
            };
            acc.push(0, i % 3, record, i).unwrap();
        }
        assert!(acc.buffered_bytes() > 0);
        let batches: Vec<ReadyBatch<u32>> = std::iter::from_fn(|| acc.poll_ready(0)).collect();
        let mut held: usize = batches.iter().map(|b| b.bytes.len()).sum();
        assert_eq!(acc.buffered_bytes(), held, "header bytes count too");
        let mut handles = Vec::new();
        for b in batches {
            assert!(b.bytes.len() <= 500, "batch of {} bytes", b.bytes.len());
            acc.release(b.bytes.len());
            held -= b.bytes.len();
            assert_eq!(acc.buffered_bytes(), held);
            handles.extend(b.records);
        }
        handles.sort_unstable();
        assert_eq!(handles, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_over_a_record_limit_leaves_the_open_batch_alone() {
        let mut acc = Accumulator::new(BatchConfig {
            limits: Limits {
                value_bytes_max: 10,
                ..Limits::default()
            },
            ..cfg(1_000, 100)
        });
        acc.push(0, 0, RecordRef::new(0, None, Some(b"ok")), 1)
            .unwrap();
        let held = acc.buffered_bytes();
        assert!(matches!(
            acc.push(0, 0, RecordRef::new(0, None, Some(&[0u8; 11])), 2),
            Err(Rejected {
                error: PushError::Invalid(BatchError::RecordTooLarge { .. }),
                handle: 2
            })
        ));
        assert_eq!(acc.buffered_bytes(), held);
        assert!(acc.poll_ready(0).is_none(), "the open batch was not sealed");
        let b = acc.poll_ready(100).unwrap();
        assert_eq!(b.records, vec![1]);
    }

    #[test]
    fn a_batch_full_by_record_count_is_sealed_and_the_record_goes_in_the_next() {
        let mut acc = Accumulator::new(BatchConfig {
            limits: Limits {
                records_max: 2,
                ..Limits::default()
            },
            ..cfg(100_000, 0)
        });
        for i in 0..5u32 {
            acc.push(0, 0, RecordRef::new(0, None, Some(b"v")), i)
                .unwrap();
        }
        let batches: Vec<Vec<u32>> = std::iter::from_fn(|| acc.poll_ready(0))
            .map(|b| b.records)
            .collect();
        assert_eq!(batches, vec![vec![0, 1], vec![2, 3], vec![4]]);
    }

    #[test]
    fn record_bytes_max_bounds_what_a_record_adds() {
        let mut acc = Accumulator::new(cfg(1 << 20, 0));
        let headers = [("a", Some(&[1u8; 200][..])), ("bb", None)];
        for (key, value) in [
            (None, None),
            (Some(&b"k"[..]), Some(&[9u8; 300][..])),
            (Some(&[1u8; 20_000][..]), None),
        ] {
            for hs in [&headers[..], &[]] {
                let record = RecordRef {
                    headers: hs,
                    ..RecordRef::new(-5, key, value)
                };
                let before = acc.buffered_bytes();
                acc.push(0, 0, record, ()).unwrap();
                let grown = acc.buffered_bytes() - before;
                assert!(grown <= record_bytes_max(&record), "{grown} bytes");
            }
        }
    }

    #[test]
    fn send_queue_partitions_take_turns() {
        let mut q = SendQueue::new(1);
        for p in 0..3u32 {
            for i in 0..3u32 {
                q.enqueue(p, (p, i));
            }
        }
        // A driver with one send in flight in total: partition 0 must not win every time.
        let mut order = Vec::new();
        while let Some((p, b)) = q.next(0) {
            order.push(b);
            q.complete(p, Outcome::Done, None);
        }
        assert_eq!(
            order,
            vec![
                (0, 0),
                (1, 0),
                (2, 0),
                (0, 1),
                (1, 1),
                (2, 1),
                (0, 2),
                (1, 2),
                (2, 2)
            ]
        );
        assert_eq!(q.pending(), 0);
    }

    #[test]
    fn drain_waiting_takes_queued_batches_and_leaves_in_flight_ones() {
        let mut q = SendQueue::new(1);
        q.enqueue(0, "a0");
        q.enqueue(0, "a1");
        q.enqueue(2, "c0");
        q.enqueue(2, "c1");
        assert_eq!(q.next(0), Some((0, "a0")));
        q.complete(2, Outcome::RetryAt(1_000), None);
        assert_eq!(q.drain_waiting(1), vec![(2, "c0"), (2, "c1")]);
        assert_eq!(q.pending(), 2, "a0 in flight, a1 waiting");
        assert_eq!(q.drain_waiting(0), vec![(0, "a1")]);
        assert_eq!(q.in_flight(), 1);
        q.complete(0, Outcome::Failed, None);
        assert_eq!(q.pending(), 0);
        q.enqueue(2, "c2");
        assert_eq!(
            q.next(0),
            Some((2, "c2")),
            "a drained partition is not paused"
        );
    }

    #[test]
    fn drain_expired_takes_only_the_expired_front_of_each_partition() {
        let mut q = SendQueue::new(1);
        for (p, deadline) in [(0, 5), (0, 9), (0, 6), (1, 20), (2, 1)] {
            q.enqueue(p, deadline);
        }
        assert_eq!(q.next(0), Some((0, 5)), "in flight: not drained");
        assert_eq!(q.min_front(|d| *d), Some(1));
        // Partition 0 stops at 9 (its 6 is behind it); 20 is not due.
        assert_eq!(q.drain_expired(|d| *d <= 8), vec![(2, 1)]);
        assert_eq!(q.drain_expired(|d| *d <= 9), vec![(0, 9), (0, 6)]);
        assert_eq!(q.min_front(|d| *d), Some(20));
        assert_eq!(q.pending(), 2);
    }

    #[test]
    fn retry_policy_backs_off_and_never_retries_an_indeterminate_write_by_default() {
        let policy = RetryPolicy {
            retries: 3,
            backoff_ms: 100,
            backoff_max_ms: 250,
            retry_indeterminate: false,
        };
        let definite = WriteOutcome::Definite;
        assert_eq!(
            policy.decide(10, 1, true, definite, None),
            Outcome::RetryAt(110)
        );
        assert_eq!(
            policy.decide(10, 2, true, definite, None),
            Outcome::RetryAt(210)
        );
        assert_eq!(
            policy.decide(10, 3, true, definite, None),
            Outcome::RetryAt(260)
        );
        assert_eq!(policy.decide(10, 4, true, definite, None), Outcome::Failed);
        assert_eq!(policy.decide(10, 1, false, definite, None), Outcome::Failed);
        assert_eq!(
            policy.decide(10, 1, true, definite, Some(1_000)),
            Outcome::RetryAt(1_010),
            "the broker's retry_after wins when longer"
        );
        let indeterminate = WriteOutcome::Indeterminate;
        assert_eq!(
            policy.decide(10, 1, true, indeterminate, None),
            Outcome::Failed
        );
        let opted_in = RetryPolicy {
            retry_indeterminate: true,
            ..policy
        };
        assert_eq!(
            opted_in.decide(10, 1, true, indeterminate, None),
            Outcome::RetryAt(110)
        );
        assert_eq!(policy.backoff_after(u32::MAX), 250);
    }

    fn stamp(bytes: &[u8]) -> (i64, i16, i32, u32) {
        let h = BatchView::parse(bytes, &Limits::default()).unwrap();
        let h = h.header();
        (
            h.producer_id,
            h.producer_epoch,
            h.base_sequence,
            h.record_count,
        )
    }

    #[test]
    fn an_idempotent_producers_batches_get_consecutive_sequences_per_partition() {
        let mut plain = Accumulator::new(cfg(100_000, 0));
        plain
            .push(0, 0, RecordRef::new(0, None, Some(b"v")), 0)
            .unwrap();
        let b = plain.poll_ready(0).unwrap();
        assert_eq!(stamp(&b.bytes), (-1, -1, -1, 1), "not idempotent: no stamp");

        let mut acc = Accumulator::new(cfg(100_000, 0));
        acc.set_producer(42, 0);
        let mut stamps = Vec::new();
        for round in 0..3u32 {
            for p in 0..2u32 {
                for i in 0..=round + p {
                    acc.push(0, p, RecordRef::new(0, None, Some(b"v")), i)
                        .unwrap();
                }
            }
            acc.seal_all();
            while let Some(b) = acc.poll_ready(0) {
                stamps.push((b.partition, stamp(&b.bytes)));
            }
        }
        stamps.sort_by_key(|(p, s)| (*p, s.2));
        assert_eq!(
            stamps,
            vec![
                (0, (42, 0, 0, 1)),
                (0, (42, 0, 1, 2)),
                (0, (42, 0, 3, 3)),
                (1, (42, 0, 0, 2)),
                (1, (42, 0, 2, 3)),
                (1, (42, 0, 5, 4)),
            ]
        );
        assert_eq!(acc.sequences().unwrap().peek(0), (0, 6));
    }

    #[test]
    fn restarting_a_partition_restamps_what_follows_the_failed_batch() {
        let mut acc = Accumulator::new(cfg(100_000, 0));
        acc.set_producer(7, 0);
        let mut queue: SendQueue<Vec<u8>> = SendQueue::new(1);
        for i in 0..4u32 {
            acc.push(
                0,
                0,
                RecordRef::new(i64::from(i), Some(b"k"), Some(b"v")),
                i,
            )
            .unwrap();
            acc.seal_all();
            let b = acc.poll_ready(0).unwrap();
            queue.enqueue(0, b.bytes);
        }
        // One more sealed but not handed out, and one on another partition.
        acc.push(0, 0, RecordRef::new(9, None, Some(b"w")), 9)
            .unwrap();
        acc.push(0, 1, RecordRef::new(9, None, Some(b"x")), 10)
            .unwrap();
        acc.seal_all();
        // Batch seq 0 is in flight and fails for good.
        let (_, failed) = queue.next(0).unwrap();
        assert_eq!(stamp(&failed).2, 0);
        queue.complete(0, Outcome::Failed, None);
        let before: Vec<Vec<u8>> = queue.waiting_mut(0).map(|b| b.clone()).collect();
        acc.restart_sequences(0, queue.waiting_mut(0)).unwrap();
        let after: Vec<(i64, i16, i32, u32)> = queue.waiting_mut(0).map(|b| stamp(b)).collect();
        assert_eq!(after, vec![(7, 1, 0, 1), (7, 1, 1, 1), (7, 1, 2, 1)]);
        for (old, new) in before.iter().zip(queue.waiting_mut(0)) {
            assert_eq!(old.len(), new.len());
            let (o, n) = (
                BatchView::parse(old, &Limits::default()).unwrap(),
                BatchView::parse(new, &Limits::default()).unwrap(),
            );
            let records =
                |v: &BatchView<'_>| v.records().map(|r| r.to_record()).collect::<Vec<_>>();
            assert_eq!(records(&o), records(&n), "the same records");
        }
        let mut rest: Vec<(u32, (i64, i16, i32, u32))> = std::iter::from_fn(|| acc.poll_ready(0))
            .map(|b| (b.partition, stamp(&b.bytes)))
            .collect();
        rest.sort();
        assert_eq!(rest, vec![(0, (7, 1, 3, 1)), (1, (7, 0, 0, 1))]);
        acc.push(0, 0, RecordRef::new(9, None, Some(b"y")), 11)
            .unwrap();
        acc.seal_all();
        assert_eq!(stamp(&acc.poll_ready(0).unwrap().bytes), (7, 1, 4, 1));
    }

    #[test]
    fn an_idempotent_producer_reads_a_duplicate_as_its_acknowledgement() {
        let dup = ErrorBody::new(ErrorCode::DuplicateSequence, "dup").with_detail(
            ErrorDetail::Duplicate {
                base_offset: 10,
                last_offset: 12,
            },
        );
        let definite = WriteOutcome::Definite;
        assert_eq!(
            classify_failure(true, Some(&dup), false, definite),
            ProduceFailure::AlreadyAppended {
                base_offset: 10,
                last_offset: 12
            }
        );
        let failed = |retriable, outcome| ProduceFailure::Failed { retriable, outcome };
        assert_eq!(
            classify_failure(false, Some(&dup), false, definite),
            failed(false, definite),
            "not idempotent: not ours"
        );
        let stale = ErrorBody::new(ErrorCode::DuplicateSequence, "stale");
        assert_eq!(
            classify_failure(true, Some(&stale), false, definite),
            failed(false, definite)
        );
        let poisoned = ErrorBody::new(ErrorCode::StorageFailed, "fsync");
        let indeterminate = WriteOutcome::Indeterminate;
        assert_eq!(
            classify_failure(true, Some(&poisoned), false, indeterminate),
            failed(true, indeterminate)
        );
        assert_eq!(
            classify_failure(false, Some(&poisoned), false, indeterminate),
            failed(false, indeterminate)
        );
        let gap = ErrorBody::new(ErrorCode::OutOfOrderSequence, "gap");
        assert_eq!(
            classify_failure(true, Some(&gap), false, definite),
            failed(false, definite)
        );
        assert_eq!(
            classify_failure(true, None, true, indeterminate),
            failed(true, indeterminate)
        );
    }

    #[test]
    fn sequences_wrap_and_epochs_run_out() {
        assert_eq!(add_sequence(i32::MAX, 1), 0);
        assert_eq!(add_sequence(i32::MAX - 1, 5), 3);
        let mut s = Sequences::new(1, i16::MAX - 1);
        s.partitions.insert(3, (i16::MAX - 1, i32::MAX - 1));
        assert_eq!(s.take(3, 4), (i16::MAX - 1, i32::MAX - 1));
        assert_eq!(s.peek(3), (i16::MAX - 1, 2));
        assert_eq!(s.restart(3), Ok(i16::MAX));
        assert_eq!(s.restart(3), Err(SequenceError::EpochExhausted));
        assert_eq!(s.peek(4), (i16::MAX - 1, 0));
    }

    proptest::proptest! {
        /// Whatever the pushes, every record comes out exactly once, in push order per
        /// partition, every batch parses to the records pushed, and releasing every batch
        /// empties the buffer.
        #[test]
        fn accumulator_loses_nothing_and_keeps_order(
            pushes in proptest::collection::vec((0u32..4, 0usize..300, 0i64..50), 1..200),
            batch_bytes_max in 100usize..3_000,
            linger_ms in 0u64..20,
        ) {
            let mut acc = Accumulator::new(cfg(batch_bytes_max, linger_ms));
            let mut out: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
            let drain = |acc: &mut Accumulator<usize>, now: i64, out: &mut BTreeMap<u32, Vec<usize>>| {
                while let Some(b) = acc.poll_ready(now) {
                    let view = BatchView::parse(&b.bytes, &Limits::default()).unwrap();
                    let values: Vec<usize> = view.records().map(|r| r.value.unwrap().len()).collect();
                    proptest::prop_assert_eq!(values.len(), b.records.len());
                    acc.release(b.bytes.len());
                    out.entry(b.partition).or_default().extend(b.records);
                }
                Ok(())
            };
            let mut now = 0i64;
            for (i, (partition, len, dt)) in pushes.iter().enumerate() {
                now += dt;
                let value = vec![0u8; *len];
                acc.push(now, *partition, RecordRef::new(now, None, Some(&value)), i).unwrap();
                drain(&mut acc, now, &mut out)?;
            }
            acc.seal_all();
            drain(&mut acc, now, &mut out)?;
            proptest::prop_assert!(acc.is_empty());
            proptest::prop_assert_eq!(acc.buffered_bytes(), 0);
            for (partition, got) in out {
                let want: Vec<usize> = pushes
                    .iter()
                    .enumerate()
                    .filter(|(_, (p, _, _))| *p == partition)
                    .map(|(i, _)| i)
                    .collect();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }
}
