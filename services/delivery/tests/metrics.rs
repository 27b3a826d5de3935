//! The consumer lag the autoscaler scales on, read from delivery's real
//! admin `/metrics` endpoint (own test binary: the Prometheus recorder is
//! process-wide).

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;

use common::{BODY, Harness, PyPeer, WAIT, job};
use tern_runtime::Shutdown;
use tern_testkit::wait_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn gauge(admin: SocketAddr, name: &str) -> Option<f64> {
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn consumer_lag_rises_with_a_backlog_and_falls_when_it_drains() {
    let h = Harness::start_without_delivery().await;
    // One attempt at a time, each held for a second by the peer: a backlog.
    let peer = PyPeer::start("127.0.0.7", &h.base.port, false, &["--hold-data", "1"]);
    let stop = Shutdown::new();
    let (task, admin) = h
        .base
        .spawn_with_admin(&[("delivery_concurrency", "1")], stop.clone())
        .await;
    let n = 8;
    for i in 0..n {
        h.publish(&job(
            &format!("g{i}"),
            "plain.test",
            &["q@plain.test"],
            BODY,
        ))
        .await;
    }
    let seen = wait_for("a lag above zero", WAIT, || async {
        gauge(admin, "tern_delivery_consumer_pending")
            .await
            .filter(|&v| v >= 1.0)
    })
    .await;
    assert!(seen <= n as f64);
    wait_for("every message delivered", WAIT, || async {
        (peer.messages().len() == n).then_some(())
    })
    .await;
    wait_for("the lag back at zero", WAIT, || async {
        gauge(admin, "tern_delivery_consumer_pending")
            .await
            .filter(|&v| v == 0.0)
    })
    .await;
    stop.trigger();
    task.await.unwrap().unwrap();
}
