//! SMTP ingress: accepts mail over SMTP, checks recipients, stores bodies and
//! publishes each accepted message's envelope on the `tern.spool` JetStream
//! subject. A `250` is sent only after JetStream acknowledged the envelope.
//!
//! The protocol itself is the pure state machine in [`tern_smtp`]; this crate
//! does the I/O (plain TCP, STARTTLS, implicit TLS), the recipient policy
//! (local mailboxes via the mailbox service's `Accounts` gRPC API, relaying
//! only for trusted networks) and the spool publish. See `README.md`.

mod authcheck;
mod authdns;
mod authres;
mod bounces;
mod conn;
mod dkim;
mod inject;
mod limits;
mod received;
mod spool;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_runtime::Shutdown;
use tern_runtime::admin::{self, Readiness};
use tern_runtime::bus::{self, BusError};
use tern_runtime::config::{Cidr, CommonConfig, ConfigError, Key, List, Source, endpoints};
use tern_runtime::grpc::{self, GrpcError};
use tern_runtime::tls::{TlsConfig, TlsError};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

pub use authcheck::{Action, InboundPolicy};
pub use dkim::{DkimConfig, OnFailure, keys as dkim_keys};
/// The injection API's JSON request parser (pure), public for the fuzz
/// targets in `fuzz/`.
pub use inject::request as inject_request;
pub use inject::{ApiConfig, keys as api_keys};
pub use received::received_header;

/// The configuration keys only ingress reads.
pub mod keys {
    use super::*;

    /// `TERN_SMTP_LISTEN`.
    pub const SMTP_LISTEN: Key<SocketAddr> = Key::new(
        "smtp_listen",
        "127.0.0.1:2525",
        "SMTP (MX) listener, with STARTTLS",
    );
    /// `TERN_SUBMISSION_LISTEN`.
    pub const SUBMISSION_LISTEN: Key<Option<SocketAddr>> = Key::new(
        "submission_listen",
        "127.0.0.1:2587",
        "message submission listener (RFC 6409), with STARTTLS; empty disables",
    );
    /// `TERN_SUBMISSIONS_LISTEN`.
    pub const SUBMISSIONS_LISTEN: Key<Option<SocketAddr>> = Key::new(
        "submissions_listen",
        "127.0.0.1:2465",
        "message submission over implicit TLS (RFC 8314); empty disables",
    );
    /// `TERN_TRUSTED_NETWORKS`.
    pub const TRUSTED_NETWORKS: Key<List<Cidr>> = Key::new(
        "trusted_networks",
        "",
        "client networks allowed to relay to non-local domains, e.g. 10.0.0.0/8,::1",
    );
    /// `TERN_MAX_MESSAGE_SIZE`.
    pub const MAX_MESSAGE_SIZE: Key<usize> = Key::new(
        "max_message_size",
        "26214400",
        "largest accepted message body in octets (advertised as SIZE)",
    );
    /// `TERN_MAX_RECIPIENTS`.
    pub const MAX_RECIPIENTS: Key<usize> = Key::new(
        "max_recipients",
        "1000",
        "most recipients in one SMTP transaction",
    );
    /// `TERN_SMTP_PROXY_PROTOCOL`.
    pub const SMTP_PROXY_PROTOCOL: Key<bool> = Key::new(
        "smtp_proxy_protocol",
        "false",
        "expect a PROXY protocol v1/v2 header on the smtp listener",
    );
    /// `TERN_SUBMISSION_PROXY_PROTOCOL`.
    pub const SUBMISSION_PROXY_PROTOCOL: Key<bool> = Key::new(
        "submission_proxy_protocol",
        "false",
        "expect a PROXY protocol v1/v2 header on the submission listener",
    );
    /// `TERN_SUBMISSIONS_PROXY_PROTOCOL`.
    pub const SUBMISSIONS_PROXY_PROTOCOL: Key<bool> = Key::new(
        "submissions_proxy_protocol",
        "false",
        "expect a PROXY protocol v1/v2 header on the submissions listener",
    );
    /// `TERN_SMTP_AUTH`.
    pub const SMTP_AUTH: Key<bool> = Key::new(
        "smtp_auth",
        "false",
        "also offer AUTH on the smtp (MX) listener (after STARTTLS)",
    );
    /// `TERN_AUTH_PLAINTEXT`.
    pub const AUTH_PLAINTEXT: Key<bool> = Key::new(
        "auth_plaintext",
        "false",
        "allow AUTH PLAIN/LOGIN without TLS (and submission without STARTTLS)",
    );
    /// `TERN_SMTP_REQUIRETLS`.
    pub const SMTP_REQUIRETLS: Key<bool> = Key::new(
        "smtp_requiretls",
        "true",
        "offer REQUIRETLS (RFC 8689) after STARTTLS; off: not advertised, and MAIL with it gets 555 5.5.4",
    );
    /// `TERN_SENDER_LOGIN_MATCH`.
    pub const SENDER_LOGIN_MATCH: Key<bool> = Key::new(
        "sender_login_match",
        "true",
        "authenticated clients may only use their own address (or <>) as MAIL FROM",
    );
    /// `TERN_MAX_ERRORS`.
    pub const MAX_ERRORS: Key<usize> = Key::new(
        "max_errors",
        "20",
        "protocol errors per session before 421 and disconnect",
    );
    /// `TERN_MAX_COMMAND_LINE`.
    pub const MAX_COMMAND_LINE: Key<usize> = Key::new(
        "max_command_line",
        "4096",
        "longest command line in octets with CRLF (RFC 5321 §4.5.3.1.4; at least 512)",
    );
    /// `TERN_MAX_LINE_LENGTH`.
    pub const MAX_LINE_LENGTH: Key<usize> = Key::new(
        "max_line_length",
        "65536",
        "longest message text line in octets with CRLF (RFC 5321 §4.5.3.1.6; at least 1000)",
    );
    /// `TERN_COMMAND_TIMEOUT`.
    pub const COMMAND_TIMEOUT: Key<Duration> = Key::new(
        "command_timeout",
        "5m",
        "time a client has to send each complete command (RFC 5321 §4.5.3.2.7)",
    );
    /// `TERN_DATA_TIMEOUT`.
    pub const DATA_TIMEOUT: Key<Duration> = Key::new(
        "data_timeout",
        "10m",
        "time a client has to send a whole DATA body or BDAT chunk",
    );
    /// `TERN_MAX_CONNECTIONS`.
    pub const MAX_CONNECTIONS: Key<usize> = Key::new(
        "max_connections",
        "20000",
        "concurrent SMTP connections in total (more get 421 4.7.0)",
    );
    /// `TERN_MAX_CONNECTIONS_PER_IP`.
    pub const MAX_CONNECTIONS_PER_IP: Key<usize> = Key::new(
        "max_connections_per_ip",
        "100",
        "concurrent SMTP connections from one client address (more get 421 4.7.0)",
    );
    /// `TERN_AUTH_MAX_FAILURES`.
    pub const AUTH_MAX_FAILURES: Key<usize> = Key::new(
        "auth_max_failures",
        "5",
        "failed AUTH attempts per client address within auth_failure_window before it is disconnected and refused",
    );
    /// `TERN_AUTH_FAILURE_DELAY`.
    pub const AUTH_FAILURE_DELAY: Key<Duration> = Key::new(
        "auth_failure_delay",
        "1s",
        "delay before a failed AUTH reply, times the client's failures so far",
    );
    /// `TERN_AUTH_FAILURE_WINDOW`.
    pub const AUTH_FAILURE_WINDOW: Key<Duration> = Key::new(
        "auth_failure_window",
        "15m",
        "how long AUTH failures count against a client address",
    );
    /// `TERN_INBOUND_CHECKS`.
    pub const INBOUND_CHECKS: Key<bool> = Key::new(
        "inbound_checks",
        "true",
        "check SPF, DKIM, ARC and DMARC of mail on the smtp (MX) listener and add Authentication-Results",
    );
    /// `TERN_INBOUND_DMARC_REJECT`.
    pub const INBOUND_DMARC_REJECT: Key<crate::Action> = Key::new(
        "inbound_dmarc_reject",
        "reject",
        "DMARC failure under p=reject: reject (550 5.7.1), junk or none",
    );
    /// `TERN_INBOUND_DMARC_QUARANTINE`.
    pub const INBOUND_DMARC_QUARANTINE: Key<crate::Action> = Key::new(
        "inbound_dmarc_quarantine",
        "junk",
        "DMARC failure under p=quarantine: junk (the \\Junk mailbox), reject or none",
    );
    /// `TERN_INBOUND_SPF_FAIL`.
    pub const INBOUND_SPF_FAIL: Key<crate::Action> = Key::new(
        "inbound_spf_fail",
        "none",
        "SPF fail of MAIL FROM alone (no DMARC verdict): none (header only), junk or reject",
    );
    /// `TERN_TLS_RELOAD_INTERVAL`.
    pub const TLS_RELOAD_INTERVAL: Key<Duration> = Key::new(
        "tls_reload_interval",
        "10s",
        "how often the TLS certificate and key files are checked for changes",
    );
}

/// Everything ingress is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Settings every service shares (host name, local domains, NATS, grace).
    pub common: CommonConfig,
    /// TLS certificate for STARTTLS and implicit TLS.
    pub tls: TlsConfig,
    /// SMTP (MX) listener.
    pub smtp_listen: SocketAddr,
    /// Submission listener (port 587 style), if enabled.
    pub submission_listen: Option<SocketAddr>,
    /// Implicit-TLS submission listener (port 465 style), if enabled.
    pub submissions_listen: Option<SocketAddr>,
    /// gRPC listener (health).
    pub grpc_listen: SocketAddr,
    /// Admin HTTP listener (`/healthz`, `/readyz`, `/metrics`).
    pub admin_listen: SocketAddr,
    /// The mailbox service's gRPC URL (recipient checks).
    pub mailbox_url: String,
    /// The resolver service's gRPC URL (DNS of the inbound checks).
    pub resolver_url: String,
    /// SPF/DKIM/ARC/DMARC checks on the MX listener and what failures do.
    pub inbound: InboundPolicy,
    /// Client networks that may relay to non-local domains.
    pub trusted_networks: Vec<Cidr>,
    /// Largest accepted message body, in octets.
    pub max_message_size: usize,
    /// Most recipients per transaction.
    pub max_recipients: usize,
    /// PROXY protocol expected on `smtp`, `submission`, `submissions`.
    pub proxy_protocol: [bool; 3],
    /// Offer AUTH on the MX listener too.
    pub smtp_auth: bool,
    /// Allow AUTH (and submission) without TLS.
    pub auth_plaintext: bool,
    /// Authenticated senders may only use their own address.
    pub sender_login_match: bool,
    /// Offer REQUIRETLS (RFC 8689).
    pub requiretls: bool,
    /// Protocol errors per session before disconnect.
    pub max_errors: usize,
    /// Longest command line.
    pub max_command_line: usize,
    /// Longest message text line.
    pub max_line_length: usize,
    /// Time for each complete command.
    pub command_timeout: Duration,
    /// Time for each DATA body or BDAT chunk.
    pub data_timeout: Duration,
    /// Concurrent connections in total.
    pub max_connections: usize,
    /// Concurrent connections per client address.
    pub max_connections_per_ip: usize,
    /// AUTH failures per client address before disconnect.
    pub auth_max_failures: usize,
    /// Delay per AUTH failure.
    pub auth_failure_delay: Duration,
    /// How long AUTH failures count.
    pub auth_failure_window: Duration,
    /// How often the certificate files are checked.
    pub tls_reload_interval: Duration,
    /// Outbound DKIM signing.
    pub dkim: DkimConfig,
    /// The injection API (issue 16).
    pub api: ApiConfig,
    /// Bounce rules and the cluster secret, for mail to the bounce domain
    /// (`TERN_BOUNCE_RULES_FILE`, `TERN_SECRET_FILE`; issue 17).
    pub bounce: tern_bounce::BounceConfig,
}

impl Config {
    /// Read every ingress key from `src`.
    pub fn from_source(src: &Source) -> Result<Config, ConfigError> {
        Ok(Config {
            common: CommonConfig::from_source(src)?,
            tls: TlsConfig::from_source(src)?,
            smtp_listen: src.get(&keys::SMTP_LISTEN)?,
            submission_listen: src.get(&keys::SUBMISSION_LISTEN)?,
            submissions_listen: src.get(&keys::SUBMISSIONS_LISTEN)?,
            grpc_listen: src.get(&endpoints::INGRESS_GRPC)?,
            admin_listen: src.get(&endpoints::INGRESS_ADMIN)?,
            mailbox_url: endpoints::url(src, &endpoints::MAILBOX_URL, &endpoints::MAILBOX_GRPC)?,
            resolver_url: endpoints::url(src, &endpoints::RESOLVER_URL, &endpoints::RESOLVER_GRPC)?,
            inbound: InboundPolicy {
                enabled: src.get(&keys::INBOUND_CHECKS)?,
                dmarc_reject: src.get(&keys::INBOUND_DMARC_REJECT)?,
                dmarc_quarantine: src.get(&keys::INBOUND_DMARC_QUARANTINE)?,
                spf_fail: src.get(&keys::INBOUND_SPF_FAIL)?,
            },
            trusted_networks: src.get(&keys::TRUSTED_NETWORKS)?.0,
            max_message_size: src.get(&keys::MAX_MESSAGE_SIZE)?,
            max_recipients: src.get(&keys::MAX_RECIPIENTS)?,
            proxy_protocol: [
                src.get(&keys::SMTP_PROXY_PROTOCOL)?,
                src.get(&keys::SUBMISSION_PROXY_PROTOCOL)?,
                src.get(&keys::SUBMISSIONS_PROXY_PROTOCOL)?,
            ],
            smtp_auth: src.get(&keys::SMTP_AUTH)?,
            auth_plaintext: src.get(&keys::AUTH_PLAINTEXT)?,
            requiretls: src.get(&keys::SMTP_REQUIRETLS)?,
            sender_login_match: src.get(&keys::SENDER_LOGIN_MATCH)?,
            max_errors: src.get(&keys::MAX_ERRORS)?.max(1),
            // RFC 5321 §4.5.3.1.4 and §4.5.3.1.6: never below the minimums.
            max_command_line: src.get(&keys::MAX_COMMAND_LINE)?.max(512),
            max_line_length: src.get(&keys::MAX_LINE_LENGTH)?.max(1000),
            command_timeout: src.get(&keys::COMMAND_TIMEOUT)?,
            data_timeout: src.get(&keys::DATA_TIMEOUT)?,
            max_connections: src.get(&keys::MAX_CONNECTIONS)?.max(1),
            max_connections_per_ip: src.get(&keys::MAX_CONNECTIONS_PER_IP)?.max(1),
            auth_max_failures: src.get(&keys::AUTH_MAX_FAILURES)?.max(1),
            auth_failure_delay: src.get(&keys::AUTH_FAILURE_DELAY)?,
            auth_failure_window: src.get(&keys::AUTH_FAILURE_WINDOW)?,
            tls_reload_interval: src.get(&keys::TLS_RELOAD_INTERVAL)?,
            dkim: DkimConfig::from_source(src, &CommonConfig::from_source(src)?.data_dir)?,
            api: ApiConfig::from_source(src, &CommonConfig::from_source(src)?)?,
            bounce: tern_bounce::BounceConfig::from_source(src)?,
        })
    }
}

/// Errors starting or running ingress.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("bind {what} listener on {addr}: {source}")]
    Bind {
        /// Which listener (`smtp`, `grpc`, ...).
        what: &'static str,
        /// The address tried.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The TLS certificate could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// NATS could not be reached or set up.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The gRPC server failed, or the mailbox URL is malformed.
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    /// A DKIM key could not be loaded, or a configured domain has none.
    #[error(transparent)]
    Dkim(#[from] tern_dkim::DkimError),
    /// The admin HTTP server failed.
    #[error("admin HTTP server: {0}")]
    Admin(std::io::Error),
    /// The inbound checks could not be set up.
    #[error(transparent)]
    Checker(#[from] authcheck::CheckerError),
    /// A server task ended unexpectedly (panicked or was cancelled).
    #[error("{0} task ended unexpectedly: {1}")]
    Task(&'static str, String),
}

/// The kinds of SMTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenerKind {
    /// MX: STARTTLS offered.
    Smtp,
    /// Submission: STARTTLS offered.
    Submission,
    /// Submission over implicit TLS.
    Submissions,
}

impl ListenerKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ListenerKind::Smtp => "smtp",
            ListenerKind::Submission => "submission",
            ListenerKind::Submissions => "submissions",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            ListenerKind::Smtp => 0,
            ListenerKind::Submission => 1,
            ListenerKind::Submissions => 2,
        }
    }

    /// This listener expects a PROXY protocol header.
    pub(crate) fn proxy(self, config: &Config) -> bool {
        config.proxy_protocol[self.index()]
    }
}

/// Ingress with every listener bound, ready to [`Bound::run`].
pub struct Bound {
    config: Config,
    nats_url: String,
    smtp: Vec<(ListenerKind, TcpListener)>,
    grpc: TcpListener,
    admin: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    certs: Arc<tls::CertStore>,
    dkim: dkim::Dkim,
    api: Option<TcpListener>,
}

/// Listen backlog. A burst of connections beyond the backlog makes the
/// kernel drop handshakes (or answer with SYN cookies whose final ACK is
/// then dropped); since the SMTP server speaks first, such a client would
/// wait for a greeting that never comes. The kernel caps this at somaxconn.
const BACKLOG: u32 = 4096;

async fn bind_one(what: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    let bind = || {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    bind().map_err(|source| Error::Bind { what, addr, source })
}

/// Load TLS material and bind every listener (port 0 picks a free port).
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let nats_url = config.common.require_nats_url()?.to_string();
    let certs = tls::CertStore::new(
        &config.tls,
        &config.common.data_dir,
        &config.common.hostname,
    )?;
    let tls = certs.server_config()?;
    let dkim = config.dkim.open()?;
    let mut smtp = vec![(
        ListenerKind::Smtp,
        bind_one("smtp", config.smtp_listen).await?,
    )];
    if let Some(addr) = config.submission_listen {
        smtp.push((
            ListenerKind::Submission,
            bind_one("submission", addr).await?,
        ));
    }
    if let Some(addr) = config.submissions_listen {
        smtp.push((
            ListenerKind::Submissions,
            bind_one("submissions", addr).await?,
        ));
    }
    let grpc = bind_one("ingress grpc", config.grpc_listen).await?;
    let admin = bind_one("ingress admin", config.admin_listen).await?;
    let api = match config.api.listen {
        Some(addr) => Some(bind_one("api", addr).await?),
        None => None,
    };
    Ok(Bound {
        config,
        nats_url,
        smtp,
        grpc,
        admin,
        tls,
        certs,
        dkim,
        api,
    })
}

impl Bound {
    /// The bound addresses: `smtp`, `submission`, `submissions` (when
    /// enabled), `grpc` and `admin`.
    pub fn addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut out: Vec<(&'static str, SocketAddr)> = self
            .smtp
            .iter()
            .filter_map(|(kind, l)| l.local_addr().ok().map(|a| (kind.name(), a)))
            .collect();
        for (name, l) in [("ingress grpc", &self.grpc), ("ingress admin", &self.admin)]
            .into_iter()
            .chain(self.api.iter().map(|l| ("api", l)))
        {
            if let Ok(a) = l.local_addr() {
                out.push((name, a));
            }
        }
        out
    }

    /// Serve until `shutdown`, then stop accepting, let in-flight sessions
    /// finish within `shutdown_grace` (idle ones are told `421 4.3.2`), and
    /// return `Ok`.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        let Bound {
            config,
            nats_url,
            smtp,
            grpc,
            admin,
            tls,
            certs,
            dkim,
            api,
        } = self;
        // `draining` starts the drain (on shutdown or when a server task
        // fails); `stop` ends the admin and gRPC servers once drained; `hard`
        // cuts off sessions still running when the grace period is over.
        let draining = shutdown.child();
        let stop = Shutdown::new();
        let hard = Shutdown::new();

        tokio::spawn(certs.watch(config.tls_reload_interval, stop.clone()));
        tokio::spawn(dkim.clone().watch(stop.clone()));
        let ready = Readiness::default();
        let mut admin_task = tokio::spawn(admin::serve(
            admin,
            ready.clone(),
            draining.clone(),
            stop.clone(),
        ));
        let (reporter, health) = grpc::health();
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let inject_service = inject::InjectService::default();
        let routes = tonic::service::Routes::new(health)
            .add_service(inject_service.server(config.api.max_body));
        let mut grpc_task = tokio::spawn(grpc::serve(grpc, routes, stop.clone()));

        let client = bus::connect(&nats_url, &config.common.nats_security, "tern-ingress").await?;
        let js = async_nats::jetstream::new(client);
        let bounce_inbox = bounces::BounceInbox::start(&config, js.clone(), stop.clone());
        {
            let (js, draining, ready, reporter, inbox) = (
                js.clone(),
                draining.clone(),
                ready.clone(),
                reporter.clone(),
                bounce_inbox.clone(),
            );
            let replicas = config.common.nats_replicas;
            tokio::spawn(async move {
                let streams = bus::ensure_streams_until_ready(&js, replicas, &draining).await;
                // Mail to the bounce domain gets 451 until its lists are open.
                if let Some(inbox) = &inbox {
                    inbox.wait_ready(&draining).await;
                }
                if streams.is_ok() && !draining.is_triggered() {
                    ready.set(true);
                    reporter
                        .set_service_status("", tonic_health::ServingStatus::Serving)
                        .await;
                    tracing::info!("JetStream streams ready");
                }
            });
        }

        let accounts = tern_proto::accounts_client::AccountsClient::with_interceptor(
            grpc::channel(&config.mailbox_url)?,
            tern_runtime::telemetry::grpc_inject as conn::Interceptor,
        );
        let api_task = tokio::spawn(inject::start(
            config.api.clone(),
            config.common.clone(),
            api,
            inject_service,
            js.clone(),
            dkim.clone(),
            stop.clone(),
        ));
        let mut ctx = conn::Ctx::new(&config, js, accounts, tls, dkim);
        ctx.bounces = bounce_inbox;
        if config.inbound.enabled {
            let resolver = tern_proto::resolver_client::ResolverClient::with_interceptor(
                grpc::channel(&config.resolver_url)?,
                tern_runtime::telemetry::grpc_inject as conn::Interceptor,
            );
            let checker = authcheck::Checker::start(
                resolver,
                config.common.hostname.clone(),
                config.inbound.clone(),
            )
            .await?;
            ctx.inbound = Some(Arc::new(checker));
        }
        let ctx = Arc::new(ctx);
        let tracker = TaskTracker::new();
        let mut accept_tasks: Vec<JoinHandle<()>> = Vec::new();
        for (kind, listener) in smtp {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(listener = kind.name(), %addr, "accepting SMTP connections");
            }
            accept_tasks.push(tokio::spawn(conn::accept_loop(
                listener,
                kind,
                ctx.clone(),
                tracker.clone(),
                draining.clone(),
                hard.clone(),
            )));
        }

        let mut failure: Option<Error> = None;
        let (mut grpc_done, mut admin_done) = (false, false);
        tokio::select! {
            _ = draining.wait() => {}
            r = &mut grpc_task => {
                grpc_done = true;
                failure = Some(match r {
                    Ok(Ok(())) => Error::Task("gRPC server", "stopped".into()),
                    Ok(Err(e)) => Error::Grpc(e),
                    Err(e) => Error::Task("gRPC server", e.to_string()),
                });
            }
            r = &mut admin_task => {
                admin_done = true;
                failure = Some(match r {
                    Ok(Ok(())) => Error::Task("admin server", "stopped".into()),
                    Ok(Err(e)) => Error::Admin(e),
                    Err(e) => Error::Task("admin server", e.to_string()),
                });
            }
        }
        if let Some(e) = &failure {
            tracing::error!(error = %e, "server task failed; draining");
        }
        draining.trigger();
        ready.set(false);
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        for t in accept_tasks {
            let _ = t.await;
        }
        tracing::info!(
            in_flight = tracker.len(),
            "stopped accepting; draining SMTP sessions"
        );
        if !tern_runtime::shutdown::drain(&tracker, config.common.shutdown_grace).await {
            hard.trigger();
            // Sessions reply 421 and close as soon as they see `hard`.
            let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
        }
        stop.trigger();
        if let Ok(Err(e)) = api_task.await {
            tracing::warn!(error = %e, "injection API stopped with an error");
        }
        if !grpc_done {
            let _ = grpc_task.await;
        }
        if !admin_done {
            let _ = admin_task.await;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Bind and run until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}
