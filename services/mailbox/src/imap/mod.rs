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
    Section, SequenceSet, State, Status, StatusItem, StoreMode,
};
use tern_mailproto::{mime, utf7};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::broadcast;

mod list;
mod view;

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

    async fn login(
        &mut self,
        tag: &str,
        user: &str,
        password: &str,
        io: &mut Conn,
    ) -> io::Result<()> {
        if !self.login_ok() {
            let text =
                "[PRIVACYREQUIRED] plaintext authentication is disabled; use STARTTLS or IMAPS";
            return io.write_all(&imap::tagged(tag, Status::No, text)).await;
        }
        let reply = self.authenticate(user, password, "LOGIN").await;
        io.write_all(&imap::tagged(tag, reply.0, &reply.1)).await
    }

    /// Check credentials; on success the session is authenticated.
    async fn authenticate(&mut self, user: &str, password: &str, how: &str) -> (Status, String) {
        let ctx = self.ctx;
        let result =
            accounts::login(&ctx.store, &ctx.throttle, user, password, Some(self.peer)).await;
        accounts::count_login("imap", &result);
        if matches!(
            result,
            Ok(accounts::Login::Failed | accounts::Login::Throttled)
        ) {
            // Slows guessing down within one connection; the throttle
            // bounds it across connections.
            tokio::time::sleep(ctx.throttle.delay()).await;
        }
        match result {
            Ok(accounts::Login::Ok(account)) => {
                tracing::info!(account = %account.address, "IMAP {how}");
                self.account = Some(account);
                self.state = State::Authenticated;
                self.changes = Some(self.ctx.hub.subscribe());
                let caps = imap::capabilities(true, false, true);
                (Status::Ok, format!("[CAPABILITY {caps}] {how} completed"))
            }
            Ok(accounts::Login::Failed) => {
                tracing::info!("IMAP {how} failed");
                (
                    Status::No,
                    "[AUTHENTICATIONFAILED] invalid credentials".into(),
                )
            }
            Ok(accounts::Login::Throttled) => {
                tracing::info!(user, "IMAP {how} refused: too many failed logins");
                // RFC 5530 §3: UNAVAILABLE is a temporary failure, so
                // clients retry later instead of asking for a new password.
                (
                    Status::No,
                    "[UNAVAILABLE] too many failed logins, try again later".into(),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "IMAP {how}: storage error");
                (Status::No, UNAVAILABLE.into())
            }
        }
    }

    /// The SASL PLAIN response (RFC 4616): `authzid NUL authcid NUL passwd`.
    async fn sasl_response(&mut self, tag: &str, line: &[u8], io: &mut Conn) -> io::Result<()> {
        let line = trim_crlf(line);
        if line == b"*" {
            return io
                .write_all(&imap::tagged(tag, Status::Bad, "authentication cancelled"))
                .await;
        }
        let decoded = if line == b"=" {
            Some(Vec::new())
        } else {
            tern_mailproto::base64_decode(line)
        };
        let parts: Option<Vec<String>> = decoded.and_then(|d| {
            let p: Vec<&[u8]> = d.split(|&b| b == 0).collect();
            (p.len() == 3)
                .then(|| {
                    p.iter()
                        .map(|x| String::from_utf8(x.to_vec()).ok())
                        .collect::<Option<Vec<_>>>()
                })
                .flatten()
        });
        let Some(parts) = parts else {
            return io
                .write_all(&imap::tagged(
                    tag,
                    Status::Bad,
                    "malformed SASL PLAIN response",
                ))
                .await;
        };
        let (authz, user, pass) = (&parts[0], &parts[1], &parts[2]);
        if !authz.is_empty() && !authz.eq_ignore_ascii_case(user) {
            return io
                .write_all(&imap::tagged(
                    tag,
                    Status::No,
                    "[AUTHORIZATIONFAILED] cannot act as another user",
                ))
                .await;
        }
        let (st, text) = self.authenticate(user, pass, "AUTHENTICATE").await;
        io.write_all(&imap::tagged(tag, st, &text)).await
    }

    async fn select(
        &mut self,
        tag: &str,
        mailbox: &str,
        readonly: bool,
        qresync: Option<&QResync>,
        io: &mut Conn,
    ) -> io::Result<()> {
        // A failed SELECT leaves no mailbox selected. IMAP4rev2 and QRESYNC
        // say so first (RFC 9051 §7.1, RFC 7162 §3.2.11: CLOSED).
        if self.selected.take().is_some() && (self.rev2 || self.qresync) {
            io.write_all(&imap::untagged("OK [CLOSED] previous mailbox closed"))
                .await?;
        }
        self.state = State::Authenticated;
        let Some(account) = &self.account else {
            return io
                .write_all(&imap::tagged(tag, Status::Bad, "log in first"))
                .await;
        };
        let name = self.name_in(mailbox);
        let store = &self.ctx.store;
        let rev2 = self.rev2;
        let loaded = async {
            let Some(mb) = store.mailbox(account.id, &name).await? else {
                return Ok(None);
            };
            let msgs = store.messages(mb.id, 0).await?;
            // Expunges are read after the messages: one committed in
            // between is still in the view, so it is left out of
            // VANISHED (EARLIER) and announced by the next refresh.
            let vanished = match qresync {
                Some(q) if q.uidvalidity == mb.uidvalidity => {
                    Some(store.vanished_since(mb.id, q.modseq).await?)
                }
                _ => None,
            };
            if !readonly && let Some(last) = msgs.last() {
                store.clear_recent(mb.id, last.uid).await?;
            }
            // IMAP4rev2's SELECT includes the mailbox's LIST response.
            let boxes = if rev2 {
                store.list_mailboxes(account.id).await?
            } else {
                Vec::new()
            };
            Ok::<_, StoreError>(Some((mb, msgs, boxes, vanished)))
        }
        .await;
        let (mb, msgs, boxes, vanished) = match loaded {
            Ok(Some(x)) => x,
            Ok(None) => {
                return io
                    .write_all(&imap::tagged(
                        tag,
                        Status::No,
                        "[NONEXISTENT] no such mailbox",
                    ))
                    .await;
            }
            Err(e) => return io.write_all(&status_err(tag, &e, "SELECT")).await,
        };
        let recent = msgs.iter().filter(|m| m.uid > mb.recent_uid).count();
        let uidnext = msgs
            .last()
            .map_or(mb.uidnext, |m| mb.uidnext.max(m.uid.saturating_add(1)));
        let mut out = Vec::new();
        let defined = view::defined_flags(&msgs);
        out.extend(view::flags_responses(&defined, readonly));
        out.extend(imap::untagged(&format!("{} EXISTS", msgs.len())));
        if rev2 {
            // RFC 9051 §6.3.2: a LIST response with accurate attributes;
            // there is no RECENT (Appendix E).
            if let Some(b) = boxes.iter().find(|b| b.name == name) {
                out.extend(imap::untagged(&format!(
                    "LIST ({}) \"/\" {}",
                    list::list_attributes(&boxes, b).join(" "),
                    imap::quote_mailbox(&self.name_out(&name))
                )));
            }
        } else {
            out.extend(imap::untagged(&format!("{recent} RECENT")));
        }
        if let Some(i) = msgs.iter().position(|m| !has_flag(&m.flags, "\\Seen")) {
            out.extend(imap::untagged(&format!(
                "OK [UNSEEN {}] first unseen message",
                i + 1
            )));
        }
        out.extend(imap::untagged(&format!(
            "OK [UIDVALIDITY {}] UIDs valid",
            mb.uidvalidity
        )));
        out.extend(imap::untagged(&format!(
            "OK [UIDNEXT {uidnext}] predicted next UID"
        )));
        out.extend(imap::untagged(&format!(
            "OK [HIGHESTMODSEQ {}] highest",
            mb.highest_modseq
        )));
        // RFC 7162 §3.2.5.1: with a matching UIDVALIDITY, the expunges and
        // then the flag changes since the client's mod-sequence, limited
        // to its known UIDs.
        if let (Some(q), Some(vanished)) = (qresync, vanished) {
            self.condstore = true;
            let known = q.known_uids.as_ref();
            let last = uidnext.saturating_sub(1);
            let set = earlier_set(vanished, known, last, &msgs);
            if !set.is_empty() {
                out.extend(imap::untagged(&format!("VANISHED (EARLIER) {set}")));
            }
            for (i, m) in msgs.iter().enumerate() {
                if m.modseq > q.modseq && known.is_none_or(|k| k.contains(m.uid, last)) {
                    out.extend(imap::fetch_response(
                        u32::try_from(i + 1).unwrap_or(u32::MAX),
                        &[
                            FetchItem::Uid(m.uid),
                            FetchItem::Flags(&m.flags),
                            FetchItem::ModSeq(m.modseq),
                        ],
                    ));
                }
            }
        }
        let (code, cmd) = if readonly {
            ("READ-ONLY", "EXAMINE")
        } else {
            ("READ-WRITE", "SELECT")
        };
        out.extend(imap::tagged(
            tag,
            Status::Ok,
            &format!("[{code}] {cmd} completed"),
        ));
        self.selected = Some(Selected {
            recent_above: mb.recent_uid,
            modseq: mb.highest_modseq,
            mailbox: mb,
            name,
            readonly,
            msgs,
            pending_expunge: false,
            held_modseq: 0,
            saved: Vec::new(),
            defined,
        });
        self.state = State::Selected;
        io.write_all(&out).await
    }

    /// Announce changes made by others since the view was last synced.
    /// Storage errors are logged and skipped (the next command retries).
    /// A CONDSTORE-enabling command (`on`) turns CONDSTORE on; the first one
    /// with a mailbox selected announces its HIGHESTMODSEQ (RFC 7162 §3.1).
    async fn enable_condstore(&mut self, on: bool, io: &mut Conn) -> io::Result<()> {
        if !on || self.condstore {
            return Ok(());
        }
        self.condstore = true;
        if let Some(sel) = &self.selected {
            let line = format!("OK [HIGHESTMODSEQ {}] Highest", sel.modseq);
            io.write_all(&imap::untagged(&line)).await?;
        }
        Ok(())
    }

    async fn refresh(&mut self, io: &mut Conn, expunge_ok: bool) -> io::Result<()> {
        let store = &self.ctx.store;
        let rev2 = self.rev2;
        let Some(sel) = self.selected.as_mut() else {
            return Ok(());
        };
        let recent_above = if rev2 { u32::MAX } else { sel.recent_above };
        let mb = match store.mailbox_by_id(sel.mailbox.id).await {
            Ok(Some(mb)) => mb,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "refresh mailbox");
                return Ok(());
            }
        };
        if mb.highest_modseq == sel.modseq && !(sel.pending_expunge && expunge_ok) {
            return Ok(());
        }
        let held = if sel.pending_expunge {
            sel.held_modseq
        } else {
            sel.modseq
        };
        // Usually only flags changed or mail arrived: then just the rows
        // whose mod-sequence moved are read; all of them only when some
        // are gone or an expunge waits to be announced.
        let last = sel.msgs.last().map_or(0, |m| m.uid);
        let since = if sel.pending_expunge { 0 } else { sel.modseq };
        let len = if sel.pending_expunge {
            usize::MAX
        } else {
            sel.msgs.len()
        };
        let (all, complete) = match store
            .changed_messages(sel.mailbox.id, since, last, len)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "refresh mailbox");
                return Ok(());
            }
        };
        let mut out = Vec::new();
        let now: HashMap<u32, &MessageMeta> = all.iter().map(|m| (m.uid, m)).collect();
        // Expunged by others.
        let gone = complete && sel.msgs.iter().any(|m| !now.contains_key(&m.uid));
        sel.pending_expunge = gone && !expunge_ok;
        sel.held_modseq = held;
        if gone && expunge_ok {
            let removed: Vec<usize> = (0..sel.msgs.len())
                .filter(|&i| !now.contains_key(&sel.msgs[i].uid))
                .collect();
            out.extend(remove_expunged(&mut sel.msgs, &removed, self.qresync));
        }
        // Flag changes.
        for (i, m) in sel.msgs.iter_mut().enumerate() {
            if let Some(n) = now.get(&m.uid)
                && n.flags != m.flags
            {
                m.flags = n.flags.clone();
                m.modseq = n.modseq;
                out.extend(view::announce(&mut sel.defined, sel.readonly, &m.flags));
                let mut items = vec![FetchItem::Uid(m.uid), flags_item(m, recent_above)];
                if self.condstore {
                    items.push(FetchItem::ModSeq(m.modseq));
                }
                out.extend(imap::fetch_response(
                    u32::try_from(i + 1).unwrap_or(u32::MAX),
                    &items,
                ));
            }
        }
        // New messages.
        let last = sel.msgs.last().map_or(0, |m| m.uid);
        let new: Vec<MessageMeta> = all.into_iter().filter(|m| m.uid > last).collect();
        if !new.is_empty() {
            if !sel.readonly
                && let Some(l) = new.last()
                && let Err(e) = store.clear_recent(sel.mailbox.id, l.uid).await
            {
                tracing::warn!(error = %e, "clear recent");
            }
            sel.msgs.extend(new);
            let recent = sel.msgs.iter().filter(|m| m.uid > sel.recent_above).count();
            out.extend(imap::untagged(&format!("{} EXISTS", sel.msgs.len())));
            // IMAP4rev2 has no RECENT (RFC 9051 Appendix E).
            if !rev2 {
                out.extend(imap::untagged(&format!("{recent} RECENT")));
            }
        }
        // RFC 7162 §3.2: while expunges are held back, MODSEQ data must
        // come with a HIGHESTMODSEQ below theirs, so a client that loses
        // the connection now resynchronizes from before them.
        if self.qresync && sel.pending_expunge {
            out.extend(imap::untagged(&format!(
                "OK [HIGHESTMODSEQ {}] expunges pending",
                sel.held_modseq
            )));
        }
        sel.modseq = mb.highest_modseq;
        sel.mailbox.uidnext = mb.uidnext;
        io.write_all(&out).await
    }

    /// `* VANISHED (EARLIER)` for the UIDs of `set` expunged with a
    /// mod-sequence above `since` (UID FETCH ... (CHANGEDSINCE n VANISHED),
    /// RFC 7162 §3.2.6), sent before the FETCH responses. Storage errors
    /// are logged and nothing is sent (the FETCH goes on).
    async fn vanished_earlier(
        &mut self,
        set: &SequenceSet,
        since: u64,
        io: &mut Conn,
    ) -> io::Result<()> {
        let Some(sel) = self.selected.as_ref() else {
            return Ok(());
        };
        if set.is_saved() {
            return Ok(());
        }
        // `*` is the largest UID ever given out here.
        let last = sel
            .mailbox
            .uidnext
            .max(sel.msgs.last().map_or(0, |m| m.uid.saturating_add(1)))
            .saturating_sub(1);
        let text = match self.ctx.store.vanished_since(sel.mailbox.id, since).await {
            Ok(recorded) => earlier_set(recorded, Some(set), last, &sel.msgs),
            Err(e) => {
                tracing::warn!(error = %e, "VANISHED");
                return Ok(());
            }
        };
        if text.is_empty() {
            return Ok(());
        }
        io.write_all(&imap::untagged(&format!("VANISHED (EARLIER) {text}")))
            .await
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

    /// FETCH; false when it already completed (with NO/BAD).
    async fn fetch(
        &mut self,
        tag: &str,
        set: &SequenceSet,
        attrs: &[FetchAttr],
        uid: bool,
        changed_since: Option<u64>,
        io: &mut Conn,
    ) -> io::Result<bool> {
        let Some(mut idx) = self.resolve(tag, set, uid, io).await? else {
            return Ok(false);
        };
        if let (Some(n), Some(sel)) = (changed_since, self.selected.as_ref()) {
            idx.retain(|&i| sel.msgs[i].modseq > n);
        }
        let ctx = self.ctx;
        let account = self.account.as_ref().map(|a| a.id).unwrap_or_default();
        let rev2 = self.rev2;
        let Some(sel) = self.selected.as_mut() else {
            return Ok(false);
        };
        let recent_above = if rev2 { u32::MAX } else { sel.recent_above };
        // ENVELOPE, BODY, BODYSTRUCTURE and header sections come from the
        // summary stored at delivery; only other content items read bodies.
        let want_summary = attrs.iter().any(from_summary);
        let parts = Parts {
            header: attrs.iter().any(|a| {
                from_summary(a)
                    && !matches!(a, FetchAttr::Envelope | FetchAttr::BodyStructure { .. })
            }),
            envelope: attrs.contains(&FetchAttr::Envelope),
            structure: attrs
                .iter()
                .any(|a| matches!(a, FetchAttr::BodyStructure { .. })),
        };
        let want_content = attrs.iter().any(|a| a.needs_content() && !from_summary(a));
        let sets_seen = !sel.readonly && attrs.iter().any(FetchAttr::sets_seen);
        // RFC 3516 §4.3: a BINARY that cannot be decoded fails the whole
        // FETCH, so find that out before \Seen is set (this reads the
        // bodies twice, only for a non-PEEK BINARY).
        if sets_seen
            && attrs
                .iter()
                .any(|a| matches!(a, FetchAttr::Binary { peek: false, .. }))
        {
            let mut start = 0;
            while start < idx.len() {
                let end = batch_end(&sel.msgs, &idx, start, true);
                let ids: Vec<i64> = idx[start..end].iter().map(|&i| sel.msgs[i].id).collect();
                start = end;
                let contents = match ctx.store.contents(&ids).await {
                    Ok(c) => c,
                    Err(e) => {
                        io.write_all(&status_err(tag, &e, "FETCH")).await?;
                        return Ok(false);
                    }
                };
                let undecodable = contents.values().find_map(|c| {
                    attrs
                        .iter()
                        .find_map(|a| a.binary_item(c).and_then(Result::err))
                });
                if let Some(e) = undecodable {
                    let text = format!("[UNKNOWN-CTE] {e}");
                    io.write_all(&imap::tagged(tag, Status::No, &text)).await?;
                    return Ok(false);
                }
            }
        }
        // \Seen for every message that lacks it, in one transaction.
        let mut seen_now = std::collections::HashSet::new();
        if sets_seen {
            let changes: Vec<(i64, Vec<String>)> = idx
                .iter()
                .map(|&i| &sel.msgs[i])
                .filter(|m| !has_flag(&m.flags, "\\Seen"))
                .map(|m| {
                    let mut f = m.flags.clone();
                    f.push("\\Seen".to_string());
                    (m.id, f)
                })
                .collect();
            if !changes.is_empty() {
                let modseq = match ctx
                    .store
                    .store_flags(account, sel.mailbox.id, &changes)
                    .await
                {
                    Ok(modseq) => modseq,
                    Err(e) => {
                        io.write_all(&status_err(tag, &e, "FETCH \\Seen")).await?;
                        return Ok(false);
                    }
                };
                if modseq == sel.modseq + 1 {
                    sel.modseq = modseq;
                }
                for &i in &idx {
                    let m = &mut sel.msgs[i];
                    if !has_flag(&m.flags, "\\Seen") {
                        m.flags.push("\\Seen".to_string());
                        m.modseq = modseq;
                        seen_now.insert(i);
                    }
                }
            }
        }
        // Batches bounded in count and, when bodies are loaded, in octets.
        let mut start = 0;
        while start < idx.len() {
            let end = batch_end(&sel.msgs, &idx, start, want_content);
            let batch = &idx[start..end];
            start = end;
            let ids: Vec<i64> = batch.iter().map(|&i| sel.msgs[i].id).collect();
            let loaded = async {
                let summaries = if want_summary {
                    ctx.store.summaries(&ids, parts).await?
                } else {
                    HashMap::new()
                };
                let contents = if want_content {
                    ctx.store.contents(&ids).await?
                } else {
                    HashMap::new()
                };
                Ok::<_, StoreError>((summaries, contents))
            }
            .await;
            let (summaries, contents) = match loaded {
                Ok(x) => x,
                Err(e) => {
                    io.write_all(&status_err(tag, &e, "FETCH")).await?;
                    return Ok(false);
                }
            };
            let mut out = Vec::new();
            for &i in batch {
                let seq = u32::try_from(i + 1).unwrap_or(u32::MAX);
                if attrs.contains(&FetchAttr::Flags) || seen_now.contains(&i) {
                    out.extend(view::announce(
                        &mut sel.defined,
                        sel.readonly,
                        &sel.msgs[i].flags,
                    ));
                }
                let m = &sel.msgs[i];
                // A message missing here was expunged by another session: nothing to show.
                let summary = match summaries.get(&m.id) {
                    None if want_summary => continue,
                    s => s,
                };
                let content = match contents.get(&m.id) {
                    None if want_content => continue,
                    c => c.map(Vec::as_slice),
                };
                // Header sections are cut from the header block alone when
                // the whole message is not loaded.
                let source = content
                    .or(summary.map(|s| s.header.as_slice()))
                    .unwrap_or_default();
                let mut items = Vec::with_capacity(attrs.len() + 1);
                for a in attrs {
                    if let Some(item) = a.binary_item(source) {
                        match item {
                            Ok(item) => items.push(item),
                            Err(e) => {
                                // RFC 3516 §4.3: the whole FETCH fails.
                                io.write_all(&out).await?;
                                let text = format!("[UNKNOWN-CTE] {e}");
                                io.write_all(&imap::tagged(tag, Status::No, &text)).await?;
                                return Ok(false);
                            }
                        }
                        continue;
                    }
                    items.push(match a {
                        FetchAttr::Flags => flags_item(m, recent_above),
                        FetchAttr::Uid => FetchItem::Uid(m.uid),
                        FetchAttr::InternalDate => FetchItem::InternalDate(m.internal_date_ms),
                        FetchAttr::Rfc822Size => FetchItem::Rfc822Size(m.size),
                        FetchAttr::ModSeq => FetchItem::ModSeq(m.modseq),
                        FetchAttr::Envelope => FetchItem::Raw {
                            name: "ENVELOPE",
                            value: summary.map(|s| s.envelope.clone()).unwrap_or_default(),
                        },
                        FetchAttr::BodyStructure { extended } => FetchItem::Raw {
                            name: if *extended { "BODYSTRUCTURE" } else { "BODY" },
                            value: summary
                                .map(|s| {
                                    if *extended {
                                        s.body_structure.clone()
                                    } else {
                                        s.body_basic.clone()
                                    }
                                })
                                .unwrap_or_default(),
                        },
                        other => FetchItem::Data {
                            name: other.response_name(),
                            data: other.extract(source).unwrap_or_default(),
                        },
                    });
                }
                if seen_now.contains(&i) && !attrs.contains(&FetchAttr::Flags) {
                    items.push(flags_item(m, recent_above));
                }
                out.extend(imap::fetch_response(seq, &items));
            }
            // One write per batch: the buffered writer passes it straight on.
            io.write_all(&out).await?;
        }
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    async fn store(
        &mut self,
        tag: &str,
        set: &SequenceSet,
        uid: bool,
        op: StoreOp<'_>,
        io: &mut Conn,
    ) -> io::Result<bool> {
        let StoreOp {
            mode,
            silent,
            flags,
            unchanged_since,
        } = op;
        let condstore = self.condstore;
        let Some(idx) = self.resolve(tag, set, uid, io).await? else {
            return Ok(false);
        };
        let account = self.account.as_ref().map(|a| a.id).unwrap_or_default();
        let store = &self.ctx.store;
        let rev2 = self.rev2;
        let Some(sel) = self.selected.as_mut() else {
            return Ok(false);
        };
        let recent_above = if rev2 { u32::MAX } else { sel.recent_above };
        if sel.readonly {
            io.write_all(&imap::tagged(
                tag,
                Status::No,
                "[READ-ONLY] mailbox is read-only",
            ))
            .await?;
            return Ok(false);
        }
        let mut changes = Vec::new();
        let mut touched = Vec::new();
        let mut modified = Vec::new();
        for &i in &idx {
            let m = &sel.msgs[i];
            // RFC 7162 §3.1.3: a message changed since UNCHANGEDSINCE is
            // left alone and reported in [MODIFIED].
            if unchanged_since.is_some_and(|n| m.modseq > n) {
                modified.push(if uid {
                    m.uid
                } else {
                    u32::try_from(i + 1).unwrap_or(u32::MAX)
                });
                continue;
            }
            let mut new: Vec<String> = match mode {
                StoreMode::Replace => Vec::new(),
                _ => m.flags.clone(),
            };
            match mode {
                StoreMode::Replace | StoreMode::Add => {
                    for f in flags {
                        if !has_flag(&new, f) && new.len() < imap::MAX_FLAGS {
                            new.push(f.clone());
                        }
                    }
                }
                StoreMode::Remove => {
                    new.retain(|x| !flags.iter().any(|f| f.eq_ignore_ascii_case(x)))
                }
            }
            if new != m.flags {
                changes.push((m.id, new.clone()));
                touched.push((i, new));
            } else {
                touched.push((i, new));
            }
        }
        let mut new_modseq = None;
        if !changes.is_empty() {
            match store.store_flags(account, sel.mailbox.id, &changes).await {
                Ok(modseq) => {
                    if modseq == sel.modseq + 1 {
                        sel.modseq = modseq;
                    }
                    new_modseq = Some(modseq);
                }
                Err(e) => {
                    io.write_all(&status_err(tag, &e, "STORE")).await?;
                    return Ok(false);
                }
            }
        }
        let mut out = Vec::new();
        for (i, new) in touched {
            let changed = new != sel.msgs[i].flags;
            sel.msgs[i].flags = new;
            if changed && let Some(ms) = new_modseq {
                sel.msgs[i].modseq = ms;
            }
            if !silent {
                out.extend(view::announce(
                    &mut sel.defined,
                    sel.readonly,
                    &sel.msgs[i].flags,
                ));
                let m = &sel.msgs[i];
                let mut items = vec![flags_item(m, recent_above)];
                if uid {
                    items.insert(0, FetchItem::Uid(m.uid));
                }
                if condstore {
                    items.push(FetchItem::ModSeq(m.modseq));
                }
                out.extend(imap::fetch_response(
                    u32::try_from(i + 1).unwrap_or(u32::MAX),
                    &items,
                ));
            }
        }
        io.write_all(&out).await?;
        if !modified.is_empty() {
            self.refresh(io, false).await?;
            let text = format!(
                "[MODIFIED {}] conditional STORE failed for some messages",
                compact_set(&modified)
            );
            io.write_all(&imap::tagged(tag, Status::Ok, &text)).await?;
            return Ok(false);
        }
        Ok(true)
    }

    async fn expunge(
        &mut self,
        tag: &str,
        uids: Option<&SequenceSet>,
        io: &mut Conn,
    ) -> io::Result<()> {
        if self.selected.as_ref().is_some_and(|s| s.readonly) {
            return io
                .write_all(&imap::tagged(
                    tag,
                    Status::No,
                    "[READ-ONLY] mailbox is read-only",
                ))
                .await;
        }
        // See other sessions' flags first, so their \Deleted counts too.
        self.refresh(io, true).await?;
        let account = self.account.as_ref().map(|a| a.id).unwrap_or_default();
        let store = &self.ctx.store;
        let Some(sel) = self.selected.as_mut() else {
            return Ok(());
        };
        let max_uid = sel.msgs.last().map_or(0, |m| m.uid);
        let doomed: Vec<usize> = (0..sel.msgs.len())
            .filter(|&i| {
                let m = &sel.msgs[i];
                has_flag(&m.flags, "\\Deleted")
                    && uids.is_none_or(|s| {
                        s.contains(m.uid, max_uid)
                            || (s.is_saved() && sel.saved.binary_search(&m.uid).is_ok())
                    })
            })
            .collect();
        let ids: Vec<i64> = doomed.iter().map(|&i| sel.msgs[i].id).collect();
        if let Err(e) = store.expunge(account, &ids).await {
            return io.write_all(&status_err(tag, &e, "EXPUNGE")).await;
        }
        let out = remove_expunged(&mut sel.msgs, &doomed, self.qresync);
        io.write_all(&out).await?;
        self.refresh(io, true).await?;
        // RFC 7162 §3.2.7: with QRESYNC the tagged OK carries the new
        // HIGHESTMODSEQ (the view has caught up with everything below it).
        let text = match self.selected.as_ref() {
            Some(sel) if self.qresync => {
                format!("[HIGHESTMODSEQ {}] EXPUNGE completed", sel.modseq)
            }
            _ => "EXPUNGE completed".to_string(),
        };
        io.write_all(&imap::tagged(tag, Status::Ok, &text)).await
    }

    async fn copy(
        &mut self,
        tag: &str,
        set: &SequenceSet,
        uid: bool,
        target: &str,
        remove: bool,
        io: &mut Conn,
    ) -> io::Result<()> {
        let Some(idx) = self.resolve(tag, set, uid, io).await? else {
            return Ok(());
        };
        let account = self.account.as_ref().map(|a| a.id).unwrap_or_default();
        let store = &self.ctx.store;
        let Some(sel) = self.selected.as_mut() else {
            return Ok(());
        };
        if remove && sel.readonly {
            return io
                .write_all(&imap::tagged(
                    tag,
                    Status::No,
                    "[READ-ONLY] mailbox is read-only",
                ))
                .await;
        }
        let ids: Vec<i64> = idx.iter().map(|&i| sel.msgs[i].id).collect();
        let src: Vec<u32> = idx.iter().map(|&i| sel.msgs[i].uid).collect();
        let name = if remove { "MOVE" } else { "COPY" };
        if ids.is_empty() {
            self.refresh(io, remove).await?;
            return io
                .write_all(&imap::tagged(tag, Status::Ok, &format!("{name} completed")))
                .await;
        }
        let (uidvalidity, uids) = match store.copy(account, &ids, target).await {
            Ok(Added::Stored { uidvalidity, uids }) => (uidvalidity, uids),
            Ok(Added::NoMailbox) => {
                return io
                    .write_all(&imap::tagged(
                        tag,
                        Status::No,
                        "[TRYCREATE] no such mailbox",
                    ))
                    .await;
            }
            Ok(Added::OverQuota) => {
                return io
                    .write_all(&imap::tagged(tag, Status::No, "[OVERQUOTA] quota exceeded"))
                    .await;
            }
            Err(e) => return io.write_all(&status_err(tag, &e, name)).await,
        };
        let code = format!(
            "COPYUID {uidvalidity} {} {}",
            compact_set(&src),
            compact_set(&uids)
        );
        if !remove {
            self.refresh(io, false).await?;
            return io
                .write_all(&imap::tagged(
                    tag,
                    Status::Ok,
                    &format!("[{code}] COPY completed"),
                ))
                .await;
        }
        // MOVE: COPYUID in an untagged OK, then the expunges (RFC 6851 §4.3).
        if let Err(e) = store.expunge(account, &ids).await {
            return io.write_all(&status_err(tag, &e, "MOVE")).await;
        }
        let mut out = imap::untagged(&format!("OK [{code}] moved"));
        let mut sorted = idx;
        sorted.sort_unstable();
        sorted.dedup();
        out.extend(remove_expunged(&mut sel.msgs, &sorted, self.qresync));
        io.write_all(&out).await?;
        self.refresh(io, true).await?;
        io.write_all(&imap::tagged(tag, Status::Ok, "MOVE completed"))
            .await
    }

    async fn search(
        &mut self,
        tag: &str,
        uid: bool,
        key: &SearchKey,
        ret: Option<&[String]>,
        io: &mut Conn,
    ) -> io::Result<bool> {
        let store = &self.ctx.store;
        let save = ret.is_some_and(|r| r.iter().any(|i| i == "SAVE"));
        let Some(sel) = self.selected.as_ref() else {
            return Ok(false);
        };
        let max_seq = u32::try_from(sel.msgs.len()).unwrap_or(u32::MAX);
        let max_uid = sel.msgs.last().map_or(0, |m| m.uid);
        let check = |i: usize, content: Option<&[u8]>| {
            let m = &sel.msgs[i];
            key.matches(&SearchMsg {
                seq: u32::try_from(i + 1).unwrap_or(u32::MAX),
                uid: m.uid,
                max_seq,
                max_uid,
                flags: &m.flags,
                recent: m.uid > sel.recent_above,
                size: m.size,
                internal_date_ms: m.internal_date_ms,
                modseq: m.modseq,
                content,
                saved: &sel.saved,
            })
        };
        let mut matched = vec![false; sel.msgs.len()];
        if key.needs_content() {
            // Stream the mailbox's rows once: header blocks alone unless a
            // BODY/TEXT key needs whole messages. Rows gone from the
            // database (expunged by another session) match nothing; rows
            // not in this view yet are skipped.
            let pos: HashMap<i64, usize> = sel
                .msgs
                .iter()
                .enumerate()
                .map(|(i, m)| (m.id, i))
                .collect();
            let mut visit = |id: i64, content: &[u8]| {
                if let Some(&i) = pos.get(&id) {
                    matched[i] = check(i, Some(content));
                }
            };
            let streamed = if key.needs_body() {
                store.for_each_content(sel.mailbox.id, &mut visit).await
            } else {
                store.for_each_header(sel.mailbox.id, &mut visit).await
            };
            if let Err(e) = streamed {
                // A failed SEARCH RETURN (SAVE) empties `$` (RFC 5182 §2.1).
                if save && let Some(sel) = self.selected.as_mut() {
                    sel.saved.clear();
                }
                io.write_all(&status_err(tag, &e, "SEARCH")).await?;
                return Ok(false);
            }
        } else {
            for (i, hit) in matched.iter_mut().enumerate() {
                *hit = check(i, None);
            }
        }
        let mut hits = Vec::new();
        let mut hit_uids = Vec::new();
        let mut hit_modseq = Vec::new();
        for (i, m) in sel.msgs.iter().enumerate() {
            if matched[i] {
                hits.push(if uid {
                    m.uid
                } else {
                    u32::try_from(i + 1).unwrap_or(u32::MAX)
                });
                hit_uids.push(m.uid);
                hit_modseq.push(m.modseq);
            }
        }
        // RFC 7162 §3.1.5: a SEARCH with MODSEQ reports the highest
        // mod-sequence of the matches.
        // With MIN and/or MAX but neither ALL nor COUNT, it is that of the
        // messages returned (RFC 7162 §3.2 of ESEARCH's MODSEQ, RFC 4731).
        let asked = |w: &str| ret.is_some_and(|r| r.iter().any(|i| i == w));
        let only_ends = !asked("ALL") && !asked("COUNT") && (asked("MIN") || asked("MAX"));
        let highest = if !has_modseq(key) {
            None
        } else if only_ends {
            let mut ends = Vec::new();
            if asked("MIN") {
                ends.extend(hit_modseq.first());
            }
            if asked("MAX") {
                ends.extend(hit_modseq.last());
            }
            ends.into_iter().copied().max()
        } else {
            hit_modseq.iter().copied().max()
        };
        // IMAP4rev2 always answers with ESEARCH, ALL when nothing else is
        // asked (RFC 9051 §6.4.4).
        let ret = ret.or(self.rev2.then_some(&[][..]));
        let line = match ret {
            None => {
                let mut s = String::from("SEARCH");
                for h in &hits {
                    s.push(' ');
                    s.push_str(&h.to_string());
                }
                if let Some(m) = highest {
                    s.push_str(&format!(" (MODSEQ {m})"));
                }
                Some(s)
            }
            // RFC 5182 §2.1: SAVE alone returns nothing.
            Some([only]) if only == "SAVE" => None,
            Some(items) => {
                // RFC 4731 ESEARCH.
                let items: Vec<&str> = items
                    .iter()
                    .map(String::as_str)
                    .filter(|i| *i != "SAVE")
                    .collect();
                let all = items.is_empty() || items.contains(&"ALL");
                let mut s = format!("ESEARCH (TAG {})", imap::quote(tag));
                if uid {
                    s.push_str(" UID");
                }
                for i in &items {
                    match *i {
                        "MIN" => {
                            if let Some(m) = hits.first() {
                                s.push_str(&format!(" MIN {m}"));
                            }
                        }
                        "MAX" => {
                            if let Some(m) = hits.last() {
                                s.push_str(&format!(" MAX {m}"));
                            }
                        }
                        "COUNT" => s.push_str(&format!(" COUNT {}", hits.len())),
                        _ => {}
                    }
                }
                if all && !hits.is_empty() {
                    s.push_str(&format!(" ALL {}", compact_set(&hits)));
                }
                if let Some(m) = highest {
                    s.push_str(&format!(" MODSEQ {m}"));
                }
                Some(s)
            }
        };
        if save {
            // RFC 5182 §2.1: with MIN and/or MAX but neither ALL nor COUNT,
            // only those are saved.
            let asked = |w: &str| ret.is_some_and(|r| r.iter().any(|i| i == w));
            let saved = if !asked("ALL") && !asked("COUNT") && (asked("MIN") || asked("MAX")) {
                let mut v = Vec::new();
                if asked("MIN") {
                    v.extend(hit_uids.first());
                }
                if asked("MAX") {
                    v.extend(hit_uids.last());
                }
                v.dedup();
                v
            } else {
                hit_uids
            };
            if let Some(sel) = self.selected.as_mut() {
                sel.saved = saved;
            }
        }
        if let Some(line) = line {
            io.write_all(&imap::untagged(&line)).await?;
        }
        Ok(true)
    }

    async fn status_line(
        &self,
        name: &str,
        items: &[StatusItem],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let account = self.account.as_ref().map(|a| a.id).unwrap_or_default();
        let Some(mb) = self.ctx.store.mailbox(account, name).await? else {
            return Ok(None);
        };
        let c = self.ctx.store.counts(&mb).await?;
        let vals: Vec<String> = items
            .iter()
            .map(|it| {
                let v = match it {
                    StatusItem::Messages => u64::from(c.messages),
                    StatusItem::Recent => u64::from(c.recent),
                    StatusItem::UidNext => u64::from(mb.uidnext),
                    StatusItem::UidValidity => u64::from(mb.uidvalidity),
                    StatusItem::Unseen => u64::from(c.unseen),
                    StatusItem::Size => c.size,
                    StatusItem::HighestModSeq => mb.highest_modseq,
                    StatusItem::Deleted => u64::from(c.deleted),
                };
                format!("{} {v}", it.name())
            })
            .collect();
        Ok(Some(imap::untagged(&format!(
            "STATUS {} ({})",
            imap::quote_mailbox(&self.name_out(name)),
            vals.join(" ")
        ))))
    }
}

/// The parts of a STORE command.
struct StoreOp<'a> {
    mode: StoreMode,
    silent: bool,
    flags: &'a [String],
    unchanged_since: Option<u64>,
}

/// Most messages loaded for one FETCH batch.
const FETCH_BATCH: usize = 256;
/// Most octets of whole messages loaded for one FETCH batch (a batch holds
/// at least one message, however large).
const FETCH_BATCH_OCTETS: u64 = 8 * 1024 * 1024;

/// Where the FETCH batch of `idx` (indexes into `msgs`) that begins at
/// `start` ends: at most [`FETCH_BATCH`] messages and, when whole
/// messages are loaded (`content`), [`FETCH_BATCH_OCTETS`], but at least one.
fn batch_end(msgs: &[MessageMeta], idx: &[usize], start: usize, content: bool) -> usize {
    let mut end = start;
    let mut octets = 0u64;
    while end < idx.len() && end - start < FETCH_BATCH {
        octets = octets.saturating_add(msgs[idx[end]].size);
        if content && end > start && octets > FETCH_BATCH_OCTETS {
            break;
        }
        end += 1;
    }
    end
}

/// Is this FETCH item answered from the summary stored at delivery
/// (header block, ENVELOPE, BODY, BODYSTRUCTURE) rather than the body?
fn from_summary(a: &FetchAttr) -> bool {
    match a {
        FetchAttr::Envelope | FetchAttr::BodyStructure { .. } | FetchAttr::Rfc822Header => true,
        FetchAttr::Body { section, .. } => {
            matches!(section, Section::Header | Section::HeaderFields { .. })
        }
        _ => false,
    }
}

/// Does the search use MODSEQ?
fn has_modseq(k: &SearchKey) -> bool {
    match k {
        SearchKey::ModSeq(_) => true,
        SearchKey::And(v) => v.iter().any(has_modseq),
        SearchKey::Or(a, b) => has_modseq(a) || has_modseq(b),
        SearchKey::Not(a) => has_modseq(a),
        _ => false,
    }
}

fn has_flag(flags: &[String], f: &str) -> bool {
    flags.iter().any(|x| x.eq_ignore_ascii_case(f))
}

/// The FLAGS item of `m`, with `\Recent` when its UID is above
/// `recent_above` (`u32::MAX` under IMAP4rev2, which has no `\Recent`:
/// RFC 9051 Appendix E).
fn flags_item(m: &MessageMeta, recent_above: u32) -> FetchItem<'_> {
    if m.uid > recent_above {
        FetchItem::RecentFlags(&m.flags)
    } else {
        FetchItem::Flags(&m.flags)
    }
}
