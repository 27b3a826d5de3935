//! POP3 (RFC 1939, with CAPA and response codes from RFC 2449, STLS from
//! RFC 2595 and AUTH PLAIN from RFC 5034 / RFC 4616).
//!
//! [`parse_command`] turns one command line into a [`Command`]; [`Session`]
//! is the AUTHORIZATION → TRANSACTION → UPDATE state machine. The session
//! never does I/O: when it needs the store it returns an [`Action`] asking
//! the caller to authenticate, load a message or expunge, and the caller
//! reports back with [`Session::login_ok`], [`Session::login_failed`],
//! [`format_retrieve`] or [`update_reply`].

/// Longest command line accepted, CRLF included (RFC 2449 allows 255).
pub const MAX_LINE: usize = 1024;

/// A parsed POP3 command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `CAPA` (RFC 2449).
    Capa,
    /// `USER name`.
    User(String),
    /// `PASS secret` (the rest of the line; may contain spaces).
    Pass(String),
    /// `STAT`.
    Stat,
    /// `LIST [msg]`.
    List(Option<u32>),
    /// `UIDL [msg]`.
    Uidl(Option<u32>),
    /// `RETR msg`.
    Retr(u32),
    /// `TOP msg lines`.
    Top(u32, u32),
    /// `DELE msg`.
    Dele(u32),
    /// `NOOP`.
    Noop,
    /// `RSET`.
    Rset,
    /// `QUIT`.
    Quit,
    /// `STLS` (RFC 2595 §4).
    Stls,
    /// `AUTH [mechanism [initial-response]]` (RFC 5034).
    Auth {
        /// Mechanism, upper-cased; `None` asks for the list.
        mechanism: Option<String>,
        /// Base64 initial response (`=` for empty).
        initial: Option<String>,
    },
}

/// Why a command line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line was empty.
    #[error("empty command")]
    Empty,
    /// The command name is not one we know.
    #[error("unknown command {0}")]
    Unknown(String),
    /// Wrong number or form of arguments, or a line that is not UTF-8.
    #[error("syntax error in {0} arguments")]
    Syntax(&'static str),
}

fn strip_eol(mut line: &[u8]) -> &[u8] {
    if let Some(l) = line.strip_suffix(b"\n") {
        line = l;
    }
    if let Some(l) = line.strip_suffix(b"\r") {
        line = l;
    }
    line
}

fn number(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parse one command line (with or without its CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let line = strip_eol(line);
    let (name, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    if name.is_empty() {
        return Err(ParseError::Empty);
    }
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
    let cmd: &'static str = match name.as_str() {
        "CAPA" => "CAPA",
        "USER" => "USER",
        "PASS" => "PASS",
        "STAT" => "STAT",
        "LIST" => "LIST",
        "UIDL" => "UIDL",
        "RETR" => "RETR",
        "TOP" => "TOP",
        "DELE" => "DELE",
        "NOOP" => "NOOP",
        "RSET" => "RSET",
        "QUIT" => "QUIT",
        "STLS" => "STLS",
        "AUTH" => "AUTH",
        _ => {
            // By characters: the lossy decoding may hold multi-byte U+FFFD.
            let shown: String = name.chars().take(40).collect();
            return Err(ParseError::Unknown(shown));
        }
    };
    let syntax = ParseError::Syntax(cmd);
    let rest = match rest {
        Some(r) => Some(std::str::from_utf8(r).map_err(|_| syntax.clone())?),
        None => None,
    };
    let args: Vec<&str> = rest
        .map(|r| r.split_ascii_whitespace().collect())
        .unwrap_or_default();
    let no_args = |c: Command| {
        if args.is_empty() {
            Ok(c)
        } else {
            Err(syntax.clone())
        }
    };
    let opt_num = |f: fn(Option<u32>) -> Command| match args.as_slice() {
        [] => Ok(f(None)),
        [n] => number(n).map(|n| f(Some(n))).ok_or(syntax.clone()),
        _ => Err(syntax.clone()),
    };
    let one_num = |f: fn(u32) -> Command| match args.as_slice() {
        [n] => number(n).map(f).ok_or(syntax.clone()),
        _ => Err(syntax.clone()),
    };
    match cmd {
        "CAPA" => no_args(Command::Capa),
        "STAT" => no_args(Command::Stat),
        "NOOP" => no_args(Command::Noop),
        "RSET" => no_args(Command::Rset),
        "QUIT" => no_args(Command::Quit),
        "STLS" => no_args(Command::Stls),
        "AUTH" => match args.as_slice() {
            [] => Ok(Command::Auth {
                mechanism: None,
                initial: None,
            }),
            [m] => Ok(Command::Auth {
                mechanism: Some(m.to_ascii_uppercase()),
                initial: None,
            }),
            [m, r] => Ok(Command::Auth {
                mechanism: Some(m.to_ascii_uppercase()),
                initial: Some((*r).to_string()),
            }),
            _ => Err(syntax),
        },
        "USER" => match args.as_slice() {
            [u] => Ok(Command::User((*u).to_string())),
            _ => Err(syntax),
        },
        "PASS" => match rest {
            Some(p) if !p.is_empty() => Ok(Command::Pass(p.to_string())),
            _ => Err(syntax),
        },
        "LIST" => opt_num(Command::List),
        "UIDL" => opt_num(Command::Uidl),
        "RETR" => one_num(Command::Retr),
        "DELE" => one_num(Command::Dele),
        "TOP" => match args.as_slice() {
            [m, n] => match (number(m), number(n)) {
                (Some(m), Some(n)) => Ok(Command::Top(m, n)),
                _ => Err(syntax),
            },
            _ => Err(syntax),
        },
        _ => Err(syntax),
    }
}

/// One message of the maildrop, as listed when the session starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// Size in octets (as RETR sends it, before byte-stuffing).
    pub size: u64,
    /// Unique id for UIDL: 1-70 characters in 0x21..=0x7E, stable across sessions.
    pub uid: String,
}

/// What the caller must do after feeding a line to [`Session::handle_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send these bytes and read the next command.
    Reply(Vec<u8>),
    /// Check the credentials, then call [`Session::login_ok`] or
    /// [`Session::login_failed`] and send what it returns.
    Authenticate {
        /// The name given with USER.
        user: String,
        /// The password given with PASS.
        password: String,
    },
    /// Load message `index` (0-based into the listing given to
    /// [`Session::login_ok`]) and send [`format_retrieve`] of it.
    Retrieve {
        /// 0-based index into the listing.
        index: usize,
        /// `Some(n)` for TOP: headers plus the first `n` body lines.
        top: Option<u32>,
    },
    /// Enter UPDATE: remove these messages (0-based indexes into the
    /// listing), send [`update_reply`] and close the connection.
    Update {
        /// Indexes of the messages marked deleted.
        deleted: Vec<usize>,
    },
    /// Send these bytes and close the connection.
    Close(Vec<u8>),
    /// Send these bytes, then start TLS on the connection and call
    /// [`Session::tls_started`] (RFC 2595 §4).
    StartTls(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Authorization,
    /// AUTH PLAIN sent `+ `; the next line is the client's response.
    SaslWait,
    Authenticating,
    Transaction,
    Done,
}

/// One POP3 session's protocol state.
#[derive(Debug)]
pub struct Session {
    state: State,
    user: Option<String>,
    messages: Vec<MessageInfo>,
    deleted: Vec<bool>,
    plaintext_ok: bool,
    stls: bool,
}

fn ok(text: &str) -> Vec<u8> {
    if text.is_empty() {
        return b"+OK\r\n".to_vec();
    }
    format!("+OK {text}\r\n").into_bytes()
}

fn err(text: &str) -> Vec<u8> {
    format!("-ERR {text}\r\n").into_bytes()
}

impl Session {
    /// A new session. `plaintext_ok` says whether USER/PASS may be used on
    /// this connection (TLS, or plaintext auth allowed by configuration).
    pub fn new(plaintext_ok: bool) -> Self {
        Session {
            state: State::Authorization,
            user: None,
            messages: Vec::new(),
            deleted: Vec::new(),
            plaintext_ok,
            stls: false,
        }
    }

    /// Offer STLS (a cleartext connection with TLS configured).
    pub fn offer_stls(&mut self, on: bool) {
        self.stls = on;
    }

    /// TLS is now active: password authentication is allowed and STLS is
    /// no longer offered. Any state from before is forgotten (RFC 2595 §4).
    pub fn tls_started(&mut self) {
        self.stls = false;
        self.plaintext_ok = true;
        self.user = None;
    }

    /// The greeting to send when the connection opens.
    pub fn greeting(hostname: &str) -> Vec<u8> {
        ok(&format!("{} Tern POP3 server ready", sanitize(hostname)))
    }

    /// Is the session in the TRANSACTION state?
    pub fn is_authenticated(&self) -> bool {
        self.state == State::Transaction
    }

    /// The reply for a command line that exceeded [`MAX_LINE`].
    pub fn line_too_long() -> Vec<u8> {
        err("line too long")
    }

    fn capa(&self) -> Vec<u8> {
        let mut out = b"+OK capability list follows\r\n".to_vec();
        if self.state == State::Authorization {
            if self.plaintext_ok {
                out.extend_from_slice(b"USER\r\nSASL PLAIN\r\n");
            }
            if self.stls {
                out.extend_from_slice(b"STLS\r\n");
            }
        }
        out.extend_from_slice(b"TOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nIMPLEMENTATION Tern\r\n.\r\n");
        out
    }

    /// Resolve a 1-based message number to a live (not deleted) index.
    fn lookup(&self, n: u32) -> Result<usize, Vec<u8>> {
        let i = (n as usize)
            .checked_sub(1)
            .filter(|i| *i < self.messages.len());
        match i {
            None => Err(err("no such message")),
            Some(i) if self.deleted.get(i).copied().unwrap_or(false) => {
                Err(err(&format!("message {n} already deleted")))
            }
            Some(i) => Ok(i),
        }
    }

    fn live(&self) -> impl Iterator<Item = (usize, &MessageInfo)> {
        self.messages
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.deleted.get(*i).copied().unwrap_or(false))
    }

    /// Handle one command line (with or without CRLF).
    pub fn handle_line(&mut self, line: &[u8]) -> Action {
        if self.state == State::SaslWait {
            self.state = State::Authorization;
            return self.sasl_plain(strip_eol(line));
        }
        let cmd = match parse_command(line) {
            Ok(c) => c,
            Err(ParseError::Unknown(_)) => return Action::Reply(err("unknown command")),
            Err(e) => return Action::Reply(err(&e.to_string())),
        };
        match self.state {
            State::Authorization | State::SaslWait => self.authorization(cmd),
            State::Authenticating => Action::Reply(err("authentication in progress")),
            State::Transaction => self.transaction(cmd),
            State::Done => Action::Close(err("session ended")),
        }
    }

    fn authorization(&mut self, cmd: Command) -> Action {
        match cmd {
            Command::Capa => Action::Reply(self.capa()),
            Command::Quit => {
                self.state = State::Done;
                Action::Close(ok("bye"))
            }
            Command::Stls if self.stls => {
                self.stls = false;
                Action::StartTls(ok("begin TLS negotiation"))
            }
            Command::Stls => Action::Reply(err("STLS not available")),
            Command::Auth {
                mechanism: None, ..
            } => Action::Reply(ok("supported mechanisms follow\r\nPLAIN\r\n.")),
            Command::Auth {
                mechanism: Some(m), ..
            } if m != "PLAIN" => Action::Reply(err("unsupported mechanism")),
            Command::User(_) | Command::Pass(_) | Command::Auth { .. } if !self.plaintext_ok => {
                Action::Reply(err(
                    "[AUTH] plaintext authentication is disabled on this connection; use STLS or TLS (port 995)",
                ))
            }
            Command::Auth {
                initial: Some(r), ..
            } => self.sasl_plain(r.as_bytes()),
            Command::Auth { initial: None, .. } => {
                self.state = State::SaslWait;
                Action::Reply(b"+ \r\n".to_vec())
            }
            Command::User(u) => {
                self.user = Some(u);
                Action::Reply(ok("send PASS"))
            }
            Command::Pass(password) => match self.user.take() {
                Some(user) => {
                    self.state = State::Authenticating;
                    Action::Authenticate { user, password }
                }
                None => Action::Reply(err("send USER first")),
            },
            _ => Action::Reply(err("not allowed before authentication")),
        }
    }

    /// A SASL PLAIN response (RFC 4616): `authzid NUL authcid NUL passwd`.
    fn sasl_plain(&mut self, resp: &[u8]) -> Action {
        if resp == b"*" {
            return Action::Reply(err("authentication cancelled"));
        }
        let decoded = if resp == b"=" {
            Some(Vec::new())
        } else {
            crate::base64_decode(resp)
        };
        let parts: Option<Vec<String>> = decoded.and_then(|d| {
            let p: Vec<&[u8]> = d.split(|&b| b == 0).collect();
            if p.len() != 3 {
                return None;
            }
            p.iter()
                .map(|x| String::from_utf8(x.to_vec()).ok())
                .collect()
        });
        match parts.as_deref() {
            Some([authz, user, password])
                if authz.is_empty() || authz.eq_ignore_ascii_case(user) =>
            {
                self.state = State::Authenticating;
                Action::Authenticate {
                    user: user.clone(),
                    password: password.clone(),
                }
            }
            Some(_) => Action::Reply(err("[AUTH] cannot act as another user")),
            None => Action::Reply(err("malformed SASL PLAIN response")),
        }
    }

    /// Credentials were good: enter TRANSACTION with this maildrop listing.
    /// Returns the reply to send.
    pub fn login_ok(&mut self, messages: Vec<MessageInfo>) -> Vec<u8> {
        self.state = State::Transaction;
        self.deleted = vec![false; messages.len()];
        let size: u64 = messages.iter().map(|m| m.size).sum();
        let reply = ok(&format!(
            "maildrop has {} messages ({size} octets)",
            messages.len()
        ));
        self.messages = messages;
        reply
    }

    /// Credentials were bad (or the maildrop could not be opened): back to
    /// the start of AUTHORIZATION. Returns the reply to send.
    pub fn login_failed(&mut self) -> Vec<u8> {
        self.state = State::Authorization;
        self.user = None;
        err("[AUTH] invalid user name or password")
    }

    /// Too many recent failed logins: refused without checking the
    /// password. `[SYS/TEMP]` (RFC 3206 §4) because the lock is temporary
    /// and not about these credentials. Returns the reply to send.
    pub fn login_throttled(&mut self) -> Vec<u8> {
        self.state = State::Authorization;
        self.user = None;
        err("[SYS/TEMP] too many failed logins, try again later")
    }

    /// The credentials were good but another session holds the maildrop
    /// (RFC 1939 §8; `[IN-USE]`, RFC 2449 §8.1.1). Returns the reply to send.
    pub fn maildrop_in_use(&mut self) -> Vec<u8> {
        self.state = State::Authorization;
        self.user = None;
        err("[IN-USE] maildrop already locked by another session")
    }

    /// Authentication could not be checked because of a server-side
    /// problem. Returns the reply to send.
    pub fn login_unavailable(&mut self) -> Vec<u8> {
        self.state = State::Authorization;
        self.user = None;
        err("[SYS/TEMP] temporary failure, try again later")
    }

    fn transaction(&mut self, cmd: Command) -> Action {
        let reply = match cmd {
            Command::Capa => self.capa(),
            Command::Stat => {
                let (n, size) = self
                    .live()
                    .fold((0u64, 0u64), |(n, s), (_, m)| (n + 1, s + m.size));
                ok(&format!("{n} {size}"))
            }
            Command::List(None) => {
                let mut out = ok("scan listing follows");
                for (i, m) in self.live() {
                    out.extend_from_slice(format!("{} {}\r\n", i + 1, m.size).as_bytes());
                }
                out.extend_from_slice(b".\r\n");
                out
            }
            Command::List(Some(n)) => match self.lookup(n) {
                Ok(i) => ok(&format!("{n} {}", self.messages[i].size)),
                Err(e) => e,
            },
            Command::Uidl(None) => {
                let mut out = ok("unique-id listing follows");
                for (i, m) in self.live() {
                    out.extend_from_slice(format!("{} {}\r\n", i + 1, m.uid).as_bytes());
                }
                out.extend_from_slice(b".\r\n");
                out
            }
            Command::Uidl(Some(n)) => match self.lookup(n) {
                Ok(i) => ok(&format!("{n} {}", self.messages[i].uid)),
                Err(e) => e,
            },
            Command::Retr(n) => match self.lookup(n) {
                Ok(index) => return Action::Retrieve { index, top: None },
                Err(e) => e,
            },
            Command::Top(n, lines) => match self.lookup(n) {
                Ok(index) => {
                    return Action::Retrieve {
                        index,
                        top: Some(lines),
                    };
                }
                Err(e) => e,
            },
            Command::Dele(n) => match self.lookup(n) {
                Ok(i) => {
                    if let Some(d) = self.deleted.get_mut(i) {
                        *d = true;
                    }
                    ok(&format!("message {n} deleted"))
                }
                Err(e) => e,
            },
            Command::Noop => ok(""),
            Command::Rset => {
                self.deleted.iter_mut().for_each(|d| *d = false);
                let (n, size) = self
                    .live()
                    .fold((0u64, 0u64), |(n, s), (_, m)| (n + 1, s + m.size));
                ok(&format!("maildrop has {n} messages ({size} octets)"))
            }
            Command::Quit => {
                self.state = State::Done;
                let deleted = self
                    .deleted
                    .iter()
                    .enumerate()
                    .filter_map(|(i, d)| d.then_some(i))
                    .collect();
                return Action::Update { deleted };
            }
            Command::User(_) | Command::Pass(_) | Command::Auth { .. } | Command::Stls => {
                err("already authenticated")
            }
        };
        Action::Reply(reply)
    }
}

/// The reply after UPDATE: `removed` says whether the deletions succeeded.
pub fn update_reply(removed: bool) -> Vec<u8> {
    if removed {
        ok("bye")
    } else {
        err("[SYS/TEMP] some deleted messages not removed")
    }
}

/// The reply when a message could not be loaded for RETR/TOP.
pub fn retrieve_failed() -> Vec<u8> {
    err("[SYS/TEMP] message could not be read, try again later")
}

fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// The full RETR (`top == None`) or TOP reply for a message, byte-stuffed
/// and terminated by `.CRLF`.
pub fn format_retrieve(content: &[u8], top: Option<u32>) -> Vec<u8> {
    let part = match top {
        Some(n) => top_part(content, n),
        None => content,
    };
    let mut out = Vec::with_capacity(part.len() + part.len() / 50 + 32);
    match top {
        Some(_) => out.extend_from_slice(b"+OK top of message follows\r\n"),
        None => out.extend_from_slice(format!("+OK {} octets\r\n", content.len()).as_bytes()),
    }
    dot_stuff(part, &mut out);
    out.extend_from_slice(b".\r\n");
    out
}

/// Append `content` to `out` as multi-line response data: every line ends
/// in CRLF (bare LF is converted, a missing final line ending is added) and
/// a line starting with `.` gets another `.` in front. The terminating
/// `.CRLF` is not added.
pub fn dot_stuff(content: &[u8], out: &mut Vec<u8>) {
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &b in content {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        at_line_start = b == b'\n';
        prev = b;
    }
    if !content.is_empty() && !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
}

/// The header section, the blank line after it, and the first `lines` lines
/// of the body (RFC 1939 TOP). Without a blank line the whole message is header.
pub fn top_part(content: &[u8], lines: u32) -> &[u8] {
    let mut pos = 0;
    let mut in_body = false;
    let mut body_lines = 0u32;
    while pos < content.len() {
        if in_body && body_lines >= lines {
            break;
        }
        let end = content[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(content.len(), |i| pos + i + 1);
        let line = &content[pos..end];
        if in_body {
            body_lines += 1;
        } else if line == b"\r\n" || line == b"\n" {
            in_body = true;
        }
        pos = end;
    }
    &content[..pos]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse_command(b"user alice@example.com\r\n"),
            Ok(Command::User("alice@example.com".into()))
        );
        assert_eq!(
            parse_command(b"PASS two words\r\n"),
            Ok(Command::Pass("two words".into()))
        );
        assert_eq!(parse_command(b"STAT"), Ok(Command::Stat));
        assert_eq!(parse_command(b"LIST"), Ok(Command::List(None)));
        assert_eq!(parse_command(b"LIST 2"), Ok(Command::List(Some(2))));
        assert_eq!(parse_command(b"uidl 3\r\n"), Ok(Command::Uidl(Some(3))));
        assert_eq!(parse_command(b"TOP 1 10"), Ok(Command::Top(1, 10)));
        assert_eq!(parse_command(b"RETR 1"), Ok(Command::Retr(1)));
        assert_eq!(parse_command(b"DELE 1"), Ok(Command::Dele(1)));
        assert_eq!(parse_command(b"QUIT"), Ok(Command::Quit));
        assert_eq!(parse_command(b"CAPA"), Ok(Command::Capa));
    }

    #[test]
    fn rejects_bad_commands() {
        assert_eq!(parse_command(b""), Err(ParseError::Empty));
        assert_eq!(parse_command(b"\r\n"), Err(ParseError::Empty));
        assert!(matches!(
            parse_command(b"XYZZY"),
            Err(ParseError::Unknown(_))
        ));
        assert_eq!(parse_command(b"RETR"), Err(ParseError::Syntax("RETR")));
        assert_eq!(parse_command(b"RETR x"), Err(ParseError::Syntax("RETR")));
        assert_eq!(
            parse_command(b"RETR 99999999999"),
            Err(ParseError::Syntax("RETR"))
        );
        assert_eq!(parse_command(b"RETR -1"), Err(ParseError::Syntax("RETR")));
        assert_eq!(parse_command(b"STAT 1"), Err(ParseError::Syntax("STAT")));
        assert_eq!(parse_command(b"TOP 1"), Err(ParseError::Syntax("TOP")));
        assert_eq!(parse_command(b"PASS"), Err(ParseError::Syntax("PASS")));
        assert_eq!(parse_command(b"PASS \xff"), Err(ParseError::Syntax("PASS")));
        assert!(parse_command(b" USER x").is_err());
    }

    #[test]
    fn parser_is_total() {
        // Every short byte string either parses or errors, never panics.
        let alphabet = [b' ', b'1', b'0', b'R', b'E', b'T', b'\r', b'\n', 0xff, b'.'];
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    let line = [b'R', b'E', b'T', b'R', a, b, c];
                    let _ = parse_command(&line);
                    let _ = parse_command(&[a, b, c]);
                }
            }
        }
    }

    fn logged_in() -> Session {
        let mut s = Session::new(true);
        assert_eq!(
            s.handle_line(b"USER a"),
            Action::Reply(b"+OK send PASS\r\n".to_vec())
        );
        let a = s.handle_line(b"PASS secret");
        assert_eq!(
            a,
            Action::Authenticate {
                user: "a".into(),
                password: "secret".into()
            }
        );
        let r = s.login_ok(vec![
            MessageInfo {
                size: 10,
                uid: "1.1".into(),
            },
            MessageInfo {
                size: 20,
                uid: "1.2".into(),
            },
        ]);
        assert_eq!(r, b"+OK maildrop has 2 messages (30 octets)\r\n");
        s
    }

    fn reply(s: &mut Session, line: &[u8]) -> String {
        match s.handle_line(line) {
            Action::Reply(r) | Action::Close(r) => String::from_utf8(r).unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn transaction_commands() {
        let mut s = logged_in();
        assert!(s.is_authenticated());
        assert_eq!(reply(&mut s, b"STAT"), "+OK 2 30\r\n");
        assert_eq!(
            reply(&mut s, b"LIST"),
            "+OK scan listing follows\r\n1 10\r\n2 20\r\n.\r\n"
        );
        assert_eq!(reply(&mut s, b"UIDL 2"), "+OK 2 1.2\r\n");
        assert_eq!(reply(&mut s, b"LIST 3"), "-ERR no such message\r\n");
        assert_eq!(reply(&mut s, b"LIST 0"), "-ERR no such message\r\n");
        assert_eq!(
            s.handle_line(b"RETR 2"),
            Action::Retrieve {
                index: 1,
                top: None
            }
        );
        assert_eq!(
            s.handle_line(b"TOP 1 0"),
            Action::Retrieve {
                index: 0,
                top: Some(0)
            }
        );
        assert_eq!(reply(&mut s, b"DELE 1"), "+OK message 1 deleted\r\n");
        assert_eq!(
            reply(&mut s, b"DELE 1"),
            "-ERR message 1 already deleted\r\n"
        );
        assert_eq!(
            reply(&mut s, b"RETR 1"),
            "-ERR message 1 already deleted\r\n"
        );
        assert_eq!(reply(&mut s, b"STAT"), "+OK 1 20\r\n");
        assert_eq!(
            reply(&mut s, b"UIDL"),
            "+OK unique-id listing follows\r\n2 1.2\r\n.\r\n"
        );
        assert_eq!(
            reply(&mut s, b"RSET"),
            "+OK maildrop has 2 messages (30 octets)\r\n"
        );
        assert_eq!(reply(&mut s, b"DELE 2"), "+OK message 2 deleted\r\n");
        assert_eq!(reply(&mut s, b"NOOP"), "+OK\r\n");
        assert_eq!(reply(&mut s, b"USER b"), "-ERR already authenticated\r\n");
        assert_eq!(s.handle_line(b"QUIT"), Action::Update { deleted: vec![1] });
        assert_eq!(update_reply(true), b"+OK bye\r\n");
        assert!(matches!(s.handle_line(b"STAT"), Action::Close(_)));
    }

    #[test]
    fn authorization_rules() {
        let mut s = Session::new(true);
        assert_eq!(reply(&mut s, b"PASS x"), "-ERR send USER first\r\n");
        assert_eq!(
            reply(&mut s, b"STAT"),
            "-ERR not allowed before authentication\r\n"
        );
        assert!(reply(&mut s, b"CAPA").contains("\r\nUSER\r\n"));
        s.handle_line(b"USER a");
        assert!(matches!(
            s.handle_line(b"PASS b"),
            Action::Authenticate { .. }
        ));
        assert_eq!(
            s.login_failed(),
            b"-ERR [AUTH] invalid user name or password\r\n"
        );
        // USER must be given again after a failure.
        assert_eq!(reply(&mut s, b"PASS x"), "-ERR send USER first\r\n");
        assert_eq!(
            s.handle_line(b"QUIT"),
            Action::Close(b"+OK bye\r\n".to_vec())
        );

        let mut s = Session::new(false);
        assert!(reply(&mut s, b"USER a").starts_with("-ERR [AUTH]"));
        assert!(!reply(&mut s, b"CAPA").contains("USER"));
    }

    #[test]
    fn throttled_and_in_use_logins_stay_in_authorization() {
        let mut s = Session::new(true);
        s.handle_line(b"USER a");
        s.handle_line(b"PASS b");
        assert_eq!(
            s.login_throttled(),
            b"-ERR [SYS/TEMP] too many failed logins, try again later\r\n"
        );
        assert_eq!(reply(&mut s, b"PASS x"), "-ERR send USER first\r\n");
        s.handle_line(b"USER a");
        s.handle_line(b"PASS b");
        assert_eq!(
            s.maildrop_in_use(),
            b"-ERR [IN-USE] maildrop already locked by another session\r\n"
        );
        assert!(!s.is_authenticated());
        assert!(reply(&mut s, b"USER a").starts_with("+OK"));
    }

    #[test]
    fn byte_stuffing() {
        let mut out = Vec::new();
        dot_stuff(b".hidden\r\nline\n..two\r\nend", &mut out);
        assert_eq!(out, b"..hidden\r\nline\r\n...two\r\nend\r\n");
        let r = format_retrieve(b"a\r\n.\r\n", None);
        assert_eq!(r, b"+OK 6 octets\r\na\r\n..\r\n.\r\n");
        let mut out = Vec::new();
        dot_stuff(b"", &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn top_lines() {
        let msg = b"Subject: x\r\nFrom: y\r\n\r\nl1\r\nl2\r\nl3\r\n";
        assert_eq!(top_part(msg, 0), b"Subject: x\r\nFrom: y\r\n\r\n");
        assert_eq!(
            top_part(msg, 2),
            b"Subject: x\r\nFrom: y\r\n\r\nl1\r\nl2\r\n"
        );
        assert_eq!(top_part(msg, 9), &msg[..]);
        assert_eq!(top_part(b"no body", 3), b"no body");
        assert_eq!(top_part(b"", 3), b"");
        let r = format_retrieve(msg, Some(1));
        assert_eq!(
            r,
            b"+OK top of message follows\r\nSubject: x\r\nFrom: y\r\n\r\nl1\r\n.\r\n"
        );
    }
}
