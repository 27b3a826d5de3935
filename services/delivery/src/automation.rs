//! Shaping automation: rules of the shaping file that watch the replies of
//! remote servers and, when one matches, act on the (egress source,
//! provider) pair for a while: suspend sending, lower the message rate, or
//! bounce. Held for every delivery replica together in the JetStream
//! key-value bucket [`SHAPING_BUCKET`].
//!
//! Keys: `active.<pair>` holds the action in force (JSON, with its end
//! time); `hits.<pair>.<rule>` the recent matching replies of a threshold
//! rule (`3 in 5m`), as Unix milliseconds. Every replica watches
//! `active.>` and keeps a local copy, so checking whether a message may go
//! costs no NATS round trip; only a matching reply costs KV operations
//! (one read and one write, and one more write when the rule acts). An
//! action ends by itself: the replica that first sees it past its end
//! deletes it, with the revision it saw, so exactly one replica reports the
//! end. Both the start and the end are an event (`tern.events.shaping`,
//! kind `shaping`) and a metric.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tern_proto::{Event, Outcome, RecipientResult};
use tern_runtime::bus;

use crate::rate::RateLimit;
use crate::shaping::{Automation as Rule, Plan, Rules, Trigger};

/// The key-value bucket of actions in force and threshold counts.
pub const SHAPING_BUCKET: &str = "tern-shaping";
/// Subject of the shaping events (in the `TERN_EVENTS` stream).
pub const EVENTS_SUBJECT: &str = "tern.events.shaping";
/// The longest an action or a threshold count is kept.
const BUCKET_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);
/// How often expired actions are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(500);
/// Most compare-and-set rounds for one threshold count.
const CAS_TRIES: usize = 8;
/// Longest a suspended job stays away before it is looked at again.
const SUSPEND_RECHECK: Duration = Duration::from_secs(30);

/// One action in force on an (egress source, provider) pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// The pair's key (`<source>_<provider-or-site>`).
    pub pair: String,
    /// The egress pool.
    pub source: String,
    /// `provider-<name>` or the resolver's site.
    pub target: String,
    /// The rule that acted.
    pub rule: String,
    /// `suspend`, `rate` or `bounce`.
    pub action: String,
    /// For `rate`: messages per window.
    pub rate_count: Option<u64>,
    /// For `rate`: the window in milliseconds.
    pub rate_period_ms: Option<u64>,
    /// When it started (Unix ms).
    pub since_ms: u64,
    /// When it ends by itself (Unix ms).
    pub until_ms: u64,
    /// The remote reply that set it off.
    pub reply: String,
}

impl Action {
    /// The lowered rate of a `rate` action.
    pub fn rate(&self) -> Option<RateLimit> {
        Some(RateLimit::PerWindow {
            count: self.rate_count?,
            period: Duration::from_millis(self.rate_period_ms?),
        })
    }

    fn remaining(&self, now_ms: u64) -> Duration {
        Duration::from_millis(self.until_ms.saturating_sub(now_ms))
    }
}

/// What an action in force means for one message.
pub(crate) enum Verdict {
    /// Nothing in force.
    Go,
    /// Not now: back to the stream for this long.
    Suspended(Duration),
    /// Send at most at this rate.
    Rate(RateLimit),
    /// Bounce it, naming the action.
    Bounce(Action),
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// The local copy of the actions in force, fed by a KV watch.
#[derive(Clone)]
pub(crate) struct Automation {
    kv: kv::Store,
    js: jetstream::Context,
    active: Arc<RwLock<HashMap<String, (Action, u64)>>>,
}

async fn bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, bus::BusError> {
    js.create_key_value(kv::Config {
        bucket: SHAPING_BUCKET.into(),
        history: 1,
        max_age: BUCKET_MAX_AGE,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| bus::BusError::Setup {
        what: SHAPING_BUCKET.into(),
        message: e.to_string(),
    })
}

impl Automation {
    /// Open the bucket, load the actions in force and keep watching them
    /// (and ending expired ones) until `shutdown`.
    pub async fn start(
        js: &jetstream::Context,
        replicas: usize,
        shutdown: tern_runtime::Shutdown,
    ) -> Result<Automation, bus::BusError> {
        let kv = bucket(js, replicas).await?;
        let a = Automation {
            kv,
            js: js.clone(),
            active: Arc::default(),
        };
        let watcher = a.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move { watcher.watch(stop).await });
        let sweeper = a.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => sweeper.sweep().await,
                    _ = shutdown.wait() => return,
                }
            }
        });
        Ok(a)
    }

    async fn watch(&self, shutdown: tern_runtime::Shutdown) {
        loop {
            match self.kv.watch_with_history("active.>").await {
                Ok(mut w) => loop {
                    tokio::select! {
                        e = w.next() => match e {
                            Some(Ok(e)) => self.apply(&e),
                            Some(Err(e)) => tracing::debug!(error = %e, "shaping watch error"),
                            None => break,
                        },
                        _ = shutdown.wait() => return,
                    }
                },
                Err(e) => tracing::warn!(error = %e, "watching shaping actions failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    fn apply(&self, e: &kv::Entry) {
        let pair = e.key.trim_start_matches("active.").to_string();
        let mut map = self.active.write().unwrap_or_else(|e| e.into_inner());
        match (e.operation, serde_json::from_slice::<Action>(&e.value)) {
            (kv::Operation::Put, Ok(a)) => {
                metrics::gauge!("tern_shaping_actions_in_force").increment(1.0);
                if map.insert(pair, (a, e.revision)).is_some() {
                    metrics::gauge!("tern_shaping_actions_in_force").decrement(1.0);
                }
            }
            _ => {
                if map.remove(&pair).is_some() {
                    metrics::gauge!("tern_shaping_actions_in_force").decrement(1.0);
                }
            }
        }
    }

    /// End actions past their end time: one replica wins the delete and
    /// reports it.
    async fn sweep(&self) {
        let now = now_ms();
        let expired: Vec<(Action, u64)> = {
            let map = self.active.read().unwrap_or_else(|e| e.into_inner());
            map.values()
                .filter(|(a, _)| a.until_ms <= now)
                .cloned()
                .collect()
        };
        for (a, revision) in expired {
            let key = format!("active.{}", a.pair);
            metrics::counter!("tern_shaping_kv_ops_total", "op" => "delete").increment(1);
            if self
                .kv
                .delete_expect_revision(&key, Some(revision))
                .await
                .is_ok()
            {
                tracing::info!(rule = %a.rule, action = %a.action, pair = %a.pair, "shaping action ended");
                metrics::counter!("tern_shaping_actions_ended_total", "rule" => a.rule.clone(), "action" => a.action.clone(), "how" => "expired").increment(1);
                publish_event(&self.js, &a, "ended").await;
            }
        }
    }

    /// What is in force for `pair` now.
    pub fn verdict(&self, pair: &str) -> Verdict {
        let map = self.active.read().unwrap_or_else(|e| e.into_inner());
        let Some((a, _)) = map.get(pair) else {
            return Verdict::Go;
        };
        let now = now_ms();
        if a.until_ms <= now {
            return Verdict::Go;
        }
        match a.action.as_str() {
            "suspend" => Verdict::Suspended(a.remaining(now).min(SUSPEND_RECHECK)),
            "rate" => a.rate().map_or(Verdict::Go, Verdict::Rate),
            "bounce" => Verdict::Bounce(a.clone()),
            _ => Verdict::Go,
        }
    }

    /// Look at an attempt's results: a reply an automation rule matches
    /// counts towards it, and sets its action off when the trigger says so.
    pub async fn observe(
        &self,
        rules: &Rules,
        plan: &Plan,
        source: &str,
        results: &[RecipientResult],
    ) {
        // One reply per attempt is enough: the recipients of a job share it.
        let Some(r) = results
            .iter()
            .find(|r| r.code != 0 && r.outcome != Outcome::Delivered as i32)
        else {
            return;
        };
        let text = format!("{} {}", r.enhanced, r.reply);
        for rule in &rules.automation {
            if !matches(rule, plan, r.code, &text) {
                continue;
            }
            let act = match rule.trigger {
                Trigger::Once => true,
                Trigger::Threshold { count, within } => {
                    self.count_hit(plan, rule, count, within).await
                }
            };
            if act {
                self.act(rule, plan, source, &format!("{} {text}", r.code))
                    .await;
            }
            // The first matching rule decides.
            return;
        }
    }

    /// Add a matching reply to the threshold count of `rule`; true when
    /// it reached `count` within `within` (the count starts again).
    async fn count_hit(&self, plan: &Plan, rule: &Rule, count: u32, within: Duration) -> bool {
        let key = format!("hits.{}.{}", plan.pair, bus::kv_token(&rule.name));
        let now = now_ms();
        let since = now.saturating_sub(within.as_millis() as u64);
        for _ in 0..CAS_TRIES {
            metrics::counter!("tern_shaping_kv_ops_total", "op" => "read").increment(1);
            let entry = match self.kv.entry(&key).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "shaping threshold count unavailable");
                    return false;
                }
            };
            let (mut hits, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    std::str::from_utf8(&e.value)
                        .unwrap_or("")
                        .split_whitespace()
                        .filter_map(|t| t.parse::<u64>().ok())
                        .filter(|&t| t > since)
                        .collect::<Vec<u64>>(),
                    Some(e.revision),
                ),
                _ => (Vec::new(), None),
            };
            hits.push(now);
            let reached = hits.len() >= count as usize;
            let value: String = if reached {
                String::new()
            } else {
                hits.iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            metrics::counter!("tern_shaping_kv_ops_total", "op" => "write").increment(1);
            let written = match revision {
                Some(rev) => self.kv.update(&key, value.into(), rev).await.is_ok(),
                None => self.kv.create(&key, value.into()).await.is_ok(),
            };
            if written {
                return reached;
            }
        }
        false
    }

    /// Put `rule`'s action in force on the plan's pair, unless an action
    /// is in force there already (the first one stands until it ends).
    async fn act(&self, rule: &Rule, plan: &Plan, source: &str, reply: &str) {
        let key = format!("active.{}", plan.pair);
        let now = now_ms();
        let (rate_count, rate_period_ms) = match rule.rate.map(|r| r.0) {
            Some(RateLimit::PerWindow { count, period }) => {
                (Some(count), Some(period.as_millis() as u64))
            }
            _ => (None, None),
        };
        let a = Action {
            pair: plan.pair.clone(),
            source: source.to_string(),
            target: plan.target.clone(),
            rule: rule.name.clone(),
            action: rule.action.as_str().to_string(),
            rate_count,
            rate_period_ms,
            since_ms: now,
            until_ms: now + rule.duration.0.as_millis() as u64,
            reply: reply.chars().take(300).collect(),
        };
        let Ok(value) = serde_json::to_vec(&a) else {
            return;
        };
        metrics::counter!("tern_shaping_kv_ops_total", "op" => "read").increment(1);
        let current = self.kv.entry(&key).await.ok().flatten();
        let written = match current {
            Some(e) if e.operation == kv::Operation::Put => {
                let live = serde_json::from_slice::<Action>(&e.value)
                    .map(|x| x.until_ms > now)
                    .unwrap_or(false);
                if live {
                    return;
                }
                metrics::counter!("tern_shaping_kv_ops_total", "op" => "write").increment(1);
                self.kv.update(&key, value.into(), e.revision).await.is_ok()
            }
            _ => {
                metrics::counter!("tern_shaping_kv_ops_total", "op" => "write").increment(1);
                self.kv.create(&key, value.into()).await.is_ok()
            }
        };
        if !written {
            // Another replica acted first.
            return;
        }
        tracing::warn!(rule = %a.rule, action = %a.action, pair = %a.pair, until_ms = a.until_ms, reply = %a.reply, "shaping action in force");
        metrics::counter!("tern_shaping_actions_total", "rule" => a.rule.clone(), "action" => a.action.clone()).increment(1);
        publish_event(&self.js, &a, "started").await;
    }
}

/// Does `rule` apply to a reply with `code` and `text` for `plan`?
fn matches(rule: &Rule, plan: &Plan, code: u32, text: &str) -> bool {
    if let Some(p) = &rule.provider
        && plan.provider.as_deref() != Some(p.as_str())
    {
        return false;
    }
    if let Some(c) = rule.code
        && u32::from(c) != code
    {
        return false;
    }
    rule.pattern.0.is_match(text)
}

/// Publish a shaping event (de-duplicated per action and phase).
async fn publish_event(js: &jetstream::Context, a: &Action, phase: &str) {
    let what = match a.rate() {
        Some(r) if a.action == "rate" => format!("rate {r}"),
        _ => a.action.clone(),
    };
    let event = Event {
        kind: "shaping".into(),
        destination: a.target.clone(),
        reply: format!(
            "{phase}: {what} for {} from {} by rule {} (until {} ms; reply: {})",
            a.target, a.source, a.rule, a.until_ms, a.reply
        ),
        at_unix_ms: now_ms() as i64,
        ..Default::default()
    };
    let id = format!("shaping/{}/{}/{phase}", a.pair, a.since_ms);
    let stored = bus::Publish::new(EVENTS_SUBJECT.to_string(), event.encode_to_vec().into(), id)
        .durable(js)
        .await;
    if let Err(e) = stored {
        tracing::warn!(error = %e, "publishing the shaping event failed");
    }
}

/// A JetStream context for [`status`] and [`clear`] (the `tern shaping`
/// commands), from the NATS keys of `common`.
pub async fn connect(
    common: &tern_runtime::config::CommonConfig,
) -> Result<jetstream::Context, AdminError> {
    let url = common.require_nats_url()?;
    let client = bus::connect_once(url, &common.nats_security, "tern-shaping").await?;
    Ok(jetstream::new(client))
}

/// Why a `tern shaping` command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The NATS URL is not configured.
    #[error(transparent)]
    Config(#[from] tern_runtime::config::ConfigError),
    /// NATS or the bucket could not be reached.
    #[error(transparent)]
    Bus(#[from] bus::BusError),
}

/// Every action in force, from the bucket (for `tern shaping status`).
pub async fn status(js: &jetstream::Context) -> Result<Vec<Action>, bus::BusError> {
    let kv = bucket(js, 1).await?;
    let setup = |e: String| bus::BusError::Setup {
        what: SHAPING_BUCKET.into(),
        message: e,
    };
    let mut keys = kv.keys().await.map_err(|e| setup(e.to_string()))?;
    let now = now_ms();
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let Ok(k) = k else { continue };
        if !k.starts_with("active.") {
            continue;
        }
        if let Ok(Some(v)) = kv.get(&k).await
            && let Ok(a) = serde_json::from_slice::<Action>(&v)
            && a.until_ms > now
        {
            out.push(a);
        }
    }
    out.sort_by(|a, b| a.pair.cmp(&b.pair));
    Ok(out)
}

/// Lift the actions in force (all, or those whose pair, source or target
/// is `which`); the ones lifted (for `tern shaping clear`).
pub async fn clear(
    js: &jetstream::Context,
    which: Option<&str>,
) -> Result<Vec<Action>, bus::BusError> {
    let kv = bucket(js, 1).await?;
    let mut lifted = Vec::new();
    for a in status(js).await? {
        let hit = which.is_none_or(|w| w == a.pair || w == a.source || w == a.target);
        if hit && kv.delete(format!("active.{}", a.pair)).await.is_ok() {
            metrics::counter!("tern_shaping_actions_ended_total", "rule" => a.rule.clone(), "action" => a.action.clone(), "how" => "cleared").increment(1);
            publish_event(js, &a, "cleared").await;
            lifted.push(a);
        }
    }
    Ok(lifted)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::shaping::ActionKind;

    #[test]
    fn rules_match_code_provider_and_text() {
        let rules = Rules::defaults();
        let google = rules.plan("gmail.com", ["gmail-smtp-in.l.google.com"], "s", "default");
        let other = rules.plan("x.example", ["mx.x.example"], "mx.x.example", "default");
        let rule = rules
            .automation
            .iter()
            .find(|r| r.name == "google-rate-limited")
            .unwrap();
        let text = "4.7.28 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail";
        assert!(matches(rule, &google, 421, text));
        assert!(!matches(rule, &google, 450, text));
        assert!(!matches(rule, &other, 421, text));
        assert!(!matches(rule, &google, 421, "4.7.0 try again later"));
        assert_eq!(rule.action, ActionKind::Suspend);
    }
}
