//! Shared test bodies, written once over any [`Storage`], and the two runners.
#![allow(dead_code)]

use std::future::Future;
use std::io;

use sluice_storage::{IndexFile, LogFile, OpenMode, Storage};

/// Runs `f` to completion inside a fresh glommio executor on this thread, built the
/// way the engine builds its shards (small `io_memory`, see `sluice_io`).
pub fn run_glommio<Fut, T>(f: impl FnOnce() -> Fut) -> T
where
    Fut: Future<Output = T>,
{
    let ex = sluice_io::executor_builder(glommio::Placement::Unbound)
        .make()
        .expect("glommio executor");
    ex.run(f())
}

/// Runs `f` with a trivial executor (for the std backend).
pub fn run_std<Fut: Future>(f: impl FnOnce() -> Fut) -> Fut::Output {
    pollster::block_on(f())
}

/// A small deterministic generator (xorshift64*), so tests need no `rand`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

/// Asserts `got == want` without printing megabytes on failure.
#[track_caller]
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: got {} bytes, want {}; first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}

/// Reads `[pos, pos + len)` and compares with the model (clamped like a file).
async fn check_range<F: LogFile>(f: &F, model: &[u8], pos: usize, len: usize) {
    let got = f.read_at(pos as u64, len).await.unwrap();
    let start = pos.min(model.len());
    let end = pos.saturating_add(len).min(model.len());
    assert_same(&got, &model[start..end], &format!("read_at({pos}, {len})"));
    // The same range appended after bytes already in the buffer.
    let mut out = b"kept".to_vec();
    f.read_append(pos as u64, len, &mut out).await.unwrap();
    assert_same(&out[..4], b"kept", "read_append keeps what the buffer held");
    assert_same(
        &out[4..],
        &model[start..end],
        &format!("read_append({pos}, {len})"),
    );
}

/// Whole-file, tail, boundary-crossing, random and past-the-end reads.
pub async fn check_reads<F: LogFile>(f: &F, model: &[u8], rng: &mut Rng) {
    let n = model.len();
    assert_eq!(f.len(), n as u64, "len");
    assert_eq!(f.is_empty(), n == 0);
    check_range(f, model, 0, n).await;
    // The unsynced tail and everything around the last blocks.
    for back in [1usize, 2, 17, 511, 512, 513, 4095, 4096, 4097, 9000, 70_001] {
        let pos = n.saturating_sub(back);
        check_range(f, model, pos, back).await;
        check_range(f, model, pos, back + 100).await;
        check_range(f, model, pos, back / 2 + 1).await;
    }
    // Around every 4 KiB boundary near the end.
    let last = n / 4096 * 4096;
    for b in [last.saturating_sub(4096), last, last + 4096] {
        for d in [0usize, 1, 7] {
            check_range(f, model, b.saturating_sub(d), 2 * d + 3).await;
        }
    }
    for _ in 0..24 {
        let pos = rng.below(n as u64 + 1) as usize;
        let len = rng.below(200_000) as usize;
        check_range(f, model, pos, len).await;
    }
    // Past the end: empty; zero length: empty.
    assert!(f.read_at(n as u64, 10).await.unwrap().is_empty());
    assert!(f.read_at(n as u64 + 12_345, 10).await.unwrap().is_empty());
    assert!(f.read_at(0, 0).await.unwrap().is_empty());
    assert!(f.read_at(u64::MAX, usize::MAX).await.unwrap().is_empty());
}

/// Data files: odd-sized appends, reads of the unsynced tail, sync, truncate
/// (shrinking within and across blocks, growing), reopen, create-over-existing.
pub async fn data_files<S: Storage>(make: impl Fn() -> S) {
    let mut rng = Rng::new(7);
    let fs = make();
    let mut f = fs.open("00000.log", OpenMode::Create).await.unwrap();
    let mut model: Vec<u8> = Vec::new();
    check_reads(&f, &model, &mut rng).await;
    f.append(&[]).await.unwrap();
    assert_eq!(f.len(), 0);
    let sizes = [
        1usize,
        511,
        4096,
        70_000,
        (1 << 20) + 3,
        1,
        4095,
        512,
        3,
        8191,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        let chunk = rng.bytes(n);
        f.append(&chunk).await.unwrap();
        model.extend_from_slice(&chunk);
        check_reads(&f, &model, &mut rng).await;
        if i % 3 == 2 {
            f.sync().await.unwrap();
            check_reads(&f, &model, &mut rng).await;
        }
    }
    // Unsynced bytes, then reopen through a fresh handle and storage: a clean
    // process stop keeps them (no crash).
    let chunk = rng.bytes(333);
    f.append(&chunk).await.unwrap();
    model.extend_from_slice(&chunk);
    f.sync().await.unwrap();
    drop(f);
    let fs = make();
    let mut f = fs.open("00000.log", OpenMode::Existing).await.unwrap();
    check_reads(&f, &model, &mut rng).await;

    // Appends after reopen extend the tail block read back from disk.
    let chunk = rng.bytes(777);
    f.append(&chunk).await.unwrap();
    model.extend_from_slice(&chunk);
    check_reads(&f, &model, &mut rng).await;

    // Truncate: into an earlier block, within the tail block, to an aligned length.
    for cut in [70_123usize, 3, 0] {
        let len = model.len() - cut;
        f.truncate(len as u64).await.unwrap();
        model.truncate(len);
        check_reads(&f, &model, &mut rng).await;
    }
    f.truncate(8192).await.unwrap();
    model.truncate(8192);
    check_reads(&f, &model, &mut rng).await;
    // Appends continue at the cut.
    let chunk = rng.bytes(5000);
    f.append(&chunk).await.unwrap();
    model.extend_from_slice(&chunk);
    check_reads(&f, &model, &mut rng).await;
    // Growing zero-fills, also over padding an unsynced append left on disk.
    let chunk = rng.bytes(10);
    f.append(&chunk).await.unwrap();
    model.extend_from_slice(&chunk);
    for grow in [100usize, 9000] {
        let len = model.len() + grow;
        f.truncate(len as u64).await.unwrap();
        model.resize(len, 0);
        check_reads(&f, &model, &mut rng).await;
    }
    f.sync().await.unwrap();
    drop(f);
    let fs = make();
    let mut f = fs.open("00000.log", OpenMode::Existing).await.unwrap();
    check_reads(&f, &model, &mut rng).await;

    // To zero and back.
    f.truncate(0).await.unwrap();
    model.clear();
    check_reads(&f, &model, &mut rng).await;
    f.append(b"hello").await.unwrap();
    model.extend_from_slice(b"hello");
    f.sync().await.unwrap();
    drop(f);
    let f = make().open("00000.log", OpenMode::Existing).await.unwrap();
    check_reads(&f, &model, &mut rng).await;
    drop(f);

    // A second file is independent; Create over an existing file empties it.
    let mut g = fs.open("00001.log", OpenMode::Create).await.unwrap();
    g.append(&[9; 4096 * 3]).await.unwrap();
    g.sync().await.unwrap();
    let f = fs.open("00000.log", OpenMode::Create).await.unwrap();
    assert_eq!(f.len(), 0);
    drop(f);
    let f = fs.open("00000.log", OpenMode::Existing).await.unwrap();
    assert_eq!(f.len(), 0);
    assert_same(
        &g.read_at(0, 1 << 20).await.unwrap(),
        &[9; 4096 * 3],
        "second file",
    );
}

/// An append of many megabytes (several maximal writes) reads back whole.
pub async fn large_append<S: Storage>(fs: S) {
    let mut rng = Rng::new(11);
    let mut f = fs.open("big.log", OpenMode::Create).await.unwrap();
    let mut model = rng.bytes(100);
    f.append(&model).await.unwrap();
    let chunk = rng.bytes((19 << 20) + 12_345);
    f.append(&chunk).await.unwrap();
    model.extend_from_slice(&chunk);
    check_reads(&f, &model, &mut rng).await;
    f.sync().await.unwrap();
    drop(f);
    let f = fs.open("big.log", OpenMode::Existing).await.unwrap();
    check_reads(&f, &model, &mut rng).await;
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

async fn write_file<S: Storage>(fs: &S, name: &str, bytes: &[u8]) {
    let mut f = fs.open(name, OpenMode::Create).await.unwrap();
    f.append(bytes).await.unwrap();
    f.sync().await.unwrap();
}

async fn read_file<S: Storage>(fs: &S, name: &str) -> io::Result<Vec<u8>> {
    let f = fs.open(name, OpenMode::Existing).await?;
    f.read_at(0, usize::MAX).await
}

/// Directory operations: list, rename (also over an existing name), remove, sync.
pub async fn directory_ops<S: Storage>(fs: S) {
    assert!(fs.list().await.unwrap().is_empty());
    for (name, byte) in [("a.log", 1u8), ("b.log", 2), ("c.log", 3)] {
        write_file(&fs, name, &vec![byte; 1000 + byte as usize]).await;
    }
    let _idx = fs.open_index("a.index", Some(64)).await.unwrap();
    fs.sync_dir().await.unwrap();
    assert_eq!(
        sorted(fs.list().await.unwrap()),
        names(&["a.index", "a.log", "b.log", "c.log"])
    );

    fs.rename("a.log", "d.log").await.unwrap();
    assert_eq!(read_file(&fs, "d.log").await.unwrap(), vec![1; 1001]);
    let err = fs.open("a.log", OpenMode::Existing).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    // Rename replaces the target.
    fs.rename("b.log", "c.log").await.unwrap();
    assert_eq!(read_file(&fs, "c.log").await.unwrap(), vec![2; 1002]);
    let err = fs.rename("missing", "x").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);

    fs.remove("d.log").await.unwrap();
    let err = fs.remove("d.log").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    fs.sync_dir().await.unwrap();
    assert_eq!(
        sorted(fs.list().await.unwrap()),
        names(&["a.index", "c.log"])
    );

    for bad in ["", "..", "../x", "sub/x"] {
        let err = fs.open(bad, OpenMode::Create).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        let err = fs.remove(bad).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
    }
}

/// Mapped index files: write, bounds, sync, shrink, grow, reopen, zero length.
pub async fn index_files<S: Storage>(make: impl Fn() -> S) {
    let fs = make();
    let mut idx = fs.open_index("0.index", Some(4096)).await.unwrap();
    assert_eq!(idx.bytes(), &[0u8; 4096][..]);
    idx.write(0, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    idx.write(4088, &[9; 8]).unwrap();
    let err = idx.write(4090, &[1; 8]).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(idx.write(usize::MAX - 2, &[1; 8]).is_err());
    idx.sync().await.unwrap();
    assert_eq!(&idx.bytes()[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(&idx.bytes()[4088..], &[9; 8]);

    // Shrink keeps the prefix.
    idx.set_len(100).await.unwrap();
    assert_eq!(idx.bytes().len(), 100);
    assert_eq!(&idx.bytes()[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
    idx.sync().await.unwrap();
    drop(idx);
    let mut idx = make().open_index("0.index", None).await.unwrap();
    assert_eq!(idx.bytes().len(), 100);
    assert_eq!(&idx.bytes()[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert!(idx.bytes()[8..].iter().all(|&b| b == 0));

    // Grow zero-fills; writes past the old end land.
    idx.set_len(8192).await.unwrap();
    assert_eq!(idx.bytes().len(), 8192);
    assert!(idx.bytes()[8..].iter().all(|&b| b == 0));
    idx.write(8000, &[0xAB; 192]).unwrap();
    idx.sync().await.unwrap();
    drop(idx);
    let idx = make().open_index("0.index", Some(8192)).await.unwrap();
    assert_eq!(&idx.bytes()[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(&idx.bytes()[8000..], &[0xAB; 192][..]);
    drop(idx);

    // Zero length: an empty mapping that can grow again (and comes back zeroed).
    let mut idx = make().open_index("0.index", Some(0)).await.unwrap();
    assert!(idx.bytes().is_empty());
    assert!(idx.write(0, &[1]).is_err());
    idx.sync().await.unwrap();
    idx.set_len(16).await.unwrap();
    assert_eq!(idx.bytes(), &[0u8; 16][..]);
    drop(idx);
    let idx = make().open_index("fresh.index", None).await.unwrap();
    assert!(idx.bytes().is_empty());
}

/// A seeded random mix of appends (mostly small, some block-sized, a few large),
/// syncs, truncates and reopens (with and without a sync first), checked against an
/// in-memory model after every step.
pub async fn random_ops<S: Storage>(make: impl Fn() -> S, seed: u64, steps: usize) {
    let mut rng = Rng::new(seed);
    let mut f = make().open("r.log", OpenMode::Create).await.unwrap();
    let mut model: Vec<u8> = Vec::new();
    for step in 0..steps {
        match rng.below(20) {
            0..=9 => {
                let n = match rng.below(10) {
                    0..=5 => rng.below(300),
                    6..=7 => rng.below(5000),
                    8 => 4096 * (1 + rng.below(3)) - 1 + rng.below(3),
                    _ => rng.below(300_000),
                } as usize;
                let chunk = rng.bytes(n);
                f.append(&chunk).await.unwrap();
                model.extend_from_slice(&chunk);
            }
            10..=13 => f.sync().await.unwrap(),
            14..=16 => {
                let len = if rng.below(8) == 0 {
                    model.len() + rng.below(6000) as usize
                } else {
                    rng.below(model.len() as u64 + 1) as usize
                };
                f.truncate(len as u64).await.unwrap();
                model.resize(len, 0);
            }
            _ => {
                if rng.below(2) == 0 {
                    f.sync().await.unwrap();
                }
                drop(f);
                f = make().open("r.log", OpenMode::Existing).await.unwrap();
            }
        }
        assert_eq!(f.len(), model.len() as u64, "step {step}");
        let n = model.len();
        let back = (rng.below(10_000) as usize).min(n);
        check_range(&f, &model, n - back, back + 10).await;
        let pos = rng.below(n as u64 + 1) as usize;
        check_range(&f, &model, pos, rng.below(20_000) as usize).await;
    }
    check_reads(&f, &model, &mut rng).await;
    f.sync().await.unwrap();
    drop(f);
    let f = make().open("r.log", OpenMode::Existing).await.unwrap();
    check_reads(&f, &model, &mut rng).await;
}
