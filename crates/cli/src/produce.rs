//! `produce TOPIC`: one record per line of stdin.
//!
//! A line is everything up to a `\n`, which is stripped (nothing else is: a `\r` before it
//! stays in the value). Every line is a record, an empty line too (a record with an empty
//! value), and so is a last line without a `\n`; so `wc -l`-many lines (plus an
//! unterminated last one) give exactly that many records. Each record's timestamp is the
//! wall clock when its line was read.
//!
//! Shape: a reader thread reads stdin, routes each line to a partition (`--partition`,
//! else the `--key`'s partition, else round-robin), and hands it to that partition's task
//! through a bounded channel, after taking its size from a shared byte budget (so memory
//! is bounded however fast stdin is). Each partition task closes a batch when it reaches
//! `--batch-bytes` or when its first line has waited `--linger-ms`, sends it, and waits
//! for the answer before sending the next: one request in flight per partition, so a
//! partition's records are appended in input order. After each ack it prints the offsets.
//!
//! On the first failed write every task stops sending (batches already in flight on other
//! partitions are still answered and printed), and the command exits with the failure,
//! saying whether that write is definite (nothing appended) or indeterminate (it may
//! have been). Nothing that was not printed or reported failed was sent.

use std::io::{BufRead, Read as _, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sluice_client::session::{partition_for_key, Outcome, RetryPolicy};
use sluice_client::transport::Client;
use sluice_proto::wire::{Acks, WriteOutcome};
use sluice_proto::{BatchBuilder, Limits};
use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admin::topic_partitions;
use crate::cli::{Output, ProduceArgs};
use crate::fail::Fail;

/// Bytes of lines read but not yet acked, over all partitions.
const BUFFERED_BYTES_MAX: usize = 64 << 20;
/// Lines queued for one partition task.
const LINES_QUEUED_MAX: usize = 8192;
/// Longest line (the longest record value a default broker accepts).
const LINE_BYTES_MAX: usize = Limits::DEFAULT.value_bytes_max as usize;
/// Longest `--key`.
const KEY_BYTES_MAX: usize = Limits::DEFAULT.key_bytes_max as usize;
/// An upper bound on a record's encoding beyond its key and value bytes (length, attribute,
/// timestamp and offset deltas, key and value lengths, header count: all varints).
const RECORD_OVERHEAD_BYTES_MAX: usize = 32;
/// Largest `--batch-bytes`: a batch may exceed the target by one record, and that must
/// still fit in a batch the broker accepts.
const BATCH_BYTES_TARGET_MAX: usize = Limits::DEFAULT.batch_bytes_max as usize
    - LINE_BYTES_MAX
    - KEY_BYTES_MAX
    - RECORD_OVERHEAD_BYTES_MAX
    - sluice_proto::HEADER_LEN;

const _: () = assert!(LINE_BYTES_MAX < BUFFERED_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_TARGET_MAX >= crate::cli::BATCH_BYTES_DEFAULT as usize);
const _: () = assert!(BUFFERED_BYTES_MAX <= u32::MAX as usize);

/// One line of stdin on its way to a batch. The permit holds its bytes in the budget
/// until its batch is acked (or dropped).
struct Line {
    value: Vec<u8>,
    line_no: u64,
    timestamp_ms: i64,
    read_at: Instant,
    permit: OwnedSemaphorePermit,
}

/// What every partition task shares.
struct Shared {
    client: Client,
    topic: String,
    key: Option<Vec<u8>>,
    acks: Acks,
    timeout_ms: u32,
    batch_bytes: usize,
    linger: Duration,
    /// Set on the first failure: no task sends another batch, the reader stops.
    stopped: AtomicBool,
    failures: Mutex<Vec<Fail>>,
    reader_failure: Mutex<Option<Fail>>,
    acked: AtomicU64,
    printer: Mutex<Printer>,
}

impl Shared {
    fn fail(&self, fail: Fail) {
        self.stopped.store(true, Ordering::SeqCst);
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(fail);
    }
}

#[derive(Serialize)]
struct AckJson<'a> {
    topic: &'a str,
    partition: u32,
    offset: u64,
}

/// Writes acked offsets to stdout. If stdout is closed (`| head`), printing stops and
/// producing goes on.
struct Printer {
    output: Output,
    closed: bool,
}

impl Printer {
    fn acked(&mut self, topic: &str, partition: u32, base: u64, last: u64) {
        if self.closed {
            return;
        }
        let mut text = String::new();
        for offset in base..=last {
            match self.output {
                Output::Text => text.push_str(&format!("{partition} {offset}\n")),
                Output::Json => {
                    let ack = AckJson {
                        topic,
                        partition,
                        offset,
                    };
                    if let Ok(line) = serde_json::to_string(&ack) {
                        text.push_str(&line);
                        text.push('\n');
                    }
                }
            }
        }
        let mut out = std::io::stdout().lock();
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            self.closed = true;
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub async fn run(client: &Client, args: ProduceArgs, output: Output) -> Result<(), Fail> {
    let key = args.key.map(String::into_bytes);
    if key.as_ref().is_some_and(|k| k.len() > KEY_BYTES_MAX) {
        return Err(Fail::usage(format!(
            "--key is longer than {KEY_BYTES_MAX} bytes"
        )));
    }
    let batch_bytes = args.batch_bytes as usize;
    if !(1..=BATCH_BYTES_TARGET_MAX).contains(&batch_bytes) {
        return Err(Fail::usage(format!(
            "--batch-bytes must be in 1..={BATCH_BYTES_TARGET_MAX}"
        )));
    }
    if !(1..=sluice_proto::wire::FrameLimits::DEFAULT.wait_ms_max).contains(&args.timeout_ms) {
        return Err(Fail::usage(format!(
            "--timeout-ms must be in 1..={}",
            sluice_proto::wire::FrameLimits::DEFAULT.wait_ms_max
        )));
    }
    let partitions = u32::try_from(topic_partitions(client, &args.topic).await?.len())
        .map_err(|_| Fail::broker("the broker reported too many partitions"))?;
    let fixed = match (args.partition, &key) {
        (Some(p), _) if p >= partitions => {
            return Err(Fail::broker(format!(
                "topic '{}' has {partitions} partitions (0..={}); there is no partition {p}",
                args.topic,
                partitions - 1
            )))
        }
        (Some(p), _) => Some(p),
        (None, Some(k)) => Some(partition_for_key(k, partitions)),
        (None, None) => None,
    };
    let used: Vec<u32> = match fixed {
        Some(p) => vec![p],
        None => (0..partitions).collect(),
    };

    let shared = Arc::new(Shared {
        client: client.clone(),
        topic: args.topic,
        key,
        acks: args.acks.into(),
        timeout_ms: args.timeout_ms,
        batch_bytes,
        linger: Duration::from_millis(args.linger_ms),
        stopped: AtomicBool::new(false),
        failures: Mutex::new(Vec::new()),
        reader_failure: Mutex::new(None),
        acked: AtomicU64::new(0),
        printer: Mutex::new(Printer {
            output,
            closed: false,
        }),
    });
    let budget = Arc::new(Semaphore::new(BUFFERED_BYTES_MAX));

    let mut senders = Vec::with_capacity(used.len());
    let mut tasks = tokio::task::JoinSet::new();
    for &partition in &used {
        let (tx, rx) = mpsc::channel(LINES_QUEUED_MAX);
        senders.push(tx);
        tasks.spawn(partition_task(shared.clone(), partition, rx));
    }
    {
        let shared = shared.clone();
        let runtime = tokio::runtime::Handle::current();
        // A plain thread, not `spawn_blocking`: after a failure it may stay blocked in a
        // read of stdin, and the runtime must not wait for it.
        let spawned = std::thread::Builder::new()
            .name("sluice-stdin".into())
            .spawn(move || {
                if let Err(fail) = read_stdin(&senders, &budget, &shared, &runtime) {
                    shared.stopped.store(true, Ordering::SeqCst);
                    *shared
                        .reader_failure
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(fail);
                }
                // `senders` drops here, after the failure is recorded: the tasks drain
                // and end.
            });
        if let Err(e) = spawned {
            return Err(Fail::broker(format!("cannot start the stdin reader: {e}")));
        }
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            shared.fail(Fail::broker(format!("a partition task failed: {e}")));
        }
    }

    let failures = std::mem::take(
        &mut *shared
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    let acked = shared.acked.load(Ordering::SeqCst);
    if let Some(first) = failures.first() {
        let mut message = failures
            .iter()
            .map(|f| f.message.as_str())
            .collect::<Vec<_>>()
            .join("\nsluice: ");
        message.push_str(&format!(
            "\nsluice: {acked} records were acked (printed on stdout); every other record \
             outside the failed batch{} above was not sent",
            if failures.len() > 1 { "es" } else { "" }
        ));
        return Err(Fail {
            code: first.code,
            message,
        });
    }
    let reader_failure = shared
        .reader_failure
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(fail) = reader_failure {
        return Err(Fail {
            code: fail.code,
            message: format!(
                "{}; {acked} records before it were acked (printed on stdout), none after it \
                 was sent",
                fail.message
            ),
        });
    }
    Ok(())
}

/// Reads stdin line by line until EOF, a failure, or a stop.
fn read_stdin(
    senders: &[mpsc::Sender<Line>],
    budget: &Arc<Semaphore>,
    shared: &Shared,
    runtime: &tokio::runtime::Handle,
) -> Result<(), Fail> {
    let stdin = std::io::stdin();
    let mut reader = stdin.lock();
    let mut line_no: u64 = 0;
    let mut next = 0usize;
    loop {
        if shared.stopped.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut value = Vec::new();
        let read = (&mut reader)
            .take(LINE_BYTES_MAX as u64 + 1)
            .read_until(b'\n', &mut value)
            .map_err(|e| Fail::broker(format!("reading stdin: {e}")))?;
        if read == 0 {
            return Ok(());
        }
        line_no += 1;
        if value.last() == Some(&b'\n') {
            value.pop();
        } else if value.len() > LINE_BYTES_MAX {
            return Err(Fail::usage(format!(
                "input line {line_no} is longer than {LINE_BYTES_MAX} bytes"
            )));
        }
        let cost = u32::try_from(value.len() + 1).unwrap_or(u32::MAX);
        let Ok(permit) = runtime.block_on(budget.clone().acquire_many_owned(cost)) else {
            return Ok(());
        };
        let line = Line {
            value,
            line_no,
            timestamp_ms: now_ms(),
            read_at: Instant::now(),
            permit,
        };
        let Some(sender) = senders.get(next) else {
            return Ok(());
        };
        next = (next + 1) % senders.len();
        if sender.blocking_send(line).is_err() {
            // The task ended: it failed or was stopped, and said so.
            return Ok(());
        }
    }
}

/// A batch being filled.
struct OpenBatch {
    builder: BatchBuilder,
    first_line: u64,
    permits: Vec<OwnedSemaphorePermit>,
}

impl OpenBatch {
    fn push(&mut self, line: Line, key: Option<&[u8]>) -> Result<(), Fail> {
        self.builder
            .push(line.timestamp_ms, key, Some(&line.value), &[])
            .map_err(|e| Fail::usage(format!("cannot encode input line {}: {e}", line.line_no)))?;
        self.permits.push(line.permit);
        Ok(())
    }

    /// Whether `line` would take the batch past `target` bytes or its record limit.
    fn would_overflow(&self, line: &Line, key_len: usize, target: usize) -> bool {
        let grown = self.builder.encoded_len() + line.value.len() + key_len;
        grown + RECORD_OVERHEAD_BYTES_MAX > target
            || self.builder.len() >= Limits::DEFAULT.records_max as usize
    }
}

/// Collects the next batch: waits for a first line, then takes lines until the batch is
/// full or the first line is `linger` old. `None` once the input is done.
async fn next_batch(
    shared: &Shared,
    rx: &mut mpsc::Receiver<Line>,
    pending: &mut Option<Line>,
) -> Result<Option<OpenBatch>, Fail> {
    let first = match pending.take() {
        Some(line) => line,
        None => match rx.recv().await {
            Some(line) => line,
            None => return Ok(None),
        },
    };
    let key = shared.key.as_deref();
    let key_len = key.map_or(0, <[u8]>::len);
    let deadline = tokio::time::Instant::from_std(first.read_at + shared.linger);
    let mut batch = OpenBatch {
        builder: BatchBuilder::new(Limits::DEFAULT),
        first_line: first.line_no,
        permits: Vec::new(),
    };
    batch.push(first, key)?;
    while batch.builder.encoded_len() < shared.batch_bytes {
        let line = match rx.try_recv() {
            Ok(line) => line,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) | Err(_) => break,
            },
        };
        if batch.would_overflow(&line, key_len, shared.batch_bytes) {
            *pending = Some(line);
            break;
        }
        batch.push(line, key)?;
    }
    Ok(Some(batch))
}

/// One partition: batch, send, wait for the ack, print, repeat.
async fn partition_task(shared: Arc<Shared>, partition: u32, mut rx: mpsc::Receiver<Line>) {
    let mut pending = None;
    loop {
        let batch = match next_batch(&shared, &mut rx, &mut pending).await {
            Ok(Some(batch)) => batch,
            Ok(None) => return,
            Err(fail) => {
                shared.fail(fail);
                return;
            }
        };
        if shared.stopped.load(Ordering::SeqCst) {
            // Another partition failed; this batch is dropped unsent.
            return;
        }
        let records = batch.builder.len() as u64;
        let first_line = batch.first_line;
        let bytes = match batch.builder.finish() {
            Ok(bytes) => bytes,
            Err(e) => {
                shared.fail(Fail::usage(format!(
                    "cannot encode the batch from input line {first_line}: {e}"
                )));
                return;
            }
        };
        let topic = &shared.topic;
        let sent = produce_retrying(&shared, partition, &bytes).await;
        match sent {
            Ok(ok) if ok.last_offset.checked_sub(ok.base_offset) == Some(records - 1) => {
                shared
                    .printer
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .acked(topic, partition, ok.base_offset, ok.last_offset);
                shared.acked.fetch_add(records, Ordering::SeqCst);
            }
            Ok(ok) => {
                shared.fail(Fail::broker(format!(
                    "produce to topic '{topic}' partition {partition}: the broker acked offsets \
                     {}..={} for a batch of {records} records (from input line {first_line}); \
                     the write is indeterminate",
                    ok.base_offset, ok.last_offset
                )));
                return;
            }
            Err(e) => {
                let cause = Fail::client(
                    &format!("produce to topic '{topic}' partition {partition}"),
                    &e,
                );
                let outcome = match e.write_outcome() {
                    WriteOutcome::Definite => format!(
                        "the write is DEFINITE: none of the batch's {records} records (from \
                         input line {first_line}) was appended"
                    ),
                    WriteOutcome::Indeterminate => format!(
                        "the write is INDETERMINATE: the batch's {records} records (from input \
                         line {first_line}) may or may not have been appended"
                    ),
                };
                shared.fail(Fail {
                    code: cause.code,
                    message: format!("{}; {outcome}", cause.message),
                });
                return;
            }
        }
        drop(batch.permits);
    }
}

/// Resends of a batch whose refusals left nothing in the log (a partition electing a
/// leader answers `NotLeader` with no leader, a full broker `Dropped`): 9, after
/// 100 ms doubling to 1 s, about 6 s in all, the time an election takes with room to
/// spare. Indeterminate failures are never resent: this producer is not idempotent.
const RETRY: RetryPolicy = RetryPolicy {
    retries: 9,
    backoff_ms: 100,
    backoff_max_ms: 1_000,
    retry_indeterminate: false,
};

/// Sends one batch, again while [`RETRY`] allows it.
async fn produce_retrying(
    shared: &Shared,
    partition: u32,
    bytes: &[u8],
) -> Result<sluice_proto::wire::ProduceOk, sluice_client::ClientError> {
    let mut failures = 0;
    loop {
        let sent = shared
            .client
            .produce(
                &shared.topic,
                partition,
                bytes,
                shared.acks,
                shared.timeout_ms,
            )
            .await;
        let Err(e) = &sent else { return sent };
        failures += 1;
        // Times relative to now: `RetryAt(wait)`.
        match RETRY.decide(0, failures, e.is_retriable(), e.write_outcome(), None) {
            Outcome::RetryAt(wait) => {
                let wait = u64::try_from(wait).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            Outcome::Failed | Outcome::Done => return sent,
        }
    }
}
