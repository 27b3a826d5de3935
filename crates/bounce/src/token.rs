//! VERP return paths and unsubscribe tokens, signed with the cluster secret.
//!
//! A VERP return path is `b-<token>@<bounce domain>`: the token carries
//! (tenant, campaign, message id, recipient index) and a truncated
//! HMAC-SHA256 over them, so a late bounce finds its send without any lookup
//! and nobody without the secret can make one that matches another send.
//! The same fields with the prefix `u-` are the `mailto:` unsubscribe
//! address; the HTTPS one-click link (RFC 8058) carries a longer token with
//! the recipient's address in it ([`UnsubscribeFields`]).
//!
//! Tokens are lower-case base32 (RFC 4648 §6 alphabet, no padding), so the
//! local part is a dot-atom (RFC 5321 §4.1.2) of at most 64 octets and
//! survives MTAs that change the case of local parts: decoding ignores case.
//! Each kind of token is signed under its own label, so one never verifies
//! as another.

use std::fmt;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Token format version, the first payload byte.
const VERSION: u8 = 1;
/// Bytes of HMAC kept in a local-part token (64 bits: forging one takes
/// ~2^63 tries at the MX, which rate limits long before).
const LOCAL_TAG: usize = 8;
/// Bytes of HMAC kept in an URL token, where length costs nothing.
const URL_TAG: usize = 16;
/// Prefix of a VERP return path's local part.
pub const BOUNCE_PREFIX: &str = "b-";
/// Prefix of a `mailto:` unsubscribe local part.
pub const UNSUBSCRIBE_PREFIX: &str = "u-";
/// The longest address an unsubscribe token carries (RFC 5321 §4.5.3.1.3).
const MAX_ADDRESS: usize = 256;

/// The cluster secret (`TERN_SECRET_FILE`). Never printed.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("TERN_SECRET_FILE {path}: cannot read the cluster secret: {source}")]
    Read {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Fewer than [`Secret::MIN_LEN`] bytes (after trimming whitespace).
    #[error(
        "TERN_SECRET_FILE {path}: the cluster secret is {len} bytes, at least {min} are needed \
         (for example `head -c 32 /dev/urandom | base64 > FILE`)",
        min = Secret::MIN_LEN
    )]
    TooShort {
        /// The configured path (empty for an in-memory secret).
        path: PathBuf,
        /// Its length.
        len: usize,
    },
}

impl SecretError {
    /// The error without the file's name, for callers that name it already.
    pub fn detail(&self) -> String {
        match self {
            SecretError::Read { source, .. } => format!("cannot read the cluster secret: {source}"),
            SecretError::TooShort { len, .. } => format!(
                "the cluster secret is {len} bytes, at least {} are needed \
                 (for example `head -c 32 /dev/urandom | base64 > FILE`)",
                Secret::MIN_LEN
            ),
        }
    }
}

impl Secret {
    /// The shortest secret accepted, in bytes.
    pub const MIN_LEN: usize = 32;

    /// A secret from bytes, all of them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Secret, SecretError> {
        Self::checked(bytes, PathBuf::new())
    }

    /// Read the secret file; whitespace around it (the newline an editor or
    /// `kubectl create secret --from-file` leaves) is not part of the secret.
    pub fn load(path: &Path) -> Result<Secret, SecretError> {
        let bytes = std::fs::read(path).map_err(|source| SecretError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::checked(bytes.trim_ascii(), path.to_path_buf())
    }

    fn checked(bytes: &[u8], path: PathBuf) -> Result<Secret, SecretError> {
        if bytes.len() < Self::MIN_LEN {
            return Err(SecretError::TooShort {
                path,
                len: bytes.len(),
            });
        }
        Ok(Secret(bytes.to_vec()))
    }

    fn mac(&self, label: &[u8], payload: &[u8]) -> Hmac<Sha256> {
        // Any length is a valid HMAC key; new_from_slice cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(label);
        mac.update(&[0]);
        mac.update(payload);
        mac
    }

    fn sign(&self, label: &[u8], payload: &[u8], tag: usize) -> Vec<u8> {
        let full = self.mac(label, payload).finalize().into_bytes();
        let mut out = payload.to_vec();
        out.extend_from_slice(&full[..tag]);
        out
    }

    fn verify<'a>(
        &self,
        label: &[u8],
        signed: &'a [u8],
        tag: usize,
    ) -> Result<&'a [u8], TokenError> {
        let split = signed.len().checked_sub(tag).ok_or(TokenError::Malformed)?;
        let (payload, sig) = signed.split_at(split);
        self.mac(label, payload)
            .verify_truncated_left(sig)
            .map_err(|_| TokenError::BadSignature)?;
        Ok(payload)
    }
}

/// A token that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a Tern token: no `b-`/`u-` prefix, or another domain's form.
    #[error("not a Tern token")]
    NotOurs,
    /// Not base32, wrong length or not the layout of its version.
    #[error("malformed token")]
    Malformed,
    /// A version this Tern does not know.
    #[error("token version {0} is not supported")]
    UnknownVersion(u8),
    /// The HMAC does not match: forged, altered or from another cluster.
    #[error("token signature does not verify")]
    BadSignature,
}

/// What a VERP return path (and the `mailto:` unsubscribe address) carries.
/// The tenant and campaign are their numeric ids in the store; the message
/// id is the ULID Tern gave the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerpFields {
    /// The tenant's id.
    pub tenant: u32,
    /// The campaign's (or list's) id; 0 for none.
    pub campaign: u32,
    /// The message id (a ULID as 128 bits).
    pub message: u128,
    /// The recipient's index in its batch.
    pub recipient: u32,
}

impl VerpFields {
    const LEN: usize = 1 + 4 + 4 + 16 + 4;

    fn to_bytes(self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::LEN);
        b.push(VERSION);
        b.extend_from_slice(&self.tenant.to_be_bytes());
        b.extend_from_slice(&self.campaign.to_be_bytes());
        b.extend_from_slice(&self.message.to_be_bytes());
        b.extend_from_slice(&self.recipient.to_be_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Result<Self, TokenError> {
        check_version(b)?;
        if b.len() != Self::LEN {
            return Err(TokenError::Malformed);
        }
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut m = [0u8; 16];
        m.copy_from_slice(&b[9..25]);
        Ok(VerpFields {
            tenant: u32_at(1),
            campaign: u32_at(5),
            message: u128::from_be_bytes(m),
            recipient: u32_at(25),
        })
    }
}

fn check_version(b: &[u8]) -> Result<(), TokenError> {
    match b.first() {
        None => Err(TokenError::Malformed),
        Some(&VERSION) => Ok(()),
        Some(&v) => Err(TokenError::UnknownVersion(v)),
    }
}

/// Which kind of local part a token was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalPart {
    /// `b-…`: a VERP return path; mail to it is a late bounce or a report.
    Bounce(VerpFields),
    /// `u-…`: the `mailto:` unsubscribe address.
    Unsubscribe(VerpFields),
}

const LABEL_BOUNCE: &[u8] = b"tern verp bounce v1";
const LABEL_UNSUB_MAILTO: &[u8] = b"tern unsubscribe mailto v1";
const LABEL_UNSUB_URL: &[u8] = b"tern unsubscribe url v1";

fn local_part(secret: &Secret, prefix: &str, label: &[u8], f: &VerpFields) -> String {
    format!(
        "{prefix}{}",
        base32_encode(&secret.sign(label, &f.to_bytes(), LOCAL_TAG))
    )
}

/// The local part `b-<token>` of a VERP return path.
pub fn bounce_local_part(secret: &Secret, fields: &VerpFields) -> String {
    local_part(secret, BOUNCE_PREFIX, LABEL_BOUNCE, fields)
}

/// The full VERP return path `b-<token>@<bounce_domain>`.
pub fn bounce_address(secret: &Secret, fields: &VerpFields, bounce_domain: &str) -> String {
    format!("{}@{bounce_domain}", bounce_local_part(secret, fields))
}

/// The local part `u-<token>` of the `mailto:` unsubscribe address.
pub fn unsubscribe_local_part(secret: &Secret, fields: &VerpFields) -> String {
    local_part(secret, UNSUBSCRIBE_PREFIX, LABEL_UNSUB_MAILTO, fields)
}

/// Verify a local part (or a whole address: the domain is ignored, the
/// caller routes by domain) made by [`bounce_local_part`] or
/// [`unsubscribe_local_part`].
pub fn parse_local_part(secret: &Secret, local_or_address: &str) -> Result<LocalPart, TokenError> {
    let local = local_or_address
        .rsplit_once('@')
        .map_or(local_or_address, |(l, _)| l);
    let local = local.trim_matches(|c| c == '<' || c == '>');
    let (kind, label, token) = if let Some(t) = strip_prefix_ci(local, BOUNCE_PREFIX) {
        (
            LocalPart::Bounce as fn(VerpFields) -> LocalPart,
            LABEL_BOUNCE,
            t,
        )
    } else if let Some(t) = strip_prefix_ci(local, UNSUBSCRIBE_PREFIX) {
        (
            LocalPart::Unsubscribe as fn(VerpFields) -> LocalPart,
            LABEL_UNSUB_MAILTO,
            t,
        )
    } else {
        return Err(TokenError::NotOurs);
    };
    let signed = base32_decode(token).ok_or(TokenError::Malformed)?;
    let payload = secret.verify(label, &signed, LOCAL_TAG)?;
    VerpFields::from_bytes(payload).map(kind)
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// What a one-click unsubscribe link (`/u/TOKEN`, RFC 8058) carries: the
/// recipient's address itself, so the endpoint needs no lookup to act.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnsubscribeFields {
    /// The tenant's id.
    pub tenant: u32,
    /// The list or campaign unsubscribed from; 0 for the whole tenant.
    pub list: u32,
    /// The recipient's address, as sent.
    pub recipient: String,
}

/// The URL token for [`UnsubscribeFields`]; `None` for an address longer
/// than 256 octets, which no send can have.
pub fn unsubscribe_token(secret: &Secret, fields: &UnsubscribeFields) -> Option<String> {
    if fields.recipient.len() > MAX_ADDRESS {
        return None;
    }
    let mut payload = vec![VERSION];
    payload.extend_from_slice(&fields.tenant.to_be_bytes());
    payload.extend_from_slice(&fields.list.to_be_bytes());
    payload.extend_from_slice(fields.recipient.as_bytes());
    Some(base32_encode(&secret.sign(
        LABEL_UNSUB_URL,
        &payload,
        URL_TAG,
    )))
}

/// Verify a token made by [`unsubscribe_token`].
pub fn parse_unsubscribe_token(
    secret: &Secret,
    token: &str,
) -> Result<UnsubscribeFields, TokenError> {
    let signed = base32_decode(token).ok_or(TokenError::Malformed)?;
    let payload = secret.verify(LABEL_UNSUB_URL, &signed, URL_TAG)?;
    check_version(payload)?;
    if payload.len() < 9 {
        return Err(TokenError::Malformed);
    }
    let u32_at =
        |i: usize| u32::from_be_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]]);
    let recipient = std::str::from_utf8(&payload[9..]).map_err(|_| TokenError::Malformed)?;
    Ok(UnsubscribeFields {
        tenant: u32_at(1),
        list: u32_at(5),
        recipient: recipient.to_string(),
    })
}

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// RFC 4648 §6 base32, lower case, no padding.
fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Decode [`base32_encode`]'s output, either case. Leftover bits must be
/// zero, so each byte string has exactly one encoding (up to case).
fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c.to_ascii_lowercase() {
            c @ b'a'..=b'z' => c - b'a',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = ((acc << 5) | u32::from(v)) & 0xfff;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // A valid encoding leaves fewer than 5 bits, all zero.
    (bits < 5 && acc & ((1 << bits) - 1) == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        // RFC 4648 §10, lower-cased and without padding.
        for (plain, enc) in [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ] {
            assert_eq!(base32_encode(plain.as_bytes()), enc);
            assert_eq!(base32_decode(enc).as_deref(), Some(plain.as_bytes()));
            assert_eq!(
                base32_decode(&enc.to_uppercase()).as_deref(),
                Some(plain.as_bytes())
            );
        }
        assert_eq!(base32_decode("mz"), None, "non-zero leftover bits");
        assert_eq!(base32_decode("mzx1"), None);
    }

    #[test]
    fn short_secret_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "short\n").unwrap();
        let err = Secret::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("TERN_SECRET_FILE") && err.contains("5 bytes"),
            "{err}"
        );
        let err = Secret::load(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("TERN_SECRET_FILE") && err.contains("missing"),
            "{err}"
        );
        std::fs::write(&p, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert!(Secret::load(&p).is_ok());
        assert_eq!(format!("{:?}", Secret::load(&p).unwrap()), "Secret(..)");
    }
}
