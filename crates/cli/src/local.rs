//! `cluster certs` and `cluster up`: commands that need no broker.
//!
//! `cluster up` is a small supervisor. It lays out the cluster (`layout::LocalCluster`),
//! issues missing certificates, writes every node's config, starts one `sluice-server`
//! per node (each in its own process group, so a terminal's Ctrl-C reaches only this
//! process, and with `PR_SET_PDEATHSIG` so the nodes get SIGTERM should this process die
//! without stopping them), waits for each node's `/ready`, prints the endpoints, and on
//! SIGINT or SIGTERM stops the nodes with SIGTERM, then SIGKILL after a bound.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use sluice_cli::layout::{cert_plan, LocalCluster, LocalNode};
use sluice_peer::certs::{node_cert_file, node_key_file, CA_CERT_FILE, CA_KEY_FILE};
use sluice_peer::{node_server_name, write_cluster_certs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::admin::{emit, emit_json};
use crate::cli::{CertsArgs, Output, UpArgs};
use crate::encode::table;
use crate::fail::Fail;

/// Lines of a node's log shown when it fails.
const LOG_TAIL_LINES: usize = 25;
/// Poll interval of the supervisor (readiness, child exits).
const POLL: Duration = Duration::from_millis(100);
/// Bound on one `/ready` probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

fn io_fail(what: &str, path: &Path, e: &std::io::Error) -> Fail {
    Fail::broker(format!("{what} {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------
// cluster certs

#[derive(Serialize)]
struct CertJson {
    id: u64,
    cert: String,
    key: String,
    names: Vec<String>,
}

#[derive(Serialize)]
struct CertsJson {
    dir: String,
    ca: String,
    ca_key: String,
    ca_reused: bool,
    nodes: Vec<CertJson>,
}

pub fn certs(args: &CertsArgs, output: Output) -> Result<(), Fail> {
    let plan = cert_plan(args.nodes, &args.node, &args.host).map_err(Fail::usage)?;
    let dir = &args.out;
    let ca_reused = dir.join(CA_CERT_FILE).is_file();
    write_cluster_certs(dir, &args.cluster_id, &plan)
        .map_err(|e| Fail::broker(format!("writing certificates to {}: {e}", dir.display())))?;
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.clone());
    let show = |p: PathBuf| p.display().to_string();
    let nodes: Vec<CertJson> = plan
        .iter()
        .map(|(id, hosts)| {
            let mut names = vec![
                node_server_name(*id),
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
            ];
            for h in hosts {
                if !names.contains(h) {
                    names.push(h.clone());
                }
            }
            CertJson {
                id: *id,
                cert: show(dir.join(node_cert_file(*id))),
                key: show(dir.join(node_key_file(*id))),
                names,
            }
        })
        .collect();
    let out = CertsJson {
        dir: show(dir.clone()),
        ca: show(dir.join(CA_CERT_FILE)),
        ca_key: show(dir.join(CA_KEY_FILE)),
        ca_reused,
        nodes,
    };
    match output {
        Output::Json => emit_json(&out)?,
        Output::Text => {
            let mut text = format!(
                "{} CA {} (key {}: keep it offline, it signs node certificates)\n",
                if ca_reused { "reused" } else { "created" },
                out.ca,
                out.ca_key,
            );
            let rows: Vec<Vec<String>> = out
                .nodes
                .iter()
                .map(|n| {
                    vec![
                        n.id.to_string(),
                        n.cert.clone(),
                        n.key.clone(),
                        n.names.join(","),
                    ]
                })
                .collect();
            text.push_str(&table(&["NODE", "CERT", "KEY", "NAMES"], &rows));
            text.push_str(
                "each node needs ca.pem and its own node-<ID>.pem/.key; clients need ca.pem\n",
            );
            emit(&text);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// cluster up

/// One started node.
struct Running {
    node: LocalNode,
    child: Child,
    /// Where this run's output starts in the (appended) log.
    log_from: u64,
    /// Set once reaped.
    exit: Option<ExitStatus>,
}

impl Running {
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
            }
        }
        self.exit
    }

    fn signal(&self, sig: libc::c_int) {
        if self.exit.is_some() {
            return;
        }
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: `kill` has no memory-safety preconditions; `pid` is our own child, not
        // yet reaped (`exit` is unset), so it cannot name another process.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    fn log_tail(&self) -> String {
        log_tail(&self.node.log, self.log_from, LOG_TAIL_LINES)
    }
}

/// The last `lines` lines of `path` from byte `from` on.
fn log_tail(path: &Path, from: u64, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = String::new();
    for line in &all[start..] {
        out.push_str("    | ");
        out.push_str(line);
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("    | (empty log)\n");
    }
    out
}

fn status_text(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "unknown status".to_owned(),
    }
}

/// The `sluice-server` to run: `--server-bin`, else beside this executable, else on
/// `$PATH`.
fn find_server(explicit: Option<&Path>) -> Result<PathBuf, Fail> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(Fail::usage(format!(
                "--server-bin {}: no such file",
                path.display()
            )))
        };
    }
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("sluice-server")))
        .filter(|p| p.is_file())
    {
        return Ok(beside);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("sluice-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(Fail::usage(
        "cannot find sluice-server next to sluice or on $PATH; build it \
         (cargo build -p sluice-server) or pass --server-bin PATH",
    ))
}

/// Refuses a directory laid out for another number of nodes (its data would not match).
fn check_existing(cluster: &LocalCluster) -> Result<(), Fail> {
    let Ok(entries) = fs::read_dir(&cluster.dir) else {
        return Ok(());
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name
            .strip_prefix("node-")
            .and_then(|r| r.strip_suffix(".toml"))
            .and_then(|id| id.parse::<u64>().ok())
        {
            found.push(id);
        }
    }
    found.sort_unstable();
    let wanted: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
    if !found.is_empty() && found != wanted {
        return Err(Fail::usage(format!(
            "{} holds a cluster of nodes {found:?}, not {wanted:?}; use its --nodes, \
             or another --dir",
            cluster.dir.display()
        )));
    }
    Ok(())
}

/// Refuses to start when a port of the plan is taken (another cluster on the same base
/// port would otherwise answer our readiness probes).
fn check_ports(cluster: &LocalCluster) -> Result<(), Fail> {
    let taken = |what: &str, addr: SocketAddr, e: std::io::Error| {
        Fail::broker(format!(
            "{what} port {addr} is in use ({e}); is another cluster running there? \
             Stop it or pick another --base-port"
        ))
    };
    for n in &cluster.nodes {
        std::net::UdpSocket::bind(n.client).map_err(|e| taken("client", n.client, e))?;
        std::net::UdpSocket::bind(n.peer).map_err(|e| taken("peer", n.peer, e))?;
        std::net::TcpListener::bind(n.admin).map_err(|e| taken("admin", n.admin, e))?;
    }
    Ok(())
}

/// Issues the certificates a node of `cluster` lacks (the CA too, if missing).
fn ensure_certs(cluster: &LocalCluster) -> Result<bool, Fail> {
    let ca_ok = cluster.ca().is_file() && cluster.certs.join(CA_KEY_FILE).is_file();
    let missing: Vec<(u64, Vec<String>)> = cluster
        .nodes
        .iter()
        .filter(|n| !ca_ok || !n.cert.is_file() || !n.key.is_file())
        .map(|n| (n.id, Vec::new()))
        .collect();
    if missing.is_empty() {
        return Ok(true);
    }
    write_cluster_certs(&cluster.certs, &cluster.cluster_id, &missing).map_err(|e| {
        Fail::broker(format!(
            "writing certificates to {}: {e}",
            cluster.certs.display()
        ))
    })?;
    Ok(false)
}

fn spawn_node(server: &Path, node: &LocalNode) -> Result<Running, Fail> {
    if let Some(home) = node.log.parent() {
        fs::create_dir_all(home).map_err(|e| io_fail("creating", home, &e))?;
    }
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&node.log)
        .map_err(|e| io_fail("opening", &node.log, &e))?;
    let log_from = log.seek(SeekFrom::End(0)).unwrap_or(0);
    let _ = writeln!(
        log,
        "--- sluice cluster up: starting node {} ({} --config {}) ---",
        node.id,
        server.display(),
        node.config.display()
    );
    let err_log = log
        .try_clone()
        .map_err(|e| io_fail("opening", &node.log, &e))?;
    let parent = std::process::id();
    let mut cmd = Command::new(server);
    if std::env::var_os("NO_COLOR").is_none() {
        // The log is a file: no ANSI colours in it (tracing-subscriber honours NO_COLOR).
        cmd.env("NO_COLOR", "1");
    }
    cmd.arg("--config")
        .arg(&node.config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and calls only
    // async-signal-safe functions (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // The node gets SIGTERM if this process dies without stopping it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // This process may have died before the prctl took effect.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::other("sluice cluster up exited"));
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        Fail::broker(format!(
            "cannot start node {}: {} --config {}: {e}",
            node.id,
            server.display(),
            node.config.display()
        ))
    })?;
    Ok(Running {
        node: node.clone(),
        child,
        log_from,
        exit: None,
    })
}

/// `GET /ready` on `addr`: whether it answered 200 within [`PROBE_TIMEOUT`].
async fn ready(addr: SocketAddr) -> bool {
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        text.split_whitespace().nth(1).map(|code| code == "200")
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}

/// SIGINT and SIGTERM, as one stream.
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn new() -> Result<Signals, Fail> {
        let make =
            |kind| signal(kind).map_err(|e| Fail::broker(format!("cannot handle signals: {e}")));
        Ok(Signals {
            int: make(SignalKind::interrupt())?,
            term: make(SignalKind::terminate())?,
        })
    }

    /// Waits for the next SIGINT or SIGTERM; returns its name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// How waiting for the nodes to be ready ended.
enum Startup {
    Ready,
    Signalled(&'static str),
    Failed(String),
}

async fn wait_ready(nodes: &mut [Running], deadline: Instant, signals: &mut Signals) -> Startup {
    let mut is_ready = vec![false; nodes.len()];
    loop {
        for (i, r) in nodes.iter_mut().enumerate() {
            if is_ready[i] {
                continue;
            }
            if let Some(status) = r.poll_exit() {
                return Startup::Failed(format!(
                    "node {} exited during startup ({}); its log {}:\n{}",
                    r.node.id,
                    status_text(status),
                    r.node.log.display(),
                    r.log_tail()
                ));
            }
            is_ready[i] = ready(r.node.admin).await;
        }
        if is_ready.iter().all(|&r| r) {
            if let Some(r) = nodes.iter_mut().find_map(|r| r.poll_exit().map(|_| r)) {
                return Startup::Failed(format!(
                    "node {} exited during startup; its log {}:\n{}",
                    r.node.id,
                    r.node.log.display(),
                    r.log_tail()
                ));
            }
            return Startup::Ready;
        }
        if Instant::now() >= deadline {
            let mut msg = String::from("nodes not ready in time:");
            for (i, r) in nodes.iter().enumerate() {
                if !is_ready[i] {
                    msg.push_str(&format!(
                        "\nnode {} (admin {}) never answered 200 on /ready; its log {}:\n{}",
                        r.node.id,
                        r.node.admin,
                        r.node.log.display(),
                        r.log_tail()
                    ));
                }
            }
            return Startup::Failed(msg);
        }
        tokio::select! {
            name = signals.next() => return Startup::Signalled(name),
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// SIGTERM to every running node, SIGKILL to those still running after `bound` (or at
/// a second signal). Returns whether every node exited 0 after the SIGTERM.
async fn stop_all(nodes: &mut [Running], bound: Duration, signals: &mut Signals) -> bool {
    let already: Vec<bool> = nodes.iter_mut().map(|r| r.poll_exit().is_some()).collect();
    for r in nodes.iter() {
        r.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + bound;
    let mut forced = false;
    loop {
        if nodes.iter_mut().all(|r| r.poll_exit().is_some()) {
            break;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "sluice: nodes still running {} s after SIGTERM; sending SIGKILL",
                bound.as_secs()
            );
            forced = true;
            break;
        }
        tokio::select! {
            name = signals.next() => {
                eprintln!("sluice: {name} again: sending SIGKILL");
                forced = true;
                break;
            }
            () = tokio::time::sleep(POLL) => {}
        }
    }
    if forced {
        for r in nodes.iter_mut() {
            r.signal(libc::SIGKILL);
            if r.exit.is_none() {
                r.exit = r.child.wait().ok();
            }
        }
    }
    let mut clean = !forced;
    let mut gone_before = Vec::new();
    for (r, was_gone) in nodes.iter().zip(already) {
        let status = r.exit.map_or_else(|| "unknown".to_owned(), status_text);
        let ok = r.exit.is_some_and(|s| s.success());
        if was_gone {
            clean = false;
            gone_before.push(r.node.id.to_string());
            continue; // already reported when it exited
        }
        eprintln!("sluice: node {} stopped ({status})", r.node.id);
        if !ok {
            clean = false;
            eprintln!("sluice: node {} log tail:\n{}", r.node.id, r.log_tail());
        }
    }
    if !gone_before.is_empty() {
        eprintln!(
            "sluice: node(s) {} had already exited before the stop",
            gone_before.join(", ")
        );
    }
    clean
}

#[derive(Serialize)]
struct UpNodeJson {
    id: u64,
    client: String,
    admin: String,
    peer: String,
    config: String,
    log: String,
    pid: u32,
}

#[derive(Serialize)]
struct UpJson {
    event: &'static str,
    dir: String,
    ca: String,
    nodes: Vec<UpNodeJson>,
}

fn endpoints_text(cluster: &LocalCluster, nodes: &[Running], elapsed: Duration) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|r| {
            vec![
                r.node.id.to_string(),
                r.node.client.to_string(),
                r.node.admin.to_string(),
                r.node.peer.to_string(),
                r.child.id().to_string(),
                r.node.log.display().to_string(),
            ]
        })
        .collect();
    let first = nodes
        .first()
        .map_or_else(String::new, |r| r.node.client.to_string());
    let ca = cluster.ca();
    format!(
        "{table}\nCA: {ca}\n\nTry:\n  sluice --server {first} --ca {ca} topic create demo \
         --partitions 3\n  sluice --server {first} --ca {ca} cluster status\n\n\
         cluster ready: {n} nodes in {secs:.1} s (dir {dir}); Ctrl-C stops it",
        table = table(&["NODE", "CLIENT", "ADMIN", "PEER", "PID", "LOG"], &rows),
        ca = ca.display(),
        n = nodes.len(),
        secs = elapsed.as_secs_f64(),
        dir = cluster.dir.display(),
    )
}

pub async fn up(args: &UpArgs, output: Output) -> Result<(), Fail> {
    let server = find_server(args.server_bin.as_deref())?;
    fs::create_dir_all(&args.dir).map_err(|e| io_fail("creating", &args.dir, &e))?;
    let dir = args
        .dir
        .canonicalize()
        .map_err(|e| io_fail("resolving", &args.dir, &e))?;
    if args.shards == 0 {
        return Err(Fail::usage("--shards must be at least 1"));
    }
    if args.network_threads == 0 {
        return Err(Fail::usage("--network-threads must be at least 1"));
    }
    let mut cluster = LocalCluster::plan(
        &dir,
        args.nodes,
        args.base_port,
        &args.cluster_id,
        args.proxy,
        Some(args.shards),
    )
    .map_err(Fail::usage)?;
    cluster.network_threads = Some(args.network_threads);
    check_existing(&cluster)?;
    check_ports(&cluster)?;
    let reused = ensure_certs(&cluster)?;
    for (i, node) in cluster.nodes.iter().enumerate() {
        fs::create_dir_all(&node.data_dir).map_err(|e| io_fail("creating", &node.data_dir, &e))?;
        let text = cluster.config_toml(i).map_err(Fail::usage)?;
        fs::write(&node.config, text).map_err(|e| io_fail("writing", &node.config, &e))?;
    }
    if output == Output::Text {
        emit(&format!(
            "starting {} nodes in {} ({} certificates in {}; server {})",
            cluster.nodes.len(),
            dir.display(),
            if reused { "reusing the" } else { "new" },
            cluster.certs.display(),
            server.display(),
        ));
    }
    // Signals are ours from here on: a Ctrl-C during startup stops what was started.
    let mut signals = Signals::new()?;
    let started = Instant::now();
    let mut nodes = Vec::new();
    for node in &cluster.nodes {
        match spawn_node(&server, node) {
            Ok(r) => nodes.push(r),
            Err(fail) => {
                stop_all(
                    &mut nodes,
                    Duration::from_secs(args.stop_timeout_secs),
                    &mut signals,
                )
                .await;
                return Err(fail);
            }
        }
    }
    let stop_bound = Duration::from_secs(args.stop_timeout_secs);
    let deadline = started + Duration::from_secs(args.ready_timeout_secs);
    match wait_ready(&mut nodes, deadline, &mut signals).await {
        Startup::Ready => {}
        Startup::Signalled(name) => {
            eprintln!("sluice: {name}: stopping the nodes");
            stop_all(&mut nodes, stop_bound, &mut signals).await;
            return Err(Fail::broker(format!("stopped by {name} during startup")));
        }
        Startup::Failed(msg) => {
            stop_all(&mut nodes, stop_bound, &mut signals).await;
            return Err(Fail::broker(msg));
        }
    }
    match output {
        Output::Text => emit(&endpoints_text(&cluster, &nodes, started.elapsed())),
        Output::Json => emit_json(&UpJson {
            event: "ready",
            dir: dir.display().to_string(),
            ca: cluster.ca().display().to_string(),
            nodes: nodes
                .iter()
                .map(|r| UpNodeJson {
                    id: r.node.id,
                    client: r.node.client.to_string(),
                    admin: r.node.admin.to_string(),
                    peer: r.node.peer.to_string(),
                    config: r.node.config.display().to_string(),
                    log: r.node.log.display().to_string(),
                    pid: r.child.id(),
                })
                .collect(),
        })?,
    }
    // Supervise: report nodes that exit on their own (the others keep running, e.g.
    // while testing a failover); stop at a signal or once every node is gone.
    let mut reported = vec![false; nodes.len()];
    let name = loop {
        for (i, r) in nodes.iter_mut().enumerate() {
            if reported[i] {
                continue;
            }
            if let Some(status) = r.poll_exit() {
                reported[i] = true;
                eprintln!(
                    "sluice: node {} exited ({}); the others keep running. Its log {}:\n{}",
                    r.node.id,
                    status_text(status),
                    r.node.log.display(),
                    r.log_tail()
                );
            }
        }
        if reported.iter().all(|&r| r) {
            return Err(Fail::broker("every node exited"));
        }
        tokio::select! {
            name = signals.next() => break name,
            () = tokio::time::sleep(POLL) => {}
        }
    };
    if output == Output::Text {
        emit(&format!("{name}: stopping the nodes (SIGTERM)"));
    }
    let clean = stop_all(&mut nodes, stop_bound, &mut signals).await;
    if clean {
        if output == Output::Text {
            emit("cluster stopped");
        }
        Ok(())
    } else {
        Err(Fail::broker("the cluster did not stop cleanly (see above)"))
    }
}
