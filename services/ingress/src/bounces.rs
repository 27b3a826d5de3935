//! Mail to the bounce domain (issue 17): late DSNs, ARF complaints and
//! `mailto:` unsubscribes addressed to the VERP return paths Tern signs.
//! Such recipients are accepted without a mailbox lookup and never relayed
//! or delivered: at end of DATA each one is triaged
//! ([`tern_bounce::inbound::triage`]), planned ([`tern_bounce::feedback::plan`])
//! and its events and suppression entries are made durable before the `250`.
//! A message that matches no send is counted and kept in the
//! [`UNMATCHED_STREAM`] for inspection.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream;
use prost::Message as _;
use tern_bounce::feedback::{self, FeedbackPlan};
use tern_bounce::token::Secret;
use tern_bounce::unsubscribe::Names;
use tern_bounce::{Rules, Suppressions, inbound};
use tern_proto::Event;
use tern_runtime::{Shutdown, bus};
use tern_smtp::{ForwardPath, RcptTo};

use crate::inject::TokenNames;

/// The stream that keeps bounce-domain mail that matched no send.
pub const UNMATCHED_STREAM: &str = "TERN_UNMATCHED";
/// Its subjects, `tern.unmatched.<reason>`.
pub const UNMATCHED_SUBJECTS: &str = "tern.unmatched.>";
/// How long an unmatched message is kept.
pub const UNMATCHED_MAX_AGE: Duration = Duration::from_secs(14 * 86_400);
/// The most the stream holds; the oldest messages go first.
pub const UNMATCHED_MAX_BYTES: i64 = 256 * 1024 * 1024;
/// How long publishing one plan (all acks) may take before the client gets 451.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(10);

/// Why a message to the bounce domain could not be recorded (451 to the client).
#[derive(Debug, thiserror::Error)]
pub(crate) enum BounceError {
    /// The registry, suppression lists or stream are not open yet.
    #[error("feedback lists not ready")]
    NotReady,
    /// An event or unmatched message was not acknowledged by JetStream.
    #[error("publish {what}: {message}")]
    Publish {
        /// Event or unmatched message.
        what: &'static str,
        /// The NATS error.
        message: String,
    },
    /// A suppression entry was not stored.
    #[error(transparent)]
    Suppress(#[from] tern_bounce::SuppressError),
    /// All of it did not finish within [`PUBLISH_DEADLINE`].
    #[error("timed out")]
    Timeout,
}

/// What is opened in the background once NATS is up.
struct Lists {
    names: TokenNames,
    suppressions: Suppressions,
}

/// The bounce domain's handler, shared by every session.
pub(crate) struct BounceInbox {
    /// The cluster's bounce domain, lower case.
    domain: String,
    /// Also a local domain with mailboxes: only token-shaped local parts
    /// (`b-…`, `u-…`) are ours there.
    shared_with_mailboxes: bool,
    secret: Secret,
    rules: Rules,
    js: jetstream::Context,
    lists: Arc<OnceLock<Lists>>,
    /// Becomes `true` once `lists` is set.
    opened: tokio::sync::watch::Receiver<bool>,
}

/// Whether `rcpt` is an address at the bounce domain that this handler
/// takes (pure). `<Postmaster>` never is (RFC 5321 §4.5.1: it must reach a
/// person); on a domain that also has mailboxes only `b-`/`u-` local parts are.
pub(crate) fn is_bounce_rcpt(rcpt: &RcptTo, domain: &str, shared_with_mailboxes: bool) -> bool {
    let ForwardPath::Mailbox(m) = &rcpt.forward_path else {
        return false;
    };
    if m.is_address_literal() || !m.domain.eq_ignore_ascii_case(domain) {
        return false;
    }
    let local = m.local_part.to_ascii_lowercase();
    if local == "postmaster" {
        return false;
    }
    !shared_with_mailboxes || local.starts_with("b-") || local.starts_with("u-")
}

/// Names for one `mailto:` unsubscribe: the registry's, and the sender of
/// the unsubscribe mail as the send's recipient (no per-message recipient
/// store exists; the token still has to verify, see README).
struct WithSender {
    names: TokenNames,
    sender: String,
}

impl Names for WithSender {
    fn tenant(&self, id: u32) -> Option<String> {
        self.names.tenant(id)
    }
    fn list(&self, tenant: u32, id: u32) -> Option<String> {
        self.names.list(tenant, id)
    }
    fn recipient(&self, _: u128, _: u32) -> Option<String> {
        (!self.sender.is_empty()).then(|| self.sender.clone())
    }
}

/// The plan for one bounce-domain recipient of a message (pure, given the names).
pub(crate) fn plan_one(
    secret: &Secret,
    rules: &Rules,
    names: &TokenNames,
    rcpt: &str,
    sender: &str,
    body: &[u8],
    now: i64,
) -> FeedbackPlan {
    let triage = inbound::triage(secret, rules, rcpt, body);
    match &triage {
        inbound::Triage::Unsubscribe(_) => {
            let names = WithSender {
                names: names.clone(),
                sender: sender.to_string(),
            };
            feedback::plan(&triage, &names, now)
        }
        _ => feedback::plan(&triage, names, now),
    }
}

/// The de-duplication id of a late event: stable across a client's retry.
fn event_id(e: &Event) -> String {
    format!("late/{}/{}/{}", e.kind, e.message_id, e.recipient)
}

impl BounceInbox {
    /// A handler for `domain`, or `None` without a cluster secret (then no
    /// VERP address can verify and the domain is treated like any other).
    /// Opens the registry and suppression lists in the background.
    pub(crate) fn start(
        config: &crate::Config,
        js: jetstream::Context,
        shutdown: Shutdown,
    ) -> Option<Arc<BounceInbox>> {
        let secret = config.bounce.secret.clone()?;
        let domain = config.api.bounce_domain.clone();
        let (opened_tx, opened) = tokio::sync::watch::channel(false);
        let inbox = Arc::new(BounceInbox {
            shared_with_mailboxes: config.common.is_local_domain(&domain),
            domain,
            secret,
            rules: config.bounce.rules.clone(),
            js: js.clone(),
            lists: Arc::new(OnceLock::new()),
            opened,
        });
        let (lists, replicas) = (inbox.lists.clone(), config.common.nats_replicas);
        tokio::spawn(async move {
            loop {
                match open(&js, replicas, &shutdown).await {
                    Ok(l) => {
                        let _ = lists.set(l);
                        let _ = opened_tx.send(true);
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "bounce domain not ready; retrying"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait() => return,
                }
            }
        });
        Some(inbox)
    }

    /// Whether `rcpt` goes to this handler.
    pub(crate) fn takes(&self, rcpt: &RcptTo) -> bool {
        is_bounce_rcpt(rcpt, &self.domain, self.shared_with_mailboxes)
    }

    /// Whether the lists are open (RCPT gets 451 until they are).
    pub(crate) fn ready(&self) -> bool {
        self.lists.get().is_some()
    }

    /// Wait until the lists are open (ingress reports ready only then), or
    /// `shutdown`.
    pub(crate) async fn wait_ready(&self, shutdown: &Shutdown) {
        let mut opened = self.opened.clone();
        tokio::select! {
            _ = opened.wait_for(|o| *o) => {}
            _ = shutdown.wait() => {}
        }
    }

    /// Triage, plan and record one message for `rcpts` (addresses at the
    /// bounce domain); `Ok` only when every event, entry and kept message
    /// is durable.
    pub(crate) async fn record(
        &self,
        id: &str,
        sender: &str,
        client: &str,
        rcpts: &[String],
        body: &bytes::Bytes,
    ) -> Result<(), BounceError> {
        let lists = self.lists.get().ok_or(BounceError::NotReady)?;
        let now = tern_runtime::now_unix_ms();
        let work = async {
            for (i, rcpt) in rcpts.iter().enumerate() {
                let p = plan_one(
                    &self.secret,
                    &self.rules,
                    &lists.names,
                    rcpt,
                    sender,
                    body,
                    now,
                );
                self.apply(lists, &p, id, i, rcpt, sender, client, body)
                    .await?;
            }
            Ok::<_, BounceError>(())
        };
        tokio::time::timeout(PUBLISH_DEADLINE, work)
            .await
            .map_err(|_| BounceError::Timeout)?
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply(
        &self,
        lists: &Lists,
        p: &FeedbackPlan,
        id: &str,
        index: usize,
        rcpt: &str,
        sender: &str,
        client: &str,
        body: &bytes::Bytes,
    ) -> Result<(), BounceError> {
        let failed = |what| {
            move |e: Box<dyn std::error::Error>| BounceError::Publish {
                what,
                message: e.to_string(),
            }
        };
        let mut acks = Vec::with_capacity(p.events.len());
        for e in &p.events {
            let ack = bus::Publish::new(
                format!("tern.events.{}", e.kind),
                e.encode_to_vec().into(),
                event_id(e),
            )
            .send(&self.js)
            .await
            .map_err(|e| failed("event")(e.into()))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| failed("event")(e.into()))?;
        }
        for entry in &p.suppress {
            lists.suppressions.add(entry).await?;
        }
        if let Some(reason) = p.unmatched {
            bus::Publish::new(
                format!("tern.unmatched.{reason}"),
                body.clone(),
                format!("{id}/{index}"),
            )
            .header("Tern-Rcpt-To", rcpt)
            .header("Tern-Mail-From", sender)
            .header("Tern-Client", client)
            .header("Tern-Reason", reason)
            .durable(&self.js)
            .await
            .map_err(|e| failed("unmatched message")(e.into()))?;
            metrics::counter!("tern_bounce_unmatched_total", "reason" => reason).increment(1);
            tracing::info!(message_id = %id, rcpt, reason, "bounce-domain mail matched no send; kept");
        }
        for e in &p.events {
            metrics::counter!("tern_bounce_feedback_total", "kind" => e.kind.clone()).increment(1);
        }
        Ok(())
    }
}

/// Open the registry names, the suppression lists and the unmatched stream.
async fn open(
    js: &jetstream::Context,
    replicas: usize,
    shutdown: &Shutdown,
) -> Result<Lists, Box<dyn std::error::Error + Send + Sync>> {
    js.create_or_update_stream(jetstream::stream::Config {
        name: UNMATCHED_STREAM.into(),
        subjects: vec![UNMATCHED_SUBJECTS.into()],
        max_age: UNMATCHED_MAX_AGE,
        max_bytes: UNMATCHED_MAX_BYTES,
        discard: jetstream::stream::DiscardPolicy::Old,
        duplicate_window: bus::DEDUP_WINDOW,
        num_replicas: replicas,
        ..Default::default()
    })
    .await?;
    let registry = tern_tenant::Registry::open(js, replicas).await?;
    let suppressions = Suppressions::open(js, replicas, shutdown.clone()).await?;
    let names = TokenNames::follow(registry, shutdown.clone()).await;
    Ok(Lists {
        names,
        suppressions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(path: &str) -> RcptTo {
        match tern_smtp::command::parse(format!("RCPT TO:{path}").as_bytes()) {
            Ok(tern_smtp::Command::Rcpt(r)) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn bounce_domain_recipients_are_recognised() {
        let d = "bounces.example.net";
        assert!(is_bounce_rcpt(
            &rcpt("<b-abc@Bounces.Example.NET>"),
            d,
            false
        ));
        assert!(is_bounce_rcpt(
            &rcpt("<anything@bounces.example.net>"),
            d,
            false
        ));
        assert!(!is_bounce_rcpt(
            &rcpt("<anything@bounces.example.net>"),
            d,
            true
        ));
        assert!(is_bounce_rcpt(
            &rcpt("<U-xyz@bounces.example.net>"),
            d,
            true
        ));
        assert!(!is_bounce_rcpt(
            &rcpt("<postmaster@bounces.example.net>"),
            d,
            false
        ));
        assert!(!is_bounce_rcpt(&rcpt("<Postmaster>"), d, false));
        assert!(!is_bounce_rcpt(&rcpt("<b-abc@example.net>"), d, false));
    }
}
