use super::*;
use crate::command::{Mailbox, Notify};

/// Drives a session the way an I/O layer would, answering recipient checks
/// and deliveries from fixed policies, and records everything.
struct Driver {
    s: Session,
    /// Every reply, in order, rendered.
    wire: String,
    delivered: Vec<Message>,
    checked: Vec<RcptTo>,
    closed: bool,
    starttls: usize,
    /// Reject recipients whose local part is "unknown".
    store_fails: bool,
}

impl Driver {
    fn new(config: SessionConfig) -> Self {
        Driver::over(Session::new(config, false))
    }

    /// A driver for `s` (e.g. a session that starts in implicit TLS).
    fn over(s: Session) -> Self {
        let mut d = Driver {
            s,
            wire: String::new(),
            delivered: Vec::new(),
            checked: Vec::new(),
            closed: false,
            starttls: 0,
            store_fails: false,
        };
        d.pump();
        d
    }

    fn default() -> Self {
        Driver::new(SessionConfig::new("mx.example"))
    }

    /// Feed `input` and run until the session needs input or closes. Returns
    /// the replies produced by this input.
    fn send(&mut self, input: &[u8]) -> String {
        let start = self.wire.len();
        self.s.feed(input);
        self.pump();
        self.wire[start..].to_string()
    }

    fn send_bytes_one_by_one(&mut self, input: &[u8]) -> String {
        let start = self.wire.len();
        for b in input {
            self.s.feed(std::slice::from_ref(b));
            self.pump();
        }
        self.wire[start..].to_string()
    }

    fn pump(&mut self) {
        loop {
            match self.s.poll() {
                Action::Reply(r) => {
                    self.wire
                        .push_str(&String::from_utf8(r.to_bytes()).expect("utf-8 reply"));
                }
                Action::NeedInput => return,
                Action::CheckRecipient(r) => {
                    let unknown = matches!(&r.forward_path, ForwardPath::Mailbox(m) if m.local_part == "unknown");
                    self.checked.push(r);
                    self.s.recipient_checked(if unknown {
                        RcptDecision::Reject(Reply::new(550, codes::NO_SUCH_USER, "No such user"))
                    } else {
                        RcptDecision::Accept
                    });
                }
                Action::Deliver(m) => {
                    self.delivered.push(m);
                    self.s.message_stored(if self.store_fails {
                        MessageOutcome::Failed(Reply::new(
                            451,
                            codes::TEMP_SYSTEM,
                            "Try again later",
                        ))
                    } else {
                        MessageOutcome::Queued {
                            id: format!("ID{}", self.delivered.len()),
                        }
                    });
                }
                Action::StartTls => {
                    self.starttls += 1;
                    self.s.tls_established();
                }
                Action::Authenticate(c) => {
                    self.s.auth_checked(if c.password == "secret" {
                        AuthDecision::Accept { user: c.username }
                    } else {
                        AuthDecision::Reject(Reply::new(
                            535,
                            codes::AUTH_INVALID,
                            "Authentication credentials invalid",
                        ))
                    });
                }
                Action::Close => {
                    self.closed = true;
                    return;
                }
            }
        }
    }
}

/// The reply codes (with enhanced codes) in `wire`, one per reply line that ends a reply.
fn codes_of(wire: &str) -> Vec<String> {
    wire.split("\r\n")
        .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let code = parts.next().unwrap_or("");
            match parts.next() {
                Some(e) if e.contains('.') && e.as_bytes()[0].is_ascii_digit() => {
                    format!("{code} {e}")
                }
                _ => code.to_string(),
            }
        })
        .collect()
}

const EHLO: &[u8] = b"EHLO client.example\r\n";

#[test]
fn greeting_then_ehlo_advertises_extensions() {
    let mut d = Driver::default();
    assert_eq!(d.wire, "220 mx.example ESMTP ready\r\n");
    let r = d.send(EHLO);
    assert_eq!(
        r,
        "250-mx.example Hello client.example\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n\
         250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 DSN\r\n"
    );
    assert_eq!(d.s.helo(), Some("client.example"));
}

#[test]
fn full_transaction_with_data() {
    let mut d = Driver::default();
    d.send(EHLO);
    let r = d.send(b"MAIL FROM:<alice@a.example> SIZE=100 BODY=8BITMIME\r\n");
    assert_eq!(codes_of(&r), ["250 2.1.0"]);
    assert!(d.s.in_transaction());
    assert!(!d.s.is_idle());
    let r = d.send(b"RCPT TO:<bob@b.example> NOTIFY=FAILURE\r\n");
    assert_eq!(codes_of(&r), ["250 2.1.5"]);
    assert_eq!(d.s.rcpt_count(), 1);
    let r = d.send(b"DATA\r\n");
    assert_eq!(r, "354 End data with <CR><LF>.<CR><LF>\r\n");
    let r = d.send(b"Subject: x\r\n\r\n..dot\r\n.\r\n");
    assert_eq!(r, "250 2.0.0 Ok: queued as ID1\r\n");
    assert!(!d.s.in_transaction());
    assert!(d.s.is_idle());
    let m = &d.delivered[0];
    assert_eq!(m.body.as_ref(), b"Subject: x\r\n\r\n.dot\r\n");
    assert_eq!(m.helo, "client.example");
    assert_eq!(m.mail_from.sender(), "alice@a.example");
    assert!(m.eight_bit());
    assert_eq!(m.protocol(), "ESMTP");
    assert_eq!(m.rcpts.len(), 1);
    assert_eq!(m.rcpts[0].notify, vec![Notify::Failure]);
    let r = d.send(b"QUIT\r\n");
    assert_eq!(r, "221 2.0.0 mx.example closing connection\r\n");
    assert!(d.closed);
    assert!(d.s.is_closed());
}

#[test]
fn pipelined_transaction_in_one_packet() {
    let mut d = Driver::default();
    let r = d.send(
        b"EHLO c\r\nMAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nRCPT TO:<unknown@b.example>\r\n\
          RCPT TO:<c@b.example>\r\nDATA\r\nhello\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<d@b.example>\r\nDATA\r\n\
          second\r\n.\r\nQUIT\r\n",
    );
    assert_eq!(
        codes_of(&r),
        [
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "550 5.1.1",
            "250 2.1.5",
            "354",
            "250 2.0.0",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "250 2.0.0",
            "221 2.0.0"
        ]
    );
    assert_eq!(d.delivered.len(), 2);
    assert_eq!(d.delivered[0].rcpts.len(), 2);
    assert_eq!(d.delivered[0].body.as_ref(), b"hello\r\n");
    assert_eq!(d.delivered[1].mail_from.reverse_path, None);
    assert_eq!(d.delivered[1].body.as_ref(), b"second\r\n");
    assert!(d.closed);
}

#[test]
fn byte_at_a_time_input_gives_the_same_result() {
    let script: &[u8] =
        b"EHLO c\r\nMAIL FROM:<a@a.example>\r\nRCPT TO:<b@b.example>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n";
    let mut whole = Driver::default();
    let a = whole.send(script);
    let mut bytes = Driver::default();
    let b = bytes.send_bytes_one_by_one(script);
    assert_eq!(a, b);
    assert_eq!(whole.delivered, bytes.delivered);
}

#[test]
fn sequencing_errors_are_503() {
    let mut d = Driver::default();
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example>\r\n")),
        ["503 5.5.1"]
    );
    assert_eq!(
        codes_of(&d.send(b"RCPT TO:<a@b.example>\r\n")),
        ["503 5.5.1"]
    );
    assert_eq!(codes_of(&d.send(b"DATA\r\n")), ["503 5.5.1"]);
    d.send(EHLO);
    assert_eq!(
        codes_of(&d.send(b"RCPT TO:<a@b.example>\r\n")),
        ["503 5.5.1"]
    );
    assert_eq!(codes_of(&d.send(b"DATA\r\n")), ["503 5.5.1"]);
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example>\r\n")),
        ["250 2.1.0"]
    );
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example>\r\n")),
        ["503 5.5.1"]
    );
    assert_eq!(codes_of(&d.send(b"DATA\r\n")), ["503 5.5.1"]);
    // All recipients refused: 554 (RFC 5321 §3.3).
    assert_eq!(
        codes_of(&d.send(b"RCPT TO:<unknown@b.example>\r\n")),
        ["550 5.1.1"]
    );
    assert_eq!(codes_of(&d.send(b"DATA\r\n")), ["554 5.5.1"]);
    assert!(d.delivered.is_empty());
}

#[test]
fn rset_and_ehlo_reset_the_transaction() {
    let mut d = Driver::default();
    d.send(EHLO);
    d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
    assert_eq!(codes_of(&d.send(b"RSET\r\n")), ["250 2.0.0"]);
    assert!(!d.s.in_transaction());
    assert_eq!(
        codes_of(&d.send(b"RCPT TO:<c@d.example>\r\n")),
        ["503 5.5.1"]
    );
    d.send(b"MAIL FROM:<a@b.example>\r\n");
    assert!(d.s.in_transaction());
    d.send(b"EHLO again\r\n");
    assert!(!d.s.in_transaction());
    assert_eq!(d.s.helo(), Some("again"));
    // RSET before EHLO is fine too.
    let mut d = Driver::default();
    assert_eq!(codes_of(&d.send(b"RSET\r\n")), ["250 2.0.0"]);
}

#[test]
fn syntax_errors() {
    let mut d = Driver::default();
    d.send(EHLO);
    assert_eq!(codes_of(&d.send(b"FOO\r\n")), ["500 5.5.2"]);
    assert_eq!(codes_of(&d.send(b"EHLO\r\n")), ["501 5.5.4"]);
    assert_eq!(codes_of(&d.send(b"MAIL FROM:bad\r\n")), ["501 5.1.7"]);
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example> FOO=1\r\n")),
        ["555 5.5.4"]
    );
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example> SIZE=x\r\n")),
        ["501 5.5.4"]
    );
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\n")),
        ["555 5.5.4"]
    );
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example> AUTH=<>\r\n")),
        ["555 5.5.4"]
    );
    d.send(b"MAIL FROM:<a@b.example>\r\n");
    assert_eq!(codes_of(&d.send(b"RCPT TO:<bad>\r\n")), ["501 5.1.3"]);
    assert_eq!(
        codes_of(&d.send(b"RCPT TO:<a@b.example> FOO\r\n")),
        ["555 5.5.4"]
    );
    assert_eq!(codes_of(&d.send(b"DATA x\r\n")), ["501 5.5.4"]);
    assert_eq!(codes_of(&d.send(b"EXPN x\r\n")), ["502 5.5.1"]);
    assert_eq!(codes_of(&d.send(b"AUTH PLAIN\r\n")), ["502 5.5.1"]);
    assert_eq!(codes_of(&d.send(b"STARTTLS\r\n")), ["502 5.5.1"]);
    assert_eq!(codes_of(&d.send(b"VRFY bob\r\n")), ["252 2.5.0"]);
    assert_eq!(codes_of(&d.send(b"HELP\r\n")), ["214 2.0.0"]);
    assert_eq!(codes_of(&d.send(b"NOOP\r\n")), ["250 2.0.0"]);
    // The transaction survived the errors.
    assert!(d.s.in_transaction());
}

#[test]
fn bare_lf_command_lines_are_accepted() {
    let mut d = Driver::default();
    assert_eq!(codes_of(&d.send(b"EHLO c\nNOOP\n")), ["250", "250 2.0.0"]);
}

#[test]
fn helo_session_has_no_extensions() {
    let mut d = Driver::default();
    assert_eq!(d.send(b"HELO c\r\n"), "250 mx.example\r\n");
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example> SIZE=10\r\n")),
        ["555 5.5.4"]
    );
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example>\r\n")),
        ["250 2.1.0"]
    );
    assert_eq!(
        codes_of(&d.send(b"RCPT TO:<c@d.example> NOTIFY=NEVER\r\n")),
        ["555 5.5.4"]
    );
    assert_eq!(
        codes_of(&d.send(b"RCPT TO:<c@d.example>\r\n")),
        ["250 2.1.5"]
    );
    assert_eq!(codes_of(&d.send(b"BDAT 3 LAST\r\nabc")), ["503 5.5.1"]);
    assert!(!d.s.in_transaction());
    d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(d.delivered[0].protocol(), "SMTP");
}

#[test]
fn command_line_length_limit() {
    let mut config = SessionConfig::new("mx.example");
    config.max_command_line = 64;
    let mut d = Driver::new(config);
    d.send(EHLO);
    // Exactly 64 octets with CRLF is fine.
    let ok = format!("NOOP {}\r\n", "x".repeat(64 - 7));
    assert_eq!(ok.len(), 64);
    assert_eq!(codes_of(&d.send(ok.as_bytes())), ["250 2.0.0"]);
    // 65 is not; the whole line is discarded, not executed.
    let long = format!("MAIL FROM:<{}@b.example>\r\n", "a".repeat(64));
    assert_eq!(codes_of(&d.send(long.as_bytes())), ["500 5.5.2"]);
    assert!(!d.s.in_transaction());
    // A line that never ends is cut off once it passes the limit, and the
    // session resynchronizes at the next newline.
    let r = d.send(&[b'x'; 100]);
    assert_eq!(codes_of(&r), ["500 5.5.2"]);
    let r = d.send(&[b'y'; 1000]);
    assert_eq!(r, "");
    assert_eq!(codes_of(&d.send(b"yyy\r\nNOOP\r\n")), ["250 2.0.0"]);
}

#[test]
fn too_many_errors_closes_with_421() {
    let mut config = SessionConfig::new("mx.example");
    config.max_errors = 3;
    let mut d = Driver::new(config);
    let r = d.send(b"X\r\nY\r\nZ\r\nNOOP\r\n");
    assert_eq!(
        codes_of(&r),
        ["500 5.5.2", "500 5.5.2", "500 5.5.2", "421 4.7.0"]
    );
    assert!(d.closed);
    // Nothing more happens after close.
    assert_eq!(d.send(b"NOOP\r\n"), "");
}

#[test]
fn recipient_limit_is_452() {
    let mut config = SessionConfig::new("mx.example");
    config.max_recipients = 2;
    let mut d = Driver::new(config);
    let r = d.send(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<1@x.example>\r\nRCPT TO:<2@x.example>\r\nRCPT TO:<3@x.example>\r\n");
    assert_eq!(
        codes_of(&r),
        ["250", "250 2.1.0", "250 2.1.5", "250 2.1.5", "452 4.5.3"]
    );
    assert_eq!(d.checked.len(), 2);
}

#[test]
fn duplicate_recipients_are_accepted_once() {
    let mut d = Driver::default();
    let r = d.send(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@Y.example>\r\nRCPT TO:<x@y.EXAMPLE>\r\nRCPT TO:<Postmaster>\r\nRCPT TO:<postmaster>\r\nDATA\r\n.\r\n",
    );
    assert_eq!(
        codes_of(&r),
        [
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "250 2.1.5",
            "250 2.1.5",
            "354",
            "250 2.0.0"
        ]
    );
    assert_eq!(d.checked.len(), 2);
    assert_eq!(d.delivered[0].rcpts.len(), 2);
    assert_eq!(d.delivered[0].body.len(), 0);
}

#[test]
fn size_limits() {
    let mut config = SessionConfig::new("mx.example");
    config.max_message_size = 10;
    let mut d = Driver::new(config);
    d.send(EHLO);
    // Declared size too big: refused at MAIL (RFC 1870 §6.3).
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example> SIZE=11\r\n")),
        ["552 5.3.4"]
    );
    assert!(!d.s.in_transaction());
    // Actual size too big: refused after the body, the session goes on.
    let r = d.send(b"MAIL FROM:<a@b.example> SIZE=10\r\nRCPT TO:<c@d.example>\r\nDATA\r\n0123456789\r\n.\r\nNOOP\r\n");
    assert_eq!(
        codes_of(&r),
        ["250 2.1.0", "250 2.1.5", "354", "552 5.3.4", "250 2.0.0"]
    );
    assert!(d.delivered.is_empty());
    assert!(!d.s.in_transaction());
    let r =
        d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n01234567\r\n.\r\n");
    assert_eq!(codes_of(&r), ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]);
    assert_eq!(d.delivered.len(), 1);
}

#[test]
fn data_line_length_limit() {
    let mut config = SessionConfig::new("mx.example");
    config.max_data_line = 20;
    let mut d = Driver::new(config);
    let r = d.send(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n01234567890123456789\r\n.\r\nNOOP\r\n",
    );
    assert_eq!(
        codes_of(&r),
        [
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "554 5.6.0",
            "250 2.0.0"
        ]
    );
    assert!(d.delivered.is_empty());
}

#[test]
fn failed_store_is_reported_and_ends_the_transaction() {
    let mut d = Driver::default();
    d.store_fails = true;
    let r =
        d.send(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(
        codes_of(&r),
        ["250", "250 2.1.0", "250 2.1.5", "354", "451 4.3.0"]
    );
    assert!(!d.s.in_transaction());
}

#[test]
fn smtputf8_addresses() {
    let mut d = Driver::default();
    d.send(EHLO);
    assert_eq!(
        codes_of(&d.send("MAIL FROM:<jöran@b.example>\r\n".as_bytes())),
        ["553 5.6.7"]
    );
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example>\r\n")),
        ["250 2.1.0"]
    );
    assert_eq!(
        codes_of(&d.send("RCPT TO:<用户@例子.广告>\r\n".as_bytes())),
        ["553 5.6.7"]
    );
    d.send(b"RSET\r\n");
    let r = d.send(
        "MAIL FROM:<jöran@b.example> SMTPUTF8\r\nRCPT TO:<用户@例子.广告>\r\nDATA\r\nx\r\n.\r\n"
            .as_bytes(),
    );
    assert_eq!(codes_of(&r), ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]);
    let m = &d.delivered[0];
    assert!(m.mail_from.smtputf8);
    assert_eq!(m.protocol(), "UTF8SMTP");
    assert_eq!(m.rcpts[0].forward_path.to_string(), "用户@例子.广告");
}

#[test]
fn bdat_chunks() {
    let mut d = Driver::default();
    let r = d.send(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 5\r\nab\r\ncBDAT 4 LAST\r\n\r\n.\nNOOP\r\n");
    assert_eq!(
        codes_of(&r),
        [
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0",
            "250 2.0.0",
            "250 2.0.0"
        ]
    );
    assert!(r.contains("5 octets received"));
    assert!(r.contains("queued as ID1"));
    // BDAT content is taken verbatim: no dot-unstuffing, no normalization.
    assert_eq!(d.delivered[0].body.as_ref(), b"ab\r\nc\r\n.\n");
}

#[test]
fn bdat_split_across_reads() {
    let mut d = Driver::default();
    d.send(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
    let r = d.send_bytes_one_by_one(b"BDAT 3 LAST\r\nxyzQUIT\r\n");
    assert_eq!(codes_of(&r), ["250 2.0.0", "221 2.0.0"]);
    assert_eq!(d.delivered[0].body.as_ref(), b"xyz");
    let mut d = Driver::default();
    d.send(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
    assert_eq!(codes_of(&d.send(b"BDAT 0 LAST\r\n")), ["250 2.0.0"]);
    assert_eq!(d.delivered[0].body.len(), 0);
}

#[test]
fn bdat_errors_still_consume_the_chunk() {
    let mut d = Driver::default();
    d.send(EHLO);
    // No transaction: the chunk (which looks like a command) is swallowed.
    let r = d.send(b"BDAT 6\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(codes_of(&r), ["503 5.5.1", "250 2.0.0"]);
    assert!(!d.closed);
    // No recipients.
    let r = d.send(b"MAIL FROM:<a@b.example>\r\nBDAT 2 LAST\r\nxyNOOP\r\n");
    assert_eq!(codes_of(&r), ["250 2.1.0", "503 5.5.1", "250 2.0.0"]);
    assert!(!d.s.in_transaction());
    // DATA after BDAT and RCPT after BDAT are out of sequence.
    let r = d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 1\r\nxDATA\r\nRCPT TO:<e@d.example>\r\n");
    assert_eq!(
        codes_of(&r),
        [
            "250 2.1.0",
            "250 2.1.5",
            "250 2.0.0",
            "503 5.5.1",
            "503 5.5.1"
        ]
    );
    assert!(d.s.in_transaction());
}

#[test]
fn bdat_size_limit() {
    let mut config = SessionConfig::new("mx.example");
    config.max_message_size = 5;
    let mut d = Driver::new(config);
    d.send(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
    let r = d.send(b"BDAT 3\r\nabcBDAT 3 LAST\r\ndefNOOP\r\n");
    assert_eq!(codes_of(&r), ["250 2.0.0", "552 5.3.4", "250 2.0.0"]);
    assert!(d.delivered.is_empty());
    assert!(!d.s.in_transaction());
    // A huge declared chunk is read and discarded without being buffered.
    d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n");
    let r = d.send(b"BDAT 100000 LAST\r\n");
    assert_eq!(r, "");
    for _ in 0..99 {
        assert_eq!(d.send(&[b'z'; 1000]), "");
    }
    let mut tail = vec![b'z'; 1000];
    tail.extend_from_slice(b"NOOP\r\n");
    assert_eq!(codes_of(&d.send(&tail)), ["552 5.3.4", "250 2.0.0"]);
}

#[test]
fn starttls_resets_the_session_and_drops_pipelined_input() {
    let mut config = SessionConfig::new("mx.example");
    config.starttls = true;
    let mut d = Driver::new(config);
    let r = d.send(EHLO);
    assert!(r.contains("250 STARTTLS\r\n"), "{r}");
    // The injected MAIL after STARTTLS must not run inside TLS.
    let r = d.send(b"STARTTLS\r\nMAIL FROM:<evil@x.example>\r\n");
    assert_eq!(codes_of(&r), ["220 2.0.0"]);
    assert_eq!(d.starttls, 1);
    assert!(d.s.is_tls());
    assert_eq!(d.s.helo(), None);
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example>\r\n")),
        ["503 5.5.1"]
    );
    let r = d.send(EHLO);
    assert!(!r.contains("STARTTLS"), "{r}");
    assert_eq!(codes_of(&d.send(b"STARTTLS\r\n")), ["503 5.5.1"]);
    let r = d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(codes_of(&r), ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]);
    assert_eq!(d.delivered[0].protocol(), "ESMTPS");
}

#[test]
fn requiretls_is_offered_and_accepted_only_over_tls() {
    let mut config = SessionConfig::new("mx.example");
    config.starttls = true;
    let mut d = Driver::new(config);
    // RFC 8689 §2: not advertised in clear, and the parameter is refused.
    let r = d.send(EHLO);
    assert!(!r.contains("REQUIRETLS"), "{r}");
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example> REQUIRETLS\r\n")),
        ["530 5.7.10"]
    );
    assert_eq!(d.s.mail_from(), None);
    d.send(b"STARTTLS\r\n");
    assert!(d.s.is_tls());
    let r = d.send(EHLO);
    assert!(
        r.contains("250-REQUIRETLS\r\n") || r.ends_with("250 REQUIRETLS\r\n"),
        "{r}"
    );
    let r = d
        .send(b"MAIL FROM:<a@b.example> REQUIRETLS\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(codes_of(&r), ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]);
    assert!(d.delivered[0].mail_from.require_tls);
    // Without the parameter the message carries no requirement.
    let r = d.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(codes_of(&r), ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]);
    assert!(!d.delivered[1].mail_from.require_tls);
}

#[test]
fn requiretls_can_be_switched_off() {
    let mut config = SessionConfig::new("mx.example");
    config.requiretls = false;
    let mut d = Driver::over(Session::new(config, true));
    let r = d.send(EHLO);
    assert!(!r.contains("REQUIRETLS"), "{r}");
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example> REQUIRETLS\r\n")),
        ["555 5.5.4"]
    );
}

#[test]
fn starttls_refused_inside_a_transaction() {
    let mut config = SessionConfig::new("mx.example");
    config.starttls = true;
    let mut d = Driver::new(config);
    d.send(EHLO);
    d.send(b"MAIL FROM:<a@b.example>\r\n");
    assert_eq!(codes_of(&d.send(b"STARTTLS\r\n")), ["503 5.5.1"]);
}

#[test]
fn decisions_are_reissued_until_answered_and_ignored_when_unexpected() {
    let mut s = Session::new(SessionConfig::new("mx.example"), false);
    assert!(matches!(s.poll(), Action::Reply(_)));
    assert_eq!(s.poll(), Action::NeedInput);
    // Unexpected answers are ignored.
    s.recipient_checked(RcptDecision::Accept);
    s.message_stored(MessageOutcome::Queued { id: "x".into() });
    s.tls_established();
    assert_eq!(s.poll(), Action::NeedInput);
    s.feed(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nNOOP\r\n");
    assert!(matches!(s.poll(), Action::Reply(_)));
    assert!(matches!(s.poll(), Action::Reply(_)));
    let want = RcptTo {
        forward_path: ForwardPath::Mailbox(Mailbox {
            local_part: "c".into(),
            domain: "d.example".into(),
        }),
        notify: vec![],
        orcpt: None,
    };
    assert_eq!(s.poll(), Action::CheckRecipient(want.clone()));
    assert_eq!(s.poll(), Action::CheckRecipient(want));
    assert!(!s.is_idle());
    s.recipient_checked(RcptDecision::Accept);
    assert_eq!(
        s.poll(),
        Action::Reply(Reply::new(250, codes::RCPT_OK, "Ok"))
    );
    assert_eq!(s.poll(), Action::Reply(Reply::new(250, codes::OK, "Ok")));
    assert_eq!(s.poll(), Action::NeedInput);
}

#[test]
fn close_with_for_shutdown() {
    let mut d = Driver::default();
    d.send(EHLO);
    assert!(d.s.is_idle());
    d.s.close_with(Reply::new(
        421,
        codes::SHUTTING_DOWN,
        "mx.example shutting down",
    ));
    d.pump();
    assert!(d.wire.ends_with("421 4.3.2 mx.example shutting down\r\n"));
    assert!(d.closed);
}

#[test]
fn implicit_tls_sessions_do_not_offer_starttls() {
    let mut config = SessionConfig::new("mx.example");
    config.starttls = true;
    let mut s = Session::new(config, true);
    s.feed(EHLO);
    let mut wire = Vec::new();
    while let Action::Reply(r) = s.poll() {
        r.write_to(&mut wire);
    }
    assert!(!String::from_utf8_lossy(&wire).contains("STARTTLS"));
}

/// A tiny deterministic generator so the "fuzz" test needs no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_input_never_panics_and_stays_bounded() {
    const PIECES: &[&[u8]] = &[
        b"EHLO x\r\n",
        b"HELO y\r\n",
        b"MAIL FROM:<a@b.example>\r\n",
        b"MAIL FROM:<> SIZE=5 BODY=8BITMIME\r\n",
        b"RCPT TO:<c@d.example>\r\n",
        b"RCPT TO:<unknown@d.example>\r\n",
        b"RCPT TO:<Postmaster> NOTIFY=NEVER\r\n",
        b"DATA\r\n",
        b"BDAT 3\r\n",
        b"BDAT 2 LAST\r\n",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"STARTTLS\r\n",
        b"\r\n.\r\n",
        b".\r\n",
        b"..\r\n",
        b"\n",
        b"\r",
        b".",
        b"x",
        b"\xff\x00",
        b"QUIT\r\n",
        b"AUTH PLAIN\r\n",
        b"VRFY a\r\n",
    ];
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for round in 0..300u32 {
        let mut config = SessionConfig::new("mx.example");
        config.max_message_size = 64;
        config.max_command_line = 128;
        config.max_recipients = 3;
        config.max_errors = 1000;
        config.starttls = round.is_multiple_of(2);
        let mut d = Driver::new(config);
        for _ in 0..200 {
            let n = rng.next();
            if n.is_multiple_of(5) {
                let len = (n >> 8) as usize % 300;
                let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                d.send(&junk);
            } else {
                d.send(PIECES[(n >> 8) as usize % PIECES.len()]);
            }
            assert!(
                d.s.input.len() <= 128 + 300,
                "input buffer grew to {}",
                d.s.input.len()
            );
            if d.closed {
                break;
            }
        }
        for m in &d.delivered {
            assert!(m.body.len() <= 64);
            assert!(!m.rcpts.is_empty() && m.rcpts.len() <= 3);
        }
        // Every reply line is well-formed.
        for line in d.wire.split("\r\n").filter(|l| !l.is_empty()) {
            let code: u16 = line[..3].parse().expect("numeric code");
            assert!((200..600).contains(&code), "{line}");
            assert!(
                matches!(line.as_bytes().get(3), Some(b' ' | b'-')),
                "{line}"
            );
        }
    }
}

fn submission() -> SessionConfig {
    let mut c = SessionConfig::new("mx.example");
    c.starttls = true;
    c.auth = true;
    c.require_auth = true;
    c.require_tls = true;
    c
}

#[test]
fn submission_requires_tls_then_auth() {
    let mut d = Driver::new(submission());
    let ehlo = d.send(EHLO);
    assert!(!ehlo.contains("AUTH"), "no AUTH before TLS: {ehlo}");
    assert!(ehlo.contains("STARTTLS"));
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@example.com>\r\nAUTH PLAIN AGFAAHNlY3JldA==\r\n")),
        ["530 5.7.0", "530 5.7.0"]
    );
    d.send(b"STARTTLS\r\n");
    assert_eq!(d.starttls, 1);
    let ehlo = d.send(EHLO);
    assert!(
        ehlo.contains("250-AUTH PLAIN LOGIN") || ehlo.contains("250 AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@example.com>\r\n")),
        ["530 5.7.0"]
    );
    // PLAIN with an initial response: \0a@example.com\0secret
    let ir = sasl::base64_encode(b"\0a@example.com\0secret");
    assert_eq!(
        codes_of(&d.send(format!("AUTH PLAIN {ir}\r\n").as_bytes())),
        ["235 2.7.0"]
    );
    assert_eq!(d.s.auth_user(), Some("a@example.com"));
    assert!(!d.send(EHLO).contains("AUTH"), "not offered again");
    assert_eq!(
        codes_of(&d.send(format!("AUTH PLAIN {ir}\r\n").as_bytes())),
        ["503 5.5.1"]
    );
    // Someone else's sender address is refused; our own and <> are fine.
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<b@example.com>\r\n")),
        ["553 5.7.1"]
    );
    assert_eq!(
        codes_of(&d.send(
            b"MAIL FROM:<A@Example.COM> AUTH=<>\r\nRCPT TO:<x@y.example>\r\nDATA\r\nhi\r\n.\r\n"
        )),
        ["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]
    );
    assert_eq!(d.delivered[0].auth_user.as_deref(), Some("a@example.com"));
    assert_eq!(d.delivered[0].protocol(), "ESMTPSA");
}

#[test]
fn auth_login_and_plain_exchanges() {
    let mut c = submission();
    c.require_tls = false;
    c.auth_plaintext = true;
    let mut d = Driver::new(c);
    d.send(EHLO);
    // LOGIN: user name and password in two 334 rounds.
    let r = d.send(b"AUTH LOGIN\r\n");
    assert_eq!(r, "334 VXNlcm5hbWU6\r\n");
    let r = d.send(format!("{}\r\n", sasl::base64_encode(b"u@example.com")).as_bytes());
    assert_eq!(r, "334 UGFzc3dvcmQ6\r\n");
    let r = d.send(format!("{}\r\n", sasl::base64_encode(b"wrong")).as_bytes());
    assert_eq!(codes_of(&r), ["535 5.7.8"]);
    assert_eq!(d.s.auth_user(), None);
    // PLAIN without an initial response; cancelled with "*".
    assert_eq!(d.send(b"AUTH PLAIN\r\n"), "334 \r\n");
    assert_eq!(codes_of(&d.send(b"*\r\n")), ["501 5.0.0"]);
    // Bad base64, unknown mechanism, proxy authorization.
    assert_eq!(d.send(b"AUTH PLAIN\r\n"), "334 \r\n");
    assert_eq!(codes_of(&d.send(b"!!!!\r\n")), ["501 5.5.2"]);
    assert_eq!(codes_of(&d.send(b"AUTH CRAM-MD5\r\n")), ["504 5.5.4"]);
    let ir = sasl::base64_encode(b"other\0u@example.com\0secret");
    assert_eq!(
        codes_of(&d.send(format!("AUTH PLAIN {ir}\r\n").as_bytes())),
        ["535 5.7.8"]
    );
    // LOGIN with the user name as initial response, then success.
    let r = d.send(format!("AUTH LOGIN {}\r\n", sasl::base64_encode(b"u@example.com")).as_bytes());
    assert_eq!(r, "334 UGFzc3dvcmQ6\r\n");
    let r = d.send(format!("{}\r\n", sasl::base64_encode(b"secret")).as_bytes());
    assert_eq!(codes_of(&r), ["235 2.7.0"]);
    assert!(!d.closed);
}

#[test]
fn auth_refused_in_clear_text_by_default() {
    let mut c = SessionConfig::new("mx.example");
    c.starttls = true;
    c.auth = true;
    let mut d = Driver::new(c);
    assert!(!d.send(EHLO).contains("AUTH"));
    assert_eq!(
        codes_of(&d.send(b"AUTH PLAIN AGEAYg==\r\n")),
        ["538 5.7.11"]
    );
    // MX sessions need no AUTH for MAIL.
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example>\r\n")),
        ["250 2.1.0"]
    );
    // AUTH= is accepted on MAIL when AUTH is offered (RFC 4954 §5).
    d.send(b"RSET\r\n");
    assert_eq!(
        codes_of(&d.send(b"MAIL FROM:<a@b.example> AUTH=<>\r\n")),
        ["250 2.1.0"]
    );
}

#[test]
fn starttls_forgets_authentication() {
    let mut c = submission();
    c.require_tls = false;
    c.auth_plaintext = true;
    let mut d = Driver::new(c);
    d.send(EHLO);
    let ir = sasl::base64_encode(b"\0a@example.com\0secret");
    assert_eq!(
        codes_of(&d.send(format!("AUTH PLAIN {ir}\r\n").as_bytes())),
        ["235 2.7.0"]
    );
    d.send(b"STARTTLS\r\n");
    assert_eq!(d.s.auth_user(), None, "RFC 3207 §4.2");
}
