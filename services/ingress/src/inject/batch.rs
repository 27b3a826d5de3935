//! A batch as one durable unit: its record (state and counts, KV), its spec
//! (template + recipients, one JetStream message) and the worker that
//! expands it into per-recipient messages on the spool, resumable from a
//! cursor.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tern_bounce::token::{self, Secret, UnsubscribeFields, VerpFields};
use tern_proto::{BodyRef, Envelope};
use tern_runtime::worker::{self, Disposition};
use tern_runtime::{Shutdown, body, bus};

use super::render::{Extras, Renderer};
use super::request::{Recipient, Template};
use crate::dkim::Dkim;

/// The stream holding batch specs until they are expanded.
pub const STREAM: &str = "TERN_INJECT";
/// The subject of batch specs.
pub const SUBJECT: &str = "tern.inject.batches";
/// The bucket of batch records.
pub const BATCHES_BUCKET: &str = "tern-inject-batches";
/// How long a batch record is kept (for `GET /v1/batches/{id}`).
const RECORD_MAX_AGE: Duration = Duration::from_secs(30 * 86_400);
/// Spool publishes in flight before their acks are awaited and the cursor
/// is saved: at most this many messages are re-published after a crash
/// (and JetStream drops those as duplicates within its window).
const WINDOW: usize = 128;
/// The worker's ack wait; the worker keeps long expansions alive.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Longest a scheduled batch waits per redelivery before its time is re-read.
const MAX_SCHEDULE_WAIT: Duration = Duration::from_secs(3600);

/// Where a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Accepted, waiting for `send_at` (or for a worker).
    Scheduled,
    /// Messages are being made and spooled.
    Expanding,
    /// Every message is on the spool; the queue delivers them.
    Spooled,
    /// Cancelled before it was fully spooled.
    Cancelled,
}

/// The record of a batch, what `GET /v1/batches/{id}` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The batch id (a ULID).
    pub batch_id: String,
    /// The owning tenant's name.
    pub tenant: String,
    /// Campaign tag.
    pub campaign: String,
    /// Where it is.
    pub state: State,
    /// Accepted recipients.
    pub total: u64,
    /// Recipients whose message is on the spool (the cursor).
    pub spooled: u64,
    /// Recipients refused at accept time.
    pub rejected: u64,
    /// Recipients whose message could not be made at expansion.
    pub failed: u64,
    /// Accept time, Unix ms.
    pub created_unix_ms: i64,
    /// Send time, Unix ms, when scheduled.
    pub send_at_unix_ms: Option<i64>,
}

/// What the worker needs to make every message of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// The batch id (a ULID).
    pub batch_id: String,
    /// Tenant name (Envelope.tenant).
    pub tenant: String,
    /// Tenant id (VERP tokens).
    pub tenant_id: u32,
    /// Campaign tag (Envelope.campaign).
    pub campaign: String,
    /// Campaign id (VERP tokens).
    pub campaign_id: u32,
    /// Send time, Unix ms.
    pub send_at_unix_ms: Option<i64>,
    /// The template.
    pub template: Template,
    /// Shared variables.
    pub vars: Map<String, Value>,
    /// Accepted recipients; a recipient's index is its VERP index.
    pub recipients: Vec<Recipient>,
    /// Add List-Unsubscribe.
    pub unsubscribe: bool,
    /// The bounce domain of VERP return paths.
    pub bounce_domain: String,
    /// Base URL of unsubscribe links.
    pub public_url: String,
}

/// Errors of batch storage.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// NATS failed.
    #[error("{op}: {message}")]
    Nats {
        /// What was being done.
        op: &'static str,
        /// The error.
        message: String,
    },
    /// The spec body could not be stored or loaded.
    #[error(transparent)]
    Body(#[from] body::BodyError),
    /// A stored value does not parse.
    #[error("stored {0} does not parse: {1}")]
    Corrupt(&'static str, serde_json::Error),
}

fn nats(op: &'static str) -> impl FnOnce(Box<dyn std::error::Error>) -> BatchError {
    move |e| BatchError::Nats {
        op,
        message: e.to_string(),
    }
}

/// Create the stream and the record bucket if missing.
pub async fn ensure(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, BatchError> {
    js.create_or_update_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec![SUBJECT.into()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        duplicate_window: bus::DEDUP_WINDOW,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| nats("create stream")(Box::new(e)))?;
    if let Ok(kv) = js.get_key_value(BATCHES_BUCKET).await {
        return Ok(kv);
    }
    js.create_key_value(kv::Config {
        bucket: BATCHES_BUCKET.into(),
        history: 1,
        max_age: RECORD_MAX_AGE,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| nats("create bucket")(Box::new(e)))
}

/// Read a record with its revision.
pub async fn record(kv: &kv::Store, id: &str) -> Result<Option<(Record, u64)>, BatchError> {
    if !valid_id(id) {
        return Ok(None);
    }
    match kv
        .entry(id)
        .await
        .map_err(|e| nats("read batch")(Box::new(e)))?
    {
        Some(e) if e.operation == kv::Operation::Put => {
            let r =
                serde_json::from_slice(&e.value).map_err(|e| BatchError::Corrupt("batch", e))?;
            Ok(Some((r, e.revision)))
        }
        _ => Ok(None),
    }
}

/// A batch id: a ULID.
pub fn valid_id(id: &str) -> bool {
    id.len() == 26 && id.parse::<ulid::Ulid>().is_ok()
}

/// Write `r` if the record is still at `revision` (0: create): the new
/// revision, or `None` when someone else wrote first.
pub async fn write(kv: &kv::Store, r: &Record, revision: u64) -> Result<Option<u64>, BatchError> {
    let value = Bytes::from(serde_json::to_vec(r).map_err(|e| BatchError::Corrupt("batch", e))?);
    let result = if revision == 0 {
        kv.create(&r.batch_id, value).await.map_err(|e| {
            (
                e.kind() == kv::CreateErrorKind::AlreadyExists,
                e.to_string(),
            )
        })
    } else {
        kv.update(&r.batch_id, value, revision).await.map_err(|e| {
            (
                e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                e.to_string(),
            )
        })
    };
    match result {
        Ok(rev) => Ok(Some(rev)),
        Err((true, _)) => Ok(None),
        Err((false, message)) => Err(BatchError::Nats {
            op: "write batch",
            message,
        }),
    }
}

/// Store the spec durably as one unit: its bytes inline in one JetStream
/// message (or in the object store when larger than an inline body, with
/// the message pointing at it), de-duplicated by the batch id. Returns once
/// JetStream acknowledged it.
pub async fn publish(js: &jetstream::Context, spec: &Spec) -> Result<(), BatchError> {
    let bytes = Bytes::from(serde_json::to_vec(spec).map_err(|e| BatchError::Corrupt("spec", e))?);
    let body_ref = body::store(js, &format!("batch-{}", spec.batch_id), bytes).await?;
    bus::Publish::new(
        SUBJECT,
        Bytes::from(body_ref.encode_to_vec()),
        spec.batch_id.clone(),
    )
    .durable(js)
    .await
    .map_err(|e| nats("publish batch")(Box::new(e)))?;
    Ok(())
}

/// What the expansion worker shares.
pub struct Expander {
    /// JetStream.
    pub js: jetstream::Context,
    /// Batch records.
    pub kv: kv::Store,
    /// Loads large specs.
    pub bodies: body::BodyStore,
    /// Outbound DKIM.
    pub dkim: Dkim,
    /// Our host name (Message-ID, Received).
    pub hostname: String,
    /// The cluster secret (VERP, unsubscribe tokens).
    pub secret: Option<Secret>,
}

/// Run the expansion worker until `shutdown` (any replica takes any batch).
pub async fn run_worker(expander: Arc<Expander>, shutdown: Shutdown, grace: Duration) {
    let consumer = match bus::pull_consumer_until_ready(
        &expander.js,
        STREAM,
        "ingress-inject",
        SUBJECT,
        ACK_WAIT,
        &shutdown,
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no batch consumer; batches are not expanded by this replica");
            return;
        }
    };
    let options = worker::Options::new(2, ACK_WAIT, grace);
    worker::worker(consumer, options, &shutdown, move |msg| {
        let expander = expander.clone();
        async move { expander.handle(msg).await }
    })
    .await;
}

/// A recipient's message id: the batch's ULID plus its index + 1, so a
/// redelivered batch makes the same ids (and JetStream drops duplicates).
pub fn message_id(batch: ulid::Ulid, index: usize) -> String {
    ulid::Ulid::from(u128::from(batch).wrapping_add(index as u128 + 1)).to_string()
}

impl Expander {
    async fn handle(&self, msg: jetstream::Message) -> Disposition {
        let spec = match self.load_spec(&msg.payload).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "batch spec could not be loaded; retrying");
                return Disposition::Nak(Some(Duration::from_secs(5)));
            }
        };
        match self.expand(&spec).await {
            Ok(d) => {
                if d == Disposition::Ack {
                    self.drop_spec(&msg.payload).await;
                }
                d
            }
            Err(e) => {
                tracing::warn!(batch_id = %spec.batch_id, error = %e, "batch expansion failed; retrying");
                Disposition::Nak(Some(Duration::from_secs(5)))
            }
        }
    }

    async fn load_spec(&self, payload: &[u8]) -> Result<Spec, BatchError> {
        let r = BodyRef::decode(payload).map_err(|_| body::BodyError::Invalid)?;
        let bytes = self.bodies.load(&r).await?;
        serde_json::from_slice(&bytes).map_err(|e| BatchError::Corrupt("spec", e))
    }

    async fn drop_spec(&self, payload: &[u8]) {
        if let Ok(BodyRef {
            location: Some(tern_proto::body_ref::Location::Object(name)),
            ..
        }) = BodyRef::decode(payload)
            && let Ok(store) = self.js.get_object_store(bus::BODY_BUCKET).await
        {
            let _ = store.delete(&name).await;
        }
    }

    /// Expand from the cursor; `Nak(delay)` while it is not yet time.
    async fn expand(&self, spec: &Spec) -> Result<Disposition, BatchError> {
        let Some((mut rec, mut rev)) = record(&self.kv, &spec.batch_id).await? else {
            tracing::warn!(batch_id = %spec.batch_id, "batch has no record; dropped");
            return Ok(Disposition::Term);
        };
        if matches!(rec.state, State::Cancelled | State::Spooled) {
            return Ok(Disposition::Ack);
        }
        let now = tern_runtime::now_unix_ms();
        if let Some(at) = spec.send_at_unix_ms.filter(|at| *at > now) {
            let wait = Duration::from_millis((at - now) as u64).min(MAX_SCHEDULE_WAIT);
            return Ok(Disposition::Nak(Some(wait)));
        }
        let renderer = match Renderer::new(&spec.template) {
            Ok(r) => r,
            Err(e) => {
                // Checked at accept time; a spec from another version only.
                tracing::error!(batch_id = %spec.batch_id, error = %e, "batch template does not compile");
                return Ok(Disposition::Term);
            }
        };
        let batch: ulid::Ulid = spec.batch_id.parse().map_err(|_| {
            BatchError::Corrupt(
                "batch id",
                serde_json::Error::io(std::io::ErrorKind::InvalidData.into()),
            )
        })?;
        // The cursor: every recipient before it was spooled or failed.
        let mut next = (rec.spooled + rec.failed) as usize;
        // Which replica expands a batch, and from where after a crash.
        tracing::info!(batch_id = %spec.batch_id, from = next, total = spec.recipients.len(), "expanding batch");
        while next < spec.recipients.len() {
            let end = (next + WINDOW).min(spec.recipients.len());
            let mut acks = Vec::with_capacity(end - next);
            let mut failed = 0;
            for i in next..end {
                match self.publish_one(spec, &renderer, batch, i).await {
                    Ok(ack) => acks.push(ack),
                    Err(OneError::Render(e)) => {
                        tracing::warn!(batch_id = %spec.batch_id, index = i, error = %e, "recipient's message could not be made");
                        failed += 1;
                    }
                    Err(OneError::Batch(e)) => return Err(e),
                }
            }
            for ack in acks {
                ack.await.map_err(|e| nats("spool ack")(Box::new(e)))?;
            }
            // Save the cursor; a cancel that came in meanwhile wins.
            loop {
                let saved = Record {
                    spooled: end as u64 - (rec.failed + failed),
                    failed: rec.failed + failed,
                    state: if end == spec.recipients.len() {
                        State::Spooled
                    } else {
                        State::Expanding
                    },
                    ..rec.clone()
                };
                if let Some(r) = write(&self.kv, &saved, rev).await? {
                    (rec, rev) = (saved, r);
                    break;
                }
                let Some((current, r)) = record(&self.kv, &spec.batch_id).await? else {
                    return Ok(Disposition::Term);
                };
                if current.state == State::Cancelled {
                    tracing::info!(batch_id = %spec.batch_id, spooled = current.spooled, "batch cancelled while expanding");
                    return Ok(Disposition::Ack);
                }
                (rec, rev) = (current, r);
            }
            metrics::counter!("tern_inject_messages_spooled_total")
                .increment((end - next - failed as usize) as u64);
            next = end;
        }
        tracing::info!(batch_id = %spec.batch_id, total = spec.recipients.len(), "batch spooled");
        Ok(Disposition::Ack)
    }

    /// Make, sign, store and publish recipient `i`'s message; the ack future.
    async fn publish_one(
        &self,
        spec: &Spec,
        renderer: &Renderer,
        batch: ulid::Ulid,
        i: usize,
    ) -> Result<jetstream::context::PublishAckFuture, OneError> {
        let r = &spec.recipients[i];
        let id = message_id(batch, i);
        let fields = VerpFields {
            tenant: spec.tenant_id,
            campaign: spec.campaign_id,
            message: u128::from(batch),
            recipient: i as u32,
        };
        let mail_from = match &self.secret {
            Some(s) => token::bounce_address(s, &fields, &spec.bounce_domain),
            None => format!("postmaster@{}", spec.bounce_domain),
        };
        let extras = Extras {
            message_id: format!("{id}@{}", self.hostname),
            date: tern_runtime::date::rfc5322(tern_runtime::now_unix_ms()),
            list_unsubscribe: self.list_unsubscribe(spec, &fields, r),
        };
        let message = renderer
            .message(&spec.vars, r, &extras)
            .map_err(|e| OneError::Render(e.to_string()))?;
        let message = Bytes::from(message);
        let signature = self
            .dkim
            .sign_injected(message.clone())
            .await
            .map_err(|e| {
                OneError::Batch(BatchError::Nats {
                    op: "dkim",
                    message: e.to_string(),
                })
            })?;
        let received_at = tern_runtime::now_unix_ms();
        let received = format!(
            "Received: by {} with HTTP id {id};\r\n\t{}\r\n",
            self.hostname,
            tern_runtime::date::rfc5322(received_at)
        );
        let sig = signature.unwrap_or_default();
        let mut full = Vec::with_capacity(received.len() + sig.len() + message.len());
        full.extend_from_slice(received.as_bytes());
        full.extend_from_slice(sig.as_bytes());
        full.extend_from_slice(&message);
        let body_ref = body::store(&self.js, &id, Bytes::from(full))
            .await
            .map_err(|e| OneError::Batch(e.into()))?;
        let envelope = Envelope {
            id: id.clone(),
            mail_from,
            rcpts: vec![tern_proto::Recipient {
                address: r.email.clone(),
                ..Default::default()
            }],
            body: Some(body_ref),
            received_at_unix_ms: received_at,
            auth_user: format!("tenant:{}", spec.tenant),
            tenant: spec.tenant.clone(),
            campaign: spec.campaign.clone(),
            batch_id: spec.batch_id.clone(),
            ..Default::default()
        };
        bus::Publish::new(
            bus::SPOOL_SUBJECT,
            Bytes::from(envelope.encode_to_vec()),
            id,
        )
        .send(&self.js)
        .await
        .map_err(|e| OneError::Batch(nats("spool publish")(Box::new(e))))
    }

    /// RFC 8058 §3.1: an HTTPS one-click URI and a `mailto:` one.
    fn list_unsubscribe(&self, spec: &Spec, fields: &VerpFields, r: &Recipient) -> Option<String> {
        if !spec.unsubscribe {
            return None;
        }
        let secret = self.secret.as_ref()?;
        let url_token = token::unsubscribe_token(
            secret,
            &UnsubscribeFields {
                tenant: spec.tenant_id,
                list: spec.campaign_id,
                recipient: r.email.clone(),
            },
        )?;
        let mailto = token::unsubscribe_local_part(secret, fields);
        Some(format!(
            "<{}/u/{url_token}>, <mailto:{mailto}@{}>",
            spec.public_url, spec.bounce_domain
        ))
    }
}

/// Why one recipient's message was not published.
#[derive(Debug)]
enum OneError {
    /// Its template did not render: counted as failed, the batch goes on.
    Render(String),
    /// Storage failed: the batch is retried from the cursor.
    Batch(BatchError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_distinct_stable_ulids() {
        let b = ulid::Ulid::new();
        let a0 = message_id(b, 0);
        assert_eq!(a0, message_id(b, 0));
        assert_ne!(a0, message_id(b, 1));
        assert_ne!(a0, b.to_string());
        assert!(valid_id(&a0));
    }
}
