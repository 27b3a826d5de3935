//! One signing key: its file name in the key directory, the private key, and
//! the DNS record that publishes its public half.
//!
//! Layout: one flat directory, one PEM file per key, named
//! `<selector>._domainkey.<domain>.<rsa|ed25519>.pem` — the DNS name of the
//! key record plus the algorithm. Flat because a Kubernetes Secret mounted as
//! a volume can only hold flat file names; unambiguous because
//! `._domainkey.` cannot occur in a selector or domain label sequence that
//! is used in DNS (RFC 6376 §3.6.2.1).

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::DkimError;
use crate::sign::SIGNED_HEADERS;

/// The two signing algorithms: `rsa-sha256` (RFC 6376) and `ed25519-sha256`
/// (RFC 8463).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Algorithm {
    /// RSA with SHA-256, PKCS#1 v1.5.
    Rsa,
    /// Ed25519 over the SHA-256 hash (RFC 8463).
    Ed25519,
}

impl Algorithm {
    /// The file-name suffix and the `k=` tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa",
            Algorithm::Ed25519 => "ed25519",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = DkimError;
    fn from_str(s: &str) -> Result<Self, DkimError> {
        match s.to_ascii_lowercase().as_str() {
            "rsa" => Ok(Algorithm::Rsa),
            "ed25519" => Ok(Algorithm::Ed25519),
            _ => Err(DkimError::InvalidName {
                what: "algorithm",
                value: s.to_string(),
                why: "expected rsa or ed25519",
            }),
        }
    }
}

/// Which key a file is: domain (`d=`), selector (`s=`) and algorithm.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyName {
    /// The signing domain, lower case, without a trailing dot.
    pub domain: String,
    /// The selector.
    pub selector: String,
    /// The algorithm.
    pub algorithm: Algorithm,
}

const MARK: &str = "._domainkey.";

/// A dot-separated sequence of LDH labels (RFC 1035 §2.3.1; selectors
/// follow the same syntax, RFC 6376 §3.1), or the reason it is not one.
fn check_labels(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be 1 to 253 characters");
    }
    for label in s.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each label must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("only letters, digits, '-' and '_' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label cannot start or end with '-'");
        }
    }
    if s.to_ascii_lowercase().contains("_domainkey") {
        return Err("cannot contain _domainkey");
    }
    Ok(())
}

impl KeyName {
    /// Check and normalise: the domain is lower-cased, a trailing dot dropped.
    pub fn new(domain: &str, selector: &str, algorithm: Algorithm) -> Result<Self, DkimError> {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        check_labels(&domain).map_err(|why| DkimError::InvalidName {
            what: "domain",
            value: domain.clone(),
            why,
        })?;
        check_labels(selector).map_err(|why| DkimError::InvalidName {
            what: "selector",
            value: selector.to_string(),
            why,
        })?;
        Ok(KeyName {
            domain,
            selector: selector.to_string(),
            algorithm,
        })
    }

    /// The file name in the key directory.
    pub fn file_name(&self) -> String {
        format!(
            "{}{MARK}{}.{}.pem",
            self.selector, self.domain, self.algorithm
        )
    }

    /// Parse a key file name; `None` for files that are not keys.
    pub fn parse_file_name(name: &str) -> Option<KeyName> {
        let stem = name.strip_suffix(".pem")?;
        let (rest, alg) = stem.rsplit_once('.')?;
        let algorithm = alg.parse().ok()?;
        let (selector, domain) = rest.split_once(MARK)?;
        KeyName::new(domain, selector, algorithm).ok()
    }

    /// The DNS name of the key record, `selector._domainkey.domain`.
    pub fn dns_name(&self) -> String {
        format!("{}{MARK}{}", self.selector, self.domain)
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.dns_name(), self.algorithm)
    }
}

/// A loaded private key, ready to sign.
pub struct SigningKey {
    /// Which key this is.
    pub name: KeyName,
    /// The file it was read from.
    pub path: PathBuf,
    /// The `p=` value's bytes: SubjectPublicKeyInfo DER for RSA (what
    /// verifiers expect in practice), the raw 32 bytes for Ed25519 (RFC 8463 §4.2).
    public: Vec<u8>,
    signer: DkimSigner<DkimKey, Done>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn bad(path: &Path, message: impl fmt::Display) -> DkimError {
    DkimError::BadKey {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// SubjectPublicKeyInfo DER of an RSA public key given as PKCS#1 DER.
fn rsa_spki(pkcs1: &[u8], path: &Path) -> Result<Vec<u8>, DkimError> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    use rsa::pkcs8::EncodePublicKey;
    let key = rsa::RsaPublicKey::from_pkcs1_der(pkcs1).map_err(|e| bad(path, e))?;
    let der = key.to_public_key_der().map_err(|e| bad(path, e))?;
    Ok(der.as_bytes().to_vec())
}

impl SigningKey {
    /// Read the key `name` from `path`; `expiry` (seconds) sets `x=`.
    pub fn load(path: &Path, name: KeyName, expiry: Option<u64>) -> Result<Self, DkimError> {
        let pem = std::fs::read(path).map_err(|source| DkimError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pem(path, name, &pem, expiry)
    }

    /// Parse PEM text (`PRIVATE KEY` PKCS#8, or `RSA PRIVATE KEY` PKCS#1 for RSA).
    pub fn from_pem(
        path: &Path,
        name: KeyName,
        pem: &[u8],
        expiry: Option<u64>,
    ) -> Result<Self, DkimError> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| bad(path, format!("not a PEM private key ({e})")))?;
        let (key, public) = match name.algorithm {
            Algorithm::Rsa => {
                let key = RsaKey::<Sha256>::from_key_der(der)
                    .map_err(|e| bad(path, format!("not an RSA private key ({e})")))?;
                let spki = rsa_spki(&key.public_key(), path)?;
                (DkimKey::Rsa(key), spki)
            }
            Algorithm::Ed25519 => {
                let PrivateKeyDer::Pkcs8(der) = der else {
                    return Err(bad(path, "an Ed25519 key must be PKCS#8 (PRIVATE KEY)"));
                };
                // Accepts PKCS#8 v1 too, as `openssl genpkey -algorithm ed25519` writes.
                let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
                    .map_err(|e| bad(path, format!("not an Ed25519 private key ({e})")))?;
                let public = key.public_key();
                (DkimKey::Ed25519(key), public)
            }
        };
        let mut signer = DkimSigner::from_key(key)
            .domain(name.domain.clone())
            .selector(name.selector.clone())
            .headers(SIGNED_HEADERS.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        if let Some(secs) = expiry.filter(|s| *s > 0) {
            signer = signer.expiration(secs);
        }
        Ok(SigningKey {
            name,
            path: path.to_path_buf(),
            public,
            signer,
        })
    }

    /// The DNS record that publishes this key's public half.
    pub fn dns_record(&self) -> DnsRecord {
        let p = base64::engine::general_purpose::STANDARD.encode(&self.public);
        DnsRecord {
            name: format!("{}.", self.name.dns_name()),
            value: format!("v=DKIM1; k={}; p={p}", self.name.algorithm),
        }
    }

    /// Sign `message` (headers and body, CRLF lines) and return the
    /// `DKIM-Signature:` field, folded, ending in CRLF.
    pub fn sign(&self, message: &[u8]) -> Result<String, DkimError> {
        use mail_auth::common::headers::HeaderWriter;
        let sig = self.signer.sign(message).map_err(|e| DkimError::Sign {
            key: self.name.dns_name(),
            message: e.to_string(),
        })?;
        Ok(sig.to_header())
    }
}

/// A DKIM key record: `name IN TXT value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// Fully qualified, with the trailing dot.
    pub name: String,
    /// `v=DKIM1; k=…; p=…`.
    pub value: String,
}

impl DnsRecord {
    /// The record in zone-file syntax, the value split into quoted strings
    /// of at most 255 octets (one TXT character-string, RFC 1035 §3.3.14;
    /// verifiers concatenate them, RFC 6376 §3.6.2.2).
    pub fn zone_line(&self) -> String {
        let strings: Vec<String> = self
            .value
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        format!("{} IN TXT {}", self.name, strings.join(" "))
    }

    /// Whether a published TXT record (its strings concatenated, quoted or
    /// not) carries this key: same `p=` and, if given, the same `k=`.
    pub fn matches(&self, published: &str) -> bool {
        let tags = |s: &str| -> (String, String) {
            let clean: String = s
                .chars()
                .filter(|c| *c != '"' && !c.is_whitespace())
                .collect();
            let mut k = "rsa".to_string();
            let mut p = String::new();
            for tag in clean.split(';') {
                if let Some(v) = tag.strip_prefix("k=") {
                    k = v.to_ascii_lowercase();
                } else if let Some(v) = tag.strip_prefix("p=") {
                    p = v.to_string();
                }
            }
            (k, p)
        };
        let (ours, theirs) = (tags(&self.value), tags(published));
        !ours.1.is_empty() && ours == theirs
    }
}

/// Whether DNS publishes a key, for `tern dkim list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// A TXT record at the key's name carries this public key.
    Yes,
    /// TXT records exist there, but none carries this key.
    Different,
    /// No TXT record at the key's name.
    Missing,
    /// The lookup failed (temporary DNS error), with the reason.
    Unknown(String),
}

impl fmt::Display for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Published::Yes => f.write_str("published"),
            Published::Different => f.write_str("MISMATCH: DNS has a different key"),
            Published::Missing => f.write_str("NOT PUBLISHED"),
            Published::Unknown(why) => write!(f, "unknown (DNS lookup failed: {why})"),
        }
    }
}

impl DnsRecord {
    /// Compare with the TXT records found at the key's name.
    pub fn published_in(&self, txt: &[String]) -> Published {
        if txt.iter().any(|t| self.matches(t)) {
            Published::Yes
        } else if txt.is_empty() {
            Published::Missing
        } else {
            Published::Different
        }
    }
}

/// Generate a key: RSA of `bits` (2048 to 8192; 2048 is the common choice) or
/// Ed25519. Returns the PKCS#8 PEM text.
pub fn generate(algorithm: Algorithm, bits: usize) -> Result<String, DkimError> {
    let gen_err = |e: &dyn fmt::Display| DkimError::Generate(e.to_string());
    match algorithm {
        Algorithm::Rsa => {
            use rsa::pkcs8::EncodePrivateKey;
            if !(2048..=8192).contains(&bits) {
                return Err(DkimError::Generate(format!(
                    "{bits} bits: RSA keys must have 2048 to 8192 bits (RFC 8301 §3.2 asks for at least 1024, ring signs from 2048)"
                )));
            }
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                .map_err(|e| gen_err(&e))?;
            let pem = key
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(|e| gen_err(&e))?;
            Ok(pem.to_string())
        }
        Algorithm::Ed25519 => {
            let der = Ed25519Key::generate_pkcs8().map_err(|e| gen_err(&e))?;
            let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
            Ok(format!(
                "-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n"
            ))
        }
    }
}

/// Write `pem` as the key `name` into `dir` (created if missing), mode 0600,
/// refusing to overwrite. Returns the file's path.
pub fn write_key(dir: &Path, name: &KeyName, pem: &str) -> Result<PathBuf, DkimError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DkimError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(name.file_name());
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(DkimError::Exists(path));
        }
        Err(e) => return Err(io(&path)(e)),
    };
    f.write_all(pem.as_bytes()).map_err(io(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let n = KeyName::new("Mail.Example.COM.", "s2026.a", Algorithm::Ed25519).unwrap();
        assert_eq!(
            n.file_name(),
            "s2026.a._domainkey.mail.example.com.ed25519.pem"
        );
        assert_eq!(KeyName::parse_file_name(&n.file_name()), Some(n));
        for not_a_key in [
            "..data",
            "README",
            "s._domainkey.example.com.dsa.pem",
            "example.com.rsa.pem",
            "s._domainkey..rsa.pem",
        ] {
            assert_eq!(KeyName::parse_file_name(not_a_key), None, "{not_a_key}");
        }
        assert!(KeyName::new("example.com", "bad selector", Algorithm::Rsa).is_err());
        assert!(KeyName::new("-x.com", "s", Algorithm::Rsa).is_err());
    }

    #[test]
    fn zone_line_splits_long_values_into_255_octet_strings() {
        let r = DnsRecord {
            name: "s._domainkey.example.com.".into(),
            value: format!("v=DKIM1; k=rsa; p={}", "A".repeat(400)),
        };
        let line = r.zone_line();
        let strings: Vec<&str> = line
            .split_once(" IN TXT ")
            .unwrap()
            .1
            .split("\" \"")
            .collect();
        assert_eq!(strings.len(), 2);
        assert_eq!(strings[0].len(), 255 + 1);
        let joined: String = strings.iter().map(|s| s.trim_matches('"')).collect();
        assert_eq!(joined, r.value);
        assert!(r.matches(&joined));
        assert!(r.matches(&strings.join("\" \"")));
        assert!(!r.matches("v=DKIM1; k=ed25519; p=AAAA"));
        assert!(!r.matches("v=DKIM1; p="));
    }

    #[test]
    fn generated_keys_load_and_publish() {
        for (alg, prefix) in [
            (Algorithm::Ed25519, "k=ed25519; p="),
            (Algorithm::Rsa, "k=rsa; p=MII"),
        ] {
            let pem = generate(alg, 2048).unwrap();
            let name = KeyName::new("example.com", "s1", alg).unwrap();
            let key = SigningKey::from_pem(Path::new("x.pem"), name, pem.as_bytes(), None).unwrap();
            let rec = key.dns_record();
            assert_eq!(rec.name, "s1._domainkey.example.com.");
            assert!(
                rec.value.starts_with(&format!("v=DKIM1; {prefix}")),
                "{}",
                rec.value
            );
        }
        assert!(generate(Algorithm::Rsa, 512).is_err());
    }

    #[test]
    fn a_key_of_the_wrong_algorithm_names_its_file() {
        let pem = generate(Algorithm::Ed25519, 0).unwrap();
        let name = KeyName::new("example.com", "s1", Algorithm::Rsa).unwrap();
        let err = SigningKey::from_pem(Path::new("/k/s1.pem"), name, pem.as_bytes(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("/k/s1.pem") && err.contains("RSA"), "{err}");
    }
}
