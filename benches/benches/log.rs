//! Partition-log costs on the std backend (`sluice_io::std_fs::StdStorage`: buffered
//! files, page cache, blocking syscalls), in bytes per second of encoded batch:
//!
//! - `log_std/append_sync/<size>`: one `append` of a batch followed by one `sync`
//!   (a full fdatasync per batch: the group-commit worst case). Dominated by the
//!   disk's flush latency, so the sample is small.
//! - `log_std/read_hot/<size>`: reading back a 64 MiB log that sits in the page cache,
//!   `read(offset, 1 MiB)` after `read` from the first offset to the end. This is
//!   the log's own cost (index seek, batch framing checks, copy out), not the disk's.
//!
//! The engine's backend (glommio, O_DIRECT) is measured by `sluice-storage-bench`,
//! which runs a glommio executor; criterion's loop does not.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_bench::{build_batch, log_config, BASE_TIMESTAMP_MS};
use sluice_io::std_fs::StdStorage;
use sluice_storage::PartitionLog;

const RECORD_BYTES: usize = 1024;
const BATCH_SIZES: [(&str, usize); 2] = [("16KiB", 16 << 10), ("1MiB", 1 << 20)];
/// Size of the log the read benchmark reads back, whole, per iteration.
const HOT_LOG_BYTES: usize = 64 << 20;
/// Most bytes one `read` returns, as a consumer fetch would ask.
const READ_BYTES_MAX: usize = 1 << 20;

/// A fresh data directory on the build disk (`target/tmp`, which cargo provides to
/// benchmarks), not in the source tree.
fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("log-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("bench: tempdir")
}

fn open_log(dir: &tempfile::TempDir) -> PartitionLog<StdStorage> {
    let storage = StdStorage::open_dir(dir.path()).expect("bench: open dir");
    let (log, _) = pollster::block_on(PartitionLog::open(storage, log_config(), BASE_TIMESTAMP_MS))
        .expect("bench: open log");
    log
}

fn append_sync(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_std");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (name, batch_bytes) in BATCH_SIZES {
        let dir = data_dir();
        let mut log = open_log(&dir);
        let mut batch = build_batch(batch_bytes, RECORD_BYTES).expect("bench: batch");
        group.throughput(Throughput::Bytes(batch.len() as u64));
        group.bench_function(BenchmarkId::new("append_sync", name), |b| {
            b.iter(|| {
                pollster::block_on(async {
                    log.append(&mut batch, BASE_TIMESTAMP_MS)
                        .await
                        .expect("bench: append");
                    log.sync().await.expect("bench: sync")
                })
            })
        });
        pollster::block_on(log.close()).expect("bench: close");
    }
    group.finish();
}

fn read_hot(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_std");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (name, batch_bytes) in BATCH_SIZES {
        let dir = data_dir();
        let mut log = open_log(&dir);
        let mut batch = build_batch(batch_bytes, RECORD_BYTES).expect("bench: batch");
        let batches = HOT_LOG_BYTES / batch.len() + 1;
        pollster::block_on(async {
            for _ in 0..batches {
                log.append(&mut batch, BASE_TIMESTAMP_MS)
                    .await
                    .expect("bench: append");
            }
            log.sync().await.expect("bench: sync");
        });
        let end = log.next_offset();
        let size = log.size_bytes();
        group.throughput(Throughput::Bytes(size));
        group.bench_function(BenchmarkId::new("read_hot", name), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    let read = pollster::block_on(read_all(&log, end));
                    assert_eq!(read, size, "bench: read back a different size");
                }
                start.elapsed()
            })
        });
        pollster::block_on(log.close()).expect("bench: close");
    }
    group.finish();
}

/// Reads the log from its start to `end`, returning the bytes read.
async fn read_all(log: &PartitionLog<StdStorage>, end: u64) -> u64 {
    let mut offset = log.log_start_offset();
    let mut bytes = 0u64;
    while offset < end {
        let got = log.read(offset, READ_BYTES_MAX).await.expect("bench: read");
        assert!(got.next_offset > offset, "bench: read made no progress");
        bytes += got.bytes.len() as u64;
        offset = got.next_offset;
    }
    bytes
}

criterion_group!(benches, append_sync, read_hot);
criterion_main!(benches);
