//! The Docker Compose cluster end to end: `docker/compose-test.sh` (three nodes in
//! containers; produce and consume through different nodes; one node SIGKILLed, writes
//! with acks=all through the survivors, the node started again) on a dev image made
//! from the debug binaries the suite builds anyway (`docker/build.sh`'s
//! `SLUICE_BIN_DIR` mode: no static release build).
//!
//! Without a usable docker (no `docker` on `PATH`, or `docker info` failing) it prints
//! "skipped: no docker" and passes. The binaries: the directory of `$SLUICE_SERVER_BIN`
//! (`.ci/run` builds `sluice-server` and `sluice` there), else this package's
//! `sluice-server` and a `cargo build -p sluice-cli --bin sluice` next to it.
//!
//! Runs in the nextest group `cluster` (one multi-process test at a time), about
//! 20 s; the script is stopped after [`SCRIPT_TIMEOUT`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long the whole script may run (nextest stops the test at 300 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);
/// After SIGTERM at the timeout: time for the script's cleanup (`down -v`).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(45);
/// How long `docker info` may take to say whether a daemon is there.
const DOCKER_INFO_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits for `child` at most `limit`; `None` if it is still running.
fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `docker` is on `PATH` and its daemon answers.
fn docker_usable() -> bool {
    let Ok(mut child) = Command::new("docker")
        .arg("info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    match wait_for(&mut child, DOCKER_INFO_TIMEOUT) {
        Some(status) => status.success(),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            false
        }
    }
}

/// The directory holding both `sluice-server` and `sluice`, for the dev image.
fn binary_dir() -> PathBuf {
    let from_env = std::env::var_os("SLUICE_SERVER_BIN").map(PathBuf::from);
    let server = from_env
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sluice-server")));
    assert!(server.is_file(), "{} is not a file", server.display());
    let dir = server
        .parent()
        .expect("the server binary's directory")
        .to_path_buf();
    let cli = dir.join("sluice");
    if from_env.is_some() {
        assert!(
            cli.is_file(),
            "{} missing: the dev image takes the CLI from SLUICE_SERVER_BIN's directory \
             (build it: cargo build -p sluice-cli --bin sluice; .ci/run does)",
            cli.display()
        );
    } else {
        // Built (or found fresh) in the same target directory as this package's server.
        let built = sluice_test_support::cargo_build_bin("sluice-cli", "sluice");
        assert!(
            same_file(&built, &cli),
            "cargo built {} but the server is in {}: set SLUICE_SERVER_BIN",
            built.display(),
            dir.display()
        );
    }
    dir
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[test]
fn compose_cluster() {
    if !docker_usable() {
        println!("skipped: no docker");
        return;
    }
    let bin_dir = binary_dir();
    let script = sluice_test_support::workspace_root().join("docker/compose-test.sh");
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out_path = out_dir.path().join("compose-test.log");
    let out = std::fs::File::create(&out_path).expect("create the script's log");
    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg(&script)
        .env("SLUICE_BIN_DIR", &bin_dir)
        // The image and the CLI come from bin_dir, whatever the caller's environment.
        .env_remove("SLUICE_IMAGE")
        .env_remove("SLUICE_CLI")
        .env_remove("SLUICE_SKIP_BUILD")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone the log file"))
        .stderr(out)
        .spawn()
        .expect("run docker/compose-test.sh");
    let status = match wait_for(&mut child, SCRIPT_TIMEOUT) {
        Some(status) => Some(status),
        None => {
            // SIGTERM: the script's trap runs `down -v`.
            let pid = libc::pid_t::try_from(child.id()).expect("a pid");
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            if wait_for(&mut child, CLEANUP_TIMEOUT).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            None
        }
    };
    let elapsed = started.elapsed();
    let log = std::fs::read_to_string(&out_path).unwrap_or_default();
    println!("{log}");
    match status {
        Some(status) if status.success() => {
            println!("compose test: passed in {:.0?}", elapsed);
        }
        Some(status) => panic!(
            "docker/compose-test.sh failed ({status}) after {elapsed:.0?}; its output:\n{log}"
        ),
        None => panic!(
            "docker/compose-test.sh still running after {SCRIPT_TIMEOUT:?} (stopped); \
             its output:\n{log}"
        ),
    }
}
