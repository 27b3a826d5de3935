//! End to end through every stage, with real clients (Python's smtplib,
//! poplib, imaplib), a real nats-server, a real DNS server and a real SMTP
//! peer. Nothing here is mocked.

mod common;

use std::time::Duration;

use common::{Stack, python, smtp_send};
use opentelemetry::trace::TraceId;

const MESSAGE: &[u8] = b"From: Sender <sender@example.org>\r\n\
To: Alice <alice@localhost>\r\n\
Subject: walking skeleton\r\n\
Message-ID: <skeleton-1@example.org>\r\n\
\r\n\
Hello Alice,\r\n\
.a line that starts with a dot survives dot-stuffing\r\n\
\r\n\
-- \r\n\
sender\r\n";

/// The stored message is the sent one with only trace headers prepended.
fn assert_same_message(got: &[u8], sent: &[u8]) {
    assert!(
        got.ends_with(sent),
        "retrieved message does not end with the sent bytes:\n{}",
        String::from_utf8_lossy(got)
    );
    let prefix = String::from_utf8_lossy(&got[..got.len() - sent.len()]).to_string();
    for line in prefix.split("\r\n").filter(|l| !l.is_empty()) {
        // Authentication-Results: the MX's inbound checks (RFC 8601).
        let trace_header = [
            "Received:",
            "Return-Path:",
            "Delivered-To:",
            "Authentication-Results:",
            " ",
            "\t",
        ]
        .iter()
        .any(|h| line.starts_with(h));
        assert!(
            trace_header,
            "unexpected header added in front of the message: {line:?}"
        );
    }
}

/// Adds alice, sends her `MESSAGE` over SMTP and reads it back over POP3.
async fn mail_to_alice_over_smtp_and_pop3(stack: &Stack) {
    stack.add_user("alice@localhost", "wonderland").await;
    let reply = smtp_send(
        stack.addr("smtp"),
        "sender@example.org",
        &["alice@localhost"],
        MESSAGE,
    )
    .await;
    assert!(reply.starts_with("250"), "SMTP reply: {reply}");
    let pop3 = stack.addr("pop3");
    let got = python(POP, &[pop3.ip().to_string(), pop3.port().to_string()]).await;
    assert_same_message(&got, MESSAGE);
}

/// Waits (20 s at most) for alice's one message over POP3 and prints it.
const POP: &str = r#"
import poplib, sys, time
deadline = time.time() + 20
while True:
    p = poplib.POP3(sys.argv[1], int(sys.argv[2]), timeout=10)
    p.user('alice@localhost'); p.pass_('wonderland')
    count, _ = p.stat()
    if count > 0 or time.time() > deadline:
        break
    p.quit(); time.sleep(0.05)
assert count == 1, count
resp, lines, octets = p.retr(1)
sys.stdout.buffer.write(b'\r\n'.join(lines) + b'\r\n')
p.quit()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mail_reads_back_identical_over_pop3_and_imap() {
    let stack = Stack::start(&[]).await;
    mail_to_alice_over_smtp_and_pop3(&stack).await;

    let imap = stack.addr("imap");
    const IMAP: &str = r#"
import imaplib, sys
m = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]))
m.login('alice@localhost', 'wonderland')
typ, data = m.select('INBOX')
assert typ == 'OK' and int(data[0]) == 1, data
typ, data = m.fetch('1', '(BODY[])')
assert typ == 'OK', data
sys.stdout.buffer.write(data[0][1])
typ, data = m.fetch('1', '(FLAGS)')
assert b'\\Seen' in data[0], data
m.logout()
"#;
    let got = python(IMAP, &[imap.ip().to_string(), imap.port().to_string()]).await;
    assert_same_message(&got, MESSAGE);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_mail_reaches_the_mx_with_envelope_body_and_one_trace() {
    let stack = Stack::start(&[("trusted_networks", "127.0.0.0/8")]).await;
    let msg = b"From: app@example.org\r\nTo: bob@remote.test\r\nSubject: relay\r\n\r\nrelayed body\r\n.dot\r\n";
    let reply = smtp_send(
        stack.addr("smtp"),
        "app@example.org",
        &["bob@remote.test", "carol@Remote.Test"],
        msg,
    )
    .await;
    assert!(reply.starts_with("250"), "SMTP reply: {reply}");
    let id = reply
        .rsplit(' ')
        .next()
        .expect("message id in the reply")
        .to_string();

    let received = tern_testkit::wait_for(
        "the MX sink to receive the message",
        Duration::from_secs(30),
        || {
            let m = stack.sink.messages();
            async move { m.into_iter().next() }
        },
    )
    .await;
    assert_eq!(received.mail_from, "app@example.org");
    let mut rcpts = received.rcpts.clone();
    rcpts.sort();
    assert_eq!(rcpts, ["bob@remote.test", "carol@Remote.Test"]);
    assert_eq!(received.helo, "tern.test");
    assert_same_message(&received.data, msg);

    // The ingress transaction and the delivery attempt are one trace.
    let trace_of = |name: &str| -> Option<TraceId> {
        common::spans()
            .get_finished_spans()
            .ok()?
            .into_iter()
            .find(|s| {
                s.name == name
                    && s.attributes.iter().any(|kv| {
                        kv.key.as_str() == "message_id" && kv.value.as_str() == id.as_str()
                    })
            })
            .map(|s| s.span_context.trace_id())
    };
    let (ingress, delivery) = tern_testkit::wait_for(
        "ingress and delivery spans",
        Duration::from_secs(10),
        || {
            let pair = trace_of("smtp.transaction").zip(trace_of("delivery.attempt"));
            async move { pair }
        },
    )
    .await;
    assert_ne!(ingress, TraceId::INVALID);
    assert_eq!(
        ingress, delivery,
        "delivery attempt is in the ingress trace"
    );
    stack.stop().await;
}

/// Every service on a NATS that takes only mutual TLS and a JWT user
/// (operator mode), configured with `nats_tls_*` and `nats_creds`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mail_through_nats_with_mutual_tls_and_a_creds_file() {
    let pki = tern_testkit::TestPki::new();
    let auth = tern_testkit::NatsJwtAuth::new();
    let creds = pki.dir().join("tern.creds");
    std::fs::write(&creds, auth.user_creds("tern")).expect("write creds");
    let nats = tern_testkit::NatsServer::start_with_config(&format!(
        "{}{}",
        pki.nats_tls_block(),
        auth.server_config()
    ))
    .await;
    let file = |p: &std::path::Path| p.to_str().expect("UTF-8 temp path").to_string();
    let (ca, cert, key, creds) = (
        file(&pki.ca),
        file(&pki.client_cert),
        file(&pki.client_key),
        file(&creds),
    );
    let stack = Stack::start_on(
        nats,
        &[
            ("nats_tls_ca", &ca),
            ("nats_tls_cert", &cert),
            ("nats_tls_key", &key),
            ("nats_creds", &creds),
        ],
        false,
    )
    .await;
    mail_to_alice_over_smtp_and_pop3(&stack).await;
    stack.stop().await;
}
