//! `sluice-server`: one Sluice broker. With no arguments, a dev broker: data in
//! `./sluice-data`, QUIC on 127.0.0.1:7878 with a generated dev CA, admin HTTP on
//! 127.0.0.1:7879. SIGTERM or Ctrl-C stops it gracefully: stop accepting, drain
//! in-flight requests, flush and close every partition, exit 0. Exit codes are in
//! `exit.rs` and `docs/OPERATIONS.md`.

mod admin;
mod cluster;
mod cluster_service;
mod config;
mod exit;
mod lock;
mod metrics;
mod producer_ids;
mod service;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Parser;
use sluice_gateway::{Gateway, GatewayConfig, Reply, Service, TlsSource};
use sluice_io::DataFileMode;
use sluice_node::{Engine, EngineConfig, RaftOutbox, StartError};
use sluice_peer::{PeerConfig, PeerLinks, PeerTls};
use sluice_proto::wire::{Request, RequestHeader};
use tracing::{error, info, warn};

use crate::cluster::Cluster;
use crate::config::{Flags, Settings};
use crate::service::{BrokerService, NodeIdentity};

/// How long a graceful stop waits for in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl Service for BrokerService {
    fn handle(
        &self,
        header: RequestHeader,
        request: Request,
        payload: Vec<u8>,
    ) -> impl std::future::Future<Output = Reply> + Send {
        let this = self.clone();
        async move {
            let (response, payload) = BrokerService::handle(&this, header, request, payload).await;
            Reply::with_payload(response, payload)
        }
    }
}

fn main() {
    keep_freed_memory();
    let flags = Flags::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    std::process::exit(run(&flags));
}

/// glibc's allocator, told to keep what the broker frees for its next allocations.
///
/// By default a produce payload of a megabyte is mapped fresh and unmapped when freed,
/// and once freed chunks collect at the top of a heap they are trimmed (given back to
/// the kernel): the next payload faults its pages in again, and the kernel zeroes each
/// before the gateway copies the request into it. With a 32 MiB mmap threshold (glibc's
/// largest) and a 1 GiB trim threshold, payloads come from the heaps and freed memory
/// stays there: a broker at steady load stops faulting. Measured: page faults per 1M
/// records at full speed 27-29k against 41-52k on a fresh broker (the rest are its
/// first fill of the replicas' entry caches and the in-flight requests), broker CPU
/// 1.86-1.95 s against 1.97-2.06 s (`benches/README.md`).
///
/// The cost is memory the broker keeps once it has needed it (up to its peak heap),
/// which a broker sized for its caches and in-flight bytes has anyway.
#[cfg(target_env = "gnu")]
fn keep_freed_memory() {
    const MMAP_THRESHOLD_BYTES: libc::c_int = 32 << 20;
    const TRIM_THRESHOLD_BYTES: libc::c_int = 1 << 30;
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    };
    if !ok {
        // Not fatal: the allocator keeps its defaults (more page faults, same results).
        eprintln!("sluice-server: mallopt refused; keeping glibc's allocation defaults");
    }
}

/// Other C libraries keep their own policies.
#[cfg(not(target_env = "gnu"))]
fn keep_freed_memory() {}

fn run(flags: &Flags) -> i32 {
    let settings = match Settings::resolve(flags) {
        Ok(s) => s,
        Err(e) => {
            error!("configuration: {e}");
            return exit::CONFIG;
        }
    };
    let _lock = match lock::lock_data_dir(&settings.data_dir) {
        Ok(l) => l,
        Err(e) => {
            error!("data directory {}: {e}", settings.data_dir.display());
            return exit::DATA_DIR;
        }
    };
    let data_file_mode = match data_file_mode(&settings) {
        Ok(m) => m,
        Err(ModeError::Refused(e)) => {
            error!("configuration: {e}");
            return exit::CONFIG;
        }
        Err(ModeError::Probe(e)) => {
            error!(
                "data directory {}: probing for O_DIRECT: {e}",
                settings.data_dir.display()
            );
            return exit::DATA_DIR;
        }
    };
    let links_cell: Arc<OnceLock<Arc<PeerLinks>>> = Arc::new(OnceLock::new());
    let engine_config = match engine_config(&settings, &links_cell, data_file_mode) {
        Ok(c) => c,
        Err(e) => {
            error!("configuration: {e}");
            return exit::CONFIG;
        }
    };
    let log_defaults = engine_config.log_defaults.clone();
    let engine = match Engine::start(engine_config) {
        Ok(e) => e,
        Err(e) => {
            error!("engine: {e}");
            return match e {
                StartError::Config(_) => exit::CONFIG,
                StartError::Recovery { .. } => exit::RECOVERY,
                StartError::Registry(_) => exit::DATA_DIR,
                _ => exit::FAILURE,
            };
        }
    };
    let report = engine.startup();
    info!(
        partitions = report.partitions.len(),
        clean = report.all_clean(),
        recovery_ms = report.elapsed.as_millis() as u64,
        shards = engine.shard_count(),
        data_file_mode = ?data_file_mode,
        "engine started"
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.network_threads)
        .thread_name("sluice-gateway")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            error!("tokio runtime: {e}");
            return exit::FAILURE;
        }
    };
    runtime.block_on(serve(settings, engine, links_cell, log_defaults))
}

/// Why [`data_file_mode`] found no mode to run with.
#[derive(Debug)]
enum ModeError {
    /// The configuration asks for O_DIRECT where the file system refuses it.
    Refused(String),
    /// The probe itself failed: the data directory's problem.
    Probe(std::io::Error),
}

/// The data files' mode from `[storage] data_file_mode`; `"auto"` (the default) probes
/// the data directory (locked, so it exists) for O_DIRECT once, here.
fn data_file_mode(s: &Settings) -> Result<DataFileMode, ModeError> {
    let probe = || sluice_io::direct_io_supported(&s.data_dir).map_err(ModeError::Probe);
    match s.storage.data_file_mode.as_deref() {
        Some("buffered") => Ok(DataFileMode::Buffered),
        Some("direct") => match probe()? {
            true => Ok(DataFileMode::Direct),
            false => Err(ModeError::Refused(format!(
                "data_file_mode = \"direct\", but the file system under {} refuses O_DIRECT \
                 (use \"buffered\" or \"auto\")",
                s.data_dir.display()
            ))),
        },
        // Settings::resolve admits only the three names.
        _ => match probe()? {
            true => Ok(DataFileMode::Direct),
            false => {
                warn!(
                    data_dir = %s.data_dir.display(),
                    "the data directory's file system refuses O_DIRECT: data files go \
                     through the page cache (data_file_mode = \"buffered\")"
                );
                Ok(DataFileMode::Buffered)
            }
        },
    }
}

fn engine_config(
    s: &Settings,
    links: &Arc<OnceLock<Arc<PeerLinks>>>,
    data_file_mode: DataFileMode,
) -> Result<EngineConfig, String> {
    let mut c = EngineConfig::new(&s.data_dir);
    c.shards = s.shards;
    c.node_id = u64::from(s.node_id);
    if let Some(cl) = &s.cluster {
        c.controller_voters = Some(cl.nodes.iter().map(|n| n.id).collect());
        c.raft_tick_ms = cl.raft_tick_ms;
        c.leader_rebalance_ms = cl.leader_rebalance_ms;
        let links = Arc::clone(links);
        c.outbox = Some(RaftOutbox(Arc::new(move |to, frame| {
            if let Some(l) = links.get() {
                // A full queue or a down peer drops the frame: Raft resends.
                let _ = l.send(to, bytes::Bytes::from(frame));
            }
        })));
    }
    if let Some(b) = s.storage.segment_bytes {
        c.log_defaults.segment_bytes_max = b;
    }
    if let Some(b) = s.storage.retention_bytes {
        c.log_defaults.retention_bytes_max = Some(b);
    }
    if let Some(ms) = s.storage.retention_ms {
        c.log_defaults.retention_age_ms_max = Some(ms);
    }
    c.data_file_mode = data_file_mode;
    if let Some(q) = s.limits.queue_depth {
        c.queue_depth = q;
    }
    Ok(c)
}

/// Starts the peer links and the controller-log follower (cluster mode).
fn start_cluster(
    settings: &Settings,
    engine: &sluice_node::EngineHandle,
    links_cell: &Arc<OnceLock<Arc<PeerLinks>>>,
    service_cell: &Arc<OnceLock<BrokerService>>,
    log_defaults: sluice_storage::LogConfig,
) -> Result<Option<Arc<Cluster>>, String> {
    let Some(cs) = &settings.cluster else {
        return Ok(None);
    };
    let tls = PeerTls::load(&cs.ca, &cs.cert, &cs.key).map_err(|e| format!("cluster TLS: {e}"))?;
    let peer_config = PeerConfig::new(u64::from(settings.node_id), cs.peer_listen, tls);
    let handler = Arc::new(cluster::Handler {
        engine: engine.clone(),
        service: Arc::clone(service_cell),
    });
    let links = Arc::new(
        PeerLinks::start(peer_config, handler)
            .map_err(|e| format!("peer links on {}: {e}", cs.peer_listen))?,
    );
    for n in &cs.nodes {
        if n.id != u64::from(settings.node_id) {
            links.set_peer(n.id, n.peer_addr);
        }
    }
    let _ = links_cell.set(Arc::clone(&links));
    let cluster = Arc::new(Cluster::new(engine.clone(), cs.clone(), log_defaults));
    cluster.set_links(links);
    info!(
        node_id = settings.node_id,
        peers = cs.nodes.len() - 1,
        peer_listen = %cs.peer_listen,
        proxy = cs.proxy,
        "cluster mode: peer links up, following the controller log"
    );
    Ok(Some(cluster))
}

async fn serve(
    settings: Settings,
    engine: sluice_node::EngineHandle,
    links_cell: Arc<OnceLock<Arc<PeerLinks>>>,
    log_defaults: sluice_storage::LogConfig,
) -> i32 {
    let service_cell: Arc<OnceLock<BrokerService>> = Arc::new(OnceLock::new());
    let cluster = match start_cluster(&settings, &engine, &links_cell, &service_cell, log_defaults)
    {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            let _ = engine.shutdown().await;
            return exit::LISTEN;
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let follower = cluster.clone().map(|c| tokio::spawn(c.run(stop_rx)));
    let tls = match (&settings.tls.cert, &settings.tls.key) {
        (Some(cert), Some(key)) => TlsSource::Files {
            cert_pem: cert.clone(),
            key_pem: key.clone(),
        },
        _ => {
            let dir = settings.data_dir.join("tls");
            info!(
                ca = %sluice_gateway::dev_ca_path(&dir).display(),
                "dev mode: TLS with a generated CA; clients trust this file (sluice --ca)"
            );
            TlsSource::Dev { dir }
        }
    };
    let mut gconfig = GatewayConfig::new(settings.listen, tls);
    if let Some(n) = settings.limits.in_flight_per_connection {
        gconfig.in_flight_per_connection_max = n;
    }
    if let Some(n) = settings.limits.connections {
        gconfig.connections_max = n;
    }
    if let Some(ms) = settings.limits.stream_read_timeout_ms {
        gconfig.stream_read_timeout = Duration::from_millis(ms);
    }
    let mut service = BrokerService::new(
        engine.clone(),
        NodeIdentity {
            node_id: settings.node_id,
            addr: settings.advertised_addr.clone(),
            cluster_id: settings
                .cluster
                .as_ref()
                .map_or_else(|| "sluice-dev".into(), |c| c.cluster_id.clone()),
        },
    )
    .with_producer_ids(producer_ids::ProducerIds::new(
        &settings.data_dir,
        settings.node_id,
    ));
    if let Some(c) = &cluster {
        service = service.with_cluster(Arc::clone(c));
    }
    let _ = service_cell.set(service.clone());
    let service = Arc::new(service);
    let gateway = match Gateway::bind(gconfig, service) {
        Ok(g) => g,
        Err(e) => {
            error!("QUIC listener on {}: {e}", settings.listen);
            let _ = engine.shutdown().await;
            return exit::LISTEN;
        }
    };
    info!(addr = %gateway.local_addr(), "accepting QUIC connections (ALPN sluice/1)");
    let admin = match admin::start(
        settings.admin_listen,
        engine.clone(),
        gateway.stats().clone(),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            error!("admin HTTP listener on {}: {e}", settings.admin_listen);
            gateway.shutdown(Duration::ZERO).await;
            let _ = engine.shutdown().await;
            return exit::LISTEN;
        }
    };
    info!(addr = %admin.local_addr(), "admin HTTP: /metrics /health /ready");
    admin.set_ready(true);

    wait_for_stop_signal().await;
    info!("stopping: draining in-flight requests");
    admin.set_ready(false);
    let drained = gateway.shutdown(SHUTDOWN_GRACE).await;
    info!(?drained, "gateway stopped");
    let _ = stop_tx.send(true);
    if let Some(f) = follower {
        let _ = f.await;
    }
    let code = match engine.shutdown().await {
        Ok(()) => {
            info!("every partition flushed and closed cleanly");
            exit::OK
        }
        Err(e) => {
            error!("engine shutdown: {e}");
            exit::FAILURE
        }
    };
    if let Some(l) = links_cell.get() {
        l.shutdown().await;
    }
    admin.stop().await;
    code
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot watch SIGTERM ({e}); only Ctrl-C stops the broker");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT"),
    }
}
