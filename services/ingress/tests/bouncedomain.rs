//! Mail to the bounce domain (issue 17), sent by Python's smtplib to a real
//! ingress on a real nats-server: a late DSN (the one a real Postfix wrote,
//! crates/bounce/tests/fixtures/postfix-dsn.eml) becomes classified
//! `bounced` events and a suppression entry, an ARF complaint becomes
//! `complained` and suppression, the `mailto:` unsubscribe suppresses,
//! and garbage is counted and kept in `TERN_UNMATCHED`; none of it is
//! spooled for a mailbox. The fake mailbox knows no user at the bounce
//! domain, so an accept proves no mailbox lookup decided it.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use prost::Message as _;
use tern_bounce::Suppressions;
use tern_bounce::token::{self, Secret, VerpFields};
use tern_proto::Event;
use tern_runtime::{Shutdown, bus};
use tern_testkit::{NatsServer, wait_for};
use tokio::io::AsyncWriteExt;

const SECRET: &[u8] = b"a cluster secret of at least 32 bytes!";
const BOUNCE_DOMAIN: &str = "bounces.test";
const POSTFIX_DSN: &[u8] = include_bytes!("../../../crates/bounce/tests/fixtures/postfix-dsn.eml");

struct Stack {
    nats: NatsServer,
    ingress: Ingress,
    js: async_nats::jetstream::Context,
    send: VerpFields,
    secret: Secret,
    _dir: tempfile::TempDir,
}

/// nats-server, a tenant `acme` with campaign `spring` in the registry,
/// and ingress with the secret and bounce domain.
async fn stack() -> Stack {
    let nats = NatsServer::start().await;
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let registry = tern_tenant::Registry::open(&js, 1).await.expect("registry");
    let tenant = registry
        .add_tenant(tern_tenant::NewTenant {
            name: "acme".into(),
            domains: vec!["acme.test".into()],
            bounce_domain: None,
            public_url: None,
            unsubscribe: true,
        })
        .await
        .expect("tenant");
    let campaign = registry
        .campaign_id(tenant.id, "spring")
        .await
        .expect("campaign");
    let dir = tempfile::tempdir().expect("dir");
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).expect("secret");
    let (mailbox, _) = start_accounts_recording(&["bob@example.com"]).await;
    let ingress = Ingress::start(
        &nats.url(),
        &mailbox,
        &[
            ("secret_file", secret_file.to_str().expect("utf-8")),
            ("bounce_domain", BOUNCE_DOMAIN),
        ],
    )
    .await;
    Stack {
        nats,
        ingress,
        js,
        send: VerpFields {
            tenant: tenant.id,
            campaign,
            message: u128::from(ulid::Ulid::new()),
            recipient: 0,
        },
        secret: Secret::from_bytes(SECRET).expect("secret"),
        _dir: dir,
    }
}

/// Send `body` with Python's smtplib; `Ok(())` on 250, else smtplib's error.
async fn smtplib(
    stack: &Stack,
    mail_from: &str,
    rcpts: &[&str],
    body: &[u8],
) -> Result<(), String> {
    const SCRIPT: &str = r#"
import smtplib, sys
port, sender, rcpts = int(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
data = sys.stdin.buffer.read()
with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
    refused = s.sendmail(sender, rcpts, data)
    if refused:
        sys.exit("refused: %r" % refused)
"#;
    let port = stack.ingress.addr("smtp").port().to_string();
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT, &port, mail_from, &rcpts.join(",")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (Debian's python3 is required)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(body).await.expect("write body");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("smtplib finishes")
        .expect("smtplib runs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The last event on `tern.events.<kind>` for `recipient`.
async fn event(js: &async_nats::jetstream::Context, kind: &str, recipient: &str) -> Event {
    wait_for(
        &format!("{kind} event for {recipient}"),
        Duration::from_secs(10),
        || async move {
            let stream = js.get_stream(bus::EVENTS_STREAM).await.ok()?;
            let info = stream.get_info().await.ok()?;
            for seq in (info.state.first_sequence..=info.state.last_sequence).rev() {
                let Ok(m) = stream.get_raw_message(seq).await else {
                    continue;
                };
                if m.subject.as_str() != format!("tern.events.{kind}") {
                    continue;
                }
                let e = Event::decode(m.payload.as_ref()).ok()?;
                if e.recipient == recipient {
                    return Some(e);
                }
            }
            None
        },
    )
    .await
}

async fn spooled_count(js: &async_nats::jetstream::Context) -> u64 {
    let mut s = js.get_stream(bus::SPOOL_STREAM).await.expect("spool");
    s.info().await.expect("info").state.messages
}

async fn suppressed(stack: &Stack, campaign: &str, address: &str) {
    let lists = Suppressions::open(&stack.js, 1, Shutdown::new())
        .await
        .expect("lists");
    wait_for(
        &format!("{address} suppressed"),
        Duration::from_secs(10),
        || {
            let lists = lists.clone();
            async move { lists.check("acme", campaign, &[address])[0].then_some(()) }
        },
    )
    .await;
}

#[tokio::test]
async fn late_dsn_becomes_classified_bounces_and_suppresses_the_hard_one() {
    let s = stack().await;
    let verp = token::bounce_address(&s.secret, &s.send, BOUNCE_DOMAIN);
    smtplib(&s, "", &[&verp], POSTFIX_DSN)
        .await
        .expect("250 for a DSN to the VERP address");
    let gone = event(&s.js, "bounced", "gone@remote.test").await;
    assert_eq!(gone.bounce_class, "invalid_recipient");
    assert_eq!(
        (gone.tenant.as_str(), gone.campaign.as_str()),
        ("acme", "spring")
    );
    assert_eq!(
        gone.message_id,
        ulid::Ulid::from(s.send.message).to_string()
    );
    assert_eq!(gone.enhanced, "5.1.1");
    let blocked = event(&s.js, "bounced", "noauth@remote.test").await;
    assert_eq!(blocked.bounce_class, "policy_block");
    suppressed(&s, "", "gone@remote.test").await;
    let lists = Suppressions::open(&s.js, 1, Shutdown::new())
        .await
        .expect("lists");
    // A policy block is the sender's problem: never suppressed.
    assert_eq!(
        lists.check("acme", "", &["noauth@remote.test", "blocked@remote.test"]),
        [false, false]
    );
    assert_eq!(spooled_count(&s.js).await, 0, "nothing went to a mailbox");
    s.ingress.stop().await;
    drop(s.nats);
}

#[tokio::test]
async fn arf_complaint_becomes_complained_and_suppresses() {
    let s = stack().await;
    let verp = token::bounce_address(&s.secret, &s.send, BOUNCE_DOMAIN);
    // RFC 5965 Appendix B's shape, built by hand; sent to a fixed feedback
    // address, so the match comes from the report's Original-Mail-From.
    let arf = format!(
        "From: <abuse@provider.test>\r\nTo: <fbl@{BOUNCE_DOMAIN}>\r\nSubject: FW: Earn money\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n\
--b1\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: SomeGenerator/1.0\r\n\
Version: 1\r\nOriginal-Mail-From: <{verp}>\r\nOriginal-Rcpt-To: <carol@example.net>\r\n\
Reporting-MTA: dns; mail.provider.test\r\n\r\n\
--b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: <news@acme.test>\r\nReturn-Path: <{verp}>\r\n\
Subject: Earn money\r\nMessage-ID: <x1@acme.test>\r\n\r\nSpam\r\n--b1--\r\n"
    );
    smtplib(&s, "", &[&format!("fbl@{BOUNCE_DOMAIN}")], arf.as_bytes())
        .await
        .expect("250 for an ARF report");
    let e = event(&s.js, "complained", "carol@example.net").await;
    assert_eq!((e.tenant.as_str(), e.campaign.as_str()), ("acme", "spring"));
    suppressed(&s, "", "carol@example.net").await;
    assert_eq!(spooled_count(&s.js).await, 0);
    s.ingress.stop().await;
}

#[tokio::test]
async fn mailto_unsubscribe_suppresses_the_sender_for_the_campaign() {
    let s = stack().await;
    let u = format!(
        "{}@{BOUNCE_DOMAIN}",
        token::unsubscribe_local_part(&s.secret, &s.send)
    );
    smtplib(
        &s,
        "dave@example.net",
        &[&u],
        b"From: dave@example.net\r\nSubject: unsubscribe\r\n\r\n\r\n",
    )
    .await
    .expect("250 for the unsubscribe mail");
    suppressed(&s, "spring", "dave@example.net").await;
    assert_eq!(spooled_count(&s.js).await, 0);
    s.ingress.stop().await;
}

#[tokio::test]
async fn garbage_is_counted_and_kept_and_other_recipients_go_the_normal_way() {
    let s = stack().await;
    let body = b"From: someone@remote.test\r\nSubject: hello?\r\n\r\nIs anybody there?\r\n";
    smtplib(
        &s,
        "someone@remote.test",
        &[&format!("whoever@{BOUNCE_DOMAIN}"), "bob@example.com"],
        body,
    )
    .await
    .expect("250 for both recipients");
    // The unmatched message is in TERN_UNMATCHED with its reason.
    let mut kept = s.js.get_stream("TERN_UNMATCHED").await.expect("stream");
    let info = kept.info().await.expect("info");
    assert_eq!(info.state.messages, 1);
    assert_eq!(info.config.max_age, Duration::from_secs(14 * 86_400));
    let m = kept
        .get_last_raw_message_by_subject("tern.unmatched.no_token")
        .await
        .expect("kept under its reason");
    assert_eq!(m.payload.as_ref(), body);
    // Counted.
    let admin = s.ingress.addr("ingress admin");
    wait_for(
        "unmatched counter",
        Duration::from_secs(10),
        || async move {
            let m = http_get(admin, "/metrics").await?;
            m.lines()
                .any(|l| l.starts_with("tern_bounce_unmatched_total{reason=\"no_token\"}"))
                .then_some(())
        },
    )
    .await;
    // Only bob's copy is spooled, and it names only bob.
    assert_eq!(spooled_count(&s.js).await, 1);
    let mut spool = s.js.get_stream(bus::SPOOL_STREAM).await.expect("spool");
    let last = spool.info().await.expect("info").state.last_sequence;
    let raw = spool.get_raw_message(last).await.expect("envelope");
    let env = tern_proto::Envelope::decode(raw.payload.as_ref()).expect("envelope");
    let rcpts: Vec<_> = env.rcpts.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(rcpts, ["bob@example.com"]);
    // Postmaster at the bounce domain is not swallowed: it is not local
    // here and the client is not trusted, so it is refused like any relay.
    assert!(
        smtplib(
            &s,
            "x@remote.test",
            &[&format!("postmaster@{BOUNCE_DOMAIN}")],
            body
        )
        .await
        .is_err()
    );
    s.ingress.stop().await;
}
