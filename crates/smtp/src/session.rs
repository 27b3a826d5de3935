//! The SMTP server session as a state machine over bytes, with no I/O.
//!
//! The I/O layer feeds what it reads with [`Session::feed`] and repeatedly
//! asks [`Session::poll`] what to do next:
//!
//! | [`Action`]                 | the I/O layer…                                                    |
//! |----------------------------|-------------------------------------------------------------------|
//! | `Reply(r)`                 | writes `r` (it may batch replies; see below)                      |
//! | `NeedInput`                | flushes pending output, reads, calls `feed` (EOF: just close)     |
//! | `CheckRecipient(rcpt)`     | decides, then calls [`Session::recipient_checked`]                |
//! | `Deliver(message)`         | stores the message, then calls [`Session::message_stored`]        |
//! | `StartTls`                 | flushes, runs the TLS handshake, calls [`Session::tls_established`] |
//! | `Authenticate(creds)`      | checks the AUTH credentials, calls [`Session::auth_checked`]      |
//! | `Close`                    | flushes and closes the connection                                 |
//!
//! While a decision is outstanding, `poll` keeps returning the same request.
//!
//! Output batching follows RFC 2920 §3.2 (PIPELINING): replies may be
//! buffered and must be flushed before the server blocks on reading, which is
//! exactly when `poll` says `NeedInput`.
//!
//! The session enforces command sequencing (503 5.5.1), syntax (500 5.5.2,
//! 501 5.5.4, 555 5.5.4), line length (RFC 5321 §4.5.3.1.4/§4.5.3.1.6), the
//! recipient limit (452 4.5.3, RFC 5321 §4.5.3.1.10), the size limit
//! (552 5.3.4, RFC 1870 §6), and, when configured, TLS before commands
//! (530 5.7.0, RFC 3207 §4), AUTH PLAIN/LOGIN (RFC 4954), AUTH before
//! MAIL (530 5.7.0), and REQUIRETLS only over TLS (530 5.7.10, RFC 8689).
//! Nothing here panics on any input.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use crate::command::{self, BodyType, Command, ForwardPath, MailFrom, RcptTo};
use crate::data::{DataOutcome, DataReader};
use crate::reply::{Reply, codes};
use crate::sasl::{self, Credentials};

/// Limits and features of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our host name, for the greeting and the EHLO reply.
    pub hostname: String,
    /// Largest message body accepted, in octets (advertised as `SIZE`).
    pub max_message_size: usize,
    /// Most recipients in one transaction.
    pub max_recipients: usize,
    /// Longest command line, CRLF included. RFC 5321 §4.5.3.1.4 sets 512 as
    /// the minimum; SIZE, DSN (ENVID up to 100, ORCPT up to 500 octets) and
    /// UTF-8 addresses make real command lines longer, so allow more.
    pub max_command_line: usize,
    /// Longest body line, CRLF included. RFC 5321 §4.5.3.1.6 and RFC 5322
    /// §2.1.1 say 1000, but §4.5.3.1 asks receivers to be lenient and real
    /// senders exceed it, so the default is larger; the bound keeps
    /// downstream parsers safe.
    pub max_data_line: usize,
    /// Protocol errors tolerated before the session is closed with 421.
    pub max_errors: usize,
    /// Offer STARTTLS (the I/O layer must be able to upgrade).
    pub starttls: bool,
    /// Offer AUTH PLAIN and LOGIN (RFC 4954); the I/O layer answers
    /// [`Action::Authenticate`].
    pub auth: bool,
    /// Allow AUTH without TLS. Off by default: PLAIN and LOGIN send the
    /// password in clear, so without TLS AUTH is neither advertised nor
    /// accepted (`538 5.7.11`, RFC 4954 §4).
    pub auth_plaintext: bool,
    /// MAIL needs a successful AUTH first (`530 5.7.0`, message submission,
    /// RFC 6409 §4.1 / RFC 4954 §6).
    pub require_auth: bool,
    /// Every command but EHLO, HELO, NOOP, RSET, QUIT and STARTTLS needs
    /// TLS first (`530 5.7.0`, RFC 3207 §4).
    pub require_tls: bool,
    /// An authenticated client may only use its own address (or `<>`) as
    /// the envelope sender (`553 5.7.1` otherwise).
    pub sender_login_match: bool,
    /// Offer REQUIRETLS (RFC 8689): advertised, and the MAIL parameter
    /// accepted, only once the session runs over TLS (§2, §4.1).
    pub requiretls: bool,
}

impl SessionConfig {
    /// Defaults for `hostname`: 25 MiB messages, 1000 recipients.
    pub fn new(hostname: impl Into<String>) -> Self {
        SessionConfig {
            hostname: hostname.into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_command_line: 4096,
            max_data_line: 64 * 1024,
            max_errors: 20,
            starttls: false,
            auth: false,
            auth_plaintext: false,
            require_auth: false,
            require_tls: false,
            sender_login_match: true,
            requiretls: true,
        }
    }
}

/// What the I/O layer should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this reply to the client.
    Reply(Reply),
    /// Flush any buffered replies, then read more input and [`Session::feed`] it.
    NeedInput,
    /// Decide whether to accept this recipient, then call
    /// [`Session::recipient_checked`]. Sequencing, syntax, SMTPUTF8 and the
    /// recipient limit were already checked.
    CheckRecipient(RcptTo),
    /// A complete message: store it, then call [`Session::message_stored`].
    Deliver(Message),
    /// The `220` for STARTTLS was queued: flush it, run the TLS handshake and
    /// call [`Session::tls_established`] (or close on failure). Any input
    /// pipelined after STARTTLS has been discarded (RFC 3207 §5).
    StartTls,
    /// Check these AUTH credentials, then call [`Session::auth_checked`].
    Authenticate(Credentials),
    /// Flush and close the connection.
    Close,
}

/// A received message: envelope and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The name the client gave in EHLO/HELO.
    pub helo: String,
    /// The client said EHLO (ESMTP) rather than HELO.
    pub esmtp: bool,
    /// The session ran over TLS.
    pub tls: bool,
    /// The authenticated user (RFC 4954), if the client authenticated.
    pub auth_user: Option<String>,
    /// The sender and its parameters.
    pub mail_from: MailFrom,
    /// The accepted recipients, in order, without duplicates.
    pub rcpts: Vec<RcptTo>,
    /// The body: unstuffed with CRLF line endings (DATA), or the chunks as
    /// sent (BDAT).
    pub body: Bytes,
}

impl Message {
    /// The `with` protocol name for a `Received:` header: SMTP, ESMTP,
    /// ESMTPS, ESMTPA, ESMTPSA (RFC 3848), UTF8SMTP, UTF8SMTPS, UTF8SMTPA or
    /// UTF8SMTPSA (RFC 6531 §4.3).
    pub fn protocol(&self) -> &'static str {
        let auth = self.auth_user.is_some();
        match (self.esmtp, self.mail_from.smtputf8, self.tls, auth) {
            (false, _, _, _) => "SMTP",
            (true, true, true, true) => "UTF8SMTPSA",
            (true, true, true, false) => "UTF8SMTPS",
            (true, true, false, true) => "UTF8SMTPA",
            (true, true, false, false) => "UTF8SMTP",
            (true, false, true, true) => "ESMTPSA",
            (true, false, true, false) => "ESMTPS",
            (true, false, false, true) => "ESMTPA",
            (true, false, false, false) => "ESMTP",
        }
    }

    /// The client declared `BODY=8BITMIME`.
    pub fn eight_bit(&self) -> bool {
        self.mail_from.body == Some(BodyType::EightBitMime)
    }
}

/// The caller's verdict on a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptDecision {
    /// Accept: `250 2.1.5`.
    Accept,
    /// Refuse with this reply (e.g. `550 5.1.1`, `451 4.3.0`, `554 5.7.1`).
    Reject(Reply),
}

/// The caller's verdict on AUTH credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthDecision {
    /// Valid: `235 2.7.0`; the session is authenticated as `user` (the
    /// canonical account address).
    Accept {
        /// The canonical account address.
        user: String,
    },
    /// Refused with this reply (`535 5.7.8`, or `454 4.7.0` when the
    /// account store cannot answer).
    Reject(Reply),
}

/// The caller's outcome of storing a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageOutcome {
    /// Safely stored under `id`: `250 2.0.0 Ok: queued as <id>`.
    Queued {
        /// The message id.
        id: String,
    },
    /// Not stored; send this reply (e.g. `451 4.3.0`).
    Failed(Reply),
}

#[derive(Debug)]
enum Phase {
    /// Reading command lines.
    Command,
    /// Reading a DATA body.
    Data(DataReader),
    /// Reading a BDAT chunk of `remaining` more octets.
    Bdat {
        remaining: u64,
        last: bool,
        chunk: u64,
        /// The reply to give after the chunk when the chunk is refused.
        error: Option<Reply>,
    },
    /// Waiting for [`Session::recipient_checked`].
    AwaitRcpt(RcptTo),
    /// Waiting for [`Session::message_stored`].
    AwaitMessage(Message),
    /// Waiting for [`Session::tls_established`].
    AwaitTls,
    /// Reading a SASL response line (RFC 4954 §4).
    Sasl(SaslStep),
    /// Waiting for [`Session::auth_checked`].
    AwaitAuth(Credentials),
    /// Done; only `Close` remains.
    Closed,
}

/// Which SASL response the session waits for.
#[derive(Debug)]
enum SaslStep {
    /// PLAIN without an initial response: the whole message.
    Plain,
    /// LOGIN: the user name.
    LoginUser,
    /// LOGIN: the password, for this user name.
    LoginPassword(String),
}

/// One line of input, as taken by [`Session::take_line`].
enum Line {
    /// No complete line buffered yet.
    Need,
    /// A line over the limit was (or is being) dropped: report it.
    TooLong,
    /// The rest of an over-long line, already reported, was skipped.
    Skipped,
    /// A complete line without its CRLF (or bare LF).
    Complete(BytesMut),
}

#[derive(Debug)]
struct Helo {
    name: String,
    esmtp: bool,
}

#[derive(Debug)]
struct Transaction {
    mail: MailFrom,
    rcpts: Vec<RcptTo>,
    /// RCPT commands that reached the recipient check, accepted or not.
    rcpt_attempts: usize,
    /// BDAT chunks so far, once the first BDAT was accepted.
    chunks: Option<BytesMut>,
}

/// One SMTP server session. See the module documentation for the protocol
/// between the session and the I/O layer.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    input: BytesMut,
    out: VecDeque<Action>,
    phase: Phase,
    helo: Option<Helo>,
    tls: bool,
    txn: Option<Transaction>,
    errors: usize,
    /// Skipping the rest of an over-long command line.
    discarding: bool,
    /// The authenticated user, after a successful AUTH.
    auth_user: Option<String>,
    /// Input units (command lines, SASL lines, bodies) completed so far.
    progress: u64,
}

impl Session {
    /// A new session; the first action is the `220` greeting. `tls` says the
    /// connection is already encrypted (implicit TLS, RFC 8314).
    pub fn new(config: SessionConfig, tls: bool) -> Self {
        let greeting = Reply::plain(220, format!("{} ESMTP ready", config.hostname));
        Session {
            config,
            input: BytesMut::new(),
            out: VecDeque::from([Action::Reply(greeting)]),
            phase: Phase::Command,
            helo: None,
            tls,
            txn: None,
            errors: 0,
            discarding: false,
            auth_user: None,
            progress: 0,
        }
    }

    /// Append bytes read from the client. Ignored once the session is closed
    /// or while a TLS handshake is pending.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !matches!(
            self.phase,
            Phase::Closed | Phase::AwaitTls | Phase::AwaitAuth(_)
        ) {
            self.input.extend_from_slice(bytes);
        }
    }

    /// The next thing to do.
    pub fn poll(&mut self) -> Action {
        loop {
            if let Some(a) = self.out.pop_front() {
                return a;
            }
            match &self.phase {
                Phase::Closed => return Action::Close,
                Phase::AwaitRcpt(r) => return Action::CheckRecipient(r.clone()),
                Phase::AwaitMessage(m) => return Action::Deliver(m.clone()),
                Phase::AwaitTls => return Action::StartTls,
                Phase::AwaitAuth(c) => return Action::Authenticate(c.clone()),
                Phase::Command | Phase::Data(_) | Phase::Bdat { .. } | Phase::Sasl(_) => {}
            }
            if !self.step() {
                return Action::NeedInput;
            }
        }
    }

    /// Answer an outstanding [`Action::CheckRecipient`]. Ignored otherwise.
    pub fn recipient_checked(&mut self, decision: RcptDecision) {
        if !matches!(self.phase, Phase::AwaitRcpt(_)) {
            return;
        }
        let Phase::AwaitRcpt(rcpt) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        match decision {
            RcptDecision::Accept => {
                if let Some(txn) = &mut self.txn {
                    txn.rcpts.push(rcpt);
                }
                self.reply(Reply::new(250, codes::RCPT_OK, "Ok"));
            }
            RcptDecision::Reject(reply) => self.reply(reply),
        }
    }

    /// Answer an outstanding [`Action::Deliver`]. The transaction ends either
    /// way. Ignored otherwise.
    pub fn message_stored(&mut self, outcome: MessageOutcome) {
        if !matches!(self.phase, Phase::AwaitMessage(_)) {
            return;
        }
        self.phase = Phase::Command;
        self.txn = None;
        match outcome {
            MessageOutcome::Queued { id } => {
                self.reply(Reply::new(250, codes::OK, format!("Ok: queued as {id}")));
            }
            MessageOutcome::Failed(reply) => self.reply(reply),
        }
    }

    /// Answer an outstanding [`Action::Authenticate`]. Ignored otherwise.
    pub fn auth_checked(&mut self, decision: AuthDecision) {
        if !matches!(self.phase, Phase::AwaitAuth(_)) {
            return;
        }
        self.phase = Phase::Command;
        match decision {
            AuthDecision::Accept { user } => {
                self.auth_user = Some(user);
                self.reply(Reply::new(235, codes::AUTH_OK, "Authentication successful"));
            }
            AuthDecision::Reject(reply) => self.reply(reply),
        }
    }

    /// The TLS handshake after [`Action::StartTls`] succeeded. The session
    /// starts over: the client must send EHLO again (RFC 3207 §4.2).
    pub fn tls_established(&mut self) {
        if !matches!(self.phase, Phase::AwaitTls) {
            return;
        }
        // RFC 3207 §4.2: discard all knowledge obtained from the client.
        self.tls = true;
        self.helo = None;
        self.txn = None;
        self.auth_user = None;
        self.input.clear();
        self.phase = Phase::Command;
    }

    /// Queue `reply` (e.g. `421 4.3.2` on shutdown or `421 4.4.2` on a
    /// timeout) and close: [`Session::poll`] returns what is queued, then
    /// `Close`.
    pub fn close_with(&mut self, reply: Reply) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.out.push_back(Action::Reply(reply));
        self.close();
    }

    /// In the command phase with no transaction open: the client can be told
    /// `421` without losing anything.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Command) && self.txn.is_none()
    }

    /// A mail transaction (MAIL accepted, not yet finished or reset) is open.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// The session is over; only `Close` remains.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The current transaction's sender, if any.
    pub fn mail_from(&self) -> Option<&MailFrom> {
        self.txn.as_ref().map(|t| &t.mail)
    }

    /// Recipients accepted in the current transaction.
    pub fn rcpt_count(&self) -> usize {
        self.txn.as_ref().map_or(0, |t| t.rcpts.len())
    }

    /// The name the client gave in EHLO/HELO.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_ref().map(|h| h.name.as_str())
    }

    /// The authenticated user, if AUTH succeeded.
    pub fn auth_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    /// How many input units (command lines, SASL responses, message bodies)
    /// were completed so far; the I/O layer restarts its per-command
    /// deadline whenever this changes (RFC 5321 §4.5.3.2).
    pub fn progress(&self) -> u64 {
        self.progress
    }

    /// Reading a DATA or BDAT body (the data timeout applies rather than
    /// the command timeout).
    pub fn reading_body(&self) -> bool {
        matches!(self.phase, Phase::Data(_) | Phase::Bdat { .. })
    }

    /// The session runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.txn = None;
        self.input.clear();
    }

    fn reply(&mut self, reply: Reply) {
        self.out.push_back(Action::Reply(reply));
    }

    /// A protocol error: reply, and close after too many of them.
    fn error(&mut self, reply: Reply) {
        self.reply(reply);
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            self.close_with(Reply::new(
                421,
                codes::TEMP_SECURITY,
                format!(
                    "{} Too many errors, closing connection",
                    self.config.hostname
                ),
            ));
        }
    }

    /// Make progress on buffered input. Returns false when more input is needed.
    fn step(&mut self) -> bool {
        match &mut self.phase {
            Phase::Command => self.step_command(),
            Phase::Sasl(_) => self.step_sasl(),
            Phase::Data(reader) => {
                let (used, outcome) = reader.feed(&self.input);
                self.input.advance(used);
                match outcome {
                    None => false,
                    Some(outcome) => {
                        self.progress += 1;
                        self.data_done(outcome);
                        true
                    }
                }
            }
            Phase::Bdat {
                remaining,
                last,
                chunk,
                error,
            } => {
                let take = (*remaining).min(self.input.len() as u64) as usize;
                let bytes = self.input.split_to(take);
                *remaining -= take as u64;
                if error.is_none()
                    && let Some(body) = self.txn.as_mut().and_then(|t| t.chunks.as_mut())
                {
                    if body.len() + bytes.len() > self.config.max_message_size {
                        *error = Some(too_big());
                        *body = BytesMut::new();
                    } else {
                        body.extend_from_slice(&bytes);
                    }
                }
                if *remaining > 0 {
                    return false;
                }
                let (last, chunk, error) = (*last, *chunk, error.take());
                self.progress += 1;
                self.phase = Phase::Command;
                self.bdat_done(last, chunk, error);
                true
            }
            Phase::AwaitRcpt(_)
            | Phase::AwaitMessage(_)
            | Phase::AwaitTls
            | Phase::AwaitAuth(_)
            | Phase::Closed => false,
        }
    }

    /// Take one line (CRLF or, leniently, bare LF ended) from the input,
    /// enforcing `max_command_line`.
    fn take_line(&mut self) -> Line {
        let newline = self.input.iter().position(|&b| b == b'\n');
        if self.discarding {
            match newline {
                Some(i) => {
                    self.input.advance(i + 1);
                    self.discarding = false;
                    return Line::Skipped;
                }
                None => {
                    self.input.clear();
                    return Line::Need;
                }
            }
        }
        let Some(i) = newline else {
            if self.input.len() > self.config.max_command_line {
                // Report now, then skip to the end of the line.
                self.input.clear();
                self.discarding = true;
                return Line::TooLong;
            }
            return Line::Need;
        };
        let mut line = self.input.split_to(i + 1);
        self.progress += 1;
        if line.len() > self.config.max_command_line {
            return Line::TooLong;
        }
        line.truncate(i);
        if line.last() == Some(&b'\r') {
            line.truncate(i - 1);
        }
        Line::Complete(line)
    }

    fn step_command(&mut self) -> bool {
        match self.take_line() {
            Line::Need => false,
            Line::Skipped => true,
            Line::TooLong => {
                self.line_too_long();
                true
            }
            Line::Complete(line) => {
                match command::parse(&line) {
                    Ok(cmd) => self.handle(cmd),
                    Err(e) => self.error(e.reply()),
                }
                true
            }
        }
    }

    fn step_sasl(&mut self) -> bool {
        let line = match self.take_line() {
            Line::Need => return false,
            Line::Skipped => return true,
            Line::TooLong => {
                self.phase = Phase::Command;
                self.line_too_long();
                return true;
            }
            Line::Complete(line) => line,
        };
        let Phase::Sasl(step) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return true;
        };
        let Ok(text) = std::str::from_utf8(&line) else {
            self.error(bad_base64());
            return true;
        };
        if text == "*" {
            // RFC 4954 §4: the client cancelled the exchange.
            self.error(Reply::new(
                501,
                codes::UNDEFINED,
                "Authentication cancelled",
            ));
            return true;
        }
        match step {
            SaslStep::Plain => self.sasl_plain(text),
            SaslStep::LoginUser => match sasl::parse_login_field(text) {
                Ok(user) => {
                    self.reply(Reply::plain(334, sasl::base64_encode(b"Password:")));
                    self.phase = Phase::Sasl(SaslStep::LoginPassword(user));
                }
                Err(_) => self.error(bad_base64()),
            },
            SaslStep::LoginPassword(username) => match sasl::parse_login_field(text) {
                Ok(password) => {
                    self.phase = Phase::AwaitAuth(Credentials { username, password });
                }
                Err(_) => self.error(bad_base64()),
            },
        }
        true
    }

    /// A PLAIN message, base64 (`=` is an empty one, RFC 4954 §4).
    fn sasl_plain(&mut self, text: &str) {
        let decoded = if text == "=" {
            Ok(Vec::new())
        } else {
            sasl::base64_decode(text)
        };
        match decoded.map(|d| sasl::parse_plain(&d)) {
            Ok(Ok(c)) => self.phase = Phase::AwaitAuth(c),
            Ok(Err(_)) => self.error(Reply::new(
                535,
                codes::AUTH_INVALID,
                "Authentication credentials invalid",
            )),
            Err(_) => self.error(bad_base64()),
        }
    }

    fn line_too_long(&mut self) {
        // RFC 5321 §4.2.3: 500 covers "command line too long".
        self.error(Reply::new(500, codes::UNRECOGNIZED, "Line too long"));
    }

    fn handle(&mut self, cmd: Command) {
        if self.config.require_tls
            && !self.tls
            && !matches!(
                cmd,
                Command::Ehlo(_)
                    | Command::Helo(_)
                    | Command::Noop
                    | Command::Rset
                    | Command::Quit
                    | Command::StartTls
            )
        {
            // RFC 3207 §4.
            return self.error(Reply::new(
                530,
                codes::AUTH_REQUIRED,
                "Must issue a STARTTLS command first",
            ));
        }
        match cmd {
            Command::Ehlo(name) => {
                // RFC 5321 §4.1.4: EHLO in a session resets any transaction.
                self.txn = None;
                self.reply(self.ehlo_reply(&name));
                self.helo = Some(Helo { name, esmtp: true });
            }
            Command::Helo(name) => {
                self.txn = None;
                self.reply(Reply::plain(250, self.config.hostname.clone()));
                self.helo = Some(Helo { name, esmtp: false });
            }
            Command::Mail(mail) => self.mail(mail),
            Command::Rcpt(rcpt) => self.rcpt(rcpt),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.txn = None;
                self.reply(Reply::new(250, codes::OK, "Ok"));
            }
            Command::Noop => self.reply(Reply::new(250, codes::OK, "Ok")),
            Command::Quit => {
                let bye = format!("{} closing connection", self.config.hostname);
                self.close_with(Reply::new(221, codes::OK, bye));
            }
            Command::Vrfy(_) => {
                // RFC 5321 §3.5.3: 252 when we will not verify.
                self.reply(Reply::new(
                    252,
                    codes::PROTOCOL_OK,
                    "Cannot VRFY user, but will accept message and attempt delivery",
                ));
            }
            Command::Expn(_) => {
                self.error(Reply::new(502, codes::BAD_SEQUENCE, "EXPN not available"))
            }
            Command::Help(_) => {
                let mut verbs = String::from(
                    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
                );
                if self.config.starttls && !self.tls {
                    verbs.push_str(" STARTTLS");
                }
                if self.auth_offered() {
                    verbs.push_str(" AUTH");
                }
                self.reply(Reply::new(214, codes::OK, verbs).with_line("See RFC 5321"));
            }
            Command::StartTls => self.starttls(),
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(&mechanism, initial_response.as_deref()),
        }
    }

    fn ehlo_reply(&self, client: &str) -> Reply {
        // RFC 2034 §3: no enhanced status codes in the EHLO response.
        let mut r = Reply::plain(250, format!("{} Hello {client}", self.config.hostname))
            .with_line("PIPELINING")
            .with_line(format!("SIZE {}", self.config.max_message_size))
            .with_line("8BITMIME")
            .with_line("SMTPUTF8")
            .with_line("ENHANCEDSTATUSCODES")
            .with_line("CHUNKING")
            .with_line("DSN");
        if self.config.starttls && !self.tls {
            r = r.with_line("STARTTLS");
        }
        if self.auth_offered() {
            r = r.with_line("AUTH PLAIN LOGIN");
        }
        if self.config.requiretls && self.tls {
            // RFC 8689 §2: only in a TLS session.
            r = r.with_line("REQUIRETLS");
        }
        r
    }

    /// AUTH is offered now: configured, and over TLS unless plaintext AUTH
    /// is allowed (RFC 4954 §4), and not done yet.
    fn auth_offered(&self) -> bool {
        self.config.auth && (self.tls || self.config.auth_plaintext) && self.auth_user.is_none()
    }

    fn auth(&mut self, mechanism: &str, initial: Option<&str>) {
        if !self.config.auth {
            return self.error(Reply::new(502, codes::BAD_SEQUENCE, "AUTH not available"));
        }
        if !self.helo.as_ref().is_some_and(|h| h.esmtp) {
            return self.error(Reply::new(503, codes::BAD_SEQUENCE, "Send EHLO first"));
        }
        if self.auth_user.is_some() {
            // RFC 4954 §4: only one successful AUTH per session.
            return self.error(Reply::new(
                503,
                codes::BAD_SEQUENCE,
                "Already authenticated",
            ));
        }
        if self.txn.is_some() {
            return self.error(Reply::new(
                503,
                codes::BAD_SEQUENCE,
                "AUTH not allowed during a mail transaction",
            ));
        }
        if !self.tls && !self.config.auth_plaintext {
            return self.error(Reply::new(
                538,
                codes::ENCRYPTION_REQUIRED,
                "Encryption required for requested authentication mechanism",
            ));
        }
        match (mechanism, initial) {
            ("PLAIN", Some(ir)) => self.sasl_plain(ir),
            ("PLAIN", None) => {
                self.reply(Reply::plain(334, ""));
                self.phase = Phase::Sasl(SaslStep::Plain);
            }
            ("LOGIN", None) => {
                self.reply(Reply::plain(334, sasl::base64_encode(b"Username:")));
                self.phase = Phase::Sasl(SaslStep::LoginUser);
            }
            ("LOGIN", Some(ir)) => match sasl::parse_login_field(ir) {
                // A LOGIN initial response is the user name (as sent by
                // some clients, e.g. swaks and Outlook).
                Ok(user) => {
                    self.reply(Reply::plain(334, sasl::base64_encode(b"Password:")));
                    self.phase = Phase::Sasl(SaslStep::LoginPassword(user));
                }
                Err(_) => self.error(bad_base64()),
            },
            _ => self.error(Reply::new(
                504,
                codes::BAD_ARGS,
                "Unrecognized authentication mechanism",
            )),
        }
    }

    fn mail(&mut self, mail: MailFrom) {
        let Some(helo) = &self.helo else {
            return self.error(Reply::new(
                503,
                codes::BAD_SEQUENCE,
                "Send EHLO or HELO first",
            ));
        };
        if self.txn.is_some() {
            return self.error(Reply::new(503, codes::BAD_SEQUENCE, "Nested MAIL command"));
        }
        if !helo.esmtp && mail.has_parameters() {
            // Service extensions exist only after EHLO (RFC 5321 §2.2.1).
            return self.error(Reply::new(
                555,
                codes::BAD_ARGS,
                "MAIL parameters require EHLO",
            ));
        }
        if mail.body == Some(BodyType::BinaryMime) {
            return self.error(Reply::new(
                555,
                codes::BAD_ARGS,
                "BODY=BINARYMIME not supported",
            ));
        }
        if mail.require_tls {
            if !self.config.requiretls {
                return self.error(Reply::new(
                    555,
                    codes::BAD_ARGS,
                    "Unsupported parameter REQUIRETLS",
                ));
            }
            if !self.tls {
                // RFC 8689 §2/§4.1: REQUIRETLS is only valid over TLS; a
                // message asking for it must not arrive in clear.
                return self.error(Reply::new(
                    530,
                    codes::ENCRYPTION_NEEDED,
                    "REQUIRETLS needs a TLS session: issue STARTTLS first",
                ));
            }
        }
        if mail.auth.is_some() && !self.config.auth {
            // RFC 4954 §5: without AUTH, the parameter is an unknown one.
            // With AUTH it is accepted; we do not relay it onward, which
            // §5 allows (the message is then treated as AUTH=<>).
            return self.error(Reply::new(
                555,
                codes::BAD_ARGS,
                "Unsupported parameter AUTH",
            ));
        }
        if self.config.require_auth && self.auth_user.is_none() {
            return self.error(Reply::new(
                530,
                codes::AUTH_REQUIRED,
                "Authentication required",
            ));
        }
        if self.config.sender_login_match
            && let (Some(user), Some(sender)) = (&self.auth_user, &mail.reverse_path)
            && !sender.to_string().eq_ignore_ascii_case(user)
        {
            return self.reply(Reply::new(
                553,
                codes::NOT_AUTHORIZED,
                format!("Sender address <{sender}> not owned by user {user}"),
            ));
        }
        if mail
            .size
            .is_some_and(|s| s > self.config.max_message_size as u64)
        {
            // RFC 1870 §6.3.
            return self.reply(Reply::new(
                552,
                codes::TOO_BIG,
                "Message size exceeds fixed maximum message size",
            ));
        }
        if !mail.smtputf8 && mail.reverse_path.as_ref().is_some_and(|m| !m.is_ascii()) {
            return self.reply(needs_smtputf8());
        }
        self.txn = Some(Transaction {
            mail,
            rcpts: Vec::new(),
            rcpt_attempts: 0,
            chunks: None,
        });
        self.reply(Reply::new(250, codes::SENDER_OK, "Ok"));
    }

    fn rcpt(&mut self, rcpt: RcptTo) {
        let esmtp = self.helo.as_ref().is_some_and(|h| h.esmtp);
        let Some(txn) = &mut self.txn else {
            return self.error(Reply::new(
                503,
                codes::BAD_SEQUENCE,
                "Need MAIL command first",
            ));
        };
        if txn.chunks.is_some() {
            return self.error(Reply::new(
                503,
                codes::BAD_SEQUENCE,
                "RCPT not allowed after BDAT",
            ));
        }
        if !esmtp && rcpt.has_parameters() {
            return self.error(Reply::new(
                555,
                codes::BAD_ARGS,
                "RCPT parameters require EHLO",
            ));
        }
        if !txn.mail.smtputf8 && !rcpt.forward_path.is_ascii() {
            return self.reply(needs_smtputf8());
        }
        if txn
            .rcpts
            .iter()
            .any(|r| same_path(&r.forward_path, &rcpt.forward_path))
        {
            return self.reply(Reply::new(250, codes::RCPT_OK, "Ok (duplicate recipient)"));
        }
        if txn.rcpts.len() >= self.config.max_recipients {
            return self.reply(Reply::new(
                452,
                codes::TOO_MANY_RCPTS,
                "Too many recipients",
            ));
        }
        txn.rcpt_attempts += 1;
        self.phase = Phase::AwaitRcpt(rcpt);
    }

    /// Why there is no transaction to put data into, if there is none.
    fn no_data_reason(&self) -> Option<Reply> {
        let Some(txn) = &self.txn else {
            return Some(Reply::new(
                503,
                codes::BAD_SEQUENCE,
                "Need MAIL command first",
            ));
        };
        if txn.rcpts.is_empty() {
            // RFC 5321 §3.3: 554 when RCPTs were given but all refused, else 503.
            return Some(if txn.rcpt_attempts > 0 {
                Reply::new(554, codes::BAD_SEQUENCE, "No valid recipients")
            } else {
                Reply::new(503, codes::BAD_SEQUENCE, "Need RCPT command first")
            });
        }
        None
    }

    fn data(&mut self) {
        if let Some(r) = self.no_data_reason() {
            return self.error(r);
        }
        if self.txn.as_ref().is_some_and(|t| t.chunks.is_some()) {
            // RFC 3030 §2: DATA and BDAT do not mix in one transaction.
            return self.error(Reply::new(
                503,
                codes::BAD_SEQUENCE,
                "DATA not allowed after BDAT",
            ));
        }
        self.reply(Reply::plain(354, "End data with <CR><LF>.<CR><LF>"));
        self.phase = Phase::Data(DataReader::new(
            self.config.max_message_size,
            self.config.max_data_line,
        ));
    }

    fn bdat(&mut self, size: u64, last: bool) {
        // RFC 3030 §2: the chunk follows the command no matter what we reply,
        // so it is always read, and refused chunks are read and discarded.
        let esmtp = self.helo.as_ref().is_some_and(|h| h.esmtp);
        let mut error = self.no_data_reason();
        if error.is_none() && !esmtp {
            error = Some(Reply::new(503, codes::BAD_SEQUENCE, "BDAT requires EHLO"));
        }
        if error.is_none()
            && let Some(txn) = &mut self.txn
        {
            let body = txn.chunks.get_or_insert_with(BytesMut::new);
            if (body.len() as u64).saturating_add(size) > self.config.max_message_size as u64 {
                error = Some(too_big());
                *body = BytesMut::new();
            }
        }
        self.phase = Phase::Bdat {
            remaining: size,
            last,
            chunk: size,
            error,
        };
    }

    fn bdat_done(&mut self, last: bool, chunk: u64, error: Option<Reply>) {
        if let Some(reply) = error {
            // A refused chunk fails the transaction; later chunks the client
            // pipelined get 503 (RFC 3030 §2).
            self.txn = None;
            if reply.code == 552 {
                return self.reply(reply);
            }
            return self.error(reply);
        }
        if !last {
            return self.reply(Reply::new(
                250,
                codes::OK,
                format!("{chunk} octets received"),
            ));
        }
        let body = self
            .txn
            .as_mut()
            .and_then(|t| t.chunks.take())
            .unwrap_or_default()
            .freeze();
        self.deliver(body);
    }

    fn data_done(&mut self, outcome: DataOutcome) {
        self.phase = Phase::Command;
        match outcome {
            DataOutcome::Complete(body) => self.deliver(body),
            DataOutcome::TooLarge => {
                self.txn = None;
                self.reply(too_big());
            }
            DataOutcome::LineTooLong => {
                self.txn = None;
                self.reply(Reply::new(
                    554,
                    codes::BAD_CONTENT,
                    format!(
                        "Message has a line longer than {} octets",
                        self.config.max_data_line
                    ),
                ));
            }
        }
    }

    fn deliver(&mut self, body: Bytes) {
        let Some(txn) = self.txn.take() else {
            self.phase = Phase::Command;
            return;
        };
        let (helo, esmtp) = match &self.helo {
            Some(h) => (h.name.clone(), h.esmtp),
            None => (String::new(), false),
        };
        let message = Message {
            helo,
            esmtp,
            tls: self.tls,
            auth_user: self.auth_user.clone(),
            mail_from: txn.mail.clone(),
            rcpts: txn.rcpts.clone(),
            body,
        };
        // Keep the transaction open until the caller answers, so that
        // `in_transaction` and `mail_from` still describe it.
        self.txn = Some(Transaction {
            chunks: None,
            ..txn
        });
        self.phase = Phase::AwaitMessage(message);
    }

    fn starttls(&mut self) {
        if !self.config.starttls {
            return self.error(Reply::new(
                502,
                codes::BAD_SEQUENCE,
                "STARTTLS not available",
            ));
        }
        if self.tls {
            return self.error(Reply::new(503, codes::BAD_SEQUENCE, "TLS already active"));
        }
        if self.txn.is_some() {
            return self.error(Reply::new(
                503,
                codes::BAD_SEQUENCE,
                "Mail transaction in progress",
            ));
        }
        self.reply(Reply::new(220, codes::OK, "Ready to start TLS"));
        // Anything pipelined after STARTTLS was sent in clear text and must not
        // be executed inside the TLS session (RFC 3207 §5, CVE-2011-0411).
        self.input.clear();
        self.phase = Phase::AwaitTls;
    }
}

fn too_big() -> Reply {
    Reply::new(
        552,
        codes::TOO_BIG,
        "Message size exceeds fixed maximum message size",
    )
}

fn bad_base64() -> Reply {
    Reply::new(501, codes::UNRECOGNIZED, "Invalid base64 in AUTH response")
}

fn needs_smtputf8() -> Reply {
    Reply::new(
        553,
        codes::NEEDS_SMTPUTF8,
        "Non-ASCII address requires SMTPUTF8",
    )
}

/// Same recipient: local parts compared exactly, domains case-insensitively.
fn same_path(a: &ForwardPath, b: &ForwardPath) -> bool {
    match (a, b) {
        (ForwardPath::Postmaster, ForwardPath::Postmaster) => true,
        (ForwardPath::Mailbox(a), ForwardPath::Mailbox(b)) => {
            a.local_part == b.local_part && a.domain.eq_ignore_ascii_case(&b.domain)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
