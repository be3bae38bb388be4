//! Ad-hoc throughput checks, not a benchmark suite (that is `benches/`): appends each
//! followed by an fdatasync, through `GlommioStorage` and `StdStorage`, and the raw
//! tail-block policies the glommio backend chose between. Ignored by default; run
//! `cargo test -p sluice-io --release --test bench_append_sync -- --ignored --nocapture --test-threads 1`
//! (`SLUICE_BENCH_DIR` picks the directory, default the system temp dir).
//!
//! The variants of one check run interleaved in small blocks on one thread, so that
//! a noisy (shared, virtual) disk disturbs them alike; per-op latencies are reported
//! as median and p90 next to the overall rate.

mod common;

use std::time::{Duration, Instant};

use glommio::io::{DmaFile, OpenOptions};
use sluice_io::{DataFileMode, GlommioStorage, StdStorage};
use sluice_storage::{LogFile, OpenMode, Storage};

const MIB: usize = 1 << 20;
const ALIGN: usize = 4096;

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("SLUICE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

/// Per-op latencies of one variant.
#[derive(Default)]
struct Samples {
    ops: Vec<Duration>,
    bytes: usize,
}

impl Samples {
    fn report(&mut self, what: &str) {
        self.ops.sort();
        let total: Duration = self.ops.iter().sum();
        let pct = |p: usize| self.ops[(self.ops.len() - 1) * p / 100].as_secs_f64() * 1e6;
        println!(
            "{what:<44} {:>7.1} MB/s  median {:>7.0} us  p90 {:>7.0} us  ({} ops)",
            self.bytes as f64 / 1e6 / total.as_secs_f64(),
            pct(50),
            pct(90),
            self.ops.len()
        );
    }
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    let ex = sluice_io::executor_builder(glommio::Placement::Unbound)
        .make()
        .unwrap();
    ex.run(f)
}

/// 1 MiB appends, each followed by a sync: GlommioStorage (exact 1 MiB and 1 MiB + 3,
/// which leaves a partial block to cut at every sync) against StdStorage.
#[test]
#[ignore = "throughput check; run by hand with --ignored --nocapture"]
fn bench_append_1mib_fdatasync() {
    let (rounds, block) = (24, 8);
    let dir = bench_dir();
    run(async {
        let gfs = GlommioStorage::open_dir(dir.path().join("g"))
            .unwrap()
            .with_mode(DataFileMode::Direct);
        let sfs = StdStorage::open_dir(dir.path().join("s")).unwrap();
        let mut g = gfs.open("exact.log", OpenMode::Create).await.unwrap();
        let mut g3 = gfs.open("odd.log", OpenMode::Create).await.unwrap();
        let mut s = sfs.open("exact.log", OpenMode::Create).await.unwrap();
        let data = common::Rng::new(1).bytes(MIB + 3);
        let mut stats: [Samples; 3] = Default::default();
        for _ in 0..rounds {
            for _ in 0..block {
                let t = Instant::now();
                g.append(&data[..MIB]).await.unwrap();
                g.sync().await.unwrap();
                stats[0].ops.push(t.elapsed());
                stats[0].bytes += MIB;
            }
            for _ in 0..block {
                let t = Instant::now();
                g3.append(&data).await.unwrap();
                g3.sync().await.unwrap();
                stats[1].ops.push(t.elapsed());
                stats[1].bytes += MIB + 3;
            }
            for _ in 0..block {
                let t = Instant::now();
                s.append(&data[..MIB]).await.unwrap();
                s.sync().await.unwrap();
                stats[2].ops.push(t.elapsed());
                stats[2].bytes += MIB;
            }
        }
        stats[0].report("GlommioStorage 1 MiB append + sync");
        stats[1].report("GlommioStorage 1 MiB+3 append + sync");
        stats[2].report("StdStorage 1 MiB append + sync");
    });
}

/// What a raw loop does with the partial last block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// Rewrite it zero-padded with O_DIRECT at every append; leave the padding on
    /// disk at sync (wrong for the log: a sealed segment would end in zeros).
    Pad,
    /// Same, then ftruncate to the logical length before the fdatasync.
    PadTrim,
    /// `GlommioStorage` as built: whole blocks at append, the partial one written
    /// buffered at sync.
    Storage,
}

const POLICIES: [Policy; 3] = [Policy::Pad, Policy::PadTrim, Policy::Storage];

struct RawFile {
    dma: DmaFile,
    tail: Vec<u8>,
    len: usize,
}

impl RawFile {
    async fn create(path: &std::path::Path) -> Self {
        let dma = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(path)
            .await
            .unwrap();
        Self {
            dma,
            tail: Vec::new(),
            len: 0,
        }
    }

    async fn append(&mut self, data: &[u8]) {
        let pos = self.len - self.tail.len();
        let mut stream = std::mem::take(&mut self.tail);
        stream.extend_from_slice(data);
        let bytes = stream.len();
        self.len += data.len();
        let padded = bytes.div_ceil(ALIGN) * ALIGN;
        let mut buf = self.dma.alloc_dma_buffer(padded);
        let b = buf.as_bytes_mut();
        b[..bytes].copy_from_slice(&stream);
        b[bytes..].fill(0);
        assert_eq!(self.dma.write_at(buf, pos as u64).await.unwrap(), padded);
        self.tail = stream[bytes / ALIGN * ALIGN..].to_vec();
    }

    async fn sync(&mut self, trim: bool) {
        if trim && !self.tail.is_empty() {
            self.dma.truncate(self.len as u64).await.unwrap();
        }
        self.dma.fdatasync().await.unwrap();
    }
}

enum Target {
    Raw(RawFile),
    Storage(sluice_io::GlommioFile),
}

/// The tail-block policies, interleaved, at three append sizes, with a sync after
/// every append and after every 10 (group commit).
#[test]
#[ignore = "throughput check; run by hand with --ignored --nocapture"]
fn bench_tail_policies() {
    let dir = bench_dir();
    run(async {
        let fs = GlommioStorage::open_dir(dir.path())
            .unwrap()
            .with_mode(DataFileMode::Direct);
        let cases = [
            (1000usize, 1, 40, 25),
            (1000, 10, 40, 5),
            (16 * 1024 + 37, 1, 40, 25),
            (16 * 1024 + 37, 10, 40, 5),
            (MIB + 3, 1, 24, 8),
        ];
        for (chunk, per_sync, rounds, block) in cases {
            let data = common::Rng::new(2).bytes(chunk);
            let mut targets = Vec::new();
            for p in POLICIES {
                let name = format!("{p:?}-{chunk}-{per_sync}");
                targets.push(match p {
                    Policy::Storage => {
                        Target::Storage(fs.open(&name, OpenMode::Create).await.unwrap())
                    }
                    _ => Target::Raw(RawFile::create(&dir.path().join(name)).await),
                });
            }
            let mut stats: Vec<Samples> = POLICIES.iter().map(|_| Samples::default()).collect();
            for _ in 0..rounds {
                for (i, p) in POLICIES.iter().enumerate() {
                    for _ in 0..block {
                        let t = Instant::now();
                        for _ in 0..per_sync {
                            match &mut targets[i] {
                                Target::Raw(f) => f.append(&data).await,
                                Target::Storage(f) => f.append(&data).await.unwrap(),
                            }
                        }
                        match &mut targets[i] {
                            Target::Raw(f) => f.sync(*p == Policy::PadTrim).await,
                            Target::Storage(f) => f.sync().await.unwrap(),
                        }
                        stats[i].ops.push(t.elapsed());
                        stats[i].bytes += chunk * per_sync;
                    }
                }
            }
            for (i, p) in POLICIES.iter().enumerate() {
                stats[i].report(&format!("{per_sync:>2} x {chunk} B + fdatasync, {p:?}"));
            }
        }
    });
}
