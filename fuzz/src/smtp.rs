//! SMTP: the command parser, the whole session (DATA and BDAT framing
//! included) and the DATA reader.

use tern_smtp::client::encode_data;
use tern_smtp::command::{self, BodyType, Command, ForwardPath, MailFrom, RcptTo, Ret};
use tern_smtp::{
    Action, AuthDecision, DataOutcome, DataReader, MessageOutcome, RcptDecision, Reply, Session,
    SessionConfig, codes,
};

use crate::{Rng, assert_crlf_lines};

/// One command line: no panic, an error's reply is a 5xx, and a parsed
/// MAIL or RCPT renders back to a line that parses to the same command.
pub fn command(data: &[u8]) {
    let cut = Rng::from_input(data).below(data.len() + 1);
    for line in [data, &data[..cut]] {
        match command::parse(line) {
            Ok(Command::Mail(m)) => {
                let again = render_mail(&m);
                assert_eq!(
                    command::parse(again.as_bytes()),
                    Ok(Command::Mail(m)),
                    "MAIL round trip via {again:?}"
                );
            }
            Ok(Command::Rcpt(r)) => {
                let again = render_rcpt(&r);
                assert_eq!(
                    command::parse(again.as_bytes()),
                    Ok(Command::Rcpt(r)),
                    "RCPT round trip via {again:?}"
                );
            }
            Ok(_) => {}
            Err(e) => {
                let reply = e.reply();
                assert!((500..=555).contains(&reply.code), "{reply}");
                assert_crlf_lines(&reply.to_bytes(), "command error");
            }
        }
    }
    // xtext (ENVID, ORCPT) round trips any text.
    let text = String::from_utf8_lossy(data);
    let encoded = command::xtext_encode(&text);
    assert_eq!(command::xtext_decode(&encoded).as_deref(), Some(&*text));
}

fn render_mail(m: &MailFrom) -> String {
    let mut s = format!("MAIL FROM:<{}>", m.sender());
    if let Some(n) = m.size {
        s += &format!(" SIZE={n}");
    }
    if let Some(b) = m.body {
        s += match b {
            BodyType::SevenBit => " BODY=7BIT",
            BodyType::EightBitMime => " BODY=8BITMIME",
            BodyType::BinaryMime => " BODY=BINARYMIME",
        };
    }
    if m.smtputf8 {
        s += " SMTPUTF8";
    }
    if let Some(r) = m.ret {
        s += match r {
            Ret::Full => " RET=FULL",
            Ret::Hdrs => " RET=HDRS",
        };
    }
    if let Some(e) = &m.envid {
        s += &format!(" ENVID={}", command::xtext_encode(e));
    }
    if let Some(a) = &m.auth {
        if a == "<>" {
            s += " AUTH=<>";
        } else {
            s += &format!(" AUTH={}", command::xtext_encode(a));
        }
    }
    s
}

fn render_rcpt(r: &RcptTo) -> String {
    let mut s = match &r.forward_path {
        ForwardPath::Postmaster => "RCPT TO:<Postmaster>".to_string(),
        ForwardPath::Mailbox(m) => format!("RCPT TO:<{m}>"),
    };
    if !r.notify.is_empty() {
        let k: Vec<&str> = r.notify.iter().map(|n| n.as_str()).collect();
        s += &format!(" NOTIFY={}", k.join(","));
    }
    if let Some(o) = &r.orcpt {
        s += &format!(
            " ORCPT={};{}",
            o.addr_type,
            command::xtext_encode(&o.address)
        );
    }
    s
}

/// A session from its greeting to the end of the input. The first two
/// octets choose the configuration and how requests are answered; the
/// rest is the client's input, fed in pieces. Every reply is well-formed,
/// no stored message exceeds the size limit, and the session always makes
/// progress.
pub fn session(data: &[u8]) {
    let (head, input) = data.split_at(data.len().min(2));
    let a = head.first().copied().unwrap_or(0);
    let b = usize::from(head.get(1).copied().unwrap_or(0));
    let mut cfg = SessionConfig::new("mx.example");
    cfg.max_message_size = 64 + b * 16;
    cfg.max_command_line = 64 + (b % 16) * 64;
    cfg.max_data_line = 16 + (b % 8) * 128;
    cfg.max_recipients = 1 + b % 5;
    cfg.max_errors = 1 + usize::from(a >> 5) * 4;
    cfg.starttls = a & 1 != 0;
    cfg.auth = a & 2 != 0;
    cfg.auth_plaintext = a & 4 != 0;
    cfg.require_auth = a & 8 != 0;
    cfg.require_tls = a & 16 != 0;
    let max_size = cfg.max_message_size;
    let mut session = Session::new(cfg, a & 32 != 0);
    let mut rng = Rng::from_input(data);
    let mut pieces = rng.pieces(input).into_iter();
    // Each poll consumes input, answers a request or asks for input; a
    // reply per input octet is far more than a session ever sends.
    let mut budget = 64 + 4 * input.len();
    loop {
        budget = budget
            .checked_sub(1)
            .expect("the session makes no progress");
        match session.poll() {
            Action::Reply(r) => {
                assert!((200..600).contains(&r.code), "{r}");
                assert_crlf_lines(&r.to_bytes(), "session reply");
            }
            Action::NeedInput => match pieces.next() {
                Some(p) => session.feed(p),
                None => return,
            },
            Action::CheckRecipient(_) => session.recipient_checked(if rng.below(4) == 0 {
                RcptDecision::Reject(Reply::new(550, codes::NO_SUCH_USER, "no such user"))
            } else {
                RcptDecision::Accept
            }),
            Action::Deliver(m) => {
                assert!(m.body.len() <= max_size, "a message over the size limit");
                session.message_stored(MessageOutcome::Queued { id: "X".into() });
            }
            Action::Authenticate(c) => session.auth_checked(if rng.below(2) == 0 {
                AuthDecision::Accept { user: c.username }
            } else {
                AuthDecision::Reject(Reply::new(535, codes::AUTH_INVALID, "no"))
            }),
            Action::StartTls => session.tls_established(),
            Action::Close => {
                assert!(session.is_closed());
                return;
            }
        }
    }
}

/// The DATA reader over the input in pieces: it never consumes more than
/// it was given, and a body it completes, encoded again for DATA, reads
/// back as the same body (RFC 5321 §4.5.2 stuffing round trip).
pub fn data(input: &[u8]) {
    let mut rng = Rng::from_input(input);
    let Some(body) = read_data(input, &mut rng) else {
        return;
    };
    let wire = encode_data(&body);
    assert_eq!(
        read_data(&wire, &mut rng).as_deref(),
        Some(&body[..]),
        "DATA round trip via {wire:?}"
    );
}

fn read_data(input: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let mut reader = DataReader::new(1 << 20, 1 << 16);
    let mut used = 0;
    while used < input.len() {
        let n = 1 + rng.below(input.len() - used);
        let (u, outcome) = reader.feed(&input[used..used + n]);
        assert!(u <= n, "the reader consumed more than it was given");
        used += u;
        match outcome {
            Some(DataOutcome::Complete(body)) => {
                for (i, &b) in body.iter().enumerate() {
                    if b == b'\n' {
                        assert!(i > 0 && body[i - 1] == b'\r', "bare LF stored");
                    }
                    if b == b'\r' {
                        assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR stored");
                    }
                }
                return Some(body.to_vec());
            }
            Some(_) => return None,
            None if u < n => panic!("the reader stopped short without an outcome"),
            None => {}
        }
    }
    None
}
