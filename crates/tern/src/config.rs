//! The whole system's configuration: every service's typed config read from
//! one source, so an unknown key is caught whichever service runs.

use tern_runtime::config::{ConfigError, Effective, Source};
use tern_runtime::managed_nats::ManagedNatsConfig;

/// Every service's config, validated together.
pub struct TernConfig {
    pub ingress: tern_ingress::Config,
    pub queue: tern_queue::Config,
    pub resolver: tern_resolver::Config,
    pub delivery: tern_delivery::Config,
    pub mailbox: tern_mailbox::Config,
    pub managed_nats: ManagedNatsConfig,
    /// Bounce classification rules and the cluster secret.
    pub bounce: tern_bounce::BounceConfig,
    /// Mailbox gRPC URL for the `tern user` commands.
    pub mailbox_url: String,
    /// Queue gRPC URL for the `tern queue` commands.
    pub queue_url: String,
    /// Resolver gRPC URL for `tern dkim list`.
    pub resolver_url: String,
    /// `log_format = json`.
    pub log_json: bool,
    /// `TERN_LOG`: the log filter.
    pub log_filter: String,
    /// Effective values, for `tern config check`.
    pub effective: Vec<Effective>,
}

impl TernConfig {
    /// Read and validate everything; unknown keys are errors.
    pub fn load(src: &Source) -> Result<Self, ConfigError> {
        use tern_runtime::config::{endpoints, keys};
        let log_format = src.get(&keys::LOG_FORMAT)?;
        let log_json = match log_format.as_str() {
            "json" => true,
            "text" => false,
            other => {
                return Err(ConfigError::Invalid {
                    key: "TERN_LOG_FORMAT".into(),
                    value: other.into(),
                    expected: "text or json",
                });
            }
        };
        let mut cfg = TernConfig {
            ingress: tern_ingress::Config::from_source(src)?,
            queue: tern_queue::Config::from_source(src)?,
            resolver: tern_resolver::Config::from_source(src)?,
            delivery: tern_delivery::Config::from_source(src)?,
            mailbox: tern_mailbox::Config::from_source(src)?,
            managed_nats: ManagedNatsConfig::from_source(src)?,
            bounce: tern_bounce::BounceConfig::from_source(src)?,
            mailbox_url: endpoints::url(src, &endpoints::MAILBOX_URL, &endpoints::MAILBOX_GRPC)?,
            queue_url: endpoints::url(src, &endpoints::QUEUE_URL, &endpoints::QUEUE_GRPC)?,
            resolver_url: endpoints::url(src, &endpoints::RESOLVER_URL, &endpoints::RESOLVER_GRPC)?,
            log_json,
            log_filter: src.get(&keys::LOG)?,
            effective: Vec::new(),
        };
        cfg.effective = src.finish()?;
        Ok(cfg)
    }

    /// Point every service at `url` (the managed nats-server under `tern up`).
    pub fn set_nats_url(&mut self, url: &str) {
        for common in [
            &mut self.ingress.common,
            &mut self.queue.common,
            &mut self.resolver.common,
            &mut self.delivery.common,
            &mut self.mailbox.common,
        ] {
            common.nats_url = Some(url.to_string());
        }
    }
}
