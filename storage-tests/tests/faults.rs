//! Error injection: EIO on fsync poisons the log, EIO on write errors to the caller
//! and leaves nothing half-visible, ENOSPC errors and appends resume once space
//! returns — first as three scripted cases, then as seeded random fault schedules
//! checked against a model after a crash.

use pollster::block_on;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_proto::{batches, Limits};
use sluice_storage::{CrashModel, LogConfig, LogError, MemFs, PartitionLog};
use sluice_storage_tests::{make_batch, small_config};

fn config() -> LogConfig {
    small_config()
}

fn batch(tag: u64, n: usize, value_bytes: usize, ts: i64) -> Vec<u8> {
    make_batch(tag, &vec![value_bytes; n], ts)
}

fn open(fs: &MemFs) -> PartitionLog<MemFs> {
    block_on(PartitionLog::open(fs.clone(), config(), 0))
        .unwrap()
        .0
}

/// Every stored batch, as bytes, in offset order.
fn all_batches(log: &PartitionLog<MemFs>) -> Vec<Vec<u8>> {
    let limits = Limits::default();
    let mut out = Vec::new();
    let mut at = log.log_start_offset();
    while at < log.next_offset() {
        let read = block_on(log.read(at, 1 << 16)).unwrap();
        assert!(read.count > 0);
        for b in batches(&read.bytes, &limits) {
            out.push(b.unwrap().as_bytes().to_vec());
        }
        at = read.next_offset;
    }
    out
}

/// Every stored record value, in offset order.
fn all_records(log: &PartitionLog<MemFs>) -> Vec<Vec<u8>> {
    let limits = Limits::default();
    all_batches(log)
        .iter()
        .flat_map(|b| {
            let view = sluice_proto::BatchView::parse(b, &limits).unwrap();
            view.records()
                .map(|r| r.value.unwrap_or_default().to_vec())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn failed_fsync_poisons_until_reopen() {
    let fs = MemFs::new();
    let mut log = open(&fs);
    block_on(log.append(&mut batch(0, 1, 10, 0), 0)).unwrap();
    block_on(log.sync()).unwrap();
    block_on(log.append(&mut batch(1, 1, 10, 0), 0)).unwrap();
    fs.fail_syncs(1);
    assert!(matches!(
        block_on(log.sync()),
        Err(LogError::Poisoned { .. })
    ));
    assert!(log.poisoned().is_some());
    // Not retried, not carried on: every write is refused now, even with a healthy disk.
    assert!(matches!(
        block_on(log.append(&mut batch(2, 1, 10, 0), 0)),
        Err(LogError::Poisoned { .. })
    ));
    assert!(matches!(
        block_on(log.sync()),
        Err(LogError::Poisoned { .. })
    ));
    assert!(matches!(
        block_on(log.truncate_suffix(0)),
        Err(LogError::Poisoned { .. })
    ));
    assert_eq!(log.durable_end(), 1);
    drop(log);
    let mut log = open(&fs);
    assert!(log.poisoned().is_none());
    block_on(log.append(&mut batch(3, 1, 10, 0), 0)).unwrap();
}

#[test]
fn failed_write_leaves_nothing_visible() {
    let fs = MemFs::new();
    let mut log = open(&fs);
    block_on(log.append(&mut batch(0, 2, 10, 0), 0)).unwrap();
    fs.fail_writes(1);
    assert!(matches!(
        block_on(log.append(&mut batch(1, 2, 500, 0), 0)),
        Err(LogError::Io { .. })
    ));
    assert_eq!(log.next_offset(), 2);
    assert_eq!(all_records(&log).len(), 2);
    assert!(block_on(log.verify()).unwrap().is_empty());
    assert_eq!(
        block_on(log.append(&mut batch(2, 1, 10, 0), 0))
            .unwrap()
            .base_offset,
        2
    );
}

#[test]
fn enospc_errors_then_appends_resume() {
    let fs = MemFs::new();
    let mut log = open(&fs);
    fs.set_capacity(Some(fs.used_bytes() + 3_000));
    let mut appended = 0;
    let err = loop {
        match block_on(log.append(&mut batch(appended, 1, 400, 0), 0)) {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
    };
    assert!(err.is_storage_full(), "{err}");
    assert_eq!(log.next_offset(), appended);
    assert!(block_on(log.verify()).unwrap().is_empty());
    fs.set_capacity(None);
    block_on(log.append(&mut batch(99, 1, 400, 0), 0)).unwrap();
    block_on(log.sync()).unwrap();
    assert_eq!(all_records(&log).len() as u64, appended + 1);
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    SyncEio,
    WriteEio,
    Enospc,
}

/// Random appends and syncs with one fault of each kind injected at random moments.
/// After every fault the log must behave as its kind promises; at the end a crash
/// image must still hold every batch that was durable, byte for byte.
#[test]
fn random_fault_schedules_keep_durable_data_and_hide_failed_writes() {
    let mut faults_seen = [0u32; 3];
    for seed in 1..=60u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let fs = MemFs::new();
        let mut log = open(&fs);
        // Model: stored batch bytes in offset order; `durable` = how many are fsynced.
        let mut stored: Vec<Vec<u8>> = Vec::new();
        let mut durable = 0usize;
        let mut poisoned = false;
        for step in 0..150u64 {
            if rng.random_ratio(1, 25) {
                let fault =
                    [Fault::SyncEio, Fault::WriteEio, Fault::Enospc][rng.random_range(0..3)];
                match fault {
                    Fault::SyncEio => fs.fail_syncs(1),
                    Fault::WriteEio => fs.fail_writes(1),
                    Fault::Enospc => {
                        fs.set_capacity(Some(fs.used_bytes() + rng.random_range(0..2_000)))
                    }
                }
                faults_seen[fault as usize] += 1;
            }
            if rng.random_ratio(1, 10) {
                fs.set_capacity(None);
            }
            if rng.random_ratio(1, 3) {
                match block_on(log.sync()) {
                    Ok(end) => {
                        assert!(!poisoned, "seed {seed}: sync succeeded on a poisoned log");
                        durable = stored.len();
                        assert_eq!(end, log.next_offset());
                    }
                    Err(LogError::Poisoned { .. }) => poisoned = true,
                    Err(e) => panic!("seed {seed} step {step}: sync failed untyped: {e}"),
                }
                continue;
            }
            let mut b = batch(
                step,
                rng.random_range(1..4),
                rng.random_range(10..900),
                step as i64,
            );
            let next_before = log.next_offset();
            match block_on(log.append(&mut b, step as i64)) {
                Ok(_) => {
                    assert!(!poisoned, "seed {seed}: append succeeded on a poisoned log");
                    stored.push(b);
                }
                Err(LogError::Poisoned { .. }) => {
                    // A roll's fsync can be the one that fails.
                    poisoned = true;
                }
                Err(e @ LogError::Io { .. }) => {
                    assert_eq!(
                        log.next_offset(),
                        next_before,
                        "seed {seed}: failed append moved the log: {e}"
                    );
                }
                Err(e) => panic!("seed {seed} step {step}: unexpected {e}"),
            }
            if !poisoned {
                // Nothing half-visible: reads show exactly the model.
                assert_eq!(
                    all_batches(&log).len(),
                    stored.len() - first_visible(&log, &stored)
                );
            }
        }
        // Crash: every durable batch survives, and nothing that never succeeded appears.
        fs.set_capacity(None);
        for model in [CrashModel::LoseUnsynced, CrashModel::TornPrefix] {
            let image = fs.crash(model, &mut rng);
            let (recovered, _) = block_on(PartitionLog::open(image, config(), 0)).unwrap();
            let got = all_batches(&recovered);
            let skip = first_visible(&recovered, &stored);
            assert!(
                got.len() + skip >= durable.min(stored.len()),
                "seed {seed}: lost durable batches under {model:?}"
            );
            for (i, b) in got.iter().enumerate() {
                assert_eq!(
                    b,
                    &stored[skip + i],
                    "seed {seed}: batch {i} differs under {model:?}"
                );
            }
            assert!(block_on(recovered.verify()).unwrap().is_empty());
        }
    }
    assert!(
        faults_seen.iter().all(|&n| n > 10),
        "every fault kind ran: {faults_seen:?}"
    );
}

/// How many model batches lie below the log's start (removed by nothing here, so 0
/// unless retention is configured; kept general for the small config).
fn first_visible(log: &PartitionLog<MemFs>, stored: &[Vec<u8>]) -> usize {
    let limits = Limits::default();
    stored
        .iter()
        .take_while(|b| {
            sluice_proto::BatchHeader::parse(b, &limits)
                .map(|h| h.last_offset() < log.log_start_offset())
                .unwrap_or(false)
        })
        .count()
}
