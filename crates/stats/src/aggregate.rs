//! The write side: one durable consumer of every event, batched counter
//! writes with compare-and-set (see the crate docs for the guarantee).

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, kv};
use futures::StreamExt;
use prost::Message as _;
use tern_proto::Event;
use tern_runtime::{Shutdown, bus};

use crate::counts::{self, Increment};
use crate::metrics::Labels;
use crate::read::{open_bucket, read_entry};
use crate::{CONSUMER, Config, Error};

/// Events pulled and written as one batch at most.
pub const BATCH: usize = 1000;
/// The consumer's `max_ack_pending`: bounds the unacked events across
/// replicas, and so the applied list an entry keeps.
const MAX_ACK_PENDING: i64 = 4 * BATCH as i64;
/// How long a pull waits to fill a batch.
const PULL_EXPIRES: Duration = Duration::from_millis(500);
/// Ack wait of the consumer: a batch not acked by then is redelivered.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Key writes in flight at once.
const WRITE_CONCURRENCY: usize = 16;
/// Compare-and-set attempts per key before the batch is given back.
const CAS_TRIES: usize = 20;
/// Delay before a batch whose writes failed is redelivered.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The statistics aggregator; [`Aggregator::run`] it beside the queue.
pub struct Aggregator {
    kv: kv::Store,
    consumer: consumer::PullConsumer,
    labels: Labels,
}

impl Aggregator {
    /// Open the bucket and the durable consumer (creating them with
    /// `replicas` copies if missing). `TERN_EVENTS` must exist.
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
        config: &Config,
    ) -> Result<Self, Error> {
        let kv = open_bucket(js, replicas).await?;
        let stream = js
            .get_stream(bus::EVENTS_STREAM)
            .await
            .map_err(|e| Error::Setup(format!("stream {}: {e}", bus::EVENTS_STREAM)))?;
        let consumer = stream
            .get_or_create_consumer(
                CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(CONSUMER.into()),
                    filter_subject: bus::EVENTS_FILTER.into(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_deliver: -1,
                    max_ack_pending: MAX_ACK_PENDING,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| Error::Setup(format!("consumer {CONSUMER}: {e}")))?;
        Ok(Aggregator {
            kv,
            consumer,
            labels: Labels::new(config.max_campaigns),
        })
    }

    /// Count events until `shutdown`. A batch in hand when shutdown begins
    /// is finished (or left unacked, to be redelivered and deduplicated).
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
                    tracing::warn!(error = %e, "pulling events failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_DELAY) => {}
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
            .max_messages(BATCH)
            .expires(PULL_EXPIRES)
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

    /// Decode, write every key, then ack; a failed write gives the whole
    /// batch back for redelivery (the high-water marks skip what was written).
    async fn handle(&self, msgs: Vec<jetstream::Message>) {
        let mut events = Vec::with_capacity(msgs.len());
        let mut keep = Vec::with_capacity(msgs.len());
        for m in msgs {
            let decoded = m
                .info()
                .ok()
                .map(|i| i.stream_sequence)
                .zip(Event::decode(m.payload.clone()).ok());
            match decoded {
                Some((seq, e)) => {
                    events.push((seq, e));
                    keep.push(m);
                }
                None => {
                    tracing::error!(subject = %m.subject, "undecodable event; dropping it");
                    ::metrics::counter!("tern_stats_dropped_total").increment(1);
                    let _ = m.ack_with(AckKind::Term).await;
                }
            }
        }
        // Everything at or below the ack floor was counted everywhere.
        let ack_floor = match self.consumer.get_info().await {
            Ok(info) => info.ack_floor.stream_sequence,
            Err(e) => {
                tracing::warn!(error = %e, "consumer info failed; batch redelivered");
                self.give_back(keep).await;
                return;
            }
        };
        let plan = counts::plan(&events);
        // Owned futures, not a closure over borrows: keeps `run` Send.
        let writes: Vec<_> = plan
            .iter()
            .map(|(k, incs)| self.write(k, incs, ack_floor))
            .collect();
        let results: Vec<Result<Vec<u64>, Error>> = futures::stream::iter(writes)
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        let mut applied = BTreeSet::new();
        for r in results {
            match r {
                Ok(seqs) => applied.extend(seqs),
                Err(e) => {
                    tracing::warn!(error = %e, "writing counters failed; batch redelivered");
                    self.give_back(keep).await;
                    return;
                }
            }
        }
        for m in keep {
            if let Err(e) = m.ack().await {
                tracing::warn!(error = %e, "ack failed; the batch will be deduplicated");
            }
        }
        for (seq, e) in &events {
            // Tenant-less (SMTP) events have no key but still count here.
            if e.tenant.is_empty() || applied.contains(seq) {
                self.labels.record(e);
            }
        }
        ::metrics::counter!("tern_stats_events_total").increment(events.len() as u64);
    }

    /// Nak a batch for redelivery (whatever of it was written is skipped then).
    async fn give_back(&self, msgs: Vec<jetstream::Message>) {
        for m in msgs {
            let _ = m.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
        }
    }

    /// Apply `incs` to `key` with compare-and-set; the sequences applied.
    async fn write(
        &self,
        key: &str,
        incs: &[Increment],
        ack_floor: u64,
    ) -> Result<Vec<u64>, Error> {
        let store = |message: String| Error::Store {
            key: key.to_string(),
            message,
        };
        for _ in 0..CAS_TRIES {
            let current = read_entry(&self.kv, key).await?;
            let (entry, revision) = current.unwrap_or_default();
            let seen = |s: u64| s <= entry.floor || entry.applied.contains(&s);
            let seqs: Vec<u64> = incs.iter().map(|i| i.seq).filter(|s| !seen(*s)).collect();
            let (next, n) = counts::apply(entry, incs, ack_floor);
            if n == 0 {
                return Ok(seqs);
            }
            let value = serde_json::to_vec(&next).map_err(|e| store(e.to_string()))?;
            let written = if revision == 0 {
                match self.kv.create(key, value.into()).await {
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                    r => r.map_err(|e| store(e.to_string())),
                }
            } else {
                match self.kv.update(key, value.into(), revision).await {
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                    r => r.map_err(|e| store(e.to_string())),
                }
            };
            written?;
            return Ok(seqs);
        }
        Err(store("too many concurrent writers".into()))
    }
}
