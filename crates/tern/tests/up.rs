//! The built `tern` binary: `tern up` starts every service, answers on every
//! port it prints, and exits 0 on SIGTERM; bad configuration stops start-up
//! with the key named.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tern() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
    // Only what the test sets: no TERN_* leaks in from the developer's shell.
    for (k, _) in std::env::vars() {
        if k.starts_with("TERN_") {
            c.env_remove(k);
        }
    }
    c
}

/// A running `tern up` on free ports, and the addresses it printed.
struct Up {
    child: std::process::Child,
    addrs: Vec<(String, SocketAddr)>,
    data: tempfile::TempDir,
}

impl Up {
    /// Start on free ports. Ports are picked by binding and releasing them,
    /// so another process can take one in between: a start that fails is
    /// retried on new ports (twice), and its stderr is shown if all fail.
    fn start(extra: &[(&str, &str)], capture_stderr: bool) -> Up {
        let mut last_err = String::new();
        for _ in 0..3 {
            match Up::try_start(extra, capture_stderr) {
                Ok(up) => return up,
                Err(e) => last_err = e,
            }
        }
        panic!("tern up did not report that it is up:\n{last_err}");
    }

    fn try_start(extra: &[(&str, &str)], capture_stderr: bool) -> Result<Up, String> {
        let data = tempfile::tempdir().expect("temp dir");
        let err_path = data.path().join("stderr.log");
        let stderr = if capture_stderr {
            Stdio::piped()
        } else {
            Stdio::from(std::fs::File::create(&err_path).expect("stderr file"))
        };
        let nats_bin = tern_testkit::workspace_root().join(".venv/bin/nats-server");
        let mut cmd = tern();
        cmd.arg("up")
            .env("TERN_DATA_DIR", data.path())
            .env("TERN_NATS_SERVER", &nats_bin)
            .env(
                "TERN_MANAGED_NATS_LISTEN",
                format!("127.0.0.1:{}", tern_testkit::free_port()),
            )
            .stdout(Stdio::piped())
            .stderr(stderr);
        for key in [
            "SMTP_LISTEN",
            "SUBMISSION_LISTEN",
            "SUBMISSIONS_LISTEN",
            "API_LISTEN",
            "IMAP_LISTEN",
            "IMAPS_LISTEN",
            "POP3_LISTEN",
            "POP3S_LISTEN",
            "INGRESS_GRPC_LISTEN",
            "QUEUE_GRPC_LISTEN",
            "RESOLVER_GRPC_LISTEN",
            "DELIVERY_GRPC_LISTEN",
            "MAILBOX_GRPC_LISTEN",
            "INGRESS_ADMIN_LISTEN",
            "QUEUE_ADMIN_LISTEN",
            "RESOLVER_ADMIN_LISTEN",
            "DELIVERY_ADMIN_LISTEN",
            "MAILBOX_ADMIN_LISTEN",
        ] {
            cmd.env(
                format!("TERN_{key}"),
                format!("127.0.0.1:{}", tern_testkit::free_port()),
            );
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tern up");
        let stdout = child.stdout.take().expect("stdout");
        let mut addrs = Vec::new();
        let mut up = false;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read tern up output");
            if line == "tern is up" {
                up = true;
                break;
            }
            let mut parts = line.split_whitespace().rev();
            if let Some(addr) = parts
                .next()
                .and_then(|a| a.trim_start_matches("nats://").parse().ok())
            {
                addrs.push((line.clone(), addr));
            }
        }
        if !up {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::fs::read_to_string(&err_path).unwrap_or_default());
        }
        Ok(Up { child, addrs, data })
    }

    /// What it wrote to stderr (when not captured by the test).
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.data.path().join("stderr.log")).unwrap_or_default()
    }

    /// The address printed after `label` ("smtp", "mailbox grpc", "nats").
    fn addr(&self, label: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(line, _)| {
                line.rsplit_once(char::is_whitespace).map(|(l, _)| l.trim()) == Some(label)
            })
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no {label} in {:?}", self.addrs))
    }

    /// SIGTERM, then the exit status (within a deadline).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .expect("kill")
                .success()
        );
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "tern up did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tern_up_answers_on_every_port_and_exits_zero_on_sigterm() {
    let mut up = Up::start(&[], false);
    // nats + 7 mail listeners + the injection API + 5 gRPC + 5 admin
    assert_eq!(
        up.addrs.len(),
        19,
        "listening addresses printed: {:?}",
        up.addrs
    );
    for (what, addr) in &up.addrs {
        assert!(
            std::net::TcpStream::connect_timeout(addr, Duration::from_secs(2)).is_ok(),
            "{what} does not answer"
        );
    }
    let status = up.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM; stderr:\n{}",
        up.stderr()
    );
    // The managed nats-server went with it.
    let nats = up.addr("nats");
    assert!(
        std::net::TcpStream::connect_timeout(&nats, Duration::from_secs(1)).is_err(),
        "nats-server still running"
    );
}

#[test]
fn json_logs_follow_a_message_by_the_id_in_the_250_reply() {
    let mut up = Up::start(&[("TERN_LOG_FORMAT", "json")], true);
    let stderr = up.child.stderr.take().expect("stderr");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
            sink.lock().expect("log lines").push(v);
        }
    });
    let mut add = tern()
        .args(["user", "add", "alice@localhost"])
        .env(
            "TERN_MAILBOX_URL",
            format!("http://{}", up.addr("mailbox grpc")),
        )
        .stdin(Stdio::piped())
        .spawn()
        .expect("tern user add");
    use std::io::Write;
    add.stdin
        .take()
        .expect("stdin")
        .write_all(b"secret\n")
        .expect("password");
    assert!(add.wait().expect("user add").success());

    let smtp = up.addr("smtp");
    let script = "import smtplib,sys\ns=smtplib.SMTP(sys.argv[1],int(sys.argv[2]))\ns.ehlo()\ns.mail('bob@example.org')\ns.rcpt('alice@localhost')\nprint(s.data(b'Subject: hi\\r\\n\\r\\nhello\\r\\n')[1].decode())\ns.quit()";
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            &smtp.ip().to_string(),
            &smtp.port().to_string(),
        ])
        .output()
        .expect("python smtplib");
    let reply = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let id = reply
        .rsplit(' ')
        .next()
        .expect("id in the 250 reply")
        .to_string();
    assert!(
        reply.contains("queued as"),
        "{reply} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The id finds a log line, its trace id finds the line of every later stage.
    let start = Instant::now();
    let (trace, stages) = loop {
        let logs = lines.lock().expect("log lines").clone();
        let trace = logs
            .iter()
            .find(|l| l["message_id"] == id.as_str() && l["trace_id"].is_string())
            .map(|l| l["trace_id"].as_str().unwrap_or_default().to_string());
        if let Some(trace) = trace {
            let spans: Vec<String> = logs
                .iter()
                .filter(|l| l["trace_id"] == trace.as_str())
                .filter_map(|l| l["span"].as_str().map(str::to_string))
                .collect();
            // queue.result is a child of the mailbox delivery span, through the result message.
            if spans.iter().any(|s| s == "queue.result") {
                break (trace, spans);
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no complete trace in the logs: {logs:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(trace.len(), 32, "W3C trace id");
    for stage in ["smtp.transaction", "queue.route"] {
        assert!(
            stages.iter().any(|s| s == stage),
            "no {stage} line in trace {trace}: {stages:?}"
        );
    }
    assert!(
        lines
            .lock()
            .expect("log lines")
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    assert_eq!(up.terminate().code(), Some(0));
}

#[test]
fn a_bad_value_stops_start_up_naming_the_key() {
    let out = tern()
        .args(["config", "check"])
        .env("TERN_SMTP_LISTEN", "port-25")
        .output()
        .expect("run tern");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TERN_SMTP_LISTEN") && err.contains("port-25"),
        "{err}"
    );

    let out = tern()
        .arg("ingress")
        .env("TERN_SMTP_LISTEN", "port-25")
        .output()
        .expect("run tern");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TERN_SMTP_LISTEN"));
}

#[test]
fn an_unknown_key_stops_start_up_naming_the_key() {
    let out = tern()
        .args(["config", "check"])
        .env("TERN_SMTP_LISEN", "127.0.0.1:25")
        .output()
        .expect("run tern");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown config key TERN_SMTP_LISEN"), "{err}");
}

#[test]
fn config_check_prints_effective_values() {
    let out = tern()
        .args(["config", "check"])
        .env("TERN_LOCAL_DOMAINS", "example.com")
        .env("TERN_LOG", "info,tern_delivery=debug")
        .output()
        .expect("run tern");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TERN_LOCAL_DOMAINS=example.com"), "{text}");
    assert!(text.contains("TERN_SMTP_LISTEN=127.0.0.1:2525"), "{text}");
    assert!(text.contains("TERN_LOG=info,tern_delivery=debug"), "{text}");
}
