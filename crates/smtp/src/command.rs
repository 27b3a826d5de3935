//! Parsing one SMTP command line into a typed [`Command`].
//!
//! The input is one line without its CRLF. Verbs are case-insensitive
//! (RFC 5321 §2.4). Paths follow RFC 5321 §4.1.2, extended to UTF-8 by
//! RFC 6531 §3.3; ESMTP parameters follow RFC 5321 §4.1.2 (`esmtp-param`) and
//! the extensions that define them: SIZE (RFC 1870), BODY (RFC 6152, RFC 3030),
//! SMTPUTF8 (RFC 6531), RET/ENVID/NOTIFY/ORCPT (RFC 3461), AUTH (RFC 4954) and
//! REQUIRETLS (RFC 8689).
//!
//! Parsing never panics and never allocates more than the line's size.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::reply::{Reply, codes};

/// Longest local part we accept. RFC 5321 §4.5.3.1.1 sets 64 octets as the
/// minimum an implementation must handle; SRS and VERP addresses exceed it in
/// the wild, so we accept more.
pub const MAX_LOCAL_PART: usize = 256;
/// Longest domain (RFC 5321 §4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest ENVID value (RFC 3461 §4.4).
pub const MAX_ENVID: usize = 100;
/// Longest ORCPT value (RFC 3461 §4.2).
pub const MAX_ORCPT: usize = 500;

/// A parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `EHLO domain` (RFC 5321 §4.1.1.1).
    Ehlo(String),
    /// `HELO domain` (RFC 5321 §4.1.1.1).
    Helo(String),
    /// `MAIL FROM:<reverse-path> [params]` (RFC 5321 §4.1.1.2).
    Mail(MailFrom),
    /// `RCPT TO:<forward-path> [params]` (RFC 5321 §4.1.1.3).
    Rcpt(RcptTo),
    /// `DATA` (RFC 5321 §4.1.1.4).
    Data,
    /// `BDAT size [LAST]` (RFC 3030 §2).
    Bdat {
        /// Octets in the chunk that follows the command line.
        size: u64,
        /// This is the last chunk of the message.
        last: bool,
    },
    /// `RSET` (RFC 5321 §4.1.1.5).
    Rset,
    /// `NOOP [string]` (RFC 5321 §4.1.1.9).
    Noop,
    /// `QUIT` (RFC 5321 §4.1.1.10).
    Quit,
    /// `VRFY string` (RFC 5321 §4.1.1.6).
    Vrfy(String),
    /// `EXPN string` (RFC 5321 §4.1.1.7).
    Expn(String),
    /// `HELP [string]` (RFC 5321 §4.1.1.8).
    Help(Option<String>),
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954 §4).
    Auth {
        /// The SASL mechanism name, upper-cased.
        mechanism: String,
        /// The base64 initial response (`=` for an empty one), if given.
        initial_response: Option<String>,
    },
}

impl Command {
    /// The verb, upper-case, for logs and metrics.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Mail(_) => "MAIL",
            Command::Rcpt(_) => "RCPT",
            Command::Data => "DATA",
            Command::Bdat { .. } => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy(_) => "VRFY",
            Command::Expn(_) => "EXPN",
            Command::Help(_) => "HELP",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } => "AUTH",
        }
    }
}

/// A mailbox `local-part@domain` (RFC 5321 §4.1.2).
///
/// Both parts are kept exactly as the client wrote them (a quoted local part
/// keeps its quotes), so the address can be relayed unchanged. Compare
/// domains case-insensitively; local parts are case-sensitive in principle
/// (RFC 5321 §2.4), which is for the final mailbox to decide.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part, as written.
    pub local_part: String,
    /// The domain or address literal (`[192.0.2.1]`), as written.
    pub domain: String,
}

impl Mailbox {
    /// Parse `local@domain` (no angle brackets).
    pub fn parse(s: &str) -> Result<Mailbox, &'static str> {
        let (local, rest) = split_local_part(s)?;
        let domain = rest.strip_prefix('@').ok_or("missing @domain")?;
        validate_domain_or_literal(domain)?;
        Ok(Mailbox {
            local_part: local.to_string(),
            domain: domain.to_string(),
        })
    }

    /// Whether the address is all ASCII (else it needs SMTPUTF8, RFC 6531 §3.2).
    pub fn is_ascii(&self) -> bool {
        self.local_part.is_ascii() && self.domain.is_ascii()
    }

    /// Is the domain an address literal such as `[192.0.2.1]`?
    pub fn is_address_literal(&self) -> bool {
        self.domain.starts_with('[')
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local_part, self.domain)
    }
}

/// The argument of `RCPT TO:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain, which every server must accept
    /// (RFC 5321 §4.1.1.3, §4.5.1).
    Postmaster,
    /// An ordinary mailbox.
    Mailbox(Mailbox),
}

impl ForwardPath {
    /// Whether the address is all ASCII.
    pub fn is_ascii(&self) -> bool {
        match self {
            ForwardPath::Postmaster => true,
            ForwardPath::Mailbox(m) => m.is_ascii(),
        }
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("Postmaster"),
            ForwardPath::Mailbox(m) => m.fmt(f),
        }
    }
}

/// `BODY=` (RFC 6152 §2, RFC 3030 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    /// `7BIT`.
    SevenBit,
    /// `8BITMIME`.
    EightBitMime,
    /// `BINARYMIME` (needs BDAT).
    BinaryMime,
}

/// `RET=` (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// Return the full message in a DSN.
    Full,
    /// Return only the headers.
    Hdrs,
}

/// One `NOTIFY=` keyword (RFC 3461 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Notify {
    /// No DSN at all (must appear alone).
    Never,
    /// DSN on successful delivery.
    Success,
    /// DSN on failure.
    Failure,
    /// DSN on delay.
    Delay,
}

impl Notify {
    /// The keyword as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Notify::Never => "NEVER",
            Notify::Success => "SUCCESS",
            Notify::Failure => "FAILURE",
            Notify::Delay => "DELAY",
        }
    }
}

/// `ORCPT=addr-type;xtext` (RFC 3461 §4.2), xtext-decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Orcpt {
    /// The address type, e.g. `rfc822` or `utf-8`.
    pub addr_type: String,
    /// The original address, xtext-decoded.
    pub address: String,
}

impl fmt::Display for Orcpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{};{}", self.addr_type, self.address)
    }
}

/// `MAIL FROM:` with its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailFrom {
    /// The reverse-path; `None` is the null sender `<>`.
    pub reverse_path: Option<Mailbox>,
    /// `SIZE=`: the client's estimate of the message size (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: Option<BodyType>,
    /// `SMTPUTF8` was given (RFC 6531 §3.4).
    pub smtputf8: bool,
    /// `RET=`.
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext-decoded.
    pub envid: Option<String>,
    /// `AUTH=` (RFC 4954 §5), xtext-decoded; `<>` means unknown.
    pub auth: Option<String>,
    /// `REQUIRETLS` was given (RFC 8689 §3): every onward hop must use
    /// verified TLS.
    pub require_tls: bool,
}

impl MailFrom {
    /// Whether any ESMTP parameter was given.
    pub fn has_parameters(&self) -> bool {
        self.size.is_some()
            || self.body.is_some()
            || self.smtputf8
            || self.ret.is_some()
            || self.envid.is_some()
            || self.auth.is_some()
            || self.require_tls
    }

    /// The reverse path as text without brackets; empty for `<>`.
    pub fn sender(&self) -> String {
        self.reverse_path
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default()
    }
}

/// `RCPT TO:` with its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RcptTo {
    /// The forward-path.
    pub forward_path: ForwardPath,
    /// `NOTIFY=` keywords; empty when not given.
    pub notify: Vec<Notify>,
    /// `ORCPT=`.
    pub orcpt: Option<Orcpt>,
}

impl RcptTo {
    /// Whether any ESMTP parameter was given.
    pub fn has_parameters(&self) -> bool {
        !self.notify.is_empty() || self.orcpt.is_some()
    }
}

/// Why a command line was rejected. [`CommandError::reply`] gives the SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The verb is not one we know: 500 5.5.2.
    #[error("command unrecognized")]
    Unrecognized,
    /// The arguments are malformed: 501 5.5.4.
    #[error("syntax error: {0}")]
    Syntax(&'static str),
    /// The reverse-path is malformed: 501 5.1.7.
    #[error("bad sender address syntax: {0}")]
    BadSender(&'static str),
    /// The forward-path is malformed: 501 5.1.3.
    #[error("bad recipient address syntax: {0}")]
    BadRecipient(&'static str),
    /// A MAIL/RCPT parameter we do not know: 555 5.5.4 (RFC 5321 §4.1.1.11).
    #[error("unsupported parameter {0}")]
    UnknownParameter(String),
    /// A known parameter with a bad value, or given twice: 501 5.5.4.
    #[error("invalid {keyword} parameter: {reason}")]
    InvalidParameter {
        /// The parameter keyword.
        keyword: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl CommandError {
    /// The reply to send for this error.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unrecognized => {
                Reply::new(500, codes::UNRECOGNIZED, "Command unrecognized")
            }
            CommandError::Syntax(m) => {
                Reply::new(501, codes::BAD_ARGS, format!("Syntax error: {m}"))
            }
            CommandError::BadSender(m) => Reply::new(
                501,
                codes::BAD_SENDER_SYNTAX,
                format!("Bad sender address syntax: {m}"),
            ),
            CommandError::BadRecipient(m) => Reply::new(
                501,
                codes::BAD_RCPT_SYNTAX,
                format!("Bad recipient address syntax: {m}"),
            ),
            CommandError::UnknownParameter(k) => {
                Reply::new(555, codes::BAD_ARGS, format!("Unsupported parameter {k}"))
            }
            CommandError::InvalidParameter { keyword, reason } => Reply::new(
                501,
                codes::BAD_ARGS,
                format!("Invalid {keyword} parameter: {reason}"),
            ),
        }
    }
}

/// Parse one command line (without the trailing CRLF).
pub fn parse(line: &[u8]) -> Result<Command, CommandError> {
    let (verb, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    let verb = Verb::from_bytes(verb).ok_or(CommandError::Unrecognized)?;
    let rest = std::str::from_utf8(rest).map_err(|_| CommandError::Syntax("invalid UTF-8"))?;
    if rest.chars().any(|c| c.is_control()) {
        return Err(CommandError::Syntax("control character in command"));
    }
    // Lenient about extra spaces between verb and argument and at the end.
    let arg = rest.trim_matches(' ');
    match verb {
        Verb::Ehlo => Ok(Command::Ehlo(parse_helo_arg(arg)?)),
        Verb::Helo => Ok(Command::Helo(parse_helo_arg(arg)?)),
        Verb::Mail => parse_mail(arg).map(Command::Mail),
        Verb::Rcpt => parse_rcpt(arg).map(Command::Rcpt),
        Verb::Data => no_arg(arg, Command::Data),
        Verb::Bdat => parse_bdat(arg),
        Verb::Rset => no_arg(arg, Command::Rset),
        Verb::Noop => Ok(Command::Noop),
        Verb::Quit => no_arg(arg, Command::Quit),
        Verb::Vrfy => required(arg).map(Command::Vrfy),
        Verb::Expn => required(arg).map(Command::Expn),
        Verb::Help => Ok(Command::Help((!arg.is_empty()).then(|| arg.to_string()))),
        Verb::StartTls => no_arg(arg, Command::StartTls),
        Verb::Auth => parse_auth(arg),
    }
}

#[derive(Clone, Copy)]
enum Verb {
    Ehlo,
    Helo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth,
}

impl Verb {
    fn from_bytes(v: &[u8]) -> Option<Verb> {
        const VERBS: [(&[u8], Verb); 14] = [
            (b"EHLO", Verb::Ehlo),
            (b"HELO", Verb::Helo),
            (b"MAIL", Verb::Mail),
            (b"RCPT", Verb::Rcpt),
            (b"DATA", Verb::Data),
            (b"BDAT", Verb::Bdat),
            (b"RSET", Verb::Rset),
            (b"NOOP", Verb::Noop),
            (b"QUIT", Verb::Quit),
            (b"VRFY", Verb::Vrfy),
            (b"EXPN", Verb::Expn),
            (b"HELP", Verb::Help),
            (b"STARTTLS", Verb::StartTls),
            (b"AUTH", Verb::Auth),
        ];
        VERBS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(v))
            .map(|(_, verb)| *verb)
    }
}

fn no_arg(arg: &str, cmd: Command) -> Result<Command, CommandError> {
    if arg.is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax("this command takes no arguments"))
    }
}

fn required(arg: &str) -> Result<String, CommandError> {
    if arg.is_empty() {
        Err(CommandError::Syntax("argument required"))
    } else {
        Ok(arg.to_string())
    }
}

/// The EHLO/HELO argument: a domain or address literal (RFC 5321 §4.1.1.1).
/// Clients are sloppy here, so we take the first word and only insist that it
/// is made of characters that can appear in a domain or address literal; it
/// ends up in a `Received:` header, so nothing else may get through.
fn parse_helo_arg(arg: &str) -> Result<String, CommandError> {
    let word = arg.split(' ').next().unwrap_or("");
    if word.is_empty() {
        return Err(CommandError::Syntax(
            "EHLO/HELO requires a domain or address literal",
        ));
    }
    if word.len() > MAX_DOMAIN {
        return Err(CommandError::Syntax("domain too long"));
    }
    let ok = word.chars().all(|c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']') || !c.is_ascii()
    });
    if !ok {
        return Err(CommandError::Syntax("invalid domain"));
    }
    Ok(word.to_string())
}

/// Strip a case-insensitive `prefix` (e.g. `FROM:`) and any spaces after it.
/// RFC 5321 §4.1.1.2 has no space after the colon, but many clients send one.
fn strip_keyword<'a>(arg: &'a str, prefix: &str) -> Option<&'a str> {
    let head = arg.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| arg[prefix.len()..].trim_start_matches(' '))
}

fn parse_mail(arg: &str) -> Result<MailFrom, CommandError> {
    let rest =
        strip_keyword(arg, "FROM:").ok_or(CommandError::Syntax("expected MAIL FROM:<address>"))?;
    let (path, params) = split_path(rest).map_err(CommandError::BadSender)?;
    let reverse_path = if path.is_empty() {
        None
    } else {
        let mailbox = strip_source_route(path)
            .and_then(Mailbox::parse)
            .map_err(CommandError::BadSender)?;
        Some(mailbox)
    };
    let mut mail = MailFrom {
        reverse_path,
        ..MailFrom::default()
    };
    for (keyword, value) in parse_params(params)? {
        if keyword.eq_ignore_ascii_case("SIZE") {
            const K: &str = "SIZE";
            dup(K, mail.size.is_some())?;
            let v = value_of(K, value)?;
            if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(K, "expected a number"));
            }
            mail.size = Some(v.parse().map_err(|_| invalid(K, "number too large"))?);
        } else if keyword.eq_ignore_ascii_case("BODY") {
            const K: &str = "BODY";
            dup(K, mail.body.is_some())?;
            let v = value_of(K, value)?;
            mail.body = Some(if v.eq_ignore_ascii_case("7BIT") {
                BodyType::SevenBit
            } else if v.eq_ignore_ascii_case("8BITMIME") {
                BodyType::EightBitMime
            } else if v.eq_ignore_ascii_case("BINARYMIME") {
                BodyType::BinaryMime
            } else {
                return Err(invalid(K, "expected 7BIT, 8BITMIME or BINARYMIME"));
            });
        } else if keyword.eq_ignore_ascii_case("SMTPUTF8") {
            const K: &str = "SMTPUTF8";
            dup(K, mail.smtputf8)?;
            if value.is_some() {
                return Err(invalid(K, "takes no value"));
            }
            mail.smtputf8 = true;
        } else if keyword.eq_ignore_ascii_case("REQUIRETLS") {
            // RFC 8689 §3: no value.
            const K: &str = "REQUIRETLS";
            dup(K, mail.require_tls)?;
            if value.is_some() {
                return Err(invalid(K, "takes no value"));
            }
            mail.require_tls = true;
        } else if keyword.eq_ignore_ascii_case("RET") {
            const K: &str = "RET";
            dup(K, mail.ret.is_some())?;
            let v = value_of(K, value)?;
            mail.ret = Some(if v.eq_ignore_ascii_case("FULL") {
                Ret::Full
            } else if v.eq_ignore_ascii_case("HDRS") {
                Ret::Hdrs
            } else {
                return Err(invalid(K, "expected FULL or HDRS"));
            });
        } else if keyword.eq_ignore_ascii_case("ENVID") {
            const K: &str = "ENVID";
            dup(K, mail.envid.is_some())?;
            let v = value_of(K, value)?;
            if v.len() > MAX_ENVID {
                return Err(invalid(K, "longer than 100 characters"));
            }
            mail.envid = Some(xtext_decode(v).ok_or(invalid(K, "bad xtext"))?);
        } else if keyword.eq_ignore_ascii_case("AUTH") {
            const K: &str = "AUTH";
            dup(K, mail.auth.is_some())?;
            let v = value_of(K, value)?;
            mail.auth = Some(xtext_decode(v).ok_or(invalid(K, "bad xtext"))?);
        } else {
            return Err(CommandError::UnknownParameter(keyword.to_ascii_uppercase()));
        }
    }
    Ok(mail)
}

fn parse_rcpt(arg: &str) -> Result<RcptTo, CommandError> {
    let rest =
        strip_keyword(arg, "TO:").ok_or(CommandError::Syntax("expected RCPT TO:<address>"))?;
    let (path, params) = split_path(rest).map_err(CommandError::BadRecipient)?;
    if path.is_empty() {
        return Err(CommandError::BadRecipient("empty address"));
    }
    let forward_path = if path.eq_ignore_ascii_case("postmaster") {
        ForwardPath::Postmaster
    } else {
        ForwardPath::Mailbox(
            strip_source_route(path)
                .and_then(Mailbox::parse)
                .map_err(CommandError::BadRecipient)?,
        )
    };
    let mut rcpt = RcptTo {
        forward_path,
        notify: Vec::new(),
        orcpt: None,
    };
    for (keyword, value) in parse_params(params)? {
        if keyword.eq_ignore_ascii_case("NOTIFY") {
            const K: &str = "NOTIFY";
            dup(K, !rcpt.notify.is_empty())?;
            let v = value_of(K, value)?;
            for word in v.split(',') {
                let n = if word.eq_ignore_ascii_case("NEVER") {
                    Notify::Never
                } else if word.eq_ignore_ascii_case("SUCCESS") {
                    Notify::Success
                } else if word.eq_ignore_ascii_case("FAILURE") {
                    Notify::Failure
                } else if word.eq_ignore_ascii_case("DELAY") {
                    Notify::Delay
                } else {
                    return Err(invalid(K, "expected NEVER or SUCCESS,FAILURE,DELAY"));
                };
                if rcpt.notify.contains(&n) {
                    return Err(invalid(K, "keyword repeated"));
                }
                rcpt.notify.push(n);
            }
            // RFC 3461 §4.1: NEVER must appear by itself.
            if rcpt.notify.contains(&Notify::Never) && rcpt.notify.len() > 1 {
                return Err(invalid(K, "NEVER must appear alone"));
            }
        } else if keyword.eq_ignore_ascii_case("ORCPT") {
            const K: &str = "ORCPT";
            dup(K, rcpt.orcpt.is_some())?;
            let v = value_of(K, value)?;
            if v.len() > MAX_ORCPT {
                return Err(invalid(K, "longer than 500 characters"));
            }
            let (addr_type, xtext) = v
                .split_once(';')
                .ok_or(invalid(K, "expected addr-type;address"))?;
            if addr_type.is_empty() || !addr_type.chars().all(is_atext) {
                return Err(invalid(K, "bad address type"));
            }
            let address = xtext_decode(xtext).ok_or(invalid(K, "bad xtext"))?;
            if address.is_empty() {
                return Err(invalid(K, "empty address"));
            }
            rcpt.orcpt = Some(Orcpt {
                addr_type: addr_type.to_string(),
                address,
            });
        } else {
            return Err(CommandError::UnknownParameter(keyword.to_ascii_uppercase()));
        }
    }
    Ok(rcpt)
}

fn parse_bdat(arg: &str) -> Result<Command, CommandError> {
    let mut words = arg.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .ok_or(CommandError::Syntax("BDAT requires a chunk size"))?;
    if size.len() > 20 || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CommandError::Syntax("BDAT chunk size must be a number"));
    }
    let size = size
        .parse()
        .map_err(|_| CommandError::Syntax("BDAT chunk size too large"))?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(CommandError::Syntax("expected BDAT size [LAST]")),
    };
    if words.next().is_some() {
        return Err(CommandError::Syntax("expected BDAT size [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

fn parse_auth(arg: &str) -> Result<Command, CommandError> {
    let mut words = arg.split(' ').filter(|w| !w.is_empty());
    let mechanism = words
        .next()
        .ok_or(CommandError::Syntax("AUTH requires a mechanism"))?;
    if mechanism.len() > 20
        || !mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CommandError::Syntax("invalid SASL mechanism name"));
    }
    let initial_response = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(CommandError::Syntax(
            "expected AUTH mechanism [initial-response]",
        ));
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial_response,
    })
}

fn invalid(keyword: &'static str, reason: &'static str) -> CommandError {
    CommandError::InvalidParameter { keyword, reason }
}

fn dup(keyword: &'static str, seen: bool) -> Result<(), CommandError> {
    if seen {
        Err(invalid(keyword, "given more than once"))
    } else {
        Ok(())
    }
}

fn value_of<'a>(keyword: &'static str, value: Option<&'a str>) -> Result<&'a str, CommandError> {
    value.ok_or(invalid(keyword, "value required"))
}

/// Split `<path> params` into the text between the brackets and the rest.
/// A `>` inside a quoted local part does not end the path.
fn split_path(s: &str) -> Result<(&str, &str), &'static str> {
    let inner = s
        .strip_prefix('<')
        .ok_or("address must be enclosed in <>")?;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == '>' && !quoted {
            let rest = &inner[i + 1..];
            if !rest.is_empty() && !rest.starts_with(' ') {
                return Err("unexpected text after >");
            }
            return Ok((&inner[..i], rest));
        }
    }
    Err("missing closing >")
}

/// Drop an RFC 5321 §4.1.2 source route (`@a.example,@b.example:`), which
/// servers must accept and may ignore (§3.3, Appendix C).
fn strip_source_route(path: &str) -> Result<&str, &'static str> {
    if !path.starts_with('@') {
        return Ok(path);
    }
    let (route, mailbox) = path.split_once(':').ok_or("bad source route")?;
    for hop in route.split(',') {
        let domain = hop.strip_prefix('@').ok_or("bad source route")?;
        validate_domain_or_literal(domain).map_err(|_| "bad source route")?;
    }
    Ok(mailbox)
}

/// `atext` (RFC 5322 §3.2.3), widened to UTF-8 by RFC 6531 §3.3.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Split off the local part (dot-string or quoted-string) and return it with
/// the remainder, which should start with `@`.
fn split_local_part(s: &str) -> Result<(&str, &str), &'static str> {
    if let Some(inner) = s.strip_prefix('"') {
        // Quoted-string: qtextSMTP = %d32-33 / %d35-91 / %d93-126 (+ UTF-8),
        // quoted-pairSMTP = "\" %d32-126 (RFC 5321 §4.1.2).
        let mut escaped = false;
        for (i, c) in inner.char_indices() {
            if escaped {
                if !(' '..='~').contains(&c) {
                    return Err("bad quoted-pair in local part");
                }
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                let end = i + 2; // opening quote + content + closing quote
                if end > MAX_LOCAL_PART {
                    return Err("local part too long");
                }
                return Ok((&s[..end], &s[end..]));
            } else if c.is_ascii_control() {
                return Err("control character in local part");
            }
        }
        return Err("unterminated quoted local part");
    }
    let end = s.find('@').ok_or("missing @domain")?;
    let local = &s[..end];
    if local.is_empty() {
        return Err("empty local part");
    }
    if local.len() > MAX_LOCAL_PART {
        return Err("local part too long");
    }
    // Dot-string = Atom *("." Atom). We tolerate leading, trailing and doubled
    // dots, which real senders use and which are harmless to carry.
    if !local.chars().all(|c| c == '.' || is_atext(c)) {
        return Err("invalid character in local part");
    }
    Ok((local, &s[end..]))
}

fn validate_domain_or_literal(d: &str) -> Result<(), &'static str> {
    if let Some(lit) = d.strip_prefix('[') {
        let lit = lit
            .strip_suffix(']')
            .ok_or("unterminated address literal")?;
        return validate_address_literal(lit);
    }
    validate_domain(d)
}

/// `Domain = sub-domain *("." sub-domain)`, `sub-domain = Let-dig [Ldh-str]`
/// (RFC 5321 §4.1.2), with U-labels allowed by RFC 6531 §3.3.
pub fn validate_domain(d: &str) -> Result<(), &'static str> {
    if d.is_empty() {
        return Err("empty domain");
    }
    if d.len() > MAX_DOMAIN {
        return Err("domain too long");
    }
    for label in d.split('.') {
        if label.is_empty() {
            return Err("empty domain label");
        }
        if label.len() > 63 {
            return Err("domain label too long");
        }
        let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii();
        if !label.chars().all(ok_char) {
            return Err("invalid character in domain");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("domain label starts or ends with -");
        }
    }
    Ok(())
}

/// The inside of `[...]`: IPv4, `IPv6:...`, or a General-address-literal
/// `tag:dcontent` (RFC 5321 §4.1.3).
fn validate_address_literal(lit: &str) -> Result<(), &'static str> {
    if lit.parse::<Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if let Some(tag) = lit.get(..5)
        && tag.eq_ignore_ascii_case("IPv6:")
    {
        return lit[5..]
            .parse::<Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| "invalid IPv6 address literal");
    }
    let (tag, content) = lit.split_once(':').ok_or("invalid address literal")?;
    let tag_ok = !tag.is_empty()
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !tag.ends_with('-');
    // dcontent = %d33-90 / %d94-126
    let content_ok =
        !content.is_empty() && content.bytes().all(|b| matches!(b, 33..=90 | 94..=126));
    if tag_ok && content_ok {
        Ok(())
    } else {
        Err("invalid address literal")
    }
}

/// Split ESMTP parameters `keyword[=value]` separated by spaces
/// (RFC 5321 §4.1.2 `Mail-parameters`).
fn parse_params(s: &str) -> Result<Vec<(&str, Option<&str>)>, CommandError> {
    let mut out = Vec::new();
    for p in s.split(' ').filter(|p| !p.is_empty()) {
        let (k, v) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
        let k_ok = k.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !k_ok {
            return Err(CommandError::Syntax("malformed parameter"));
        }
        if let Some(v) = v {
            // esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 (RFC 6531 §3.3).
            if v.is_empty() || v.contains('=') {
                return Err(CommandError::Syntax("malformed parameter value"));
            }
        }
        out.push((k, v));
    }
    Ok(out)
}

/// Decode RFC 3461 §4 xtext: `+HH` is a hex-encoded octet; other characters
/// must be printable ASCII except `+` and `=`. UTF-8 passes through
/// (RFC 6533 utf-8-addr-xtext). Returns `None` when malformed.
pub fn xtext_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'+' => {
                let hex = s.get(i + 1..i + 3)?;
                if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'=' => return None,
            33..=126 | 0x80..=0xff => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// Encode text as RFC 3461 §4 xtext (for relaying ENVID/ORCPT onward).
pub fn xtext_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, CommandError> {
        parse(s.as_bytes())
    }

    fn mailbox(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local_part: local.into(),
            domain: domain.into(),
        }
    }

    fn mail(s: &str) -> MailFrom {
        match p(s) {
            Ok(Command::Mail(m)) => m,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn rcpt(s: &str) -> RcptTo {
        match p(s) {
            Ok(Command::Rcpt(r)) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn simple_verbs_are_case_insensitive() {
        assert_eq!(p("DATA"), Ok(Command::Data));
        assert_eq!(p("data"), Ok(Command::Data));
        assert_eq!(p("RsEt"), Ok(Command::Rset));
        assert_eq!(p("QUIT"), Ok(Command::Quit));
        assert_eq!(p("QUIT "), Ok(Command::Quit));
        assert_eq!(p("NOOP"), Ok(Command::Noop));
        assert_eq!(p("NOOP whatever"), Ok(Command::Noop));
        assert_eq!(p("STARTTLS"), Ok(Command::StartTls));
        assert_eq!(p("HELP"), Ok(Command::Help(None)));
        assert_eq!(p("HELP MAIL"), Ok(Command::Help(Some("MAIL".into()))));
        assert_eq!(p("VRFY bob"), Ok(Command::Vrfy("bob".into())));
        assert_eq!(p("EXPN list"), Ok(Command::Expn("list".into())));
    }

    #[test]
    fn unknown_and_malformed_verbs() {
        assert_eq!(p(""), Err(CommandError::Unrecognized));
        assert_eq!(p("FOO"), Err(CommandError::Unrecognized));
        assert_eq!(p("DATAX"), Err(CommandError::Unrecognized));
        assert_eq!(p(" DATA"), Err(CommandError::Unrecognized));
        assert_eq!(parse(b"\xff\xfe"), Err(CommandError::Unrecognized));
        assert!(matches!(p("DATA now"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("QUIT now"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("VRFY"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse(b"NOOP \xff"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse(b"NOOP a\0b"), Err(CommandError::Syntax(_))));
        assert!(matches!(parse(b"NOOP a\rb"), Err(CommandError::Syntax(_))));
    }

    #[test]
    fn ehlo_and_helo() {
        assert_eq!(
            p("EHLO client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(
            p("ehlo [192.0.2.1]"),
            Ok(Command::Ehlo("[192.0.2.1]".into()))
        );
        assert_eq!(
            p("EHLO [IPv6:2001:db8::1]"),
            Ok(Command::Ehlo("[IPv6:2001:db8::1]".into()))
        );
        assert_eq!(p("HELO host extra words"), Ok(Command::Helo("host".into())));
        assert_eq!(
            p("EHLO bücher.example"),
            Ok(Command::Ehlo("bücher.example".into()))
        );
        assert!(matches!(p("EHLO"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("EHLO   "), Err(CommandError::Syntax(_))));
        assert!(matches!(p("EHLO a(b)"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("EHLO a;b"), Err(CommandError::Syntax(_))));
        let long = format!("EHLO {}", "a".repeat(300));
        assert!(matches!(p(&long), Err(CommandError::Syntax(_))));
    }

    #[test]
    fn mail_from_paths() {
        assert_eq!(
            mail("MAIL FROM:<a@b.example>").reverse_path,
            Some(mailbox("a", "b.example"))
        );
        assert_eq!(
            mail("mail from:<a@b.example>").reverse_path,
            Some(mailbox("a", "b.example"))
        );
        // Lenient: a space after the colon.
        assert_eq!(
            mail("MAIL FROM: <a@b.example>").reverse_path,
            Some(mailbox("a", "b.example"))
        );
        // Null reverse-path.
        let m = mail("MAIL FROM:<>");
        assert_eq!(m.reverse_path, None);
        assert_eq!(m.sender(), "");
        assert!(!m.has_parameters());
        // Source route is accepted and dropped (RFC 5321 §4.1.2, Appendix C).
        assert_eq!(
            mail("MAIL FROM:<@relay.example,@r2.example:a@b.example>").reverse_path,
            Some(mailbox("a", "b.example"))
        );
        // Quoted local parts keep their quotes; '>' and '@' inside quotes are content.
        assert_eq!(
            mail(r#"MAIL FROM:<"a b>@c"@d.example>"#).reverse_path,
            Some(mailbox(r#""a b>@c""#, "d.example"))
        );
        assert_eq!(
            mail(r#"MAIL FROM:<"a\"b"@d.example>"#).reverse_path,
            Some(mailbox(r#""a\"b""#, "d.example"))
        );
        // Address literals.
        assert_eq!(
            mail("MAIL FROM:<a@[192.0.2.1]>").reverse_path,
            Some(mailbox("a", "[192.0.2.1]"))
        );
        assert_eq!(
            mail("MAIL FROM:<a@[IPv6:::1]>").reverse_path,
            Some(mailbox("a", "[IPv6:::1]"))
        );
        // UTF-8 (RFC 6531).
        let m = mail("MAIL FROM:<用户@例子.广告> SMTPUTF8");
        assert!(m.smtputf8);
        assert!(!m.reverse_path.as_ref().is_some_and(Mailbox::is_ascii));
        assert_eq!(m.sender(), "用户@例子.广告");
    }

    #[test]
    fn mail_from_bad_paths() {
        for bad in [
            "MAIL FROM:a@b.example",
            "MAIL FROM:<a@b.example",
            "MAIL FROM:<a@b.example>x",
            "MAIL FROM:<a>",
            "MAIL FROM:<@b.example>",
            "MAIL FROM:<a@>",
            "MAIL FROM:<a@-b.example>",
            "MAIL FROM:<a@b-.example>",
            "MAIL FROM:<a@b..example>",
            "MAIL FROM:<a@b.example.>",
            "MAIL FROM:<a@b_c.example>",
            "MAIL FROM:<a b@c.example>",
            "MAIL FROM:<a(b@c.example>",
            "MAIL FROM:<\"a@c.example>",
            "MAIL FROM:<a@[300.1.1.1]>",
            "MAIL FROM:<a@[IPv6:zz]>",
            "MAIL FROM:<a@[1.2.3.4>",
            "MAIL FROM:<postmaster>",
            "MAIL FROM:<@bad_domain:a@b.example>",
        ] {
            assert!(
                matches!(p(bad), Err(CommandError::BadSender(_))),
                "{bad}: {:?}",
                p(bad)
            );
        }
        assert!(matches!(p("MAIL TO:<a@b>"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("MAIL"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("MAIL FRO"), Err(CommandError::Syntax(_))));
        let long = format!("MAIL FROM:<{}@b.example>", "a".repeat(300));
        assert!(matches!(p(&long), Err(CommandError::BadSender(_))));
        let long = format!("MAIL FROM:<a@{}.example>", "b".repeat(64));
        assert!(matches!(p(&long), Err(CommandError::BadSender(_))));
    }

    #[test]
    fn mail_from_parameters() {
        let m =
            mail("MAIL FROM:<a@b.example> SIZE=12345 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B1");
        assert_eq!(m.size, Some(12345));
        assert_eq!(m.body, Some(BodyType::EightBitMime));
        assert!(m.smtputf8);
        assert_eq!(m.ret, Some(Ret::Hdrs));
        assert_eq!(m.envid.as_deref(), Some("QQ+1"));
        assert!(m.has_parameters());
        let m = mail("MAIL FROM:<> size=0 body=7bit ret=full  AUTH=<>");
        assert_eq!(m.size, Some(0));
        assert_eq!(m.body, Some(BodyType::SevenBit));
        assert_eq!(m.ret, Some(Ret::Full));
        assert_eq!(m.auth.as_deref(), Some("<>"));
        assert_eq!(
            mail("MAIL FROM:<a@b> BODY=BINARYMIME").body,
            Some(BodyType::BinaryMime)
        );
    }

    #[test]
    fn mail_from_requiretls() {
        let m = mail("MAIL FROM:<a@b.example> requiretls");
        assert!(m.require_tls);
        assert!(m.has_parameters());
        assert!(!mail("MAIL FROM:<a@b.example>").require_tls);
    }

    #[test]
    fn mail_from_bad_parameters() {
        assert_eq!(
            p("MAIL FROM:<a@b> X-FOO=1"),
            Err(CommandError::UnknownParameter("X-FOO".into()))
        );
        assert_eq!(
            p("MAIL FROM:<a@b> xyz"),
            Err(CommandError::UnknownParameter("XYZ".into()))
        );
        for bad in [
            "MAIL FROM:<a@b> SIZE",
            "MAIL FROM:<a@b> SIZE=",
            "MAIL FROM:<a@b> SIZE=-1",
            "MAIL FROM:<a@b> SIZE=1x",
            "MAIL FROM:<a@b> SIZE=99999999999999999999",
            "MAIL FROM:<a@b> SIZE=1 SIZE=2",
            "MAIL FROM:<a@b> BODY=9BIT",
            "MAIL FROM:<a@b> SMTPUTF8=yes",
            "MAIL FROM:<a@b> REQUIRETLS=yes",
            "MAIL FROM:<a@b> REQUIRETLS REQUIRETLS",
            "MAIL FROM:<a@b> RET=ALL",
            "MAIL FROM:<a@b> ENVID=a+zz",
            "MAIL FROM:<a@b> ENVID=a+4",
        ] {
            assert!(
                matches!(
                    p(bad),
                    Err(CommandError::InvalidParameter { .. }) | Err(CommandError::Syntax(_))
                ),
                "{bad}: {:?}",
                p(bad)
            );
        }
        let long = format!("MAIL FROM:<a@b> ENVID={}", "x".repeat(101));
        assert!(matches!(
            p(&long),
            Err(CommandError::InvalidParameter {
                keyword: "ENVID",
                ..
            })
        ));
        assert!(matches!(
            p("MAIL FROM:<a@b> =x"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            p("MAIL FROM:<a@b> -A"),
            Err(CommandError::Syntax(_))
        ));
        assert!(matches!(
            p("MAIL FROM:<a@b> A=b=c"),
            Err(CommandError::Syntax(_))
        ));
    }

    #[test]
    fn rcpt_to() {
        let r = rcpt("RCPT TO:<bob@example.com>");
        assert_eq!(
            r.forward_path,
            ForwardPath::Mailbox(mailbox("bob", "example.com"))
        );
        assert!(!r.has_parameters());
        assert_eq!(
            rcpt("RCPT TO:<Postmaster>").forward_path,
            ForwardPath::Postmaster
        );
        assert_eq!(
            rcpt("rcpt to:<postmaster>").forward_path,
            ForwardPath::Postmaster
        );
        assert_eq!(
            rcpt("RCPT TO:<postmaster@example.com>").forward_path,
            ForwardPath::Mailbox(mailbox("postmaster", "example.com"))
        );
        let r =
            rcpt("RCPT TO:<bob@example.com> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;bob+40example.com");
        assert_eq!(r.notify, vec![Notify::Success, Notify::Delay]);
        let orcpt = r.orcpt.clone().expect("orcpt");
        assert_eq!(orcpt.addr_type, "rfc822");
        assert_eq!(orcpt.address, "bob@example.com");
        assert_eq!(orcpt.to_string(), "rfc822;bob@example.com");
        assert!(r.has_parameters());
        assert_eq!(
            rcpt("RCPT TO:<b@c> NOTIFY=never").notify,
            vec![Notify::Never]
        );
    }

    #[test]
    fn rcpt_to_errors() {
        assert!(matches!(
            p("RCPT TO:<>"),
            Err(CommandError::BadRecipient(_))
        ));
        assert!(matches!(
            p("RCPT TO:bob@example.com"),
            Err(CommandError::BadRecipient(_))
        ));
        assert!(matches!(
            p("RCPT TO:<bob>"),
            Err(CommandError::BadRecipient(_))
        ));
        assert!(matches!(
            p("RCPT FROM:<bob@x>"),
            Err(CommandError::Syntax(_))
        ));
        assert_eq!(
            p("RCPT TO:<b@c> SIZE=1"),
            Err(CommandError::UnknownParameter("SIZE".into()))
        );
        for bad in [
            "RCPT TO:<b@c> NOTIFY=NEVER,SUCCESS",
            "RCPT TO:<b@c> NOTIFY=SUCCESS,SUCCESS",
            "RCPT TO:<b@c> NOTIFY=SOMETIMES",
            "RCPT TO:<b@c> NOTIFY=",
            "RCPT TO:<b@c> NOTIFY=SUCCESS NOTIFY=DELAY",
            "RCPT TO:<b@c> ORCPT=rfc822",
            "RCPT TO:<b@c> ORCPT=;b@c",
            "RCPT TO:<b@c> ORCPT=rfc822;",
            "RCPT TO:<b@c> ORCPT=rfc822;a+ZZ",
            "RCPT TO:<b@c> ORCPT=r(f;a",
        ] {
            assert!(
                matches!(
                    p(bad),
                    Err(CommandError::InvalidParameter { .. }) | Err(CommandError::Syntax(_))
                ),
                "{bad}: {:?}",
                p(bad)
            );
        }
    }

    #[test]
    fn bdat() {
        assert_eq!(
            p("BDAT 100"),
            Ok(Command::Bdat {
                size: 100,
                last: false
            })
        );
        assert_eq!(
            p("BDAT 0 LAST"),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert_eq!(
            p("bdat 7 last"),
            Ok(Command::Bdat {
                size: 7,
                last: true
            })
        );
        for bad in [
            "BDAT",
            "BDAT x",
            "BDAT -1",
            "BDAT 1 FIRST",
            "BDAT 1 LAST x",
            "BDAT 99999999999999999999",
        ] {
            assert!(matches!(p(bad), Err(CommandError::Syntax(_))), "{bad}");
        }
    }

    #[test]
    fn auth() {
        assert_eq!(
            p("AUTH plain AGFAYg=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some("AGFAYg==".into())
            })
        );
        assert_eq!(
            p("AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial_response: None
            })
        );
        assert!(matches!(p("AUTH"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("AUTH PL/AIN"), Err(CommandError::Syntax(_))));
        assert!(matches!(p("AUTH PLAIN a b"), Err(CommandError::Syntax(_))));
    }

    #[test]
    fn errors_map_to_replies() {
        let code = |e: CommandError| {
            let r = e.reply();
            (
                r.code,
                r.enhanced.map(|e| e.to_string()).unwrap_or_default(),
            )
        };
        assert_eq!(code(CommandError::Unrecognized), (500, "5.5.2".into()));
        assert_eq!(code(CommandError::Syntax("x")), (501, "5.5.4".into()));
        assert_eq!(code(CommandError::BadSender("x")), (501, "5.1.7".into()));
        assert_eq!(code(CommandError::BadRecipient("x")), (501, "5.1.3".into()));
        assert_eq!(
            code(CommandError::UnknownParameter("X".into())),
            (555, "5.5.4".into())
        );
        assert_eq!(code(invalid("SIZE", "x")), (501, "5.5.4".into()));
    }

    #[test]
    fn xtext_round_trip() {
        assert_eq!(xtext_decode("abc+2B+3D").as_deref(), Some("abc+="));
        assert_eq!(xtext_decode(""), Some(String::new()));
        assert_eq!(xtext_decode("+"), None);
        assert_eq!(xtext_decode("+4"), None);
        assert_eq!(xtext_decode("a=b"), None);
        assert_eq!(xtext_decode("a b"), None);
        assert_eq!(xtext_decode("+C3"), None); // not UTF-8 on its own
        for s in ["plain", "a+b=c d", "ünï", "\u{1}"] {
            assert_eq!(xtext_decode(&xtext_encode(s)).as_deref(), Some(s));
        }
    }

    #[test]
    fn never_panics_on_prefixes_of_valid_commands() {
        let lines = [
            r#"MAIL FROM:<@a.example,@b.example:"q\"x"@[IPv6:2001:db8::1]> SIZE=1 BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=a+2B AUTH=<>"#,
            "RCPT TO:<用户@例子.广告> NOTIFY=SUCCESS,FAILURE ORCPT=utf-8;x+2By",
            "BDAT 123 LAST",
            "AUTH PLAIN =",
            "EHLO [tag:content]",
        ];
        for line in lines {
            let b = line.as_bytes();
            for i in 0..=b.len() {
                let _ = parse(&b[..i]);
                let _ = parse(&b[i..]);
            }
        }
    }
}
