//! The runtime every Tern service shares: typed configuration, telemetry with
//! W3C trace propagation, the NATS JetStream bus, gRPC serving with health,
//! the admin HTTP port, TLS, graceful shutdown, the one consumer loop
//! (`worker`) and the skeleton every service runs in (`service`).

pub mod admin;
pub mod body;
pub mod bus;
pub mod config;
pub mod date;
pub mod grpc;
pub mod holds;
pub mod logfmt;
pub mod managed_nats;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod worker;

pub use shutdown::Shutdown;

/// Milliseconds since the Unix epoch, for envelope timestamps.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
