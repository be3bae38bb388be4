//! Record-batch codec costs, in bytes per second of encoded batch:
//!
//! - `batch/encode/<size>`: `BatchBuilder` from prepared 1 KiB payloads to a finished
//!   batch (record encoding plus the one CRC pass of `finish`);
//! - `batch/decode/<size>`: `BatchView::parse` (header, limits and record framing
//!   checks) and a walk over every record's key and value;
//! - `batch/crc/<size>`: `verify_crc` alone, what a log scan pays per batch.
//!
//! Sizes are the payload per batch: 16 KiB (16 records) and 1 MiB (1024 records).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_bench::{encode, payloads};
use sluice_proto::{verify_crc, BatchView, Limits};

const RECORD_BYTES: usize = 1024;
const BATCH_SIZES: [(&str, usize); 2] = [("16KiB", 16 << 10), ("1MiB", 1 << 20)];

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

fn codec(c: &mut Criterion) {
    let limits = Limits::default();
    let mut group = c.benchmark_group("batch");
    for (name, batch_bytes) in BATCH_SIZES {
        let records = payloads(batch_bytes / RECORD_BYTES, RECORD_BYTES);
        let batch = encode(&records, limits).expect("bench: encode");
        group.throughput(Throughput::Bytes(batch.len() as u64));

        group.bench_with_input(BenchmarkId::new("encode", name), &records, |b, records| {
            b.iter(|| encode(black_box(records), limits).expect("bench: encode"))
        });

        group.bench_with_input(BenchmarkId::new("decode", name), &batch, |b, batch| {
            b.iter(|| {
                let view = BatchView::parse(black_box(batch), &limits).expect("bench: parse");
                // Touch every record's fields so the walk cannot be skipped.
                let mut sum = 0usize;
                for r in view.records() {
                    sum += r.key.map_or(0, <[u8]>::len) + r.value.map_or(0, <[u8]>::len);
                    sum ^= r.offset as usize;
                }
                sum
            })
        });

        group.bench_with_input(BenchmarkId::new("crc", name), &batch, |b, batch| {
            b.iter(|| verify_crc(black_box(batch)).expect("bench: crc"))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = codec
}
criterion_main!(benches);
