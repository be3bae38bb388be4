//! A checked-in log written in today's on-disk format (storage format v1, batch
//! format v1) that every later build must keep opening, byte for byte.
//!
//! The fixture in `fixtures/log-v1/` holds three sealed segments and an active one,
//! a log-start checkpoint, and a clean-shutdown marker. Regenerate it only when the
//! format version changes (and then keep the old one too):
//! `SLUICE_WRITE_FIXTURE=1 cargo test -p sluice-storage-tests --test fixture`.

use std::path::{Path, PathBuf};

use pollster::block_on;
use sluice_proto::{batches, BatchBuilder, Limits};
use sluice_storage::{LogConfig, MemFs, PartitionLog, CLEAN_SHUTDOWN_FILE};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/log-v1")
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 2048,
        index_interval_bytes: 256,
        index_bytes_max: 1024,
        retention_bytes_max: None,
        retention_age_ms_max: None,
        ..LogConfig::default()
    }
}

/// The deterministic content: batch i has i % 3 + 1 records, record j of batch i has
/// key "k{i}", value "v{i}.{j}" and timestamp 1_700_000_000_000 + 1000 * i + j.
fn fixture_batch(i: u64) -> Vec<u8> {
    let mut b = BatchBuilder::new(Limits::default());
    for j in 0..(i % 3 + 1) {
        let key = format!("k{i}");
        let value = format!("v{i}.{j}").repeat(8);
        b.push(
            1_700_000_000_000 + 1000 * i as i64 + j as i64,
            Some(key.as_bytes()),
            Some(value.as_bytes()),
            &[("h", Some(b"x"))],
        )
        .unwrap();
    }
    b.finish().unwrap()
}

const BATCHES: u64 = 40;
const LOG_START: u64 = 5;

fn load() -> MemFs {
    let fs = MemFs::new();
    for entry in std::fs::read_dir(fixture_dir()).expect("fixture directory") {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        fs.put_file(&name, &std::fs::read(entry.path()).unwrap());
    }
    fs
}

#[test]
fn fixture_v1_keeps_opening() {
    if std::env::var_os("SLUICE_WRITE_FIXTURE").is_some() {
        write_fixture();
    }
    for clean in [true, false] {
        let fs = load();
        if !clean {
            fs.put_file(CLEAN_SHUTDOWN_FILE, b"");
            block_on(sluice_storage::Storage::remove(&fs, CLEAN_SHUTDOWN_FILE)).unwrap();
        }
        let (log, report) = block_on(PartitionLog::open(fs, config(), 0)).unwrap();
        assert_eq!(report.clean, clean);
        assert_eq!(report.truncated_bytes, 0);
        assert!(log.segment_count() >= 4, "fixture has sealed segments");
        assert_eq!(log.log_start_offset(), LOG_START);
        let expected_records: u64 = (0..BATCHES).map(|i| i % 3 + 1).sum();
        assert_eq!(log.next_offset(), expected_records);
        assert!(block_on(log.verify()).unwrap().is_empty());
        // Every batch from the one holding the log start reads back byte for byte,
        // with the base offset written in.
        let bases: Vec<u64> = (0..BATCHES)
            .scan(0u64, |next, i| {
                let base = *next;
                *next += i % 3 + 1;
                Some(base)
            })
            .collect();
        let mut i = bases.partition_point(|&b| b <= LOG_START) as u64 - 1;
        let limits = Limits::default();
        let mut read_at = LOG_START;
        while read_at < log.next_offset() {
            let read = block_on(log.read(read_at, 700)).unwrap();
            for b in batches(&read.bytes, &limits) {
                let mut want = fixture_batch(i);
                sluice_proto::set_base_offset(&mut want, bases[i as usize]).unwrap();
                assert_eq!(b.unwrap().as_bytes(), &want[..], "batch {i}");
                i += 1;
            }
            read_at = read.next_offset;
        }
        assert_eq!(i, BATCHES);
        // Batch 10 starts at offset 19 (1+2+3 records per three batches, then 1).
        let ts = 1_700_000_000_000 + 10_000;
        assert_eq!(block_on(log.offset_for_timestamp(ts)).unwrap(), Some(19));
        assert_eq!(
            block_on(log.offset_for_timestamp(ts + 1)).unwrap(),
            Some(20)
        );
    }
}

fn write_fixture() {
    let dir = fixture_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fs = MemFs::new();
    let (mut log, _) = block_on(PartitionLog::open(fs.clone(), config(), 0)).unwrap();
    for i in 0..BATCHES {
        block_on(log.append(&mut fixture_batch(i), 0)).unwrap();
    }
    block_on(log.truncate_prefix(LOG_START)).unwrap();
    block_on(log.close()).unwrap();
    for name in fs.file_names() {
        std::fs::write(dir.join(&name), fs.read_file(&name).unwrap()).unwrap();
    }
}
