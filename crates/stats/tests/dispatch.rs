//! The webhook dispatcher against a real nats-server and a real HTTP
//! receiver (Python's http.server, checking the README's signature snippet):
//! a tenant's events arrive signed, in batches, after the receiver failed
//! the first POSTs; another tenant's events never arrive; a webhook that is
//! down holds up nothing else and its events are dropped after the age limit.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use prost::Message as _;
use tern_proto::Event;
use tern_runtime::{Shutdown, bus, now_unix_ms};
use tern_stats::hooks::Registry;
use tern_stats::{Config, Dispatcher, dispatch};
use tern_testkit::{NatsServer, wait_for};

use support::{Receiver, down_url};

fn event(kind: &str, tenant: &str, rcpt: &str) -> Event {
    Event {
        kind: kind.into(),
        message_id: format!("m-{rcpt}"),
        recipient: rcpt.into(),
        tenant: tenant.into(),
        campaign: "spring".into(),
        batch_id: "B1".into(),
        at_unix_ms: now_unix_ms(),
        ..Default::default()
    }
}

async fn publish(js: &jetstream::Context, events: &[Event]) {
    for e in events {
        let id = format!("{}/{}/{}", e.kind, e.tenant, e.recipient);
        let subject = format!("tern.events.{}", e.kind);
        bus::Publish::new(subject, e.encode_to_vec().into(), id)
            .durable(js)
            .await
            .unwrap();
    }
}

async fn start(js: &jetstream::Context, config: Config) -> (Shutdown, tokio::task::JoinHandle<()>) {
    let d = Dispatcher::open(js, 1, &config).await.unwrap();
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    (shutdown, tokio::spawn(async move { d.run(&s).await }))
}

fn fast() -> Config {
    Config {
        webhook_retry_min: Duration::from_millis(200),
        ..Config::default()
    }
}

#[tokio::test]
async fn a_tenants_events_arrive_signed_after_retries_and_no_one_elses() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    bus::ensure_streams(&js, 1).await.unwrap();
    let reg = Registry::open(&js, 1).await.unwrap();
    let rx = Receiver::start(2);
    let hook = reg.add("acme", &rx.url(), vec![]).await.unwrap();
    rx.set_secret(&hook.secret);
    // A second acme webhook that is down, and one of another tenant.
    reg.add("acme", &down_url(), vec!["bounced".into()])
        .await
        .unwrap();
    let grx = Receiver::start(0);
    let g = reg.add("globex", &grx.url(), vec![]).await.unwrap();
    grx.set_secret(&g.secret);

    let (shutdown, task) = start(&js, fast()).await;
    let mut acme: Vec<Event> = (0..150)
        .map(|i| event("delivered", "acme", &format!("r{i}@example.net")))
        .collect();
    acme.push(event("bounced", "acme", "b@example.net"));
    publish(&js, &acme).await;
    publish(&js, &[event("delivered", "globex", "g@example.net")]).await;

    let ok = wait_for(
        "acme's 151 events accepted",
        Duration::from_secs(30),
        || async {
            let posts = rx.posts();
            let n: usize = posts
                .iter()
                .filter(|p| p.status == 200)
                .map(|p| p.events.len())
                .sum();
            (n >= 151).then_some(posts)
        },
    )
    .await;
    assert!(
        ok.iter().all(|p| p.verified),
        "every POST carries a valid signature"
    );
    assert_eq!(ok[0].status, 500);
    assert_eq!(ok[1].status, 500);
    assert!(
        ok.iter()
            .all(|p| p.events.len() <= dispatch::DISPATCH_BATCH)
    );
    // Each event exactly once among the accepted POSTs, none of globex's.
    let mut got: BTreeMap<String, usize> = BTreeMap::new();
    for p in ok.iter().filter(|p| p.status == 200) {
        for e in &p.events {
            *got.entry(e["recipient"].as_str().unwrap().to_string())
                .or_default() += 1;
            assert_eq!(e["campaign"], "spring");
        }
    }
    assert_eq!(got.len(), 151);
    assert!(got.values().all(|&n| n == 1), "{got:?}");
    assert!(!got.contains_key("g@example.net"));
    // globex's own webhook got its one event and nothing of acme's.
    let gp = wait_for("globex's event", Duration::from_secs(10), || async {
        let p = grx.posts();
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert_eq!(gp.len(), 1);
    assert_eq!(gp[0].events.len(), 1);
    assert_eq!(gp[0].events[0]["recipient"], "g@example.net");
    shutdown.trigger();
    task.await.unwrap();
}

#[tokio::test]
async fn a_dead_webhooks_events_are_dropped_after_the_age_limit() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    bus::ensure_streams(&js, 1).await.unwrap();
    let reg = Registry::open(&js, 1).await.unwrap();
    reg.add("acme", &down_url(), vec![]).await.unwrap();
    // Age limit zero: the first failure is already past it.
    let config = Config {
        webhook_max_age: Duration::ZERO,
        ..fast()
    };
    let (shutdown, task) = start(&js, config).await;
    publish(&js, &[event("delivered", "acme", "a@example.net")]).await;
    settled(&js, 1, "the event given up", Duration::from_secs(10)).await;
    shutdown.trigger();
    task.await.unwrap();
}

/// https receivers (Python's http.server inside OpenSSL): one whose
/// certificate chains to the CA in `TERN_WEBHOOK_CA_FILE` gets its events,
/// signed; one presenting a certificate from another CA never gets a byte
/// of them (the handshake fails, the event is given up after the age limit).
#[tokio::test]
async fn https_receivers_get_events_only_behind_a_trusted_certificate() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    bus::ensure_streams(&js, 1).await.unwrap();
    let reg = Registry::open(&js, 1).await.unwrap();
    let pki = tern_testkit::TestPki::new();
    let stranger = tern_testkit::TestPki::new();
    let rx = Receiver::start_tls(&pki.server_cert, &pki.server_key);
    let hook = reg.add("acme", &rx.url(), vec![]).await.unwrap();
    rx.set_secret(&hook.secret);
    let bad = Receiver::start_tls(&stranger.server_cert, &stranger.server_key);
    let h = reg.add("globex", &bad.url(), vec![]).await.unwrap();
    bad.set_secret(&h.secret);
    assert!(rx.url().starts_with("https://127.0.0.1:"));

    let config = Config {
        webhook_ca_file: Some(pki.ca.clone()),
        webhook_max_age: Duration::ZERO,
        ..fast()
    };
    let (shutdown, task) = start(&js, config).await;
    publish(
        &js,
        &[
            event("delivered", "acme", "a@example.net"),
            event("delivered", "globex", "g@example.net"),
        ],
    )
    .await;
    let posts = wait_for(
        "acme's event over https",
        Duration::from_secs(20),
        || async {
            let p = rx.posts();
            (!p.is_empty()).then_some(p)
        },
    )
    .await;
    assert_eq!((posts[0].status, posts[0].verified), (200, true));
    assert_eq!(posts[0].events[0]["recipient"], "a@example.net");
    settled(&js, 2, "both events settled", Duration::from_secs(20)).await;
    assert!(bad.posts().is_empty(), "{:?}", bad.posts());
    shutdown.trigger();
    task.await.unwrap();
}

/// Wait until the dispatcher has taken the first `n` events and settled
/// every one (acked or given up), nothing pending.
async fn settled(js: &jetstream::Context, n: u64, what: &str, within: Duration) {
    wait_for(what, within, || async {
        let mut c: jetstream::consumer::PullConsumer = js
            .get_stream(bus::EVENTS_STREAM)
            .await
            .unwrap()
            .get_consumer(dispatch::DISPATCH_CONSUMER)
            .await
            .unwrap();
        let info = c.info().await.unwrap();
        (info.delivered.stream_sequence == n && info.num_ack_pending == 0 && info.num_pending == 0)
            .then_some(())
    })
    .await;
}
