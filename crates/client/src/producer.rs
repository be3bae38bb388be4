//! The producer: records in, batched produce requests out, one delivery future per
//! record.
//!
//! Model. [`Producer::send`] checks a record, waits for buffer space (backpressure: at
//! most `buffer_bytes_max` bytes of records are held, from `send` until their batch is
//! acknowledged or fails), and hands it over a channel to the producer's one background
//! task. That task, the *driver*, owns the pure session logic of [`crate::session`] per
//! topic — a [`Partitioner`], an [`Accumulator`] and a [`SendQueue`] — plus the topic's
//! cached partition count, and polls every request it has open (produce and metadata)
//! itself, in one `FuturesUnordered`: no task per record or per request.
//!
//! Ordering. A partition has at most one produce request in flight. QUIC streams are
//! independent, so two requests for one partition could reach the broker in either
//! order; one at a time is what makes a partition's records land in `send` order,
//! through retries too (a retried batch goes back to the front of its partition's
//! queue). `in_flight_max` bounds the requests in flight over all partitions.
//!
//! Idempotence ([`ProducerConfig::idempotence`], on by default). Before its first batch
//! the producer asks the broker for a producer id (`InitProducer`); records wait for it
//! as they wait for metadata. Every batch is stamped, when it is sealed, with the id,
//! its partition's epoch and the partition's next base sequence; a retry resends the
//! same bytes. The broker refuses a batch that does not continue its partition's
//! sequence, and answers a batch it appended already with `DuplicateSequence` and the
//! offsets it got, which resolves the records as acknowledged (a `DuplicateSequence`
//! without offsets, for a sequence older than the broker remembers, fails the batch with
//! that code: the records were appended, where is not known). So indeterminate failures
//! can be, and are, retried without duplicating records. A batch that fails for good
//! (retries exhausted, a definite refusal, `OutOfOrderSequence`, its delivery timeout)
//! starts its partition over at the next epoch and sequence 0, re-stamping the batches
//! queued behind it, so the partition does not stall on the failed batch's gap. A broker
//! that refuses `InitProducer` (one without idempotence) fails the records with
//! [`ClientError::Config`] saying so; set `idempotence = false` for such a broker.
//!
//! Failures. Every failed record resolves its [`DeliveryFuture`] with a
//! [`DeliveryError`] that says whether the record may be in the log
//! ([`WriteOutcome`]): it is indeterminate if *any* attempt was. Retriable definite
//! failures (`NotLeader`, `UnknownTopic` after a metadata refresh, `Throttled`,
//! `TooManyRequests`, `ShuttingDown`, a refused stream, a failed reconnect) are retried
//! up to `retries` times with exponential backoff. A definite non-retriable failure
//! (`CorruptBatch`, `Unauthorized`, `OutOfOrderSequence`, ...) fails at once. An
//! indeterminate failure (a timeout, a connection lost after the request left,
//! `RequestTimedOut`, `Interrupted`, and with idempotence `StorageFailed`) is retried
//! like a definite one by the idempotent producer. Without idempotence it fails at once
//! unless [`ProducerConfig::retry_indeterminate`] is set, since such a retry may append
//! the batch twice (duplicates, never reordering). A record still waiting to be sent or
//! retried `delivery_timeout_ms` after `send` fails with a timeout. While the broker
//! cannot be reached, one request at a time probes the connection (with backoff) rather
//! than every partition dialing and waiting out the connect timeout in turn.
//!
//! Metadata. The first record for a topic fetches its partition count (a `Metadata`
//! request) and caches it; `NotLeader`, `UnknownTopic` and `UnknownPartition` answers
//! refresh it before the retry. A topic the broker does not know fails its records at
//! once with `UnknownTopic` (definite): the producer does not create topics.
#![warn(missing_docs)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::{FuturesUnordered, StreamExt};
use sluice_proto::wire::{
    validate_topic_name, Acks, ErrorCode, ErrorDetail, FrameError, MetadataOk, ProduceOk,
    ProducerIdOk, WriteOutcome,
};
use sluice_proto::{Limits, HEADER_LEN};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::error::ClientError;
use crate::session::{
    classify_failure, record_bytes_max, Accumulator, BatchConfig, BufferPool, Outcome,
    PartitionStrategy, Partitioner, ProduceFailure, ReadyBatch, RecordRef, RetryPolicy, SendQueue,
};
use crate::transport::Client;

/// Default [`ProducerConfig::batch_bytes_max`]: 256 KiB.
pub const BATCH_BYTES_MAX_DEFAULT: usize = 256 * 1024;
/// Default [`ProducerConfig::linger_ms`].
pub const LINGER_MS_DEFAULT: u64 = 5;
/// Default [`ProducerConfig::buffer_bytes_max`]: 64 MiB.
pub const BUFFER_BYTES_MAX_DEFAULT: usize = 64 << 20;
/// Default [`ProducerConfig::in_flight_max`].
pub const IN_FLIGHT_MAX_DEFAULT: usize = 64;
/// Default [`ProducerConfig::retries`].
pub const RETRIES_DEFAULT: u32 = 10;
/// Default [`ProducerConfig::retry_backoff_ms`].
pub const RETRY_BACKOFF_MS_DEFAULT: u64 = 100;
/// Default [`ProducerConfig::retry_backoff_max_ms`].
pub const RETRY_BACKOFF_MAX_MS_DEFAULT: u64 = 5_000;
/// Default [`ProducerConfig::request_timeout_ms`].
pub const REQUEST_TIMEOUT_MS_DEFAULT: u32 = 30_000;
/// Default [`ProducerConfig::delivery_timeout_ms`]: 2 minutes.
pub const DELIVERY_TIMEOUT_MS_DEFAULT: u64 = 120_000;

/// How a [`Producer`] batches, sends and retries. `Default` gives the `*_DEFAULT`
/// constants, `acks = All` and the key-hash partitioner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerConfig {
    /// A partition's batch is sealed before it would pass this many encoded bytes (a
    /// record larger than this goes alone in its own batch). Default 256 KiB; at least
    /// the 64-byte batch header plus one byte, at most `batch_limits.batch_bytes_max`.
    pub batch_bytes_max: usize,
    /// A batch is sent at most this long after its first record, full or not. Default
    /// 5 ms; 0 sends as soon as a request slot is free.
    pub linger_ms: u64,
    /// Most bytes of records held, from `send` until their batch is acknowledged or
    /// fails; `send` waits while it is full. Default 64 MiB. Each record counts its
    /// worst-case encoded size (its bytes plus at most 61 bytes, and 20 per header); a
    /// record larger than the whole buffer waits for the buffer to empty. Besides it,
    /// the buffers of acknowledged batches are kept for the next batches to fill, up
    /// to a quarter of this many bytes of them ([`crate::session::BufferPool`]).
    pub buffer_bytes_max: usize,
    /// Durability asked of the broker before it acknowledges. Default `All`.
    pub acks: Acks,
    /// Most produce requests in flight, over all partitions; each partition has at most
    /// one, which keeps its records in `send` order. Default 64.
    pub in_flight_max: usize,
    /// Most retries of one batch after its first attempt, for retriable failures.
    /// Default 10.
    pub retries: u32,
    /// Backoff before the first retry of a batch; doubles for each further retry.
    /// Default 100 ms.
    pub retry_backoff_ms: u64,
    /// Cap on the retry backoff. Default 5 s.
    pub retry_backoff_max_ms: u64,
    /// Without [`idempotence`](Self::idempotence): whether failures that may have
    /// appended the batch (timeouts, a connection lost after the request left,
    /// `RequestTimedOut`, `Interrupted`) are retried. Default **off**: such a retry may
    /// write the records twice. With it on, records are still never reordered within a
    /// partition, but may be duplicated. The idempotent producer always retries them
    /// (without duplicates), whatever this says.
    pub retry_indeterminate: bool,
    /// The idempotent producer. Default **on**: the producer gets a producer id from the
    /// broker (`InitProducer`) before its first batch and stamps every batch with it and a
    /// per-partition sequence, so the broker drops a retried batch it already appended
    /// (answering with the original offsets). Indeterminate failures are then retried
    /// safely: each record is appended at most once per partition, in `send` order.
    /// Needs a broker that answers `InitProducer`; off, batches carry no producer id and
    /// `retry_indeterminate` decides.
    pub idempotence: bool,
    /// How long the broker may wait for a batch's durability before answering
    /// `RequestTimedOut` (the request's `timeout_ms`). The client itself gives up
    /// [`ClientOptions::request_timeout`](crate::ClientOptions::request_timeout) after
    /// that. Default 30 s; `1..=wait_ms_max` (5 min).
    pub request_timeout_ms: u32,
    /// How long after `send` a record may still wait to be sent or retried: past it, a
    /// record not in flight fails with [`ClientError::Timeout`] (definite unless an
    /// earlier attempt may have appended it). A request in flight at the deadline is
    /// not cut short: its answer decides. This is what bounds a record's wait while the
    /// broker is unreachable. Default 2 min; at least `linger_ms`.
    pub delivery_timeout_ms: u64,
    /// How records without an explicit partition are spread. Default
    /// [`PartitionStrategy::KeyHash`]: keyed records by [`crate::session::partition_for_key`],
    /// keyless ones sticking to a partition until its batch is sealed.
    pub partitioner: PartitionStrategy,
    /// Record-batch limits the producer's batches respect (the broker's must admit
    /// them). Default `Limits::DEFAULT`.
    pub batch_limits: Limits,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_bytes_max: BATCH_BYTES_MAX_DEFAULT,
            linger_ms: LINGER_MS_DEFAULT,
            buffer_bytes_max: BUFFER_BYTES_MAX_DEFAULT,
            acks: Acks::All,
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            retries: RETRIES_DEFAULT,
            retry_backoff_ms: RETRY_BACKOFF_MS_DEFAULT,
            retry_backoff_max_ms: RETRY_BACKOFF_MAX_MS_DEFAULT,
            retry_indeterminate: false,
            idempotence: true,
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            delivery_timeout_ms: DELIVERY_TIMEOUT_MS_DEFAULT,
            partitioner: PartitionStrategy::KeyHash,
            batch_limits: Limits::DEFAULT,
        }
    }
}

impl ProducerConfig {
    fn check(&self, wait_ms_max: u32) -> Result<(), ClientError> {
        let bad = |what: &str| Err(ClientError::Config(format!("producer: {what}")));
        let batch_max = usize::try_from(self.batch_limits.batch_bytes_max).unwrap_or(usize::MAX);
        if self.batch_bytes_max <= HEADER_LEN || self.batch_bytes_max > batch_max {
            return bad(
                "batch_bytes_max must be above 64 and at most batch_limits.batch_bytes_max",
            );
        }
        if self.buffer_bytes_max == 0 || self.buffer_bytes_max > Semaphore::MAX_PERMITS {
            return bad("buffer_bytes_max must be positive and below 2^61");
        }
        if self.in_flight_max == 0 {
            return bad("in_flight_max must be positive");
        }
        if self.batch_limits.records_max == 0 {
            return bad("batch_limits.records_max must be positive");
        }
        if self.request_timeout_ms == 0 || self.request_timeout_ms > wait_ms_max {
            return bad("request_timeout_ms must be in 1..=wait_ms_max");
        }
        if self.delivery_timeout_ms == 0 || self.delivery_timeout_ms < self.linger_ms {
            return bad("delivery_timeout_ms must be positive and at least linger_ms");
        }
        if self.retry_backoff_max_ms < self.retry_backoff_ms {
            return bad("retry_backoff_max_ms must be at least retry_backoff_ms");
        }
        Ok(())
    }

    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            retries: self.retries,
            backoff_ms: self.retry_backoff_ms,
            backoff_max_ms: self.retry_backoff_max_ms,
            // Safe with idempotence: the broker recognises a batch sent again.
            retry_indeterminate: self.retry_indeterminate || self.idempotence,
        }
    }
}

/// One record to produce.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProducerRecord {
    /// The topic (must exist; the producer does not create topics). Shared: a sender
    /// of many records clones one `Arc` instead of allocating the name per record.
    pub topic: Arc<str>,
    /// An explicit partition; `None` lets the [`PartitionStrategy`] choose.
    pub partition: Option<u32>,
    /// The key; keyed records go to `partition_for_key(key)` with the key-hash
    /// partitioner.
    pub key: Option<Vec<u8>>,
    /// The value; `None` is a null value (a tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers in order: (key, value), a null value as `None`.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Milliseconds since the Unix epoch; `None` takes the time of `send`.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// A record with `value` and nothing else set.
    pub fn new(topic: impl Into<Arc<str>>, value: impl Into<Vec<u8>>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            value: Some(value.into()),
            ..ProducerRecord::default()
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> ProducerRecord {
        self.key = Some(key.into());
        self
    }

    /// Sends to this partition instead of letting the partitioner choose.
    pub fn partition(mut self, partition: u32) -> ProducerRecord {
        self.partition = Some(partition);
        self
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: Option<Vec<u8>>) -> ProducerRecord {
        self.headers.push((key.into(), value));
        self
    }

    /// Sets the timestamp (ms since the Unix epoch).
    pub fn timestamp(mut self, timestamp: i64) -> ProducerRecord {
        self.timestamp = Some(timestamp);
        self
    }
}

/// Where an acknowledged record is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordMetadata {
    /// The record's topic (the producer's own copy of the name, shared by its records).
    pub topic: Arc<str>,
    /// The partition it was appended to.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// Its timestamp as stored (ms since the Unix epoch).
    pub timestamp: i64,
}

/// Why a record was not acknowledged, and whether it may be in the log anyway.
#[derive(Debug, Clone)]
pub struct DeliveryError {
    error: ClientError,
    outcome: WriteOutcome,
    attempts: u32,
}

impl DeliveryError {
    /// The last failure.
    pub fn error(&self) -> &ClientError {
        &self.error
    }

    /// Whether the record may have been appended: `Indeterminate` when any attempt to
    /// send it may have been, even if the last failure was definite.
    pub fn write_outcome(&self) -> WriteOutcome {
        self.outcome
    }

    /// True when the broker guarantees the record was not appended.
    pub fn is_definite(&self) -> bool {
        self.outcome == WriteOutcome::Definite
    }

    /// How many produce requests carried the record (0: it failed before any was
    /// sent, e.g. for an unknown topic).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The broker's error code, when the last failure was a broker answer.
    pub fn code(&self) -> Option<ErrorCode> {
        self.error.broker_error().map(|e| e.code)
    }
}

impl fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match self.outcome {
            WriteOutcome::Definite => "definitely not written",
            WriteOutcome::Indeterminate => "may have been written",
        };
        write!(
            f,
            "record not acknowledged ({outcome}, {} attempts): {}",
            self.attempts, self.error
        )
    }
}

impl std::error::Error for DeliveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Resolves when the record is acknowledged (to its [`RecordMetadata`]) or has failed
/// for good. Dropping it does not cancel the record.
#[derive(Debug)]
#[must_use = "a record's outcome is only known through its delivery future"]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Delivery>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata, DeliveryError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            // The driver resolves every record it took; it only drops one if its task
            // died (the runtime shut down). The record may have been sent.
            Poll::Ready(Err(_)) => Poll::Ready(Err(stopped_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// What a record whose outcome was never decided resolves to: the driver dropped it,
/// which only happens when its task died (the runtime shut down). It may have been sent.
fn stopped_error() -> DeliveryError {
    DeliveryError {
        error: ClientError::ConnectionLost {
            reason: "the producer stopped before the record's outcome was known".to_owned(),
            outcome: WriteOutcome::Indeterminate,
        },
        outcome: WriteOutcome::Indeterminate,
        attempts: 0,
    }
}

/// A record's outcome, as its delivery future or callback receives it.
type Delivery = Result<RecordMetadata, DeliveryError>;

/// A delivery callback ([`Producer::send_with`]).
type Callback = Box<dyn FnOnce(Delivery) + Send>;

/// Where a record's outcome goes: its delivery future, or its callback. Resolved once;
/// dropped unresolved (the driver's task died), a callback still hears
/// [`stopped_error`], as a delivery future does from its closed channel.
struct Reply(Option<ReplyTo>);

enum ReplyTo {
    Future(oneshot::Sender<Delivery>),
    Callback(Callback),
}

impl Reply {
    fn resolve(mut self, delivery: Delivery) {
        match self.0.take() {
            Some(ReplyTo::Future(tx)) => {
                // A dropped delivery future wants no answer.
                let _ = tx.send(delivery);
            }
            Some(ReplyTo::Callback(callback)) => run_callback(callback, delivery),
            None => {}
        }
    }

    /// Forgets the reply without resolving it: the caller reports the failure itself.
    fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(ReplyTo::Callback(callback)) = self.0.take() {
            run_callback(callback, Err(stopped_error()));
        }
    }
}

/// Runs a delivery callback on the driver's task. A panic in it is the caller's bug; it
/// is logged and must not stop the producer (whose other records would then never
/// resolve) where panics unwind.
fn run_callback(callback: Callback, delivery: Delivery) {
    let run = std::panic::AssertUnwindSafe(move || callback(delivery));
    if std::panic::catch_unwind(run).is_err() {
        tracing::error!("a producer's delivery callback panicked");
    }
}

/// A producer on a [`Client`]'s connection. Cheap to clone: clones share the buffer and
/// the background task. Made by [`Client::producer`].
///
/// When the last clone is dropped the background task still finishes every record it
/// took (their delivery futures resolve), then stops; [`close`](Self::close) does the
/// same and waits for it.
#[derive(Debug, Clone)]
pub struct Producer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    tx: mpsc::UnboundedSender<Command>,
    buffer: Arc<Semaphore>,
    closed: AtomicBool,
    config: ProducerConfig,
    name_limits: sluice_proto::wire::FrameLimits,
}

enum Command {
    Record(Submitted),
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

struct Submitted {
    record: ProducerRecord,
    timestamp: i64,
    tx: Reply,
    permit: OwnedSemaphorePermit,
}

impl Client {
    /// A producer sending over this client's connection, with its own background task
    /// (so this must be called within a tokio runtime). Fails with
    /// [`ClientError::Config`] for an unusable `config`.
    pub fn producer(&self, config: ProducerConfig) -> Result<Producer, ClientError> {
        let name_limits = self.options().frame_limits;
        config.check(name_limits.wait_ms_max)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let buffer = Arc::new(Semaphore::new(config.buffer_bytes_max));
        let driver = Driver::new(self.clone(), config.clone());
        tokio::spawn(driver.run(rx));
        Ok(Producer {
            shared: Arc::new(Shared {
                tx,
                buffer,
                closed: AtomicBool::new(false),
                config,
                name_limits,
            }),
        })
    }
}

fn closed_error() -> ClientError {
    ClientError::ConnectionLost {
        reason: "the producer is closed".to_owned(),
        outcome: WriteOutcome::Definite,
    }
}

fn invalid(reason: &'static str) -> ClientError {
    ClientError::InvalidRequest(FrameError::Invalid { reason })
}

fn epoch_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Producer {
    /// Queues `record` and returns its delivery future. Waits while the buffer is full
    /// (backpressure). Records sent one after another by one task to one partition are
    /// appended in that order.
    ///
    /// Fails at once, with nothing sent, when the producer is closed, the topic name is
    /// invalid, or the record breaks a batch limit (key, value, header sizes or count,
    /// or the whole record larger than `batch_limits.batch_bytes_max`).
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.submit(record, ReplyTo::Future(tx)).await?;
        Ok(DeliveryFuture { rx })
    }

    /// Queues `record` as [`send`](Self::send) does (the same backpressure, order and
    /// refusals), and hands its outcome to `callback` instead of a delivery future: the
    /// offset once acknowledged, or the error once it failed for good. Cheaper than a
    /// future per record for a sender that does not await each one (Kafka's
    /// `send(record, callback)`).
    ///
    /// `callback` runs exactly once if this returns `Ok`, never if it returns `Err`.
    /// It runs on the producer's background task, the records of one batch in their
    /// order: keep it short and never block in it (send the outcome on a channel, count
    /// it), or every record behind it waits. A panic in it is logged; with
    /// `panic = "abort"` it ends the process. Dropping the returned future before it
    /// completes (while it waits for buffer space) queues nothing and drops `callback`
    /// unrun.
    ///
    /// ```no_run
    /// # async fn demo(producer: sluice_client::Producer) -> Result<(), sluice_client::ClientError> {
    /// use sluice_client::ProducerRecord;
    /// let (tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    /// for i in 0..1000u32 {
    ///     let tx = tx.clone();
    ///     let record = ProducerRecord::new("events", i.to_string());
    ///     producer.send_with(record, move |outcome| { let _ = tx.send((i, outcome)); }).await?;
    /// }
    /// drop(tx);
    /// producer.flush().await;
    /// while let Some((i, outcome)) = outcomes.recv().await {
    ///     match outcome {
    ///         Ok(meta) => println!("{i} at {}/{}", meta.partition, meta.offset),
    ///         Err(e) => eprintln!("{i} failed: {e}"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_with<F>(&self, record: ProducerRecord, callback: F) -> Result<(), ClientError>
    where
        F: FnOnce(Result<RecordMetadata, DeliveryError>) + Send + 'static,
    {
        self.submit(record, ReplyTo::Callback(Box::new(callback)))
            .await
    }

    async fn submit(&self, record: ProducerRecord, reply: ReplyTo) -> Result<(), ClientError> {
        // `reply` becomes a `Reply` only once the record is queued: until then a refusal
        // is this call's error, and a dropped (cancelled) call resolves nothing.
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(closed_error());
        }
        validate_topic_name(&record.topic, &shared.name_limits)
            .map_err(ClientError::InvalidRequest)?;
        let limits = &shared.config.batch_limits;
        let over = |len: usize, max: u32| u32::try_from(len).map_or(true, |len| len > max);
        if record
            .key
            .as_ref()
            .is_some_and(|k| over(k.len(), limits.key_bytes_max))
            || record
                .value
                .as_ref()
                .is_some_and(|v| over(v.len(), limits.value_bytes_max))
        {
            return Err(invalid("record key or value over the batch limits"));
        }
        if over(record.headers.len(), limits.headers_max)
            || record.headers.iter().any(|(k, v)| {
                over(k.len(), limits.key_bytes_max)
                    || v.as_ref()
                        .is_some_and(|v| over(v.len(), limits.value_bytes_max))
            })
        {
            return Err(invalid("record headers over the batch limits"));
        }
        if record
            .partition
            .is_some_and(|p| p >= shared.name_limits.partitions_max)
        {
            return Err(invalid("partition number over partitions_max"));
        }
        let timestamp = record.timestamp.unwrap_or_else(epoch_ms);
        let bytes = {
            let headers: Vec<(&str, Option<&[u8]>)> = record
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect();
            record_bytes_max(&RecordRef {
                timestamp,
                key: record.key.as_deref(),
                value: record.value.as_deref(),
                headers: &headers,
            })
        };
        let batch_max = usize::try_from(limits.batch_bytes_max).unwrap_or(usize::MAX);
        if bytes.saturating_add(HEADER_LEN) > batch_max {
            return Err(invalid("record larger than a batch may be"));
        }
        // A record larger than the whole buffer waits for all of it (it cannot wait for
        // more permits than exist).
        let permits = bytes.min(shared.config.buffer_bytes_max);
        let permits = u32::try_from(permits).unwrap_or(u32::MAX);
        let permit = shared
            .buffer
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| closed_error())?;
        let submitted = Submitted {
            record,
            timestamp,
            tx: Reply(Some(reply)),
            permit,
        };
        match shared.tx.send(Command::Record(submitted)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(command)) => {
                if let Command::Record(submitted) = command {
                    submitted.tx.defuse();
                }
                Err(closed_error())
            }
        }
    }

    /// Sends every record queued before this call without waiting for linger, and waits
    /// until each has been acknowledged or has failed (see its delivery future for
    /// which). Records sent during the flush are not waited for.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.tx.send(Command::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Refuses further sends (for every clone), finishes every record already queued as
    /// [`flush`](Self::flush) does, and stops the background task.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        // Senders still waiting for buffer space fail with "closed"; records that have
        // their space are in the channel, before the close command.
        self.shared.buffer.close();
        let (tx, rx) = oneshot::channel();
        if self.shared.tx.send(Command::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// The configuration this producer runs with.
    pub fn config(&self) -> &ProducerConfig {
        &self.shared.config
    }

    /// Bytes of buffer space free now (`buffer_bytes_max` minus what queued and
    /// unacknowledged records hold).
    pub fn buffer_bytes_free(&self) -> usize {
        self.shared.buffer.available_permits()
    }
}

/// A queued record's handle inside the accumulator and the batches.
struct Pending {
    seq: u64,
    /// When the driver took the record (its clock), for the delivery timeout.
    taken_ms: i64,
    timestamp: i64,
    tx: Reply,
    /// Buffer space, given back when the record is resolved.
    _permit: OwnedSemaphorePermit,
}

/// A record received before its topic's partition count is known.
struct Waiting {
    seq: u64,
    submitted: Submitted,
}

/// A sealed batch, through its sends and retries.
struct Batch {
    /// Past this (driver clock) it fails instead of being sent or retried: its first
    /// record's delivery deadline.
    deadline_ms: i64,
    bytes: Vec<u8>,
    records: Vec<Pending>,
    /// Failed attempts so far.
    failures: u32,
    /// Whether an attempt may have appended it.
    indeterminate: bool,
}

impl Batch {
    fn sealed(ready: ReadyBatch<Pending>, delivery_timeout_ms: u64) -> Batch {
        let taken_ms = ready.records.first().map_or(0, |p| p.taken_ms);
        let timeout = i64::try_from(delivery_timeout_ms).unwrap_or(i64::MAX);
        Batch {
            deadline_ms: taken_ms.saturating_add(timeout),
            bytes: ready.bytes,
            records: ready.records,
            failures: 0,
            indeterminate: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meta {
    /// Not known, or known to be stale: fetch before partitioning or sending.
    Unknown,
    Fetching,
    Fresh,
}

struct TopicState {
    /// The last partition count the broker gave.
    partitions: Option<u32>,
    meta: Meta,
    meta_failures: u32,
    waiting: VecDeque<Waiting>,
    partitioner: Partitioner,
    accumulator: Accumulator<Pending>,
    queue: SendQueue<Batch>,
}

impl TopicState {
    fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.accumulator.is_empty() || self.queue.pending() > 0
    }

    /// A batch of `partition` failed for good: an idempotent producer starts the
    /// partition's sequences over and re-stamps the batches waiting behind it (see
    /// `Accumulator::restart_sequences`). Nothing to do without idempotence.
    fn restart_sequences(&mut self, partition: u32) {
        let TopicState {
            accumulator, queue, ..
        } = self;
        let waiting = queue.waiting_mut(partition).map(|b| &mut b.bytes);
        if let Err(e) = accumulator.restart_sequences(partition, waiting) {
            tracing::error!(partition, error = %e, "cannot start the partition's sequences over");
        }
    }
}

/// The idempotent producer's id, as the driver knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProducerId {
    /// Idempotence is off: batches carry no producer id.
    Off,
    /// Not asked for yet, or the last attempt failed for good (records that arrive ask
    /// again).
    Idle,
    /// `InitProducer` in flight or waiting out its backoff; records wait.
    Pending,
    Ready {
        producer_id: i64,
        epoch: i16,
    },
}

enum Done {
    Produce {
        topic: Arc<str>,
        partition: u32,
        /// Sent as the probe of a connection that was down.
        probe: bool,
        /// Its `bytes` are in `sent` meanwhile.
        batch: Batch,
        /// The batch's bytes as QUIC was given them (QUIC may still hold a reference).
        sent: bytes::Bytes,
        result: Result<ProduceOk, ClientError>,
    },
    Metadata {
        topic: Arc<str>,
        result: Result<MetadataOk, ClientError>,
    },
    InitProducer {
        result: Result<ProducerIdOk, ClientError>,
    },
}

type Work = Pin<Box<dyn Future<Output = Done> + Send>>;

/// The producer's background task: the only owner of the session state.
struct Driver {
    client: Client,
    config: ProducerConfig,
    policy: RetryPolicy,
    batch_config: BatchConfig,
    started: Instant,
    topics: BTreeMap<Arc<str>, TopicState>,
    /// Where the next dispatch round starts, so topics take turns.
    topic_cursor: Option<Arc<str>>,
    work: FuturesUnordered<Work>,
    produce_in_flight: usize,
    next_seq: u64,
    /// Sequence numbers of records taken and not yet resolved.
    unresolved: Unresolved,
    /// Flushes waiting for every record below their sequence number.
    flushes: Vec<(u64, oneshot::Sender<()>)>,
    closes: Vec<oneshot::Sender<()>>,
    closing: bool,
    link: Link,
    /// The idempotent producer's id.
    producer_id: ProducerId,
    /// `InitProducer` attempts failed in a row.
    init_failures: u32,
    /// Acknowledged batches' buffers, for the next batches of every topic.
    pool: BufferPool,
}

/// The sequence numbers of the records the driver took and has not resolved. They are
/// taken in increasing order and resolved in any: a window from the lowest unresolved
/// one, each slot saying whether that record is resolved (O(1) per record, where an
/// ordered set paid a tree update and an allocation now and then for each).
#[derive(Debug, Default)]
struct Unresolved {
    /// The sequence number of `resolved[0]`: the lowest unresolved one, when any.
    base: u64,
    resolved: VecDeque<bool>,
}

impl Unresolved {
    /// Adds `seq`, the next sequence number (one past every one added before).
    fn insert(&mut self, seq: u64) {
        if self.resolved.is_empty() {
            self.base = seq;
        }
        debug_assert_eq!(seq, self.base + self.resolved.len() as u64);
        self.resolved.push_back(false);
    }

    /// Marks `seq` resolved (nothing if it is not unresolved).
    fn remove(&mut self, seq: u64) {
        let Some(slot) = seq
            .checked_sub(self.base)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| self.resolved.get_mut(i))
        else {
            return;
        };
        *slot = true;
        while self.resolved.front() == Some(&true) {
            self.resolved.pop_front();
            self.base += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.resolved.is_empty()
    }

    /// The lowest unresolved sequence number.
    fn first(&self) -> Option<u64> {
        (!self.resolved.is_empty()).then_some(self.base)
    }
}

/// The connection as the producer sees it. After a failure to connect, only one
/// request (a probe) goes out per backoff, instead of every partition's batch dialing
/// in turn and each waiting out the connect timeout; the first answer that is not a
/// connect failure brings it back up.
#[derive(Debug, Clone, Copy, Default)]
struct Link {
    /// Connect failures in a row; 0 = up.
    failures: u32,
    /// While down: no probe before this (driver clock).
    not_before_ms: i64,
    probe_in_flight: bool,
}

impl Driver {
    fn new(client: Client, config: ProducerConfig) -> Driver {
        let batch_config = BatchConfig {
            batch_bytes_max: config.batch_bytes_max,
            linger_ms: config.linger_ms,
            // `send` already bounds the buffer with a semaphore of `buffer_bytes_max`
            // permits, reserving `record_bytes_max` per record, which is at least what
            // the record adds here: this limit can never be the one that binds.
            buffer_bytes_max: usize::MAX,
            limits: config.batch_limits,
        };
        let producer_id = if config.idempotence {
            ProducerId::Idle
        } else {
            ProducerId::Off
        };
        // Idle buffers up to a quarter of the record buffer: enough for the batches of
        // the requests in flight to come back and be refilled.
        let pool = BufferPool::new(config.buffer_bytes_max / 4);
        Driver {
            client,
            producer_id,
            pool,
            init_failures: 0,
            policy: config.retry_policy(),
            config,
            batch_config,
            started: Instant::now(),
            topics: BTreeMap::new(),
            topic_cursor: None,
            work: FuturesUnordered::new(),
            produce_in_flight: 0,
            next_seq: 0,
            unresolved: Unresolved::default(),
            flushes: Vec::new(),
            closes: Vec::new(),
            closing: false,
            link: Link::default(),
        }
    }

    fn now_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Whether records may be batched: the producer id is known, or not needed.
    fn id_ready(&self) -> bool {
        matches!(self.producer_id, ProducerId::Off | ProducerId::Ready { .. })
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut channel_open = true;
        loop {
            self.pump();
            if self.closing && self.unresolved.is_empty() {
                break;
            }
            let wake = self.next_wake();
            tokio::select! {
                command = rx.recv(), if channel_open => match command {
                    Some(command) => {
                        // One clock reading for what is taken together: they arrived
                        // within one wake-up.
                        let now = self.now_ms();
                        self.command(now, command);
                        // Take what else is queued before pumping: larger batches.
                        for _ in 0..1024 {
                            match rx.try_recv() {
                                Ok(command) => self.command(now, command),
                                Err(_) => break,
                            }
                        }
                    }
                    None => {
                        channel_open = false;
                        self.closing = true;
                    }
                },
                Some(done) = self.work.next(), if !self.work.is_empty() => self.done(done),
                () = sleep_until(wake), if wake.is_some() => {}
            }
        }
        for close in self.closes.drain(..) {
            let _ = close.send(());
        }
        for (_, flush) in self.flushes.drain(..) {
            let _ = flush.send(());
        }
    }

    fn command(&mut self, now: i64, command: Command) {
        match command {
            Command::Record(submitted) => self.take(now, submitted),
            // `pump` seals every batch while a flush waits, including records that were
            // waiting for their topic's metadata when the flush came.
            Command::Flush(reply) => {
                self.flushes.push((self.next_seq, reply));
                self.answer_flushes();
            }
            Command::Close(reply) => {
                self.closing = true;
                self.closes.push(reply);
            }
        }
    }

    /// Takes a record from `send` at `now` (driver clock).
    fn take(&mut self, now: i64, submitted: Submitted) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unresolved.insert(seq);
        let batch_config = self.batch_config;
        let strategy = self.config.partitioner;
        let ready = self.id_ready();
        // Looked up by name: a name is cloned only for a topic new to the producer.
        if !self.topics.contains_key(&*submitted.record.topic) {
            let name: Arc<str> = submitted.record.topic.clone();
            let mut accumulator = Accumulator::with_pool(batch_config, self.pool.clone());
            if let ProducerId::Ready { producer_id, epoch } = self.producer_id {
                accumulator.set_producer(producer_id, epoch);
            }
            self.topics.insert(
                name,
                TopicState {
                    partitions: None,
                    meta: Meta::Unknown,
                    meta_failures: 0,
                    waiting: VecDeque::new(),
                    partitioner: Partitioner::new(strategy),
                    accumulator,
                    // One request in flight per partition: order, and (idempotent)
                    // the re-stamping of what waits behind a failed batch.
                    queue: SendQueue::new(1),
                },
            );
        }
        let Some(t) = self.topics.get_mut(&*submitted.record.topic) else {
            return;
        };
        if t.meta == Meta::Fresh && t.waiting.is_empty() && ready {
            if let Some(resolved) = push_record(t, now, seq, submitted) {
                self.unresolved.remove(resolved);
            }
        } else {
            t.waiting.push_back(Waiting { seq, submitted });
        }
    }

    /// Seals what is due, queues sealed batches, starts metadata fetches and sends.
    fn pump(&mut self) {
        if self.producer_id == ProducerId::Idle && self.topics.values().any(TopicState::has_work) {
            self.producer_id = ProducerId::Pending;
            self.init_producer(Duration::ZERO);
        }
        let now = self.now_ms();
        let mut need_metadata = Vec::new();
        // While a flush or the close waits, nothing lingers (records sent meanwhile go
        // early too: simpler than tracking which batch holds which sequence numbers).
        let no_linger = self.closing || !self.flushes.is_empty();
        let delivery_timeout_ms = self.config.delivery_timeout_ms;
        let mut expired = Vec::new();
        for (name, t) in &mut self.topics {
            if t.meta == Meta::Unknown && t.has_work() {
                t.meta = Meta::Fetching;
                need_metadata.push(name.clone());
            }
            if no_linger {
                t.accumulator.seal_all();
            }
            // A partition with a request in flight keeps filling its open batch.
            while let Some(ready) = {
                let queue = &t.queue;
                t.accumulator.poll_ready_unless(now, |p| queue.is_busy(p))
            } {
                t.partitioner.sealed(ready.partition);
                t.queue
                    .enqueue(ready.partition, Batch::sealed(ready, delivery_timeout_ms));
            }
            let mut restart = BTreeSet::new();
            for (partition, batch) in t.queue.drain_expired(|b| b.deadline_ms <= now) {
                t.accumulator.release(batch.bytes.len());
                expired.push((name.clone(), batch));
                restart.insert(partition);
            }
            for partition in restart {
                t.restart_sequences(partition);
            }
        }
        for topic in need_metadata {
            self.fetch_metadata(topic, Duration::ZERO);
        }
        for (topic, batch) in expired {
            self.expire(&topic, batch);
        }
        self.dispatch(now);
    }

    fn dispatch(&mut self, now: i64) {
        while self.produce_in_flight < self.config.in_flight_max {
            let probe = self.link.failures > 0;
            if probe && (self.link.probe_in_flight || now < self.link.not_before_ms) {
                return;
            }
            // Topics take turns: start after the one served last.
            let next = {
                let after = self.topic_cursor.clone();
                let ready = |t: &TopicState| t.meta == Meta::Fresh;
                let mut candidates = match &after {
                    Some(c) => self
                        .topics
                        .range::<Arc<str>, _>((
                            std::ops::Bound::Excluded(c.clone()),
                            std::ops::Bound::Unbounded,
                        ))
                        .chain(self.topics.range::<Arc<str>, _>(..=c.clone()))
                        .filter(|(_, t)| ready(t))
                        .map(|(n, _)| n.clone())
                        .collect::<Vec<_>>(),
                    None => self
                        .topics
                        .iter()
                        .filter(|(_, t)| ready(t))
                        .map(|(n, _)| n.clone())
                        .collect(),
                };
                let mut found = None;
                for name in candidates.drain(..) {
                    if let Some(t) = self.topics.get_mut(&name) {
                        if let Some((partition, batch)) = t.queue.next(now) {
                            found = Some((name, partition, batch));
                            break;
                        }
                    }
                }
                found
            };
            let Some((topic, partition, batch)) = next else {
                return;
            };
            self.topic_cursor = Some(topic.clone());
            self.produce_in_flight += 1;
            self.link.probe_in_flight |= probe;
            let client = self.client.clone();
            let acks = self.config.acks;
            let timeout_ms = self.config.request_timeout_ms;
            self.work.push(Box::pin(async move {
                // The batch's buffer goes to QUIC as it is; `produced` takes it back
                // for a retry or for the buffer pool.
                let mut batch = batch;
                let sent = bytes::Bytes::from(std::mem::take(&mut batch.bytes));
                let result = client
                    .produce_bytes(&topic, partition, &sent, acks, timeout_ms)
                    .await;
                Done::Produce {
                    topic,
                    partition,
                    probe,
                    batch,
                    sent,
                    result,
                }
            }));
        }
    }

    fn init_producer(&mut self, delay: Duration) {
        let client = self.client.clone();
        self.work.push(Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let result = client.init_producer().await;
            Done::InitProducer { result }
        }));
    }

    fn init_producer_done(&mut self, result: Result<ProducerIdOk, ClientError>) {
        match result {
            Ok(ok) => {
                tracing::debug!(
                    producer_id = ok.producer_id,
                    epoch = ok.producer_epoch,
                    "producer id"
                );
                self.producer_id = ProducerId::Ready {
                    producer_id: ok.producer_id,
                    epoch: ok.producer_epoch,
                };
                self.init_failures = 0;
                let now = self.now_ms();
                let mut resolved = Vec::new();
                for t in self.topics.values_mut() {
                    t.accumulator
                        .set_producer(ok.producer_id, ok.producer_epoch);
                    if t.meta == Meta::Fresh {
                        while let Some(w) = t.waiting.pop_front() {
                            resolved.extend(push_record(t, now, w.seq, w.submitted));
                        }
                    }
                }
                for seq in resolved {
                    self.unresolved.remove(seq);
                }
            }
            Err(error) => {
                self.init_failures += 1;
                if error.is_retriable() && self.init_failures <= self.config.retries {
                    let delay = self.policy.backoff_after(self.init_failures);
                    tracing::debug!(%error, "InitProducer retry");
                    self.init_producer(Duration::from_millis(delay));
                    return;
                }
                self.producer_id = ProducerId::Idle;
                self.init_failures = 0;
                // A broker answer (e.g. `InvalidRequest` from a broker that does not know
                // the request) means it cannot give ids: say what to do about it.
                let error = match error {
                    ClientError::Broker(e) => ClientError::Config(format!(
                        "idempotent producer: the broker gave no producer id ({e}); a broker \
                         without idempotence needs ProducerConfig::idempotence = false"
                    )),
                    other => other,
                };
                tracing::warn!(%error, "no producer id");
                let mut failed = Vec::new();
                for t in self.topics.values_mut() {
                    failed.extend(t.waiting.drain(..));
                }
                for w in failed {
                    self.unresolved.remove(w.seq);
                    w.submitted.tx.resolve(Err(DeliveryError {
                        error: error.clone(),
                        outcome: WriteOutcome::Definite,
                        attempts: 0,
                    }));
                }
            }
        }
    }

    fn fetch_metadata(&mut self, topic: Arc<str>, delay: Duration) {
        let client = self.client.clone();
        self.work.push(Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let result = client.metadata(Some(vec![topic.to_string()])).await;
            Done::Metadata { topic, result }
        }));
    }

    /// When the loop must wake without a command or a completion: the next linger
    /// deadline, retry backoff, delivery deadline, or connection probe.
    fn next_wake(&self) -> Option<Instant> {
        let now = self.now_ms();
        let link = (self.link.failures > 0 && !self.link.probe_in_flight)
            .then_some(self.link.not_before_ms);
        let at = self
            .topics
            .values()
            .flat_map(|t| {
                [
                    t.accumulator.next_deadline_unless(|p| t.queue.is_busy(p)),
                    t.queue.next_retry(now),
                    t.queue.min_front(|b| b.deadline_ms),
                ]
            })
            .chain([link])
            .flatten()
            .min()?;
        let ms = u64::try_from(at.max(0)).unwrap_or(0);
        Some(self.started + Duration::from_millis(ms))
    }

    /// Fails a batch whose delivery deadline passed before it could be sent (again).
    fn expire(&mut self, topic: &str, batch: Batch) {
        let outcome = if batch.indeterminate {
            WriteOutcome::Indeterminate
        } else {
            WriteOutcome::Definite
        };
        let error = ClientError::Timeout {
            after: Duration::from_millis(self.config.delivery_timeout_ms),
            outcome,
        };
        self.fail_batch(topic, batch, error);
    }

    fn done(&mut self, done: Done) {
        match done {
            Done::Produce {
                topic,
                partition,
                probe,
                batch,
                sent,
                result,
            } => {
                self.produce_in_flight = self.produce_in_flight.saturating_sub(1);
                let now = self.now_ms();
                if probe {
                    self.link.probe_in_flight = false;
                }
                if matches!(result, Err(ClientError::Connect { .. })) {
                    self.link.failures = self.link.failures.saturating_add(1);
                    let backoff = self.policy.backoff_after(self.link.failures);
                    self.link.not_before_ms =
                        now.saturating_add(i64::try_from(backoff).unwrap_or(i64::MAX));
                    tracing::debug!(failures = self.link.failures, backoff, "cannot connect");
                } else {
                    self.link.failures = 0;
                }
                self.produced(topic, partition, batch, sent, result);
            }
            Done::Metadata { topic, result } => self.metadata(topic, result),
            Done::InitProducer { result } => self.init_producer_done(result),
        }
        self.answer_flushes();
    }

    fn produced(
        &mut self,
        topic: Arc<str>,
        partition: u32,
        mut batch: Batch,
        sent: bytes::Bytes,
        result: Result<ProduceOk, ClientError>,
    ) {
        let now = self.now_ms();
        let idempotent = self.config.idempotence;
        let sent_len = sent.len();
        let Some(t) = self.topics.get_mut(&topic) else {
            // Topics are never removed, so this is a bug; fail the records rather than
            // losing their futures.
            batch.bytes = Vec::from(sent);
            self.fail_batch(&topic, batch, invalid("producer lost a topic's state"));
            return;
        };
        let records = batch.records.len() as u64;
        let facts = result.as_ref().err().map(|e| {
            classify_failure(
                idempotent,
                e.broker_error(),
                e.is_retriable(),
                e.write_outcome(),
            )
        });
        // An idempotent producer's batch that an earlier attempt appended: acknowledged
        // at the offsets it got then.
        let result = match (result, facts) {
            (
                Err(_),
                Some(ProduceFailure::AlreadyAppended {
                    base_offset,
                    last_offset,
                }),
            ) => Ok(ProduceOk {
                base_offset,
                last_offset,
                log_start: 0,
            }),
            (result, _) => result,
        };
        let result = result.and_then(|ok| {
            // Pair check with the batch we built: the broker must have given it exactly
            // one offset per record.
            if ok.last_offset.checked_sub(ok.base_offset) == records.checked_sub(1) {
                Ok(ok)
            } else {
                Err(ClientError::Protocol {
                    reason: format!(
                        "offsets {}..={} for a batch of {records} records",
                        ok.base_offset, ok.last_offset
                    ),
                    outcome: WriteOutcome::Indeterminate,
                })
            }
        });
        match result {
            Ok(ok) => {
                t.queue.complete(partition, Outcome::Done, None);
                t.accumulator.release(sent_len);
                // Into the pool only if QUIC has let go of it. One that QUIC still holds
                // (for packets not yet acknowledged) is freed when QUIC drops it, uncopied.
                if let Ok(unique) = sent.try_into_mut() {
                    t.accumulator.recycle(Vec::from(unique));
                }
                for (i, pending) in batch.records.into_iter().enumerate() {
                    self.unresolved.remove(pending.seq);
                    pending.tx.resolve(Ok(RecordMetadata {
                        topic: topic.clone(),
                        partition,
                        offset: ok.base_offset + i as u64,
                        timestamp: pending.timestamp,
                    }));
                }
            }
            Err(error) => {
                // A retry sends these bytes again: a copy only if QUIC still holds them.
                batch.bytes = Vec::from(sent);
                batch.failures += 1;
                let (retriable, outcome) = match facts {
                    Some(ProduceFailure::Failed { retriable, outcome }) => (retriable, outcome),
                    _ => (error.is_retriable(), error.write_outcome()),
                };
                if outcome == WriteOutcome::Indeterminate {
                    batch.indeterminate = true;
                }
                let retry_after_ms = error.broker_error().and_then(|e| match e.detail {
                    ErrorDetail::Throttled { retry_after_ms } => Some(retry_after_ms),
                    _ => None,
                });
                match self
                    .policy
                    .decide(now, batch.failures, retriable, outcome, retry_after_ms)
                {
                    Outcome::RetryAt(at) => {
                        tracing::debug!(%topic, partition, %error, failures = batch.failures, "produce retry");
                        let refresh = error.broker_error().is_some_and(|e| {
                            matches!(
                                e.code,
                                ErrorCode::NotLeader
                                    | ErrorCode::UnknownTopic
                                    | ErrorCode::UnknownPartition
                            )
                        });
                        if refresh && t.meta == Meta::Fresh {
                            t.meta = Meta::Unknown;
                        }
                        t.queue
                            .complete(partition, Outcome::RetryAt(at), Some(batch));
                    }
                    Outcome::Done | Outcome::Failed => {
                        t.queue.complete(partition, Outcome::Failed, None);
                        t.accumulator.release(batch.bytes.len());
                        t.restart_sequences(partition);
                        self.fail_batch(&topic, batch, error);
                    }
                }
            }
        }
    }

    fn metadata(&mut self, topic: Arc<str>, result: Result<MetadataOk, ClientError>) {
        let now = self.now_ms();
        let ready = self.id_ready();
        let delivery_timeout_ms = self.config.delivery_timeout_ms;
        let answer = result.and_then(|ok| {
            let Some(tm) = ok.topics.into_iter().find(|tm| *tm.name == *topic) else {
                return Err(ClientError::Protocol {
                    reason: format!("metadata without the topic {topic} asked for"),
                    outcome: WriteOutcome::Definite,
                });
            };
            match tm.error {
                Some(e) => Err(ClientError::Broker(e)),
                None => u32::try_from(tm.partitions.len())
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| ClientError::Protocol {
                        reason: format!("topic {topic} without partitions"),
                        outcome: WriteOutcome::Definite,
                    }),
            }
        });
        let Some(t) = self.topics.get_mut(&topic) else {
            return;
        };
        match answer {
            Ok(partitions) => {
                t.meta = Meta::Fresh;
                t.meta_failures = 0;
                let shrank = t.partitions.is_some_and(|old| partitions < old);
                t.partitions = Some(partitions);
                let mut failed = Vec::new();
                if shrank {
                    // Only a topic deleted and created again with fewer partitions:
                    // what was batched for partitions that are gone fails (definite).
                    t.accumulator.seal_all();
                    while let Some(ready) = t.accumulator.poll_ready(now) {
                        t.queue
                            .enqueue(ready.partition, Batch::sealed(ready, delivery_timeout_ms));
                    }
                    let mut restart = BTreeSet::new();
                    for (partition, batch) in t.queue.drain_waiting(partitions) {
                        t.accumulator.release(batch.bytes.len());
                        failed.push(batch);
                        restart.insert(partition);
                    }
                    for partition in restart {
                        t.restart_sequences(partition);
                    }
                }
                // Records also wait for the producer id (idempotence); they are batched
                // when it comes.
                while let Some(w) = ready.then(|| t.waiting.pop_front()).flatten() {
                    if let Some(resolved) = push_record(t, now, w.seq, w.submitted) {
                        self.unresolved.remove(resolved);
                    }
                }
                for batch in failed {
                    self.fail_batch(
                        &topic,
                        batch,
                        invalid("the topic has no partition of that number"),
                    );
                }
            }
            Err(error) => {
                t.meta_failures += 1;
                // The producer does not wait for a topic to appear: an unknown topic fails
                // its records now. Other retriable failures (a lost connection, a busy
                // or stopping broker) are retried like sends.
                let unknown = error
                    .broker_error()
                    .is_some_and(|e| e.code == ErrorCode::UnknownTopic);
                let retry =
                    error.is_retriable() && !unknown && t.meta_failures <= self.config.retries;
                if retry {
                    let delay = self.policy.backoff_after(t.meta_failures);
                    tracing::debug!(%topic, %error, "metadata retry");
                    self.fetch_metadata(topic, Duration::from_millis(delay));
                } else {
                    tracing::debug!(%topic, %error, "topic failed");
                    t.meta = Meta::Unknown;
                    t.meta_failures = 0;
                    self.fail_topic(&topic, error);
                }
            }
        }
    }

    /// Fails everything of `topic` that is not in flight (an unknown topic).
    fn fail_topic(&mut self, topic: &Arc<str>, error: ClientError) {
        let now = self.now_ms();
        let delivery_timeout_ms = self.config.delivery_timeout_ms;
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        let waiting: Vec<Waiting> = t.waiting.drain(..).collect();
        t.accumulator.seal_all();
        let mut batches = Vec::new();
        let mut restart = BTreeSet::new();
        while let Some(ready) = t.accumulator.poll_ready(now) {
            t.accumulator.release(ready.bytes.len());
            restart.insert(ready.partition);
            batches.push(Batch::sealed(ready, delivery_timeout_ms));
        }
        for (partition, batch) in t.queue.drain_waiting(0) {
            t.accumulator.release(batch.bytes.len());
            restart.insert(partition);
            batches.push(batch);
        }
        for partition in restart {
            t.restart_sequences(partition);
        }
        for w in waiting {
            self.unresolved.remove(w.seq);
            w.submitted.tx.resolve(Err(DeliveryError {
                error: error.clone(),
                outcome: WriteOutcome::Definite,
                attempts: 0,
            }));
        }
        for batch in batches {
            self.fail_batch(topic, batch, error.clone());
        }
    }

    fn fail_batch(&mut self, topic: &str, batch: Batch, error: ClientError) {
        let outcome = if batch.indeterminate {
            WriteOutcome::Indeterminate
        } else {
            error.write_outcome()
        };
        tracing::debug!(topic, records = batch.records.len(), %error, ?outcome, "batch failed");
        for pending in batch.records {
            self.unresolved.remove(pending.seq);
            pending.tx.resolve(Err(DeliveryError {
                error: error.clone(),
                outcome,
                attempts: batch.failures,
            }));
        }
    }

    fn answer_flushes(&mut self) {
        let lowest = self.unresolved.first().unwrap_or(u64::MAX);
        let mut i = 0;
        while i < self.flushes.len() {
            if self
                .flushes
                .get(i)
                .is_some_and(|(bound, _)| *bound <= lowest)
            {
                let (_, reply) = self.flushes.swap_remove(i);
                let _ = reply.send(());
            } else {
                i += 1;
            }
        }
    }
}

/// Partitions `submitted` and adds it to its topic's batches. A record that cannot go
/// is resolved here with a definite error, and its sequence number returned (for
/// `Driver::unresolved`). The topic's partition count must be known.
fn push_record(t: &mut TopicState, now: i64, seq: u64, submitted: Submitted) -> Option<u64> {
    let Submitted {
        record,
        timestamp,
        tx,
        permit,
    } = submitted;
    let refuse = |tx: Reply, reason| {
        tx.resolve(Err(DeliveryError {
            error: invalid(reason),
            outcome: WriteOutcome::Definite,
            attempts: 0,
        }));
        Some(seq)
    };
    let Some(partitions) = t.partitions else {
        return refuse(tx, "producer: no partition count");
    };
    let mut partition = match record.partition {
        Some(p) if p >= partitions => {
            return refuse(tx, "the topic has no partition of that number");
        }
        Some(p) => p,
        None => t.partitioner.partition(record.key.as_deref(), partitions),
    };
    let headers: Vec<(&str, Option<&[u8]>)> = record
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref()))
        .collect();
    let rec = RecordRef {
        timestamp,
        key: record.key.as_deref(),
        value: record.value.as_deref(),
        headers: &headers,
    };
    // A sticky record that does not fit the sticky partition's batch seals it and
    // moves on with the partitioner (Kafka's "abort on new batch", KIP-480): left in a
    // batch of its own on the old partition, it would go out alone once that
    // partition's full batch was acknowledged, a request for one record.
    if record.partition.is_none()
        && t.partitioner.is_sticky(rec.key)
        && t.accumulator.would_overflow(partition, &rec)
    {
        t.accumulator.seal(partition);
        t.partitioner.sealed(partition);
        partition = t.partitioner.partition(rec.key, partitions);
    }
    let handle = Pending {
        seq,
        taken_ms: now,
        timestamp,
        tx,
        _permit: permit,
    };
    match t.accumulator.push(now, partition, rec, handle) {
        Ok(Some(sealed)) => {
            t.partitioner.sealed(sealed);
            None
        }
        Ok(None) => None,
        // `send` checked the record against the same limits, and the accumulator's
        // buffer limit is off (see `Driver::new`), so this is not expected; the record
        // still gets its answer.
        Err(rejected) => {
            tracing::debug!(error = %rejected.error, "record refused by the batch builder");
            refuse(rejected.handle.tx, "record refused by the batch builder")
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callback_reply(seen: &Arc<std::sync::Mutex<Vec<Delivery>>>) -> Reply {
        let seen = Arc::clone(seen);
        Reply(Some(ReplyTo::Callback(Box::new(move |d| {
            seen.lock().unwrap().push(d);
        }))))
    }

    /// A topic of `partitions` partitions whose batches hold a few 1000-byte records and
    /// never linger out, for `push_record`.
    fn small_batch_topic(partitions: u32) -> TopicState {
        TopicState {
            partitions: Some(partitions),
            meta: Meta::Fresh,
            meta_failures: 0,
            waiting: VecDeque::new(),
            partitioner: Partitioner::new(PartitionStrategy::KeyHash),
            accumulator: Accumulator::new(BatchConfig {
                batch_bytes_max: 4096,
                linger_ms: 60_000,
                buffer_bytes_max: 1 << 20,
                limits: Limits::DEFAULT,
            }),
            queue: SendQueue::new(1),
        }
    }

    /// Pushes `record` as record `seq`; its outcome is dropped.
    fn push(t: &mut TopicState, seq: u64, record: ProducerRecord) {
        let buffer = Arc::new(Semaphore::new(1 << 20));
        let submitted = Submitted {
            record,
            timestamp: 0,
            tx: Reply(None),
            permit: buffer.try_acquire_many_owned(1000).unwrap(),
        };
        assert_eq!(
            push_record(t, 0, seq, submitted),
            None,
            "record {seq} refused"
        );
    }

    /// Every batch the accumulator holds, sealed and open, as (partition, records).
    fn batches(t: &mut TopicState) -> Vec<(u32, usize)> {
        t.accumulator.seal_all();
        std::iter::from_fn(|| t.accumulator.poll_ready(0))
            .map(|b| (b.partition, b.records.len()))
            .collect()
    }

    #[test]
    fn a_sticky_record_that_does_not_fit_moves_on_with_the_partitioner() {
        let mut t = small_batch_topic(4);
        for seq in 0..10 {
            push(&mut t, seq, ProducerRecord::new("t", vec![7u8; 1000]));
        }
        let got = batches(&mut t);
        // One batch per partition, each full but the last: no record was left alone in
        // a batch of its own behind its partition's full one.
        let full = got[0].1;
        assert!(full >= 2, "{got:?}");
        let partitions: Vec<u32> = got.iter().map(|b| b.0).collect();
        assert_eq!(
            partitions,
            (0..got.len() as u32).collect::<Vec<_>>(),
            "{got:?}"
        );
        assert!(got[..got.len() - 1].iter().all(|b| b.1 == full), "{got:?}");
        assert_eq!(got.iter().map(|b| b.1).sum::<usize>(), 10);

        // Records that name their partition, or have a key, stay where they belong.
        let mut t = small_batch_topic(4);
        for seq in 0..10 {
            push(
                &mut t,
                seq,
                ProducerRecord::new("t", vec![7u8; 1000]).partition(2),
            );
        }
        let got = batches(&mut t);
        assert!(got.len() > 1 && got.iter().all(|b| b.0 == 2), "{got:?}");
        let mut t = small_batch_topic(4);
        let key = b"k".to_vec();
        for seq in 0..10 {
            push(
                &mut t,
                seq,
                ProducerRecord::new("t", vec![7u8; 1000]).key(key.clone()),
            );
        }
        let got = batches(&mut t);
        let home = crate::session::partition_for_key(&key, 4);
        assert!(got.len() > 1 && got.iter().all(|b| b.0 == home), "{got:?}");
    }

    #[test]
    fn a_callback_reply_runs_once_when_resolved_dropped_or_not_at_all_when_defused() {
        let meta = RecordMetadata {
            topic: "t".into(),
            partition: 1,
            offset: 7,
            timestamp: 0,
        };
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        callback_reply(&seen).resolve(Ok(meta.clone()));
        assert_eq!(seen.lock().unwrap().len(), 1);
        assert_eq!(seen.lock().unwrap()[0].as_ref().unwrap(), &meta);
        // Dropped unresolved (the driver's task died): it hears that the outcome is unknown.
        drop(callback_reply(&seen));
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 2);
            let error = seen[1].as_ref().unwrap_err();
            assert_eq!(error.outcome, WriteOutcome::Indeterminate);
        }
        // Defused (the call returned the refusal itself): never runs.
        callback_reply(&seen).defuse();
        assert_eq!(seen.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_panicking_callback_does_not_unwind_into_the_driver() {
        // (Under `panic = "abort"` this would end the process; tests unwind.)
        let reply = Reply(Some(ReplyTo::Callback(Box::new(|_| panic!("user bug")))));
        reply.resolve(Err(stopped_error()));
    }

    #[test]
    fn a_future_reply_resolves_its_delivery_future() {
        let (tx, rx) = oneshot::channel();
        Reply(Some(ReplyTo::Future(tx))).resolve(Err(stopped_error()));
        let got = futures_util::FutureExt::now_or_never(DeliveryFuture { rx }).unwrap();
        assert_eq!(got.unwrap_err().outcome, WriteOutcome::Indeterminate);
        let (tx, rx) = oneshot::channel::<Delivery>();
        drop(Reply(Some(ReplyTo::Future(tx))));
        let got = futures_util::FutureExt::now_or_never(DeliveryFuture { rx }).unwrap();
        assert_eq!(got.unwrap_err().outcome, WriteOutcome::Indeterminate);
    }

    #[test]
    fn unresolved_tracks_the_lowest_unresolved_sequence_number() {
        let mut u = Unresolved::default();
        assert!(u.is_empty());
        assert_eq!(u.first(), None);
        for seq in 5..10 {
            u.insert(seq);
        }
        assert_eq!(u.first(), Some(5));
        // Out of order: the lowest stays until it resolves, then skips what did.
        u.remove(7);
        u.remove(6);
        assert_eq!(u.first(), Some(5));
        u.remove(5);
        assert_eq!(u.first(), Some(8));
        // Unknown and repeated sequence numbers change nothing.
        u.remove(3);
        u.remove(6);
        u.remove(42);
        assert_eq!(u.first(), Some(8));
        u.remove(9);
        u.remove(8);
        assert!(u.is_empty());
        assert_eq!(u.first(), None);
        // Empty, it restarts at whatever comes next.
        u.insert(10);
        assert_eq!(u.first(), Some(10));
        u.remove(10);
        assert!(u.is_empty());
    }

    #[test]
    fn config_check_refuses_unusable_values() {
        let ok = ProducerConfig::default();
        assert!(ok.check(300_000).is_ok());
        let bad = [
            ProducerConfig {
                batch_bytes_max: HEADER_LEN,
                ..ok.clone()
            },
            ProducerConfig {
                batch_bytes_max: (16 << 20) + 1,
                ..ok.clone()
            },
            ProducerConfig {
                buffer_bytes_max: 0,
                ..ok.clone()
            },
            ProducerConfig {
                in_flight_max: 0,
                ..ok.clone()
            },
            ProducerConfig {
                request_timeout_ms: 0,
                ..ok.clone()
            },
            ProducerConfig {
                request_timeout_ms: 300_001,
                ..ok.clone()
            },
            ProducerConfig {
                retry_backoff_ms: 10,
                retry_backoff_max_ms: 5,
                ..ok.clone()
            },
        ];
        for config in bad {
            assert!(
                matches!(config.check(300_000), Err(ClientError::Config(_))),
                "{config:?}"
            );
        }
    }

    #[test]
    fn a_delivery_error_is_indeterminate_if_any_attempt_was() {
        let e = DeliveryError {
            error: ClientError::Broker(sluice_proto::wire::ErrorBody::new(
                ErrorCode::NotLeader,
                "moved",
            )),
            outcome: WriteOutcome::Indeterminate,
            attempts: 2,
        };
        assert!(!e.is_definite());
        assert_eq!(e.code(), Some(ErrorCode::NotLeader));
        assert!(e.to_string().contains("may have been written"), "{e}");
    }
}
