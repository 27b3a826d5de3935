//! Per-destination connection limits that hold across every delivery
//! replica together.
//!
//! The limiter is a JetStream key-value bucket ([`LIMITS_BUCKET`], file
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
//!
//! A job that finds every slot held does not poll: while some job of this
//! process waits for a site, the process watches the site's slot keys
//! ([`SiteWatch`], one KV watch per waited-for site, dropped with the last
//! waiter) and one waiter at a time tries again when a slot is deleted,
//! starting with the slot just freed. The other waiters wait for one of
//! this process's own sessions to be handed over (see the pool), so
//! processes do not stampede the bucket. A slot that expires (its holder
//! died) makes no delete event; a slow fallback retry covers that.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tern_runtime::bus;
use tern_runtime::config::ConfigValue;
use tokio::sync::watch;

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
    /// Live watches of sites some job of this process is waiting for.
    watches: Arc<Mutex<HashMap<String, Weak<SiteWatch>>>>,
}

/// Wakes this process's jobs waiting for a slot of one site when another
/// slot is freed anywhere in the cluster. Shared by the site's waiters; the
/// KV watch stops when the last one drops it.
pub(crate) struct SiteWatch {
    /// Bumped on every freed slot, with that slot's number.
    freed: watch::Receiver<(u64, Option<usize>)>,
    /// Held by the one waiter that retries the bucket; the others wait for
    /// a session of this process instead.
    pub claim: tokio::sync::Mutex<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SiteWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SiteWatch {
    /// A receiver of freed slots that has seen everything up to now.
    pub fn subscribe(&self) -> watch::Receiver<(u64, Option<usize>)> {
        let mut rx = self.freed.clone();
        rx.borrow_and_update();
        rx
    }
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
            watches: Arc::default(),
        })
    }

    /// The watch of `site`'s slots if some job of this process waits for
    /// the site already.
    pub fn watching(&self, site: &str) -> Option<Arc<SiteWatch>> {
        let map = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&bus::kv_token(site)).and_then(Weak::upgrade)
    }

    /// The watch of `site`'s slots, started if no waiter holds one yet.
    pub fn watch(&self, site: &str) -> Arc<SiteWatch> {
        let site = bus::kv_token(site);
        let mut map = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = map.get(&site).and_then(Weak::upgrade) {
            return w;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let (tx, rx) = watch::channel((0u64, None));
        let kv = self.kv.clone();
        let prefix = format!("{site}.");
        let task = tokio::spawn(async move {
            loop {
                match kv.watch(format!("{prefix}*")).await {
                    Ok(mut events) => {
                        while let Some(Ok(e)) = events.next().await {
                            if matches!(e.operation, kv::Operation::Delete | kv::Operation::Purge) {
                                let slot = e.key.strip_prefix(&prefix).and_then(|n| n.parse().ok());
                                tx.send_modify(|v| *v = (v.0 + 1, slot));
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "watching connection slots failed"),
                }
                // The watch ended (NATS reconnect): start another shortly.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let w = Arc::new(SiteWatch {
            freed: rx,
            claim: tokio::sync::Mutex::new(()),
            task,
        });
        map.insert(site, Arc::downgrade(&w));
        w
    }

    /// The connection limit for a destination (0 = unlimited).
    pub fn limit_for(&self, destination: &str) -> usize {
        self.per_destination
            .0
            .get(&destination.to_ascii_lowercase())
            .copied()
            .unwrap_or(self.default)
    }

    /// Claim slot number `slot` of `site` (the one just freed).
    pub async fn acquire_slot(&self, site: &str, slot: usize) -> Result<Option<Lease>, LimitError> {
        let key = format!("{}.{slot}", bus::kv_token(site));
        match self.kv.create(&key, self.holder.clone()).await {
            Ok(revision) => Ok(Some(Lease::start(self.kv.clone(), key, revision))),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(LimitError::Unavailable(e.to_string())),
        }
    }

    /// Claim a slot for one connection to `site`, or `Ok(None)` when the
    /// destination is unlimited. Slots are tried from `first` on (the one
    /// just freed), else from a random one, so processes do not all queue
    /// on slot 0.
    pub async fn acquire(
        &self,
        site: &str,
        limit: usize,
        first: Option<usize>,
    ) -> Result<Option<Lease>, LimitError> {
        if limit == 0 {
            return Ok(None);
        }
        let site = bus::kv_token(site);
        let start = first.unwrap_or_else(|| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.finish() as usize
        }) % limit;
        for i in 0..limit {
            let slot = (start + i) % limit;
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
