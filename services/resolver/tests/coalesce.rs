//! One upstream query for many concurrent callers, and a bound on upstream
//! concurrency, counted on the DNS server's side. A test binary of its own
//! so the process-wide `/metrics` counters belong to these tests alone.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::{lookup, route, start};
use tern_proto::RouteStatus;
use tern_testkit::DnsServer;

const ZONE: &str = r#"
$ORIGIN test.
$TTL 300
@          IN SOA  ns.test. hostmaster.test. 1 3600 600 86400 60
popular    IN MX   10 mx.popular
mx.popular IN A    192.0.2.1
mx.popular IN AAAA 2001:db8::1
policy     IN TXT  "v=spf1 ip4:192.0.2.0/24 -all"
"#;

/// Callers, spread over connections (HTTP/2 allows a few hundred streams each).
const CALLERS: usize = 1000;
const CONNECTIONS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_requests_make_one_upstream_query() {
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let r = start(dns.addr(), &[("dns_timeout", "20s")]).await;
    // Upstream holds its answers until every caller is waiting.
    dns.hold();
    let clients: Vec<_> = (0..CONNECTIONS).map(|_| r.new_client()).collect();
    let mut routes = Vec::with_capacity(CALLERS);
    let mut lookups = Vec::with_capacity(CALLERS);
    for i in 0..CALLERS {
        let mut c = clients[i % CONNECTIONS].clone();
        routes.push(tokio::spawn(
            async move { route(&mut c, "popular.test").await },
        ));
        let mut c = clients[i % CONNECTIONS].clone();
        lookups.push(tokio::spawn(async move {
            lookup(&mut c, "policy.test", "TXT").await
        }));
    }
    tern_testkit::wait_for(
        "every other caller to wait on the first one's queries",
        Duration::from_secs(60),
        || {
            let r = &r;
            async move {
                let routes = r.metric(r#"tern_dns_coalesced_total{cache="route"}"#).await;
                let lookups = r
                    .metric(r#"tern_dns_coalesced_total{cache="lookup"}"#)
                    .await;
                (routes == (CALLERS - 1) as f64 && lookups == (CALLERS - 1) as f64).then_some(())
            }
        },
    )
    .await;
    assert!(
        !routes.iter().any(|t| t.is_finished()) && !lookups.iter().any(|t| t.is_finished()),
        "no caller is answered while upstream holds its answers"
    );
    assert_eq!(dns.queries("popular.test", "MX"), 1);
    assert_eq!(dns.queries("policy.test", "TXT"), 1);
    dns.release();
    for t in routes {
        let resp = t.await.unwrap();
        assert_eq!(resp.status, RouteStatus::Ok as i32, "{resp:?}");
        assert_eq!(resp.hosts[0].addresses, vec!["2001:db8::1", "192.0.2.1"]);
    }
    for t in lookups {
        let resp = t.await.unwrap();
        assert_eq!(resp.records, vec!["v=spf1 ip4:192.0.2.0/24 -all"]);
    }
    // Exactly one query per question reached the server.
    assert_eq!(dns.queries("popular.test", "MX"), 1);
    assert_eq!(dns.queries("mx.popular.test", "A"), 1);
    assert_eq!(dns.queries("mx.popular.test", "AAAA"), 1);
    assert_eq!(dns.queries("policy.test", "TXT"), 1);
    assert_eq!(dns.total_queries(), 4);
    let misses = r
        .metric(r#"tern_dns_cache_misses_total{cache="route"}"#)
        .await;
    let coalesced = r.metric(r#"tern_dns_coalesced_total{cache="route"}"#).await;
    assert_eq!((misses, coalesced), (1.0, (CALLERS - 1) as f64));
    r.stop().await;
}

#[tokio::test]
async fn upstream_concurrency_is_bounded() {
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let r = start(
        dns.addr(),
        &[("dns_timeout", "20s"), ("dns_max_inflight", "2")],
    )
    .await;
    dns.hold();
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let mut c = r.client.clone();
            tokio::spawn(async move { lookup(&mut c, &format!("name{i}.test"), "TXT").await })
        })
        .collect();
    tern_testkit::wait_for(
        "2 queries upstream and 8 waiting for a slot",
        Duration::from_secs(30),
        || {
            let (r, dns) = (&r, &dns);
            async move {
                let queued = r.metric("tern_dns_upstream_queued").await;
                (queued == 8.0 && dns.total_queries() == 2).then_some(())
            }
        },
    )
    .await;
    dns.release();
    for t in tasks {
        let resp = t.await.unwrap();
        assert_eq!(
            resp.status,
            RouteStatus::Permanent as i32,
            "NXDOMAIN: {resp:?}"
        );
    }
    assert_eq!(dns.total_queries(), 10);
    assert_eq!(r.metric("tern_dns_upstream_queued").await, 0.0);
    r.stop().await;
}
