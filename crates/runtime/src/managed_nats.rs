//! The nats-server `tern up` starts for itself when `TERN_NATS_URL` is unset:
//! JetStream on, data under the data dir, loopback only, stopped on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{ConfigError, Key, Source};

/// `TERN_NATS_SERVER`: the nats-server binary `tern up` runs.
pub const NATS_SERVER: Key<Option<PathBuf>> = Key::new(
    "nats_server",
    "",
    "nats-server binary for `tern up` (default: PATH, then .venv/bin/nats-server)",
);
/// `TERN_MANAGED_NATS_LISTEN`: where the managed nats-server listens.
pub const MANAGED_NATS_LISTEN: Key<SocketAddr> = Key::new(
    "managed_nats_listen",
    "127.0.0.1:4222",
    "client address of the nats-server `tern up` manages",
);

/// Settings for the managed server.
#[derive(Debug, Clone)]
pub struct ManagedNatsConfig {
    /// Binary to run, if configured.
    pub binary: Option<PathBuf>,
    /// Client listen address.
    pub listen: SocketAddr,
}

impl ManagedNatsConfig {
    /// Read the keys.
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        Ok(ManagedNatsConfig {
            binary: src.get(&NATS_SERVER)?,
            listen: src.get(&MANAGED_NATS_LISTEN)?,
        })
    }
}

/// Errors starting the managed server.
#[derive(Debug, thiserror::Error)]
pub enum ManagedNatsError {
    /// No binary was found.
    #[error("nats-server not found (set TERN_NATS_SERVER, put it on PATH, or run scripts/deps.sh)")]
    NotFound,
    /// It could not be started.
    #[error("start {path}: {source}")]
    Spawn {
        /// Binary path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// It started but never accepted connections.
    #[error("nats-server did not accept connections on {0} within 10s (is the port taken?)")]
    NotListening(SocketAddr),
}

/// A running managed nats-server.
pub struct ManagedNats {
    child: Child,
    url: String,
}

fn find_binary(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_path_buf());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        // Next to a workspace checkout: target/<profile>/tern → .venv/bin/nats-server.
        let exe = std::env::current_exe().ok()?;
        exe.ancestors()
            .map(|d| d.join(".venv/bin/nats-server"))
            .find(|p| p.is_file())
    })
}

impl ManagedNats {
    /// Start nats-server with JetStream storing under `data_dir/nats`.
    pub async fn start(
        cfg: &ManagedNatsConfig,
        data_dir: &Path,
    ) -> Result<ManagedNats, ManagedNatsError> {
        let bin = find_binary(cfg.binary.as_deref()).ok_or(ManagedNatsError::NotFound)?;
        let store = data_dir.join("nats");
        let spawn_err = |source| ManagedNatsError::Spawn {
            path: bin.clone(),
            source,
        };
        std::fs::create_dir_all(&store).map_err(spawn_err)?;
        let child = Command::new(&bin)
            .args([
                "-a",
                &cfg.listen.ip().to_string(),
                "-p",
                &cfg.listen.port().to_string(),
            ])
            .args(["-js", "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(spawn_err)?;
        let mut me = ManagedNats {
            child,
            url: format!("nats://{}", cfg.listen),
        };
        let start = Instant::now();
        while tokio::net::TcpStream::connect(cfg.listen).await.is_err() {
            if start.elapsed() > Duration::from_secs(10)
                || me.child.try_wait().ok().flatten().is_some()
            {
                return Err(ManagedNatsError::NotListening(cfg.listen));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(url = %me.url, "started managed nats-server");
        Ok(me)
    }

    /// The client URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stop it: SIGTERM so JetStream flushes, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ManagedNats {
    fn drop(&mut self) {
        self.stop();
    }
}
