//! Per-destination message rate limits that hold across every delivery
//! replica together.
//!
//! A rate of `n` messages per `period` is a fixed-window counter: time is cut
//! into windows of `period` (aligned to the Unix epoch, so every replica
//! agrees on where a window starts), and the messages sent to a site in the
//! current window are counted in one key of the JetStream key-value bucket
//! [`RATES_BUCKET`] (file storage; a site's key expires
//! [`RATE_WINDOW_TTL`] after its last use): `<site>.p<period ms>`, its value
//! `<window number> <count>`. A replica takes tokens with compare-and-set:
//! it reads the key and writes the new count with the revision it read (a
//! value from an older window counts as 0; a key not there yet is
//! *created*); a write that lost a race to another replica fails on the
//! revision and is retried with the new count, so the count never exceeds
//! `n` whatever the number of replicas. One key per site, not per window,
//! keeps the bucket small.
//!
//! Under contention every replica's write costs one round trip and at most
//! one of the racing writes wins each round, so a replica takes tokens in
//! blocks (`n / 20` at a time, at least 1) and spends them locally within
//! that window: a hot window sees about 20 successful writes, not `n`.
//! Tokens a replica claimed but did not spend before the window ends are
//! lost — the limit is only ever under-used, never exceeded. Once a replica
//! has seen the window full it stops asking until the window ends. Fixed
//! windows allow up to `2n` in one `period` that straddles a window
//! boundary (`n` at the end of one window, `n` at the start of the next).
//! Replicas whose clocks disagree count against the latest window any of
//! them has written. If the bucket cannot be reached no token is given (an
//! outage never lifts the limit).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use tern_runtime::bus;
use tern_runtime::config::{ConfigValue, parse_duration};

pub use tern_runtime::bus::RATES_BUCKET;
/// How long a site's counter is kept after its last use (longer than the
/// longest period).
pub const RATE_WINDOW_TTL: Duration = Duration::from_secs(2 * 3600);
/// The longest period a rate may be given for.
pub const MAX_RATE_PERIOD: Duration = Duration::from_secs(3600);
/// Most compare-and-set rounds for one token before giving up on this try.
const CAS_TRIES: usize = 16;

/// A message rate limit: at most `count` messages per `period` to a site, or
/// none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateLimit {
    /// No limit.
    #[default]
    Unlimited,
    /// At most `count` messages in each window of `period`.
    PerWindow {
        /// Messages per window (at least 1).
        count: u64,
        /// Window length (1 ms to [`MAX_RATE_PERIOD`]).
        period: Duration,
    },
}

impl RateLimit {
    fn parse(s: &str) -> Option<RateLimit> {
        let s = s.trim();
        if s.is_empty() || s == "0" || s.eq_ignore_ascii_case("none") {
            return Some(RateLimit::Unlimited);
        }
        let (count, per) = s.split_once('/')?;
        let count: u64 = count.trim().parse().ok()?;
        if count == 0 {
            return Some(RateLimit::Unlimited);
        }
        let per = per.trim();
        // "10/s" is "10/1s".
        let period = if per.starts_with(|c: char| c.is_ascii_digit()) {
            parse_duration(per)?
        } else {
            parse_duration(&format!("1{per}"))?
        };
        if period.is_zero() || period > MAX_RATE_PERIOD {
            return None;
        }
        Some(RateLimit::PerWindow { count, period })
    }
}

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RateLimit::Unlimited => f.write_str("none"),
            RateLimit::PerWindow { count, period } => write!(f, "{count}/{period:?}"),
        }
    }
}

impl ConfigValue for RateLimit {
    const EXPECTED: &'static str =
        "a rate like 100/s, 600/m or 50/10s (at most 1h), or empty/none for no limit";
    fn parse_value(s: &str) -> Option<Self> {
        RateLimit::parse(s)
    }
}

/// Per-destination rate limits: `domain=rate` pairs separated by commas
/// (`gmail.com=100/s,small.example=10/m`; `none` lifts the default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits(pub BTreeMap<String, RateLimit>);

impl ConfigValue for RateLimits {
    const EXPECTED: &'static str = "comma-separated domain=rate pairs (rate like 100/s or none)";
    fn parse_value(s: &str) -> Option<Self> {
        let mut map = BTreeMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (domain, rate) = item.split_once('=')?;
            let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
            if domain.is_empty() {
                return None;
            }
            map.insert(domain, RateLimit::parse(rate)?);
        }
        Some(RateLimits(map))
    }
}

/// What this process knows about one site's current window.
#[derive(Default)]
struct Local {
    /// The window this is about.
    window: u64,
    /// Tokens claimed in the bucket and not spent yet.
    tokens: u64,
    /// The window is known to be full.
    full: bool,
    /// Jobs sent back to wait for a later window, in this window.
    deferred: u64,
}

/// Takes message tokens from [`RATES_BUCKET`].
#[derive(Clone)]
pub(crate) struct RateLimiter {
    kv: kv::Store,
    default: RateLimit,
    per_destination: Arc<RateLimits>,
    local: Arc<Mutex<HashMap<String, Local>>>,
}

impl RateLimiter {
    /// Create (or open) the bucket.
    pub async fn new(
        js: &jetstream::Context,
        replicas: usize,
        default: RateLimit,
        per_destination: RateLimits,
    ) -> Result<RateLimiter, bus::BusError> {
        let kv = js
            .create_key_value(kv::Config {
                bucket: RATES_BUCKET.into(),
                history: 1,
                max_age: RATE_WINDOW_TTL,
                // File, not memory: a memory bucket vanishes when its NATS
                // server restarts, and every later claim then fails.
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| bus::BusError::Setup {
                what: RATES_BUCKET.into(),
                message: e.to_string(),
            })?;
        Ok(RateLimiter {
            kv,
            default,
            per_destination: Arc::new(per_destination),
            local: Arc::default(),
        })
    }

    /// The rate limit for a destination domain.
    pub fn limit_for(&self, destination: &str) -> RateLimit {
        self.per_destination
            .0
            .get(&destination.to_ascii_lowercase())
            .copied()
            .unwrap_or(self.default)
    }

    /// Take one message token for `site`: `Ok` to send now, or `Err(delay)`
    /// after which the job should be tried again (the next window with room,
    /// as far as this process can tell).
    pub async fn take(&self, site: &str, limit: RateLimit) -> Result<(), Duration> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.take_at(site, limit, now).await
    }

    /// [`RateLimiter::take`] at `now` (since the Unix epoch).
    async fn take_at(&self, site: &str, limit: RateLimit, now: Duration) -> Result<(), Duration> {
        let RateLimit::PerWindow { count, period } = limit else {
            return Ok(());
        };
        let period_ms = period.as_millis().max(1) as u64;
        let now_ms = now.as_millis() as u64;
        let window = now_ms / period_ms;
        let until_next = Duration::from_millis((window + 1) * period_ms - now_ms);
        let token = bus::kv_token(site);
        let local_key = format!("{token}.p{period_ms}");
        let known_full = {
            let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
            let l = local.entry(local_key.clone()).or_default();
            if l.window != window {
                *l = Local {
                    window,
                    ..Local::default()
                };
            }
            if l.tokens > 0 {
                l.tokens -= 1;
                return Ok(());
            }
            l.full
        };
        if known_full {
            return Err(self.later(&local_key, window, count, period, until_next));
        }
        let block = (count / 20).max(1);
        match self.claim(&local_key, window, count, block).await {
            // Lost every race: not full, just busy; come back very soon.
            Ok(None) => Err(Duration::from_millis(
                50 + u64::from(std::process::id() % 50),
            )),
            Ok(Some(0)) => {
                let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(l) = local.get_mut(&local_key)
                    && l.window == window
                {
                    l.full = true;
                }
                drop(local);
                Err(self.later(&local_key, window, count, period, until_next))
            }
            Ok(Some(got)) => {
                let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(l) = local.get_mut(&local_key)
                    && l.window == window
                {
                    l.tokens += got - 1;
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, site, "rate limiter unavailable; holding the job back");
                Err(until_next.max(Duration::from_secs(1)))
            }
        }
    }

    /// How long a job that found the window full should stay away: until
    /// the next window, plus one window for every `count` jobs this process
    /// already sent back in this one, so a backlog comes back spread over
    /// the windows that can take it rather than all at the next one.
    fn later(
        &self,
        local_key: &str,
        window: u64,
        count: u64,
        period: Duration,
        until_next: Duration,
    ) -> Duration {
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        let ahead = match local.get_mut(local_key) {
            Some(l) if l.window == window => {
                l.deferred += 1;
                (l.deferred - 1) / count
            }
            _ => 0,
        };
        // Up to an hour ahead at most; a short jitter spreads the returns.
        let ahead = ahead.min(3600 / period.as_secs().max(1));
        let jitter = Duration::from_millis(u64::from(std::process::id() % 7) * 3 + ahead % 11);
        until_next + period * ahead as u32 + jitter
    }

    /// Add up to `block` to `window`'s count in `key` without passing
    /// `count`; how many were added (0: the window is full), `None` if every
    /// compare-and-set round was lost to other replicas.
    async fn claim(
        &self,
        key: &str,
        window: u64,
        count: u64,
        block: u64,
    ) -> Result<Option<u64>, String> {
        for _ in 0..CAS_TRIES {
            match self.kv.entry(key).await.map_err(|e| e.to_string())? {
                Some(e) if e.operation == kv::Operation::Put => {
                    let stored = std::str::from_utf8(&e.value).ok().and_then(|v| {
                        let (w, n) = v.split_once(' ')?;
                        Some((w.parse::<u64>().ok()?, n.parse::<u64>().ok()?))
                    });
                    // A replica with a clock ahead may have opened a later
                    // window already: count against that one.
                    let (w, used) = match stored {
                        Some((w, n)) if w >= window => (w, n),
                        Some(_) => (window, 0),
                        // Unreadable: start the window afresh.
                        None => (window, 0),
                    };
                    if used >= count {
                        return Ok(Some(0));
                    }
                    let got = block.min(count - used);
                    let value = format!("{w} {}", used + got);
                    match self.kv.update(key, value.into(), e.revision).await {
                        Ok(_) => return Ok(Some(got)),
                        // Another replica wrote first: read again.
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                        Err(e) => return Err(e.to_string()),
                    }
                }
                _ => {
                    let got = block.min(count);
                    let value = format!("{window} {got}");
                    match self.kv.create(key, value.into()).await {
                        Ok(_) => return Ok(Some(got)),
                        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Three replicas (own NATS connections) and many concurrent jobs in one
    /// window: exactly the limit is handed out, never more; the next window
    /// starts afresh.
    #[tokio::test]
    async fn replicas_together_never_exceed_the_window() {
        let nats = tern_testkit::NatsServer::start().await;
        let mut limiters = Vec::new();
        for _ in 0..3 {
            let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
            limiters.push(
                RateLimiter::new(&js, 1, RateLimit::Unlimited, RateLimits::default())
                    .await
                    .unwrap(),
            );
        }
        let limit = RateLimit::PerWindow {
            count: 100,
            period: Duration::from_secs(10),
        };
        // Mid-window, the same instant for everyone.
        let at = Duration::from_secs(1_800_000_005);
        let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..30 {
            let (l, taken) = (limiters[i % 3].clone(), taken.clone());
            tasks.push(tokio::spawn(async move {
                // Bounded: each task asks at most 60 times.
                for _ in 0..60 {
                    match l.take_at("mx.site.test", limit, at).await {
                        Ok(()) => {
                            taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        // The window is full: come back in the next one.
                        Err(wait) if wait >= Duration::from_secs(5) => return,
                        // Lost the races to the other replicas: again.
                        Err(_) => {}
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 100);
        let next = at + Duration::from_secs(10);
        assert!(
            limiters[1]
                .take_at("mx.site.test", limit, next)
                .await
                .is_ok()
        );
        // Another site has its own count.
        assert!(
            limiters[2]
                .take_at("mx.other.test", limit, at)
                .await
                .is_ok()
        );
    }

    #[test]
    fn rates_parse() {
        assert_eq!(
            RateLimit::parse_value("100/s"),
            Some(RateLimit::PerWindow {
                count: 100,
                period: Duration::from_secs(1)
            })
        );
        assert_eq!(
            RateLimit::parse_value("50/10s"),
            Some(RateLimit::PerWindow {
                count: 50,
                period: Duration::from_secs(10)
            })
        );
        assert_eq!(
            RateLimit::parse_value("600/m"),
            Some(RateLimit::PerWindow {
                count: 600,
                period: Duration::from_secs(60)
            })
        );
        assert_eq!(RateLimit::parse_value(""), Some(RateLimit::Unlimited));
        assert_eq!(RateLimit::parse_value("none"), Some(RateLimit::Unlimited));
        assert_eq!(RateLimit::parse_value("5"), None);
        assert_eq!(RateLimit::parse_value("5/2d"), None);
        assert_eq!(RateLimit::parse_value("x/s"), None);
        let r =
            RateLimits::parse_value("Gmail.com=100/s, small.example.=10/m,x.test=none").unwrap();
        assert_eq!(
            r.0.get("small.example"),
            Some(&RateLimit::PerWindow {
                count: 10,
                period: Duration::from_secs(60)
            })
        );
        assert_eq!(r.0.get("x.test"), Some(&RateLimit::Unlimited));
        assert!(r.0.contains_key("gmail.com"));
        assert!(RateLimits::parse_value("a.test").is_none());
    }
}
