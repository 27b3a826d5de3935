//! REQUIRETLS (RFC 8689) on the way out, against real peers on loopback
//! through real DNS and the real resolver:
//!
//! - the peer that offers REQUIRETLS is a Tern ingress (no other MTA at hand
//!   implements it: Postfix does not, Exim dropped its experimental code),
//!   presenting a certificate for its MX name from a test CA that delivery
//!   trusts through `TERN_DELIVERY_TLS_CA_FILE`;
//! - the peer with verified TLS but no REQUIRETLS, and the one whose
//!   certificate names another host, are the Python peer
//!   (`tests/peers/smtp_peer.py`, TLS by OpenSSL) with certificates from the
//!   same CA;
//! - the peer without STARTTLS is Postfix's smtp-sink (tests/postfix.rs).
//!
//! The `test.` zone is DNSSEC-signed and validated for these tests
//! (`Harness::start_signed`), since §4.2.1 trusts MX hosts only from a
//! validated MX answer (MTA-STS, the alternative, is not implemented); one
//! test shows an unvalidated MX answer refused.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{BODY, Harness, PyPeer, WAIT, job, outcomes};
use prost::Message as _;
use tern_proto::{Envelope, Outcome};
use tern_runtime::Shutdown;
use tern_runtime::bus;
use tern_runtime::config::Source;
use tern_testkit::{TestPki, wait_for};

fn port(h: &Harness) -> String {
    h.base.port.clone()
}

fn requiretls_job(id: &str, destination: &str, rcpt: &str) -> tern_proto::Job {
    let mut j = job(id, destination, &[rcpt], BODY);
    j.require_tls = true;
    j
}

/// A Tern ingress on `ip:port` (the harness's MX port) presenting `cert`,
/// relaying for loopback clients (delivery connects from 127.0.0.1), and
/// publishing what it accepts to the harness's NATS.
async fn tern_ingress(
    h: &Harness,
    ip: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
    data: &std::path::Path,
) -> Shutdown {
    let listen = format!("{ip}:{}", port(h));
    let pairs = [
        ("smtp_listen", listen.as_str()),
        ("submission_listen", "127.0.0.1:0"),
        ("submissions_listen", "127.0.0.1:0"),
        ("api_listen", ""),
        ("ingress_grpc_listen", "127.0.0.1:0"),
        ("ingress_admin_listen", "127.0.0.1:0"),
        // Never asked: relayed recipients are not checked.
        ("mailbox_url", "http://127.0.0.1:9"),
        ("nats_url", h.base.nats_url.as_str()),
        ("data_dir", data.to_str().unwrap()),
        ("hostname", "mx.rtls.test"),
        ("local_domains", "localhost"),
        ("trusted_networks", "127.0.0.0/8"),
        ("tls_cert", cert.to_str().unwrap()),
        ("tls_key", key.to_str().unwrap()),
        ("inbound_checks", "false"),
        ("shutdown_grace", "5s"),
    ];
    let src = Source::from_pairs(pairs);
    let config = tern_ingress::Config::from_source(&src).unwrap();
    src.finish().unwrap();
    let bound = tern_ingress::bind(config).await.unwrap();
    let shutdown = Shutdown::new();
    tokio::spawn(bound.run(shutdown.clone()));
    shutdown
}

/// The envelopes the ingress spooled so far.
async fn spooled(h: &Harness) -> Vec<Envelope> {
    let Ok(mut stream) = h.js.get_stream(bus::SPOOL_STREAM).await else {
        return Vec::new();
    };
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(Envelope::decode(m.payload).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn delivered_over_verified_tls_to_a_host_offering_requiretls() {
    let pki = TestPki::new();
    let ca = pki.ca.to_str().unwrap().to_string();
    let h = Harness::start_signed(&[("delivery_tls_ca_file", ca.as_str())]).await;
    let (cert, key) = pki.issue_server("mx-rtls", &["mx.rtls.test"]);
    let data = tempfile::tempdir().unwrap();
    let ingress = tern_ingress(&h, "127.0.0.21", &cert, &key, data.path()).await;

    h.publish(&requiretls_job("r1", "rtls.test", "bob@rtls.test"))
        .await;
    let r = h.result_of("rtls.test", "r1").await;
    assert_eq!(
        outcomes(&r),
        vec![("bob@rtls.test".to_string(), Outcome::Delivered)],
        "{r:?}"
    );
    assert_eq!(r.results[0].remote_host, "mx.rtls.test");
    // The ingress took it with the REQUIRETLS parameter (§4.2.1: the
    // requirement travels on), over TLS, and tagged it (§4.1).
    let env = wait_for("the ingress spooled the message", WAIT, || async {
        spooled(&h).await.into_iter().next()
    })
    .await;
    assert!(env.require_tls, "{env:?}");
    assert!(!env.tls_optional);
    assert_eq!(env.mail_from, "sender@origin.example");
    let rcpts: Vec<_> = env.rcpts.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(rcpts, ["bob@rtls.test"]);
    ingress.trigger();
}

#[tokio::test]
async fn hosts_with_verified_tls_but_no_requiretls_or_the_wrong_name_get_nothing() {
    let pki = TestPki::new();
    let ca = pki.ca.to_str().unwrap().to_string();
    let h = Harness::start_signed(&[("delivery_tls_ca_file", ca.as_str())]).await;

    // A certificate from the trusted CA for the MX name, but no REQUIRETLS
    // after STARTTLS: 5.7.30 (RFC 8689 §4.2.1, "REQUIRETLS not supported by
    // server").
    let (cert, key) = pki.issue_server("mx-nortls", &["mx.nortls.test"]);
    let nortls = PyPeer::start_with_cert("127.0.0.22", &port(&h), &cert, &key, &[]);
    h.publish(&requiretls_job("n1", "nortls.test", "carol@nortls.test"))
        .await;
    let r = h.result_of("nortls.test", "n1").await;
    assert_eq!(r.results[0].outcome, Outcome::Bounced as i32, "{r:?}");
    assert_eq!(r.results[0].enhanced, "5.7.30", "{:?}", r.results[0]);
    assert!(r.results[0].reply.contains("REQUIRETLS"), "{r:?}");
    assert!(nortls.messages().is_empty(), "nothing sent");
    assert_eq!(nortls.connections().len(), 1, "and no plaintext retry");
    // Without REQUIRETLS the same host takes mail as before.
    h.publish(&job("n2", "nortls.test", &["carol@nortls.test"], BODY))
        .await;
    let r = h.result_of("nortls.test", "n2").await;
    assert_eq!(r.results[0].outcome, Outcome::Delivered as i32, "{r:?}");
    assert_eq!(nortls.messages().len(), 1);
    assert!(
        !nortls.messages()[0]
            .mail_params
            .iter()
            .any(|p| p.eq_ignore_ascii_case("REQUIRETLS"))
    );

    // A certificate from the trusted CA, but for another host than the MX
    // (§4.2.1: the MX host name "MUST match" the certificate): 5.7.10.
    let (cert, key) = pki.issue_server("other", &["mx.other.test"]);
    let wrong = PyPeer::start_with_cert("127.0.0.23", &port(&h), &cert, &key, &[]);
    h.publish(&requiretls_job(
        "w1",
        "wrongname.test",
        "dave@wrongname.test",
    ))
    .await;
    let r = h.result_of("wrongname.test", "w1").await;
    assert_eq!(r.results[0].outcome, Outcome::Bounced as i32, "{r:?}");
    assert_eq!(r.results[0].enhanced, "5.7.10", "{:?}", r.results[0]);
    assert!(wrong.messages().is_empty(), "nothing sent");
    assert_eq!(wrong.connections().len(), 1, "and no plaintext retry");

    // A self-signed certificate (no chain to a trusted root): 5.7.10 too.
    let selfsigned = PyPeer::start("127.0.0.5", &port(&h), true, &[]);
    h.publish(&requiretls_job("s1", "tls.test", "erin@tls.test"))
        .await;
    let r = h.result_of("tls.test", "s1").await;
    assert_eq!(r.results[0].outcome, Outcome::Bounced as i32, "{r:?}");
    assert_eq!(r.results[0].enhanced, "5.7.10", "{:?}", r.results[0]);
    assert!(selfsigned.messages().is_empty());
}

#[tokio::test]
async fn an_unvalidated_mx_answer_is_refused_but_a_report_still_goes() {
    // No DNSSEC: the MX answer for tls.test is not authenticated.
    let h = Harness::start().await;
    let peer = PyPeer::start("127.0.0.5", &port(&h), true, &[]);

    // §4.2.1 step 2: without DNSSEC (or MTA-STS) the MX host cannot be
    // trusted: bounced before any connection.
    h.publish(&requiretls_job("u1", "tls.test", "frank@tls.test"))
        .await;
    let r = h.result_of("tls.test", "u1").await;
    assert_eq!(r.results[0].outcome, Outcome::Bounced as i32, "{r:?}");
    assert_eq!(r.results[0].enhanced, "5.7.10", "{:?}", r.results[0]);
    assert!(r.results[0].reply.contains("DNSSEC"), "{r:?}");
    assert!(peer.connections().is_empty(), "no connection was made");

    // A report about a REQUIRETLS message (empty return path, require_tls
    // set by the queue) is not held to §4.2.1 and must not be discarded for
    // want of a REQUIRETLS path (§5): it goes as an ordinary message, over
    // opportunistic TLS, without the REQUIRETLS parameter (§2 allows it
    // only on a session that meets the requirements).
    let mut report = requiretls_job("u2", "tls.test", "frank@tls.test");
    report.mail_from = String::new();
    h.publish(&report).await;
    let r = h.result_of("tls.test", "u2").await;
    assert_eq!(r.results[0].outcome, Outcome::Delivered as i32, "{r:?}");
    let msgs = peer.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].mail_from, "");
    assert!(msgs[0].tls.is_some());
    assert!(
        !msgs[0]
            .mail_params
            .iter()
            .any(|p| p.eq_ignore_ascii_case("REQUIRETLS")),
        "{:?}",
        msgs[0].mail_params
    );
}

#[tokio::test]
async fn a_report_falls_back_when_no_host_offers_requiretls() {
    let pki = TestPki::new();
    let ca = pki.ca.to_str().unwrap().to_string();
    let h = Harness::start_signed(&[("delivery_tls_ca_file", ca.as_str())]).await;
    let (cert, key) = pki.issue_server("mx-nortls", &["mx.nortls.test"]);
    let peer = PyPeer::start_with_cert("127.0.0.22", &port(&h), &cert, &key, &[]);
    let mut report = requiretls_job("f1", "nortls.test", "gina@nortls.test");
    report.mail_from = String::new();
    h.publish(&report).await;
    let r = h.result_of("nortls.test", "f1").await;
    // §5: tried with REQUIRETLS first (one session refused for 5.7.30),
    // then sent as an ordinary report rather than discarded.
    assert_eq!(r.results[0].outcome, Outcome::Delivered as i32, "{r:?}");
    assert_eq!(peer.connections().len(), 2);
    let msgs = peer.messages();
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].tls.is_some());
    assert!(
        !msgs[0]
            .mail_params
            .iter()
            .any(|p| p.eq_ignore_ascii_case("REQUIRETLS"))
    );
}

/// A host whose TLS handshake never completes (STARTTLS answered 220,
/// then silence) says nothing final about whether it can take the message:
/// a REQUIRETLS job is deferred for another try, not bounced, and nothing
/// goes out in clear. (A certificate that does not verify bounces, above.)
#[tokio::test]
async fn a_handshake_that_times_out_defers_a_requiretls_message() {
    let pki = TestPki::new();
    let ca = pki.ca.to_str().unwrap().to_string();
    let h = Harness::start_signed(&[("delivery_tls_ca_file", ca.as_str())]).await;
    let (cert, key) = pki.issue_server("mx-stall", &["mx.stall.test"]);
    let stall = PyPeer::start_with_cert("127.0.0.24", &port(&h), &cert, &key, &["--tls-stall"]);
    h.publish(&requiretls_job("t1", "stall.test", "hal@stall.test"))
        .await;
    let r = h.result_of("stall.test", "t1").await;
    assert_eq!(r.results[0].outcome, Outcome::Deferred as i32, "{r:?}");
    assert_eq!(r.results[0].enhanced, "4.7.5", "{:?}", r.results[0]);
    assert!(r.results[0].reply.contains("timed out"), "{r:?}");
    assert!(stall.messages().is_empty(), "nothing sent");
    assert_eq!(stall.connections().len(), 1, "and no plaintext retry");
}
