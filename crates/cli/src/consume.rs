//! `consume TOPIC`: print records from one or every partition.
//!
//! Each selected partition gets a start offset from `--from` (earliest and latest and
//! timestamps through `ListOffsets`; an explicit offset applies to every selected
//! partition and must be within `log_start..=high_watermark`) and, without `--follow`,
//! an end: its high watermark when the command started. A task per partition fetches
//! from its start, drops the records of a returned batch that lie before the requested
//! offset (a fetch returns whole batches) or at/after the end, skips control batches, and
//! hands the rest to the printer through a bounded channel. The command ends when every
//! partition reached its end, after `--count` records, when stdout is closed, or with
//! `--follow` on Ctrl-C (all exit 0). With `--follow`, fetches long-poll for
//! `--max-wait-ms` and transient failures (lost connection, timeouts) are retried with
//! backoff; without it, any failure ends the command, except a partition without a
//! reachable leader (`NotLeader` the SDK could not route past: an election), whose reads
//! are retried for up to [`ELECTION_WAIT`] either way.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use sluice_client::transport::Client;
use sluice_client::ClientError;
use sluice_proto::wire::{ErrorCode, FrameLimits, OffsetSpec};
use sluice_proto::{batches, Limits};
use tokio::sync::mpsc;

use crate::admin::topic_partitions;
use crate::cli::{ConsumeArgs, Output, Start};
use crate::encode::{record_json, record_text, Rec};
use crate::fail::Fail;

/// Fetched chunks (one per fetch) waiting for the printer, over all partitions.
const CHUNKS_QUEUED_MAX: usize = 16;
/// Follow mode: first and longest pause before retrying a failed fetch.
const RETRY_BACKOFF_MS_MIN: u64 = 100;
const RETRY_BACKOFF_MS_MAX: u64 = 5000;
/// Pause when a bounded fetch below the end returned nothing (never expected; it keeps a
/// misbehaving broker from turning this into a busy loop).
const EMPTY_FETCH_PAUSE_MS: u64 = 20;

const _: () = assert!(RETRY_BACKOFF_MS_MIN <= RETRY_BACKOFF_MS_MAX);

/// How long a read waits out a partition without a leader (an election: a topic just
/// created, a leader that died) before the command fails with it.
pub const ELECTION_WAIT: Duration = Duration::from_secs(10);

/// Whether `e` is a `NotLeader` the SDK could not route past: the partition has no
/// leader right now, or the one named could not be reached yet.
fn is_leaderless(e: &ClientError) -> bool {
    e.broker_error()
        .is_some_and(|b| b.code == ErrorCode::NotLeader)
}

/// Runs the read `call`, again with backoff while it finds the partition leaderless,
/// for at most `wait`; any other outcome, or the last leaderless one, is returned.
async fn through_elections<T, F, Fut>(wait: Duration, mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    let mut backoff = Duration::from_millis(RETRY_BACKOFF_MS_MIN);
    loop {
        match call().await {
            Err(e) if is_leaderless(&e) && tokio::time::Instant::now() + backoff < deadline => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            result => return result,
        }
    }
}

/// Where one partition's read starts and (without `--follow`) ends.
#[derive(Debug, Clone, Copy)]
struct Plan {
    partition: u32,
    start: u64,
    end: Option<u64>,
}

/// What the settings of a fetch loop are.
#[derive(Debug)]
struct Fetching {
    client: Client,
    topic: Arc<str>,
    fetch_bytes: u32,
    max_wait_ms: u32,
}

type Chunk = Result<Vec<Rec>, Fail>;

pub async fn run(client: &Client, args: ConsumeArgs, output: Output) -> Result<(), Fail> {
    let wait_ms_max = FrameLimits::DEFAULT.wait_ms_max;
    if args.max_wait_ms > wait_ms_max {
        return Err(Fail::usage(format!(
            "--max-wait-ms must be at most {wait_ms_max}"
        )));
    }
    if args.fetch_bytes == 0 {
        return Err(Fail::usage("--fetch-bytes must be at least 1"));
    }
    let topic = args.topic.as_str();
    let partitions = u32::try_from(topic_partitions(client, topic).await?.len())
        .map_err(|_| Fail::broker("the broker reported too many partitions"))?;
    let selected: Vec<u32> = match args.partition {
        Some(p) if p >= partitions => {
            return Err(Fail::broker(format!(
                "topic '{topic}' has {partitions} partitions (0..={}); there is no partition {p}",
                partitions - 1
            )))
        }
        Some(p) => vec![p],
        None => (0..partitions).collect(),
    };
    if args.count == Some(0) {
        return Ok(());
    }
    let mut plans = Vec::with_capacity(selected.len());
    for partition in selected {
        plans.push(plan(client, topic, partition, args.from, args.follow).await?);
    }

    let fetching = Arc::new(Fetching {
        client: client.clone(),
        topic: Arc::from(topic),
        fetch_bytes: args.fetch_bytes,
        max_wait_ms: args.max_wait_ms,
    });
    let (tx, mut rx) = mpsc::channel::<Chunk>(CHUNKS_QUEUED_MAX);
    // Dropped on return, which aborts every fetch loop still running.
    let mut tasks = tokio::task::JoinSet::new();
    for plan in plans {
        if plan.end.is_some_and(|end| plan.start >= end) {
            continue;
        }
        let fetching = fetching.clone();
        let tx = tx.clone();
        tasks.spawn(async move {
            if let Err(fail) = fetch_loop(&fetching, plan, &tx).await {
                let _ = tx.send(Err(fail)).await;
            }
        });
    }
    drop(tx);

    let print = async {
        let mut left = args.count.unwrap_or(u64::MAX);
        while let Some(chunk) = rx.recv().await {
            let records = chunk?;
            let mut text = String::new();
            for r in &records {
                if left == 0 {
                    break;
                }
                left -= 1;
                match output {
                    Output::Text => text.push_str(&record_text(r)),
                    Output::Json => text.push_str(&record_json(topic, r)),
                }
                text.push('\n');
            }
            let mut out = std::io::stdout().lock();
            if out
                .write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .is_err()
            {
                // stdout closed (`| head`): the reader has what it wanted.
                return Ok(());
            }
            if left == 0 {
                return Ok(());
            }
        }
        Ok(())
    };
    if args.follow {
        tokio::select! {
            result = print => result,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    } else {
        print.await
    }
}

async fn plan(
    client: &Client,
    topic: &str,
    partition: u32,
    from: Start,
    follow: bool,
) -> Result<Plan, Fail> {
    let list = |spec: OffsetSpec| async move {
        through_elections(ELECTION_WAIT, || {
            client.list_offsets(topic, partition, spec)
        })
        .await
        .map_err(|e| {
            Fail::client(
                &format!("list offsets of topic '{topic}' partition {partition}"),
                &e,
            )
        })
    };
    let missing = || {
        Fail::broker(format!(
            "list offsets of topic '{topic}' partition {partition}: the broker returned no offset"
        ))
    };
    let latest = list(OffsetSpec::Latest).await?.offset.ok_or_else(missing)?;
    let start = match from {
        Start::Earliest => list(OffsetSpec::Earliest)
            .await?
            .offset
            .ok_or_else(missing)?,
        Start::Latest => latest,
        Start::Offset(offset) => {
            let earliest = list(OffsetSpec::Earliest)
                .await?
                .offset
                .ok_or_else(missing)?;
            if offset < earliest || offset > latest {
                return Err(Fail::broker(format!(
                    "offset {offset} is out of range for topic '{topic}' partition \
                     {partition}: valid offsets are {earliest}..={latest}"
                )));
            }
            offset
        }
        // No record that new: start where the next one will be.
        Start::Timestamp(ms) => list(OffsetSpec::Timestamp(ms))
            .await?
            .offset
            .unwrap_or(latest),
    };
    Ok(Plan {
        partition,
        start,
        end: if follow { None } else { Some(latest) },
    })
}

/// Whether follow mode should retry a failed fetch: transient failures yes; a topic or
/// partition that is gone, or a broken request, no.
fn retry_when_following(e: &ClientError) -> bool {
    let gone = matches!(
        e.broker_error().map(|b| b.code),
        Some(ErrorCode::UnknownTopic | ErrorCode::UnknownPartition)
    );
    e.is_retriable() && !gone
}

async fn fetch_loop(f: &Fetching, plan: Plan, tx: &mpsc::Sender<Chunk>) -> Result<(), Fail> {
    let limits = Limits::default();
    let topic = &*f.topic;
    let partition = plan.partition;
    let mut offset = plan.start;
    let mut backoff_ms = RETRY_BACKOFF_MS_MIN;
    loop {
        if plan.end.is_some_and(|end| offset >= end) {
            return Ok(());
        }
        // Below the end the data is there: no reason to wait.
        let wait_ms = if plan.end.is_some() { 0 } else { f.max_wait_ms };
        let fetched = through_elections(ELECTION_WAIT, || {
            f.client
                .fetch(topic, partition, offset, f.fetch_bytes, wait_ms)
        })
        .await;
        let (ok, payload) = match fetched {
            Ok(fetched) => {
                backoff_ms = RETRY_BACKOFF_MS_MIN;
                fetched
            }
            Err(e) if plan.end.is_none() && retry_when_following(&e) => {
                eprintln!(
                    "sluice: warning: fetch from topic '{topic}' partition {partition} failed \
                     ({e}); retrying in {backoff_ms} ms"
                );
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(RETRY_BACKOFF_MS_MAX);
                continue;
            }
            Err(e) => {
                return Err(Fail::client(
                    &format!("fetch from topic '{topic}' partition {partition} at offset {offset}"),
                    &e,
                ))
            }
        };
        let mut records = Vec::new();
        let mut next = offset.max(ok.next_offset);
        'batches: for batch in batches(&payload, &limits) {
            let batch = batch.map_err(|e| {
                Fail::broker(format!(
                    "fetch from topic '{topic}' partition {partition}: the broker returned a \
                     corrupt batch: {e}"
                ))
            })?;
            next = next.max(batch.header().last_offset().saturating_add(1));
            if batch.header().is_control() {
                continue;
            }
            for r in batch.records() {
                if r.offset < offset {
                    continue;
                }
                if plan.end.is_some_and(|end| r.offset >= end) {
                    break 'batches;
                }
                records.push(Rec {
                    partition,
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key.map(<[u8]>::to_vec),
                    value: r.value.map(<[u8]>::to_vec),
                });
            }
        }
        if next == offset && plan.end.is_some() {
            tokio::time::sleep(Duration::from_millis(EMPTY_FETCH_PAUSE_MS)).await;
        }
        offset = next;
        if !records.is_empty() && tx.send(Ok(records)).await.is_err() {
            // The printer is done (count reached or stdout closed).
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use sluice_proto::wire::ErrorBody;

    use super::*;

    fn broker(code: ErrorCode) -> ClientError {
        ClientError::Broker(ErrorBody::new(code, "test"))
    }

    #[tokio::test(start_paused = true)]
    async fn reads_wait_out_an_election_but_nothing_else_and_not_for_ever() {
        // Leaderless twice, then answered: the answer comes back.
        let calls = AtomicU32::new(0);
        let got = through_elections(ELECTION_WAIT, || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(broker(ErrorCode::NotLeader)),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(got.unwrap(), 2);

        // Another error is returned at once.
        let calls = AtomicU32::new(0);
        let got: Result<(), _> = through_elections(ELECTION_WAIT, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(broker(ErrorCode::UnknownTopic))
        })
        .await;
        assert_eq!(
            got.unwrap_err().broker_error().map(|b| b.code),
            Some(ErrorCode::UnknownTopic)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // A partition that stays leaderless: the NotLeader, once the wait is over.
        let started = tokio::time::Instant::now();
        let got: Result<(), _> = through_elections(ELECTION_WAIT, || async {
            Err(broker(ErrorCode::NotLeader))
        })
        .await;
        assert_eq!(
            got.unwrap_err().broker_error().map(|b| b.code),
            Some(ErrorCode::NotLeader)
        );
        let waited = started.elapsed();
        assert!(
            waited <= ELECTION_WAIT && waited >= ELECTION_WAIT - Duration::from_secs(2),
            "{waited:?}"
        );
    }
}
