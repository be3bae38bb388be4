//! `sluice-storage-bench`: sustained append + sync throughput of one partition log on
//! a real disk, then a read-back pass, on either storage backend.
//!
//! One batch of `batch-bytes / record-bytes` records is built once and appended over
//! and over through `PartitionLog::append` (which rewrites its base offset in place),
//! with a `PartitionLog::sync` (one fdatasync) after every `batches-per-sync`
//! appends, until `total-mib` of encoded batches are written or `secs` pass. Then
//! the whole log is read back with `read(offset, read-bytes)` and checked: every
//! batch must parse, pass its CRC, and carry the offsets that were assigned.
//!
//! Write throughput is encoded batch bytes over the wall time of the write phase
//! (appends and syncs). Read throughput is the bytes read over the time spent inside
//! `read` calls (the check runs outside that time). MB = 10^6 bytes, MiB = 2^20.
//!
//! Output: human-readable lines, then one machine-readable line
//! `RESULT backend=... batch_bytes=... batches_per_sync=... write_MBps=... read_MBps=...
//! p50_sync_ms=... p99_sync_ms=...`, and optionally the full report as JSON.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use sluice_bench::{
    build_batch, log_config, mb_per_s, mib_per_s, ms, per_s, Percentiles, BASE_TIMESTAMP_MS,
    RECORD_BYTES_MIN,
};
use sluice_io::glommio_fs::{DataFileMode, GlommioStorage};
use sluice_io::std_fs::StdStorage;
use sluice_proto::{batches, BatchView, Limits};
use sluice_storage::{PartitionLog, Storage};

/// Upper bound on `--total-mib` (64 GiB): the tool must stop by itself.
const TOTAL_MIB_MAX: u64 = 64 << 10;
/// Upper bound on `--secs` (one hour).
const SECS_MAX: u64 = 3600;
/// Upper bound on `--batches-per-sync`.
const BATCHES_PER_SYNC_MAX: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Backend {
    /// `sluice_io::GlommioStorage` with `DataFileMode::Buffered`: page-cache files
    /// through io_uring (the engine's where O_DIRECT is refused).
    Glommio,
    /// `sluice_io::GlommioStorage` with `DataFileMode::Direct`: O_DIRECT files
    /// through io_uring (the engine's default).
    GlommioDirect,
    /// `sluice_io::StdStorage`: buffered std files, blocking syscalls.
    Std,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Glommio => "glommio",
            Backend::GlommioDirect => "glommio-direct",
            Backend::Std => "std",
        }
    }
}

/// Sustained append+sync and read-back throughput of one partition log.
#[derive(Debug, Clone, Parser)]
#[command(name = "sluice-storage-bench", version)]
struct Args {
    /// Storage backend.
    #[arg(long, value_enum, default_value_t = Backend::Glommio)]
    backend: Backend,
    /// Directory to create the log's data directory in (a fresh temporary
    /// directory inside it). Default: the current directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Payload bytes per batch; the batch holds batch-bytes / record-bytes records.
    #[arg(long, default_value_t = 1 << 20)]
    batch_bytes: usize,
    /// Payload bytes per record (an 8-byte key and the rest value).
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Appends between two syncs (1: fdatasync after every batch).
    #[arg(long, default_value_t = 1)]
    batches_per_sync: u64,
    /// Stop writing after this many MiB of encoded batches.
    #[arg(long, default_value_t = 512)]
    total_mib: u64,
    /// Stop writing after this many seconds, whatever was written (the read pass has
    /// the same bound).
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Most bytes one read returns.
    #[arg(long, default_value_t = 1 << 20)]
    read_bytes: usize,
    /// Also write the full report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the data directory instead of deleting it at the end.
    #[arg(long)]
    keep: bool,
}

impl Args {
    fn validate(&self) -> Result<()> {
        let limits = Limits::default();
        ensure!(
            self.record_bytes >= RECORD_BYTES_MIN,
            "--record-bytes must be at least {RECORD_BYTES_MIN}"
        );
        ensure!(
            self.batch_bytes >= self.record_bytes,
            "--batch-bytes must be at least --record-bytes"
        );
        // The encoded batch adds a header and a few bytes per record; the builder
        // refuses a batch over the limit, so this is only an early, clearer error.
        ensure!(
            self.batch_bytes < limits.batch_bytes_max as usize,
            "--batch-bytes must be below the batch limit of {} bytes",
            limits.batch_bytes_max
        );
        ensure!(
            (1..=BATCHES_PER_SYNC_MAX).contains(&self.batches_per_sync),
            "--batches-per-sync must be in 1..={BATCHES_PER_SYNC_MAX}"
        );
        ensure!(
            (1..=TOTAL_MIB_MAX).contains(&self.total_mib),
            "--total-mib must be in 1..={TOTAL_MIB_MAX}"
        );
        ensure!(
            (1..=SECS_MAX).contains(&self.secs),
            "--secs must be in 1..={SECS_MAX}"
        );
        ensure!(
            self.read_bytes >= 1 && self.read_bytes <= limits.batch_bytes_max as usize,
            "--read-bytes must be in 1..={}",
            limits.batch_bytes_max
        );
        Ok(())
    }
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
struct LatencyMs {
    count: usize,
    p50: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl From<Percentiles> for LatencyMs {
    fn from(p: Percentiles) -> Self {
        LatencyMs {
            count: p.count,
            p50: ms(p.p50),
            p99: ms(p.p99),
            max: ms(p.max),
            mean: ms(p.mean),
        }
    }
}

/// Why the write phase ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum StoppedBy {
    Bytes,
    Time,
}

#[derive(Debug, Serialize)]
struct WriteReport {
    batches: u64,
    records: u64,
    bytes: u64,
    secs: f64,
    #[serde(rename = "MBps")]
    mb_per_s: f64,
    #[serde(rename = "MiBps")]
    mib_per_s: f64,
    batches_per_s: f64,
    records_per_s: f64,
    /// `PartitionLog::sync` calls that issued an fdatasync.
    fsyncs: u64,
    sync_ms: LatencyMs,
    append_ms: LatencyMs,
    stopped_by: StoppedBy,
}

#[derive(Debug, Serialize)]
struct ReadReport {
    batches: u64,
    bytes: u64,
    calls: u64,
    /// Time inside `PartitionLog::read` only.
    secs: f64,
    #[serde(rename = "MBps")]
    mb_per_s: f64,
    #[serde(rename = "MiBps")]
    mib_per_s: f64,
    /// Whether the whole log was read (false: the time bound cut it short).
    complete: bool,
    read_ms: LatencyMs,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: Backend,
    dir: PathBuf,
    batch_bytes: usize,
    batch_encoded_bytes: usize,
    record_bytes: usize,
    records_per_batch: u32,
    batches_per_sync: u64,
    total_mib: u64,
    secs_max: u64,
    read_bytes_max: usize,
    write: WriteReport,
    read: ReadReport,
}

fn main() -> Result<()> {
    let args = Args::parse();
    args.validate()?;

    let parent = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("sluice-storage-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a data directory in {}", parent.display()))?;
    let dir = std::fs::canonicalize(tmp.path())?;

    let batch = build_batch(args.batch_bytes, args.record_bytes).context("building the batch")?;
    let records_per_batch = BatchView::parse(&batch, &Limits::default())
        .context("parsing the built batch")?
        .header()
        .record_count;

    println!(
        "sluice-storage-bench: backend={} dir={} batch={} B encoded ({} records of {} B) \
         batches_per_sync={} bound={} MiB or {} s",
        args.backend.name(),
        dir.display(),
        batch.len(),
        records_per_batch,
        args.record_bytes,
        args.batches_per_sync,
        args.total_mib,
        args.secs,
    );

    let outcome = match args.backend {
        Backend::Std => {
            let storage = StdStorage::open_dir(&dir).context("opening the std storage")?;
            pollster::block_on(run(storage, &args, batch.clone()))
        }
        Backend::Glommio => run_glommio(&dir, &args, batch.clone(), DataFileMode::Buffered),
        Backend::GlommioDirect => run_glommio(&dir, &args, batch.clone(), DataFileMode::Direct),
    };

    let kept = if args.keep {
        let path = tmp.keep();
        println!("kept data directory {}", path.display());
        true
    } else {
        tmp.close()
            .with_context(|| format!("removing {}", dir.display()))?;
        false
    };
    let (write, read) = outcome?;

    let report = Report {
        backend: args.backend,
        dir: dir.clone(),
        batch_bytes: args.batch_bytes,
        batch_encoded_bytes: batch.len(),
        record_bytes: args.record_bytes,
        records_per_batch,
        batches_per_sync: args.batches_per_sync,
        total_mib: args.total_mib,
        secs_max: args.secs,
        read_bytes_max: args.read_bytes,
        write,
        read,
    };
    print_report(&report);
    if !kept {
        println!("removed data directory {}", dir.display());
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Runs the benchmark on a glommio executor of its own, sized for the memlock limit.
fn run_glommio(
    dir: &Path,
    args: &Args,
    batch: Vec<u8>,
    mode: DataFileMode,
) -> Result<(WriteReport, ReadReport)> {
    let storage = GlommioStorage::open_dir(dir)
        .context("opening the glommio storage")?
        .with_mode(mode);
    let executor = sluice_io::executor_builder(glommio::Placement::Unbound)
        .name("storage-bench")
        .make()
        .map_err(|e| anyhow::anyhow!("starting a glommio executor: {e}"))?;
    executor.run(run(storage, args, batch))
}

/// The write phase, then the read phase, on one log in `storage`.
async fn run<S: Storage>(
    storage: S,
    args: &Args,
    mut batch: Vec<u8>,
) -> Result<(WriteReport, ReadReport)> {
    let clock = Instant::now();
    let now_ms = || BASE_TIMESTAMP_MS + clock.elapsed().as_millis() as i64;
    let (mut log, _) = PartitionLog::open(storage, log_config(), now_ms())
        .await
        .context("opening the log")?;
    ensure!(log.next_offset() == 0, "the data directory is not empty");

    let limits = Limits::default();
    let records_per_batch = u64::from(BatchView::parse(&batch, &limits)?.header().record_count);
    let batch_len = batch.len() as u64;
    let bytes_target = args.total_mib << 20;
    let time_max = Duration::from_secs(args.secs);

    // Write phase.
    let mut appends: Vec<Duration> = Vec::new();
    let mut syncs: Vec<Duration> = Vec::new();
    let mut written = 0u64;
    let mut batches_written = 0u64;
    let start = Instant::now();
    let stopped_by = loop {
        if written >= bytes_target {
            break StoppedBy::Bytes;
        }
        if start.elapsed() >= time_max {
            break StoppedBy::Time;
        }
        let t = Instant::now();
        let appended = log.append(&mut batch, now_ms()).await.context("append")?;
        appends.push(t.elapsed());
        assert_eq!(
            appended.base_offset,
            batches_written * records_per_batch,
            "bench: append assigned an unexpected base offset"
        );
        batches_written += 1;
        written += batch_len;
        if batches_written % args.batches_per_sync == 0 {
            let t = Instant::now();
            log.sync().await.context("sync")?;
            syncs.push(t.elapsed());
        }
    };
    if batches_written % args.batches_per_sync != 0 {
        let t = Instant::now();
        log.sync().await.context("final sync")?;
        syncs.push(t.elapsed());
    }
    let write_elapsed = start.elapsed();
    let end = log.next_offset();
    assert_eq!(log.durable_end(), end, "bench: not everything is durable");
    assert_eq!(
        log.size_bytes(),
        written,
        "bench: log size != bytes appended"
    );

    let records = batches_written * records_per_batch;
    let write = WriteReport {
        batches: batches_written,
        records,
        bytes: written,
        secs: write_elapsed.as_secs_f64(),
        mb_per_s: mb_per_s(written, write_elapsed),
        mib_per_s: mib_per_s(written, write_elapsed),
        batches_per_s: per_s(batches_written as f64, write_elapsed),
        records_per_s: per_s(records as f64, write_elapsed),
        fsyncs: log.stats().syncs,
        sync_ms: Percentiles::of(&mut syncs).into(),
        append_ms: Percentiles::of(&mut appends).into(),
        stopped_by,
    };

    // Read phase: the whole log from its first offset, as a consumer catching up.
    let mut reads: Vec<Duration> = Vec::new();
    let mut offset = log.log_start_offset();
    let mut read_bytes = 0u64;
    let mut read_batches = 0u64;
    let mut read_time = Duration::ZERO;
    let read_start = Instant::now();
    while offset < end && read_start.elapsed() < time_max {
        let t = Instant::now();
        let got = log
            .read(offset, args.read_bytes)
            .await
            .with_context(|| format!("read at offset {offset}"))?;
        let took = t.elapsed();
        read_time += took;
        reads.push(took);
        if got.count == 0 {
            bail!("read at offset {offset} returned nothing before the end {end}");
        }
        // Check what came back (outside the timed part): whole batches with the
        // offsets the appends were given, each passing its CRC and record checks.
        let mut expect = offset;
        let mut count = 0usize;
        for view in batches(&got.bytes, &limits) {
            let view = view.with_context(|| format!("bad batch read at offset {expect}"))?;
            let header = view.header();
            ensure!(
                header.base_offset == expect,
                "batch at offset {} where {expect} was expected",
                header.base_offset
            );
            ensure!(
                view.as_bytes().len() == batch.len(),
                "batch at offset {expect} has a different length"
            );
            expect = header.last_offset() + 1;
            count += 1;
        }
        ensure!(
            count == got.count,
            "read returned {count} batches, said {}",
            got.count
        );
        ensure!(
            expect == got.next_offset,
            "read's next_offset disagrees with its batches"
        );
        read_bytes += got.bytes.len() as u64;
        read_batches += count as u64;
        offset = got.next_offset;
    }
    let complete = offset == end;
    if complete {
        assert_eq!(
            read_bytes, written,
            "bench: read back a different byte count"
        );
    }
    let read = ReadReport {
        batches: read_batches,
        bytes: read_bytes,
        calls: reads.len() as u64,
        secs: read_time.as_secs_f64(),
        mb_per_s: mb_per_s(read_bytes, read_time),
        mib_per_s: mib_per_s(read_bytes, read_time),
        complete,
        read_ms: Percentiles::of(&mut reads).into(),
    };

    log.close().await.context("closing the log")?;
    Ok((write, read))
}

fn print_report(r: &Report) {
    let w = &r.write;
    let rd = &r.read;
    println!(
        "write: {} batches, {} records, {} bytes in {:.3} s (stopped by {:?})",
        w.batches, w.records, w.bytes, w.secs, w.stopped_by
    );
    println!(
        "write: {:.1} MB/s ({:.1} MiB/s), {:.1} batches/s, {:.0} records/s, {} fsyncs",
        w.mb_per_s, w.mib_per_s, w.batches_per_s, w.records_per_s, w.fsyncs
    );
    println!(
        "sync latency ms: p50 {:.3} p99 {:.3} max {:.3} mean {:.3} (n={})",
        w.sync_ms.p50, w.sync_ms.p99, w.sync_ms.max, w.sync_ms.mean, w.sync_ms.count
    );
    println!(
        "append latency ms: p50 {:.3} p99 {:.3} max {:.3} mean {:.3} (n={})",
        w.append_ms.p50, w.append_ms.p99, w.append_ms.max, w.append_ms.mean, w.append_ms.count
    );
    println!(
        "read: {} batches, {} bytes in {} calls, {:.3} s inside read: {:.1} MB/s ({:.1} MiB/s){}",
        rd.batches,
        rd.bytes,
        rd.calls,
        rd.secs,
        rd.mb_per_s,
        rd.mib_per_s,
        if rd.complete {
            ""
        } else {
            " [cut short by --secs]"
        }
    );
    println!(
        "read latency ms (per call of up to {} B): p50 {:.3} p99 {:.3} max {:.3}",
        r.read_bytes_max, rd.read_ms.p50, rd.read_ms.p99, rd.read_ms.max
    );
    println!(
        "RESULT backend={} batch_bytes={} batches_per_sync={} write_MBps={:.1} read_MBps={:.1} \
         p50_sync_ms={:.3} p99_sync_ms={:.3}",
        r.backend.name(),
        r.batch_bytes,
        r.batches_per_sync,
        w.mb_per_s,
        rd.mb_per_s,
        w.sync_ms.p50,
        w.sync_ms.p99,
    );
}
