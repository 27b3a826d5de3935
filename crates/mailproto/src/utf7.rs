//! Modified UTF-7 mailbox names (RFC 3501 §5.1.3), the form IMAP4rev1
//! clients use and this server stores. IMAP4rev2 sessions (RFC 9051 §5.1)
//! send and receive UTF-8, converted with [`encode`] and [`decode`].
//!
//! Printable US-ASCII other than `&` stands for itself, `&` is `&-`, and
//! any other run of characters is `&`, the modified base64 (`,` for `/`,
//! no padding) of its UTF-16BE form, then `-`.

/// Why a name is not valid modified UTF-7.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Utf7Error {
    /// A character outside printable US-ASCII appears unencoded.
    #[error("unencoded character outside printable US-ASCII")]
    Unencoded,
    /// A `&` run is not closed by `-`.
    #[error("unterminated base64 run")]
    Unterminated,
    /// A `&` run holds a character outside modified base64.
    #[error("invalid character in base64 run")]
    BadBase64,
    /// The run's bits do not make whole UTF-16 units (or leftover bits are set).
    #[error("base64 run does not end on a UTF-16 unit")]
    BadLength,
    /// The UTF-16 is not valid (an unpaired surrogate).
    #[error("invalid UTF-16 in base64 run")]
    BadUtf16,
    /// The run encodes printable US-ASCII, or follows another run
    /// directly; RFC 3501 §5.1.3 forbids both (so each name has one form).
    #[error("needlessly encoded characters")]
    NotCanonical,
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

fn printable(c: u32) -> bool {
    (0x20..=0x7e).contains(&c)
}

/// The modified UTF-7 form of a UTF-8 name.
pub fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut run: Vec<u16> = Vec::new();
    for c in name.chars() {
        if printable(c as u32) {
            flush(&mut out, &mut run);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            run.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut out, &mut run);
    out
}

/// Write a pending run of UTF-16 units as `&...-`.
fn flush(out: &mut String, run: &mut Vec<u16>) {
    if run.is_empty() {
        return;
    }
    let bytes: Vec<u8> = run.iter().flat_map(|u| u.to_be_bytes()).collect();
    out.push('&');
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out.push('-');
    run.clear();
}

/// The UTF-8 form of a modified UTF-7 name; an error if it is not valid
/// and canonical modified UTF-7.
pub fn decode(name: &str) -> Result<String, Utf7Error> {
    let b = name.as_bytes();
    let mut out = String::with_capacity(name.len());
    let mut i = 0;
    let mut after_run = false;
    while i < b.len() {
        let c = b[i];
        if !printable(u32::from(c)) {
            return Err(Utf7Error::Unencoded);
        }
        if c != b'&' {
            out.push(char::from(c));
            i += 1;
            after_run = false;
            continue;
        }
        let end = b[i + 1..]
            .iter()
            .position(|&x| x == b'-')
            .map(|p| i + 1 + p)
            .ok_or(Utf7Error::Unterminated)?;
        let run = &b[i + 1..end];
        i = end + 1;
        if run.is_empty() {
            out.push('&');
            after_run = false;
            continue;
        }
        if after_run {
            return Err(Utf7Error::NotCanonical);
        }
        after_run = true;
        let mut bits = 0u32;
        let mut nbits = 0;
        let mut units = Vec::new();
        for &ch in run {
            let v = ALPHABET
                .iter()
                .position(|&a| a == ch)
                .ok_or(Utf7Error::BadBase64)?;
            bits = bits << 6 | v as u32;
            nbits += 6;
            if nbits >= 16 {
                nbits -= 16;
                units.push((bits >> nbits) as u16);
                bits &= (1 << nbits) - 1;
            }
        }
        if nbits >= 6 || bits != 0 {
            return Err(Utf7Error::BadLength);
        }
        for ch in char::decode_utf16(units.iter().copied()) {
            let ch = ch.map_err(|_| Utf7Error::BadUtf16)?;
            if printable(ch as u32) {
                return Err(Utf7Error::NotCanonical);
            }
            out.push(ch);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for (utf8, utf7) in [
            ("INBOX", "INBOX"),
            ("a&b", "a&-b"),
            ("Entwürfe", "Entw&APw-rfe"),
            // RFC 3501 §5.1.3's example.
            ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
            ("😀", "&2D3eAA-"),
            ("äß&", "&AOQA3w-&-"),
            ("", ""),
        ] {
            assert_eq!(encode(utf8), utf7, "{utf8}");
            assert_eq!(decode(utf7).unwrap(), utf8, "{utf7}");
        }
    }

    #[test]
    fn rejects_invalid_forms() {
        for (bad, why) in [
            ("Entw\u{fc}rfe", Utf7Error::Unencoded),
            ("a\tb", Utf7Error::Unencoded),
            ("&APw", Utf7Error::Unterminated),
            ("&A.w-", Utf7Error::BadBase64),
            ("&AP-", Utf7Error::BadLength),
            ("&APx-", Utf7Error::BadLength),
            ("&2D0-", Utf7Error::BadUtf16),
            ("&AGE-", Utf7Error::NotCanonical),
            ("&APw-&APw-", Utf7Error::NotCanonical),
        ] {
            assert_eq!(decode(bad), Err(why), "{bad}");
        }
    }
}
