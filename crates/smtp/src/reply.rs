//! SMTP replies: a three-digit code, an optional enhanced status code
//! (RFC 2034, RFC 3463) and one or more text lines, rendered on the wire as
//! `code SP [enhanced SP] text CRLF`, with `code "-"` on all but the last line
//! of a multi-line reply (RFC 5321 §4.2.1).

use std::fmt;

/// The longest reply line we emit, CRLF included (RFC 5321 §4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;

/// An RFC 3463 enhanced status code `class.subject.detail`, e.g. `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Enhanced {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject: 0 other, 1 addressing, 2 mailbox, 3 mail system,
    /// 4 network/routing, 5 protocol, 6 content, 7 security (RFC 3463 §3).
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl Enhanced {
    /// Build `class.subject.detail`.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Enhanced {
            class,
            subject,
            detail,
        }
    }

    /// Parse `"5.1.1"`; `None` unless it is three dot-separated numbers with
    /// class 2, 4 or 5 and subject/detail of at most three digits (RFC 3463 §2).
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('.');
        let (c, s, d) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let num = |p: &str| -> Option<u16> {
            if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let class = match c {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return None,
        };
        Some(Enhanced::new(class, num(s)?, num(d)?))
    }
}

impl fmt::Display for Enhanced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code (200..=599).
    pub code: u16,
    /// The enhanced status code put before the text of every line, if any.
    /// RFC 2034 §3 leaves it off the greeting and the EHLO response.
    pub enhanced: Option<Enhanced>,
    /// The text lines; at least one (an empty list renders one empty line).
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A one-line reply without an enhanced status code (greeting, 354, EHLO).
    pub fn plain(code: u16, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced: None,
            lines: vec![text.into()],
        }
    }

    /// Append a text line, making this a multi-line reply.
    pub fn with_line(mut self, text: impl Into<String>) -> Self {
        self.lines.push(text.into());
        self
    }

    /// 2yz: the command succeeded.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3yz: intermediate (354 after DATA, 334 in AUTH).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4yz: transient negative completion; the client may try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5yz: permanent negative completion.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// Append the wire form to `out`.
    ///
    /// Control characters in the text become spaces (a reply must never
    /// smuggle a CRLF), and each line is cut so that it fits in
    /// [`MAX_REPLY_LINE`] octets including CRLF. Codes outside 200..=599 are
    /// rendered as 451 rather than producing a malformed reply.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let code = if (200..600).contains(&self.code) {
            self.code
        } else {
            451
        };
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        for (i, line) in lines.iter().enumerate() {
            let start = out.len();
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.extend_from_slice(format!("{code}{sep}").as_bytes());
            if let Some(e) = &self.enhanced {
                out.extend_from_slice(e.to_string().as_bytes());
                out.push(b' ');
            }
            let budget = MAX_REPLY_LINE.saturating_sub(out.len() - start + 2);
            let mut used = 0;
            for ch in line.chars() {
                let len = ch.len_utf8();
                if used + len > budget {
                    break;
                }
                used += len;
                if ch.is_control() {
                    out.push(b' ');
                } else {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

impl fmt::Display for Reply {
    /// The reply on one line, for logs: `550 5.1.1 text / more`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = &self.enhanced {
            write!(f, " {e}")?;
        }
        for (i, l) in self.lines.iter().enumerate() {
            let sep = if i == 0 { " " } else { " / " };
            write!(f, "{sep}{l}")?;
        }
        Ok(())
    }
}

/// Enhanced status codes used by the server, named after RFC 3463 §3.
pub mod codes {
    use super::Enhanced;

    /// 2.0.0 Other undefined status (generic success).
    pub const OK: Enhanced = Enhanced::new(2, 0, 0);
    /// 2.1.0 Other address status (sender accepted).
    pub const SENDER_OK: Enhanced = Enhanced::new(2, 1, 0);
    /// 2.1.5 Destination address valid.
    pub const RCPT_OK: Enhanced = Enhanced::new(2, 1, 5);
    /// 2.5.0 Other or undefined protocol status.
    pub const PROTOCOL_OK: Enhanced = Enhanced::new(2, 5, 0);
    /// 4.3.0 Other or undefined mail system status (temporary).
    pub const TEMP_SYSTEM: Enhanced = Enhanced::new(4, 3, 0);
    /// 4.3.2 System not accepting network messages (shutting down).
    pub const SHUTTING_DOWN: Enhanced = Enhanced::new(4, 3, 2);
    /// 4.4.2 Bad connection (timeout).
    pub const TIMEOUT: Enhanced = Enhanced::new(4, 4, 2);
    /// 4.5.3 Too many recipients.
    pub const TOO_MANY_RCPTS: Enhanced = Enhanced::new(4, 5, 3);
    /// 4.7.0 Other or undefined security status (temporary).
    pub const TEMP_SECURITY: Enhanced = Enhanced::new(4, 7, 0);
    /// 5.1.1 Bad destination mailbox address (no such user).
    pub const NO_SUCH_USER: Enhanced = Enhanced::new(5, 1, 1);
    /// 5.1.3 Bad destination mailbox address syntax.
    pub const BAD_RCPT_SYNTAX: Enhanced = Enhanced::new(5, 1, 3);
    /// 5.1.7 Bad sender's mailbox address syntax.
    pub const BAD_SENDER_SYNTAX: Enhanced = Enhanced::new(5, 1, 7);
    /// 5.3.4 Message too big for system.
    pub const TOO_BIG: Enhanced = Enhanced::new(5, 3, 4);
    /// 5.5.1 Invalid command (out of sequence).
    pub const BAD_SEQUENCE: Enhanced = Enhanced::new(5, 5, 1);
    /// 5.5.2 Syntax error (command unrecognized, line too long).
    pub const UNRECOGNIZED: Enhanced = Enhanced::new(5, 5, 2);
    /// 5.5.4 Invalid command arguments.
    pub const BAD_ARGS: Enhanced = Enhanced::new(5, 5, 4);
    /// 5.6.0 Other or undefined media error (content not acceptable).
    pub const BAD_CONTENT: Enhanced = Enhanced::new(5, 6, 0);
    /// 5.6.7 Non-ASCII address without SMTPUTF8 (RFC 6531 §3.5, RFC 6533).
    pub const NEEDS_SMTPUTF8: Enhanced = Enhanced::new(5, 6, 7);
    /// 5.7.1 Delivery not authorized (relay denied).
    pub const NOT_AUTHORIZED: Enhanced = Enhanced::new(5, 7, 1);
    /// 2.7.0 Authentication succeeded (RFC 4954 §6).
    pub const AUTH_OK: Enhanced = Enhanced::new(2, 7, 0);
    /// 5.7.0 Authentication (or TLS) required (RFC 4954 §6, RFC 3207 §4).
    pub const AUTH_REQUIRED: Enhanced = Enhanced::new(5, 7, 0);
    /// 5.7.8 Authentication credentials invalid (RFC 4954 §6).
    pub const AUTH_INVALID: Enhanced = Enhanced::new(5, 7, 8);
    /// 5.7.10 Encryption needed (RFC 5248; REQUIRETLS outside TLS, RFC 8689).
    pub const ENCRYPTION_NEEDED: Enhanced = Enhanced::new(5, 7, 10);
    /// 5.7.11 Encryption required for the mechanism (RFC 4954 §6, RFC 5248).
    pub const ENCRYPTION_REQUIRED: Enhanced = Enhanced::new(5, 7, 11);
    /// 5.0.0 Other undefined status (AUTH cancelled, RFC 4954 §4).
    pub const UNDEFINED: Enhanced = Enhanced::new(5, 0, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        String::from_utf8(r.to_bytes()).expect("utf-8")
    }

    #[test]
    fn single_line_with_enhanced_code() {
        let r = Reply::new(550, codes::NO_SUCH_USER, "No such user");
        assert_eq!(wire(&r), "550 5.1.1 No such user\r\n");
        assert!(r.is_permanent());
        assert_eq!(r.to_string(), "550 5.1.1 No such user");
    }

    #[test]
    fn multi_line_uses_dash_continuation() {
        let r = Reply::plain(250, "mx.example Hello")
            .with_line("PIPELINING")
            .with_line("SIZE 10");
        assert_eq!(
            wire(&r),
            "250-mx.example Hello\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
        let r = Reply::new(214, codes::OK, "a").with_line("b");
        assert_eq!(wire(&r), "214-2.0.0 a\r\n214 2.0.0 b\r\n");
    }

    #[test]
    fn control_characters_cannot_break_the_line() {
        let r = Reply::new(250, codes::OK, "a\r\n250 injected");
        assert_eq!(wire(&r), "250 2.0.0 a  250 injected\r\n");
    }

    #[test]
    fn long_lines_are_cut_to_512_octets() {
        let r = Reply::new(250, codes::OK, "é".repeat(600));
        let w = r.to_bytes();
        assert!(w.len() <= MAX_REPLY_LINE, "{}", w.len());
        assert!(w.ends_with(b"\r\n"));
        assert!(std::str::from_utf8(&w).is_ok());
    }

    #[test]
    fn empty_and_invalid() {
        let r = Reply {
            code: 999,
            enhanced: None,
            lines: vec![],
        };
        assert_eq!(wire(&r), "451 \r\n");
    }

    #[test]
    fn enhanced_parse() {
        assert_eq!(Enhanced::parse("5.1.1"), Some(codes::NO_SUCH_USER));
        assert_eq!(Enhanced::parse("4.3.0"), Some(codes::TEMP_SYSTEM));
        assert_eq!(
            Enhanced::parse("2.999.999")
                .map(|e| e.to_string())
                .as_deref(),
            Some("2.999.999")
        );
        for bad in [
            "", "3.0.0", "5.1", "5.1.1.1", "5..1", "5.1000.1", "5.a.1", "5.+1.1",
        ] {
            assert_eq!(Enhanced::parse(bad), None, "{bad}");
        }
    }
}
