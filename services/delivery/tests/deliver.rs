//! Delivery end to end on loopback: a real nats-server, the in-process DNS
//! server, the real resolver service, delivery, and SMTP peers (the testkit
//! sink plus small scripted peers for greetings and slow transactions).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use common::{BODY, Harness, WAIT, job, outcomes, scripted_peer};
use tern_proto::Outcome;
use tern_runtime::bus;
use tern_testkit::wait_for;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

#[tokio::test]
async fn delivers_to_the_mx_and_reports_delivered() {
    let h = Harness::start().await;
    h.publish(&job(
        "m1",
        "remote.test",
        &["alice@remote.test", "bob@remote.test"],
        BODY,
    ))
    .await;

    let (result, msg_id) = h.result("remote.test").await;
    assert_eq!(msg_id, "m1/remote.test/0");
    assert_eq!(result.job_id, "m1/remote.test");
    assert_eq!(result.message_id, "m1");
    assert_eq!(result.attempt, 0);
    assert_eq!(
        outcomes(&result),
        vec![
            ("alice@remote.test".to_string(), Outcome::Delivered),
            ("bob@remote.test".to_string(), Outcome::Delivered)
        ]
    );
    for r in &result.results {
        assert_eq!(r.code, 250);
        assert_eq!(r.remote_host, "mx.remote.test");
    }

    let msgs = h.sink.messages();
    assert_eq!(msgs.len(), 1, "exactly one transaction");
    assert_eq!(msgs[0].helo, "delivery.test");
    assert_eq!(msgs[0].mail_from, "sender@origin.example");
    assert_eq!(msgs[0].rcpts, vec!["alice@remote.test", "bob@remote.test"]);
    assert_eq!(msgs[0].data, BODY, "body arrives byte-identical");
    h.wait_jobs_left(0).await;
}

#[tokio::test]
async fn refused_recipient_bounces_and_deferred_recipient_defers() {
    let h = Harness::start().await;
    h.publish(&job(
        "m2",
        "remote.test",
        &[
            "alice@remote.test",
            "reject-bob@remote.test",
            "defer-carol@remote.test",
        ],
        BODY,
    ))
    .await;
    let (result, _) = h.result("remote.test").await;
    assert_eq!(
        outcomes(&result),
        vec![
            ("alice@remote.test".to_string(), Outcome::Delivered),
            ("reject-bob@remote.test".to_string(), Outcome::Bounced),
            ("defer-carol@remote.test".to_string(), Outcome::Deferred),
        ]
    );
    assert_eq!(
        (result.results[1].code, result.results[1].enhanced.as_str()),
        (550, "5.1.1")
    );
    assert_eq!(
        (result.results[2].code, result.results[2].enhanced.as_str()),
        (451, "4.3.0")
    );
    let msgs = h.sink.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, vec!["alice@remote.test"]);
    assert_eq!(msgs[0].data, BODY);
    h.wait_jobs_left(0).await;
}

#[tokio::test]
async fn connection_failure_moves_to_the_next_mx() {
    let h = Harness::start().await;
    h.publish(&job("m3", "fallback.test", &["x@fallback.test"], BODY))
        .await;
    let (result, _) = h.result("fallback.test").await;
    assert_eq!(
        outcomes(&result),
        vec![("x@fallback.test".to_string(), Outcome::Delivered)]
    );
    assert_eq!(result.results[0].remote_host, "mx.remote.test");
    assert_eq!(h.sink.messages().len(), 1);
}

#[tokio::test]
async fn transient_greeting_moves_to_the_next_mx() {
    let h = Harness::start().await;
    let (events, mut seen) = mpsc::unbounded_channel();
    let grey: SocketAddr = format!("127.0.0.3:{}", h.sink.addr().port())
        .parse()
        .unwrap();
    tokio::spawn(scripted_peer(
        TcpListener::bind(grey).await.unwrap(),
        "421 4.7.0 greylisted, come back later\r\n",
        None,
        events,
    ));
    h.publish(&job("m4", "grey.test", &["x@grey.test"], BODY))
        .await;
    let (result, _) = h.result("grey.test").await;
    assert_eq!(
        outcomes(&result),
        vec![("x@grey.test".to_string(), Outcome::Delivered)]
    );
    assert_eq!(result.results[0].remote_host, "mx.remote.test");
    assert_eq!(
        seen.recv().await,
        Some("connected"),
        "the greylisting host was tried first"
    );
    assert_eq!(h.sink.messages().len(), 1);
}

#[tokio::test]
async fn unreachable_hosts_defer() {
    let h = Harness::start().await;
    h.publish(&job(
        "m5",
        "down.test",
        &["x@down.test", "y@down.test"],
        BODY,
    ))
    .await;
    let (result, _) = h.result("down.test").await;
    assert_eq!(
        outcomes(&result),
        vec![
            ("x@down.test".to_string(), Outcome::Deferred),
            ("y@down.test".to_string(), Outcome::Deferred)
        ]
    );
    assert_eq!(result.results[0].enhanced, "4.4.1");
    assert!(
        result.results[0].reply.contains("mx.down.test"),
        "{}",
        result.results[0].reply
    );
    h.wait_jobs_left(0).await;
}

#[tokio::test]
async fn resolver_permanent_failures_bounce() {
    let h = Harness::start().await;
    h.publish(&job("m6", "nullmx.test", &["x@nullmx.test"], BODY))
        .await;
    h.publish(&job("m7", "missing.test", &["x@missing.test"], BODY))
        .await;
    let (null, _) = h.result("nullmx.test").await;
    assert_eq!(
        outcomes(&null),
        vec![("x@nullmx.test".to_string(), Outcome::Bounced)]
    );
    assert_eq!(null.results[0].enhanced, "5.1.10");
    let (nx, _) = h.result("missing.test").await;
    assert_eq!(
        outcomes(&nx),
        vec![("x@missing.test".to_string(), Outcome::Bounced)]
    );
    assert_eq!(nx.results[0].enhanced, "5.1.2");
    assert!(h.sink.messages().is_empty());
}

#[tokio::test]
async fn unreachable_resolver_defers() {
    let closed = tern_testkit::free_port();
    let h = Harness::start_with(Some(format!("http://127.0.0.1:{closed}"))).await;
    h.publish(&job("m8", "remote.test", &["alice@remote.test"], BODY))
        .await;
    let (result, _) = h.result("remote.test").await;
    assert_eq!(
        outcomes(&result),
        vec![("alice@remote.test".to_string(), Outcome::Deferred)]
    );
    assert_eq!(result.results[0].enhanced, "4.4.3");
    assert!(h.sink.messages().is_empty());
    h.wait_jobs_left(0).await;
}

#[tokio::test]
async fn shutdown_stops_pulling_and_finishes_the_attempt_in_flight() {
    let mut h = Harness::start().await;
    let (events, mut seen) = mpsc::unbounded_channel();
    let (release, hold) = oneshot::channel();
    let slow: SocketAddr = format!("127.0.0.4:{}", h.sink.addr().port())
        .parse()
        .unwrap();
    tokio::spawn(scripted_peer(
        TcpListener::bind(slow).await.unwrap(),
        "220 slow.test\r\n",
        Some(hold),
        events,
    ));
    h.publish(&job("m9", "slow.test", &["x@slow.test"], BODY))
        .await;
    assert_eq!(seen.recv().await, Some("connected"));
    assert_eq!(
        seen.recv().await,
        Some("data"),
        "the body reached the slow host"
    );

    // Shut down while the final reply is outstanding; the attempt must finish.
    h.shutdown.trigger();
    let task = h.delivery.take().unwrap();
    // A job published from now on must not be started.
    h.publish(&job("m10", "remote.test", &["alice@remote.test"], BODY))
        .await;
    release.send(()).unwrap();

    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("delivery stops after the attempt")
        .unwrap()
        .unwrap();
    let (result, _) = h.result("slow.test").await;
    assert_eq!(
        outcomes(&result),
        vec![("x@slow.test".to_string(), Outcome::Delivered)]
    );
    assert!(
        h.sink.messages().is_empty(),
        "the job published during shutdown was not delivered"
    );
    assert_eq!(h.jobs_left().await, 1, "only the unstarted job is left");
}

#[tokio::test]
async fn clean_shutdown_when_idle() {
    let mut h = Harness::start().await;
    // Let it become ready (the jobs consumer exists), then stop.
    wait_for("the delivery consumer", WAIT, || async {
        let s = h.js.get_stream(bus::JOBS_STREAM).await.ok()?;
        s.get_consumer::<jetstream::consumer::pull::Config>(bus::consumers::DELIVERY)
            .await
            .ok()
    })
    .await;
    h.stop().await.unwrap();
}
