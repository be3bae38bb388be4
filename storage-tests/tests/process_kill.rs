//! Real process, real disk, real io_uring: a child appends and syncs through the
//! glommio backend (O_DIRECT in even rounds, buffered in odd ones, on the same log)
//! and reports what is durable; the parent SIGKILLs it at random
//! moments, 24 rounds on one log, and after each kill reopens the log (with the std
//! backend, which also proves the two backends agree on the format) and checks every
//! batch the child reported durable, byte for byte, and that the log is exactly the
//! batches 0..n in order.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use pollster::block_on;
use rand::{Rng, SeedableRng};
use sluice_io::StdStorage;
use sluice_proto::{batches, Limits};
use sluice_storage::PartitionLog;
use sluice_storage_tests::{process_batch, process_config};

const ROUNDS: usize = 24;

#[test]
fn sigkill_never_loses_a_reported_durable_batch() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("partition");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x4b11);
    let mut durable_batches = 0u64;
    let mut stored = 0u64;
    for round in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash-child"))
            .arg(&path)
            .arg("20")
            .arg(if round % 2 == 0 { "direct" } else { "buffered" })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        // Wait until the child has made progress, then kill it at a random moment.
        let first = rx.recv_timeout(Duration::from_secs(15));
        assert!(first.is_ok(), "round {round}: child reported nothing");
        let kill_after = Duration::from_millis(rng.random_range(1..250));
        std::thread::sleep(kill_after);
        // SIGKILL: no chance to flush anything.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: child exited on its own");
        reader.join().unwrap();
        let reported: Vec<String> = rx.try_iter().collect();
        let last = reported.last().cloned().or(first.ok()).unwrap();
        let n: u64 = last.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(
            n >= durable_batches,
            "round {round}: durable count went back"
        );
        durable_batches = n;

        let storage = StdStorage::open_dir(&path).unwrap();
        let (log, _) = block_on(PartitionLog::open(storage, process_config(), 0)).unwrap();
        let limits = Limits::default();
        let mut at = 0;
        let mut i = 0u64;
        let mut expect_base = 0u64;
        while at < log.next_offset() {
            let read = block_on(log.read(at, 1 << 20)).unwrap();
            for b in batches(&read.bytes, &limits) {
                let b = b.unwrap();
                assert_eq!(
                    b.header().base_offset,
                    expect_base,
                    "round {round}: offsets not contiguous"
                );
                expect_base = b.header().last_offset() + 1;
                let mut want = process_batch(i);
                sluice_proto::set_base_offset(
                    &mut want,
                    expect_base - u64::from(b.header().record_count),
                )
                .unwrap();
                assert_eq!(b.as_bytes(), &want[..], "round {round}: batch {i} differs");
                i += 1;
            }
            at = read.next_offset;
        }
        assert!(
            i >= durable_batches,
            "round {round}: {durable_batches} batches reported durable, {i} recovered"
        );
        assert!(block_on(log.verify()).unwrap().is_empty());
        stored = i;
        drop(log);
    }
    eprintln!(
        "sigkill: {ROUNDS} rounds, {durable_batches} batches reported durable, {stored} stored"
    );
}
