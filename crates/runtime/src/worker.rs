//! The one consumer loop: pull messages from a durable JetStream consumer,
//! run a handler on each (at most `concurrency` at once), and settle each
//! message with what the handler decided — ack, nak with a delay, or term.
//!
//! Queue (spool and results), mailbox and delivery all consume through it,
//! so batching, progress acks, redelivery on shutdown and the drain deadline
//! behave the same everywhere.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

use crate::Shutdown;

/// What to do with a message once its handler is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done: remove it (work queue) or move past it.
    Ack,
    /// Not now: redeliver it after the delay (`None`: at once, to any consumer).
    Nak(Option<Duration>),
    /// Never: it cannot be handled (undecodable); do not redeliver.
    Term,
}

/// How a [`worker`] consumes.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Handlers running at once (1: one message after the other, in order).
    pub concurrency: usize,
    /// Messages held by this process at most: running ones plus those
    /// waiting locally for a handler, so pulls can be batched without
    /// handlers idling while a pull is under way.
    pub prefetch: usize,
    /// The consumer's ack wait: a running handler sends a progress ack
    /// every third of it, so a long handler keeps its message.
    pub ack_wait: Duration,
    /// How long in-flight handlers may run on after shutdown begins; then
    /// they are abandoned and their messages handed back.
    pub grace: Duration,
}

impl Options {
    /// `concurrency` handlers with twice as many messages held.
    pub fn new(concurrency: usize, ack_wait: Duration, grace: Duration) -> Self {
        let concurrency = concurrency.max(1);
        Options {
            concurrency,
            prefetch: concurrency * 2,
            ack_wait,
            grace,
        }
    }
}

/// How long one pull request waits for messages before asking again.
const FETCH_EXPIRES: Duration = Duration::from_secs(1);
/// How long the puller waits to fill a bigger pull while messages are still
/// held locally (so handlers do not idle meanwhile).
const BATCH_GATHER: Duration = Duration::from_millis(10);
/// Wait after a failed pull request.
const PULL_RETRY: Duration = Duration::from_millis(500);
/// After the grace, how long abandoned handlers get to hand their messages back.
const ABANDON_WAIT: Duration = Duration::from_secs(2);

/// Consume `consumer` until `shutdown`, running `handler` on every message
/// and settling it with the returned [`Disposition`]; then stop pulling, let
/// running handlers finish within `options.grace`, hand back the rest
/// (nak), and return. Messages that arrive after shutdown began are handed
/// back at once.
///
/// Acks are plain publishes: the caller flushes the NATS connection before
/// closing it.
pub async fn worker<H, F>(consumer: PullConsumer, options: Options, shutdown: &Shutdown, handler: H)
where
    H: Fn(jetstream::Message) -> F + Send + Sync + 'static,
    F: Future<Output = Disposition> + Send + 'static,
{
    let handler = Arc::new(handler);
    let running = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let held = Arc::new(Semaphore::new(
        options.prefetch.max(options.concurrency).max(1),
    ));
    let min_batch = (options.prefetch / 4).max(1);
    let abandon = Shutdown::new();
    let tracker = TaskTracker::new();
    while let Some(mut permits) = take_permits(&held, min_batch, shutdown).await {
        let batch = consumer
            .batch()
            .max_messages(permits.len())
            .expires(FETCH_EXPIRES)
            .messages()
            .await;
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "pulling messages failed; retrying");
                drop(permits);
                tokio::select! {
                    _ = tokio::time::sleep(PULL_RETRY) => continue,
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
            match permits.pop() {
                Some(permit) if !shutdown.is_triggered() => {
                    tracker.spawn(run_one(
                        msg,
                        permit,
                        running.clone(),
                        handler.clone(),
                        options.ack_wait,
                        shutdown.clone(),
                        abandon.clone(),
                    ));
                }
                _ => {
                    // Shutting down: straight back for another consumer.
                    let _ = msg.ack_with(AckKind::Nak(None)).await;
                }
            }
        }
    }
    tracing::info!(in_flight = tracker.len(), grace = ?options.grace, "consumer draining");
    if !crate::shutdown::drain(&tracker, options.grace).await {
        abandon.trigger();
        let _ = tokio::time::timeout(ABANDON_WAIT, tracker.wait()).await;
    }
}

/// Wait for at least one free slot, then take every free one, waiting a
/// moment for `min_batch` if fewer are free (fewer free means that many
/// messages are still held here: waiting costs no work). `None` on shutdown.
async fn take_permits(
    held: &Arc<Semaphore>,
    min_batch: usize,
    shutdown: &Shutdown,
) -> Option<Vec<OwnedSemaphorePermit>> {
    let first = tokio::select! {
        p = held.clone().acquire_owned() => p.ok()?,
        _ = shutdown.wait() => return None,
    };
    let mut permits = vec![first];
    while let Ok(p) = held.clone().try_acquire_owned() {
        permits.push(p);
    }
    if permits.len() < min_batch {
        let gather = tokio::time::sleep(BATCH_GATHER);
        tokio::pin!(gather);
        while permits.len() < min_batch {
            tokio::select! {
                p = held.clone().acquire_owned() => match p {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                },
                _ = &mut gather => break,
                _ = shutdown.wait() => break,
            }
        }
    }
    Some(permits)
}

/// One message: wait for a handler slot, run the handler with progress acks
/// keeping the message ours, and settle it.
async fn run_one<H, F>(
    msg: jetstream::Message,
    _held: OwnedSemaphorePermit,
    running: Arc<Semaphore>,
    handler: Arc<H>,
    ack_wait: Duration,
    shutdown: Shutdown,
    abandon: Shutdown,
) where
    H: Fn(jetstream::Message) -> F + Send + Sync + 'static,
    F: Future<Output = Disposition> + Send + 'static,
{
    let _running = tokio::select! {
        r = running.acquire_owned() => r,
        _ = shutdown.wait() => {
            // Shutting down before it started: back for another process.
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            return;
        }
    };
    let keepalive = async {
        let mut tick = tokio::time::interval((ack_wait / 3).max(Duration::from_millis(100)));
        tick.tick().await;
        loop {
            tick.tick().await;
            let _ = msg.ack_with(AckKind::Progress).await;
        }
    };
    let disposition = tokio::select! {
        d = handler(msg.clone()) => d,
        _ = keepalive => unreachable_keepalive(),
        _ = abandon.wait() => {
            tracing::warn!("handler abandoned at the end of the shutdown grace");
            Disposition::Nak(None)
        }
    };
    settle(&msg, disposition).await;
}

/// The keepalive loop never ends; this names the arm's type.
fn unreachable_keepalive() -> Disposition {
    Disposition::Nak(None)
}

/// Ack, nak or term `msg`. A failed ack only means a redelivery, which
/// every handler tolerates (at-least-once).
async fn settle(msg: &jetstream::Message, disposition: Disposition) {
    let result = match disposition {
        // A plain ack, not a double ack: waiting for the server to confirm
        // costs a round trip per message, and an ack lost with the
        // connection means a redelivery after the ack wait.
        Disposition::Ack => msg.ack().await,
        Disposition::Nak(delay) => msg.ack_with(AckKind::Nak(delay)).await,
        Disposition::Term => msg.ack_with(AckKind::Term).await,
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, ?disposition, "settling a message failed; it may be redelivered");
    }
}
