//! The producer threads: `--threads` OS threads (default one per CPU, at most one per
//! producer), each a single-threaded tokio runtime that runs every Nth producer with
//! its own client: the sending task, the SDK's producer task and the QUIC connection
//! of a producer all run on one thread.
//!
//! Why: on the multi-threaded runtime a producer's sender, its SDK driver and its
//! connection ran on whichever worker was free, so every record crossed threads on its
//! way into a batch (the channel, the buffer semaphore, the window, the allocator's
//! cross-thread frees) and the batch crossed again to be encrypted. One thread per
//! producer group keeps those cache lines on one core: the load generator's CPU per 1M
//! records fell from 1.69-2.13 s to 1.57-1.67 s (`benches/README.md`).
//!
//! Order: [`ProducerThreads::start`] connects every producer on its thread before the
//! run's clock starts; [`ProducerThreads::run`] hands them the run and collects their
//! results. Dropping the threads before `run` stops them unrun.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use sluice_client::{Client, Producer};
use tokio::sync::oneshot;

use crate::cli::Plan;
use crate::produce::{self, ProducerResult};
use crate::{setup, Run};

/// The producers, connected, each waiting on its thread for the run.
pub struct ProducerThreads {
    /// One per thread: the run, once its clock starts.
    go: Vec<oneshot::Sender<Arc<Run>>>,
    /// One per thread: its producers' results, by producer id.
    done: Vec<oneshot::Receiver<Vec<(u32, ProducerResult)>>>,
}

impl ProducerThreads {
    /// Starts the threads and connects every producer; fails if any cannot connect.
    pub async fn start(plan: &Plan) -> Result<ProducerThreads> {
        let threads = thread_count(plan.opts.threads, plan.opts.producers);
        let mut pool = ProducerThreads {
            go: Vec::new(),
            done: Vec::new(),
        };
        let mut ready = Vec::new();
        for t in 0..threads {
            let ids: Vec<u32> = (0..plan.opts.producers)
                .filter(|id| id % threads == t)
                .collect();
            let (ready_tx, ready_rx) = oneshot::channel();
            let (go_tx, go_rx) = oneshot::channel();
            let (done_tx, done_rx) = oneshot::channel();
            let plan = plan.clone();
            std::thread::Builder::new()
                .name(format!("producers-{t}"))
                .spawn(move || thread_main(plan, ids, ready_tx, go_rx, done_tx))
                .context("start a producer thread")?;
            ready.push(ready_rx);
            pool.go.push(go_tx);
            pool.done.push(done_rx);
        }
        for r in ready {
            r.await
                .map_err(|_| anyhow!("a producer thread stopped"))??;
        }
        Ok(pool)
    }

    /// Starts every producer on `run` and waits for all of them; their results in
    /// producer order.
    pub async fn run(self, run: &Arc<Run>) -> Result<Vec<ProducerResult>> {
        for go in self.go {
            // A thread that is gone shows as a missing result below.
            let _ = go.send(run.clone());
        }
        let mut results = Vec::new();
        for done in self.done {
            results.extend(
                done.await
                    .map_err(|_| anyhow!("a producer thread stopped"))?,
            );
        }
        if results.len() != run.plan.opts.producers as usize {
            bail!("a producer task failed");
        }
        results.sort_by_key(|(id, _)| *id);
        Ok(results.into_iter().map(|(_, r)| r).collect())
    }
}

/// Threads for `producers` producers at `--threads asked` (0: one per CPU).
fn thread_count(asked: u32, producers: u32) -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let asked = match asked {
        0 => u32::try_from(cpus).unwrap_or(u32::MAX),
        n => n,
    };
    asked.min(producers).max(1)
}

/// One producer thread: connect producers `ids`, report ready, wait for the run, run
/// them, hand back their results.
fn thread_main(
    plan: Plan,
    ids: Vec<u32>,
    ready: oneshot::Sender<Result<()>>,
    go: oneshot::Receiver<Arc<Run>>,
    done: oneshot::Sender<Vec<(u32, ProducerResult)>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(anyhow!("producer thread runtime: {e}")));
            return;
        }
    };
    runtime.block_on(async move {
        let mut mine = Vec::new();
        for id in ids {
            match connect(&plan, id).await {
                Ok(p) => mine.push((id, p)),
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return;
                }
            }
        }
        let _ = ready.send(Ok(()));
        let Ok(run) = go.await else {
            return; // the run never started
        };
        let handles: Vec<_> = mine
            .into_iter()
            .map(|(id, (client, producer))| {
                let count = produce::share(&run.plan, id);
                let task = produce::run_producer(run.clone(), id, client, producer, count);
                (id, tokio::spawn(task))
            })
            .collect();
        let mut out = Vec::new();
        for (id, handle) in handles {
            if let Ok(result) = handle.await {
                out.push((id, result));
            }
        }
        let _ = done.send(out);
    });
    // Tasks still waiting on a broker that went away must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_secs(1));
}

/// Producer `id`'s own client and SDK producer.
async fn connect(plan: &Plan, id: u32) -> Result<(Client, Producer)> {
    let client = setup::connect(plan, &format!("producer-{id}")).await?;
    let producer = client
        .producer(produce::config(plan))
        .map_err(|e| anyhow!("producer configuration: {e}"))?;
    Ok((client, producer))
}

#[cfg(test)]
mod tests {
    use super::thread_count;

    #[test]
    fn threads_are_bounded_by_the_producers_and_at_least_one() {
        assert_eq!(thread_count(3, 8), 3);
        assert_eq!(thread_count(16, 4), 4);
        assert_eq!(thread_count(1, 1), 1);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        assert_eq!(thread_count(0, 1024), cpus.min(1024));
        assert_eq!(thread_count(0, 1), 1);
    }
}
