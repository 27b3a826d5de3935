//! The aggregator against a real nats-server: events published on
//! `tern.events.*` the way the queue publishes them end up in the counters
//! a tenant reads, once each even when the whole stream is redelivered.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use async_nats::jetstream;
use prost::Message as _;
use tern_proto::Event;
use tern_runtime::{Shutdown, bus};
use tern_stats::{Aggregator, Config, StatsReader, key};
use tern_testkit::{NatsServer, wait_for};

/// 2026-12-03 10:00 UTC, in hours since the epoch.
const HOUR: u64 = 493_282;

fn event(kind: &str, tenant: &str, campaign: &str, batch: &str, rcpt: &str, class: &str) -> Event {
    Event {
        kind: kind.into(),
        message_id: format!("m-{rcpt}"),
        recipient: rcpt.into(),
        destination: "example.net".into(),
        tenant: tenant.into(),
        campaign: campaign.into(),
        batch_id: batch.into(),
        bounce_class: class.into(),
        at_unix_ms: (HOUR * key::HOUR_MS + 60_000) as i64,
        ..Default::default()
    }
}

async fn publish(js: &jetstream::Context, events: &[Event]) {
    for e in events {
        let id = format!("{}/{}/{}/{}", e.kind, e.message_id, e.recipient, e.attempt);
        bus::Publish::new(
            format!("tern.events.{}", e.kind),
            e.encode_to_vec().into(),
            id,
        )
        .durable(js)
        .await
        .unwrap();
    }
}

/// A batch of `n` recipients for tenant `acme`, campaign `spring`: all
/// accepted, `n - 2` delivered, one hard bounce, one deferred twice then bounced unclassified.
fn campaign(n: usize) -> Vec<Event> {
    let mut v = Vec::new();
    for i in 0..n {
        let r = format!("r{i}@example.net");
        v.push(event("received", "acme", "spring", "B1", &r, ""));
        match i {
            0 => v.push(event("bounced", "acme", "spring", "B1", &r, "hard")),
            1 => {
                let mut d = event("deferred", "acme", "spring", "B1", &r, "greylist");
                v.push(d.clone());
                d.attempt = 1;
                v.push(d);
                v.push(event("bounced", "acme", "spring", "B1", &r, ""));
            }
            _ => v.push(event("delivered", "acme", "spring", "B1", &r, "")),
        }
    }
    v
}

async fn start(js: &jetstream::Context) -> (Shutdown, tokio::task::JoinHandle<()>) {
    let agg = Aggregator::open(
        js,
        1,
        &Config {
            max_campaigns: 10,
            ..Config::default()
        },
    )
    .await
    .unwrap();
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    (shutdown, tokio::spawn(async move { agg.run(&s).await }))
}

#[tokio::test]
async fn counts_each_event_once_and_only_for_its_tenant() {
    let nats = NatsServer::start().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    bus::ensure_streams(&js, 1).await.unwrap();
    let (shutdown, task) = start(&js).await;
    let reader = StatsReader::open(&js, 1).await.unwrap();

    publish(&js, &campaign(1500)).await;
    // Another tenant with the same campaign and batch names, and SMTP mail.
    publish(
        &js,
        &[
            event("received", "globex", "spring", "B1", "x@example.net", ""),
            event("delivered", "", "", "", "y@example.net", ""),
        ],
    )
    .await;

    let from = HOUR * 3600;
    let to = from + 3600;
    let stats = wait_for("1500 accepted counted", Duration::from_secs(20), || async {
        let s = reader
            .campaign_stats("acme", "spring", from, to)
            .await
            .unwrap();
        (s.delivered == 1498 && s.bounced.total == 2).then_some(s)
    })
    .await;
    assert_eq!(stats.accepted, 1500);
    assert_eq!(stats.deferred, 2);
    assert_eq!(stats.bounced.by_class["hard"], 1);
    assert_eq!(stats.bounced.by_class["unclassified"], 1);
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["bounced"]["by_class"]["hard"], 1);
    assert_eq!(json["accepted"], 1500);

    let batch = reader.batch_counts("acme", "B1").await.unwrap().unwrap();
    assert_eq!(
        (
            batch.accepted,
            batch.delivered,
            batch.bounced,
            batch.pending,
            batch.deferrals
        ),
        (1500, 1498, 2, 0, 2)
    );
    // The other tenant sees only its own one recipient under the same names.
    let g = wait_for("globex counted", Duration::from_secs(10), || async {
        let s = reader
            .campaign_stats("globex", "spring", from, to)
            .await
            .unwrap();
        (s.accepted == 1).then_some(s)
    })
    .await;
    assert_eq!(g.delivered, 0);
    let gb = reader.batch_counts("globex", "B1").await.unwrap().unwrap();
    assert_eq!((gb.accepted, gb.pending), (1, 1));
    assert!(
        reader
            .batch_counts("initech", "B1")
            .await
            .unwrap()
            .is_none()
    );
    // An hour outside the range counts nothing.
    let later = reader
        .campaign_stats("acme", "spring", to, to + 3600)
        .await
        .unwrap();
    assert_eq!(later.accepted, 0);

    // Stop, and make JetStream redeliver every event from the start: the
    // consumer is deleted and recreated, as after losing its state.
    shutdown.trigger();
    task.await.unwrap();
    let stream = js.get_stream(bus::EVENTS_STREAM).await.unwrap();
    stream.delete_consumer(tern_stats::CONSUMER).await.unwrap();
    let (shutdown, task) = start(&js).await;
    publish(
        &js,
        &[event(
            "received",
            "acme",
            "spring",
            "B1",
            "late@example.net",
            "",
        )],
    )
    .await;
    let again = wait_for(
        "the late recipient counted",
        Duration::from_secs(20),
        || async {
            let s = reader
                .campaign_stats("acme", "spring", from, to)
                .await
                .unwrap();
            (s.accepted > 1500).then_some(s)
        },
    )
    .await;
    // Everything replayed, only the new event counted.
    assert_eq!(
        (again.accepted, again.delivered, again.deferred),
        (1501, 1498, 2)
    );
    shutdown.trigger();
    task.await.unwrap();
}

#[tokio::test]
async fn reads_refuse_bad_ranges() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let reader = StatsReader::open(&js, 1).await.unwrap();
    assert!(matches!(
        reader.campaign_stats("a", "c", 7200, 3600).await,
        Err(tern_stats::Error::EmptyRange { .. })
    ));
    assert!(matches!(
        reader.campaign_stats("a", "c", 0, 400 * 86_400).await,
        Err(tern_stats::Error::RangeTooLong { .. })
    ));
}
