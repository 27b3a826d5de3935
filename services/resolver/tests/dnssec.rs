//! DNSSEC validation (`TERN_DNS_DNSSEC`) against an in-process authoritative
//! server whose zone is signed (`tern_testkit::DnsServer::start_signed`, a
//! fresh ECDSA key per zone, NSEC denial); the resolver trusts that key
//! through `TERN_DNS_TRUST_ANCHOR`.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::{Running, lookup, route};
use tern_proto::RouteStatus;
use tern_testkit::DnsServer;

const SECURE: &str = r#"
$ORIGIN secure.test.
$TTL 300
@                IN SOA   ns.secure.test. hostmaster.secure.test. 1 3600 600 86400 60
@                IN NS    ns
ns               IN A     192.0.2.53
mail             IN MX    10 mx.mail
mx.mail          IN A     192.0.2.1
mx.mail          IN AAAA  2001:db8::1
_25._tcp.mx.mail IN TLSA  3 1 1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
nomx             IN A     192.0.2.10
"#;

const PLAIN: &str = r#"
$ORIGIN plain.test.
$TTL 300
@        IN SOA ns.plain.test. hostmaster.plain.test. 1 3600 600 86400 60
mail     IN MX  10 mx.mail
mx.mail  IN A   192.0.2.2
"#;

/// The resolver validating against `dns`, trusting `anchor` (DNSKEY records).
async fn validating(dns: &DnsServer, anchor: &str) -> (Running, tempfile::NamedTempFile) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("; test trust anchor\n{anchor}\n")).unwrap();
    let path = file.path().to_str().unwrap().to_string();
    let r = common::start(
        dns.addr(),
        &[("dns_dnssec", "true"), ("dns_trust_anchor", path.as_str())],
    )
    .await;
    (r, file)
}

#[tokio::test]
async fn validated_answers_are_authenticated() {
    let dns = DnsServer::start_signed(&[("secure.test.", SECURE)], &["secure.test."]).await;
    let (mut r, _anchor) = validating(&dns, &dns.trust_anchor("secure.test.").unwrap()).await;

    let resp = route(&mut r.client, "mail.secure.test").await;
    assert_eq!(resp.status, RouteStatus::Ok as i32, "{resp:?}");
    assert!(resp.authenticated, "MX RRset validated: {resp:?}");
    assert_eq!(resp.hosts.len(), 1);
    assert_eq!(resp.hosts[0].addresses, vec!["2001:db8::1", "192.0.2.1"]);
    assert!(
        resp.hosts[0].authenticated,
        "A and AAAA validated: {resp:?}"
    );

    // Implicit MX: the NSEC-proven absence of MX, then the domain's own A
    // (and proven absence of AAAA).
    let resp = route(&mut r.client, "nomx.secure.test").await;
    assert_eq!(resp.status, RouteStatus::Ok as i32, "{resp:?}");
    assert!(
        resp.authenticated && resp.hosts[0].authenticated,
        "{resp:?}"
    );

    // A proven NXDOMAIN is still a permanent failure, and authenticated.
    let resp = route(&mut r.client, "nope.secure.test").await;
    assert_eq!(resp.status, RouteStatus::Permanent as i32, "{resp:?}");
    assert!(resp.authenticated, "{resp:?}");

    let tlsa = lookup(&mut r.client, "_25._tcp.mx.mail.secure.test", "TLSA").await;
    assert_eq!(tlsa.status, RouteStatus::Ok as i32, "{tlsa:?}");
    assert_eq!(tlsa.records.len(), 1, "{tlsa:?}");
    assert!(tlsa.authenticated, "{tlsa:?}");
    let nodata = lookup(&mut r.client, "mail.secure.test", "TXT").await;
    assert_eq!(
        (nodata.status, nodata.records.len(), nodata.authenticated),
        (RouteStatus::Ok as i32, 0, true),
        "{nodata:?}"
    );
    r.stop().await;
}

#[tokio::test]
async fn answers_failing_validation_are_temporary_failures() {
    // The zone is served signed with a key the resolver does not trust (the
    // trusted one belongs to another signing of the same zone), as after a
    // botched key rollover or a spoofed answer: bogus (RFC 4035 §5.5).
    let trusted = DnsServer::start_signed(&[("secure.test.", SECURE)], &["secure.test."]).await;
    let dns = DnsServer::start_signed(
        &[("secure.test.", SECURE), ("plain.test.", PLAIN)],
        &["secure.test."],
    )
    .await;
    let (mut r, _anchor) = validating(&dns, &trusted.trust_anchor("secure.test.").unwrap()).await;

    let resp = route(&mut r.client, "mail.secure.test").await;
    assert_eq!(resp.status, RouteStatus::Temporary as i32, "{resp:?}");
    assert!(
        resp.error.contains("DNSSEC validation failed") && resp.error.contains("bogus"),
        "the cause is named: {resp:?}"
    );
    assert!(resp.hosts.is_empty() && !resp.authenticated);
    let tlsa = lookup(&mut r.client, "_25._tcp.mx.mail.secure.test", "TLSA").await;
    assert_eq!(tlsa.status, RouteStatus::Temporary as i32, "{tlsa:?}");
    assert!(
        tlsa.records.is_empty() && tlsa.error.contains("DNSSEC"),
        "{tlsa:?}"
    );

    // An unsigned zone outside every trust anchor cannot be proven insecure
    // here (no signed parent says it has no DS): hickory fails it as bogus.
    let resp = route(&mut r.client, "mail.plain.test").await;
    assert_eq!(resp.status, RouteStatus::Temporary as i32, "{resp:?}");

    // Temporary failures are not cached: asking again asks upstream again.
    let before = dns.queries("mail.secure.test", "MX");
    let again = route(&mut r.client, "mail.secure.test").await;
    assert_eq!(again.status, RouteStatus::Temporary as i32, "{again:?}");
    assert!(dns.queries("mail.secure.test", "MX") > before);
    assert!(
        r.metric(r#"tern_dns_lookups_total{type="MX",outcome="bogus"}"#)
            .await
            >= 2.0
    );
    r.stop().await;
}

#[tokio::test]
async fn without_validation_nothing_is_authenticated() {
    let dns = DnsServer::start_signed(&[("secure.test.", SECURE)], &["secure.test."]).await;
    let mut r = common::start(dns.addr(), &[]).await;
    let resp = route(&mut r.client, "mail.secure.test").await;
    assert_eq!(resp.status, RouteStatus::Ok as i32, "{resp:?}");
    assert!(
        !resp.authenticated && !resp.hosts[0].authenticated,
        "{resp:?}"
    );
    let tlsa = lookup(&mut r.client, "_25._tcp.mx.mail.secure.test", "TLSA").await;
    assert_eq!(tlsa.records.len(), 1, "{tlsa:?}");
    assert!(!tlsa.authenticated, "{tlsa:?}");
    r.stop().await;
}

#[tokio::test]
async fn unusable_trust_anchor_stops_the_service() {
    let settings = |path: &std::path::Path| tern_resolver::DnsSettings {
        nameservers: vec!["127.0.0.1:53".parse().unwrap()],
        timeout: std::time::Duration::from_secs(1),
        ttl_floor: std::time::Duration::ZERO,
        ttl_ceiling: std::time::Duration::from_secs(60),
        negative_ttl_max: std::time::Duration::from_secs(60),
        stale_window: std::time::Duration::ZERO,
        max_inflight: 8,
        dnssec: true,
        trust_anchor: Some(path.to_path_buf()),
    };
    let missing = std::env::temp_dir().join("tern-no-such-trust-anchor.key");
    let err = tern_resolver::DnsResolver::new(&settings(&missing)).unwrap_err();
    assert!(
        matches!(err, tern_resolver::DnsSetupError::TrustAnchor { .. }),
        "{err}"
    );
    let empty = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(empty.path(), "; nothing here\n").unwrap();
    let err = tern_resolver::DnsResolver::new(&settings(empty.path())).unwrap_err();
    assert!(err.to_string().contains("no DNSKEY records"), "{err}");
}
