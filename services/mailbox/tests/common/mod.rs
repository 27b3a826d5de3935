//! Shared by the client tests: the mailbox bound on loopback in a data dir
//! that outlives one run (restart tests), a throwaway PostgreSQL, a raw
//! line client, and helpers to find external tools.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use prost::Message as _;
use tern_mailbox::{Config, Error};
use tern_proto::accounts_client::AccountsClient;
use tern_proto::body_ref::Location;
use tern_proto::{AddUserRequest, BodyRef, Job, JobResult, Recipient};
use tern_runtime::Shutdown;
use tern_runtime::bus;
use tern_runtime::config::Source;
use tern_testkit::wait_for;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Bound on every wait.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The mailbox service, running.
pub struct Mailbox {
    shutdown: Shutdown,
    task: Option<JoinHandle<Result<(), Error>>>,
    addrs: HashMap<&'static str, SocketAddr>,
    js: jetstream::Context,
    /// The one consumer of local results (the stream is a work queue, so
    /// one consumer per subject), shared by every [`Mailbox::deliver`].
    results: tokio::sync::Mutex<jetstream::consumer::pull::Stream>,
}

impl Mailbox {
    /// Start on loopback ephemeral ports with `data_dir`, NATS at
    /// `nats_url`, and extra config pairs; returns once `/readyz` is 200.
    pub async fn start(data_dir: &Path, nats_url: &str, extra: &[(&str, &str)]) -> Mailbox {
        let data_dir = data_dir.display().to_string();
        let mut pairs = vec![
            ("data_dir", data_dir.as_str()),
            ("nats_url", nats_url),
            ("hostname", "mx.test"),
            ("local_domains", "example.com,example.org"),
            ("imap_listen", "127.0.0.1:0"),
            ("imaps_listen", "127.0.0.1:0"),
            ("pop3_listen", "127.0.0.1:0"),
            ("pop3s_listen", "127.0.0.1:0"),
            ("mailbox_grpc_listen", "127.0.0.1:0"),
            ("mailbox_admin_listen", "127.0.0.1:0"),
            ("shutdown_grace", "5s"),
        ];
        pairs.extend_from_slice(extra);
        let src = Source::from_pairs(pairs);
        let config = Config::from_source(&src).unwrap();
        src.finish().expect("every key is known");
        let bound = tern_mailbox::bind(config).await.unwrap();
        let addrs: HashMap<_, _> = bound.addrs().into_iter().collect();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        let admin = addrs["mailbox admin"];
        wait_for("mailbox /readyz", DEADLINE, || async move {
            (http_status(admin, "/readyz").await.as_deref() == Some("200")).then_some(())
        })
        .await;
        let client = async_nats::connect(nats_url).await.unwrap();
        let js = jetstream::new(client);
        let consumer = bus::pull_consumer(
            &js,
            bus::RESULTS_STREAM,
            "test-results",
            &bus::results_subject("local"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        let results = tokio::sync::Mutex::new(consumer.messages().await.unwrap());
        Mailbox {
            shutdown,
            task: Some(task),
            addrs,
            js,
            results,
        }
    }

    /// A bound address by name (`imap`, `pop3`, `mailbox grpc`, ...).
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    /// A gRPC Accounts client.
    pub async fn accounts(&self) -> AccountsClient<tonic::transport::Channel> {
        AccountsClient::connect(format!("http://{}", self.addr("mailbox grpc")))
            .await
            .unwrap()
    }

    /// Add an account.
    pub async fn add_user(&self, address: &str, password: &str) {
        self.accounts()
            .await
            .add_user(AddUserRequest {
                address: address.into(),
                password: password.into(),
            })
            .await
            .unwrap();
    }

    /// Publish a local job with an inline body, from sender@remote.test.
    pub async fn publish_job(&self, message_id: &str, rcpts: &[&str], body: &[u8]) {
        let job = Job {
            job_id: format!("{message_id}/local"),
            message_id: message_id.into(),
            mail_from: "sender@remote.test".into(),
            rcpts: rcpts
                .iter()
                .map(|r| Recipient {
                    address: (*r).into(),
                    ..Default::default()
                })
                .collect(),
            destination: "local".into(),
            body: Some(BodyRef {
                location: Some(Location::Inline(body.to_vec().into())),
                size: body.len() as u64,
            }),
            received_at_unix_ms: 1_700_000_000_000,
            ..Default::default()
        };
        self.js
            .publish(bus::LOCAL_JOBS_SUBJECT, job.encode_to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Deliver `body` to `rcpts` and wait for the job's result.
    pub async fn deliver(&self, message_id: &str, rcpts: &[&str], body: &[u8]) -> JobResult {
        let mut results = self.results.lock().await;
        self.publish_job(message_id, rcpts, body).await;
        loop {
            let msg = tokio::time::timeout(DEADLINE, results.next())
                .await
                .expect("a job result in time")
                .unwrap()
                .unwrap();
            msg.ack().await.unwrap();
            let r = JobResult::decode(msg.payload.clone()).unwrap();
            if r.message_id == message_id {
                return r;
            }
        }
    }

    /// Shut down and wait for `run` to return Ok.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        let task = self.task.take().unwrap();
        let r = tokio::time::timeout(DEADLINE, task)
            .await
            .expect("run returns after shutdown");
        r.unwrap().unwrap();
    }
}

/// The whole response (status line, headers, body) to a plain HTTP/1.0
/// GET, or None if unreachable.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

/// Status code of a plain HTTP/1.0 GET, or None if unreachable.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<String> {
    let out = http_get(addr, path).await?;
    out.split_whitespace().nth(1).map(str::to_string)
}

/// Two `#[tokio::test]`s running `$body` (a block): `$sqlite` with
/// `$db` empty (the mailbox's default SQLite database) and `$postgres`
/// with `$db` = `[("database_url", <a throwaway PostgreSQL>)]`, so every
/// scenario runs on both backends.
#[allow(unused_macros)]
macro_rules! backend_tests {
    ($sqlite:ident, $postgres:ident, |$db:ident| $body:block) => {
        #[tokio::test]
        async fn $sqlite() {
            let $db: &[(&str, &str)] = &[];
            $body
        }

        #[tokio::test]
        async fn $postgres() {
            let Some(pg) = tokio::task::spawn_blocking($crate::common::Postgres::start)
                .await
                .unwrap()
            else {
                return;
            };
            let $db: &[(&str, &str)] = &[("database_url", pg.url.as_str())];
            $body
        }
    };
}
#[allow(unused_imports, unused_macros)]
pub(crate) use backend_tests;

/// A line-oriented raw client.
pub struct Raw {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    /// Connect to `addr`.
    pub async fn connect(addr: SocketAddr) -> Raw {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        Raw {
            r: BufReader::new(r),
            w,
        }
    }

    /// The next line ("" at EOF).
    pub async fn line(&mut self) -> String {
        let mut l = String::new();
        tokio::time::timeout(DEADLINE, self.r.read_line(&mut l))
            .await
            .expect("a reply in time")
            .unwrap();
        l
    }

    /// Send raw bytes.
    pub async fn send(&mut self, data: &[u8]) {
        self.w.write_all(data).await.unwrap();
    }

    /// Send a command and read one line.
    pub async fn cmd(&mut self, data: &str) -> String {
        self.send(data.as_bytes()).await;
        self.line().await
    }

    /// Read lines until one starts with `prefix`; return all of them.
    pub async fn until(&mut self, prefix: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.line().await;
            assert!(!l.is_empty(), "connection closed; got {lines:?}");
            let done = l.starts_with(prefix);
            lines.push(l);
            if done {
                return lines;
            }
        }
    }

    /// Send a command and read lines until one starts with `prefix`.
    pub async fn cmd_until(&mut self, data: &str, prefix: &str) -> Vec<String> {
        self.send(data.as_bytes()).await;
        self.until(prefix).await
    }
}

/// An external tool from a Debian package, or `None` (with a SKIPPED line)
/// when it is not installed and `TEST_REQUIRE_<VAR>` is unset.
/// scripts/test.sh installs the packages and sets the variables, so CI
/// never skips silently.
pub fn tool(exe: &str, package: &str, var: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(exe))
            .find(|f| f.is_file())
    });
    if found.is_none() {
        let require = format!("TEST_REQUIRE_{var}");
        assert!(
            std::env::var_os(&require).is_none(),
            "{require} is set but `{exe}` (Debian package `{package}`) was not found"
        );
        eprintln!("SKIPPED: this test needs `{exe}` (Debian package `{package}`)");
    }
    found
}

/// Run a command to completion within `DEADLINE`-ish bounds on the
/// blocking pool; returns its output.
pub async fn run(mut cmd: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("spawn"))
        .await
        .unwrap()
}

/// A throwaway PostgreSQL cluster (initdb into a temp dir, free port),
/// stopped on drop. `None` when the PostgreSQL binaries are not installed.
pub struct Postgres {
    bin: std::path::PathBuf,
    data: std::path::PathBuf,
    run_as: Option<String>,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Postgres {
    fn find_bin() -> Option<std::path::PathBuf> {
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        let versioned = std::fs::read_dir("/usr/lib/postgresql")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path().join("bin"))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        on_path
            .into_iter()
            .chain(versioned)
            .find(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    pub fn start() -> Option<Postgres> {
        let Some(bin) = Self::find_bin() else {
            // scripts/test.sh installs PostgreSQL and sets this, so CI never skips silently.
            assert!(
                std::env::var_os("TEST_REQUIRE_POSTGRES").is_none(),
                "TEST_REQUIRE_POSTGRES is set but initdb/pg_ctl were not found"
            );
            eprintln!(
                "SKIPPED: PostgreSQL test needs initdb and pg_ctl (Debian package `postgresql`)"
            );
            return None;
        };
        let uid = |args: &[&str]| {
            Command::new("id")
                .args(args)
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .and_then(|s| s.trim().parse::<u32>().ok())
        };
        let dir = tempfile::tempdir().unwrap();
        // initdb refuses to run as root: run the cluster as `postgres` then.
        let run_as = if uid(&["-u"]) == Some(0) {
            let (Some(u), Some(g)) = (uid(&["-u", "postgres"]), uid(&["-g", "postgres"])) else {
                eprintln!("SKIPPED: PostgreSQL test runs as root and there is no `postgres` user");
                return None;
            };
            std::os::unix::fs::chown(dir.path(), Some(u), Some(g)).unwrap();
            Some("postgres".to_string())
        } else {
            None
        };
        let data = dir.path().join("data");
        let mut pg = Postgres {
            bin,
            data: data.clone(),
            run_as,
            url: String::new(),
            _dir: dir,
        };
        let out = pg
            .command("initdb")
            .args([
                "-U",
                "tern",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The free port can be taken by another test between the probe and
        // the server's bind: then try another one.
        let log = pg._dir.path().join("log");
        for attempt in 1.. {
            let port = tern_testkit::free_port();
            let opts = format!(
                "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
                pg._dir.path().display()
            );
            let _ = std::fs::remove_file(&log);
            let out = pg
                .command("pg_ctl")
                .args(["-w", "-t", "30", "-o", &opts, "-l"])
                .arg(&log)
                .arg("-D")
                .arg(&data)
                .arg("start")
                .output()
                .unwrap();
            if out.status.success() {
                pg.url = format!("postgres://tern@127.0.0.1:{port}/postgres");
                break;
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                attempt < 5 && text.contains("already in use"),
                "pg_ctl start: {}\n{text}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(pg)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(&self.data)
            .arg("stop")
            .output();
    }
}
