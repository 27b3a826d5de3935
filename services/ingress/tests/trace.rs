//! Trace propagation: the spool publish and the mailbox lookup happen inside
//! the `smtp.transaction` span (a trace of its own, linked to `smtp.session`),
//! and both
//! carry its W3C trace context downstream. A separate test binary because it
//! installs the process-wide tracing subscriber.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry::Value;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tern_testkit::{NatsServer, wait_for};

/// Keeps every finished span in memory.
#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if let Ok(mut spans) = self.0.lock() {
            spans.extend(batch);
        }
        Ok(())
    }
}

impl Collect {
    fn find(&self, name: &str) -> Option<SpanData> {
        self.0.lock().ok()?.iter().find(|s| s.name == name).cloned()
    }
}

fn attr(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

/// `00-<trace id>-<span id>-<flags>` split into its trace and span ids.
fn parse_traceparent(tp: &str) -> (String, String) {
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test]
async fn publish_and_lookup_carry_the_transaction_trace() {
    let spans = Collect::default();
    let _guard =
        tern_runtime::telemetry::init_with_exporter("tern-ingress-test", false, spans.clone())
            .expect("install telemetry");

    let nats = NatsServer::start().await;
    let (mailbox, lookups) = start_accounts_recording(&["bob@example.com"]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[]).await;

    let mut c = Smtp::connect(ingress.addr("smtp")).await;
    c.cmd("EHLO client.test").await;
    let (code, text) = c
        .transaction(
            "alice@remote.test",
            &["bob@example.com"],
            b"Subject: traced\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(code, 250, "{text}");
    let id = queued_id(&text);
    c.cmd("QUIT").await;
    c.expect_eof().await;

    let txn = wait_for("the smtp.transaction span", Duration::from_secs(10), || {
        let spans = spans.clone();
        async move { spans.find("smtp.transaction") }
    })
    .await;
    let session = wait_for("the smtp.session span", Duration::from_secs(10), || {
        let spans = spans.clone();
        async move { spans.find("smtp.session") }
    })
    .await;
    let txn_trace = txn.span_context.trace_id().to_string();
    let txn_span = txn.span_context.span_id().to_string();

    assert_ne!(
        txn.span_context.trace_id(),
        session.span_context.trace_id(),
        "each message is a trace of its own"
    );
    assert!(
        txn.links
            .iter()
            .any(|l| l.span_context.span_id() == session.span_context.span_id()),
        "the transaction links to its session"
    );
    assert_eq!(
        attr(&txn, "message_id").map(|v| v.to_string()),
        Some(id.clone())
    );
    assert_eq!(
        attr(&txn, "mail_from").map(|v| v.to_string()).as_deref(),
        Some("alice@remote.test")
    );
    assert_eq!(
        attr(&txn, "rcpt_count").map(|v| v.to_string()).as_deref(),
        Some("1")
    );
    assert_eq!(
        attr(&session, "helo").map(|v| v.to_string()).as_deref(),
        Some("client.test")
    );

    // The spool message carries the transaction span as its parent.
    let (_, headers) = spooled(&nats.url(), &id).await;
    let tp = headers
        .get("traceparent")
        .map(|v| v.as_str().to_string())
        .expect("traceparent header on the spool message");
    assert_eq!(
        parse_traceparent(&tp),
        (txn_trace.clone(), txn_span.clone())
    );

    // So does the mailbox lookup.
    let seen = lookups.lock().map(|l| l.clone()).unwrap_or_default();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(parse_traceparent(&seen[0]).0, txn_trace);

    ingress.stop().await;
}
