//! The injection API end to end (issue 16): tenants and keys made with the
//! `tern` binary, Python's `urllib` as the HTTP client, the whole stack
//! in-process, and Postfix's `smtp-sink` as the receiving MX.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Stack, python, smtp_send};
use tern_testkit::{NatsServer, dkimpy_verify, wait_for};

const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
const WAIT: Duration = Duration::from_secs(120);

/// Postfix's smtp-sink on 127.0.0.1 (`-d`: one file per transaction).
struct PostfixSink {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for PostfixSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PostfixSink {
    async fn start() -> PostfixSink {
        assert!(
            Path::new(SMTP_SINK).exists(),
            "{SMTP_SINK} is required (Debian package postfix; scripts/deps.sh --test installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        // smtp-sink drops privileges to -u before writing its dumps.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let port = tern_testkit::free_port();
        let mut d = dir.path().to_str().unwrap().to_string();
        d.push('/');
        let mut cmd = Command::new(SMTP_SINK);
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
        if root {
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .args(["-d", &d, &format!("127.0.0.1:{port}"), "256"])
            .spawn()
            .unwrap();
        wait_for("smtp-sink listening", WAIT, || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        PostfixSink { child, dir, port }
    }

    fn dumps(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .map(|rd| {
                rd.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// At least `n` dumps, once the queue is idle: every job was delivered, so
/// smtp-sink has finished writing each file (it answers the final dot after
/// writing), and nothing is left to arrive.
async fn settled_dumps(sink: &PostfixSink, nats: &str, n: usize, what: &str) -> Vec<String> {
    let js = async_nats::jetstream::new(async_nats::connect(nats).await.unwrap());
    wait_for(what, WAIT, || {
        let js = js.clone();
        let d = sink.dumps();
        async move {
            for stream in ["TERN_JOBS", "TERN_RESULTS", "TERN_INJECT"] {
                let mut s = js.get_stream(stream).await.ok()?;
                if s.info().await.ok()?.state.messages != 0 {
                    return None;
                }
            }
            (d.len() >= n).then_some(d)
        }
    })
    .await
}

/// The value of smtp-sink's `X-NAME-Args:` line of a dump.
fn sink_arg<'a>(dump: &'a str, name: &str) -> &'a str {
    let prefix = format!("X-{name}-Args: ");
    dump.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {dump}"))
        .trim()
}

/// The message of a dump, without smtp-sink's own `X-…-Args` / `X-Client-…` lines.
fn sink_message(dump: &str) -> String {
    dump.replace("\r\n", "\n")
        .lines()
        .skip_while(|l| {
            ["X-Client-", "X-Helo-", "X-Mail-", "X-Rcpt-"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n"
}

/// `tern ARGS` against the stack's NATS; stdout.
fn tern(nats: &str, args: &[&str]) -> String {
    tern_with(nats, &[], args)
}

/// [`tern`] with more settings in its environment.
fn tern_with(nats: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TERN_") {
            c.env_remove(k);
        }
    }
    let out = c
        .args(args)
        .env("TERN_NATS_URL", nats)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tern {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Add a tenant and return an API key (the last line of `apikey create`).
fn tenant_with_key(nats: &str, name: &str, domain: &str) -> String {
    let added = tern(nats, &["tenant", "add", name, "--domain", domain]);
    assert!(added.contains(&format!("tenant {name} added")), "{added}");
    let out = tern(nats, &["apikey", "create", "--tenant", name]);
    out.lines().last().unwrap().to_string()
}

/// A world admitting a 1 MiB body with two tenants, "shop" (shop.test) and
/// "other" (other.test), each with an API key: the refusal and isolation
/// tests of both front doors. Returns (world, NATS URL, shop's key, other's key).
async fn two_tenant_world() -> (World, String, String, String) {
    let w = world(&[("api_max_body", "1048576")]).await;
    let nats = w.stack.nats.url();
    let key = tenant_with_key(&nats, "shop", "shop.test");
    let other_key = tenant_with_key(&nats, "other", "other.test");
    (w, nats, key, other_key)
}

/// One HTTP request with Python's urllib: (status, JSON body).
const CLIENT: &str = r#"
import json, sys, urllib.request, urllib.error
method, url, key, body_file, idem = sys.argv[1:6]
data = open(body_file, 'rb').read() if body_file != '-' else None
req = urllib.request.Request(url, data=data, method=method)
if key != '-':
    req.add_header('Authorization', 'Bearer ' + key)
if idem != '-':
    req.add_header('Idempotency-Key', idem)
req.add_header('Content-Type', 'application/json')
try:
    with urllib.request.urlopen(req, timeout=60) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
print(status)
print(body.decode())
"#;

struct Client {
    base: String,
    dir: tempfile::TempDir,
}

impl Client {
    fn new(stack: &Stack) -> Client {
        Client {
            base: format!("http://{}", stack.addr("api")),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<&[u8]>,
        idem: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let file = match body {
            Some(b) => {
                let p = self.dir.path().join(format!("{}.json", ulid_like()));
                std::fs::write(&p, b).unwrap();
                p.to_str().unwrap().to_string()
            }
            None => "-".into(),
        };
        let out = python(
            CLIENT,
            &[
                method.into(),
                format!("{}{path}", self.base),
                key.into(),
                file,
                idem.unwrap_or("-").into(),
            ],
        )
        .await;
        let out = String::from_utf8(out).unwrap();
        let (status, body) = out.split_once('\n').unwrap();
        let json = serde_json::from_str(body.trim()).unwrap_or(serde_json::Value::Null);
        (status.trim().parse().unwrap(), json)
    }

    async fn post(&self, key: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.json("POST", "/v1/messages", key, body).await
    }

    /// `method path` with a JSON body and no Idempotency-Key.
    async fn json(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.call(method, path, key, Some(body.to_string().as_bytes()), None)
            .await
    }
}

fn ulid_like() -> String {
    format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// A DKIM key for `shop.test` made with `tern dkim keygen`, and its zone.
fn dkim_zone(dir: &str) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TERN_") {
            c.env_remove(k);
        }
    }
    let out = c
        .args([
            "dkim",
            "keygen",
            "--domain",
            "shop.test",
            "--selector",
            "e1",
            "--algorithm",
            "ed25519",
        ])
        .env("TERN_DKIM_KEYS_DIR", dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8(out.stdout).unwrap();
    let record = out
        .lines()
        .find(|l| l.contains("._domainkey.") && l.contains(" IN TXT "))
        .unwrap()
        .to_string();
    format!(
        "$ORIGIN shop.test.\n$TTL 60\n@ IN SOA ns.shop.test. admin.shop.test. 1 3600 600 86400 60\n@ IN NS ns.shop.test.\nns IN A 127.0.0.1\n{record}\n"
    )
}

struct World {
    stack: Stack,
    sink: PostfixSink,
    secret: tern_bounce::token::Secret,
    _keys: (tempfile::TempDir, tempfile::TempDir),
}

async fn world(extra: &[(&str, &str)]) -> World {
    let sink = PostfixSink::start().await;
    let keys = tempfile::tempdir().unwrap();
    let keys_dir = keys.path().to_str().unwrap().to_string();
    let zone = dkim_zone(&keys_dir);
    // Not in the DKIM key directory: it would be an unknown file there.
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("secret");
    std::fs::write(&secret_file, "0123456789abcdef0123456789abcdef-test").unwrap();
    let port = sink.port.to_string();
    let secret_path = secret_file.to_str().unwrap().to_string();
    let mut pairs: Vec<(&str, &str)> = vec![
        ("remote_smtp_port", &port),
        ("dkim_keys_dir", &keys_dir),
        ("secret_file", &secret_path),
        ("bounce_domain", "bounces.shop.test"),
        ("public_url", "https://shop.example/"),
    ];
    pairs.extend_from_slice(extra);
    let stack = Stack::start_zones(
        NatsServer::start().await,
        &pairs,
        false,
        &[("shop.test.", &zone)],
    )
    .await;
    let secret = tern_bounce::token::Secret::load(&secret_file).unwrap();
    World {
        stack,
        sink,
        secret,
        _keys: (keys, secrets),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_recipient_batch_arrives_rendered_verp_signed_and_once() {
    let w = world(&[]).await;
    let nats = w.stack.nats.url();
    let key = tenant_with_key(&nats, "shop", "shop.test");
    let client = Client::new(&w.stack);
    let n = 1000;
    let recipients: Vec<_> = (0..n)
        .map(|i| serde_json::json!({"email": format!("u{i}@remote.test"), "name": format!("User {i}"), "vars": {"code": format!("C{i}")}}))
        .collect();
    let body = serde_json::json!({
        "from": "Shop <news@shop.test>",
        "subject": "Hello {{ name }}",
        "text": "Dear {{ name }}, your code is {{ code }} ({{ greeting }}).",
        "html": "<p>Dear {{ name }} &amp; {{ code }}</p>",
        "vars": {"greeting": "see you"},
        "campaign": "spring",
        "unsubscribe": true,
        "recipients": recipients,
    });
    let bytes = body.to_string();
    let (status, answer) = client
        .call(
            "POST",
            "/v1/messages",
            &key,
            Some(bytes.as_bytes()),
            Some("spring-1"),
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], n);
    assert_eq!(answer["rejected"], serde_json::json!([]));
    let batch_id = answer["batch_id"].as_str().unwrap().to_string();

    let dumps = settled_dumps(&w.sink, &nats, n, "1,000 messages at smtp-sink").await;
    assert_eq!(dumps.len(), n);
    let mut seen_rcpts = std::collections::HashSet::new();
    let mut seen_paths = std::collections::HashSet::new();
    for d in &dumps {
        let rcpt = sink_arg(d, "Rcpt").trim_matches(['<', '>']).to_string();
        let i: usize = rcpt
            .strip_prefix('u')
            .unwrap()
            .split('@')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            d.contains(&format!("Subject: Hello User {i}\n"))
                || d.contains(&format!("Subject: Hello User {i}\r\n")),
            "{d}"
        );
        assert!(
            d.contains(&format!("Dear User {i}, your code is C{i} (see you).")),
            "{d}"
        );
        let mail_from = sink_arg(d, "Mail")
            .split_whitespace()
            .next()
            .unwrap()
            .trim_matches(['<', '>'])
            .to_string();
        assert!(mail_from.ends_with("@bounces.shop.test"), "{mail_from}");
        match tern_bounce::token::parse_local_part(&w.secret, &mail_from).unwrap() {
            tern_bounce::token::LocalPart::Bounce(f) => {
                assert_eq!(f.tenant, 1);
                assert_eq!(f.recipient as usize, i, "VERP index of {rcpt}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            d.contains("List-Unsubscribe: <https://shop.example/u/"),
            "{d}"
        );
        assert!(d.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
        assert!(d.contains("Message-ID: <"));
        assert!(seen_rcpts.insert(rcpt));
        assert!(seen_paths.insert(mail_from));
    }
    // dkimpy verifies the signatures as the receiver would.
    for d in dumps.iter().take(3) {
        let verdicts = dkimpy_verify(w.stack.dns.addr(), sink_message(d).as_bytes());
        assert!(
            verdicts.iter().any(|v| v.domain == "shop.test" && v.pass),
            "{verdicts:?}\n{d}"
        );
    }
    let (status, rec) = client
        .call("GET", &format!("/v1/batches/{batch_id}"), &key, None, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(rec["state"], "spooled");
    assert_eq!(rec["spooled"], n);

    // The same call again: the first answer, nothing new.
    let (status, again) = client
        .call(
            "POST",
            "/v1/messages",
            &key,
            Some(bytes.as_bytes()),
            Some("spring-1"),
        )
        .await;
    assert_eq!((status, &again), (202, &answer));
    // The same key with another body: refused.
    let other = body.to_string().replace("Hello", "Hi");
    let (status, err) = client
        .call(
            "POST",
            "/v1/messages",
            &key,
            Some(other.as_bytes()),
            Some("spring-1"),
        )
        .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["field"], "Idempotency-Key");
    // A marker message sent after the replay arrives alone: the replay
    // added nothing.
    let marker = serde_json::json!({"from": "news@shop.test", "text": "marker", "recipients": [{"email": "marker@remote.test"}]});
    assert_eq!(client.post(&key, &marker).await.0, 202);
    let dumps = settled_dumps(&w.sink, &nats, n + 1, "the marker at smtp-sink").await;
    assert!(dumps.iter().any(|d| d.contains("marker@remote.test")));
    assert_eq!(dumps.len(), n + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_batch_cancelled_before_send_at_sends_nothing() {
    let w = world(&[]).await;
    let nats = w.stack.nats.url();
    let key = tenant_with_key(&nats, "shop", "shop.test");
    let client = Client::new(&w.stack);
    // Far enough ahead for a loaded machine to cancel in time.
    let send_at_ms = tern_runtime::now_unix_ms() + 15_000;
    let send_at = tern_runtime::date::rfc3339(send_at_ms);
    let body = serde_json::json!({"from": "news@shop.test", "text": "later", "send_at": send_at,
        "recipients": [{"email": "later@remote.test"}, {"email": "later2@remote.test"}]});
    let (status, answer) = client.post(&key, &body).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["batch_id"].as_str().unwrap().to_string();
    let (status, rec) = client
        .call("GET", &format!("/v1/batches/{id}"), &key, None, None)
        .await;
    assert_eq!((status, rec["state"].as_str()), (200, Some("scheduled")));
    let (status, rec) = client
        .call("DELETE", &format!("/v1/batches/{id}"), &key, None, None)
        .await;
    assert_eq!(
        (status, rec["state"].as_str()),
        (200, Some("cancelled")),
        "{rec}"
    );
    // Past send_at the worker has seen the batch again and dropped it: the
    // batch stream is empty.
    let client_nats = async_nats::connect(&nats).await.unwrap();
    let js = async_nats::jetstream::new(client_nats);
    wait_for(
        "the cancelled batch to leave the batch stream",
        WAIT,
        || {
            let js = js.clone();
            async move {
                let mut s = js.get_stream("TERN_INJECT").await.ok()?;
                let info = s.info().await.ok()?;
                (tern_runtime::now_unix_ms() > send_at_ms && info.state.messages == 0).then_some(())
            }
        },
    )
    .await;
    let marker = serde_json::json!({"from": "news@shop.test", "text": "marker", "recipients": [{"email": "marker@remote.test"}]});
    assert_eq!(client.post(&key, &marker).await.0, 202);
    let dumps = settled_dumps(&w.sink, &nats, 1, "the marker at smtp-sink").await;
    assert!(dumps[0].contains("marker@remote.test"), "{dumps:?}");
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    let (_, rec) = client
        .call("GET", &format!("/v1/batches/{id}"), &key, None, None)
        .await;
    assert_eq!(rec["state"], "cancelled");
    assert_eq!(rec["spooled"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_status_and_tenants_cannot_see_each_other() {
    let (w, nats, key, other_key) = two_tenant_world().await;
    let client = Client::new(&w.stack);
    let ok = serde_json::json!({"from": "news@shop.test", "text": "hi {{ name }}", "recipients": [{"email": "a@remote.test", "name": "A"}], "send_at": "2099-01-01T00:00:00Z"});

    // 401: no key, a wrong key, a revoked key.
    assert_eq!(client.post("-", &ok).await.0, 401);
    let (status, err) = client.post("tern_nonsense", &ok).await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (401, Some("Authorization"))
    );
    let revoked = tenant_with_key(&nats, "gone", "gone.test");
    let id = revoked.split('_').nth(1).unwrap().to_string();
    tern(&nats, &["apikey", "revoke", &id]);
    assert_eq!(client.post(&revoked, &ok).await.0, 401);

    // 400 naming the field.
    let cases = [
        (
            serde_json::json!({"text": "x", "recipients": [{"email": "a@remote.test"}]}),
            "from",
        ),
        (
            serde_json::json!({"from": "news@shop.test", "recipients": [{"email": "a@remote.test"}]}),
            "text",
        ),
        (
            serde_json::json!({"from": "news@shop.test", "text": "x"}),
            "recipients",
        ),
        (
            serde_json::json!({"from": "news@shop.test", "text": "{% if %}", "recipients": [{"email": "a@remote.test"}]}),
            "text",
        ),
        (
            serde_json::json!({"from": "news@shop.test", "text": "{{ missing }}", "recipients": [{"email": "a@remote.test"}]}),
            "text",
        ),
        (
            serde_json::json!({"from": "news@shop.test", "text": "x", "send_at": "soon", "recipients": [{"email": "a@remote.test"}]}),
            "send_at",
        ),
        (
            serde_json::json!({"from": "news@shop.test", "text": "x", "headers": {"Subject": "x"}, "recipients": [{"email": "a@remote.test"}]}),
            "headers.Subject",
        ),
    ];
    for (body, field) in cases {
        let (status, err) = client.post(&key, &body).await;
        assert_eq!(
            (status, err["error"]["field"].as_str()),
            (400, Some(field)),
            "{body}: {err}"
        );
    }
    let (status, err) = client
        .call("POST", "/v1/messages", &key, Some(b"{not json"), None)
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (400, Some("body"))
    );
    // 403: a domain the tenant does not own (nor does a lookalike count).
    for from in ["news@other.test", "news@evilshop.test"] {
        let body = serde_json::json!({"from": from, "text": "x", "recipients": [{"email": "a@remote.test"}]});
        let (status, err) = client.post(&key, &body).await;
        assert_eq!(
            (status, err["error"]["field"].as_str()),
            (403, Some("from")),
            "{err}"
        );
    }
    // 422: more than 10,000 recipients.
    let many: Vec<_> = (0..10_001)
        .map(|i| serde_json::json!({"email": format!("u{i}@remote.test")}))
        .collect();
    let body = serde_json::json!({"from": "news@shop.test", "text": "x", "recipients": many});
    let (status, err) = client.post(&key, &body).await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (422, Some("recipients")),
        "{err}"
    );
    // 413: over the body limit.
    let big = vec![b' '; 1_100_000];
    let (status, _) = client
        .call("POST", "/v1/messages", &key, Some(&big), None)
        .await;
    assert_eq!(status, 413);

    // Two tenants: neither sees nor cancels the other's batch.
    let (status, answer) = client.post(&key, &ok).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["batch_id"].as_str().unwrap();
    let path = format!("/v1/batches/{id}");
    assert_eq!(
        client.call("GET", &path, &other_key, None, None).await.0,
        404
    );
    assert_eq!(
        client.call("DELETE", &path, &other_key, None, None).await.0,
        404
    );
    let (status, rec) = client.call("GET", &path, &key, None, None).await;
    assert_eq!((status, rec["state"].as_str()), (200, Some("scheduled")));
    assert_eq!(
        client
            .call(
                "GET",
                "/v1/batches/01ARZ3NDEKTSV4RRFFQ69G5FAV",
                &key,
                None,
                None
            )
            .await
            .0,
        404
    );
    // Nothing of any refused request was accepted: one batch, scheduled for 2099.
    assert!(w.sink.dumps().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_expansion_resumes_at_its_cursor() {
    use prost::Message as _;
    let w = world(&[]).await;
    let nats = w.stack.nats.url();
    tenant_with_key(&nats, "shop", "shop.test");
    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    // What a replica leaves behind when it dies after saving the cursor at
    // 40 of 100: the record says 40 spooled, the spec is still unacked.
    let batch = "01KBZ0000000000000000000AA";
    let recipients: Vec<_> = (0..100)
        .map(|i| serde_json::json!({"email": format!("r{i}@remote.test"), "name": format!("R{i}"), "vars": {}}))
        .collect();
    let spec = serde_json::json!({
        "batch_id": batch, "tenant": "shop", "tenant_id": 1, "campaign": "", "campaign_id": 0,
        "send_at_unix_ms": null,
        "template": {"from": "news@shop.test", "reply_to": null, "subject": "s", "text": "hi {{ name }}",
                     "html": null, "headers": {}, "raw": null, "attachments": []},
        "vars": {}, "recipients": recipients, "unsubscribe": false,
        "bounce_domain": "bounces.shop.test", "public_url": "https://shop.example"
    });
    let record = serde_json::json!({
        "batch_id": batch, "tenant": "shop", "campaign": "", "state": "expanding", "total": 100,
        "spooled": 40, "rejected": 0, "failed": 0, "created_unix_ms": 0, "send_at_unix_ms": null
    });
    // The API's setup made the stream and bucket at start; wait for them.
    let kv = wait_for("the batch bucket", WAIT, || {
        let js = js.clone();
        async move { js.get_key_value("tern-inject-batches").await.ok() }
    })
    .await;
    kv.create(batch, record.to_string().into()).await.unwrap();
    let body_ref = tern_proto::BodyRef {
        location: Some(tern_proto::body_ref::Location::Inline(
            spec.to_string().into(),
        )),
        size: 0,
    };
    js.publish("tern.inject.batches", body_ref.encode_to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let dumps = settled_dumps(&w.sink, &nats, 60, "the 60 remaining messages").await;
    let mut got: Vec<usize> = dumps
        .iter()
        .map(|d| {
            let rcpt = sink_arg(d, "Rcpt").trim_matches(['<', '>']).to_string();
            rcpt[1..].split('@').next().unwrap().parse().unwrap()
        })
        .collect();
    got.sort();
    assert_eq!(got, (40..100).collect::<Vec<_>>());
    let rec = wait_for("the record to say spooled", WAIT, || {
        let kv = kv.clone();
        async move {
            let v: serde_json::Value = serde_json::from_slice(&kv.get(batch).await.ok()??).ok()?;
            (v["state"] == "spooled").then_some(v)
        }
    })
    .await;
    assert_eq!(rec["spooled"], 100);
}

/// The injection API with the feedback loop and the statistics mounted:
/// a listed address is reported `suppressed` and not sent, the one-click
/// unsubscribe link works on the API listener (curl, RFC 8058 §3.2), the
/// next batch of that campaign suppresses the unsubscribed recipient, and
/// the campaign's and the batch's counters show the deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressed_unsubscribed_and_counted_through_the_api() {
    let w = world(&[]).await;
    let nats = w.stack.nats.url();
    let key = tenant_with_key(&nats, "shop", "shop.test");
    let client = Client::new(&w.stack);
    tern(
        &nats,
        &["suppress", "add", "--tenant", "shop", "listed@remote.test"],
    );
    let body = serde_json::json!({"from": "news@shop.test", "subject": "Spring", "text": "hello",
        "campaign": "spring", "unsubscribe": true,
        "recipients": [{"email": "a@remote.test"}, {"email": "b@remote.test"}, {"email": "listed@remote.test"}]});
    let (status, answer) = client.post(&key, &body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(
        answer["suppressed"],
        serde_json::json!(["listed@remote.test"])
    );
    let batch = answer["batch_id"].as_str().unwrap().to_string();
    let dumps = settled_dumps(&w.sink, &nats, 2, "the two unsuppressed messages").await;
    assert!(!dumps.iter().any(|d| d.contains("listed@remote.test")));
    let a = dumps.iter().find(|d| d.contains("a@remote.test")).unwrap();
    let message = sink_message(a);
    let token = message
        .split("https://shop.example/u/")
        .nth(1)
        .and_then(|rest| rest.split('>').next())
        .expect("a List-Unsubscribe link")
        .to_string();
    let url = format!("http://{}/u/{token}", w.stack.addr("api"));
    let curl = |body: &'static str, url: String| async move {
        let out = tokio::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-d",
                body,
                &url,
            ])
            .output()
            .await
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let mut tampered = url.clone();
    tampered.insert(tampered.len() - 3, 'x');
    assert_eq!(curl("List-Unsubscribe=One-Click", tampered).await, "404");
    assert_eq!(curl("List-Unsubscribe=One-Click", url).await, "200");

    let again = serde_json::json!({"from": "news@shop.test", "text": "again", "campaign": "spring",
        "recipients": [{"email": "a@remote.test"}, {"email": "b@remote.test"}]});
    let (status, answer) = client.post(&key, &again).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["suppressed"], serde_json::json!(["a@remote.test"]));
    assert_eq!(answer["accepted"], 1);

    let stats = wait_for("the campaign's deliveries counted", WAIT, || async {
        let (status, s) = client
            .call("GET", "/v1/stats?campaign=spring", &key, None, None)
            .await;
        (status == 200 && s["delivered"] == 3).then_some(s)
    })
    .await;
    assert_eq!(stats["campaign"], "spring", "{stats}");
    let (status, rec) = client
        .call("GET", &format!("/v1/batches/{batch}"), &key, None, None)
        .await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["recipients"]["delivered"], 2, "{rec}");
    let (status, err) = client
        .call(
            "GET",
            "/v1/stats?campaign=spring&from=yesterday",
            &key,
            None,
            None,
        )
        .await;
    assert_eq!(
        (status, &err["error"]["field"]),
        (400, &serde_json::json!("from"))
    );
}

/// Where the browser test leaves its screenshots:
/// `target/test-artifacts/unsubscribe-page/` (`1-page.png` before the click,
/// `2-unsubscribed.png` after).
fn browser_artifacts() -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts/unsubscribe-page")
}

/// A person opens the `List-Unsubscribe` link in a real browser (Debian's
/// `chromium`, headless, JavaScript off, driven by
/// `tests/browser/unsubscribe_page.py`), clicks the one button, and is
/// suppressed: the next batch skips them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_page_in_a_real_browser() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "/usr/bin/chromium is required (Debian package chromium; scripts/deps.sh --test installs it)"
    );
    let w = world(&[]).await;
    let nats = w.stack.nats.url();
    let key = tenant_with_key(&nats, "shop", "shop.test");
    let client = Client::new(&w.stack);
    let body = serde_json::json!({"from": "news@shop.test", "subject": "Spring", "text": "hello",
        "campaign": "spring", "unsubscribe": true, "recipients": [{"email": "reader@remote.test"}]});
    let (status, answer) = client.post(&key, &body).await;
    assert_eq!(status, 202, "{answer}");
    let dumps = settled_dumps(&w.sink, &nats, 1, "the message at the sink").await;
    let token = sink_message(&dumps[0])
        .split("https://shop.example/u/")
        .nth(1)
        .and_then(|rest| rest.split('>').next())
        .expect("a List-Unsubscribe link")
        .to_string();
    let url = format!("http://{}/u/{token}", w.stack.addr("api"));
    let artifacts = browser_artifacts();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/browser/unsubscribe_page.py"
    );
    let out = tokio::process::Command::new("python3")
        .args([script, &url, artifacts.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "browser driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // What a screen reader announces: the language, and one named button.
    assert_eq!(seen["lang"], "en", "{seen}");
    assert_eq!(seen["before"]["title"], "Unsubscribe", "{seen}");
    assert_eq!(
        seen["before"]["buttons"],
        serde_json::json!(["Unsubscribe"]),
        "{seen}"
    );
    assert_eq!(seen["after"]["title"], "Unsubscribed", "{seen}");
    assert!(
        seen["after"]["html"]
            .as_str()
            .unwrap()
            .contains("reader@remote.test</strong> will get no more"),
        "{seen}"
    );
    for png in ["1-page.png", "2-unsubscribed.png"] {
        let bytes = std::fs::read(artifacts.join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{png} is not a PNG");
    }
    let listed = tern(&nats, &["suppress", "list", "--tenant", "shop"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("reader@remote.test\t") && l.contains("\tunsubscribe\t")),
        "{listed}"
    );
    let again = serde_json::json!({"from": "news@shop.test", "text": "again", "campaign": "spring",
        "recipients": [{"email": "reader@remote.test"}]});
    let (status, answer) = client.post(&key, &again).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        answer["suppressed"],
        serde_json::json!(["reader@remote.test"])
    );
}

/// A `tern.v1.Inject` request carrying `key` as `authorization: Bearer KEY`
/// (`None`: no key at all).
fn grpc_req<T>(key: Option<&str>, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(key) = key {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    r
}

/// `n` templated recipients `g{i}@remote.test` named `G{i}`.
fn grpc_recipients(n: usize) -> Vec<tern_proto::InjectRecipient> {
    (0..n)
        .map(|i| tern_proto::InjectRecipient {
            email: format!("g{i}@remote.test"),
            name: format!("G{i}"),
            vars: format!(r#"{{"code": "K{i}"}}"#),
        })
        .collect()
}

/// The gRPC front door, `tern.v1.Inject`, with tonic's own client against
/// ingress's gRPC listener: a batch arrives rendered at smtp-sink, a
/// repeated Idempotency-Key sends nothing and returns the same batch, each
/// refusal has its status code and names its field, another tenant sees
/// nothing, GetBatch/Stats say what HTTP says, and CancelBatch stops a
/// scheduled batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_api_sends_refuses_and_reports_like_http() {
    use tern_proto::inject_client::InjectClient;
    use tern_proto::{BatchRequest, CampaignStatsRequest, SendRequest};
    use tonic::Code;
    let (w, nats, key, other_key) = two_tenant_world().await;
    let http = Client::new(&w.stack);
    let url = format!("http://{}", w.stack.addr("ingress grpc"));
    let mut grpc = InjectClient::connect(url).await.unwrap();

    let send = SendRequest {
        idempotency_key: "grpc-1".into(),
        from: "Shop <news@shop.test>".into(),
        subject: "Hi {{ name }}".into(),
        text: Some("Dear {{ name }}, code {{ code }}, {{ greeting }}.".into()),
        vars: r#"{"greeting": "bye"}"#.into(),
        campaign: "grpc".into(),
        recipients: grpc_recipients(3),
        ..Default::default()
    };
    let answer = grpc
        .send(grpc_req(Some(&key), send.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.accepted, 3, "{answer:?}");
    assert!(answer.rejected.is_empty() && answer.suppressed.is_empty());
    let dumps = settled_dumps(&w.sink, &nats, 3, "the gRPC batch at smtp-sink").await;
    for i in 0..3 {
        let d = dumps
            .iter()
            .find(|d| sink_arg(d, "Rcpt").contains(&format!("g{i}@remote.test")))
            .unwrap_or_else(|| panic!("no message for g{i}: {dumps:?}"));
        assert!(d.contains(&format!("Dear G{i}, code K{i}, bye.")), "{d}");
        assert!(d.contains(&format!("Subject: Hi G{i}")), "{d}");
    }

    // The same key and request: the first answer; a different request with
    // that key: refused. A marker after both arrives alone.
    let again = grpc.send(grpc_req(Some(&key), send.clone())).await.unwrap();
    assert_eq!(again.into_inner(), answer);
    let mut changed = send.clone();
    changed.subject = "Other".into();
    let e = grpc.send(grpc_req(Some(&key), changed)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().starts_with("Idempotency-Key: "), "{e:?}");
    let marker = SendRequest {
        from: "news@shop.test".into(),
        text: Some("marker".into()),
        recipients: vec![tern_proto::InjectRecipient {
            email: "marker@remote.test".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    grpc.send(grpc_req(Some(&key), marker)).await.unwrap();
    let dumps = settled_dumps(&w.sink, &nats, 4, "the marker at smtp-sink").await;
    assert_eq!(dumps.len(), 4, "the replay sent nothing new");

    // Refusals: the code, and the field first in the message.
    let mut bad_vars = send.clone();
    bad_vars.idempotency_key.clear();
    bad_vars.recipients[1].vars = "[1]".into();
    let mut missing_var = send.clone();
    missing_var.idempotency_key.clear();
    missing_var.text = Some("{{ nowhere }}".into());
    let mut no_from = send.clone();
    no_from.idempotency_key.clear();
    no_from.from.clear();
    let mut foreign = send.clone();
    foreign.idempotency_key.clear();
    foreign.from = "news@other.test".into();
    for (req, code, field) in [
        (bad_vars, Code::InvalidArgument, "recipients[1].vars: "),
        (missing_var, Code::InvalidArgument, "text: "),
        (no_from, Code::InvalidArgument, "from: "),
        (foreign, Code::PermissionDenied, "from: "),
    ] {
        let e = grpc.send(grpc_req(Some(&key), req)).await.unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().starts_with(field), "{field}: {e:?}");
    }
    // Over TERN_API_MAX_BODY: HTTP's 413, naming the body.
    let mut huge = send.clone();
    huge.idempotency_key.clear();
    huge.attachments = vec![tern_proto::InjectAttachment {
        filename: "big.bin".into(),
        content_type: "application/octet-stream".into(),
        content: vec![b'x'; 1_100_000].into(),
    }];
    let e = grpc.send(grpc_req(Some(&key), huge)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().starts_with("body: "), "{e:?}");
    for k in [None, Some("tern_nonsense")] {
        let e = grpc.send(grpc_req(k, send.clone())).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{k:?}: {e:?}");
        let e = grpc
            .stats(grpc_req(k, CampaignStatsRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{k:?}: {e:?}");
    }

    // Another tenant's key finds no such batch, and cannot cancel it.
    let batch = BatchRequest {
        batch_id: answer.batch_id.clone(),
    };
    let e = grpc
        .get_batch(grpc_req(Some(&other_key), batch.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = grpc
        .cancel_batch(grpc_req(Some(&other_key), batch.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // GetBatch and Stats agree with HTTP once the deliveries are counted.
    let path = format!("/v1/batches/{}", answer.batch_id);
    let rec = wait_for("the batch's deliveries counted", WAIT, || async {
        let (status, rec) = http.call("GET", &path, &key, None, None).await;
        (status == 200 && rec["recipients"]["delivered"] == 3).then_some(rec)
    })
    .await;
    let got = grpc
        .get_batch(grpc_req(Some(&key), batch.clone()))
        .await
        .unwrap()
        .into_inner();
    let counts = got.recipients.expect("counted recipients");
    assert_eq!(
        serde_json::json!({"batch_id": got.batch_id, "tenant": got.tenant,
            "campaign": got.campaign, "state": got.state, "total": got.total,
            "spooled": got.spooled, "delivered": counts.delivered,
            "accepted": counts.accepted, "pending": counts.pending}),
        serde_json::json!({"batch_id": rec["batch_id"], "tenant": rec["tenant"],
            "campaign": rec["campaign"], "state": rec["state"], "total": rec["total"],
            "spooled": rec["spooled"], "delivered": rec["recipients"]["delivered"],
            "accepted": rec["recipients"]["accepted"], "pending": rec["recipients"]["pending"]})
    );
    assert_eq!(
        (got.state.as_str(), got.tenant.as_str()),
        ("spooled", "shop")
    );
    // The last day up to an hour from now: inside the 93 days one query
    // may cover, the same range over both front ends.
    let now_ms = tern_runtime::now_unix_ms();
    let from = tern_runtime::date::rfc3339(now_ms - 24 * 3_600_000);
    let to = tern_runtime::date::rfc3339(now_ms + 3_600_000);
    let (status, s) = http
        .call(
            "GET",
            &format!("/v1/stats?campaign=grpc&from={from}&to={to}"),
            &key,
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{s}");
    let g = grpc
        .stats(grpc_req(
            Some(&key),
            CampaignStatsRequest {
                campaign: "grpc".into(),
                from: from.clone(),
                to: to.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.delivered, 3, "{g:?}");
    assert_eq!(
        serde_json::json!([
            g.campaign,
            g.from,
            g.to,
            g.accepted,
            g.delivered,
            g.deferred,
            g.bounced,
            g.complained,
            g.unsubscribed,
            g.suppressed
        ]),
        serde_json::json!([
            s["campaign"],
            s["from"],
            s["to"],
            s["accepted"],
            s["delivered"],
            s["deferred"],
            s["bounced"]["total"],
            s["complained"],
            s["unsubscribed"],
            s["suppressed"]
        ]),
        "{s}"
    );
    // A range over the 93 days, or a time that is not RFC 3339: refused
    // like HTTP's 400, naming the field.
    for (from, to, field) in [
        ("2020-01-01T00:00:00Z", "2099-01-01T00:00:00Z", "from: "),
        ("", "yesterday", "to: "),
    ] {
        let e = grpc
            .stats(grpc_req(
                Some(&key),
                CampaignStatsRequest {
                    campaign: "grpc".into(),
                    from: from.into(),
                    to: to.into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(field), "{field}: {e:?}");
    }

    // A scheduled batch cancelled over gRPC sends nothing.
    let send_at_ms = tern_runtime::now_unix_ms() + 15_000;
    let later = SendRequest {
        from: "news@shop.test".into(),
        text: Some("later".into()),
        send_at: tern_runtime::date::rfc3339(send_at_ms),
        recipients: vec![tern_proto::InjectRecipient {
            email: "later@remote.test".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let id = grpc
        .send(grpc_req(Some(&key), later))
        .await
        .unwrap()
        .into_inner()
        .batch_id;
    let cancelled = grpc
        .cancel_batch(grpc_req(
            Some(&key),
            BatchRequest {
                batch_id: id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (cancelled.state.as_str(), cancelled.spooled),
        ("cancelled", 0)
    );
    let js = async_nats::jetstream::new(async_nats::connect(&nats).await.unwrap());
    wait_for(
        "the cancelled batch to leave the batch stream",
        WAIT,
        || {
            let js = js.clone();
            async move {
                let info = js
                    .get_stream("TERN_INJECT")
                    .await
                    .ok()?
                    .info()
                    .await
                    .ok()?
                    .clone();
                (tern_runtime::now_unix_ms() > send_at_ms && info.state.messages == 0).then_some(())
            }
        },
    )
    .await;
    let dumps = settled_dumps(&w.sink, &nats, 4, "the queue idle after send_at").await;
    assert!(
        !dumps.iter().any(|d| d.contains("later@remote.test")),
        "{dumps:?}"
    );
    let (status, rec) = http
        .call("GET", &format!("/v1/batches/{id}"), &key, None, None)
        .await;
    assert_eq!((status, rec["state"].as_str()), (200, Some("cancelled")));
}

/// An RFC 5965 feedback report (Appendix B's shape) about the message sent
/// with return path `verp`, as a mailbox provider's feedback loop sends it.
fn arf_report(verp: &str, recipient: &str) -> String {
    format!(
        "From: <fbl@provider.test>\r\nTo: <fbl@bounces.shop.test>\r\nSubject: complaint\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain\r\n\r\nThis is an email abuse report.\r\n\r\n\
--b1\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: Fbl/1.0\r\n\
Version: 1\r\nOriginal-Mail-From: <{verp}>\r\nOriginal-Rcpt-To: <{recipient}>\r\n\
Reporting-MTA: dns; mx.provider.test\r\n\r\n\
--b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: <news@shop.test>\r\nReturn-Path: <{verp}>\r\n\
Subject: Hello\r\n\r\nhello\r\n--b1--\r\n"
    )
}

/// `tern campaign status` for the "spring" campaign of "shop": (state, waiting jobs).
fn spring_status(nats: &str) -> Option<(String, u64)> {
    let out = tern(nats, &["campaign", "status", "--tenant", "shop"]);
    let line = out.lines().find(|l| l.starts_with("shop\tspring\t"))?;
    let cols: Vec<&str> = line.split('\t').collect();
    Some((cols[2].to_string(), cols[8].parse().unwrap()))
}

/// Issue 17's circuit breaker through the whole stack: a complaint (an ARF
/// report to the bounce domain, through ingress's MX) puts the campaign
/// above its threshold, the breaker pauses it, the next batch of that
/// campaign waits unattempted (smtp-sink sees none of it) while another
/// campaign still goes out, a waiting job the operator deletes stays
/// deleted, and `tern campaign resume` sends the rest of the waiting mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complaint_rate_above_the_threshold_pauses_the_campaign_until_resumed() {
    // 1 complaint in 5 deliveries is 20 %: above 10 %, judged after 4.
    let w = world(&[
        ("complaint_pause_rate", "10%"),
        ("complaint_pause_min_delivered", "4"),
    ])
    .await;
    let nats = w.stack.nats.url();
    let key = tenant_with_key(&nats, "shop", "shop.test");
    let client = Client::new(&w.stack);
    let batch = |prefix: &str, campaign: &str, n: usize| {
        let recipients: Vec<_> = (0..n)
            .map(|i| serde_json::json!({"email": format!("{prefix}{i}@remote.test")}))
            .collect();
        serde_json::json!({"from": "news@shop.test", "subject": "Hello", "text": "hello",
            "campaign": campaign, "recipients": recipients})
    };
    assert_eq!(client.post(&key, &batch("a", "spring", 5)).await.0, 202);
    let dumps = settled_dumps(&w.sink, &nats, 5, "the first batch at smtp-sink").await;
    assert_eq!(spring_status(&nats), None, "nothing paused yet");

    let first = &dumps[0];
    let rcpt = sink_arg(first, "Rcpt").trim_matches(['<', '>']).to_string();
    let verp = sink_arg(first, "Mail")
        .split_whitespace()
        .next()
        .unwrap()
        .trim_matches(['<', '>'])
        .to_string();
    let reply = smtp_send(
        w.stack.addr("smtp"),
        "",
        &["fbl@bounces.shop.test"],
        arf_report(&verp, &rcpt).as_bytes(),
    )
    .await;
    assert!(reply.starts_with("250"), "{reply}");
    let paused = wait_for("the breaker pauses spring", WAIT, || async {
        spring_status(&nats).filter(|(state, _)| state == "paused")
    })
    .await;
    assert_eq!(paused.1, 0);

    assert_eq!(client.post(&key, &batch("b", "spring", 4)).await.0, 202);
    assert_eq!(client.post(&key, &batch("m", "autumn", 1)).await.0, 202);
    wait_for("spring's second batch set aside", WAIT, || async {
        spring_status(&nats).filter(|(_, waiting)| *waiting == 4)
    })
    .await;
    // An operator deletes one waiting job: the resume must not send it.
    let queue = [(
        "TERN_QUEUE_URL",
        &*format!("http://{}", w.stack.addr("queue grpc")),
    )];
    let ls = tern_with(&nats, &queue, &["queue", "ls", "--domain", "remote.test"]);
    let b3 = ls
        .lines()
        .find(|l| l.ends_with(" b3@remote.test"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("b3's job in {ls}"));
    let out = tern_with(&nats, &queue, &["queue", "delete", b3]);
    assert!(out.contains("1 jobs deleted"), "{out}");
    assert_eq!(spring_status(&nats).unwrap().1, 3, "b3 no longer waits");
    let rcpts_at_sink = |dumps: &[String]| -> Vec<String> {
        let mut r: Vec<String> = dumps
            .iter()
            .map(|d| sink_arg(d, "Rcpt").trim_matches(['<', '>']).to_string())
            .collect();
        r.sort();
        r
    };
    let autumn = wait_for("another campaign still goes out", WAIT, || {
        let d = w.sink.dumps();
        async move { (d.len() >= 6).then_some(d) }
    })
    .await;
    let at_sink = rcpts_at_sink(&autumn);
    assert!(
        at_sink.contains(&"m0@remote.test".to_string()),
        "{at_sink:?}"
    );
    assert!(!at_sink.iter().any(|r| r.starts_with('b')), "{at_sink:?}");

    let out = tern(&nats, &["campaign", "resume", "--tenant", "shop", "spring"]);
    assert!(out.contains("resumed; 3 jobs back"), "{out}");
    let all = settled_dumps(&w.sink, &nats, 9, "spring's second batch after the resume").await;
    let at_sink = rcpts_at_sink(&all);
    for i in 0..3 {
        assert!(
            at_sink.contains(&format!("b{i}@remote.test")),
            "{at_sink:?}"
        );
    }
    assert!(
        !at_sink.contains(&"b3@remote.test".to_string()),
        "{at_sink:?}"
    );
    assert_eq!(at_sink.len(), 9, "each recipient once: {at_sink:?}");
    assert_eq!(spring_status(&nats).unwrap(), ("resumed".to_string(), 0));
    // 1 complaint in 8 spring deliveries, as the gauge says once counted.
    wait_for("the complaint-rate gauge", WAIT, || async {
        let (_, metrics) = common::http_get(w.stack.addr("queue admin"), "/metrics").await?;
        metrics
            .contains(r#"tern_campaign_complaint_rate{tenant="shop",campaign="spring"} 0.125"#)
            .then_some(())
    })
    .await;
}

/// Issue 17's `/v1/suppressions`: a tenant adds entries over the API, sees
/// them listed, and its next batch reports those recipients suppressed
/// (smtp-sink gets only the others); another tenant's key sees none of them
/// and cannot delete them; a removed entry no longer suppresses; bad input
/// gets a `400` naming the field and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_manages_its_suppression_list_over_the_api() {
    let (w, _nats, key, other_key) = two_tenant_world().await;
    let client = Client::new(&w.stack);
    let add = serde_json::json!({"suppressions": [
        {"email": "gone@remote.test"},
        {"email": "Angry@Remote.test", "reason": "complaint", "campaign": "spring"},
    ]});
    let (status, answer) = client.json("POST", "/v1/suppressions", &key, &add).await;
    assert_eq!(
        (status, &answer["added"]),
        (200, &serde_json::json!(2)),
        "{answer}"
    );

    let (status, listed) = client
        .call("GET", "/v1/suppressions", &key, None, None)
        .await;
    assert_eq!(status, 200, "{listed}");
    let shown: Vec<(String, String, String)> = listed["suppressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_string();
            (s("email"), s("campaign"), s("reason"))
        })
        .collect();
    assert_eq!(
        shown,
        [
            (
                "Angry@Remote.test".into(),
                "spring".into(),
                "complaint".into()
            ),
            ("gone@remote.test".into(), String::new(), "manual".into()),
        ]
    );
    let (_, spring_only) = client
        .call("GET", "/v1/suppressions?campaign=spring", &key, None, None)
        .await;
    assert_eq!(spring_only["suppressions"].as_array().unwrap().len(), 1);

    // The other tenant: nothing listed, nothing it can delete.
    let (status, theirs) = client
        .call("GET", "/v1/suppressions", &other_key, None, None)
        .await;
    assert_eq!(
        (status, theirs["suppressions"].as_array().unwrap().len()),
        (200, 0)
    );
    let (status, _) = client
        .call(
            "DELETE",
            "/v1/suppressions/gone@remote.test",
            &other_key,
            None,
            None,
        )
        .await;
    assert_eq!(status, 404);

    // The next spring batch: both listed recipients suppressed (one case-blind).
    let batch = serde_json::json!({"from": "news@shop.test", "subject": "Hi", "text": "hi",
        "campaign": "spring", "recipients": [{"email": "gone@remote.test"},
        {"email": "angry@remote.test"}, {"email": "fine@remote.test"}]});
    let (status, answer) = client.post(&key, &batch).await;
    assert_eq!(status, 202, "{answer}");
    let mut suppressed: Vec<&str> = answer["suppressed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    suppressed.sort();
    assert_eq!(
        suppressed,
        ["angry@remote.test", "gone@remote.test"],
        "{answer}"
    );
    let dumps = wait_for("the one unsuppressed recipient at smtp-sink", WAIT, || {
        let d = w.sink.dumps();
        async move { (!d.is_empty()).then_some(d) }
    })
    .await;
    assert_eq!(
        sink_arg(&dumps[0], "Rcpt").trim_matches(['<', '>']),
        "fine@remote.test"
    );

    // Removed: the address is no longer suppressed.
    let (status, answer) = client
        .call(
            "DELETE",
            "/v1/suppressions/gone@remote.test",
            &key,
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let again = serde_json::json!({"from": "news@shop.test", "subject": "Hi", "text": "hi",
        "recipients": [{"email": "gone@remote.test"}]});
    let (status, answer) = client.post(&key, &again).await;
    assert_eq!(
        (status, answer["accepted"].as_u64()),
        (202, Some(1)),
        "{answer}"
    );

    // Bad input: 400 naming the field, and nothing of that call stored.
    let bad = serde_json::json!({"suppressions": [{"email": "ok@remote.test"}, {"email": "nope"}]});
    let (status, answer) = client.json("POST", "/v1/suppressions", &key, &bad).await;
    assert_eq!(status, 400);
    assert_eq!(
        answer["error"]["field"], "suppressions[1].email",
        "{answer}"
    );
    let (_, listed) = client
        .call("GET", "/v1/suppressions", &key, None, None)
        .await;
    let emails: Vec<&str> = listed["suppressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["Angry@Remote.test"]);
    let (status, _) = client
        .call("GET", "/v1/suppressions", "bogus", None, None)
        .await;
    assert_eq!(status, 401);
}
