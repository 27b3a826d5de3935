//! `tern suppress`: the suppression lists, straight from the
//! `tern-suppressions` bucket (issue 17).

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use tern_bounce::csv;
use tern_bounce::suppress::{Entry, Reason, Suppressions};
use tern_runtime::{Shutdown, bus, now_unix_ms};

use crate::config::TernConfig;

/// Scope flags shared by every subcommand.
#[derive(clap::Args, Debug)]
pub struct Scope {
    /// The tenant's name; empty (the default): the system list, which
    /// applies to all mail.
    #[arg(long, default_value = "")]
    tenant: String,
    /// A campaign or list; empty: the whole tenant.
    #[arg(long, default_value = "")]
    campaign: String,
}

/// `tern suppress …`.
#[derive(Subcommand, Debug)]
pub enum SuppressCommand {
    /// Suppress addresses (reason manual unless --reason).
    Add {
        #[command(flatten)]
        scope: Scope,
        /// hard_bounce, complaint, unsubscribe or manual.
        #[arg(long, default_value = "manual")]
        reason: String,
        #[arg(required = true, num_args = 1..)]
        addresses: Vec<String>,
    },
    /// Remove entries.
    Del {
        #[command(flatten)]
        scope: Scope,
        #[arg(required = true, num_args = 1..)]
        addresses: Vec<String>,
    },
    /// List a tenant's entries: address, campaign, reason, time, source.
    List {
        #[command(flatten)]
        scope: Scope,
    },
    /// Add entries from a CSV file (`-`: stdin); the header names the
    /// columns (tenant,campaign,address,reason,at_unix_ms,source; only address required).
    Import {
        #[command(flatten)]
        scope: Scope,
        file: PathBuf,
    },
    /// Write a tenant's entries as CSV to stdout.
    Export {
        #[command(flatten)]
        scope: Scope,
    },
}

/// Run one `tern suppress` command.
pub async fn run(cfg: &TernConfig, command: SuppressCommand) -> anyhow::Result<()> {
    let common = &cfg.queue.common;
    let client = bus::connect_once(
        common.require_nats_url()?,
        &common.nats_security,
        "tern-suppress",
    )
    .await?;
    let js = async_nats::jetstream::new(client);
    let stop = Shutdown::new();
    let lists = Suppressions::open(&js, common.nats_replicas, stop.clone()).await?;
    let result = command_on(&lists, command).await;
    stop.trigger();
    result
}

async fn command_on(lists: &Suppressions, command: SuppressCommand) -> anyhow::Result<()> {
    match command {
        SuppressCommand::Add {
            scope,
            reason,
            addresses,
        } => {
            let reason = Reason::parse(&reason).with_context(|| {
                format!("--reason {reason:?}: hard_bounce, complaint, unsubscribe or manual")
            })?;
            for address in addresses {
                lists
                    .add(&Entry {
                        tenant: scope.tenant.clone(),
                        campaign: scope.campaign.clone(),
                        address,
                        reason,
                        at_unix_ms: now_unix_ms(),
                        source: "manual".into(),
                    })
                    .await?;
            }
            println!("added");
        }
        SuppressCommand::Del { scope, addresses } => {
            for a in addresses {
                let existed = lists.remove(&scope.tenant, &scope.campaign, &a).await?;
                println!("{a}\t{}", if existed { "removed" } else { "not listed" });
            }
        }
        SuppressCommand::List { scope } => {
            for e in entries(lists, &scope).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    e.address,
                    if e.campaign.is_empty() {
                        "*"
                    } else {
                        &e.campaign
                    },
                    e.reason.name(),
                    tern_runtime::date::rfc3339(e.at_unix_ms),
                    e.source
                );
            }
        }
        SuppressCommand::Export { scope } => {
            println!("{}", csv::HEADER);
            for e in entries(lists, &scope).await? {
                println!("{}", csv::line(&e));
            }
        }
        SuppressCommand::Import { scope, file } => {
            let mut text = String::new();
            if file.as_os_str() == "-" {
                std::io::stdin().read_to_string(&mut text)?;
            } else {
                text = std::fs::read_to_string(&file)
                    .with_context(|| format!("read {}", file.display()))?;
            }
            let defaults = csv::Defaults {
                tenant: scope.tenant,
                reason: Reason::Manual,
                at_unix_ms: now_unix_ms(),
            };
            let all = csv::parse(&text, &defaults).with_context(|| file.display().to_string())?;
            lists.add_all(&all).await?;
            println!("imported {}", all.len());
        }
    }
    Ok(())
}

/// The tenant's entries, only the campaign's when one is given.
async fn entries(lists: &Suppressions, scope: &Scope) -> anyhow::Result<Vec<Entry>> {
    let mut all = lists.list(&scope.tenant).await?;
    if !scope.campaign.is_empty() {
        all.retain(|e| e.campaign == scope.campaign);
    }
    Ok(all)
}
