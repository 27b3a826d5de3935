//! Outbound DKIM: signing accepted mail once, before it is spooled, so every
//! delivery attempt sends the same signed bytes. Keys, header list and
//! crypto live in `tern-dkim`; this module decides which messages are
//! signed, what happens when signing fails, and reloads the key directory.
//!
//! Signed: mail from an authenticated client or a trusted network, whose
//! From domain (or a parent of it) has keys. Inbound MX mail from anyone
//! else is never signed.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tern_dkim::{DkimError, FromDomainError, KeySet, KeyStore};
use tern_runtime::Shutdown;
use tern_runtime::config::{ConfigError, ConfigValue, Domain, Key, List, Source};
use tern_smtp::{Message, Reply, codes};

use crate::conn::Ctx;

/// The DKIM configuration keys.
pub mod keys {
    use super::*;

    /// `TERN_DKIM_KEYS_DIR`.
    pub const DKIM_KEYS_DIR: Key<Option<PathBuf>> = Key::new(
        "dkim_keys_dir",
        "",
        "DKIM private keys, one <selector>._domainkey.<domain>.<rsa|ed25519>.pem file each (default: <data_dir>/dkim)",
    );
    /// `TERN_DKIM_DOMAINS`.
    pub const DKIM_DOMAINS: Key<List<Domain>> = Key::new(
        "dkim_domains",
        "",
        "sending domains that must have a DKIM key; a missing one is a start-up error",
    );
    /// `TERN_DKIM_EXPIRY`.
    pub const DKIM_EXPIRY: Key<Option<Duration>> = Key::new(
        "dkim_expiry",
        "",
        "signature lifetime, sets x= (RFC 6376 §3.5); empty: signatures do not expire",
    );
    /// `TERN_DKIM_ON_FAILURE`.
    pub const DKIM_ON_FAILURE: Key<OnFailure> = Key::new(
        "dkim_on_failure",
        "defer",
        "a message that should be signed but cannot be: defer (451 4.7.0 at end of DATA; 550 5.6.0 when its From header names no single domain) or send (unsigned, logged and counted)",
    );
    /// `TERN_DKIM_RELOAD_INTERVAL`.
    pub const DKIM_RELOAD_INTERVAL: Key<Duration> = Key::new(
        "dkim_reload_interval",
        "10s",
        "how often the DKIM key directory is checked for changes",
    );
}

/// What to do with a message that should be signed but cannot be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Refuse it for now: `451 4.7.0` at the end of DATA; the client retries.
    Defer,
    /// Accept it unsigned (counted and logged).
    Send,
}

impl ConfigValue for OnFailure {
    const EXPECTED: &'static str = "defer or send";
    fn parse_value(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "defer" => Some(OnFailure::Defer),
            "send" => Some(OnFailure::Send),
            _ => None,
        }
    }
}

/// The DKIM settings of ingress.
#[derive(Debug, Clone)]
pub struct DkimConfig {
    /// The key directory.
    pub keys_dir: PathBuf,
    /// Domains that must have a key.
    pub domains: Vec<String>,
    /// `x=` lifetime, if any.
    pub expiry: Option<Duration>,
    /// Defer or send when signing fails.
    pub on_failure: OnFailure,
    /// How often the key directory is checked.
    pub reload_interval: Duration,
}

impl DkimConfig {
    /// Read the `dkim_*` keys; the key directory defaults to `data_dir/dkim`.
    pub fn from_source(src: &Source, data_dir: &std::path::Path) -> Result<Self, ConfigError> {
        Ok(DkimConfig {
            keys_dir: src
                .get(&keys::DKIM_KEYS_DIR)?
                .unwrap_or_else(|| data_dir.join("dkim")),
            domains: src
                .get(&keys::DKIM_DOMAINS)?
                .0
                .into_iter()
                .map(|d| d.0)
                .collect(),
            expiry: src.get(&keys::DKIM_EXPIRY)?,
            on_failure: src.get(&keys::DKIM_ON_FAILURE)?,
            reload_interval: src.get(&keys::DKIM_RELOAD_INTERVAL)?,
        })
    }

    /// Load the key directory: a start-up error names the bad or missing file.
    pub(crate) fn open(&self) -> Result<Dkim, DkimError> {
        let store = KeyStore::open(
            &self.keys_dir,
            &self.domains,
            self.expiry.map(|d| d.as_secs().max(1)),
        )?;
        let set = store.current();
        let n = set.keys().count();
        metrics::gauge!("tern_ingress_dkim_keys").set(n as f64);
        if n == 0 {
            tracing::info!(dir = %self.keys_dir.display(), "no DKIM keys: outbound mail is not signed");
        }
        for k in set.keys() {
            tracing::info!(key = %k.name, path = %k.path.display(), "DKIM key loaded");
        }
        Ok(Dkim {
            store: Arc::new(store),
            on_failure: self.on_failure,
            reload_interval: self.reload_interval,
        })
    }
}

/// The loaded keys and the failure policy, shared by every session.
#[derive(Debug, Clone)]
pub(crate) struct Dkim {
    store: Arc<KeyStore>,
    on_failure: OnFailure,
    reload_interval: Duration,
}

/// Bodies above this are signed on the blocking pool (hashing them takes a
/// while); small ones inline, which is cheaper than the hand-off.
const INLINE_SIGN_MAX: usize = 64 * 1024;

/// Why a message that should be signed was not.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SignFailure {
    /// The From domain could not be determined.
    #[error(transparent)]
    From(#[from] FromDomainError),
    /// The crypto library failed.
    #[error(transparent)]
    Sign(#[from] DkimError),
    /// The signing task panicked or was cancelled.
    #[error("signing task failed: {0}")]
    Task(String),
}

impl SignFailure {
    fn reason(&self) -> &'static str {
        match self {
            SignFailure::From(e) => e.as_str(),
            SignFailure::Sign(_) => "sign_error",
            SignFailure::Task(_) => "task",
        }
    }

    /// A From header that does not name one domain is the message's fault:
    /// RFC 5322 §3.6 requires exactly one From field, and the client's retry
    /// would send the same bytes, so the refusal is permanent.
    fn is_permanent(&self) -> bool {
        matches!(self, SignFailure::From(_))
    }
}

/// Sign with the keys of `message`'s From domain: `Ok(None)` when it has none.
fn sign(keys: &KeySet, message: &[u8]) -> Result<Option<String>, SignFailure> {
    let domain = tern_dkim::from_domain(message)?;
    let fields = keys.sign(&domain, message)?;
    for f in &fields {
        let alg = if f.contains("a=ed25519") {
            "ed25519"
        } else {
            "rsa"
        };
        metrics::counter!("tern_ingress_dkim_signatures_total", "algorithm" => alg).increment(1);
    }
    Ok((!fields.is_empty()).then(|| fields.concat()))
}

impl Dkim {
    /// Sign a message made by the injection API (its sender is an
    /// authenticated tenant): the `DKIM-Signature` fields, `Ok(None)` when
    /// the From domain has no key, or why it failed; with
    /// `dkim_on_failure=send` a failure is `Ok(None)` (counted, logged).
    pub(crate) async fn sign_injected(
        &self,
        message: bytes::Bytes,
    ) -> Result<Option<String>, SignFailure> {
        let keys = self.store.current();
        if keys.is_empty() {
            return Ok(None);
        }
        let result = if message.len() <= INLINE_SIGN_MAX {
            sign(&keys, &message)
        } else {
            tokio::task::spawn_blocking(move || sign(&keys, &message))
                .await
                .unwrap_or_else(|e| Err(SignFailure::Task(e.to_string())))
        };
        match result {
            Err(e) if self.on_failure == OnFailure::Send => {
                metrics::counter!("tern_ingress_dkim_sign_failures_total", "reason" => e.reason(), "action" => "send").increment(1);
                tracing::warn!(error = %e, "injected message could not be DKIM-signed; sending unsigned");
                Ok(None)
            }
            other => other,
        }
    }

    /// Watch the key directory until `stop`, swapping in changed keys.
    pub(crate) async fn watch(self, stop: Shutdown) {
        let store = self.store.clone();
        crate::tls::poll_every(self.reload_interval, stop, move || {
            match store.reload_if_changed() {
                None => {}
                Some(Ok(n)) => {
                    metrics::counter!("tern_ingress_dkim_reloads_total", "result" => "ok")
                        .increment(1);
                    metrics::gauge!("tern_ingress_dkim_keys").set(n as f64);
                    tracing::info!(keys = n, dir = %store.dir().display(), "DKIM keys reloaded");
                }
                Some(Err(e)) => {
                    metrics::counter!("tern_ingress_dkim_reloads_total", "result" => "error")
                        .increment(1);
                    tracing::warn!(error = %e, "DKIM key directory changed but could not be loaded; keeping the old keys");
                }
            }
        })
        .await
    }
}

impl Ctx {
    /// The `DKIM-Signature` fields to prepend to `message` (`Ok(None)`: not
    /// signed), or the reply that defers it. Hook point for outbound mail
    /// authentication, called by `accept_message` before the body is stored.
    pub(crate) async fn dkim_sign(
        &self,
        id: &str,
        message: &Message,
        client: IpAddr,
    ) -> Result<Option<String>, Reply> {
        let keys = self.dkim.store.current();
        if keys.is_empty() || !(message.auth_user.is_some() || self.trusted(client)) {
            return Ok(None);
        }
        let result = if message.body.len() <= INLINE_SIGN_MAX {
            sign(&keys, &message.body)
        } else {
            let body = message.body.clone();
            tokio::task::spawn_blocking(move || sign(&keys, &body))
                .await
                .unwrap_or_else(|e| Err(SignFailure::Task(e.to_string())))
        };
        match result {
            Ok(Some(fields)) => {
                metrics::counter!("tern_ingress_dkim_signed_total").increment(1);
                Ok(Some(fields))
            }
            Ok(None) => {
                metrics::counter!("tern_ingress_dkim_unsigned_total", "reason" => "no_key")
                    .increment(1);
                Ok(None)
            }
            Err(e) => self.sign_failed(id, message, e),
        }
    }

    fn sign_failed(
        &self,
        id: &str,
        message: &Message,
        e: SignFailure,
    ) -> Result<Option<String>, Reply> {
        let action = match self.dkim.on_failure {
            OnFailure::Defer => "defer",
            OnFailure::Send => "send",
        };
        metrics::counter!(
            "tern_ingress_dkim_sign_failures_total",
            "reason" => e.reason(),
            "action" => action
        )
        .increment(1);
        tracing::warn!(
            message_id = %id,
            mail_from = %message.mail_from.sender(),
            error = %e,
            action,
            "message could not be DKIM-signed"
        );
        match self.dkim.on_failure {
            OnFailure::Send => Ok(None),
            OnFailure::Defer if e.is_permanent() => Err(Reply::new(
                550,
                codes::BAD_CONTENT,
                format!("Message cannot be DKIM-signed: {e}"),
            )),
            OnFailure::Defer => Err(Reply::new(
                451,
                codes::TEMP_SECURITY,
                format!("Message could not be DKIM-signed ({e}), try again later"),
            )),
        }
    }
}
