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

/// Read a body back, wherever it lives.
pub async fn load(js: &jetstream::Context, r: &BodyRef) -> Result<Bytes, BodyError> {
    match &r.location {
        Some(Location::Inline(b)) => Ok(b.clone()),
        Some(Location::SpoolSeq(seq)) => {
            let stream = js
                .get_stream(bus::SPOOL_STREAM)
                .await
                .map_err(|e| BodyError::Spool(*seq, e.to_string()))?;
            let msg = stream
                .direct_get(*seq)
                .await
                .map_err(|e| BodyError::Spool(*seq, e.to_string()))?;
            let env =
                Envelope::decode(msg.payload).map_err(|e| BodyError::Spool(*seq, e.to_string()))?;
            match env.body.and_then(|b| b.location) {
                Some(Location::Inline(b)) => Ok(b),
                _ => Err(BodyError::Invalid),
            }
        }
        Some(Location::Object(name)) => {
            let store = js
                .get_object_store(bus::BODY_BUCKET)
                .await
                .map_err(|e| BodyError::Store(e.to_string()))?;
            let mut obj = store
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
