//! Failed-login throttling per account and per client address.
//!
//! After `limit` failed logins within `window` for one account name, or
//! from one client address, further attempts for it are refused without
//! checking the password until the oldest of those failures is older than
//! `window` (a sliding window). Refused attempts are not counted, so a
//! lock always ends `window` after the failures that caused it. Per-account
//! locking also lets anyone lock an account out for `window` by failing on
//! purpose; that is the price of stopping password guessing spread over
//! many client addresses.
//!
//! **Shared by every replica.** The failures live in the key-value bucket
//! [`LOGIN_FAILURES_BUCKET`](tern_runtime::bus::LOGIN_FAILURES_BUCKET), so
//! `limit` holds for the cluster, not per replica, and survives restarts:
//! key `account.<first 128 bits of SHA-256 of the normalized name, hex>`
//! (names may contain anything; a hash is a valid key of fixed length) or
//! `client.<address>` (IPv6 by its /64); value the failure times (Unix ms,
//! oldest first, at most `limit`). A failure is recorded with optimistic
//! concurrency: read the key, write the pruned list plus the new time with
//! the revision read, and on a conflict read again, so concurrent failures
//! on many replicas are all counted. Every write gives the entry a time to
//! live of `window`, so a key disappears one window after its last failure
//! and the bucket holds only recent failures. A success purges its
//! account's key (only when the check before it saw one, so ordinary
//! logins cost one read and no write).
//!
//! **When NATS is unreachable or slow** ([`crate::cluster`]) a replica
//! counts in its own memory instead: a failure the bucket did not take is
//! recorded locally, and a login is refused when either the bucket (when it
//! answers) or the local counters reach `limit`. During an outage this is
//! the old per-process throttle (an attacker gets up to `limit` guesses per
//! replica), and the counts made then still apply after NATS is back until
//! they leave the window. Wall clocks of the replicas are compared (the
//! times are Unix times), so a replica whose clock is off shifts the
//! window by as much.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use sha2::{Digest, Sha256};
use tern_runtime::bus;

use crate::cluster::{Bucket, Cluster, Kv};

/// Most keys tracked per map. Past this, expired entries are dropped and,
/// if still full, new keys are not tracked (bounded memory under a flood of
/// made-up user names or addresses).
const MAX_KEYS: usize = 100_000;
/// Longest account name kept as a key.
const MAX_NAME: usize = 256;

/// Failure times of one key, oldest first; at most `limit` of them.
#[derive(Default)]
struct Failures(VecDeque<Instant>);

impl Failures {
    fn prune(&mut self, now: Instant, window: Duration) {
        while self
            .0
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            self.0.pop_front();
        }
    }
}

#[derive(Default)]
struct State {
    accounts: HashMap<String, Failures>,
    clients: HashMap<IpAddr, Failures>,
}

/// Failed-login counters shared by IMAP, POP3 and the Authenticate gRPC
/// call: in the shared bucket, and in memory for what the bucket could not
/// take.
pub struct LoginThrottle {
    limit: usize,
    window: Duration,
    delay: Duration,
    state: Mutex<State>,
    cluster: Option<Arc<Cluster>>,
}

/// What [`LoginThrottle::check`] found.
pub struct Check {
    /// Refuse the login unchecked.
    pub locked: bool,
    /// The bucket may hold failures of the account (a success purges them).
    account_in_bucket: bool,
}

/// The key of a client address: IPv4 as is, IPv6 by its /64 (one end
/// site usually holds a whole /64, so per-address counting would be
/// trivially bypassed).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn account_key(name: &str) -> String {
    let mut k = crate::accounts::normalize_address(name).unwrap_or_else(|| name.to_lowercase());
    if k.len() > MAX_NAME {
        let mut end = MAX_NAME;
        while !k.is_char_boundary(end) {
            end -= 1;
        }
        k.truncate(end);
    }
    k
}

fn locked<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Failures>,
    key: &K,
    limit: usize,
    now: Instant,
    window: Duration,
) -> bool {
    match map.get_mut(key) {
        Some(f) => {
            f.prune(now, window);
            f.0.len() >= limit
        }
        None => false,
    }
}

fn record<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Failures>,
    key: K,
    limit: usize,
    now: Instant,
    window: Duration,
) {
    if map.len() >= MAX_KEYS && !map.contains_key(&key) {
        map.retain(|_, f| {
            f.prune(now, window);
            !f.0.is_empty()
        });
        if map.len() >= MAX_KEYS {
            return;
        }
    }
    let f = map.entry(key).or_default();
    f.prune(now, window);
    f.0.push_back(now);
    while f.0.len() > limit {
        f.0.pop_front();
    }
}

/// Key of `name`'s failures in the bucket.
fn account_kv_key(name: &str) -> String {
    let digest = Sha256::digest(account_key(name).as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("account.{hex}")
}

/// Key of `ip`'s failures in the bucket.
fn client_kv_key(ip: IpAddr) -> String {
    format!("client.{}", bus::kv_token(&client_key(ip).to_string()))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The failure times in a bucket value that are within `window` of `now`.
fn recent(value: Option<&[u8]>, now: u64, window: Duration) -> Vec<u64> {
    let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
    let mut times: Vec<u64> = value
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or_default()
        .split_ascii_whitespace()
        .filter_map(|t| t.parse().ok())
        .filter(|t| now.saturating_sub(*t) < window)
        .collect();
    times.sort_unstable();
    times
}

/// Most optimistic-concurrency rounds for one failure before giving up on
/// recording it in the bucket (it is then counted locally).
const CAS_TRIES: usize = 32;

/// Add a failure at `now` to `key`; `false` when every round was lost to
/// other writers.
async fn record_in(
    kv: &Kv,
    key: &str,
    now: u64,
    limit: usize,
    window: Duration,
) -> Result<bool, String> {
    for _ in 0..CAS_TRIES {
        let (value, revision) = kv.read(key).await.map_err(|e| e.to_string())?;
        let mut times = recent(value.as_deref(), now, window);
        times.push(now);
        times.sort_unstable();
        let excess = times.len().saturating_sub(limit);
        times.drain(..excess);
        let value = times
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        if kv
            .write(key, value, revision, window)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

impl LoginThrottle {
    /// Refuse logins after `limit` failures within `window` (0 disables
    /// throttling); failed and refused logins are answered after `delay`.
    /// With `cluster`, failures are counted in its shared bucket.
    pub fn new(
        limit: u32,
        window: Duration,
        delay: Duration,
        cluster: Option<Arc<Cluster>>,
    ) -> Self {
        LoginThrottle {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            window,
            delay,
            state: Mutex::new(State::default()),
            cluster,
        }
    }

    /// How long to wait before answering a failed or refused login.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is plain counters: a panic elsewhere cannot leave it
        // inconsistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Should a login as `name` from `client` be refused unchecked?
    pub async fn check(&self, name: &str, client: Option<IpAddr>) -> Check {
        if self.limit == 0 {
            return Check {
                locked: false,
                account_in_bucket: false,
            };
        }
        let local = self.is_locked_at(name, client, Instant::now());
        let shared = match &self.cluster {
            Some(c) => {
                let (account, client) = (account_kv_key(name), client.map(client_kv_key));
                c.call(Bucket::LoginFailures, |kv| async move {
                    let by_client = async {
                        match &client {
                            Some(k) => kv.read(k).await.map(|(v, _)| v),
                            None => Ok(None),
                        }
                    };
                    let (a, c) = futures::join!(kv.read(&account), by_client);
                    Ok::<_, kv::EntryError>((a?.0, c?))
                })
                .await
            }
            None => None,
        };
        let Some((account, client)) = shared else {
            return Check {
                locked: local,
                account_in_bucket: self.cluster.is_some(),
            };
        };
        let now = unix_ms();
        let over =
            |v: &Option<bytes::Bytes>| recent(v.as_deref(), now, self.window).len() >= self.limit;
        Check {
            locked: local || over(&account) || over(&client),
            account_in_bucket: account.is_some(),
        }
    }

    fn is_locked_at(&self, name: &str, client: Option<IpAddr>, now: Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        let mut st = self.state();
        let (limit, window) = (self.limit, self.window);
        let by_client =
            client.is_some_and(|ip| locked(&mut st.clients, &client_key(ip), limit, now, window));
        by_client || locked(&mut st.accounts, &account_key(name), limit, now, window)
    }

    /// A login as `name` from `client` failed: count it in the bucket, or
    /// locally where the bucket did not take it.
    pub async fn failed(&self, name: &str, client: Option<IpAddr>) {
        if self.limit == 0 {
            return;
        }
        let (mut account_done, mut client_done) = (false, client.is_none());
        if let Some(c) = &self.cluster {
            let (account, client) = (account_kv_key(name), client.map(client_kv_key));
            let (now, limit, window) = (unix_ms(), self.limit, self.window);
            let done = c
                .call(Bucket::LoginFailures, |kv| async move {
                    let by_client = async {
                        match &client {
                            Some(k) => record_in(&kv, k, now, limit, window).await,
                            None => Ok(true),
                        }
                    };
                    let (a, c) =
                        futures::join!(record_in(&kv, &account, now, limit, window), by_client);
                    Ok::<_, String>((a?, c?))
                })
                .await;
            if let Some((a, c)) = done {
                (account_done, client_done) = (a, c);
            }
        }
        self.failed_at(name, client, Instant::now(), !account_done, !client_done);
    }

    /// Count a failure in memory: for the account name if `account`, for
    /// the client address if `by_client`.
    fn failed_at(
        &self,
        name: &str,
        client: Option<IpAddr>,
        now: Instant,
        account: bool,
        by_client: bool,
    ) {
        if self.limit == 0 {
            return;
        }
        let mut st = self.state();
        let (limit, window) = (self.limit, self.window);
        if let Some(ip) = client.filter(|_| by_client) {
            record(&mut st.clients, client_key(ip), limit, now, window);
        }
        if account {
            record(&mut st.accounts, account_key(name), limit, now, window);
        }
    }

    /// A login as `name` succeeded (after `check`): its account's failures
    /// are forgotten. The client address's are not, so logging in to one's
    /// own account does not reset a count of guesses at others.
    pub async fn succeeded(&self, name: &str, check: &Check) {
        if self.limit == 0 {
            return;
        }
        self.state().accounts.remove(&account_key(name));
        if let Some(c) = self.cluster.as_ref().filter(|_| check.account_in_bucket) {
            let key = account_kv_key(name);
            c.call(Bucket::LoginFailures, |kv| async move {
                kv.store.purge_with_ttl(&key, bus::TTL_MARKER_TTL).await
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const W: Duration = Duration::from_secs(60);

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn locks_an_account_after_limit_failures_in_the_window() {
        let t = LoginThrottle::new(3, W, Duration::ZERO, None);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(!t.is_locked_at("Alice@Example.com", ip("192.0.2.1"), t0));
            t.failed_at(
                "alice@example.com",
                ip(&format!("192.0.2.{}", i + 1)),
                t0,
                true,
                true,
            );
        }
        // Any client, any spelling of the name.
        assert!(t.is_locked_at("ALICE@example.com", ip("198.51.100.9"), t0));
        assert!(t.is_locked_at("alice@example.com", None, t0));
        assert!(!t.is_locked_at("bob@example.com", ip("198.51.100.9"), t0));
        // The window slides: unlocked once the oldest failure is W old.
        assert!(t.is_locked_at("alice@example.com", None, t0 + W - Duration::from_secs(1)));
        assert!(!t.is_locked_at("alice@example.com", None, t0 + W));
    }

    #[tokio::test]
    async fn locks_a_client_address_across_account_names() {
        let t = LoginThrottle::new(2, W, Duration::ZERO, None);
        let t0 = Instant::now();
        t.failed_at("a@example.com", ip("2001:db8:1:2::1"), t0, true, true);
        t.failed_at("b@example.com", ip("2001:db8:1:2::99"), t0, true, true);
        // The same /64 is one client; another /64 is not.
        assert!(t.is_locked_at("c@example.com", ip("2001:db8:1:2::5"), t0));
        assert!(!t.is_locked_at("c@example.com", ip("2001:db8:1:3::5"), t0));
        assert!(!t.is_locked_at("c@example.com", None, t0));
        // A success clears the account, not the client.
        t.failed_at("a@example.com", ip("192.0.2.7"), t0, true, true);
        assert!(t.is_locked_at("a@example.com", None, t0));
        t.succeeded("a@example.com", &t.check("a@example.com", None).await)
            .await;
        assert!(!t.is_locked_at("a@example.com", None, t0));
        assert!(t.is_locked_at("a@example.com", ip("2001:db8:1:2::1"), t0));
        // IPv4-mapped IPv6 is the IPv4 address.
        t.failed_at("x@example.com", ip("::ffff:192.0.2.7"), t0, true, true);
        assert!(t.is_locked_at("y@example.com", ip("192.0.2.7"), t0));
    }

    /// Three replicas (own NATS connections) failing concurrently for one
    /// account: the bucket counts every failure once, for all of them, and
    /// a success on one clears the account for all.
    #[tokio::test]
    async fn replicas_count_failures_together() {
        let nats = tern_testkit::NatsServer::start().await;
        let mut replicas = Vec::new();
        for i in 0..3 {
            let client = async_nats::connect(nats.url()).await.unwrap();
            let cluster = Cluster::new(client, format!("r{i}"));
            cluster.clone().open(1, tern_runtime::Shutdown::new()).await;
            replicas.push(Arc::new(LoginThrottle::new(
                20,
                W,
                Duration::ZERO,
                Some(cluster),
            )));
        }
        let tasks: Vec<_> = (0..19)
            .map(|i| {
                let t = replicas[i % 3].clone();
                tokio::spawn(async move {
                    t.failed("Alice@Example.com", ip(&format!("192.0.2.{i}")))
                        .await;
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        for t in &replicas {
            assert!(!t.check("alice@example.com", None).await.locked);
            // The bucket took every failure; nothing was counted locally.
            assert!(t.state().accounts.is_empty());
        }
        replicas[0].failed("alice@example.com", None).await;
        for t in &replicas {
            assert!(t.check("alice@example.com", None).await.locked);
        }
        // Any name is a valid key.
        let odd = "*> odd.name\r\n\u{e9}";
        replicas[1].failed(odd, ip("2001:db8::1")).await;
        assert!(replicas[1].state().accounts.is_empty());
        let check = replicas[2].check(odd, ip("2001:db8::2")).await;
        assert!(!check.locked && check.account_in_bucket);
        let check = replicas[2].check("alice@example.com", None).await;
        replicas[2].succeeded("alice@example.com", &check).await;
        for t in &replicas {
            assert!(!t.check("alice@example.com", None).await.locked);
        }
    }

    #[test]
    fn limit_zero_disables() {
        let t = LoginThrottle::new(0, W, Duration::ZERO, None);
        let t0 = Instant::now();
        for _ in 0..100 {
            t.failed_at("a@example.com", ip("192.0.2.1"), t0, true, true);
        }
        assert!(!t.is_locked_at("a@example.com", ip("192.0.2.1"), t0));
    }
}
