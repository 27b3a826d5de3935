//! The whole Tern stack in-process for end-to-end tests: a real nats-server,
//! an in-process DNS server with a `remote.test` zone whose MX points at an
//! SMTP sink, and the five services on ephemeral loopback ports, talking over
//! real gRPC and real NATS. Everything stops when the `Stack` is dropped.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry_sdk::trace::InMemorySpanExporter;
use tern_runtime::Shutdown;
use tern_runtime::config::Source;
use tern_testkit::{DnsServer, NatsServer, SmtpSink};

/// How this test process exports spans: to memory (most tests), or over
/// OTLP to a receiver (the OTLP test). Installed once per process.
pub enum Telemetry {
    /// Spans kept in memory, read back with [`spans`].
    Memory(InMemorySpanExporter),
    /// Spans exported over OTLP/gRPC.
    Otlp(tern_runtime::telemetry::TelemetryGuard),
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

fn memory() -> Telemetry {
    let exporter = InMemorySpanExporter::default();
    let guard = tern_runtime::telemetry::init_with_exporter("tern-test", false, exporter.clone())
        .expect("install telemetry once per test process");
    // Keep the provider for the life of the test process.
    std::mem::forget(guard);
    Telemetry::Memory(exporter)
}

/// Spans of every test in this process, read back to check trace propagation.
pub fn spans() -> &'static InMemorySpanExporter {
    match TELEMETRY.get_or_init(memory) {
        Telemetry::Memory(e) => e,
        Telemetry::Otlp(_) => panic!("this test process exports spans over OTLP"),
    }
}

/// Export this process's spans over OTLP to `endpoint` (call before [`Stack::start`]).
pub fn export_otlp(endpoint: &str) -> &'static tern_runtime::telemetry::TelemetryGuard {
    let t = TELEMETRY.get_or_init(|| {
        Telemetry::Otlp(
            tern_runtime::telemetry::init_with_otlp("tern-test", false, endpoint)
                .expect("OTLP telemetry"),
        )
    });
    match t {
        Telemetry::Otlp(g) => g,
        Telemetry::Memory(_) => panic!("telemetry was already installed in memory"),
    }
}

/// A running stack.
pub struct Stack {
    /// The config pairs every service was started with (before per-service overrides).
    pub pairs: Vec<(String, String)>,
    pub nats: NatsServer,
    pub dns: DnsServer,
    pub sink: SmtpSink,
    pub data: tempfile::TempDir,
    pub addrs: Vec<(&'static str, SocketAddr)>,
    shutdown: Shutdown,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub const ZONE: &str = "\
$ORIGIN remote.test.
$TTL 60
@    IN SOA ns.remote.test. admin.remote.test. 1 3600 600 86400 60
@    IN NS  ns.remote.test.
ns   IN A   127.0.0.1
@    IN MX  10 mx.remote.test.
mx   IN A   127.0.0.1
";

impl Stack {
    /// Start everything; `extra` adds or overrides config pairs for every service.
    pub async fn start(extra: &[(&str, &str)]) -> Stack {
        Stack::start_without(extra, false).await
    }

    /// Like [`Stack::start`], but without the in-process queue when
    /// `external_queue` is set: the test runs `tern queue` as a process
    /// (see [`Stack::spawn_queue`]) so it can kill it.
    pub async fn start_without(extra: &[(&str, &str)], external_queue: bool) -> Stack {
        Stack::start_on(NatsServer::start().await, extra, external_queue).await
    }

    /// Like [`Stack::start_without`], on `nats` (e.g. one started with TLS
    /// or users; `extra` then carries the matching `nats_*` keys).
    pub async fn start_on(nats: NatsServer, extra: &[(&str, &str)], external_queue: bool) -> Stack {
        Stack::start_zones(nats, extra, external_queue, &[]).await
    }

    /// Like [`Stack::start_on`], with more zones (origin, zone text) served
    /// by the DNS server next to `remote.test`.
    pub async fn start_zones(
        nats: NatsServer,
        extra: &[(&str, &str)],
        external_queue: bool,
        zones: &[(&str, &str)],
    ) -> Stack {
        TELEMETRY.get_or_init(memory);
        let mut all_zones = vec![("remote.test.", ZONE)];
        all_zones.extend_from_slice(zones);
        let dns = DnsServer::start(&all_zones).await;
        let sink = SmtpSink::start().await;
        let data = tempfile::tempdir().expect("temp data dir");
        let any = "127.0.0.1:0";
        let mut pairs: Vec<(String, String)> = [
            ("data_dir", data.path().to_str().expect("utf-8 temp path")),
            ("nats_url", nats.url().as_str()),
            ("hostname", "tern.test"),
            ("local_domains", "localhost,tern.test"),
            ("dns_nameservers", dns.addr().to_string().as_str()),
            ("remote_smtp_port", sink.addr().port().to_string().as_str()),
            ("shutdown_grace", "5s"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for key in [
            "smtp_listen",
            "submission_listen",
            "submissions_listen",
            "imap_listen",
            "imaps_listen",
            "pop3_listen",
            "pop3s_listen",
            "ingress_grpc_listen",
            "queue_grpc_listen",
            "resolver_grpc_listen",
            "delivery_grpc_listen",
            "mailbox_grpc_listen",
            "ingress_admin_listen",
            "queue_admin_listen",
            "resolver_admin_listen",
            "delivery_admin_listen",
            "mailbox_admin_listen",
            "api_listen",
        ] {
            pairs.push((key.into(), any.into()));
        }
        for (k, v) in extra {
            pairs.retain(|(pk, _)| pk != k);
            pairs.push((k.to_string(), v.to_string()));
        }
        let source = |more: &[(&str, String)]| {
            let mut all: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            for (k, v) in more {
                all.retain(|(pk, _)| pk != k);
                all.push((k, v.as_str()));
            }
            Source::from_pairs(all)
        };

        let resolver = tern_resolver::bind(
            tern_resolver::Config::from_source(&source(&[])).expect("resolver config"),
        )
        .await
        .expect("bind resolver");
        let mailbox = tern_mailbox::bind(
            tern_mailbox::Config::from_source(&source(&[])).expect("mailbox config"),
        )
        .await
        .expect("bind mailbox");
        let queue = if external_queue {
            None
        } else {
            Some(
                tern_queue::bind(
                    tern_queue::Config::from_source(&source(&[])).expect("queue config"),
                )
                .await
                .expect("bind queue"),
            )
        };
        let find = |addrs: &[(&'static str, SocketAddr)], what: &str| {
            addrs
                .iter()
                .find(|(n, _)| n.contains(what))
                .map(|(_, a)| format!("http://{a}"))
                .unwrap_or_else(|| panic!("no {what} address"))
        };
        let resolver_url = find(&resolver.addrs(), "grpc");
        let mailbox_url = find(&mailbox.addrs(), "grpc");
        let delivery = tern_delivery::bind(
            tern_delivery::Config::from_source(&source(&[("resolver_url", resolver_url.clone())]))
                .expect("delivery config"),
        )
        .await
        .expect("bind delivery");
        let ingress = tern_ingress::bind(
            tern_ingress::Config::from_source(&source(&[
                ("mailbox_url", mailbox_url),
                ("resolver_url", resolver_url),
            ]))
            .expect("ingress config"),
        )
        .await
        .expect("bind ingress");

        let mut addrs = Vec::new();
        for a in [
            resolver.addrs(),
            mailbox.addrs(),
            queue.as_ref().map(|q| q.addrs()).unwrap_or_default(),
            delivery.addrs(),
            ingress.addrs(),
        ] {
            addrs.extend(a);
        }
        let shutdown = Shutdown::new();
        let mut tasks = Vec::new();
        macro_rules! spawn {
            ($bound:expr) => {{
                let s = shutdown.clone();
                let b = $bound;
                tasks.push(tokio::spawn(async move {
                    b.run(s).await.expect("service run");
                }));
            }};
        }
        spawn!(resolver);
        spawn!(mailbox);
        if let Some(queue) = queue {
            spawn!(queue);
        }
        spawn!(delivery);
        spawn!(ingress);
        let stack = Stack {
            pairs,
            nats,
            dns,
            sink,
            data,
            addrs,
            shutdown,
            tasks,
        };
        stack.wait_ready().await;
        stack
    }

    /// The address of the listener whose name contains `what` (e.g. "smtp", "pop3").
    pub fn addr(&self, what: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(n, _)| {
                *n == what || n.ends_with(&format!(" {what}")) || n.starts_with(&format!("{what} "))
            })
            .or_else(|| self.addrs.iter().find(|(n, _)| n.contains(what)))
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no listener named {what} in {:?}", self.addrs))
    }

    /// Wait until every admin port says ready.
    async fn wait_ready(&self) {
        let admins: Vec<SocketAddr> = self
            .addrs
            .iter()
            .filter(|(n, _)| n.contains("admin"))
            .map(|(_, a)| *a)
            .collect();
        assert!(
            admins.len() >= 4,
            "one admin port per in-process service: {:?}",
            self.addrs
        );
        for a in admins {
            tern_testkit::wait_for(
                &format!("{a}/readyz"),
                Duration::from_secs(30),
                || async move {
                    http_get(a, "/readyz")
                        .await
                        .filter(|(code, _)| *code == 200)
                },
            )
            .await;
        }
    }

    /// Start `tern queue` as a process with this stack's config, its
    /// listeners on free loopback ports; ready once its `/readyz` says so.
    /// Returns the child (killed on drop) and its gRPC address.
    pub async fn spawn_queue(&self) -> (QueueProcess, SocketAddr) {
        let grpc: SocketAddr = format!("127.0.0.1:{}", tern_testkit::free_port())
            .parse()
            .expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", tern_testkit::free_port())
            .parse()
            .expect("addr");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tern"));
        cmd.arg("queue").kill_on_drop(true).env_clear();
        for (k, v) in &self.pairs {
            cmd.env(tern_runtime::config::env_name(k), v);
        }
        cmd.env("TERN_QUEUE_GRPC_LISTEN", grpc.to_string())
            .env("TERN_QUEUE_ADMIN_LISTEN", admin.to_string())
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let child = cmd.spawn().expect("spawn tern queue");
        tern_testkit::wait_for("tern queue ready", Duration::from_secs(30), || async move {
            http_get(admin, "/readyz")
                .await
                .filter(|(code, _)| *code == 200)
        })
        .await;
        (QueueProcess(child), grpc)
    }

    /// Stop every service and wait for them to finish.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        for t in self.tasks.drain(..) {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .expect("service stops within its grace period")
                .expect("service task");
        }
    }

    /// Create an account through the mailbox's gRPC API.
    pub async fn add_user(&self, address: &str, password: &str) {
        let url = format!("http://{}", self.addr("mailbox grpc"));
        let mut client = tern_proto::accounts_client::AccountsClient::connect(url)
            .await
            .expect("connect accounts");
        client
            .add_user(tern_proto::AddUserRequest {
                address: address.into(),
                password: password.into(),
            })
            .await
            .expect("add user");
    }
}

/// A `tern queue` process started by [`Stack::spawn_queue`].
pub struct QueueProcess(tokio::process::Child);

impl QueueProcess {
    /// SIGKILL: no drain, no acks for the work in hand.
    pub async fn kill(mut self) {
        self.0.kill().await.expect("kill tern queue");
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// A minimal HTTP/1.1 GET over loopback: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Run a Python 3 script (a real client library: smtplib, poplib, imaplib) and return stdout.
pub async fn python(script: &str, args: &[String]) -> Vec<u8> {
    let script = script.to_string();
    let args = args.to_vec();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("python3")
            .arg("-c")
            .arg(&script)
            .args(&args)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "python client failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        out.stdout
    })
    .await
    .expect("python task")
}

/// Send `message` with Python's smtplib; returns the server's final reply text.
pub async fn smtp_send(addr: SocketAddr, from: &str, to: &[&str], message: &[u8]) -> String {
    const SCRIPT: &str = r#"
import smtplib, sys
host, port, sender, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rcpts = sys.argv[5:]
data = open(path, 'rb').read()
s = smtplib.SMTP(host, port, local_hostname='client.test', timeout=30)
s.ehlo()
code, resp = s.docmd('MAIL', 'FROM:<%s>' % sender)
assert code == 250, (code, resp)
for r in rcpts:
    code, resp = s.docmd('RCPT', 'TO:<%s>' % r)
    assert code == 250, (code, resp)
code, resp = s.data(data)
print(code, resp.decode())
s.quit()
"#;
    let file = tempfile::NamedTempFile::new().expect("temp message file");
    std::fs::write(file.path(), message).expect("write message");
    let mut args = vec![
        addr.ip().to_string(),
        addr.port().to_string(),
        from.to_string(),
        file.path().to_str().expect("utf-8 path").to_string(),
    ];
    args.extend(to.iter().map(|s| s.to_string()));
    String::from_utf8_lossy(&python(SCRIPT, &args).await)
        .trim()
        .to_string()
}
