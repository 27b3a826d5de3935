//! Delivery's SMTP client behaviour against an independent peer (Python's
//! standard library, TLS by OpenSSL; `tests/peers/smtp_peer.py`) reached
//! through real DNS and the real resolver: STARTTLS policies, connection
//! reuse, PIPELINING, CHUNKING, 8BITMIME/SMTPUTF8, IPv6, egress identity,
//! and per-destination connection limits across two delivery instances.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{BODY, Harness, PyPeer, WAIT, job, outcomes};
use tern_proto::Outcome;
use tern_runtime::Shutdown;
use tern_testkit::wait_for;

fn port(h: &Harness) -> String {
    h.base.port.clone()
}

#[tokio::test]
async fn opportunistic_starttls_with_a_self_signed_certificate() {
    let h = Harness::start().await;
    let peer = PyPeer::start("127.0.0.5", &port(&h), true, &[]);
    h.publish(&job("t1", "tls.test", &["alice@tls.test"], BODY))
        .await;
    let r = h.result_of("tls.test", "t1").await;
    assert_eq!(
        outcomes(&r),
        vec![("alice@tls.test".to_string(), Outcome::Delivered)]
    );
    let msgs = peer.messages();
    assert_eq!(msgs.len(), 1);
    // The self-signed certificate was accepted (RFC 7435) and the whole
    // transaction ran over TLS, after a second EHLO (RFC 3207 §4.2).
    assert!(
        msgs[0]
            .tls
            .as_deref()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "{:?}",
        msgs[0].tls
    );
    assert_eq!(msgs[0].ehlo_count, 2);
    assert_eq!(msgs[0].helo, "delivery.test");
    assert_eq!(msgs[0].data, BODY);
}

#[tokio::test]
async fn failed_tls_is_not_retried_in_plaintext_on_that_host() {
    let h = Harness::start().await;
    let broken = PyPeer::start("127.0.0.6", &port(&h), true, &["--tls-broken"]);
    let good = PyPeer::start("127.0.0.5", &port(&h), true, &[]);

    // Only MX has broken TLS: deferred with a TLS failure, nothing in plaintext.
    h.publish(&job("b1", "broken.test", &["bob@broken.test"], BODY))
        .await;
    let r = h.result_of("broken.test", "b1").await;
    assert_eq!(
        outcomes(&r),
        vec![("bob@broken.test".to_string(), Outcome::Deferred)]
    );
    assert_eq!(r.results[0].enhanced, "4.7.5", "{:?}", r.results[0]);
    assert!(r.results[0].reply.contains("TLS"), "{}", r.results[0].reply);
    assert_eq!(broken.connections().len(), 1, "no plaintext retry");
    assert!(broken.messages().is_empty());

    // Broken first MX, good second: the second takes it over TLS.
    h.publish(&job("b2", "brokenfb.test", &["bob@brokenfb.test"], BODY))
        .await;
    let r = h.result_of("brokenfb.test", "b2").await;
    assert_eq!(r.results[0].outcome, Outcome::Delivered as i32);
    assert_eq!(r.results[0].remote_host, "mx.tls.test");
    assert_eq!(broken.connections().len(), 2);
    assert!(broken.messages().is_empty());
    assert!(good.messages()[0].tls.is_some());
}

#[tokio::test]
async fn plaintext_fallback_after_tls_failure_when_policy_allows() {
    let h = Harness::start_extra(&[("delivery_tls_plaintext_fallback", "true")]).await;
    let broken = PyPeer::start("127.0.0.6", &port(&h), true, &["--tls-broken"]);
    h.publish(&job("f1", "broken.test", &["bob@broken.test"], BODY))
        .await;
    let r = h.result_of("broken.test", "f1").await;
    assert_eq!(r.results[0].outcome, Outcome::Delivered as i32);
    assert_eq!(broken.connections().len(), 2, "TLS try, then plaintext");
    let msgs = broken.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].tls, None);
}

#[tokio::test]
async fn per_destination_tls_policies() {
    let h = Harness::start_extra(&[(
        "delivery_tls_policies",
        "plain.test=required,tls.test=disabled",
    )])
    .await;
    let plain = PyPeer::start("127.0.0.7", &port(&h), false, &[]);
    let tls = PyPeer::start("127.0.0.5", &port(&h), true, &[]);

    // required, but the host offers no STARTTLS: deferred, nothing sent.
    h.publish(&job("p1", "plain.test", &["carol@plain.test"], BODY))
        .await;
    let r = h.result_of("plain.test", "p1").await;
    assert_eq!(r.results[0].outcome, Outcome::Deferred as i32);
    assert_eq!(r.results[0].enhanced, "4.7.4");
    assert!(r.results[0].reply.contains("TLS is required"));
    assert!(plain.messages().is_empty());

    // disabled: plaintext although the host offers STARTTLS.
    h.publish(&job("p2", "tls.test", &["dave@tls.test"], BODY))
        .await;
    let r = h.result_of("tls.test", "p2").await;
    assert_eq!(r.results[0].outcome, Outcome::Delivered as i32);
    let m = tls.messages();
    assert_eq!((m[0].tls.clone(), m[0].ehlo_count), (None, 1));
}

#[tokio::test]
async fn a_connection_carries_the_next_messages_within_its_limits() {
    let h = Harness::start_extra(&[("delivery_messages_per_connection", "3")]).await;
    let peer = PyPeer::start("127.0.0.5", &port(&h), true, &["--pipelining"]);
    for i in 0..5 {
        let id = format!("r{i}");
        h.publish(&job(&id, "tls.test", &["erin@tls.test"], BODY))
            .await;
        let r = h.result_of("tls.test", &id).await;
        assert_eq!(r.results[0].outcome, Outcome::Delivered as i32);
    }
    let msgs = peer.messages();
    assert_eq!(msgs.len(), 5);
    // 3 messages on the first connection (one TLS handshake), 2 on the next.
    let conns: Vec<u64> = msgs.iter().map(|m| m.conn).collect();
    assert_eq!(conns, vec![1, 1, 1, 2, 2]);
    assert!(msgs.iter().all(|m| m.tls.is_some()));
    assert_eq!(peer.connections().len(), 2);
    // The first connection, at its limit, was closed politely.
    wait_for("QUIT on the full connection", WAIT, || async {
        (peer.quits() >= 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn idle_connections_are_closed_with_quit() {
    let h = Harness::start_extra(&[("delivery_connection_idle", "300ms")]).await;
    let peer = PyPeer::start("127.0.0.5", &port(&h), false, &[]);
    h.publish(&job("i1", "tls.test", &["f@tls.test"], BODY))
        .await;
    h.result_of("tls.test", "i1").await;
    wait_for("the idle connection to be closed", WAIT, || async {
        (peer.quits() == 1).then_some(())
    })
    .await;
    h.publish(&job("i2", "tls.test", &["f@tls.test"], BODY))
        .await;
    let r = h.result_of("tls.test", "i2").await;
    assert_eq!(r.results[0].outcome, Outcome::Delivered as i32);
    assert_eq!(
        peer.connections().len(),
        2,
        "a new connection after the idle close"
    );
}

#[tokio::test]
async fn pipelined_envelope_with_a_result_per_recipient() {
    let h = Harness::start().await;
    let peer = PyPeer::start("127.0.0.7", &port(&h), false, &["--pipelining"]);
    h.publish(&job(
        "pl1",
        "plain.test",
        &[
            "a@plain.test",
            "reject-b@plain.test",
            "defer-c@plain.test",
            "d@plain.test",
        ],
        BODY,
    ))
    .await;
    let r = h.result_of("plain.test", "pl1").await;
    assert_eq!(
        outcomes(&r),
        vec![
            ("a@plain.test".to_string(), Outcome::Delivered),
            ("reject-b@plain.test".to_string(), Outcome::Bounced),
            ("defer-c@plain.test".to_string(), Outcome::Deferred),
            ("d@plain.test".to_string(), Outcome::Delivered),
        ]
    );
    assert_eq!(r.results[1].enhanced, "5.1.1");
    assert_eq!(r.results[2].code, 451);
    let m = peer.messages();
    assert_eq!(m.len(), 1, "one transaction for all recipients");
    assert!(m[0].pipelined, "RCPTs were sent before the reply to MAIL");
    assert_eq!(m[0].rcpts, vec!["a@plain.test", "d@plain.test"]);
}

#[tokio::test]
async fn bdat_when_chunking_is_offered() {
    let h = Harness::start().await;
    let peer = PyPeer::start(
        "127.0.0.7",
        &port(&h),
        false,
        &["--chunking", "--pipelining"],
    );
    // Dot lines that BDAT must not stuff (multi-chunk messages are
    // covered by the client's unit tests: a job payload stays under
    // nats-server's 1 MiB message limit).
    let mut body = BODY.to_vec();
    for i in 0..10_000 {
        body.extend_from_slice(format!(".line {i} of a long message\r\n").as_bytes());
    }
    h.publish(&job("c1", "plain.test", &["g@plain.test"], &body))
        .await;
    let r = h.result_of("plain.test", "c1").await;
    assert_eq!(r.results[0].outcome, Outcome::Delivered as i32);
    let m = peer.messages();
    assert!(m[0].bdat);
    assert_eq!(m[0].data, body, "byte-identical through BDAT");
}

#[tokio::test]
async fn smtputf8_and_8bitmime_rules() {
    let h = Harness::start().await;
    let peer = PyPeer::start(
        "127.0.0.7",
        &port(&h),
        false,
        &["--no-smtputf8", "--no-8bitmime"],
    );
    let utf8 = PyPeer::start("127.0.0.5", &port(&h), false, &[]);

    // RFC 6531: non-ASCII address to a server without SMTPUTF8 → 5.6.7.
    let mut j = job("u1", "plain.test", &["jöran@plain.test"], BODY);
    j.smtputf8 = true;
    h.publish(&j).await;
    let r = h.result_of("plain.test", "u1").await;
    assert_eq!(r.results[0].outcome, Outcome::Bounced as i32);
    assert_eq!(r.results[0].enhanced, "5.6.7");

    // RFC 6532 UTF-8 header, ASCII addresses, no SMTPUTF8 → 5.6.9.
    let utf8_body = "From: a@x.test\r\nSubject: grüße\r\n\r\nhi\r\n".as_bytes();
    let mut j = job("u2", "plain.test", &["h@plain.test"], utf8_body);
    j.smtputf8 = true;
    h.publish(&j).await;
    let r = h.result_of("plain.test", "u2").await;
    assert_eq!(r.results[0].enhanced, "5.6.9");
    assert_eq!(r.results[0].outcome, Outcome::Bounced as i32);

    // RFC 6152: 8-bit body to a server without 8BITMIME → 5.6.3.
    let eight = b"Subject: x\r\n\r\ncaf\xe9\r\n";
    let mut j = job("u3", "plain.test", &["h@plain.test"], eight);
    j.eight_bit = true;
    h.publish(&j).await;
    let r = h.result_of("plain.test", "u3").await;
    assert_eq!(r.results[0].enhanced, "5.6.3");
    assert!(peer.messages().is_empty(), "nothing was sent");

    // A server with both: SMTPUTF8 and BODY=8BITMIME on MAIL, delivered.
    let mut j = job("u4", "tls.test", &["jöran@tls.test"], utf8_body);
    j.smtputf8 = true;
    h.publish(&j).await;
    let r = h.result_of("tls.test", "u4").await;
    assert_eq!(r.results[0].outcome, Outcome::Delivered as i32);
    let m = utf8.messages();
    assert!(
        m[0].mail_params.contains(&"SMTPUTF8".to_string()),
        "{:?}",
        m[0].mail_params
    );
    assert!(m[0].mail_params.contains(&"BODY=8BITMIME".to_string()));
    assert_eq!(m[0].rcpts, vec!["jöran@tls.test"]);

    // ASCII-only message: no SMTPUTF8 parameter (RFC 6531 §3.4).
    let mut j = job("u5", "tls.test", &["k@tls.test"], BODY);
    j.smtputf8 = true;
    h.publish(&j).await;
    h.result_of("tls.test", "u5").await;
    let m = utf8.messages();
    assert!(!m[1].mail_params.contains(&"SMTPUTF8".to_string()));
}

#[tokio::test]
async fn ipv6_only_mx_on_loopback() {
    let h = Harness::start().await;
    let peer = PyPeer::start("::1", &port(&h), true, &[]);
    h.publish(&job("v1", "v6only.test", &["ivy@v6only.test"], BODY))
        .await;
    let r = h.result_of("v6only.test", "v1").await;
    assert_eq!(r.results[0].outcome, Outcome::Delivered as i32);
    assert_eq!(peer.connections(), vec!["::1"]);
    assert!(peer.messages()[0].tls.is_some());
}

#[tokio::test]
async fn egress_source_address_and_ehlo_name() {
    let h = Harness::start_extra(&[
        ("delivery_source_addresses", "127.0.0.9"),
        ("delivery_ehlo_name", "out9.sender.test"),
        ("delivery_pool", "pool9"),
    ])
    .await;
    let peer = PyPeer::start("127.0.0.7", &port(&h), false, &[]);
    h.publish(&job("e1", "plain.test", &["j@plain.test"], BODY))
        .await;
    let r = h.result_of("plain.test", "e1").await;
    assert_eq!(r.results[0].outcome, Outcome::Delivered as i32);
    assert_eq!(peer.connections(), vec!["127.0.0.9"]);
    assert_eq!(peer.messages()[0].helo, "out9.sender.test");
}

#[tokio::test]
async fn connection_limit_holds_across_two_delivery_instances() {
    let limits = [
        ("delivery_destination_concurrency_limits", "plain.test=2"),
        ("delivery_concurrency", "8"),
        // One message per connection: every job needs a slot of its own.
        ("delivery_messages_per_connection", "1"),
    ];
    let h = Harness::start_extra(&limits).await;
    let second = Shutdown::new();
    let d2 = h.base.spawn(&limits, second.clone()).await;
    // Each transaction takes a while, so the instances overlap.
    let peer = PyPeer::start("127.0.0.7", &port(&h), false, &["--hold-data", "0.2"]);
    let n = 12;
    for i in 0..n {
        h.publish(&job(
            &format!("l{i}"),
            "plain.test",
            &["k@plain.test"],
            BODY,
        ))
        .await;
    }
    wait_for("every job delivered", WAIT * 2, || async {
        (peer.messages().len() == n).then_some(())
    })
    .await;
    h.wait_jobs_left(0).await;
    assert_eq!(peer.connections().len(), n);
    assert_eq!(
        peer.max_concurrent(),
        2,
        "never more than the limit at once"
    );
    let results = h.results("plain.test").await;
    assert_eq!(results.len(), n);
    assert!(
        results
            .iter()
            .all(|r| r.results[0].outcome == Outcome::Delivered as i32)
    );
    second.trigger();
    d2.await.unwrap().unwrap();
}
