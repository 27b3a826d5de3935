//! The resolver against a real (in-process) authoritative DNS server, over gRPC.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use tern_proto::resolver_client::ResolverClient;
use tern_proto::{LookupRequest, ResolveRouteRequest, ResolveRouteResponse, RouteStatus};
use tern_runtime::Shutdown;
use tern_runtime::config::Source;
use tern_testkit::DnsServer;
use tonic::transport::Channel;

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
"#;

struct Running {
    client: ResolverClient<Channel>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), tern_resolver::Error>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("resolver stops within the grace period")
            .unwrap()
            .unwrap();
    }
}

async fn start(nameserver: SocketAddr, timeout: &str) -> Running {
    let ns = nameserver.to_string();
    let src = Source::from_pairs([
        ("resolver_grpc_listen", "127.0.0.1:0"),
        ("resolver_admin_listen", "127.0.0.1:0"),
        ("dns_nameservers", ns.as_str()),
        ("dns_timeout", timeout),
        ("shutdown_grace", "2s"),
    ]);
    let config = tern_resolver::Config::from_source(&src).unwrap();
    src.finish().unwrap();
    let bound = tern_resolver::bind(config).await.unwrap();
    let grpc = bound
        .addrs()
        .into_iter()
        .find(|(n, _)| *n == "resolver grpc")
        .unwrap()
        .1;
    let shutdown = Shutdown::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));
    let channel = tern_runtime::grpc::channel(&tern_runtime::grpc::url_for(grpc)).unwrap();
    Running {
        client: ResolverClient::new(channel),
        shutdown,
        task,
    }
}

async fn route(c: &mut ResolverClient<Channel>, domain: &str) -> ResolveRouteResponse {
    c.resolve_route(ResolveRouteRequest {
        domain: domain.into(),
    })
    .await
    .unwrap()
    .into_inner()
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
async fn refused_answer_is_temporary() {
    // The server is not authoritative for this domain and does not recurse.
    let dns = DnsServer::start(&[("test.", ZONE)]).await;
    let mut r = start(dns.addr(), "2s").await;
    let resp = route(&mut r.client, "elsewhere.example").await;
    assert_eq!(resp.status, RouteStatus::Temporary as i32, "{resp:?}");
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

async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}
