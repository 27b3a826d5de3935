//! What ingress does with a message for the bounce domain once
//! [`crate::inbound::triage`] decided what it is: the events to publish
//! and the suppression entries to add, without I/O (issue 17). Ingress
//! publishes `plan.events` on `tern.events.<kind>`, adds `plan.suppress`,
//! and counts and keeps the message when `plan.unmatched` is set.

use tern_proto::Event;

use crate::inbound::{Triage, Unmatched};
use crate::report::Action;
use crate::suppress::{Entry, Reason};
use crate::token::VerpFields;
use crate::unsubscribe::Names;

/// The event kind of a complaint (an ARF `abuse` or `fraud` report).
pub const COMPLAINED: &str = "complained";

/// What one message to the bounce domain changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeedbackPlan {
    /// `bounced`, `deferred` and `complained` events.
    pub events: Vec<Event>,
    /// Suppression entries (hard bounces, complaints, `mailto:` unsubscribes).
    pub suppress: Vec<Entry>,
    /// Why nothing matched (`tern_bounce_unmatched_total{reason}`): keep
    /// the message for inspection, deliver it to nobody.
    pub unmatched: Option<&'static str>,
}

/// The send's tenant and campaign names; `None` when the store no longer
/// knows the tenant (or the campaign).
fn names_of(send: &VerpFields, names: &dyn Names) -> Option<(String, String)> {
    let tenant = names.tenant(send.tenant)?;
    let campaign = match send.campaign {
        0 => String::new(),
        id => names.list(send.tenant, id)?,
    };
    Some((tenant, campaign))
}

fn event(kind: &str, send: &VerpFields, who: (&str, &str), recipient: &str, now: i64) -> Event {
    Event {
        kind: kind.into(),
        message_id: ulid::Ulid::from(send.message).to_string(),
        recipient: recipient.into(),
        at_unix_ms: now,
        tenant: who.0.into(),
        campaign: who.1.into(),
        ..Default::default()
    }
}

fn unmatched(why: &'static str) -> FeedbackPlan {
    FeedbackPlan {
        unmatched: Some(why),
        ..Default::default()
    }
}

/// Turn a triage decision into events and suppression entries at `now`.
pub fn plan(triage: &Triage, names: &dyn Names, now: i64) -> FeedbackPlan {
    let send = match triage {
        Triage::Unmatched(Unmatched::NoToken(_)) => return unmatched("no_token"),
        Triage::Unmatched(Unmatched::NotAReport(_)) => return unmatched("not_a_report"),
        Triage::Unsubscribe(s)
        | Triage::Bounces { send: s, .. }
        | Triage::Feedback { send: s, .. } => s,
    };
    let Some((tenant, campaign)) = names_of(send, names) else {
        return unmatched("unknown_tenant");
    };
    let who = (tenant.as_str(), campaign.as_str());
    let message_id = ulid::Ulid::from(send.message).to_string();
    let entry = |address: &str, scope: &str, reason: Reason, source: String| Entry {
        tenant: tenant.clone(),
        campaign: scope.into(),
        address: address.into(),
        reason,
        at_unix_ms: now,
        source,
    };
    let mut out = FeedbackPlan::default();
    match triage {
        Triage::Bounces { recipients, .. } => {
            for r in recipients {
                let kind = if r.action == Action::Failed {
                    "bounced"
                } else {
                    "deferred"
                };
                let mut e = event(kind, send, who, &r.recipient, now);
                e.enhanced = r.status.to_string();
                e.reply = r.diagnostic.clone().unwrap_or_default();
                e.bounce_class = r.class.name().into();
                out.events.push(e);
                if r.suppress {
                    let source = format!("bounced/{message_id}/{}", r.recipient);
                    out.suppress
                        .push(entry(&r.recipient, "", Reason::HardBounce, source));
                }
            }
        }
        Triage::Feedback { feedback, .. } if feedback.feedback_type.is_complaint() => {
            // The report names the recipient (RFC 5965 Original-Rcpt-To); some
            // providers redact it, then the send's recipient index is all there is.
            let rcpt = feedback
                .original_rcpt_to
                .first()
                .cloned()
                .or_else(|| names.recipient(send.message, send.recipient));
            let Some(rcpt) = rcpt else {
                return unmatched("complaint_without_recipient");
            };
            out.events.push(event(COMPLAINED, send, who, &rcpt, now));
            let source = format!("complained/{message_id}/{rcpt}");
            out.suppress
                .push(entry(&rcpt, "", Reason::Complaint, source));
        }
        Triage::Feedback { .. } => {}
        Triage::Unsubscribe(_) => {
            let Some(rcpt) = names.recipient(send.message, send.recipient) else {
                return unmatched("unsubscribe_without_recipient");
            };
            let source = format!("mailto/{message_id}/{rcpt}");
            out.suppress
                .push(entry(&rcpt, &campaign, Reason::Unsubscribe, source));
        }
        Triage::Unmatched(_) => unreachable!("returned above"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::class::Class;
    use crate::inbound::LateBounce;
    use tern_smtp::Enhanced;

    struct Fixed;
    impl Names for Fixed {
        fn tenant(&self, id: u32) -> Option<String> {
            (id == 7).then(|| "acme".into())
        }
        fn list(&self, _: u32, id: u32) -> Option<String> {
            (id == 3).then(|| "spring".into())
        }
        fn recipient(&self, _: u128, index: u32) -> Option<String> {
            (index == 0).then(|| "bob@example.com".into())
        }
    }

    const SEND: VerpFields = VerpFields {
        tenant: 7,
        campaign: 3,
        message: 42,
        recipient: 0,
    };

    fn late(rcpt: &str, action: Action, class: Class, suppress: bool) -> LateBounce {
        LateBounce {
            recipient: rcpt.into(),
            action,
            class,
            decided_by: "test".into(),
            permanent: suppress,
            suppress,
            status: Enhanced::parse("5.1.1").unwrap(),
            diagnostic: Some("smtp; 550 5.1.1 user unknown".into()),
        }
    }

    #[test]
    fn late_bounces_become_classified_events_and_hard_ones_suppress() {
        let t = Triage::Bounces {
            send: SEND,
            recipients: vec![
                late("gone@x.test", Action::Failed, Class::InvalidRecipient, true),
                late("slow@x.test", Action::Delayed, Class::MailboxFull, false),
            ],
        };
        let p = plan(&t, &Fixed, 5);
        let ev: Vec<_> = p
            .events
            .iter()
            .map(|e| {
                (
                    e.kind.as_str(),
                    e.recipient.as_str(),
                    e.bounce_class.as_str(),
                    e.tenant.as_str(),
                    e.campaign.as_str(),
                )
            })
            .collect();
        assert_eq!(
            ev,
            [
                (
                    "bounced",
                    "gone@x.test",
                    "invalid_recipient",
                    "acme",
                    "spring"
                ),
                ("deferred", "slow@x.test", "mailbox_full", "acme", "spring"),
            ]
        );
        assert_eq!(p.events[0].message_id, ulid::Ulid::from(42u128).to_string());
        assert_eq!(p.suppress.len(), 1);
        assert_eq!(
            (
                p.suppress[0].address.as_str(),
                p.suppress[0].campaign.as_str()
            ),
            ("gone@x.test", "")
        );
        assert_eq!(p.unmatched, None);
    }

    #[test]
    fn mailto_unsubscribes_from_the_campaign_and_unknown_tenants_are_unmatched() {
        let p = plan(&Triage::Unsubscribe(SEND), &Fixed, 5);
        assert!(p.events.is_empty());
        assert_eq!(p.suppress[0].reason, Reason::Unsubscribe);
        assert_eq!(
            (
                p.suppress[0].address.as_str(),
                p.suppress[0].campaign.as_str()
            ),
            ("bob@example.com", "spring")
        );
        let other = VerpFields { tenant: 8, ..SEND };
        assert_eq!(
            plan(&Triage::Unsubscribe(other), &Fixed, 5).unmatched,
            Some("unknown_tenant")
        );
    }
}
