//! The IMAP session: network I/O around `tern_mailproto::imap`.
//!
//! A session keeps its own view of the selected mailbox (sequence numbers
//! are positions in it). Changes made by other sessions, on this replica or
//! another, are found by comparing HIGHESTMODSEQ and re-reading the
//! mailbox, and announced as untagged EXISTS / EXPUNGE / FETCH responses
//! before a command completes (RFC 9051 §7.5.1: never EXPUNGE during
//! FETCH, STORE or SEARCH, so those only announce new mail and flags).
//! Once QRESYNC is enabled, expunges are announced as VANISHED (RFC 7162
//! §3.2.10), and SELECT/EXAMINE and UID FETCH report `VANISHED (EARLIER)`
//! from the expunges the store records with their mod-sequences.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use tern_mailproto::imap::{
    self, Command, CommandKind, FetchAttr, FetchItem, Frame, Framer, QResync, SearchKey, SearchMsg,
    Section, SequenceSet, State, Status, StoreMode,
};
use tern_mailproto::{mime, utf7};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::broadcast;

mod auth;
mod copy_move;
mod fetch;
mod idle;
mod list;
mod search;
mod select;
mod store;
mod view;

use fetch::flags_item;
use search::has_modseq;
use store::StoreOp;

use view::{Selected, compact_set, earlier_set, remove_expunged};

use crate::accounts;
use crate::net::{Io, SessionCtx};
use crate::store::{Account, Added, DELIMITER, INBOX, MailboxOp, MessageMeta, Parts, StoreError};

/// Autologout after this long without a command (RFC 9051 asks for at least 30 minutes).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// While IDLE, re-check the mailbox this often even without a notification
/// (a safety net for notifications lost while NATS was unreachable).
const IDLE_POLL: Duration = Duration::from_secs(30);

type Conn = BufWriter<Box<dyn Io>>;

const UNAVAILABLE: &str = "[UNAVAILABLE] temporary failure, try again later";
/// CREATE / RENAME to a name that is not modified UTF-7 (RFC 3501 §5.1.3).
const NOT_UTF7: &str = "[CANNOT] mailbox name is not valid modified UTF-7";

enum Flow {
    Continue,
    Close,
    StartTls,
    /// AUTHENTICATE PLAIN without an initial response: read it next.
    SaslContinue(String),
    /// IDLE began: wait for DONE.
    Idle(String),
}

struct Session<'a> {
    ctx: &'a SessionCtx,
    state: State,
    tls: bool,
    account: Option<Account>,
    selected: Option<Selected>,
    changes: Option<broadcast::Receiver<i64>>,
    /// CONDSTORE is enabled (RFC 7162 §3.1): MODSEQ goes into FETCH responses.
    condstore: bool,
    /// `ENABLE QRESYNC` was given (RFC 7162 §3.2.3): SELECT/EXAMINE take
    /// the QRESYNC parameter and expunges are announced as VANISHED.
    qresync: bool,
    /// `ENABLE IMAP4rev2` was given (RFC 9051 §6.3.1): no RECENT, SEARCH
    /// answers with ESEARCH, mailbox names are UTF-8 on the wire.
    rev2: bool,
    /// The client's address (failed-login throttling).
    peer: IpAddr,
}

enum Input {
    Shutdown,
    Idle,
    Changed,
    Poll,
    Read(io::Result<usize>),
}

fn status_err(tag: &str, e: &StoreError, what: &str) -> Vec<u8> {
    tracing::warn!(error = %e, "{what}: storage error");
    imap::tagged(tag, Status::No, UNAVAILABLE)
}

/// Serve one IMAP connection until LOGOUT, EOF, idle timeout or shutdown.
pub async fn session(
    stream: Box<dyn Io>,
    tls: bool,
    peer: IpAddr,
    ctx: &SessionCtx,
) -> io::Result<()> {
    let mut s = Session {
        ctx,
        state: State::NotAuthenticated,
        tls,
        account: None,
        selected: None,
        changes: None,
        condstore: false,
        qresync: false,
        rev2: false,
        peer,
    };
    let mut io = BufWriter::new(stream);
    io.write_all(&imap::greeting(
        &ctx.hostname,
        s.login_ok(),
        s.starttls_ok(),
    ))
    .await?;
    io.flush().await?;
    let mut framer = Framer::with_limits(
        imap::MAX_LINE,
        ctx.max_message,
        ctx.max_message + imap::MAX_COMMAND,
    );
    let mut buf = vec![0u8; 16 * 1024];
    let mut sasl: Option<String> = None;
    let mut idling: Option<String> = None;
    loop {
        while let Some(frame) = framer.next_frame() {
            let flow = match frame {
                Frame::Continue => {
                    io.write_all(&imap::continuation("Ready for literal data"))
                        .await?;
                    io.flush().await?;
                    Flow::Continue
                }
                Frame::TooLong { tag } => {
                    sasl = None;
                    idling = None;
                    io.write_all(&bad(tag.as_deref(), "line too long")).await?;
                    Flow::Continue
                }
                Frame::LiteralTooLarge { tag } => {
                    io.write_all(&bad(tag.as_deref(), "[TOOBIG] literal too large"))
                        .await?;
                    Flow::Continue
                }
                Frame::Command(bytes) => {
                    if let Some(tag) = sasl.take() {
                        s.sasl_response(&tag, &bytes, &mut io).await?;
                        Flow::Continue
                    } else if let Some(tag) = idling.take() {
                        // RFC 2177: the client ends IDLE with "DONE".
                        let line = trim_crlf(&bytes);
                        if line.eq_ignore_ascii_case(b"DONE") {
                            s.refresh(&mut io, true).await?;
                            io.write_all(&imap::tagged(&tag, Status::Ok, "IDLE terminated"))
                                .await?;
                        } else {
                            io.write_all(&imap::tagged(&tag, Status::Bad, "expected DONE"))
                                .await?;
                        }
                        Flow::Continue
                    } else {
                        match imap::parse_command(&bytes) {
                            Ok(cmd) => s.execute(cmd, &mut io).await?,
                            Err(e) => {
                                io.write_all(&e.response()).await?;
                                Flow::Continue
                            }
                        }
                    }
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Close => {
                    io.flush().await?;
                    return Ok(());
                }
                Flow::SaslContinue(tag) => {
                    io.write_all(b"+ \r\n").await?;
                    sasl = Some(tag);
                }
                Flow::Idle(tag) => {
                    io.write_all(&imap::continuation("idling")).await?;
                    idling = Some(tag);
                }
                Flow::StartTls => {
                    io.flush().await?;
                    let Some(acceptor) = ctx.tls.clone() else {
                        return Ok(());
                    };
                    // Anything the client pipelined after STARTTLS was sent in
                    // the clear; it is discarded (RFC 9051 §6.2.1).
                    framer = Framer::with_limits(
                        imap::MAX_LINE,
                        ctx.max_message,
                        ctx.max_message + imap::MAX_COMMAND,
                    );
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
                    s.tls = true;
                    break;
                }
            }
        }
        io.flush().await?;
        let timeout = if idling.is_some() {
            IDLE_POLL
        } else {
            IDLE_TIMEOUT
        };
        let input = {
            let changes = s.changes.as_mut();
            let account = s.account.as_ref().map(|a| a.id);
            let watching = idling.is_some();
            tokio::select! {
                biased;
                _ = ctx.shutdown.wait() => Input::Shutdown,
                changed = async {
                    match changes {
                        Some(rx) if watching => loop {
                            match rx.recv().await {
                                Ok(a) if Some(a) == account => return true,
                                Ok(_) => {}
                                Err(broadcast::error::RecvError::Lagged(_)) => return true,
                                Err(broadcast::error::RecvError::Closed) => return false,
                            }
                        },
                        _ => std::future::pending().await,
                    }
                } => if changed { Input::Changed } else { Input::Poll },
                r = tokio::time::timeout(timeout, io.read(&mut buf)) => match r {
                    Ok(r) => Input::Read(r),
                    Err(_) if idling.is_some() => Input::Poll,
                    Err(_) => Input::Idle,
                },
            }
        };
        match input {
            Input::Shutdown => {
                io.write_all(&imap::untagged("BYE server shutting down"))
                    .await?;
                io.flush().await?;
                return Ok(());
            }
            Input::Idle => {
                io.write_all(&imap::untagged("BYE autologout; idle for too long"))
                    .await?;
                io.flush().await?;
                return Ok(());
            }
            Input::Changed | Input::Poll => {
                s.refresh(&mut io, true).await?;
            }
            Input::Read(r) => {
                let n = r?;
                if n == 0 {
                    return Ok(());
                }
                framer.push(&buf[..n]);
            }
        }
    }
}

fn trim_crlf(b: &[u8]) -> &[u8] {
    let b = b.strip_suffix(b"\n").unwrap_or(b);
    b.strip_suffix(b"\r").unwrap_or(b)
}

fn bad(tag: Option<&str>, text: &str) -> Vec<u8> {
    match tag {
        Some(t) => imap::tagged(t, Status::Bad, text),
        None => imap::untagged(&format!("BAD {text}")),
    }
}

fn normalize(name: &str) -> String {
    let n = name.trim_end_matches(DELIMITER);
    if n.eq_ignore_ascii_case(INBOX) {
        INBOX.to_string()
    } else {
        n.to_string()
    }
}

impl Session<'_> {
    fn login_ok(&self) -> bool {
        self.tls || self.ctx.allow_plaintext_auth.allows(self.peer)
    }

    fn starttls_ok(&self) -> bool {
        !self.tls && self.ctx.tls.is_some()
    }

    /// A mailbox name (or LIST pattern) from the client in its stored
    /// form: IMAP4rev2 sends UTF-8 (RFC 9051 §5.1), stored as modified
    /// UTF-7 so both kinds of session see one mailbox.
    fn name_in(&self, name: &str) -> String {
        if self.rev2 {
            normalize(&utf7::encode(name))
        } else {
            normalize(name)
        }
    }

    /// A stored name as this session shows it. A name that is not valid
    /// modified UTF-7 (stored before names were checked) is shown as it is.
    fn name_out(&self, stored: &str) -> String {
        if self.rev2 {
            utf7::decode(stored).unwrap_or_else(|_| stored.to_string())
        } else {
            stored.to_string()
        }
    }

    async fn execute(&mut self, cmd: Command, io: &mut Conn) -> io::Result<Flow> {
        let tag = cmd.tag.as_str();
        if !cmd.kind.allowed_in(self.state) {
            let why = match (&cmd.kind, self.state) {
                (CommandKind::Login { .. } | CommandKind::Authenticate { .. }, _) => {
                    "already authenticated"
                }
                (CommandKind::StartTls, _) => "STARTTLS only before authentication",
                (_, State::NotAuthenticated) => "log in first",
                _ => "no mailbox selected",
            };
            io.write_all(&imap::tagged(tag, Status::Bad, why)).await?;
            return Ok(Flow::Continue);
        }
        let account = self.account.as_ref().map(|a| a.id).unwrap_or_default();
        let store = &self.ctx.store;
        let done = match &cmd.kind {
            CommandKind::Fetch { uid: true, .. } => "UID FETCH completed",
            CommandKind::Fetch { .. } => "FETCH completed",
            CommandKind::Store { .. } => "STORE completed",
            CommandKind::Search { .. } => "SEARCH completed",
            _ => "",
        };
        // Commands after which EXPUNGE may not be announced (RFC 9051 §7.5.1).
        let mut expunge_ok = true;
        // Commands that work on the view see other sessions' flag changes
        // and new messages first, so they act on (and show) current data.
        if matches!(
            cmd.kind,
            CommandKind::Fetch { .. }
                | CommandKind::Store { .. }
                | CommandKind::Search { .. }
                | CommandKind::Copy { .. }
        ) {
            self.refresh(io, false).await?;
        }
        let examine = matches!(cmd.kind, CommandKind::Examine { .. });
        match cmd.kind {
            CommandKind::Capability => {
                let caps = imap::capabilities(
                    self.login_ok(),
                    self.starttls_ok(),
                    self.state != State::NotAuthenticated,
                );
                io.write_all(&imap::untagged(&format!("CAPABILITY {caps}")))
                    .await?;
                io.write_all(&imap::tagged(tag, Status::Ok, "CAPABILITY completed"))
                    .await?;
                return Ok(Flow::Continue);
            }
            CommandKind::Noop | CommandKind::Check => {
                self.refresh(io, true).await?;
                io.write_all(&imap::tagged(tag, Status::Ok, "completed"))
                    .await?;
                return Ok(Flow::Continue);
            }
            CommandKind::Logout => {
                self.state = State::Logout;
                io.write_all(&imap::untagged("BYE Tern IMAP signing off"))
                    .await?;
                io.write_all(&imap::tagged(tag, Status::Ok, "LOGOUT completed"))
                    .await?;
                return Ok(Flow::Close);
            }
            CommandKind::StartTls => {
                if !self.starttls_ok() {
                    io.write_all(&imap::tagged(
                        tag,
                        Status::Bad,
                        "TLS is already active or not available",
                    ))
                    .await?;
                    return Ok(Flow::Continue);
                }
                io.write_all(&imap::tagged(tag, Status::Ok, "Begin TLS negotiation now"))
                    .await?;
                return Ok(Flow::StartTls);
            }
            CommandKind::Login { user, password } => {
                self.login(tag, &user, &password, io).await?;
                return Ok(Flow::Continue);
            }
            CommandKind::Authenticate { mechanism, initial } => {
                if mechanism != "PLAIN" {
                    io.write_all(&imap::tagged(tag, Status::No, "unsupported SASL mechanism"))
                        .await?;
                    return Ok(Flow::Continue);
                }
                if !self.login_ok() {
                    io.write_all(&imap::tagged(
                        tag,
                        Status::No,
                        "[PRIVACYREQUIRED] use STARTTLS or IMAPS first",
                    ))
                    .await?;
                    return Ok(Flow::Continue);
                }
                return match initial {
                    Some(r) => {
                        self.sasl_response(tag, r.as_bytes(), io).await?;
                        Ok(Flow::Continue)
                    }
                    None => Ok(Flow::SaslContinue(tag.to_string())),
                };
            }
            CommandKind::Id => {
                io.write_all(&imap::untagged("ID (\"name\" \"Tern\")"))
                    .await?;
                io.write_all(&imap::tagged(tag, Status::Ok, "ID completed"))
                    .await?;
                return Ok(Flow::Continue);
            }
            CommandKind::Idle => {
                if self.account.is_none() {
                    io.write_all(&imap::tagged(tag, Status::Bad, "log in first"))
                        .await?;
                    return Ok(Flow::Continue);
                }
                self.refresh(io, true).await?;
                return Ok(Flow::Idle(tag.to_string()));
            }
            CommandKind::Enable(caps) => {
                let mut enabled = String::from("ENABLED");
                if caps.iter().any(|c| c == "CONDSTORE") {
                    self.condstore = true;
                    enabled.push_str(" CONDSTORE");
                }
                // RFC 7162 §3.2.3: QRESYNC implies CONDSTORE.
                if caps.iter().any(|c| c == "QRESYNC") {
                    self.condstore = true;
                    self.qresync = true;
                    enabled.push_str(" QRESYNC");
                }
                if caps.iter().any(|c| c == "IMAP4REV2") {
                    self.rev2 = true;
                    enabled.push_str(" IMAP4rev2");
                }
                io.write_all(&imap::untagged(&enabled)).await?;
                io.write_all(&imap::tagged(tag, Status::Ok, "ENABLE completed"))
                    .await?;
            }
            CommandKind::GetQuotaRoot { .. } | CommandKind::GetQuota { .. } => {
                let root_ok = match &cmd.kind {
                    CommandKind::GetQuota { root } => root.is_empty(),
                    _ => true,
                };
                if !root_ok {
                    io.write_all(&imap::tagged(
                        tag,
                        Status::No,
                        "[NONEXISTENT] no such quota root",
                    ))
                    .await?;
                    return Ok(Flow::Continue);
                }
                match store.usage(account).await {
                    Ok((used, limit)) => {
                        if let CommandKind::GetQuotaRoot { mailbox } = &cmd.kind {
                            let name = self.name_out(&self.name_in(mailbox));
                            let line = format!("QUOTAROOT {} \"\"", imap::quote_mailbox(&name));
                            io.write_all(&imap::untagged(&line)).await?;
                        }
                        // RFC 9208 §5.1: STORAGE is in units of 1024 octets.
                        let line = if limit > 0 {
                            format!(
                                "QUOTA \"\" (STORAGE {} {})",
                                used.div_ceil(1024),
                                limit / 1024
                            )
                        } else {
                            "QUOTA \"\" ()".to_string()
                        };
                        io.write_all(&imap::untagged(&line)).await?;
                        io.write_all(&imap::tagged(tag, Status::Ok, "completed"))
                            .await?;
                    }
                    Err(e) => io.write_all(&status_err(tag, &e, "GETQUOTA")).await?,
                }
            }
            CommandKind::Namespace => {
                io.write_all(&imap::untagged("NAMESPACE ((\"\" \"/\")) NIL NIL"))
                    .await?;
                io.write_all(&imap::tagged(tag, Status::Ok, "NAMESPACE completed"))
                    .await?;
            }
            CommandKind::Select {
                mailbox,
                condstore,
                qresync,
            }
            | CommandKind::Examine {
                mailbox,
                condstore,
                qresync,
            } => {
                // RFC 7162 §3.2.5: QRESYNC without ENABLE QRESYNC is BAD.
                if qresync.is_some() && !self.qresync {
                    io.write_all(&imap::tagged(tag, Status::Bad, "ENABLE QRESYNC first"))
                        .await?;
                    return Ok(Flow::Continue);
                }
                self.condstore |= condstore;
                self.select(tag, &mailbox, examine, qresync.as_ref(), io)
                    .await?;
                return Ok(Flow::Continue);
            }
            CommandKind::Create { mailbox } => {
                let name = self.name_in(&mailbox);
                let reply = if name.is_empty() || name.split(DELIMITER).any(str::is_empty) {
                    imap::tagged(tag, Status::No, "invalid mailbox name")
                } else if utf7::decode(&name).is_err() {
                    imap::tagged(tag, Status::No, NOT_UTF7)
                } else {
                    // Create missing parents too (RFC 9051 §6.3.4).
                    let mut result = Ok(MailboxOp::Done);
                    let parts: Vec<&str> = name.split(DELIMITER).collect();
                    for i in 1..parts.len() {
                        let parent = parts[..i].join("/");
                        if let Err(e) = store.create_mailbox(account, &parent).await {
                            result = Err(e);
                        }
                    }
                    if result.is_ok() {
                        result = store.create_mailbox(account, &name).await;
                    }
                    match result {
                        Ok(MailboxOp::Done) => imap::tagged(tag, Status::Ok, "CREATE completed"),
                        Ok(_) => imap::tagged(tag, Status::No, "[ALREADYEXISTS] mailbox exists"),
                        Err(e) => status_err(tag, &e, "CREATE"),
                    }
                };
                io.write_all(&reply).await?;
            }
            CommandKind::Delete { mailbox } => {
                let name = self.name_in(&mailbox);
                let reply = match store.delete_mailbox(account, &name).await {
                    Ok(MailboxOp::Done) => {
                        if self.selected.as_ref().is_some_and(|s| s.name == name) {
                            self.selected = None;
                            self.state = State::Authenticated;
                        }
                        imap::tagged(tag, Status::Ok, "DELETE completed")
                    }
                    Ok(MailboxOp::Refused) => {
                        imap::tagged(tag, Status::No, "[CANNOT] INBOX cannot be deleted")
                    }
                    Ok(_) => imap::tagged(tag, Status::No, "[NONEXISTENT] no such mailbox"),
                    Err(e) => status_err(tag, &e, "DELETE"),
                };
                io.write_all(&reply).await?;
            }
            CommandKind::Rename { from, to } => {
                let (from, to) = (self.name_in(&from), self.name_in(&to));
                let reply = if to.is_empty() || to.split(DELIMITER).any(str::is_empty) {
                    imap::tagged(tag, Status::No, "invalid mailbox name")
                } else if utf7::decode(&to).is_err() {
                    imap::tagged(tag, Status::No, NOT_UTF7)
                } else {
                    match store.rename_mailbox(account, &from, &to).await {
                        Ok(MailboxOp::Done) => {
                            // A renamed INBOX stays (empty; the next command
                            // announces the expunges), others follow the name.
                            if let Some(s) = self
                                .selected
                                .as_mut()
                                .filter(|s| s.name == from && from != INBOX)
                            {
                                s.name = to;
                            }
                            imap::tagged(tag, Status::Ok, "RENAME completed")
                        }
                        Ok(MailboxOp::Refused) => {
                            imap::tagged(tag, Status::No, "[ALREADYEXISTS] INBOX always exists")
                        }
                        Ok(MailboxOp::Exists) => {
                            imap::tagged(tag, Status::No, "[ALREADYEXISTS] target exists")
                        }
                        Ok(MailboxOp::NotFound) => {
                            imap::tagged(tag, Status::No, "[NONEXISTENT] no such mailbox")
                        }
                        Err(e) => status_err(tag, &e, "RENAME"),
                    }
                };
                io.write_all(&reply).await?;
            }
            CommandKind::Subscribe { mailbox, on } => {
                let reply = match store
                    .set_subscribed(account, &self.name_in(&mailbox), on)
                    .await
                {
                    Ok(MailboxOp::Done) => imap::tagged(tag, Status::Ok, "completed"),
                    // Unsubscribing something gone is harmless.
                    Ok(_) if !on => imap::tagged(tag, Status::Ok, "completed"),
                    Ok(_) => imap::tagged(tag, Status::No, "[NONEXISTENT] no such mailbox"),
                    Err(e) => status_err(tag, &e, "SUBSCRIBE"),
                };
                io.write_all(&reply).await?;
            }
            CommandKind::List {
                reference,
                patterns,
                subscribed_only,
                special_only,
                recursive_match,
                return_subscribed,
                lsub,
                status,
            } => {
                let sel = list::Selection {
                    subscribed: subscribed_only,
                    special: special_only,
                    recursive: recursive_match,
                    return_subscribed,
                    lsub,
                };
                self.list(tag, &reference, &patterns, sel, &status, io)
                    .await?;
            }
            CommandKind::Status { mailbox, items } => {
                let name = self.name_in(&mailbox);
                match self.status_line(&name, &items).await {
                    Ok(Some(line)) => {
                        io.write_all(&line).await?;
                        io.write_all(&imap::tagged(tag, Status::Ok, "STATUS completed"))
                            .await?;
                    }
                    Ok(None) => {
                        io.write_all(&imap::tagged(
                            tag,
                            Status::No,
                            "[NONEXISTENT] no such mailbox",
                        ))
                        .await?
                    }
                    Err(e) => io.write_all(&status_err(tag, &e, "STATUS")).await?,
                }
            }
            CommandKind::Append {
                mailbox,
                flags,
                date_ms,
                message,
            } => {
                let date = date_ms.unwrap_or_else(tern_runtime::now_unix_ms);
                // RFC 3516 §4.4: binary parts are stored base64, so a plain
                // FETCH never carries a NUL.
                let message = match mime::binary_parts_to_base64(&message) {
                    Some(m) => m,
                    None => message,
                };
                let reply = if message.is_empty() {
                    imap::tagged(tag, Status::No, "empty message")
                } else {
                    match store
                        .append(account, &self.name_in(&mailbox), &flags, date, &message)
                        .await
                    {
                        Ok(Added::Stored { uidvalidity, uids }) => imap::tagged(
                            tag,
                            Status::Ok,
                            &format!(
                                "[APPENDUID {uidvalidity} {}] APPEND completed",
                                compact_set(&uids)
                            ),
                        ),
                        Ok(Added::NoMailbox) => {
                            imap::tagged(tag, Status::No, "[TRYCREATE] no such mailbox")
                        }
                        Ok(Added::OverQuota) => {
                            imap::tagged(tag, Status::No, "[OVERQUOTA] quota exceeded")
                        }
                        Err(e) => status_err(tag, &e, "APPEND"),
                    }
                };
                self.refresh(io, true).await?;
                io.write_all(&reply).await?;
                return Ok(Flow::Continue);
            }
            CommandKind::Close | CommandKind::Unselect => {
                let close = matches!(cmd.kind, CommandKind::Close);
                if close && let Some(sel) = self.selected.as_ref().filter(|s| !s.readonly) {
                    // CLOSE expunges silently (RFC 9051 §6.4.1), what is \Deleted now.
                    let ids: Vec<i64> = match store.messages(sel.mailbox.id, 0).await {
                        Ok(all) => all
                            .into_iter()
                            .filter(|m| has_flag(&m.flags, "\\Deleted"))
                            .map(|m| m.id)
                            .collect(),
                        Err(e) => {
                            io.write_all(&status_err(tag, &e, "CLOSE")).await?;
                            return Ok(Flow::Continue);
                        }
                    };
                    if let Err(e) = store.expunge(account, &ids).await {
                        io.write_all(&status_err(tag, &e, "CLOSE")).await?;
                        return Ok(Flow::Continue);
                    }
                }
                self.selected = None;
                self.state = State::Authenticated;
                io.write_all(&imap::tagged(tag, Status::Ok, "completed"))
                    .await?;
                return Ok(Flow::Continue);
            }
            CommandKind::Expunge { uids } => {
                self.expunge(tag, uids.as_ref(), io).await?;
                return Ok(Flow::Continue);
            }
            CommandKind::Fetch {
                set,
                attrs,
                uid,
                changed_since,
                vanished,
            } => {
                expunge_ok = false;
                // RFC 7162 §3.2.6: VANISHED needs QRESYNC enabled.
                if vanished && !self.qresync {
                    io.write_all(&imap::tagged(tag, Status::Bad, "ENABLE QRESYNC first"))
                        .await?;
                    return Ok(Flow::Continue);
                }
                self.enable_condstore(
                    attrs.contains(&FetchAttr::ModSeq) || changed_since.is_some(),
                    io,
                )
                .await?;
                if vanished && let Some(n) = changed_since {
                    self.vanished_earlier(&set, n, io).await?;
                }
                if !self
                    .fetch(tag, &set, &attrs, uid, changed_since, io)
                    .await?
                {
                    return Ok(Flow::Continue);
                }
            }
            CommandKind::Store {
                set,
                uid,
                mode,
                silent,
                flags,
                unchanged_since,
            } => {
                expunge_ok = false;
                self.enable_condstore(unchanged_since.is_some(), io).await?;
                let op = StoreOp {
                    mode,
                    silent,
                    flags: &flags,
                    unchanged_since,
                };
                if !self.store(tag, &set, uid, op, io).await? {
                    return Ok(Flow::Continue);
                }
            }
            CommandKind::Copy {
                set,
                uid,
                mailbox,
                remove,
            } => {
                let target = self.name_in(&mailbox);
                self.copy(tag, &set, uid, &target, remove, io).await?;
                return Ok(Flow::Continue);
            }
            CommandKind::Search { uid, key, ret } => {
                expunge_ok = false;
                self.enable_condstore(has_modseq(&key), io).await?;
                if !self.search(tag, uid, &key, ret.as_deref(), io).await? {
                    return Ok(Flow::Continue);
                }
            }
        }
        // Commands that fall through here have written their untagged data;
        // announce other sessions' changes, then complete.
        if !done.is_empty() {
            self.refresh(io, expunge_ok).await?;
            io.write_all(&imap::tagged(tag, Status::Ok, done)).await?;
        }
        Ok(Flow::Continue)
    }

    /// Indexes into the view that `set` names; `None` (after a BAD) when a
    /// sequence number is out of range.
    async fn resolve(
        &self,
        tag: &str,
        set: &SequenceSet,
        uid: bool,
        io: &mut Conn,
    ) -> io::Result<Option<Vec<usize>>> {
        let Some(sel) = self.selected.as_ref() else {
            io.write_all(&imap::tagged(tag, Status::Bad, "no mailbox selected"))
                .await?;
            return Ok(None);
        };
        let count = u32::try_from(sel.msgs.len()).unwrap_or(u32::MAX);
        if set.is_saved() {
            // `$` (RFC 5182 §2.1): the saved messages still here, for
            // sequence-number and UID commands alike.
            return Ok(Some(
                (0..sel.msgs.len())
                    .filter(|&i| sel.saved.binary_search(&sel.msgs[i].uid).is_ok())
                    .collect(),
            ));
        }
        if uid {
            let max_uid = sel.msgs.last().map_or(0, |m| m.uid);
            return Ok(Some(
                sel.msgs
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| max_uid > 0 && set.contains(m.uid, max_uid))
                    .map(|(i, _)| i)
                    .collect(),
            ));
        }
        if count == 0 || set.max_value().is_some_and(|m| m > count) {
            io.write_all(&imap::tagged(
                tag,
                Status::Bad,
                "invalid message sequence number",
            ))
            .await?;
            return Ok(None);
        }
        Ok(Some(
            (0..sel.msgs.len())
                .filter(|i| set.contains(u32::try_from(i + 1).unwrap_or(u32::MAX), count))
                .collect(),
        ))
    }
}

pub(super) fn has_flag(flags: &[String], f: &str) -> bool {
    flags.iter().any(|x| x.eq_ignore_ascii_case(f))
}
