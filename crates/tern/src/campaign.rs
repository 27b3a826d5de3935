//! `tern campaign`: the campaigns the complaint circuit breaker paused
//! (issue 17), straight from the `tern-campaign-pauses` bucket.

use clap::Subcommand;
use tern_runtime::bus;
use tern_stats::StatsReader;
use tern_stats::pause::{self, PauseState, Rate, Resumed};

use crate::config::TernConfig;

/// `tern campaign …`.
#[derive(Subcommand, Debug)]
pub enum CampaignCommand {
    /// Campaigns the breaker paused or that were resumed since: state,
    /// since when, lifetime delivered/complained, complaint and hard-bounce
    /// rates, and the jobs waiting for a resume.
    Status {
        /// Only this tenant's campaigns.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Send a paused campaign again: its waiting jobs go back to the queue,
    /// and the breaker judges only what is delivered from now on.
    Resume {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The campaign tag.
        campaign: String,
    },
}

/// Run one `tern campaign` command.
pub async fn run(cfg: &TernConfig, command: CampaignCommand) -> anyhow::Result<()> {
    let common = &cfg.queue.common;
    let client = bus::connect_once(
        common.require_nats_url()?,
        &common.nats_security,
        "tern-campaign",
    )
    .await?;
    let js = async_nats::jetstream::new(client);
    let reader = StatsReader::open(&js, common.nats_replicas).await?;
    match command {
        CampaignCommand::Status { tenant } => {
            println!(
                "tenant\tcampaign\tstate\tsince\tdelivered\tcomplained\tcomplaint_rate\thard_bounce_rate\twaiting"
            );
            for r in pause::list(&js, tenant.as_deref()).await? {
                let totals = reader.totals(&r.tenant, &r.campaign).await?;
                let waiting = pause::waiting(&js, &r.tenant, &r.campaign).await?;
                let state = match r.state {
                    PauseState::Paused => "paused",
                    PauseState::Resumed => "resumed",
                };
                println!(
                    "{}\t{}\t{state}\t{}\t{}\t{}\t{:.3}%\t{:.3}%\t{waiting}",
                    r.tenant,
                    r.campaign,
                    tern_runtime::date::rfc3339(r.at_unix_ms),
                    totals.delivered,
                    totals.complained,
                    totals.complaint_rate() * 100.0,
                    totals.hard_bounce_rate() * 100.0,
                );
            }
            let threshold: Rate = cfg.queue.stats.breaker.rate;
            eprintln!(
                "breaker: pause above {:.3}% complaints after {} deliveries{}",
                threshold.as_f64() * 100.0,
                cfg.queue.stats.breaker.min_delivered,
                if threshold.0 == 0 { " (off)" } else { "" }
            );
        }
        CampaignCommand::Resume { tenant, campaign } => {
            match pause::resume(&js, &reader, &tenant, &campaign).await? {
                Resumed::Resumed { moved } => {
                    println!(
                        "campaign {campaign} of {tenant} resumed; {moved} jobs back in the queue"
                    );
                }
                Resumed::NotPaused { moved } => {
                    println!(
                        "campaign {campaign} of {tenant} is not paused; {moved} jobs back in the queue"
                    );
                }
            }
        }
    }
    Ok(())
}
