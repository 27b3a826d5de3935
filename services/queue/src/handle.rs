//! What the queue does with each spool envelope and each attempt result.

use async_nats::jetstream::{self, context::PublishError};
use prost::Message as _;
use tern_proto::{
    Envelope, Job, JobResult, JobState, MessageState, Outcome, Recipient, RecipientResult,
    body_ref::Location,
};
use tern_runtime::worker::Disposition;
use tern_runtime::{body, bus, date, now_unix_ms, telemetry};
use tracing::Instrument;

use crate::Ctx;
use crate::dsn::{self, Kind as DsnKind, Line};
use crate::events::{self, kind};
use crate::retry::RetrySchedule;
use crate::route::{Route, fan_out};
use crate::state::{Seen, StateError};

/// Why a spool envelope or a result could not be handled, and so whether
/// to try again ([`HandleError::disposition`]).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandleError {
    /// The message is not what the subject carries; retrying cannot fix
    /// it, so it is dropped (terminated) and counted.
    #[error("undecodable {what}: {source}")]
    Undecodable {
        /// `envelope` or `result`.
        what: &'static str,
        /// The decoder's complaint.
        source: prost::DecodeError,
    },
    /// The message carries no JetStream metadata (not from a consumer).
    #[error("message metadata: {0}")]
    Metadata(String),
    /// A publish was refused or its ack did not come: try again.
    #[error("publish: {0}")]
    Publish(#[from] PublishError),
    /// The queue state bucket failed: try again.
    #[error(transparent)]
    State(#[from] StateError),
    /// A body could not be loaded or stored (for a DSN): try again.
    #[error(transparent)]
    Body(#[from] body::BodyError),
    /// A hard bounce could not be added to the suppression list: try again.
    #[error(transparent)]
    Suppress(#[from] tern_bounce::SuppressError),
}

impl HandleError {
    /// Drop what can never succeed; redeliver the rest after a pause.
    pub(crate) fn disposition(&self) -> Disposition {
        match self {
            HandleError::Undecodable { .. } => Disposition::Term,
            _ => Disposition::Nak(Some(RETRY_PAUSE)),
        }
    }
}

/// How long a message whose handling failed waits before it is redelivered.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_secs(5);

/// Job states as stored.
pub(crate) mod job_state {
    /// Waiting for a worker.
    pub const READY: &str = "ready";
    /// Waiting for its retry time.
    pub const SCHEDULED: &str = "scheduled";
    /// Destination on hold.
    pub const HELD: &str = "held";
}

/// Route one envelope: record its state, publish its jobs, log `received`.
pub(crate) async fn spool(ctx: &Ctx, msg: &jetstream::Message) -> Result<(), HandleError> {
    let env = Envelope::decode(msg.payload.clone()).map_err(|source| HandleError::Undecodable {
        what: "envelope",
        source,
    })?;
    let seq = msg
        .info()
        .map_err(|e| HandleError::Metadata(e.to_string()))?
        .stream_sequence;
    let span = tracing::info_span!(
        "queue.route",
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = bus::SPOOL_SUBJECT,
        message_id = %env.id,
        rcpts = env.rcpts.len()
    );
    telemetry::link_nats_parent(&span, msg.headers.as_ref());
    async {
        let expires = env.received_at_unix_ms + ctx.config.max_age.as_millis() as i64;
        let routes = fan_out(&env, seq, expires, |d| ctx.config.common.is_local_domain(d));
        let (routes, suppressed) = crate::suppress::split(routes, &ctx.suppress);
        let object = match env.body.as_ref().and_then(|b| b.location.as_ref()) {
            Some(Location::Object(name)) => name.clone(),
            _ => String::new(),
        };
        publish_suppressed(ctx, &suppressed).await?;
        if routes.is_empty() && !suppressed.is_empty() {
            tracing::info!(rcpts = suppressed.len(), "every recipient suppressed");
            ctx.bodies.delete(seq, &object).await;
            return Ok(());
        }
        // One job (one destination, the common case): its job key is the
        // message's whole state, so no message key is written (and none
        // purged at the end): two fsynced writes fewer per message.
        // Redelivery stays safe: the job key (or its marker) decides.
        let seen = if routes.len() == 1 {
            Seen::New
        } else {
            ctx.state
                .create_message(
                    &env.id,
                    &MessageState {
                        remaining_jobs: routes.len() as u32,
                        spool_seq: seq,
                        object,
                        finished: Vec::new(),
                    },
                )
                .await?
        };
        match seen {
            Seen::New => {}
            Seen::Routed => tracing::info!(
                "envelope redelivered; routing again what was not yet attempted (publishes are de-duplicated)"
            ),
            Seen::Finished => {
                tracing::info!("envelope redelivered after every job was final; nothing to do");
                return Ok(());
            }
        }
        let mut acks = Vec::new();
        for Route { subject, job } in &routes {
            let held = ctx.holds.is_held(&job.destination);
            let (subject, state) = if held {
                (bus::held_subject(&job.destination), job_state::HELD)
            } else {
                (subject.clone(), job_state::READY)
            };
            let js = JobState {
                job: Some(job.clone()),
                state: state.into(),
                spool_seq: seq,
                ..Default::default()
            };
            if !ctx.state.create_job(&js).await? {
                continue;
            }
            acks.push(
                bus::Publish::new(subject, job.encode_to_vec().into(), &job.job_id)
                    .send(&ctx.js)
                    .await?,
            );
            for r in &job.rcpts {
                acks.push(
                    events::publish(
                        &ctx.js,
                        &events::event(kind::RECEIVED, job, &r.address, None),
                    )
                    .await?,
                );
                if held {
                    acks.push(
                        events::publish(&ctx.js, &events::event(kind::HELD, job, &r.address, None))
                            .await?,
                    );
                }
            }
        }
        for ack in acks {
            ack.await?;
        }
        metrics::counter!("tern_queue_messages_received_total").increment(1);
        metrics::counter!("tern_queue_jobs_routed_total").increment(routes.len() as u64);
        tracing::info!(jobs = routes.len(), "routed");
        Ok(())
    }
    .instrument(span)
    .await
}

/// A `suppressed` event per recipient taken out at fan-out, acked before
/// the envelope is.
async fn publish_suppressed(ctx: &Ctx, suppressed: &[(Job, String)]) -> Result<(), HandleError> {
    let mut acks = Vec::new();
    for (job, address) in suppressed {
        let e = events::event(kind::SUPPRESSED, job, address, None);
        acks.push(events::publish(&ctx.js, &e).await?);
    }
    for ack in acks {
        ack.await?;
    }
    if !suppressed.is_empty() {
        metrics::counter!("tern_queue_suppressed_total").increment(suppressed.len() as u64);
    }
    Ok(())
}

/// Apply one attempt's results: final recipients are logged (and bounced ones
/// reported to the sender), deferred ones scheduled again or expired.
pub(crate) async fn result(ctx: &Ctx, msg: &jetstream::Message) -> Result<(), HandleError> {
    let res =
        JobResult::decode(msg.payload.clone()).map_err(|source| HandleError::Undecodable {
            what: "result",
            source,
        })?;
    let span = tracing::info_span!(
        "queue.result",
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        message_id = %res.message_id,
        destination = %res.destination,
        attempt = res.attempt
    );
    telemetry::link_nats_parent(&span, msg.headers.as_ref());
    // The attempt that produced this result; a retry links back to it.
    let attempt_trace = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_string());
    apply(ctx, res, attempt_trace).instrument(span).await
}

/// When attempts are repeated and delay DSNs sent: the queue's policy.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Delays between attempts.
    pub retry: RetrySchedule,
    /// The jitter factor of this retry's delay (`retry::random_jitter`).
    pub jitter: f64,
    /// When to send a delay DSN, if at all.
    pub delay_dsn_after: Option<std::time::Duration>,
}

/// One lifecycle event to publish for a recipient of the job.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlannedEvent {
    /// The event kind (`events::kind`), also the outcome label of
    /// `tern_queue_results_total`.
    pub kind: &'static str,
    /// The recipient.
    pub address: String,
    /// The result it reports.
    pub result: RecipientResult,
    /// Its bounce class, for bounced, deferred and expired recipients
    /// (set by `classify::classify`).
    pub class: Option<tern_bounce::Class>,
    /// A permanent hard bounce: the recipient goes on the suppression list.
    pub suppresses: bool,
}

/// The deferred recipients' next attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Retry {
    /// The job of the next attempt: the deferred recipients, attempt + 1.
    pub job: Job,
    /// When it runs (Unix ms).
    pub at_unix_ms: i64,
    /// A delay DSN is due now (RFC 3464 Action: delayed, once per job):
    /// its lines (those that asked for one; may be none).
    pub delay_dsn: Option<Vec<Line>>,
    /// A `deferred` event per recipient, with the next attempt's time.
    pub events: Vec<PlannedEvent>,
}

/// What one attempt's results change, decided without I/O.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    /// Results to record in the job state, replacing earlier ones of the
    /// same recipient.
    pub record: Vec<RecipientResult>,
    /// Events of recipients that are now final (delivered, bounced, expired).
    pub finals: Vec<PlannedEvent>,
    /// The next attempt, if a recipient is deferred and time is left.
    pub retry: Option<Retry>,
    /// Lines of the failure DSN (bounced and expired recipients that asked
    /// for one).
    pub dsn: Vec<Line>,
}

/// Decide what `results` of an attempt of `job` (stored state `st`) mean at
/// `now`: final recipients, the retry of deferred ones or their expiry, and
/// the DSNs due. Recipients the worker did not report stay pending, like
/// deferred ones.
pub(crate) fn plan(
    job: &Job,
    st: &JobState,
    results: &[RecipientResult],
    now: i64,
    policy: &Policy,
) -> Plan {
    let mut finals = Vec::new();
    let mut failed: Vec<Line> = Vec::new();
    let mut deferred: Vec<(Recipient, RecipientResult)> = Vec::new();
    for r in results {
        let rcpt = job
            .rcpts
            .iter()
            .find(|x| x.address == r.address)
            .cloned()
            .unwrap_or_else(|| Recipient {
                address: r.address.clone(),
                ..Default::default()
            });
        let kind = match Outcome::try_from(r.outcome) {
            Ok(Outcome::Delivered) => kind::DELIVERED,
            Ok(Outcome::Bounced) => {
                failed.push(line(&rcpt, r, &r.enhanced));
                kind::BOUNCED
            }
            _ => {
                deferred.push((rcpt, r.clone()));
                continue;
            }
        };
        finals.push(PlannedEvent {
            kind,
            address: r.address.clone(),
            result: r.clone(),
            class: None,
            suppresses: false,
        });
    }
    for rcpt in &job.rcpts {
        if !results.iter().any(|r| r.address == rcpt.address) {
            let r = RecipientResult {
                address: rcpt.address.clone(),
                outcome: Outcome::Deferred as i32,
                reply: "no result reported for this recipient".into(),
                ..Default::default()
            };
            deferred.push((rcpt.clone(), r));
        }
    }
    let mut retry = None;
    if !deferred.is_empty() {
        let next = now
            + policy
                .retry
                .delay_with(job.attempt, policy.jitter)
                .as_millis() as i64;
        if next > job.expires_at_unix_ms {
            for (rcpt, r) in &deferred {
                // RFC 3463 4.4.7: delivery time expired; the last reply says why.
                failed.push(line(rcpt, r, "4.4.7"));
                finals.push(PlannedEvent {
                    kind: kind::EXPIRED,
                    address: rcpt.address.clone(),
                    result: r.clone(),
                    class: None,
                    suppresses: false,
                });
            }
        } else {
            retry = Some(plan_retry(job, st, &deferred, next, now, policy));
        }
    }
    Plan {
        record: results.to_vec(),
        finals,
        retry,
        dsn: failed
            .into_iter()
            .filter(|l| dsn::wanted(&l.rcpt, DsnKind::Failure))
            .collect(),
    }
}

/// The next attempt of the `deferred` recipients at `next`.
fn plan_retry(
    job: &Job,
    st: &JobState,
    deferred: &[(Recipient, RecipientResult)],
    next: i64,
    now: i64,
    policy: &Policy,
) -> Retry {
    let mut retry = job.clone();
    retry.rcpts = deferred.iter().map(|(r, _)| r.clone()).collect();
    retry.attempt = job.attempt + 1;
    let delay_dsn = match policy.delay_dsn_after {
        Some(after)
            if !st.delay_dsn_sent && now - job.received_at_unix_ms >= after.as_millis() as i64 =>
        {
            Some(
                deferred
                    .iter()
                    .filter(|(r, _)| dsn::wanted(r, DsnKind::Delay))
                    .map(|(r, res)| line(r, res, &res.enhanced))
                    .collect(),
            )
        }
        _ => None,
    };
    Retry {
        job: retry,
        at_unix_ms: next,
        delay_dsn,
        events: deferred
            .iter()
            .map(|(rcpt, r)| PlannedEvent {
                kind: kind::DEFERRED,
                address: rcpt.address.clone(),
                result: r.clone(),
                class: None,
                suppresses: false,
            })
            .collect(),
    }
}

/// Publish the event `e` for `job` (its ack to be awaited), counting it.
async fn publish_planned(
    ctx: &Ctx,
    job: &Job,
    e: &PlannedEvent,
    next_attempt_unix_ms: i64,
) -> Result<jetstream::context::PublishAckFuture, HandleError> {
    let class = e.class.map_or("none", tern_bounce::Class::name);
    metrics::counter!("tern_queue_results_total", "outcome" => e.kind, "class" => class)
        .increment(1);
    let mut event = events::event(e.kind, job, &e.address, Some(&e.result));
    event.next_attempt_unix_ms = next_attempt_unix_ms;
    if let Some(c) = e.class {
        event.bounce_class = c.name().to_string();
    }
    Ok(events::publish(&ctx.js, &event).await?)
}

/// Carry out the plan for one result: events, retry schedule, DSNs, and the
/// job's end once nothing of it is pending.
async fn apply(
    ctx: &Ctx,
    res: JobResult,
    attempt_trace: Option<String>,
) -> Result<(), HandleError> {
    let Some(mut st) = ctx.state.job(&res.message_id, &res.destination).await? else {
        tracing::info!("result for a job that is already final; ignoring (a redelivery)");
        return Ok(());
    };
    let Some(job) = st.job.clone() else {
        return Ok(());
    };
    if res.attempt < job.attempt {
        tracing::info!(
            current = job.attempt,
            "result of an earlier attempt; ignoring (a redelivery)"
        );
        return Ok(());
    }
    let policy = Policy {
        retry: ctx.config.retry.clone(),
        jitter: crate::retry::random_jitter(),
        delay_dsn_after: ctx.config.delay_dsn_after,
    };
    let mut plan = plan(&job, &st, &res.results, now_unix_ms(), &policy);
    crate::classify::classify(&ctx.config.bounce.rules, &mut plan);
    for r in &plan.record {
        st.results.retain(|x| x.address != r.address);
        st.results.push(r.clone());
    }
    let mut acks = Vec::new();
    for e in &plan.finals {
        acks.push(publish_planned(ctx, &job, e, 0).await?);
        let r = &e.result;
        tracing::info!(rcpt = %e.address, outcome = e.kind, code = r.code, reply = %r.reply, "result");
        if e.suppresses
            && let Some(entry) = crate::suppress::hard_bounce(&job, &e.address, now_unix_ms())
        {
            ctx.suppress.add(&entry).await?;
        }
    }
    let expired = plan
        .finals
        .iter()
        .filter(|e| e.kind == kind::EXPIRED)
        .count();
    if expired > 0 {
        tracing::info!(rcpts = expired, "expired");
    }
    if let Some(retry) = &plan.retry {
        if let Some(lines) = &retry.delay_dsn {
            send_dsn(ctx, &job, lines, DsnKind::Delay).await?;
            st.delay_dsn_sent = true;
        }
        st.job = Some(retry.job.clone());
        st.state = job_state::SCHEDULED.into();
        st.next_attempt_unix_ms = retry.at_unix_ms;
        ctx.state.put_job(&st).await?;
        let at = retry.at_unix_ms;
        acks.push(schedule(ctx, &retry.job, at, attempt_trace.as_deref(), None).await?);
        for e in &retry.events {
            acks.push(publish_planned(ctx, &job, e, at).await?);
        }
        tracing::info!(rcpts = retry.events.len(), next_attempt = %date::rfc3339(at), "deferred");
    }
    send_dsn(ctx, &job, &plan.dsn, DsnKind::Failure).await?;
    for ack in acks {
        ack.await?;
    }
    if plan.retry.is_none()
        && let Some(m) = ctx.state.finish_job(&st).await?
    {
        ctx.bodies.delete(m.spool_seq, &m.object).await;
    }
    Ok(())
}

/// Publish a message schedule (ADR-51) that puts `job` on its ready subject
/// at `at_ms`. Schedules live on one subject per job, and a newer schedule
/// on a subject replaces the older one, which is how `retry` brings a job
/// forward. `previous_attempt` is the traceparent of the attempt this
/// retries; `tag` makes the de-duplication id differ from the attempt's
/// first schedule.
pub(crate) async fn schedule(
    ctx: &Ctx,
    job: &Job,
    at_ms: i64,
    previous_attempt: Option<&str>,
    tag: Option<&str>,
) -> Result<jetstream::context::PublishAckFuture, PublishError> {
    let mut id = format!("{}/{}", job.job_id, job.attempt);
    if let Some(tag) = tag {
        id = format!("{id}/{tag}");
    }
    let mut publish = bus::Publish::new(
        bus::scheduled_subject(&job.destination, &job.message_id),
        job.encode_to_vec().into(),
        id,
    )
    // Round up: a schedule fires on whole seconds, and a time in the past
    // fires at once.
    .header(
        "Nats-Schedule",
        format!("@at {}", date::rfc3339(at_ms + 999)).as_str(),
    )
    .header(
        "Nats-Schedule-Target",
        bus::ready_subject(&job.destination).as_str(),
    );
    if let Some(tp) = previous_attempt {
        publish = publish.header(telemetry::PREVIOUS_ATTEMPT_HEADER, tp);
    }
    publish.send(&ctx.js).await
}

/// An operator removed these pending jobs from the queue (their messages on
/// the jobs stream are already gone): log a `deleted` event per recipient,
/// report them to the sender if asked, and forget the jobs (deleting bodies
/// no other job needs). Returns how many jobs were forgotten.
pub(crate) async fn forget_deleted(
    ctx: &Ctx,
    jobs: &[JobState],
    bounce: bool,
) -> Result<u64, HandleError> {
    let mut forgotten = 0;
    for st in jobs {
        let Some(job) = &st.job else { continue };
        let mut acks = Vec::new();
        let mut lines = Vec::new();
        for rcpt in &job.rcpts {
            let r = RecipientResult {
                address: rcpt.address.clone(),
                outcome: Outcome::Bounced as i32,
                code: 550,
                // RFC 3463 5.0.0: no more specific status fits an
                // administrative removal; the text says what happened.
                enhanced: "5.0.0".into(),
                reply: "message deleted from the queue by the mail administrator".into(),
                ..Default::default()
            };
            acks.push(
                events::publish(
                    &ctx.js,
                    &events::event(kind::DELETED, job, &rcpt.address, Some(&r)),
                )
                .await?,
            );
            if bounce && dsn::wanted(rcpt, DsnKind::Failure) {
                lines.push(line(rcpt, &r, &r.enhanced));
            }
        }
        // Before the body can be deleted: a DSN may quote it.
        send_dsn(ctx, job, &lines, DsnKind::Failure).await?;
        for ack in acks {
            ack.await?;
        }
        metrics::counter!("tern_queue_results_total", "outcome" => "deleted", "class" => "none")
            .increment(job.rcpts.len() as u64);
        if let Some(m) = ctx.state.finish_job(st).await? {
            ctx.bodies.delete(m.spool_seq, &m.object).await;
        }
        forgotten += 1;
    }
    Ok(forgotten)
}

fn line(rcpt: &Recipient, r: &RecipientResult, status: &str) -> Line {
    let status = if status.is_empty() {
        // No enhanced code from the peer: derive the class from the reply code.
        if r.code >= 500 { "5.0.0" } else { "4.0.0" }.to_string()
    } else {
        status.to_string()
    };
    Line {
        rcpt: rcpt.clone(),
        status,
        code: r.code,
        diagnostic: r.reply.clone(),
        remote_mta: r.remote_host.clone(),
        class: None,
    }
}

/// Put a DSN for `lines` on the spool, addressed to the job's sender. Never
/// for the null sender (RFC 5321 §4.5.5: no bounce loops).
async fn send_dsn(ctx: &Ctx, job: &Job, lines: &[Line], kind: DsnKind) -> Result<(), HandleError> {
    if lines.is_empty() || job.mail_from.is_empty() {
        return Ok(());
    }
    let original = match &job.body {
        Some(b) => ctx.bodies.load(b).await?,
        None => Default::default(),
    };
    let id = ulid::Ulid::new().to_string();
    let now = now_unix_ms();
    let report = dsn::render(
        &ctx.config.common.hostname,
        job,
        &original,
        lines,
        kind,
        now,
        &id,
    );
    let env = Envelope {
        id: id.clone(),
        mail_from: String::new(),
        rcpts: vec![Recipient {
            address: job.mail_from.clone(),
            ..Default::default()
        }],
        body: Some(ctx.bodies.store(&id, report.into()).await?),
        received_at_unix_ms: now,
        helo: ctx.config.common.hostname.clone(),
        // RFC 8689 §5: the report of a REQUIRETLS message is itself sent
        // with REQUIRETLS.
        require_tls: job.require_tls,
        ..Default::default()
    };
    // De-duplicated per job, attempt and kind, so a redelivered result makes no second DSN.
    let dedup = format!("dsn/{}/{}/{:?}", job.job_id, job.attempt, kind);
    bus::Publish::new(bus::SPOOL_SUBJECT, env.encode_to_vec().into(), dedup)
        .durable(&ctx.js)
        .await?;
    metrics::counter!("tern_queue_dsns_total", "kind" => format!("{kind:?}").to_lowercase())
        .increment(1);
    tracing::info!(dsn = %id, to = %job.mail_from, ?kind, rcpts = lines.len(), "DSN queued");
    Ok(())
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use tern_runtime::config::ConfigValue as _;

    const MIN: i64 = 60_000;

    fn job(rcpts: &[&str]) -> Job {
        Job {
            job_id: "m1/example.net".into(),
            message_id: "m1".into(),
            destination: "example.net".into(),
            mail_from: "sender@example.com".into(),
            rcpts: rcpts
                .iter()
                .map(|a| Recipient {
                    address: a.to_string(),
                    ..Default::default()
                })
                .collect(),
            attempt: 0,
            received_at_unix_ms: 0,
            expires_at_unix_ms: 100 * MIN,
            ..Default::default()
        }
    }

    fn policy(delay_dsn_after: Option<std::time::Duration>) -> Policy {
        Policy {
            retry: RetrySchedule::parse_value("2m,10m").expect("schedule"),
            jitter: 1.0,
            delay_dsn_after,
        }
    }

    fn res(address: &str, outcome: Outcome, code: u32, enhanced: &str) -> RecipientResult {
        RecipientResult {
            address: address.into(),
            outcome: outcome as i32,
            code,
            enhanced: enhanced.into(),
            reply: format!("{code} {enhanced} reply"),
            ..Default::default()
        }
    }

    fn kinds(events: &[PlannedEvent]) -> Vec<(&str, &str)> {
        events
            .iter()
            .map(|e| (e.kind, e.address.as_str()))
            .collect()
    }

    #[test]
    fn delivered_and_bounced_are_final_and_bounces_are_reported() {
        let j = job(&["a@example.net", "b@example.net"]);
        let results = [
            res("a@example.net", Outcome::Delivered, 250, "2.0.0"),
            res("b@example.net", Outcome::Bounced, 550, "5.1.1"),
        ];
        let p = plan(&j, &JobState::default(), &results, 10 * MIN, &policy(None));
        assert_eq!(
            kinds(&p.finals),
            [("delivered", "a@example.net"), ("bounced", "b@example.net")]
        );
        assert_eq!(p.retry, None);
        assert_eq!(p.dsn.len(), 1);
        assert_eq!(p.dsn[0].rcpt.address, "b@example.net");
        assert_eq!(p.dsn[0].status, "5.1.1");
        assert_eq!(p.record, results);
    }

    #[test]
    fn deferred_and_unreported_recipients_are_retried_after_the_schedule() {
        let j = job(&["a@example.net", "b@example.net", "c@example.net"]);
        let results = [
            res("a@example.net", Outcome::Delivered, 250, "2.0.0"),
            res("b@example.net", Outcome::Deferred, 451, "4.3.0"),
        ];
        let p = plan(&j, &JobState::default(), &results, 10 * MIN, &policy(None));
        assert_eq!(kinds(&p.finals), [("delivered", "a@example.net")]);
        let retry = p.retry.expect("a retry");
        assert_eq!(
            retry.at_unix_ms,
            12 * MIN,
            "first delay of the schedule: 2m"
        );
        assert_eq!(retry.job.attempt, 1);
        let rcpts: Vec<_> = retry.job.rcpts.iter().map(|r| r.address.as_str()).collect();
        assert_eq!(rcpts, ["b@example.net", "c@example.net"]);
        assert_eq!(
            kinds(&retry.events),
            [("deferred", "b@example.net"), ("deferred", "c@example.net")]
        );
        assert_eq!(
            retry.events[1].result.reply,
            "no result reported for this recipient"
        );
        assert_eq!(retry.delay_dsn, None);
        assert!(p.dsn.is_empty());
    }

    #[test]
    fn deferred_past_the_lifetime_expire_with_4_4_7() {
        let j = job(&["a@example.net"]);
        let results = [res("a@example.net", Outcome::Deferred, 421, "4.4.2")];
        let p = plan(&j, &JobState::default(), &results, 99 * MIN, &policy(None));
        assert_eq!(p.retry, None);
        assert_eq!(kinds(&p.finals), [("expired", "a@example.net")]);
        assert_eq!(p.dsn.len(), 1);
        assert_eq!(p.dsn[0].status, "4.4.7");
        assert_eq!(p.dsn[0].code, 421);
    }

    #[test]
    fn a_delay_dsn_is_due_once_after_its_time() {
        let mut j = job(&["a@example.net", "b@example.net"]);
        j.rcpts[1].notify = vec!["FAILURE".into()];
        let results = [
            res("a@example.net", Outcome::Deferred, 451, "4.3.0"),
            res("b@example.net", Outcome::Deferred, 451, ""),
        ];
        let after = Some(std::time::Duration::from_secs(4 * 60));
        let early = plan(&j, &JobState::default(), &results, 3 * MIN, &policy(after));
        assert_eq!(early.retry.expect("retry").delay_dsn, None);
        let due = plan(&j, &JobState::default(), &results, 5 * MIN, &policy(after));
        let lines = due.retry.expect("retry").delay_dsn.expect("delay DSN due");
        let to: Vec<_> = lines.iter().map(|l| l.rcpt.address.as_str()).collect();
        assert_eq!(to, ["a@example.net"], "b asked for failure notices only");
        let sent = JobState {
            delay_dsn_sent: true,
            ..Default::default()
        };
        let again = plan(&j, &sent, &results, 5 * MIN, &policy(after));
        assert_eq!(again.retry.expect("retry").delay_dsn, None);
    }

    #[test]
    fn bounce_without_enhanced_code_takes_the_class_of_the_reply() {
        let j = job(&["a@example.net"]);
        let results = [res("a@example.net", Outcome::Bounced, 554, "")];
        let p = plan(&j, &JobState::default(), &results, MIN, &policy(None));
        assert_eq!(p.dsn[0].status, "5.0.0");
    }

    #[test]
    fn failure_dsn_only_for_recipients_that_want_one() {
        let mut j = job(&["a@example.net"]);
        j.rcpts[0].notify = vec!["NEVER".into()];
        let results = [res("a@example.net", Outcome::Bounced, 550, "5.1.1")];
        let p = plan(&j, &JobState::default(), &results, MIN, &policy(None));
        assert_eq!(kinds(&p.finals), [("bounced", "a@example.net")]);
        assert!(p.dsn.is_empty());
    }
}
