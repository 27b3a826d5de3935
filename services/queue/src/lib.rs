//! The queue service: owns every message after ingress said `250`.
//!
//! - Takes envelopes off the spool and fans each out into one job per
//!   destination (the local mailbox, or each remote domain).
//! - Reads attempt results: delivered and bounced recipients are final;
//!   deferred ones get a new job scheduled for their retry time as a
//!   JetStream message schedule, so waiting jobs use no delivery capacity.
//! - Expires messages past their lifetime, sends RFC 3464 DSNs to the sender
//!   (never to `<>`), publishes lifecycle events, deletes the body once the
//!   last job is final, and serves the admin API (`tern queue ...`).
//!
//! Its state lives in JetStream (streams and the `tern-queue` bucket), so
//! replicas are interchangeable.

mod admin;
mod classify;
mod dsn;
mod events;
mod handle;
mod retry;
mod route;
mod state;
mod suppress;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use tern_proto::queue_admin_server::QueueAdminServer;
use tern_runtime::config::{CommonConfig, ConfigError, Key, Source, endpoints};
use tern_runtime::holds::Holds;
use tern_runtime::worker::{self, Disposition};
use tern_runtime::{Shutdown, body, bus, grpc, service};

pub use dsn::Kind as DsnKind;
pub use retry::RetrySchedule;
pub use route::{Route, fan_out};

/// `TERN_QUEUE_MAX_AGE`.
pub const MAX_AGE: Key<Duration> = Key::new(
    "queue_max_age",
    "5d",
    "age after which an undelivered message expires",
);
/// `TERN_QUEUE_RETRY_SCHEDULE`.
pub const RETRY_SCHEDULE: Key<RetrySchedule> = Key::new(
    "queue_retry_schedule",
    "2m,5m,10m,15m,30m,1h,2h,4h",
    "delays between attempts (±10% jitter); the last repeats",
);
/// `TERN_QUEUE_DELAY_DSN_AFTER`.
pub const DELAY_DSN_AFTER: Key<Option<Duration>> = Key::new(
    "queue_delay_dsn_after",
    "4h",
    "send one delay DSN once a message has waited this long (empty: never)",
);

/// How often queue depth and consumer lag gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

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
    /// Delays between attempts.
    pub retry: RetrySchedule,
    /// When to send a delay DSN, if at all.
    pub delay_dsn_after: Option<Duration>,
    /// Bounce classification rules (and the cluster secret).
    pub bounce: tern_bounce::BounceConfig,
    /// The campaign statistics aggregator and the webhook dispatcher run
    /// beside the queue (crates/stats).
    pub stats: tern_stats::Config,
}

impl Config {
    /// Read the queue's keys.
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        Ok(Config {
            common: CommonConfig::from_source(src)?,
            grpc_listen: src.get(&endpoints::QUEUE_GRPC)?,
            admin_listen: src.get(&endpoints::QUEUE_ADMIN)?,
            max_age: src.get(&MAX_AGE)?,
            retry: src.get(&RETRY_SCHEDULE)?,
            delay_dsn_after: src.get(&DELAY_DSN_AFTER)?,
            bounce: tern_bounce::BounceConfig::from_source(src)?,
            stats: tern_stats::Config::from_source(src)?,
        })
    }
}

/// Errors that stop the queue service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] service::BindError),
    /// The gRPC or admin server failed.
    #[error(transparent)]
    Serve(#[from] service::ServeError),
    /// The body store could not be opened.
    #[error(transparent)]
    Body(#[from] body::BodyError),
    /// Configuration problem found at start.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// NATS setup failed.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
    /// The queue state bucket could not be opened.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The suppression lists could not be loaded.
    #[error(transparent)]
    Suppress(#[from] tern_bounce::SuppressError),
    /// The statistics or webhook bucket or consumer could not be opened.
    #[error(transparent)]
    Stats(#[from] tern_stats::Error),
}

/// The queue with its listeners bound.
pub struct Bound {
    config: Config,
    listeners: service::Listeners,
}

/// Bind the queue's listeners.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    Ok(Bound {
        listeners: service::Listeners::bind(
            ["queue grpc", "queue admin"],
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

/// What the handlers share.
pub(crate) struct Ctx {
    pub js: jetstream::Context,
    pub config: Config,
    pub state: state::State,
    pub holds: Holds,
    pub bodies: body::BodyStore,
    pub suppress: tern_bounce::Suppressions,
}

impl Bound {
    /// Addresses this service listens on.
    pub fn addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        self.listeners.addrs()
    }

    /// Run until shutdown, then finish the messages in hand within the grace period.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        let Bound { config, listeners } = self;
        let mut running = listeners.start(&shutdown);
        let stop = running.stopping();
        let (reporter, health) = grpc::health();
        // Start-up waits for NATS and JetStream; a shutdown during that wait
        // is a clean exit, not an error.
        let init = async {
            let client = bus::connect(
                config.common.require_nats_url()?,
                &config.common.nats_security,
                "tern-queue",
            )
            .await?;
            let js = jetstream::new(client.clone());
            bus::ensure_streams_until_ready(&js, config.common.nats_replicas, &shutdown).await?;
            let ctx = Arc::new(Ctx {
                state: state::State::open(&js, client).await?,
                holds: Holds::watch(&js, stop.clone()).await?,
                bodies: body::BodyStore::open(&js).await?,
                suppress: tern_bounce::Suppressions::open(
                    &js,
                    config.common.nats_replicas,
                    stop.clone(),
                )
                .await?,
                js: js.clone(),
                config,
            });
            let spool = bus::pull_consumer_until_ready(
                &js,
                bus::SPOOL_STREAM,
                bus::consumers::QUEUE_SPOOL,
                bus::SPOOL_SUBJECT,
                ACK_WAIT,
                &shutdown,
            )
            .await?;
            let results = bus::pull_consumer_until_ready(
                &js,
                bus::RESULTS_STREAM,
                bus::consumers::QUEUE_RESULTS,
                bus::RESULTS_FILTER,
                ACK_WAIT,
                &shutdown,
            )
            .await?;
            // Events feed campaign statistics on their own consumer, so a
            // slow stats bucket never holds up spool or results.
            let stats = tern_stats::Aggregator::open(
                &js,
                ctx.config.common.nats_replicas,
                &ctx.config.stats,
            )
            .await?;
            // Webhooks likewise: a dead receiver only holds up its own consumer.
            let hooks = tern_stats::Dispatcher::open(
                &js,
                ctx.config.common.nats_replicas,
                &ctx.config.stats,
            )
            .await?;
            Ok::<_, Error>((ctx, spool, results, stats, hooks))
        };
        let (ctx, spool, results, stats, hooks) = match init.await {
            Ok(v) => v,
            Err(e) if shutdown.is_triggered() => {
                tracing::info!(error = %e, "stopped before the queue was ready");
                running.finish().await?;
                return Ok(());
            }
            Err(e) => {
                let _ = running.finish().await;
                return Err(e);
            }
        };
        let routes = tonic::service::Routes::new(health)
            .add_service(QueueAdminServer::new(admin::Admin(ctx.clone())));
        running.serve_grpc(routes);
        reporter
            .set_serving::<QueueAdminServer<admin::Admin>>()
            .await;
        running.ready.set(true);
        tracing::info!("queue ready");

        tokio::spawn(admin::export_gauges(
            ctx.clone(),
            GAUGE_INTERVAL,
            stop.clone(),
        ));
        let spool_loop = tokio::spawn(consume(spool, shutdown.clone(), ctx.clone(), Kind::Spool));
        let results_loop = tokio::spawn(consume(
            results,
            shutdown.clone(),
            ctx.clone(),
            Kind::Results,
        ));
        let stats_stop = shutdown.clone();
        let stats_loop = tokio::spawn(async move { stats.run(&stats_stop).await });
        let hooks_stop = shutdown.clone();
        let hooks_loop = tokio::spawn(async move { hooks.run(&hooks_stop).await });
        // The loops stop pulling at shutdown and finish the messages in
        // hand within the grace.
        let _ = spool_loop.await;
        let _ = stats_loop.await;
        let _ = hooks_loop.await;
        let _ = results_loop.await;
        running.finish().await?;
        Ok(())
    }
}

/// The consumers' ack wait: a message not settled by then is redelivered.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Messages each consumer holds at most (pulled in batches, handled one
/// after the other).
const PREFETCH: usize = 64;

#[derive(Clone, Copy)]
enum Kind {
    Spool,
    Results,
}

/// Handle one consumer's messages one after the other until shutdown; each
/// is acked only after its work is durable, redelivered after a failure
/// that may pass, and dropped (terminated, counted) when it cannot be read.
async fn consume(consumer: PullConsumer, shutdown: Shutdown, ctx: Arc<Ctx>, kind: Kind) {
    let options = worker::Options {
        prefetch: PREFETCH,
        ..worker::Options::new(1, ACK_WAIT, ctx.config.common.shutdown_grace)
    };
    worker::worker(consumer, options, &shutdown, move |msg| {
        let ctx = ctx.clone();
        async move {
            let outcome = match kind {
                Kind::Spool => handle::spool(&ctx, &msg).await,
                Kind::Results => handle::result(&ctx, &msg).await,
            };
            match outcome {
                Ok(()) => Disposition::Ack,
                Err(e) => {
                    let disposition = e.disposition();
                    if disposition == Disposition::Term {
                        let input = match kind {
                            Kind::Spool => "spool",
                            Kind::Results => "results",
                        };
                        tracing::error!(error = %e, input, "cannot be handled; dropping it");
                        metrics::counter!("tern_queue_dropped_total", "input" => input)
                            .increment(1);
                    } else {
                        tracing::warn!(error = %e, "handling failed; will be redelivered");
                    }
                    disposition
                }
            }
        }
    })
    .await;
}
