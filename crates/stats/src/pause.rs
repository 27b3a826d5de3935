//! The campaign circuit breaker (issue 17): a campaign whose complaint rate
//! passes `TERN_COMPLAINT_PAUSE_RATE` (default 0.3 %, the rate Gmail asks
//! bulk senders to stay under) after at least
//! `TERN_COMPLAINT_PAUSE_MIN_DELIVERED` deliveries is paused until an
//! operator resumes it with `tern campaign resume`.
//!
//! - The aggregator computes the rates from the campaign's lifetime totals
//!   (`t.<tenant>.<campaign>` in `tern-stats`) after every batch it writes
//!   and, when [`Breaker::trips`], writes a [`PauseRecord`] into
//!   `tern-campaign-pauses` with a compare-and-set (so of many replicas
//!   exactly one pauses, and publishes one `campaign_paused` event).
//! - Delivery follows the bucket ([`Pauses`]) and moves each job of a
//!   paused campaign onto [`paused_subject`] in `TERN_JOBS` instead of
//!   attempting it: durable, costing no worker and no redelivery churn.
//! - [`resume`] marks the record resumed with the totals of that moment as
//!   the new baseline (so the breaker judges only mail sent after it), then
//!   moves the set-aside jobs back to their ready subjects.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tern_proto::{Event, Job};
use tern_runtime::bus::{self, BusError};
use tern_runtime::config::{ConfigValue, Key};
use tern_runtime::{Shutdown, holds, now_unix_ms};

use crate::{Error, key};

/// The event kind published when the breaker pauses a campaign.
pub const PAUSED_EVENT: &str = "campaign_paused";
/// Parts per million in one.
const PPM: u64 = 1_000_000;
/// How long [`resume`] waits before its second sweep: longer than a
/// delivery replica takes to see the resumed record (a watch update), so a
/// job set aside in that moment is not left behind.
const RESUME_SETTLE: Duration = Duration::from_secs(2);

/// `TERN_COMPLAINT_PAUSE_RATE`.
pub const PAUSE_RATE: Key<Rate> = Key::new(
    "complaint_pause_rate",
    "0.3%",
    "pause a campaign whose complaint rate (complaints / deliveries) goes above this (0.003 or 0.3%); 0 turns the breaker off",
);
/// `TERN_COMPLAINT_PAUSE_MIN_DELIVERED`.
pub const PAUSE_MIN_DELIVERED: Key<u64> = Key::new(
    "complaint_pause_min_delivered",
    "1000",
    "deliveries a campaign needs (since its last resume) before the complaint breaker judges it",
);

/// A fraction between 0 and 1 in parts per million: exact to compare,
/// written `0.003` or `0.3%`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Rate(pub u32);

impl Rate {
    /// The fraction as a float (for gauges and display).
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / PPM as f64
    }
}

impl ConfigValue for Rate {
    const EXPECTED: &'static str = "a fraction from 0 to 1, like 0.003 or 0.3%";
    fn parse_value(s: &str) -> Option<Self> {
        let (number, scale) = match s.strip_suffix('%') {
            Some(n) => (n, 100.0),
            None => (s, 1.0),
        };
        let f: f64 = number.trim().parse().ok()?;
        let f = f / scale;
        // The rounding keeps `0.3%` exactly 3000 ppm.
        (0.0..=1.0)
            .contains(&f)
            .then(|| Rate((f * PPM as f64).round() as u32))
    }
}

/// A campaign's lifetime counts the rates are computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Recipients delivered.
    pub delivered: u64,
    /// Complaints (feedback-loop reports).
    pub complained: u64,
    /// Recipients bounced, any class.
    pub bounced: u64,
    /// Bounces of a hard class (invalid recipient, bad domain).
    pub hard_bounced: u64,
}

impl Totals {
    /// The totals in a counter entry's fields.
    pub fn from_counts(counts: &BTreeMap<String, u64>) -> Self {
        let get = |k: &str| counts.get(k).copied().unwrap_or(0);
        let hard_bounced = counts
            .iter()
            .filter_map(|(field, n)| {
                let class = field.strip_prefix("bounced:")?;
                let class: tern_bounce::Class = class.parse().ok()?;
                class.is_hard().then_some(*n)
            })
            .sum();
        Totals {
            delivered: get("delivered"),
            complained: get("complained"),
            bounced: get("bounced"),
            hard_bounced,
        }
    }

    /// Complaints per delivered message (0 before the first delivery).
    pub fn complaint_rate(&self) -> f64 {
        ratio(self.complained, self.delivered)
    }

    /// Hard bounces per final attempt (delivered or bounced).
    pub fn hard_bounce_rate(&self) -> f64 {
        ratio(self.hard_bounced, self.delivered + self.bounced)
    }
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

/// Whether a campaign is paused or was resumed after a pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseState {
    /// No job of the campaign is attempted.
    Paused,
    /// Sending again; the record's counts are the breaker's new baseline.
    Resumed,
}

/// One campaign's breaker record in `tern-campaign-pauses`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseRecord {
    /// The tenant.
    pub tenant: String,
    /// The campaign tag.
    pub campaign: String,
    /// Paused or resumed.
    pub state: PauseState,
    /// When it was paused or resumed, Unix ms.
    pub at_unix_ms: i64,
    /// Lifetime deliveries when it was paused or resumed.
    pub delivered: u64,
    /// Lifetime complaints when it was paused or resumed.
    pub complained: u64,
    /// The threshold in force when it was paused, parts per million.
    pub threshold_ppm: u32,
}

/// The breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    /// Pause above this complaint rate; 0: never.
    pub rate: Rate,
    /// Deliveries since the baseline before the rate is judged.
    pub min_delivered: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            rate: Rate(3000),
            min_delivered: 1000,
        }
    }
}

impl Breaker {
    /// Should a campaign with these totals and this record be paused now?
    /// Never one without a campaign tag (transactional mail), nor one
    /// already paused; after a resume only what came since counts.
    pub fn trips(&self, campaign: &str, totals: &Totals, record: Option<&PauseRecord>) -> bool {
        if self.rate.0 == 0 || campaign.is_empty() {
            return false;
        }
        let (d0, c0) = match record {
            Some(r) if r.state == PauseState::Paused => return false,
            Some(r) => (r.delivered, r.complained),
            None => (0, 0),
        };
        let delivered = totals.delivered.saturating_sub(d0);
        let complained = totals.complained.saturating_sub(c0);
        delivered >= self.min_delivered
            && complained > 0
            && u128::from(complained) * u128::from(PPM)
                > u128::from(self.rate.0) * u128::from(delivered)
    }
}

/// The `TERN_JOBS` subject the jobs of a paused campaign wait on.
pub fn paused_subject(tenant: &str, campaign: &str) -> String {
    format!("tern.paused.{}", key::pair(tenant, campaign))
}

/// A live view of the paused campaigns; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Pauses {
    paused: Arc<RwLock<HashSet<String>>>,
}

impl Pauses {
    /// Follow `tern-campaign-pauses` until `shutdown`.
    pub async fn watch(js: &jetstream::Context, shutdown: Shutdown) -> Result<Pauses, BusError> {
        let pauses = Pauses::default();
        let me = pauses.clone();
        holds::follow_bucket(js, bus::PAUSES_BUCKET, shutdown, move |e| me.apply(e)).await?;
        Ok(pauses)
    }

    fn apply(&self, e: &kv::Entry) {
        let paused = e.operation == kv::Operation::Put
            && serde_json::from_slice::<PauseRecord>(&e.value)
                .is_ok_and(|r| r.state == PauseState::Paused);
        if let Ok(mut set) = self.paused.write() {
            if paused {
                set.insert(e.key.clone());
            } else {
                set.remove(&e.key);
            }
        }
    }

    /// Is this tenant's campaign paused? (Mail without a tenant never is.)
    pub fn is_paused(&self, tenant: &str, campaign: &str) -> bool {
        !tenant.is_empty()
            && self
                .paused
                .read()
                .is_ok_and(|s| s.contains(&key::pair(tenant, campaign)))
    }
}

/// The pauses bucket (created by `bus::ensure_streams`).
pub(crate) async fn bucket(js: &jetstream::Context) -> Result<kv::Store, Error> {
    js.get_key_value(bus::PAUSES_BUCKET)
        .await
        .map_err(|e| Error::Setup(format!("bucket {}: {e}", bus::PAUSES_BUCKET)))
}

fn store_err(k: &str) -> impl Fn(&dyn std::fmt::Display) -> Error + '_ {
    move |e| Error::Store {
        key: k.to_string(),
        message: e.to_string(),
    }
}

/// A campaign's record and its revision.
pub async fn record(
    kv: &kv::Store,
    tenant: &str,
    campaign: &str,
) -> Result<Option<(PauseRecord, u64)>, Error> {
    let k = key::pair(tenant, campaign);
    let got = kv.entry(&k).await.map_err(|e| store_err(&k)(&e))?;
    match got {
        Some(e) if e.operation == kv::Operation::Put => {
            let r = serde_json::from_slice(&e.value).map_err(|err| Error::Corrupt {
                key: k.clone(),
                message: err.to_string(),
            })?;
            Ok(Some((r, e.revision)))
        }
        _ => Ok(None),
    }
}

/// Write `next` if the record is still at `revision` (0: absent). False
/// when another writer got there first.
pub(crate) async fn swap(kv: &kv::Store, next: &PauseRecord, revision: u64) -> Result<bool, Error> {
    let k = key::pair(&next.tenant, &next.campaign);
    let value = serde_json::to_vec(next).map_err(|e| store_err(&k)(&e))?;
    if revision == 0 {
        match kv.create(&k, value.into()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(store_err(&k)(&e)),
        }
    } else {
        match kv.update(&k, value.into(), revision).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(store_err(&k)(&e)),
        }
    }
}

/// The `campaign_paused` event of a record: in the tenant's event stream
/// (webhooks, statistics), the rate and threshold in its reply text.
pub fn paused_event(r: &PauseRecord) -> Event {
    let rate = Totals {
        delivered: r.delivered,
        complained: r.complained,
        ..Default::default()
    }
    .complaint_rate();
    Event {
        kind: PAUSED_EVENT.into(),
        tenant: r.tenant.clone(),
        campaign: r.campaign.clone(),
        at_unix_ms: r.at_unix_ms,
        reply: format!(
            "campaign paused: {} complaints in {} deliveries ({:.3}%) is above {:.3}%",
            r.complained,
            r.delivered,
            rate * 100.0,
            Rate(r.threshold_ppm).as_f64() * 100.0
        ),
        ..Default::default()
    }
}

/// Every record (for `tern campaign status`), of one tenant or of all.
pub async fn list(
    js: &jetstream::Context,
    tenant: Option<&str>,
) -> Result<Vec<PauseRecord>, Error> {
    let kv = bucket(js).await?;
    let mut keys = kv
        .keys()
        .await
        .map_err(|e| store_err(bus::PAUSES_BUCKET)(&e))?;
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| store_err(bus::PAUSES_BUCKET)(&e))?;
        let Some(e) = kv.entry(&k).await.map_err(|e| store_err(&k)(&e))? else {
            continue;
        };
        if e.operation != kv::Operation::Put {
            continue;
        }
        let r: PauseRecord = serde_json::from_slice(&e.value).map_err(|err| Error::Corrupt {
            key: k.clone(),
            message: err.to_string(),
        })?;
        if tenant.is_none_or(|want| want == r.tenant) {
            out.push(r);
        }
    }
    out.sort_by(|a, b| (&a.tenant, &a.campaign).cmp(&(&b.tenant, &b.campaign)));
    Ok(out)
}

/// `TERN_JOBS`, errors named after the paused `subject` worked on.
async fn jobs_stream(
    js: &jetstream::Context,
    subject: &str,
) -> Result<jetstream::stream::Stream, Error> {
    js.get_stream(bus::JOBS_STREAM)
        .await
        .map_err(|e| store_err(subject)(&e))
}

/// Jobs of a campaign set aside and waiting for its resume.
pub async fn waiting(js: &jetstream::Context, tenant: &str, campaign: &str) -> Result<u64, Error> {
    let subject = paused_subject(tenant, campaign);
    let fail = store_err(&subject);
    let stream = jobs_stream(js, &subject).await?;
    let mut counts = stream
        .info_with_subjects(&subject)
        .await
        .map_err(|e| fail(&e))?;
    let mut n = 0;
    while let Some(c) = counts.next().await {
        n += c.map_err(|e| fail(&e))?.1 as u64;
    }
    Ok(n)
}

/// What [`resume`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resumed {
    /// The campaign was not paused (never, or resumed already); jobs found
    /// set aside anyway were moved back.
    NotPaused {
        /// Jobs moved back to ready.
        moved: u64,
    },
    /// It was paused and sends again.
    Resumed {
        /// Jobs moved back to ready.
        moved: u64,
    },
}

/// Resume a paused campaign: its record becomes resumed with the current
/// totals as the breaker's baseline, then every job set aside for it goes
/// back to its ready subject, oldest first.
pub async fn resume(
    js: &jetstream::Context,
    reader: &crate::StatsReader,
    tenant: &str,
    campaign: &str,
) -> Result<Resumed, Error> {
    let kv = bucket(js).await?;
    let mut was_paused = false;
    loop {
        let current = record(&kv, tenant, campaign).await?;
        let Some((r, revision)) = current.filter(|(r, _)| r.state == PauseState::Paused) else {
            break;
        };
        let totals = reader.totals(tenant, campaign).await?;
        let next = PauseRecord {
            state: PauseState::Resumed,
            at_unix_ms: now_unix_ms(),
            delivered: totals.delivered,
            complained: totals.complained,
            ..r
        };
        if swap(&kv, &next, revision).await? {
            was_paused = true;
            break;
        }
    }
    // One consumer for both sweeps: a work-queue stream admits only one
    // consumer per subject.
    let subject = paused_subject(tenant, campaign);
    let fail = store_err(&subject);
    let stream = jobs_stream(js, &subject).await?;
    let set_aside = stream
        .create_consumer(consumer::pull::Config {
            filter_subject: subject.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(|e| fail(&e))?;
    let mut moved = move_back(js, &subject, &set_aside).await?;
    if was_paused {
        // A replica that had not seen the resume yet may set a job aside
        // after the first sweep.
        tokio::time::sleep(RESUME_SETTLE).await;
        moved += move_back(js, &subject, &set_aside).await?;
    }
    let name = set_aside.cached_info().name.clone();
    if let Err(e) = stream.delete_consumer(&name).await {
        tracing::debug!(error = %e, "sweep consumer left to expire");
    }
    Ok(if was_paused {
        Resumed::Resumed { moved }
    } else {
        Resumed::NotPaused { moved }
    })
}

/// Move every job `set_aside` (a consumer of `subject`) holds back to ready.
async fn move_back(
    js: &jetstream::Context,
    subject: &str,
    set_aside: &consumer::PullConsumer,
) -> Result<u64, Error> {
    let fail = store_err(subject);
    let mut moved = 0;
    loop {
        let mut batch = set_aside
            .fetch()
            .max_messages(500)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .map_err(|e| fail(&e))?;
        let mut taken = Vec::new();
        let mut acks = Vec::new();
        while let Some(m) = batch.next().await {
            let m = m.map_err(|e| fail(&e))?;
            let Ok(job) = Job::decode(m.payload.clone()) else {
                tracing::error!(%subject, "undecodable job set aside; leaving it");
                continue;
            };
            // The set-aside message's sequence keeps the id unique per pause.
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or_default();
            let id = format!("{}/{}/resumed/{seq}", job.job_id, job.attempt);
            let publish =
                bus::Publish::new(bus::ready_subject(&job.destination), m.payload.clone(), id);
            acks.push(publish.send(js).await.map_err(|e| fail(&e))?);
            taken.push(m);
        }
        for ack in acks {
            ack.await.map_err(|e| fail(&e))?;
        }
        if taken.is_empty() {
            return Ok(moved);
        }
        for m in taken {
            m.ack().await.map_err(|e| fail(&e))?;
            moved += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(delivered: u64, complained: u64) -> Totals {
        Totals {
            delivered,
            complained,
            ..Default::default()
        }
    }

    fn record(state: PauseState, delivered: u64, complained: u64) -> PauseRecord {
        PauseRecord {
            tenant: "t".into(),
            campaign: "c".into(),
            state,
            at_unix_ms: 0,
            delivered,
            complained,
            threshold_ppm: 3000,
        }
    }

    #[test]
    fn rates_parse_as_fractions_or_percent() {
        for (text, want) in [
            ("0.3%", Some(3000)),
            ("0.003", Some(3000)),
            ("0", Some(0)),
            ("1", Some(1_000_000)),
            ("100%", Some(1_000_000)),
            ("1.5", None),
            ("-0.1", None),
            ("a lot", None),
        ] {
            assert_eq!(Rate::parse_value(text).map(|r| r.0), want, "{text}");
        }
    }

    #[test]
    fn the_breaker_trips_above_the_rate_once_enough_was_delivered() {
        let b = Breaker::default();
        // 3 in 1000 is the limit itself: not above it.
        assert!(!b.trips("c", &totals(1000, 3), None));
        assert!(b.trips("c", &totals(1000, 4), None));
        // Too few deliveries to judge, however bad.
        assert!(!b.trips("c", &totals(999, 500), None));
        // Mail without a campaign tag, or a breaker turned off.
        assert!(!b.trips("", &totals(1000, 500), None));
        let off = Breaker { rate: Rate(0), ..b };
        assert!(!off.trips("c", &totals(1000, 500), None));
    }

    #[test]
    fn after_a_resume_only_new_mail_counts_and_a_paused_campaign_stays_put() {
        let b = Breaker::default();
        let paused = record(PauseState::Paused, 1000, 10);
        assert!(!b.trips("c", &totals(5000, 100), Some(&paused)));
        // Resumed at 1000/10: 1000 more deliveries with 3 more complaints is fine…
        let resumed = record(PauseState::Resumed, 1000, 10);
        assert!(!b.trips("c", &totals(2000, 13), Some(&resumed)));
        // …4 more is not, and 500 more deliveries are too few to judge.
        assert!(b.trips("c", &totals(2000, 14), Some(&resumed)));
        assert!(!b.trips("c", &totals(1500, 100), Some(&resumed)));
    }

    #[test]
    fn hard_bounces_are_the_hard_classes_only() {
        let counts: BTreeMap<String, u64> = [
            ("delivered", 90),
            ("bounced", 10),
            ("bounced:invalid_recipient", 4),
            ("bounced:bad_domain", 1),
            ("bounced:spam_block", 5),
            ("complained", 1),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let t = Totals::from_counts(&counts);
        assert_eq!(t.hard_bounced, 5);
        assert!((t.hard_bounce_rate() - 0.05).abs() < 1e-9);
        assert!((t.complaint_rate() - 1.0 / 90.0).abs() < 1e-9);
        assert_eq!(Totals::default().complaint_rate(), 0.0);
    }

    #[test]
    fn paused_subjects_separate_tenants_and_campaigns() {
        assert_eq!(paused_subject("acme", "spring"), "tern.paused.acme.spring");
        assert_ne!(paused_subject("a.b", "c"), paused_subject("a", "b.c"));
    }
}
