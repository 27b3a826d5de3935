//! The POP3 session: network I/O around `tern_mailproto::pop3`.

use std::io;
use std::time::Duration;

use tern_mailproto::line::{Line, LineBuffer};
use tern_mailproto::pop3::{self, Action, MessageInfo, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

use crate::accounts;
use crate::net::{Io, SessionCtx};
use crate::store::Account;

/// Close after this long without a command (RFC 1939 asks for at least 10 minutes).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The authenticated maildrop: the account and the store ids of the listed
/// messages, in listing order.
struct Maildrop {
    account: Account,
    ids: Vec<i64>,
}

enum Input {
    Shutdown,
    Idle,
    Read(io::Result<usize>),
}

/// Serve one POP3 connection until QUIT, EOF, idle timeout or shutdown.
/// Deletions are applied only on QUIT (the UPDATE state).
pub async fn session(stream: Box<dyn Io>, tls: bool, ctx: &SessionCtx) -> io::Result<()> {
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
                    let reply = match login(ctx, &user, &password).await {
                        Ok(Some((md, listing))) => {
                            tracing::info!(account = %md.account.address, "POP3 login");
                            maildrop = Some(md);
                            session.login_ok(listing)
                        }
                        Ok(None) => {
                            tracing::info!("POP3 login failed");
                            session.login_failed()
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

async fn login(
    ctx: &SessionCtx,
    user: &str,
    password: &str,
) -> Result<Option<(Maildrop, Vec<MessageInfo>)>, crate::store::StoreError> {
    let Some(account) = accounts::authenticate(&ctx.store, user, password).await? else {
        return Ok(None);
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
    Ok(Some((Maildrop { account, ids }, listing)))
}
