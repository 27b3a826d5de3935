//! gRPC serving and client channels shared by every service.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;

use crate::Shutdown;

/// Errors from gRPC serving or connecting.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The endpoint URL is malformed.
    #[error("gRPC endpoint {url}: {message}")]
    Endpoint {
        /// The URL.
        url: String,
        /// What is wrong.
        message: String,
    },
}

/// The standard health service plus a reporter to flip service statuses.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    tonic_health::server::health_reporter()
}

/// Serve `routes` (which should include the health service) until shutdown.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    shutdown: Shutdown,
) -> Result<(), GrpcError> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move { shutdown.wait().await })
        .await?;
    Ok(())
}

/// A lazily-connecting channel to `url` (reconnects on its own).
pub fn channel(url: &str) -> Result<tonic::transport::Channel, GrpcError> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string()).map_err(|e| {
        GrpcError::Endpoint {
            url: url.to_string(),
            message: e.to_string(),
        }
    })?;
    Ok(endpoint
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(10))
        .connect_lazy())
}

/// `http://addr` for a bound gRPC listener.
pub fn url_for(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
