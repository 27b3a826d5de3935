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
tls        IN MX  10 mx.tls
mx.tls     IN A   127.0.0.5
broken     IN MX  10 mx.broken
mx.broken  IN A   127.0.0.6
brokenfb   IN MX  10 mx.broken
brokenfb   IN MX  20 mx.tls
plain      IN MX  10 mx.plain
mx.plain   IN A   127.0.0.7
v6only     IN MX  10 mx.v6only
mx.v6only  IN AAAA ::1
sink       IN MX  10 mx.sink
mx.sink    IN A   127.0.0.8
pfmx       IN MX  10 mx.pfmx
mx.pfmx    IN A   127.0.0.10
gws        IN MX  10 aspmx.l.google.com.
rtls       IN MX  10 mx.rtls
mx.rtls    IN A   127.0.0.21
nortls     IN MX  10 mx.nortls
mx.nortls  IN A   127.0.0.22
wrongname  IN MX  10 mx.wrongname
mx.wrongname IN A 127.0.0.23
stall      IN MX  10 mx.stall
mx.stall   IN A   127.0.0.24
ws1        IN MX  10 mx1.hosted
ws2        IN MX  10 mx2.hosted
mx1.hosted IN A   127.0.0.11
mx2.hosted IN A   127.0.0.12
"#;

/// The one Google MX name the tests need, on loopback: so the shipped
/// `google` provider (`.google.com`) matches a Workspace-style domain.
pub const GOOGLE_ZONE: &str = r#"
$ORIGIN google.com.
$TTL 300
@          IN SOA ns.google.com. hostmaster.google.com. 1 3600 600 86400 60
aspmx.l    IN A   127.0.0.13
"#;

pub const WAIT: Duration = Duration::from_secs(20);

/// What every delivery instance of a harness shares.
#[derive(Clone)]
pub struct DeliveryBase {
    pub nats_url: String,
    pub resolver_url: String,
    /// The port every MX host is reached on (the sink's).
    pub port: String,
}

impl DeliveryBase {
    /// Start one delivery instance (its own consumer client, pool and
    /// limiter handle; only NATS is shared, as between processes).
    pub async fn spawn(
        &self,
        extra: &[(&str, &str)],
        shutdown: Shutdown,
    ) -> JoinHandle<Result<(), tern_delivery::Error>> {
        self.spawn_with_admin(extra, shutdown).await.0
    }

    /// [`DeliveryBase::spawn`], also returning the admin HTTP address.
    pub async fn spawn_with_admin(
        &self,
        extra: &[(&str, &str)],
        shutdown: Shutdown,
    ) -> (
        JoinHandle<Result<(), tern_delivery::Error>>,
        std::net::SocketAddr,
    ) {
        let mut pairs: Vec<(&str, &str)> = vec![
            ("nats_url", self.nats_url.as_str()),
            ("hostname", "delivery.test"),
            ("delivery_grpc_listen", "127.0.0.1:0"),
            ("delivery_admin_listen", "127.0.0.1:0"),
            ("resolver_url", self.resolver_url.as_str()),
            ("remote_smtp_port", self.port.as_str()),
            ("delivery_connect_timeout", "2s"),
            ("delivery_concurrency", "4"),
            ("shutdown_grace", "15s"),
        ];
        for (k, v) in extra {
            pairs.retain(|(pk, _)| pk != k);
            pairs.push((k, v));
        }
        let src = Source::from_pairs(pairs);
        let mut config = tern_delivery::Config::from_source(&src).unwrap();
        src.finish().unwrap();
        config.smtp_timeouts = tern_smtp::client::Timeouts::uniform(Duration::from_secs(15));
        let bound = tern_delivery::bind(config).await.unwrap();
        assert_eq!(bound.addrs().len(), 2);
        let admin = bound
            .addrs()
            .into_iter()
            .find(|(n, _)| *n == "delivery admin")
            .unwrap()
            .1;
        (tokio::spawn(bound.run(shutdown)), admin)
    }
}

pub struct Harness {
    pub base: DeliveryBase,
    _nats: NatsServer,
    _dns: DnsServer,
    pub sink: SmtpSink,
    pub js: jetstream::Context,
    pub shutdown: Shutdown,
    pub delivery: Option<JoinHandle<Result<(), tern_delivery::Error>>>,
    resolver_shutdown: Shutdown,
    /// The trust anchor file of a DNSSEC harness.
    _anchor: Option<tempfile::NamedTempFile>,
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
        Self::start_opts(resolver_url, &[]).await
    }

    /// Delivery with extra config pairs (they override the defaults here).
    pub async fn start_extra(extra: &[(&str, &str)]) -> Harness {
        Self::start_opts(None, extra).await
    }

    /// Everything but delivery (tests that run delivery as child processes).
    pub async fn start_without_delivery() -> Harness {
        Self::start_full(None, &[], false).await
    }

    /// Delivery with extra config, optionally another resolver URL.
    pub async fn start_opts(resolver_url: Option<String>, extra: &[(&str, &str)]) -> Harness {
        Self::start_full(resolver_url, extra, true).await
    }

    /// Delivery with extra config, the `test.` zone DNSSEC-signed and the
    /// resolver validating it (its key the only trust anchor), so its MX
    /// answers are `authenticated` (what REQUIRETLS needs, RFC 8689 §4.2.1).
    pub async fn start_signed(extra: &[(&str, &str)]) -> Harness {
        Self::start_inner(None, extra, true, true).await
    }

    /// The general form.
    pub async fn start_full(
        resolver_url: Option<String>,
        extra: &[(&str, &str)],
        with_delivery: bool,
    ) -> Harness {
        Self::start_inner(resolver_url, extra, with_delivery, false).await
    }

    async fn start_inner(
        resolver_url: Option<String>,
        extra: &[(&str, &str)],
        with_delivery: bool,
        signed: bool,
    ) -> Harness {
        let nats = NatsServer::start().await;
        let zones = [("test.", ZONE), ("google.com.", GOOGLE_ZONE)];
        let dns = if signed {
            DnsServer::start_signed(&zones, &["test."]).await
        } else {
            DnsServer::start(&zones).await
        };
        let sink = SmtpSink::start().await;

        let ns = dns.addr().to_string();
        let mut rpairs = vec![
            ("resolver_grpc_listen", "127.0.0.1:0".to_string()),
            ("resolver_admin_listen", "127.0.0.1:0".to_string()),
            ("dns_nameservers", ns),
            ("dns_timeout", "2s".to_string()),
        ];
        let anchor = signed.then(|| {
            let file = tempfile::NamedTempFile::new().unwrap();
            let key = dns.trust_anchor("test.").unwrap();
            std::fs::write(file.path(), format!("{key}\n")).unwrap();
            rpairs.push(("dns_dnssec", "true".to_string()));
            rpairs.push((
                "dns_trust_anchor",
                file.path().to_str().unwrap().to_string(),
            ));
            file
        });
        let rsrc = Source::from_pairs(rpairs.iter().map(|(k, v)| (*k, v.as_str())));
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
        let base = DeliveryBase {
            nats_url: nats.url(),
            resolver_url: url,
            port,
        };
        let shutdown = Shutdown::new();
        let delivery = if with_delivery {
            Some(base.spawn(extra, shutdown.clone()).await)
        } else {
            None
        };

        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        bus::ensure_streams(&js, 1).await.unwrap();
        Harness {
            base,
            _nats: nats,
            _dns: dns,
            sink,
            js,
            shutdown,
            delivery,
            resolver_shutdown,
            _anchor: anchor,
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

/// A message the Python peer accepted.
#[derive(Debug, Clone)]
pub struct PeerMessage {
    pub conn: u64,
    /// The TLS version ("TLSv1.3") when the transaction ran over TLS.
    pub tls: Option<String>,
    pub helo: String,
    pub ehlo_count: u64,
    pub mail_from: String,
    pub mail_params: Vec<String>,
    pub rcpts: Vec<String>,
    /// MAIL and RCPT arrived as one group before the reply to MAIL.
    pub pipelined: bool,
    /// Sent with BDAT rather than DATA.
    pub bdat: bool,
    pub data: Vec<u8>,
    /// When the peer took it (Unix time, seconds).
    pub at: f64,
}

/// `tests/peers/smtp_peer.py`: an SMTP server in Python's standard library
/// (TLS by OpenSSL), a peer independent of Tern's SMTP and TLS code.
pub struct PyPeer {
    child: std::process::Child,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate and key, generated by tern_runtime::tls.
pub fn self_signed(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    tern_runtime::tls::TlsConfig { files: None }
        .server_config(dir, name)
        .unwrap();
    (dir.join("tls/cert.pem"), dir.join("tls/key.pem"))
}

impl PyPeer {
    /// Listen on `ip:port` with the given flags (see the script); `tls`
    /// generates a self-signed certificate and offers STARTTLS.
    pub fn start(ip: &str, port: &str, tls: bool, flags: &[&str]) -> PyPeer {
        Self::start_inner(ip, port, tls, None, flags)
    }

    /// Like [`PyPeer::start`] with STARTTLS, presenting the given
    /// certificate (e.g. one from `tern_testkit::TestPki::issue_server`).
    pub fn start_with_cert(
        ip: &str,
        port: &str,
        cert: &std::path::Path,
        key: &std::path::Path,
        flags: &[&str],
    ) -> PyPeer {
        Self::start_inner(ip, port, true, Some((cert, key)), flags)
    }

    fn start_inner(
        ip: &str,
        port: &str,
        tls: bool,
        files: Option<(&std::path::Path, &std::path::Path)>,
        flags: &[&str],
    ) -> PyPeer {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("peer.jsonl");
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/smtp_peer.py");
        let mut cmd = std::process::Command::new("python3");
        cmd.arg(&script)
            .args(["--listen", ip, "--port", port, "--log"])
            .arg(&log)
            .args(flags)
            .stdout(std::process::Stdio::piped());
        if let Some((cert, key)) = files {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        } else if tls {
            let (cert, key) = self_signed(dir.path(), "mx.tls.test");
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("python3 is required for the delivery tests' SMTP peer: {e}")
        });
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), port, "peer did not start on {ip}:{port}");
        PyPeer {
            child,
            log,
            _dir: dir,
        }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Connections accepted so far, with the client's address.
    pub fn connections(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["event"] == "connect")
            .map(|e| e["peer"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// How many events of kind `name` (`throttled`, `connect`, ...) the peer logged.
    pub fn events_named(&self, name: &str) -> usize {
        self.events().iter().filter(|e| e["event"] == name).count()
    }

    /// Connections that ended with QUIT.
    pub fn quits(&self) -> usize {
        self.events()
            .iter()
            .filter(|e| e["event"] == "close" && e["quit"] == true)
            .count()
    }

    /// The most connections open at once.
    pub fn max_concurrent(&self) -> u64 {
        self.events()
            .iter()
            .filter_map(|e| e["max_concurrent"].as_u64())
            .max()
            .unwrap_or(0)
    }

    pub fn messages(&self) -> Vec<PeerMessage> {
        let strs = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        self.events()
            .iter()
            .filter(|e| e["event"] == "message")
            .map(|e| PeerMessage {
                conn: e["conn"].as_u64().unwrap_or(0),
                tls: e["tls"].as_str().map(String::from),
                helo: e["helo"].as_str().unwrap_or("").into(),
                ehlo_count: e["ehlo_count"].as_u64().unwrap_or(0),
                mail_from: e["mail_from"].as_str().unwrap_or("").into(),
                mail_params: strs(&e["mail_params"]),
                rcpts: strs(&e["rcpts"]),
                pipelined: e["pipelined"] == true,
                bdat: e["bdat"] == true,
                data: unhex(e["data_hex"].as_str().unwrap_or("")),
                at: e["at"].as_f64().unwrap_or(0.0),
            })
            .collect()
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

impl Harness {
    /// Wait until the latest result for `destination` is the one for `message_id`.
    pub async fn result_of(&self, destination: &str, message_id: &str) -> JobResult {
        let subject = bus::results_subject(destination);
        wait_for(&format!("the result of {message_id}"), WAIT, || {
            let (js, subject) = (self.js.clone(), subject.clone());
            async move {
                let stream = js.get_stream(bus::RESULTS_STREAM).await.ok()?;
                let m = stream
                    .get_last_raw_message_by_subject(&subject)
                    .await
                    .ok()?;
                let r = JobResult::decode(m.payload).ok()?;
                (r.message_id == message_id).then_some(r)
            }
        })
        .await
    }

    /// Every result stored so far for `destination`.
    /// Wait until at least `n` results for `destination` are stored.
    pub async fn wait_results(&self, destination: &str, n: usize) {
        wait_for(
            &format!("{n} results for {destination}"),
            WAIT * 2,
            || async { (self.results(destination).await.len() >= n).then_some(()) },
        )
        .await;
    }

    pub async fn results(&self, destination: &str) -> Vec<JobResult> {
        let stream = self.js.get_stream(bus::RESULTS_STREAM).await.unwrap();
        let mut out = Vec::new();
        let mut info = stream.clone();
        let last = info.info().await.unwrap().state.last_sequence;
        for seq in 1..=last {
            if let Ok(m) = stream.get_raw_message(seq).await
                && m.subject.as_str() == bus::results_subject(destination)
            {
                out.push(JobResult::decode(m.payload).unwrap());
            }
        }
        out
    }
}
