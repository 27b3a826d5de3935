//! Suppression at fan-out (issue 17): a recipient on its tenant's list (or
//! the system list) gets a `suppressed` event and no job, so an entry added
//! while a batch waited on the spool still wins. Hard bounces add entries.

use tern_bounce::{Entry, Reason, Suppressions};
use tern_proto::Job;

use crate::route::Route;

/// Take the suppressed recipients out of `routes`: the routes that still
/// have recipients, and `(job, address)` for each one taken out.
pub(crate) fn split(routes: Vec<Route>, lists: &Suppressions) -> (Vec<Route>, Vec<(Job, String)>) {
    let mut kept = Vec::with_capacity(routes.len());
    let mut suppressed = Vec::new();
    for mut route in routes {
        let job = &route.job;
        let addrs: Vec<&str> = job.rcpts.iter().map(|r| r.address.as_str()).collect();
        let hits = lists.check(&job.tenant, &job.campaign, &addrs);
        if !hits.contains(&true) {
            kept.push(route);
            continue;
        }
        let mut hit = hits.into_iter();
        let (out, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut route.job.rcpts)
            .into_iter()
            .partition(|_| hit.next() == Some(true));
        for r in out {
            suppressed.push((route.job.clone(), r.address));
        }
        if !keep.is_empty() {
            route.job.rcpts = keep;
            kept.push(route);
        }
    }
    (kept, suppressed)
}

/// The entry a permanent hard bounce of `address` adds, or `None` for plain
/// SMTP mail (no tenant: the person who sent it gets the DSN and decides).
pub(crate) fn hard_bounce(job: &Job, address: &str, at_unix_ms: i64) -> Option<Entry> {
    (!job.tenant.is_empty()).then(|| Entry {
        tenant: job.tenant.clone(),
        campaign: String::new(),
        address: address.to_string(),
        reason: Reason::HardBounce,
        at_unix_ms,
        source: format!("bounced/{}/{}", job.message_id, address),
    })
}
