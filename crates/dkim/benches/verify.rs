//! Verifying cost per message, as the MX does it: one 4 KiB message signed
//! by Tern (RSA-2048, Ed25519), verified with `mail-auth` against a real DNS
//! server on loopback (testkit's hickory server) holding the public key;
//! the resolver's cache is warm, as it is for a sender's second message.
//! `cargo bench -p tern-dkim --bench verify`; results in crates/dkim/README.md.

#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use tern_dkim::{Algorithm, KeySet, keygen};
use tern_testkit::DnsServer;

fn authenticator(dns: &DnsServer) -> MessageAuthenticator {
    let mut server = NameServerConfig::udp_and_tcp(dns.addr().ip());
    for c in &mut server.connections {
        c.port = dns.addr().port();
    }
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(5);
    opts.ndots = 0;
    opts.use_hosts_file = mail_auth::hickory_resolver::config::ResolveHosts::Never;
    MessageAuthenticator::new(ResolverConfig::from_name_servers(vec![server]), opts).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let msg = common::message();
    for (alg, selector, label) in [
        (Algorithm::Rsa, "rsa", "rsa-2048"),
        (Algorithm::Ed25519, "ed", "ed25519"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (_, record) = keygen(dir.path(), "example.com", selector, alg, 2048).unwrap();
        let zone = format!(
            "$ORIGIN example.com.\n$TTL 3600\n@ IN SOA ns admin 1 3600 600 86400 60\n@ IN NS ns\nns IN A 127.0.0.1\n{}\n",
            record.zone_line()
        );
        let dns = rt.block_on(DnsServer::start(&[("example.com.", &zone)]));
        let auth = authenticator(&dns);
        let set = KeySet::load(Path::new(dir.path()), &[], None).unwrap();
        let mut signed = set.sign("example.com", &msg).unwrap().concat().into_bytes();
        signed.extend_from_slice(&msg);
        let verify = || {
            let m = AuthenticatedMessage::parse(&signed).unwrap();
            let out = rt.block_on(auth.verify_dkim(&m));
            out.iter().all(|o| o.result() == &DkimResult::Pass) && !out.is_empty()
        };
        // Warm the cache, and make sure what is measured is a pass.
        assert!(verify(), "{label}: the signature does not verify");
        c.bench_function(&format!("verify 4 KiB {label}"), |b| b.iter(verify));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
