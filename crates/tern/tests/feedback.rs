//! The feedback loop through the whole stack (issue 17): a real SMTP peer
//! (testkit's sink on loopback) answers each recipient with one class of
//! reply, and the queue's events, metrics and DSN carry the class.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::{Stack, smtp_send};
use futures::StreamExt;
use prost::Message as _;
use tern_proto::Event;
use tern_runtime::bus;

const TRUSTED: (&str, &str) = ("trusted_networks", "127.0.0.0/8");
const MSG: &[u8] = b"From: news@example.org\r\nSubject: feedback\r\n\r\nhello\r\n";

async fn js(stack: &Stack) -> jetstream::Context {
    jetstream::new(
        async_nats::connect(stack.nats.url())
            .await
            .expect("connect"),
    )
}

/// Every event so far.
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

/// (recipient local part, the peer's RCPT reply, event kind, class).
const CASES: &[(&str, &str, &str, &str)] = &[
    (
        "gone",
        "550-5.1.1 The email account that you tried to reach does not exist.\r\n550 5.1.1 Please try double-checking",
        "bounced",
        "invalid_recipient",
    ),
    (
        "nodomain",
        "550 5.1.2 Host unknown",
        "bounced",
        "bad_domain",
    ),
    (
        "disabled",
        "550 5.2.1 The email account that you tried to reach is disabled",
        "bounced",
        "mailbox_disabled",
    ),
    (
        "full",
        "452 4.2.2 The email account that you tried to reach is over quota",
        "deferred",
        "mailbox_full",
    ),
    (
        "big",
        "552 5.3.4 Message size exceeds fixed limit",
        "bounced",
        "message_too_large",
    ),
    (
        "spam",
        "550 5.7.1 Service unavailable, Client host blocked using Spamhaus",
        "bounced",
        "spam_block",
    ),
    (
        "auth",
        "550 5.7.26 This mail has been blocked because the sender is unauthenticated",
        "bounced",
        "policy_block",
    ),
    // 450, not Gmail's usual 421: a 421 closes the session (RFC 5321 §3.8),
    // so every later recipient would share it.
    (
        "rate",
        "450 4.7.28 Our system has detected an unusual rate of unsolicited mail",
        "deferred",
        "rate_limited",
    ),
    (
        "net",
        "451 4.3.0 Temporary local problem",
        "deferred",
        "network_failure",
    ),
    ("odd", "554 Transaction failed", "bounced", "other"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_class_reaches_the_event_the_metric_and_the_dsn() {
    let stack = Stack::start(&[TRUSTED]).await;
    stack.add_user("alice@localhost", "wonderland").await;
    for (local, reply, _, _) in CASES {
        stack.sink.answer(&format!("{local}@"), reply);
    }
    let js = js(&stack).await;
    let rcpts: Vec<String> = CASES
        .iter()
        .map(|c| format!("{}@remote.test", c.0))
        .collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let reply = smtp_send(stack.addr("smtp"), "alice@localhost", &refs, MSG).await;
    assert!(reply.starts_with("250"), "{reply}");

    let got = tern_testkit::wait_for("an outcome per recipient", Duration::from_secs(30), || {
        let js = js.clone();
        async move {
            let all: Vec<Event> = events(&js)
                .await
                .into_iter()
                .filter(|e| e.kind == "bounced" || e.kind == "deferred")
                .collect();
            (all.len() >= CASES.len()).then_some(all)
        }
    })
    .await;
    for (local, _, kind, class) in CASES {
        let e = got
            .iter()
            .find(|e| e.recipient == format!("{local}@remote.test"))
            .unwrap_or_else(|| panic!("no event for {local}: {got:?}"));
        assert_eq!(
            (e.kind.as_str(), e.bounce_class.as_str()),
            (*kind, *class),
            "{local}: {e:?}"
        );
    }
    assert!(
        stack.sink.messages().is_empty(),
        "no recipient was accepted"
    );

    // The metric's class label, bounded to the ten class names. The
    // recorder is process-wide and the other tests here bounce too, so the
    // class is one only this test produces.
    let admin = stack.addr("queue admin");
    let series = "tern_queue_results_total{outcome=\"bounced\",class=\"message_too_large\"} ";
    tern_testkit::wait_for(
        "the class label on /metrics",
        Duration::from_secs(20),
        || async move {
            let (_, body) = common::http_get(admin, "/metrics").await?;
            body.lines()
                .filter_map(|l| l.strip_prefix(series)?.parse::<f64>().ok())
                .find(|&v| v >= 1.0)
        },
    )
    .await;

    // The failure DSN in the sender's mailbox names each recipient's class.
    const IMAP: &str = r#"
import imaplib, sys
m = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]))
m.login('alice@localhost', 'wonderland')
typ, data = m.select('INBOX')
for i in range(1, int(data[0]) + 1):
    typ, d = m.fetch(str(i), '(BODY.PEEK[])')
    sys.stdout.buffer.write(d[0][1])
m.logout()
"#;
    let imap = stack.addr("imap");
    let args = [imap.ip().to_string(), imap.port().to_string()];
    let dsn = tern_testkit::wait_for("the DSN over IMAP", Duration::from_secs(30), || {
        let args = args.clone();
        async move {
            let out = String::from_utf8_lossy(&common::python(IMAP, &args).await).to_string();
            out.contains("X-Tern-Bounce-Class").then_some(out)
        }
    })
    .await;
    for (local, _, kind, class) in CASES {
        if *kind == "bounced" {
            let block = format!("Final-Recipient: rfc822; {local}@remote.test");
            let at = dsn
                .find(&block)
                .unwrap_or_else(|| panic!("{local} in the DSN: {dsn}"));
            let rest = &dsn[at..];
            let end = rest.find("\r\n\r\n").unwrap_or(rest.len());
            assert!(
                rest[..end].contains(&format!("X-Tern-Bounce-Class: {class}")),
                "{local}: {}",
                &rest[..end]
            );
        }
    }
    stack.stop().await;
}

/// Put an envelope on the spool as the injection API does (tenant and
/// campaign set), the body inline.
async fn inject(js: &jetstream::Context, id: &str, tenant: &str, rcpts: &[&str]) {
    let env = tern_proto::Envelope {
        id: id.into(),
        mail_from: "bounces@example.org".into(),
        rcpts: rcpts
            .iter()
            .map(|a| tern_proto::Recipient {
                address: a.to_string(),
                ..Default::default()
            })
            .collect(),
        body: Some(tern_proto::BodyRef {
            location: Some(tern_proto::body_ref::Location::Inline(
                bytes::Bytes::from_static(MSG),
            )),
            size: MSG.len() as u64,
        }),
        received_at_unix_ms: tern_runtime::now_unix_ms(),
        tenant: tenant.into(),
        campaign: "spring".into(),
        ..Default::default()
    };
    js.publish(bus::SPOOL_SUBJECT, env.encode_to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("spool ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_bounce_suppresses_the_next_batch_but_a_policy_block_does_not() {
    let stack = Stack::start(&[TRUSTED]).await;
    stack.sink.answer("gone@", "550 5.1.1 user unknown");
    stack
        .sink
        .answer("auth@", "550 5.7.26 unauthenticated sender");
    let js = js(&stack).await;
    let rcpts = ["gone@remote.test", "auth@remote.test", "ok@remote.test"];
    inject(&js, "01JBATCH1AAAAAAAAAAAAAAAAA", "acme", &rcpts).await;
    tern_testkit::wait_for("first batch final", Duration::from_secs(30), || {
        let js = js.clone();
        async move {
            let e = events(&js).await;
            let n = e
                .iter()
                .filter(|e| e.kind == "bounced" || e.kind == "delivered")
                .count();
            (n == 3).then_some(())
        }
    })
    .await;
    let stop = tern_runtime::Shutdown::new();
    let lists = tern_bounce::Suppressions::open(&js, 1, stop.clone())
        .await
        .expect("open");
    assert_eq!(
        lists.check("acme", "", &rcpts),
        [true, false, false],
        "only the dead address is suppressed, never the policy block"
    );
    let entries = lists.list("acme").await.expect("list");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].reason, tern_bounce::Reason::HardBounce);
    assert!(
        entries[0].source.contains("gone@remote.test"),
        "{:?}",
        entries[0]
    );

    inject(&js, "01JBATCH2AAAAAAAAAAAAAAAAA", "acme", &rcpts).await;
    let got = tern_testkit::wait_for("second batch final", Duration::from_secs(30), || {
        let js = js.clone();
        async move {
            let e: Vec<Event> = events(&js)
                .await
                .into_iter()
                .filter(|e| e.message_id == "01JBATCH2AAAAAAAAAAAAAAAAA" && e.kind != "received")
                .collect();
            (e.len() == 3).then_some(e)
        }
    })
    .await;
    let mut kinds: Vec<(String, String)> = got
        .iter()
        .map(|e| (e.recipient.clone(), e.kind.clone()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("auth@remote.test".to_string(), "bounced".to_string()),
            ("gone@remote.test".to_string(), "suppressed".to_string()),
            ("ok@remote.test".to_string(), "delivered".to_string()),
        ],
        "the suppressed address is not attempted again (no second bounce)"
    );
    assert_eq!(
        got.iter().find(|e| e.kind == "suppressed").unwrap().tenant,
        "acme"
    );
    stop.trigger();
    stack.stop().await;
}

/// `tern suppress …` as an operator runs it, against the stack's NATS.
fn tern_suppress(stack: &Stack, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write as _;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tern"));
    cmd.arg("suppress").args(args).env_clear();
    cmd.env("TERN_NATS_URL", stack.nats.url());
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn tern suppress");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).expect("write stdin");
    }
    drop(input);
    let out = child.wait_with_output().expect("tern suppress");
    assert!(
        out.status.success(),
        "tern suppress {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_lists_and_the_system_list_stops_plain_smtp_mail() {
    let stack = Stack::start(&[TRUSTED]).await;
    let js = js(&stack).await;
    tern_suppress(&stack, &["add", "Blocked@remote.test"], None);
    let csv = "address,reason\nimported@example.com,complaint\n";
    assert_eq!(
        tern_suppress(&stack, &["import", "--tenant", "acme", "-"], Some(csv)).trim(),
        "imported 1"
    );
    let exported = tern_suppress(&stack, &["export", "--tenant", "acme"], None);
    let lines: Vec<&str> = exported.lines().collect();
    assert_eq!(lines[0], tern_bounce::csv::HEADER);
    assert!(
        lines[1].starts_with("acme,,imported@example.com,complaint,"),
        "{exported}"
    );
    let listed = tern_suppress(&stack, &["list"], None);
    assert!(
        listed.starts_with("Blocked@remote.test\t*\tmanual\t"),
        "{listed}"
    );

    // The queue's index sees the CLI's entry through its watch; plain SMTP
    // mail (no tenant) is checked against the system list.
    let reply = smtp_send(
        stack.addr("smtp"),
        "alice@localhost",
        &["blocked@remote.test", "fine@remote.test"],
        MSG,
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let got = tern_testkit::wait_for("suppressed and delivered", Duration::from_secs(30), || {
        let js = js.clone();
        async move {
            let e = events(&js).await;
            let s = e.iter().find(|e| e.kind == "suppressed")?.recipient.clone();
            let d = e.iter().find(|e| e.kind == "delivered")?.recipient.clone();
            Some((s, d))
        }
    })
    .await;
    assert_eq!(
        got,
        ("blocked@remote.test".into(), "fine@remote.test".into())
    );
    let sink = stack.sink.messages();
    assert_eq!(sink.len(), 1);
    assert_eq!(
        sink[0].rcpts,
        ["fine@remote.test"],
        "the suppressed one never reaches the MX"
    );

    // A message whose every recipient is suppressed: an event, no job, no attempt.
    let reply = smtp_send(
        stack.addr("smtp"),
        "alice@localhost",
        &["BLOCKED@remote.test"],
        MSG,
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    tern_testkit::wait_for(
        "the second suppressed event",
        Duration::from_secs(30),
        || {
            let js = js.clone();
            async move {
                let n = events(&js)
                    .await
                    .iter()
                    .filter(|e| e.kind == "suppressed")
                    .count();
                (n == 2).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        stack.sink.messages().len(),
        1,
        "still only the first message reached the MX"
    );

    assert_eq!(
        tern_suppress(&stack, &["del", "blocked@remote.test"], None).trim(),
        "blocked@remote.test\tremoved"
    );
    assert_eq!(tern_suppress(&stack, &["list"], None), "");
    stack.stop().await;
}
