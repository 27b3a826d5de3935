//! `tern tenant` and `tern apikey`: the tenant registry (crates/tenant), read
//! and written in NATS KV directly, so they work with only NATS running.

use anyhow::Context;
use clap::Subcommand;
use tern_tenant::{NewTenant, Registry};

use crate::config::TernConfig;

/// `tern tenant …`.
#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Add a tenant that may send from its domains (and their subdomains).
    Add {
        /// Unique name: a-z, 0-9 and '-'.
        name: String,
        /// A sending domain it owns; repeat for more.
        #[arg(long = "domain", value_name = "DOMAIN", required = true)]
        domains: Vec<String>,
        /// Bounce domain of its VERP return paths (default TERN_BOUNCE_DOMAIN).
        #[arg(long)]
        bounce_domain: Option<String>,
        /// Base URL of its unsubscribe links (default TERN_PUBLIC_URL).
        #[arg(long)]
        public_url: Option<String>,
        /// Add List-Unsubscribe to its messages unless a request says otherwise.
        #[arg(long)]
        unsubscribe: bool,
    },
    /// List tenants: id, name, domains.
    List,
}

/// `tern apikey …`.
#[derive(Subcommand, Debug)]
pub enum ApiKeyCommand {
    /// Make an API key; the key is printed once, as the last line.
    Create {
        /// The tenant it authenticates.
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key by its id (from `create` or `list`).
    Revoke { id: String },
    /// List a tenant's key ids.
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
}

async fn registry(cfg: &TernConfig) -> anyhow::Result<Registry> {
    let common = &cfg.ingress.common;
    let url = common.require_nats_url()?;
    let client = tern_runtime::bus::connect_once(url, &common.nats_security, "tern-cli")
        .await
        .context("connect to NATS")?;
    let js = async_nats::jetstream::new(client);
    Ok(Registry::open(&js, common.nats_replicas).await?)
}

/// Run `tern tenant …`.
pub async fn tenant(cfg: &TernConfig, command: TenantCommand) -> anyhow::Result<()> {
    let reg = registry(cfg).await?;
    match command {
        TenantCommand::Add {
            name,
            domains,
            bounce_domain,
            public_url,
            unsubscribe,
        } => {
            let t = reg
                .add_tenant(NewTenant {
                    name,
                    domains,
                    bounce_domain,
                    public_url,
                    unsubscribe,
                })
                .await?;
            println!(
                "tenant {} added (id {}): {}",
                t.name,
                t.id,
                t.domains.join(", ")
            );
        }
        TenantCommand::List => {
            for t in reg.list_tenants().await? {
                println!("{}\t{}\t{}", t.id, t.name, t.domains.join(","));
            }
        }
    }
    Ok(())
}

/// Run `tern apikey …`.
pub async fn apikey(cfg: &TernConfig, command: ApiKeyCommand) -> anyhow::Result<()> {
    let reg = registry(cfg).await?;
    match command {
        ApiKeyCommand::Create { tenant } => {
            let (key, secret) = reg.create_key(&tenant).await?;
            println!("key id {} for tenant {}", key.id, key.tenant);
            println!("the key is shown only now; store it safely:");
            println!("{secret}");
        }
        ApiKeyCommand::Revoke { id } => {
            let key = reg.revoke_key(&id).await?;
            println!("key {} of tenant {} revoked", key.id, key.tenant);
        }
        ApiKeyCommand::List { tenant } => {
            for k in reg.list_keys(&tenant).await? {
                let created = tern_runtime::date::rfc3339(k.created_unix_ms as i64);
                println!("{}\t{}", k.id, created);
            }
        }
    }
    Ok(())
}
