//! `nats_tls_*`, `nats_nkey` and `nats_creds` against a real nats-server on
//! loopback: mutual TLS, nkey users, and files checked before connecting.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_runtime::bus::{self, BusError, NatsSecurity};
use tern_runtime::config::{CommonConfig, Source};
use tern_testkit::{NatsServer, TestPki};

/// The shared config of `pairs` (plus a NATS URL unless given).
fn common(pairs: &[(&str, &str)]) -> Result<CommonConfig, String> {
    CommonConfig::from_source(&Source::from_pairs(pairs.iter().copied())).map_err(|e| e.to_string())
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

/// The error of one connection attempt the server refuses within 10 s.
async fn refusal(url: &str, security: &NatsSecurity, name: &str) -> BusError {
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        bus::connect_once(url, security, name),
    )
    .await
    .expect("refused within 10 s")
    .expect_err("the server refuses");
    assert!(matches!(err, BusError::Connect { .. }), "{err}");
    err
}

/// Streams made and a message published and acknowledged.
async fn publish_works(client: async_nats::Client) {
    let js = async_nats::jetstream::new(client);
    tokio::time::timeout(Duration::from_secs(20), async {
        bus::ensure_streams(&js, 1).await.expect("ensure streams");
        let ack = bus::publish(&js, bus::SPOOL_SUBJECT.into(), "hello".into(), "m-1")
            .await
            .expect("publish");
        ack.await.expect("ack");
    })
    .await
    .expect("JetStream publish and ack within 20 s");
}

#[tokio::test]
async fn mutual_tls_with_the_configured_ca_and_client_certificate() {
    let pki = TestPki::new();
    let nats = NatsServer::start_with_config(&pki.nats_tls_block()).await;
    let url = nats.url();
    let common = common(&[
        ("nats_url", &url),
        ("nats_tls_ca", path(&pki.ca)),
        ("nats_tls_cert", path(&pki.client_cert)),
        ("nats_tls_key", path(&pki.client_key)),
    ])
    .expect("config");
    assert!(common.nats_security.tls());
    let client = bus::connect(&url, &common.nats_security, "test")
        .await
        .expect("connect");
    publish_works(client).await;
    // A plain nats:// URL to the same server: TLS is still required.
    let plain = url.replace("tls://", "nats://");
    let client = bus::connect_once(&plain, &common.nats_security, "test")
        .await
        .expect("TLS upgrade on a nats:// URL");
    publish_works(client).await;
}

#[tokio::test]
async fn without_a_client_certificate_the_server_refuses_and_it_shows() {
    let pki = TestPki::new();
    let nats = NatsServer::start_with_config(&pki.nats_tls_block()).await;
    let url = nats.url();
    let security = NatsSecurity {
        tls_ca: Some(pki.ca.clone()),
        ..Default::default()
    };
    // One attempt: the refusal reaches the caller.
    // server requires a client certificate
    let err = refusal(&url, &security, "test-no-cert").await;
    assert!(err.to_string().contains("CertificateRequired"), "{err}");

    // The retrying client never gets JetStream; its failed attempts are
    // counted, and the cause is logged.
    let logs = Logs::default();
    tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .try_init()
        .expect("the only subscriber in this test binary");
    let metrics = tern_runtime::admin::metrics_handle();
    let client = bus::connect(&url, &security, "test-no-cert")
        .await
        .expect("connect returns at once and retries");
    let js = async_nats::jetstream::new(client);
    let ready = tokio::time::timeout(Duration::from_secs(3), bus::ensure_streams(&js, 1)).await;
    assert!(
        !matches!(ready, Ok(Ok(()))),
        "streams made without a client certificate"
    );
    tern_testkit::wait_for("the connect error counter", Duration::from_secs(10), || {
        let text = metrics.render();
        async move {
            text.lines()
                .any(|l| l.starts_with("tern_nats_connect_errors_total{client=\"test-no-cert\"}"))
                .then_some(())
        }
    })
    .await;
    tern_testkit::wait_for("the cause in the log", Duration::from_secs(10), || {
        let text = logs.text();
        async move {
            text.lines()
                .any(|l| {
                    l.contains("WARN")
                        && l.contains("cannot connect to NATS")
                        && l.contains("CertificateRequired")
                        && l.contains("test-no-cert")
                })
                .then_some(())
        }
    })
    .await;
}

/// Log lines written by the test's subscriber.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let nats = NatsServer::start_with_config(&pki.nats_tls_block()).await;
    let security = NatsSecurity {
        tls_ca: Some(other.ca.clone()),
        tls_client: Some((pki.client_cert.clone(), pki.client_key.clone())),
        ..Default::default()
    };
    let err = refusal(&nats.url(), &security, "test").await; // unknown issuer
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn nkey_user() {
    let user = nkeys::KeyPair::new_user();
    let config = format!(
        "authorization {{\n  users = [ {{ nkey: {:?} }} ]\n}}\n",
        user.public_key()
    );
    let nats = NatsServer::start_with_config(&config).await;
    let url = nats.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let seed = dir.path().join("user.nk");
    std::fs::write(&seed, format!("{}\n", user.seed().expect("seed"))).expect("write seed");
    let common = common(&[("nats_url", &url), ("nats_nkey", path(&seed))]).expect("config");
    let client = bus::connect(&url, &common.nats_security, "test")
        .await
        .expect("connect");
    publish_works(client).await;

    // Another user's seed is refused.
    let stranger = dir.path().join("stranger.nk");
    let kp = nkeys::KeyPair::new_user();
    std::fs::write(&stranger, kp.seed().expect("seed")).expect("write seed");
    let security = NatsSecurity {
        nkey: Some(stranger),
        ..Default::default()
    };
    let err = refusal(&url, &security, "test").await; // unknown nkey
    assert!(err.to_string().contains("authorization"), "{err}");
}

/// Every file is read before connecting: a bad one fails at once (no
/// server is listening on the URL), naming its key and path.
#[tokio::test]
async fn bad_files_fail_at_start_naming_key_and_path() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let url = "nats://127.0.0.1:1";
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.txt");
    std::fs::write(&garbage, "not a PEM file\n").expect("write");
    let account_seed = dir.path().join("account.nk");
    std::fs::write(
        &account_seed,
        nkeys::KeyPair::new_account().seed().expect("seed"),
    )
    .expect("write");

    let with = |tls_ca: Option<&Path>,
                tls_client: Option<(&Path, &Path)>,
                creds: Option<&Path>,
                nkey: Option<&Path>| NatsSecurity {
        tls_ca: tls_ca.map(Path::to_path_buf),
        tls_client: tls_client.map(|(c, k)| (c.to_path_buf(), k.to_path_buf())),
        creds: creds.map(Path::to_path_buf),
        nkey: nkey.map(Path::to_path_buf),
    };
    let (cert, key, server_key) = (&*pki.client_cert, &*pki.client_key, &*pki.server_key);
    let cases: Vec<(NatsSecurity, &str, &Path)> = vec![
        (
            with(Some(&missing), None, None, None),
            "TERN_NATS_TLS_CA",
            &missing,
        ),
        (
            with(Some(&garbage), None, None, None),
            "TERN_NATS_TLS_CA",
            &garbage,
        ),
        (
            with(None, Some((&missing, key)), None, None),
            "TERN_NATS_TLS_CERT",
            &missing,
        ),
        (
            with(None, Some((cert, &garbage)), None, None),
            "TERN_NATS_TLS_KEY",
            &garbage,
        ),
        // The server's key with the client's certificate.
        (
            with(None, Some((cert, server_key)), None, None),
            "TERN_NATS_TLS_KEY",
            server_key,
        ),
        (
            with(None, None, Some(&missing), None),
            "TERN_NATS_CREDS",
            &missing,
        ),
        (
            with(None, None, Some(&garbage), None),
            "TERN_NATS_CREDS",
            &garbage,
        ),
        (
            with(None, None, None, Some(&missing)),
            "TERN_NATS_NKEY",
            &missing,
        ),
        (
            with(None, None, None, Some(&account_seed)),
            "TERN_NATS_NKEY",
            &account_seed,
        ),
    ];
    for (security, key, file) in cases {
        let err = tokio::time::timeout(Duration::from_secs(2), bus::connect(url, &security, "t"))
            .await
            .expect("no waiting for a server")
            .expect_err("bad file");
        let text = err.to_string();
        assert!(matches!(err, BusError::File { .. }), "{text}");
        assert!(text.contains(key), "{text} should name {key}");
        assert!(
            text.contains(path(file)),
            "{text} should name {}",
            file.display()
        );
    }
}

#[test]
fn keys_come_in_pairs_and_one_identity_at_a_time() {
    let err = common(&[("nats_url", "nats://n:4222"), ("nats_tls_cert", "/c.pem")]).unwrap_err();
    assert!(err.contains("TERN_NATS_TLS_KEY"), "{err}");
    let err = common(&[("nats_url", "nats://n:4222"), ("nats_tls_key", "/k.pem")]).unwrap_err();
    assert!(err.contains("TERN_NATS_TLS_CERT"), "{err}");
    let err = common(&[
        ("nats_url", "nats://n:4222"),
        ("nats_creds", "/u.creds"),
        ("nats_nkey", "/u.nk"),
    ])
    .unwrap_err();
    assert!(err.contains("TERN_NATS_NKEY"), "{err}");
    let err = common(&[
        ("nats_url", "nats://u:p@n:4222"),
        ("nats_creds", "/u.creds"),
    ])
    .unwrap_err();
    assert!(err.contains("TERN_NATS_CREDS"), "{err}");
    let ok =
        common(&[("nats_url", "nats://n:4222"), ("nats_tls_ca", "/ca.pem")]).expect("CA alone");
    assert!(ok.nats_security.tls());
    let none = common(&[("nats_url", "nats://n:4222")]).expect("nothing");
    assert_eq!(none.nats_security, NatsSecurity::default());
}

#[tokio::test]
async fn creds_file_of_a_jwt_user() {
    let auth = tern_testkit::NatsJwtAuth::new();
    let nats = NatsServer::start_with_config(&auth.server_config()).await;
    let url = nats.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let creds = dir.path().join("tern.creds");
    std::fs::write(&creds, auth.user_creds("tern")).expect("write creds");
    let common = common(&[("nats_url", &url), ("nats_creds", path(&creds))]).expect("config");
    let client = bus::connect(&url, &common.nats_security, "test")
        .await
        .expect("connect");
    publish_works(client).await;

    // Without credentials the operator-mode server refuses.
    let err = refusal(&url, &NatsSecurity::default(), "test").await; // no credentials
    assert!(err.to_string().contains("authorization"), "{err}");
}
