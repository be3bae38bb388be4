//! The admin HTTP port: `/metrics` (Prometheus text format), `/health` (the process
//! answers), `/ready` (the engine recovered and the QUIC listener accepts; 503 while
//! starting or draining).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use sluice_gateway::GatewayStats;
use sluice_node::EngineHandle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Clone)]
struct AdminState {
    engine: EngineHandle,
    gateway: Arc<GatewayStats>,
    ready: Arc<AtomicBool>,
}

/// The running admin server.
pub struct Admin {
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Admin {
    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What `/ready` answers.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Stops serving.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }
}

/// Binds `addr` and serves the admin routes.
pub async fn start(
    addr: SocketAddr,
    engine: EngineHandle,
    gateway: Arc<GatewayStats>,
) -> std::io::Result<Admin> {
    let ready = Arc::new(AtomicBool::new(false));
    let state = AdminState {
        engine,
        gateway,
        ready: ready.clone(),
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(readiness))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(e) = serve.await {
            tracing::error!("admin HTTP: {e}");
        }
    });
    Ok(Admin {
        addr,
        ready,
        stop: Some(stop),
        task,
    })
}

async fn readiness(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let engine = match s.engine.stats().await {
        Ok(e) => e,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, "text/plain")],
                format!("engine stats unavailable: {e}\n"),
            )
        }
    };
    match crate::metrics::render(engine, s.gateway.snapshot()) {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("encoding metrics: {e}\n"),
        ),
    }
}
