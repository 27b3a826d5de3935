//! `Idempotency-Key`: the same key and body within 24 h get the first answer
//! and send nothing; the same key with another body is refused. Entries
//! live in a KV bucket with per-entry TTLs, so every replica sees them.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tern_runtime::bus;

use super::batch::BatchError;

/// The bucket.
pub const BUCKET: &str = "tern-inject-idempotency";
/// How long a key is remembered.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// A claim older than this without an answer is from a replica that died
/// mid-request: the next request with the key takes it over.
const STALE_MS: i64 = 30_000;

/// What is stored per (tenant, key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// SHA-256 of the request body, hex.
    pub body_sha256: String,
    /// The batch id the request got.
    pub batch_id: String,
    /// When the claim was made, Unix ms.
    pub claimed_unix_ms: i64,
    /// The `202` body once answered.
    pub response: Option<String>,
}

/// What a request with a key may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Go ahead with `batch_id`; `revision` is the claim's, `resumed`: a
    /// dead replica's claim was taken over (its batch may exist already).
    Proceed {
        /// KV key of the claim.
        key: String,
        /// The claim's revision.
        revision: u64,
        /// The batch id to use.
        batch_id: String,
        /// Taken over from a stale claim.
        resumed: bool,
    },
    /// Answered before: this body again.
    Replay(String),
    /// The key was used with another body.
    Mismatch,
    /// Another request with the key is being processed right now.
    InProgress,
}

/// Hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A key as clients may send it: 1-255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 255 && key.bytes().all(|c| (33..=126).contains(&c))
}

/// Open or create the bucket.
pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, BatchError> {
    bus::ttl_bucket(js, BUCKET, replicas)
        .await
        .map_err(|e| BatchError::Nats {
            op: "idempotency bucket",
            message: e.to_string(),
        })
}

fn nats_err(op: &'static str, e: impl std::fmt::Display) -> BatchError {
    BatchError::Nats {
        op,
        message: e.to_string(),
    }
}

/// Claim `key` of tenant `tenant_id` for a request whose body hashes to
/// `body_sha256`.
pub async fn claim(
    js: &jetstream::Context,
    kv: &kv::Store,
    tenant_id: u32,
    key: &str,
    body_sha256: &str,
) -> Result<Claim, BatchError> {
    let kv_key = format!("{tenant_id}.{}", sha256_hex(key.as_bytes()));
    // Two rounds: a lost creation race is settled by reading the winner.
    for _ in 0..2 {
        let entry = kv
            .entry(&kv_key)
            .await
            .map_err(|e| nats_err("idempotency read", e))?;
        let now = tern_runtime::now_unix_ms();
        let (revision, existing) = match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let stored: Entry = serde_json::from_slice(&e.value)
                    .map_err(|e| BatchError::Corrupt("idempotency entry", e))?;
                (e.revision, Some(stored))
            }
            Some(e) => (e.revision, None),
            None => (0, None),
        };
        let (batch_id, resumed) = match existing {
            Some(s) if s.body_sha256 != body_sha256 => return Ok(Claim::Mismatch),
            Some(Entry {
                response: Some(r), ..
            }) => return Ok(Claim::Replay(r)),
            Some(s) if now - s.claimed_unix_ms < STALE_MS => return Ok(Claim::InProgress),
            Some(s) => (s.batch_id, true),
            None => (ulid::Ulid::new().to_string(), false),
        };
        let claim = Entry {
            body_sha256: body_sha256.to_string(),
            batch_id: batch_id.clone(),
            claimed_unix_ms: now,
            response: None,
        };
        let value = Bytes::from(
            serde_json::to_vec(&claim).map_err(|e| BatchError::Corrupt("idempotency entry", e))?,
        );
        match bus::kv_write_with_ttl(js, kv, &kv_key, value, revision, TTL).await {
            Ok(rev) => {
                return Ok(Claim::Proceed {
                    key: kv_key,
                    revision: rev,
                    batch_id,
                    resumed,
                });
            }
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                continue;
            }
            Err(e) => return Err(nats_err("idempotency claim", e)),
        }
    }
    Ok(Claim::InProgress)
}

/// Store the answer under the claim.
pub async fn answer(
    js: &jetstream::Context,
    kv: &kv::Store,
    key: &str,
    revision: u64,
    entry: &Entry,
) -> Result<(), BatchError> {
    let value = Bytes::from(
        serde_json::to_vec(entry).map_err(|e| BatchError::Corrupt("idempotency entry", e))?,
    );
    bus::kv_write_with_ttl(js, kv, key, value, revision, TTL)
        .await
        .map(|_| ())
        .map_err(|e| nats_err("idempotency answer", e))
}

/// Give a claim up (the request failed before anything was accepted), so a
/// retry is processed anew.
pub async fn release(kv: &kv::Store, key: &str) {
    if let Err(e) = kv.purge(key).await {
        tracing::warn!(error = %e, "idempotency claim could not be released; it goes stale in 30 s");
    }
}
