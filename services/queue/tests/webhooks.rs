//! Webhooks from a running queue: a delivery completes while one of the
//! tenant's webhooks is down (the dispatcher has its own consumer), and the
//! tenant's live webhook (Python's http.server, checking the signature)
//! gets the `delivered` event, signed.

#![allow(clippy::unwrap_used, missing_docs)]

// The receiver shared with crates/stats's dispatcher tests.
#[path = "../../../crates/stats/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use prost::Message as _;
use tern_proto::{
    BodyRef, Envelope, Job, JobResult, Outcome, Recipient, RecipientResult, body_ref,
};
use tern_runtime::config::Source;
use tern_runtime::{Shutdown, bus, now_unix_ms};
use tern_stats::hooks::Registry;
use tern_testkit::{NatsServer, wait_for};

async fn consumer_info(js: &jetstream::Context, stream: &str, name: &str) -> consumer::Info {
    let mut c: consumer::PullConsumer = js
        .get_stream(stream)
        .await
        .unwrap()
        .get_consumer(name)
        .await
        .unwrap();
    c.info().await.unwrap().clone()
}

#[tokio::test]
async fn delivery_completes_while_a_webhook_is_down() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    bus::ensure_streams(&js, 1).await.unwrap();
    let reg = Registry::open(&js, 1).await.unwrap();
    reg.add("acme", &support::down_url(), vec![]).await.unwrap();
    let rx = support::Receiver::start(0);
    let live = reg
        .add("acme", &rx.url(), vec!["delivered".into()])
        .await
        .unwrap();
    rx.set_secret(&live.secret);

    let url = nats.url();
    let src = Source::from_pairs([
        ("nats_url", url.as_str()),
        ("queue_grpc_listen", "127.0.0.1:0"),
        ("queue_admin_listen", "127.0.0.1:0"),
        ("webhook_retry_min", "200ms"),
    ]);
    let bound = tern_queue::bind(tern_queue::Config::from_source(&src).unwrap())
        .await
        .unwrap();
    let stop = Shutdown::new();
    let task = tokio::spawn(bound.run(stop.clone()));

    let body = b"Subject: hi\r\n\r\nhello\r\n".to_vec();
    let env = Envelope {
        id: "01JWEBHOOKTEST00000000000A".into(),
        mail_from: "news@acme.test".into(),
        rcpts: vec![Recipient {
            address: "r@example.net".into(),
            ..Default::default()
        }],
        body: Some(BodyRef {
            size: body.len() as u64,
            location: Some(body_ref::Location::Inline(body.into())),
        }),
        received_at_unix_ms: now_unix_ms(),
        tenant: "acme".into(),
        campaign: "spring".into(),
        ..Default::default()
    };
    bus::Publish::new(
        bus::SPOOL_SUBJECT,
        env.encode_to_vec().into(),
        env.id.clone(),
    )
    .durable(&js)
    .await
    .unwrap();

    // Play the delivery service: take the job, report it delivered.
    let jobs = js
        .get_stream(bus::JOBS_STREAM)
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some("test-delivery".into()),
            filter_subject: bus::REMOTE_JOBS_FILTER.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(20), async {
        jobs.messages()
            .await
            .unwrap()
            .next()
            .await
            .unwrap()
            .unwrap()
    })
    .await
    .expect("the queue made a job");
    let job = Job::decode(msg.payload.clone()).unwrap();
    msg.ack().await.unwrap();
    let res = JobResult {
        job_id: job.job_id.clone(),
        message_id: job.message_id.clone(),
        destination: job.destination.clone(),
        attempt: job.attempt,
        results: vec![RecipientResult {
            address: "r@example.net".into(),
            outcome: Outcome::Delivered as i32,
            code: 250,
            reply: "2.0.0 ok".into(),
            ..Default::default()
        }],
    };
    bus::Publish::new(
        bus::results_subject(&job.destination),
        res.encode_to_vec().into(),
        format!("{}/{}", job.job_id, job.attempt),
    )
    .durable(&js)
    .await
    .unwrap();

    // The queue settles the result while the dead webhook keeps failing.
    wait_for("the result handled", Duration::from_secs(20), || async {
        let i = consumer_info(&js, bus::RESULTS_STREAM, bus::consumers::QUEUE_RESULTS).await;
        (i.num_pending == 0 && i.num_ack_pending == 0 && i.delivered.stream_sequence == 1)
            .then_some(())
    })
    .await;
    let posts = wait_for(
        "the delivered event POSTed",
        Duration::from_secs(20),
        || async {
            let p = rx.posts();
            (!p.is_empty()).then_some(p)
        },
    )
    .await;
    assert!(posts.iter().all(|p| p.verified && p.status == 200));
    let events: Vec<_> = posts.iter().flat_map(|p| p.events.clone()).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["kind"], "delivered");
    assert_eq!(events[0]["recipient"], "r@example.net");
    assert_eq!(events[0]["campaign"], "spring");
    // The down webhook's events are still waiting for their retry.
    let hooks = consumer_info(
        &js,
        bus::EVENTS_STREAM,
        tern_stats::dispatch::DISPATCH_CONSUMER,
    )
    .await;
    assert!(hooks.num_ack_pending > 0, "{hooks:?}");

    stop.trigger();
    task.await.unwrap().unwrap();
}
