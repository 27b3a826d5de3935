//! The SASL pieces of SMTP AUTH (RFC 4954): base64 (RFC 4648 §4) and the
//! PLAIN (RFC 4616) and LOGIN mechanisms' message formats.

/// Why a SASL response could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// Not valid base64 (RFC 4954 §4: `501 5.5.2`).
    #[error("invalid base64")]
    Base64,
    /// Decoded, but not a well-formed PLAIN message or not UTF-8.
    #[error("malformed {0} response")]
    Malformed(&'static str),
}

/// Credentials a client presented.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication identity (user name).
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // Never print passwords, not even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Encode `data` as padded base64.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Decode padded base64 strictly: length a multiple of 4, padding only at
/// the end, no whitespace.
pub fn base64_decode(s: &str) -> Result<Vec<u8>, SaslError> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return Err(SaslError::Base64);
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let quads = s.len() / 4;
    for (qi, q) in s.chunks(4).enumerate() {
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && qi + 1 != quads) {
            return Err(SaslError::Base64);
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = (n << 6) | value(c).ok_or(SaslError::Base64)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Ok(out)
}

/// Parse a decoded PLAIN message `[authzid] NUL authcid NUL passwd`
/// (RFC 4616 §2). An authorization identity other than the authentication
/// identity is refused: nobody may act on behalf of another user here.
pub fn parse_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let text = std::str::from_utf8(message).map_err(|_| SaslError::Malformed("PLAIN"))?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed("PLAIN"));
    };
    if authcid.is_empty() || (!authzid.is_empty() && authzid != authcid) {
        return Err(SaslError::Malformed("PLAIN"));
    }
    Ok(Credentials {
        username: authcid.to_string(),
        password: password.to_string(),
    })
}

/// Decode one base64 LOGIN response (user name or password) as UTF-8.
pub fn parse_login_field(response: &str) -> Result<String, SaslError> {
    let bytes = base64_decode(response)?;
    String::from_utf8(bytes).map_err(|_| SaslError::Malformed("LOGIN"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
            let e = base64_encode(s.as_bytes());
            assert_eq!(base64_decode(&e).expect("decode"), s.as_bytes(), "{e}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        for bad in ["Zm9", "Zm9v!", "Zg==Zg==", "Z===", "Zm 9v"] {
            assert_eq!(base64_decode(bad), Err(SaslError::Base64), "{bad}");
        }
    }

    #[test]
    fn plain() {
        let c = parse_plain(b"\0alice@example.com\0secret").expect("plain");
        assert_eq!(c.username, "alice@example.com");
        assert_eq!(c.password, "secret");
        assert!(parse_plain(b"alice\0alice\0pw").is_ok());
        assert!(
            parse_plain(b"bob\0alice\0pw").is_err(),
            "proxy auth refused"
        );
        assert!(parse_plain(b"\0\0pw").is_err());
        assert!(parse_plain(b"alice\0pw").is_err());
        assert!(parse_plain(b"\0a\0b\0c").is_err());
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
    }
}
