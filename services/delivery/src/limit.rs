//! Per-destination connection limits that hold across every delivery
//! replica together.
//!
//! The limiter is a JetStream key-value bucket ([`LIMITS_BUCKET`], memory
//! storage, every entry expiring after [`LEASE_TTL`]). A limit of `n`
//! connections to a site is `n` slot keys `<site>.<i>`; a replica opening a
//! connection claims a free slot with a KV *create* (which the server makes
//! atomic: it fails if the key exists), keeps it while the connection is
//! open, including while it sits idle for reuse, by rewriting it every
//! `LEASE_TTL / 3` with the revision it holds, and deletes it when the
//! connection closes. A replica that dies without deleting its slots loses
//! them within `LEASE_TTL` by expiry, so a crash cannot leak capacity for
//! long. Why this and not a counter: a counter needs a decrement that a
//! crashed replica never sends; per-slot leases need none, and one create
//! per *connection* (not per message, thanks to connection reuse) keeps the
//! cost at one NATS round trip per new connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tern_runtime::bus;
use tern_runtime::config::ConfigValue;

/// The key-value bucket holding the connection slots.
pub use tern_runtime::bus::LIMITS_BUCKET;
/// How long a slot survives without being refreshed.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// Per-destination limits: `domain=n` pairs separated by commas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits(pub BTreeMap<String, usize>);

impl ConfigValue for Limits {
    const EXPECTED: &'static str = "comma-separated domain=number pairs";
    fn parse_value(s: &str) -> Option<Self> {
        let mut map = BTreeMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (domain, n) = item.split_once('=')?;
            let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
            if domain.is_empty() {
                return None;
            }
            map.insert(domain, n.trim().parse().ok()?);
        }
        Some(Limits(map))
    }
}

/// Claims connection slots in [`LIMITS_BUCKET`].
#[derive(Clone)]
pub(crate) struct Limiter {
    kv: kv::Store,
    default: usize,
    per_destination: Arc<Limits>,
    holder: bytes::Bytes,
}

/// Why no slot was claimed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LimitError {
    /// Every slot for the site is held.
    #[error("all {0} connection slots for the destination are in use")]
    Full(usize),
    /// The bucket could not be reached; treated like a full site so a NATS
    /// outage does not lift the limit.
    #[error("connection limiter unavailable: {0}")]
    Unavailable(String),
}

impl Limiter {
    /// Create (or open) the bucket.
    pub async fn new(
        js: &jetstream::Context,
        replicas: usize,
        default: usize,
        per_destination: Limits,
        holder: String,
    ) -> Result<Limiter, bus::BusError> {
        let kv = js
            .create_key_value(kv::Config {
                bucket: LIMITS_BUCKET.into(),
                history: 1,
                max_age: LEASE_TTL,
                // File, not memory: a memory bucket vanishes when its NATS
                // server restarts, and every later claim then fails.
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| bus::BusError::Setup {
                what: LIMITS_BUCKET.into(),
                message: e.to_string(),
            })?;
        Ok(Limiter {
            kv,
            default,
            per_destination: Arc::new(per_destination),
            holder: holder.into(),
        })
    }

    /// The connection limit for a destination (0 = unlimited).
    pub fn limit_for(&self, destination: &str) -> usize {
        self.per_destination
            .0
            .get(&destination.to_ascii_lowercase())
            .copied()
            .unwrap_or(self.default)
    }

    /// Claim a slot for one connection to `site`, or `Ok(None)` when the
    /// destination is unlimited.
    pub async fn acquire(&self, site: &str, limit: usize) -> Result<Option<Lease>, LimitError> {
        if limit == 0 {
            return Ok(None);
        }
        let site = bus::kv_token(site);
        for slot in 0..limit {
            let key = format!("{site}.{slot}");
            match self.kv.create(&key, self.holder.clone()).await {
                Ok(revision) => return Ok(Some(Lease::start(self.kv.clone(), key, revision))),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                Err(e) => return Err(LimitError::Unavailable(e.to_string())),
            }
        }
        Err(LimitError::Full(limit))
    }
}

/// One claimed slot; refreshed in the background, deleted on release or drop.
pub(crate) struct Lease {
    held: Option<(kv::Store, String)>,
    refresh: tokio::task::JoinHandle<()>,
}

impl Lease {
    fn start(kv: kv::Store, key: String, revision: u64) -> Lease {
        let (store, k) = (kv.clone(), key.clone());
        let refresh = tokio::spawn(async move {
            let mut revision = revision;
            loop {
                tokio::time::sleep(LEASE_TTL / 3).await;
                match store.update(&k, "held".into(), revision).await {
                    Ok(r) => revision = r,
                    Err(e) => {
                        tracing::warn!(key = %k, error = %e, "refreshing a connection slot failed");
                    }
                }
            }
        });
        Lease {
            held: Some((kv, key)),
            refresh,
        }
    }

    /// Give the slot back now.
    pub async fn release(mut self) {
        self.refresh.abort();
        if let Some((kv, key)) = self.held.take() {
            let _ = kv.delete(&key).await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.refresh.abort();
        if let Some((kv, key)) = self.held.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                let _ = kv.delete(&key).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limits_parse() {
        let l = Limits::parse_value("Gmail.com=50, small.example.=2,x.test=0").unwrap();
        assert_eq!(l.0.get("gmail.com"), Some(&50));
        assert_eq!(l.0.get("small.example"), Some(&2));
        assert_eq!(l.0.get("x.test"), Some(&0));
        assert!(Limits::parse_value("a.test=many").is_none());
        assert_eq!(Limits::parse_value("").unwrap(), Limits::default());
    }
}
