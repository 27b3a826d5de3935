//! The queue service: takes accepted envelopes off the spool, fans each out
//! into one job per destination (the local mailbox, or each remote domain),
//! and collects the results delivery and mailbox report back.
//!
//! Its state lives in JetStream, so replicas are interchangeable: the spool
//! and results consumers are durable and shared, and jobs are published with
//! a stable id as the de-duplication id, so a redelivered envelope does not
//! make a second job.

mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use prost::Message as _;
use tern_proto::queue_admin_server::{QueueAdmin, QueueAdminServer};
use tern_proto::{Envelope, JobResult, Outcome, StatsRequest, StatsResponse};
use tern_runtime::config::{CommonConfig, ConfigError, Source, endpoints};
use tern_runtime::{Shutdown, admin, bus, grpc, telemetry};
use tokio::net::TcpListener;
use tracing::Instrument;

pub use route::{Route, fan_out};

/// Queue configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared settings.
    pub common: CommonConfig,
    /// gRPC listen address (admin API and health).
    pub grpc_listen: SocketAddr,
    /// Admin HTTP listen address.
    pub admin_listen: SocketAddr,
    /// How long a message may stay in the queue before it expires.
    pub max_age: Duration,
}

/// `TERN_QUEUE_MAX_AGE`.
pub const MAX_AGE: tern_runtime::config::Key<Duration> = tern_runtime::config::Key::new(
    "queue_max_age",
    "5d",
    "age after which an undelivered message expires",
);

impl Config {
    /// Read the queue's keys.
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        Ok(Config {
            common: CommonConfig::from_source(src)?,
            grpc_listen: src.get(&endpoints::QUEUE_GRPC)?,
            admin_listen: src.get(&endpoints::QUEUE_ADMIN)?,
            max_age: src.get(&MAX_AGE)?,
        })
    }
}

/// Errors that stop the queue service.
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
    /// The gRPC server failed.
    #[error(transparent)]
    Grpc(#[from] grpc::GrpcError),
}

/// The queue with its listeners bound.
pub struct Bound {
    config: Config,
    grpc: TcpListener,
    admin: TcpListener,
}

/// Bind the queue's listeners.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { what, addr, source })
    };
    Ok(Bound {
        grpc: bind("queue gRPC", config.grpc_listen).await?,
        admin: bind("queue admin", config.admin_listen).await?,
        config,
    })
}

/// Bind and run until shutdown.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

/// Counters behind the admin `Stats` call.
#[derive(Debug, Default)]
struct Stats {
    received: AtomicU64,
    jobs_routed: AtomicU64,
    delivered: AtomicU64,
    deferred: AtomicU64,
    bounced: AtomicU64,
}

struct Admin(Arc<Stats>);

#[tonic::async_trait]
impl QueueAdmin for Admin {
    async fn stats(
        &self,
        _: tonic::Request<StatsRequest>,
    ) -> Result<tonic::Response<StatsResponse>, tonic::Status> {
        let s = &self.0;
        Ok(tonic::Response::new(StatsResponse {
            received: s.received.load(Ordering::Relaxed),
            jobs_routed: s.jobs_routed.load(Ordering::Relaxed),
            delivered: s.delivered.load(Ordering::Relaxed),
            deferred: s.deferred.load(Ordering::Relaxed),
            bounced: s.bounced.load(Ordering::Relaxed),
        }))
    }
}

impl Bound {
    /// Addresses this service listens on.
    pub fn addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        [("queue grpc", &self.grpc), ("queue admin", &self.admin)]
            .into_iter()
            .filter_map(|(n, l)| l.local_addr().ok().map(|a| (n, a)))
            .collect()
    }

    /// Run until shutdown, then finish in-flight messages within the grace period.
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

        let stats = Arc::new(Stats::default());
        let (reporter, health) = grpc::health();
        let routes = tonic::service::Routes::new(health)
            .add_service(QueueAdminServer::new(Admin(stats.clone())));
        let grpc_task = tokio::spawn(grpc::serve(grpc, routes, stop.clone()));

        let client = bus::connect(config.common.require_nats_url()?, "tern-queue").await?;
        let js = jetstream::new(client);
        bus::ensure_streams_until_ready(&js, config.common.nats_replicas, &shutdown).await?;
        let spool = bus::pull_consumer(
            &js,
            bus::SPOOL_STREAM,
            bus::consumers::QUEUE_SPOOL,
            bus::SPOOL_SUBJECT,
            Duration::from_secs(30),
        )
        .await?;
        let results = bus::pull_consumer(
            &js,
            bus::RESULTS_STREAM,
            bus::consumers::QUEUE_RESULTS,
            bus::RESULTS_FILTER,
            Duration::from_secs(30),
        )
        .await?;
        reporter.set_serving::<QueueAdminServer<Admin>>().await;
        ready.set(true);
        tracing::info!("queue ready");

        let ctx = Arc::new(Ctx { js, config, stats });
        let spool_loop = tokio::spawn(consume(spool, shutdown.clone(), ctx.clone(), Kind::Spool));
        let results_loop = tokio::spawn(consume(
            results,
            shutdown.clone(),
            ctx.clone(),
            Kind::Results,
        ));
        shutdown.wait().await;
        // The consume loops stop pulling at shutdown and finish the message in hand.
        let grace = ctx.config.common.shutdown_grace;
        let _ = tokio::time::timeout(grace, async {
            let _ = spool_loop.await;
            let _ = results_loop.await;
        })
        .await;
        stop.trigger();
        let _ = admin_task.await;
        if let Ok(r) = grpc_task.await {
            r?;
        }
        Ok(())
    }
}

struct Ctx {
    js: jetstream::Context,
    config: Config,
    stats: Arc<Stats>,
}

#[derive(Clone, Copy)]
enum Kind {
    Spool,
    Results,
}

/// Pull messages one batch at a time until shutdown; each is acked only after
/// its work is durable, and left for redelivery otherwise.
async fn consume(consumer: PullConsumer, shutdown: Shutdown, ctx: Arc<Ctx>, kind: Kind) {
    while !shutdown.is_triggered() {
        let batch = consumer
            .fetch()
            .max_messages(64)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "fetch failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    _ = shutdown.wait() => return,
                }
            }
        };
        while let Some(msg) = batch.next().await {
            let Ok(msg) = msg else { continue };
            let outcome = match kind {
                Kind::Spool => handle_spool(&ctx, &msg).await,
                Kind::Results => handle_result(&ctx, &msg).await,
            };
            match outcome {
                Ok(()) => {
                    if let Err(e) = msg.ack().await {
                        tracing::warn!(error = %e, "ack failed; the message will be redelivered");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "handling failed; will be redelivered");
                    let _ = msg
                        .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(5))))
                        .await;
                }
            }
        }
    }
}

async fn handle_spool(ctx: &Ctx, msg: &jetstream::Message) -> Result<(), String> {
    let env = match Envelope::decode(msg.payload.clone()) {
        Ok(e) => e,
        Err(e) => {
            // Not ours to fix by retrying: acknowledge so it does not loop forever.
            tracing::error!(error = %e, "undecodable envelope on the spool; dropping");
            return Ok(());
        }
    };
    let seq = msg.info().map_err(|e| e.to_string())?.stream_sequence;
    let span = tracing::info_span!("queue.route", message_id = %env.id, rcpts = env.rcpts.len());
    telemetry::link_nats_parent(&span, msg.headers.as_ref());
    async {
        let expires = env.received_at_unix_ms + ctx.config.max_age.as_millis() as i64;
        let routes = fan_out(&env, seq, expires, |d| ctx.config.common.is_local_domain(d));
        let mut acks = Vec::with_capacity(routes.len());
        for Route { subject, job } in &routes {
            let ack = bus::publish(
                &ctx.js,
                subject.clone(),
                job.encode_to_vec().into(),
                &job.job_id,
            )
            .await
            .map_err(|e| e.to_string())?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| e.to_string())?;
        }
        ctx.stats.received.fetch_add(1, Ordering::Relaxed);
        ctx.stats
            .jobs_routed
            .fetch_add(routes.len() as u64, Ordering::Relaxed);
        metrics::counter!("tern_queue_messages_received_total").increment(1);
        metrics::counter!("tern_queue_jobs_routed_total").increment(routes.len() as u64);
        tracing::info!(jobs = routes.len(), "routed");
        Ok(())
    }
    .instrument(span)
    .await
}

async fn handle_result(ctx: &Ctx, msg: &jetstream::Message) -> Result<(), String> {
    let Ok(res) = JobResult::decode(msg.payload.clone()) else {
        tracing::error!("undecodable job result; dropping");
        return Ok(());
    };
    let span = tracing::info_span!("queue.result", message_id = %res.message_id, destination = %res.destination);
    telemetry::link_nats_parent(&span, msg.headers.as_ref());
    let _g = span.enter();
    for r in &res.results {
        let (counter, label) = match Outcome::try_from(r.outcome) {
            Ok(Outcome::Delivered) => (&ctx.stats.delivered, "delivered"),
            Ok(Outcome::Deferred) => (&ctx.stats.deferred, "deferred"),
            Ok(Outcome::Bounced) => (&ctx.stats.bounced, "bounced"),
            _ => continue,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tern_queue_results_total", "outcome" => label).increment(1);
        tracing::info!(rcpt = %r.address, outcome = label, code = r.code, reply = %r.reply, "result");
    }
    Ok(())
}
