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

#[test]
fn tern_up_answers_on_every_port_and_exits_zero_on_sigterm() {
    let data = tempfile::tempdir().expect("temp dir");
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
        .stderr(Stdio::null());
    for key in [
        "SMTP_LISTEN",
        "SUBMISSION_LISTEN",
        "SUBMISSIONS_LISTEN",
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
    let mut child = cmd.spawn().expect("start tern up");
    let stdout = child.stdout.take().expect("stdout");
    let mut addrs: Vec<(String, SocketAddr)> = Vec::new();
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
    assert!(up, "tern up did not report that it is up");
    // nats + 7 mail listeners + 5 gRPC + 5 admin
    assert_eq!(addrs.len(), 18, "listening addresses printed: {addrs:?}");
    for (what, addr) in &addrs {
        assert!(
            std::net::TcpStream::connect_timeout(addr, Duration::from_secs(2)).is_ok(),
            "{what} does not answer"
        );
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "tern up did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM");
    // The managed nats-server went with it.
    let nats = addrs
        .iter()
        .find(|(w, _)| w.starts_with("nats"))
        .expect("nats address")
        .1;
    assert!(
        std::net::TcpStream::connect_timeout(&nats, Duration::from_secs(1)).is_err(),
        "nats-server still running"
    );
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
}
