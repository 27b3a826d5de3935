//! AUTH (RFC 4954) on the submission listeners, against a real nats-server
//! and real clients (swaks, raw SMTP).
//!
//! The mailbox's `Accounts` service is the small in-test gRPC server from
//! `common` (fixed users and passwords): the ingress side of the contract
//! is what is under test, the password store has its own tests in
//! services/mailbox, and this keeps these tests free of PostgreSQL.

mod common;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tern_testkit::NatsServer;

fn b64(s: &str) -> String {
    tern_smtp::sasl::base64_encode(s.as_bytes())
}

fn swaks_present() -> bool {
    std::path::Path::new("/usr/bin/swaks").exists()
}

/// Run swaks with `args`; returns (success, transcript).
async fn swaks(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("swaks")
        .args(args)
        .args(["--timeout", "15", "--hide-informational"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run swaks");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The id in swaks' transcript line `<~  250 2.0.0 Ok: queued as <id>`.
fn swaks_id(transcript: &str) -> String {
    transcript
        .lines()
        .find_map(|l| l.split("Ok: queued as ").nth(1))
        .unwrap_or_else(|| panic!("no queued id in {transcript}"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn swaks_submission_starttls_auth_plain_and_login_with_pipelining() {
    if !swaks_present() {
        panic!("swaks is required (scripts/deps.sh --test installs it)");
    }
    let nats = NatsServer::start().await;
    let (mailbox, _) =
        start_accounts_auth(&["bob@example.com"], &[("alice@example.com", "s3cret")]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[]).await;
    let port = ingress.addr("submission").port().to_string();
    for (mech, extra) in [("PLAIN", None), ("LOGIN", Some("--pipeline"))] {
        let mut args = vec![
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--tls",
            "--auth",
            mech,
            "--auth-user",
            "alice@example.com",
            "--auth-password",
            "s3cret",
            "--from",
            "alice@example.com",
            "--to",
            "friend@elsewhere.test",
            "--ehlo",
            "laptop.test",
            "--header",
            "Subject: via swaks",
        ];
        args.extend(extra);
        let (ok, t) = swaks(&args).await;
        assert!(ok, "{mech}: {t}");
        assert!(t.contains("235 2.7.0"), "{t}");
        let id = swaks_id(&t);
        let (env, _) = spooled(&nats.url(), &id).await;
        // Authenticated: relaying to another domain is allowed, and the
        // user is in the envelope and the trace header.
        assert_eq!(env.auth_user, "alice@example.com");
        assert_eq!(env.rcpts[0].address, "friend@elsewhere.test");
        let body = inline_body(&env);
        let (received, _) = split_received(&body);
        assert!(received.contains("with ESMTPSA"), "{received}");
        assert!(received.contains("(TLSv1.3 TLS13_"), "{received}");
        assert!(
            received.contains("; authenticated as alice@example.com)"),
            "{received}"
        );
    }
    ingress.stop().await;
}

#[tokio::test]
async fn submission_wants_starttls_then_auth_and_the_senders_own_address() {
    let nats = NatsServer::start().await;
    let (mailbox, _) = start_accounts_auth(&[], &[("alice@example.com", "pw")]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[]).await;

    // In clear text on 587 nothing but STARTTLS goes.
    let mut c = Smtp::connect(ingress.addr("submission")).await;
    let (_, ehlo) = c.cmd("EHLO laptop.test").await;
    assert!(
        ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    let (code, text) = c.cmd("MAIL FROM:<alice@example.com>").await;
    assert_eq!((code, &text[4..9]), (530, "5.7.0"), "{text}");
    let auth = format!("AUTH PLAIN {}", b64("\0alice@example.com\0pw"));
    let (code, text) = c.cmd(&auth).await;
    assert_eq!((code, &text[4..9]), (530, "5.7.0"), "{text}");
    c.cmd("QUIT").await;

    if !swaks_present() {
        panic!("swaks is required");
    }
    let port = ingress.addr("submissions").port().to_string();
    // Implicit TLS without AUTH: MAIL is refused.
    let (ok, t) = swaks(&[
        "--server",
        "127.0.0.1",
        "--port",
        &port,
        "--tlsc",
        "--from",
        "alice@example.com",
        "--to",
        "x@elsewhere.test",
    ])
    .await;
    assert!(!ok && t.contains("530 5.7.0"), "{t}");
    // Authenticated, but someone else's sender address.
    let (ok, t) = swaks(&[
        "--server",
        "127.0.0.1",
        "--port",
        &port,
        "--tlsc",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice@example.com",
        "--auth-password",
        "pw",
        "--from",
        "ceo@example.com",
        "--to",
        "x@elsewhere.test",
    ])
    .await;
    assert!(!ok && t.contains("553 5.7.1"), "{t}");
    ingress.stop().await;
}

#[tokio::test]
async fn auth_failures_are_delayed_then_disconnected_and_locked_out() {
    let nats = NatsServer::start().await;
    let (mailbox, calls) = start_accounts_auth(&[], &[("alice@example.com", "pw")]).await;
    let ingress = Ingress::start(
        &nats.url(),
        &mailbox,
        &[
            // Plain text so a raw client can speak AUTH; the policy is the same.
            ("auth_plaintext", "true"),
            ("auth_max_failures", "3"),
            ("auth_failure_delay", "300ms"),
        ],
    )
    .await;
    let mut c = Smtp::connect(ingress.addr("submission")).await;
    c.cmd("EHLO guesser.test").await;
    let mut elapsed = Vec::new();
    for guess in ["a", "b", "c"] {
        let start = Instant::now();
        let (code, text) = c
            .cmd(&format!(
                "AUTH PLAIN {}",
                b64(&format!("\0alice@example.com\0{guess}"))
            ))
            .await;
        elapsed.push(start.elapsed());
        assert_eq!((code, &text[4..9]), (535, "5.7.8"), "{text}");
    }
    // Each failure waits longer: 300 ms, 600 ms, 900 ms.
    assert!(elapsed[0] >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed[2] >= Duration::from_millis(900), "{elapsed:?}");
    let (code, text) = c.reply().await;
    assert_eq!((code, &text[4..9]), (421, "4.7.0"), "{text}");
    c.expect_eof().await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Locked out: even the right password is not tried against the mailbox.
    let mut c = Smtp::connect(ingress.addr("submission")).await;
    c.cmd("EHLO guesser.test").await;
    let (code, text) = c
        .cmd(&format!("AUTH PLAIN {}", b64("\0alice@example.com\0pw")))
        .await;
    assert_eq!((code, &text[4..9]), (454, "4.7.0"), "{text}");
    let (code, _) = c.reply().await;
    assert_eq!(code, 421);
    c.expect_eof().await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    ingress.stop().await;
}

#[tokio::test]
async fn auth_login_in_clear_text_only_when_configured_and_mailbox_down_is_454() {
    let nats = NatsServer::start().await;
    let (mailbox, _) = start_accounts_auth(&[], &[("alice@example.com", "pw")]).await;
    // Default: MX offers no AUTH at all.
    let ingress = Ingress::start(&nats.url(), &mailbox, &[("auth_plaintext", "true")]).await;
    let mut c = Smtp::connect(ingress.addr("smtp")).await;
    let (_, ehlo) = c.cmd("EHLO x.test").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let (code, _) = c.cmd("AUTH LOGIN").await;
    assert_eq!(code, 502);

    let mut c = Smtp::connect(ingress.addr("submission")).await;
    let (_, ehlo) = c.cmd("EHLO x.test").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    assert_eq!(c.cmd("AUTH LOGIN").await.1, "334 VXNlcm5hbWU6\r\n");
    assert_eq!(
        c.cmd(&b64("Alice@Example.com")).await.1,
        "334 UGFzc3dvcmQ6\r\n"
    );
    let (code, text) = c.cmd(&b64("pw")).await;
    assert_eq!((code, &text[4..9]), (235, "2.7.0"), "{text}");
    // The canonical address from the mailbox is the identity.
    let (code, text) = c.cmd("MAIL FROM:<alice@example.com>").await;
    assert_eq!(code, 250, "{text}");
    ingress.stop().await;

    let ingress = Ingress::start(
        &nats.url(),
        &dead_url().await,
        &[("auth_plaintext", "true")],
    )
    .await;
    let mut c = Smtp::connect(ingress.addr("submission")).await;
    c.cmd("EHLO x.test").await;
    let (code, text) = c
        .cmd(&format!("AUTH PLAIN {}", b64("\0alice@example.com\0pw")))
        .await;
    assert_eq!((code, &text[4..9]), (454, "4.7.0"), "{text}");
    ingress.stop().await;
}
