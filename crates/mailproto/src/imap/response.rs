//! Response formatting: tagged and untagged lines, the greeting and
//! capabilities, flags, dates and quoting (RFC 9051 §7).

use std::borrow::Cow;

use super::*;

/// The system flags this server knows and keeps.
pub const SYSTEM_FLAGS: [&str; 5] = ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"];

/// Completion status of a tagged response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `OK`.
    Ok,
    /// `NO`: the command failed.
    No,
    /// `BAD`: the command was not understood or not allowed.
    Bad,
}

pub(super) fn clean(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|b| b == b'\r' || b == b'\n') {
        Cow::Owned(text.replace(['\r', '\n'], " "))
    } else {
        Cow::Borrowed(text)
    }
}

/// `tag OK text` (or NO / BAD), CRLF-terminated.
pub fn tagged(tag: &str, status: Status, text: &str) -> Vec<u8> {
    let s = match status {
        Status::Ok => "OK",
        Status::No => "NO",
        Status::Bad => "BAD",
    };
    format!("{tag} {s} {}\r\n", clean(text)).into_bytes()
}

/// `* text`, CRLF-terminated.
pub fn untagged(text: &str) -> Vec<u8> {
    format!("* {}\r\n", clean(text)).into_bytes()
}

/// A continuation request `+ text`.
pub fn continuation(text: &str) -> Vec<u8> {
    format!("+ {}\r\n", clean(text)).into_bytes()
}

/// The capability list. `login_ok` is false on a cleartext connection where
/// plaintext authentication is disabled (then `LOGINDISABLED` is announced
/// and AUTH=PLAIN is not); `starttls` offers STARTTLS; `authenticated`
/// leaves the pre-login items out.
pub fn capabilities(login_ok: bool, starttls: bool, authenticated: bool) -> String {
    let mut caps = String::from(
        "IMAP4rev1 IMAP4rev2 LITERAL+ BINARY SASL-IR ENABLE IDLE NAMESPACE ID UIDPLUS MOVE UNSELECT CHILDREN SPECIAL-USE LIST-EXTENDED LIST-STATUS ESEARCH SEARCHRES STATUS=SIZE QUOTA QUOTA=RES-STORAGE CONDSTORE QRESYNC",
    );
    if !authenticated {
        if starttls {
            caps.push_str(" STARTTLS");
        }
        if login_ok {
            caps.push_str(" AUTH=PLAIN");
        } else {
            caps.push_str(" LOGINDISABLED");
        }
    }
    caps
}

/// The server greeting.
pub fn greeting(hostname: &str, login_ok: bool, starttls: bool) -> Vec<u8> {
    let host: String = hostname
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    untagged(&format!(
        "OK [CAPABILITY {}] {host} Tern IMAP ready",
        capabilities(login_ok, starttls, false)
    ))
}

/// A parenthesized flag list: `(\Seen \Flagged)`.
pub fn flag_list<S: AsRef<str>>(flags: &[S]) -> String {
    let mut out = String::from("(");
    for (i, f) in flags.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(f.as_ref());
    }
    out.push(')');
    out
}

/// An IMAP `date-time` (`"17-Jul-1996 02:44:25 +0000"`, quotes included)
/// for a Unix time in milliseconds, in UTC.
pub fn format_internal_date(unix_ms: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = unix_ms.max(0) / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let month_name = MONTHS.get((month - 1) as usize).copied().unwrap_or("Jan");
    format!(
        "\"{day:2}-{month_name}-{year:04} {:02}:{:02}:{:02} +0000\"",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Most flags kept on one message.
pub const MAX_FLAGS: usize = 64;

/// Parse a space-separated stored flag string into the flags we keep:
/// system flags (canonical case) and keywords (atoms), without duplicates.
pub fn parse_flags(stored: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in stored.split_ascii_whitespace() {
        let flag = if f.starts_with('\\') {
            match SYSTEM_FLAGS.iter().find(|s| s.eq_ignore_ascii_case(f)) {
                Some(s) => (*s).to_string(),
                None => continue,
            }
        } else if f.len() <= 128 && f.bytes().all(is_atom_char) {
            f.to_string()
        } else {
            continue;
        };
        if out.len() < MAX_FLAGS && !out.iter().any(|o| o.eq_ignore_ascii_case(&flag)) {
            out.push(flag);
        }
    }
    out
}

/// the hierarchy delimiter `/`)? RFC 3501 §6.3.8. INBOX matches case-insensitively.
pub fn list_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8], budget: &mut u32) -> bool {
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..], budget)),
            Some((b'%', rest)) => {
                let lim = n.iter().position(|&b| b == b'/').unwrap_or(n.len());
                (0..=lim).any(|i| go(rest, &n[i..], budget))
            }
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..], budget),
        }
    }
    let p = match (pattern.get(..5), pattern.get(5..)) {
        (Some(head), Some(tail)) if head.eq_ignore_ascii_case("INBOX") => format!("INBOX{tail}"),
        _ => pattern.to_string(),
    };
    let mut budget = 100_000;
    go(p.as_bytes(), name.as_bytes(), &mut budget)
}

/// Quote a string for a response (`"..."`, or a literal when it needs one).
pub fn quote(s: &str) -> String {
    let mut out = String::new();
    crate::mime::string(&mut out, s.as_bytes());
    out
}

/// A mailbox name as a quoted string. Names are modified UTF-7 (ASCII)
/// for IMAP4rev1 sessions; for IMAP4rev2 ones they are UTF-8, which RFC
/// 9051 §9 (`QUOTED-CHAR`) allows in a quoted string. Control characters
/// (never in a name: the parser refuses them) are dropped.
pub fn quote_mailbox(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let flags = vec!["\\Seen".to_string()];
        let r = fetch_response(
            3,
            &[
                FetchItem::Uid(7),
                FetchItem::Flags(&flags),
                FetchItem::Rfc822Size(5),
                FetchItem::Data {
                    name: "BODY[]".into(),
                    data: Cow::Borrowed(b"hello"),
                },
            ],
        );
        assert_eq!(
            r,
            b"* 3 FETCH (UID 7 FLAGS (\\Seen) RFC822.SIZE 5 BODY[] {5}\r\nhello)\r\n"
        );
        assert_eq!(tagged("a1", Status::No, "x\r\ny"), b"a1 NO x  y\r\n");
        assert_eq!(format_internal_date(0), "\" 1-Jan-1970 00:00:00 +0000\"");
        assert_eq!(
            format_internal_date(837_571_465_000),
            "\"17-Jul-1996 02:44:25 +0000\""
        );
        assert_eq!(
            format_internal_date(951_782_400_000),
            "\"29-Feb-2000 00:00:00 +0000\""
        );
        assert_eq!(
            parse_flags("\\seen \\Bogus \\Seen \\Deleted $Junk $junk a(b"),
            vec!["\\Seen", "\\Deleted", "$Junk"]
        );
        assert!(capabilities(false, true, false).contains("LOGINDISABLED"));
        assert!(capabilities(false, true, false).contains("STARTTLS"));
        assert!(!capabilities(true, true, true).contains("AUTH=PLAIN"));
        assert!(greeting("h\r\nx", true, false).starts_with(b"* OK [CAPABILITY IMAP4rev1"));
    }
}
