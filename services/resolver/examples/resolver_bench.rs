//! Benchmark client for the resolver (run by `deploy/bench/resolver/run.sh`,
//! which starts unbound with the bench zone): starts the resolver in this
//! process on loopback against the given nameserver, on its own Tokio
//! runtime (two worker threads named `resolver`, as if it were its own
//! process), then measures from the client runtime
//!
//! 1. cached `ResolveRoute` over gRPC from `--callers` concurrent callers
//!    sharing `--connections` HTTP/2 connections (tonic channels, as the
//!    delivery service uses them): requests per second, latency percentiles,
//!    and CPU per request of the resolver's threads and of the whole process;
//! 2. cold `ResolveRoute` for `--cold` distinct domains (each its own MX
//!    host, so MX, A and AAAA all go upstream): routes per second.
//!
//! Bounded: at most `--requests` cached requests and `--seconds` per phase.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tern_proto::resolver_client::ResolverClient;
use tern_proto::{ResolveRouteRequest, RouteStatus};
use tern_runtime::Shutdown;
use tern_runtime::config::Source;

struct Args {
    nameserver: String,
    callers: usize,
    connections: usize,
    requests: usize,
    cold: usize,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        nameserver: String::new(),
        callers: 50,
        connections: 4,
        requests: 300_000,
        cold: 20_000,
        seconds: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--nameserver" => a.nameserver = v,
            "--callers" => a.callers = v.parse().unwrap(),
            "--connections" => a.connections = v.parse().unwrap(),
            "--requests" => a.requests = v.parse().unwrap(),
            "--cold" => a.cold = v.parse().unwrap(),
            "--seconds" => a.seconds = v.parse().unwrap(),
            _ => panic!("unknown argument {k}"),
        }
    }
    assert!(!a.nameserver.is_empty(), "--nameserver ip:port is required");
    if a.connections == 0 || a.connections > a.callers {
        a.connections = a.callers;
    }
    a
}

/// Run `total` requests (or until `limit`) from `callers` tasks sharing
/// `connections` HTTP/2 connections; each calls `domain(i)` for the i-th
/// request. Returns (elapsed, latencies in µs, failures).
async fn phase(
    grpc: SocketAddr,
    (callers, connections): (usize, usize),
    total: usize,
    limit: Duration,
    domain: Arc<dyn Fn(usize) -> String + Send + Sync>,
) -> (Duration, Vec<u32>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let channels: Vec<_> = (0..connections.max(1))
        .map(|_| tern_runtime::grpc::channel(&tern_runtime::grpc::url_for(grpc)).unwrap())
        .collect();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let mut client = ResolverClient::new(channels[c % channels.len()].clone());
        let (next, domain) = (next.clone(), domain.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut failed = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                let resp = client
                    .resolve_route(ResolveRouteRequest { domain: domain(i) })
                    .await
                    .map(|r| r.into_inner());
                lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                if !matches!(resp, Ok(r) if r.status == RouteStatus::Ok as i32) {
                    failed += 1;
                }
            }
            (lat, failed)
        }));
    }
    let mut all = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (lat, f) = t.await.unwrap();
        all.extend(lat);
        failed += f;
    }
    (started.elapsed(), all, failed)
}

/// CPU time (user + system) from a `stat` file (fields 14 and 15, in clock
/// ticks of 1/100 s on Linux).
fn stat_cpu(stat: &str) -> Duration {
    // The command name (field 2) may contain spaces; count from after it.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    Duration::from_millis(f.iter().sum::<u64>() * 10)
}

/// CPU time of the whole process and of the resolver runtime's threads
/// (those named `resolver`).
#[derive(Clone, Copy)]
struct Cpu {
    process: Duration,
    resolver: Duration,
}

fn cpu_time() -> Cpu {
    let process = stat_cpu(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default());
    let mut resolver = Duration::ZERO;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "resolver" {
            resolver +=
                stat_cpu(&std::fs::read_to_string(task.path().join("stat")).unwrap_or_default());
        }
    }
    Cpu { process, resolver }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            process: self.process.saturating_sub(o.process),
            resolver: self.resolver.saturating_sub(o.resolver),
        }
    }
}

fn report(name: &str, elapsed: Duration, cpu: Cpu, mut lat: Vec<u32>, failed: usize) {
    lat.sort_unstable();
    let pct = |p: f64| {
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len().max(1)) - 1;
        f64::from(lat.get(i).copied().unwrap_or(0)) / 1000.0
    };
    let n = lat.len().max(1) as f64;
    println!(
        "{name}: {} requests in {:.2}s = {:.0}/s; latency ms p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}; failed {failed}; CPU per request: resolver {:.1} µs, resolver + client {:.1} µs",
        lat.len(),
        elapsed.as_secs_f64(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        pct(1.0),
        cpu.resolver.as_secs_f64() * 1e6 / n,
        cpu.process.as_secs_f64() * 1e6 / n,
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    let src = Source::from_pairs([
        ("resolver_grpc_listen", "127.0.0.1:0"),
        ("resolver_admin_listen", "127.0.0.1:0"),
        ("dns_nameservers", a.nameserver.as_str()),
        ("dns_timeout", "5s"),
    ]);
    let config = tern_resolver::Config::from_source(&src).unwrap();
    // The resolver on its own runtime, so its CPU time can be told apart
    // from the client's (and the two do not share one scheduler, as they
    // would not in production).
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("resolver")
        .enable_all()
        .build()
        .unwrap();
    let bound = server_rt
        .spawn(tern_resolver::bind(config))
        .await
        .unwrap()
        .unwrap();
    let grpc = bound
        .addrs()
        .into_iter()
        .find(|(n, _)| *n == "resolver grpc")
        .unwrap()
        .1;
    let shutdown = Shutdown::new();
    let server = server_rt.spawn(bound.run(shutdown.clone()));
    let limit = Duration::from_secs(a.seconds);

    // Warm the one cached domain (two MX hosts of equal preference: the
    // cached answer is cloned and reshuffled on every request).
    let load = (a.callers, a.connections);
    phase(
        grpc,
        (1, 1),
        1,
        limit,
        Arc::new(|_| "cached.bench.test".into()),
    )
    .await;
    let cpu = cpu_time();
    let (elapsed, lat, failed) = phase(
        grpc,
        load,
        a.requests,
        limit,
        Arc::new(|_| "cached.bench.test".into()),
    )
    .await;
    report(
        &format!(
            "cached ResolveRoute, {} callers on {} connections",
            a.callers, a.connections
        ),
        elapsed,
        cpu_time() - cpu,
        lat,
        failed,
    );

    let cpu = cpu_time();
    let (elapsed, lat, failed) = phase(
        grpc,
        load,
        a.cold,
        limit,
        Arc::new(|i| format!("d{i}.bench.test")),
    )
    .await;
    report(
        &format!(
            "cold ResolveRoute (MX + A + AAAA upstream), {} callers",
            a.callers
        ),
        elapsed,
        cpu_time() - cpu,
        lat,
        failed,
    );

    shutdown.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    server_rt.shutdown_background();
}
