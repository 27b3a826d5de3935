//! The webhook dispatcher: its own durable consumer (`webhooks`) of every
//! lifecycle event, so a slow or dead receiver never holds up the queue.
//!
//! Events are pulled in batches (up to [`DISPATCH_BATCH`] or
//! [`BATCH_WAIT`]), grouped per webhook of the event's tenant that wants the
//! kind ([`plan`]), and POSTed as one signed JSON array per webhook. An
//! event is acked once every webhook that wants it answered `2xx`; otherwise
//! it is nak'd with a delay that doubles per delivery from
//! `TERN_WEBHOOK_RETRY_MIN` up to [`RETRY_MAX`], so JetStream holds it
//! until then. An event first published longer than `TERN_WEBHOOK_MAX_AGE`
//! (24 h) ago is dropped and counted in `tern_webhook_dropped_total`.
//!
//! Delivery is at least once: the webhooks an event already reached are
//! remembered in this process while it is retried for another, but a
//! restart or another replica picking up the redelivery sends it again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use prost::Message as _;
use tern_proto::Event;
use tern_runtime::{Shutdown, bus};

use crate::hooks::{Registry, Webhook};
use crate::{Config, Error, post, webhook};

/// The dispatcher's durable consumer.
pub const DISPATCH_CONSUMER: &str = "webhooks";
/// Events pulled at once, and so the most one POST carries.
pub const DISPATCH_BATCH: usize = 100;
/// How long a pull waits to fill a batch.
pub const BATCH_WAIT: Duration = Duration::from_millis(500);
/// The longest nak delay between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(3600);
/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// Ack wait: longer than the POSTs of one batch take.
const ACK_WAIT: Duration = Duration::from_secs(60);
/// Unacked events at most (waiting retries included); beyond it the
/// dispatcher waits, the queue does not.
const MAX_ACK_PENDING: i64 = 10_000;
/// POSTs in flight at once.
const POST_CONCURRENCY: usize = 8;
/// Pause after a failed pull or registry read.
const PAUSE: Duration = Duration::from_secs(1);

/// Group `events` per webhook that wants them: (webhook index, event
/// indices), skipping pairs in `done` (already delivered). Pure.
pub fn plan(
    events: &[(u64, Event)],
    hooks: &[Webhook],
    done: &HashMap<u64, HashSet<String>>,
) -> BTreeMap<usize, Vec<usize>> {
    let mut out: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, (seq, e)) in events.iter().enumerate() {
        if e.tenant.is_empty() {
            continue;
        }
        for (h, hook) in hooks.iter().enumerate() {
            let sent = done.get(seq).is_some_and(|d| d.contains(&hook.id));
            if hook.wants(&e.tenant, &e.kind) && !sent {
                out.entry(h).or_default().push(i);
            }
        }
    }
    out
}

/// The nak delay before delivery `n + 1` (after `n` deliveries): `min`
/// doubled per earlier delivery, at most [`RETRY_MAX`]. Pure.
pub fn backoff(min: Duration, delivered: i64) -> Duration {
    let doublings = delivered.saturating_sub(1).clamp(0, 20) as u32;
    min.saturating_mul(1 << doublings).min(RETRY_MAX)
}

/// The dispatcher; [`Dispatcher::run`] it beside the queue.
pub struct Dispatcher {
    consumer: consumer::PullConsumer,
    registry: Registry,
    retry_min: Duration,
    max_age: Duration,
    /// Verifies https receivers.
    tls: Arc<rustls::ClientConfig>,
    /// Per stream sequence being retried: the webhooks it already reached.
    done: Mutex<HashMap<u64, HashSet<String>>>,
}

/// The TLS client for https webhooks: the WebPKI verifier over the
/// configured roots (validated at start by [`Config::from_source`]).
fn webhook_tls(config: &Config) -> Result<Arc<rustls::ClientConfig>, Error> {
    let roots = tern_runtime::tls::roots(config.webhook_ca_file.as_deref())
        .map_err(|e| Error::Setup(format!("TERN_WEBHOOK_CA_FILE: {e}")))?;
    tern_runtime::tls::verified_config(Arc::new(roots))
        .map_err(|e| Error::Setup(format!("webhook TLS: {e}")))
}

impl Dispatcher {
    /// Open the registry and the durable consumer (creating them with
    /// `replicas` copies if missing). `TERN_EVENTS` must exist.
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
        config: &Config,
    ) -> Result<Self, Error> {
        let registry = Registry::open(js, replicas)
            .await
            .map_err(|e| Error::Setup(e.to_string()))?;
        let stream = js
            .get_stream(bus::EVENTS_STREAM)
            .await
            .map_err(|e| Error::Setup(format!("stream {}: {e}", bus::EVENTS_STREAM)))?;
        let consumer = stream
            .get_or_create_consumer(
                DISPATCH_CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(DISPATCH_CONSUMER.into()),
                    filter_subject: bus::EVENTS_FILTER.into(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_deliver: -1,
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| Error::Setup(format!("consumer {DISPATCH_CONSUMER}: {e}")))?;
        Ok(Dispatcher {
            consumer,
            registry,
            retry_min: config.webhook_retry_min,
            max_age: config.webhook_max_age,
            tls: webhook_tls(config)?,
            done: Mutex::new(HashMap::new()),
        })
    }

    /// Deliver events until `shutdown`; a batch in hand is finished.
    pub async fn run(self, shutdown: &Shutdown) {
        while !shutdown.is_triggered() {
            let pulled = tokio::select! {
                b = self.pull() => b,
                _ = shutdown.wait() => break,
            };
            match pulled {
                Ok(msgs) if msgs.is_empty() => {}
                Ok(msgs) => self.handle(msgs).await,
                Err(e) => {
                    tracing::warn!(error = %e, "pulling events for webhooks failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(PAUSE) => {}
                        _ = shutdown.wait() => break,
                    }
                }
            }
        }
    }

    async fn pull(&self) -> Result<Vec<jetstream::Message>, Error> {
        let mut batch = self
            .consumer
            .batch()
            .max_messages(DISPATCH_BATCH)
            .expires(BATCH_WAIT)
            .messages()
            .await
            .map_err(|e| Error::Setup(format!("pull: {e}")))?;
        let mut out = Vec::new();
        while let Some(m) = batch.next().await {
            match m {
                Ok(m) => out.push(m),
                Err(e) => tracing::debug!(error = %e, "pull request ended"),
            }
        }
        Ok(out)
    }

    /// POST the batch to every webhook that wants part of it, then settle
    /// each event: ack, nak with backoff, or drop when too old.
    async fn handle(&self, msgs: Vec<jetstream::Message>) {
        let mut events = Vec::with_capacity(msgs.len());
        let mut keep = Vec::with_capacity(msgs.len());
        for m in msgs {
            let info = m.info().ok().map(|i| {
                let age_s = unix_s().saturating_sub(i.published.unix_timestamp().max(0) as u64);
                (i.stream_sequence, i.delivered, age_s)
            });
            match info.zip(Event::decode(m.payload.clone()).ok()) {
                Some(((seq, delivered, age_s), e)) => {
                    events.push((seq, e));
                    keep.push((m, delivered, age_s));
                }
                None => {
                    tracing::error!(subject = %m.subject, "undecodable event; no webhook gets it");
                    let _ = m.ack_with(AckKind::Term).await;
                }
            }
        }
        let hooks = match self.registry.all().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "webhook registry unreadable; batch retried");
                for (m, _, _) in keep {
                    let _ = m.ack_with(AckKind::Nak(Some(PAUSE))).await;
                }
                return;
            }
        };
        let failed = self.deliver(&events, &hooks).await;
        for ((m, delivered, age_s), (seq, _)) in keep.into_iter().zip(&events) {
            let settle = if !failed.contains(seq) {
                AckKind::Ack
            } else if age_s >= self.max_age.as_secs() {
                tracing::warn!(seq, "webhook event older than the retry limit; dropped");
                ::metrics::counter!("tern_webhook_dropped_total").increment(1);
                AckKind::Term
            } else {
                AckKind::Nak(Some(backoff(self.retry_min, delivered)))
            };
            if !matches!(settle, AckKind::Nak(_)) {
                self.lock_done().remove(seq);
            }
            if let Err(e) = m.ack_with(settle).await {
                tracing::warn!(error = %e, "settling a webhook event failed; it is redelivered");
            }
        }
    }

    /// POST each webhook its events; the stream sequences of events some
    /// webhook did not take (the ones it did are remembered in `done`).
    async fn deliver(&self, events: &[(u64, Event)], hooks: &[Webhook]) -> HashSet<u64> {
        let plan = plan(events, hooks, &self.lock_done());
        let posts: Vec<_> = plan
            .into_iter()
            .map(|(h, idx)| {
                let hook = &hooks[h];
                let batch: Vec<Event> = idx.iter().map(|&i| events[i].1.clone()).collect();
                async move {
                    let body = webhook::body(&batch);
                    let sig = webhook::signature(hook.secret.as_bytes(), unix_s(), &body);
                    let r = post::post(&hook.url, &body, &sig, POST_TIMEOUT, &self.tls).await;
                    (hook, idx, r)
                }
            })
            .collect();
        let results: Vec<_> = futures::stream::iter(posts)
            .buffer_unordered(POST_CONCURRENCY)
            .collect()
            .await;
        let mut failed = HashSet::new();
        let mut done = self.lock_done();
        for (hook, idx, r) in results {
            let result = if r.is_ok() { "ok" } else { "failed" };
            ::metrics::counter!("tern_webhook_deliveries_total", "result" => result).increment(1);
            match r {
                Ok(()) => {
                    for i in idx {
                        done.entry(events[i].0).or_default().insert(hook.id.clone());
                    }
                }
                Err(e) => {
                    tracing::info!(webhook = %hook.id, error = %e, "webhook delivery failed; retried");
                    failed.extend(idx.iter().map(|&i| events[i].0));
                }
            }
        }
        failed
    }

    fn lock_done(&self) -> std::sync::MutexGuard<'_, HashMap<u64, HashSet<String>>> {
        // A poisoned map only loses the dedup hint; delivery stays at least once.
        self.done.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(id: &str, tenant: &str, events: &[&str]) -> Webhook {
        Webhook {
            id: id.into(),
            tenant: tenant.into(),
            url: "http://127.0.0.1:9/".into(),
            secret: "s".into(),
            events: events.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn ev(tenant: &str, kind: &str) -> Event {
        Event {
            tenant: tenant.into(),
            kind: kind.into(),
            ..Default::default()
        }
    }

    #[test]
    fn events_go_only_to_their_tenants_webhooks_that_want_the_kind() {
        let hooks = [
            hook("a", "acme", &[]),
            hook("b", "acme", &["bounced"]),
            hook("g", "globex", &[]),
        ];
        let events = [
            (1, ev("acme", "delivered")),
            (2, ev("acme", "bounced")),
            (3, ev("globex", "delivered")),
            (4, ev("", "delivered")),
        ];
        let mut done = HashMap::new();
        let p = plan(&events, &hooks, &done);
        assert_eq!(p.get(&0), Some(&vec![0, 1]));
        assert_eq!(p.get(&1), Some(&vec![1]));
        assert_eq!(p.get(&2), Some(&vec![2]));
        // A retry skips the webhooks an event already reached.
        done.insert(2, HashSet::from(["a".to_string()]));
        assert_eq!(plan(&events, &hooks, &done).get(&0), Some(&vec![0]));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs(10);
        assert_eq!(backoff(s, 1), s);
        assert_eq!(backoff(s, 2), 2 * s);
        assert_eq!(backoff(s, 4), 8 * s);
        assert_eq!(backoff(s, 1000), RETRY_MAX);
    }
}
