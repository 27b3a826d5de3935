//! An SMTP sink on 127.0.0.1 that records every transaction it accepts.
//!
//! It is deliberately simple and separate from Tern's own SMTP code, so it
//! checks Tern from the outside: EHLO/HELO, MAIL, RCPT, DATA (dot-unstuffed),
//! RSET, NOOP, QUIT. Recipients whose local part starts with `reject` get
//! `550 5.1.1`, those starting with `defer` get `451 4.3.0`; [`SmtpSink::answer`]
//! sets any other reply for recipients with a given local-part prefix.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkMessage {
    /// The name the client gave in EHLO/HELO.
    pub helo: String,
    /// Reverse-path without brackets.
    pub mail_from: String,
    /// Accepted forward-paths without brackets.
    pub rcpts: Vec<String>,
    /// The body as transmitted, dot-unstuffed, without the final `.` line.
    pub data: Vec<u8>,
}

/// A running sink; stops on drop.
pub struct SmtpSink {
    addr: SocketAddr,
    messages: Arc<Mutex<Vec<SinkMessage>>>,
    replies: Replies,
    task: tokio::task::JoinHandle<()>,
}

/// Recipient prefix → the RCPT reply (full lines, CRLF-terminated).
type Replies = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

impl SmtpSink {
    /// Listen on 127.0.0.1 with an ephemeral port.
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind SMTP sink");
        let addr = listener.local_addr().expect("sink address");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let replies: Replies = Arc::default();
        let (m, r) = (messages.clone(), replies.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, m.clone(), r.clone()));
            }
        });
        SmtpSink {
            addr,
            messages,
            replies,
            task,
        }
    }

    /// Answer RCPT for recipients starting with `prefix` with `reply`
    /// (one or more lines, e.g. `"550-5.1.1 a\r\n550 5.1.1 b"`; CRLF added).
    /// A 2xx reply accepts the recipient.
    pub fn answer(&self, prefix: &str, reply: &str) {
        if let Ok(mut r) = self.replies.lock() {
            r.push((prefix.to_string(), format!("{reply}\r\n").into_bytes()));
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything received so far.
    pub fn messages(&self) -> Vec<SinkMessage> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn path_of(arg: &str) -> String {
    let start = arg.find('<').map(|i| i + 1).unwrap_or(0);
    let end = arg[start..]
        .find('>')
        .map(|i| start + i)
        .unwrap_or(arg.len());
    arg[start..end].to_string()
}

async fn session(stream: TcpStream, store: Arc<Mutex<Vec<SinkMessage>>>, replies: Replies) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut cur = SinkMessage {
        helo: String::new(),
        mail_from: String::new(),
        rcpts: Vec::new(),
        data: Vec::new(),
    };
    if w.write_all(b"220 sink.test ESMTP test sink\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let custom: Vec<u8>;
        let reply: &[u8] = match verb.as_str() {
            "EHLO" | "HELO" => {
                cur.helo = text[4..].trim().to_string();
                if verb == "EHLO" {
                    b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
                } else {
                    b"250 sink.test\r\n"
                }
            }
            "MAIL" => {
                cur.mail_from = path_of(&text);
                cur.rcpts.clear();
                b"250 2.1.0 Ok\r\n"
            }
            "RCPT" => {
                let rcpt = path_of(&text);
                let set = replies.lock().ok().and_then(|r| {
                    r.iter()
                        .find(|(p, _)| rcpt.starts_with(p.as_str()))
                        .map(|(_, v)| v.clone())
                });
                if let Some(v) = set {
                    if v.starts_with(b"2") {
                        cur.rcpts.push(rcpt);
                    }
                    custom = v;
                    &custom
                } else if rcpt.starts_with("reject") {
                    b"550 5.1.1 No such user\r\n"
                } else if rcpt.starts_with("defer") {
                    b"451 4.3.0 Try again later\r\n"
                } else {
                    cur.rcpts.push(rcpt);
                    b"250 2.1.5 Ok\r\n"
                }
            }
            "DATA" => {
                if cur.rcpts.is_empty() {
                    b"554 5.5.1 No valid recipients\r\n"
                } else {
                    if w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    cur.data.clear();
                    loop {
                        line.clear();
                        match r.read_until(b'\n', &mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == b".\r\n" {
                            break;
                        }
                        let unstuffed = if line.starts_with(b".") {
                            &line[1..]
                        } else {
                            &line[..]
                        };
                        cur.data.extend_from_slice(unstuffed);
                    }
                    if let Ok(mut s) = store.lock() {
                        s.push(cur.clone());
                    }
                    b"250 2.0.0 Ok: queued\r\n"
                }
            }
            "RSET" => {
                cur.rcpts.clear();
                cur.mail_from.clear();
                b"250 2.0.0 Ok\r\n"
            }
            "NOOP" => b"250 2.0.0 Ok\r\n",
            "QUIT" => {
                let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
                return;
            }
            _ => b"502 5.5.2 Command not recognized\r\n",
        };
        if w.write_all(reply).await.is_err() {
            return;
        }
    }
}
