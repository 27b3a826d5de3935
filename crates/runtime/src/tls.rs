//! TLS server configuration from PEM files, or a self-signed certificate
//! generated into the data directory when none is configured.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ConfigError, Key, Source};

/// `TERN_TLS_CERT`.
pub const TLS_CERT: Key<Option<PathBuf>> = Key::new(
    "tls_cert",
    "",
    "PEM certificate chain (default: self-signed in the data dir)",
);
/// `TERN_TLS_KEY`.
pub const TLS_KEY: Key<Option<PathBuf>> = Key::new("tls_key", "", "PEM private key");

/// Errors loading or generating TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("TLS file {path}: {message}")]
    File {
        /// Path of the file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Generating the self-signed certificate failed.
    #[error("generate self-signed certificate: {0}")]
    Generate(String),
    /// rustls rejected the certificate or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the certificate and key come from.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Configured PEM files, or `None` for a generated certificate.
    pub files: Option<(PathBuf, PathBuf)>,
}

impl TlsConfig {
    /// Read `TERN_TLS_CERT` and `TERN_TLS_KEY` (both or neither).
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let cert = src.get(&TLS_CERT)?;
        let key = src.get(&TLS_KEY)?;
        match (cert, key) {
            (Some(c), Some(k)) => Ok(TlsConfig {
                files: Some((c, k)),
            }),
            (None, None) => Ok(TlsConfig { files: None }),
            (Some(_), None) => Err(ConfigError::Invalid {
                key: "TERN_TLS_KEY".into(),
                value: String::new(),
                expected: "a PEM key file path (TERN_TLS_CERT is set)",
            }),
            (None, Some(_)) => Err(ConfigError::Invalid {
                key: "TERN_TLS_CERT".into(),
                value: String::new(),
                expected: "a PEM certificate file path (TERN_TLS_KEY is set)",
            }),
        }
    }

    /// Build the rustls config, generating `tls/cert.pem` and `tls/key.pem`
    /// under `data_dir` the first time when no files are configured.
    pub fn server_config(
        &self,
        data_dir: &Path,
        hostname: &str,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let (cert_path, key_path) = match &self.files {
            Some((c, k)) => (c.clone(), k.clone()),
            None => ensure_self_signed(data_dir, hostname)?,
        };
        let file_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: rustls::pki_types::pem::Error| TlsError::File {
                path,
                message: e.to_string(),
            }
        };
        let certs = CertificateDer::pem_file_iter(&cert_path)
            .map_err(file_err(&cert_path))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(file_err(&cert_path))?;
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(file_err(&key_path))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        Ok(Arc::new(cfg))
    }
}

fn ensure_self_signed(data_dir: &Path, hostname: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let dir = data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| TlsError::File {
            path,
            message: e.to_string(),
        }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let names = vec![hostname.to_string(), "localhost".to_string()];
    let ck =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    std::fs::write(&cert, ck.cert.pem()).map_err(io(&cert))?;
    write_private(&key, ck.signing_key.serialize_pem().as_bytes()).map_err(io(&key))?;
    tracing::info!(path = %cert.display(), "generated a self-signed TLS certificate");
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

// The client side: verified TLS (REQUIRETLS deliveries, https webhooks).

/// Why the trusted roots for verified TLS could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    /// The CA bundle file could not be read or holds a malformed PEM block.
    #[error("CA bundle {path}: {message}")]
    Read {
        /// The bundle's path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The CA bundle holds no certificate rustls accepts as a root.
    #[error("CA bundle {0}: no usable CA certificate")]
    Empty(PathBuf),
}

/// The roots verified TLS trusts: every certificate in the PEM bundle at
/// `ca_file`, or, without one, the operating system's store (which honours
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`). An empty system store is not an error
/// here (verified deliveries then fail and say why); an empty bundle is.
pub fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, RootsError> {
    let mut store = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let read_err = |e: &dyn std::fmt::Display| RootsError::Read {
                path: path.to_path_buf(),
                message: e.to_string(),
            };
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| read_err(&e))?;
            for cert in certs {
                let cert = cert.map_err(|e| read_err(&e))?;
                // A block rustls cannot use as a trust anchor is skipped,
                // like the system store's odd entries.
                let _ = store.add(cert);
            }
            if store.is_empty() {
                return Err(RootsError::Empty(path.to_path_buf()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "system CA store: some certificates could not be read");
            }
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "system CA store is empty: verified TLS (REQUIRETLS, https webhooks) cannot succeed; configure a CA file"
                );
            }
        }
    }
    Ok(store)
}

/// The rustls client configuration for verified TLS: the WebPKI verifier
/// over `roots`, checking the chain, validity and that the certificate
/// names the host given as the server name (the MX host, RFC 8689 §4.2.1,
/// RFC 8461 §4.2).
pub fn verified_config(
    roots: Arc<rustls::RootCertStore>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}
