//! Prometheus counters per tenant and campaign with a bounded number of
//! label values: the first `max_campaigns` (tenant, campaign) pairs a
//! process sees keep their names, later ones are counted as campaign
//! `other`. Tenants are created by operators, so their number is bounded
//! already; mail without a tenant (SMTP) is tenant `none`.
//!
//! - `tern_campaign_events_total{tenant, campaign, kind}`: lifecycle events.
//! - `tern_campaign_bounces_total{tenant, campaign, class}`: bounces by class.
//! - `tern_campaign_complaint_rate{tenant, campaign}` and
//!   `tern_campaign_hard_bounce_rate{tenant, campaign}`: gauges of the
//!   campaign's lifetime rates, read from the shared totals, so every
//!   replica that counted the campaign's last batch shows the cluster's
//!   value (aggregate with `max`, not `sum`). Not set for `other`.

use std::collections::HashSet;
use std::sync::Mutex;

use tern_proto::Event;

use crate::counts::UNCLASSIFIED;
use crate::pause::Totals;

/// The campaign label of every pair beyond the limit.
pub const OTHER: &str = "other";
/// The tenant label of mail without a tenant.
pub const NO_TENANT: &str = "none";

/// The admitted (tenant, campaign) label pairs.
#[derive(Debug)]
pub struct Labels {
    max: usize,
    seen: Mutex<HashSet<(String, String)>>,
}

impl Labels {
    /// At most `max` distinct pairs.
    pub fn new(max: usize) -> Self {
        Labels {
            max,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// The (tenant, campaign) labels of an event.
    pub fn labels(&self, tenant: &str, campaign: &str) -> (String, String) {
        let tenant = if tenant.is_empty() { NO_TENANT } else { tenant };
        let pair = (tenant.to_string(), campaign.to_string());
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(&pair) {
            return pair;
        }
        if seen.len() < self.max {
            seen.insert(pair.clone());
            return pair;
        }
        (pair.0, OTHER.to_string())
    }

    /// Set the rate gauges of a campaign from its lifetime totals.
    pub fn rates(&self, tenant: &str, campaign: &str, totals: &Totals) {
        let (tenant, campaign) = self.labels(tenant, campaign);
        if campaign == OTHER {
            return;
        }
        metrics::gauge!("tern_campaign_complaint_rate",
            "tenant" => tenant.clone(), "campaign" => campaign.clone())
        .set(totals.complaint_rate());
        metrics::gauge!("tern_campaign_hard_bounce_rate",
            "tenant" => tenant, "campaign" => campaign)
        .set(totals.hard_bounce_rate());
    }

    /// Count `e`.
    pub fn record(&self, e: &Event) {
        let (tenant, campaign) = self.labels(&e.tenant, &e.campaign);
        if e.kind == "bounced" {
            let class = if e.bounce_class.is_empty() {
                UNCLASSIFIED.to_string()
            } else {
                e.bounce_class.clone()
            };
            metrics::counter!("tern_campaign_bounces_total",
                "tenant" => tenant.clone(), "campaign" => campaign.clone(), "class" => class)
            .increment(1);
        }
        metrics::counter!("tern_campaign_events_total",
            "tenant" => tenant, "campaign" => campaign, "kind" => e.kind.clone())
        .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaigns_beyond_the_limit_are_other() {
        let l = Labels::new(2);
        assert_eq!(l.labels("a", "one").1, "one");
        assert_eq!(l.labels("b", "one").1, "one");
        assert_eq!(l.labels("a", "two"), ("a".into(), OTHER.into()));
        // Admitted pairs keep their label.
        assert_eq!(l.labels("a", "one").1, "one");
        assert_eq!(l.labels("", "x").0, NO_TENANT);
    }
}
