//! A real `sluice-server` process per test (the shared harness, `sluice-test-support`:
//! free loopback ports, a fresh temporary data directory, one shard, killed on drop), and
//! a way to run the built `sluice` binary against it. `SLUICE_SERVER_BIN=PATH` runs that
//! server binary instead of building one.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};

pub use sluice_test_support::Broker;

/// A broker for one CLI test: a temporary data directory, one shard.
pub fn start_broker() -> Broker {
    Broker::temp().args(["--shards", "1"]).start()
}

/// Running the `sluice` binary against a [`Broker`].
pub trait SluiceCli {
    /// A `sluice` command aimed at this broker.
    fn sluice(&self) -> Command;
    /// Runs `sluice ARGS` with `stdin` as its input.
    fn run(&self, args: &[&str], stdin: &[u8]) -> Run;
    /// Runs `sluice ARGS` and asserts it exited 0.
    fn ok(&self, args: &[&str], stdin: &[u8]) -> Run;
}

impl SluiceCli for Broker {
    fn sluice(&self) -> Command {
        let mut cmd = sluice_bare();
        cmd.arg("--server")
            .arg(self.addr().to_string())
            .arg("--ca")
            .arg(self.ca_path());
        cmd
    }

    fn run(&self, args: &[&str], stdin: &[u8]) -> Run {
        run_command(self.sluice().args(args), stdin)
    }

    fn ok(&self, args: &[&str], stdin: &[u8]) -> Run {
        let run = self.run(args, stdin);
        assert_eq!(
            run.status.code(),
            Some(0),
            "sluice {args:?} failed\nstdout: {}\nstderr: {}",
            run.stdout,
            run.stderr
        );
        run
    }
}

/// What a finished `sluice` run left.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Every stdout line, parsed as JSON.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect()
    }
}

/// A `sluice` command with no `--server` or `--ca` (and none from the environment).
pub fn sluice_bare() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.env_remove("SLUICE_SERVER")
        .env_remove("SLUICE_CA")
        .env_remove("SLUICE_TLS_SERVER_NAME");
    cmd
}

pub fn run_command(cmd: &mut Command, stdin: &[u8]) -> Run {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice");
    let mut input = child.stdin.take().expect("stdin");
    let stdin = stdin.to_vec();
    // A thread, so a large input cannot deadlock against a full stdout pipe.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("wait for sluice");
    writer.join().expect("stdin writer");
    Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
