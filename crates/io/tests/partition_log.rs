//! End to end: the real partition log on both backends. Thousands of batches over
//! many segments, clean close and reopen, unclean drop and reopen, byte-for-byte.

mod common;

use common::{assert_same, run_glommio, run_std, Rng};
use sluice_io::{DataFileMode, GlommioStorage, StdStorage};
use sluice_proto::{BatchBuilder, Limits};
use sluice_storage::{LogConfig, PartitionLog, Storage};

const NOW_MS: i64 = 1_700_000_000_000;

fn config() -> LogConfig {
    LogConfig {
        // Small segments: many rolls, so sealed segments (synced, trimmed indexes)
        // are reopened too.
        segment_bytes_max: 256 << 10,
        index_interval_bytes: 4096,
        index_bytes_max: 16 << 10,
        ..LogConfig::default()
    }
}

/// A batch of 1..=4 records with keys and values of awkward sizes.
fn batch(i: u64, rng: &mut Rng) -> Vec<u8> {
    let mut b = BatchBuilder::new(Limits::default());
    let records = 1 + rng.below(4);
    for r in 0..records {
        let key = format!("key-{i}-{r}");
        let n = rng.below(1500) as usize;
        let value = rng.bytes(n);
        let ts = NOW_MS + i as i64 * 10 + r as i64;
        let header = i.to_le_bytes();
        b.push(
            ts,
            Some(key.as_bytes()),
            Some(&value),
            &[("h", Some(&header[..]))],
        )
        .unwrap();
    }
    b.finish().unwrap()
}

/// Reads the whole log from its start and compares with what was appended.
async fn check_all<S: Storage>(log: &PartitionLog<S>, expected: &[u8], batches: usize) {
    let mut got = Vec::with_capacity(expected.len());
    let mut count = 0;
    let mut from = log.log_start_offset();
    while from < log.next_offset() {
        let read = log.read(from, 64 << 10).await.unwrap();
        assert!(read.count > 0, "no progress at offset {from}");
        assert!(read.next_offset > from);
        got.extend_from_slice(&read.bytes);
        count += read.count;
        from = read.next_offset;
    }
    assert_eq!(count, batches, "batch count");
    assert_same(&got, expected, "log contents");
}

struct Appender {
    rng: Rng,
    expected: Vec<u8>,
    batches: usize,
    next: u64,
}

impl Appender {
    async fn append<S: Storage>(&mut self, log: &mut PartitionLog<S>, n: usize, sync_every: usize) {
        for k in 0..n {
            let mut b = batch(self.next, &mut self.rng);
            let records = sluice_proto::BatchHeader::parse(&b, &Limits::default())
                .unwrap()
                .record_count;
            let at = log.append(&mut b, NOW_MS + self.next as i64).await.unwrap();
            assert_eq!(at.base_offset, log.next_offset() - u64::from(records));
            // `append` wrote the base offset into `b`: these are the stored bytes.
            self.expected.extend_from_slice(&b);
            self.batches += 1;
            self.next += 1;
            if sync_every > 0 && k % sync_every == sync_every - 1 {
                assert_eq!(log.sync().await.unwrap(), log.next_offset());
            }
        }
    }
}

async fn log_roundtrip<S: Storage>(make: impl Fn() -> S) {
    let mut app = Appender {
        rng: Rng::new(42),
        expected: Vec::new(),
        batches: 0,
        next: 0,
    };
    let (mut log, report) = PartitionLog::open(make(), config(), NOW_MS).await.unwrap();
    assert!(!report.clean);
    app.append(&mut log, 3000, 50).await;
    log.sync().await.unwrap();
    assert!(log.segment_count() > 5, "segments: {}", log.segment_count());
    check_all(&log, &app.expected, app.batches).await;
    log.close().await.unwrap();

    // Clean reopen: nothing cut, everything back.
    let (mut log, report) = PartitionLog::open(make(), config(), NOW_MS).await.unwrap();
    assert!(report.clean);
    assert_eq!(report.truncated_bytes, 0);
    check_all(&log, &app.expected, app.batches).await;

    // More appends, the last ones never synced, then a drop without close. The
    // process did not crash, so every appended byte is in the files.
    app.append(&mut log, 700, 100).await;
    app.append(&mut log, 37, 0).await;
    let end = log.next_offset();
    drop(log);
    let (mut log, report) = PartitionLog::open(make(), config(), NOW_MS).await.unwrap();
    assert!(!report.clean);
    // Only what lies past the last batch is cut (a DMA file's zero padding).
    assert!(
        report.truncated_bytes < 64 << 10,
        "cut {}",
        report.truncated_bytes
    );
    assert_eq!(log.next_offset(), end);
    check_all(&log, &app.expected, app.batches).await;

    // The recovered log takes appends again, and survives another clean cycle.
    app.append(&mut log, 300, 30).await;
    log.close().await.unwrap();
    let (log, report) = PartitionLog::open(make(), config(), NOW_MS).await.unwrap();
    assert!(report.clean);
    check_all(&log, &app.expected, app.batches).await;
    drop(log);
}

#[test]
fn std_partition_log_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    run_std(|| log_roundtrip(|| StdStorage::open_dir(dir.path()).unwrap()));
}

#[test]
fn glommio_partition_log_roundtrip() {
    for mode in [DataFileMode::Direct, DataFileMode::Buffered] {
        let dir = tempfile::tempdir().unwrap();
        run_glommio(|| {
            log_roundtrip(|| {
                GlommioStorage::open_dir(dir.path())
                    .unwrap()
                    .with_mode(mode)
            })
        });
    }
}

/// A log written by one backend opens and continues on the other.
#[test]
fn partition_log_moves_between_backends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut app = Appender {
        rng: Rng::new(5),
        expected: Vec::new(),
        batches: 0,
        next: 0,
    };
    let mut app = run_glommio(|| async {
        let fs = GlommioStorage::open_dir(&path)
            .unwrap()
            .with_mode(DataFileMode::Direct);
        let (mut log, _) = PartitionLog::open(fs, config(), NOW_MS).await.unwrap();
        app.append(&mut log, 500, 20).await;
        // Unclean: the unsynced padded tail must not confuse the other backend.
        app.append(&mut log, 3, 0).await;
        drop(log);
        app
    });
    app = run_std(|| async {
        let fs = StdStorage::open_dir(&path).unwrap();
        let (mut log, report) = PartitionLog::open(fs, config(), NOW_MS).await.unwrap();
        assert!(!report.clean);
        check_all(&log, &app.expected, app.batches).await;
        app.append(&mut log, 200, 20).await;
        log.close().await.unwrap();
        app
    });
    run_glommio(|| async {
        let fs = GlommioStorage::open_dir(&path)
            .unwrap()
            .with_mode(DataFileMode::Direct);
        let (mut log, report) = PartitionLog::open(fs, config(), NOW_MS).await.unwrap();
        assert!(report.clean);
        check_all(&log, &app.expected, app.batches).await;
        app.append(&mut log, 10, 0).await;
        log.close().await.unwrap();
    });
}
