//! DKIM end to end: `tern dkim keygen` prints the record, the record is
//! served by a real DNS server, mail relayed through the whole stack
//! reaches the MX sink dual-signed and PyPI's dkimpy verifies both
//! signatures there; `tern dkim list` checks publication through the
//! resolver service.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Stack, ZONE, smtp_send};
use tern_testkit::{DnsServer, dkimpy_verify, wait_for};

/// `tern dkim ARGS` with only the given TERN_* variables.
fn tern_dkim(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TERN_") {
            c.env_remove(k);
        }
    }
    let out = c
        .arg("dkim")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tern dkim {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The zone line `keygen` printed.
fn record(keygen_output: &str) -> String {
    let line = keygen_output
        .lines()
        .find(|l| l.contains("._domainkey.") && l.contains(" IN TXT "))
        .unwrap_or_else(|| panic!("no DNS record in {keygen_output}"));
    line.to_string()
}

const MESSAGE: &[u8] = "From: Shop <orders@example.com>\r\n\
To: bob@remote.test\r\n\
Subject: your order, with a subject long enough that the client folded\r\n\
\x20it onto a second line\r\n\
Date: Wed, 2 Dec 2026 22:00:00 +0000\r\n\
Message-ID: <order-7@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Grüße, your order ships today.\r\n\
.a line that starts with a dot\r\n\
.\r\n\
..\r\n"
    .as_bytes();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_mail_is_dual_signed_end_to_end_and_list_checks_dns() {
    let keys = tempfile::tempdir().unwrap();
    let dir = keys.path().to_str().unwrap();
    let env = [("TERN_DKIM_KEYS_DIR", dir)];
    let rsa = tern_dkim(
        &["keygen", "--domain", "example.com", "--selector", "r1"],
        &env,
    );
    let ed = tern_dkim(
        &[
            "keygen",
            "--domain",
            "example.com",
            "--selector",
            "e1",
            "--algorithm",
            "ed25519",
        ],
        &env,
    );
    let rsa_line = record(&rsa);
    assert!(
        rsa_line.starts_with("r1._domainkey.example.com. IN TXT \"v=DKIM1; k=rsa; p=MII"),
        "{rsa_line}"
    );
    // A 2048-bit key's record is longer than one 255-octet string.
    assert!(rsa_line.contains("\" \""), "{rsa_line}");
    let zone = format!(
        "$ORIGIN example.com.\n$TTL 60\n@ IN SOA ns.example.com. admin.example.com. 1 3600 600 86400 60\n@ IN NS ns.example.com.\nns IN A 127.0.0.1\n{rsa_line}\n{}\n",
        record(&ed)
    );
    let dns = DnsServer::start(&[("remote.test.", ZONE), ("example.com.", &zone)]).await;
    let dns_addr = dns.addr().to_string();
    let stack = Stack::start(&[
        ("trusted_networks", "127.0.0.0/8"),
        ("dns_nameservers", &dns_addr),
        ("dkim_keys_dir", dir),
        ("dkim_domains", "example.com"),
    ])
    .await;

    let reply = smtp_send(
        stack.addr("smtp"),
        "orders@example.com",
        &["bob@remote.test"],
        MESSAGE,
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let received = wait_for(
        "the MX sink to receive the message",
        Duration::from_secs(30),
        || {
            let m = stack.sink.messages();
            async move { m.into_iter().next() }
        },
    )
    .await;
    assert!(received.data.ends_with(MESSAGE), "the body arrived changed");
    let data = received.data.clone();
    let addr = dns.addr();
    let mut got = tokio::task::spawn_blocking(move || dkimpy_verify(addr, &data))
        .await
        .unwrap();
    got.sort_by(|a, b| a.algorithm.cmp(&b.algorithm));
    let summary: Vec<(&str, &str, bool)> = got
        .iter()
        .map(|v| (v.algorithm.as_str(), v.selector.as_str(), v.pass))
        .collect();
    assert_eq!(
        summary,
        [("ed25519-sha256", "e1", true), ("rsa-sha256", "r1", true)]
    );

    // A key not yet in DNS, as after keygen and before publishing.
    tern_dkim(
        &["keygen", "--domain", "example.com", "--selector", "r2"],
        &env,
    );
    let resolver = format!("http://{}", stack.addr("resolver grpc"));
    let list = tern_dkim(
        &["list"],
        &[
            ("TERN_DKIM_KEYS_DIR", dir),
            ("TERN_RESOLVER_URL", &resolver),
        ],
    );
    let status = |name: &str| {
        list.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} not listed: {list}"))
            .to_string()
    };
    assert!(
        status("r1._domainkey.example.com.").ends_with(" published"),
        "{list}"
    );
    assert!(
        status("e1._domainkey.example.com.").contains("ed25519  published"),
        "{list}"
    );
    assert!(
        status("r2._domainkey.example.com.").ends_with("NOT PUBLISHED"),
        "{list}"
    );
    stack.stop().await;
}
