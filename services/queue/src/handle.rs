//! What the queue does with each spool envelope and each attempt result.

use async_nats::jetstream;
use prost::Message as _;
use tern_proto::{
    Envelope, Job, JobResult, JobState, MessageState, Outcome, Recipient, RecipientResult,
    body_ref::Location,
};
use tern_runtime::{body, bus, date, now_unix_ms, telemetry};
use tracing::Instrument;

use crate::Ctx;
use crate::dsn::{self, Kind as DsnKind, Line};
use crate::events::{self, kind};
use crate::route::{Route, fan_out};
use crate::state::Seen;

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
pub(crate) async fn spool(ctx: &Ctx, msg: &jetstream::Message) -> Result<(), String> {
    let env = match Envelope::decode(msg.payload.clone()) {
        Ok(e) => e,
        Err(e) => {
            // Retrying cannot fix it: acknowledge so it does not loop forever.
            tracing::error!(error = %e, "undecodable envelope on the spool; dropping");
            return Ok(());
        }
    };
    let seq = msg.info().map_err(|e| e.to_string())?.stream_sequence;
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
        let object = match env.body.as_ref().and_then(|b| b.location.as_ref()) {
            Some(Location::Object(name)) => name.clone(),
            _ => String::new(),
        };
        let seen = ctx
            .state
            .create_message(
                &env.id,
                &MessageState {
                    remaining_jobs: routes.len() as u32,
                    spool_seq: seq,
                    object,
                    finished: Vec::new(),
                },
            )
            .await
            .map_err(|e| e.to_string())?;
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
            if !ctx.state.create_job(&js).await.map_err(|e| e.to_string())? {
                continue;
            }
            acks.push(
                bus::publish(&ctx.js, subject, job.encode_to_vec().into(), &job.job_id)
                    .await
                    .map_err(|e| e.to_string())?,
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
            ack.await.map_err(|e| e.to_string())?;
        }
        metrics::counter!("tern_queue_messages_received_total").increment(1);
        metrics::counter!("tern_queue_jobs_routed_total").increment(routes.len() as u64);
        tracing::info!(jobs = routes.len(), "routed");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Apply one attempt's results: final recipients are logged (and bounced ones
/// reported to the sender), deferred ones scheduled again or expired.
pub(crate) async fn result(ctx: &Ctx, msg: &jetstream::Message) -> Result<(), String> {
    let Ok(res) = JobResult::decode(msg.payload.clone()) else {
        tracing::error!("undecodable job result; dropping");
        return Ok(());
    };
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

async fn apply(ctx: &Ctx, res: JobResult, attempt_trace: Option<String>) -> Result<(), String> {
    let Some(mut st) = ctx
        .state
        .job(&res.message_id, &res.destination)
        .await
        .map_err(|e| e.to_string())?
    else {
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
    let now = now_unix_ms();
    let mut acks = Vec::new();
    let mut failed: Vec<Line> = Vec::new();
    let mut deferred: Vec<(Recipient, RecipientResult)> = Vec::new();
    let mut rescheduled = false;
    for r in &res.results {
        let rcpt = job
            .rcpts
            .iter()
            .find(|x| x.address == r.address)
            .cloned()
            .unwrap_or_else(|| Recipient {
                address: r.address.clone(),
                ..Default::default()
            });
        st.results.retain(|x| x.address != r.address);
        st.results.push(r.clone());
        let (label, ev) = match Outcome::try_from(r.outcome) {
            Ok(Outcome::Delivered) => ("delivered", kind::DELIVERED),
            Ok(Outcome::Bounced) => {
                failed.push(line(&rcpt, r, &r.enhanced));
                ("bounced", kind::BOUNCED)
            }
            _ => {
                deferred.push((rcpt.clone(), r.clone()));
                continue;
            }
        };
        metrics::counter!("tern_queue_results_total", "outcome" => label).increment(1);
        acks.push(events::publish(&ctx.js, &events::event(ev, &job, &r.address, Some(r))).await?);
        tracing::info!(rcpt = %r.address, outcome = label, code = r.code, reply = %r.reply, "result");
    }
    // Recipients the worker did not report stay pending, like deferred ones.
    for rcpt in &job.rcpts {
        if !res.results.iter().any(|r| r.address == rcpt.address) {
            let r = RecipientResult {
                address: rcpt.address.clone(),
                outcome: Outcome::Deferred as i32,
                reply: "no result reported for this recipient".into(),
                ..Default::default()
            };
            deferred.push((rcpt.clone(), r));
        }
    }

    if !deferred.is_empty() {
        let delay = ctx.config.retry.delay(job.attempt);
        let next = now + delay.as_millis() as i64;
        if next > job.expires_at_unix_ms {
            for (rcpt, r) in &deferred {
                // RFC 3463 4.4.7: delivery time expired; the last reply says why.
                failed.push(line(rcpt, r, "4.4.7"));
                metrics::counter!("tern_queue_results_total", "outcome" => "expired").increment(1);
                acks.push(
                    events::publish(
                        &ctx.js,
                        &events::event(kind::EXPIRED, &job, &rcpt.address, Some(r)),
                    )
                    .await?,
                );
            }
            tracing::info!(rcpts = deferred.len(), "expired");
        } else {
            let mut retry = job.clone();
            retry.rcpts = deferred.iter().map(|(r, _)| r.clone()).collect();
            retry.attempt = job.attempt + 1;
            // Delay DSN (RFC 3464 Action: delayed), once per job.
            if let Some(after) = ctx.config.delay_dsn_after
                && !st.delay_dsn_sent
                && now - job.received_at_unix_ms >= after.as_millis() as i64
            {
                let lines: Vec<Line> = deferred
                    .iter()
                    .filter(|(r, _)| dsn::wanted(r, DsnKind::Delay))
                    .map(|(r, res)| line(r, res, &res.enhanced))
                    .collect();
                send_dsn(ctx, &job, &lines, DsnKind::Delay).await?;
                st.delay_dsn_sent = true;
            }
            st.job = Some(retry.clone());
            rescheduled = true;
            st.state = job_state::SCHEDULED.into();
            st.next_attempt_unix_ms = next;
            ctx.state.put_job(&st).await.map_err(|e| e.to_string())?;
            acks.push(schedule(ctx, &retry, next, attempt_trace.as_deref(), None).await?);
            for (rcpt, r) in &deferred {
                metrics::counter!("tern_queue_results_total", "outcome" => "deferred").increment(1);
                let mut e = events::event(kind::DEFERRED, &job, &rcpt.address, Some(r));
                e.next_attempt_unix_ms = next;
                acks.push(events::publish(&ctx.js, &e).await?);
            }
            tracing::info!(rcpts = deferred.len(), next_attempt = %date::rfc3339(next), "deferred");
        }
    }

    let to_report: Vec<Line> = failed
        .into_iter()
        .filter(|l| dsn::wanted(&l.rcpt, DsnKind::Failure))
        .collect();
    send_dsn(ctx, &job, &to_report, DsnKind::Failure).await?;
    for ack in acks {
        ack.await.map_err(|e| e.to_string())?;
    }
    if !rescheduled
        && let Some(m) = ctx
            .state
            .finish_job(&job.message_id, &job.destination)
            .await
            .map_err(|e| e.to_string())?
    {
        delete_body(ctx, &m).await;
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
) -> Result<jetstream::context::PublishAckFuture, String> {
    let mut headers = async_nats::HeaderMap::new();
    telemetry::inject_nats(&mut headers);
    if let Some(tp) = previous_attempt {
        headers.insert(telemetry::PREVIOUS_ATTEMPT_HEADER, tp);
    }
    // Round up: a schedule fires on whole seconds, and a time in the past
    // fires at once.
    headers.insert(
        "Nats-Schedule",
        format!("@at {}", date::rfc3339(at_ms + 999)),
    );
    headers.insert("Nats-Schedule-Target", bus::ready_subject(&job.destination));
    let mut id = format!("{}/{}", job.job_id, job.attempt);
    if let Some(tag) = tag {
        id = format!("{id}/{tag}");
    }
    let publish = jetstream::message::PublishMessage::build()
        .payload(job.encode_to_vec().into())
        .headers(headers)
        .message_id(id);
    ctx.js
        .send_publish(
            bus::scheduled_subject(&job.destination, &job.message_id),
            publish,
        )
        .await
        .map_err(|e| e.to_string())
}

/// An operator removed these pending jobs from the queue (their messages on
/// the jobs stream are already gone): log a `deleted` event per recipient,
/// report them to the sender if asked, and forget the jobs (deleting bodies
/// no other job needs). Returns how many jobs were forgotten.
pub(crate) async fn forget_deleted(
    ctx: &Ctx,
    jobs: &[JobState],
    bounce: bool,
) -> Result<u64, String> {
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
            ack.await.map_err(|e| e.to_string())?;
        }
        metrics::counter!("tern_queue_results_total", "outcome" => "deleted")
            .increment(job.rcpts.len() as u64);
        if let Some(m) = ctx
            .state
            .finish_job(&job.message_id, &job.destination)
            .await
            .map_err(|e| e.to_string())?
        {
            delete_body(ctx, &m).await;
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
    }
}

/// Put a DSN for `lines` on the spool, addressed to the job's sender. Never
/// for the null sender (RFC 5321 §4.5.5: no bounce loops).
async fn send_dsn(ctx: &Ctx, job: &Job, lines: &[Line], kind: DsnKind) -> Result<(), String> {
    if lines.is_empty() || job.mail_from.is_empty() {
        return Ok(());
    }
    let original = match &job.body {
        Some(b) => body::load(&ctx.js, b).await.map_err(|e| e.to_string())?,
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
        body: Some(
            body::store(&ctx.js, &id, report.into())
                .await
                .map_err(|e| e.to_string())?,
        ),
        received_at_unix_ms: now,
        helo: ctx.config.common.hostname.clone(),
        ..Default::default()
    };
    // De-duplicated per job, attempt and kind, so a redelivered result makes no second DSN.
    let dedup = format!("dsn/{}/{}/{:?}", job.job_id, job.attempt, kind);
    bus::publish(
        &ctx.js,
        bus::SPOOL_SUBJECT.into(),
        env.encode_to_vec().into(),
        &dedup,
    )
    .await
    .map_err(|e| e.to_string())?
    .await
    .map_err(|e| e.to_string())?;
    metrics::counter!("tern_queue_dsns_total", "kind" => format!("{kind:?}").to_lowercase())
        .increment(1);
    tracing::info!(dsn = %id, to = %job.mail_from, ?kind, rcpts = lines.len(), "DSN queued");
    Ok(())
}

/// Every job of the message is final: the body is no longer needed.
async fn delete_body(ctx: &Ctx, m: &MessageState) {
    if let Ok(stream) = ctx.js.get_stream(bus::SPOOL_STREAM).await
        && let Err(e) = stream.delete_message(m.spool_seq).await
    {
        tracing::debug!(error = %e, seq = m.spool_seq, "spool message already gone");
    }
    if !m.object.is_empty()
        && let Ok(store) = ctx.js.get_object_store(bus::BODY_BUCKET).await
        && let Err(e) = store.delete(&m.object).await
    {
        tracing::warn!(error = %e, object = %m.object, "could not delete a large body");
    }
}
