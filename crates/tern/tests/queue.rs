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

/// The first message in alice's INBOX (where her DSNs land), once there is one.
async fn first_in_alices_inbox(stack: &Stack) -> String {
    tern_testkit::wait_for(
        "a message in alice's INBOX",
        Duration::from_secs(30),
        || async {
            imap_messages(stack, "alice@localhost", "wonderland")
                .await
                .into_iter()
                .next()
        },
    )
    .await
}

type Admin = tern_proto::queue_admin_client::QueueAdminClient<tonic::transport::Channel>;

/// Hold `destination` and wait until the queue sees the hold: it reaches the
/// queue through a bucket watch, so `stats` shows it a moment later.
async fn hold(admin: &mut Admin, destination: &str) {
    admin
        .hold(tern_proto::DestinationRequest {
            destination: destination.into(),
        })
        .await
        .expect("hold");
    let lower = destination.to_ascii_lowercase();
    tern_testkit::wait_for("hold visible in stats", Duration::from_secs(10), || {
        let mut admin = admin.clone();
        let lower = lower.clone();
        async move {
            let s = admin.stats(tern_proto::StatsRequest {}).await.ok()?;
            s.into_inner()
                .destinations
                .iter()
                .any(|d| d.destination == lower && d.on_hold)
                .then_some(())
        }
    })
    .await;
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

    let dsn = first_in_alices_inbox(&stack).await;
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
    let dsn = first_in_alices_inbox(&stack).await;
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

/// RFC 8689 end to end: a REQUIRETLS message (sent over STARTTLS with
/// smtplib, asking RET=FULL) to a domain whose MX answer is not
/// DNSSEC-validated is not sent (§4.2.1; the sink gets nothing) but bounced
/// with 5.7.10, and the DSN returns the header section only (§5: "MUST
/// behave as if RET=HDRS was present"; RET=FULL "MUST be disregarded").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requiretls_bounce_returns_the_header_section_only() {
    let stack = Stack::start(&[TRUSTED]).await;
    stack.add_user("alice@localhost", "wonderland").await;
    let js = js(&stack).await;
    const SCRIPT: &str = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), local_hostname="client.test", timeout=30)
s.starttls(context=ctx)
s.ehlo()
assert s.has_extn("requiretls")
msg = b"From: alice@localhost\r\nSubject: sealed\r\n\r\nthe secret body text\r\n"
code, text = s.mail("alice@localhost", ["REQUIRETLS", "RET=FULL"])
assert code == 250, (code, text)
code, text = s.rcpt("carol@remote.test")
assert code == 250, (code, text)
code, text = s.data(msg)
assert code == 250, (code, text)
s.quit()
"#;
    let addr = stack.addr("smtp");
    python(SCRIPT, &[addr.ip().to_string(), addr.port().to_string()]).await;
    let bounced = wait_event(&js, "the REQUIRETLS bounce", |e| {
        e.kind == "bounced" && e.recipient == "carol@remote.test"
    })
    .await;
    assert_eq!(bounced.enhanced, "5.7.10", "{bounced:?}");

    let dsn = first_in_alices_inbox(&stack).await;
    for needle in [
        "Return-Path: <>",
        "Final-Recipient: rfc822; carol@remote.test",
        "Status: 5.7.10",
        "Content-Type: text/rfc822-headers",
        "Subject: sealed",
    ] {
        assert!(dsn.contains(needle), "DSN lacks {needle:?}:\n{dsn}");
    }
    assert!(
        !dsn.contains("the secret body text"),
        "the body came back:\n{dsn}"
    );
    assert!(
        stack.sink.messages().is_empty(),
        "nothing reached the MX: {:?}",
        stack.sink.messages()
    );
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
    // Any case: destinations are domains.
    hold(&mut admin, "Remote.Test").await;

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

/// The message id from a `250 2.0.0 Ok: queued as <id>` reply.
fn queued_id(reply: &str) -> String {
    reply
        .trim()
        .rsplit(' ')
        .next()
        .filter(|_| reply.starts_with("250"))
        .unwrap_or_else(|| panic!("not a 250 reply: {reply}"))
        .to_string()
}

async fn admin_client(addr: std::net::SocketAddr) -> Admin {
    tern_proto::queue_admin_client::QueueAdminClient::connect(format!("http://{addr}"))
        .await
        .expect("queue admin")
}

async fn list(admin: &mut Admin, destination: &str, state: &str) -> Vec<tern_proto::JobState> {
    admin
        .list(tern_proto::ListRequest {
            destination: destination.into(),
            state: state.into(),
            limit: 0,
        })
        .await
        .expect("list")
        .into_inner()
        .jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_retry_and_delete_act_on_waiting_jobs() {
    // An hour between attempts: within the test only `retry` can bring a
    // second attempt.
    let stack = Stack::start(&[TRUSTED, ("queue_retry_schedule", "1h")]).await;
    stack.add_user("alice@localhost", "wonderland").await;
    let js = js(&stack).await;
    let mut admin = admin_client(stack.addr("queue grpc")).await;
    let reply = smtp_send(
        stack.addr("smtp"),
        "alice@localhost",
        &["defer1@remote.test"],
        MSG,
    )
    .await;
    let id = queued_id(&reply);
    wait_event(&js, "first deferral", |e| {
        e.kind == "deferred" && e.message_id == id && e.attempt == 0
    })
    .await;

    // ls: the job waits for its retry, an hour away, with the sink's reply.
    let jobs = list(&mut admin, "remote.test", "scheduled").await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = jobs[0].job.clone().expect("job");
    assert_eq!((job.message_id.as_str(), job.attempt), (id.as_str(), 1));
    assert_eq!(jobs[0].state, "scheduled");
    let in_half_an_hour = tern_runtime::now_unix_ms() + 30 * 60 * 1000;
    assert!(jobs[0].next_attempt_unix_ms > in_half_an_hour);
    assert_eq!(jobs[0].results[0].code, 451);
    assert!(list(&mut admin, "remote.test", "ready").await.is_empty());
    assert!(list(&mut admin, "other.test", "").await.is_empty());
    let bad = admin
        .list(tern_proto::ListRequest {
            state: "stuck".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown state");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // retry: the second attempt happens now, not in an hour.
    let retried = admin
        .retry(tern_proto::SelectRequest {
            message_id: id.clone(),
            destination: String::new(),
        })
        .await
        .expect("retry")
        .into_inner()
        .jobs;
    assert_eq!(retried, 1);
    wait_event(&js, "the retried attempt", |e| {
        e.kind == "deferred" && e.message_id == id && e.attempt == 1
    })
    .await;

    // delete --bounce: the job is gone, logged, and the sender told.
    let deleted = admin
        .delete(tern_proto::DeleteRequest {
            select: Some(tern_proto::SelectRequest {
                message_id: id.clone(),
                destination: String::new(),
            }),
            bounce: true,
        })
        .await
        .expect("delete")
        .into_inner()
        .jobs;
    assert_eq!(deleted, 1);
    let ev = wait_event(&js, "the deleted event", |e| {
        e.kind == "deleted" && e.message_id == id
    })
    .await;
    assert_eq!(ev.recipient, "defer1@remote.test");
    assert!(list(&mut admin, "remote.test", "").await.is_empty());
    let gone = admin
        .show(tern_proto::ShowRequest {
            message_id: id.clone(),
        })
        .await
        .expect_err("no pending jobs");
    assert_eq!(gone.code(), tonic::Code::NotFound);
    let stats = admin
        .stats(tern_proto::StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    let remote = stats
        .destinations
        .iter()
        .find(|d| d.destination == "remote.test");
    assert!(
        remote.is_none_or(|d| d.ready + d.scheduled + d.held == 0),
        "the schedule left the jobs stream: {remote:?}"
    );
    let dsn = first_in_alices_inbox(&stack).await;
    for needle in [
        "Final-Recipient: rfc822; defer1@remote.test",
        "Action: failed",
        "Status: 5.0.0",
        "deleted from the queue by the mail administrator",
    ] {
        assert!(dsn.contains(needle), "DSN lacks {needle:?}:\n{dsn}");
    }
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_by_destination_removes_held_jobs_silently_and_frees_their_bodies() {
    let stack = Stack::start(&[TRUSTED]).await;
    stack.add_user("alice@localhost", "wonderland").await;
    let js = js(&stack).await;
    let mut admin = admin_client(stack.addr("queue grpc")).await;
    hold(&mut admin, "remote.test").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let reply = smtp_send(
            stack.addr("smtp"),
            "alice@localhost",
            &[&format!("user{i}@remote.test")],
            MSG,
        )
        .await;
        ids.push(queued_id(&reply));
    }
    let held = tern_testkit::wait_for("three held jobs", Duration::from_secs(20), || {
        let mut admin = admin.clone();
        async move {
            let jobs = list(&mut admin, "remote.test", "held").await;
            (jobs.len() == 3).then_some(jobs)
        }
    })
    .await;
    let mut listed: Vec<_> = held
        .iter()
        .map(|st| st.job.as_ref().expect("job").message_id.clone())
        .collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
    // The oldest held job's age is known without reading every job.
    let stats = admin
        .stats(tern_proto::StatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    let remote = stats
        .destinations
        .iter()
        .find(|d| d.destination == "remote.test")
        .expect("remote.test in stats");
    assert_eq!(remote.held, 3);

    let deleted = admin
        .delete(tern_proto::DeleteRequest {
            select: Some(tern_proto::SelectRequest {
                message_id: String::new(),
                destination: "remote.test".into(),
            }),
            bounce: false,
        })
        .await
        .expect("delete")
        .into_inner()
        .jobs;
    assert_eq!(deleted, 3);
    // Every body is gone with its last job, and nothing is left to release.
    tern_testkit::wait_for("the spool emptied", Duration::from_secs(20), || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream(bus::SPOOL_STREAM).await.ok()?;
            let info = stream.info().await.ok()?;
            (info.state.messages == 0).then_some(())
        }
    })
    .await;
    let moved = admin
        .release(tern_proto::DestinationRequest {
            destination: "remote.test".into(),
        })
        .await
        .expect("release")
        .into_inner()
        .moved;
    assert_eq!(moved, 0);
    let deleted_events = events(&js)
        .await
        .into_iter()
        .filter(|e| e.kind == "deleted")
        .count();
    assert_eq!(deleted_events, 3);
    // Without --bounce the sender hears nothing: no DSN was queued for alice.
    assert!(
        !events(&js)
            .await
            .iter()
            .any(|e| e.kind == "received" && e.mail_from.is_empty()),
        "no DSN without --bounce"
    );
    assert!(stack.sink.messages().is_empty());
    stack.stop().await;
}

/// Send `n` messages in the background, one recipient each
/// (`<prefix><i>@remote.test`), retrying a `4xx` the way an SMTP client
/// does; the task returns when all were accepted.
fn send_batch(
    smtp: std::net::SocketAddr,
    prefix: &str,
    n: usize,
) -> (Vec<String>, tokio::task::JoinHandle<()>) {
    let rcpts: Vec<String> = (0..n).map(|i| format!("{prefix}{i}@remote.test")).collect();
    let to_send = rcpts.clone();
    let task = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        for rcpt in &to_send {
            loop {
                let reply = smtp_send(smtp, "app@example.org", &[rcpt], MSG).await;
                if reply.starts_with("250") {
                    break;
                }
                assert!(reply.starts_with('4'), "{reply}");
                assert!(tokio::time::Instant::now() < deadline, "still {reply}");
                // A client's retry back-off, not a wait for a condition.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    (rcpts, task)
}

/// Wait until the queue holds no job; on the deadline, fail naming the jobs left.
async fn no_job_left(mut admin: Admin, deadline: Duration) {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let left = list(&mut admin, "", "").await;
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "jobs left after {deadline:?}: {left:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait until the sink has every recipient at least once; return how many
/// recipients arrived more than once.
async fn all_arrive(stack: &Stack, rcpts: &[String]) -> usize {
    tern_testkit::wait_for("every message at the sink", Duration::from_secs(90), || {
        let got = stack.sink.messages();
        async move {
            let mut seen = std::collections::HashMap::<String, usize>::new();
            for m in &got {
                for r in &m.rcpts {
                    *seen.entry(r.clone()).or_default() += 1;
                }
            }
            rcpts
                .iter()
                .all(|r| seen.contains_key(r))
                .then(|| seen.values().filter(|n| **n > 1).count())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_queue_loses_nothing_and_duplicates_nothing() {
    let stack = Stack::start_without(&[TRUSTED], true).await;
    let (queue, _) = stack.spawn_queue().await;
    let (rcpts, sender) = send_batch(stack.addr("smtp"), "batch", 300);
    // Mid-batch: some delivered, most not yet.
    tern_testkit::wait_for("the first deliveries", Duration::from_secs(60), || {
        let n = stack.sink.messages().len();
        async move { (n >= 10).then_some(()) }
    })
    .await;
    let before = stack.sink.messages().len();
    queue.kill().await;
    assert!(before < rcpts.len(), "the kill came mid-batch ({before})");
    let (queue, grpc) = stack.spawn_queue().await;
    sender.await.expect("every message accepted");
    let duplicated = all_arrive(&stack, &rcpts).await;
    // Routing and results are idempotent (de-duplicated publishes, attempt
    // numbers), so a queue crash repeats no delivery.
    assert_eq!(duplicated, 0, "a queue restart delivered twice");
    no_job_left(admin_client(grpc).await, Duration::from_secs(30)).await;
    drop(queue);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_batch_loses_nothing() {
    let mut stack = Stack::start(&[TRUSTED]).await;
    let (rcpts, sender) = send_batch(stack.addr("smtp"), "nats", 300);
    tern_testkit::wait_for("the first deliveries", Duration::from_secs(60), || {
        let n = stack.sink.messages().len();
        async move { (n >= 10).then_some(()) }
    })
    .await;
    let before = stack.sink.messages().len();
    // SIGKILL, then the same port and the same file storage.
    stack.nats.restart().await;
    assert!(
        before < rcpts.len(),
        "the restart came mid-batch ({before})"
    );
    sender.await.expect("every message accepted");
    // At-least-once: an attempt whose result could not be published while
    // NATS was down is repeated, so duplicates are allowed; losses are not.
    let duplicated = all_arrive(&stack, &rcpts).await;
    eprintln!("{duplicated} of {} delivered twice", rcpts.len());
    no_job_left(
        admin_client(stack.addr("queue grpc")).await,
        Duration::from_secs(90),
    )
    .await;
    stack.stop().await;
}

/// `tern queue ARGS` against the stack's queue; its exit status and stdout.
async fn cli(stack: &Stack, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("queue")
        .args(args)
        .env(
            "TERN_QUEUE_URL",
            format!("http://{}", stack.addr("queue grpc")),
        )
        .output()
        .await
        .expect("run tern");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

async fn on_hold(admin: &mut Admin, destination: &str) -> bool {
    let s = admin
        .stats(tern_proto::StatsRequest {})
        .await
        .expect("stats");
    s.into_inner()
        .destinations
        .iter()
        .any(|d| d.destination == destination && d.on_hold)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queue_command_takes_the_destination_as_domain() {
    let stack = Stack::start(&[]).await;
    let mut admin = admin_client(stack.addr("queue grpc")).await;
    let (ok, out) = cli(&stack, &["hold", "--domain", "cli.test"]).await;
    assert!(ok, "hold --domain: {out}");
    assert_eq!(out.trim(), "cli.test on hold");
    tern_testkit::wait_for("hold visible", Duration::from_secs(10), || {
        let mut admin = admin.clone();
        async move { on_hold(&mut admin, "cli.test").await.then_some(()) }
    })
    .await;
    let (ok, out) = cli(&stack, &["release", "--domain", "cli.test"]).await;
    assert!(ok, "release --domain: {out}");
    assert!(out.starts_with("cli.test released;"), "{out}");
    // The form of earlier releases still works.
    let (ok, out) = cli(&stack, &["hold", "old.test"]).await;
    assert!(ok && out.trim() == "old.test on hold", "{out}");
    let (ok, _) = cli(&stack, &["release", "old.test"]).await;
    assert!(ok);
    // One destination, not two.
    let (ok, _) = cli(&stack, &["hold", "a.test", "--domain", "b.test"]).await;
    assert!(
        !ok,
        "a positional destination and --domain together are refused"
    );
    let (ok, _) = cli(&stack, &["retry", "--domain", "cli.test"]).await;
    assert!(ok, "retry --domain of a destination without jobs");
    assert!(!on_hold(&mut admin, "b.test").await);
    stack.stop().await;
}
