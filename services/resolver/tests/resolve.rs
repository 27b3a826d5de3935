//! The resolver against a real (in-process) authoritative DNS server, over gRPC.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Running, http_get, route};
use tern_proto::{LookupRequest, RouteStatus};
use tern_runtime::Shutdown;
use tern_runtime::config::Source;
use tern_testkit::DnsServer;

const ZONE: &str = r#"
$ORIGIN test.
$TTL 300
@             IN SOA   ns.test. hostmaster.test. 1 3600 600 86400 60
multi         IN MX    10 mx1.multi
multi         IN MX    10 mx2.multi
multi         IN MX    20 backup.multi
multi         IN MX    5 primary.multi
primary.multi IN A     192.0.2.5
mx1.multi     IN A     192.0.2.1
mx1.multi     IN AAAA  2001:db8::1
mx2.multi     IN A     192.0.2.2
backup.multi  IN A     192.0.2.3
nullmx        IN MX    0 .
nullmx        IN A     192.0.2.9
nomx          IN A     192.0.2.10
nomx          IN AAAA  2001:db8::10
dangling      IN MX    10 nowhere.test.
spf           IN TXT   "v=spf1 -all"
short         60 IN MX 10 mx.short
mx.short      30 IN A  192.0.2.30
expiring      3 IN MX  10 mx.expiring
mx.expiring   3 IN A   192.0.2.31
stale         2 IN MX  10 mx.stale
mx.stale      2 IN A   192.0.2.40
cnamed        IN MX    10 alias
alias         IN CNAME mx1.multi
v6only        IN MX    10 mx.v6only
mx.v6only     IN AAAA  2001:db8::66
xn--bcher-kva IN MX    10 mx2.multi
"#;

async fn start(nameserver: SocketAddr, timeout: &str) -> Running {
    common::start(nameserver, &[("dns_timeout", timeout)]).await
}

#[tokio::test]
async fn mx_hosts_ordered_by_preference_and_shuffled_within() {
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let mut r = start(dns.addr(), "2s").await;
    let mut second = HashSet::new();
    for _ in 0..40 {
        let resp = route(&mut r.client, "Multi.Test.").await;
        assert_eq!(resp.status, RouteStatus::Ok as i32, "{resp:?}");
        let names: Vec<&str> = resp.hosts.iter().map(|h| h.name.as_str()).collect();
        let prefs: Vec<u32> = resp.hosts.iter().map(|h| h.preference).collect();
        assert_eq!(prefs, vec![5, 10, 10, 20]);
        assert_eq!(names[0], "primary.multi.test");
        assert_eq!(names[3], "backup.multi.test");
        second.insert(names[1].to_string());
        assert_eq!(
            resp.site,
            "backup.multi.test,mx1.multi.test,mx2.multi.test,primary.multi.test"
        );
        assert!(resp.ttl > 0 && resp.ttl <= 300, "ttl {}", resp.ttl);
        let mx1 = resp
            .hosts
            .iter()
            .find(|h| h.name == "mx1.multi.test")
            .unwrap();
        assert_eq!(
            mx1.addresses,
            vec!["2001:db8::1", "192.0.2.1"],
            "IPv6 first"
        );
    }
    assert_eq!(
        second.len(),
        2,
        "both preference-10 hosts come first sometimes: {second:?}"
    );
    r.stop().await;
}

#[tokio::test]
async fn null_mx_is_permanent() {
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let mut r = start(dns.addr(), "2s").await;
    let resp = route(&mut r.client, "nullmx.test").await;
    assert_eq!(resp.status, RouteStatus::Permanent as i32, "{resp:?}");
    assert_eq!(resp.enhanced, "5.1.10");
    assert!(resp.hosts.is_empty());
    r.stop().await;
}

#[tokio::test]
async fn nxdomain_is_permanent() {
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let mut r = start(dns.addr(), "2s").await;
    let resp = route(&mut r.client, "missing.test").await;
    assert_eq!(resp.status, RouteStatus::Permanent as i32, "{resp:?}");
    assert_eq!(resp.enhanced, "5.1.2");
    assert!(resp.error.contains("NXDOMAIN"), "{}", resp.error);
    r.stop().await;
}

#[tokio::test]
async fn no_mx_falls_back_to_the_domain_addresses() {
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let mut r = start(dns.addr(), "2s").await;
    let resp = route(&mut r.client, "nomx.test").await;
    assert_eq!(resp.status, RouteStatus::Ok as i32, "{resp:?}");
    assert_eq!(resp.hosts.len(), 1);
    assert_eq!(resp.hosts[0].name, "nomx.test");
    assert_eq!(resp.hosts[0].addresses, vec!["2001:db8::10", "192.0.2.10"]);
    assert_eq!(resp.site, "nomx.test");
    r.stop().await;
}

#[tokio::test]
async fn mx_without_addresses_is_permanent() {
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let mut r = start(dns.addr(), "2s").await;
    let resp = route(&mut r.client, "dangling.test").await;
    assert_eq!(resp.status, RouteStatus::Permanent as i32, "{resp:?}");
    assert_eq!(resp.enhanced, "5.4.4");
    r.stop().await;
}

#[tokio::test]
async fn ttl_is_the_shortest_in_the_chain() {
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let mut r = start(dns.addr(), "2s").await;
    let resp = route(&mut r.client, "short.test").await;
    assert_eq!(resp.status, RouteStatus::Ok as i32, "{resp:?}");
    assert!(resp.ttl <= 30 && resp.ttl >= 25, "ttl {}", resp.ttl);
    r.stop().await;
}

#[tokio::test]
async fn address_literals_need_no_dns() {
    // A nameserver that never answers: literals must not touch it.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut r = start(silent.local_addr().unwrap(), "5s").await;
    let resp = tokio::time::timeout(Duration::from_secs(2), route(&mut r.client, "[192.0.2.7]"))
        .await
        .unwrap();
    assert_eq!(resp.status, RouteStatus::Ok as i32);
    assert_eq!(resp.hosts[0].addresses, vec!["192.0.2.7"]);
    let resp = route(&mut r.client, "[IPv6:2001:db8::7]").await;
    assert_eq!(resp.hosts[0].addresses, vec!["2001:db8::7"]);
    let resp = route(&mut r.client, "[999.1.1.1]").await;
    assert_eq!(resp.status, RouteStatus::Permanent as i32);
    r.stop().await;
}

#[tokio::test]
async fn dead_nameserver_is_temporary() {
    // Bound but silent: every query times out.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut r = start(silent.local_addr().unwrap(), "300ms").await;
    let resp = route(&mut r.client, "multi.test").await;
    assert_eq!(resp.status, RouteStatus::Temporary as i32, "{resp:?}");
    assert!(!resp.error.is_empty());
    assert!(resp.enhanced.is_empty());
    r.stop().await;
}

#[tokio::test]
async fn unreachable_nameserver_is_temporary() {
    // Nothing listens on this port: the kernel refuses every query.
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let mut r = start(port, "1s").await;
    let resp = route(&mut r.client, "multi.test").await;
    assert_eq!(resp.status, RouteStatus::Temporary as i32, "{resp:?}");
    assert!(
        resp.error.contains("timed out"),
        "the cause: {}",
        resp.error
    );
    r.stop().await;
}

#[tokio::test]
async fn refused_answer_is_temporary() {
    // The server is not authoritative for this domain and does not recurse.
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let mut r = start(dns.addr(), "2s").await;
    let resp = route(&mut r.client, "elsewhere.example").await;
    assert_eq!(resp.status, RouteStatus::Temporary as i32, "{resp:?}");
    assert!(resp.error.contains("REFUSED"), "the cause: {}", resp.error);
    r.stop().await;
}

#[tokio::test]
async fn raw_lookups() {
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let mut r = start(dns.addr(), "2s").await;
    let look = |name: &str, t: &str| LookupRequest {
        name: name.into(),
        record_type: t.into(),
    };
    let txt = r
        .client
        .lookup(look("spf.test", "TXT"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(txt.status, RouteStatus::Ok as i32);
    assert_eq!(txt.records, vec!["v=spf1 -all"]);
    let mut mx = r
        .client
        .lookup(look("multi.test", "mx"))
        .await
        .unwrap()
        .into_inner()
        .records;
    mx.sort();
    assert_eq!(
        mx,
        vec![
            "10 mx1.multi.test.",
            "10 mx2.multi.test.",
            "20 backup.multi.test.",
            "5 primary.multi.test."
        ]
    );
    let a = r
        .client
        .lookup(look("mx1.multi.test", "AAAA"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.records, vec!["2001:db8::1"]);
    let none = r
        .client
        .lookup(look("spf.test", "TLSA"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.status, RouteStatus::Ok as i32);
    assert!(none.records.is_empty());
    let nx = r
        .client
        .lookup(look("missing.test", "A"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(nx.status, RouteStatus::Permanent as i32);
    let err = r.client.lookup(look("spf.test", "SOA")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    r.stop().await;
}

#[tokio::test]
async fn health_and_admin_endpoints() {
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let src = Source::from_pairs([
        ("resolver_grpc_listen", "127.0.0.1:0"),
        ("resolver_admin_listen", "127.0.0.1:0"),
        ("dns_nameservers", &dns.addr().to_string()),
    ]);
    let bound = tern_resolver::bind(tern_resolver::Config::from_source(&src).unwrap())
        .await
        .unwrap();
    let addrs = bound.addrs();
    let admin = addrs
        .iter()
        .find(|(n, _)| *n == "resolver admin")
        .unwrap()
        .1;
    let shutdown = Shutdown::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));
    let body = tern_testkit::wait_for(
        "/readyz to answer ready",
        Duration::from_secs(5),
        || async move {
            http_get(admin, "/readyz")
                .await
                .filter(|b| b.starts_with("HTTP/1.1 200"))
        },
    )
    .await;
    assert!(body.contains("ready"));
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn cname_targets_ipv6_only_hosts_and_idn_domains() {
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let mut r = start(dns.addr(), "2s").await;
    let cn = route(&mut r.client, "cnamed.test").await;
    assert_eq!(cn.status, RouteStatus::Ok as i32, "{cn:?}");
    assert_eq!(
        cn.hosts[0].name, "alias.test",
        "the MX record's name is kept"
    );
    assert_eq!(cn.hosts[0].addresses, vec!["2001:db8::1", "192.0.2.1"]);
    let v6 = route(&mut r.client, "v6only.test").await;
    assert_eq!(v6.hosts[0].addresses, vec!["2001:db8::66"]);
    let idn = route(&mut r.client, "Bücher.test").await;
    assert_eq!(idn.status, RouteStatus::Ok as i32, "{idn:?}");
    assert_eq!(idn.hosts[0].name, "mx2.multi.test");
    assert_eq!(
        dns.queries("xn--bcher-kva.test", "MX"),
        1,
        "asked as punycode"
    );
    r.stop().await;
}

#[tokio::test]
async fn cached_until_the_ttl_expires_then_asked_again() {
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let mut r = start(dns.addr(), "2s").await;
    let first = route(&mut r.client, "expiring.test").await;
    let at = Instant::now();
    assert_eq!(first.status, RouteStatus::Ok as i32, "{first:?}");
    assert!(first.ttl <= 3, "ttl {}", first.ttl);
    assert_eq!(dns.queries("expiring.test", "MX"), 1);
    for _ in 0..20 {
        route(&mut r.client, "expiring.test").await;
    }
    if at.elapsed() < Duration::from_secs(1) {
        assert_eq!(dns.queries("expiring.test", "MX"), 1, "answered from cache");
        assert_eq!(
            dns.queries("mx.expiring.test", "A"),
            1,
            "answered from cache"
        );
    }
    tern_testkit::wait_for(
        "a fresh MX query after the TTL",
        Duration::from_secs(10),
        || {
            let mut c = r.client.clone();
            let dns = &dns;
            async move {
                let resp = route(&mut c, "expiring.test").await;
                assert_eq!(resp.status, RouteStatus::Ok as i32, "{resp:?}");
                (dns.queries("expiring.test", "MX") == 2).then_some(())
            }
        },
    )
    .await;
    assert!(at.elapsed() >= Duration::from_secs(1), "not before the TTL");
    r.stop().await;
}

#[tokio::test]
async fn negative_answers_are_cached_up_to_the_cap() {
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let mut r = common::start(dns.addr(), &[("dns_negative_ttl_max", "2s")]).await;
    let nx = route(&mut r.client, "absent.test").await;
    let at = Instant::now();
    assert_eq!(nx.status, RouteStatus::Permanent as i32, "{nx:?}");
    assert!(nx.ttl <= 2, "SOA minimum 60 s capped to 2 s: {}", nx.ttl);
    let nodata = common::lookup(&mut r.client, "spf.test", "TLSA").await;
    assert!(nodata.records.is_empty() && nodata.ttl <= 2);
    for _ in 0..10 {
        route(&mut r.client, "absent.test").await;
        common::lookup(&mut r.client, "spf.test", "TLSA").await;
    }
    if at.elapsed() < Duration::from_secs(1) {
        assert_eq!(dns.queries("absent.test", "MX"), 1, "NXDOMAIN cached");
        assert_eq!(dns.queries("spf.test", "TLSA"), 1, "NODATA cached");
    }
    tern_testkit::wait_for("NXDOMAIN to expire", Duration::from_secs(10), || {
        let mut c = r.client.clone();
        let dns = &dns;
        async move {
            route(&mut c, "absent.test").await;
            (dns.queries("absent.test", "MX") == 2).then_some(())
        }
    })
    .await;
    r.stop().await;
}

#[tokio::test]
async fn stale_answer_served_while_upstream_is_down() {
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let timeout = ("dns_timeout", "200ms");
    let mut with_stale = common::start(dns.addr(), &[timeout, ("dns_stale_window", "1m")]).await;
    let mut without = common::start(dns.addr(), &[timeout, ("dns_stale_window", "0s")]).await;
    for r in [&mut with_stale, &mut without] {
        let resp = route(&mut r.client, "stale.test").await;
        assert_eq!(resp.status, RouteStatus::Ok as i32, "{resp:?}");
    }
    // Upstream stops answering.
    dns.hold();
    let stale = tern_testkit::wait_for(
        "a stale answer after the TTL",
        Duration::from_secs(15),
        || {
            let mut c = with_stale.client.clone();
            let dns = &dns;
            async move {
                let resp = route(&mut c, "stale.test").await;
                // The refresh reached upstream (and timed out).
                (dns.queries("stale.test", "MX") >= 3).then_some(resp)
            }
        },
    )
    .await;
    assert_eq!(stale.status, RouteStatus::Ok as i32, "{stale:?}");
    assert_eq!(stale.hosts[0].addresses, vec!["192.0.2.40"]);
    assert!(
        stale.ttl <= 30,
        "stale answers carry a short ttl: {}",
        stale.ttl
    );
    assert!(
        with_stale
            .metric(r#"tern_dns_stale_served_total{cache="route"}"#)
            .await
            >= 1.0
    );
    // Without the window the same outage is a temporary failure.
    let failed = tern_testkit::wait_for("a temporary failure", Duration::from_secs(15), || {
        let mut c = without.client.clone();
        async move {
            let resp = route(&mut c, "stale.test").await;
            (resp.status == RouteStatus::Temporary as i32).then_some(resp)
        }
    })
    .await;
    assert!(!failed.error.is_empty());
    dns.release();
    with_stale.stop().await;
    without.stop().await;
}
