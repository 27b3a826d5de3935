//! The webhook signature as a receiver in Python checks it: the snippet in
//! the crate README, run by python3 against a body Tern signed.
#![allow(clippy::unwrap_used, missing_docs)]

use std::io::Write;
use std::process::{Command, Stdio};

use tern_proto::Event;
use tern_stats::webhook;

/// The receiver's check, as documented in crates/stats/README.md.
const PY: &str = r#"
import hmac, hashlib, sys, time
def verify(secret: bytes, header: str, body: bytes, tolerance=300) -> bool:
    parts = dict(p.strip().split("=", 1) for p in header.split(","))
    t = parts["t"]
    if abs(time.time() - int(t)) > tolerance:
        return False
    mac = hmac.new(secret, t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, parts["v1"])
header, secret = sys.argv[1], sys.argv[2].encode()
body = sys.stdin.buffer.read()
print("ok" if verify(secret, header, body) else "bad")
"#;

fn python_says(header: &str, secret: &str, body: &[u8]) -> String {
    let mut child = Command::new("python3")
        .args(["-c", PY, header, secret])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn python_receiver_accepts_the_signature_and_refuses_a_tampered_body() {
    let body = webhook::body(&[Event {
        kind: "bounced".into(),
        recipient: "ü@example.net".into(),
        bounce_class: "hard".into(),
        ..Default::default()
    }]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = webhook::signature(b"whsec_test", now, &body);
    assert_eq!(python_says(&header, "whsec_test", &body), "ok");
    assert_eq!(python_says(&header, "wrong", &body), "bad");
    let mut tampered = body.clone();
    tampered.push(b' ');
    assert_eq!(python_says(&header, "whsec_test", &tampered), "bad");
}
