//! Connection reuse: SMTP sessions left open after a transaction, keyed by
//! site (the resolver's key for "same MX host set") and egress identity, so
//! the next message to that site skips the TCP, greeting, EHLO and TLS
//! handshakes. Bounded by messages per connection and idle time (like
//! Postfix's `smtp_connection_reuse_count_limit` and
//! `smtp_connection_cache_time_limit`); a reaper closes idle sessions with
//! QUIT so remote servers are not left holding dead connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_smtp::client::SmtpClient;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::limit::Lease;

/// Any stream a session runs over (plain TCP or TLS).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A session over either kind of stream.
pub(crate) type Conn = SmtpClient<Box<dyn Io>>;

/// An open session ready for a new transaction.
pub(crate) struct Session {
    /// The SMTP client, after EHLO (and STARTTLS when used).
    pub conn: Conn,
    /// The MX host name it is connected to.
    pub host: String,
    /// Whether the session runs over TLS.
    pub tls: bool,
    /// Transactions already run on it.
    pub messages: usize,
    /// When it last finished a transaction.
    pub idle_since: Instant,
    /// Its slot in the cluster-wide per-site concurrency limit, if limited.
    pub lease: Option<Lease>,
    /// Whether the last transaction left the session in step and usable.
    pub reusable: bool,
}

/// Idle sessions by key.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Mutex<HashMap<String, Vec<Session>>>>,
    /// Most transactions on one connection.
    pub max_messages: usize,
    /// Longest a session may sit idle.
    pub max_idle: Duration,
}

impl Pool {
    /// An empty pool.
    pub fn new(max_messages: usize, max_idle: Duration) -> Pool {
        Pool {
            inner: Arc::default(),
            max_messages,
            max_idle,
        }
    }

    /// Take the most recently used live session for `key`; expired ones
    /// found on the way are closed.
    pub fn take(&self, key: &str) -> Option<Session> {
        let mut expired = Vec::new();
        let got = {
            let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let list = map.get_mut(key)?;
            let mut got = None;
            while let Some(s) = list.pop() {
                if s.idle_since.elapsed() < self.max_idle {
                    got = Some(s);
                    break;
                }
                expired.push(s);
            }
            if list.is_empty() {
                map.remove(key);
            }
            got
        };
        close_pooled(expired);
        if got.is_some() {
            metrics::gauge!("tern_delivery_idle_connections").decrement(1.0);
        }
        got
    }

    /// Offer a session back after a clean transaction; closed instead when
    /// it has carried its last message.
    pub fn put(&self, key: String, mut s: Session) {
        s.idle_since = Instant::now();
        if s.messages >= self.max_messages || self.max_idle.is_zero() {
            close_all(vec![s]);
            return;
        }
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_default().push(s);
        metrics::gauge!("tern_delivery_idle_connections").increment(1.0);
    }

    /// Close sessions idle longer than the limit.
    pub fn reap(&self) {
        let mut expired = Vec::new();
        {
            let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, list| {
                let (keep, old): (Vec<_>, Vec<_>) = std::mem::take(list)
                    .into_iter()
                    .partition(|s| s.idle_since.elapsed() < self.max_idle);
                expired.extend(old);
                *list = keep;
                !list.is_empty()
            });
        }
        close_pooled(expired);
    }

    /// Close everything (shutdown).
    pub fn close(&self) -> Vec<tokio::task::JoinHandle<()>> {
        let all: Vec<Session> = {
            let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().flat_map(|(_, v)| v).collect()
        };
        metrics::gauge!("tern_delivery_idle_connections").decrement(all.len() as f64);
        all.into_iter().map(|s| tokio::spawn(quit(s))).collect()
    }
}

fn close_pooled(sessions: Vec<Session>) {
    metrics::gauge!("tern_delivery_idle_connections").decrement(sessions.len() as f64);
    close_all(sessions);
}

fn close_all(sessions: Vec<Session>) {
    for s in sessions {
        tokio::spawn(quit(s));
    }
}

async fn quit(mut s: Session) {
    s.conn.quit().await;
    if let Some(lease) = s.lease.take() {
        lease.release().await;
    }
}
