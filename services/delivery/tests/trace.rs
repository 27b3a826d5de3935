//! One message is one trace: the job's trace context (NATS headers) is the
//! parent of `delivery.attempt`, which is the parent of the resolver's
//! `resolver.resolve_route` (gRPC metadata), and the result carries it on.
//! Its own test binary, because telemetry installs a process-wide subscriber.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::{Arc, Mutex};

use common::{BODY, Harness, WAIT, job, outcomes};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tern_proto::Outcome;
use tern_runtime::telemetry;
use tern_testkit::wait_for;

/// Keeps every finished span.
#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

impl Collect {
    /// (trace id, span id, parent span id) of the first finished span named `name`.
    fn find(&self, name: &str) -> Option<(String, String, String)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|s| s.name == name)
            .map(|s| {
                (
                    s.span_context.trace_id().to_string(),
                    s.span_context.span_id().to_string(),
                    s.parent_span_id.to_string(),
                )
            })
    }
}

/// `00-<trace id>-<span id>-<flags>` split into its ids.
fn traceparent(h: &async_nats::HeaderMap) -> (String, String) {
    let v = h
        .get("traceparent")
        .expect("a traceparent header")
        .as_str()
        .to_string();
    let parts: Vec<&str> = v.split('-').collect();
    (parts[1].to_string(), parts[2].to_string())
}

#[tokio::test]
async fn attempt_and_route_lookup_join_the_message_trace() {
    let spans = Collect::default();
    let _guard = telemetry::init_with_exporter("delivery-test", false, spans.clone()).unwrap();
    let h = Harness::start().await;

    let mut headers = async_nats::HeaderMap::new();
    {
        let root = tracing::info_span!("test.submit");
        let _e = root.enter();
        telemetry::inject_nats(&mut headers);
    }
    let (trace_id, submit_span) = traceparent(&headers);
    h.publish_with_headers(
        &job("t1", "remote.test", &["alice@remote.test"], BODY),
        headers,
    )
    .await;

    let (result, _) = h.result("remote.test").await;
    assert_eq!(
        outcomes(&result),
        vec![("alice@remote.test".to_string(), Outcome::Delivered)]
    );

    let attempt = wait_for("the delivery.attempt span", WAIT, || {
        let s = spans.clone();
        async move { s.find("delivery.attempt") }
    })
    .await;
    assert_eq!(
        attempt.0, trace_id,
        "delivery.attempt is in the message's trace"
    );
    assert_eq!(
        attempt.2, submit_span,
        "delivery.attempt's parent is the publisher's span"
    );

    let route = wait_for("the resolver.resolve_route span", WAIT, || {
        let s = spans.clone();
        async move { s.find("resolver.resolve_route") }
    })
    .await;
    assert_eq!(route.0, trace_id, "the route lookup is in the same trace");
    assert_eq!(
        route.2, attempt.1,
        "resolver.resolve_route is a child of delivery.attempt"
    );

    let (result_trace, result_parent) = traceparent(&h.result_headers("remote.test").await);
    assert_eq!(result_trace, trace_id, "the result carries the trace on");
    assert_eq!(result_parent, attempt.1);
}
