//! The injection API (issue 16): `POST /v1/messages`, `GET` and `DELETE
//! /v1/batches/{id}` over HTTP/JSON on `TERN_API_LISTEN`, and the same as
//! gRPC `tern.v1.Inject` on ingress's gRPC listener, both authenticated by
//! tenant API keys (crates/tenant) and served by one core (`core.rs`). A batch is accepted (`202`) only once
//! its spec is durable in JetStream, like SMTP's `250`; a worker on any
//! replica expands it into per-recipient messages on the spool.

mod batch;
mod core;
mod feedback;
mod grpc;
mod http;
mod idempotency;
mod render;
pub mod request;
mod suppressions;

pub(crate) use feedback::TokenNames;
pub(crate) use grpc::InjectService;

use std::net::SocketAddr;
use std::sync::Arc;

use tern_bounce::token::Secret;
use tern_runtime::Shutdown;
use tern_runtime::config::{CommonConfig, ConfigError, Key, Source};
use tokio::net::TcpListener;

/// The injection API's configuration keys.
pub mod keys {
    use super::*;

    /// `TERN_API_LISTEN`.
    pub const API_LISTEN: Key<Option<SocketAddr>> = Key::new(
        "api_listen",
        "127.0.0.1:2580",
        "injection API (HTTP/JSON, POST /v1/messages); empty disables",
    );
    /// `TERN_API_MAX_BODY`.
    pub const API_MAX_BODY: Key<usize> = Key::new(
        "api_max_body",
        "33554432",
        "largest POST /v1/messages body in octets (more gets 413)",
    );
    /// `TERN_PUBLIC_URL`.
    pub const PUBLIC_URL: Key<Option<String>> = Key::new(
        "public_url",
        "",
        "base URL of unsubscribe links (/u/TOKEN); empty: http:// + the API listener",
    );
    /// `TERN_BOUNCE_DOMAIN`.
    pub const BOUNCE_DOMAIN: Key<Option<String>> = Key::new(
        "bounce_domain",
        "",
        "domain of VERP return paths of injected mail (per tenant overridable); empty: the host name",
    );
}

/// The injection API's settings.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The HTTP listener, if enabled.
    pub listen: Option<SocketAddr>,
    /// Largest request body.
    pub max_body: usize,
    /// Unsubscribe base URL (`None`: from the listener).
    pub public_url: Option<String>,
    /// Cluster bounce domain.
    pub bounce_domain: String,
    /// Cluster secret (VERP, unsubscribe tokens); `None`: plain return
    /// paths and no List-Unsubscribe.
    pub secret: Option<Secret>,
}

impl ApiConfig {
    /// Read the keys (and `TERN_SECRET_FILE`); errors name the key.
    pub fn from_source(src: &Source, common: &CommonConfig) -> Result<Self, ConfigError> {
        let bounce_domain = match src.get(&keys::BOUNCE_DOMAIN)? {
            None => common.hostname.to_ascii_lowercase(),
            Some(d) => tern_tenant::normalize_domain(&d).map_err(|_| ConfigError::Invalid {
                key: "TERN_BOUNCE_DOMAIN".into(),
                value: d.clone(),
                expected: "a domain name like bounces.example.com",
            })?,
        };
        let public_url = src.get(&keys::PUBLIC_URL)?;
        if let Some(u) = &public_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err(ConfigError::Invalid {
                key: "TERN_PUBLIC_URL".into(),
                value: u.clone(),
                expected: "an http:// or https:// URL",
            });
        }
        let secret = match src.get(&tern_bounce::config::SECRET_FILE)? {
            None => None,
            Some(path) => Some(Secret::load(&path).map_err(|e| ConfigError::File {
                path,
                message: format!("TERN_SECRET_FILE: {}", e.detail()),
            })?),
        };
        Ok(ApiConfig {
            listen: src.get(&keys::API_LISTEN)?,
            max_body: src.get(&keys::API_MAX_BODY)?.max(1024),
            public_url: public_url.map(|u| u.trim_end_matches('/').to_string()),
            bounce_domain,
            secret,
        })
    }
}

/// Errors starting the API.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The tenant registry could not be opened.
    #[error(transparent)]
    Tenant(#[from] tern_tenant::TenantError),
    /// The batch stream or buckets could not be set up.
    #[error(transparent)]
    Batch(#[from] batch::BatchError),
    /// The body store could not be opened.
    #[error(transparent)]
    Body(#[from] tern_runtime::body::BodyError),
    /// The suppression lists could not be loaded.
    #[error(transparent)]
    Suppress(#[from] tern_bounce::SuppressError),
    /// The statistics bucket could not be opened.
    #[error(transparent)]
    Stats(#[from] tern_stats::Error),
}

/// Start the API server (when `listener` is given; then `service`, the
/// gRPC front end, goes live too) and the batch worker; both stop at
/// `shutdown`. Setup retries until NATS is ready.
pub(crate) async fn start(
    config: ApiConfig,
    common: CommonConfig,
    listener: Option<TcpListener>,
    service: InjectService,
    js: async_nats::jetstream::Context,
    dkim: crate::dkim::Dkim,
    shutdown: Shutdown,
) -> Result<(), ApiError> {
    let replicas = common.nats_replicas;
    let (tenants, batches, idem, bodies) = loop {
        let setup = async {
            let tenants = tern_tenant::Registry::open(&js, replicas).await?;
            let batches = batch::ensure(&js, replicas).await?;
            let idem = idempotency::open(&js, replicas).await?;
            let bodies = tern_runtime::body::BodyStore::open(&js).await?;
            Ok::<_, ApiError>((tenants, batches, idem, bodies))
        };
        match setup.await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "injection API not ready; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = shutdown.wait() => return Ok(()),
                }
            }
        }
    };
    let expander = Arc::new(batch::Expander {
        js: js.clone(),
        kv: batches.clone(),
        bodies,
        dkim,
        hostname: common.hostname.clone(),
        secret: config.secret.clone(),
    });
    let worker = tokio::spawn(batch::run_worker(
        expander,
        shutdown.clone(),
        common.shutdown_grace,
    ));
    if let Some(listener) = listener {
        let (suppressions, stats) = loop {
            let setup = async {
                let s = tern_bounce::Suppressions::open(&js, replicas, shutdown.clone()).await?;
                let r = tern_stats::StatsReader::open(&js, replicas).await?;
                Ok::<_, ApiError>((s, r))
            };
            match setup.await {
                Ok(s) => break s,
                Err(e) => {
                    tracing::warn!(error = %e, "injection API lists not ready; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        _ = shutdown.wait() => return Ok(()),
                    }
                }
            }
        };
        let unsubscribe = match &config.secret {
            None => None,
            Some(secret) => {
                let names = feedback::TokenNames::follow(tenants.clone(), shutdown.clone()).await;
                Some(tern_bounce::unsubscribe::router(Arc::new(
                    tern_bounce::unsubscribe::UnsubscribeState {
                        secret: secret.clone(),
                        lists: suppressions.clone(),
                        names: Arc::new(names),
                    },
                )))
            }
        };
        let public_url = config.public_url.clone().unwrap_or_else(|| {
            listener
                .local_addr()
                .map(|a| format!("http://{a}"))
                .unwrap_or_default()
        });
        let state = core::Api {
            config: Arc::new(ApiConfig {
                public_url: Some(public_url),
                ..config
            }),
            tenants,
            batches,
            idem,
            js,
            suppressions,
            stats,
            unsubscribe,
        };
        service.set(state.clone());
        http::serve(listener, state, shutdown).await;
    }
    let _ = worker.await;
    Ok(())
}
