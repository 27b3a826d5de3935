//! The POP3 session: network I/O around `tern_mailproto::pop3`.

use std::collections::HashSet;
use std::io;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tern_mailproto::line::{Line, LineBuffer};
use tern_mailproto::pop3::{self, Action, MessageInfo, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

use crate::accounts::{self, Login};
use crate::net::{Io, SessionCtx};
use crate::store::{Account, StoreError};

/// Close after this long without a command (RFC 1939 asks for at least 10 minutes).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Accounts whose maildrop a POP3 session on this replica holds.
///
/// RFC 1939 §8: a POP3 session locks the maildrop from PASS until the end
/// of the session, so two sessions cannot both list and delete the same
/// messages. The lock is per replica: sessions on two replicas are not
/// kept apart (their deletions are still safe, since expunging a message
/// another session removed first is a no-op).
#[derive(Default)]
pub struct MaildropLocks {
    held: Mutex<HashSet<i64>>,
    /// Woken whenever a lock is released.
    released: tokio::sync::Notify,
}

/// How long a login waits for another session's lock before `[IN-USE]`:
/// a client that reconnects right after its connection dropped usually
/// finds the old session still ending.
const LOCK_WAIT: Duration = Duration::from_secs(2);

impl MaildropLocks {
    fn set(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        // A plain set: a poisoned lock still holds a consistent value.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lock `account`'s maildrop, waiting up to [`LOCK_WAIT`] for another
    /// session to release it; `None` when it is still held then.
    async fn lock(&self, account: i64) -> Option<MaildropLock<'_>> {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
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
        })
    }
}

/// A held maildrop lock, released when dropped (QUIT, a dropped
/// connection, idle timeout or shutdown alike).
struct MaildropLock<'a> {
    locks: &'a MaildropLocks,
    account: i64,
}

impl Drop for MaildropLock<'_> {
    fn drop(&mut self) {
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
    let mut session = Session::new(tls || ctx.allow_plaintext_auth);
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
