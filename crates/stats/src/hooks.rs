//! The webhook registry: per tenant, webhooks with a URL, a secret and the
//! event kinds they want, in the KV bucket `tern-webhooks` (every replica,
//! and the dispatcher, read the same list). The backing store of
//! `tern webhook add|list|del`.

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::key::token;

/// The registry bucket.
pub const WEBHOOKS_BUCKET: &str = "tern-webhooks";

/// The event kinds a webhook may ask for (issue 16's lifecycle events).
pub const KINDS: &[&str] = &[
    "received",
    "delivered",
    "deferred",
    "bounced",
    "expired",
    "complained",
    "unsubscribed",
    "suppressed",
    crate::pause::PAUSED_EVENT,
];

/// One registered webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// Its id (16 hex digits).
    pub id: String,
    /// The owning tenant.
    pub tenant: String,
    /// Where deliveries are POSTed (`http://` or `https://`).
    pub url: String,
    /// The HMAC key of its `Tern-Signature` (64 hex digits).
    pub secret: String,
    /// Kinds it receives; empty means every kind in [`KINDS`].
    pub events: Vec<String>,
}

impl Webhook {
    /// Whether this webhook wants an event of `tenant` and `kind`.
    pub fn wants(&self, tenant: &str, kind: &str) -> bool {
        self.tenant == tenant && (self.events.is_empty() || self.events.iter().any(|k| k == kind))
    }
}

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The URL is not an absolute `http://` or `https://` URL.
    #[error("url {0:?}: must start with http:// or https:// and name a host")]
    Url(String),
    /// An event kind that is not one of [`KINDS`].
    #[error("event kind {0:?} is not one of {KINDS:?}")]
    Kind(String),
    /// The bucket could not be opened or used.
    #[error("webhook registry: {0}")]
    Store(String),
}

/// The registry.
#[derive(Clone)]
pub struct Registry {
    kv: kv::Store,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::rng().fill_bytes(&mut buf);
    hex(&buf)
}

/// Check `url` and `events` (pure; the CLI reports the error as it is).
pub fn validate(url: &str, events: &[String]) -> Result<(), HookError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => {}
        _ => return Err(HookError::Url(url.to_string())),
    }
    match events.iter().find(|k| !KINDS.contains(&k.as_str())) {
        Some(k) => Err(HookError::Kind(k.clone())),
        None => Ok(()),
    }
}

impl Registry {
    /// Open the bucket, creating it with `replicas` copies if missing.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, HookError> {
        if let Ok(kv) = js.get_key_value(WEBHOOKS_BUCKET).await {
            return Ok(Registry { kv });
        }
        let kv = js
            .create_key_value(kv::Config {
                bucket: WEBHOOKS_BUCKET.into(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| HookError::Store(e.to_string()))?;
        Ok(Registry { kv })
    }

    /// Register a webhook with a fresh secret; the caller shows the secret once.
    pub async fn add(
        &self,
        tenant: &str,
        url: &str,
        events: Vec<String>,
    ) -> Result<Webhook, HookError> {
        validate(url, &events)?;
        let hook = Webhook {
            id: random_hex(8),
            tenant: tenant.to_string(),
            url: url.to_string(),
            secret: random_hex(32),
            events,
        };
        let value = serde_json::to_vec(&hook).map_err(|e| HookError::Store(e.to_string()))?;
        self.kv
            .create(format!("{}.{}", token(tenant), hook.id), value.into())
            .await
            .map_err(|e| HookError::Store(e.to_string()))?;
        Ok(hook)
    }

    /// The webhooks of `tenant`, by id.
    pub async fn list(&self, tenant: &str) -> Result<Vec<Webhook>, HookError> {
        self.with_prefix(&format!("{}.", token(tenant))).await
    }

    /// Every tenant's webhooks (what the dispatcher matches events against).
    pub async fn all(&self) -> Result<Vec<Webhook>, HookError> {
        self.with_prefix("").await
    }

    async fn with_prefix(&self, prefix: &str) -> Result<Vec<Webhook>, HookError> {
        let store = |e: String| HookError::Store(e);
        let keys: Vec<String> = match self.kv.keys().await {
            Ok(k) => k.try_collect().await.map_err(|e| store(e.to_string()))?,
            Err(e) => return Err(store(e.to_string())),
        };
        let mut out = Vec::new();
        for k in keys.iter().filter(|k| k.starts_with(prefix)) {
            if let Some(v) = self.kv.get(k).await.map_err(|e| store(e.to_string()))? {
                out.push(serde_json::from_slice::<Webhook>(&v).map_err(|e| store(e.to_string()))?);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Remove webhook `id` of `tenant`; `false` if it has none by that id.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<bool, HookError> {
        let key = format!("{}.{}", token(tenant), token(id));
        let store = |e: String| HookError::Store(e);
        if self
            .kv
            .get(&key)
            .await
            .map_err(|e| store(e.to_string()))?
            .is_none()
        {
            return Ok(false);
        }
        self.kv
            .purge(&key)
            .await
            .map_err(|e| store(e.to_string()))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_kinds_are_checked() {
        assert!(validate("https://hooks.example/x", &[]).is_ok());
        assert!(validate("http://127.0.0.1:8080/", &["bounced".into()]).is_ok());
        assert!(matches!(validate("ftp://x", &[]), Err(HookError::Url(_))));
        assert!(matches!(validate("https://", &[]), Err(HookError::Url(_))));
        assert!(matches!(
            validate("https://x", &["opened".into()]),
            Err(HookError::Kind(_))
        ));
    }
}
