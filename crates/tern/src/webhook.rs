//! `tern webhook`: a tenant's webhooks (crates/stats `hooks::Registry`),
//! read and written in NATS KV directly, so they work with only NATS
//! running; the dispatcher in every queue replica picks changes up at its
//! next batch.

use anyhow::Context;
use clap::Subcommand;
use tern_stats::hooks::{KINDS, Registry};

use crate::config::TernConfig;

/// `tern webhook …`.
#[derive(Subcommand, Debug)]
pub enum WebhookCommand {
    /// Register a webhook; its signing secret is printed once, as the last line.
    Add {
        /// The tenant whose events it receives.
        #[arg(long)]
        tenant: String,
        /// Where batches are POSTed: an http:// or https:// URL.
        #[arg(long)]
        url: String,
        /// Event kinds it receives, comma-separated (default: every kind).
        #[arg(long, value_delimiter = ',', value_name = "KIND,…")]
        events: Vec<String>,
    },
    /// List a tenant's webhooks: id, URL, event kinds (never the secret).
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Remove a webhook of a tenant by its id.
    Del {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The webhook id (from `add` or `list`).
        id: String,
    },
}

/// Run `tern webhook …`.
pub async fn run(cfg: &TernConfig, command: WebhookCommand) -> anyhow::Result<()> {
    let common = &cfg.ingress.common;
    let url = common.require_nats_url()?;
    let client = tern_runtime::bus::connect_once(url, &common.nats_security, "tern-cli")
        .await
        .context("connect to NATS")?;
    let js = async_nats::jetstream::new(client);
    let hooks = Registry::open(&js, common.nats_replicas).await?;
    match command {
        WebhookCommand::Add {
            tenant,
            url,
            events,
        } => {
            // Only a tenant that exists gets webhooks (a typo would never fire).
            let tenants = tern_tenant::Registry::open(&js, common.nats_replicas).await?;
            tenants.tenant(&tenant).await?;
            let events: Vec<String> = events.into_iter().filter(|k| !k.is_empty()).collect();
            let h = hooks.add(&tenant, &url, events).await?;
            println!("webhook {} for tenant {}: {}", h.id, h.tenant, h.url);
            println!("events: {}", kinds(&h.events));
            println!("the signing secret is shown only now; store it safely:");
            println!("{}", h.secret);
        }
        WebhookCommand::List { tenant } => {
            for h in hooks.list(&tenant).await? {
                println!("{}\t{}\t{}", h.id, h.url, kinds(&h.events));
            }
        }
        WebhookCommand::Del { tenant, id } => {
            if !hooks.delete(&tenant, &id).await? {
                anyhow::bail!("tenant {tenant} has no webhook {id}");
            }
            println!("webhook {id} of tenant {tenant} deleted");
        }
    }
    Ok(())
}

/// The kinds a webhook receives, as `list` shows them.
fn kinds(events: &[String]) -> String {
    if events.is_empty() {
        format!("all ({})", KINDS.join(","))
    } else {
        events.join(",")
    }
}
