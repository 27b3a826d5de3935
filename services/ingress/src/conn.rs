//! Accepting connections and driving a [`tern_smtp::Session`] over a stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_runtime::Shutdown;
use tern_runtime::config::{Cidr, CommonConfig};
use tern_smtp::{Action, Reply, Session, SessionConfig, codes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, field};

use crate::{Config, ListenerKind};

/// The interceptor type of the mailbox client.
pub(crate) type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
/// The mailbox `Accounts` client with trace propagation.
pub(crate) type AccountsClient = tern_proto::accounts_client::AccountsClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Interceptor>,
>;

/// RFC 5321 §4.5.3.2.7: a server should wait at least 5 minutes for a command.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a client may take to read our replies.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Size of one socket read.
const READ_CHUNK: usize = 16 * 1024;

/// What every session shares.
pub(crate) struct Ctx {
    pub(crate) common: CommonConfig,
    pub(crate) trusted: Vec<Cidr>,
    pub(crate) accounts: AccountsClient,
    pub(crate) js: async_nats::jetstream::Context,
    session: SessionConfig,
    tls: TlsAcceptor,
}

impl Ctx {
    pub(crate) fn new(
        config: &Config,
        js: async_nats::jetstream::Context,
        accounts: AccountsClient,
        tls: Arc<rustls::ServerConfig>,
    ) -> Self {
        let mut session = SessionConfig::new(config.common.hostname.clone());
        session.max_message_size = config.max_message_size;
        session.max_recipients = config.max_recipients;
        Ctx {
            common: config.common.clone(),
            trusted: config.trusted_networks.clone(),
            accounts,
            js,
            session,
            tls: TlsAcceptor::from(tls),
        }
    }
}

/// Accept connections on `listener` until `draining` fires.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    ctx: Arc<Ctx>,
    tracker: TaskTracker,
    draining: Shutdown,
    hard: Shutdown,
) {
    loop {
        let accepted = tokio::select! {
            _ = draining.wait() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                tracker.spawn(connection(
                    stream,
                    peer,
                    kind,
                    ctx.clone(),
                    draining.clone(),
                    hard.clone(),
                ));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, listener = kind.name(), "accept failed");
                tokio::select! {
                    _ = draining.wait() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// How a drive over one stream ended.
enum Next {
    /// The session is over.
    Closed,
    /// The client asked for STARTTLS; upgrade the stream and drive again.
    StartTls,
}

/// Why one connection's session ends early.
struct Signals {
    /// Shutdown began: idle sessions get `421 4.3.2`.
    draining: Shutdown,
    /// The grace period is over: every session gets `421 4.3.2`.
    hard: Shutdown,
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    ctx: Arc<Ctx>,
    draining: Shutdown,
    hard: Shutdown,
) {
    metrics::counter!("tern_smtp_sessions_total", "listener" => kind.name()).increment(1);
    let span = tracing::info_span!(
        "smtp.session",
        peer = %peer,
        listener = kind.name(),
        helo = field::Empty,
        tls = field::Empty,
    );
    let signals = Signals { draining, hard };
    async move {
        tracing::debug!("connection accepted");
        let mut config = ctx.session.clone();
        let result = match kind {
            ListenerKind::Submissions => {
                let Some(mut tls) = handshake(&ctx, tcp).await else {
                    return;
                };
                Span::current().record("tls", true);
                let mut session = Session::new(config, true);
                drive(&mut session, &mut tls, &ctx, peer, &signals).await
            }
            ListenerKind::Smtp | ListenerKind::Submission => {
                config.starttls = true;
                let mut session = Session::new(config, false);
                let mut tcp = tcp;
                match drive(&mut session, &mut tcp, &ctx, peer, &signals).await {
                    Ok(Next::StartTls) => {
                        let Some(mut tls) = handshake(&ctx, tcp).await else {
                            return;
                        };
                        Span::current().record("tls", true);
                        session.tls_established();
                        drive(&mut session, &mut tls, &ctx, peer, &signals).await
                    }
                    other => other,
                }
            }
        };
        match result {
            Ok(_) => tracing::debug!("connection closed"),
            Err(e) => tracing::debug!(error = %e, "connection ended"),
        }
    }
    .instrument(span)
    .await
}

async fn handshake(
    ctx: &Ctx,
    tcp: TcpStream,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, ctx.tls.accept(tcp)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

fn shutting_down(hostname: &str) -> Reply {
    Reply::new(
        421,
        codes::SHUTTING_DOWN,
        format!("{hostname} Service shutting down, try again later"),
    )
}

async fn flush<S: AsyncWrite + Unpin>(stream: &mut S, out: &mut Vec<u8>) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let write = async {
        stream.write_all(out).await?;
        stream.flush().await
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Ok(r) => {
            out.clear();
            r
        }
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}

/// Run `session` over `stream` until it closes or asks for STARTTLS.
async fn drive<S>(
    session: &mut Session,
    stream: &mut S,
    ctx: &Ctx,
    peer: SocketAddr,
    signals: &Signals,
) -> std::io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hostname = ctx.common.hostname.clone();
    let mut out = Vec::with_capacity(1024);
    let mut buf = vec![0u8; READ_CHUNK];
    // The `smtp.transaction` span lives from MAIL to the end of the
    // transaction, so recipient checks and the spool publish run inside it.
    let mut txn: Option<Span> = None;
    let mut helo_recorded: Option<String> = None;
    loop {
        let action = session.poll();
        match (session.mail_from(), &txn) {
            (Some(mail), None) => {
                // One trace per message: the transaction starts its own trace
                // and links to the session, so several messages on one
                // connection are several traces, each found by its message id.
                let span = tracing::info_span!(
                    parent: None,
                    "smtp.transaction",
                    mail_from = %mail.sender(),
                    rcpt_count = field::Empty,
                    message_id = field::Empty,
                );
                tern_runtime::telemetry::link_to_current(&span);
                txn = Some(span);
            }
            (None, Some(_)) => txn = None,
            _ => {}
        }
        if session.helo() != helo_recorded.as_deref() {
            helo_recorded = session.helo().map(str::to_string);
            if let Some(h) = &helo_recorded {
                Span::current().record("helo", h.as_str());
            }
        }
        match action {
            Action::Reply(reply) => {
                metrics::counter!("tern_smtp_replies_total", "code" => reply.code.to_string())
                    .increment(1);
                if !reply.is_positive() && !reply.is_intermediate() {
                    tracing::debug!(reply = %reply, "negative reply");
                }
                reply.write_to(&mut out);
            }
            Action::NeedInput => {
                flush(stream, &mut out).await?;
                let idle = session.is_idle();
                let read = tokio::select! {
                    biased;
                    _ = signals.hard.wait() => None,
                    _ = signals.draining.wait(), if idle => None,
                    r = tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut buf)) => Some(r),
                };
                match read {
                    None => session.close_with(shutting_down(&hostname)),
                    Some(Err(_)) => session.close_with(Reply::new(
                        421,
                        codes::TIMEOUT,
                        format!("{hostname} Timeout, closing connection"),
                    )),
                    Some(Ok(Ok(0))) => return Ok(Next::Closed),
                    Some(Ok(Ok(n))) => session.feed(&buf[..n]),
                    Some(Ok(Err(e))) => return Err(e),
                }
            }
            Action::CheckRecipient(rcpt) => {
                let span = txn.clone().unwrap_or_else(Span::current);
                let decision = ctx.check_recipient(peer.ip(), &rcpt).instrument(span).await;
                session.recipient_checked(decision);
            }
            Action::Deliver(message) => {
                let span = txn.clone().unwrap_or_else(Span::current);
                let outcome = ctx
                    .accept_message(message, peer.ip())
                    .instrument(span)
                    .await;
                session.message_stored(outcome);
            }
            Action::StartTls => {
                flush(stream, &mut out).await?;
                return Ok(Next::StartTls);
            }
            Action::Close => {
                flush(stream, &mut out).await?;
                let _ = stream.shutdown().await;
                return Ok(Next::Closed);
            }
        }
    }
}
