//! Delivery service: outbound SMTP workers.
//!
//! Delivery pulls remote jobs (`tern.jobs.remote.<domain>`) from JetStream,
//! asks the resolver for the domain's route, relays the message to the MX
//! hosts in order over SMTP, and publishes one [`JobResult`] per attempt on
//! `tern.results.<domain>` with a per-recipient outcome. A job is acked only
//! once its result is durably stored, so a crash at any point means the job
//! is attempted again rather than lost.

mod attempt;
pub mod egress;
mod limit;
mod pool;
pub mod rate;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use prost::Message as _;
use tern_proto::resolver_client::ResolverClient;
use tern_proto::{Job, JobResult, Outcome};
use tern_runtime::config::{CommonConfig, ConfigError, Key, Source, endpoints};
use tern_runtime::holds::Holds;
use tern_runtime::{Shutdown, admin, body, bus, grpc, telemetry};
use tern_smtp::client::Timeouts;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
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
/// How long one pull request waits for jobs before asking again.
const FETCH_EXPIRES: Duration = Duration::from_secs(1);
/// How long the puller waits to fill a bigger pull while jobs are still
/// queued locally (so workers do not idle meanwhile).
const BATCH_GATHER: Duration = Duration::from_millis(10);

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
    /// Most transactions per connection.
    pub messages_per_connection: usize,
    /// Longest idle time of a pooled connection.
    pub connection_idle: Duration,
    /// Connections per site across all processes (0 = unlimited).
    pub destination_concurrency: usize,
    /// Per-destination overrides of `destination_concurrency`.
    pub destination_concurrency_limits: Limits,
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
            common,
        })
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
    #[error("bind {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Configuration problem found at start.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// NATS setup failed.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    /// The gRPC server failed or the resolver URL is malformed.
    #[error(transparent)]
    Grpc(#[from] grpc::GrpcError),
    /// The admin HTTP server failed.
    #[error("admin HTTP server: {0}")]
    Admin(std::io::Error),
    /// The TLS client configuration could not be built.
    #[error("TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Delivery with its listeners bound.
pub struct Bound {
    config: Config,
    grpc: TcpListener,
    admin: TcpListener,
}

/// Bind delivery's listeners.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { what, addr, source })
    };
    Ok(Bound {
        grpc: bind("delivery gRPC", config.grpc_listen).await?,
        admin: bind("delivery admin", config.admin_listen).await?,
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
        [
            ("delivery grpc", &self.grpc),
            ("delivery admin", &self.admin),
        ]
        .into_iter()
        .filter_map(|(n, l)| l.local_addr().ok().map(|a| (n, a)))
        .collect()
    }

    /// Work until shutdown: stop pulling jobs, let in-flight attempts finish
    /// within the shutdown grace, then stop serving health and admin.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        let Bound {
            config,
            grpc,
            admin,
        } = self;
        let ready = admin::Readiness::default();
        let stop = Shutdown::new();
        let admin_task = tokio::spawn(admin::serve(
            admin,
            ready.clone(),
            shutdown.clone(),
            stop.clone(),
        ));
        let (_reporter, health) = grpc::health();
        let grpc_task = tokio::spawn(grpc::serve(
            grpc,
            tonic::service::Routes::new(health),
            stop.clone(),
        ));

        let worked = work(config, &shutdown, &ready).await;

        stop.trigger();
        let admin_result = admin_task.await;
        let grpc_result = grpc_task.await;
        worked?;
        if let Ok(r) = grpc_result {
            r?;
        }
        if let Ok(Err(e)) = admin_result {
            return Err(Error::Admin(e));
        }
        Ok(())
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
    let consumer = bus::pull_consumer(
        &js,
        bus::JOBS_STREAM,
        bus::consumers::DELIVERY,
        bus::REMOTE_JOBS_FILTER,
        config.ack_wait,
    )
    .await?;
    let holds = Holds::watch(&js, shutdown.clone()).await?;
    let needs_limiter = config.destination_concurrency > 0
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
    let rates = if rate::RateLimiter::needed(config.rate_limit, &config.rate_limits) {
        Some(
            rate::RateLimiter::new(
                &js,
                config.common.nats_replicas,
                config.rate_limit,
                config.rate_limits.clone(),
            )
            .await?,
        )
    } else {
        None
    };
    // A handle without the stream-info round trip, for the body of every job.
    let spool = js
        .get_stream_no_info(bus::SPOOL_STREAM)
        .await
        .map_err(|e| bus::BusError::Setup {
            what: bus::SPOOL_STREAM.into(),
            message: e.to_string(),
        })?;
    let pool = pool::Pool::new(config.messages_per_connection, config.connection_idle);
    tokio::spawn(reap(pool.clone(), shutdown.clone()));
    ready.set(true);
    tracing::info!(
        concurrency = config.concurrency,
        pool = %config.egress.name,
        tls = %config.tls_policy,
        "delivery ready"
    );
    let config_concurrency = config.concurrency;
    let ctx = Arc::new(Ctx {
        js,
        resolver,
        tls_config: tls::client_config()?,
        config,
        holds,
        abandon: Shutdown::new(),
        closing: shutdown.clone(),
        pool,
        limiter,
        rates,
        routes: attempt::Routes::default(),
        spool,
        workers: Arc::new(Semaphore::new(config_concurrency)),
    });
    consume(consumer, ctx.clone(), shutdown).await;
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
    /// Triggered when the drain deadline passes: in-flight attempts give up.
    abandon: Shutdown,
    /// The service shutdown: sessions are closed instead of pooled.
    closing: Shutdown,
    /// rustls client configuration for STARTTLS.
    tls_config: Arc<rustls::ClientConfig>,
    /// Idle sessions for reuse.
    pool: pool::Pool,
    /// Cluster-wide per-site connection limits.
    limiter: Option<limit::Limiter>,
    /// Cluster-wide per-site message rates.
    rates: Option<rate::RateLimiter>,
    /// Resolver answers reused for a few seconds.
    routes: attempt::Routes,
    /// The spool stream, where most bodies are.
    spool: jetstream::stream::Stream<()>,
    /// One permit per running attempt (`concurrency`).
    workers: Arc<Semaphore>,
}

/// Pull jobs, run each in its own task (at most `concurrency` attempts at
/// once), and on shutdown stop pulling and drain.
///
/// The process holds up to twice `concurrency` jobs: the ones beyond the
/// running attempts wait locally for a worker. That lets pulls be batched
/// (one pull request for half the concurrency or more, rather than one per
/// job as workers free up one by one) without workers idling while a pull
/// is under way.
async fn consume(consumer: PullConsumer, ctx: Arc<Ctx>, shutdown: &Shutdown) {
    let taken = Arc::new(Semaphore::new(ctx.config.concurrency * 2));
    let min_batch = (ctx.config.concurrency / 2).max(1);
    let tracker = TaskTracker::new();
    loop {
        let first = tokio::select! {
            p = taken.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.wait() => break,
        };
        let mut held = vec![first];
        while let Ok(p) = taken.clone().try_acquire_owned() {
            held.push(p);
        }
        if held.len() < min_batch {
            // Fewer free than `min_batch` means at least that many jobs are
            // still queued here: waiting a moment for more costs no work.
            let gather = tokio::time::sleep(BATCH_GATHER);
            tokio::pin!(gather);
            while held.len() < min_batch {
                tokio::select! {
                    p = taken.clone().acquire_owned() => match p {
                        Ok(p) => held.push(p),
                        Err(_) => break,
                    },
                    _ = &mut gather => break,
                    _ = shutdown.wait() => break,
                }
            }
        }
        let batch = consumer
            .batch()
            .max_messages(held.len())
            .expires(FETCH_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "pulling jobs failed; retrying");
                drop(held);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = shutdown.wait() => break,
                }
            }
        };
        while let Some(msg) = batch.next().await {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(error = %e, "pull request ended");
                    continue;
                }
            };
            match held.pop() {
                Some(permit) if !shutdown.is_triggered() => {
                    tracker.spawn(handle(ctx.clone(), msg, permit));
                }
                _ => {
                    // Shutting down: hand the job straight back for another worker.
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                }
            }
        }
    }
    let grace = ctx.config.common.shutdown_grace;
    tracing::info!(in_flight = tracker.len(), ?grace, "delivery draining");
    if !tern_runtime::shutdown::drain(&tracker, grace).await {
        ctx.abandon.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
    }
}

/// The job's destination is on hold: move it to the held subject (where the
/// queue's release finds it) without an attempt, then ack.
async fn set_aside(ctx: &Ctx, job: &Job, msg: jetstream::Message) {
    // The ready message's sequence makes the id unique per hold: a job held,
    // released and held again within the de-duplication window must not be
    // dropped as a duplicate (and then lost when this message is acked).
    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or_default();
    let id = format!("{}/{}/held/{seq}", job.job_id, job.attempt);
    let moved = match bus::publish(
        &ctx.js,
        bus::held_subject(&job.destination),
        msg.payload.clone(),
        &id,
    )
    .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    if moved {
        tracing::info!("destination on hold; job set aside");
        let _ = msg.ack().await;
    } else {
        // Could not move it: leave it for redelivery rather than lose it.
        let _ = msg
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
    }
}

/// One job: wait for a worker, attempt, publish the result, then ack.
/// Progress acks keep the job ours while the attempt runs.
async fn handle(ctx: Arc<Ctx>, msg: jetstream::Message, _taken: OwnedSemaphorePermit) {
    let _worker = tokio::select! {
        w = ctx.workers.clone().acquire_owned() => w,
        _ = ctx.closing.wait() => {
            // Shutting down before it started: straight back for another process.
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return;
        }
    };
    let job = match Job::decode(msg.payload.clone()) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "undecodable job; terminating it");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
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
        set_aside(&ctx, &job, msg).instrument(span).await;
        return;
    }
    let work = async {
        let results = match run_attempt(&ctx, &job).await {
            attempt::Attempted::Results(r) => r,
            attempt::Attempted::Later(delay) => {
                // The destination's message rate is used up: back to the
                // stream until a window with room, not an attempt.
                tracing::debug!(?delay, "message rate used up; job comes back later");
                metrics::counter!("tern_delivery_rate_deferrals_total").increment(1);
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                return;
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
        if publish_result(&ctx, &result).await {
            for r in &result.results {
                metrics::counter!("tern_delivery_attempts_total", "outcome" => outcome_label(r.outcome)).increment(1);
            }
            // A plain ack, not a double ack: waiting for the server to
            // confirm costs a round trip per job, and an ack lost with the
            // NATS connection means the job is attempted again after the ack
            // wait, which at-least-once allows.
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, "ack of a finished job failed; it may be attempted again");
            }
        } else {
            // No durable result: leave the job for another attempt.
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    };
    let keepalive = async {
        let mut tick = tokio::time::interval(ctx.config.ack_wait / 3);
        tick.tick().await;
        loop {
            tick.tick().await;
            let _ = msg.ack_with(AckKind::Progress).await;
        }
    };
    tokio::select! {
        _ = work.instrument(span.clone()) => {}
        _ = keepalive => {}
        _ = ctx.abandon.wait() => {
            tracing::warn!(parent: &span, "attempt abandoned at the end of the shutdown grace");
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        }
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
        pool: &ctx.pool,
        limiter: ctx.limiter.as_ref(),
        rates: ctx.rates.as_ref(),
        routes: &ctx.routes,
        limit_wait: ctx.config.limit_wait,
        closing: &ctx.closing,
    };
    let body_ref = job.body.clone().unwrap_or_default();
    attempt::attempt(env, job, || load_body(ctx, body_ref)).await
}

/// The job's body: from the spool stream by sequence with one direct get on
/// a handle kept for the process (`body::load` would first fetch the
/// stream's info, a second round trip per message), else `body::load`.
async fn load_body(ctx: &Ctx, r: tern_proto::BodyRef) -> Result<bytes::Bytes, body::BodyError> {
    use tern_proto::body_ref::Location;
    let Some(Location::SpoolSeq(seq)) = r.location else {
        return body::load(&ctx.js, &r).await;
    };
    let msg = ctx
        .spool
        .direct_get(seq)
        .await
        .map_err(|e| body::BodyError::Spool(seq, e.to_string()))?;
    let env = tern_proto::Envelope::decode(msg.payload)
        .map_err(|e| body::BodyError::Spool(seq, e.to_string()))?;
    match env.body.and_then(|b| b.location) {
        Some(Location::Inline(b)) => Ok(b),
        _ => Err(body::BodyError::Invalid),
    }
}

/// Publish the result with trace headers and wait for JetStream to store it,
/// retrying a few times. True once it is durable.
async fn publish_result(ctx: &Ctx, result: &JobResult) -> bool {
    let subject = bus::results_subject(&result.destination);
    let id = format!("{}/{}", result.job_id, result.attempt);
    let payload: bytes::Bytes = result.encode_to_vec().into();
    let mut delay = Duration::from_millis(200);
    for n in 1..=5 {
        let stored = match bus::publish(&ctx.js, subject.clone(), payload.clone(), &id).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => return true,
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
