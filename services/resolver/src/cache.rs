//! A TTL-honouring answer cache with request coalescing and serve-stale:
//! concurrent requests for the same key share one upstream resolution, an
//! answer is kept for as long as its TTL allows, and when a refresh fails
//! temporarily the expired answer is served for a short window instead
//! (RFC 8767).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

/// TTL of an answer served stale (RFC 8767 §4: "30 seconds is RECOMMENDED").
pub(crate) const STALE_ANSWER_TTL: Duration = Duration::from_secs(30);

/// What the cache needs to know about an answer.
pub(crate) trait Answer: Send + Sync + 'static {
    /// How long the answer may be kept; zero means "do not keep".
    fn keep_for(&self) -> Duration;
    /// A temporary failure (SERVFAIL, timeout): an expired answer is better.
    fn is_temporary(&self) -> bool;
    /// A copy of this (expired) answer to serve stale, with `ttl` seconds.
    fn as_stale(&self, ttl: u32) -> Self;
}

/// Where an answer came from, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// A fresh cached answer.
    Hit,
    /// This request started the upstream resolution.
    Miss,
    /// This request waited for a resolution another request had started.
    Coalesced,
    /// Upstream failed and an expired answer was served (RFC 8767).
    Stale,
}

impl Served {
    const ALL: [Served; 4] = [Served::Hit, Served::Miss, Served::Coalesced, Served::Stale];

    fn metric(self) -> &'static str {
        match self {
            Served::Hit => "tern_dns_cache_hits_total",
            Served::Miss => "tern_dns_cache_misses_total",
            Served::Coalesced => "tern_dns_coalesced_total",
            Served::Stale => "tern_dns_stale_served_total",
        }
    }
}

/// The outcome of one resolution: the answer and whether it is stale.
type Resolved<V> = (Arc<V>, bool);
type Pending<V> = Shared<BoxFuture<'static, Resolved<V>>>;

enum Slot<V> {
    Ready {
        value: Arc<V>,
        /// Fresh until then.
        expires: Instant,
        /// May be served stale until then if a refresh fails.
        stale_until: Instant,
        /// The value is itself a stale answer being served.
        stale: bool,
    },
    Pending(Pending<V>),
}

/// A coalescing cache from string keys to `Arc<V>`.
pub(crate) struct TtlCache<V> {
    slots: Arc<Mutex<HashMap<String, Slot<V>>>>,
    max_entries: usize,
    stale_window: Duration,
    /// One counter per [`Served`] (in `Served::ALL` order), registered once:
    /// the hit path stays free of metric-key hashing.
    counters: Arc<[metrics::Counter; 4]>,
}

impl<V> Clone for TtlCache<V> {
    fn clone(&self) -> Self {
        TtlCache {
            slots: self.slots.clone(),
            max_entries: self.max_entries,
            stale_window: self.stale_window,
            counters: self.counters.clone(),
        }
    }
}

impl<V: Answer> TtlCache<V> {
    /// A cache named `name` (the `cache` metric label) holding at most
    /// `max_entries` answers, serving expired ones for up to `stale_window`
    /// when a refresh fails.
    ///
    /// The counters are registered with the metrics recorder installed now,
    /// so install it first.
    pub(crate) fn new(name: &'static str, max_entries: usize, stale_window: Duration) -> Self {
        TtlCache {
            slots: Arc::new(Mutex::new(HashMap::new())),
            max_entries: max_entries.max(1),
            stale_window,
            counters: Arc::new(Served::ALL.map(|s| metrics::counter!(s.metric(), "cache" => name))),
        }
    }

    /// The cached answer for `key`, or the result of the future `resolve`
    /// makes (shared with every concurrent caller for the same key).
    ///
    /// `resolve` is only called on a miss: the resolution future is large
    /// (every DNS lookup of a route), and building and moving it on every
    /// cache hit cost more than the hit itself.
    ///
    /// The resolution completes even when the caller that started it goes
    /// away, as long as another caller is waiting on it (any clone of the
    /// shared future drives it).
    pub(crate) async fn get_or_resolve<F, Fut>(&self, key: &str, resolve: F) -> (Arc<V>, Served)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = V> + Send + 'static,
    {
        let (pending, first) = {
            // A poisoned lock only means another request panicked while
            // holding it; every update leaves the map consistent, so go on.
            // (Resolving uncached here instead would put the whole
            // resolution future inline in this one, which every cache hit
            // then has to build and move.)
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            match slots.get(key) {
                Some(Slot::Ready {
                    value,
                    expires,
                    stale,
                    ..
                }) if *expires > now => {
                    let served = if *stale { Served::Stale } else { Served::Hit };
                    let value = value.clone();
                    drop(slots);
                    self.count(served);
                    return (value, served);
                }
                Some(Slot::Pending(p)) => (p.clone(), false),
                old => {
                    let stale = match old {
                        Some(Slot::Ready {
                            value, stale_until, ..
                        }) if *stale_until > now => Some((value.clone(), *stale_until)),
                        _ => None,
                    };
                    let fut = self.resolution(key.to_string(), stale, resolve());
                    if slots.len() >= self.max_entries {
                        evict(&mut slots, self.max_entries);
                    }
                    slots.insert(key.to_string(), Slot::Pending(fut.clone()));
                    (fut, true)
                }
            }
        };
        // Counted on joining, so waiting requests show up while they wait.
        let joined = if first {
            Served::Miss
        } else {
            Served::Coalesced
        };
        self.count(joined);
        let (value, stale) = pending.await;
        if stale {
            self.count(Served::Stale);
            return (value, Served::Stale);
        }
        (value, joined)
    }

    fn count(&self, served: Served) {
        self.counters[served as usize].increment(1);
    }

    /// The shared future that resolves `key` and stores the outcome.
    fn resolution<F>(&self, key: String, stale: Option<(Arc<V>, Instant)>, resolve: F) -> Pending<V>
    where
        F: std::future::Future<Output = V> + Send + 'static,
    {
        let slots_ref = self.slots.clone();
        let stale_window = self.stale_window;
        async move {
            let value = Arc::new(resolve.await);
            let now = Instant::now();
            let mut slots = slots_ref.lock().unwrap_or_else(PoisonError::into_inner);
            if value.is_temporary()
                && let Some((old, stale_until)) = stale
            {
                // RFC 8767 §4: answer from the expired entry rather than fail,
                // and do not ask upstream again for a while (at most until the
                // stale window closes).
                let ttl = STALE_ANSWER_TTL.min(stale_until.saturating_duration_since(now));
                let served = Arc::new(old.as_stale(crate::dns::secs(ttl).max(1)));
                slots.insert(
                    key,
                    Slot::Ready {
                        value: served.clone(),
                        expires: now + ttl,
                        stale_until,
                        stale: true,
                    },
                );
                return (served, true);
            }
            let keep = value.keep_for();
            if value.is_temporary() || (keep.is_zero() && stale_window.is_zero()) {
                slots.remove(&key);
            } else {
                // Even an answer not to be reused fresh (TTL 0, or rounded
                // down to 0) is the last good one to fall back on.
                slots.insert(
                    key,
                    Slot::Ready {
                        value: value.clone(),
                        expires: now + keep,
                        stale_until: now + keep + stale_window,
                        stale: false,
                    },
                );
            }
            (value, false)
        }
        .boxed()
        .shared()
    }

    /// Number of entries (answers and resolutions in flight).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// Make room: drop answers past their stale window; if still full, the
/// tenth of the answers that expire soonest (resolutions in flight stay so
/// their waiters are not orphaned). Sorting once per tenth keeps this cheap.
fn evict<V>(slots: &mut HashMap<String, Slot<V>>, max: usize) {
    let now = Instant::now();
    slots.retain(|_, s| match s {
        Slot::Ready { stale_until, .. } => *stale_until > now,
        Slot::Pending(_) => true,
    });
    if slots.len() < max {
        return;
    }
    let mut ready: Vec<(Instant, String)> = slots
        .iter()
        .filter_map(|(k, s)| match s {
            Slot::Ready { stale_until, .. } => Some((*stale_until, k.clone())),
            Slot::Pending(_) => None,
        })
        .collect();
    ready.sort_unstable_by_key(|(until, _)| *until);
    let drop = (slots.len() + 1 - max).max(max / 10);
    for (_, key) in ready.into_iter().take(drop) {
        slots.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// (value, keep for, temporary failure)
    #[derive(Debug, Clone, PartialEq)]
    struct V(u32, Duration, bool);

    impl Answer for V {
        fn keep_for(&self) -> Duration {
            self.1
        }
        fn is_temporary(&self) -> bool {
            self.2
        }
        fn as_stale(&self, ttl: u32) -> Self {
            V(self.0 + 1000, Duration::from_secs(u64::from(ttl)), false)
        }
    }

    fn ok(n: u32, keep: Duration) -> V {
        V(n, keep, false)
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_resolution() {
        let cache: TtlCache<V> = TtlCache::new("t", 16, Duration::ZERO);
        let calls = Arc::new(AtomicUsize::new(0));
        let arrived = Arc::new(AtomicUsize::new(0));
        let (open, gate) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, calls, arrived, mut gate) =
                (cache.clone(), calls.clone(), arrived.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                // On the current-thread test runtime the increment and the
                // cache registration run in one poll, without a yield between.
                arrived.fetch_add(1, Ordering::SeqCst);
                cache
                    .get_or_resolve("k", move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        ok(7, Duration::from_secs(60))
                    })
                    .await
            }));
        }
        tern_testkit::wait_for("all callers waiting", Duration::from_secs(5), || {
            let n = arrived.load(Ordering::SeqCst);
            async move { (n == 8).then_some(()) }
        })
        .await;
        open.send(true).unwrap();
        let mut served = Vec::new();
        for t in tasks {
            let (v, s) = t.await.unwrap();
            assert_eq!(v.0, 7);
            served.push(s);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(served.iter().filter(|s| **s == Served::Miss).count(), 1);
        assert_eq!(
            served.iter().filter(|s| **s == Served::Coalesced).count(),
            7
        );
        // Now cached.
        let (v, s) = cache
            .get_or_resolve("k", || async { ok(8, Duration::ZERO) })
            .await;
        assert_eq!(s, Served::Hit);
        assert_eq!(v.0, 7);
    }

    #[tokio::test]
    async fn zero_ttl_is_not_kept_and_expiry_is_honoured() {
        let cache: TtlCache<V> = TtlCache::new("t", 16, Duration::ZERO);
        let (_, s) = cache
            .get_or_resolve("a", || async { ok(1, Duration::ZERO) })
            .await;
        assert_eq!(s, Served::Miss);
        let (v, _) = cache
            .get_or_resolve("a", || async { ok(2, Duration::from_millis(50)) })
            .await;
        assert_eq!(v.0, 2);
        let (v, s) = cache
            .get_or_resolve("a", || async { ok(3, Duration::ZERO) })
            .await;
        assert_eq!(s, Served::Hit);
        assert_eq!(v.0, 2);
        tern_testkit::wait_for("entry to expire", Duration::from_secs(5), || {
            let c = cache.clone();
            async move {
                let (v, _) = c
                    .get_or_resolve("a", || async { ok(4, Duration::ZERO) })
                    .await;
                (v.0 == 4).then_some(())
            }
        })
        .await;
    }

    #[tokio::test]
    async fn expired_answer_is_served_stale_when_refresh_fails() {
        let cache: TtlCache<V> = TtlCache::new("t", 16, Duration::from_secs(60));
        cache
            .get_or_resolve("a", || async { ok(1, Duration::from_millis(20)) })
            .await;
        let failing = || async { V(0, Duration::ZERO, true) };
        // Wait for expiry: then the failing refresh yields the stale copy.
        let v = tern_testkit::wait_for("stale answer", Duration::from_secs(5), || {
            let c = cache.clone();
            async move {
                let (v, s) = c.get_or_resolve("a", failing).await;
                (s == Served::Stale).then_some(v)
            }
        })
        .await;
        assert_eq!(v.0, 1001);
        assert_eq!(v.1, STALE_ANSWER_TTL);
        // Served stale from the cache without asking upstream again.
        let (v, s) = cache
            .get_or_resolve("a", || async { ok(5, Duration::from_secs(60)) })
            .await;
        assert_eq!((v.0, s), (1001, Served::Stale));
    }

    #[tokio::test]
    async fn failure_without_stale_window_is_returned() {
        let cache: TtlCache<V> = TtlCache::new("t", 16, Duration::ZERO);
        cache
            .get_or_resolve("a", || async { ok(1, Duration::from_millis(10)) })
            .await;
        let v = tern_testkit::wait_for("failure", Duration::from_secs(5), || {
            let c = cache.clone();
            async move {
                let (v, _) = c
                    .get_or_resolve("a", || async { V(0, Duration::ZERO, true) })
                    .await;
                v.2.then_some(v)
            }
        })
        .await;
        assert_eq!(v.0, 0);
    }

    #[tokio::test]
    async fn full_cache_evicts_the_soonest_expiring() {
        let cache: TtlCache<V> = TtlCache::new("t", 20, Duration::ZERO);
        // "long" first, then 19 short-lived answers fill the cache.
        cache
            .get_or_resolve("long", || async { ok(1, Duration::from_secs(600)) })
            .await;
        for i in 0..40 {
            cache
                .get_or_resolve(&format!("k{i}"), || async {
                    ok(1, Duration::from_secs(60))
                })
                .await;
            assert!(cache.len() <= 20);
        }
        let (_, s) = cache
            .get_or_resolve("long", || async { ok(2, Duration::from_secs(600)) })
            .await;
        assert_eq!(s, Served::Hit, "the longest-lived answer stays");
    }
}
