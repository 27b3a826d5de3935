//! The NATS JetStream bus: one place for every stream, subject, consumer and
//! bucket name, and idempotent creation of what each service needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ConfigError, Key, Source, env_name, keys};

/// Stream that carries accepted envelopes from ingress to queue.
pub const SPOOL_STREAM: &str = "TERN_SPOOL";
/// Subject ingress publishes envelopes on.
pub const SPOOL_SUBJECT: &str = "tern.spool";
/// Stream of jobs from queue to mailbox and delivery.
pub const JOBS_STREAM: &str = "TERN_JOBS";
/// Subject for local (mailbox) jobs.
pub const LOCAL_JOBS_SUBJECT: &str = "tern.jobs.local";
/// Filter for every remote job.
pub const REMOTE_JOBS_FILTER: &str = "tern.jobs.remote.>";
/// Filter for jobs waiting for their retry time. Each is a JetStream message
/// schedule (ADR-51, nats-server 2.12+) that the server republishes onto the
/// job's ready subject at its time, so a waiting job costs no worker anything.
pub const SCHEDULED_FILTER: &str = "tern.sched.>";
/// Filter for jobs of destinations on hold.
pub const HELD_FILTER: &str = "tern.held.>";
/// Filter for jobs set aside because their campaign is paused by the
/// complaint circuit breaker (crates/stats `pause`).
pub const PAUSED_FILTER: &str = "tern.paused.>";
/// Stream of lifecycle events (received, delivered, deferred, bounced, expired, ...).
pub const EVENTS_STREAM: &str = "TERN_EVENTS";
/// Filter for every event.
pub const EVENTS_FILTER: &str = "tern.events.>";

/// The subject of lifecycle events of `kind` (docs/EVENTS.md).
pub fn event_subject(kind: &str) -> String {
    format!("tern.events.{kind}")
}
/// Key-value bucket with the queue's job and message state.
pub const QUEUE_BUCKET: &str = "tern-queue";
/// Key-value bucket with the destinations on hold (read by queue and delivery).
pub const HOLDS_BUCKET: &str = "tern-holds";
/// Key-value bucket with the campaigns paused by the complaint circuit
/// breaker (written by the statistics aggregator and `tern campaign`, read
/// by delivery).
pub const PAUSES_BUCKET: &str = "tern-campaign-pauses";
/// Key-value bucket (file storage) of delivery's connection slots per
/// destination, shared by every delivery replica; entries expire, so a
/// crashed replica's slots free themselves.
pub const LIMITS_BUCKET: &str = "tern-delivery-limits";
/// Key-value bucket (file storage) of delivery's per-destination message
/// counters, one fixed window per site and period, shared by every delivery
/// replica; a site's key expires when unused.
pub const RATES_BUCKET: &str = "tern-delivery-rates";
/// Key-value bucket (file storage, per-entry TTLs) of recent failed logins
/// per account name and per client address, shared by every mailbox
/// replica; an entry expires one failure window after its last failure.
pub const LOGIN_FAILURES_BUCKET: &str = "tern-login-failures";
/// Key-value bucket (file storage, per-entry TTLs) of POP3 maildrop locks,
/// one key per locked account, shared by every mailbox replica; a lock its
/// holder stops refreshing (a crashed replica) expires.
pub const POP3_LOCKS_BUCKET: &str = "tern-pop3-locks";
/// How long events are kept.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);
/// Stream of attempt results back to queue.
pub const RESULTS_STREAM: &str = "TERN_RESULTS";
/// Filter for every result.
pub const RESULTS_FILTER: &str = "tern.results.>";
/// Object store bucket for bodies too large to travel inline.
pub const BODY_BUCKET: &str = "tern-bodies";
/// Durable consumer names.
pub mod consumers {
    /// Queue reading the spool.
    pub const QUEUE_SPOOL: &str = "queue-spool";
    /// Queue reading results.
    pub const QUEUE_RESULTS: &str = "queue-results";
    /// Mailbox reading local jobs.
    pub const MAILBOX: &str = "mailbox";
    /// Delivery reading remote jobs.
    pub const DELIVERY: &str = "delivery";
}

/// Subject of a remote job for `domain`.
pub fn remote_jobs_subject(domain: &str) -> String {
    format!("tern.jobs.remote.{domain}")
}

/// The ready subject of a job for `destination` ("local" or a domain).
pub fn ready_subject(destination: &str) -> String {
    if destination == LOCAL_DESTINATION {
        LOCAL_JOBS_SUBJECT.to_string()
    } else {
        remote_jobs_subject(destination)
    }
}

/// The destination name of mailbox jobs.
pub const LOCAL_DESTINATION: &str = "local";

/// The schedule subject of job `message_id` for `destination` (one schedule per job).
pub fn scheduled_subject(destination: &str, message_id: &str) -> String {
    format!("tern.sched.{destination}.{message_id}")
}

/// The subject jobs of a held `destination` wait on.
pub fn held_subject(destination: &str) -> String {
    format!("tern.held.{destination}")
}

/// `destination` made safe as a key-value key (`[-/_=.a-zA-Z0-9]`). Mail
/// domains never contain `_` (RFC 5321 §4.1.2), so the mapping is one-to-one
/// for domains; address literals map their brackets and colons to `_`.
pub fn kv_token(destination: &str) -> String {
    destination
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Subject of a result for `destination`.
pub fn results_subject(destination: &str) -> String {
    format!("tern.results.{destination}")
}

/// How long a spool message (and so an inline body) is kept at most.
pub const SPOOL_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);
/// How long the marker of a purged `tern-queue` key lives (then it is gone
/// too). A spool message redelivered after a queue crash (30 s ack wait, or
/// however long the queue was down, up to this) finds its jobs final by
/// their markers instead of routing them a second time.
pub const QUEUE_MARKER_TTL: Duration = Duration::from_secs(3600);

/// Window in which a re-published message id is dropped as a duplicate.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(120);

/// Errors talking to NATS.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Connecting failed.
    #[error("connect to NATS at {url}: {source}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Cause.
        source: async_nats::ConnectError,
    },
    /// A TLS or credentials file named by a config key is missing,
    /// unreadable or not what the key needs.
    #[error("config key {key}: {path}: {message}")]
    File {
        /// The key (`TERN_NATS_TLS_CA`, ...).
        key: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A stream, consumer or bucket could not be created.
    #[error("create {what}: {message}")]
    Setup {
        /// Which object.
        what: String,
        /// Cause.
        message: String,
    },
}

/// How Tern verifies NATS and proves who it is, beyond what
/// `TERN_NATS_URL` carries: the `nats_tls_*`, `nats_creds` and `nats_nkey`
/// keys. Only paths; [`connect`] reads and checks every file before it
/// connects, and async-nats reads the TLS files again on every
/// (re)connection, so renewed certificates are picked up without a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsSecurity {
    /// PEM CA certificates to trust instead of the system roots (`nats_tls_ca`).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate chain and key for mutual TLS (`nats_tls_cert`, `nats_tls_key`).
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// A `.creds` file: user JWT and nkey seed (`nats_creds`).
    pub creds: Option<PathBuf>,
    /// A file holding a user nkey seed (`nats_nkey`).
    pub nkey: Option<PathBuf>,
}

impl NatsSecurity {
    /// Read the keys: the client certificate and key come together, at most
    /// one of `nats_creds` and `nats_nkey` is set, and neither goes with
    /// credentials in `nats_url`.
    pub fn from_source(src: &Source, nats_url: Option<&str>) -> Result<Self, ConfigError> {
        let tls_ca = src.get(&keys::NATS_TLS_CA)?;
        let pair_missing = |key: &Key<Option<PathBuf>>, expected| ConfigError::Invalid {
            key: env_name(key.name),
            value: String::new(),
            expected,
        };
        let tls_client = match (
            src.get(&keys::NATS_TLS_CERT)?,
            src.get(&keys::NATS_TLS_KEY)?,
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(pair_missing(
                    &keys::NATS_TLS_KEY,
                    "a PEM key file path (TERN_NATS_TLS_CERT is set)",
                ));
            }
            (None, Some(_)) => {
                return Err(pair_missing(
                    &keys::NATS_TLS_CERT,
                    "a PEM certificate file path (TERN_NATS_TLS_KEY is set)",
                ));
            }
        };
        let creds = src.get(&keys::NATS_CREDS)?;
        let nkey = src.get(&keys::NATS_NKEY)?;
        let conflict = |key: &Key<Option<PathBuf>>, value: &Path, expected| ConfigError::Invalid {
            key: env_name(key.name),
            value: value.display().to_string(),
            expected,
        };
        if let (Some(_), Some(nkey)) = (&creds, &nkey) {
            return Err(conflict(
                &keys::NATS_NKEY,
                nkey,
                "to be empty when TERN_NATS_CREDS is set (one identity per connection)",
            ));
        }
        let url_auth = nats_url.is_some_and(|u| nats_servers(u).1.is_some());
        for (key, path) in [(&keys::NATS_CREDS, &creds), (&keys::NATS_NKEY, &nkey)] {
            if let (true, Some(path)) = (url_auth, path) {
                return Err(conflict(
                    key,
                    path,
                    "to be empty when TERN_NATS_URL carries a user, password or token",
                ));
            }
        }
        Ok(NatsSecurity {
            tls_ca,
            tls_client,
            creds,
            nkey,
        })
    }

    /// Is TLS configured (and so required)?
    pub fn tls(&self) -> bool {
        self.tls_ca.is_some() || self.tls_client.is_some()
    }

    /// Read and check every file, and add them to `options`: TLS required
    /// with the CA and client certificate, the creds file's JWT or the nkey
    /// seed. Errors name the key and the file.
    async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, BusError> {
        if let Some(ca) = &self.tls_ca {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(&keys::NATS_TLS_CA, ca)? {
                roots
                    .add(cert)
                    .map_err(|e| file_err(&keys::NATS_TLS_CA, ca, e))?;
            }
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.tls_client {
            let chain = read_certs(&keys::NATS_TLS_CERT, cert)?;
            let der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| file_err(&keys::NATS_TLS_KEY, key, e))?;
            let provider = rustls::crypto::ring::default_provider();
            rustls::sign::CertifiedKey::from_der(chain, der, &provider).map_err(|e| {
                file_err(
                    &keys::NATS_TLS_KEY,
                    key,
                    format!("does not go with TERN_NATS_TLS_CERT: {e}"),
                )
            })?;
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls() {
            options = options.require_tls(true);
        }
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| file_err(&keys::NATS_CREDS, creds, e))?;
        }
        if let Some(path) = &self.nkey {
            let text =
                std::fs::read_to_string(path).map_err(|e| file_err(&keys::NATS_NKEY, path, e))?;
            let seed = text.trim();
            match nkeys::KeyPair::from_seed(seed) {
                Ok(kp) if kp.key_pair_type() == nkeys::KeyPairType::User => {}
                _ => {
                    return Err(file_err(
                        &keys::NATS_NKEY,
                        path,
                        "expected a user nkey seed (SU...), as `nsc` or `nk -gen user` makes",
                    ));
                }
            }
            options = options.nkey(seed.to_string());
        }
        Ok(options)
    }
}

fn file_err(key: &Key<Option<PathBuf>>, path: &Path, e: impl std::fmt::Display) -> BusError {
    BusError::File {
        key: env_name(key.name),
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The certificates of a PEM file, at least one.
fn read_certs(
    key: &Key<Option<PathBuf>>,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, BusError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(key, path, e))?;
    if certs.is_empty() {
        return Err(file_err(key, path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

/// Connect, retrying in the background until the server is reachable, and
/// reconnecting forever after that. `url` may list several servers,
/// comma-separated (`TERN_NATS_URL`), e.g. the seeds of a cluster, and carry
/// credentials in its user-info part: `nats://user:password@host:4222` or
/// `nats://token@host:4222` (percent-encoded where needed); `security` adds
/// TLS and a creds file or nkey.
///
/// The files of `security` are read and checked first: a missing or bad one
/// fails here, naming its key. A server that cannot be reached does not,
/// but the first failed attempt of every outage is repeated once on its own
/// ([`connect_once`]) and its full cause logged as a warning (a TLS
/// handshake refused, an unknown CA, an authorization violation), and every
/// failed attempt counts in `tern_nats_connect_errors_total{client}`.
pub async fn connect(
    url: &str,
    security: &NatsSecurity,
    name: &str,
) -> Result<async_nats::Client, BusError> {
    let (servers, options) = options(url, security, name).await?;
    metrics::describe_counter!(
        "tern_nats_connect_errors_total",
        "failed NATS connection attempts (unreachable, TLS or credentials refused)"
    );
    let outage_reported = Arc::new(AtomicBool::new(false));
    let target = Arc::new((url.to_string(), security.clone(), name.to_string()));
    let options = options
        .retry_on_initial_connect()
        .event_callback(move |event| {
            let (url, security, name) = target.as_ref().clone();
            let outage_reported = outage_reported.clone();
            async move {
                match event {
                    async_nats::Event::Connected => outage_reported.store(false, Ordering::SeqCst),
                    async_nats::Event::ClientError(_) => {
                        metrics::counter!("tern_nats_connect_errors_total", "client" => name.clone())
                            .increment(1);
                        if !outage_reported.swap(true, Ordering::SeqCst) {
                            tokio::spawn(diagnose(url, security, name));
                        }
                    }
                    _ => {}
                }
            }
        });
    options.connect(servers).await.map_err(connect_err(url))
}

/// One connection attempt (to each server of `url` at most once), for a
/// caller that wants the cause of a failure rather than a client that
/// keeps retrying: `Err` says why the servers refused or could not be
/// reached. The client returned reconnects like [`connect`]'s.
pub async fn connect_once(
    url: &str,
    security: &NatsSecurity,
    name: &str,
) -> Result<async_nats::Client, BusError> {
    let (servers, options) = options(url, security, name).await?;
    options.connect(servers).await.map_err(connect_err(url))
}

fn connect_err(url: &str) -> impl FnOnce(async_nats::ConnectError) -> BusError + '_ {
    move |source| BusError::Connect {
        url: redact_nats_url(url),
        source,
    }
}

/// The servers of `url` and the options every connection shares.
async fn options<'u>(
    url: &'u str,
    security: &NatsSecurity,
    name: &str,
) -> Result<(Vec<&'u str>, async_nats::ConnectOptions), BusError> {
    let (servers, auth) = nats_servers(url);
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2));
    // async-nats parses the user-info of a server URL but does not send it.
    match auth {
        Some((user, Some(password))) => options = options.user_and_password(user, password),
        Some((token, None)) => options = options.token(token),
        None => {}
    }
    Ok((servers, security.apply(options).await?))
}

/// Log why connecting fails, from one attempt of its own.
async fn diagnose(url: String, security: NatsSecurity, name: String) {
    match connect_once(&url, &security, &name).await {
        Ok(client) => drop(client),
        Err(e) => {
            tracing::warn!(client = %name, error = %ErrorChain(&e), "cannot connect to NATS; retrying in the background")
        }
    }
}

/// An error with its sources, `a: b: c` (async-nats keeps the TLS cause
/// in the source of its I/O errors).
struct ErrorChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = self.0.to_string();
        let mut source = self.0.source();
        while let Some(e) = source {
            let s = e.to_string();
            if !text.contains(&s) {
                text = format!("{text}: {s}");
            }
            source = e.source();
        }
        f.write_str(&text)
    }
}

/// The servers of a `TERN_NATS_URL` value and the credentials in the first
/// user-info part found: `(user, Some(password))` or `(token, None)`.
fn nats_servers(url: &str) -> (Vec<&str>, Option<(String, Option<String>)>) {
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let auth = servers.iter().find_map(|s| {
        let (_, rest) = s.split_once("://")?;
        let (userinfo, _) = rest.split_once('@')?;
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(percent_decode(p))),
            None => (userinfo, None),
        };
        Some((percent_decode(user), password))
    });
    (servers, auth)
}

/// `url` with every password or token replaced by `***`, for messages and logs.
pub fn redact_nats_url(url: &str) -> String {
    url.split(',')
        .map(|s| match s.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                    None => format!("{scheme}://***@{host}"),
                },
                None => s.to_string(),
            },
            None => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn setup_err(what: &str) -> impl FnOnce(Box<dyn std::fmt::Display>) -> BusError + '_ {
    move |e| BusError::Setup {
        what: what.to_string(),
        message: e.to_string(),
    }
}

/// Create or update every stream and the body bucket with `replicas` copies
/// of each (1 on a single node, 3 in a production cluster). Idempotent; any
/// service may call it.
pub async fn ensure_streams(js: &jetstream::Context, replicas: usize) -> Result<(), BusError> {
    let streams = [
        stream::Config {
            name: SPOOL_STREAM.into(),
            subjects: vec![SPOOL_SUBJECT.into()],
            // Limits retention: the spool message doubles as the body store for
            // inline bodies, so it outlives the queue's ack.
            retention: stream::RetentionPolicy::Limits,
            max_age: SPOOL_MAX_AGE,
            duplicate_window: DEDUP_WINDOW,
            storage: stream::StorageType::File,
            allow_direct: true,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: JOBS_STREAM.into(),
            subjects: vec![
                LOCAL_JOBS_SUBJECT.into(),
                REMOTE_JOBS_FILTER.into(),
                SCHEDULED_FILTER.into(),
                HELD_FILTER.into(),
                PAUSED_FILTER.into(),
            ],
            retention: stream::RetentionPolicy::WorkQueue,
            allow_message_schedules: true,
            // Direct gets: the oldest job's age for `stats`, and finding a
            // job's message for `tern queue delete`, from any replica.
            allow_direct: true,
            duplicate_window: DEDUP_WINDOW,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: RESULTS_STREAM.into(),
            subjects: vec![RESULTS_FILTER.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: DEDUP_WINDOW,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
        stream::Config {
            name: EVENTS_STREAM.into(),
            subjects: vec![EVENTS_FILTER.into()],
            retention: stream::RetentionPolicy::Limits,
            max_age: EVENTS_MAX_AGE,
            duplicate_window: DEDUP_WINDOW,
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        },
    ];
    for cfg in streams {
        let name = cfg.name.clone();
        js.create_or_update_stream(cfg)
            .await
            .map_err(|e| setup_err(&name)(Box::new(e)))?;
    }
    if js.get_object_store(BODY_BUCKET).await.is_err() {
        js.create_object_store(jetstream::object_store::Config {
            bucket: BODY_BUCKET.into(),
            storage: stream::StorageType::File,
            num_replicas: replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| setup_err(BODY_BUCKET)(Box::new(e)))?;
    }
    for bucket in [QUEUE_BUCKET, HOLDS_BUCKET, PAUSES_BUCKET] {
        // The queue forgets every finished job and message by purging its
        // key with a marker that expires (`QUEUE_MARKER_TTL`), so a million
        // messages a day do not leave a million markers behind. The holds
        // and pauses buckets keep theirs: their watchers see a release as one.
        let limit_markers = (bucket == QUEUE_BUCKET).then_some(QUEUE_MARKER_TTL);
        match js.get_key_value(bucket).await {
            Ok(_) if limit_markers.is_some() => {
                // A bucket made before markers expired: allow per-message TTLs.
                let name = format!("KV_{bucket}");
                let mut stream = js
                    .get_stream(&name)
                    .await
                    .map_err(|e| setup_err(bucket)(Box::new(e)))?;
                let info = stream
                    .info()
                    .await
                    .map_err(|e| setup_err(bucket)(Box::new(e)))?;
                if !info.config.allow_message_ttl {
                    let mut config = info.config.clone();
                    config.allow_message_ttl = true;
                    config.subject_delete_marker_ttl = limit_markers;
                    js.update_stream(config)
                        .await
                        .map_err(|e| setup_err(bucket)(Box::new(e)))?;
                }
            }
            Ok(_) => {}
            Err(_) => {
                js.create_key_value(jetstream::kv::Config {
                    bucket: bucket.into(),
                    history: 1,
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    limit_markers,
                    ..Default::default()
                })
                .await
                .map_err(|e| setup_err(bucket)(Box::new(e)))?;
            }
        }
    }
    Ok(())
}

/// Retry `ensure_streams` until it succeeds or shutdown begins.
pub async fn ensure_streams_until_ready(
    js: &jetstream::Context,
    replicas: usize,
    shutdown: &crate::Shutdown,
) -> Result<(), BusError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match ensure_streams(js, replicas).await {
            Ok(()) => return Ok(()),
            Err(e) if shutdown.is_triggered() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "JetStream not ready; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return Err(e),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A durable pull consumer on `stream` with `filter`, created if missing.
pub async fn pull_consumer(
    js: &jetstream::Context,
    stream_name: &str,
    durable: &str,
    filter: &str,
    ack_wait: Duration,
) -> Result<consumer::PullConsumer, BusError> {
    let what = format!("consumer {durable} on {stream_name}");
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| setup_err(&what)(Box::new(e)))?;
    stream
        .get_or_create_consumer(
            durable,
            consumer::pull::Config {
                durable_name: Some(durable.into()),
                filter_subject: filter.into(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| setup_err(&what)(Box::new(e)))
}

/// One JetStream publish the way every Tern publish is made: a
/// de-duplication id (`Nats-Msg-Id`, so a re-publish after a crash within
/// [`DEDUP_WINDOW`] is dropped by the server) and the current trace context
/// in the headers, plus any extra headers (message schedules, links).
#[derive(Debug, Clone)]
pub struct Publish {
    subject: String,
    payload: bytes::Bytes,
    msg_id: String,
    headers: async_nats::HeaderMap,
}

impl Publish {
    /// `payload` for `subject`, de-duplicated by `msg_id`, carrying the
    /// trace context of the current span.
    pub fn new(
        subject: impl Into<String>,
        payload: bytes::Bytes,
        msg_id: impl Into<String>,
    ) -> Self {
        let mut headers = async_nats::HeaderMap::new();
        crate::telemetry::inject_nats(&mut headers);
        Publish {
            subject: subject.into(),
            payload,
            msg_id: msg_id.into(),
            headers,
        }
    }

    /// Add a header.
    pub fn header(
        mut self,
        name: impl async_nats::header::IntoHeaderName,
        value: impl async_nats::header::IntoHeaderValue,
    ) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Send it. Returns the ack future: the message is durable only once
    /// it resolves.
    pub async fn send(
        self,
        js: &jetstream::Context,
    ) -> Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError> {
        let msg = jetstream::message::PublishMessage::build()
            .payload(self.payload)
            .headers(self.headers)
            .message_id(self.msg_id);
        js.send_publish(self.subject, msg).await
    }

    /// Send it and wait until JetStream has stored it.
    pub async fn durable(
        self,
        js: &jetstream::Context,
    ) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        self.send(js).await?.await
    }
}

/// [`Publish`] `payload` on `subject` with `msg_id` as the de-duplication id
/// and the current trace context in the headers. Returns the ack future:
/// the message is durable only once it resolves.
pub async fn publish(
    js: &jetstream::Context,
    subject: String,
    payload: bytes::Bytes,
    msg_id: &str,
) -> Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError> {
    Publish::new(subject, payload, msg_id).send(js).await
}

/// [`pull_consumer`], retried with backoff until it exists or shutdown
/// begins: right after start-up (or a NATS restart) the stream leader may
/// not be elected yet, and that is no reason for a service to exit.
pub async fn pull_consumer_until_ready(
    js: &jetstream::Context,
    stream_name: &str,
    durable: &str,
    filter: &str,
    ack_wait: Duration,
    shutdown: &crate::Shutdown,
) -> Result<consumer::PullConsumer, BusError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match pull_consumer(js, stream_name, durable, filter, ack_wait).await {
            Ok(c) => return Ok(c),
            Err(e) if shutdown.is_triggered() => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "consumer not ready; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.wait() => return Err(e),
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How long the marker nats-server leaves when an entry of a TTL bucket
/// ([`ttl_bucket`]) expires lives; then the key is gone entirely.
pub const TTL_MARKER_TTL: Duration = Duration::from_secs(60);

/// A key-value bucket whose entries carry their own time to live (the
/// `Nats-TTL` header, nats-server 2.11+), opened, or created with
/// `replicas` copies (file storage, history 1). Opening first means a bucket
/// made with other settings (another replica count) is used as it is.
pub async fn ttl_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<jetstream::kv::Store, BusError> {
    if let Ok(kv) = js.get_key_value(bucket).await {
        return Ok(kv);
    }
    js.create_key_value(jetstream::kv::Config {
        bucket: bucket.into(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        limit_markers: Some(TTL_MARKER_TTL),
        ..Default::default()
    })
    .await
    .map_err(|e| setup_err(bucket)(Box::new(e)))
}

/// The whole seconds (at least 1) of `ttl`, rounded up: the unit of `Nats-TTL`.
pub fn ttl_seconds(ttl: Duration) -> u64 {
    (ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).max(1)
}

/// Write `value` to `key` of the TTL bucket `kv` ([`ttl_bucket`]) if the
/// key's last revision is still `revision` (0: the key has no message at
/// all, not even a delete marker), the entry expiring after `ttl` (whole
/// seconds, rounded up). A lost race fails with
/// [`PublishErrorKind::WrongLastSequence`](jetstream::context::PublishErrorKind).
/// Returns the new revision.
///
/// async-nats 0.51 has no update with a TTL, and its `create_with_ttl`
/// drops the TTL when the key holds a delete marker, hence this.
pub async fn kv_write_with_ttl(
    js: &jetstream::Context,
    kv: &jetstream::kv::Store,
    key: &str,
    value: bytes::Bytes,
    revision: u64,
    ttl: Duration,
) -> Result<u64, jetstream::context::PublishError> {
    let subject = format!("{}{key}", kv.put_prefix.as_ref().unwrap_or(&kv.prefix));
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        revision.to_string().as_str(),
    );
    headers.insert(
        async_nats::header::NATS_MESSAGE_TTL,
        ttl_seconds(ttl).to_string().as_str(),
    );
    let ack = js
        .publish_with_headers(subject, headers, value)
        .await?
        .await?;
    Ok(ack.sequence)
}

#[cfg(test)]
mod ttl_tests {
    use super::*;

    #[test]
    fn ttls_are_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(200)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(900)), 900);
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    #[test]
    fn servers_and_credentials_from_the_url() {
        let (servers, auth) = nats_servers("nats://a:4222, nats://b:4222,");
        assert_eq!(servers, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(auth, None);
        let (servers, auth) = nats_servers("nats://tern:p%40ss@a:4222,nats://tern:p%40ss@b:4222");
        assert_eq!(servers.len(), 2);
        assert_eq!(auth, Some(("tern".into(), Some("p@ss".into()))));
        let (_, auth) = nats_servers("tls://s3cr3t-token@nats.example:4222");
        assert_eq!(auth, Some(("s3cr3t-token".into(), None)));
    }

    #[test]
    fn redaction_hides_passwords_and_tokens() {
        assert_eq!(
            redact_nats_url("nats://tern:secret@a:4222,nats://tok@b:4222,nats://c:4222"),
            "nats://tern:***@a:4222,nats://***@b:4222,nats://c:4222"
        );
    }
}
