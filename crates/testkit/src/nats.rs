//! A real nats-server with JetStream, on a free loopback port, in a temp dir.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running nats-server; killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Config file given with `-c`, if any.
    config: Option<PathBuf>,
    tls: bool,
}

/// Where the nats-server binary is: `$TERN_NATS_SERVER`, the project's
/// `.venv/bin/nats-server` (installed by `scripts/deps.sh`), or `PATH`.
pub fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("TERN_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv = crate::workspace_root().join(".venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

impl NatsServer {
    /// Start on a free port and wait until it accepts connections.
    pub async fn start() -> NatsServer {
        NatsServer::start_with_config("").await
    }

    /// Start with `config` (nats-server configuration text, e.g. a `tls { }`
    /// block from [`TestPki::nats_tls_block`](crate::TestPki::nats_tls_block)
    /// or an `authorization { }` block) in a config file; the port,
    /// loopback address and JetStream come from the command line as with
    /// [`NatsServer::start`]. The URL is `tls://` when `config` has a
    /// `tls` block.
    pub async fn start_with_config(config: &str) -> NatsServer {
        let dir = tempfile::tempdir().expect("temp dir for nats-server");
        let config_file = (!config.is_empty()).then(|| {
            let path = dir.path().join("nats-server.conf");
            std::fs::write(&path, config).expect("write nats-server.conf");
            path
        });
        let mut s = NatsServer {
            child: None,
            port: crate::free_port(),
            tls: config.lines().any(|l| l.trim_start().starts_with("tls")),
            dir,
            config: config_file,
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let bin = nats_server_binary();
        let child = Command::new(&bin)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .args(
                self.config
                    .iter()
                    .flat_map(|c| [std::ffi::OsStr::new("-c"), c.as_os_str()]),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start {} (run scripts/deps.sh to install it): {e}",
                    bin.display()
                )
            });
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        crate::wait_for("nats-server to listen", Duration::from_secs(10), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.ok() }
        })
        .await;
    }

    /// The client URL (`tls://` when started with a `tls` block).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "tls" } else { "nats" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kill the server (JetStream data stays on disk).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
