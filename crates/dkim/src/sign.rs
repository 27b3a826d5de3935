//! What is signed: the header list, the From domain that picks the keys,
//! and one signature per key of that domain.

use mail_parser::{HeaderName, MessageParser};

use crate::DkimError;
use crate::store::KeySet;

/// The `h=` list. RFC 6376 §5.4.1's recommendations, plus the fields a
/// receiver shows or acts on (`Message-ID`, MIME structure, RFC 8058's
/// `List-Unsubscribe-Post`, which must be covered for one-click
/// unsubscribe). mail-auth signs every instance present, bottom-up
/// (§5.4.2), and each name once more when absent; so From, Subject, Date
/// and To, listed twice, are oversigned: a second instance added later
/// breaks the signature (§8.15).
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "In-Reply-To",
    "References",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Sender",
    // Oversigned: listed once more.
    "From",
    "Subject",
    "Date",
    "To",
];

/// Why the From domain of a message cannot be determined (RFC 7489 §6.6.1:
/// exactly one From field, whose mailboxes share one domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FromDomainError {
    /// The header section has no From field.
    #[error("no From header")]
    Missing,
    /// More than one From field.
    #[error("more than one From header")]
    Several,
    /// The From field has no parsable address with a domain.
    #[error("the From header has no address with a domain")]
    NoAddress,
    /// The From field's mailboxes are in different domains.
    #[error("the From header's addresses are in different domains")]
    MixedDomains,
}

impl FromDomainError {
    /// A short label for metrics (`reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            FromDomainError::Missing => "no_from",
            FromDomainError::Several => "several_from",
            FromDomainError::NoAddress => "bad_from",
            FromDomainError::MixedDomains => "mixed_from",
        }
    }
}

/// The domain of the From header (RFC 5322 §3.6.2), lower case.
pub fn from_domain(message: &[u8]) -> Result<String, FromDomainError> {
    let parsed = MessageParser::new()
        .parse_headers(message)
        .ok_or(FromDomainError::Missing)?;
    let count = parsed
        .headers()
        .iter()
        .filter(|h| h.name == HeaderName::From)
        .count();
    match count {
        0 => return Err(FromDomainError::Missing),
        1 => {}
        _ => return Err(FromDomainError::Several),
    }
    let from = parsed.from().ok_or(FromDomainError::NoAddress)?;
    let mut domain: Option<String> = None;
    for addr in from.iter() {
        let Some(d) = addr
            .address()
            .and_then(|a| a.rsplit_once('@'))
            .map(|(_, d)| d.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty())
        else {
            return Err(FromDomainError::NoAddress);
        };
        match &domain {
            None => domain = Some(d),
            Some(prev) if *prev == d => {}
            Some(_) => return Err(FromDomainError::MixedDomains),
        }
    }
    domain.ok_or(FromDomainError::NoAddress)
}

impl KeySet {
    /// Sign `message` with every key of the most specific domain that is the
    /// From domain or a parent of it (so `d=` aligns with From under DMARC's
    /// relaxed alignment, RFC 7489 §3.1.1). Returns the `DKIM-Signature`
    /// fields to prepend (empty: no key for that domain), RSA first.
    pub fn sign(&self, from_domain: &str, message: &[u8]) -> Result<Vec<String>, DkimError> {
        self.keys_for(from_domain)
            .iter()
            .map(|k| k.sign(message))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_domain_cases() {
        let d = |m: &str| from_domain(m.as_bytes());
        assert_eq!(
            d("From: \"A, B\" <a@Mail.Example.COM>\r\nTo: x@y\r\n\r\nbody\r\n"),
            Ok("mail.example.com".into())
        );
        assert_eq!(
            d("Subject: x\r\nFrom: a@example.com,\r\n b@example.com\r\n\r\n"),
            Ok("example.com".into())
        );
        assert_eq!(d("To: x@y\r\n\r\nbody\r\n"), Err(FromDomainError::Missing));
        assert_eq!(
            d("From: a@x.com\r\nFrom: b@x.com\r\n\r\n"),
            Err(FromDomainError::Several)
        );
        assert_eq!(
            d("From: a@x.com, b@y.com\r\n\r\n"),
            Err(FromDomainError::MixedDomains)
        );
        assert_eq!(d("From: nobody\r\n\r\n"), Err(FromDomainError::NoAddress));
    }
}
