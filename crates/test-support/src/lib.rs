//! Real `sluice-server` processes for integration tests.
//!
//! A [`Broker`] is one server process on free loopback ports (QUIC on UDP, admin HTTP on
//! TCP) over a data directory. [`Broker::start`] (or a [`BrokerBuilder`]) spawns it and
//! returns once it is ready: the dev CA exists and `/ready` answers 200. Then:
//! [`Broker::terminate`] (SIGTERM, returns the exit status), [`Broker::kill`] (SIGKILL),
//! [`Broker::restart`] (the same directory, arguments and, when still free, ports).
//! Dropping a `Broker` SIGKILLs a process still running.
//!
//! Which binary: [`server_binary`], i.e. `$SLUICE_SERVER_BIN`, else a
//! `cargo build -p sluice-server --bin sluice-server` run once per test process. Tests
//! of the `sluice-server` package itself pass `env!("CARGO_BIN_EXE_sluice-server")` to
//! [`BrokerBuilder::binary`] instead.
//!
//! Every wait is bounded ([`READY_TIMEOUT`], [`EXIT_TIMEOUT`]); a failure panics with
//! the server's log, so a test failure shows why the server did what it did.
//!
//! [`raw`] has QUIC clients that misbehave on purpose (hand-made frames, any ALPN).
//! [`eventually`] polls a condition with a deadline (a cluster's leaders, a caught-up
//! node), for async tests.

pub mod raw;

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a starting server may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERM'd server may take to exit (its drain grace is 10 s).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts tried when the server cannot bind the ports picked for it (another process
/// took a port between the pick and the bind).
const START_ATTEMPTS_MAX: usize = 3;
/// `sluice-server`'s exit code when a listener cannot be bound (`docs/OPERATIONS.md`).
const EXIT_LISTEN: i32 = 5;
/// Poll interval while waiting for readiness or an exit.
const POLL: Duration = Duration::from_millis(20);
/// Bound on one admin HTTP exchange.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `attempt` every `every` until it returns `Ok`, and returns that; panics with
/// the last `Err` (what the state was, for the failure message) once `within` has
/// passed. An attempt that must fail the test at once panics itself.
pub async fn eventually<T>(
    within: Duration,
    every: Duration,
    mut attempt: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(state) => assert!(Instant::now() < deadline, "not within {within:?}: {state}"),
        }
        tokio::time::sleep(every).await;
    }
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The `sluice-server` binary: `$SLUICE_SERVER_BIN` if set (used as it is, unbuilt),
/// else the debug binary of the workspace, built once per test process by
/// `cargo build -p sluice-server --bin sluice-server`.
pub fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(binary) = std::env::var_os("SLUICE_SERVER_BIN") {
            let binary = PathBuf::from(binary);
            assert!(
                binary.is_file(),
                "SLUICE_SERVER_BIN={} is not a file",
                binary.display()
            );
            return binary;
        }
        cargo_build_bin("sluice-server", "sluice-server")
    })
}

/// Builds binary `bin` of workspace package `package` (debug profile) with
/// `cargo build --quiet -p PACKAGE --bin BIN` and returns its path in the target
/// directory (`$CARGO_TARGET_DIR`, else `target/`). Panics if the build fails.
pub fn cargo_build_bin(package: &str, bin: &str) -> PathBuf {
    let root = workspace_root();
    let mut cargo = Command::new(env!("CARGO"));
    // Without the variables cargo sets for this test binary: build scripts such as
    // ring's rerun when CARGO_MANIFEST_DIR or CARGO_PKG_NAME differ from the last
    // build, so inheriting them would rebuild the TLS stack, and the server with it,
    // on every test run (and again on the developer's next build).
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(set_by_cargo_for_this_crate) {
            cargo.env_remove(&key);
        }
    }
    let status = cargo
        .current_dir(&root)
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .status()
        .unwrap_or_else(|e| panic!("run cargo build -p {package}: {e}"));
    assert!(status.success(), "cargo build -p {package} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    let binary = target.join("debug").join(bin);
    assert!(
        binary.is_file(),
        "{} missing after the build",
        binary.display()
    );
    binary
}

/// Whether cargo sets the environment variable `key` for the crate it compiles or the
/// test it runs (as opposed to configuring cargo itself, like `CARGO_HOME`).
fn set_by_cargo_for_this_crate(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_BIN_EXE_")
        || matches!(
            key,
            "OUT_DIR"
                | "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind a free UDP port")
        .port()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind a free TCP port")
        .port()
}

/// `127.0.0.1:` a free UDP port.
pub fn free_udp_addr() -> SocketAddr {
    ([127, 0, 0, 1], free_udp_port()).into()
}

/// `127.0.0.1:` a free TCP port.
pub fn free_tcp_addr() -> SocketAddr {
    ([127, 0, 0, 1], free_tcp_port()).into()
}

/// How to start a [`Broker`]. From [`Broker::builder`] or [`Broker::temp`].
#[derive(Debug)]
pub struct BrokerBuilder {
    data_dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    binary: Option<PathBuf>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    addrs: Option<(SocketAddr, SocketAddr)>,
    ca: Option<PathBuf>,
}

impl BrokerBuilder {
    /// Listens on these QUIC and admin addresses (kept across restarts; no retry on
    /// other ports) instead of free ports picked at start.
    pub fn addrs(mut self, quic: SocketAddr, admin: SocketAddr) -> Self {
        self.addrs = Some((quic, admin));
        self
    }

    /// The CA clients trust (default: the dev CA in the data directory), which must
    /// exist before the broker counts as ready.
    pub fn ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.ca = Some(ca.into());
        self
    }

    /// An extra command-line argument, after `--data-dir`, `--listen` and
    /// `--admin-listen` (e.g. `--shards`, `--config`).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Extra command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable of the server process (`RUST_LOG` overrides the
    /// default `$SLUICE_TEST_LOG` / `info`).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs this binary instead of [`server_binary`].
    pub fn binary(mut self, binary: impl Into<PathBuf>) -> Self {
        self.binary = Some(binary.into());
        self
    }

    /// Spawns the server and waits until it is ready; panics (with its log) if it is not
    /// within [`READY_TIMEOUT`] or exits first.
    pub fn start(self) -> Broker {
        std::fs::create_dir_all(&self.data_dir).expect("create the data dir");
        let mut log = self.data_dir.as_os_str().to_owned();
        log.push(".server.log");
        let (addr, admin) = self
            .addrs
            .unwrap_or_else(|| (free_udp_addr(), free_tcp_addr()));
        let mut broker = Broker {
            child: None,
            addr,
            admin,
            fixed_addrs: self.addrs.is_some(),
            ca: self.ca,
            binary: self.binary.unwrap_or_else(|| server_binary().to_path_buf()),
            data_dir: self.data_dir,
            args: self.args,
            envs: self.envs,
            log: PathBuf::from(log),
            starts: 0,
            _temp: self.temp,
        };
        broker.spawn_ready();
        broker
    }
}

/// A `sluice-server` process (see the crate documentation). SIGKILLed on drop.
#[derive(Debug)]
pub struct Broker {
    child: Option<Child>,
    addr: SocketAddr,
    admin: SocketAddr,
    fixed_addrs: bool,
    ca: Option<PathBuf>,
    binary: PathBuf,
    data_dir: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    log: PathBuf,
    starts: u32,
    /// Owns the data directory of a [`Broker::temp`] broker; removed on drop.
    _temp: Option<tempfile::TempDir>,
}

impl Broker {
    /// Starts a broker on `data_dir` (created if missing) with no extra arguments.
    pub fn start(data_dir: impl Into<PathBuf>) -> Broker {
        Broker::builder(data_dir).start()
    }

    /// A builder for a broker on `data_dir` (created if missing; the test owns it).
    pub fn builder(data_dir: impl Into<PathBuf>) -> BrokerBuilder {
        BrokerBuilder {
            data_dir: data_dir.into(),
            temp: None,
            binary: None,
            args: Vec::new(),
            envs: Vec::new(),
            addrs: None,
            ca: None,
        }
    }

    /// A builder for a broker on `data/` in a fresh temporary directory that the
    /// `Broker` owns and removes when dropped.
    pub fn temp() -> BrokerBuilder {
        let temp = tempfile::tempdir().expect("create a temporary directory");
        let mut builder = Broker::builder(temp.path().join("data"));
        builder.temp = Some(temp);
        builder
    }

    /// The QUIC address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin HTTP address (`/metrics`, `/health`, `/ready`).
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The dev CA the server generated, which clients trust.
    pub fn ca_path(&self) -> PathBuf {
        self.ca
            .clone()
            .unwrap_or_else(|| self.data_dir.join("tls").join("ca.pem"))
    }

    /// The server's log file (stdout and stderr of every start, appended).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (an exit is reaped and remembered as "not
    /// running").
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_)) | Err(_)) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// `GET path` on the admin port: the status code and body, if it answered.
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin, path)
    }

    /// SIGTERM, then waits for the exit (the graceful stop: drain, flush, exit 0) and
    /// returns its status. Panics if the process is not running, or (after a SIGKILL)
    /// if it has not exited within [`EXIT_TIMEOUT`].
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the broker is not running");
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for sluice-server") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sluice-server did not exit within {EXIT_TIMEOUT:?} of SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGKILL and reap (a crash: nothing is flushed). Does nothing if not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                signal(&child, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data directory with the same arguments, and
    /// waits until it is ready. Keeps the addresses unless a port was taken meanwhile
    /// (then [`addr`](Self::addr) and [`admin`](Self::admin) change). A server still
    /// running is stopped first with [`terminate`](Self::terminate), which must exit 0;
    /// stop it yourself (`kill`, `terminate`) to choose how.
    pub fn restart(&mut self) {
        if self.is_running() {
            let status = self.terminate();
            assert!(
                status.success(),
                "sluice-server exited with {status} on SIGTERM before a restart:\n{}",
                self.log_text()
            );
        }
        self.spawn_ready();
    }

    /// Spawns the process and waits for readiness; on an early exit with the listen
    /// code, retries on fresh ports.
    fn spawn_ready(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        for attempt in 1..=START_ATTEMPTS_MAX {
            if attempt > 1 && !self.fixed_addrs {
                self.addr = free_udp_addr();
                self.admin = free_tcp_addr();
            }
            self.spawn();
            match self.wait_ready() {
                Ok(()) => return,
                Err(status) if status.code() == Some(EXIT_LISTEN) => {
                    if self.fixed_addrs {
                        // A port of a killed predecessor may linger a moment.
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    continue;
                }
                Err(status) => panic!(
                    "sluice-server exited early ({status}):\n{}",
                    self.log_text()
                ),
            }
        }
        panic!(
            "sluice-server could not bind its ports in {START_ATTEMPTS_MAX} attempts:\n{}",
            self.log_text()
        );
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the server log");
        let _ = writeln!(
            out,
            "--- test-support: start {} of {} on {} (QUIC {}, admin {}) ---",
            self.starts,
            self.binary.display(),
            self.data_dir.display(),
            self.addr,
            self.admin
        );
        let err: File = out.try_clone().expect("clone the log handle");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--admin-listen")
            .arg(self.admin.to_string())
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var_os("SLUICE_TEST_LOG").unwrap_or_else(|| "info".into()),
            )
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// Ready, or the status of an early exit. Panics past [`READY_TIMEOUT`].
    fn wait_ready(&mut self) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(status);
                }
            }
            if self.ca_path().is_file() && self.admin_get("/ready").map(|(s, _)| s) == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "sluice-server not ready within {READY_TIMEOUT:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: `kill` has no memory-safety preconditions; `pid` is our own child, not yet
    // reaped, so it cannot name another process.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// `GET path` over HTTP/1.1 on `addr`: the status code and the body as sent (headers
/// dropped; a chunked body keeps its chunk sizes), if an answer came within
/// [`HTTP_TIMEOUT`].
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Some((status, body))
}

pub mod cluster;
pub mod netproxy;

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn eventually_returns_the_first_ok_and_tries_until_then() {
        let mut tries = 0;
        let got = block_on(eventually(
            Duration::from_secs(5),
            Duration::from_millis(1),
            async || {
                tries += 1;
                if tries < 3 {
                    Err(format!("try {tries}"))
                } else {
                    Ok(tries * 10)
                }
            },
        ));
        assert_eq!((got, tries), (30, 3));
    }

    #[test]
    #[should_panic(expected = "still 7")]
    fn eventually_panics_with_the_last_state_once_the_time_is_up() {
        block_on(eventually(
            Duration::from_millis(30),
            Duration::from_millis(5),
            async || -> Result<(), String> { Err("still 7".to_owned()) },
        ));
    }
}
