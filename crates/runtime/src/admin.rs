//! The admin HTTP port every service has: `/healthz` (alive), `/readyz`
//! (ready for traffic) and Prometheus `/metrics`.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::Shutdown;

/// Whether a service is ready for traffic; flipped by the service.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Mark ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    /// Is it ready?
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Histogram bucket bounds in seconds, shared by every latency metric.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Real Prometheus histograms (not summaries), so latency quantiles can
        // be aggregated across replicas: from 0.5 ms (a cached DNS answer) to
        // 5 minutes (an SMTP transaction at its RFC 5321 timeouts).
        let builder = PrometheusBuilder::new();
        let builder = match builder.set_buckets(LATENCY_BUCKETS) {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours stays local.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Serve the admin endpoints until `stop`. Readiness turns false as soon as
/// `draining` fires, so load balancers stop sending traffic while the service
/// drains; `/healthz` keeps answering until the service is done.
pub async fn serve(
    listener: TcpListener,
    ready: Readiness,
    draining: Shutdown,
    stop: Shutdown,
) -> std::io::Result<()> {
    let handle = metrics_handle();
    let r = ready.clone();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move {
                    if r.get() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .route("/metrics", get(move || async move { handle.render() }));
    tokio::spawn(async move {
        draining.wait().await;
        ready.set(false);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.wait().await })
        .await
}
