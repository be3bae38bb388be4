//! Child process of the SIGKILL test: appends deterministic batches to a partition
//! log through the glommio (io_uring, O_DIRECT) backend and, after every sync,
//! prints `durable <batches> <durable_end>` — the number of batches now known to be
//! fsynced. The parent kills it with SIGKILL at random moments and checks that every
//! batch it was told about survived.
//!
//! Usage: `crash-child DIR SECONDS_MAX direct|buffered`. On start it resumes after the
//! last batch in the log (batch numbers are in the keys), so rounds continue one log.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use sluice_io::{DataFileMode, GlommioStorage};
use sluice_proto::{BatchView, Limits};
use sluice_storage::PartitionLog;
use sluice_storage_tests::{process_batch, process_config};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .context("usage: crash-child DIR SECONDS_MAX direct|buffered")?;
    let secs: u64 = args.next().context("SECONDS_MAX")?.parse()?;
    let mode = match args.next().as_deref() {
        Some("direct") => DataFileMode::Direct,
        Some("buffered") => DataFileMode::Buffered,
        other => anyhow::bail!("data-file mode must be direct or buffered, not {other:?}"),
    };
    let handle = sluice_io::executor_builder(glommio::Placement::Unbound)
        .name("crash-child")
        .spawn(move || async move { run(&dir, secs, mode).await })
        .map_err(|e| anyhow!("spawn executor: {e}"))?;
    handle.join().map_err(|e| anyhow!("executor: {e:?}"))?
}

async fn run(dir: &str, secs: u64, mode: DataFileMode) -> anyhow::Result<()> {
    let storage = GlommioStorage::open_dir(dir)?.with_mode(mode);
    let (mut log, _) = PartitionLog::open(storage, process_config(), 0).await?;
    let limits = Limits::default();
    // Resume after the last stored batch: its key is its batch number.
    let mut next_batch = 0u64;
    if log.next_offset() > 0 {
        let last = log.read(log.next_offset() - 1, 1).await?;
        let view = BatchView::parse(&last.bytes, &limits)?;
        let key = view
            .records()
            .next()
            .and_then(|r| r.key)
            .context("batch without key")?;
        next_batch = u64::from_le_bytes(key.try_into().context("key is not a batch number")?) + 1;
    }
    let stdout = std::io::stdout();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut i = 0u64;
    while Instant::now() < deadline {
        let mut batch = process_batch(next_batch);
        log.append(&mut batch, 0).await?;
        next_batch += 1;
        i += 1;
        // Group commit: a sync after every 1 to 4 appends.
        if i % (1 + next_batch % 4) == 0 {
            let end = log.sync().await?;
            let mut out = stdout.lock();
            writeln!(out, "durable {next_batch} {end}")?;
            out.flush()?;
        }
    }
    Ok(())
}
