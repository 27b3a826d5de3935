//! Ingress against a real nats-server, speaking SMTP over loopback.
//!
//! The mailbox service is replaced by a small in-test `Accounts` gRPC server
//! that answers from a fixed set of users; the real mailbox is tested end to
//! end elsewhere.

mod common;

use std::time::Duration;

use common::*;
use tern_testkit::{NatsServer, wait_for};
use tokio::net::TcpStream;

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn accepted_message_is_on_the_spool_byte_identical() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&["bob@example.com", "carol@example.org"]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[]).await;

    let mut c = Smtp::connect(ingress.addr("smtp")).await;
    let (code, ehlo) = c.cmd("EHLO client.test").await;
    assert_eq!(code, 250);
    for ext in [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "SIZE 26214400",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
        "STARTTLS",
    ] {
        assert!(ehlo.contains(ext), "EHLO lacks {ext}: {ehlo}");
    }
    let (code, text) = c
        .cmd("MAIL FROM:<alice@remote.test> BODY=8BITMIME RET=HDRS ENVID=env+2B1")
        .await;
    assert_eq!(code, 250, "{text}");
    let (code, text) = c
        .cmd("RCPT TO:<bob@example.com> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@example.com")
        .await;
    assert_eq!(code, 250, "{text}");
    let (code, text) = c.cmd("RCPT TO:<carol@EXAMPLE.org>").await;
    assert_eq!(code, 250, "{text}");
    let (code, _) = c.cmd("DATA").await;
    assert_eq!(code, 354);
    // On the wire: a dot-stuffed line, 8-bit text and a blank line.
    c.send("Subject: test\r\nFrom: alice@remote.test\r\n\r\n..starts with a dot\r\nnaïve 8-bit\r\n\r\nend\r\n".as_bytes())
        .await;
    c.send(b".\r\n").await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 250, "{text}");
    let id = queued_id(&text);
    assert_eq!(id.len(), 26, "a ULID: {id}");
    let (code, _) = c.cmd("QUIT").await;
    assert_eq!(code, 221);
    c.expect_eof().await;

    let (env, headers) = spooled(&nats.url(), &id).await;
    assert_eq!(
        headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(id.as_str())
    );
    assert_eq!(env.id, id);
    assert_eq!(env.mail_from, "alice@remote.test");
    assert_eq!(env.helo, "client.test");
    assert_eq!(env.client_ip, "127.0.0.1");
    assert_eq!(env.envid, "env+1");
    assert_eq!(env.ret, tern_proto::DsnRet::Hdrs as i32);
    assert!(env.eight_bit);
    assert!(!env.smtputf8);
    assert!(env.received_at_unix_ms > 0);
    let rcpts: Vec<_> = env.rcpts.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(
        rcpts,
        ["bob@example.com", "carol@EXAMPLE.org"],
        "recorded as written"
    );
    assert_eq!(env.rcpts[0].notify, ["FAILURE", "DELAY"]);
    assert_eq!(env.rcpts[0].orcpt, "rfc822;bob@example.com");

    let body = inline_body(&env);
    assert_eq!(env.body.as_ref().map(|b| b.size), Some(body.len() as u64));
    let (received, rest) = split_received(&body);
    assert!(
        received.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (Tern) with ESMTP\r\n\tid "
        ),
        "{received}"
    );
    assert!(received.contains(&id), "{received}");
    assert!(
        !received.contains("for <"),
        "two recipients: no for clause: {received}"
    );
    assert!(received.ends_with(" +0000\r\n"), "{received}");
    assert_eq!(
        rest,
        "Subject: test\r\nFrom: alice@remote.test\r\n\r\n.starts with a dot\r\nnaïve 8-bit\r\n\r\nend\r\n".as_bytes()
    );

    // The metrics endpoint shows the session and the replies.
    let metrics = http_get(ingress.addr("ingress admin"), "/metrics")
        .await
        .expect("metrics");
    assert!(metrics.contains("tern_smtp_sessions_total"), "{metrics}");
    assert!(
        metrics.contains("tern_smtp_replies_total{code=\"250\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("tern_spool_publish_seconds"), "{metrics}");

    ingress.stop().await;
}

#[tokio::test]
async fn unknown_local_user_is_550_and_relay_is_denied_for_untrusted_clients() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&["bob@example.com"]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[]).await;

    let mut c = Smtp::connect(ingress.addr("smtp")).await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<alice@remote.test>").await;
    let (code, text) = c.cmd("RCPT TO:<nobody@example.com>").await;
    assert_eq!((code, &text[4..9]), (550, "5.1.1"), "{text}");
    let (code, text) = c.cmd("RCPT TO:<someone@elsewhere.test>").await;
    assert_eq!((code, &text[4..9]), (554, "5.7.1"), "{text}");
    let (code, text) = c.cmd("RCPT TO:<someone@[127.0.0.1]>").await;
    assert_eq!((code, &text[4..9]), (554, "5.7.1"), "{text}");
    // All recipients refused: DATA is refused too.
    let (code, text) = c.cmd("DATA").await;
    assert_eq!((code, &text[4..9]), (554, "5.5.1"), "{text}");
    // A known user still works in the same session.
    let (code, text) = c.cmd("RCPT TO:<Bob@Example.COM>").await;
    assert_eq!((code, &text[4..9]), (250, "2.1.5"), "{text}");
    c.cmd("QUIT").await;
    ingress.stop().await;
}

#[tokio::test]
async fn trusted_networks_may_relay() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&[]).await;
    let ingress = Ingress::start(
        &nats.url(),
        &mailbox,
        &[("trusted_networks", "10.0.0.0/8, 127.0.0.1/32")],
    )
    .await;

    // Trusted networks relay through the MX listener; submission always
    // wants STARTTLS and AUTH (tested in auth.rs).
    let mut c = Smtp::connect(ingress.addr("smtp")).await;
    c.cmd("EHLO laptop.test").await;
    let (code, text) = c
        .transaction(
            "me@example.com",
            &["friend@elsewhere.test"],
            b"Subject: out\r\n\r\nhi\r\n",
        )
        .await;
    assert_eq!(code, 250, "{text}");
    let (env, _) = spooled(&nats.url(), &queued_id(&text)).await;
    assert_eq!(env.rcpts[0].address, "friend@elsewhere.test");
    let body = inline_body(&env);
    let (received, rest) = split_received(&body);
    assert!(
        received.contains("\tfor <friend@elsewhere.test>;"),
        "{received}"
    );
    assert_eq!(rest, b"Subject: out\r\n\r\nhi\r\n");
    c.cmd("QUIT").await;
    ingress.stop().await;
}

#[tokio::test]
async fn mailbox_unreachable_is_451() {
    let nats = NatsServer::start().await;
    let ingress = Ingress::start(&nats.url(), &dead_url().await, &[]).await;
    let mut c = Smtp::connect(ingress.addr("smtp")).await;
    c.cmd("EHLO client.test").await;
    c.cmd("MAIL FROM:<alice@remote.test>").await;
    let (code, text) = c.cmd("RCPT TO:<bob@example.com>").await;
    assert_eq!((code, &text[4..9]), (451, "4.3.0"), "{text}");
    c.cmd("QUIT").await;
    ingress.stop().await;
}

#[tokio::test]
async fn nats_outage_gives_451_and_recovery_gives_250() {
    let mut nats = NatsServer::start().await;
    let mailbox = start_accounts(&["bob@example.com"]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[]).await;
    let smtp = ingress.addr("smtp");

    nats.stop();
    let mut c = Smtp::connect(smtp).await;
    c.cmd("EHLO client.test").await;
    let (code, text) = c
        .transaction(
            "alice@remote.test",
            &["bob@example.com"],
            b"Subject: during outage\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(
        (code, &text[4..9]),
        (451, "4.3.0"),
        "never 250 without the ack: {text}"
    );
    // The session goes on after the failure.
    let (code, _) = c.cmd("NOOP").await;
    assert_eq!(code, 250);
    c.cmd("QUIT").await;

    nats.restart().await;
    let id = wait_for(
        "a message to be accepted after NATS is back",
        Duration::from_secs(60),
        || async move {
            let mut c = Smtp::connect(smtp).await;
            c.cmd("EHLO client.test").await;
            let (code, text) = c
                .transaction(
                    "alice@remote.test",
                    &["bob@example.com"],
                    b"Subject: after outage\r\n\r\ny\r\n",
                )
                .await;
            c.cmd("QUIT").await;
            if code == 250 {
                Some(queued_id(&text))
            } else {
                assert_eq!((code, &text[4..9]), (451, "4.3.0"), "{text}");
                None
            }
        },
    )
    .await;
    let (env, _) = spooled(&nats.url(), &id).await;
    let body = inline_body(&env);
    let (_, rest) = split_received(&body);
    assert_eq!(rest, b"Subject: after outage\r\n\r\ny\r\n");
    ingress.stop().await;
}

#[tokio::test]
async fn pipelined_chunking_transaction() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&["bob@example.com"]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[]).await;
    let mut c = Smtp::connect(ingress.addr("smtp")).await;
    // One write: EHLO, MAIL, RCPT and two BDAT chunks (RFC 2920 + RFC 3030).
    c.send(b"EHLO client.test\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.com>\r\nBDAT 9\r\nSubject: BDAT 6 LAST\r\nz\r\n.\r\n").await;
    let mut codes = Vec::new();
    let mut last = String::new();
    for _ in 0..5 {
        let (code, text) = c.reply().await;
        codes.push(code);
        last = text;
    }
    assert_eq!(codes, [250, 250, 250, 250, 250]);
    let (env, _) = spooled(&nats.url(), &queued_id(&last)).await;
    assert_eq!(env.mail_from, "");
    let body = inline_body(&env);
    let (_, rest) = split_received(&body);
    assert_eq!(rest, b"Subject: z\r\n.\r\n");
    c.cmd("QUIT").await;
    ingress.stop().await;
}

#[tokio::test]
async fn shutdown_tells_idle_sessions_421_and_lets_transactions_finish() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&["bob@example.com"]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[]).await;
    let smtp = ingress.addr("smtp");

    let mut idle = Smtp::connect(smtp).await;
    idle.cmd("EHLO idle.test").await;
    let mut busy = Smtp::connect(smtp).await;
    busy.cmd("EHLO busy.test").await;
    busy.cmd("MAIL FROM:<alice@remote.test>").await;
    busy.cmd("RCPT TO:<bob@example.com>").await;
    let (code, _) = busy.cmd("DATA").await;
    assert_eq!(code, 354);

    ingress.shutdown.trigger();
    let (code, text) = idle.reply().await;
    assert_eq!((code, &text[4..9]), (421, "4.3.2"), "{text}");
    idle.expect_eof().await;

    // The transaction in progress completes, then that session is closed too.
    busy.send(b"Subject: in flight\r\n\r\nstill here\r\n.\r\n")
        .await;
    let (code, text) = busy.reply().await;
    assert_eq!(code, 250, "{text}");
    let id = queued_id(&text);
    let (code, text) = busy.reply().await;
    assert_eq!((code, &text[4..9]), (421, "4.3.2"), "{text}");
    busy.expect_eof().await;

    let result = tokio::time::timeout(Duration::from_secs(15), ingress.task)
        .await
        .expect("run returns after draining")
        .expect("join");
    assert!(result.is_ok(), "{result:?}");
    // No longer accepting.
    assert!(TcpStream::connect(smtp).await.is_err());
    spooled(&nats.url(), &id).await;
}

/// Python's smtplib as an independent client: plain, STARTTLS and implicit TLS.
#[tokio::test]
async fn python_smtplib_plain_starttls_and_implicit_tls() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("python3 not found; skipping the smtplib interop test");
        return;
    }
    let nats = NatsServer::start().await;
    let (mailbox, _) =
        start_accounts_auth(&["bob@example.com"], &[("alice@example.com", "pw")]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[]).await;
    let script = r#"
import smtplib, ssl, sys
mode, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
msg = ("Subject: via %s\r\n\r\nhello from smtplib\r\n" % mode).encode()
if mode == "submissions":
    s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=15)
else:
    s = smtplib.SMTP("127.0.0.1", port, timeout=15)
s.ehlo("py.test")
if mode == "starttls":
    s.starttls(context=ctx)
    s.ehlo("py.test")
    assert not s.has_extn("starttls")
sender = "alice@remote.test"
if mode != "plain":
    # Submission: AUTH (over TLS) before MAIL, with one's own address.
    s.login("alice@example.com", "pw")
    sender = "alice@example.com"
try:
    s.sendmail(sender, ["bob@example.com", "nobody@example.com"], msg)
except smtplib.SMTPRecipientsRefused:
    sys.exit(3)
code, text = s.docmd("NOOP")
assert code == 250
s.quit()
"#;
    let ports = [
        ("plain", ingress.addr("smtp")),
        ("starttls", ingress.addr("submission")),
        ("submissions", ingress.addr("submissions")),
    ];
    for (mode, addr) in ports {
        let out = tokio::process::Command::new("python3")
            .args(["-c", script, mode, &addr.port().to_string()])
            .output()
            .await
            .expect("run python3");
        assert!(
            out.status.success(),
            "{mode}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ingress.stop().await;
}
