//! Listeners: accept IMAP/POP3 connections (optionally with implicit TLS)
//! and run one session task per connection.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_runtime::Shutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::store::Store;

/// How long a TLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// What every session needs.
pub struct SessionCtx {
    /// The database.
    pub store: Arc<Store>,
    /// Name in greetings.
    pub hostname: String,
    /// Where LOGIN / USER+PASS may be used without TLS.
    pub allow_plaintext_auth: crate::PlaintextAuth,
    /// Fires when the service shuts down; idle sessions then close.
    pub shutdown: Shutdown,
    /// TLS for STARTTLS / STLS (`None`: not offered).
    pub tls: Option<TlsAcceptor>,
    /// Change notifications for IDLE.
    pub hub: Arc<crate::notify::Hub>,
    /// Largest message APPEND accepts, in octets.
    pub max_message: usize,
    /// Failed-login counters (shared with the Authenticate gRPC call).
    pub throttle: Arc<crate::throttle::LoginThrottle>,
    /// Maildrops with a POP3 session on this replica (RFC 1939 §8).
    pub pop3_locks: crate::pop3::MaildropLocks,
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// IMAP4rev1.
    Imap,
    /// POP3.
    Pop3,
}

/// A duplex byte stream (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Accept connections until shutdown. `label` is the metric label and the
/// name in logs (`imap`, `imaps`, `pop3`, `pop3s`).
pub async fn accept_loop(
    listener: TcpListener,
    protocol: Protocol,
    label: &'static str,
    tls: Option<TlsAcceptor>,
    ctx: Arc<SessionCtx>,
    tracker: TaskTracker,
) {
    let shutdown = ctx.shutdown.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.wait() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, listener = label, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        metrics::counter!("tern_mailbox_sessions_total", "protocol" => label).increment(1);
        let ctx = ctx.clone();
        let tls = tls.clone();
        let span = tracing::info_span!("mailbox.session", protocol = label, %peer);
        tracker.spawn(
            async move {
                let _ = tcp.set_nodelay(true);
                connection(tcp, peer.ip(), protocol, tls, ctx).await;
            }
            .instrument(span),
        );
    }
}

async fn connection(
    tcp: TcpStream,
    peer: IpAddr,
    protocol: Protocol,
    tls: Option<TlsAcceptor>,
    ctx: Arc<SessionCtx>,
) {
    tracing::debug!("connection opened");
    let result = match tls {
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => run_session(Box::new(stream), true, peer, protocol, &ctx).await,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake timed out");
                    return;
                }
            }
        }
        None => run_session(Box::new(tcp), false, peer, protocol, &ctx).await,
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "session ended with an I/O error");
    }
}

async fn run_session(
    stream: Box<dyn Io>,
    tls: bool,
    peer: IpAddr,
    protocol: Protocol,
    ctx: &SessionCtx,
) -> std::io::Result<()> {
    match protocol {
        Protocol::Imap => crate::imap::session(stream, tls, peer, ctx).await,
        Protocol::Pop3 => crate::pop3::session(stream, tls, peer, ctx).await,
    }
}
