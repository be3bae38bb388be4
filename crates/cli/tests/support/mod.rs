//! A real `sluice-server` process per test, and a way to run the built `sluice` binary
//! against it.
//!
//! The server binary is built once per test run (`cargo build -p sluice-server`, guarded
//! by a `OnceLock`), then started on free loopback ports in a fresh temporary data
//! directory with one shard. `start` returns once the dev CA exists and `/ready` answers
//! 200. Dropping the [`Broker`] kills the process. `SLUICE_SERVER_BIN=PATH` runs that
//! binary instead of building one.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at starting a server (a port picked as free may be taken by the time it binds).
const START_ATTEMPTS_MAX: usize = 3;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Builds `sluice-server` once per test process and returns the path of the binary.
/// `SLUICE_SERVER_BIN=PATH` skips the build and uses that binary instead.
pub fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(binary) = std::env::var_os("SLUICE_SERVER_BIN") {
            return PathBuf::from(binary);
        }
        let root = workspace_root();
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "sluice-server"])
            .current_dir(&root)
            .status()
            .expect("run cargo build -p sluice-server");
        assert!(status.success(), "cargo build -p sluice-server failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_absolute() { t } else { root.join(t) })
            .unwrap_or_else(|| root.join("target"));
        let binary = target.join("debug").join("sluice-server");
        assert!(
            binary.is_file(),
            "{} missing after the build",
            binary.display()
        );
        binary
    })
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free UDP port")
        .port()
}

fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free TCP port")
        .port()
}

/// A running broker. Killed on drop.
pub struct Broker {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub ca: PathBuf,
    dir: tempfile::TempDir,
}

/// `GET /ready` on the admin port; the status code, if any answer came.
fn ready_status(admin: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET /ready HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

impl Broker {
    pub fn start() -> Broker {
        let binary = server_binary();
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS_MAX {
            match Broker::try_start(binary) {
                Ok(broker) => return broker,
                Err(why) => last_failure = why,
            }
        }
        panic!("sluice-server did not start: {last_failure}");
    }

    fn try_start(binary: &Path) -> Result<Broker, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        let addr: SocketAddr = ([127, 0, 0, 1], free_udp_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_tcp_port()).into();
        let log =
            std::fs::File::create(dir.path().join("server.log")).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--shards", "1"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
        let mut broker = Broker {
            child: Some(child),
            addr,
            admin,
            ca: data.join("tls").join("ca.pem"),
            dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = broker.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    broker.child = None;
                    return Err(format!("exited with {status}: {}", broker.log()));
                }
            }
            if broker.ca.is_file() && ready_status(admin) == Some(200) {
                return Ok(broker);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not ready within {READY_TIMEOUT:?}: {}",
                    broker.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGKILLs the server now.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A `sluice` command aimed at this broker.
    pub fn sluice(&self) -> Command {
        let mut cmd = sluice_bare();
        cmd.arg("--server")
            .arg(self.addr.to_string())
            .arg("--ca")
            .arg(&self.ca);
        cmd
    }

    /// Runs `sluice ARGS` with `stdin` as its input.
    pub fn run(&self, args: &[&str], stdin: &[u8]) -> Run {
        run_command(self.sluice().args(args), stdin)
    }

    /// Runs `sluice ARGS` and asserts it exited 0.
    pub fn ok(&self, args: &[&str], stdin: &[u8]) -> Run {
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

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
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
