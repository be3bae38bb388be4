//! The consumer: assigned partitions in, records out in offset order per partition.
//!
//! Model. A [`Consumer`] owns, per assigned partition, a position (the offset of the next
//! record it hands out), a fetch offset (where its next fetch starts) and a small buffer
//! of fetched records. It has no background task: fetches run while the consumer is
//! polled ([`Consumer::next`], [`Consumer::poll`], or its [`Stream`] impl), each
//! partition with at most one fetch in flight, all of them polled together. A fetch for
//! a partition starts while fewer than `fetch_max_bytes` of its records are buffered, so
//! the next response is on its way while the current one is consumed; a partition that
//! is caught up long-polls (`max_wait_ms`) and answers as soon as data arrives.
//!
//! Every wait is cancel-safe: the state lives in the consumer, so a `next()` dropped by a
//! `select!` or a timeout loses nothing.
//!
//! Offsets. A fetch returns whole stored batches, the first of which may start before
//! the offset asked for: records below the position are skipped. An offset outside the
//! log (`OffsetOutOfRange`, with the valid range) moves the position per
//! [`ConsumerConfig::auto_reset`], or surfaces as [`ConsumerError::OffsetOutOfRange`]
//! and pauses the partition until [`Consumer::seek`].
//!
//! Errors. Retriable fetch failures (a lost connection, a busy broker) are retried with
//! exponential backoff, and surfaced every `retries` consecutive failures so a consumer of
//! a topic that is gone learns of it; other failures surface and pause the partition
//! until it is sought again. A paused partition's error is returned again whenever
//! nothing else is ready, so a loop on `next()` cannot wait on it forever.
#![warn(missing_docs)]

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, Stream, StreamExt};
use futures_util::FutureExt;
use sluice_proto::wire::{ErrorCode, ErrorDetail, FetchOk, OffsetOk, OffsetSpec};
use sluice_proto::{batches, BatchError, Limits};

use crate::error::ClientError;
use crate::session::RetryPolicy;
use crate::transport::Client;

/// Default [`ConsumerConfig::fetch_max_bytes`]: 1 MiB.
pub const FETCH_MAX_BYTES_DEFAULT: u32 = 1 << 20;
/// Default [`ConsumerConfig::max_wait_ms`].
pub const MAX_WAIT_MS_DEFAULT: u32 = 500;
/// Default [`ConsumerConfig::max_poll_records`].
pub const MAX_POLL_RECORDS_DEFAULT: usize = 500;
/// Default [`ConsumerConfig::retries`].
pub const FETCH_RETRIES_DEFAULT: u32 = 10;

/// Where to move a partition's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeekTo {
    /// This offset. Outside the log, the next fetch answers `OffsetOutOfRange` (handled
    /// per `auto_reset`); at the high watermark it waits for new records.
    Offset(u64),
    /// The oldest retained record.
    Earliest,
    /// The high watermark: only records produced from now on.
    Latest,
    /// The first record whose timestamp is at least this (ms since the Unix epoch); the
    /// high watermark when no record is that new.
    Timestamp(i64),
}

/// What a partition with no valid position does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AutoReset {
    /// Move to the oldest retained record (nothing more is skipped than retention
    /// already removed). The default.
    #[default]
    Earliest,
    /// Move to the high watermark (skip to new records).
    Latest,
    /// Do not move: surface [`ConsumerError::OffsetOutOfRange`] (or
    /// [`ConsumerError::NoPosition`] for a partition assigned without a seek) and pause
    /// the partition until [`Consumer::seek`].
    Error,
}

/// How a [`Consumer`] fetches. `Default` gives the `*_DEFAULT` constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Payload budget of one fetch, per partition (the first batch comes whole even when
    /// larger). Also the buffer size that triggers the next fetch: a partition holds at
    /// most about twice this. Default 1 MiB.
    pub fetch_max_bytes: u32,
    /// How long a caught-up fetch waits at the broker for new records (long-poll).
    /// Default 500 ms; at most `wait_ms_max` (5 min).
    pub max_wait_ms: u32,
    /// Where a partition goes when its position is outside the log, or when it was
    /// assigned without a seek. Default [`AutoReset::Earliest`].
    pub auto_reset: AutoReset,
    /// Most records [`Consumer::poll`] returns at once. Default 500.
    pub max_poll_records: usize,
    /// A partition's retriable fetch failures are surfaced every this many in a row
    /// (and retried regardless). Default 10.
    pub retries: u32,
    /// Backoff after a failed fetch; doubles per consecutive failure. Default 100 ms.
    pub retry_backoff_ms: u64,
    /// Cap on the backoff. Default 5 s.
    pub retry_backoff_max_ms: u64,
    /// Limits fetched batches are validated against (at least the broker's). Default
    /// `Limits::DEFAULT`.
    pub batch_limits: Limits,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            fetch_max_bytes: FETCH_MAX_BYTES_DEFAULT,
            max_wait_ms: MAX_WAIT_MS_DEFAULT,
            auto_reset: AutoReset::Earliest,
            max_poll_records: MAX_POLL_RECORDS_DEFAULT,
            retries: FETCH_RETRIES_DEFAULT,
            retry_backoff_ms: 100,
            retry_backoff_max_ms: 5_000,
            batch_limits: Limits::DEFAULT,
        }
    }
}

/// One consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// The record's topic (one name shared by the records of a fetch).
    pub topic: Arc<str>,
    /// Its partition.
    pub partition: u32,
    /// Its offset.
    pub offset: u64,
    /// Its timestamp, ms since the Unix epoch.
    pub timestamp: i64,
    /// Its key (`None`: null). Like the value, a slice of the fetched response, not
    /// a copy.
    pub key: Option<Bytes>,
    /// Its value (`None`: null).
    pub value: Option<Bytes>,
    /// Its headers in order: (key, value), a null value as `None`.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// What a buffered record counts against `fetch_max_bytes` on top of its data, so a
/// fetch of many empty records still fills the buffer.
const RECORD_OVERHEAD_BYTES: usize = 64;

impl ConsumerRecord {
    fn bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
            .sum();
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.as_ref().map_or(0, Bytes::len)
            + headers
            + RECORD_OVERHEAD_BYTES
    }
}

/// What consuming can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// `next`/`poll` with no partition assigned.
    #[error("no partition is assigned")]
    NothingAssigned,
    /// `seek` or `position` on a partition that is not assigned.
    #[error("{topic}/{partition} is not assigned")]
    NotAssigned {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// The partition was assigned without a seek and `auto_reset` is `Error`.
    #[error("{topic}/{partition} has no position (auto_reset is Error): seek first")]
    NoPosition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
    },
    /// The position is outside the log, whose valid fetch offsets are
    /// `log_start..=log_end` (`log_end` is the high watermark); `auto_reset` is `Error`.
    /// The partition is paused until it is sought.
    #[error("{topic}/{partition}: offset {offset} is outside {log_start}..={log_end}")]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset that was fetched.
        offset: u64,
        /// The oldest retained offset.
        log_start: u64,
        /// The high watermark.
        log_end: u64,
    },
    /// A fetched batch failed validation (or the batches were out of order). The
    /// partition is paused until it is sought (past the damage, if need be).
    #[error("{topic}/{partition}: bad batch at offset {offset}: {source}")]
    CorruptBatch {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The fetch offset of the response that held it.
        offset: u64,
        /// What was wrong.
        #[source]
        source: BatchError,
    },
    /// A request failed. Retriable failures are retried (and surfaced every `retries`
    /// in a row); others pause the partition until it is sought.
    #[error("{topic}{}: {source}", partition.map(|p| format!("/{p}")).unwrap_or_default())]
    Request {
        /// The topic.
        topic: String,
        /// The partition, when the request was for one.
        partition: Option<u32>,
        /// The failure.
        #[source]
        source: ClientError,
    },
}

impl ConsumerError {
    /// Whether this error is about `topic`/`partition`'s position or fetches.
    fn is_about(&self, topic: &str, partition: u32) -> bool {
        match self {
            ConsumerError::NoPosition {
                topic: t,
                partition: p,
            }
            | ConsumerError::OffsetOutOfRange {
                topic: t,
                partition: p,
                ..
            }
            | ConsumerError::CorruptBatch {
                topic: t,
                partition: p,
                ..
            } => t == topic && *p == partition,
            ConsumerError::Request {
                topic: t,
                partition: p,
                ..
            } => t == topic && *p == Some(partition),
            ConsumerError::NothingAssigned | ConsumerError::NotAssigned { .. } => false,
        }
    }

    /// The broker's error code, for a [`ConsumerError::Request`] the broker answered.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ConsumerError::Request { source, .. } => source.broker_error().map(|e| e.code),
            ConsumerError::OffsetOutOfRange { .. } => Some(ErrorCode::OffsetOutOfRange),
            _ => None,
        }
    }
}

type Key = (String, u32);

#[derive(Debug, Default)]
struct PartitionState {
    /// Offset of the next record handed out; `None` until sought or reset.
    position: Option<u64>,
    /// Where the next fetch starts (meaningful once `position` is set).
    fetch_offset: u64,
    /// Bumped by every seek: answers to requests of an older epoch are dropped.
    epoch: u64,
    in_flight: bool,
    records: VecDeque<ConsumerRecord>,
    buffered_bytes: usize,
    failures: u32,
    /// Set with the error that paused the partition; cleared by a seek.
    paused: Option<ConsumerError>,
    high_watermark: Option<u64>,
}

enum Answer {
    Fetch {
        offset: u64,
        result: Result<(FetchOk, Bytes), ClientError>,
    },
    Reset {
        result: Result<OffsetOk, ClientError>,
    },
}

struct Done {
    key: Key,
    epoch: u64,
    answer: Answer,
}

type Work = Pin<Box<dyn Future<Output = Done> + Send>>;

/// A consumer of explicitly assigned partitions. Made by [`Client::consumer`].
///
/// Implements [`Stream`] of `Result<ConsumerRecord, ConsumerError>`; the stream ends
/// (`None`) only while no partition is assigned.
pub struct Consumer {
    client: Client,
    config: ConsumerConfig,
    policy: RetryPolicy,
    partitions: BTreeMap<Key, PartitionState>,
    /// Where the next record is looked for first, so partitions take turns.
    cursor: Option<Key>,
    work: FuturesUnordered<Work>,
    errors: VecDeque<ConsumerError>,
    next_epoch: u64,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .field("partitions", &self.partitions.len())
            .field("in_flight", &self.work.len())
            .finish()
    }
}

impl Client {
    /// A consumer fetching over this client's connection. Fails with
    /// [`ClientError::Config`] for an unusable `config`.
    pub fn consumer(&self, config: ConsumerConfig) -> Result<Consumer, ClientError> {
        let bad = |what: &str| Err(ClientError::Config(format!("consumer: {what}")));
        if config.fetch_max_bytes == 0 {
            return bad("fetch_max_bytes must be positive");
        }
        if config.max_wait_ms > self.options().frame_limits.wait_ms_max {
            return bad("max_wait_ms must be at most wait_ms_max");
        }
        if config.max_poll_records == 0 {
            return bad("max_poll_records must be positive");
        }
        if config.retry_backoff_max_ms < config.retry_backoff_ms {
            return bad("retry_backoff_max_ms must be at least retry_backoff_ms");
        }
        Ok(Consumer {
            client: self.clone(),
            policy: RetryPolicy {
                retries: config.retries,
                backoff_ms: config.retry_backoff_ms,
                backoff_max_ms: config.retry_backoff_max_ms,
                retry_indeterminate: true,
            },
            config,
            partitions: BTreeMap::new(),
            cursor: None,
            work: FuturesUnordered::new(),
            errors: VecDeque::new(),
            next_epoch: 1,
        })
    }
}

impl Consumer {
    /// Adds `partitions` of `topic` to the assignment. A partition already assigned
    /// keeps its position; a new one starts per `auto_reset` unless sought first.
    pub fn assign(&mut self, topic: &str, partitions: impl IntoIterator<Item = u32>) {
        for p in partitions {
            self.partitions.entry((topic.to_owned(), p)).or_default();
        }
    }

    /// Assigns every partition of `topic` (from a metadata request) and returns how
    /// many there are.
    pub async fn assign_all(&mut self, topic: &str) -> Result<u32, ConsumerError> {
        let request_error = |source| ConsumerError::Request {
            topic: topic.to_owned(),
            partition: None,
            source,
        };
        let metadata = self
            .client
            .metadata(Some(vec![topic.to_owned()]))
            .await
            .map_err(request_error)?;
        let tm = metadata
            .topics
            .into_iter()
            .find(|t| t.name == topic)
            .ok_or_else(|| {
                request_error(ClientError::Protocol {
                    reason: "metadata without the topic asked for".to_owned(),
                    outcome: sluice_proto::wire::WriteOutcome::Definite,
                })
            })?;
        if let Some(e) = tm.error {
            return Err(request_error(ClientError::Broker(e)));
        }
        let count = u32::try_from(tm.partitions.len()).unwrap_or(u32::MAX);
        self.assign(topic, 0..count);
        Ok(count)
    }

    /// Removes a partition from the assignment (its buffered records are dropped).
    pub fn unassign(&mut self, topic: &str, partition: u32) {
        self.partitions.remove(&(topic.to_owned(), partition));
    }

    /// The assigned partitions, in (topic, partition) order.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.partitions.keys().cloned().collect()
    }

    /// Moves a partition's position. `Earliest`, `Latest` and `Timestamp` ask the broker
    /// (`ListOffsets`). Records buffered for the partition are dropped, a fetch in flight
    /// is ignored, and a paused partition resumes.
    pub async fn seek(
        &mut self,
        topic: &str,
        partition: u32,
        to: SeekTo,
    ) -> Result<(), ConsumerError> {
        let key = (topic.to_owned(), partition);
        if !self.partitions.contains_key(&key) {
            return Err(ConsumerError::NotAssigned {
                topic: topic.to_owned(),
                partition,
            });
        }
        let offset = match to {
            SeekTo::Offset(o) => o,
            SeekTo::Earliest => {
                self.list_offset(topic, partition, OffsetSpec::Earliest)
                    .await?
            }
            SeekTo::Latest => {
                self.list_offset(topic, partition, OffsetSpec::Latest)
                    .await?
            }
            SeekTo::Timestamp(ts) => {
                match self
                    .list_offset_opt(topic, partition, OffsetSpec::Timestamp(ts))
                    .await?
                {
                    Some(o) => o,
                    None => {
                        self.list_offset(topic, partition, OffsetSpec::Latest)
                            .await?
                    }
                }
            }
        };
        let epoch = self.bump_epoch();
        if let Some(state) = self.partitions.get_mut(&key) {
            reposition(state, offset, epoch);
        }
        // Errors of the old position, not yet returned, no longer apply.
        self.errors.retain(|e| !e.is_about(topic, partition));
        Ok(())
    }

    async fn list_offset_opt(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<Option<u64>, ConsumerError> {
        self.client
            .list_offsets(topic, partition, spec)
            .await
            .map(|ok| ok.offset)
            .map_err(|source| ConsumerError::Request {
                topic: topic.to_owned(),
                partition: Some(partition),
                source,
            })
    }

    async fn list_offset(
        &self,
        topic: &str,
        partition: u32,
        spec: OffsetSpec,
    ) -> Result<u64, ConsumerError> {
        let offset = self.list_offset_opt(topic, partition, spec).await?;
        offset.ok_or_else(|| ConsumerError::Request {
            topic: topic.to_owned(),
            partition: Some(partition),
            source: ClientError::Protocol {
                reason: format!("no offset for {spec:?}"),
                outcome: sluice_proto::wire::WriteOutcome::Definite,
            },
        })
    }

    /// The offset of the next record [`next`](Self::next) will return for this
    /// partition; `None` when it is not assigned or has no position yet.
    pub fn position(&self, topic: &str, partition: u32) -> Option<u64> {
        self.partitions
            .get(&(topic.to_owned(), partition))
            .and_then(|s| s.position)
    }

    /// The partition's high watermark as of its last fetch, for lag (`high_watermark -
    /// position`).
    pub fn high_watermark(&self, topic: &str, partition: u32) -> Option<u64> {
        self.partitions
            .get(&(topic.to_owned(), partition))
            .and_then(|s| s.high_watermark)
    }

    /// The next record, in offset order per partition (partitions take turns), waiting
    /// (long-polling) as long as it takes. Cancel-safe.
    pub async fn next(&mut self) -> Result<ConsumerRecord, ConsumerError> {
        match futures_util::future::poll_fn(|cx| self.poll_record(cx)).await {
            Some(result) => result,
            None => Err(ConsumerError::NothingAssigned),
        }
    }

    /// The records ready within `timeout`: waits up to `timeout` for the first, then
    /// takes what else is ready without waiting, up to `max_poll_records`. Empty when
    /// nothing came in time. An error comes alone (records before it are returned
    /// first, by this call; the error by the next).
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ConsumerError> {
        let first = match tokio::time::timeout(timeout, self.next()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(result) => result?,
        };
        let mut out = vec![first];
        while out.len() < self.config.max_poll_records {
            match self.next().now_or_never() {
                Some(Ok(record)) => out.push(record),
                Some(Err(e)) => {
                    self.errors.push_front(e);
                    break;
                }
                None => break,
            }
        }
        Ok(out)
    }

    fn bump_epoch(&mut self) -> u64 {
        let e = self.next_epoch;
        self.next_epoch += 1;
        e
    }

    /// The engine of `next`, `poll` and the `Stream`: start due requests, hand out a
    /// buffered record, else wait for an answer.
    fn poll_record(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<ConsumerRecord, ConsumerError>>> {
        loop {
            if let Some(e) = self.errors.pop_front() {
                return Poll::Ready(Some(Err(e)));
            }
            if self.partitions.is_empty() {
                return Poll::Ready(None);
            }
            self.start_work();
            if let Some(record) = self.pop_record() {
                return Poll::Ready(Some(Ok(record)));
            }
            match self.work.poll_next_unpin(cx) {
                Poll::Ready(Some(done)) => self.answered(done),
                // Nothing in flight and nothing buffered: every partition is paused.
                // Errors just queued go first (`start_work` may have added one).
                Poll::Ready(None) if !self.errors.is_empty() => {}
                Poll::Ready(None) => {
                    let paused = self.partitions.values().find_map(|s| s.paused.clone());
                    return match paused {
                        Some(e) => Poll::Ready(Some(Err(e))),
                        // Not reachable: `start_work` starts a request for every
                        // partition that is not paused and has nothing buffered.
                        None => Poll::Pending,
                    };
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn start_work(&mut self) {
        let fetch_max_bytes = usize::try_from(self.config.fetch_max_bytes).unwrap_or(usize::MAX);
        for (key, state) in &mut self.partitions {
            if state.in_flight || state.paused.is_some() {
                continue;
            }
            // Nothing to start while the partition's buffer is full (checked before any
            // clone: this runs once per record handed out).
            if state.position.is_some() && state.buffered_bytes >= fetch_max_bytes {
                continue;
            }
            let delay = if state.failures == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(self.policy.backoff_after(state.failures))
            };
            let client = self.client.clone();
            let (topic, partition) = key.clone();
            let epoch = state.epoch;
            match state.position {
                None => {
                    let spec = match self.config.auto_reset {
                        AutoReset::Earliest => OffsetSpec::Earliest,
                        AutoReset::Latest => OffsetSpec::Latest,
                        AutoReset::Error => {
                            let e = ConsumerError::NoPosition { topic, partition };
                            state.paused = Some(e.clone());
                            self.errors.push_back(e);
                            continue;
                        }
                    };
                    state.in_flight = true;
                    let key = key.clone();
                    self.work.push(Box::pin(async move {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let result = client.list_offsets(&topic, partition, spec).await;
                        Done {
                            key,
                            epoch,
                            answer: Answer::Reset { result },
                        }
                    }));
                }
                Some(_) if state.buffered_bytes < fetch_max_bytes => {
                    state.in_flight = true;
                    let key = key.clone();
                    let offset = state.fetch_offset;
                    let max_bytes = self.config.fetch_max_bytes;
                    // Long-poll even with records buffered: a caught-up prefetch then
                    // waits at the broker instead of coming back empty at once.
                    let max_wait_ms = self.config.max_wait_ms;
                    self.work.push(Box::pin(async move {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let result = client
                            .fetch(&topic, partition, offset, max_bytes, max_wait_ms)
                            .await;
                        Done {
                            key,
                            epoch,
                            answer: Answer::Fetch { offset, result },
                        }
                    }));
                }
                Some(_) => {}
            }
        }
    }

    fn pop_record(&mut self) -> Option<ConsumerRecord> {
        // Hand out a partition's fetched records in a run before moving on to the next
        // partition with records (turns are per fetch, as in Kafka's consumer), so the
        // common case touches one partition and clones nothing.
        if let Some(state) = self
            .cursor
            .as_ref()
            .and_then(|c| self.partitions.get_mut(c))
            .filter(|s| !s.records.is_empty())
        {
            return Self::take_front(state);
        }
        let key = {
            let after = self.cursor.as_ref();
            let has = |s: &PartitionState| !s.records.is_empty();
            let later = match after {
                Some(c) => self
                    .partitions
                    .range::<Key, _>((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded))
                    .find(|(_, s)| has(s)),
                None => None,
            };
            later
                .or_else(|| self.partitions.iter().find(|(_, s)| has(s)))
                .map(|(k, _)| k.clone())?
        };
        let state = self.partitions.get_mut(&key)?;
        let record = Self::take_front(state);
        self.cursor = Some(key);
        record
    }

    fn take_front(state: &mut PartitionState) -> Option<ConsumerRecord> {
        let record = state.records.pop_front()?;
        state.buffered_bytes = state.buffered_bytes.saturating_sub(record.bytes());
        // Pair assertion with `answered`: records leave in offset order, from the
        // position on.
        assert!(
            state.position.is_some_and(|p| record.offset >= p),
            "client: record {} handed out below position {:?}",
            record.offset,
            state.position
        );
        state.position = Some(record.offset + 1);
        Some(record)
    }

    fn answered(&mut self, done: Done) {
        let Done { key, epoch, answer } = done;
        let auto_reset = self.config.auto_reset;
        let retries = self.config.retries.max(1);
        let limits = self.config.batch_limits;
        let Some(state) = self.partitions.get_mut(&key) else {
            return; // unassigned meanwhile
        };
        if state.epoch != epoch {
            return; // sought meanwhile; the request of the new epoch is tracked
        }
        state.in_flight = false;
        let (topic, partition) = (key.0.clone(), key.1);
        let request_error = |source| ConsumerError::Request {
            topic: topic.clone(),
            partition: Some(partition),
            source,
        };
        match answer {
            Answer::Reset { result } => match result {
                Ok(OffsetOk {
                    offset: Some(offset),
                    ..
                }) => {
                    state.failures = 0;
                    state.position = Some(offset);
                    state.fetch_offset = offset;
                }
                Ok(OffsetOk { offset: None, .. }) => {
                    let e = request_error(ClientError::Protocol {
                        reason: "ListOffsets answered no offset".to_owned(),
                        outcome: sluice_proto::wire::WriteOutcome::Definite,
                    });
                    state.paused = Some(e.clone());
                    self.errors.push_back(e);
                }
                Err(source) => {
                    if let Some(e) = failed(state, request_error(source.clone()), &source, retries)
                    {
                        self.errors.push_back(e);
                    }
                }
            },
            Answer::Fetch { offset, result } => match result {
                Ok((ok, payload)) => {
                    match decode(&topic, partition, offset, &payload, &limits) {
                        Ok(decoded) => {
                            state.failures = 0;
                            state.high_watermark = Some(ok.high_watermark);
                            // The batches' own end is the truth; the broker's `next_offset`
                            // may only move past it (offsets that hold no records).
                            let next = decoded.end.unwrap_or(offset).max(ok.next_offset);
                            state.fetch_offset = next.max(offset);
                            for r in decoded.records {
                                state.buffered_bytes += r.bytes();
                                state.records.push_back(r);
                            }
                        }
                        Err(source) => {
                            let e = ConsumerError::CorruptBatch {
                                topic,
                                partition,
                                offset,
                                source,
                            };
                            state.paused = Some(e.clone());
                            self.errors.push_back(e);
                        }
                    }
                }
                Err(source) => {
                    let range = source
                        .broker_error()
                        .and_then(|b| match (b.code, &b.detail) {
                            (
                                ErrorCode::OffsetOutOfRange,
                                ErrorDetail::OffsetOutOfRange { log_start, log_end },
                            ) => Some((*log_start, *log_end)),
                            _ => None,
                        });
                    if let Some((log_start, log_end)) = range {
                        let to = match auto_reset {
                            AutoReset::Earliest => Some(log_start),
                            AutoReset::Latest => Some(log_end),
                            AutoReset::Error => None,
                        };
                        match to {
                            Some(to) => {
                                tracing::info!(
                                    %topic, partition, offset, log_start, log_end, to,
                                    "offset out of range: auto reset"
                                );
                                state.records.clear();
                                state.buffered_bytes = 0;
                                state.position = Some(to);
                                state.fetch_offset = to;
                            }
                            None => {
                                let e = ConsumerError::OffsetOutOfRange {
                                    topic,
                                    partition,
                                    offset,
                                    log_start,
                                    log_end,
                                };
                                state.paused = Some(e.clone());
                                self.errors.push_back(e);
                            }
                        }
                    } else if source
                        .broker_error()
                        .is_some_and(|b| b.code == ErrorCode::OffsetOutOfRange)
                    {
                        // No range in the answer: reset through ListOffsets.
                        if auto_reset == AutoReset::Error {
                            let e = request_error(source);
                            state.paused = Some(e.clone());
                            self.errors.push_back(e);
                        } else {
                            state.records.clear();
                            state.buffered_bytes = 0;
                            state.position = None;
                        }
                    } else if let Some(e) =
                        failed(state, request_error(source.clone()), &source, retries)
                    {
                        self.errors.push_back(e);
                    }
                }
            },
        }
    }
}

/// Records a failed request on `state`: retriable ones back off (and are surfaced every
/// `retries` in a row), others pause the partition. Returns the error to surface.
fn failed(
    state: &mut PartitionState,
    e: ConsumerError,
    source: &ClientError,
    retries: u32,
) -> Option<ConsumerError> {
    if source.is_retriable() {
        state.failures = state.failures.saturating_add(1);
        tracing::debug!(error = %e, failures = state.failures, "consumer request failed; retrying");
        (state.failures % retries == 0).then_some(e)
    } else {
        state.paused = Some(e.clone());
        Some(e)
    }
}

fn reposition(state: &mut PartitionState, offset: u64, epoch: u64) {
    state.position = Some(offset);
    state.fetch_offset = offset;
    state.epoch = epoch;
    state.in_flight = false;
    state.records.clear();
    state.buffered_bytes = 0;
    state.failures = 0;
    state.paused = None;
}

impl Stream for Consumer {
    type Item = Result<ConsumerRecord, ConsumerError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_record(cx)
    }
}

/// The records of one fetch answer.
#[derive(Debug, Default, PartialEq, Eq)]
struct Decoded {
    /// User records at or after the fetch offset, in offset order.
    records: Vec<ConsumerRecord>,
    /// One past the last offset of the last batch, if there was a batch.
    end: Option<u64>,
}

/// Decodes the batches of a fetch from `from`: validates each, skips control batches
/// and records below `from` (the first batch may start before it), and checks that the
/// batches follow each other in offset order.
fn decode(
    topic: &str,
    partition: u32,
    from: u64,
    payload: &Bytes,
    limits: &Limits,
) -> Result<Decoded, BatchError> {
    let mut out = Decoded::default();
    // One name for the fetch's records.
    let topic: Arc<str> = Arc::from(topic);
    // Keys and values are slices of the response (no copy per record).
    let slice = |b: &[u8]| payload.slice_ref(b);
    for batch in batches(payload, limits) {
        let batch = batch?;
        let header = batch.header();
        if out.end.is_some_and(|end| header.base_offset < end) {
            return Err(BatchError::Malformed {
                reason: "fetched batches overlap or are out of order",
            });
        }
        out.end = Some(header.last_offset().saturating_add(1));
        if header.is_control() {
            continue;
        }
        for r in batch.records().filter(|r| r.offset >= from) {
            out.records.push(ConsumerRecord {
                topic: topic.clone(),
                partition,
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key.map(slice),
                value: r.value.map(slice),
                headers: r
                    .headers()
                    .map(|(k, v)| (k.to_owned(), v.map(slice)))
                    .collect(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{set_base_offset, BatchBuilder};

    fn batch(base: u64, values: &[&str], control: bool) -> Vec<u8> {
        let mut b = BatchBuilder::new(Limits::DEFAULT).control(control);
        for (i, v) in values.iter().enumerate() {
            b.push(
                100 + i as i64,
                Some(b"k"),
                Some(v.as_bytes()),
                &[("h", None)],
            )
            .unwrap();
        }
        let mut bytes = b.finish().unwrap();
        set_base_offset(&mut bytes, base).unwrap();
        bytes
    }

    fn values(d: &Decoded) -> Vec<(u64, String)> {
        d.records
            .iter()
            .map(|r| {
                (
                    r.offset,
                    String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn decode_skips_records_below_the_fetch_offset_and_control_batches() {
        let mut payload = batch(10, &["a", "b", "c"], false);
        payload.extend(batch(13, &["marker"], true));
        payload.extend(batch(14, &["d"], false));
        let d = decode("t", 2, 11, &payload.into(), &Limits::DEFAULT).unwrap();
        assert_eq!(
            values(&d),
            vec![(11, "b".into()), (12, "c".into()), (14, "d".into())]
        );
        assert_eq!(d.end, Some(15));
        let first = &d.records[0];
        assert_eq!(
            (&*first.topic, first.partition, first.timestamp),
            ("t", 2, 101)
        );
        assert_eq!(first.headers, vec![("h".to_owned(), None)]);
        assert_eq!(
            decode("t", 0, 5, &Bytes::new(), &Limits::DEFAULT).unwrap(),
            Decoded::default()
        );
    }

    #[test]
    fn decode_refuses_corrupt_or_out_of_order_batches() {
        let mut payload = batch(10, &["a", "b"], false);
        payload.extend(batch(11, &["c"], false));
        assert!(matches!(
            decode("t", 0, 10, &payload.into(), &Limits::DEFAULT),
            Err(BatchError::Malformed { .. })
        ));
        let mut corrupt = batch(0, &["a"], false);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert!(matches!(
            decode("t", 0, 0, &corrupt.into(), &Limits::DEFAULT),
            Err(BatchError::BadCrc { .. })
        ));
        let cut = batch(0, &["a"], false);
        let cut = Bytes::from(cut);
        assert!(decode("t", 0, 0, &cut.slice(..cut.len() - 1), &Limits::DEFAULT).is_err());
    }

    #[test]
    fn repeated_retriable_failures_surface_every_retries_and_others_pause() {
        let mut state = PartitionState::default();
        let lost = ClientError::ConnectionLost {
            reason: "gone".into(),
            outcome: sluice_proto::wire::WriteOutcome::Definite,
        };
        let e = || ConsumerError::NothingAssigned;
        let surfaced: Vec<bool> = (0..6)
            .map(|_| failed(&mut state, e(), &lost, 3).is_some())
            .collect();
        assert_eq!(surfaced, vec![false, false, true, false, false, true]);
        assert!(state.paused.is_none());
        let unauthorized = ClientError::Broker(sluice_proto::wire::ErrorBody::new(
            ErrorCode::Unauthorized,
            "no",
        ));
        assert!(failed(&mut state, e(), &unauthorized, 3).is_some());
        assert!(state.paused.is_some());
        reposition(&mut state, 7, 9);
        assert_eq!(
            (state.position, state.fetch_offset, state.epoch),
            (Some(7), 7, 9)
        );
        assert!(state.paused.is_none() && state.failures == 0);
    }
}
