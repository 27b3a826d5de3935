//! DKIM signing for Tern (RFC 6376, Ed25519 per RFC 8463): the key
//! directory, key generation, the DNS record to publish for a key, and
//! signing a message with every key of its From domain.
//!
//! A crate of its own because two places use it: ingress signs accepted
//! mail, and the `tern dkim` commands generate and list keys. The
//! cryptography and canonicalisation are PyPI-independent crates.io
//! `mail-auth` (ring backend); this crate decides which keys, which
//! headers and where the files live. See `README.md` for the layout.

mod key;
mod sign;
mod store;

pub use key::{Algorithm, DnsRecord, KeyName, Published, SigningKey, generate, write_key};
pub use sign::{FromDomainError, SIGNED_HEADERS, from_domain};
pub use store::{KeySet, KeyStore, keygen};

use std::path::PathBuf;

/// Errors loading, generating or using DKIM keys.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// A key file (or the directory) could not be read.
    #[error("DKIM key {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A key file is not a usable private key of its algorithm.
    #[error("DKIM key {path}: {message}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A domain that must be signed for has no key in the directory.
    #[error("DKIM: no key for domain {domain} (expected a file like {expected})")]
    MissingKey {
        /// The configured domain.
        domain: String,
        /// An example of the file that would satisfy it.
        expected: PathBuf,
    },
    /// Two keys share one selector of one domain (one DNS record each).
    #[error("DKIM keys {first} and {second} use the same selector; give each key its own")]
    SelectorClash {
        /// One file.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// A domain or selector is not a valid DNS label sequence.
    #[error("invalid DKIM {what} {value:?}: {why}")]
    InvalidName {
        /// `domain` or `selector`.
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// Key generation failed.
    #[error("generate DKIM key: {0}")]
    Generate(String),
    /// The key file to write exists already.
    #[error("DKIM key {0} exists already; remove it first or choose another selector")]
    Exists(PathBuf),
    /// Signing failed in the crypto library.
    #[error("DKIM signing with {key}: {message}")]
    Sign {
        /// The key (`selector._domainkey.domain`).
        key: String,
        /// The library's message.
        message: String,
    },
}
