//! A small async SMTP client (RFC 5321) over any `AsyncRead + AsyncWrite`.
//!
//! Greeting, EHLO (falling back to HELO when EHLO is refused with 5xx),
//! STARTTLS (RFC 3207; the caller does the handshake on the stream it gets
//! back), MAIL FROM, one RCPT TO per recipient with the reply kept per
//! recipient (sent as one pipelined group when the server offers PIPELINING,
//! RFC 2920), DATA with dot-stuffing and CRLF line endings or BDAT (RFC 3030
//! CHUNKING), RSET and QUIT. Every read is bounded by the RFC 5321 §4.5.3.2
//! timeout for that stage; [`Timeouts`] makes them configurable.
//!
//! ```no_run
//! # async fn demo(stream: tokio::net::TcpStream) -> Result<(), tern_smtp::client::ClientError> {
//! use tern_smtp::client::{SmtpClient, Timeouts};
//! let (mut c, _greeting) = SmtpClient::connect(stream, Timeouts::default()).await?;
//! c.ehlo("mx.example.net").await?;
//! c.mail_from("alice@example.net", &[]).await?;
//! let reply = c.rcpt_to("bob@example.com", &[]).await?;
//! if reply.is_positive() {
//!     c.data(b"Subject: hi\r\n\r\nhello\r\n").await?;
//! }
//! c.quit().await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest reply line accepted (RFC 5321 §4.5.3.1.5 says 512 octets; we allow slack).
pub const MAX_REPLY_LINE: usize = 4096;
/// Most lines accepted in one multi-line reply (EHLO lists are the longest).
pub const MAX_REPLY_LINES: usize = 256;
/// Longest wait for the reply to QUIT: the transaction is already decided.
pub const QUIT_WAIT: Duration = Duration::from_secs(10);
/// Size of each write while sending the message content.
const DATA_CHUNK: usize = 64 * 1024;
/// Largest BDAT chunk sent; bigger messages go in several chunks.
pub const BDAT_CHUNK: usize = 1024 * 1024;

/// Per-stage timeouts, defaulting to the minimums of RFC 5321 §4.5.3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for the 220 greeting (5 minutes).
    pub greeting: Duration,
    /// EHLO/HELO, RSET, QUIT and other commands without their own value (5 minutes).
    pub command: Duration,
    /// MAIL FROM reply (5 minutes).
    pub mail: Duration,
    /// RCPT TO reply (5 minutes).
    pub rcpt: Duration,
    /// Reply to the DATA command itself (2 minutes).
    pub data_init: Duration,
    /// Each write of message content (3 minutes).
    pub data_block: Duration,
    /// Reply after the terminating `.` (10 minutes).
    pub data_term: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            mail: Duration::from_secs(300),
            rcpt: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_term: Duration::from_secs(600),
        }
    }
}

impl Timeouts {
    /// Every stage bounded by the same duration (tests, impatient callers).
    pub fn uniform(d: Duration) -> Self {
        Timeouts {
            greeting: d,
            command: d,
            mail: d,
            rcpt: d,
            data_init: d,
            data_block: d,
            data_term: d,
        }
    }
}

/// The point of the session an error or reply belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The server greeting.
    Greeting,
    /// EHLO or HELO.
    Ehlo,
    /// MAIL FROM.
    MailFrom,
    /// RCPT TO.
    RcptTo,
    /// The DATA command (before the 354).
    Data,
    /// Sending the content and waiting for the final reply.
    DataEnd,
    /// RSET.
    Rset,
    /// STARTTLS (RFC 3207).
    StartTls,
    /// BDAT chunks (RFC 3030).
    Bdat,
    /// QUIT.
    Quit,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::MailFrom => "MAIL FROM",
            Stage::RcptTo => "RCPT TO",
            Stage::Data => "DATA",
            Stage::DataEnd => "end of data",
            Stage::Rset => "RSET",
            Stage::StartTls => "STARTTLS",
            Stage::Bdat => "BDAT",
            Stage::Quit => "QUIT",
        })
    }
}

/// Errors from an SMTP session.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Reading or writing the stream failed.
    #[error("I/O error during {stage}: {source}")]
    Io {
        /// Where it happened.
        stage: Stage,
        /// Cause.
        source: std::io::Error,
    },
    /// The peer did not answer (or accept data) within the stage's timeout.
    #[error("timed out after {after:?} during {stage}")]
    Timeout {
        /// Where it happened.
        stage: Stage,
        /// The timeout that expired.
        after: Duration,
    },
    /// The peer closed the connection.
    #[error("connection closed by peer during {stage}")]
    Closed {
        /// Where it happened.
        stage: Stage,
    },
    /// The peer sent something that is not an SMTP reply.
    #[error("protocol error during {stage}: {message}")]
    Protocol {
        /// Where it happened.
        stage: Stage,
        /// What was wrong.
        message: String,
    },
    /// The peer answered with a negative (4xx/5xx) or unexpected reply.
    #[error("{stage} rejected: {reply}")]
    Rejected {
        /// The command (or greeting) that was refused.
        stage: Stage,
        /// The server's reply.
        reply: Reply,
    },
    /// A command argument contains CR, LF or other bytes that would break the command line.
    #[error("invalid argument for {stage}: {arg}")]
    InvalidArgument {
        /// The command it was meant for.
        stage: Stage,
        /// The offending argument.
        #[source]
        arg: InvalidArg,
    },
}

/// An argument that cannot be put on an SMTP command line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0:?} contains a control character")]
pub struct InvalidArg(pub String);

impl ClientError {
    /// The reply when the error is a server rejection.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            ClientError::Rejected { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// Is this a permanent (5xx) rejection? Everything else is worth retrying.
    pub fn is_permanent(&self) -> bool {
        self.reply().is_some_and(Reply::is_permanent)
    }

    /// The stage the error happened in.
    pub fn stage(&self) -> Stage {
        match self {
            ClientError::Io { stage, .. }
            | ClientError::Timeout { stage, .. }
            | ClientError::Closed { stage }
            | ClientError::Protocol { stage, .. }
            | ClientError::Rejected { stage, .. }
            | ClientError::InvalidArgument { stage, .. } => *stage,
        }
    }
}

/// One (possibly multi-line) SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The RFC 3463 enhanced status code from the first line, if present (e.g. "5.1.1").
    pub enhanced: Option<String>,
    /// The text of each line, without the code, separator and enhanced code.
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }
    /// 3xx (354 after DATA).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }
    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
    /// The lines joined with spaces.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = &self.enhanced {
            write!(f, " {e}")?;
        }
        let text = self.text();
        if !text.is_empty() {
            write!(f, " {text}")?;
        }
        Ok(())
    }
}

/// Incremental parser for reply lines; pure, so it can be tested without I/O.
#[derive(Debug, Default)]
pub struct ReplyParser {
    code: Option<u16>,
    lines: Vec<String>,
    enhanced: Option<String>,
}

impl ReplyParser {
    /// Feed one line (without CRLF). Returns the reply when this was its last line.
    pub fn push(&mut self, line: &str) -> Result<Option<Reply>, String> {
        let b = line.as_bytes();
        if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) {
            return Err(format!("not a reply line: {line:?}"));
        }
        let code: u16 = line[..3]
            .parse()
            .map_err(|_| format!("bad code in {line:?}"))?;
        if !(200..600).contains(&code) {
            return Err(format!("reply code out of range: {line:?}"));
        }
        if let Some(prev) = self.code
            && prev != code
        {
            return Err(format!(
                "reply code changed from {prev} to {code} within one reply"
            ));
        }
        let (last, rest) = match b.get(3) {
            None => (true, ""),
            Some(b' ') => (true, &line[4..]),
            Some(b'-') => (false, &line[4..]),
            Some(_) => return Err(format!("bad separator in {line:?}")),
        };
        let text = if self.code.is_none() {
            let (enhanced, text) = split_enhanced(code, rest);
            self.enhanced = enhanced;
            text
        } else {
            rest
        };
        self.code = Some(code);
        self.lines.push(text.to_string());
        if self.lines.len() > MAX_REPLY_LINES {
            return Err(format!("reply longer than {MAX_REPLY_LINES} lines"));
        }
        if last {
            let reply = Reply {
                code,
                enhanced: self.enhanced.take(),
                lines: std::mem::take(&mut self.lines),
            };
            self.code = None;
            Ok(Some(reply))
        } else {
            Ok(None)
        }
    }
}

/// Split a leading RFC 3463 status code (`class.subject.detail`) whose class
/// matches the reply code's first digit.
fn split_enhanced(code: u16, text: &str) -> (Option<String>, &str) {
    let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut parts = word.split('.');
    let class = parts.next().unwrap_or("");
    let subject = parts.next().unwrap_or("");
    let detail = parts.next().unwrap_or("");
    let num = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    let ok = parts.next().is_none()
        && class.len() == 1
        && class.as_bytes()[0] == b'0' + (code / 100) as u8
        && matches!(class, "2" | "4" | "5")
        && num(subject, 3)
        && num(detail, 3);
    if ok {
        (Some(word.to_string()), rest)
    } else {
        (None, text)
    }
}

/// What the server announced in its EHLO reply (empty after a HELO fallback).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// Keyword (upper case) and parameters of every extension line.
    pub entries: Vec<(String, Vec<String>)>,
    /// Whether the session used HELO because EHLO was refused.
    pub helo_fallback: bool,
}

impl Extensions {
    /// Parse the lines after the first of an EHLO reply.
    pub fn parse(reply: &Reply) -> Extensions {
        let entries = reply
            .lines
            .iter()
            .skip(1)
            .filter_map(|l| {
                let mut words = l.split_ascii_whitespace();
                let kw = words.next()?.to_ascii_uppercase();
                Some((kw, words.map(str::to_string).collect()))
            })
            .collect();
        Extensions {
            entries,
            helo_fallback: false,
        }
    }

    /// Is `keyword` (case-insensitive) announced?
    pub fn has(&self, keyword: &str) -> bool {
        self.params(keyword).is_some()
    }

    /// Parameters of `keyword`, if announced.
    pub fn params(&self, keyword: &str) -> Option<&[String]> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(keyword))
            .map(|(_, p)| p.as_slice())
    }

    /// The SIZE limit (RFC 1870): `Some(0)` means announced without a limit.
    pub fn size(&self) -> Option<u64> {
        self.params("SIZE")
            .map(|p| p.first().and_then(|s| s.parse().ok()).unwrap_or(0))
    }

    /// 8BITMIME (RFC 6152).
    pub fn eight_bit_mime(&self) -> bool {
        self.has("8BITMIME")
    }

    /// SMTPUTF8 (RFC 6531).
    pub fn smtputf8(&self) -> bool {
        self.has("SMTPUTF8")
    }

    /// STARTTLS (RFC 3207).
    pub fn starttls(&self) -> bool {
        self.has("STARTTLS")
    }

    /// REQUIRETLS (RFC 8689 §2).
    pub fn requiretls(&self) -> bool {
        self.has("REQUIRETLS")
    }

    /// DSN (RFC 3461).
    pub fn dsn(&self) -> bool {
        self.has("DSN")
    }

    /// PIPELINING (RFC 2920).
    pub fn pipelining(&self) -> bool {
        self.has("PIPELINING")
    }

    /// CHUNKING, i.e. the BDAT command (RFC 3030).
    pub fn chunking(&self) -> bool {
        self.has("CHUNKING")
    }
}

/// Normalise line endings to CRLF (a bare CR or LF becomes CRLF) without
/// dot-stuffing: the content of BDAT chunks (RFC 3030 §2), which is counted
/// in octets and so needs no transparency, but must still be valid RFC 5322.
pub fn canonical_crlf(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 2);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Encode message content for DATA: every line ends in CRLF (a bare LF or a
/// bare CR becomes CRLF, so no `<LF>.<LF>`-style terminator can be smuggled),
/// lines starting with `.` get one more `.` (RFC 5321 §4.5.2), and the
/// result ends with the `<CRLF>.<CRLF>` terminator.
pub fn encode_data(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut at_line_start = true;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        match b {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                // CRLF counts once.
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                at_line_start = true;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                at_line_start = true;
            }
            _ => {
                if at_line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                at_line_start = false;
            }
        }
        i += 1;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// An SMTP client session over `S`.
pub struct SmtpClient<S> {
    io: BufReader<S>,
    timeouts: Timeouts,
    extensions: Extensions,
}

impl<S> fmt::Debug for SmtpClient<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpClient")
            .field("timeouts", &self.timeouts)
            .field("extensions", &self.extensions)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpClient<S> {
    /// Wrap a connected stream and read the greeting. A non-2xx greeting is
    /// [`ClientError::Rejected`] with stage [`Stage::Greeting`] (the client
    /// sends QUIT first, as RFC 5321 §3.1 asks).
    pub async fn connect(stream: S, timeouts: Timeouts) -> Result<(Self, Reply), ClientError> {
        let mut c = SmtpClient {
            io: BufReader::new(stream),
            timeouts,
            extensions: Extensions::default(),
        };
        let greeting = c.read_reply(Stage::Greeting, timeouts.greeting).await?;
        if greeting.code != 220 {
            c.quit().await;
            return Err(ClientError::Rejected {
                stage: Stage::Greeting,
                reply: greeting,
            });
        }
        Ok((c, greeting))
    }

    /// The extensions from the last EHLO.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Send EHLO `name`; on a 5xx reply fall back to HELO (RFC 5321 §3.2).
    pub async fn ehlo(&mut self, name: &str) -> Result<&Extensions, ClientError> {
        check_arg(Stage::Ehlo, name)?;
        let reply = self
            .command(Stage::Ehlo, &format!("EHLO {name}"), self.timeouts.command)
            .await?;
        if reply.code == 250 {
            self.extensions = Extensions::parse(&reply);
            return Ok(&self.extensions);
        }
        if !reply.is_permanent() {
            return Err(ClientError::Rejected {
                stage: Stage::Ehlo,
                reply,
            });
        }
        let reply = self
            .command(Stage::Ehlo, &format!("HELO {name}"), self.timeouts.command)
            .await?;
        if reply.code != 250 {
            return Err(ClientError::Rejected {
                stage: Stage::Ehlo,
                reply,
            });
        }
        self.extensions = Extensions {
            entries: Vec::new(),
            helo_fallback: true,
        };
        Ok(&self.extensions)
    }

    /// `MAIL FROM:<reverse_path>` with optional ESMTP parameters (`SIZE=123`, ...).
    /// An empty `reverse_path` is the null sender `<>`. Non-2xx is an error.
    pub async fn mail_from(
        &mut self,
        reverse_path: &str,
        params: &[String],
    ) -> Result<Reply, ClientError> {
        check_arg(Stage::MailFrom, reverse_path)?;
        for p in params {
            check_arg(Stage::MailFrom, p)?;
        }
        let line = with_params(format!("MAIL FROM:<{reverse_path}>"), params);
        let reply = self
            .command(Stage::MailFrom, &line, self.timeouts.mail)
            .await?;
        positive(Stage::MailFrom, reply)
    }

    /// `RCPT TO:<forward_path>` with optional parameters. The reply is returned
    /// whatever its code, because a refused recipient is a per-recipient result;
    /// only 421 (the server is closing the session) is an error.
    pub async fn rcpt_to(
        &mut self,
        forward_path: &str,
        params: &[String],
    ) -> Result<Reply, ClientError> {
        check_arg(Stage::RcptTo, forward_path)?;
        for p in params {
            check_arg(Stage::RcptTo, p)?;
        }
        let line = with_params(format!("RCPT TO:<{forward_path}>"), params);
        let reply = self
            .command(Stage::RcptTo, &line, self.timeouts.rcpt)
            .await?;
        if reply.code == 421 {
            return Err(ClientError::Rejected {
                stage: Stage::RcptTo,
                reply,
            });
        }
        Ok(reply)
    }

    /// DATA: expect 354, send `body` dot-stuffed with CRLF line endings and the
    /// `<CRLF>.<CRLF>` terminator (see [`encode_data`]), and return the final
    /// 2xx reply. A refused DATA or a non-2xx final reply is an error.
    pub async fn data(&mut self, body: &[u8]) -> Result<Reply, ClientError> {
        let reply = self
            .command(Stage::Data, "DATA", self.timeouts.data_init)
            .await?;
        if reply.code != 354 {
            return Err(ClientError::Rejected {
                stage: Stage::Data,
                reply,
            });
        }
        let encoded = encode_data(body);
        for chunk in encoded.chunks(DATA_CHUNK) {
            self.write(Stage::DataEnd, chunk, self.timeouts.data_block)
                .await?;
        }
        let reply = self
            .read_reply(Stage::DataEnd, self.timeouts.data_term)
            .await?;
        positive(Stage::DataEnd, reply)
    }

    /// MAIL FROM and one RCPT TO per recipient, returning the reply to each
    /// RCPT in order (a refused recipient is a per-recipient result, not an
    /// error). When the server announced PIPELINING the whole group is
    /// written at once and the replies read in order afterwards (RFC 2920
    /// §3.1: MAIL and RCPT may appear anywhere in a group); otherwise one
    /// command at a time. A refused MAIL is [`ClientError::Rejected`] with
    /// stage [`Stage::MailFrom`] (pipelined: after reading the RCPT replies
    /// the server still owes, so the session stays in step); a 421 to any
    /// RCPT is an error, as in [`SmtpClient::rcpt_to`].
    pub async fn envelope(
        &mut self,
        reverse_path: &str,
        mail_params: &[String],
        rcpts: &[(&str, &[String])],
    ) -> Result<Vec<Reply>, ClientError> {
        if !self.extensions.pipelining() {
            self.mail_from(reverse_path, mail_params).await?;
            let mut replies = Vec::with_capacity(rcpts.len());
            for (addr, params) in rcpts {
                replies.push(self.rcpt_to(addr, params).await?);
            }
            return Ok(replies);
        }
        check_arg(Stage::MailFrom, reverse_path)?;
        for p in mail_params {
            check_arg(Stage::MailFrom, p)?;
        }
        let mut group = with_params(format!("MAIL FROM:<{reverse_path}>"), mail_params);
        group.push_str("\r\n");
        for (addr, params) in rcpts {
            check_arg(Stage::RcptTo, addr)?;
            for p in *params {
                check_arg(Stage::RcptTo, p)?;
            }
            group.push_str(&with_params(format!("RCPT TO:<{addr}>"), params));
            group.push_str("\r\n");
        }
        self.write(Stage::MailFrom, group.as_bytes(), self.timeouts.command)
            .await?;
        let mail = self.read_reply(Stage::MailFrom, self.timeouts.mail).await?;
        let mut replies = Vec::with_capacity(rcpts.len());
        for _ in rcpts {
            let reply = self.read_reply(Stage::RcptTo, self.timeouts.rcpt).await?;
            if reply.code == 421 {
                return Err(ClientError::Rejected {
                    stage: Stage::RcptTo,
                    reply,
                });
            }
            replies.push(reply);
        }
        positive(Stage::MailFrom, mail)?;
        Ok(replies)
    }

    /// Send the message with BDAT (RFC 3030 CHUNKING) instead of DATA: line
    /// endings normalised to CRLF (see [`canonical_crlf`]), no dot-stuffing,
    /// in chunks of at most [`BDAT_CHUNK`] octets, the last marked `LAST`.
    /// Returns the final 2xx reply; a refused chunk is an error (stage
    /// [`Stage::Bdat`] for an intermediate chunk, [`Stage::DataEnd`] for the
    /// last, like the reply to DATA's terminator).
    pub async fn bdat(&mut self, body: &[u8]) -> Result<Reply, ClientError> {
        let content = canonical_crlf(body);
        let chunks: Vec<&[u8]> = if content.is_empty() {
            vec![&[][..]]
        } else {
            content.chunks(BDAT_CHUNK).collect()
        };
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let last = i + 1 == n;
            let stage = if last { Stage::DataEnd } else { Stage::Bdat };
            let mut buf = Vec::with_capacity(chunk.len() + 32);
            buf.extend_from_slice(
                format!(
                    "BDAT {}{}\r\n",
                    chunk.len(),
                    if last { " LAST" } else { "" }
                )
                .as_bytes(),
            );
            buf.extend_from_slice(chunk);
            for piece in buf.chunks(DATA_CHUNK) {
                self.write(stage, piece, self.timeouts.data_block).await?;
            }
            let timeout = if last {
                self.timeouts.data_term
            } else {
                self.timeouts.data_block
            };
            let reply = positive(stage, self.read_reply(stage, timeout).await?)?;
            if last {
                return Ok(reply);
            }
        }
        Err(ClientError::Protocol {
            stage: Stage::Bdat,
            message: "no chunk sent".into(),
        })
    }

    /// STARTTLS (RFC 3207): expect 220, then the caller performs the TLS
    /// handshake on [`SmtpClient::into_inner`] and continues with
    /// [`SmtpClient::resume`] and a new EHLO. Bytes the server sent after
    /// the 220 and before the handshake are a protocol error: they would be
    /// read as if they came over TLS (the plaintext injection attack of
    /// CVE-2011-0411, RFC 3207 §6 says the client must discard them; we
    /// refuse the session instead).
    pub async fn starttls(&mut self) -> Result<Reply, ClientError> {
        let reply = self
            .command(Stage::StartTls, "STARTTLS", self.timeouts.command)
            .await?;
        if reply.code != 220 {
            return Err(ClientError::Rejected {
                stage: Stage::StartTls,
                reply,
            });
        }
        if !self.io.buffer().is_empty() {
            return Err(ClientError::Protocol {
                stage: Stage::StartTls,
                message: "data received after the 220 to STARTTLS, before the TLS handshake".into(),
            });
        }
        Ok(reply)
    }

    /// Continue a session on a new stream without reading a greeting: after
    /// the TLS handshake that follows [`SmtpClient::starttls`]. The server
    /// has forgotten everything from before (RFC 3207 §4.2), so the
    /// extensions are empty until the next EHLO.
    pub fn resume(stream: S, timeouts: Timeouts) -> Self {
        SmtpClient {
            io: BufReader::new(stream),
            timeouts,
            extensions: Extensions::default(),
        }
    }

    /// RSET: abort the current transaction.
    pub async fn rset(&mut self) -> Result<Reply, ClientError> {
        let reply = self
            .command(Stage::Rset, "RSET", self.timeouts.command)
            .await?;
        positive(Stage::Rset, reply)
    }

    /// QUIT and wait briefly (at most [`QUIT_WAIT`]) for the 221; errors are
    /// ignored since the transaction is already decided.
    pub async fn quit(&mut self) {
        let wait = self.timeouts.command.min(QUIT_WAIT);
        let _ = self.command(Stage::Quit, "QUIT", wait).await;
        let _ = self.io.get_mut().shutdown().await;
    }

    /// Give back the stream (e.g. to start TLS after a STARTTLS reply).
    pub fn into_inner(self) -> S {
        self.io.into_inner()
    }

    /// Send one command line and read its reply.
    pub async fn command(
        &mut self,
        stage: Stage,
        line: &str,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let mut buf = Vec::with_capacity(line.len() + 2);
        buf.extend_from_slice(line.as_bytes());
        buf.extend_from_slice(b"\r\n");
        self.write(stage, &buf, self.timeouts.command.min(timeout))
            .await?;
        self.read_reply(stage, timeout).await
    }

    async fn write(
        &mut self,
        stage: Stage,
        bytes: &[u8],
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let io = self.io.get_mut();
        let fut = async {
            io.write_all(bytes).await?;
            io.flush().await
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(io_err(stage, source)),
            Err(_) => Err(ClientError::Timeout {
                stage,
                after: timeout,
            }),
        }
    }

    /// Read one complete reply within `timeout`.
    pub async fn read_reply(
        &mut self,
        stage: Stage,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        match tokio::time::timeout(timeout, self.read_reply_inner(stage)).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout {
                stage,
                after: timeout,
            }),
        }
    }

    async fn read_reply_inner(&mut self, stage: Stage) -> Result<Reply, ClientError> {
        let mut parser = ReplyParser::default();
        loop {
            let line = self.read_line(stage).await?;
            if let Some(reply) = parser
                .push(&line)
                .map_err(|message| ClientError::Protocol { stage, message })?
            {
                return Ok(reply);
            }
        }
    }

    /// Read one line, without its CRLF (a bare LF is tolerated).
    async fn read_line(&mut self, stage: Stage) -> Result<String, ClientError> {
        let mut line = Vec::new();
        loop {
            let buf = self.io.fill_buf().await.map_err(|e| io_err(stage, e))?;
            if buf.is_empty() {
                return Err(ClientError::Closed { stage });
            }
            let (found, used) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (true, i + 1),
                None => (false, buf.len()),
            };
            line.extend_from_slice(&buf[..used]);
            self.io.consume(used);
            if line.len() > MAX_REPLY_LINE {
                return Err(ClientError::Protocol {
                    stage,
                    message: format!("reply line longer than {MAX_REPLY_LINE} octets"),
                });
            }
            if found {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
        }
    }
}

fn io_err(stage: Stage, source: std::io::Error) -> ClientError {
    match source.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionReset => ClientError::Closed { stage },
        _ => ClientError::Io { stage, source },
    }
}

fn positive(stage: Stage, reply: Reply) -> Result<Reply, ClientError> {
    if reply.is_positive() {
        Ok(reply)
    } else {
        Err(ClientError::Rejected { stage, reply })
    }
}

fn with_params(mut line: String, params: &[String]) -> String {
    for p in params {
        line.push(' ');
        line.push_str(p);
    }
    line
}

fn check_arg(stage: Stage, arg: &str) -> Result<(), ClientError> {
    if arg
        .bytes()
        .any(|b| b.is_ascii_control() || b == b'<' || b == b'>')
    {
        return Err(ClientError::InvalidArgument {
            stage,
            arg: InvalidArg(arg.to_string()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::{AsyncReadExt, DuplexStream, duplex};

    /// A scripted server on the other end of a duplex stream: reads command
    /// lines and answers from the script; returns everything it received.
    async fn serve(
        mut s: DuplexStream,
        greeting: &str,
        script: Vec<(&'static str, &'static str)>,
    ) -> Vec<u8> {
        let mut received = Vec::new();
        s.write_all(greeting.as_bytes()).await.unwrap();
        let mut buf = [0u8; 4096];
        let mut pending = Vec::new();
        let mut script = script.into_iter();
        let mut next = script.next();
        while let Some((expect_end, answer)) = next {
            // Read until what we received ends with `expect_end`.
            while !pending.ends_with(expect_end.as_bytes()) {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return received;
                }
                pending.extend_from_slice(&buf[..n]);
            }
            received.extend_from_slice(&pending);
            pending.clear();
            s.write_all(answer.as_bytes()).await.unwrap();
            next = script.next();
        }
        received
    }

    #[tokio::test]
    async fn full_transaction_with_per_recipient_replies() {
        let (client, server) = duplex(64 * 1024);
        let server = tokio::spawn(serve(
            server,
            "220-mx.test ESMTP\r\n220 second line\r\n",
            vec![
                (
                    "\r\n",
                    "250-mx.test hello\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n",
                ),
                ("\r\n", "250 2.1.0 ok\r\n"),
                ("\r\n", "250 2.1.5 ok\r\n"),
                ("\r\n", "550 5.1.1 no such user\r\n"),
                ("\r\n", "354 go ahead\r\n"),
                ("\r\n.\r\n", "250 2.0.0 queued as X\r\n"),
                ("\r\n", "221 bye\r\n"),
            ],
        ));
        let (mut c, greeting) =
            SmtpClient::connect(client, Timeouts::uniform(Duration::from_secs(5)))
                .await
                .unwrap();
        assert_eq!(greeting.code, 220);
        assert_eq!(greeting.lines, vec!["mx.test ESMTP", "second line"]);
        let ext = c.ehlo("client.test").await.unwrap();
        assert_eq!(ext.size(), Some(1_000_000));
        assert!(ext.eight_bit_mime() && ext.smtputf8() && !ext.starttls());
        c.mail_from("a@x.test", &["SIZE=20".to_string()])
            .await
            .unwrap();
        let ok = c.rcpt_to("b@mx.test", &[]).await.unwrap();
        assert!(ok.is_positive());
        let no = c.rcpt_to("nobody@mx.test", &[]).await.unwrap();
        assert_eq!(no.code, 550);
        assert_eq!(no.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(no.text(), "no such user");
        let done = c
            .data(b"Subject: t\r\n\r\n.hidden\r\nend\r\n")
            .await
            .unwrap();
        assert_eq!(done.code, 250);
        c.quit().await;
        let got = String::from_utf8(server.await.unwrap()).unwrap();
        assert_eq!(
            got,
            "EHLO client.test\r\nMAIL FROM:<a@x.test> SIZE=20\r\nRCPT TO:<b@mx.test>\r\n\
             RCPT TO:<nobody@mx.test>\r\nDATA\r\nSubject: t\r\n\r\n..hidden\r\nend\r\n.\r\nQUIT\r\n"
        );
    }

    #[tokio::test]
    async fn helo_fallback_on_5xx_ehlo() {
        let (client, server) = duplex(4096);
        let server = tokio::spawn(serve(
            server,
            "220 old.test\r\n",
            vec![
                ("\r\n", "502 5.5.1 what is EHLO\r\n"),
                ("\r\n", "250 old.test\r\n"),
                ("\r\n", "250 ok\r\n"),
            ],
        ));
        let (mut c, _) = SmtpClient::connect(client, Timeouts::default())
            .await
            .unwrap();
        let ext = c.ehlo("client.test").await.unwrap();
        assert!(ext.helo_fallback);
        assert!(!ext.has("SIZE"));
        c.mail_from("", &[]).await.unwrap();
        drop(c);
        let got = String::from_utf8(server.await.unwrap()).unwrap();
        assert_eq!(
            got,
            "EHLO client.test\r\nHELO client.test\r\nMAIL FROM:<>\r\n"
        );
    }

    #[tokio::test]
    async fn transient_ehlo_is_not_retried_with_helo() {
        let (client, server) = duplex(4096);
        tokio::spawn(serve(
            server,
            "220 x\r\n",
            vec![("\r\n", "421 4.3.2 shutting down\r\n")],
        ));
        let (mut c, _) = SmtpClient::connect(client, Timeouts::default())
            .await
            .unwrap();
        let err = c.ehlo("client.test").await.unwrap_err();
        assert_eq!(err.stage(), Stage::Ehlo);
        assert_eq!(err.reply().unwrap().code, 421);
        assert!(!err.is_permanent());
    }

    #[tokio::test]
    async fn negative_greeting_is_rejected() {
        let (client, server) = duplex(4096);
        tokio::spawn(serve(
            server,
            "554 5.3.2 no service here\r\n",
            vec![("\r\n", "221 bye\r\n")],
        ));
        let err = SmtpClient::connect(client, Timeouts::default())
            .await
            .unwrap_err();
        match err {
            ClientError::Rejected { stage, reply } => {
                assert_eq!(stage, Stage::Greeting);
                assert_eq!(reply.code, 554);
                assert_eq!(reply.enhanced.as_deref(), Some("5.3.2"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn mail_from_rejection_is_typed() {
        let (client, server) = duplex(4096);
        tokio::spawn(serve(
            server,
            "220 x\r\n",
            vec![("\r\n", "250 x\r\n"), ("\r\n", "451 4.7.1 greylisted\r\n")],
        ));
        let (mut c, _) = SmtpClient::connect(client, Timeouts::default())
            .await
            .unwrap();
        c.ehlo("c.test").await.unwrap();
        let err = c.mail_from("a@b.test", &[]).await.unwrap_err();
        assert_eq!(err.stage(), Stage::MailFrom);
        assert!(err.reply().unwrap().is_transient());
    }

    #[tokio::test]
    async fn data_refused_and_final_rejection() {
        let (client, server) = duplex(4096);
        tokio::spawn(serve(
            server,
            "220 x\r\n",
            vec![
                ("\r\n", "250 x\r\n"),
                ("\r\n", "250 ok\r\n"),
                ("\r\n", "250 ok\r\n"),
                ("\r\n", "354 go\r\n"),
                ("\r\n.\r\n", "554 5.6.0 content rejected\r\n"),
            ],
        ));
        let (mut c, _) = SmtpClient::connect(client, Timeouts::default())
            .await
            .unwrap();
        c.ehlo("c.test").await.unwrap();
        c.mail_from("a@b.test", &[]).await.unwrap();
        c.rcpt_to("r@x.test", &[]).await.unwrap();
        let err = c.data(b"hi\r\n").await.unwrap_err();
        assert_eq!(err.stage(), Stage::DataEnd);
        assert!(err.is_permanent());
    }

    #[tokio::test]
    async fn rcpt_421_is_an_error() {
        let (client, server) = duplex(4096);
        tokio::spawn(serve(
            server,
            "220 x\r\n",
            vec![
                ("\r\n", "250 x\r\n"),
                ("\r\n", "250 ok\r\n"),
                ("\r\n", "421 closing\r\n"),
            ],
        ));
        let (mut c, _) = SmtpClient::connect(client, Timeouts::default())
            .await
            .unwrap();
        c.ehlo("c.test").await.unwrap();
        c.mail_from("a@b.test", &[]).await.unwrap();
        let err = c.rcpt_to("r@x.test", &[]).await.unwrap_err();
        assert_eq!(err.reply().unwrap().code, 421);
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let (client, _server) = duplex(4096);
        let t = Timeouts {
            greeting: Duration::from_millis(100),
            ..Timeouts::default()
        };
        let err = SmtpClient::connect(client, t).await.unwrap_err();
        match err {
            ClientError::Timeout { stage, after } => {
                assert_eq!(stage, Stage::Greeting);
                assert_eq!(after, Duration::from_millis(100));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn closed_connection_is_reported() {
        let (client, server) = duplex(4096);
        drop(server);
        let err = SmtpClient::connect(client, Timeouts::default())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Closed {
                    stage: Stage::Greeting
                }
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn garbage_reply_is_a_protocol_error() {
        let (client, server) = duplex(4096);
        tokio::spawn(serve(server, "HTTP/1.1 400 Bad Request\r\n", vec![]));
        let err = SmtpClient::connect(client, Timeouts::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn overlong_reply_line_is_refused() {
        let (client, server) = duplex(64 * 1024);
        let long = format!("220 {}\r\n", "x".repeat(MAX_REPLY_LINE + 10));
        let long: &'static str = Box::leak(long.into_boxed_str());
        tokio::spawn(serve(server, long, vec![]));
        let err = SmtpClient::connect(client, Timeouts::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn injection_in_arguments_is_refused() {
        let (client, server) = duplex(4096);
        tokio::spawn(serve(server, "220 x\r\n", vec![("\r\n", "250 x\r\n")]));
        let (mut c, _) = SmtpClient::connect(client, Timeouts::default())
            .await
            .unwrap();
        c.ehlo("c.test").await.unwrap();
        let err = c
            .mail_from("a@b.test>\r\nRCPT TO:<x@y", &[])
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::InvalidArgument { .. }));
    }

    #[tokio::test]
    async fn pipelined_envelope_is_one_write_with_replies_in_order() {
        let (client, mut server) = duplex(64 * 1024);
        let srv = tokio::spawn(async move {
            server.write_all(b"220 x\r\n").await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = server.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"EHLO c.test\r\n");
            server
                .write_all(b"250-x\r\n250 PIPELINING\r\n")
                .await
                .unwrap();
            // The whole group arrives before any reply is sent (RFC 2920 §3.1).
            let group = b"MAIL FROM:<a@b.test> SIZE=5\r\nRCPT TO:<r1@x.test>\r\nRCPT TO:<r2@x.test> NOTIFY=NEVER\r\n";
            let mut got = Vec::new();
            while got.len() < group.len() {
                let n = server.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, group);
            server
                .write_all(b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n")
                .await
                .unwrap();
        });
        let (mut c, _) = SmtpClient::connect(client, Timeouts::uniform(Duration::from_secs(5)))
            .await
            .unwrap();
        c.ehlo("c.test").await.unwrap();
        let notify = vec!["NOTIFY=NEVER".to_string()];
        let replies = c
            .envelope(
                "a@b.test",
                &["SIZE=5".to_string()],
                &[("r1@x.test", &[]), ("r2@x.test", &notify)],
            )
            .await
            .unwrap();
        assert_eq!(
            replies.iter().map(|r| r.code).collect::<Vec<_>>(),
            vec![250, 550]
        );
        srv.await.unwrap();
    }

    #[tokio::test]
    async fn pipelined_mail_rejection_reads_the_owed_replies() {
        let (client, server) = duplex(64 * 1024);
        tokio::spawn(serve(
            server,
            "220 x\r\n",
            vec![
                ("\r\n", "250-x\r\n250 PIPELINING\r\n"),
                (
                    "RCPT TO:<r@x.test>\r\n",
                    "550 5.7.1 sender denied\r\n503 5.5.1 no MAIL\r\n",
                ),
                ("RSET\r\n", "250 ok\r\n"),
            ],
        ));
        let (mut c, _) = SmtpClient::connect(client, Timeouts::uniform(Duration::from_secs(5)))
            .await
            .unwrap();
        c.ehlo("c.test").await.unwrap();
        let err = c
            .envelope("a@b.test", &[], &[("r@x.test", &[])])
            .await
            .unwrap_err();
        assert_eq!(err.stage(), Stage::MailFrom);
        assert_eq!(err.reply().unwrap().code, 550);
        // Still in step: the next command gets its own reply.
        assert_eq!(c.rset().await.unwrap().code, 250);
    }

    #[tokio::test]
    async fn bdat_sends_counted_chunks_without_dot_stuffing() {
        let (client, mut server) = duplex(4 * 1024 * 1024);
        let mut body = b".first\nline\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'x', BDAT_CHUNK));
        let expected = canonical_crlf(&body);
        let srv = tokio::spawn(async move {
            server
                .write_all(b"220 x\r\n250-x\r\n250 CHUNKING\r\n")
                .await
                .unwrap();
            let mut all = Vec::new();
            let mut buf = vec![0u8; 65536];
            let mut content = Vec::new();
            let mut chunks = Vec::new();
            loop {
                // Parse "BDAT n [LAST]\r\n" + n octets from what has arrived.
                if let Some(end) = all.windows(2).position(|w| w == b"\r\n") {
                    let line = String::from_utf8(all[..end].to_vec()).unwrap();
                    if let Some(rest) = line.strip_prefix("BDAT ") {
                        let mut words = rest.split(' ');
                        let n: usize = words.next().unwrap().parse().unwrap();
                        let last = words.next() == Some("LAST");
                        if all.len() >= end + 2 + n {
                            content.extend_from_slice(&all[end + 2..end + 2 + n]);
                            all.drain(..end + 2 + n);
                            chunks.push((n, last));
                            let reply: &[u8] = if last {
                                b"250 2.0.0 done\r\n"
                            } else {
                                b"250 2.0.0 more\r\n"
                            };
                            server.write_all(reply).await.unwrap();
                            if last {
                                return (content, chunks);
                            }
                            continue;
                        }
                    } else {
                        all.drain(..end + 2); // EHLO
                        continue;
                    }
                }
                let n = server.read(&mut buf).await.unwrap();
                assert!(n > 0);
                all.extend_from_slice(&buf[..n]);
            }
        });
        let (mut c, _) = SmtpClient::connect(client, Timeouts::uniform(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(c.ehlo("c.test").await.unwrap().chunking());
        let reply = c.bdat(&body).await.unwrap();
        assert_eq!(reply.text(), "done");
        let (content, chunks) = srv.await.unwrap();
        assert_eq!(content, expected, "no dot-stuffing, CRLF line endings");
        assert_eq!(
            chunks,
            vec![(BDAT_CHUNK, false), (expected.len() - BDAT_CHUNK, true)]
        );
    }

    #[tokio::test]
    async fn starttls_refuses_data_injected_before_the_handshake() {
        let (client, server) = duplex(4096);
        tokio::spawn(serve(
            server,
            "220 x\r\n",
            vec![
                ("\r\n", "250-x\r\n250 STARTTLS\r\n"),
                // CVE-2011-0411 style: a reply smuggled before the handshake.
                ("STARTTLS\r\n", "220 go ahead\r\n250 injected\r\n"),
            ],
        ));
        let (mut c, _) = SmtpClient::connect(client, Timeouts::uniform(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(c.ehlo("c.test").await.unwrap().starttls());
        // The peer wrote both lines in one write, so they arrive together.
        match c.starttls().await {
            Err(ClientError::Protocol { stage, .. }) => assert_eq!(stage, Stage::StartTls),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn canonical_crlf_normalises_without_stuffing() {
        assert_eq!(canonical_crlf(b"a\n.b\rc\r\n"), b"a\r\n.b\r\nc\r\n");
        assert_eq!(canonical_crlf(b""), b"");
    }

    #[test]
    fn dot_stuffing_and_line_endings() {
        assert_eq!(encode_data(b""), b".\r\n");
        assert_eq!(encode_data(b"a\r\n"), b"a\r\n.\r\n");
        assert_eq!(encode_data(b"a"), b"a\r\n.\r\n");
        assert_eq!(encode_data(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(
            encode_data(b"..x\r\n.\r\nend"),
            b"...x\r\n..\r\nend\r\n.\r\n"
        );
        assert_eq!(encode_data(b"a.b\r\n"), b"a.b\r\n.\r\n");
        // Bare LF and bare CR become CRLF, so ".\n" cannot smuggle a terminator.
        assert_eq!(encode_data(b"a\n.\nb"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(encode_data(b"a\r.\rb\r\n"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(encode_data(b"x\r\n\r\n"), b"x\r\n\r\n.\r\n");
    }

    #[test]
    fn reply_parsing() {
        let mut p = ReplyParser::default();
        assert_eq!(p.push("250-first").unwrap(), None);
        let r = p.push("250 2.0.0 last").unwrap().unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(
            r.enhanced, None,
            "enhanced code is only read from the first line"
        );
        assert_eq!(r.lines, vec!["first", "2.0.0 last"]);
        let r = p.push("550 5.7.1 denied").unwrap().unwrap();
        assert_eq!(r.enhanced.as_deref(), Some("5.7.1"));
        assert_eq!(r.to_string(), "550 5.7.1 denied");
        // Class must match the reply code.
        let r = p.push("550 2.0.0 odd").unwrap().unwrap();
        assert_eq!(r.enhanced, None);
        let r = p.push("220").unwrap().unwrap();
        assert!(r.lines == vec![""]);
        assert!(p.push("25").is_err());
        assert!(p.push("250x").is_err());
        let mut p = ReplyParser::default();
        p.push("250-a").unwrap();
        assert!(p.push("251 b").is_err());
    }
}
