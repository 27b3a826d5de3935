//! Local delivery: pull jobs from `tern.jobs.local`, store one copy per
//! recipient, publish a `JobResult`, then ack the job.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use prost::Message as _;
use tern_proto::{Job, JobResult, Outcome, RecipientResult};
use tern_runtime::admin::Readiness;
use tern_runtime::body::{BodyError, BodyStore};
use tern_runtime::worker::{self, Disposition};
use tern_runtime::{Shutdown, bus, telemetry};
use tracing::Instrument;

use crate::accounts::normalize_address;
use crate::store::{Delivered, Store};

/// How long a job may be in flight before JetStream redelivers it.
pub const ACK_WAIT: Duration = Duration::from_secs(60);
/// Jobs processed at the same time.
const CONCURRENCY: usize = 8;
/// The destination name of local jobs and results.
const LOCAL: &str = "local";

/// Everything a delivery needs.
pub struct Deliverer {
    /// JetStream context.
    pub js: jetstream::Context,
    /// The database.
    pub store: Arc<Store>,
    /// Replicas of each JetStream stream (`TERN_NATS_REPLICAS`).
    pub nats_replicas: usize,
    /// Characters that start an address extension (`TERN_RECIPIENT_DELIMITER`).
    pub recipient_delimiter: String,
}

/// Pull and process local jobs until shutdown, then drain them within
/// `grace`. Marks `ready` once the streams and the consumer exist.
pub async fn run(d: Arc<Deliverer>, ready: Readiness, shutdown: Shutdown, grace: Duration) {
    if bus::ensure_streams_until_ready(&d.js, d.nats_replicas, &shutdown)
        .await
        .is_err()
    {
        return;
    }
    let Ok(consumer) = bus::pull_consumer_until_ready(
        &d.js,
        bus::JOBS_STREAM,
        bus::consumers::MAILBOX,
        bus::LOCAL_JOBS_SUBJECT,
        ACK_WAIT,
        &shutdown,
    )
    .await
    else {
        return;
    };
    let bodies = loop {
        match BodyStore::open(&d.js).await {
            Ok(b) => break b,
            Err(e) => {
                tracing::warn!(error = %e, "body store not ready; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait() => return,
                }
            }
        }
    };
    ready.set(true);
    tracing::info!("consuming local jobs");
    let options = worker::Options::new(CONCURRENCY, ACK_WAIT, grace);
    worker::worker(consumer, options, &shutdown, move |msg| {
        let d = d.clone();
        let bodies = bodies.clone();
        async move { handle(&d, &bodies, msg).await }
    })
    .await;
}

fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::Delivered => "delivered",
        Outcome::Deferred => "deferred",
        Outcome::Bounced => "bounced",
        Outcome::Unspecified => "unspecified",
    }
}

fn result(
    address: &str,
    outcome: Outcome,
    code: u32,
    enhanced: &str,
    reply: &str,
) -> RecipientResult {
    RecipientResult {
        address: address.to_string(),
        outcome: outcome as i32,
        code,
        enhanced: enhanced.to_string(),
        reply: reply.to_string(),
        remote_host: String::new(),
    }
}

/// Header-safe: no control characters (so no CR/LF injection).
fn header_safe(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// The header lines put in front of the body for one recipient.
pub fn prefix(mail_from: &str, rcpt: &str) -> Vec<u8> {
    format!(
        "Return-Path: <{}>\r\nDelivered-To: {}\r\n",
        header_safe(mail_from),
        header_safe(rcpt)
    )
    .into_bytes()
}

async fn handle(d: &Deliverer, bodies: &BodyStore, msg: jetstream::Message) -> Disposition {
    let span = tracing::info_span!(
        "mailbox.deliver",
        job_id = tracing::field::Empty,
        message_id = tracing::field::Empty,
        attempt = tracing::field::Empty,
        rcpts = tracing::field::Empty,
    );
    telemetry::link_nats_parent(&span, msg.headers.as_ref());
    async move {
        let job = match Job::decode(msg.payload.clone()) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, "undecodable local job; dropping it");
                return Disposition::Term;
            }
        };
        let span = tracing::Span::current();
        span.record("job_id", job.job_id.as_str());
        span.record("message_id", job.message_id.as_str());
        span.record("attempt", job.attempt);
        span.record("rcpts", job.rcpts.len());

        let results = deliver_job(d, bodies, &job).await;
        let jr = JobResult {
            job_id: job.job_id.clone(),
            message_id: job.message_id.clone(),
            destination: LOCAL.to_string(),
            attempt: job.attempt,
            results,
        };
        // An ack lost after this means a redelivery; delivery is idempotent.
        match publish_result(&d.js, &jr).await {
            Ok(()) => Disposition::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "publish job result; job will be retried");
                Disposition::Nak(Some(Duration::from_secs(5)))
            }
        }
    }
    .instrument(span)
    .await
}

async fn deliver_job(d: &Deliverer, bodies: &BodyStore, job: &Job) -> Vec<RecipientResult> {
    let body_ref = job.body.clone().unwrap_or_default();
    let body = bodies.load(&body_ref).await;
    let received = if job.received_at_unix_ms > 0 {
        job.received_at_unix_ms
    } else {
        tern_runtime::now_unix_ms()
    };
    let mut out = Vec::with_capacity(job.rcpts.len());
    for rcpt in &job.rcpts {
        let r = match &body {
            Err(BodyError::Invalid) => result(
                &rcpt.address,
                Outcome::Bounced,
                554,
                "5.6.0",
                "message body reference is invalid",
            ),
            Err(e) => {
                tracing::warn!(error = %e, "load body");
                result(
                    &rcpt.address,
                    Outcome::Deferred,
                    451,
                    "4.3.0",
                    "message body temporarily unavailable",
                )
            }
            Ok(body) => {
                deliver_one(
                    &d.store,
                    job,
                    &rcpt.address,
                    body,
                    received,
                    &d.recipient_delimiter,
                )
                .await
            }
        };
        let outcome = Outcome::try_from(r.outcome).unwrap_or(Outcome::Unspecified);
        metrics::counter!("tern_mailbox_deliveries_total", "outcome" => outcome_label(outcome))
            .increment(1);
        out.push(r);
    }
    out
}

/// Store one recipient's copy. `delimiters` start address extensions
/// (`TERN_RECIPIENT_DELIMITER`).
async fn deliver_one(
    store: &Store,
    job: &Job,
    rcpt: &str,
    body: &[u8],
    received: i64,
    delimiters: &str,
) -> RecipientResult {
    let Some(address) = normalize_address(rcpt) else {
        return result(
            rcpt,
            Outcome::Bounced,
            550,
            "5.1.3",
            "bad recipient address syntax",
        );
    };
    // An alias or catch-all delivers to its account; Delivered-To (in the
    // prefix) keeps the address the mail was sent to, as other MTAs do.
    let account = match store.resolve_recipient(&address, delimiters).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            tracing::info!(rcpt = %address, "no such mailbox");
            return result(
                rcpt,
                Outcome::Bounced,
                550,
                "5.1.1",
                "mailbox unavailable: no such user",
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, rcpt = %address, "look up account");
            return result(
                rcpt,
                Outcome::Deferred,
                451,
                "4.3.0",
                "temporary storage failure",
            );
        }
    };
    let prefix = prefix(&job.mail_from, rcpt);
    // The inbound checks' DMARC quarantine verdict (Job.junk) goes to \Junk.
    let stored = if job.junk {
        store
            .deliver_junk(account.id, &job.message_id, &prefix, body, received)
            .await
    } else {
        store
            .deliver(account.id, &job.message_id, &prefix, body, received)
            .await
    };
    match stored {
        Ok(Delivered::Stored(uid)) => {
            tracing::info!(rcpt = %address, account = %account.address, uid, "stored");
            result(rcpt, Outcome::Delivered, 250, "2.0.0", "message stored")
        }
        Ok(Delivered::Duplicate) => {
            tracing::info!(rcpt = %address, "already stored; not storing again");
            result(
                rcpt,
                Outcome::Delivered,
                250,
                "2.0.0",
                "message already stored",
            )
        }
        Ok(Delivered::OverQuota) => {
            tracing::info!(rcpt = %address, "over quota; deferring");
            metrics::counter!("tern_mailbox_over_quota_total").increment(1);
            result(
                rcpt,
                Outcome::Deferred,
                452,
                "4.2.2",
                "mailbox full: over quota",
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, rcpt = %address, "store message");
            result(
                rcpt,
                Outcome::Deferred,
                451,
                "4.3.0",
                "temporary storage failure",
            )
        }
    }
}

async fn publish_result(
    js: &jetstream::Context,
    jr: &JobResult,
) -> Result<(), async_nats::jetstream::context::PublishError> {
    let id = format!("{}/{}", jr.job_id, jr.attempt);
    bus::Publish::new(bus::results_subject(LOCAL), jr.encode_to_vec().into(), id)
        .durable(js)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outcomes_per_recipient() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/m.db", dir.path().display()))
            .await
            .unwrap();
        store.create_account("a@example.com", "h").await.unwrap();
        let job = Job {
            message_id: "m1".into(),
            mail_from: "s@remote.test".into(),
            ..Default::default()
        };
        let r = deliver_one(&store, &job, "A@example.com", b"x\r\n", 1, "+").await;
        assert_eq!(
            (r.outcome(), r.code, r.enhanced.as_str()),
            (Outcome::Delivered, 250, "2.0.0")
        );
        assert_eq!(r.address, "A@example.com");
        let r = deliver_one(&store, &job, "a@example.com", b"x\r\n", 1, "+").await;
        assert_eq!(
            (r.outcome(), r.reply.as_str()),
            (Outcome::Delivered, "message already stored")
        );
        let r = deliver_one(&store, &job, "b@example.com", b"x\r\n", 1, "+").await;
        assert_eq!(
            (r.outcome(), r.code, r.enhanced.as_str()),
            (Outcome::Bounced, 550, "5.1.1")
        );
        let r = deliver_one(&store, &job, "not an address", b"x\r\n", 1, "+").await;
        assert_eq!(r.outcome(), Outcome::Bounced);
        // An extension delivers to the account without it, keeping the
        // address as sent; with no delimiter configured it is an unknown user.
        let r = deliver_one(&store, &job, "a+news@example.com", b"x\r\n", 1, "+").await;
        assert_eq!(
            (r.outcome(), r.reply.as_str(), r.address.as_str()),
            (
                Outcome::Delivered,
                "message already stored",
                "a+news@example.com"
            )
        );
        let r = deliver_one(&store, &job, "a+news@example.com", b"x\r\n", 1, "").await;
        assert_eq!(
            (r.outcome(), r.code, r.enhanced.as_str()),
            (Outcome::Bounced, 550, "5.1.1")
        );
        // An alias and a catch-all deliver to their account, once per
        // account however many of its addresses a job names.
        store
            .add_alias("info@example.com", "a@example.com")
            .await
            .unwrap();
        store
            .add_alias("@example.org", "a@example.com")
            .await
            .unwrap();
        let job2 = Job {
            message_id: "m2".into(),
            ..job.clone()
        };
        let r = deliver_one(&store, &job2, "Info@example.com", b"x\r\n", 1, "+").await;
        assert_eq!(
            (r.outcome(), r.reply.as_str()),
            (Outcome::Delivered, "message stored")
        );
        let r = deliver_one(&store, &job2, "whoever@example.org", b"x\r\n", 1, "+").await;
        assert_eq!(
            (r.outcome(), r.reply.as_str()),
            (Outcome::Delivered, "message already stored")
        );
        let job3 = Job {
            message_id: "m3".into(),
            ..job.clone()
        };
        let r = deliver_one(&store, &job3, "whoever@example.org", b"x\r\n", 1, "+").await;
        assert_eq!(
            (r.outcome(), r.reply.as_str()),
            (Outcome::Delivered, "message stored")
        );
        // A storage failure is temporary.
        store.close().await;
        let r = deliver_one(&store, &job, "a@example.com", b"y\r\n", 1, "+").await;
        assert_eq!(
            (r.outcome(), r.code, r.enhanced.as_str()),
            (Outcome::Deferred, 451, "4.3.0")
        );
    }

    #[test]
    fn prefix_lines() {
        assert_eq!(
            prefix("a@example.com", "b@example.com"),
            b"Return-Path: <a@example.com>\r\nDelivered-To: b@example.com\r\n"
        );
        assert_eq!(
            prefix("", "b@x\r\nBcc: evil"),
            b"Return-Path: <>\r\nDelivered-To: b@xBcc: evil\r\n"
        );
    }
}
