//! Test harness: real components on loopback with ephemeral ports, torn down
//! on drop even when a test fails.
//!
//! - [`NatsServer`]: a real `nats-server` with JetStream in a temp dir,
//!   optionally with a config file (TLS, users);
//! - [`TestPki`]: a throwaway CA with server and client certificates;
//! - [`NatsJwtAuth`]: an operator/account/user JWT chain and `.creds`;
//! - [`DnsServer`]: an in-process authoritative DNS server (hickory-server)
//!   serving zone text written in the test;
//! - [`SmtpSink`]: an SMTP server that records every transaction it receives;
//! - [`dkimpy_verify`]: PyPI's dkimpy as an independent DKIM verifier;
//! - [`OtlpReceiver`]: an OTLP/gRPC trace receiver that keeps the spans it is sent.

mod dkimpy;
mod dns;
mod jwt;
mod nats;
mod otlp;
mod pki;
mod sink;

pub use dkimpy::{DkimpyVerdict, dkimpy_verify, venv_python};
pub use dns::DnsServer;
pub use jwt::NatsJwtAuth;
pub use nats::NatsServer;
pub use otlp::{OtlpReceiver, OtlpSpan};
pub use pki::TestPki;
pub use sink::{SinkMessage, SmtpSink};

use std::time::{Duration, Instant};

/// Poll `check` until it returns `Some`, or panic after `deadline` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound then released; tests that can should bind port 0 instead).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// The workspace root (where `.venv/` lives).
pub fn workspace_root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|p| p.join("Cargo.lock").exists())
        .unwrap_or(here)
        .to_path_buf()
}
