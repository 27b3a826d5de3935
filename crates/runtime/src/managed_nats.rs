//! The nats-server `tern up` starts for itself when `TERN_NATS_URL` is unset:
//! JetStream on, data under the data dir, loopback only, stopped on drop.
//!
//! By default it fsyncs every JetStream write before acknowledging it
//! (`sync_interval: always`), so a `250` survives a power loss of this one
//! node, not only a crash of the process (see docs/durability.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{ConfigError, ConfigValue, Key, Source};

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

/// `TERN_MANAGED_NATS_SYNC`: when the managed nats-server fsyncs JetStream
/// writes: `always` (before each ack) or an interval.
pub const MANAGED_NATS_SYNC: Key<SyncPolicy> = Key::new(
    "managed_nats_sync",
    "always",
    "when the managed nats-server fsyncs: always (before every ack; survives power loss) \
     or an interval like 2m (nats-server's own default; survives a process crash only)",
);

/// When nats-server flushes its JetStream files to disk (its `sync_interval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fsync every write before the publish is acknowledged.
    Always,
    /// fsync every so often; an ack means "in the page cache".
    Every(Duration),
}

impl SyncPolicy {
    /// The value of nats-server's `jetstream.sync_interval`.
    fn nats_value(self) -> String {
        match self {
            SyncPolicy::Always => "always".into(),
            // nats-server reads Go durations; whole milliseconds are exact.
            SyncPolicy::Every(d) => format!("{}ms", d.as_millis()),
        }
    }
}

impl ConfigValue for SyncPolicy {
    const EXPECTED: &'static str = "always, or a non-zero duration like 1s or 2m";
    fn parse_value(s: &str) -> Option<Self> {
        if s.trim().eq_ignore_ascii_case("always") {
            return Some(SyncPolicy::Always);
        }
        crate::config::parse_duration(s)
            .filter(|d| !d.is_zero())
            .map(SyncPolicy::Every)
    }
}

/// Settings for the managed server.
#[derive(Debug, Clone)]
pub struct ManagedNatsConfig {
    /// Binary to run, if configured.
    pub binary: Option<PathBuf>,
    /// Client listen address.
    pub listen: SocketAddr,
    /// When JetStream writes reach the disk.
    pub sync: SyncPolicy,
}

impl ManagedNatsConfig {
    /// Read the keys.
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        Ok(ManagedNatsConfig {
            binary: src.get(&NATS_SERVER)?,
            listen: src.get(&MANAGED_NATS_LISTEN)?,
            sync: src.get(&MANAGED_NATS_SYNC)?,
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

/// The nats-server configuration file for `cfg` storing under `store`.
fn server_config(cfg: &ManagedNatsConfig, store: &Path) -> String {
    // JSON strings are valid in nats-server's config syntax and escape the path.
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    format!(
        "host: {}\nport: {}\njetstream {{\n  store_dir: {}\n  sync_interval: {}\n}}\n",
        quote(&cfg.listen.ip().to_string()),
        cfg.listen.port(),
        quote(&store.to_string_lossy()),
        quote(&cfg.sync.nats_value()),
    )
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
        // The sync policy has no command-line flag: it goes in a config file
        // next to the store, rewritten on every start.
        let conf = data_dir.join("nats.conf");
        std::fs::write(&conf, server_config(cfg, &store)).map_err(spawn_err)?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_policy_is_always_or_a_non_zero_duration() {
        assert_eq!(SyncPolicy::parse_value("always"), Some(SyncPolicy::Always));
        assert_eq!(
            SyncPolicy::parse_value(" Always "),
            Some(SyncPolicy::Always)
        );
        assert_eq!(
            SyncPolicy::parse_value("2m"),
            Some(SyncPolicy::Every(Duration::from_secs(120)))
        );
        assert_eq!(SyncPolicy::parse_value("0s"), None);
        assert_eq!(SyncPolicy::parse_value("sometimes"), None);
    }

    #[test]
    fn the_config_file_carries_listen_store_and_sync() {
        let cfg = ManagedNatsConfig {
            binary: None,
            listen: "127.0.0.1:4222".parse().unwrap(),
            sync: SyncPolicy::Every(Duration::from_millis(1500)),
        };
        let text = server_config(&cfg, Path::new("/data/\"odd\"/nats"));
        assert!(text.contains("host: \"127.0.0.1\"\nport: 4222\n"), "{text}");
        assert!(
            text.contains(r#"store_dir: "/data/\"odd\"/nats""#),
            "{text}"
        );
        assert!(text.contains("sync_interval: \"1500ms\""), "{text}");
    }
}
