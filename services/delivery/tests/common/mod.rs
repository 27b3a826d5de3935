//! Shared harness for the delivery tests: a real nats-server, the
//! in-process DNS server, the real resolver service, delivery, and SMTP
//! peers (the testkit sink plus small scripted peers).

#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use prost::Message as _;
use tern_proto::body_ref::Location;
use tern_proto::{BodyRef, Job, JobResult, Outcome, Recipient};
use tern_runtime::config::Source;
use tern_runtime::{Shutdown, bus};
use tern_testkit::{DnsServer, NatsServer, SmtpSink, wait_for};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub const ZONE: &str = r#"
$ORIGIN test.
$TTL 300
@          IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60
remote     IN MX  10 mx.remote
mx.remote  IN A   127.0.0.1
fallback   IN MX  10 mx.down
fallback   IN MX  20 mx.remote
down       IN MX  10 mx.down
mx.down    IN A   127.0.0.2
grey       IN MX  10 mx.grey
grey       IN MX  20 mx.remote
mx.grey    IN A   127.0.0.3
slow       IN MX  10 mx.slow
mx.slow    IN A   127.0.0.4
nullmx     IN MX  0 .
"#;

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Harness {
    _nats: NatsServer,
    _dns: DnsServer,
    pub sink: SmtpSink,
    pub js: jetstream::Context,
    pub shutdown: Shutdown,
    pub delivery: Option<JoinHandle<Result<(), tern_delivery::Error>>>,
    resolver_shutdown: Shutdown,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.trigger();
        self.resolver_shutdown.trigger();
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(None).await
    }

    /// `resolver_url` overrides the resolver started here (to test an unreachable one).
    pub async fn start_with(resolver_url: Option<String>) -> Harness {
        let nats = NatsServer::start().await;
        let dns = DnsServer::start(&[("test.", ZONE)]).await;
        let sink = SmtpSink::start().await;

        let ns = dns.addr().to_string();
        let rsrc = Source::from_pairs([
            ("resolver_grpc_listen", "127.0.0.1:0"),
            ("resolver_admin_listen", "127.0.0.1:0"),
            ("dns_nameservers", ns.as_str()),
            ("dns_timeout", "2s"),
        ]);
        let resolver = tern_resolver::bind(tern_resolver::Config::from_source(&rsrc).unwrap())
            .await
            .unwrap();
        let resolver_grpc = resolver
            .addrs()
            .into_iter()
            .find(|(n, _)| *n == "resolver grpc")
            .unwrap()
            .1;
        let resolver_shutdown = Shutdown::new();
        tokio::spawn(resolver.run(resolver_shutdown.clone()));

        let url = resolver_url.unwrap_or_else(|| tern_runtime::grpc::url_for(resolver_grpc));
        let port = sink.addr().port().to_string();
        let nats_url = nats.url();
        let src = Source::from_pairs([
            ("nats_url", nats_url.as_str()),
            ("hostname", "delivery.test"),
            ("delivery_grpc_listen", "127.0.0.1:0"),
            ("delivery_admin_listen", "127.0.0.1:0"),
            ("resolver_url", url.as_str()),
            ("remote_smtp_port", port.as_str()),
            ("delivery_connect_timeout", "2s"),
            ("delivery_concurrency", "4"),
            ("shutdown_grace", "15s"),
        ]);
        let mut config = tern_delivery::Config::from_source(&src).unwrap();
        src.finish().unwrap();
        config.smtp_timeouts = tern_smtp::client::Timeouts::uniform(Duration::from_secs(15));
        let bound = tern_delivery::bind(config).await.unwrap();
        assert_eq!(bound.addrs().len(), 2);
        let shutdown = Shutdown::new();
        let delivery = tokio::spawn(bound.run(shutdown.clone()));

        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        bus::ensure_streams(&js, 1).await.unwrap();
        Harness {
            _nats: nats,
            _dns: dns,
            sink,
            js,
            shutdown,
            delivery: Some(delivery),
            resolver_shutdown,
        }
    }

    pub async fn publish(&self, job: &Job) {
        self.publish_with_headers(job, async_nats::HeaderMap::new())
            .await;
    }

    pub async fn publish_with_headers(&self, job: &Job, headers: async_nats::HeaderMap) {
        self.js
            .publish_with_headers(
                bus::remote_jobs_subject(&job.destination),
                headers,
                job.encode_to_vec().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// The headers of the latest result for `destination`.
    pub async fn result_headers(&self, destination: &str) -> async_nats::HeaderMap {
        let stream = self.js.get_stream(bus::RESULTS_STREAM).await.unwrap();
        stream
            .get_last_raw_message_by_subject(&bus::results_subject(destination))
            .await
            .unwrap()
            .headers
    }

    /// The latest result for `destination`, with its NATS message id.
    pub async fn result(&self, destination: &str) -> (JobResult, String) {
        let subject = bus::results_subject(destination);
        wait_for(&format!("a result on {subject}"), WAIT, || {
            let (js, subject) = (self.js.clone(), subject.clone());
            async move {
                let stream = js.get_stream(bus::RESULTS_STREAM).await.ok()?;
                let m = stream
                    .get_last_raw_message_by_subject(&subject)
                    .await
                    .ok()?;
                let id = m
                    .headers
                    .get("Nats-Msg-Id")
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default();
                Some((JobResult::decode(m.payload).ok()?, id))
            }
        })
        .await
    }

    pub async fn jobs_left(&self) -> u64 {
        let mut s = self.js.get_stream(bus::JOBS_STREAM).await.unwrap();
        s.info().await.unwrap().state.messages
    }

    pub async fn wait_jobs_left(&self, n: u64) {
        wait_for(
            &format!("{n} jobs left on the jobs stream"),
            WAIT,
            || async move { (self.jobs_left().await == n).then_some(()) },
        )
        .await;
    }

    pub async fn stop(&mut self) -> Result<(), tern_delivery::Error> {
        self.shutdown.trigger();
        let task = self.delivery.take().unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("delivery stops within its grace")
            .unwrap()
    }
}

pub fn job(id: &str, destination: &str, rcpts: &[&str], body: &[u8]) -> Job {
    Job {
        job_id: format!("{id}/{destination}"),
        message_id: id.into(),
        mail_from: "sender@origin.example".into(),
        rcpts: rcpts
            .iter()
            .map(|r| Recipient {
                address: r.to_string(),
                ..Default::default()
            })
            .collect(),
        destination: destination.into(),
        body: Some(BodyRef {
            location: Some(Location::Inline(Bytes::copy_from_slice(body))),
            size: body.len() as u64,
        }),
        attempt: 0,
        ..Default::default()
    }
}

pub fn outcomes(r: &JobResult) -> Vec<(String, Outcome)> {
    r.results
        .iter()
        .map(|x| (x.address.clone(), Outcome::try_from(x.outcome).unwrap()))
        .collect()
}

pub const BODY: &[u8] =
    b"From: sender@origin.example\r\nTo: alice@remote.test\r\nSubject: dots\r\n\r\n\
.leading dot\r\n..two dots\r\n.\r\nend of body\r\n";

/// A one-connection-at-a-time SMTP peer. A greeting other than 2xx is
/// followed only by QUIT handling. With `hold`, the reply to the end of
/// DATA waits until it is released. Reports "connected" and "data" events.
pub async fn scripted_peer(
    listener: TcpListener,
    greeting: &'static str,
    mut hold: Option<oneshot::Receiver<()>>,
    events: mpsc::UnboundedSender<&'static str>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = events.send("connected");
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        if w.write_all(greeting.as_bytes()).await.is_err() {
            continue;
        }
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                break;
            }
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "QUIT" => {
                    let _ = w.write_all(b"221 bye\r\n").await;
                    break;
                }
                _ if !greeting.starts_with('2') => b"503 5.5.1 go away\r\n",
                "EHLO" | "HELO" => b"250 slow.test\r\n",
                "MAIL" | "RCPT" => b"250 ok\r\n",
                "DATA" => {
                    let _ = w.write_all(b"354 go\r\n").await;
                    loop {
                        line.clear();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 || line == ".\r\n" {
                            break;
                        }
                    }
                    let _ = events.send("data");
                    if let Some(h) = hold.take() {
                        let _ = h.await;
                    }
                    b"250 2.0.0 accepted\r\n"
                }
                _ => b"502 5.5.2 no\r\n",
            };
            if w.write_all(reply).await.is_err() {
                break;
            }
        }
    }
}
