//! Benchmark helper (deploy/bench/delivery/bench.sh). Started before the
//! load, it watches two subjects with plain NATS subscriptions (which see
//! every JetStream publish as it happens, without consuming anything):
//! `tern.spool`, where ingress stores a message just before answering
//! `250`, and `tern.results.>`, where delivery reports the remote MX's reply
//! just after receiving it. For the first `--count` delivered messages it
//! prints the latency between the two (p50, p99, max, by one clock) and the
//! span from the first spooled to the last delivered message.
//!
//!   bench_latency --nats nats://127.0.0.1:4222 --count 20000 --idle 60

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use prost::Message as _;
use tern_proto::{Envelope, JobResult, Outcome};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let url = arg("--nats").unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let count: usize = arg("--count")
        .and_then(|c| c.parse().ok())
        .unwrap_or(20_000);
    let idle = Duration::from_secs(arg("--idle").and_then(|c| c.parse().ok()).unwrap_or(60));
    let client = async_nats::connect(url).await.unwrap();
    let mut spool = client.subscribe("tern.spool").await.unwrap();
    let mut results = client.subscribe("tern.results.>").await.unwrap();
    client.flush().await.unwrap();
    println!("ready");
    let mut spooled: HashMap<String, Instant> = HashMap::with_capacity(count);
    let mut lat_ms: Vec<f64> = Vec::with_capacity(count);
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let (mut deferred, mut bounced) = (0usize, 0usize);
    while lat_ms.len() < count {
        tokio::select! {
            m = spool.next() => {
                let Some(m) = m else { break };
                let now = Instant::now();
                if let Ok(e) = Envelope::decode(m.payload) {
                    first.get_or_insert(now);
                    spooled.insert(e.id, now);
                }
            }
            m = results.next() => {
                let Some(m) = m else { break };
                let now = Instant::now();
                let Ok(r) = JobResult::decode(m.payload) else { continue };
                let all_delivered = r.results.iter().all(|x| x.outcome == Outcome::Delivered as i32);
                deferred += r.results.iter().filter(|x| x.outcome == Outcome::Deferred as i32).count();
                bounced += r.results.iter().filter(|x| x.outcome == Outcome::Bounced as i32).count();
                if all_delivered && let Some(t0) = spooled.remove(&r.message_id) {
                    lat_ms.push(now.duration_since(t0).as_secs_f64() * 1000.0);
                    last = Some(now);
                }
            }
            _ = tokio::time::sleep(idle) => break,
        }
    }
    if lat_ms.is_empty() {
        println!("delivered=0 deferred={deferred} bounced={bounced}");
        return;
    }
    lat_ms.sort_by(|a, b| a.total_cmp(b));
    let pct =
        |p: f64| lat_ms[((lat_ms.len() as f64 * p).ceil() as usize).clamp(1, lat_ms.len()) - 1];
    let span = last.unwrap().duration_since(first.unwrap()).as_secs_f64();
    println!(
        "delivered={} p50_ms={:.1} p99_ms={:.1} max_ms={:.1} span_s={:.2} rate={:.0} deferred={deferred} bounced={bounced}",
        lat_ms.len(),
        pct(0.50),
        pct(0.99),
        lat_ms[lat_ms.len() - 1],
        span,
        lat_ms.len() as f64 / span.max(0.001)
    );
}
