//! Partition-log costs per backend, in bytes per second of encoded batch (1 KiB
//! records, batches of 16 KiB and 1 MiB):
//!
//! - `log_<backend>/append_sync/<size>`: one `append` then one `sync` (an fdatasync
//!   per batch: the group-commit worst case). Dominated by the disk's flush latency,
//!   so the sample is small.
//! - `log_<backend>/append8_sync/<size>`: eight appends, then one `sync` (group
//!   commit); throughput counts all eight batches.
//! - `log_<backend>/read_hot/<size>`: reading back a 64 MiB log just written,
//!   `read(offset, 1 MiB)` from the first offset to the end. For the buffered
//!   backends this is the log's own cost (index seek, framing and CRC checks, copy
//!   out) over the page cache; for `glommio_direct` it is the device.
//!
//! Backends: `std` (`StdStorage`, blocking syscalls, driven by `pollster`),
//! `glommio` (`GlommioStorage`, buffered io_uring files, the engine's default) and
//! `glommio_direct` (`DataFileMode::Direct`, O_DIRECT). The glommio ones run every
//! iteration on one glommio executor (`LocalExecutor::run`), built with the small
//! `io_memory` this machine's memlock limit allows.

use std::time::{Duration, Instant};

use std::future::Future;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_bench::{build_batch, log_config, BASE_TIMESTAMP_MS};
use sluice_io::std_fs::StdStorage;
use sluice_io::{DataFileMode, GlommioStorage};
use sluice_storage::{PartitionLog, Storage};

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

/// Runs the log's futures for one backend.
trait Driver {
    type S: Storage;
    fn name(&self) -> &'static str;
    fn storage(&self, dir: &tempfile::TempDir) -> Self::S;
    fn block<T>(&self, f: impl Future<Output = T>) -> T;

    fn open_log(&self, dir: &tempfile::TempDir) -> PartitionLog<Self::S> {
        let storage = self.storage(dir);
        let (log, _) = self
            .block(PartitionLog::open(storage, log_config(), BASE_TIMESTAMP_MS))
            .expect("bench: open log");
        log
    }
}

struct Std;

impl Driver for Std {
    type S = StdStorage;
    fn name(&self) -> &'static str {
        "log_std"
    }
    fn storage(&self, dir: &tempfile::TempDir) -> StdStorage {
        StdStorage::open_dir(dir.path()).expect("bench: open dir")
    }
    fn block<T>(&self, f: impl Future<Output = T>) -> T {
        pollster::block_on(f)
    }
}

struct Glommio {
    executor: glommio::LocalExecutor,
    mode: DataFileMode,
}

impl Glommio {
    fn new(mode: DataFileMode) -> Self {
        let executor = sluice_io::executor_builder(glommio::Placement::Unbound)
            .make()
            .expect("bench: glommio executor");
        Self { executor, mode }
    }
}

impl Driver for Glommio {
    type S = GlommioStorage;
    fn name(&self) -> &'static str {
        match self.mode {
            DataFileMode::Buffered => "log_glommio",
            DataFileMode::Direct => "log_glommio_direct",
        }
    }
    fn storage(&self, dir: &tempfile::TempDir) -> GlommioStorage {
        GlommioStorage::open_dir(dir.path())
            .expect("bench: open dir")
            .with_mode(self.mode)
    }
    fn block<T>(&self, f: impl Future<Output = T>) -> T {
        self.executor.run(f)
    }
}

fn append_sync<D: Driver>(c: &mut Criterion, d: &D) {
    let mut group = c.benchmark_group(d.name());
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (per_sync, label) in [(1usize, "append_sync"), (8, "append8_sync")] {
        for (name, batch_bytes) in BATCH_SIZES {
            let dir = data_dir();
            let mut log = d.open_log(&dir);
            let mut batch = build_batch(batch_bytes, RECORD_BYTES).expect("bench: batch");
            group.throughput(Throughput::Bytes((batch.len() * per_sync) as u64));
            group.bench_function(BenchmarkId::new(label, name), |b| {
                b.iter(|| {
                    d.block(async {
                        for _ in 0..per_sync {
                            log.append(&mut batch, BASE_TIMESTAMP_MS)
                                .await
                                .expect("bench: append");
                        }
                        log.sync().await.expect("bench: sync")
                    })
                })
            });
            d.block(log.close()).expect("bench: close");
        }
    }
    group.finish();
}

fn read_hot<D: Driver>(c: &mut Criterion, d: &D) {
    let mut group = c.benchmark_group(d.name());
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (name, batch_bytes) in BATCH_SIZES {
        let dir = data_dir();
        let mut log = d.open_log(&dir);
        let mut batch = build_batch(batch_bytes, RECORD_BYTES).expect("bench: batch");
        let batches = HOT_LOG_BYTES / batch.len() + 1;
        d.block(async {
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
                    let read = d.block(read_all(&log, end));
                    assert_eq!(read, size, "bench: read back a different size");
                }
                start.elapsed()
            })
        });
        d.block(log.close()).expect("bench: close");
    }
    group.finish();
}

/// Reads the log from its start to `end`, returning the bytes read.
async fn read_all<S: Storage>(log: &PartitionLog<S>, end: u64) -> u64 {
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

fn std_backend(c: &mut Criterion) {
    append_sync(c, &Std);
    read_hot(c, &Std);
}

fn glommio_backends(c: &mut Criterion) {
    for mode in [DataFileMode::Buffered, DataFileMode::Direct] {
        let d = Glommio::new(mode);
        append_sync(c, &d);
        read_hot(c, &d);
    }
}

criterion_group!(benches, std_backend, glommio_backends);
criterion_main!(benches);
