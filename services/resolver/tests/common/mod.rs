//! Shared by the resolver's integration tests: the service on ephemeral
//! ports, a gRPC client, `/metrics` scraping, and Debian's `unbound` on
//! loopback serving `local-data` records.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tern_proto::resolver_client::ResolverClient;
use tern_proto::{LookupRequest, LookupResponse, ResolveRouteRequest, ResolveRouteResponse};
use tern_runtime::Shutdown;
use tern_runtime::config::Source;
use tonic::transport::Channel;

/// A resolver service running in this process.
pub struct Running {
    pub client: ResolverClient<Channel>,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<Result<(), tern_resolver::Error>>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("resolver stops within the grace period")
            .unwrap()
            .unwrap();
    }

    /// A client on its own HTTP/2 connection.
    pub fn new_client(&self) -> ResolverClient<Channel> {
        let channel = tern_runtime::grpc::channel(&tern_runtime::grpc::url_for(self.grpc)).unwrap();
        ResolverClient::new(channel)
    }

    /// The value of one sample on `/metrics` (`name{labels}` exactly as
    /// rendered, e.g. `tern_dns_coalesced_total{cache="route"}`), 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let body = http_get(self.admin, "/metrics").await.unwrap_or_default();
        body.lines()
            .find_map(|l| {
                l.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }
}

/// Start the resolver against `nameserver`, with extra config pairs.
pub async fn start(nameserver: SocketAddr, extra: &[(&str, &str)]) -> Running {
    let ns = nameserver.to_string();
    let mut pairs = vec![
        ("resolver_grpc_listen", "127.0.0.1:0"),
        ("resolver_admin_listen", "127.0.0.1:0"),
        ("dns_nameservers", ns.as_str()),
        ("dns_timeout", "2s"),
        ("shutdown_grace", "2s"),
    ];
    for (k, v) in extra {
        pairs.retain(|(pk, _)| pk != k);
        pairs.push((k, v));
    }
    let src = Source::from_pairs(pairs);
    let config = tern_resolver::Config::from_source(&src).unwrap();
    src.finish().unwrap();
    let bound = tern_resolver::bind(config).await.unwrap();
    let addr = |name: &str| {
        bound
            .addrs()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
    };
    let (grpc, admin) = (addr("resolver grpc"), addr("resolver admin"));
    let shutdown = Shutdown::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));
    let channel = tern_runtime::grpc::channel(&tern_runtime::grpc::url_for(grpc)).unwrap();
    Running {
        client: ResolverClient::new(channel),
        grpc,
        admin,
        shutdown,
        task,
    }
}

pub async fn route(c: &mut ResolverClient<Channel>, domain: &str) -> ResolveRouteResponse {
    c.resolve_route(ResolveRouteRequest {
        domain: domain.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

pub async fn lookup(c: &mut ResolverClient<Channel>, name: &str, rtype: &str) -> LookupResponse {
    c.lookup(LookupRequest {
        name: name.into(),
        record_type: rtype.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

/// Debian's `unbound` on 127.0.0.1, answering from `local-data` records in a
/// `static` local zone (NXDOMAIN for other names in it, SERVFAIL for names
/// outside it), with
/// `unbound-control` enabled so a test can change records while it runs.
/// Killed on drop.
pub struct Unbound {
    child: Child,
    addr: SocketAddr,
    conf: PathBuf,
    dir: PathBuf,
}

const UNBOUND: &str = "/usr/sbin/unbound";
const UNBOUND_CONTROL: &str = "/usr/sbin/unbound-control";

impl Unbound {
    /// Start unbound serving `zone` (e.g. `"example.test."`) with these
    /// `local-data` records (one RR per string, presentation format). `None`
    /// (test skipped) if unbound is not installed and the run does not
    /// require it (`TEST_REQUIRE_POSTGRES` unset).
    pub async fn start(zone: &str, records: &[&str]) -> Option<Unbound> {
        if !std::path::Path::new(UNBOUND).exists() {
            // scripts/test.sh installs unbound (scripts/deps.sh) and sets this,
            // so a full run never skips silently.
            assert!(
                std::env::var_os("TEST_REQUIRE_POSTGRES").is_none(),
                "TEST_REQUIRE_POSTGRES is set but {UNBOUND} was not found (Debian package `unbound`)"
            );
            eprintln!("SKIPPED: needs {UNBOUND} (Debian package `unbound`)");
            return None;
        }
        let port = tern_testkit::free_port();
        let control_port = tern_testkit::free_port();
        let dir = std::env::temp_dir().join(format!("tern-unbound-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut conf_text = format!(
            r#"server:
  interface: 127.0.0.1
  port: {port}
  do-ip6: no
  do-daemonize: no
  chroot: ""
  username: ""
  directory: "{dir}"
  pidfile: "{dir}/unbound.pid"
  use-syslog: no
  logfile: "{dir}/unbound.log"
  verbosity: 0
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  do-not-query-localhost: yes
  num-threads: 1
  local-zone: "{zone}" static
"#,
            dir = dir.display()
        );
        for rr in records {
            // TXT data carries double quotes; unbound also takes single ones.
            if rr.contains('"') {
                conf_text.push_str(&format!("  local-data: '{rr}'\n"));
            } else {
                conf_text.push_str(&format!("  local-data: \"{rr}\"\n"));
            }
        }
        // Everything outside the zone is forwarded to a loopback address
        // unbound may not query (`do-not-query-localhost`): SERVFAIL at once,
        // and nothing ever leaves the machine.
        conf_text.push_str("forward-zone:\n  name: \".\"\n  forward-addr: 127.0.0.1@9\n");
        conf_text.push_str(&format!(
            "remote-control:\n  control-enable: yes\n  control-interface: 127.0.0.1\n  control-port: {control_port}\n  control-use-cert: no\n"
        ));
        let conf = dir.join("unbound.conf");
        std::fs::write(&conf, conf_text).unwrap();
        let child = Command::new(UNBOUND)
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn unbound");
        let mut u = Unbound {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            conf,
            dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !control(&u.conf, &["status"]).await {
            if let Ok(Some(status)) = u.child.try_wait() {
                let log = std::fs::read_to_string(u.dir.join("unbound.log")).unwrap_or_default();
                panic!("unbound exited ({status}) at start:\n{log}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "unbound did not answer unbound-control within 10s"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Some(u)
    }

    /// `ip:port` for `TERN_DNS_NAMESERVERS`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Add a record while running (`unbound-control local_data`).
    pub async fn add(&self, rr: &str) {
        assert!(
            control(&self.conf, &["local_data", rr]).await,
            "unbound-control local_data {rr}"
        );
    }
}

impl Unbound {
    /// Remove every record of `name` while running (`local_data_remove`).
    pub async fn remove(&self, name: &str) {
        assert!(
            control(&self.conf, &["local_data_remove", name]).await,
            "unbound-control local_data_remove {name}"
        );
    }
}

async fn control(conf: &std::path::Path, args: &[&str]) -> bool {
    tokio::process::Command::new(UNBOUND_CONTROL)
        .arg("-c")
        .arg(conf)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
