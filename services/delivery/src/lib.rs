//! Delivery service: outbound SMTP workers.
//!
//! Delivery pulls remote jobs (`tern.jobs.remote.<domain>`) from JetStream,
//! asks the resolver for the domain's route, relays the message to the MX
//! hosts in order over SMTP, and publishes one [`JobResult`] per attempt on
//! `tern.results.<domain>` with a per-recipient outcome. A job is acked only
//! once its result is durably stored, so a crash at any point means the job
//! is attempted again rather than lost.

mod attempt;

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

/// How long JetStream waits for an ack before redelivering a job; attempts
/// that take longer keep it alive with progress acks.
pub const ACK_WAIT: Duration = Duration::from_secs(60);
/// How long one pull request waits for jobs before asking again.
const FETCH_EXPIRES: Duration = Duration::from_secs(1);

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
    /// SMTP timeouts per stage (RFC 5321 §4.5.3.2 defaults; no key).
    pub smtp_timeouts: Timeouts,
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
        Ok(Config {
            common: CommonConfig::from_source(src)?,
            grpc_listen: src.get(&endpoints::DELIVERY_GRPC)?,
            admin_listen: src.get(&endpoints::DELIVERY_ADMIN)?,
            resolver_url: endpoints::url(src, &endpoints::RESOLVER_URL, &endpoints::RESOLVER_GRPC)?,
            remote_smtp_port: src.get(&REMOTE_SMTP_PORT)?,
            concurrency,
            connect_timeout: src.get(&DELIVERY_CONNECT_TIMEOUT)?,
            smtp_timeouts: Timeouts::default(),
        })
    }
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
    let client = bus::connect(config.common.require_nats_url()?, "tern-delivery").await?;
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
        ACK_WAIT,
    )
    .await?;
    let holds = Holds::watch(&js, shutdown.clone()).await?;
    ready.set(true);
    tracing::info!(concurrency = config.concurrency, "delivery ready");
    let ctx = Arc::new(Ctx {
        js,
        resolver,
        config,
        holds,
        abandon: Shutdown::new(),
    });
    consume(consumer, ctx, shutdown).await;
    Ok(())
}

struct Ctx {
    js: jetstream::Context,
    resolver: attempt::Resolver,
    config: Config,
    /// Destinations on hold: their jobs are set aside, not attempted.
    holds: Holds,
    /// Triggered when the drain deadline passes: in-flight attempts give up.
    abandon: Shutdown,
}

/// Pull as many jobs as there are free workers, run each in its own task,
/// and on shutdown stop pulling and drain.
async fn consume(consumer: PullConsumer, ctx: Arc<Ctx>, shutdown: &Shutdown) {
    let permits = Arc::new(Semaphore::new(ctx.config.concurrency));
    let tracker = TaskTracker::new();
    loop {
        let first = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.wait() => break,
        };
        let mut held = vec![first];
        while let Ok(p) = permits.clone().try_acquire_owned() {
            held.push(p);
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
    let id = format!("{}/{}/held", job.job_id, job.attempt);
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

/// One job: attempt, publish the result, then ack. Progress acks keep the
/// job ours while the attempt runs.
async fn handle(ctx: Arc<Ctx>, msg: jetstream::Message, _permit: OwnedSemaphorePermit) {
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
        let results = run_attempt(&ctx, &job).await;
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
            if let Err(e) = msg.double_ack().await {
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
        let mut tick = tokio::time::interval(ACK_WAIT / 3);
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

async fn run_attempt(ctx: &Ctx, job: &Job) -> Vec<tern_proto::RecipientResult> {
    let env = attempt::Env {
        resolver: ctx.resolver.clone(),
        port: ctx.config.remote_smtp_port,
        helo: &ctx.config.common.hostname,
        connect_timeout: ctx.config.connect_timeout,
        timeouts: ctx.config.smtp_timeouts,
    };
    let body_ref = job.body.clone().unwrap_or_default();
    attempt::attempt(env, job, || async { body::load(&ctx.js, &body_ref).await }).await
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
