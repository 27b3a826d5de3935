//! A small TTL-honouring answer cache with request coalescing: concurrent
//! requests for the same key share one upstream resolution, and the answer is
//! kept for as long as its TTL allows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

type Pending<V> = Shared<BoxFuture<'static, Arc<V>>>;

enum Slot<V> {
    Ready { value: Arc<V>, expires: Instant },
    Pending(Pending<V>),
}

/// A coalescing cache from string keys to `Arc<V>`.
pub(crate) struct TtlCache<V> {
    slots: Arc<Mutex<HashMap<String, Slot<V>>>>,
    max_entries: usize,
}

impl<V> Clone for TtlCache<V> {
    fn clone(&self) -> Self {
        TtlCache {
            slots: self.slots.clone(),
            max_entries: self.max_entries,
        }
    }
}

impl<V: Send + Sync + 'static> TtlCache<V> {
    /// A cache holding at most `max_entries` answers.
    pub(crate) fn new(max_entries: usize) -> Self {
        TtlCache {
            slots: Arc::new(Mutex::new(HashMap::new())),
            max_entries: max_entries.max(1),
        }
    }

    /// The cached answer for `key`, or the result of `resolve` (shared with
    /// every concurrent caller for the same key). `ttl` says how long an
    /// answer may be kept; zero means "do not keep".
    ///
    /// The resolution completes even when the caller that started it goes
    /// away, as long as another caller is waiting on it.
    pub(crate) async fn get_or_resolve<F>(
        &self,
        key: &str,
        ttl: fn(&V) -> Duration,
        resolve: F,
    ) -> (Arc<V>, bool)
    where
        F: std::future::Future<Output = V> + Send + 'static,
    {
        let pending = {
            let Ok(mut slots) = self.slots.lock() else {
                // A poisoned lock only means another request panicked; resolve uncached.
                return (Arc::new(resolve.await), false);
            };
            match slots.get(key) {
                Some(Slot::Ready { value, expires }) if *expires > Instant::now() => {
                    return (value.clone(), true);
                }
                Some(Slot::Pending(p)) => p.clone(),
                _ => {
                    let slots_ref = self.slots.clone();
                    let owned_key = key.to_string();
                    let fut = async move {
                        let value = Arc::new(resolve.await);
                        let keep = ttl(&value);
                        if let Ok(mut slots) = slots_ref.lock() {
                            if keep.is_zero() {
                                slots.remove(&owned_key);
                            } else {
                                slots.insert(
                                    owned_key,
                                    Slot::Ready {
                                        value: value.clone(),
                                        expires: Instant::now() + keep,
                                    },
                                );
                            }
                        }
                        value
                    }
                    .boxed()
                    .shared();
                    if slots.len() >= self.max_entries {
                        evict(&mut slots, self.max_entries);
                    }
                    slots.insert(key.to_string(), Slot::Pending(fut.clone()));
                    fut
                }
            }
        };
        (pending.await, false)
    }

    /// Number of entries (answers and resolutions in flight).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }
}

/// Make room: drop expired answers, then, if still full, every answer
/// (resolutions in flight stay so their waiters are not orphaned).
fn evict<V>(slots: &mut HashMap<String, Slot<V>>, max: usize) {
    let now = Instant::now();
    slots.retain(|_, s| match s {
        Slot::Ready { expires, .. } => *expires > now,
        Slot::Pending(_) => true,
    });
    if slots.len() >= max {
        slots.retain(|_, s| matches!(s, Slot::Pending(_)));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ttl_of(v: &(u32, Duration)) -> Duration {
        v.1
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_resolution() {
        let cache: TtlCache<(u32, Duration)> = TtlCache::new(16);
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
                    .get_or_resolve("k", ttl_of, async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let _ = gate.wait_for(|open| *open).await;
                        (7, Duration::from_secs(60))
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
        for t in tasks {
            let (v, hit) = t.await.unwrap();
            assert_eq!(v.0, 7);
            assert!(!hit, "every caller waited on the shared resolution");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Now cached.
        let (v, hit) = cache
            .get_or_resolve("k", ttl_of, async { (8, Duration::ZERO) })
            .await;
        assert!(hit);
        assert_eq!(v.0, 7);
    }

    #[tokio::test]
    async fn zero_ttl_is_not_kept_and_expiry_is_honoured() {
        let cache: TtlCache<(u32, Duration)> = TtlCache::new(16);
        let (_, hit) = cache
            .get_or_resolve("a", ttl_of, async { (1, Duration::ZERO) })
            .await;
        assert!(!hit);
        let (v, hit) = cache
            .get_or_resolve("a", ttl_of, async { (2, Duration::from_millis(50)) })
            .await;
        assert!(!hit);
        assert_eq!(v.0, 2);
        let (v, hit) = cache
            .get_or_resolve("a", ttl_of, async { (3, Duration::ZERO) })
            .await;
        assert!(hit);
        assert_eq!(v.0, 2);
        tern_testkit::wait_for("entry to expire", Duration::from_secs(5), || {
            let c = cache.clone();
            async move {
                let (v, _) = c
                    .get_or_resolve("a", ttl_of, async { (4, Duration::ZERO) })
                    .await;
                (v.0 == 4).then_some(())
            }
        })
        .await;
    }

    #[tokio::test]
    async fn full_cache_evicts() {
        let cache: TtlCache<(u32, Duration)> = TtlCache::new(2);
        for k in ["a", "b", "c", "d"] {
            cache
                .get_or_resolve(k, ttl_of, async { (1, Duration::from_secs(60)) })
                .await;
        }
        assert!(cache.len() <= 2);
    }
}
