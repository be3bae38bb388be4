//! The shared storage test bodies (`common`) on both backends.

mod common;

use common::{run_glommio, run_std};
use sluice_io::{DataFileMode, GlommioStorage, StdStorage};

/// Both data-file modes of the glommio backend.
const MODES: [DataFileMode; 2] = [DataFileMode::Direct, DataFileMode::Buffered];

fn std_at(dir: &std::path::Path) -> impl Fn() -> StdStorage + '_ {
    move || StdStorage::open_dir(dir).unwrap()
}

fn glommio_at(dir: &std::path::Path, mode: DataFileMode) -> impl Fn() -> GlommioStorage + '_ {
    move || GlommioStorage::open_dir(dir).unwrap().with_mode(mode)
}

#[test]
fn std_data_files() {
    let dir = tempfile::tempdir().unwrap();
    run_std(|| common::data_files(std_at(dir.path())));
}

#[test]
fn glommio_data_files() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        run_glommio(|| common::data_files(glommio_at(dir.path(), mode)));
    }
}

#[test]
fn std_large_append() {
    let dir = tempfile::tempdir().unwrap();
    run_std(|| common::large_append(std_at(dir.path())()));
}

#[test]
fn glommio_large_append() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        run_glommio(|| common::large_append(glommio_at(dir.path(), mode)()));
    }
}

#[test]
fn std_directory_ops() {
    let dir = tempfile::tempdir().unwrap();
    run_std(|| common::directory_ops(std_at(dir.path())()));
}

#[test]
fn glommio_directory_ops() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        run_glommio(|| common::directory_ops(glommio_at(dir.path(), mode)()));
    }
}

#[test]
fn std_index_files() {
    let dir = tempfile::tempdir().unwrap();
    run_std(|| common::index_files(std_at(dir.path())));
}

#[test]
fn glommio_index_files() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        run_glommio(|| common::index_files(glommio_at(dir.path(), mode)));
    }
}

#[test]
fn std_random_ops() {
    for seed in 1..=3 {
        let dir = tempfile::tempdir().unwrap();
        run_std(|| common::random_ops(std_at(dir.path()), seed, 400));
    }
}

#[test]
fn glommio_random_ops() {
    for seed in 1..=3 {
        for mode in MODES {
            let dir = tempfile::tempdir().unwrap();
            run_glommio(|| common::random_ops(glommio_at(dir.path(), mode), seed, 400));
        }
    }
}

#[test]
fn open_dir_creates_missing_parents() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("topic").join("0");
    let s = StdStorage::open_dir(&nested).unwrap();
    assert!(nested.is_dir());
    assert_eq!(s.path(), nested.canonicalize().unwrap());
    let g = GlommioStorage::open_dir(&nested).unwrap();
    assert_eq!(g.path(), s.path());
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    assert!(StdStorage::open_dir(&file).is_err());
}

/// A DMA file never grows past its logical length: before `sync` the disk holds
/// the whole blocks, after it exactly the logical bytes; a handle dropped without a
/// sync still leaves its tail behind (in the page cache). And a file written by one
/// backend reads back through the other.
#[test]
fn glommio_file_size_tracks_logical_length_and_backends_agree() {
    use sluice_storage::{LogFile, OpenMode, Storage};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let size = |name: &str| std::fs::metadata(path.join(name)).unwrap().len();
    let mut rng = common::Rng::new(3);
    let data = rng.bytes(12_345);
    let expect = data.clone();
    run_glommio(|| async {
        let fs = GlommioStorage::open_dir(&path)
            .unwrap()
            .with_mode(DataFileMode::Direct);
        let mut f = fs.open("x.log", OpenMode::Create).await.unwrap();
        f.append(&data).await.unwrap();
        assert!(size("x.log") <= 12_345);
        assert_eq!(size("x.log") % 512, 0);
        f.sync().await.unwrap();
        assert_eq!(size("x.log"), 12_345);
        // Unsynced small appends stay in memory, reads see them, drop keeps them.
        let mut g = fs.open("y.log", OpenMode::Create).await.unwrap();
        g.append(b"abc").await.unwrap();
        g.append(b"defg").await.unwrap();
        assert_eq!(size("y.log"), 0);
        assert_eq!(g.read_at(1, 100).await.unwrap(), b"bcdefg");
        drop(g);
        assert_eq!(std::fs::read(path.join("y.log")).unwrap(), b"abcdefg");
    });
    assert_eq!(size("x.log"), 12_345);
    run_std(|| async {
        let fs = StdStorage::open_dir(&path).unwrap();
        let mut f = fs.open("x.log", OpenMode::Existing).await.unwrap();
        common::assert_same(
            &f.read_at(0, 1 << 20).await.unwrap(),
            &expect,
            "std reads dma",
        );
        f.append(b"tail").await.unwrap();
        f.sync().await.unwrap();
    });
    let mut expect = expect;
    expect.extend_from_slice(b"tail");
    run_glommio(|| async {
        let fs = GlommioStorage::open_dir(&path)
            .unwrap()
            .with_mode(DataFileMode::Direct);
        let f = fs.open("x.log", OpenMode::Existing).await.unwrap();
        assert_eq!(f.len(), expect.len() as u64);
        common::assert_same(
            &f.read_at(0, 1 << 20).await.unwrap(),
            &expect,
            "dma reads std",
        );
    });
}

/// A buffered read copies what the page cache holds straight into the caller's buffer
/// and reads the rest through io_uring: with the middle of a file evicted from the
/// page cache, every read still returns the file's bytes.
#[test]
fn glommio_buffered_reads_pages_not_in_the_page_cache() {
    use sluice_storage::{LogFile, OpenMode, Storage};
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut rng = common::Rng::new(11);
    let data = rng.bytes(3 << 20);
    run_glommio(|| async {
        let fs = GlommioStorage::open_dir(&path)
            .unwrap()
            .with_mode(DataFileMode::Buffered);
        let mut f = fs.open("z.log", OpenMode::Create).await.unwrap();
        f.append(&data).await.unwrap();
        f.sync().await.unwrap();
        // Clean pages can be dropped: evict the second MiB.
        let file = std::fs::File::open(path.join("z.log")).unwrap();
        // SAFETY: a valid open descriptor; fadvise only drops clean cached pages.
        let rc = unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                1 << 20,
                1 << 20,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        assert_eq!(rc, 0);
        for (pos, len) in [
            (0usize, 3usize << 20),
            ((1 << 20) - 100, 300),
            ((1 << 20) + 5, 1 << 20),
            ((2 << 20) - 1, 10),
        ] {
            let mut out = vec![7u8; 3];
            f.read_append(pos as u64, len, &mut out).await.unwrap();
            assert_eq!(&out[..3], &[7, 7, 7]);
            common::assert_same(
                &out[3..],
                &data[pos..pos + len],
                "read across evicted pages",
            );
        }
    });
}
