//! The mailbox service: accounts (the `tern.v1.Accounts` gRPC API), message
//! storage in SQLite or PostgreSQL, local delivery of `tern.jobs.local` jobs,
//! and mail access over IMAP and POP3 (cleartext and implicit TLS).
//!
//! See `services/mailbox/README.md` for what it owns, consumes and produces.

mod accounts;
mod cluster;
mod deliver;
mod imap;
mod net;
mod notify;
mod password;
mod pop3;
mod store;
mod throttle;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tern_proto::accounts_server::AccountsServer;
use tern_runtime::admin::{self, Readiness};
use tern_runtime::bus::{self, BusError};
use tern_runtime::config::{self, CommonConfig, ConfigError, ConfigValue, Source, endpoints};
use tern_runtime::tls::{TlsConfig, TlsError};
use tern_runtime::{Shutdown, grpc, shutdown};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

pub use store::StoreError;

use accounts::AccountsService;
use net::{Protocol, SessionCtx};
use store::Store;

/// The mailbox's configuration keys.
pub mod keys {
    use std::net::SocketAddr;
    use std::time::Duration;

    use tern_runtime::config::Key;

    use super::PlaintextAuth;

    /// `TERN_IMAP_LISTEN`.
    pub const IMAP_LISTEN: Key<Option<SocketAddr>> = Key::new(
        "imap_listen",
        "127.0.0.1:1143",
        "IMAP (cleartext) listen address; empty disables",
    );
    /// `TERN_IMAPS_LISTEN`.
    pub const IMAPS_LISTEN: Key<Option<SocketAddr>> = Key::new(
        "imaps_listen",
        "127.0.0.1:1993",
        "IMAP over implicit TLS listen address; empty disables",
    );
    /// `TERN_POP3_LISTEN`.
    pub const POP3_LISTEN: Key<Option<SocketAddr>> = Key::new(
        "pop3_listen",
        "127.0.0.1:1110",
        "POP3 (cleartext) listen address; empty disables",
    );
    /// `TERN_POP3S_LISTEN`.
    pub const POP3S_LISTEN: Key<Option<SocketAddr>> = Key::new(
        "pop3s_listen",
        "127.0.0.1:1995",
        "POP3 over implicit TLS listen address; empty disables",
    );
    /// `TERN_DATABASE_URL`.
    pub const DATABASE_URL: Key<String> = Key::new(
        "database_url",
        "",
        "mailbox database: sqlite://PATH (default sqlite://<data_dir>/mailbox.db) or postgres://USER:PASS@HOST/DB",
    );
    /// `TERN_MAILBOX_MAX_MESSAGE_BYTES`.
    pub const MAX_MESSAGE_BYTES: Key<usize> = Key::new(
        "mailbox_max_message_bytes",
        "26214400",
        "largest message IMAP APPEND accepts, in octets (also bounds a session's buffered command)",
    );
    /// `TERN_MAILBOX_DEFAULT_QUOTA_BYTES`.
    pub const DEFAULT_QUOTA_BYTES: Key<u64> = Key::new(
        "mailbox_default_quota_bytes",
        "0",
        "storage quota of new accounts in octets; 0 means unlimited",
    );
    /// `TERN_LOGIN_MAX_FAILURES`.
    pub const LOGIN_MAX_FAILURES: Key<u32> = Key::new(
        "login_max_failures",
        "10",
        "failed logins per account or per client address within login_failure_window after which further attempts are refused unchecked; 0 disables",
    );
    /// `TERN_LOGIN_FAILURE_WINDOW`.
    pub const LOGIN_FAILURE_WINDOW: Key<Duration> = Key::new(
        "login_failure_window",
        "15m",
        "sliding window over which failed logins are counted (also how long a lock lasts)",
    );
    /// `TERN_LOGIN_FAILURE_DELAY`.
    pub const LOGIN_FAILURE_DELAY: Key<Duration> = Key::new(
        "login_failure_delay",
        "1s",
        "IMAP and POP3 answer a failed or refused login after this delay",
    );
    /// `TERN_POP3_LOCK_TTL`.
    pub const POP3_LOCK_TTL: Key<Duration> = Key::new(
        "pop3_lock_ttl",
        "30s",
        "how long a POP3 maildrop lock outlives a replica that stopped refreshing it (crashed or cut off from NATS); at least 3s",
    );
    /// `TERN_RECIPIENT_DELIMITER`.
    pub const RECIPIENT_DELIMITER: Key<String> = Key::new(
        "recipient_delimiter",
        "+",
        "characters that start an address extension: user+tag@example.com is delivered to user@example.com when no account or alias has the full address; empty turns this off",
    );
    /// `TERN_ALLOW_PLAINTEXT_AUTH`.
    pub const ALLOW_PLAINTEXT_AUTH: Key<PlaintextAuth> = Key::new(
        "allow_plaintext_auth",
        "loopback",
        "password logins (IMAP LOGIN, AUTHENTICATE PLAIN, POP3 USER/PASS, AUTH PLAIN) without TLS: true, false, or loopback (only from 127.0.0.0/8 and ::1); after STARTTLS/STLS and on the TLS ports they are always allowed",
    );
}

/// Where password logins are allowed on a connection without TLS
/// (`TERN_ALLOW_PLAINTEXT_AUTH`). RFC 9051 §11.1 and RFC 2595 §2.1 ask
/// that passwords not cross the network in the clear; like Dovecot's
/// default, connections from the host itself count as safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaintextAuth {
    /// Never without TLS.
    Never,
    /// Only from loopback addresses (127.0.0.0/8, ::1, and IPv4-mapped
    /// 127.x). Behind a proxy or service-mesh sidecar that connects from
    /// loopback this lets every client through; use `false` there.
    Loopback,
    /// Always (for trusted networks only).
    Always,
}

impl PlaintextAuth {
    /// Whether a client at `peer` may log in with a password without TLS.
    pub fn allows(self, peer: IpAddr) -> bool {
        match self {
            PlaintextAuth::Never => false,
            PlaintextAuth::Loopback => peer.to_canonical().is_loopback(),
            PlaintextAuth::Always => true,
        }
    }
}

impl ConfigValue for PlaintextAuth {
    const EXPECTED: &'static str = "true, false or loopback";
    fn parse_value(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "loopback" => Some(PlaintextAuth::Loopback),
            other => bool::parse_value(other).map(|allow| {
                if allow {
                    PlaintextAuth::Always
                } else {
                    PlaintextAuth::Never
                }
            }),
        }
    }
}

/// Everything the mailbox service is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared settings (data dir, NATS, hostname, local domains, shutdown grace).
    pub common: CommonConfig,
    /// IMAP cleartext listener (`None` disables it).
    pub imap_listen: Option<SocketAddr>,
    /// IMAP implicit-TLS listener (`None` disables it).
    pub imaps_listen: Option<SocketAddr>,
    /// POP3 cleartext listener (`None` disables it).
    pub pop3_listen: Option<SocketAddr>,
    /// POP3 implicit-TLS listener (`None` disables it).
    pub pop3s_listen: Option<SocketAddr>,
    /// gRPC (Accounts + health) listener.
    pub grpc_listen: SocketAddr,
    /// Admin HTTP (`/healthz`, `/readyz`, `/metrics`) listener.
    pub admin_listen: SocketAddr,
    /// `sqlite://PATH` or `postgres://...`.
    pub database_url: String,
    /// Where password logins are allowed without TLS (default: from
    /// loopback only; elsewhere clients need STARTTLS / STLS or the TLS
    /// ports first).
    pub allow_plaintext_auth: PlaintextAuth,
    /// Certificate for the TLS listeners and STARTTLS / STLS.
    pub tls: TlsConfig,
    /// Largest message APPEND accepts.
    pub max_message_bytes: usize,
    /// Quota of new accounts in octets (0: unlimited).
    pub default_quota_bytes: u64,
    /// Failed logins per account or client address within
    /// `login_failure_window` before further attempts are refused (0: never).
    pub login_max_failures: u32,
    /// The sliding window failed logins are counted over.
    pub login_failure_window: Duration,
    /// Delay before IMAP and POP3 answer a failed or refused login.
    pub login_failure_delay: Duration,
    /// Time to live of a POP3 maildrop lock in the shared bucket; its
    /// holder refreshes it every third of this.
    pub pop3_lock_ttl: Duration,
    /// Characters that start an address extension (`user+tag@...`);
    /// empty: no extensions.
    pub recipient_delimiter: String,
}

/// The shortest `pop3_lock_ttl` (the bucket counts TTLs in whole seconds,
/// and a lock is refreshed every third of its TTL).
const MIN_POP3_LOCK_TTL: Duration = Duration::from_secs(3);

/// Percent-encode the characters sqlx would read as URL syntax in a path.
fn sqlite_url(path: &std::path::Path) -> String {
    let p = path
        .display()
        .to_string()
        .replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23");
    format!("sqlite://{p}")
}

impl Config {
    /// Read every key of this service.
    pub fn from_source(src: &Source) -> Result<Config, ConfigError> {
        let common = CommonConfig::from_source(src)?;
        let default_db = sqlite_url(&common.data_dir.join("mailbox.db"));
        let database_url = src.get_or(&keys::DATABASE_URL, &default_db)?;
        let supported = ["sqlite:", "postgres://", "postgresql://"];
        if !supported.iter().any(|p| database_url.starts_with(p)) {
            return Err(ConfigError::Invalid {
                key: config::env_name(keys::DATABASE_URL.name),
                value: database_url,
                expected: "sqlite://PATH or postgres://USER:PASS@HOST/DB",
            });
        }
        let pop3_lock_ttl = src.get(&keys::POP3_LOCK_TTL)?;
        if pop3_lock_ttl < MIN_POP3_LOCK_TTL {
            return Err(ConfigError::Invalid {
                key: config::env_name(keys::POP3_LOCK_TTL.name),
                value: format!("{pop3_lock_ttl:?}"),
                expected: "a duration of at least 3s",
            });
        }
        let recipient_delimiter = src.get(&keys::RECIPIENT_DELIMITER)?;
        if !recipient_delimiter
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '@' && c != '"')
        {
            return Err(ConfigError::Invalid {
                key: config::env_name(keys::RECIPIENT_DELIMITER.name),
                value: recipient_delimiter,
                expected: "printable ASCII characters other than @ and \" (or empty)",
            });
        }
        Ok(Config {
            imap_listen: src.get(&keys::IMAP_LISTEN)?,
            imaps_listen: src.get(&keys::IMAPS_LISTEN)?,
            pop3_listen: src.get(&keys::POP3_LISTEN)?,
            pop3s_listen: src.get(&keys::POP3S_LISTEN)?,
            grpc_listen: src.get(&endpoints::MAILBOX_GRPC)?,
            admin_listen: src.get(&endpoints::MAILBOX_ADMIN)?,
            database_url,
            allow_plaintext_auth: src.get(&keys::ALLOW_PLAINTEXT_AUTH)?,
            max_message_bytes: src.get(&keys::MAX_MESSAGE_BYTES)?,
            default_quota_bytes: src.get(&keys::DEFAULT_QUOTA_BYTES)?,
            login_max_failures: src.get(&keys::LOGIN_MAX_FAILURES)?,
            login_failure_window: src.get(&keys::LOGIN_FAILURE_WINDOW)?,
            login_failure_delay: src.get(&keys::LOGIN_FAILURE_DELAY)?,
            pop3_lock_ttl,
            recipient_delimiter,
            tls: TlsConfig::from_source(src)?,
            common,
        })
    }
}

/// Errors starting or running the mailbox.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("bind {what} on {addr}: {source}")]
    Bind {
        /// Which listener (`imap`, `grpc`, ...).
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The TLS certificate could not be loaded or generated.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// NATS could not be reached or set up.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The admin HTTP server failed.
    #[error("admin server: {0}")]
    Admin(std::io::Error),
}

/// The mailbox with every listener bound, ready to [`run`](Bound::run).
pub struct Bound {
    config: Config,
    imap: Option<TcpListener>,
    imaps: Option<TcpListener>,
    pop3: Option<TcpListener>,
    pop3s: Option<TcpListener>,
    grpc: TcpListener,
    admin: TcpListener,
    tls: Option<TlsAcceptor>,
}

async fn listen(what: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { what, addr, source })
}

async fn listen_opt(
    what: &'static str,
    addr: Option<SocketAddr>,
) -> Result<Option<TcpListener>, Error> {
    match addr {
        Some(a) => Ok(Some(listen(what, a).await?)),
        None => Ok(None),
    }
}

fn describe_metrics() {
    metrics::describe_counter!(
        "tern_mailbox_sessions_total",
        "IMAP and POP3 connections accepted, by protocol (imap, imaps, pop3, pop3s)"
    );
    metrics::describe_counter!(
        "tern_mailbox_deliveries_total",
        "local deliveries per recipient, by outcome (delivered, deferred, bounced)"
    );
    metrics::describe_counter!(
        "tern_mailbox_logins_total",
        "login attempts by protocol (imap, pop3, grpc) and result (ok, failed, throttled, error)"
    );
    metrics::describe_counter!(
        "tern_mailbox_kv_fallbacks_total",
        "operations on the shared NATS KV state that found NATS unreachable or slow and used this replica's own state instead, by what (login_throttle, pop3_lock)"
    );
    metrics::describe_counter!(
        "tern_mailbox_over_quota_total",
        "local deliveries deferred because the account is over its quota"
    );
}

/// Bind every listener (port 0 picks a free port) and load TLS material.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    config.common.require_nats_url()?;
    admin::metrics_handle();
    describe_metrics();
    // Every protocol listener uses TLS: implicit on imaps/pop3s, STARTTLS /
    // STLS on the cleartext ports.
    let any = [
        config.imap_listen,
        config.imaps_listen,
        config.pop3_listen,
        config.pop3s_listen,
    ]
    .iter()
    .any(Option::is_some);
    let tls = if any {
        let sc = config
            .tls
            .server_config(&config.common.data_dir, &config.common.hostname)?;
        Some(TlsAcceptor::from(sc))
    } else {
        None
    };
    Ok(Bound {
        imap: listen_opt("imap", config.imap_listen).await?,
        imaps: listen_opt("imaps", config.imaps_listen).await?,
        pop3: listen_opt("pop3", config.pop3_listen).await?,
        pop3s: listen_opt("pop3s", config.pop3s_listen).await?,
        grpc: listen("mailbox grpc", config.grpc_listen).await?,
        admin: listen("mailbox admin", config.admin_listen).await?,
        tls,
        config,
    })
}

/// Open the database, retrying a PostgreSQL server that is not up yet.
/// `None` when shutdown began first.
async fn open_store(url: &str, shutdown: &Shutdown) -> Result<Option<Store>, Error> {
    let retry = !url.starts_with("sqlite:");
    let mut delay = Duration::from_millis(200);
    loop {
        match Store::open(url).await {
            Ok(s) => return Ok(Some(s)),
            Err(StoreError::Db(e)) if retry && !shutdown.is_triggered() => {
                tracing::warn!(error = %e, "database not reachable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return Ok(None),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

impl Bound {
    /// The bound addresses: `imap`, `imaps`, `pop3`, `pop3s` (those
    /// enabled), `grpc` and `admin`.
    pub fn addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut out = Vec::new();
        for (name, l) in [
            ("imap", &self.imap),
            ("imaps", &self.imaps),
            ("pop3", &self.pop3),
            ("pop3s", &self.pop3s),
        ] {
            if let Some(a) = l.as_ref().and_then(|l| l.local_addr().ok()) {
                out.push((name, a));
            }
        }
        for (name, l) in [("mailbox grpc", &self.grpc), ("mailbox admin", &self.admin)] {
            if let Ok(a) = l.local_addr() {
                out.push((name, a));
            }
        }
        out
    }

    /// Serve until `shutdown`, then stop accepting, drain in-flight
    /// sessions and deliveries within `shutdown_grace`, and return.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        let ready = Readiness::default();
        let admin_stop = Shutdown::new();
        let admin_task = tokio::spawn(admin::serve(
            self.admin,
            ready.clone(),
            shutdown.clone(),
            admin_stop.clone(),
        ));
        let served = serve(
            self.config,
            Listeners {
                imap: self.imap,
                imaps: self.imaps,
                pop3: self.pop3,
                pop3s: self.pop3s,
                grpc: self.grpc,
                tls: self.tls,
            },
            ready,
            shutdown,
        )
        .await;
        admin_stop.trigger();
        let admin_result = admin_task.await;
        served?;
        match admin_result {
            Ok(Err(e)) => Err(Error::Admin(e)),
            _ => Ok(()),
        }
    }
}

struct Listeners {
    imap: Option<TcpListener>,
    imaps: Option<TcpListener>,
    pop3: Option<TcpListener>,
    pop3s: Option<TcpListener>,
    grpc: TcpListener,
    tls: Option<TlsAcceptor>,
}

async fn serve(
    config: Config,
    l: Listeners,
    ready: Readiness,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let nats_url = config.common.require_nats_url()?.to_string();
    let Some(store) = open_store(&config.database_url, &shutdown).await? else {
        return Ok(());
    };
    let store = Arc::new(store);
    tracing::info!(backend = store.backend(), "database ready");

    let (reporter, health) = grpc::health();
    reporter
        .set_serving::<AccountsServer<AccountsService>>()
        .await;
    // Connecting returns at once and retries in the background: logins do
    // not wait for NATS (see cluster.rs).
    let client = bus::connect(&nats_url, &config.common.nats_security, "tern-mailbox").await?;
    let replica = format!("{:016x}", rand::random::<u64>());
    let cluster = cluster::Cluster::new(client.clone(), replica.clone());
    let cluster_task = tokio::spawn(
        cluster
            .clone()
            .open(config.common.nats_replicas, shutdown.clone()),
    );
    // One set of failed-login counters for IMAP, POP3 and ingress's
    // Authenticate calls, shared by the replicas (see throttle.rs).
    let throttle = Arc::new(throttle::LoginThrottle::new(
        config.login_max_failures,
        config.login_failure_window,
        config.login_failure_delay,
        Some(cluster.clone()),
    ));
    let accounts = AccountsService::new(
        store.clone(),
        config.common.local_domains.clone(),
        config.default_quota_bytes,
        throttle.clone(),
        config.recipient_delimiter.clone(),
    );
    let routes = tonic::service::Routes::new(health).add_service(AccountsServer::new(accounts));
    let grpc_task = tokio::spawn(grpc::serve(l.grpc, routes, shutdown.clone()));

    let hub = Arc::new(notify::Hub::new());
    let notify_task = tokio::spawn(notify::run(
        store.clone(),
        hub.clone(),
        client.clone(),
        replica,
        shutdown.clone(),
    ));
    let tracker = TaskTracker::new();
    let ctx = Arc::new(SessionCtx {
        store: store.clone(),
        hostname: config.common.hostname.clone(),
        allow_plaintext_auth: config.allow_plaintext_auth,
        shutdown: shutdown.clone(),
        tls: l.tls.clone(),
        hub,
        max_message: config.max_message_bytes.clamp(1024, 1 << 30),
        throttle,
        pop3_locks: pop3::MaildropLocks::new(Some(cluster), config.pop3_lock_ttl),
    });
    let mut accept_tasks = Vec::new();
    for (listener, protocol, label, tls) in [
        (l.imap, Protocol::Imap, "imap", None),
        (l.imaps, Protocol::Imap, "imaps", l.tls.clone()),
        (l.pop3, Protocol::Pop3, "pop3", None),
        (l.pop3s, Protocol::Pop3, "pop3s", l.tls.clone()),
    ] {
        if let Some(listener) = listener {
            accept_tasks.push(tokio::spawn(net::accept_loop(
                listener,
                protocol,
                label,
                tls,
                ctx.clone(),
                tracker.clone(),
            )));
        }
    }

    let deliverer = Arc::new(deliver::Deliverer {
        js: jetstream::new(client.clone()),
        store: store.clone(),
        nats_replicas: config.common.nats_replicas,
        recipient_delimiter: config.recipient_delimiter.clone(),
    });
    let deliver_task = tokio::spawn(deliver::run(
        deliverer,
        ready,
        shutdown.clone(),
        config.common.shutdown_grace,
    ));

    shutdown.wait().await;
    tracing::info!("mailbox shutting down: draining sessions and deliveries");
    reporter
        .set_not_serving::<AccountsServer<AccountsService>>()
        .await;
    for t in accept_tasks {
        let _ = t.await;
    }
    let _ = notify_task.await;
    let grace = config.common.shutdown_grace;
    // Sessions and deliveries drain side by side (the deliveries in the
    // worker loop of `deliver::run`), each within the grace.
    shutdown::drain(&tracker, grace).await;
    let _ = deliver_task.await;
    // The ended POP3 sessions' locks, released in the bucket.
    ctx.pop3_locks.close(2 * cluster::KV_TIMEOUT).await;
    let _ = cluster_task.await;
    match tokio::time::timeout(grace, grpc_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server"),
        Err(_) => tracing::warn!("gRPC server did not stop within the grace period"),
        _ => {}
    }
    let _ = client.flush().await;
    store.close().await;
    tracing::info!("mailbox stopped");
    Ok(())
}

/// Bind and run until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pop3_lock_ttl_is_at_least_three_seconds() {
        let ttl = |v: &str| Config::from_source(&Source::from_pairs([("pop3_lock_ttl", v)]));
        assert_eq!(ttl("3s").unwrap().pop3_lock_ttl, Duration::from_secs(3));
        let err = ttl("2500ms").unwrap_err().to_string();
        assert!(err.contains("TERN_POP3_LOCK_TTL"), "{err}");
    }
    #[test]
    fn plaintext_logins_default_to_loopback_clients_only() {
        let policy = |pairs: &[(&str, &str)]| {
            Config::from_source(&Source::from_pairs(pairs.iter().copied()))
                .map(|c| c.allow_plaintext_auth)
        };
        assert_eq!(policy(&[]).unwrap(), PlaintextAuth::Loopback);
        for (v, want) in [
            ("loopback", PlaintextAuth::Loopback),
            ("true", PlaintextAuth::Always),
            ("false", PlaintextAuth::Never),
        ] {
            assert_eq!(policy(&[("allow_plaintext_auth", v)]).unwrap(), want);
        }
        let err = policy(&[("allow_plaintext_auth", "sometimes")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("TERN_ALLOW_PLAINTEXT_AUTH"), "{err}");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for local in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(PlaintextAuth::Loopback.allows(ip(local)), "{local}");
            assert!(!PlaintextAuth::Never.allows(ip(local)), "{local}");
        }
        for remote in ["192.0.2.7", "2001:db8::1", "::ffff:192.0.2.7", "0.0.0.0"] {
            assert!(!PlaintextAuth::Loopback.allows(ip(remote)), "{remote}");
            assert!(PlaintextAuth::Always.allows(ip(remote)), "{remote}");
        }
    }
}
