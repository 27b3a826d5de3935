//! Outbound DKIM: what ingress signs, verified by an independent
//! implementation (PyPI's dkimpy, key records fetched over real DNS from the
//! in-process DNS server), and what it leaves unsigned or defers.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use tern_dkim::Algorithm;
use tern_testkit::{DnsServer, NatsServer, dkimpy_verify, wait_for};

fn b64(s: &str) -> String {
    tern_smtp::sasl::base64_encode(s.as_bytes())
}

/// Generate keys into `dir` and return the zone records publishing them.
fn keys(dir: &Path, domain: &str, which: &[(&str, Algorithm)]) -> String {
    which
        .iter()
        .map(|(selector, alg)| {
            let (_, record) = tern_dkim::keygen(dir, domain, selector, *alg, 2048).unwrap();
            record.zone_line() + "\n"
        })
        .collect()
}

async fn dns_for(origin: &str, records: &str) -> DnsServer {
    let zone = format!(
        "$ORIGIN {origin}.\n$TTL 60\n@ IN SOA ns.{origin}. admin.{origin}. 1 3600 600 86400 60\n@ IN NS ns.{origin}.\nns IN A 127.0.0.1\n{records}"
    );
    DnsServer::start(&[(&format!("{origin}."), &zone)]).await
}

/// The message as stored in the spool, without our `Received:`.
async fn stored(nats: &NatsServer, reply: &(u16, String)) -> Vec<u8> {
    assert_eq!(reply.0, 250, "{}", reply.1);
    let (env, _) = spooled(&nats.url(), &queued_id(&reply.1)).await;
    let body = inline_body(&env);
    split_received(&body).1.to_vec()
}

async fn verify(dns: &DnsServer, message: Vec<u8>) -> Vec<tern_testkit::DkimpyVerdict> {
    let addr = dns.addr();
    tokio::task::spawn_blocking(move || dkimpy_verify(addr, &message))
        .await
        .unwrap()
}

fn signatures(message: &[u8]) -> usize {
    String::from_utf8_lossy(message)
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .matches("DKIM-Signature:")
        .count()
}

/// 8-bit body, a long folded header, and lines that are dot-stuffed on the wire.
const WIRE: &[u8] = "From: Alice <alice@example.com>\r\n\
To: Bob <bob@remote.test>\r\n\
Subject: a long subject line that goes on and on so that it has to be\r\n\
\tfolded over several lines, as mail clients do with long headers\r\n\
Date: Wed, 2 Dec 2026 22:00:00 +0000\r\n\
Message-ID: <dkim-1@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
List-Unsubscribe: <https://example.com/u/1>\r\n\
List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\
\r\n\
Grüße aus Köln, naïve café.\r\n\
..a line that starts with a dot\r\n\
...\r\n\
trailing   spaces   \r\n\
\r\n\
\r\n"
    .as_bytes();

async fn submit(addr: std::net::SocketAddr, from: &str, body: &[u8]) -> (u16, String) {
    let mut c = Smtp::connect(addr).await;
    c.cmd("EHLO laptop.test").await;
    let (code, text) = c
        .cmd(&format!("AUTH PLAIN {}", b64("\0alice@example.com\0pw")))
        .await;
    assert_eq!(code, 235, "{text}");
    let (code, text) = c.cmd(&format!("MAIL FROM:<{from}> BODY=8BITMIME")).await;
    assert_eq!(code, 250, "{text}");
    let (code, text) = c.cmd("RCPT TO:<bob@remote.test>").await;
    assert_eq!(code, 250, "{text}");
    let (code, text) = c.cmd("DATA").await;
    assert_eq!(code, 354, "{text}");
    c.send(body).await;
    c.send(b".\r\n").await;
    let r = c.reply().await;
    c.cmd("QUIT").await;
    r
}

async fn relay(addr: std::net::SocketAddr, body: &[u8]) -> (u16, String) {
    let mut c = Smtp::connect(addr).await;
    c.cmd("EHLO app.test").await;
    let r = c
        .transaction("app@example.com", &["bob@remote.test"], body)
        .await;
    c.cmd("QUIT").await;
    r
}

#[tokio::test]
async fn authenticated_submission_is_dual_signed_and_dkimpy_verifies_both() {
    let keydir = tempfile::tempdir().unwrap();
    let zone = keys(
        keydir.path(),
        "example.com",
        &[("r2026", Algorithm::Rsa), ("e2026", Algorithm::Ed25519)],
    );
    let dns = dns_for("example.com", &zone).await;
    let nats = NatsServer::start().await;
    let (mailbox, _) = start_accounts_auth(&[], &[("alice@example.com", "pw")]).await;
    let dir = keydir.path().to_str().unwrap();
    let ingress = Ingress::start(
        &nats.url(),
        &mailbox,
        &[
            ("auth_plaintext", "true"),
            ("dkim_keys_dir", dir),
            ("dkim_domains", "example.com"),
            ("dkim_expiry", "7d"),
        ],
    )
    .await;

    let msg = stored(
        &nats,
        &submit(ingress.addr("submission"), "alice@example.com", WIRE).await,
    )
    .await;
    let text = String::from_utf8_lossy(&msg);
    assert!(
        text.contains("c=relaxed/relaxed") && (text.contains(" x=") || text.contains("\tx=")),
        "{text}"
    );
    let mut got = verify(&dns, msg.clone()).await;
    got.sort_by(|a, b| a.algorithm.cmp(&b.algorithm));
    let summary: Vec<(&str, &str, &str, bool)> = got
        .iter()
        .map(|v| {
            (
                v.algorithm.as_str(),
                v.domain.as_str(),
                v.selector.as_str(),
                v.pass,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("ed25519-sha256", "example.com", "e2026", true),
            ("rsa-sha256", "example.com", "r2026", true)
        ]
    );
    // The body as the client meant it (dot-unstuffed) is what was signed.
    assert!(
        text.contains("\r\n.a line that starts with a dot\r\n..\r\n"),
        "{text}"
    );

    // From, Subject, Date and To are oversigned: one more instance added
    // after signing breaks both signatures.
    let mut forged = b"Subject: an added subject\r\n".to_vec();
    forged.extend_from_slice(&msg);
    assert!(verify(&dns, forged).await.iter().all(|v| !v.pass));
    // So does a changed body.
    let tampered = String::from_utf8_lossy(&msg)
        .replace("Köln", "Bonn")
        .into_bytes();
    assert!(verify(&dns, tampered).await.iter().all(|v| !v.pass));

    // A From subdomain is signed with its parent's keys (DMARC relaxed alignment).
    let sub = String::from_utf8_lossy(WIRE).replace("alice@example.com", "news@mail.example.com");
    let msg = stored(
        &nats,
        &submit(
            ingress.addr("submission"),
            "alice@example.com",
            sub.as_bytes(),
        )
        .await,
    )
    .await;
    let got = verify(&dns, msg).await;
    assert_eq!(got.len(), 2);
    assert!(
        got.iter().all(|v| v.pass && v.domain == "example.com"),
        "{got:?}"
    );
    ingress.stop().await;
}

#[tokio::test]
async fn unauthenticated_untrusted_mail_and_from_domains_without_keys_are_not_signed() {
    let keydir = tempfile::tempdir().unwrap();
    keys(keydir.path(), "example.com", &[("e1", Algorithm::Ed25519)]);
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&["bob@example.org"]).await;
    let dir = keydir.path().to_str().unwrap();
    let ingress = Ingress::start(&nats.url(), &mailbox, &[("dkim_keys_dir", dir)]).await;
    // Inbound MX mail claiming our domain in From: stored unsigned.
    let mut c = Smtp::connect(ingress.addr("smtp")).await;
    c.cmd("EHLO stranger.test").await;
    let r = c
        .transaction("alice@example.com", &["bob@example.org"], WIRE)
        .await;
    c.cmd("QUIT").await;
    assert_eq!(signatures(&stored(&nats, &r).await), 0);
    ingress.stop().await;

    // A trusted network relays: signed for example.com, not for a domain without a key.
    let ingress = Ingress::start(
        &nats.url(),
        &mailbox,
        &[("dkim_keys_dir", dir), ("trusted_networks", "127.0.0.0/8")],
    )
    .await;
    let signed = stored(&nats, &relay(ingress.addr("smtp"), WIRE).await).await;
    assert_eq!(signatures(&signed), 1);
    let other = String::from_utf8_lossy(WIRE).replace("alice@example.com", "alice@elsewhere.test");
    let unsigned = stored(&nats, &relay(ingress.addr("smtp"), other.as_bytes()).await).await;
    assert_eq!(signatures(&unsigned), 0);
    ingress.stop().await;
}

#[tokio::test]
async fn an_unsignable_message_is_refused_or_sent_unsigned_as_configured() {
    let keydir = tempfile::tempdir().unwrap();
    keys(keydir.path(), "example.com", &[("e1", Algorithm::Ed25519)]);
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&[]).await;
    let dir = keydir.path().to_str().unwrap();
    let no_from = b"To: bob@remote.test\r\nSubject: who sent this?\r\n\r\nbody\r\n";
    let two_froms = b"From: a@example.com\r\nFrom: b@example.com\r\n\r\nbody\r\n";
    let trusted = ("trusted_networks", "127.0.0.0/8");

    let ingress = Ingress::start(&nats.url(), &mailbox, &[("dkim_keys_dir", dir), trusted]).await;
    for body in [&no_from[..], &two_froms[..]] {
        let (code, text) = relay(ingress.addr("smtp"), body).await;
        // No single From domain is the message's own fault: permanent.
        assert_eq!((code, &text[..9]), (550, "550 5.6.0"), "{text}");
    }
    let metrics = http_get(ingress.addr("ingress admin"), "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "tern_ingress_dkim_sign_failures_total{reason=\"no_from\",action=\"defer\"} 1"
        ),
        "{metrics}"
    );
    ingress.stop().await;

    let ingress = Ingress::start(
        &nats.url(),
        &mailbox,
        &[("dkim_keys_dir", dir), trusted, ("dkim_on_failure", "send")],
    )
    .await;
    let msg = stored(&nats, &relay(ingress.addr("smtp"), no_from).await).await;
    assert_eq!(signatures(&msg), 0);
    ingress.stop().await;
}

#[tokio::test]
async fn a_key_added_while_running_signs_from_then_on_and_a_missing_key_stops_start_up() {
    let keydir = tempfile::tempdir().unwrap();
    let mut zone = keys(keydir.path(), "example.com", &[("r1", Algorithm::Rsa)]);
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&[]).await;
    let dir = keydir.path().to_str().unwrap();
    let ingress = Ingress::start(
        &nats.url(),
        &mailbox,
        &[
            ("dkim_keys_dir", dir),
            ("trusted_networks", "127.0.0.0/8"),
            ("dkim_reload_interval", "100ms"),
        ],
    )
    .await;
    assert_eq!(
        signatures(&stored(&nats, &relay(ingress.addr("smtp"), WIRE).await).await),
        1
    );
    zone += &keys(keydir.path(), "example.com", &[("e1", Algorithm::Ed25519)]);
    let addr = ingress.addr("smtp");
    let msg = wait_for("the new key to sign", Duration::from_secs(10), || {
        let nats = &nats;
        async move {
            let m = stored(nats, &relay(addr, WIRE).await).await;
            (signatures(&m) == 2).then_some(m)
        }
    })
    .await;
    let dns = dns_for("example.com", &zone).await;
    let got = verify(&dns, msg).await;
    assert!(got.len() == 2 && got.iter().all(|v| v.pass), "{got:?}");
    ingress.stop().await;

    // A configured domain without a key: start-up fails, naming the file.
    let src = tern_runtime::config::Source::from_pairs(vec![
        ("nats_url", nats.url().as_str()),
        ("mailbox_url", mailbox.as_str()),
        ("dkim_keys_dir", dir),
        ("dkim_domains", "example.com,example.net"),
        ("smtp_listen", "127.0.0.1:0"),
    ]);
    let config = tern_ingress::Config::from_source(&src).unwrap();
    let err = tern_ingress::bind(config).await.err().unwrap().to_string();
    assert!(
        err.contains("SELECTOR._domainkey.example.net.rsa.pem"),
        "{err}"
    );
}
