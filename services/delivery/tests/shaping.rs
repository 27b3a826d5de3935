//! The shaping file: a provider matched by MX host suffix shares one
//! cluster-wide message rate between its domains, and a changed file is
//! picked up without a restart. Real peers: Python SMTP servers on two
//! loopback addresses, nats-server, the resolver over the in-process DNS.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use tern_testkit::wait_for;

/// Messages per whole Unix second, over both peers.
fn per_second(peers: &[&PyPeer]) -> BTreeMap<u64, u64> {
    let mut m = BTreeMap::new();
    for p in peers {
        for msg in p.messages() {
            *m.entry(msg.at.floor() as u64).or_default() += 1;
        }
    }
    m
}

#[tokio::test]
async fn provider_rate_is_shared_by_its_domains_and_the_file_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shaping.toml");
    std::fs::write(
        &file,
        "include_defaults = false\n\n[provider.hosted]\nmx = [\".hosted.test\"]\nrate = \"3/s\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap().to_string();
    let h = Harness::start_extra(&[
        ("shaping_file", path.as_str()),
        ("delivery_concurrency", "8"),
    ])
    .await;
    let a = PyPeer::start("127.0.0.11", &h.base.port, false, &[]);
    let b = PyPeer::start("127.0.0.12", &h.base.port, false, &[]);
    // Two domains, two MX hosts, two sites: one provider.
    let n = 12;
    for i in 0..n {
        let dest = if i % 2 == 0 { "ws1.test" } else { "ws2.test" };
        h.publish(&job(&format!("s{i}"), dest, &[&format!("u@{dest}")], BODY))
            .await;
    }
    wait_for("every shaped job delivered", WAIT * 2, || async {
        (a.messages().len() + b.messages().len() >= n).then_some(())
    })
    .await;
    assert!(!a.messages().is_empty() && !b.messages().is_empty());
    let seconds = per_second(&[&a, &b]);
    // 3 per second for both domains together (one straggler per second
    // may take its token at the very end of the previous second).
    for (s, c) in &seconds {
        assert!(
            *c <= 4,
            "{c} messages in second {s} at 3/s for the provider: {seconds:?}"
        );
    }
    assert!(seconds.len() >= 3, "12 messages at 3/s in {seconds:?}");

    // Lift the rate in the file: picked up within the reload interval.
    std::fs::write(
        &file,
        "include_defaults = false\n\n[provider.hosted]\nmx = [\".hosted.test\"]\nrate = \"none\"\n",
    )
    .unwrap();
    tokio::time::sleep(tern_delivery::shaping::RELOAD_EVERY * 2).await;
    let before = a.messages().len() + b.messages().len();
    let started = std::time::Instant::now();
    for i in 0..n {
        let dest = if i % 2 == 0 { "ws1.test" } else { "ws2.test" };
        h.publish(&job(&format!("t{i}"), dest, &[&format!("u@{dest}")], BODY))
            .await;
    }
    wait_for("every unshaped job delivered", WAIT, || async {
        (a.messages().len() + b.messages().len() >= before + n).then_some(())
    })
    .await;
    // At 3/s twelve messages need at least three seconds.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "after the reload 12 messages still took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_bad_shaping_file_stops_start_up_naming_the_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shaping.toml");
    std::fs::write(
        &file,
        "[provider.big]\nmx = [\".big.test\"]\nconnection_limt = 4\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let src = tern_runtime::config::Source::from_pairs([
        ("shaping_file", path),
        ("nats_url", "nats://127.0.0.1:1"),
    ]);
    let e = tern_delivery::Config::from_source(&src)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("TERN_SHAPING_FILE") && e.contains("line 3") && e.contains("connection_limt"),
        "{e}"
    );
}
