//! The IMAP session: network I/O around `tern_mailproto::imap`.

use std::io;
use std::time::Duration;

use tern_mailproto::imap::{
    self, Command, CommandKind, FetchAttr, FetchItem, Frame, Framer, SequenceSet, State, Status,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

use crate::accounts;
use crate::net::{Io, SessionCtx};
use crate::store::{Account, Mailbox, MessageMeta};

/// Autologout after this long without a command (RFC 9051 asks for at least 30 minutes).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

type Conn = BufWriter<Box<dyn Io>>;

enum Flow {
    Continue,
    Close,
}

struct Selected {
    mailbox: Mailbox,
    readonly: bool,
    msgs: Vec<MessageMeta>,
    recent: usize,
}

struct Session<'a> {
    ctx: &'a SessionCtx,
    state: State,
    login_ok: bool,
    account: Option<Account>,
    selected: Option<Selected>,
}

enum Input {
    Shutdown,
    Idle,
    Read(io::Result<usize>),
}

/// Serve one IMAP connection until LOGOUT, EOF, idle timeout or shutdown.
pub async fn session(stream: Box<dyn Io>, tls: bool, ctx: &SessionCtx) -> io::Result<()> {
    let login_ok = tls || ctx.allow_plaintext_auth;
    let mut io = BufWriter::new(stream);
    io.write_all(&imap::greeting(&ctx.hostname, login_ok))
        .await?;
    io.flush().await?;
    let mut s = Session {
        ctx,
        state: State::NotAuthenticated,
        login_ok,
        account: None,
        selected: None,
    };
    let mut framer = Framer::new();
    let mut buf = vec![0u8; 16 * 1024];
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
                    io.write_all(&bad(tag.as_deref(), "line too long")).await?;
                    Flow::Continue
                }
                Frame::LiteralTooLarge { tag } => {
                    io.write_all(&bad(tag.as_deref(), "literal too large"))
                        .await?;
                    Flow::Continue
                }
                Frame::Command(bytes) => match imap::parse_command(&bytes) {
                    Ok(cmd) => s.execute(cmd, &mut io).await?,
                    Err(e) => {
                        io.write_all(&e.response()).await?;
                        Flow::Continue
                    }
                },
            };
            if let Flow::Close = flow {
                io.flush().await?;
                return Ok(());
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

fn bad(tag: Option<&str>, text: &str) -> Vec<u8> {
    match tag {
        Some(t) => imap::tagged(t, Status::Bad, text),
        None => imap::untagged(&format!("BAD {text}")),
    }
}

impl Session<'_> {
    async fn execute(&mut self, cmd: Command, io: &mut Conn) -> io::Result<Flow> {
        let tag = cmd.tag.as_str();
        if !cmd.kind.allowed_in(self.state) {
            let why = match (&cmd.kind, self.state) {
                (CommandKind::Login { .. }, _) => "already authenticated",
                (_, State::NotAuthenticated) => "log in first",
                (CommandKind::Fetch { .. }, _) => "no mailbox selected",
                _ => "command not allowed in this state",
            };
            io.write_all(&imap::tagged(tag, Status::Bad, why)).await?;
            return Ok(Flow::Continue);
        }
        match cmd.kind {
            CommandKind::Capability => {
                let caps = imap::capabilities(self.login_ok);
                io.write_all(&imap::untagged(&format!("CAPABILITY {caps}")))
                    .await?;
                io.write_all(&imap::tagged(tag, Status::Ok, "CAPABILITY completed"))
                    .await?;
            }
            CommandKind::Noop => {
                if let Err(e) = self.refresh(io).await {
                    tracing::warn!(error = %e, "refresh mailbox");
                }
                io.write_all(&imap::tagged(tag, Status::Ok, "NOOP completed"))
                    .await?;
            }
            CommandKind::Logout => {
                self.state = State::Logout;
                io.write_all(&imap::untagged("BYE Tern IMAP signing off"))
                    .await?;
                io.write_all(&imap::tagged(tag, Status::Ok, "LOGOUT completed"))
                    .await?;
                return Ok(Flow::Close);
            }
            CommandKind::Login { user, password } => self.login(tag, &user, &password, io).await?,
            CommandKind::Select { mailbox } => self.select(tag, &mailbox, false, io).await?,
            CommandKind::Examine { mailbox } => self.select(tag, &mailbox, true, io).await?,
            CommandKind::Fetch { set, attrs, uid } => {
                self.fetch(tag, &set, &attrs, uid, io).await?
            }
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
        if !self.login_ok {
            let text =
                "[PRIVACYREQUIRED] plaintext authentication is disabled on this port; use IMAPS";
            return io.write_all(&imap::tagged(tag, Status::No, text)).await;
        }
        let reply = match accounts::authenticate(&self.ctx.store, user, password).await {
            Ok(Some(account)) => {
                tracing::info!(account = %account.address, "IMAP login");
                self.account = Some(account);
                self.state = State::Authenticated;
                let caps = imap::capabilities(true);
                imap::tagged(
                    tag,
                    Status::Ok,
                    &format!("[CAPABILITY {caps}] LOGIN completed"),
                )
            }
            Ok(None) => {
                tracing::info!("IMAP login failed");
                imap::tagged(
                    tag,
                    Status::No,
                    "[AUTHENTICATIONFAILED] invalid credentials",
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "IMAP login: storage error");
                imap::tagged(
                    tag,
                    Status::No,
                    "[UNAVAILABLE] temporary failure, try again later",
                )
            }
        };
        io.write_all(&reply).await
    }

    async fn select(
        &mut self,
        tag: &str,
        mailbox: &str,
        readonly: bool,
        io: &mut Conn,
    ) -> io::Result<()> {
        // A failed SELECT leaves no mailbox selected.
        self.selected = None;
        self.state = State::Authenticated;
        let Some(account) = &self.account else {
            return io
                .write_all(&imap::tagged(tag, Status::Bad, "log in first"))
                .await;
        };
        if !mailbox.eq_ignore_ascii_case(crate::store::INBOX) {
            return io
                .write_all(&imap::tagged(
                    tag,
                    Status::No,
                    "[NONEXISTENT] no such mailbox",
                ))
                .await;
        }
        let store = &self.ctx.store;
        let loaded = async {
            let mb = store.inbox(account.id).await?;
            let msgs = store.messages(mb.id, 0).await?;
            if !readonly && let Some(last) = msgs.last() {
                store.clear_recent(mb.id, last.uid).await?;
            }
            Ok::<_, crate::store::StoreError>((mb, msgs))
        }
        .await;
        let (mailbox, msgs) = match loaded {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "SELECT: storage error");
                let text = "[UNAVAILABLE] temporary failure, try again later";
                return io.write_all(&imap::tagged(tag, Status::No, text)).await;
            }
        };
        let recent = msgs.iter().filter(|m| m.uid > mailbox.recent_uid).count();
        let uidnext = msgs.last().map_or(mailbox.uidnext, |m| {
            mailbox.uidnext.max(m.uid.saturating_add(1))
        });
        let mut out = Vec::new();
        out.extend(imap::untagged(&format!(
            "FLAGS {}",
            imap::flag_list(&imap::SYSTEM_FLAGS)
        )));
        let permanent = if readonly {
            "()".to_string()
        } else {
            imap::flag_list(&imap::SYSTEM_FLAGS)
        };
        out.extend(imap::untagged(&format!(
            "OK [PERMANENTFLAGS {permanent}] flags permitted"
        )));
        out.extend(imap::untagged(&format!("{} EXISTS", msgs.len())));
        out.extend(imap::untagged(&format!("{recent} RECENT")));
        if let Some(i) = msgs
            .iter()
            .position(|m| !m.flags.iter().any(|f| f == "\\Seen"))
        {
            out.extend(imap::untagged(&format!(
                "OK [UNSEEN {}] first unseen message",
                i + 1
            )));
        }
        out.extend(imap::untagged(&format!(
            "OK [UIDVALIDITY {}] UIDs valid",
            mailbox.uidvalidity
        )));
        out.extend(imap::untagged(&format!(
            "OK [UIDNEXT {uidnext}] predicted next UID"
        )));
        let (code, name) = if readonly {
            ("READ-ONLY", "EXAMINE")
        } else {
            ("READ-WRITE", "SELECT")
        };
        out.extend(imap::tagged(
            tag,
            Status::Ok,
            &format!("[{code}] {name} completed"),
        ));
        self.selected = Some(Selected {
            mailbox,
            readonly,
            msgs,
            recent,
        });
        self.state = State::Selected;
        io.write_all(&out).await
    }

    /// Pick up messages delivered since SELECT and announce them.
    async fn refresh(&mut self, io: &mut Conn) -> Result<(), RefreshError> {
        let Some(sel) = self.selected.as_mut() else {
            return Ok(());
        };
        let after = sel.msgs.last().map_or(0, |m| m.uid);
        let new = self.ctx.store.messages(sel.mailbox.id, after).await?;
        if new.is_empty() {
            return Ok(());
        }
        if !sel.readonly
            && let Some(last) = new.last()
        {
            self.ctx
                .store
                .clear_recent(sel.mailbox.id, last.uid)
                .await?;
        }
        sel.recent += new.len();
        sel.msgs.extend(new);
        let mut out = imap::untagged(&format!("{} EXISTS", sel.msgs.len()));
        out.extend(imap::untagged(&format!("{} RECENT", sel.recent)));
        io.write_all(&out).await?;
        Ok(())
    }

    async fn fetch(
        &mut self,
        tag: &str,
        set: &SequenceSet,
        attrs: &[FetchAttr],
        uid: bool,
        io: &mut Conn,
    ) -> io::Result<()> {
        let ctx = self.ctx;
        let Some(sel) = self.selected.as_mut() else {
            return io
                .write_all(&imap::tagged(tag, Status::Bad, "no mailbox selected"))
                .await;
        };
        let count = u32::try_from(sel.msgs.len()).unwrap_or(u32::MAX);
        if !uid && (count == 0 || set.max_value().is_some_and(|m| m > count)) {
            return io
                .write_all(&imap::tagged(
                    tag,
                    Status::Bad,
                    "invalid message sequence number",
                ))
                .await;
        }
        let max_uid = sel.msgs.last().map_or(0, |m| m.uid);
        let needs_content = attrs.iter().any(FetchAttr::needs_content);
        let sets_seen = !sel.readonly && attrs.iter().any(FetchAttr::sets_seen);
        let done = if uid {
            "UID FETCH completed"
        } else {
            "FETCH completed"
        };
        for (i, m) in sel.msgs.iter_mut().enumerate() {
            let seq = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let hit = if uid {
                max_uid > 0 && set.contains(m.uid, max_uid)
            } else {
                set.contains(seq, count)
            };
            if !hit {
                continue;
            }
            let content = if needs_content {
                match ctx.store.content(m.id).await {
                    Ok(Some(c)) => Some(c),
                    // Removed by another session (POP3 QUIT); nothing to show.
                    Ok(None) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "FETCH: storage error");
                        let text = "[UNAVAILABLE] temporary failure, try again later";
                        return io.write_all(&imap::tagged(tag, Status::No, text)).await;
                    }
                }
            } else {
                None
            };
            let mut flags_changed = false;
            if sets_seen && !m.flags.iter().any(|f| f == "\\Seen") {
                m.flags.push("\\Seen".to_string());
                if let Err(e) = ctx.store.set_flags(m.id, &m.flags).await {
                    tracing::warn!(error = %e, "FETCH: set \\Seen");
                    m.flags.pop();
                    let text = "[UNAVAILABLE] temporary failure, try again later";
                    return io.write_all(&imap::tagged(tag, Status::No, text)).await;
                }
                flags_changed = true;
            }
            let content = content.as_deref().unwrap_or_default();
            let mut items = Vec::with_capacity(attrs.len() + 1);
            for a in attrs {
                items.push(match a {
                    FetchAttr::Flags => FetchItem::Flags(&m.flags),
                    FetchAttr::Uid => FetchItem::Uid(m.uid),
                    FetchAttr::InternalDate => FetchItem::InternalDate(m.internal_date_ms),
                    FetchAttr::Rfc822Size => FetchItem::Rfc822Size(m.size),
                    other => FetchItem::Data {
                        name: other.response_name(),
                        data: other.extract(content).unwrap_or_default(),
                    },
                });
            }
            if flags_changed && !attrs.contains(&FetchAttr::Flags) {
                items.push(FetchItem::Flags(&m.flags));
            }
            io.write_all(&imap::fetch_response(seq, &items)).await?;
        }
        io.write_all(&imap::tagged(tag, Status::Ok, done)).await
    }
}

/// Errors refreshing a selected mailbox.
#[derive(Debug, thiserror::Error)]
enum RefreshError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Writing to the client failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}
