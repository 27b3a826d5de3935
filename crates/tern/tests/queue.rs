//! The queue with every other stage real: retries on a compressed schedule
//! (configured, not slept through), partial success, expiry and bounces
//! producing DSNs that land in the sender's mailbox, no DSN to `<>`,
//! hold/release, and the body deleted once every job is final.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::{Stack, python, smtp_send};
use futures::StreamExt;
use prost::Message as _;
use tern_proto::Event;
use tern_runtime::bus;

const TRUSTED: (&str, &str) = ("trusted_networks", "127.0.0.0/8");
const FAST_RETRY: (&str, &str) = ("queue_retry_schedule", "1s");

async fn js(stack: &Stack) -> jetstream::Context {
    jetstream::new(
        async_nats::connect(stack.nats.url())
            .await
            .expect("connect to NATS"),
    )
}

/// Every event so far, in order.
async fn events(js: &jetstream::Context) -> Vec<Event> {
    let stream = js
        .get_stream(bus::EVENTS_STREAM)
        .await
        .expect("events stream");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("events consumer");
    let mut out = Vec::new();
    let mut batch = consumer
        .fetch()
        .max_messages(10_000)
        .expires(Duration::from_millis(300))
        .messages()
        .await
        .expect("fetch events");
    while let Some(Ok(m)) = batch.next().await {
        out.push(Event::decode(m.payload.clone()).expect("event decodes"));
    }
    out
}

async fn wait_event(js: &jetstream::Context, what: &str, f: impl Fn(&Event) -> bool) -> Event {
    tern_testkit::wait_for(what, Duration::from_secs(30), || async {
        events(js).await.into_iter().find(|e| f(e))
    })
    .await
}

/// Fetch every message in alice's INBOX over IMAP.
async fn imap_messages(stack: &Stack, user: &str, password: &str) -> Vec<String> {
    const IMAP: &str = r#"
import imaplib, sys
m = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]))
m.login(sys.argv[3], sys.argv[4])
typ, data = m.select('INBOX')
n = int(data[0])
for i in range(1, n + 1):
    typ, d = m.fetch(str(i), '(BODY.PEEK[])')
    sys.stdout.buffer.write(d[0][1] + b'\n=====END=====\n')
m.logout()
"#;
    let a = stack.addr("imap");
    let out = python(
        IMAP,
        &[
            a.ip().to_string(),
            a.port().to_string(),
            user.into(),
            password.into(),
        ],
    )
    .await;
    String::from_utf8_lossy(&out)
        .split("\n=====END=====\n")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

const MSG: &[u8] = b"From: alice@localhost\r\nSubject: queue test\r\n\r\nbody line\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_retries_only_the_deferred_recipient_on_schedule() {
    let stack = Stack::start(&[TRUSTED, FAST_RETRY]).await;
    let js = js(&stack).await;
    let reply = smtp_send(
        stack.addr("smtp"),
        "app@example.org",
        &["bob@remote.test", "defer1@remote.test"],
        MSG,
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");

    let first = wait_event(&js, "first deferral", |e| {
        e.kind == "deferred" && e.attempt == 0
    })
    .await;
    assert_eq!(first.recipient, "defer1@remote.test");
    assert_eq!(first.code, 451);
    assert!(
        first.next_attempt_unix_ms > first.at_unix_ms,
        "a retry is scheduled in the future"
    );
    let second = wait_event(&js, "second deferral", |e| {
        e.kind == "deferred" && e.attempt == 1
    })
    .await;
    // The retry ran no earlier than the time the first deferral announced.
    assert!(
        second.at_unix_ms >= first.next_attempt_unix_ms,
        "retried early: {second:?} vs {first:?}"
    );
    let all = events(&js).await;
    let delivered: Vec<_> = all.iter().filter(|e| e.kind == "delivered").collect();
    assert_eq!(
        delivered.len(),
        1,
        "bob is delivered once, never again on the retry: {all:?}"
    );
    assert_eq!(delivered[0].recipient, "bob@remote.test");
    assert_eq!(
        stack.sink.messages().len(),
        1,
        "the MX got the message once"
    );
    assert!(
        all.iter()
            .any(|e| e.kind == "received" && e.recipient == "defer1@remote.test")
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_sends_a_dsn_the_local_sender_reads_over_imap() {
    let stack = Stack::start(&[
        TRUSTED,
        FAST_RETRY,
        ("queue_max_age", "2s"),
        ("queue_delay_dsn_after", ""),
    ])
    .await;
    stack.add_user("alice@localhost", "wonderland").await;
    let js = js(&stack).await;
    let reply = smtp_send(
        stack.addr("smtp"),
        "alice@localhost",
        &["defer2@remote.test"],
        MSG,
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    wait_event(&js, "expiry", |e| {
        e.kind == "expired" && e.recipient == "defer2@remote.test"
    })
    .await;

    let dsn = tern_testkit::wait_for(
        "the DSN in alice's INBOX",
        Duration::from_secs(30),
        || async {
            imap_messages(&stack, "alice@localhost", "wonderland")
                .await
                .into_iter()
                .next()
        },
    )
    .await;
    for needle in [
        "Return-Path: <>",
        "Content-Type: multipart/report; report-type=delivery-status",
        "Final-Recipient: rfc822; defer2@remote.test",
        "Action: failed",
        "Status: 4.4.7",
        "Diagnostic-Code: smtp; 451",
        "Subject: queue test",
    ] {
        assert!(dsn.contains(needle), "DSN lacks {needle:?}:\n{dsn}");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_reports_to_the_sender_but_never_to_the_null_sender() {
    let stack = Stack::start(&[TRUSTED]).await;
    stack.add_user("alice@localhost", "wonderland").await;
    let js = js(&stack).await;

    // From <>: bounced, and no DSN is made (no bounce loops).
    let reply = smtp_send(stack.addr("smtp"), "", &["reject1@remote.test"], MSG).await;
    assert!(reply.starts_with("250"), "{reply}");
    let bounced = wait_event(&js, "bounce from <>", |e| {
        e.kind == "bounced" && e.recipient == "reject1@remote.test"
    })
    .await;
    assert_eq!((bounced.code, bounced.enhanced.as_str()), (550, "5.1.1"));

    // From a local user: the DSN arrives in her mailbox.
    let reply = smtp_send(
        stack.addr("smtp"),
        "alice@localhost",
        &["reject2@remote.test"],
        MSG,
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let dsn = tern_testkit::wait_for(
        "the DSN in alice's INBOX",
        Duration::from_secs(30),
        || async {
            imap_messages(&stack, "alice@localhost", "wonderland")
                .await
                .into_iter()
                .next()
        },
    )
    .await;
    assert!(
        dsn.contains("Final-Recipient: rfc822; reject2@remote.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.1.1"), "{dsn}");
    // Exactly one DSN was ever made (from <> to a sender): alice's. The
    // message sent from <> produced none.
    let dsns: Vec<_> = events(&js)
        .await
        .into_iter()
        .filter(|e| e.kind == "received" && e.mail_from.is_empty() && e.destination == "local")
        .collect();
    assert_eq!(
        dsns.len(),
        1,
        "only alice's bounce produced a DSN: {dsns:?}"
    );
    assert_eq!(dsns[0].recipient, "alice@localhost");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_keeps_jobs_and_release_delivers_them() {
    let stack = Stack::start(&[TRUSTED]).await;
    let js = js(&stack).await;
    let url = format!("http://{}", stack.addr("queue grpc"));
    let mut admin = tern_proto::queue_admin_client::QueueAdminClient::connect(url)
        .await
        .expect("queue admin");
    admin
        .hold(tern_proto::DestinationRequest {
            destination: "Remote.Test".into(),
        })
        .await
        .expect("hold");
    // The hold reaches the queue's view through the bucket watch; wait for it in stats.
    tern_testkit::wait_for("hold visible in stats", Duration::from_secs(10), || {
        let mut admin = admin.clone();
        async move {
            let s = admin
                .stats(tern_proto::StatsRequest {})
                .await
                .ok()?
                .into_inner();
            s.destinations
                .iter()
                .any(|d| d.destination == "remote.test" && d.on_hold)
                .then_some(())
        }
    })
    .await;

    for i in 0..3 {
        let reply = smtp_send(
            stack.addr("smtp"),
            "app@example.org",
            &[&format!("user{i}@remote.test")],
            MSG,
        )
        .await;
        assert!(reply.starts_with("250"), "{reply}");
    }
    let held = tern_testkit::wait_for("three held jobs", Duration::from_secs(20), || {
        let mut admin = admin.clone();
        async move {
            let s = admin
                .stats(tern_proto::StatsRequest {})
                .await
                .ok()?
                .into_inner();
            s.destinations
                .into_iter()
                .find(|d| d.destination == "remote.test" && d.held == 3)
        }
    })
    .await;
    assert_eq!(held.ready, 0);
    // The same figure reaches Prometheus as a gauge.
    let admin_addr = stack.addr("queue admin");
    tern_testkit::wait_for(
        "the held gauge on /metrics",
        Duration::from_secs(20),
        || async move {
            let (_, body) = common::http_get(admin_addr, "/metrics").await?;
            body.lines()
                .any(|l| {
                    l.starts_with("tern_queue_jobs{")
                        && l.contains("destination=\"remote.test\"")
                        && l.contains("state=\"held\"")
                        && l.ends_with(" 3")
                })
                .then_some(())
        },
    )
    .await;
    assert!(
        stack.sink.messages().is_empty(),
        "nothing is attempted while on hold"
    );
    assert!(events(&js).await.iter().any(|e| e.kind == "held"));

    let moved = admin
        .release(tern_proto::DestinationRequest {
            destination: "remote.test".into(),
        })
        .await
        .expect("release")
        .into_inner()
        .moved;
    assert_eq!(moved, 3);
    tern_testkit::wait_for(
        "three deliveries after release",
        Duration::from_secs(20),
        || {
            let n = stack.sink.messages().len();
            async move { (n == 3).then_some(()) }
        },
    )
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_is_deleted_once_every_job_is_final() {
    let stack = Stack::start(&[TRUSTED]).await;
    stack.add_user("alice@localhost", "wonderland").await;
    let js = js(&stack).await;
    let reply = smtp_send(
        stack.addr("smtp"),
        "app@example.org",
        &["alice@localhost", "bob@remote.test"],
        MSG,
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    tern_testkit::wait_for(
        "both jobs final and the spool emptied",
        Duration::from_secs(20),
        || {
            let js = js.clone();
            async move {
                let mut stream = js.get_stream(bus::SPOOL_STREAM).await.ok()?;
                let info = stream.info().await.ok()?;
                (info.state.last_sequence == 1 && info.state.messages == 0).then_some(())
            }
        },
    )
    .await;
    let kinds: Vec<_> = events(&js).await.into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "delivered").count(),
        2,
        "{kinds:?}"
    );
    stack.stop().await;
}
