//! The TLS certificate, re-read when its files change (no restart needed).
//!
//! rustls asks [`CertStore`] for the certificate on every handshake; a
//! background task compares the files' modification times and sizes every
//! `tls_reload_interval` and swaps in the new pair once both parse. A
//! half-written or mismatched pair is logged and the old certificate kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tern_runtime::Shutdown;
use tern_runtime::tls::{TlsConfig, TlsError};

/// The current certificate and where it comes from.
#[derive(Debug)]
pub(crate) struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamp: RwLock<Stamp>,
}

/// Modification time and length of both files.
type Stamp = Option<[(SystemTime, u64); 2]>;

fn stamp(paths: [&Path; 2]) -> Stamp {
    let one = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((m.modified().ok()?, m.len()))
    };
    Some([one(paths[0])?, one(paths[1])?])
}

fn file_err(path: &Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |e| TlsError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Load and check a certificate chain and its key.
fn load(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(file_err(cert_path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_err(cert_path))?;
    if certs.is_empty() {
        return Err(TlsError::File {
            path: cert_path.to_path_buf(),
            message: "no certificate in file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(file_err(key_path))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)?;
    let ck = CertifiedKey::new(certs, signer);
    // Refuse a key that does not belong to the certificate.
    ck.keys_match()?;
    Ok(ck)
}

impl CertStore {
    /// Load the configured files, or generate (once) and load the
    /// self-signed pair under `data_dir/tls`.
    pub(crate) fn new(
        tls: &TlsConfig,
        data_dir: &Path,
        hostname: &str,
    ) -> Result<Arc<CertStore>, TlsError> {
        let (cert_path, key_path) = match &tls.files {
            Some((c, k)) => (c.clone(), k.clone()),
            None => {
                // Generates the pair into data_dir/tls when missing.
                tls.server_config(data_dir, hostname)?;
                let dir = data_dir.join("tls");
                (dir.join("cert.pem"), dir.join("key.pem"))
            }
        };
        let stamp = stamp([&cert_path, &key_path]);
        let ck = load(&cert_path, &key_path)?;
        Ok(Arc::new(CertStore {
            cert_path,
            key_path,
            current: RwLock::new(Arc::new(ck)),
            stamp: RwLock::new(stamp),
        }))
    }

    /// The rustls server configuration that resolves through this store.
    pub(crate) fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(Arc::new(cfg))
    }

    /// Reload if either file changed. Returns whether a new certificate is
    /// now in use.
    pub(crate) fn reload_if_changed(&self) -> bool {
        let now = stamp([&self.cert_path, &self.key_path]);
        let Ok(old) = self.stamp.read().map(|s| *s) else {
            return false;
        };
        if now.is_none() || now == old {
            return false;
        }
        match load(&self.cert_path, &self.key_path) {
            Ok(ck) => {
                if let (Ok(mut cur), Ok(mut st)) = (self.current.write(), self.stamp.write()) {
                    *cur = Arc::new(ck);
                    *st = now;
                }
                metrics::counter!("tern_smtp_tls_reloads_total", "result" => "ok").increment(1);
                tracing::info!(path = %self.cert_path.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                // Perhaps caught mid-write: keep the old pair, try again next
                // time (the stamp is not updated).
                metrics::counter!("tern_smtp_tls_reloads_total", "result" => "error").increment(1);
                tracing::warn!(error = %e, "TLS certificate changed but could not be loaded; keeping the old one");
                false
            }
        }
    }

    /// Check for changes every `interval` until `stop`.
    pub(crate) async fn watch(self: Arc<Self>, interval: Duration, stop: Shutdown) {
        poll_every(interval, stop, move || {
            self.reload_if_changed();
        })
        .await
    }
}

/// Run `check` (file system work, so on the blocking pool) every `interval`
/// until `stop`: the reload loop of the TLS files and the DKIM key directory.
pub(crate) async fn poll_every<F>(interval: Duration, stop: Shutdown, check: F)
where
    F: Fn() + Clone + Send + 'static,
{
    loop {
        tokio::select! {
            _ = stop.wait() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let check = check.clone();
        let _ = tokio::task::spawn_blocking(check).await;
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}
