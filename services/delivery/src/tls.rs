//! STARTTLS for outbound SMTP: the per-destination policy and the rustls
//! client configuration.
//!
//! Opportunistic TLS (RFC 7435) encrypts against passive eavesdroppers
//! without authenticating the server: most MX hosts present certificates
//! that do not match their MX name, are self-signed or expired, and
//! refusing them would only push the mail back to plaintext (RFC 7435 §3,
//! "opportunistic security ... protection against passive attacks, without
//! requiring authentication"). So the certificate is **not** verified
//! against a trust store or the host name, at either `opportunistic` or
//! `required` (like Postfix's `may` and `encrypt` levels). The handshake
//! itself is still checked in full: the server must prove possession of the
//! key in the certificate it sent (the TLS 1.2/1.3 signature is verified
//! with the provider's algorithms), so a broken or downgraded handshake
//! fails.
//!
//! Authenticated TLS is used where the message or the recipient asks for
//! it: a REQUIRETLS message (RFC 8689 §4.2.1) is only sent over TLS whose
//! certificate chains to a trusted root ([`roots`]: the system's, or the
//! bundle in `TERN_DELIVERY_TLS_CA_FILE`) and names the MX host
//! ([`verified_config`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tern_runtime::config::ConfigValue;

/// What to do about STARTTLS with one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// Use STARTTLS when the server offers it; plaintext when it does not.
    /// A failed handshake is not retried in plaintext on that host unless
    /// `TERN_DELIVERY_TLS_PLAINTEXT_FALLBACK` is set.
    #[default]
    Opportunistic,
    /// Only ever send over TLS: a server without STARTTLS, or a failed
    /// handshake, defers the message (`4.7.4`/`4.7.5`) after trying the other hosts.
    Required,
    /// Never STARTTLS (for a destination with broken TLS).
    Disabled,
}

impl TlsPolicy {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::Opportunistic => "opportunistic",
            TlsPolicy::Required => "required",
            TlsPolicy::Disabled => "disabled",
        }
    }
}

impl fmt::Display for TlsPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ConfigValue for TlsPolicy {
    const EXPECTED: &'static str = "opportunistic, required or disabled";
    fn parse_value(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "opportunistic" | "may" => Some(TlsPolicy::Opportunistic),
            "required" | "encrypt" => Some(TlsPolicy::Required),
            "disabled" | "none" => Some(TlsPolicy::Disabled),
            _ => None,
        }
    }
}

/// Per-destination policies: `domain=policy` pairs separated by commas
/// (`example.com=required,legacy.example=disabled`). A domain also covers
/// its subdomains when written with a leading dot (`.example.com`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsPolicies(pub BTreeMap<String, TlsPolicy>);

impl ConfigValue for TlsPolicies {
    const EXPECTED: &'static str =
        "comma-separated domain=policy pairs (policy: opportunistic, required, disabled)";
    fn parse_value(s: &str) -> Option<Self> {
        let mut map = BTreeMap::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (domain, policy) = item.split_once('=')?;
            let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
            if domain.is_empty() || domain == "." {
                return None;
            }
            map.insert(domain, TlsPolicy::parse_value(policy.trim())?);
        }
        Some(TlsPolicies(map))
    }
}

impl TlsPolicies {
    /// The policy for `destination`: an exact entry, else the closest
    /// `.parent` entry, else `default`.
    pub fn for_destination(&self, destination: &str, default: TlsPolicy) -> TlsPolicy {
        let d = destination.trim_end_matches('.').to_ascii_lowercase();
        if let Some(p) = self.0.get(&d) {
            return *p;
        }
        let mut rest = d.as_str();
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(p) = self.0.get(&format!(".{parent}")) {
                return *p;
            }
            rest = parent;
        }
        default
    }
}

/// The rustls client configuration for opportunistic and required TLS:
/// ring provider, safe default versions, no client certificate, and the
/// [`Unauthenticated`] verifier (see the module documentation).
pub fn client_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unauthenticated { provider }))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

pub use tern_runtime::tls::{RootsError, roots, verified_config};

/// Accepts any server certificate chain (RFC 7435 opportunistic security)
/// but verifies the handshake signatures, so the peer must hold the key of
/// the certificate it presents.
#[derive(Debug)]
struct Unauthenticated {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unauthenticated {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn policies_parse_and_match_parents() {
        let p = TlsPolicies::parse_value("Example.COM=required, .legacy.test=disabled").unwrap();
        let d = TlsPolicy::Opportunistic;
        assert_eq!(p.for_destination("example.com", d), TlsPolicy::Required);
        assert_eq!(p.for_destination("mail.example.com", d), d);
        assert_eq!(p.for_destination("a.legacy.test", d), TlsPolicy::Disabled);
        assert_eq!(p.for_destination("legacy.test", d), d);
        assert_eq!(
            TlsPolicies::parse_value("").unwrap(),
            TlsPolicies::default()
        );
        assert!(TlsPolicies::parse_value("x.test=sometimes").is_none());
        assert!(TlsPolicies::parse_value("x.test").is_none());
    }
}
