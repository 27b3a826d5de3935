//! The resolver against Debian's `unbound` on loopback, serving `local-data`
//! records: what a real recursive server in front of the cluster answers.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{Unbound, lookup, route, start};
use tern_proto::RouteStatus;

const ZONE: &str = "example.test.";
const RECORDS: &[&str] = &[
    "example.test. 300 IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60",
    "multi.example.test. 300 IN MX 5 primary.example.test.",
    "multi.example.test. 300 IN MX 10 mx1.example.test.",
    "multi.example.test. 300 IN MX 10 mx2.example.test.",
    "multi.example.test. 300 IN MX 10 mx3.example.test.",
    "multi.example.test. 300 IN MX 20 backup.example.test.",
    "primary.example.test. 300 IN A 192.0.2.5",
    "mx1.example.test. 300 IN A 192.0.2.1",
    "mx1.example.test. 300 IN AAAA 2001:db8::1",
    "mx2.example.test. 300 IN A 192.0.2.2",
    "mx3.example.test. 300 IN A 192.0.2.3",
    "backup.example.test. 300 IN A 192.0.2.9",
    "nullmx.example.test. 300 IN MX 0 .",
    "nullmx.example.test. 300 IN A 192.0.2.99",
    "nomx.example.test. 300 IN A 192.0.2.10",
    "nomx.example.test. 300 IN AAAA 2001:db8::10",
    "v6only.example.test. 300 IN MX 10 mx.v6only.example.test.",
    "mx.v6only.example.test. 300 IN AAAA 2001:db8::66",
    "cnamed.example.test. 300 IN MX 10 alias.example.test.",
    "alias.example.test. 300 IN CNAME real.example.test.",
    "real.example.test. 300 IN A 192.0.2.77",
    "xn--bcher-kva.example.test. 300 IN MX 10 mx.xn--bcher-kva.example.test.",
    "mx.xn--bcher-kva.example.test. 300 IN A 192.0.2.88",
    "iplit.example.test. 300 IN MX 10 192.0.2.44.",
    "short.example.test. 3 IN MX 10 mx1.example.test.",
    "_mta-sts.example.test. 300 IN TXT \"v=STSv1; id=20260101\"",
];

macro_rules! unbound {
    () => {
        match Unbound::start(ZONE, RECORDS).await {
            Some(u) => u,
            None => return,
        }
    };
}

#[tokio::test]
async fn unbound_mx_by_preference_spread_within_equal() {
    let ub = unbound!();
    let mut r = start(ub.addr(), &[]).await;
    let mut first_of_tens = HashSet::new();
    for _ in 0..60 {
        let resp = route(&mut r.client, "multi.example.test").await;
        assert_eq!(resp.status, RouteStatus::Ok as i32, "{resp:?}");
        let prefs: Vec<u32> = resp.hosts.iter().map(|h| h.preference).collect();
        assert_eq!(prefs, vec![5, 10, 10, 10, 20]);
        assert_eq!(resp.hosts[0].name, "primary.example.test");
        assert_eq!(resp.hosts[4].name, "backup.example.test");
        first_of_tens.insert(resp.hosts[1].name.clone());
        let mx1 = resp
            .hosts
            .iter()
            .find(|h| h.name == "mx1.example.test")
            .unwrap();
        assert_eq!(mx1.addresses, vec!["2001:db8::1", "192.0.2.1"]);
        assert_eq!(
            resp.site,
            "backup.example.test,mx1.example.test,mx2.example.test,mx3.example.test,primary.example.test"
        );
    }
    assert_eq!(
        first_of_tens.len(),
        3,
        "each preference-10 host leads its group sometimes: {first_of_tens:?}"
    );
    r.stop().await;
}

#[tokio::test]
async fn unbound_permanent_failures() {
    let ub = unbound!();
    let mut r = start(ub.addr(), &[]).await;
    let null = route(&mut r.client, "nullmx.example.test").await;
    assert_eq!(null.status, RouteStatus::Permanent as i32, "{null:?}");
    assert_eq!(null.enhanced, "5.1.10", "RFC 7505 null MX");
    let nx = route(&mut r.client, "missing.example.test").await;
    assert_eq!(nx.status, RouteStatus::Permanent as i32, "{nx:?}");
    assert_eq!(nx.enhanced, "5.1.2");
    assert!(nx.error.contains("NXDOMAIN"), "{}", nx.error);
    // RFC 2308 §5: cached for the SOA minimum (60 s), not the SOA's TTL.
    assert!(nx.ttl <= 60 && nx.ttl >= 50, "negative ttl {}", nx.ttl);
    let ip = route(&mut r.client, "iplit.example.test").await;
    assert_eq!(ip.status, RouteStatus::Permanent as i32, "{ip:?}");
    assert_eq!(ip.enhanced, "5.4.4");
    assert!(
        ip.error.contains("192.0.2.44") && ip.error.contains("IP address"),
        "{}",
        ip.error
    );
    r.stop().await;
}

#[tokio::test]
async fn unbound_address_fallbacks_v6_only_and_cname_targets() {
    let ub = unbound!();
    let mut r = start(ub.addr(), &[]).await;
    let nomx = route(&mut r.client, "nomx.example.test").await;
    assert_eq!(nomx.status, RouteStatus::Ok as i32, "{nomx:?}");
    assert_eq!(nomx.hosts.len(), 1, "implicit MX: the domain itself");
    assert_eq!(nomx.hosts[0].name, "nomx.example.test");
    assert_eq!(nomx.hosts[0].addresses, vec!["2001:db8::10", "192.0.2.10"]);

    let v6 = route(&mut r.client, "v6only.example.test").await;
    assert_eq!(v6.status, RouteStatus::Ok as i32, "{v6:?}");
    assert_eq!(v6.hosts[0].name, "mx.v6only.example.test");
    assert_eq!(v6.hosts[0].addresses, vec!["2001:db8::66"]);

    // An MX target that is an alias: followed to its addresses, the host
    // keeps the name the MX record gave (what TLS checks are made against).
    let cn = route(&mut r.client, "cnamed.example.test").await;
    assert_eq!(cn.status, RouteStatus::Ok as i32, "{cn:?}");
    assert_eq!(cn.hosts[0].name, "alias.example.test");
    assert_eq!(cn.hosts[0].addresses, vec!["192.0.2.77"]);
    r.stop().await;
}

#[tokio::test]
async fn unbound_idn_domain_is_looked_up_as_punycode() {
    let ub = unbound!();
    let mut r = start(ub.addr(), &[]).await;
    for domain in ["bücher.example.test", "xn--bcher-kva.example.test"] {
        let resp = route(&mut r.client, domain).await;
        assert_eq!(resp.status, RouteStatus::Ok as i32, "{domain}: {resp:?}");
        assert_eq!(resp.hosts[0].name, "mx.xn--bcher-kva.example.test");
        assert_eq!(resp.hosts[0].addresses, vec!["192.0.2.88"]);
        assert_eq!(resp.site, "mx.xn--bcher-kva.example.test");
    }
    let txt = lookup(&mut r.client, "_mta-sts.example.test", "TXT").await;
    assert_eq!(txt.records, vec!["v=STSv1; id=20260101"]);
    r.stop().await;
}

#[tokio::test]
async fn unbound_changes_are_seen_when_the_ttl_expires() {
    let ub = unbound!();
    let mut r = start(ub.addr(), &[]).await;
    let first = route(&mut r.client, "short.example.test").await;
    let at = Instant::now();
    assert_eq!(first.status, RouteStatus::Ok as i32, "{first:?}");
    assert_eq!(first.hosts[0].name, "mx1.example.test");
    assert!(first.ttl <= 3, "ttl {}", first.ttl);
    ub.remove("short.example.test").await;
    ub.add("short.example.test. 3 IN MX 10 mx2.example.test.")
        .await;
    let cached = route(&mut r.client, "short.example.test").await;
    if at.elapsed() < Duration::from_secs(2) {
        assert_eq!(cached.hosts[0].name, "mx1.example.test", "still cached");
    }
    tern_testkit::wait_for("the new MX after the TTL", Duration::from_secs(10), || {
        let mut c = r.client.clone();
        async move {
            let resp = route(&mut c, "short.example.test").await;
            (resp.hosts.first()?.name == "mx2.example.test").then_some(())
        }
    })
    .await;
    r.stop().await;
}

#[tokio::test]
async fn unbound_negative_answer_cached_up_to_the_cap() {
    let ub = unbound!();
    // The SOA says 60 s; the cap makes it 3 s.
    let mut r = start(ub.addr(), &[("dns_negative_ttl_max", "3s")]).await;
    let nx = route(&mut r.client, "late.example.test").await;
    let at = Instant::now();
    assert_eq!(nx.status, RouteStatus::Permanent as i32, "{nx:?}");
    assert!(nx.ttl <= 3, "capped negative ttl {}", nx.ttl);
    ub.add("late.example.test. 300 IN MX 10 mx2.example.test.")
        .await;
    let again = route(&mut r.client, "late.example.test").await;
    if at.elapsed() < Duration::from_secs(2) {
        assert_eq!(
            again.status,
            RouteStatus::Permanent as i32,
            "NXDOMAIN still cached: {again:?}"
        );
    }
    let ok = tern_testkit::wait_for(
        "the new domain once the negative answer expires",
        Duration::from_secs(10),
        || {
            let mut c = r.client.clone();
            async move {
                let resp = route(&mut c, "late.example.test").await;
                (resp.status == RouteStatus::Ok as i32).then_some(resp)
            }
        },
    )
    .await;
    assert_eq!(ok.hosts[0].addresses, vec!["192.0.2.2"]);
    assert!(
        at.elapsed() >= Duration::from_secs(1),
        "the negative answer was cached"
    );
    r.stop().await;
}

#[tokio::test]
async fn unbound_servfail_is_temporary() {
    let ub = unbound!();
    let mut r = start(ub.addr(), &[]).await;
    let resp = route(&mut r.client, "elsewhere.example").await;
    assert_eq!(resp.status, RouteStatus::Temporary as i32, "{resp:?}");
    assert!(resp.enhanced.is_empty());
    assert!(resp.error.contains("SERVFAIL"), "the cause: {}", resp.error);
    let txt = lookup(&mut r.client, "elsewhere.example", "TXT").await;
    assert_eq!(txt.status, RouteStatus::Temporary as i32, "{txt:?}");
    r.stop().await;
}
