//! The consumer lag the autoscaler and the dashboards read, from the queue's
//! real admin `/metrics` endpoint (own test binary: the Prometheus recorder
//! is process-wide). The queue reports it for every consumer; this checks
//! the `delivery` consumer's: jobs waiting for a worker, and jobs taken but
//! not yet acked.

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use tern_runtime::config::Source;
use tern_runtime::{Shutdown, bus};
use tern_testkit::{NatsServer, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

async fn gauge(admin: SocketAddr, series: &str) -> Option<f64> {
    let mut s = tokio::net::TcpStream::connect(admin).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn gauge_is(admin: SocketAddr, series: &str, want: f64) {
    wait_for(&format!("{series} at {want}"), WAIT, || async {
        gauge(admin, series).await.filter(|&v| v == want)
    })
    .await;
}

#[tokio::test]
async fn delivery_consumer_lag_rises_with_a_backlog_and_falls_when_it_drains() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    bus::ensure_streams(&js, 1).await.unwrap();
    // The consumer delivery reads with; nobody takes from it until below.
    let consumer = bus::pull_consumer(
        &js,
        bus::JOBS_STREAM,
        bus::consumers::DELIVERY,
        bus::REMOTE_JOBS_FILTER,
        Duration::from_secs(60),
    )
    .await
    .unwrap();

    let url = nats.url();
    let src = Source::from_pairs([
        ("nats_url", url.as_str()),
        ("queue_grpc_listen", "127.0.0.1:0"),
        ("queue_admin_listen", "127.0.0.1:0"),
    ]);
    let config = tern_queue::Config::from_source(&src).unwrap();
    let bound = tern_queue::bind(config).await.unwrap();
    let admin = bound
        .addrs()
        .into_iter()
        .find(|(n, _)| *n == "queue admin")
        .unwrap()
        .1;
    let stop = Shutdown::new();
    let task = tokio::spawn(bound.run(stop.clone()));

    let pending = "tern_jetstream_consumer_pending{consumer=\"delivery\"}";
    let ack_pending = "tern_jetstream_consumer_ack_pending{consumer=\"delivery\"}";
    gauge_is(admin, pending, 0.0).await;

    // A backlog of remote jobs no worker has taken.
    let n = 8;
    for i in 0..n {
        bus::publish(
            &js,
            "tern.jobs.remote.lag.test".into(),
            bytes::Bytes::from_static(b"job"),
            &format!("lag{i}"),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    gauge_is(admin, pending, n as f64).await;
    gauge_is(admin, ack_pending, 0.0).await;

    // Taken by a worker, not yet acked: in flight.
    let mut batch = consumer.fetch().max_messages(n).messages().await.unwrap();
    let mut taken = Vec::new();
    while let Some(m) = batch.next().await {
        taken.push(m.unwrap());
    }
    assert_eq!(taken.len(), n);
    gauge_is(admin, pending, 0.0).await;
    gauge_is(admin, ack_pending, n as f64).await;

    // Done: the lag is back at zero.
    for m in taken {
        m.double_ack().await.unwrap();
    }
    gauge_is(admin, ack_pending, 0.0).await;
    gauge_is(admin, pending, 0.0).await;

    stop.trigger();
    task.await.unwrap().unwrap();
}
