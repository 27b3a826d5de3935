//! Connection reuse: SMTP sessions left open after a transaction, keyed by
//! site (the resolver's key for "same MX host set") and egress identity, so
//! the next message to that site skips the TCP, greeting, EHLO and TLS
//! handshakes. Bounded by messages per connection and idle time (like
//! Postfix's `smtp_connection_reuse_count_limit` and
//! `smtp_connection_cache_time_limit`); a reaper closes idle sessions with
//! QUIT so remote servers are not left holding dead connections.
//!
//! Jobs that could not get a connection (the site's cluster-wide slots are
//! all held) wait here: a session that finishes a transaction goes straight
//! to the oldest waiter for its key instead of into the idle list, and a
//! session that is worn out (message limit reached) hands its connection
//! slot to a waiter, which opens a fresh connection on it. So a process
//! keeps its own connections busy without asking the cluster-wide limiter
//! again, and its waiters wake the moment a session is free.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_smtp::client::SmtpClient;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

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
    /// Whether that TLS was verified (chain to a trusted root, certificate
    /// naming the host) and the host offers REQUIRETLS: it may carry
    /// REQUIRETLS messages (RFC 8689 §4.2.1).
    pub requiretls: bool,
    /// Transactions already run on it.
    pub messages: usize,
    /// Its own transaction limit (from the shaping plan), instead of the
    /// pool's.
    pub max_messages: Option<usize>,
    /// When it last finished a transaction.
    pub idle_since: Instant,
    /// Its slot in the cluster-wide per-site concurrency limit, if limited.
    pub lease: Option<Lease>,
    /// Whether the last transaction left the session in step and usable.
    pub reusable: bool,
}

/// What a waiting job is handed.
pub(crate) enum Handover {
    /// A session that just finished a transaction, ready for the next.
    Session(Box<Session>),
    /// The connection slot of a session that was closed (worn out): the
    /// waiter may open a new connection on it.
    Slot(Box<Lease>),
}

/// A job's place in the queue of waiters for one key.
pub(crate) type Waiter = oneshot::Receiver<Handover>;

/// What [`Pool::take_or_wait`] found.
pub(crate) enum Taken {
    /// An idle session.
    Session(Box<Session>),
    /// None idle: wait on this for a handover.
    Wait(Waiter),
}

#[derive(Default)]
struct Inner {
    idle: HashMap<String, Vec<Session>>,
    /// Jobs waiting for a session or a slot, oldest first.
    waiters: HashMap<String, VecDeque<oneshot::Sender<Handover>>>,
}

impl Inner {
    /// Hand `h` to the oldest waiter of `key` still waiting; give it back
    /// when there is none.
    fn hand_over(&mut self, key: &str, mut h: Handover) -> Option<Handover> {
        let Some(queue) = self.waiters.get_mut(key) else {
            return Some(h);
        };
        let mut left = Some(h);
        while let Some(tx) = queue.pop_front() {
            h = left.take()?;
            match tx.send(h) {
                Ok(()) => break,
                // That job stopped waiting (deadline, shutdown): next one.
                Err(back) => left = Some(back),
            }
        }
        if queue.is_empty() {
            self.waiters.remove(key);
        }
        left
    }
}

/// Idle sessions by key.
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Mutex<Inner>>,
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
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let map = &mut inner.idle;
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

    /// Take an idle session for `key`, or join the queue of jobs waiting
    /// for one (atomically, so a session put back in between is not missed).
    pub fn take_or_wait(&self, key: &str) -> Taken {
        if let Some(s) = self.take(key) {
            return Taken::Session(Box::new(s));
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = inner.idle.get_mut(key).and_then(Vec::pop) {
            drop(inner);
            metrics::gauge!("tern_delivery_idle_connections").decrement(1.0);
            return Taken::Session(Box::new(s));
        }
        let (tx, rx) = oneshot::channel();
        inner
            .waiters
            .entry(key.to_string())
            .or_default()
            .push_back(tx);
        Taken::Wait(rx)
    }

    /// Offer a session back after a clean transaction: to a waiting job
    /// first, else into the idle list. A session that has carried its last
    /// message is closed, its slot handed to a waiting job if there is one.
    pub fn put(&self, key: String, mut s: Session) {
        s.idle_since = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if s.messages >= s.max_messages.unwrap_or(self.max_messages) || self.max_idle.is_zero() {
            drop(inner);
            self.close_then_hand_slot(key, s);
            return;
        }
        match inner.hand_over(&key, Handover::Session(Box::new(s))) {
            None => {}
            Some(Handover::Session(s)) => {
                inner.idle.entry(key).or_default().push(*s);
                metrics::gauge!("tern_delivery_idle_connections").increment(1.0);
            }
            // hand_over gives back what it was given; a slot cannot come back here.
            Some(Handover::Slot(l)) => {
                tokio::spawn(l.release());
            }
        }
    }

    /// Close `s` with QUIT, then give its slot to a job waiting for `key`
    /// (or release it). Only after the QUIT: the new connection must not
    /// overlap the old one, or the site would see one more than its limit.
    pub fn close_then_hand_slot(&self, key: String, mut s: Session) {
        let pool = self.clone();
        tokio::spawn(async move {
            s.conn.quit().await;
            if let Some(lease) = s.lease.take()
                && let Some(lease) = pool.give_slot(&key, lease)
            {
                lease.release().await;
            }
        });
    }

    /// Give a slot whose connection failed or closed to a job waiting for
    /// `key`; `Some` (to be released) when nobody waits.
    pub fn give_slot(&self, key: &str, lease: Lease) -> Option<Lease> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.hand_over(key, Handover::Slot(Box::new(lease))) {
            Some(Handover::Slot(l)) => Some(*l),
            Some(Handover::Session(_)) | None => None,
        }
    }

    /// Close sessions idle longer than the limit.
    pub fn reap(&self) {
        let mut expired = Vec::new();
        {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.idle.retain(|_, list| {
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
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.waiters.clear();
            inner.idle.drain().flat_map(|(_, v)| v).collect()
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
