//! Accepting connections and driving a [`tern_smtp::Session`] over a stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_runtime::Shutdown;
use tern_runtime::config::{Cidr, CommonConfig};
use tern_smtp::{Action, AuthDecision, Credentials, Reply, Session, SessionConfig, codes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, field};

use crate::limits::{AuthFailures, Connections, Slot};
use crate::{Config, ListenerKind};

/// The interceptor type of the mailbox client.
pub(crate) type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
/// The mailbox `Accounts` client with trace propagation.
pub(crate) type AccountsClient = tern_proto::accounts_client::AccountsClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Interceptor>,
>;

/// How long a client may take to read our replies.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Size of one socket read once a client sends in bulk.
const READ_CHUNK: usize = 16 * 1024;
/// Size of the first reads: small, so idle connections stay small.
const READ_SMALL: usize = 1024;
/// How long a PROXY protocol header may take to arrive.
const PROXY_TIMEOUT: Duration = Duration::from_secs(10);

/// What every session shares.
pub(crate) struct Ctx {
    pub(crate) common: CommonConfig,
    pub(crate) trusted: Vec<Cidr>,
    pub(crate) accounts: AccountsClient,
    pub(crate) js: async_nats::jetstream::Context,
    session: SessionConfig,
    tls: TlsAcceptor,
    pub(crate) auth_plaintext: bool,
    smtp_auth: bool,
    command_timeout: Duration,
    data_timeout: Duration,
    proxy: [bool; 3],
    pub(crate) connections: Arc<Connections>,
    pub(crate) auth_failures: AuthFailures,
    /// SPF/DKIM/ARC/DMARC checks for the MX listener (`None`: switched off).
    pub(crate) inbound: Option<crate::authcheck::SharedChecker>,
    pub(crate) dkim: crate::dkim::Dkim,
    /// Mail to the bounce domain (`None`: no cluster secret).
    pub(crate) bounces: Option<Arc<crate::bounces::BounceInbox>>,
}

impl Ctx {
    pub(crate) fn new(
        config: &Config,
        js: async_nats::jetstream::Context,
        accounts: AccountsClient,
        tls: Arc<rustls::ServerConfig>,
        dkim: crate::dkim::Dkim,
    ) -> Self {
        let mut session = SessionConfig::new(config.common.hostname.clone());
        session.max_message_size = config.max_message_size;
        session.max_recipients = config.max_recipients;
        session.max_errors = config.max_errors;
        session.max_command_line = config.max_command_line;
        session.max_data_line = config.max_line_length;
        session.auth_plaintext = config.auth_plaintext;
        session.sender_login_match = config.sender_login_match;
        session.requiretls = config.requiretls;
        Ctx {
            common: config.common.clone(),
            trusted: config.trusted_networks.clone(),
            accounts,
            js,
            session,
            tls: TlsAcceptor::from(tls),
            auth_plaintext: config.auth_plaintext,
            smtp_auth: config.smtp_auth,
            command_timeout: config.command_timeout,
            data_timeout: config.data_timeout,
            proxy: [
                ListenerKind::Smtp.proxy(config),
                ListenerKind::Submission.proxy(config),
                ListenerKind::Submissions.proxy(config),
            ],
            connections: Connections::new(config.max_connections, config.max_connections_per_ip),
            auth_failures: AuthFailures::new(
                config.auth_max_failures,
                config.auth_failure_delay,
                config.auth_failure_window,
            ),
            inbound: None,
            dkim,
            bounces: None,
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
                let slot = match ctx.connections.admit() {
                    Ok(slot) => slot,
                    Err(why) => {
                        refuse(&stream, &ctx.common.hostname, why.as_str());
                        continue;
                    }
                };
                tracker.spawn(connection(
                    stream,
                    peer,
                    kind,
                    slot,
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

/// Tell a client over a limit `421 4.7.0` (best effort, never blocking:
/// the reply fits in the socket buffer of a fresh connection) and close.
fn refuse(stream: &TcpStream, hostname: &str, why: &'static str) {
    metrics::counter!("tern_smtp_connections_refused_total", "reason" => why).increment(1);
    tracing::debug!(reason = why, "connection refused");
    let reply = Reply::new(
        421,
        codes::TEMP_SECURITY,
        format!("{hostname} Too many connections, try again later"),
    );
    let _ = stream.try_write(&reply.to_bytes());
}

/// Read a PROXY protocol header, exactly (no byte of SMTP or TLS beyond it).
async fn read_proxy_header(tcp: &mut TcpStream) -> Option<tern_smtp::proxy::ProxyHeader> {
    let read = async {
        let mut buf = Vec::with_capacity(108);
        loop {
            match tern_smtp::proxy::parse(&buf) {
                Ok(Some((h, _))) => return Some(h),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "bad PROXY header");
                    return None;
                }
            }
            // Version 2: once the fixed part is in, read the rest at once.
            let want = if buf.len() >= 16 && buf.starts_with(b"\r\n\r\n") {
                16 + usize::from(u16::from_be_bytes([buf[14], buf[15]])) - buf.len()
            } else {
                1
            };
            let start = buf.len();
            buf.resize(start + want, 0);
            if tcp.read_exact(&mut buf[start..]).await.is_err() {
                return None;
            }
        }
    };
    tokio::time::timeout(PROXY_TIMEOUT, read)
        .await
        .ok()
        .flatten()
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
    mut tcp: TcpStream,
    mut peer: SocketAddr,
    kind: ListenerKind,
    mut slot: Slot,
    ctx: Arc<Ctx>,
    draining: Shutdown,
    hard: Shutdown,
) {
    metrics::counter!("tern_smtp_sessions_total", "listener" => kind.name()).increment(1);
    if ctx.proxy[kind.index()] {
        // The load balancer speaks first; a connection without a valid
        // header is dropped without a word (it is not an SMTP client).
        match read_proxy_header(&mut tcp).await {
            Some(h) => {
                if let Some(source) = h.source {
                    peer = source;
                }
            }
            None => return,
        }
    }
    if let Err(why) = ctx.connections.bind_ip(&mut slot, peer.ip()) {
        refuse(&tcp, &ctx.common.hostname, why.as_str());
        return;
    }
    // OpenTelemetry semantic conventions: the connecting side, as the
    // PROXY header reported it when the listener takes one.
    let span = tracing::info_span!(
        "smtp.session",
        client.address = %peer.ip(),
        client.port = peer.port(),
        listener = kind.name(),
        helo = field::Empty,
        tls = field::Empty,
    );
    let signals = Signals { draining, hard };
    async move {
        tracing::debug!("connection accepted");
        let mut config = ctx.session.clone();
        match kind {
            ListenerKind::Smtp => config.auth = ctx.smtp_auth,
            // Message submission (RFC 6409 §4.1, RFC 8314): AUTH before MAIL;
            // on 587 STARTTLS first unless plaintext AUTH is allowed.
            ListenerKind::Submission => {
                config.auth = true;
                config.require_auth = true;
                config.require_tls = !ctx.auth_plaintext;
            }
            ListenerKind::Submissions => {
                config.auth = true;
                config.require_auth = true;
            }
        }
        let result = match kind {
            ListenerKind::Submissions => {
                let Some(mut tls) = handshake(&ctx, tcp).await else {
                    return;
                };
                let info = tls_info(&tls);
                Span::current().record("tls", true);
                let mut session = Session::new(config, true);
                drive(
                    &mut session,
                    &mut tls,
                    &ctx,
                    peer,
                    info.as_deref(),
                    &signals,
                    kind,
                )
                .await
            }
            ListenerKind::Smtp | ListenerKind::Submission => {
                config.starttls = true;
                let mut session = Session::new(config, false);
                match drive(&mut session, &mut tcp, &ctx, peer, None, &signals, kind).await {
                    Ok(Next::StartTls) => {
                        let Some(mut tls) = handshake(&ctx, tcp).await else {
                            return;
                        };
                        let info = tls_info(&tls);
                        Span::current().record("tls", true);
                        session.tls_established();
                        drive(
                            &mut session,
                            &mut tls,
                            &ctx,
                            peer,
                            info.as_deref(),
                            &signals,
                            kind,
                        )
                        .await
                    }
                    other => other,
                }
            }
        };
        drop(slot);
        match result {
            Ok(_) => tracing::debug!("connection closed"),
            Err(e) => tracing::debug!(error = %e, "connection ended"),
        }
    }
    .instrument(span)
    .await
}

/// `TLSv1.3 TLS13_AES_256_GCM_SHA384`, for the `Received:` header.
fn tls_info(tls: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<String> {
    let conn = tls.get_ref().1;
    let version = match conn.protocol_version()? {
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
        other => format!("{other:?}"),
    };
    let suite = conn.negotiated_cipher_suite()?.suite();
    let suite = suite
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{suite:?}"));
    Some(format!("{version} {suite}"))
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

impl Ctx {
    /// Check credentials with the mailbox. Returns the decision and whether
    /// the client has used up its AUTH attempts (then it is disconnected).
    /// Failures are delayed, longer with each one (RFC 4954 §4 leaves the
    /// defence against guessing to the server).
    async fn authenticate(&self, ip: std::net::IpAddr, c: Credentials) -> (AuthDecision, bool) {
        if self.auth_failures.locked_out(ip) {
            metrics::counter!("tern_smtp_auth_total", "result" => "locked_out").increment(1);
            tracing::info!(client = %ip, "AUTH refused: too many failures");
            return (
                AuthDecision::Reject(Reply::new(
                    454,
                    codes::TEMP_SECURITY,
                    "Too many authentication failures, try again later",
                )),
                true,
            );
        }
        let mut accounts = self.accounts.clone();
        let request = tern_proto::AuthenticateRequest {
            username: c.username.clone(),
            password: c.password,
            // The mailbox throttles failed logins per client address too.
            client_address: ip.to_string(),
        };
        let result =
            tokio::time::timeout(Duration::from_secs(10), accounts.authenticate(request)).await;
        match result {
            Ok(Ok(resp)) if resp.get_ref().ok => {
                let user = resp.into_inner().address;
                let user = if user.is_empty() { c.username } else { user };
                metrics::counter!("tern_smtp_auth_total", "result" => "ok").increment(1);
                tracing::info!(user = %user, "authenticated");
                (AuthDecision::Accept { user }, false)
            }
            Ok(Ok(resp)) if resp.get_ref().throttled => {
                // The mailbox refused without checking the password: too
                // many failed logins for this account or client lately.
                metrics::counter!("tern_smtp_auth_total", "result" => "locked_out").increment(1);
                tracing::info!(user = %c.username, client = %ip, "AUTH refused by the mailbox: too many failures");
                let (delay, disconnect) = self.auth_failures.fail(ip);
                tokio::time::sleep(delay).await;
                (
                    AuthDecision::Reject(Reply::new(
                        454,
                        codes::TEMP_SECURITY,
                        "Too many authentication failures, try again later",
                    )),
                    disconnect,
                )
            }
            Ok(Ok(_)) => {
                metrics::counter!("tern_smtp_auth_total", "result" => "failed").increment(1);
                let (delay, disconnect) = self.auth_failures.fail(ip);
                tracing::info!(user = %c.username, client = %ip, "AUTH failed");
                tokio::time::sleep(delay).await;
                (
                    AuthDecision::Reject(Reply::new(
                        535,
                        codes::AUTH_INVALID,
                        "Authentication credentials invalid",
                    )),
                    disconnect,
                )
            }
            Ok(Err(status)) => {
                metrics::counter!("tern_smtp_auth_total", "result" => "error").increment(1);
                tracing::warn!(error = %status, "mailbox Authenticate failed");
                (auth_unavailable(), false)
            }
            Err(_) => {
                metrics::counter!("tern_smtp_auth_total", "result" => "error").increment(1);
                tracing::warn!("mailbox Authenticate timed out");
                (auth_unavailable(), false)
            }
        }
    }
}

/// RFC 4954 §6: 454 4.7.0 Temporary authentication failure.
fn auth_unavailable() -> AuthDecision {
    AuthDecision::Reject(Reply::new(
        454,
        codes::TEMP_SECURITY,
        "Temporary authentication failure",
    ))
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
    tls: Option<&str>,
    signals: &Signals,
    kind: ListenerKind,
) -> std::io::Result<Next>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hostname = ctx.common.hostname.clone();
    let mut out = Vec::new();
    // Small until a read fills it: 10,000 idle sessions must stay cheap.
    let mut buf = vec![0u8; READ_SMALL];
    // RFC 5321 §4.5.3.2: each command, and each body, has its own deadline;
    // it is not extended by partial input, so a client trickling one byte a
    // second is cut off like a silent one.
    let mut unit = (session.progress(), session.reading_body());
    let mut deadline = tokio::time::Instant::now() + ctx.command_timeout;
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
                let now_unit = (session.progress(), session.reading_body());
                if now_unit != unit {
                    unit = now_unit;
                    let t = if unit.1 {
                        ctx.data_timeout
                    } else {
                        ctx.command_timeout
                    };
                    deadline = tokio::time::Instant::now() + t;
                }
                let idle = session.is_idle();
                let read = tokio::select! {
                    biased;
                    _ = signals.hard.wait() => None,
                    _ = signals.draining.wait(), if idle => None,
                    r = tokio::time::timeout_at(deadline, stream.read(&mut buf)) => Some(r),
                };
                match read {
                    None => session.close_with(shutting_down(&hostname)),
                    Some(Err(_)) => {
                        let phase = if unit.1 { "data" } else { "command" };
                        metrics::counter!("tern_smtp_timeouts_total", "phase" => phase)
                            .increment(1);
                        tracing::debug!(phase, "client timed out");
                        session.close_with(Reply::new(
                            421,
                            codes::TIMEOUT,
                            format!("{hostname} Timeout, closing connection"),
                        ))
                    }
                    Some(Ok(Ok(0))) => return Ok(Next::Closed),
                    Some(Ok(Ok(n))) => {
                        session.feed(&buf[..n]);
                        if n == buf.len() && buf.len() < READ_CHUNK {
                            buf.resize(READ_CHUNK, 0);
                        }
                    }
                    Some(Ok(Err(e))) => return Err(e),
                }
            }
            Action::CheckRecipient(rcpt) => {
                let span = txn.clone().unwrap_or_else(Span::current);
                let decision = ctx
                    .check_recipient(peer.ip(), session.auth_user().is_some(), &rcpt)
                    .instrument(span)
                    .await;
                session.recipient_checked(decision);
            }
            Action::Deliver(message) => {
                let span = txn.clone().unwrap_or_else(Span::current);
                let outcome = ctx
                    .accept_message(message, peer.ip(), tls, kind == ListenerKind::Smtp)
                    .instrument(span)
                    .await;
                session.message_stored(outcome);
            }
            Action::Authenticate(credentials) => {
                let (decision, disconnect) = ctx.authenticate(peer.ip(), credentials).await;
                session.auth_checked(decision);
                if disconnect {
                    session.close_with(Reply::new(
                        421,
                        codes::TEMP_SECURITY,
                        format!("{hostname} Too many authentication failures, closing connection"),
                    ));
                }
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
