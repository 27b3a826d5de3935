//! Traces as an operator sees them: the spans of an end-to-end run (one local
//! delivery, one remote delivery, one retry) exported over OTLP/gRPC to a
//! receiver implementing the collector's trace service, and checked for one
//! trace per message across ingress, queue, resolver, delivery and mailbox,
//! with the parent and link relations and attributes the docs promise.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Stack, smtp_send};
use tern_testkit::{OtlpReceiver, OtlpSpan};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(s: &OtlpSpan, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    s.attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(v) => Some(v.clone()),
            Value::IntValue(v) => Some(v.to_string()),
            Value::BoolValue(v) => Some(v.to_string()),
            other => Some(format!("{other:?}")),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_per_message_over_otlp_with_parents_and_links() {
    let receiver = OtlpReceiver::start().await;
    let telemetry = common::export_otlp(&receiver.endpoint());
    let stack = Stack::start(&[
        ("trusted_networks", "127.0.0.0/8"),
        ("queue_retry_schedule", "1s"),
    ])
    .await;
    stack.add_user("alice@localhost", "wonderland").await;
    let msg = b"Subject: traced\r\n\r\nbody\r\n";
    let local = smtp_send(
        stack.addr("smtp"),
        "app@example.org",
        &["alice@localhost"],
        msg,
    )
    .await;
    let remote = smtp_send(
        stack.addr("smtp"),
        "app@example.org",
        &["bob@remote.test"],
        msg,
    )
    .await;
    let retried = smtp_send(
        stack.addr("smtp"),
        "app@example.org",
        &["defer9@remote.test"],
        msg,
    )
    .await;
    let id = |reply: &str| reply.rsplit(' ').next().expect("id").to_string();
    let (local, remote, retried) = (id(&local), id(&remote), id(&retried));

    let spans = tern_testkit::wait_for(
        "spans of all three messages over OTLP",
        Duration::from_secs(40),
        || {
            let spans = receiver.spans();
            let done = spans.iter().any(|s| {
                s.name == "mailbox.deliver" && attr(s, "message_id").as_deref() == Some(&local)
            }) && spans.iter().any(|s| {
                s.name == "queue.result" && attr(s, "message_id").as_deref() == Some(&remote)
            }) && spans.iter().any(|s| {
                s.name == "delivery.attempt"
                    && attr(s, "message_id").as_deref() == Some(&retried)
                    && attr(s, "attempt").as_deref() == Some("1")
            });
            if !done {
                // Spans leave in batches; ask for the next one now.
                let t = telemetry;
                std::thread::spawn(move || t.flush());
            }
            async move { done.then_some(spans) }
        },
    )
    .await;
    let by_id: HashMap<Vec<u8>, &OtlpSpan> = spans.iter().map(|s| (s.span_id.clone(), s)).collect();
    let find = |name: &str, id: &str| -> Vec<&OtlpSpan> {
        spans
            .iter()
            .filter(|s| s.name == name && attr(s, "message_id").as_deref() == Some(id))
            .collect()
    };

    // Remote: ingress → queue → delivery (→ resolver) → queue, one trace.
    let txn = find("smtp.transaction", &remote);
    assert_eq!(txn.len(), 1, "one transaction span");
    let txn = txn[0];
    let trace = txn.trace_id.clone();
    assert!(
        txn.parent_span_id.is_empty(),
        "the transaction starts the message's trace"
    );
    assert!(
        txn.links.iter().any(|l| by_id
            .get(&l.span_id)
            .is_some_and(|s| s.name == "smtp.session")),
        "the transaction links to its SMTP session"
    );
    let session = txn
        .links
        .iter()
        .find_map(|l| by_id.get(&l.span_id).filter(|s| s.name == "smtp.session"))
        .expect("the session span");
    // OpenTelemetry semantic conventions for the connecting client.
    assert_eq!(
        attr(session, "client.address").as_deref(),
        Some("127.0.0.1")
    );
    assert!(
        attr(session, "client.port").is_some_and(|p| p.parse::<u16>().is_ok_and(|p| p > 0)),
        "the client's port as a number"
    );
    assert_eq!(attr(session, "listener").as_deref(), Some("smtp"));
    assert_eq!(attr(txn, "mail_from").as_deref(), Some("app@example.org"));
    let publish: Vec<_> = spans
        .iter()
        .filter(|s| {
            s.name == "spool.publish" && attr(s, "messaging.message.id").as_deref() == Some(&remote)
        })
        .collect();
    assert_eq!(publish.len(), 1, "one spool publish span");
    assert_eq!(
        publish[0].parent_span_id, txn.span_id,
        "the spool publish is inside the transaction"
    );
    assert_eq!(
        attr(publish[0], "messaging.system").as_deref(),
        Some("nats")
    );
    let route = find("queue.route", &remote);
    assert_eq!(route[0].trace_id, trace);
    assert_eq!(
        route[0].parent_span_id, txn.span_id,
        "routing is a child of the transaction"
    );
    let attempt = find("delivery.attempt", &remote);
    assert_eq!(
        attempt[0].trace_id, trace,
        "delivery is in the message's trace"
    );
    assert_eq!(
        attr(attempt[0], "destination").as_deref(),
        Some("remote.test")
    );
    let resolve: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "resolver.resolve_route" && s.trace_id == trace)
        .collect();
    assert!(
        !resolve.is_empty(),
        "the resolver lookup is in the message's trace"
    );
    let result = find("queue.result", &remote);
    assert_eq!(result[0].trace_id, trace);

    // Local: ingress → queue → mailbox, one trace.
    let ltxn = find("smtp.transaction", &local)[0];
    let deliver = find("mailbox.deliver", &local);
    assert_eq!(
        deliver[0].trace_id, ltxn.trace_id,
        "mailbox delivery is in the message's trace"
    );
    assert_ne!(ltxn.trace_id, trace, "each message is its own trace");

    // Retry: the second attempt is in the same trace and links to the first.
    let attempts = find("delivery.attempt", &retried);
    let first = attempts
        .iter()
        .find(|s| attr(s, "attempt").as_deref() == Some("0"))
        .expect("attempt 0");
    let second = attempts
        .iter()
        .find(|s| attr(s, "attempt").as_deref() == Some("1"))
        .expect("attempt 1");
    assert_eq!(
        first.trace_id, second.trace_id,
        "a retry stays in the message's trace"
    );
    assert!(
        second.links.iter().any(|l| l.span_id == first.span_id),
        "the retry links to the earlier attempt: {:?}",
        second
            .links
            .iter()
            .map(|l| hex(&l.span_id))
            .collect::<Vec<_>>()
    );
    stack.stop().await;
}
