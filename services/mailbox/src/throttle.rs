//! Failed-login throttling per account and per client address.
//!
//! After `limit` failed logins within `window` for one account name, or
//! from one client address, further attempts for it are refused without
//! checking the password until the oldest of those failures is older than
//! `window` (a sliding window). Refused attempts are not counted, so a
//! lock always ends `window` after the failures that caused it.
//!
//! The state is per process: replicas behind a load balancer each count on
//! their own, so the effective limit is `limit` × replicas. Per-account
//! locking also lets anyone lock an account out for `window` by failing on
//! purpose; that is the price of stopping password guessing spread over
//! many client addresses.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Failed-login counters shared by IMAP, POP3 and the Authenticate gRPC call.
pub struct LoginThrottle {
    limit: usize,
    window: Duration,
    delay: Duration,
    state: Mutex<State>,
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

impl LoginThrottle {
    /// Refuse logins after `limit` failures within `window` (0 disables
    /// throttling); failed and refused logins are answered after `delay`.
    pub fn new(limit: u32, window: Duration, delay: Duration) -> Self {
        LoginThrottle {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            window,
            delay,
            state: Mutex::new(State::default()),
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
    pub fn is_locked(&self, name: &str, client: Option<IpAddr>) -> bool {
        self.is_locked_at(name, client, Instant::now())
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

    /// A login as `name` from `client` failed.
    pub fn failed(&self, name: &str, client: Option<IpAddr>) {
        self.failed_at(name, client, Instant::now());
    }

    fn failed_at(&self, name: &str, client: Option<IpAddr>, now: Instant) {
        if self.limit == 0 {
            return;
        }
        let mut st = self.state();
        let (limit, window) = (self.limit, self.window);
        if let Some(ip) = client {
            record(&mut st.clients, client_key(ip), limit, now, window);
        }
        record(&mut st.accounts, account_key(name), limit, now, window);
    }

    /// A login as `name` succeeded: its account's failures are forgotten.
    /// The client address's are not, so logging in to one's own account
    /// does not reset a count of guesses at others.
    pub fn succeeded(&self, name: &str) {
        if self.limit == 0 {
            return;
        }
        self.state().accounts.remove(&account_key(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn locks_an_account_after_limit_failures_in_the_window() {
        let t = LoginThrottle::new(3, W, Duration::ZERO);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(!t.is_locked_at("Alice@Example.com", ip("192.0.2.1"), t0));
            t.failed_at("alice@example.com", ip(&format!("192.0.2.{}", i + 1)), t0);
        }
        // Any client, any spelling of the name.
        assert!(t.is_locked_at("ALICE@example.com", ip("198.51.100.9"), t0));
        assert!(t.is_locked_at("alice@example.com", None, t0));
        assert!(!t.is_locked_at("bob@example.com", ip("198.51.100.9"), t0));
        // The window slides: unlocked once the oldest failure is W old.
        assert!(t.is_locked_at("alice@example.com", None, t0 + W - Duration::from_secs(1)));
        assert!(!t.is_locked_at("alice@example.com", None, t0 + W));
    }

    #[test]
    fn locks_a_client_address_across_account_names() {
        let t = LoginThrottle::new(2, W, Duration::ZERO);
        let t0 = Instant::now();
        t.failed_at("a@example.com", ip("2001:db8:1:2::1"), t0);
        t.failed_at("b@example.com", ip("2001:db8:1:2::99"), t0);
        // The same /64 is one client; another /64 is not.
        assert!(t.is_locked_at("c@example.com", ip("2001:db8:1:2::5"), t0));
        assert!(!t.is_locked_at("c@example.com", ip("2001:db8:1:3::5"), t0));
        assert!(!t.is_locked_at("c@example.com", None, t0));
        // A success clears the account, not the client.
        t.failed_at("a@example.com", ip("192.0.2.7"), t0);
        assert!(t.is_locked_at("a@example.com", None, t0));
        t.succeeded("a@example.com");
        assert!(!t.is_locked_at("a@example.com", None, t0));
        assert!(t.is_locked_at("a@example.com", ip("2001:db8:1:2::1"), t0));
        // IPv4-mapped IPv6 is the IPv4 address.
        t.failed_at("x@example.com", ip("::ffff:192.0.2.7"), t0);
        assert!(t.is_locked_at("y@example.com", ip("192.0.2.7"), t0));
    }

    #[test]
    fn limit_zero_disables() {
        let t = LoginThrottle::new(0, W, Duration::ZERO);
        let t0 = Instant::now();
        for _ in 0..100 {
            t.failed_at("a@example.com", ip("192.0.2.1"), t0);
        }
        assert!(!t.is_locked_at("a@example.com", ip("192.0.2.1"), t0));
    }
}
