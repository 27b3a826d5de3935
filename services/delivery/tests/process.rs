//! Delivery as real operating-system processes (this test binary re-run as
//! a child that runs only delivery): two processes sharing one consumer
//! deliver every message exactly once, and a process killed with SIGKILL
//! mid-batch loses nothing (its jobs come back after the ack deadline).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashMap;
use std::process::{Child, Command};

use common::{Harness, PyPeer, WAIT, job};
use tern_proto::Outcome;
use tern_runtime::Shutdown;
use tern_runtime::config::Source;
use tern_testkit::wait_for;

const CHILD_ENV: &str = "TERN_DELIVERY_TEST_CHILD";

/// Entry point of the child processes: runs delivery with the `k=v;k=v`
/// configuration in `TERN_DELIVERY_TEST_CHILD` until killed or stopped.
#[tokio::test]
#[ignore = "run by the process tests as a child process"]
async fn child_delivery_process() {
    let spec = std::env::var(CHILD_ENV).expect("only run as a child");
    let pairs: Vec<(&str, &str)> = spec
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let src = Source::from_pairs(pairs);
    let mut config = tern_delivery::Config::from_source(&src).unwrap();
    config.smtp_timeouts = tern_smtp::client::Timeouts::uniform(std::time::Duration::from_secs(15));
    tern_delivery::run(config, Shutdown::new()).await.unwrap();
}

/// A delivery child process.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(h: &Harness, extra: &[(&str, &str)]) -> Proc {
    let mut pairs = vec![
        ("nats_url", h.base.nats_url.as_str()),
        ("hostname", "delivery.test"),
        ("delivery_grpc_listen", "127.0.0.1:0"),
        ("delivery_admin_listen", "127.0.0.1:0"),
        ("resolver_url", h.base.resolver_url.as_str()),
        ("remote_smtp_port", h.base.port.as_str()),
        ("delivery_connect_timeout", "2s"),
        ("delivery_ack_wait", "3s"),
    ];
    pairs.extend_from_slice(extra);
    let spec: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_delivery_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec.join(";"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

fn body(id: &str) -> Vec<u8> {
    format!("Message-ID: <{id}@origin.example>\r\nSubject: {id}\r\n\r\nbody of {id}\r\n")
        .into_bytes()
}

/// How often each message id arrived at the peer.
fn arrivals(data: impl Iterator<Item = Vec<u8>>) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for d in data {
        let text = String::from_utf8_lossy(&d).into_owned();
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .to_string();
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

#[tokio::test]
async fn two_delivery_processes_deliver_every_message_exactly_once() {
    let h = Harness::start_without_delivery().await;
    let _p1 = spawn(&h, &[("delivery_ehlo_name", "p1.test")]);
    let _p2 = spawn(&h, &[("delivery_ehlo_name", "p2.test")]);
    let n = 200;
    for i in 0..n {
        let id = format!("x{i}");
        h.publish(&job(&id, "remote.test", &["alice@remote.test"], &body(&id)))
            .await;
    }
    wait_for("every message at the sink", WAIT * 3, || async {
        (h.sink.messages().len() >= n).then_some(())
    })
    .await;
    h.wait_jobs_left(0).await;
    let msgs = h.sink.messages();
    let seen = arrivals(msgs.iter().map(|m| m.data.clone()));
    assert_eq!(seen.len(), n, "every message arrived");
    assert!(seen.values().all(|&c| c == 1), "none twice: {seen:?}");
    // Both processes did part of the work.
    for name in ["p1.test", "p2.test"] {
        assert!(
            msgs.iter().any(|m| m.helo == name),
            "{name} delivered nothing"
        );
    }
}

#[tokio::test]
async fn sigkill_mid_batch_loses_nothing() {
    let h = Harness::start_without_delivery().await;
    // Each final reply takes a second, so the batch is mid-flight when killed.
    let peer = PyPeer::start("127.0.0.7", &h.base.port, false, &["--hold-data", "1"]);
    let mut p1 = spawn(&h, &[("delivery_concurrency", "4")]);
    let n = 8;
    for i in 0..n {
        let id = format!("k{i}");
        h.publish(&job(&id, "plain.test", &["k@plain.test"], &body(&id)))
            .await;
    }
    wait_for("transactions in flight", WAIT, || async {
        (peer.connections().len() >= 2).then_some(())
    })
    .await;
    p1.0.kill().unwrap(); // SIGKILL
    p1.0.wait().unwrap();
    let _p2 = spawn(&h, &[("delivery_concurrency", "4")]);
    h.wait_jobs_left(0).await;
    wait_for("a delivered result for every job", WAIT * 2, || async {
        let results = h.results("plain.test").await;
        let delivered: std::collections::HashSet<String> = results
            .iter()
            .filter(|r| {
                r.results
                    .iter()
                    .all(|x| x.outcome == Outcome::Delivered as i32)
            })
            .map(|r| r.message_id.clone())
            .collect();
        (delivered.len() == n).then_some(())
    })
    .await;
    // At least once: every message reached the peer (one killed mid-DATA
    // may have arrived twice, which at-least-once allows).
    let seen = arrivals(peer.messages().into_iter().map(|m| m.data));
    for i in 0..n {
        assert!(
            seen.get(&format!("k{i}")).is_some_and(|&c| c >= 1),
            "k{i} lost: {seen:?}"
        );
    }
}
