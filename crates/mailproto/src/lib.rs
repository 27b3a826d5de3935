//! IMAP and POP3 protocol code for the mailbox service: pure parsers,
//! formatters and state machines over bytes, with no I/O.
//!
//! The service reads from the network, feeds bytes in here and writes the
//! bytes that come out. Everything in this crate is total: no input, however
//! malformed or oversized, makes it panic, and every buffer is bounded.
//!
//! - [`line`]: bounded CRLF line splitting (POP3 framing);
//! - [`pop3`]: RFC 1939 commands, the session state machine and message
//!   formatting (byte-stuffing, TOP);
//! - [`imap`]: RFC 3501/9051 command framing with literals, the command
//!   parser, sequence sets, FETCH attributes and response formatting;
//! - [`mime`]: the MIME structure, summaries, transfer decoding and the
//!   decoded text of bodies for SEARCH;
//! - [`text`]: charsets, RFC 2047 encoded-words and case-insensitive
//!   matching of decoded text;
//! - [`utf7`]: modified UTF-7 mailbox names (RFC 3501 §5.1.3).

pub mod imap;
pub mod line;
pub mod mime;
pub mod pop3;
pub mod text;
pub mod utf7;

/// Decode standard base64 (RFC 4648 §4, padding optional, no whitespace),
/// as SASL responses use. `None` if malformed.
pub fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = match s.iter().position(|&c| c == b'=') {
        Some(i) if s[i..].iter().all(|&c| c == b'=') && s.len() - i <= 2 => &s[..i],
        Some(_) => return None,
        None => s,
    };
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64() {
        assert_eq!(
            super::base64_decode(b"AGFsaWNlAHB3").unwrap(),
            b"\0alice\0pw"
        );
        assert_eq!(super::base64_decode(b"YQ==").unwrap(), b"a");
        assert_eq!(super::base64_decode(b"YWI").unwrap(), b"ab");
        assert!(super::base64_decode(b"Y").is_none());
        assert!(super::base64_decode(b"Y=Q=").is_none());
        assert!(super::base64_decode(b"a b").is_none());
        assert_eq!(super::base64_decode(b"").unwrap(), b"");
    }
}
