//! `sluice cluster up` as a real process: three real `sluice-server` nodes on loopback,
//! `sluice cluster status` against node 1, then SIGTERM (and, on a second run over the
//! same directory, SIGINT) must stop every node and exit 0. Every wait is bounded.
//! `SLUICE_SERVER_BIN=PATH` uses that server binary instead of building one.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sluice_cli::layout::{ADMIN_OFFSET, PEER_OFFSET};

const NODES: u16 = 3;
/// How long `cluster up` may take to print that the cluster is ready.
const READY_WAIT: Duration = Duration::from_secs(45);
/// How long it may take to exit after the signal (the nodes drain for up to 10 s).
const EXIT_WAIT: Duration = Duration::from_secs(30);

/// A base port whose client, admin and peer ports are all free right now.
fn free_base_port() -> u16 {
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u64;
    for attempt in 0..200u64 {
        let base = 20_000 + u16::try_from((seed + attempt * 7919) % 40_000).unwrap();
        let free = (1..=NODES).all(|id| {
            UdpSocket::bind(("127.0.0.1", base + id)).is_ok()
                && UdpSocket::bind(("127.0.0.1", base + PEER_OFFSET + id)).is_ok()
                && TcpListener::bind(("127.0.0.1", base + ADMIN_OFFSET + id)).is_ok()
        });
        if free {
            return base;
        }
    }
    panic!("no free base port found");
}

/// The running `cluster up`, SIGKILLed on drop (its nodes then get SIGTERM from the
/// kernel: PR_SET_PDEATHSIG).
struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Up {
    fn start(dir: &Path, base: u16, json: bool) -> Up {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(["cluster", "up", "--nodes", "3", "--dir"])
            .arg(dir)
            .args(["--base-port", &base.to_string(), "--server-bin"])
            .arg(sluice_test_support::server_binary())
            .args(["--ready-timeout-secs", "40"]);
        if json {
            cmd.args(["--output", "json"]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice cluster up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Up {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first stdout line for which `want` holds, within `wait`.
    fn wait_line(&mut self, wait: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no expected line from cluster up within {wait:?}; stdout so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: no memory-safety preconditions; `pid` is our unreaped child.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Waits (bounded) for the exit; its code. The rest of stdout lands in `seen`.
    fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + EXIT_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The reader thread ends at EOF, which follows the exit.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
                    self.seen.push(line);
                }
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "cluster up still running {EXIT_WAIT:?} after the signal"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn process_exists(pid: u32) -> bool {
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn sluice(base: u16, ca: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .env_remove("SLUICE_SERVER")
        .env_remove("SLUICE_CA")
        .env_remove("SLUICE_TLS_SERVER_NAME")
        .args(["--server", &format!("127.0.0.1:{}", base + 1), "--ca"])
        .arg(ca)
        .args(args)
        .output()
        .expect("run sluice")
}

#[test]
fn cluster_up_serves_status_and_stops_its_nodes_on_sigterm() {
    // Build (or find) the server before the clock starts.
    let _ = sluice_test_support::server_binary();
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let base = free_base_port();

    let mut up = Up::start(&dir, base, true);
    let ready = up.wait_line(READY_WAIT, |l| l.contains("\"event\":\"ready\""));
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    let pids: Vec<u32> = ready["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| u32::try_from(n["pid"].as_u64().unwrap()).unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{ready}");
    assert!(pids.iter().all(|&p| process_exists(p)));
    let ca = dir.join("certs/ca.pem");
    assert_eq!(ready["ca"].as_str().map(Path::new), Some(ca.as_path()));
    for id in 1..=3 {
        assert!(dir.join(format!("node-{id}.toml")).is_file());
        assert!(dir.join(format!("node-{id}/data")).is_dir());
    }

    let status = sluice(base, &ca, &["cluster", "status", "--output", "json"]);
    assert!(status.status.success(), "{status:?}");
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["node_id"], 1, "{s}");
    let nodes = s["nodes"].as_array().unwrap();
    let ids: Vec<u64> = nodes
        .iter()
        .map(|n| n["node_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3], "{s}");
    assert_eq!(nodes[0]["alive"], true, "{s}");
    assert_eq!(
        nodes[1]["addr"].as_str(),
        Some(format!("127.0.0.1:{}", base + 2).as_str())
    );
    let text = sluice(base, &ca, &["cluster", "status"]);
    assert!(text.status.success(), "{text:?}");
    assert!(String::from_utf8_lossy(&text.stdout).contains("nodes: 3"));

    up.signal(libc::SIGTERM);
    assert_eq!(up.wait_exit(), Some(0), "stdout:\n{}", up.seen.join("\n"));
    for &pid in &pids {
        assert!(
            !process_exists(pid),
            "node process {pid} outlived cluster up"
        );
    }
    drop(up);

    // Again over the same directory, text output, stopped by SIGINT (Ctrl-C).
    let ca_pem = std::fs::read(&ca).unwrap();
    let mut up = Up::start(&dir, base, false);
    let first = up.wait_line(READY_WAIT, |l| l.starts_with("starting"));
    assert!(first.contains("reusing the certificates"), "{first}");
    up.wait_line(READY_WAIT, |l| l.starts_with("cluster ready: 3 nodes"));
    assert_eq!(std::fs::read(&ca).unwrap(), ca_pem);
    up.signal(libc::SIGINT);
    assert_eq!(up.wait_exit(), Some(0), "stdout:\n{}", up.seen.join("\n"));
    assert!(
        up.seen.iter().any(|l| l == "cluster stopped"),
        "{}",
        up.seen.join("\n")
    );
    eprintln!("cluster up test took {:?}", started.elapsed());
}
