//! A real `sluice-server` process for the SDK's integration tests: built once per test
//! process, started on free loopback ports in a data directory the test owns, killed
//! when dropped.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sluice_client::{Client, ClientOptions, ClientTls};

/// How long a broker may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERM'd broker may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds `sluice-server` (once per test process) and returns the binary's path.
/// `SLUICE_SERVER_BIN` names a binary to use instead, unbuilt (e.g. a release build).
pub fn server_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SLUICE_SERVER_BIN") {
            return PathBuf::from(bin);
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "build",
                "--quiet",
                "-p",
                "sluice-server",
                "--bin",
                "sluice-server",
            ])
            .status()
            .expect("run cargo build -p sluice-server");
        assert!(status.success(), "cargo build -p sluice-server failed");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let binary = target.join("debug").join("sluice-server");
        assert!(binary.is_file(), "no server binary at {}", binary.display());
        binary
    })
}

fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    s.local_addr().expect("local addr").port()
}

fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
    l.local_addr().expect("local addr").port()
}

/// A running broker process.
pub struct Broker {
    child: Option<Child>,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its admin HTTP address.
    pub admin: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    log: PathBuf,
}

impl Broker {
    /// Starts a broker on `data_dir` (created if missing) and waits until it is ready:
    /// the dev CA is written and `/ready` answers 200.
    pub fn start(data_dir: &Path) -> Broker {
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let binary = server_binary();
        std::fs::create_dir_all(data_dir).expect("create the data dir");
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let log = data_dir.with_extension(format!("log.{n}"));
        let addr: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
        let out = std::fs::File::create(&log).expect("create the server log");
        let err = out.try_clone().expect("clone the log handle");
        let child = Command::new(binary)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn sluice-server");
        let mut broker = Broker {
            child: Some(child),
            addr,
            admin,
            data_dir: data_dir.to_owned(),
            log,
        };
        broker.wait_ready();
        broker
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "sluice-server exited early ({status}):\n{}",
                    self.log_text()
                );
            }
            if self.ca_path().is_file() && http_status(self.admin, "/ready") == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sluice-server not ready in {READY_TIMEOUT:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The dev CA the broker generated.
    pub fn ca_path(&self) -> PathBuf {
        self.data_dir.join("tls").join("ca.pem")
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client with default options.
    pub async fn client(&self) -> Client {
        self.client_with(ClientOptions::default()).await
    }

    /// A client with `options`.
    pub async fn client_with(&self, options: ClientOptions) -> Client {
        Client::connect_with(self.addr, ClientTls::ca_file(self.ca_path()), options)
            .await
            .expect("connect to the broker")
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the broker") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sluice-server did not exit after SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: `kill` has no memory-safety preconditions; `pid` is our own child, not
    // yet reaped, so it cannot name another process.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// The status code of `GET path` on `addr`, if it answers.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}
