//! Fan-out: one envelope becomes one job per destination.

use std::collections::BTreeMap;

use tern_proto::{Envelope, Job, Recipient};
use tern_runtime::{body, bus};

use bus::LOCAL_DESTINATION as LOCAL;

/// A job and the subject it is published on.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// JetStream subject.
    pub subject: String,
    /// The job.
    pub job: Job,
}

/// The domain of an address, lower-cased (the local part keeps its case, RFC 5321 §2.4).
pub fn domain_of(address: &str) -> Option<String> {
    let (_, d) = address.rsplit_once('@')?;
    let d = d.trim_end_matches('.').to_ascii_lowercase();
    // A domain that would break NATS subject syntax cannot be a real mail domain.
    let valid = !d.is_empty()
        && !d.contains(['*', '>', ' ', '\t'])
        && !d.starts_with('.')
        && !d.contains("..");
    valid.then_some(d)
}

/// Group `env`'s recipients by destination: every local recipient into one
/// mailbox job, remote ones into one job per domain. `spool_seq` is where the
/// envelope sits in the spool stream, so jobs can refer to an inline body.
pub fn fan_out(
    env: &Envelope,
    spool_seq: u64,
    expires_at_unix_ms: i64,
    is_local: impl Fn(&str) -> bool,
) -> Vec<Route> {
    let mut groups: BTreeMap<String, Vec<Recipient>> = BTreeMap::new();
    for r in &env.rcpts {
        let Some(domain) = domain_of(&r.address) else {
            tracing::warn!(rcpt = %r.address, "recipient without a usable domain; skipped");
            continue;
        };
        let dest = if is_local(&domain) {
            LOCAL.to_string()
        } else {
            domain
        };
        groups.entry(dest).or_default().push(r.clone());
    }
    let body = env.body.as_ref().map(|b| body::job_ref(b, spool_seq));
    groups
        .into_iter()
        .map(|(dest, rcpts)| {
            let subject = bus::ready_subject(&dest);
            let job = Job {
                job_id: format!("{}/{}", env.id, dest),
                message_id: env.id.clone(),
                mail_from: env.mail_from.clone(),
                rcpts,
                destination: dest,
                body: body.clone(),
                attempt: 0,
                received_at_unix_ms: env.received_at_unix_ms,
                expires_at_unix_ms,
                smtputf8: env.smtputf8,
                eight_bit: env.eight_bit,
                envid: env.envid.clone(),
                ret: env.ret,
                junk: env.junk,
                tenant: env.tenant.clone(),
                campaign: env.campaign.clone(),
                batch_id: env.batch_id.clone(),
                require_tls: env.require_tls,
                tls_optional: env.tls_optional,
            };
            Route { subject, job }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_proto::{BodyRef, body_ref::Location};

    fn rcpt(a: &str) -> Recipient {
        Recipient {
            address: a.into(),
            ..Default::default()
        }
    }

    #[test]
    fn local_and_remote_recipients_split_by_destination() {
        let env = Envelope {
            id: "01ABC".into(),
            mail_from: "s@example.org".into(),
            rcpts: vec![
                rcpt("a@localhost"),
                rcpt("b@Remote.test"),
                rcpt("B@LOCALHOST"),
                rcpt("c@remote.test"),
                rcpt("d@other.test"),
            ],
            body: Some(BodyRef {
                location: Some(Location::Inline(bytes::Bytes::from_static(b"x"))),
                size: 1,
            }),
            ..Default::default()
        };
        let routes = fan_out(&env, 42, 0, |d| d == "localhost");
        let dests: Vec<_> = routes
            .iter()
            .map(|r| (r.job.destination.as_str(), r.job.rcpts.len()))
            .collect();
        assert_eq!(dests, [("local", 2), ("other.test", 1), ("remote.test", 2)]);
        assert_eq!(routes[0].subject, bus::LOCAL_JOBS_SUBJECT);
        assert_eq!(routes[2].subject, "tern.jobs.remote.remote.test");
        assert_eq!(routes[2].job.job_id, "01ABC/remote.test");
        // Jobs refer to the spool message instead of copying the body.
        assert_eq!(
            routes[1].job.body.as_ref().and_then(|b| b.location.clone()),
            Some(Location::SpoolSeq(42))
        );
    }

    #[test]
    fn unusable_domains_are_not_routed() {
        assert_eq!(domain_of("x@a.*.test"), None);
        assert_eq!(domain_of("nodomain"), None);
        assert_eq!(domain_of("x@[192.0.2.1]").as_deref(), Some("[192.0.2.1]"));
    }
}
