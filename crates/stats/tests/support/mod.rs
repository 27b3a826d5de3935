//! A real HTTP webhook receiver (Python's http.server) for the tests.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// One POST the receiver saw.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Post {
    /// Its number, from 1.
    pub n: u64,
    /// Whether the signature verified with the README's snippet.
    pub verified: bool,
    /// What the receiver answered.
    pub status: u16,
    /// The JSON array of events.
    pub events: Vec<serde_json::Value>,
}

/// The receiver process; killed on drop.
pub struct Receiver {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    scheme: &'static str,
    posts: Arc<Mutex<Vec<Post>>>,
    secret: std::path::PathBuf,
}

fn tempfile() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("tern-webhook-secret-{}-{n}", std::process::id()))
}

impl Receiver {
    /// Start one that answers 500 to the first `fail_first` POSTs; it
    /// checks signatures with the secret given to [`Receiver::set_secret`].
    pub fn start(fail_first: u32) -> Receiver {
        Self::spawn(fail_first, None)
    }

    /// An https receiver on 127.0.0.1 presenting `cert` (PEM chain) with `key`.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Receiver {
        Self::spawn(0, Some((cert, key)))
    }

    fn spawn(fail_first: u32, tls: Option<(&std::path::Path, &std::path::Path)>) -> Receiver {
        let script = tern_testkit::workspace_root().join("crates/stats/tests/support/receiver.py");
        let secret = tempfile();
        std::fs::write(&secret, "").unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(&script).arg(&secret).arg(fail_first.to_string());
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let port = first.strip_prefix("port ").unwrap().parse().unwrap();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let sink = posts.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        Receiver {
            child,
            port,
            scheme: if tls.is_some() { "https" } else { "http" },
            posts,
            secret,
        }
    }

    /// The webhook's secret, once registered.
    pub fn set_secret(&self, secret: &str) {
        std::fs::write(&self.secret, secret).unwrap();
    }

    /// The URL to register.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}/hook", self.scheme, self.port)
    }

    /// The POSTs so far.
    pub fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.secret);
    }
}

/// A URL on 127.0.0.1 where nothing listens (a receiver that is down).
pub fn down_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/down")
}
