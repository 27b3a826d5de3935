//! Command-line arguments and dispatch.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tern_proto::accounts_client::AccountsClient;
use tern_proto::queue_admin_client::QueueAdminClient;
use tern_proto::resolver_client::ResolverClient;
use tern_runtime::{Shutdown, config::Source, grpc, telemetry};

use crate::config::TernConfig;

/// Tern: a mail system as cloud-native services.
#[derive(Parser, Debug)]
#[command(name = "tern", version)]
pub struct Args {
    /// Optional TOML config file (flat keys, e.g. `smtp_listen = "0.0.0.0:25"`); TERN_* variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run all five services in one process (with a managed nats-server if TERN_NATS_URL is unset).
    Up,
    /// Run the SMTP ingress service.
    Ingress,
    /// Run the queue service, or manage the queue.
    Queue {
        #[command(subcommand)]
        command: Option<QueueCommand>,
    },
    /// Run the resolver service.
    Resolver,
    /// Run the delivery service.
    Delivery,
    /// Run the mailbox service.
    Mailbox,
    /// Manage accounts (talks to the mailbox service over gRPC).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Bounce handling.
    Bounce {
        #[command(subcommand)]
        command: BounceCommand,
    },
    /// Suppression lists (per tenant; the system list when --tenant is empty).
    Suppress {
        #[command(subcommand)]
        command: crate::suppress::SuppressCommand,
    },
    /// DKIM signing keys (in TERN_DKIM_KEYS_DIR).
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// Campaigns paused by the complaint circuit breaker: status, resume.
    Campaign {
        #[command(subcommand)]
        command: crate::campaign::CampaignCommand,
    },
    /// Tenants of the injection API and their sending domains (NATS KV).
    Tenant {
        #[command(subcommand)]
        command: crate::tenant::TenantCommand,
    },
    /// API keys of the injection API.
    Apikey {
        #[command(subcommand)]
        command: crate::tenant::ApiKeyCommand,
    },
    /// Webhooks of a tenant: signed batches of its lifecycle events (NATS KV).
    Webhook {
        #[command(subcommand)]
        command: crate::webhook::WebhookCommand,
    },
    /// Configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Delivery shaping actions in force (kept in NATS, for every delivery process).
    Shaping {
        #[command(subcommand)]
        command: ShapingCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ShapingCommand {
    /// List the automation actions in force: pair, action, rule, time left, the reply.
    Status,
    /// Lift actions now: all, or those of one pair, egress source or provider (provider-<name>).
    Clear {
        /// A pair (as `status` prints it), a source pool or a target; all when absent.
        which: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum QueueCommand {
    /// Jobs per destination: ready, scheduled (waiting to retry), held; oldest age; in flight.
    Stats,
    /// One message: its pending jobs, recipients, attempts, last replies, next attempt.
    Show { message_id: String },
    /// Stop attempts for a destination (a domain, or "local"); jobs are kept.
    Hold {
        #[command(flatten)]
        select: DestinationSelect,
    },
    /// Resume a held destination: its jobs become ready now.
    Release {
        #[command(flatten)]
        select: DestinationSelect,
    },
    /// List pending jobs: message id, destination, state, attempt, next attempt, recipients.
    Ls {
        /// Only jobs for this destination (a domain, or "local").
        #[arg(long = "domain", value_name = "DESTINATION")]
        destination: Option<String>,
        /// Only jobs in this state: ready, scheduled or held.
        #[arg(long)]
        state: Option<String>,
        /// At most this many jobs (the server caps it at 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Attempt now the jobs waiting for their retry time, of one message or one destination.
    Retry {
        #[command(flatten)]
        select: JobSelect,
    },
    /// Remove the pending jobs of one message or one destination from the queue.
    Delete {
        #[command(flatten)]
        select: JobSelect,
        /// Send the sender a failure DSN for the removed recipients.
        #[arg(long)]
        bounce: bool,
    },
}

/// The destination `hold` and `release` act on: `--domain D`, the form
/// every queue command uses; the bare `hold D` of earlier releases still works.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
struct DestinationSelect {
    /// The destination (a domain, or "local").
    #[arg(long = "domain", value_name = "DESTINATION")]
    destination: Option<String>,
    /// The destination, as earlier releases took it (same as --domain).
    #[arg(value_name = "DESTINATION", hide = true)]
    legacy: Option<String>,
}

impl DestinationSelect {
    fn destination(self) -> String {
        self.destination.or(self.legacy).unwrap_or_default()
    }
}

/// Which jobs `retry` and `delete` act on: one message, or one destination.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
struct JobSelect {
    /// The message id from the 250 reply.
    message_id: Option<String>,
    /// Every pending job for this destination (a domain, or "local").
    #[arg(long = "domain", value_name = "DESTINATION")]
    destination: Option<String>,
}

impl From<JobSelect> for tern_proto::SelectRequest {
    fn from(s: JobSelect) -> Self {
        tern_proto::SelectRequest {
            message_id: s.message_id.unwrap_or_default(),
            destination: s.destination.unwrap_or_default(),
        }
    }
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Create an account; the password is read from the first line of stdin.
    Add { email: String },
    /// Delete an account.
    Del { email: String },
    /// List accounts.
    List,
    /// Change a password; the new password is read from stdin.
    Passwd { email: String },
    /// Show an account's storage use and quota, or set the quota first.
    Quota {
        email: String,
        /// New quota in bytes (suffix K, M or G for KiB, MiB, GiB), or `none` for unlimited.
        bytes: Option<String>,
    },
    /// Aliases and catch-alls: mail to them is delivered to an account.
    Alias {
        #[command(subcommand)]
        command: AliasCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AliasCommand {
    /// Deliver mail for ALIAS (an address, or `@domain` for the domain's catch-all) to the account TARGET.
    Add { alias: String, target: String },
    /// Remove an alias or catch-all.
    Del { alias: String },
    /// List aliases (only those of TARGET when given).
    List { target: Option<String> },
}

#[derive(Subcommand, Debug)]
enum BounceCommand {
    /// Print the class of an SMTP reply or DSN diagnostic, and the rule that decided it.
    Classify {
        /// Rules file to use instead of TERN_BOUNCE_RULES_FILE (or the built-in rules).
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
        /// The reply, e.g. "550 5.1.1 The email account ... does not exist"; `-` reads it from stdin.
        #[arg(required = true, num_args = 1..)]
        reply: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum DkimCommand {
    /// Generate a signing key into the key directory and print the DNS record to publish.
    Keygen {
        /// The signing domain (d=), normally the From domain or its parent.
        #[arg(long)]
        domain: String,
        /// The selector (s=); one per key, e.g. a date like s202612.
        #[arg(long)]
        selector: String,
        /// rsa or ed25519 (RFC 8463).
        #[arg(long, default_value = "rsa")]
        algorithm: tern_dkim::Algorithm,
        /// RSA key size.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
    },
    /// List the keys and whether DNS publishes each one (asks the resolver service).
    List,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the configuration and print the effective values.
    Check,
}

/// Run the command.
pub async fn dispatch(args: Args) -> anyhow::Result<()> {
    let src = Source::load(args.config.as_deref())?;
    let cfg = TernConfig::load(&src)?;
    match args.command {
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            for e in &cfg.effective {
                let env = tern_runtime::config::env_name(e.name);
                println!("{env}={}\t# {} ({})", e.value, e.help, e.origin);
            }
            println!("config ok");
            Ok(())
        }
        Command::Bounce {
            command: BounceCommand::Classify { rules, reply },
        } => bounce_classify(&cfg, rules, reply),
        Command::User { command } => user(&cfg, command).await,
        Command::Suppress { command } => crate::suppress::run(&cfg, command).await,
        Command::Dkim { command } => dkim(&cfg, command).await,
        Command::Tenant { command } => crate::tenant::tenant(&cfg, command).await,
        Command::Campaign { command } => crate::campaign::run(&cfg, command).await,
        Command::Apikey { command } => crate::tenant::apikey(&cfg, command).await,
        Command::Webhook { command } => crate::webhook::run(&cfg, command).await,
        Command::Queue { command: Some(c) } => queue_admin(&cfg, c).await,
        Command::Shaping { command } => shaping_admin(&cfg, command).await,
        Command::Up => {
            let _t = telemetry::init("tern", cfg.log_json, &cfg.log_filter)?;
            crate::up::up(cfg).await
        }
        service => {
            let shutdown = Shutdown::new();
            shutdown.trigger_on_signals();
            macro_rules! serve {
                ($name:literal, $krate:ident, $cfg:expr) => {{
                    let _t =
                        telemetry::init(concat!("tern-", $name), cfg.log_json, &cfg.log_filter)?;
                    let bound = $krate::bind($cfg).await.context(concat!("start ", $name))?;
                    for (what, addr) in bound.addrs() {
                        tracing::info!("{what} listening on {addr}");
                    }
                    bound.run(shutdown).await.context($name)
                }};
            }
            match service {
                Command::Ingress => serve!("ingress", tern_ingress, cfg.ingress),
                Command::Queue { command: None } => serve!("queue", tern_queue, cfg.queue),
                Command::Resolver => serve!("resolver", tern_resolver, cfg.resolver),
                Command::Delivery => serve!("delivery", tern_delivery, cfg.delivery),
                Command::Mailbox => serve!("mailbox", tern_mailbox, cfg.mailbox),
                _ => unreachable!("handled above"),
            }
        }
    }
}

/// `tern bounce classify`: one line, the class first.
fn bounce_classify(
    cfg: &TernConfig,
    rules: Option<PathBuf>,
    reply: Vec<String>,
) -> anyhow::Result<()> {
    let loaded;
    let rules = match rules {
        Some(path) => {
            loaded = tern_bounce::Rules::load(Some(&path))?;
            &loaded
        }
        None => &cfg.bounce.rules,
    };
    let text = if reply == ["-"] {
        std::io::read_to_string(std::io::stdin().lock()).context("read the reply from stdin")?
    } else {
        reply.join(" ")
    };
    let v = rules.classify(&tern_bounce::Observation::parse(&text));
    let mut notes = vec![v.matched.to_string()];
    notes.push(
        if v.permanent {
            "permanent"
        } else {
            "temporary"
        }
        .to_string(),
    );
    if v.suppresses() {
        notes.push("suppresses the recipient".to_string());
    }
    println!("{} ({})", v.class, notes.join("; "));
    Ok(())
}

fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("read password from stdin")?;
    let pw = line.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        bail!(
            "empty password: give it on stdin, e.g. `echo secret | tern user add alice@example.com`"
        );
    }
    Ok(pw)
}

async fn user(cfg: &TernConfig, command: UserCommand) -> anyhow::Result<()> {
    let channel = grpc::channel(&cfg.mailbox_url)?;
    let mut client = AccountsClient::new(channel);
    let ctx = || format!("mailbox at {} (is it running?)", cfg.mailbox_url);
    match command {
        UserCommand::Add { email } => {
            let password = read_password()?;
            client
                .add_user(tern_proto::AddUserRequest {
                    address: email.clone(),
                    password,
                })
                .await
                .map_err(status_err)
                .with_context(ctx)?;
            println!("added {email}");
        }
        UserCommand::Del { email } => {
            client
                .delete_user(tern_proto::DeleteUserRequest {
                    address: email.clone(),
                })
                .await
                .map_err(status_err)
                .with_context(ctx)?;
            println!("deleted {email}");
        }
        UserCommand::List => {
            let users = client
                .list_users(tern_proto::ListUsersRequest {})
                .await
                .map_err(status_err)
                .with_context(ctx)?;
            for a in users.into_inner().addresses {
                println!("{a}");
            }
        }
        UserCommand::Passwd { email } => {
            let password = read_password()?;
            client
                .set_password(tern_proto::SetPasswordRequest {
                    address: email.clone(),
                    password,
                })
                .await
                .map_err(status_err)
                .with_context(ctx)?;
            println!("password changed for {email}");
        }
        UserCommand::Quota { email, bytes } => {
            let set = bytes.as_deref().map(parse_quota).transpose()?;
            let q = client
                .quota(tern_proto::QuotaRequest {
                    address: email,
                    set: set.is_some(),
                    quota_bytes: set.unwrap_or(0),
                })
                .await
                .map_err(status_err)
                .with_context(ctx)?
                .into_inner();
            // 0 is "no quota", so checked_div's None is exactly that case.
            match q.used_bytes.saturating_mul(100).checked_div(q.quota_bytes) {
                None => println!("{}: {} bytes used, no quota", q.address, q.used_bytes),
                Some(pct) => println!(
                    "{}: {} of {} bytes used ({pct}%)",
                    q.address, q.used_bytes, q.quota_bytes
                ),
            }
        }
        UserCommand::Alias { command } => match command {
            AliasCommand::Add { alias, target } => {
                client
                    .add_alias(tern_proto::AddAliasRequest {
                        alias: alias.clone(),
                        target: target.clone(),
                    })
                    .await
                    .map_err(status_err)
                    .with_context(ctx)?;
                println!("alias {alias} -> {target}");
            }
            AliasCommand::Del { alias } => {
                client
                    .delete_alias(tern_proto::DeleteAliasRequest {
                        alias: alias.clone(),
                    })
                    .await
                    .map_err(status_err)
                    .with_context(ctx)?;
                println!("deleted alias {alias}");
            }
            AliasCommand::List { target } => {
                let r = client
                    .list_aliases(tern_proto::ListAliasesRequest {
                        target: target.unwrap_or_default(),
                    })
                    .await
                    .map_err(status_err)
                    .with_context(ctx)?
                    .into_inner();
                for a in r.aliases {
                    println!("{}\t{}", a.alias, a.target);
                }
            }
        },
    }
    Ok(())
}

/// `tern user quota` sizes: bytes, with an optional K/M/G (binary) suffix,
/// or `none` (also `0`) for unlimited.
fn parse_quota(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("none") || t.eq_ignore_ascii_case("unlimited") {
        return Ok(0);
    }
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_uppercase()),
        _ => (t, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => bail!("bad quota {s:?}: expected BYTES, a K/M/G suffix, or none"),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("bad quota {s:?}: expected BYTES, a K/M/G suffix, or none"))?;
    n.checked_mul(1 << shift)
        .filter(|v| i64::try_from(*v).is_ok())
        .with_context(|| format!("quota {s:?} is too large"))
}

/// `tern shaping status|clear`: straight to the shaping bucket in NATS.
async fn shaping_admin(cfg: &TernConfig, command: ShapingCommand) -> anyhow::Result<()> {
    let js = tern_delivery::automation::connect(&cfg.delivery.common)
        .await
        .context("connect to NATS")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let (actions, verb) = match command {
        ShapingCommand::Status => (tern_delivery::automation::status(&js).await?, "in force"),
        ShapingCommand::Clear { which } => (
            tern_delivery::automation::clear(&js, which.as_deref()).await?,
            "cleared",
        ),
    };
    for a in &actions {
        let what = match a.rate() {
            Some(r) if a.action == "rate" => format!("rate {r}"),
            _ => a.action.clone(),
        };
        println!(
            "{}\t{what}\trule={}\tleft={}s\treply={}",
            a.pair,
            a.rule,
            a.until_ms.saturating_sub(now).div_ceil(1000),
            a.reply
        );
    }
    println!("{} action(s) {verb}", actions.len());
    Ok(())
}

async fn queue_admin(cfg: &TernConfig, command: QueueCommand) -> anyhow::Result<()> {
    let mut client = QueueAdminClient::new(grpc::channel(&cfg.queue_url)?);
    let ctx = || format!("queue at {} (is it running?)", cfg.queue_url);
    match command {
        QueueCommand::Stats => {
            let s = client
                .stats(tern_proto::StatsRequest {})
                .await
                .map_err(status_err)
                .with_context(ctx)?
                .into_inner();
            println!(
                "{:<32} {:>9} {:>9} {:>9} {:>10}  hold",
                "destination", "ready", "scheduled", "held", "oldest(s)"
            );
            for d in &s.destinations {
                let hold = if d.on_hold { "on hold" } else { "" };
                println!(
                    "{:<32} {:>9} {:>9} {:>9} {:>10}  {hold}",
                    d.destination, d.ready, d.scheduled, d.held, d.oldest_age_seconds
                );
            }
            println!("in flight: {}", s.in_flight);
        }
        QueueCommand::Show { message_id } => {
            let r = client
                .show(tern_proto::ShowRequest { message_id })
                .await
                .map_err(status_err)
                .with_context(ctx)?
                .into_inner();
            for st in r.jobs {
                let Some(job) = st.job else { continue };
                println!(
                    "job {} ({}), attempt {}, from <{}>",
                    job.job_id, st.state, job.attempt, job.mail_from
                );
                if st.next_attempt_unix_ms > 0 {
                    println!(
                        "  next attempt {}",
                        tern_runtime::date::rfc3339(st.next_attempt_unix_ms)
                    );
                }
                println!(
                    "  expires {}",
                    tern_runtime::date::rfc3339(job.expires_at_unix_ms)
                );
                for rcpt in &job.rcpts {
                    println!("  pending  {}", rcpt.address);
                }
                for res in &st.results {
                    println!(
                        "  last     {}: {} {} {}",
                        res.address, res.code, res.enhanced, res.reply
                    );
                }
            }
        }
        QueueCommand::Hold { select } => {
            let destination = select.destination();
            let req = tern_proto::DestinationRequest {
                destination: destination.clone(),
            };
            client
                .hold(req)
                .await
                .map_err(status_err)
                .with_context(ctx)?;
            println!("{destination} on hold");
        }
        QueueCommand::Release { select } => {
            let destination = select.destination();
            let req = tern_proto::DestinationRequest {
                destination: destination.clone(),
            };
            let r = client
                .release(req)
                .await
                .map_err(status_err)
                .with_context(ctx)?
                .into_inner();
            println!("{destination} released; {} jobs ready", r.moved);
        }
        QueueCommand::Ls {
            destination,
            state,
            limit,
        } => {
            let req = tern_proto::ListRequest {
                destination: destination.unwrap_or_default(),
                state: state.unwrap_or_default(),
                limit,
            };
            let r = client
                .list(req)
                .await
                .map_err(status_err)
                .with_context(ctx)?
                .into_inner();
            println!(
                "{:<26} {:<24} {:<9} {:>7}  {:<20}  recipients",
                "message", "destination", "state", "attempt", "next attempt"
            );
            for st in &r.jobs {
                let Some(job) = &st.job else { continue };
                let next = match st.next_attempt_unix_ms {
                    0 => "-".to_string(),
                    t => tern_runtime::date::rfc3339(t),
                };
                let rcpts: Vec<&str> = job.rcpts.iter().map(|r| r.address.as_str()).collect();
                println!(
                    "{:<26} {:<24} {:<9} {:>7}  {:<20}  {}",
                    job.message_id,
                    job.destination,
                    st.state,
                    job.attempt,
                    next,
                    rcpts.join(",")
                );
            }
            if r.truncated {
                println!("(more jobs match; narrow with --domain/--state or raise --limit)");
            }
        }
        QueueCommand::Retry { select } => {
            let r = client
                .retry(tern_proto::SelectRequest::from(select))
                .await
                .map_err(status_err)
                .with_context(ctx)?
                .into_inner();
            println!("{} jobs will be attempted now", r.jobs);
        }
        QueueCommand::Delete { select, bounce } => {
            let req = tern_proto::DeleteRequest {
                select: Some(select.into()),
                bounce,
            };
            let r = client
                .delete(req)
                .await
                .map_err(status_err)
                .with_context(ctx)?
                .into_inner();
            let how = if bounce { ", senders notified" } else { "" };
            println!("{} jobs deleted{how}", r.jobs);
        }
    }
    Ok(())
}

async fn dkim(cfg: &TernConfig, command: DkimCommand) -> anyhow::Result<()> {
    let dir = &cfg.ingress.dkim.keys_dir;
    match command {
        DkimCommand::Keygen {
            domain,
            selector,
            algorithm,
            bits,
        } => {
            let (path, record) = tern_dkim::keygen(dir, &domain, &selector, algorithm, bits)?;
            println!("wrote {}", path.display());
            println!("publish in DNS:");
            println!("{}", record.zone_line());
        }
        DkimCommand::List => {
            let keys = tern_dkim::KeySet::load(dir, &[], None)?;
            let mut client = ResolverClient::new(grpc::channel(&cfg.resolver_url)?);
            let ctx = || format!("resolver at {} (is it running?)", cfg.resolver_url);
            println!("{:<48} {:<8} dns", "key", "algorithm");
            for key in keys.keys() {
                let record = key.dns_record();
                let r = client
                    .lookup(tern_proto::LookupRequest {
                        name: record.name.clone(),
                        record_type: "TXT".into(),
                    })
                    .await
                    .map_err(status_err)
                    .with_context(ctx)?
                    .into_inner();
                use tern_proto::RouteStatus;
                let dns = match RouteStatus::try_from(r.status) {
                    Ok(RouteStatus::Ok) => record.published_in(&r.records),
                    // NXDOMAIN: no record at all.
                    Ok(RouteStatus::Permanent) => record.published_in(&[]),
                    _ => tern_dkim::Published::Unknown(r.error),
                };
                println!(
                    "{:<48} {:<8} {dns}",
                    record.name,
                    key.name.algorithm.as_str()
                );
            }
            if keys.is_empty() {
                println!("(no keys in {})", dir.display());
            }
        }
    }
    Ok(())
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", s.code(), s.message())
}

#[cfg(test)]
mod user_tests {
    use super::parse_quota;

    #[test]
    fn quota_sizes() {
        assert_eq!(parse_quota("1000").ok(), Some(1000));
        assert_eq!(parse_quota("10M").ok(), Some(10 << 20));
        assert_eq!(parse_quota("2g").ok(), Some(2 << 30));
        assert_eq!(parse_quota("none").ok(), Some(0));
        assert!(parse_quota("10X").is_err());
        assert!(parse_quota("-1").is_err());
        assert!(parse_quota("99999999999G").is_err());
    }
}
