//! Delivery service: outbound SMTP workers.
//!
//! Delivery pulls remote jobs (`tern.jobs.remote.<domain>`) from JetStream,
//! asks the resolver for the domain's route, relays the message to the MX
//! hosts in order over SMTP, and publishes one [`JobResult`] per attempt on
//! `tern.results.<domain>` with a per-recipient outcome. A job is acked only
//! once its result is durably stored, so a crash at any point means the job
//! is attempted again rather than lost.

mod attempt;
pub mod automation;
pub mod egress;
mod limit;
mod pool;
pub mod rate;
pub mod shaping;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use prost::Message as _;
use tern_proto::resolver_client::ResolverClient;
use tern_proto::{Job, JobResult, Outcome};
use tern_runtime::config::{CommonConfig, ConfigError, Key, Source, endpoints};
use tern_runtime::holds::Holds;
use tern_runtime::worker::{self, Disposition};
use tern_runtime::{Shutdown, admin, body, bus, grpc, service, telemetry};
use tern_smtp::client::Timeouts;
use tern_stats::pause::{self, Pauses};
use tracing::Instrument;

pub use attempt::{MAX_ADDRESSES, MAX_SESSIONS};
pub use egress::{Egress, IpList};
pub use limit::{LEASE_TTL, LIMITS_BUCKET, Limits};
pub use rate::{RATES_BUCKET, RateLimit, RateLimits};
pub use tls::{TlsPolicies, TlsPolicy};

/// `TERN_REMOTE_SMTP_PORT`.
pub const REMOTE_SMTP_PORT: Key<u16> = Key::new(
    "remote_smtp_port",
    "25",
    "port delivery connects to on MX hosts",
);
/// `TERN_DELIVERY_CONCURRENCY`.
pub const DELIVERY_CONCURRENCY: Key<usize> = Key::new(
    "delivery_concurrency",
    "16",
    "delivery attempts running at once per delivery process",
);
/// `TERN_DELIVERY_CONNECT_TIMEOUT`.
pub const DELIVERY_CONNECT_TIMEOUT: Key<Duration> = Key::new(
    "delivery_connect_timeout",
    "30s",
    "timeout of one TCP connect to an MX host",
);

/// `TERN_DELIVERY_TLS_POLICY`.
pub const DELIVERY_TLS_POLICY: Key<TlsPolicy> = Key::new(
    "delivery_tls_policy",
    "opportunistic",
    "STARTTLS policy for destinations without their own: opportunistic, required or disabled",
);
/// `TERN_DELIVERY_TLS_POLICIES`.
pub const DELIVERY_TLS_POLICIES: Key<TlsPolicies> = Key::new(
    "delivery_tls_policies",
    "",
    "per-destination STARTTLS policies: domain=policy,... (.domain covers subdomains)",
);
/// `TERN_DELIVERY_TLS_PLAINTEXT_FALLBACK`.
pub const DELIVERY_TLS_PLAINTEXT_FALLBACK: Key<bool> = Key::new(
    "delivery_tls_plaintext_fallback",
    "false",
    "after a failed STARTTLS/handshake on an opportunistic destination, retry that host in plaintext",
);
/// `TERN_DELIVERY_TLS_CA_FILE`.
pub const DELIVERY_TLS_CA_FILE: Key<Option<PathBuf>> = Key::new(
    "delivery_tls_ca_file",
    "",
    "PEM bundle of the CA roots verified TLS trusts (REQUIRETLS messages); empty = the system's CA store",
);
/// `TERN_DELIVERY_MESSAGES_PER_CONNECTION`.
pub const DELIVERY_MESSAGES_PER_CONNECTION: Key<usize> = Key::new(
    "delivery_messages_per_connection",
    "100",
    "most transactions carried by one SMTP connection (1 = no reuse)",
);
/// `TERN_DELIVERY_CONNECTION_IDLE`.
pub const DELIVERY_CONNECTION_IDLE: Key<Duration> = Key::new(
    "delivery_connection_idle",
    "5s",
    "how long an idle SMTP connection is kept for the next message to its site (0 = no reuse)",
);
/// `TERN_DELIVERY_DESTINATION_CONCURRENCY`.
pub const DELIVERY_DESTINATION_CONCURRENCY: Key<usize> = Key::new(
    "delivery_destination_concurrency",
    "20",
    "most SMTP connections to one site across all delivery processes (0 = unlimited)",
);
/// `TERN_DELIVERY_DESTINATION_CONCURRENCY_LIMITS`.
pub const DELIVERY_DESTINATION_CONCURRENCY_LIMITS: Key<Limits> = Key::new(
    "delivery_destination_concurrency_limits",
    "",
    "per-destination connection limits: domain=n,... (0 = unlimited)",
);
/// `TERN_DELIVERY_LIMIT_WAIT`.
pub const DELIVERY_LIMIT_WAIT: Key<Duration> = Key::new(
    "delivery_limit_wait",
    "30s",
    "how long a job waits for a free connection slot before it is deferred",
);
/// `TERN_DELIVERY_RATE_LIMIT`.
pub const DELIVERY_RATE_LIMIT: Key<RateLimit> = Key::new(
    "delivery_rate_limit",
    "",
    "messages per time to one site across all delivery processes, like 100/s or 600/m (empty = no limit)",
);
/// `TERN_DELIVERY_RATE_LIMITS`.
pub const DELIVERY_RATE_LIMITS: Key<RateLimits> = Key::new(
    "delivery_rate_limits",
    "",
    "per-destination message rates: domain=rate,... (rate like 100/s, or none)",
);
/// `TERN_SHAPING_FILE`.
pub const SHAPING_FILE: Key<Option<PathBuf>> = Key::new(
    "shaping_file",
    "",
    "TOML file of limits per domain, provider and egress source, and automation rules (reloaded when it changes; empty = shipped defaults only)",
);
/// `TERN_DELIVERY_POOL`.
pub const DELIVERY_POOL: Key<String> = Key::new(
    "delivery_pool",
    "default",
    "egress pool name of this delivery process",
);
/// `TERN_DELIVERY_SOURCE_ADDRESSES`.
pub const DELIVERY_SOURCE_ADDRESSES: Key<IpList> = Key::new(
    "delivery_source_addresses",
    "",
    "source IPs to connect from (one per family; empty = the kernel's choice)",
);
/// `TERN_DELIVERY_EHLO_NAME`.
pub const DELIVERY_EHLO_NAME: Key<Option<String>> = Key::new(
    "delivery_ehlo_name",
    "",
    "EHLO name (default TERN_HOSTNAME)",
);

/// `TERN_DELIVERY_COMMAND_TIMEOUT`.
pub const DELIVERY_COMMAND_TIMEOUT: Key<Duration> = Key::new(
    "delivery_command_timeout",
    "5m",
    "wait for the greeting and the replies to EHLO, STARTTLS, MAIL, RCPT, RSET (RFC 5321 4.5.3.2: 5 min)",
);
/// `TERN_DELIVERY_DATA_TIMEOUT`.
pub const DELIVERY_DATA_TIMEOUT: Key<Duration> = Key::new(
    "delivery_data_timeout",
    "3m",
    "wait for the 354 to DATA (capped at 2 min) and for each block of content to be taken (RFC 5321 4.5.3.2: 2 and 3 min)",
);
/// `TERN_DELIVERY_FINAL_TIMEOUT`.
pub const DELIVERY_FINAL_TIMEOUT: Key<Duration> = Key::new(
    "delivery_final_timeout",
    "10m",
    "wait for the reply after the end of the message (RFC 5321 4.5.3.2: 10 min)",
);

/// `TERN_DELIVERY_ACK_WAIT`.
pub const DELIVERY_ACK_WAIT: Key<Duration> = Key::new(
    "delivery_ack_wait",
    "60s",
    "how long a job taken by a delivery process that died stays invisible before another takes it",
);

/// The default of [`DELIVERY_ACK_WAIT`]: how long JetStream waits for an
/// ack before redelivering a job; attempts that take longer keep it alive
/// with progress acks every third of it.
pub const ACK_WAIT: Duration = Duration::from_secs(60);

/// Delivery configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared settings (NATS URL, EHLO host name, shutdown grace).
    pub common: CommonConfig,
    /// gRPC listen address (health only).
    pub grpc_listen: SocketAddr,
    /// Admin HTTP listen address.
    pub admin_listen: SocketAddr,
    /// The resolver's gRPC URL.
    pub resolver_url: String,
    /// Port to connect to on MX hosts (25 except in tests).
    pub remote_smtp_port: u16,
    /// Attempts running at once.
    pub concurrency: usize,
    /// Timeout of one TCP connect.
    pub connect_timeout: Duration,
    /// SMTP timeouts per stage (RFC 5321 §4.5.3.2 defaults).
    pub smtp_timeouts: Timeouts,
    /// STARTTLS policy for destinations not in `tls_policies`.
    pub tls_policy: TlsPolicy,
    /// Per-destination STARTTLS policies.
    pub tls_policies: TlsPolicies,
    /// Retry a host in plaintext after its TLS failed (opportunistic only).
    pub tls_plaintext_fallback: bool,
    /// The CA bundle verified TLS trusts (`None`: the system's store).
    pub tls_ca_file: Option<PathBuf>,
    /// The roots loaded from `tls_ca_file` or the system, at start.
    pub tls_roots: Arc<rustls::RootCertStore>,
    /// Most transactions per connection.
    pub messages_per_connection: usize,
    /// Longest idle time of a pooled connection.
    pub connection_idle: Duration,
    /// Connections per site across all processes (0 = unlimited).
    pub destination_concurrency: usize,
    /// Per-destination overrides of `destination_concurrency`.
    pub destination_concurrency_limits: Limits,
    /// The shaping file, watched for changes while delivery runs.
    pub shaping_file: Option<PathBuf>,
    /// The shaping rules (from the file, checked at start, or the shipped
    /// defaults).
    pub shaping: shaping::Rules,
    /// Longest wait for a connection slot.
    pub limit_wait: Duration,
    /// Messages per time to one site across all processes.
    pub rate_limit: RateLimit,
    /// Per-destination overrides of `rate_limit`.
    pub rate_limits: RateLimits,
    /// Source addresses and EHLO name.
    pub egress: Egress,
    /// Ack deadline of the jobs consumer (used when this process creates it).
    pub ack_wait: Duration,
}

impl Config {
    /// Read delivery's keys.
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let concurrency = src.get(&DELIVERY_CONCURRENCY)?;
        if concurrency == 0 {
            return Err(ConfigError::Invalid {
                key: tern_runtime::config::env_name(DELIVERY_CONCURRENCY.name),
                value: "0".into(),
                expected: "a positive integer",
            });
        }
        let common = CommonConfig::from_source(src)?;
        let shaping_file = src.get(&SHAPING_FILE)?;
        let tls_ca_file = src.get(&DELIVERY_TLS_CA_FILE)?;
        let tls_roots = tls::roots(tls_ca_file.as_deref()).map_err(|e| ConfigError::File {
            path: tls_ca_file.clone().unwrap_or_default(),
            message: format!("TERN_DELIVERY_TLS_CA_FILE: {e}"),
        })?;
        Ok(Config {
            grpc_listen: src.get(&endpoints::DELIVERY_GRPC)?,
            admin_listen: src.get(&endpoints::DELIVERY_ADMIN)?,
            resolver_url: endpoints::url(src, &endpoints::RESOLVER_URL, &endpoints::RESOLVER_GRPC)?,
            remote_smtp_port: src.get(&REMOTE_SMTP_PORT)?,
            concurrency,
            connect_timeout: src.get(&DELIVERY_CONNECT_TIMEOUT)?,
            smtp_timeouts: timeouts(src)?,
            tls_policy: src.get(&DELIVERY_TLS_POLICY)?,
            tls_policies: src.get(&DELIVERY_TLS_POLICIES)?,
            tls_plaintext_fallback: src.get(&DELIVERY_TLS_PLAINTEXT_FALLBACK)?,
            tls_ca_file,
            tls_roots: Arc::new(tls_roots),
            messages_per_connection: src.get(&DELIVERY_MESSAGES_PER_CONNECTION)?.max(1),
            connection_idle: src.get(&DELIVERY_CONNECTION_IDLE)?,
            destination_concurrency: src.get(&DELIVERY_DESTINATION_CONCURRENCY)?,
            destination_concurrency_limits: src.get(&DELIVERY_DESTINATION_CONCURRENCY_LIMITS)?,
            limit_wait: src.get(&DELIVERY_LIMIT_WAIT)?,
            rate_limit: src.get(&DELIVERY_RATE_LIMIT)?,
            rate_limits: src.get(&DELIVERY_RATE_LIMITS)?,
            egress: Egress {
                name: src.get(&DELIVERY_POOL)?,
                sources: src.get(&DELIVERY_SOURCE_ADDRESSES)?.0,
                ehlo_name: src
                    .get(&DELIVERY_EHLO_NAME)?
                    .unwrap_or_else(|| common.hostname.clone()),
            },
            ack_wait: src.get(&DELIVERY_ACK_WAIT)?,
            shaping: shaping_rules(shaping_file.as_deref())?,
            shaping_file,
            common,
        })
    }
}

/// The shaping rules from `path` (checked in full), or the shipped defaults.
fn shaping_rules(path: Option<&std::path::Path>) -> Result<shaping::Rules, ConfigError> {
    match path {
        None => Ok(shaping::Rules::defaults()),
        Some(p) => shaping::Rules::load(p).map_err(|e| ConfigError::File {
            path: p.to_path_buf(),
            message: format!("TERN_SHAPING_FILE: {e}"),
        }),
    }
}

/// The SMTP timeouts from the three timeout keys.
fn timeouts(src: &Source) -> Result<Timeouts, ConfigError> {
    let command = src.get(&DELIVERY_COMMAND_TIMEOUT)?;
    let data = src.get(&DELIVERY_DATA_TIMEOUT)?;
    let fin = src.get(&DELIVERY_FINAL_TIMEOUT)?;
    Ok(Timeouts {
        greeting: command,
        command,
        mail: command,
        rcpt: command,
        data_init: data.min(Duration::from_secs(120)),
        data_block: data,
        data_term: fin,
    })
}

/// Errors that stop the delivery service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] service::BindError),
    /// The gRPC or admin server failed.
    #[error(transparent)]
    Serve(#[from] service::ServeError),
    /// Configuration problem found at start.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// NATS setup failed.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    /// The resolver URL is malformed.
    #[error(transparent)]
    Grpc(#[from] grpc::GrpcError),
    /// The body store could not be opened.
    #[error(transparent)]
    Body(#[from] body::BodyError),
    /// The TLS client configuration could not be built.
    #[error("TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Delivery with its listeners bound.
pub struct Bound {
    config: Config,
    listeners: service::Listeners,
}

/// Bind delivery's listeners.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    Ok(Bound {
        listeners: service::Listeners::bind(
            ["delivery grpc", "delivery admin"],
            config.grpc_listen,
            config.admin_listen,
        )
        .await?,
        config,
    })
}

/// Bind and run until shutdown.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

impl Bound {
    /// Addresses this service listens on.
    pub fn addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.listeners.addrs()
    }

    /// Work until shutdown: stop pulling jobs, let in-flight attempts finish
    /// within the shutdown grace, then stop serving health and admin.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        let mut running = self.listeners.start(&shutdown);
        let _reporter = running.serve_health();
        let worked = work(self.config, &shutdown, &running.ready).await;
        let served = running.finish().await;
        worked?;
        Ok(served?)
    }
}

/// Connect, become ready, consume until shutdown and drain.
async fn work(config: Config, shutdown: &Shutdown, ready: &admin::Readiness) -> Result<(), Error> {
    let channel = grpc::channel(&config.resolver_url)?;
    let resolver =
        ResolverClient::with_interceptor(channel, telemetry::grpc_inject as attempt::Interceptor);
    let client = bus::connect(
        config.common.require_nats_url()?,
        &config.common.nats_security,
        "tern-delivery",
    )
    .await?;
    let js = jetstream::new(client);
    if let Err(e) =
        bus::ensure_streams_until_ready(&js, config.common.nats_replicas, shutdown).await
    {
        if shutdown.is_triggered() {
            return Ok(());
        }
        return Err(e.into());
    }
    // The stream leader may not be elected yet right after start-up:
    // wait for it rather than exit.
    let consumer = match bus::pull_consumer_until_ready(
        &js,
        bus::JOBS_STREAM,
        bus::consumers::DELIVERY,
        bus::REMOTE_JOBS_FILTER,
        config.ack_wait,
        shutdown,
    )
    .await
    {
        Ok(c) => c,
        Err(_) if shutdown.is_triggered() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let holds = Holds::watch(&js, shutdown.clone()).await?;
    let pauses = Pauses::watch(&js, shutdown.clone()).await?;
    let shaping = match &config.shaping_file {
        Some(p) => shaping::Shaping::watch(p.clone(), config.shaping.clone(), shutdown.clone()),
        None => shaping::Shaping::fixed(config.shaping.clone()),
    };
    let shaped = config.shaping_file.is_some();
    let needs_limiter = shaped
        || config.destination_concurrency > 0
        || config
            .destination_concurrency_limits
            .0
            .values()
            .any(|&n| n > 0);
    let limiter = if needs_limiter {
        Some(
            limit::Limiter::new(
                &js,
                config.common.nats_replicas,
                config.destination_concurrency,
                config.destination_concurrency_limits.clone(),
                format!("{}/{}", config.common.hostname, std::process::id()),
            )
            .await?,
        )
    } else {
        None
    };
    // Always there: shaping actions may lower any destination's rate.
    let rates = Some(
        rate::RateLimiter::new(
            &js,
            config.common.nats_replicas,
            config.rate_limit,
            config.rate_limits.clone(),
        )
        .await?,
    );
    let automation =
        automation::Automation::start(&js, config.common.nats_replicas, shutdown.clone()).await?;
    let bodies = body::BodyStore::open(&js).await?;
    let pool = pool::Pool::new(config.messages_per_connection, config.connection_idle);
    tokio::spawn(reap(pool.clone(), shutdown.clone()));
    ready.set(true);
    tracing::info!(
        concurrency = config.concurrency,
        pool = %config.egress.name,
        tls = %config.tls_policy,
        "delivery ready"
    );
    let options = worker::Options::new(
        config.concurrency,
        config.ack_wait,
        config.common.shutdown_grace,
    );
    let ctx = Arc::new(Ctx {
        js,
        resolver,
        tls_config: tls::client_config()?,
        verified_tls: tls::verified_config(config.tls_roots.clone())?,
        config,
        holds,
        pauses,
        closing: shutdown.clone(),
        pool,
        limiter,
        rates,
        shaping,
        automation,
        routes: attempt::Routes::default(),
        bodies,
    });
    let handler_ctx = ctx.clone();
    worker::worker(consumer, options, shutdown, move |msg| {
        handle(handler_ctx.clone(), msg)
    })
    .await;
    // Acks are plain publishes: make sure the last ones reach the server
    // before the connection goes away.
    // Bounded: with NATS gone, flush would wait for a reconnection forever.
    let flushed = tokio::time::timeout(Duration::from_secs(2), ctx.js.client().flush()).await;
    if !matches!(flushed, Ok(Ok(()))) {
        tracing::warn!("flushing the last acks failed; those jobs will be attempted again");
    }
    // Close pooled connections politely (QUIT) and free their slots.
    let closing = ctx.pool.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(closing)).await;
    Ok(())
}

/// Close idle pooled connections once they pass the idle limit.
async fn reap(pool: pool::Pool, shutdown: Shutdown) {
    let every = (pool.max_idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => pool.reap(),
            _ = shutdown.wait() => return,
        }
    }
}

struct Ctx {
    js: jetstream::Context,
    resolver: attempt::Resolver,
    config: Config,
    /// Destinations on hold: their jobs are set aside, not attempted.
    holds: Holds,
    /// Campaigns paused by the complaint breaker.
    pauses: Pauses,
    /// The service shutdown: sessions are closed instead of pooled.
    closing: Shutdown,
    /// rustls client configuration for STARTTLS.
    tls_config: Arc<rustls::ClientConfig>,
    /// rustls client configuration for verified TLS (REQUIRETLS).
    verified_tls: Arc<rustls::ClientConfig>,
    /// Idle sessions for reuse.
    pool: pool::Pool,
    /// Cluster-wide per-site connection limits.
    limiter: Option<limit::Limiter>,
    /// Cluster-wide per-site message rates.
    rates: Option<rate::RateLimiter>,
    /// Limits per domain, provider and source (reloaded).
    shaping: shaping::Shaping,
    /// Shaping actions in force across the cluster.
    automation: automation::Automation,
    /// Resolver answers reused for a few seconds.
    routes: attempt::Routes,
    /// Where the bodies are.
    bodies: body::BodyStore,
}

/// Why a job is moved off its ready subject unattempted, and where to.
enum SetAside {
    /// Its destination is on hold (`tern queue hold`).
    Held(String),
    /// Its campaign is paused by the complaint breaker (`tern campaign`).
    Paused(String),
}

/// Move the job to its set-aside subject (where the queue's release or
/// `tern campaign resume` finds it) without an attempt, then ack.
async fn set_aside(ctx: &Ctx, job: &Job, msg: &jetstream::Message, aside: SetAside) -> Disposition {
    let (subject, why) = match aside {
        SetAside::Held(s) => (s, "held"),
        SetAside::Paused(s) => (s, "paused"),
    };
    // The ready message's sequence makes the id unique per hold: a job held,
    // released and held again within the de-duplication window must not be
    // dropped as a duplicate (and then lost when this message is acked).
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or_default();
    let id = format!("{}/{}/{why}/{seq}", job.job_id, job.attempt);
    let moved = bus::Publish::new(subject, msg.payload.clone(), id)
        .durable(&ctx.js)
        .await
        .is_ok();
    if moved {
        tracing::info!(why, "job set aside unattempted");
        metrics::counter!("tern_delivery_set_aside_total", "why" => why).increment(1);
        Disposition::Ack
    } else {
        // Could not move it: leave it for redelivery rather than lose it.
        Disposition::Nak(Some(Duration::from_secs(1)))
    }
}

/// One job: attempt, publish the result, then ack (the worker loop keeps
/// the job ours with progress acks while the attempt runs).
async fn handle(ctx: Arc<Ctx>, msg: jetstream::Message) -> Disposition {
    let job = match Job::decode(msg.payload.clone()) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "undecodable job; terminating it");
            return Disposition::Term;
        }
    };
    let span = tracing::info_span!(
        "delivery.attempt",
        otel.kind = "consumer",
        job_id = %job.job_id,
        message_id = %job.message_id,
        destination = %job.destination,
        attempt = job.attempt,
        rcpts = job.rcpts.len(),
        delivered = tracing::field::Empty,
        deferred = tracing::field::Empty,
        bounced = tracing::field::Empty,
    );
    telemetry::link_nats_parent(&span, msg.headers.as_ref());
    if ctx.holds.is_held(&job.destination) {
        let aside = SetAside::Held(bus::held_subject(&job.destination));
        return set_aside(&ctx, &job, &msg, aside).instrument(span).await;
    }
    if ctx.pauses.is_paused(&job.tenant, &job.campaign) {
        let aside = SetAside::Paused(pause::paused_subject(&job.tenant, &job.campaign));
        return set_aside(&ctx, &job, &msg, aside).instrument(span).await;
    }
    attempt_and_report(&ctx, &job).instrument(span).await
}

/// Attempt `job` and publish its result; the disposition of its message.
async fn attempt_and_report(ctx: &Ctx, job: &Job) -> Disposition {
    let results = match run_attempt(ctx, job).await {
        attempt::Attempted::Results(r) => r,
        attempt::Attempted::Later(delay) => {
            // The destination's message rate is used up: back to the
            // stream until a window with room, not an attempt.
            tracing::debug!(?delay, "message rate used up; job comes back later");
            metrics::counter!("tern_delivery_rate_deferrals_total").increment(1);
            return Disposition::Nak(Some(delay));
        }
        attempt::Attempted::Suspended(delay) => {
            tracing::debug!(
                ?delay,
                "a shaping action suspends this provider; job comes back later"
            );
            metrics::counter!("tern_shaping_suspended_total").increment(1);
            return Disposition::Nak(Some(delay));
        }
    };
    let counts = count(&results);
    tracing::Span::current()
        .record("delivered", counts[0])
        .record("deferred", counts[1])
        .record("bounced", counts[2]);
    for r in &results {
        tracing::info!(rcpt = %r.address, outcome = outcome_label(r.outcome), code = r.code, enhanced = %r.enhanced, reply = %r.reply, "recipient result");
    }
    let result = JobResult {
        job_id: job.job_id.clone(),
        message_id: job.message_id.clone(),
        destination: job.destination.clone(),
        attempt: job.attempt,
        results,
    };
    if publish_result(ctx, &result).await {
        for r in &result.results {
            metrics::counter!("tern_delivery_attempts_total", "outcome" => outcome_label(r.outcome)).increment(1);
        }
        Disposition::Ack
    } else {
        // No durable result: leave the job for another attempt.
        Disposition::Nak(Some(Duration::from_secs(5)))
    }
}

async fn run_attempt(ctx: &Ctx, job: &Job) -> attempt::Attempted {
    let env = attempt::Env {
        resolver: ctx.resolver.clone(),
        port: ctx.config.remote_smtp_port,
        connect_timeout: ctx.config.connect_timeout,
        timeouts: ctx.config.smtp_timeouts,
        egress: &ctx.config.egress,
        tls: &ctx.config.tls_policies,
        tls_default: ctx.config.tls_policy,
        tls_fallback: ctx.config.tls_plaintext_fallback,
        tls_config: ctx.tls_config.clone(),
        verified_tls: ctx.verified_tls.clone(),
        pool: &ctx.pool,
        limiter: ctx.limiter.as_ref(),
        rates: ctx.rates.as_ref(),
        shaping: &ctx.shaping,
        automation: &ctx.automation,
        routes: &ctx.routes,
        limit_wait: ctx.config.limit_wait,
        closing: &ctx.closing,
    };
    let body_ref = job.body.clone().unwrap_or_default();
    attempt::attempt(env, job, || async move { ctx.bodies.load(&body_ref).await }).await
}

/// Publish the result with trace headers and wait for JetStream to store it,
/// retrying a few times. True once it is durable.
async fn publish_result(ctx: &Ctx, result: &JobResult) -> bool {
    let subject = bus::results_subject(&result.destination);
    let id = format!("{}/{}", result.job_id, result.attempt);
    let payload: bytes::Bytes = result.encode_to_vec().into();
    let mut delay = Duration::from_millis(200);
    for n in 1..=5 {
        let stored = bus::Publish::new(subject.clone(), payload.clone(), id.clone())
            .durable(&ctx.js)
            .await;
        match stored {
            Ok(_) => return true,
            Err(e) => {
                tracing::warn!(error = %e, try_no = n, "publishing the result failed");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    false
}

fn count(results: &[tern_proto::RecipientResult]) -> [usize; 3] {
    let mut c = [0; 3];
    for r in results {
        match Outcome::try_from(r.outcome) {
            Ok(Outcome::Delivered) => c[0] += 1,
            Ok(Outcome::Deferred) => c[1] += 1,
            Ok(Outcome::Bounced) => c[2] += 1,
            _ => {}
        }
    }
    c
}

fn outcome_label(outcome: i32) -> &'static str {
    match Outcome::try_from(outcome) {
        Ok(Outcome::Delivered) => "delivered",
        Ok(Outcome::Deferred) => "deferred",
        Ok(Outcome::Bounced) => "bounced",
        _ => "unspecified",
    }
}
