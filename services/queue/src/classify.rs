//! Every failed or deferred recipient result classified by the bounce rules
//! (issue 17): the class goes into the event, the results metric and the
//! DSN; a permanent hard bounce marks the recipient for suppression.

use tern_bounce::{Observation, Rules};

use crate::events::kind;
use crate::handle::Plan;

/// Classify the plan's bounced, deferred and expired recipients, and copy
/// each class onto the DSN lines of the same recipient.
pub(crate) fn classify(rules: &Rules, plan: &mut Plan) {
    let retry_events = plan.retry.iter_mut().flat_map(|r| r.events.iter_mut());
    for e in plan.finals.iter_mut().chain(retry_events) {
        if !matches!(e.kind, kind::BOUNCED | kind::DEFERRED | kind::EXPIRED) {
            continue;
        }
        let v = rules.classify(&Observation::from_result(&e.result));
        e.class = Some(v.class);
        // Only a recipient the receiver itself refused for good: an expiry
        // (our own give-up after temporary failures) never suppresses.
        e.suppresses = e.kind == kind::BOUNCED && v.suppresses();
    }
    let classes: Vec<(String, &'static str)> = plan
        .finals
        .iter()
        .chain(plan.retry.iter().flat_map(|r| r.events.iter()))
        .filter_map(|e| Some((e.address.clone(), e.class?.name())))
        .collect();
    let delay_lines = plan
        .retry
        .iter_mut()
        .flat_map(|r| r.delay_dsn.iter_mut().flatten());
    for l in plan.dsn.iter_mut().chain(delay_lines) {
        l.class = classes
            .iter()
            .find(|(a, _)| *a == l.rcpt.address)
            .map(|(_, c)| *c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::{PlannedEvent, Retry};
    use tern_proto::{Outcome, RecipientResult};

    fn ev(
        kind: &'static str,
        address: &str,
        code: u32,
        enhanced: &str,
        reply: &str,
    ) -> PlannedEvent {
        PlannedEvent {
            kind,
            address: address.into(),
            result: RecipientResult {
                address: address.into(),
                outcome: Outcome::Bounced as i32,
                code,
                enhanced: enhanced.into(),
                reply: reply.into(),
                ..Default::default()
            },
            class: None,
            suppresses: false,
        }
    }

    #[test]
    fn only_permanent_dead_addresses_suppress_and_delivered_has_no_class() {
        let mut plan = Plan {
            record: Vec::new(),
            finals: vec![
                ev(kind::DELIVERED, "ok@x.test", 250, "2.0.0", "ok"),
                ev(kind::BOUNCED, "gone@x.test", 550, "5.1.1", "user unknown"),
                ev(
                    kind::BOUNCED,
                    "auth@x.test",
                    550,
                    "5.7.26",
                    "unauthenticated",
                ),
                ev(kind::EXPIRED, "late@x.test", 450, "4.1.1", "try later"),
            ],
            retry: Some(Retry {
                job: Default::default(),
                at_unix_ms: 0,
                delay_dsn: None,
                events: vec![ev(
                    kind::DEFERRED,
                    "slow@x.test",
                    421,
                    "4.7.28",
                    "unusual rate",
                )],
            }),
            dsn: Vec::new(),
        };
        classify(Rules::builtin(), &mut plan);
        let got: Vec<_> = plan
            .finals
            .iter()
            .chain(&plan.retry.as_ref().unwrap().events)
            .map(|e| (e.address.as_str(), e.class.map(|c| c.name()), e.suppresses))
            .collect();
        assert_eq!(
            got,
            [
                ("ok@x.test", None, false),
                ("gone@x.test", Some("invalid_recipient"), true),
                ("auth@x.test", Some("policy_block"), false),
                ("late@x.test", Some("invalid_recipient"), false),
                ("slow@x.test", Some("rate_limited"), false),
            ]
        );
    }
}
