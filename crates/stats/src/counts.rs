//! The pure part of aggregation: which counters an event moves, how a batch
//! of events is applied to a stored entry without counting a redelivered
//! event twice, and the read-side shapes ([`Stats`], [`BatchCounts`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tern_proto::Event;

use crate::key;

/// The class a bounce or deferral without one from the bounce rules is counted under.
pub const UNCLASSIFIED: &str = "unclassified";

/// One stored counter entry: counts by field, and which events are in it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The aggregator consumer's ack floor when this entry was last
    /// written: every event at or below it was acked, so it was counted
    /// into every key it belongs to before (acks follow the writes).
    pub floor: u64,
    /// Stream sequences above `floor` counted into this entry (events not
    /// known to be acked yet: they may come again).
    pub applied: Vec<u64>,
    /// Counts by field: an event kind (`delivered`), or `bounced:<class>`.
    pub counts: BTreeMap<String, u64>,
}

/// One counter increment: the event's stream sequence and the fields it adds one to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Increment {
    /// Stream sequence of the event.
    pub seq: u64,
    /// Fields incremented by one.
    pub fields: Vec<String>,
}

/// The fields an event adds one to: its kind, and for bounced and deferred
/// events also `<kind>:<class>`.
pub fn fields(e: &Event) -> Vec<String> {
    let mut f = vec![e.kind.clone()];
    if e.kind == "bounced" || e.kind == "deferred" {
        let class = if e.bounce_class.is_empty() {
            UNCLASSIFIED
        } else {
            e.bounce_class.as_str()
        };
        f.push(format!("{}:{class}", e.kind));
    }
    f
}

/// Group a fetched batch of `(stream sequence, event)` by the keys they
/// count into: the campaign's hour, the campaign's lifetime totals, and
/// the batch. Events without a tenant (plain SMTP mail) have no API reader
/// and go into no key; events without a batch id into no batch's.
pub fn plan(events: &[(u64, Event)]) -> BTreeMap<String, Vec<Increment>> {
    let mut out: BTreeMap<String, Vec<Increment>> = BTreeMap::new();
    for (seq, e) in events {
        if e.tenant.is_empty() {
            continue;
        }
        let inc = Increment {
            seq: *seq,
            fields: fields(e),
        };
        let hour = key::hour_of(u64::try_from(e.at_unix_ms).unwrap_or(0));
        out.entry(key::campaign_key(&e.tenant, &e.campaign, hour))
            .or_default()
            .push(inc.clone());
        out.entry(key::totals_key(&e.tenant, &e.campaign))
            .or_default()
            .push(inc.clone());
        if !e.batch_id.is_empty() {
            out.entry(key::batch_key(&e.tenant, &e.batch_id))
                .or_default()
                .push(inc);
        }
    }
    out
}

/// `entry` with `increments` applied, skipping those counted before (at
/// or below its floor, or in its applied list: a redelivery after a crash
/// or a lost ack, in any order), with its floor raised to `ack_floor`; and
/// the number applied.
pub fn apply(mut entry: Entry, increments: &[Increment], ack_floor: u64) -> (Entry, usize) {
    let mut applied = 0;
    for inc in increments {
        if inc.seq <= entry.floor || entry.applied.contains(&inc.seq) {
            continue;
        }
        for f in &inc.fields {
            *entry.counts.entry(f.clone()).or_default() += 1;
        }
        entry.applied.push(inc.seq);
        applied += 1;
    }
    entry.floor = entry.floor.max(ack_floor);
    let floor = entry.floor;
    entry.applied.retain(|s| *s > floor);
    entry.applied.sort_unstable();
    (entry, applied)
}

/// Bounces of a campaign: the total and by class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bounced {
    /// Every bounced recipient.
    pub total: u64,
    /// By bounce class (`tern bounce classify`), `unclassified` without one.
    pub by_class: BTreeMap<String, u64>,
}

/// The statistics of one campaign over a time range: the JSON body of
/// `GET /v1/stats?campaign=C&from=&to=`. Event counts, so `deferred` counts
/// every deferral (a recipient deferred twice counts twice).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// The campaign tag.
    pub campaign: String,
    /// Start of the range, Unix seconds, rounded down to the hour.
    pub from: u64,
    /// End of the range (exclusive), Unix seconds.
    pub to: u64,
    /// Recipients accepted (durable, `received` events).
    pub accepted: u64,
    /// Recipients delivered.
    pub delivered: u64,
    /// Deferrals (temporary failures).
    pub deferred: u64,
    /// Bounces, by class.
    pub bounced: Bounced,
    /// Complaints (feedback loops).
    pub complained: u64,
    /// Unsubscriptions.
    pub unsubscribed: u64,
    /// Recipients not sent to because they were on the suppression list.
    pub suppressed: u64,
    /// Recipients whose lifetime ended undelivered.
    pub expired: u64,
}

impl Stats {
    /// Add one hour's counts.
    pub fn add(&mut self, counts: &BTreeMap<String, u64>) {
        for (field, n) in counts {
            match field.split_once(':') {
                Some(("bounced", class)) => {
                    *self.bounced.by_class.entry(class.to_string()).or_default() += n;
                }
                Some(_) => {}
                None => match field.as_str() {
                    "received" => self.accepted += n,
                    "delivered" => self.delivered += n,
                    "deferred" => self.deferred += n,
                    "bounced" => self.bounced.total += n,
                    "complained" => self.complained += n,
                    "unsubscribed" => self.unsubscribed += n,
                    "suppressed" => self.suppressed += n,
                    "expired" => self.expired += n,
                    _ => {}
                },
            }
        }
    }
}

/// Recipients of one batch by state (`GET /v1/batches/{id}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchCounts {
    /// The batch.
    pub batch_id: String,
    /// Recipients accepted into the queue.
    pub accepted: u64,
    /// Accepted and not final yet (queued, scheduled or deferred).
    pub pending: u64,
    /// Delivered.
    pub delivered: u64,
    /// Bounced.
    pub bounced: u64,
    /// Expired undelivered.
    pub expired: u64,
    /// Removed before an attempt (cancelled batch, `tern queue delete`).
    pub cancelled: u64,
    /// Not sent because suppressed.
    pub suppressed: u64,
    /// Deferrals so far (events, not recipients).
    pub deferrals: u64,
}

impl BatchCounts {
    /// The counts of a batch from its stored entry.
    pub fn from_counts(batch_id: &str, counts: &BTreeMap<String, u64>) -> Self {
        let get = |k: &str| counts.get(k).copied().unwrap_or(0);
        let mut b = BatchCounts {
            batch_id: batch_id.to_string(),
            accepted: get("received"),
            delivered: get("delivered"),
            bounced: get("bounced"),
            expired: get("expired"),
            cancelled: get("deleted"),
            suppressed: get("suppressed"),
            deferrals: get("deferred"),
            pending: 0,
        };
        let fin = b.delivered + b.bounced + b.expired + b.cancelled;
        b.pending = b.accepted.saturating_sub(fin);
        b
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev(kind: &str, tenant: &str, campaign: &str, batch: &str, class: &str) -> Event {
        Event {
            kind: kind.into(),
            tenant: tenant.into(),
            campaign: campaign.into(),
            batch_id: batch.into(),
            bounce_class: class.into(),
            at_unix_ms: (3 * key::HOUR_MS + 5) as i64,
            ..Default::default()
        }
    }

    #[test]
    fn redelivered_events_are_not_counted_twice() {
        let batch = vec![
            (1, ev("received", "t", "c", "b1", "")),
            (2, ev("bounced", "t", "c", "b1", "hard")),
            (3, ev("delivered", "t", "c", "", "")),
        ];
        let p = plan(&batch);
        let ck = key::campaign_key("t", "c", 3);
        let (e, n) = apply(Entry::default(), &p[&ck], 0);
        assert_eq!((n, &e.applied[..]), (3, &[1, 2, 3][..]));
        assert_eq!(e.counts["bounced:hard"], 1);
        // The same batch again (crash after the write, before the ack).
        let (again, n) = apply(e.clone(), &p[&ck], 0);
        assert_eq!((again, n), (e.clone(), 0));
        // Acked since: the list shrinks, and a replay (consumer reset) still counts nothing.
        let (acked, _) = apply(e.clone(), &[], 3);
        assert!(acked.applied.is_empty());
        assert_eq!(apply(acked.clone(), &p[&ck], 0), (acked, 0));
        let (b, _) = apply(Entry::default(), &p[&key::batch_key("t", "b1")], 0);
        let counts = BatchCounts::from_counts("b1", &b.counts);
        assert_eq!((counts.accepted, counts.bounced, counts.pending), (1, 1, 0));
    }

    #[test]
    fn an_older_event_arriving_after_a_newer_one_still_counts() {
        let inc = |seq| Increment {
            seq,
            fields: vec!["delivered".into()],
        };
        // Seq 9 (another replica's batch) was written before seq 5 came back.
        let (e, _) = apply(Entry::default(), &[inc(9)], 4);
        let (e, n) = apply(e, &[inc(5)], 4);
        assert_eq!((n, e.counts["delivered"]), (1, 2));
        let (e, n) = apply(e, &[inc(5), inc(9)], 4);
        assert_eq!((n, e.counts["delivered"]), (0, 2));
    }

    #[test]
    fn lifetime_totals_span_hours() {
        let mut later = ev("complained", "t", "c", "", "");
        later.at_unix_ms += 5 * key::HOUR_MS as i64;
        let p = plan(&[(1, ev("delivered", "t", "c", "b1", "")), (2, later)]);
        let (e, _) = apply(Entry::default(), &p[&key::totals_key("t", "c")], 0);
        assert_eq!((e.counts["delivered"], e.counts["complained"]), (1, 1));
        assert!(!e.counts.contains_key("received"));
    }

    #[test]
    fn smtp_mail_without_tenant_is_not_stored() {
        assert!(plan(&[(1, ev("delivered", "", "", "", ""))]).is_empty());
    }

    #[test]
    fn stats_sum_kinds_and_classes() {
        let mut s = Stats::default();
        let (e, _) = apply(
            Entry::default(),
            &[
                Increment {
                    seq: 1,
                    fields: fields(&ev("bounced", "t", "c", "", "")),
                },
                Increment {
                    seq: 2,
                    fields: fields(&ev("deferred", "t", "c", "", "greylist")),
                },
                Increment {
                    seq: 3,
                    fields: fields(&ev("complained", "t", "c", "", "")),
                },
            ],
            0,
        );
        s.add(&e.counts);
        s.add(&e.counts);
        assert_eq!(s.bounced.total, 2);
        assert_eq!(s.bounced.by_class[UNCLASSIFIED], 2);
        assert_eq!((s.deferred, s.complained), (2, 2));
    }
}
