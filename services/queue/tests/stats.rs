//! Campaign statistics from a running queue: an envelope of the injection
//! API (tenant, campaign, batch) spooled to the real queue service is
//! counted by the aggregator the queue runs, and read per tenant.

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use async_nats::jetstream;
use prost::Message as _;
use tern_proto::{BodyRef, Envelope, Recipient, body_ref};
use tern_runtime::config::Source;
use tern_runtime::{Shutdown, bus, now_unix_ms};
use tern_stats::StatsReader;
use tern_testkit::{NatsServer, wait_for};

#[tokio::test]
async fn spooled_batch_is_counted_for_its_tenant_only() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    bus::ensure_streams(&js, 1).await.unwrap();
    let url = nats.url();
    let src = Source::from_pairs([
        ("nats_url", url.as_str()),
        ("queue_grpc_listen", "127.0.0.1:0"),
        ("queue_admin_listen", "127.0.0.1:0"),
    ]);
    let bound = tern_queue::bind(tern_queue::Config::from_source(&src).unwrap())
        .await
        .unwrap();
    let stop = Shutdown::new();
    let task = tokio::spawn(bound.run(stop.clone()));

    let body = b"Subject: hi\r\n\r\nhello\r\n".to_vec();
    let env = Envelope {
        id: "01JSTATSTEST0000000000000A".into(),
        mail_from: "news@acme.test".into(),
        rcpts: (0..3)
            .map(|i| Recipient {
                address: format!("r{i}@example.net"),
                ..Default::default()
            })
            .collect(),
        body: Some(BodyRef {
            size: body.len() as u64,
            location: Some(body_ref::Location::Inline(body.into())),
        }),
        received_at_unix_ms: now_unix_ms(),
        tenant: "acme".into(),
        campaign: "spring".into(),
        batch_id: "B1".into(),
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

    let reader = StatsReader::open(&js, 1).await.unwrap();
    let now = (now_unix_ms() / 1000) as u64;
    let stats = wait_for("3 accepted", Duration::from_secs(20), || async {
        let s = reader
            .campaign_stats("acme", "spring", now - 3600, now + 3600)
            .await
            .unwrap();
        (s.accepted == 3).then_some(s)
    })
    .await;
    assert_eq!(stats.delivered, 0);
    let b = reader.batch_counts("acme", "B1").await.unwrap().unwrap();
    assert_eq!((b.accepted, b.pending), (3, 3));
    // Another tenant asking for the same campaign and batch sees nothing.
    let other = reader
        .campaign_stats("globex", "spring", now - 3600, now + 3600)
        .await
        .unwrap();
    assert_eq!(other.accepted, 0);
    assert!(reader.batch_counts("globex", "B1").await.unwrap().is_none());

    stop.trigger();
    task.await.unwrap().unwrap();
}
