//! The POP3 session: network I/O around `tern_mailproto::pop3`.
//!
//! **Maildrop lock** (RFC 1939 §8): a session locks its account's maildrop
//! from a successful PASS/AUTH until it ends, so two sessions cannot both
//! list and delete the same messages, whichever replicas they reach. The
//! lock has two layers:
//!
//! - in this process, a set of locked accounts: a second session on the
//!   same replica waits for the first without asking NATS, and is woken the
//!   moment it ends;
//! - across replicas, key `account.<id>` in the key-value bucket
//!   [`POP3_LOCKS_BUCKET`](tern_runtime::bus::POP3_LOCKS_BUCKET), made with
//!   a create (which fails when the key holds a value) and holding
//!   `<replica id> <session number>`. Its time to live is `pop3_lock_ttl`
//!   and the holder rewrites it every third of that (with the revision it
//!   holds), so the lock of a crashed or cut-off replica expires within
//!   `pop3_lock_ttl`. The session's end purges the key, with the revision it
//!   holds, so a lock that expired and was taken by another session is
//!   left alone. A refresh that finds the key gone re-creates it, and one
//!   that finds it held by another session logs that the lock was lost (the
//!   session goes on; its deletions are still safe, as expunging a message
//!   another session removed first does nothing).
//!
//! A login waits up to [`LOCK_WAIT`] for either layer, polling the bucket,
//! then gets `-ERR [IN-USE]`. When NATS is unreachable or slow
//! ([`crate::cluster`]) the session holds the in-process lock only: POP3
//! keeps working, and sessions through different replicas are then not
//! kept apart, which is the lesser harm.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_mailproto::line::{Line, LineBuffer};
use tern_mailproto::pop3::{self, Action, MessageInfo, Session};
use tern_runtime::bus;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::accounts::{self, Login};
use crate::cluster::{Bucket, Cluster, KV_TIMEOUT, Kv};
use crate::net::{Io, SessionCtx};
use crate::store::{Account, StoreError};

/// Close after this long without a command (RFC 1939 asks for at least 10 minutes).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The maildrop locks of this replica's POP3 sessions, in memory and in
/// the shared bucket (see the module documentation).
pub struct MaildropLocks {
    held: Mutex<HashSet<i64>>,
    /// Woken whenever a lock is released.
    released: tokio::sync::Notify,
    /// The shared bucket, if NATS is configured.
    cluster: Option<Arc<Cluster>>,
    /// Time to live of a lock in the bucket.
    ttl: Duration,
    /// The tasks keeping locks in the bucket alive.
    tasks: TaskTracker,
    /// Numbers this replica's sessions in the lock's owner.
    sessions: AtomicU64,
}

/// How long a login waits for another session's lock before `[IN-USE]`:
/// a client that reconnects right after its connection dropped usually
/// finds the old session still ending.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// How often a waiting login asks the bucket again.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// The bucket key of `account`'s lock.
fn lock_key(account: i64) -> String {
    format!("account.{account}")
}

impl MaildropLocks {
    /// Locks shared through `cluster` (in this process only without it),
    /// each living `ttl` in the bucket unless refreshed.
    pub fn new(cluster: Option<Arc<Cluster>>, ttl: Duration) -> MaildropLocks {
        MaildropLocks {
            held: Mutex::default(),
            released: tokio::sync::Notify::new(),
            cluster,
            ttl,
            tasks: TaskTracker::new(),
            sessions: AtomicU64::new(1),
        }
    }

    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        // A plain set: a poisoned lock still holds a consistent value.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lock `account`'s maildrop, waiting up to [`LOCK_WAIT`] for another
    /// session (of any replica) to release it; `None` when it is still
    /// held then.
    async fn lock(&self, account: i64) -> Option<MaildropLock<'_>> {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let mut lock = self.lock_here(account, deadline).await?;
        let Some(cluster) = &self.cluster else {
            return Some(lock);
        };
        let key = lock_key(account);
        let owner = format!(
            "{} {}",
            cluster.replica(),
            self.sessions.fetch_add(1, Ordering::Relaxed)
        );
        let ttl = self.ttl;
        loop {
            let (k, o) = (key.clone(), owner.clone());
            let created = cluster
                .call(Bucket::Pop3Locks, |kv| async move {
                    let r = kv.create(&k, &o, ttl).await?;
                    Ok::<_, String>(r.map(|revision| (kv, revision)))
                })
                .await;
            match created {
                Some(Some((kv, revision))) => {
                    let (stop, stopped) = oneshot::channel();
                    self.tasks
                        .spawn(hold(kv, key, owner, revision, ttl, stopped));
                    lock.shared = Some(stop);
                    return Some(lock);
                }
                // Another session holds it: wait for it to end.
                Some(None) => {
                    if tokio::time::Instant::now() + LOCK_POLL >= deadline {
                        return None;
                    }
                    tokio::time::sleep(LOCK_POLL).await;
                }
                // NATS unreachable: this replica's lock only.
                None => return Some(lock),
            }
        }
    }

    /// The in-process lock of `account`, waiting until `deadline` for
    /// another session of this replica to release it.
    async fn lock_here(
        &self,
        account: i64,
        deadline: tokio::time::Instant,
    ) -> Option<MaildropLock<'_>> {
        loop {
            // Registered before trying, so a release in between is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(lock) = self.try_lock(account) {
                return Some(lock);
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return None;
            }
        }
    }

    /// Lock `account`'s maildrop; `None` when a session already holds it.
    fn try_lock(&self, account: i64) -> Option<MaildropLock<'_>> {
        // Not `then_some`: building a lock eagerly and dropping it would
        // release the other session's lock.
        let inserted = self.set().insert(account);
        inserted.then(|| MaildropLock {
            locks: self,
            account,
            shared: None,
        })
    }

    /// Wait (at most `within`) for the locks of ended sessions to be
    /// released in the bucket, at shutdown.
    pub async fn close(&self, within: Duration) {
        self.tasks.close();
        if tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("POP3 locks not released in time; they expire by themselves");
        }
    }
}

/// Keep `key` (created at `revision`, holding `owner`) alive in the bucket
/// until `stop` fires or is dropped, then purge it if it is still ours.
async fn hold(
    kv: Kv,
    key: String,
    owner: String,
    revision: u64,
    ttl: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    // `None` once another session took the key.
    let mut revision = Some(revision);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(ttl / 3), if revision.is_some() => {
                let Some(r) = revision else { continue };
                match tokio::time::timeout(KV_TIMEOUT, refresh(&kv, &key, &owner, r, ttl)).await {
                    Ok(Ok(next)) => {
                        if next.is_none() {
                            tracing::warn!(key, "POP3 maildrop lock lost to another session (NATS was unreachable for longer than its TTL)");
                        }
                        revision = next;
                    }
                    // Tried again at the next refresh, well within the TTL.
                    Ok(Err(e)) => tracing::debug!(key, error = %e, "refreshing a POP3 maildrop lock failed"),
                    Err(_) => tracing::debug!(key, "refreshing a POP3 maildrop lock timed out"),
                }
            }
        }
    }
    if let Some(r) = revision {
        let purge = kv
            .store
            .purge_expect_revision_with_ttl(&key, r, bus::TTL_MARKER_TTL);
        let error = match tokio::time::timeout(KV_TIMEOUT, purge).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".into(),
        };
        tracing::debug!(
            key,
            error,
            "releasing a POP3 maildrop lock failed; it expires by itself"
        );
    }
}

/// Rewrite the lock `key` held at `revision`; its new revision, or `None`
/// when another session holds it now.
async fn refresh(
    kv: &Kv,
    key: &str,
    owner: &str,
    revision: u64,
    ttl: Duration,
) -> Result<Option<u64>, String> {
    if let Some(r) = kv
        .write(key, owner.to_string(), revision, ttl)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(Some(r));
    }
    match kv.read(key).await.map_err(|e| e.to_string())? {
        // Our last write landed but its answer did not reach us.
        (Some(v), r) if v == owner.as_bytes() => Ok(Some(r)),
        (Some(_), _) => Ok(None),
        // It expired (NATS was out of reach): take it again if free.
        (None, _) => kv.create(key, owner, ttl).await,
    }
}

/// A held maildrop lock, released when dropped (QUIT, a dropped
/// connection, idle timeout or shutdown alike).
struct MaildropLock<'a> {
    locks: &'a MaildropLocks,
    account: i64,
    /// Dropping it ends the task holding the key in the bucket, which then
    /// purges the key.
    shared: Option<oneshot::Sender<()>>,
}

impl Drop for MaildropLock<'_> {
    fn drop(&mut self) {
        self.shared.take();
        self.locks.set().remove(&self.account);
        self.locks.released.notify_waiters();
    }
}

/// The authenticated maildrop: the account, the store ids of the listed
/// messages in listing order, and the lock on it.
struct Maildrop<'a> {
    account: Account,
    ids: Vec<i64>,
    _lock: MaildropLock<'a>,
}

/// Why a login did not open the maildrop.
enum Refused {
    /// Unknown user or wrong password.
    Failed,
    /// Too many recent failed logins.
    Throttled,
    /// Another session holds the maildrop.
    InUse,
}

enum Input {
    Shutdown,
    Idle,
    Read(io::Result<usize>),
}

/// Serve one POP3 connection until QUIT, EOF, idle timeout or shutdown.
/// Deletions are applied only on QUIT (the UPDATE state).
pub async fn session(
    stream: Box<dyn Io>,
    tls: bool,
    peer: IpAddr,
    ctx: &SessionCtx,
) -> io::Result<()> {
    let mut io = BufWriter::new(stream);
    let mut session = Session::new(tls || ctx.allow_plaintext_auth.allows(peer));
    session.offer_stls(!tls && ctx.tls.is_some());
    let mut maildrop: Option<Maildrop> = None;
    let mut lines = LineBuffer::new(pop3::MAX_LINE);
    let mut buf = vec![0u8; 4096];
    io.write_all(&Session::greeting(&ctx.hostname)).await?;
    io.flush().await?;
    loop {
        while let Some(line) = lines.next_line() {
            let line = match line {
                Line::Complete(l) => l,
                Line::TooLong => {
                    io.write_all(&Session::line_too_long()).await?;
                    continue;
                }
            };
            match session.handle_line(&line) {
                Action::Reply(r) => io.write_all(&r).await?,
                Action::Close(r) => {
                    io.write_all(&r).await?;
                    io.flush().await?;
                    return Ok(());
                }
                Action::StartTls(r) => {
                    io.write_all(&r).await?;
                    io.flush().await?;
                    let Some(acceptor) = ctx.tls.clone() else {
                        return Ok(());
                    };
                    // Pipelined cleartext after STLS is discarded (RFC 2595 §4).
                    lines = LineBuffer::new(pop3::MAX_LINE);
                    let inner = io.into_inner();
                    let stream = match tokio::time::timeout(
                        crate::net::TLS_HANDSHAKE_TIMEOUT,
                        acceptor.accept(inner),
                    )
                    .await
                    {
                        Ok(Ok(t)) => t,
                        _ => return Ok(()),
                    };
                    io = BufWriter::new(Box::new(stream));
                    session.tls_started();
                    break;
                }
                Action::Authenticate { user, password } => {
                    let reply = match login(ctx, &user, &password, peer).await {
                        Ok(Ok((md, listing))) => {
                            tracing::info!(account = %md.account.address, "POP3 login");
                            maildrop = Some(md);
                            session.login_ok(listing)
                        }
                        Ok(Err(Refused::Failed)) => {
                            tracing::info!("POP3 login failed");
                            tokio::time::sleep(ctx.throttle.delay()).await;
                            session.login_failed()
                        }
                        Ok(Err(Refused::Throttled)) => {
                            tracing::info!(user, "POP3 login refused: too many failed logins");
                            tokio::time::sleep(ctx.throttle.delay()).await;
                            session.login_throttled()
                        }
                        Ok(Err(Refused::InUse)) => {
                            tracing::info!(user, "POP3 login refused: maildrop in use");
                            session.maildrop_in_use()
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "POP3 login: storage error");
                            session.login_unavailable()
                        }
                    };
                    io.write_all(&reply).await?;
                }
                Action::Retrieve { index, top } => {
                    let id = maildrop.as_ref().and_then(|d| d.ids.get(index)).copied();
                    let content = match id {
                        Some(id) => ctx.store.content(id).await,
                        None => Ok(None),
                    };
                    let reply = match content {
                        Ok(Some(c)) => pop3::format_retrieve(&c, top),
                        Ok(None) => pop3::retrieve_failed(),
                        Err(e) => {
                            tracing::warn!(error = %e, "RETR: storage error");
                            pop3::retrieve_failed()
                        }
                    };
                    io.write_all(&reply).await?;
                }
                Action::Update { deleted } => {
                    let removed = match &maildrop {
                        Some(md) => {
                            let ids: Vec<i64> = deleted
                                .iter()
                                .filter_map(|i| md.ids.get(*i).copied())
                                .collect();
                            match ctx.store.expunge(md.account.id, &ids).await {
                                Ok(()) => {
                                    tracing::info!(account = %md.account.address, removed = ids.len(), "POP3 update");
                                    true
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "POP3 update: storage error");
                                    false
                                }
                            }
                        }
                        None => deleted.is_empty(),
                    };
                    io.write_all(&pop3::update_reply(removed)).await?;
                    io.flush().await?;
                    return Ok(());
                }
            }
        }
        io.flush().await?;
        let input = tokio::select! {
            biased;
            _ = ctx.shutdown.wait() => Input::Shutdown,
            r = tokio::time::timeout(IDLE_TIMEOUT, io.read(&mut buf)) => match r {
                Ok(r) => Input::Read(r),
                Err(_) => Input::Idle,
            },
        };
        match input {
            // POP3 has no unsolicited responses; closing without QUIT
            // leaves the maildrop unchanged, as RFC 1939 requires.
            Input::Shutdown | Input::Idle => return Ok(()),
            Input::Read(r) => {
                let n = r?;
                if n == 0 {
                    return Ok(());
                }
                lines.push(&buf[..n]);
            }
        }
    }
}

/// Check the credentials, lock the maildrop and list it.
async fn login<'a>(
    ctx: &'a SessionCtx,
    user: &str,
    password: &str,
    peer: IpAddr,
) -> Result<Result<(Maildrop<'a>, Vec<MessageInfo>), Refused>, StoreError> {
    let result = accounts::login(&ctx.store, &ctx.throttle, user, password, Some(peer)).await;
    accounts::count_login("pop3", &result);
    let account = match result? {
        Login::Ok(a) => a,
        Login::Failed => return Ok(Err(Refused::Failed)),
        Login::Throttled => return Ok(Err(Refused::Throttled)),
    };
    // Lock before listing, so the listing is this session's alone.
    let Some(lock) = ctx.pop3_locks.lock(account.id).await else {
        return Ok(Err(Refused::InUse));
    };
    let inbox = ctx.store.inbox(account.id).await?;
    let msgs = ctx.store.messages(inbox.id, 0).await?;
    let listing = msgs
        .iter()
        .map(|m| MessageInfo {
            size: m.size,
            uid: format!("{}.{}", inbox.uidvalidity, m.uid),
        })
        .collect();
    let ids = msgs.iter().map(|m| m.id).collect();
    Ok(Ok((
        Maildrop {
            account,
            ids,
            _lock: lock,
        },
        listing,
    )))
}
