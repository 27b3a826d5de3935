//! The `tern.v1.QueueAdmin` gRPC API behind `tern queue ...`.
//!
//! Counts come from what JetStream already keeps per subject (ready jobs on
//! `tern.jobs.*`, scheduled ones on `tern.sched.*`, held ones on
//! `tern.held.*`), so `stats` never scans messages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use futures::StreamExt;
use prost::Message as _;
use tern_proto::queue_admin_server::QueueAdmin;
use tern_proto::{
    AffectedResponse, DeleteRequest, DestinationRequest, DestinationResponse, DestinationStats,
    Job, JobState, ListRequest, ListResponse, SelectRequest, ShowRequest, ShowResponse,
    StatsRequest, StatsResponse,
};
use tern_runtime::{bus, holds, now_unix_ms};
use tonic::{Request, Response, Status};

use crate::Ctx;
use crate::handle::{self, job_state};

/// `ls` lists at most this many jobs unless asked for fewer.
const LIST_LIMIT: u32 = 1000;

/// The admin service.
pub(crate) struct Admin(pub Arc<Ctx>);

fn internal(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

/// Which destination and which count a JOBS stream subject belongs to.
fn classify(subject: &str) -> Option<(&'static str, String)> {
    if subject == bus::LOCAL_JOBS_SUBJECT {
        return Some(("ready", bus::LOCAL_DESTINATION.into()));
    }
    if let Some(d) = subject.strip_prefix("tern.jobs.remote.") {
        return Some(("ready", d.into()));
    }
    if let Some(d) = subject.strip_prefix("tern.held.") {
        return Some(("held", d.into()));
    }
    // tern.sched.<destination>.<message id>: the id is the last token.
    let rest = subject.strip_prefix("tern.sched.")?;
    let (d, _) = rest.rsplit_once('.')?;
    Some(("scheduled", d.into()))
}

fn valid_destination(d: &str) -> Result<String, Status> {
    let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty() && !d.contains(['*', '>', ' ', '\t']) && !d.contains("..");
    ok.then_some(d)
        .ok_or_else(|| Status::invalid_argument("destination must be a domain name or \"local\""))
}

fn valid_message_id(id: &str) -> Result<&str, Status> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(Status::invalid_argument(
            "message id must be the id from the 250 reply",
        ));
    }
    Ok(id)
}

/// Where a job stands now. The stored state says where the queue put it;
/// a schedule whose time has passed has fired, and a held destination's
/// jobs are set aside by delivery whatever they were.
fn effective_state(ctx: &Ctx, st: &JobState, now: i64) -> &'static str {
    let destination = st.job.as_ref().map(|j| j.destination.as_str());
    if destination.is_some_and(|d| ctx.holds.is_held(d)) {
        job_state::HELD
    } else if st.state == job_state::SCHEDULED && st.next_attempt_unix_ms > now {
        job_state::SCHEDULED
    } else {
        job_state::READY
    }
}

/// The pending jobs a `retry` or `delete` selects: one message's, or one
/// destination's.
async fn select(ctx: &Ctx, sel: Option<SelectRequest>) -> Result<Vec<JobState>, Status> {
    let sel = sel.unwrap_or_default();
    match (sel.message_id.is_empty(), sel.destination.is_empty()) {
        (false, true) => {
            let id = valid_message_id(&sel.message_id)?;
            let jobs = ctx.state.jobs_of(id).await.map_err(internal)?;
            if jobs.is_empty() {
                return Err(Status::not_found(format!(
                    "no pending jobs for message {id} (delivered, bounced, expired, or unknown)"
                )));
            }
            Ok(jobs)
        }
        (true, false) => {
            let d = valid_destination(&sel.destination)?;
            let (jobs, _) = ctx
                .state
                .list(Some(&d), |_| true, usize::MAX)
                .await
                .map_err(internal)?;
            Ok(jobs)
        }
        _ => Err(Status::invalid_argument(
            "give either a message id or a destination",
        )),
    }
}

/// Remove the messages of these jobs from the jobs stream, wherever they
/// wait: their schedule, the ready subject, the held subject, or their
/// campaign's paused subject (else `tern campaign resume` would send a job
/// deleted while its campaign was paused). A job a worker has already taken
/// is removed too (its acknowledgement then finds nothing), but an attempt
/// already under way still finishes.
async fn remove_from_stream(ctx: &Ctx, jobs: &[JobState]) -> Result<(), Status> {
    let stream = ctx
        .js
        .get_stream(bus::JOBS_STREAM)
        .await
        .map_err(internal)?;
    let mut by_subject: BTreeMap<String, std::collections::HashSet<&str>> = BTreeMap::new();
    for job in jobs.iter().filter_map(|st| st.job.as_ref()) {
        stream
            .purge()
            .filter(bus::scheduled_subject(&job.destination, &job.message_id))
            .await
            .map_err(internal)?;
        for subject in [
            bus::ready_subject(&job.destination),
            bus::held_subject(&job.destination),
            tern_stats::pause::paused_subject(&job.tenant, &job.campaign),
        ] {
            by_subject
                .entry(subject)
                .or_default()
                .insert(&job.message_id);
        }
    }
    // One pass over each subject, however many jobs are removed from it.
    for (subject, ids) in by_subject {
        let mut after = 0;
        loop {
            let m = match stream
                .direct_get_next_for_subject(subject.as_str(), Some(after + 1))
                .await
            {
                Ok(m) => m,
                Err(e)
                    if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound =>
                {
                    break;
                }
                Err(e) => return Err(internal(e)),
            };
            after = m.sequence;
            if let Ok(job) = Job::decode(m.payload)
                && ids.contains(job.message_id.as_str())
            {
                stream.delete_message(m.sequence).await.map_err(internal)?;
            }
        }
    }
    Ok(())
}

/// Queue depth per destination and jobs in flight, from JetStream's own counters.
pub(crate) async fn collect(ctx: &Ctx) -> Result<StatsResponse, String> {
    let stream = ctx
        .js
        .get_stream(bus::JOBS_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let mut per: BTreeMap<String, DestinationStats> = BTreeMap::new();
    let mut subjects = stream
        .info_with_subjects(">")
        .await
        .map_err(|e| e.to_string())?;
    while let Some(item) = subjects.next().await {
        let (subject, count) = item.map_err(|e| e.to_string())?;
        let Some((what, dest)) = classify(&subject) else {
            continue;
        };
        let s = per.entry(dest.clone()).or_insert_with(|| DestinationStats {
            destination: dest,
            ..Default::default()
        });
        let n = count as u64;
        match what {
            "ready" => s.ready += n,
            "held" => s.held += n,
            _ => s.scheduled += n,
        }
    }
    for d in ctx.holds.all() {
        per.entry(d.clone())
            .or_insert_with(|| DestinationStats {
                destination: d,
                ..Default::default()
            })
            .on_hold = true;
    }
    let now = now_unix_ms();
    for s in per.values_mut() {
        s.on_hold |= ctx.holds.is_held(&s.destination);
        // The oldest ready or held job: the first message on its subject.
        for subject in [
            bus::ready_subject(&s.destination),
            bus::held_subject(&s.destination),
        ] {
            if let Ok(m) = stream.direct_get_first_for_subject(subject).await
                && let Ok(job) = Job::decode(m.payload)
            {
                let age = ((now - job.received_at_unix_ms).max(0) / 1000) as u64;
                s.oldest_age_seconds = s.oldest_age_seconds.max(age);
            }
        }
    }
    let mut in_flight = 0;
    for name in [bus::consumers::DELIVERY, bus::consumers::MAILBOX] {
        if let Ok(mut c) = stream.get_consumer::<consumer::pull::Config>(name).await
            && let Ok(info) = c.info().await
        {
            in_flight += info.num_ack_pending as u64;
        }
    }
    Ok(StatsResponse {
        destinations: per.into_values().collect(),
        in_flight,
    })
}

/// Keep the depth gauges and JetStream consumer lag current for Prometheus
/// (and the autoscaler) until shutdown.
pub(crate) async fn export_gauges(
    ctx: Arc<Ctx>,
    every: Duration,
    shutdown: tern_runtime::Shutdown,
) {
    let mut seen: std::collections::BTreeSet<String> = Default::default();
    loop {
        if let Ok(stats) = collect(&ctx).await {
            let mut now_seen = std::collections::BTreeSet::new();
            for d in &stats.destinations {
                let dest = d.destination.clone();
                for (state, n) in [
                    ("ready", d.ready),
                    ("scheduled", d.scheduled),
                    ("held", d.held),
                ] {
                    metrics::gauge!("tern_queue_jobs", "destination" => dest.clone(), "state" => state).set(n as f64);
                }
                metrics::gauge!("tern_queue_oldest_age_seconds", "destination" => dest.clone())
                    .set(d.oldest_age_seconds as f64);
                now_seen.insert(dest);
            }
            // Destinations that emptied go to zero instead of keeping their last value.
            for gone in seen.difference(&now_seen) {
                for state in ["ready", "scheduled", "held"] {
                    metrics::gauge!("tern_queue_jobs", "destination" => gone.clone(), "state" => state).set(0.0);
                }
                metrics::gauge!("tern_queue_oldest_age_seconds", "destination" => gone.clone())
                    .set(0.0);
            }
            seen = now_seen;
            metrics::gauge!("tern_queue_in_flight").set(stats.in_flight as f64);
        }
        for (stream_name, durable) in [
            (bus::SPOOL_STREAM, bus::consumers::QUEUE_SPOOL),
            (bus::RESULTS_STREAM, bus::consumers::QUEUE_RESULTS),
            (bus::JOBS_STREAM, bus::consumers::DELIVERY),
            (bus::JOBS_STREAM, bus::consumers::MAILBOX),
            (bus::EVENTS_STREAM, tern_stats::CONSUMER),
        ] {
            if let Ok(stream) = ctx.js.get_stream(stream_name).await
                && let Ok(mut c) = stream.get_consumer::<consumer::pull::Config>(durable).await
                && let Ok(info) = c.info().await
            {
                metrics::gauge!("tern_jetstream_consumer_pending", "consumer" => durable)
                    .set(info.num_pending as f64);
                metrics::gauge!("tern_jetstream_consumer_ack_pending", "consumer" => durable)
                    .set(info.num_ack_pending as f64);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => return,
        }
    }
}

#[tonic::async_trait]
impl QueueAdmin for Admin {
    async fn stats(&self, _: Request<StatsRequest>) -> Result<Response<StatsResponse>, Status> {
        collect(&self.0).await.map(Response::new).map_err(internal)
    }

    async fn show(&self, req: Request<ShowRequest>) -> Result<Response<ShowResponse>, Status> {
        let id = req.into_inner().message_id;
        let id = valid_message_id(&id)?;
        let jobs = self.0.state.jobs_of(id).await.map_err(internal)?;
        if jobs.is_empty() {
            return Err(Status::not_found(format!(
                "no pending jobs for message {id} (delivered, bounced, expired, or unknown)"
            )));
        }
        Ok(Response::new(ShowResponse { jobs }))
    }

    async fn hold(
        &self,
        req: Request<DestinationRequest>,
    ) -> Result<Response<DestinationResponse>, Status> {
        let d = valid_destination(&req.into_inner().destination)?;
        holds::hold(&self.0.js, &d).await.map_err(internal)?;
        tracing::info!(destination = %d, "destination held");
        Ok(Response::new(DestinationResponse { moved: 0 }))
    }

    async fn release(
        &self,
        req: Request<DestinationRequest>,
    ) -> Result<Response<DestinationResponse>, Status> {
        let ctx = &self.0;
        let d = valid_destination(&req.into_inner().destination)?;
        holds::release(&ctx.js, &d).await.map_err(internal)?;
        // Move the held jobs back to ready, oldest first.
        let stream = ctx
            .js
            .get_stream(bus::JOBS_STREAM)
            .await
            .map_err(internal)?;
        let held = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: bus::held_subject(&d),
                ack_policy: consumer::AckPolicy::Explicit,
                inactive_threshold: Duration::from_secs(60),
                ..Default::default()
            })
            .await
            .map_err(internal)?;
        let mut moved = 0u64;
        loop {
            let mut batch = held
                .fetch()
                .max_messages(500)
                .expires(Duration::from_millis(300))
                .messages()
                .await
                .map_err(internal)?;
            // Publish the whole batch, then wait for the acks: one round
            // trip per batch instead of one per job.
            let mut taken = Vec::new();
            let mut acks = Vec::new();
            while let Some(m) = batch.next().await {
                let m = m.map_err(internal)?;
                // The held message's sequence makes the id unique per
                // hold: a job held, released and held again within the
                // de-duplication window must not be dropped as a duplicate.
                let seq = m.info().map(|i| i.stream_sequence).unwrap_or_default();
                let id = Job::decode(m.payload.clone())
                    .map(|j| format!("{}/{}/released/{seq}", j.job_id, j.attempt))
                    .unwrap_or_default();
                acks.push(
                    bus::publish(&ctx.js, bus::ready_subject(&d), m.payload.clone(), &id)
                        .await
                        .map_err(internal)?,
                );
                taken.push(m);
            }
            for ack in acks {
                ack.await.map_err(internal)?;
            }
            let got = taken.len();
            for m in taken {
                m.ack().await.map_err(internal)?;
                moved += 1;
            }
            if got == 0 {
                break;
            }
        }
        tracing::info!(destination = %d, moved, "destination released");
        Ok(Response::new(DestinationResponse { moved }))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let ctx = &self.0;
        let req = req.into_inner();
        let destination = match req.destination.as_str() {
            "" => None,
            d => Some(valid_destination(d)?),
        };
        let state = match req.state.as_str() {
            "" => None,
            s @ (job_state::READY | job_state::SCHEDULED | job_state::HELD) => Some(s.to_string()),
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown state {other:?}: use ready, scheduled or held"
                )));
            }
        };
        let limit = match req.limit {
            0 => LIST_LIMIT,
            n => n.min(LIST_LIMIT),
        } as usize;
        let now = now_unix_ms();
        let (mut jobs, truncated) = ctx
            .state
            .list(
                destination.as_deref(),
                |st| {
                    state
                        .as_deref()
                        .is_none_or(|s| effective_state(ctx, st, now) == s)
                },
                limit,
            )
            .await
            .map_err(internal)?;
        for st in &mut jobs {
            st.state = effective_state(ctx, st, now).to_string();
        }
        Ok(Response::new(ListResponse { jobs, truncated }))
    }

    async fn retry(
        &self,
        req: Request<SelectRequest>,
    ) -> Result<Response<AffectedResponse>, Status> {
        let ctx = &self.0;
        let jobs = select(ctx, Some(req.into_inner())).await?;
        let stream = ctx
            .js
            .get_stream(bus::JOBS_STREAM)
            .await
            .map_err(internal)?;
        let now = now_unix_ms();
        let mut acks = Vec::new();
        for mut st in jobs {
            let Some(job) = st.job.clone() else { continue };
            if effective_state(ctx, &st, now) != job_state::SCHEDULED {
                continue;
            }
            // Only a schedule that has not fired yet is brought forward;
            // otherwise the job is already ready and a second one would be
            // attempted twice.
            let subject = bus::scheduled_subject(&job.destination, &job.message_id);
            if stream.direct_get_last_for_subject(subject).await.is_err() {
                continue;
            }
            acks.push(
                handle::schedule(ctx, &job, now, None, Some(&format!("retry-{now}")))
                    .await
                    .map_err(internal)?,
            );
            st.next_attempt_unix_ms = now;
            ctx.state.put_job(&st).await.map_err(internal)?;
        }
        let retried = acks.len() as u64;
        for ack in acks {
            ack.await.map_err(internal)?;
        }
        tracing::info!(jobs = retried, "retry requested");
        Ok(Response::new(AffectedResponse { jobs: retried }))
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<AffectedResponse>, Status> {
        let ctx = &self.0;
        let req = req.into_inner();
        let jobs = select(ctx, req.select).await?;
        remove_from_stream(ctx, &jobs).await?;
        let deleted = handle::forget_deleted(ctx, &jobs, req.bounce)
            .await
            .map_err(internal)?;
        tracing::info!(jobs = deleted, bounce = req.bounce, "jobs deleted");
        Ok(Response::new(AffectedResponse { jobs: deleted }))
    }
}
