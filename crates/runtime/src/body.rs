//! Message bodies: written once at ingress, read by mailbox and delivery.
//!
//! Small bodies travel inline in the spool envelope (one JetStream write for
//! body and envelope together); larger ones go to the object store. Jobs refer
//! to an inline body by the spool stream sequence, so a body is never copied
//! per recipient or per retry.

use async_nats::jetstream;
use bytes::Bytes;
use prost::Message as _;
use tern_proto::{BodyRef, Envelope, body_ref::Location};
use tokio::io::AsyncReadExt;

use crate::bus;

/// Bodies up to this size travel inline (NATS' default max payload is 1 MiB).
pub const INLINE_BODY_MAX: usize = 512 * 1024;

/// Errors storing or loading a body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The object store failed.
    #[error("object store: {0}")]
    Store(String),
    /// The spool message holding the body is gone (expired or deleted).
    #[error("spool message {0}: {1}")]
    Spool(u64, String),
    /// The spool stream could not be opened.
    #[error("open the spool stream: {0}")]
    Open(String),
    /// The body reference is empty or malformed.
    #[error("invalid body reference")]
    Invalid,
}

/// Store `body` for message `id`, returning the reference to put in the envelope.
pub async fn store(js: &jetstream::Context, id: &str, body: Bytes) -> Result<BodyRef, BodyError> {
    let size = body.len() as u64;
    if body.len() <= INLINE_BODY_MAX {
        return Ok(BodyRef {
            location: Some(Location::Inline(body)),
            size,
        });
    }
    let store = js
        .get_object_store(bus::BODY_BUCKET)
        .await
        .map_err(|e| BodyError::Store(e.to_string()))?;
    let mut reader = std::io::Cursor::new(body);
    store
        .put(id, &mut reader)
        .await
        .map_err(|e| BodyError::Store(e.to_string()))?;
    Ok(BodyRef {
        location: Some(Location::Object(id.to_string())),
        size,
    })
}

/// The reference a job carries for an envelope read at spool sequence `seq`.
pub fn job_ref(envelope_body: &BodyRef, seq: u64) -> BodyRef {
    let location = match &envelope_body.location {
        Some(Location::Inline(_)) => Some(Location::SpoolSeq(seq)),
        other => other.clone(),
    };
    BodyRef {
        location,
        size: envelope_body.size,
    }
}

/// Where bodies live, with the handles opened once per process: the spool
/// stream (inline bodies, read by sequence with one direct get, no
/// stream-info round trip per message) and the object store (large ones).
/// Cheap to clone; mailbox, delivery and the queue's DSNs all load through it.
#[derive(Clone)]
pub struct BodyStore {
    js: jetstream::Context,
    spool: jetstream::stream::Stream<()>,
    objects: jetstream::object_store::ObjectStore,
}

impl BodyStore {
    /// Open the handles. The streams and the bucket must exist
    /// (`bus::ensure_streams`).
    pub async fn open(js: &jetstream::Context) -> Result<Self, BodyError> {
        let spool = js
            .get_stream_no_info(bus::SPOOL_STREAM)
            .await
            .map_err(|e| BodyError::Open(e.to_string()))?;
        let objects = js
            .get_object_store(bus::BODY_BUCKET)
            .await
            .map_err(|e| BodyError::Store(e.to_string()))?;
        Ok(BodyStore {
            js: js.clone(),
            spool,
            objects,
        })
    }

    /// Store `body` for message `id` ([`store`]).
    pub async fn store(&self, id: &str, body: Bytes) -> Result<BodyRef, BodyError> {
        store(&self.js, id, body).await
    }

    /// Read a body back, wherever it lives.
    pub async fn load(&self, r: &BodyRef) -> Result<Bytes, BodyError> {
        match &r.location {
            Some(Location::Inline(b)) => Ok(b.clone()),
            Some(Location::SpoolSeq(seq)) => {
                let msg = self
                    .spool
                    .direct_get(*seq)
                    .await
                    .map_err(|e| BodyError::Spool(*seq, e.to_string()))?;
                let env = Envelope::decode(msg.payload)
                    .map_err(|e| BodyError::Spool(*seq, e.to_string()))?;
                match env.body.and_then(|b| b.location) {
                    Some(Location::Inline(b)) => Ok(b),
                    _ => Err(BodyError::Invalid),
                }
            }
            Some(Location::Object(name)) => {
                let mut obj = self
                    .objects
                    .get(name)
                    .await
                    .map_err(|e| BodyError::Store(e.to_string()))?;
                let mut buf = Vec::with_capacity(r.size as usize);
                obj.read_to_end(&mut buf)
                    .await
                    .map_err(|e| BodyError::Store(e.to_string()))?;
                Ok(Bytes::from(buf))
            }
            None => Err(BodyError::Invalid),
        }
    }

    /// Delete a message's body once no job needs it: the spool message at
    /// `spool_seq` and, if named, the large body `object`. A body already
    /// gone is not an error (a second finisher, or the spool's max age).
    pub async fn delete(&self, spool_seq: u64, object: &str) {
        if let Err(e) = self.spool.delete_message(spool_seq).await {
            tracing::debug!(error = %e, seq = spool_seq, "spool message already gone");
        }
        if !object.is_empty()
            && let Err(e) = self.objects.delete(object).await
        {
            tracing::warn!(error = %e, object, "could not delete a large body");
        }
    }
}
