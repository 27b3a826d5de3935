//! Shared helpers for the ingress integration tests: a fake mailbox, a
//! running ingress, a raw SMTP client and a spool reader.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use tern_ingress::{Config, bind};
use tern_proto::accounts_server::{Accounts, AccountsServer};
use tern_proto::body_ref::Location;
use tern_proto::{
    AddUserRequest, AddUserResponse, AuthenticateRequest, AuthenticateResponse,
    CheckRecipientRequest, CheckRecipientResponse, DeleteUserRequest, DeleteUserResponse, Envelope,
    ListUsersRequest, ListUsersResponse, SetPasswordRequest, SetPasswordResponse,
};
use tern_runtime::Shutdown;
use tern_runtime::bus;
use tern_runtime::config::Source;
use tern_testkit::wait_for;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tonic::{Request, Response, Status};

pub const IO_DEADLINE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- fake mailbox

/// Answers `CheckRecipient` from a fixed set and records the `traceparent`
/// of each request; everything else is unimplemented.
struct FixedAccounts {
    users: HashSet<String>,
    traceparents: Arc<Mutex<Vec<String>>>,
    /// user name -> password, for `Authenticate`.
    passwords: Vec<(String, String)>,
    /// `Authenticate` calls received.
    auth_calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Accounts for FixedAccounts {
    async fn check_recipient(
        &self,
        request: Request<CheckRecipientRequest>,
    ) -> Result<Response<CheckRecipientResponse>, Status> {
        if let Some(tp) = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            && let Ok(mut seen) = self.traceparents.lock()
        {
            seen.push(tp.to_string());
        }
        let exists = self
            .users
            .contains(&request.get_ref().address.to_ascii_lowercase());
        Ok(Response::new(CheckRecipientResponse { exists }))
    }
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        self.auth_calls.fetch_add(1, Ordering::SeqCst);
        let r = request.get_ref();
        // Like the mailbox: the user name is the account address,
        // case-insensitively; the canonical (lower-case) address comes back.
        let user = r.username.to_ascii_lowercase();
        let ok = self
            .passwords
            .iter()
            .any(|(u, p)| *u == user && *p == r.password);
        Ok(Response::new(AuthenticateResponse {
            ok,
            address: if ok { user } else { String::new() },
            throttled: false,
        }))
    }
    async fn add_user(
        &self,
        _: Request<AddUserRequest>,
    ) -> Result<Response<AddUserResponse>, Status> {
        Err(Status::unimplemented("test double"))
    }
    async fn delete_user(
        &self,
        _: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        Err(Status::unimplemented("test double"))
    }
    async fn list_users(
        &self,
        _: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        Err(Status::unimplemented("test double"))
    }
    async fn set_password(
        &self,
        _: Request<SetPasswordRequest>,
    ) -> Result<Response<SetPasswordResponse>, Status> {
        Err(Status::unimplemented("test double"))
    }
    async fn add_alias(
        &self,
        _: Request<tern_proto::AddAliasRequest>,
    ) -> Result<Response<tern_proto::AddAliasResponse>, Status> {
        Err(Status::unimplemented("test double"))
    }
    async fn delete_alias(
        &self,
        _: Request<tern_proto::DeleteAliasRequest>,
    ) -> Result<Response<tern_proto::DeleteAliasResponse>, Status> {
        Err(Status::unimplemented("test double"))
    }
    async fn list_aliases(
        &self,
        _: Request<tern_proto::ListAliasesRequest>,
    ) -> Result<Response<tern_proto::ListAliasesResponse>, Status> {
        Err(Status::unimplemented("test double"))
    }
    async fn quota(
        &self,
        _: Request<tern_proto::QuotaRequest>,
    ) -> Result<Response<tern_proto::QuotaResponse>, Status> {
        Err(Status::unimplemented("test double"))
    }
}

/// Start the fake mailbox on 127.0.0.1:0 and return its URL.
pub async fn start_accounts(users: &[&str]) -> String {
    start_accounts_recording(users).await.0
}

/// Start the fake mailbox; also return the `traceparent`s it receives.
pub async fn start_accounts_recording(users: &[&str]) -> (String, Arc<Mutex<Vec<String>>>) {
    let (url, tp, _) = start_accounts_full(users, &[]).await;
    (url, tp)
}

/// Start the fake mailbox with `logins` (user, password) for AUTH; also
/// return the number of `Authenticate` calls it received.
pub async fn start_accounts_auth(
    users: &[&str],
    logins: &[(&str, &str)],
) -> (String, Arc<AtomicUsize>) {
    let (url, _, calls) = start_accounts_full(users, logins).await;
    (url, calls)
}

async fn start_accounts_full(
    users: &[&str],
    logins: &[(&str, &str)],
) -> (String, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
    let auth_calls = Arc::new(AtomicUsize::new(0));
    let traceparents = Arc::new(Mutex::new(Vec::new()));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind accounts");
    let addr = listener.local_addr().expect("accounts addr");
    let svc = AccountsServer::new(FixedAccounts {
        users: users.iter().map(|u| u.to_string()).collect(),
        traceparents: traceparents.clone(),
        passwords: logins
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect(),
        auth_calls: auth_calls.clone(),
    });
    tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    });
    (format!("http://{addr}"), traceparents, auth_calls)
}

/// A URL where nothing listens.
pub async fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

// ---------------------------------------------------------------- ingress

pub struct Ingress {
    pub addrs: Vec<(&'static str, SocketAddr)>,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<Result<(), tern_ingress::Error>>,
    _dir: tempfile::TempDir,
}

impl Ingress {
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no {name} listener in {:?}", self.addrs))
    }

    pub async fn start(nats: &str, mailbox: &str, extra: &[(&str, &str)]) -> Ingress {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().to_str().expect("utf-8 temp path").to_string();
        let mut pairs = vec![
            ("smtp_listen", "127.0.0.1:0"),
            ("submission_listen", "127.0.0.1:0"),
            ("submissions_listen", "127.0.0.1:0"),
            ("api_listen", "127.0.0.1:0"),
            ("ingress_grpc_listen", "127.0.0.1:0"),
            ("ingress_admin_listen", "127.0.0.1:0"),
            ("mailbox_url", mailbox),
            ("nats_url", nats),
            ("data_dir", data_dir.as_str()),
            ("hostname", "mx.test"),
            ("local_domains", "example.com,example.org"),
            ("shutdown_grace", "5s"),
            // No resolver here: these tests check the bytes ingress spools;
            // the inbound checks are tested end to end in
            // crates/tern/tests/inbound_auth.rs.
            ("inbound_checks", "false"),
        ];
        for (k, _) in extra {
            pairs.retain(|(pk, _)| pk != k);
        }
        pairs.extend_from_slice(extra);
        let src = Source::from_pairs(pairs);
        let config = Config::from_source(&src).expect("config");
        src.finish().expect("every key known");
        let bound = bind(config).await.expect("bind ingress");
        let addrs = bound.addrs();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        let ingress = Ingress {
            addrs,
            shutdown,
            task,
            _dir: dir,
        };
        let admin = ingress.addr("ingress admin");
        wait_for("ingress /readyz", Duration::from_secs(20), || async move {
            http_get(admin, "/readyz")
                .await
                .filter(|r| r.starts_with("HTTP/1.1 200"))
                .map(|_| ())
        })
        .await;
        ingress
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        let result = tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("ingress stops within the grace period")
            .expect("ingress task joins");
        result.expect("ingress run returns Ok");
    }
}

pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    tokio::time::timeout(IO_DEADLINE, s.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(out)
}

// ---------------------------------------------------------------- raw SMTP client

pub struct Smtp {
    r: BufReader<TcpStream>,
}

impl Smtp {
    /// Connect and read the greeting.
    pub async fn connect(addr: SocketAddr) -> Smtp {
        let stream = TcpStream::connect(addr).await.expect("connect to ingress");
        let mut c = Smtp {
            r: BufReader::new(stream),
        };
        let (code, text) = c.reply().await;
        assert_eq!(code, 220, "{text}");
        c
    }

    /// Use an already connected stream; read the greeting.
    pub async fn from_stream(stream: TcpStream) -> Smtp {
        let mut c = Smtp {
            r: BufReader::new(stream),
        };
        let (code, text) = c.reply().await;
        assert_eq!(code, 220, "{text}");
        c
    }

    /// Read one (possibly multi-line) reply: code and full text.
    pub async fn reply(&mut self) -> (u16, String) {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(IO_DEADLINE, self.r.read_line(&mut line))
                .await
                .expect("reply within deadline")
                .expect("read reply");
            assert!(n > 0, "connection closed; got so far: {all:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') {
                let code = line[..3].parse().expect("reply code");
                return (code, all);
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.r.get_mut().write_all(bytes).await.expect("write");
    }

    /// Send one command line and read the reply.
    pub async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Expect the server to have closed the connection.
    pub async fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(IO_DEADLINE, self.r.read_to_end(&mut rest))
            .await
            .expect("EOF within deadline")
            .unwrap_or(0);
        assert_eq!(n, 0, "unexpected data {:?}", String::from_utf8_lossy(&rest));
    }

    /// A whole transaction; returns the final reply after the body.
    pub async fn transaction(
        &mut self,
        from: &str,
        rcpts: &[&str],
        wire_body: &[u8],
    ) -> (u16, String) {
        let (code, text) = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert_eq!(code, 250, "{text}");
        for r in rcpts {
            let (code, text) = self.cmd(&format!("RCPT TO:<{r}>")).await;
            assert_eq!(code, 250, "{text}");
        }
        let (code, text) = self.cmd("DATA").await;
        assert_eq!(code, 354, "{text}");
        self.send(wire_body).await;
        self.send(b".\r\n").await;
        self.reply().await
    }
}

/// The id in `250 2.0.0 Ok: queued as <id>`.
pub fn queued_id(text: &str) -> String {
    assert!(text.starts_with("250 2.0.0 Ok: queued as "), "{text}");
    text.trim_end().rsplit(' ').next().expect("id").to_string()
}

// ---------------------------------------------------------------- spool reader

/// Find the spool message with `Nats-Msg-Id` = `id`.
pub async fn spooled(nats: &str, id: &str) -> (Envelope, async_nats::HeaderMap) {
    let client = async_nats::connect(nats).await.expect("test NATS client");
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(bus::SPOOL_STREAM)
        .await
        .expect("spool stream");
    let last = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    for seq in 1..=last {
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        if msg.headers.get("Nats-Msg-Id").map(|v| v.as_str()) == Some(id) {
            let env = Envelope::decode(msg.payload).expect("decode envelope");
            return (env, msg.headers);
        }
    }
    panic!("no spool message with id {id} in {last} messages");
}

pub fn inline_body(env: &Envelope) -> Vec<u8> {
    match env.body.as_ref().and_then(|b| b.location.as_ref()) {
        Some(Location::Inline(b)) => b.to_vec(),
        other => panic!("expected an inline body, got {other:?}"),
    }
}

/// Split a stored body into the `Received:` header we prepended and the rest.
pub fn split_received(body: &[u8]) -> (String, &[u8]) {
    assert!(
        body.starts_with(b"Received: "),
        "{:?}",
        String::from_utf8_lossy(body)
    );
    // The header ends at the first CRLF not followed by folding whitespace.
    let mut i = 0;
    while i + 2 < body.len() {
        if &body[i..i + 2] == b"\r\n" && body[i + 2] != b'\t' && body[i + 2] != b' ' {
            let header = String::from_utf8(body[..i + 2].to_vec()).expect("utf-8 header");
            return (header, &body[i + 2..]);
        }
        i += 1;
    }
    panic!("unterminated Received header");
}
