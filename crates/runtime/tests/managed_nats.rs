//! The managed nats-server (`tern up` without `TERN_NATS_URL`) against the
//! real binary: it takes publishes, and the sync policy it runs with is the
//! one configured (fsync before every ack by default), as nats-server's own
//! monitoring endpoint reports it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tern_runtime::bus;
use tern_runtime::config::Source;
use tern_runtime::managed_nats::{ManagedNats, ManagedNatsConfig, SyncPolicy};

/// The nats-server the tests run: `$TERN_NATS_SERVER`, else the project's
/// `.venv/bin/nats-server` (scripts/deps.sh installs it).
fn nats_binary() -> std::path::PathBuf {
    std::env::var_os("TERN_NATS_SERVER").map_or_else(
        || tern_testkit::workspace_root().join(".venv/bin/nats-server"),
        Into::into,
    )
}

fn config(pairs: &[(&str, &str)]) -> ManagedNatsConfig {
    let listen = format!("127.0.0.1:{}", tern_testkit::free_port());
    let bin = nats_binary();
    let mut all = vec![
        ("managed_nats_listen", listen.as_str()),
        ("nats_server", bin.to_str().expect("UTF-8 path")),
    ];
    all.extend_from_slice(pairs);
    ManagedNatsConfig::from_source(&Source::from_pairs(all)).expect("valid config")
}

/// Start the managed server in `data`, publish one spool message and wait
/// for its ack, then stop the server.
async fn publish_one(cfg: &ManagedNatsConfig, data: &Path) {
    let mut nats = ManagedNats::start(cfg, data)
        .await
        .expect("managed nats starts");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    tokio::time::timeout(Duration::from_secs(20), async {
        bus::ensure_streams(&js, 1).await.expect("streams");
        let ack = bus::publish(&js, bus::SPOOL_SUBJECT.into(), "mail".into(), "m-1")
            .await
            .expect("publish")
            .await
            .expect("ack");
        assert_eq!(ack.sequence, 1);
    })
    .await
    .expect("published within 20 s");
    nats.stop();
}

/// `GET path` on the monitoring port, retried until it answers (10 s).
fn http_get(addr: SocketAddr, path: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let mut out = String::new();
            if s.write_all(req.as_bytes()).is_ok()
                && s.read_to_string(&mut out).is_ok()
                && let Some((_, body)) = out.split_once("\r\n\r\n")
            {
                return serde_json::from_str(body).expect("JSON from nats-server");
            }
        }
        assert!(Instant::now() < deadline, "no answer on {addr}{path}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run nats-server again on the config file the managed server left in
/// `data` (other ports, monitoring on): what JetStream reports about its
/// configuration and the spool stream.
fn reopen(data: &Path) -> (serde_json::Value, serde_json::Value) {
    let mon = SocketAddr::from(([127, 0, 0, 1], tern_testkit::free_port()));
    let mut child = Command::new(nats_binary())
        .arg("-c")
        .arg(data.join("nats.conf"))
        .args(["-p", &tern_testkit::free_port().to_string()])
        .args(["-m", &mon.port().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let varz = http_get(mon, "/varz");
    let jsz = http_get(mon, "/jsz?streams=true");
    let _ = child.kill();
    let _ = child.wait();
    (varz["jetstream"]["config"].clone(), jsz)
}

fn spool_messages(jsz: &serde_json::Value) -> u64 {
    jsz["account_details"][0]["stream_detail"]
        .as_array()
        .expect("streams")
        .iter()
        .find(|s| s["name"] == bus::SPOOL_STREAM)
        .and_then(|s| s["state"]["messages"].as_u64())
        .expect("spool stream")
}

#[tokio::test]
async fn by_default_the_managed_server_fsyncs_every_write() {
    let data = tempfile::tempdir().expect("temp dir");
    let cfg = config(&[]);
    assert_eq!(cfg.sync, SyncPolicy::Always);
    publish_one(&cfg, data.path()).await;
    let (js_config, jsz) = reopen(data.path());
    assert_eq!(js_config["sync_always"], true, "{js_config}");
    assert_eq!(
        spool_messages(&jsz),
        1,
        "the acknowledged message is on disk"
    );
}

#[tokio::test]
async fn an_interval_runs_it_with_that_sync_interval() {
    let data = tempfile::tempdir().expect("temp dir");
    let cfg = config(&[("managed_nats_sync", "30s")]);
    publish_one(&cfg, data.path()).await;
    let (js_config, _) = reopen(data.path());
    assert_ne!(js_config["sync_always"], true, "{js_config}");
    assert_eq!(js_config["sync_interval"], 30_000_000_000u64, "{js_config}");
}

#[test]
fn a_bad_sync_value_names_the_key() {
    let err = ManagedNatsConfig::from_source(&Source::from_pairs([("managed_nats_sync", "0s")]))
        .expect_err("zero is refused");
    assert!(err.to_string().contains("TERN_MANAGED_NATS_SYNC"), "{err}");
}
