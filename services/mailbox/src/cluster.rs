//! State shared by every mailbox replica, in NATS JetStream key-value
//! buckets: the failed-login counters ([`crate::throttle`], bucket
//! [`LOGIN_FAILURES_BUCKET`]) and the POP3 maildrop locks ([`crate::pop3`],
//! bucket [`POP3_LOCKS_BUCKET`]). Both buckets are file-backed, keep one
//! revision per key and give every entry its own time to live
//! ([`bus::ttl_bucket`]), so neither grows without bound.
//!
//! NATS is not allowed to take logins down with it. Every call is bounded by
//! [`KV_TIMEOUT`]; when the client is not connected, the buckets are not
//! open yet, or a call fails or times out, the caller gets `None` and uses
//! this replica's own in-process state instead, and for the next
//! [`KV_BACKOFF`] every call does so at once (a slow NATS then costs one
//! timeout per back-off, not one per login). Each such fallback is counted
//! in `tern_mailbox_kv_fallbacks_total`; the first one of a back-off is
//! logged as a warning, the recovery as info. Refusing every login while
//! NATS is down would turn a bus outage into a mail outage, and accepting
//! unlimited guesses would turn it into an open door; the per-replica state
//! keeps the old per-process guarantees (see the README).

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, kv};
use tern_runtime::Shutdown;
use tern_runtime::bus::{self, LOGIN_FAILURES_BUCKET, POP3_LOCKS_BUCKET};

/// Longest a replica waits for one key-value call before using its own state.
pub const KV_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failed call, how long every call uses the replica's own state
/// before NATS is tried again.
pub const KV_BACKOFF: Duration = Duration::from_secs(5);

/// Which shared bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// [`LOGIN_FAILURES_BUCKET`].
    LoginFailures,
    /// [`POP3_LOCKS_BUCKET`].
    Pop3Locks,
}

impl Bucket {
    fn name(self) -> &'static str {
        match self {
            Bucket::LoginFailures => LOGIN_FAILURES_BUCKET,
            Bucket::Pop3Locks => POP3_LOCKS_BUCKET,
        }
    }

    /// The `what` label of `tern_mailbox_kv_fallbacks_total`.
    fn label(self) -> &'static str {
        match self {
            Bucket::LoginFailures => "login_throttle",
            Bucket::Pop3Locks => "pop3_lock",
        }
    }
}

/// One open bucket and the JetStream context to write it with.
#[derive(Clone)]
pub struct Kv {
    /// The bucket.
    pub store: kv::Store,
    js: jetstream::Context,
}

impl Kv {
    /// Write `value` to `key` if its last revision is still `revision` (0:
    /// no message at all), expiring after `ttl`; `Ok(None)` when another
    /// writer got there first.
    pub async fn write(
        &self,
        key: &str,
        value: String,
        revision: u64,
        ttl: Duration,
    ) -> Result<Option<u64>, jetstream::context::PublishError> {
        match bus::kv_write_with_ttl(&self.js, &self.store, key, value.into(), revision, ttl).await
        {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The current value of `key` and its revision: `(None, revision)` when
    /// the key was deleted (the marker's revision), `(None, 0)` when it has
    /// no message at all. Either way `revision` is what a write expects.
    pub async fn read(&self, key: &str) -> Result<(Option<bytes::Bytes>, u64), kv::EntryError> {
        Ok(match self.store.entry(key).await? {
            Some(e) if e.operation == kv::Operation::Put => (Some(e.value), e.revision),
            Some(e) => (None, e.revision),
            None => (None, 0),
        })
    }

    /// Create `key` with `value` (expiring after `ttl`) unless it holds a
    /// value; the new revision, or `None` when it holds one.
    pub async fn create(
        &self,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, String> {
        // Most keys have no message at all; a deleted one has a marker
        // whose revision the write must name.
        let mut revision = 0;
        for _ in 0..2 {
            if let Some(r) = self
                .write(key, value.to_string(), revision, ttl)
                .await
                .map_err(|e| e.to_string())?
            {
                return Ok(Some(r));
            }
            match self.read(key).await.map_err(|e| e.to_string())? {
                (Some(_), _) => return Ok(None),
                (None, r) => revision = r,
            }
        }
        // The marker changed under us twice: someone else is busy with it.
        Ok(None)
    }
}

/// The shared buckets of this replica, and whether NATS answers.
pub struct Cluster {
    client: async_nats::Client,
    replica: String,
    login_failures: OnceLock<Kv>,
    pop3_locks: OnceLock<Kv>,
    /// Until when calls use the replica's own state (after a failure).
    down_until: Mutex<Option<Instant>>,
}

impl Cluster {
    /// Shared state over `client`; the buckets are opened by [`Cluster::open`].
    /// `replica` names this replica in lock owners and logs.
    pub fn new(client: async_nats::Client, replica: String) -> Arc<Cluster> {
        Arc::new(Cluster {
            client,
            replica,
            login_failures: OnceLock::new(),
            pop3_locks: OnceLock::new(),
            down_until: Mutex::new(None),
        })
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Open (creating them if needed) both buckets with `replicas` copies,
    /// retrying with back-off until done or shutdown. Until a bucket is
    /// open, calls on it use the replica's own state.
    pub async fn open(self: Arc<Self>, replicas: usize, shutdown: Shutdown) {
        let js = jetstream::new(self.client.clone());
        let mut delay = Duration::from_millis(200);
        for (bucket, cell) in [
            (Bucket::LoginFailures, &self.login_failures),
            (Bucket::Pop3Locks, &self.pop3_locks),
        ] {
            loop {
                match bus::ttl_bucket(&js, bucket.name(), replicas).await {
                    Ok(store) => {
                        let _ = cell.set(Kv {
                            store,
                            js: js.clone(),
                        });
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "shared mailbox state not available yet; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.wait() => return,
                        }
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    fn down_until(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // A plain value: a poisoned lock still holds a consistent one.
        self.down_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `op` on `bucket` within [`KV_TIMEOUT`]. `None` (NATS not
    /// connected, backing off after a failure, the bucket not open yet, or
    /// `op` failing or timing out) tells the caller to use its own state.
    pub async fn call<T, E, F, Fut>(&self, bucket: Bucket, op: F) -> Option<T>
    where
        E: std::fmt::Display,
        F: FnOnce(Kv) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let kv = match bucket {
            Bucket::LoginFailures => self.login_failures.get(),
            Bucket::Pop3Locks => self.pop3_locks.get(),
        };
        let fallback = || {
            metrics::counter!("tern_mailbox_kv_fallbacks_total", "what" => bucket.label())
                .increment(1);
            None
        };
        let was_down = {
            let down = self.down_until();
            match *down {
                Some(t) if Instant::now() < t => return fallback(),
                d => d.is_some(),
            }
        };
        let Some(kv) = kv.cloned() else {
            return fallback();
        };
        let error = if self.client.connection_state() != async_nats::connection::State::Connected {
            "not connected to NATS".to_string()
        } else {
            match tokio::time::timeout(KV_TIMEOUT, op(kv)).await {
                Ok(Ok(v)) => {
                    if was_down {
                        *self.down_until() = None;
                        tracing::info!("shared mailbox state in NATS reachable again");
                    }
                    return Some(v);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {KV_TIMEOUT:?}"),
            }
        };
        *self.down_until() = Some(Instant::now() + KV_BACKOFF);
        tracing::warn!(
            bucket = bucket.name(),
            error,
            "shared mailbox state unavailable; using this replica's own for {KV_BACKOFF:?}"
        );
        fallback()
    }
}
