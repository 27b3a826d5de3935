//! The write side: one durable consumer of every event, batched counter
//! writes with compare-and-set (see the crate docs for the guarantee).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, kv};
use futures::StreamExt;
use prost::Message as _;
use tern_proto::Event;
use tern_runtime::{Shutdown, bus};

use crate::counts::{self, Entry, Increment};
use crate::metrics::Labels;
use crate::pause::{self, Breaker, PauseRecord, PauseState, Totals};
use crate::read::{open_bucket, read_entry};
use crate::{CONSUMER, Config, Error, key};

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
    js: jetstream::Context,
    kv: kv::Store,
    pauses: kv::Store,
    consumer: consumer::PullConsumer,
    labels: Labels,
    breaker: Breaker,
}

impl Aggregator {
    /// Open the bucket and the durable consumer (creating them with
    /// `replicas` copies if missing). `TERN_EVENTS` and the pauses bucket
    /// must exist (`bus::ensure_streams`).
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
            js: js.clone(),
            kv,
            pauses: pause::bucket(js).await?,
            consumer,
            labels: Labels::new(config.max_campaigns),
            breaker: config.breaker,
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
        let results: Vec<Result<Written, Error>> = futures::stream::iter(writes)
            .buffer_unordered(WRITE_CONCURRENCY)
            .collect()
            .await;
        let mut applied = BTreeSet::new();
        let mut entries = BTreeMap::new();
        for r in results {
            match r {
                Ok(w) => {
                    applied.extend(w.seqs);
                    entries.insert(w.key, w.entry);
                }
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
        self.judge(&events, &entries).await;
    }

    /// Rates and the breaker for every campaign of the batch, from the
    /// lifetime totals just written. A failed pause is logged and tried
    /// again with the campaign's next batch (the totals only grow).
    async fn judge(&self, events: &[(u64, Event)], entries: &BTreeMap<String, Entry>) {
        let campaigns: BTreeSet<(&str, &str)> = events
            .iter()
            .filter(|(_, e)| !e.tenant.is_empty())
            .map(|(_, e)| (e.tenant.as_str(), e.campaign.as_str()))
            .collect();
        for (tenant, campaign) in campaigns {
            let Some(entry) = entries.get(&key::totals_key(tenant, campaign)) else {
                continue;
            };
            let totals = Totals::from_counts(&entry.counts);
            self.labels.rates(tenant, campaign, &totals);
            if let Err(e) = self.maybe_pause(tenant, campaign, &totals).await {
                tracing::warn!(error = %e, tenant, campaign, "complaint breaker check failed");
            }
        }
    }

    /// Pause the campaign if the breaker trips; only the replica whose
    /// compare-and-set wins publishes the event.
    async fn maybe_pause(
        &self,
        tenant: &str,
        campaign: &str,
        totals: &Totals,
    ) -> Result<(), Error> {
        if campaign.is_empty() || self.breaker.rate.0 == 0 {
            return Ok(());
        }
        let current = pause::record(&self.pauses, tenant, campaign).await?;
        let (record, revision) = match &current {
            Some((r, rev)) => (Some(r), *rev),
            None => (None, 0),
        };
        if !self.breaker.trips(campaign, totals, record) {
            return Ok(());
        }
        let next = PauseRecord {
            tenant: tenant.to_string(),
            campaign: campaign.to_string(),
            state: PauseState::Paused,
            at_unix_ms: tern_runtime::now_unix_ms(),
            delivered: totals.delivered,
            complained: totals.complained,
            threshold_ppm: self.breaker.rate.0,
        };
        if !pause::swap(&self.pauses, &next, revision).await? {
            return Ok(());
        }
        tracing::warn!(
            tenant,
            campaign,
            delivered = totals.delivered,
            complained = totals.complained,
            "complaint rate above the breaker's threshold; campaign paused"
        );
        ::metrics::counter!("tern_campaign_pauses_total").increment(1);
        let event = pause::paused_event(&next);
        let id = format!(
            "{}/{}/{}/{revision}",
            pause::PAUSED_EVENT,
            key::pair(tenant, campaign),
            next.at_unix_ms
        );
        let published = bus::Publish::new(
            bus::event_subject(pause::PAUSED_EVENT),
            event.encode_to_vec().into(),
            id,
        )
        .durable(&self.js)
        .await;
        if let Err(e) = published {
            tracing::warn!(error = %e, tenant, campaign, "campaign_paused event not published");
        }
        Ok(())
    }

    /// Nak a batch for redelivery (whatever of it was written is skipped then).
    async fn give_back(&self, msgs: Vec<jetstream::Message>) {
        for m in msgs {
            let _ = m.ack_with(AckKind::Nak(Some(RETRY_DELAY))).await;
        }
    }

    /// Apply `incs` to `key` with compare-and-set.
    async fn write(&self, key: &str, incs: &[Increment], ack_floor: u64) -> Result<Written, Error> {
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
            let written = Written {
                key: key.to_string(),
                seqs,
                entry: next,
            };
            if n == 0 {
                return Ok(written);
            }
            let next = &written.entry;
            let value = serde_json::to_vec(&next).map_err(|e| store(e.to_string()))?;
            let stored = if revision == 0 {
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
            stored?;
            return Ok(written);
        }
        Err(store("too many concurrent writers".into()))
    }
}

/// One key's write: the sequences counted into it and the entry as stored.
struct Written {
    key: String,
    seqs: Vec<u64>,
    entry: Entry,
}
