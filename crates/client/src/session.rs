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
//!    to the front of its partition's queue, after a backoff), or failed.

use std::collections::{BTreeMap, VecDeque};

use sluice_proto::{BatchBuilder, BatchError, Limits};

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
    /// batches, even spread).
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
        match (self.strategy, key) {
            (PartitionStrategy::KeyHash, Some(k)) => partition_for_key(k, partitions),
            (PartitionStrategy::KeyHash, None) => self.next % partitions,
            (PartitionStrategy::RoundRobin, _) => {
                let p = self.next % partitions;
                self.next = self.next.wrapping_add(1);
                p
            }
        }
    }

    /// A keyless batch was sealed on `partition`: the sticky choice moves on.
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
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
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

/// A sealed batch ready to send, with the caller's handle for each record.
#[derive(Debug)]
pub struct ReadyBatch<T> {
    pub partition: u32,
    pub bytes: Vec<u8>,
    /// One handle per record, in record order (record `i` gets offset `base + i`).
    pub records: Vec<T>,
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
}

impl<T> Accumulator<T> {
    /// An empty accumulator.
    pub fn new(config: BatchConfig) -> Self {
        Self {
            config,
            open: BTreeMap::new(),
            sealed: VecDeque::new(),
            buffered_bytes: 0,
        }
    }

    /// Bytes held, open or sealed, not yet released.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Adds a record to `partition`'s open batch. Returns the partition whose batch
    /// it sealed, if any (for [`Partitioner::sealed`]).
    pub fn push(
        &mut self,
        now_ms: i64,
        partition: u32,
        record: RecordRef<'_>,
        handle: T,
    ) -> Result<Option<u32>, PushError> {
        let RecordRef {
            timestamp: ts,
            key,
            value,
            headers,
        } = record;
        // An estimate of the record's encoded size (varints and attributes aside).
        let size = key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len) + 16;
        if self.buffered_bytes > 0 && self.buffered_bytes + size > self.config.buffer_bytes_max {
            return Err(PushError::BufferFull);
        }
        let mut sealed = None;
        let max = self.config.batch_bytes_max;
        if self
            .open
            .get(&partition)
            .is_some_and(|b| !b.builder.is_empty() && b.builder.encoded_len() + size > max)
        {
            self.seal(partition);
            sealed = Some(partition);
        }
        let mut tries = 0;
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
                // Alone in a fresh batch it still breaks a limit: it can never go.
                Err(e) if open.builder.is_empty() || tries > 0 => {
                    if open.builder.is_empty() {
                        self.open.remove(&partition);
                    }
                    return Err(PushError::Invalid(e));
                }
                // The batch is full by a batch limit: seal it, retry in a fresh one.
                Err(_) => {
                    self.seal(partition);
                    sealed = Some(partition);
                    tries += 1;
                }
            }
        }
    }

    fn open_batch(&mut self, partition: u32, now_ms: i64) -> &mut OpenBatch<T> {
        let limits = self.config.limits;
        self.open.entry(partition).or_insert_with(|| OpenBatch {
            builder: BatchBuilder::new(limits),
            records: Vec::new(),
            opened_ms: now_ms,
        })
    }

    fn seal(&mut self, partition: u32) {
        let Some(open) = self.open.remove(&partition) else {
            return;
        };
        match open.builder.finish() {
            Ok(bytes) => self.sealed.push_back(ReadyBatch {
                partition,
                bytes,
                records: open.records,
            }),
            // An empty builder has no records to lose.
            Err(_) => debug_assert!(open.records.is_empty()),
        }
    }

    /// The next batch to send: sealed ones first, then open ones whose linger passed.
    pub fn poll_ready(&mut self, now_ms: i64) -> Option<ReadyBatch<T>> {
        if self.sealed.is_empty() {
            let linger = i64::try_from(self.config.linger_ms).unwrap_or(i64::MAX);
            let due: Vec<u32> = self
                .open
                .iter()
                .filter(|(_, b)| now_ms.saturating_sub(b.opened_ms) >= linger)
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
        let linger = i64::try_from(self.config.linger_ms).unwrap_or(i64::MAX);
        self.open
            .values()
            .map(|b| b.opened_ms.saturating_add(linger))
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
#[derive(Debug)]
pub struct SendQueue<B> {
    in_flight_per_partition_max: usize,
    queues: BTreeMap<u32, PartitionQueue<B>>,
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
        }
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
        let (p, q) = self.queues.iter_mut().find(|(_, q)| {
            q.in_flight < max && !q.waiting.is_empty() && q.not_before_ms <= now_ms
        })?;
        let batch = q.waiting.pop_front()?;
        q.in_flight += 1;
        Some((*p, batch))
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

    /// Batches waiting or in flight.
    pub fn pending(&self) -> usize {
        self.queues
            .values()
            .map(|q| q.waiting.len() + q.in_flight)
            .sum()
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
            Err(PushError::BufferFull)
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
            .push(0, 0, RecordRef::new(0, None, Some(&[0u8; 11])), ())
            .unwrap_err();
        assert!(matches!(
            err,
            PushError::Invalid(BatchError::RecordTooLarge { .. })
        ));
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
}
