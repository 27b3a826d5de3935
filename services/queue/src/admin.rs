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
    DestinationRequest, DestinationResponse, DestinationStats, Job, ShowRequest, ShowResponse,
    StatsRequest, StatsResponse,
};
use tern_runtime::{bus, holds, now_unix_ms};
use tonic::{Request, Response, Status};

use crate::Ctx;

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
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(Status::invalid_argument(
                "message id must be the id from the 250 reply",
            ));
        }
        let jobs = self.0.state.jobs_of(&id).await.map_err(internal)?;
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
            let mut got = 0;
            while let Some(m) = batch.next().await {
                let m = m.map_err(internal)?;
                got += 1;
                let id = Job::decode(m.payload.clone())
                    .map(|j| format!("{}/{}/released", j.job_id, j.attempt))
                    .unwrap_or_default();
                bus::publish(&ctx.js, bus::ready_subject(&d), m.payload.clone(), &id)
                    .await
                    .map_err(internal)?
                    .await
                    .map_err(internal)?;
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
}
