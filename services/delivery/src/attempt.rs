//! One delivery attempt for one job: ask the resolver for the route, try the
//! MX hosts in order, run the SMTP transaction, and turn every reply into a
//! per-recipient outcome.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tern_proto::resolver_client::ResolverClient;
use tern_proto::{DsnRet, Job, MxHost, Outcome, RecipientResult, ResolveRouteRequest, RouteStatus};
use tern_smtp::client::{ClientError, Reply, SmtpClient, Stage, Timeouts};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::Instrument;

/// The interceptor type of the resolver client (adds the trace context).
pub(crate) type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
/// A resolver client that propagates the current trace.
pub(crate) type Resolver = ResolverClient<InterceptedService<Channel, Interceptor>>;

/// Most addresses connected to in one attempt (Postfix's `smtp_mx_address_limit`).
pub const MAX_ADDRESSES: usize = 5;
/// Most SMTP sessions (hosts that answered) in one attempt (`smtp_mx_session_limit`).
pub const MAX_SESSIONS: usize = 2;

/// What an attempt needs besides the job.
pub(crate) struct Env<'a> {
    pub resolver: Resolver,
    pub port: u16,
    pub helo: &'a str,
    pub connect_timeout: Duration,
    pub timeouts: Timeouts,
}

/// Why a host could not take the message; reported when no host could.
#[derive(Debug, Clone)]
struct Failure {
    code: u32,
    enhanced: String,
    reply: String,
    remote_host: String,
}

/// How one SMTP session ended.
enum SessionEnd {
    /// The host gave a definitive answer for every recipient.
    Done(Vec<RecipientResult>),
    /// The host could not take the message; try the next one.
    Next(Failure),
}

/// Resolve, connect and relay. The body is loaded lazily by `load_body`
/// only once a route exists, so a resolver failure costs no body read.
pub(crate) async fn attempt<F, Fut, E>(
    env: Env<'_>,
    job: &Job,
    load_body: F,
) -> Vec<RecipientResult>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<bytes::Bytes, E>>,
    E: std::fmt::Display,
{
    let mut resolver = env.resolver.clone();
    let route = match resolver
        .resolve_route(ResolveRouteRequest {
            domain: job.destination.clone(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(status) => {
            return all(
                job,
                Outcome::Deferred,
                &Failure {
                    code: 0,
                    enhanced: "4.4.3".into(),
                    reply: format!("resolver unavailable: {}", status.message()),
                    remote_host: String::new(),
                },
            );
        }
    };
    match RouteStatus::try_from(route.status) {
        Ok(RouteStatus::Ok) if !route.hosts.is_empty() => {}
        Ok(RouteStatus::Permanent) => {
            let enhanced = if route.enhanced.is_empty() {
                "5.1.2".into()
            } else {
                route.enhanced
            };
            return all(
                job,
                Outcome::Bounced,
                &Failure {
                    code: 0,
                    enhanced,
                    reply: route.error,
                    remote_host: String::new(),
                },
            );
        }
        _ => {
            let reply = if route.error.is_empty() {
                "no route to the destination".into()
            } else {
                route.error
            };
            return all(
                job,
                Outcome::Deferred,
                &Failure {
                    code: 0,
                    enhanced: "4.4.3".into(),
                    reply,
                    remote_host: String::new(),
                },
            );
        }
    }
    let body = match load_body().await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "message body could not be loaded");
            return all(
                job,
                Outcome::Deferred,
                &Failure {
                    code: 0,
                    enhanced: "4.3.0".into(),
                    reply: format!("message body unavailable: {e}"),
                    remote_host: String::new(),
                },
            );
        }
    };
    relay(&env, job, &route.hosts, &body).await
}

/// Try the hosts in order: the next address on a connection failure, the
/// next host when a session cannot take the message.
async fn relay(env: &Env<'_>, job: &Job, hosts: &[MxHost], body: &[u8]) -> Vec<RecipientResult> {
    let mut last = Failure {
        code: 0,
        enhanced: "4.4.4".into(),
        reply: "no usable MX host address".into(),
        remote_host: String::new(),
    };
    let (mut addresses, mut sessions) = (0, 0);
    'hosts: for host in hosts {
        for text in &host.addresses {
            let Ok(ip) = text.parse::<IpAddr>() else {
                continue;
            };
            if addresses == MAX_ADDRESSES || sessions == MAX_SESSIONS {
                break 'hosts;
            }
            addresses += 1;
            let addr = SocketAddr::new(ip, env.port);
            let span = tracing::info_span!("delivery.smtp", host = %host.name, addr = %addr, result = tracing::field::Empty);
            let stream = match tokio::time::timeout(env.connect_timeout, TcpStream::connect(addr))
                .instrument(span.clone())
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    span.record("result", "connect failed");
                    last = Failure {
                        code: 0,
                        enhanced: "4.4.1".into(),
                        reply: format!("connect to {}[{addr}]: {e}", host.name),
                        remote_host: host.name.clone(),
                    };
                    continue;
                }
                Err(_) => {
                    span.record("result", "connect timeout");
                    last = Failure {
                        code: 0,
                        enhanced: "4.4.1".into(),
                        reply: format!(
                            "connect to {}[{addr}]: timed out after {:?}",
                            host.name, env.connect_timeout
                        ),
                        remote_host: host.name.clone(),
                    };
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            sessions += 1;
            match session(stream, &host.name, job, body, env.helo, env.timeouts)
                .instrument(span.clone())
                .await
            {
                SessionEnd::Done(results) => {
                    span.record("result", "done");
                    return results;
                }
                SessionEnd::Next(f) => {
                    span.record("result", "next host");
                    tracing::info!(parent: &span, reply = %f.reply, "host did not take the message; trying the next");
                    last = f;
                    continue 'hosts;
                }
            }
        }
    }
    all(job, Outcome::Deferred, &last)
}

/// One SMTP transaction for every recipient of `job`.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    host: &str,
    job: &Job,
    body: &[u8],
    helo: &str,
    timeouts: Timeouts,
) -> SessionEnd {
    let (mut c, _greeting) = match SmtpClient::connect(stream, timeouts).await {
        Ok(x) => x,
        // A 4xx or 5xx greeting, or no greeting: this host is not taking mail now.
        Err(e) => return SessionEnd::Next(failure(&e, host)),
    };
    let ext = match c.ehlo(helo).await {
        Ok(ext) => ext.clone(),
        Err(e) => {
            c.quit().await;
            return SessionEnd::Next(failure(&e, host));
        }
    };
    let needs_utf8 = !job.mail_from.is_ascii() || job.rcpts.iter().any(|r| !r.address.is_ascii());
    if needs_utf8 && !ext.smtputf8() {
        c.quit().await;
        return SessionEnd::Done(all(
            job,
            Outcome::Bounced,
            &Failure {
                code: 0,
                enhanced: "5.6.7".into(),
                reply: format!("{host} does not support SMTPUTF8, which the addresses need"),
                remote_host: host.into(),
            },
        ));
    }
    if let Some(limit) = ext.size()
        && limit > 0
        && body.len() as u64 > limit
    {
        c.quit().await;
        return SessionEnd::Done(all(
            job,
            Outcome::Bounced,
            &Failure {
                code: 552,
                enhanced: "5.3.4".into(),
                reply: format!(
                    "message of {} octets exceeds the {limit} octet limit of {host}",
                    body.len()
                ),
                remote_host: host.into(),
            },
        ));
    }

    let mut params = Vec::new();
    if ext.size().is_some() {
        params.push(format!("SIZE={}", body.len()));
    }
    if job.eight_bit && ext.eight_bit_mime() {
        params.push("BODY=8BITMIME".to_string());
    }
    if job.smtputf8 && ext.smtputf8() {
        params.push("SMTPUTF8".to_string());
    }
    if ext.dsn() {
        match DsnRet::try_from(job.ret) {
            Ok(DsnRet::Full) => params.push("RET=FULL".into()),
            Ok(DsnRet::Hdrs) => params.push("RET=HDRS".into()),
            _ => {}
        }
        if !job.envid.is_empty() {
            params.push(format!("ENVID={}", job.envid));
        }
    }
    match c.mail_from(&job.mail_from, &params).await {
        Ok(_) => {}
        Err(e) if e.is_permanent() || matches!(e, ClientError::InvalidArgument { .. }) => {
            c.quit().await;
            let outcome = Outcome::Bounced;
            return SessionEnd::Done(all(job, outcome, &failure(&e, host)));
        }
        Err(e) => {
            c.quit().await;
            return SessionEnd::Next(failure(&e, host));
        }
    }

    let mut results: Vec<Option<RecipientResult>> = Vec::with_capacity(job.rcpts.len());
    for r in &job.rcpts {
        let mut p = Vec::new();
        if ext.dsn() {
            if !r.notify.is_empty() {
                p.push(format!("NOTIFY={}", r.notify.join(",")));
            }
            if !r.orcpt.is_empty() {
                p.push(format!("ORCPT={}", r.orcpt));
            }
        }
        match c.rcpt_to(&r.address, &p).await {
            Ok(reply) if reply.is_positive() => results.push(None),
            Ok(reply) => {
                let outcome = if reply.is_permanent() {
                    Outcome::Bounced
                } else {
                    Outcome::Deferred
                };
                results.push(Some(from_reply(&r.address, outcome, &reply, host)));
            }
            Err(ClientError::InvalidArgument { .. }) => {
                results.push(Some(result(
                    &r.address,
                    Outcome::Bounced,
                    &Failure {
                        code: 0,
                        enhanced: "5.1.3".into(),
                        reply: "recipient address cannot be sent over SMTP".into(),
                        remote_host: host.into(),
                    },
                )));
            }
            Err(e) => {
                c.quit().await;
                return SessionEnd::Next(failure(&e, host));
            }
        }
    }
    if results.iter().all(Option::is_some) {
        c.quit().await;
        return SessionEnd::Done(results.into_iter().flatten().collect());
    }

    let (outcome, f) = match c.data(body).await {
        Ok(reply) => (Outcome::Delivered, reply_failure(&reply, host)),
        Err(e) => {
            // After DATA the server may hold the message; retrying later (not
            // on another host now) is the conservative choice.
            let outcome = if e.is_permanent() {
                Outcome::Bounced
            } else {
                Outcome::Deferred
            };
            (outcome, failure(&e, host))
        }
    };
    c.quit().await;
    SessionEnd::Done(
        results
            .into_iter()
            .zip(&job.rcpts)
            .map(|(r, rcpt)| r.unwrap_or_else(|| result(&rcpt.address, outcome, &f)))
            .collect(),
    )
}

fn enhanced_or(reply: &Reply) -> String {
    reply
        .enhanced
        .clone()
        .unwrap_or_else(|| format!("{}.0.0", reply.code / 100))
}

fn reply_failure(reply: &Reply, host: &str) -> Failure {
    Failure {
        code: u32::from(reply.code),
        enhanced: enhanced_or(reply),
        reply: reply.text(),
        remote_host: host.into(),
    }
}

fn from_reply(address: &str, outcome: Outcome, reply: &Reply, host: &str) -> RecipientResult {
    result(address, outcome, &reply_failure(reply, host))
}

/// Describe a client error for a result.
fn failure(e: &ClientError, host: &str) -> Failure {
    if let Some(reply) = e.reply() {
        return reply_failure(reply, host);
    }
    let enhanced = match e {
        ClientError::Timeout {
            stage: Stage::Greeting,
            ..
        } => "4.4.1",
        ClientError::Timeout { .. } | ClientError::Closed { .. } | ClientError::Io { .. } => {
            "4.4.2"
        }
        ClientError::InvalidArgument { .. } => "5.1.7",
        _ => "4.5.0",
    };
    Failure {
        code: 0,
        enhanced: enhanced.into(),
        reply: format!("{host}: {e}"),
        remote_host: host.into(),
    }
}

fn result(address: &str, outcome: Outcome, f: &Failure) -> RecipientResult {
    RecipientResult {
        address: address.to_string(),
        outcome: outcome as i32,
        code: f.code,
        enhanced: f.enhanced.clone(),
        reply: f.reply.clone(),
        remote_host: f.remote_host.clone(),
    }
}

fn all(job: &Job, outcome: Outcome, f: &Failure) -> Vec<RecipientResult> {
    job.rcpts
        .iter()
        .map(|r| result(&r.address, outcome, f))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tern_proto::Recipient;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn job(rcpts: &[&str]) -> Job {
        Job {
            job_id: "m1/x.test".into(),
            message_id: "m1".into(),
            mail_from: "a@b.test".into(),
            rcpts: rcpts
                .iter()
                .map(|r| Recipient {
                    address: r.to_string(),
                    ..Default::default()
                })
                .collect(),
            destination: "x.test".into(),
            ..Default::default()
        }
    }

    /// A peer that answers each line it reads with the next scripted reply.
    async fn peer(
        mut s: tokio::io::DuplexStream,
        greeting: &'static str,
        replies: Vec<&'static str>,
    ) {
        s.write_all(greeting.as_bytes()).await.unwrap();
        let mut replies = replies.into_iter();
        let mut buf = Vec::new();
        let mut in_data = false;
        let mut chunk = [0u8; 1024];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            loop {
                let end = if in_data {
                    buf.windows(5)
                        .position(|w| w == b"\r\n.\r\n")
                        .map(|i| i + 5)
                } else {
                    buf.windows(2).position(|w| w == b"\r\n").map(|i| i + 2)
                };
                let Some(end) = end else { break };
                let line: Vec<u8> = buf.drain(..end).collect();
                in_data = line == b"DATA\r\n";
                let Some(r) = replies.next() else { return };
                s.write_all(r.as_bytes()).await.unwrap();
                if in_data && !r.starts_with("354") {
                    in_data = false;
                }
            }
        }
    }

    #[tokio::test]
    async fn mixed_recipient_outcomes() {
        let (a, b) = duplex(8192);
        tokio::spawn(peer(
            b,
            "220 x\r\n",
            vec![
                "250 x\r\n",
                "250 ok\r\n",
                "250 ok\r\n",
                "550 5.1.1 unknown\r\n",
                "452 4.2.2 full\r\n",
                "354 go\r\n",
                "250 2.0.0 queued\r\n",
                "221 bye\r\n",
            ],
        ));
        let j = job(&["ok@x.test", "no@x.test", "full@x.test"]);
        let SessionEnd::Done(r) = session(
            a,
            "mx.x.test",
            &j,
            b"hi\r\n",
            "me.test",
            Timeouts::default(),
        )
        .await
        else {
            panic!("expected a definitive answer");
        };
        let outcomes: Vec<i32> = r.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Delivered as i32,
                Outcome::Bounced as i32,
                Outcome::Deferred as i32
            ]
        );
        assert_eq!(r[1].code, 550);
        assert_eq!(r[1].enhanced, "5.1.1");
        assert_eq!(r[2].enhanced, "4.2.2");
        assert_eq!(r[0].remote_host, "mx.x.test");
    }

    #[tokio::test]
    async fn transient_greeting_means_next_host() {
        let (a, b) = duplex(8192);
        tokio::spawn(peer(b, "421 4.7.0 busy\r\n", vec!["221 bye\r\n"]));
        let j = job(&["ok@x.test"]);
        let SessionEnd::Next(f) = session(
            a,
            "mx.x.test",
            &j,
            b"hi\r\n",
            "me.test",
            Timeouts::default(),
        )
        .await
        else {
            panic!("expected next host");
        };
        assert_eq!(f.code, 421);
    }

    #[tokio::test]
    async fn permanent_mail_from_bounces_everyone() {
        let (a, b) = duplex(8192);
        tokio::spawn(peer(
            b,
            "220 x\r\n",
            vec!["250 x\r\n", "553 5.7.1 sender denied\r\n", "221 bye\r\n"],
        ));
        let j = job(&["r1@x.test", "r2@x.test"]);
        let SessionEnd::Done(r) = session(
            a,
            "mx.x.test",
            &j,
            b"hi\r\n",
            "me.test",
            Timeouts::default(),
        )
        .await
        else {
            panic!("expected a definitive answer");
        };
        assert!(
            r.iter()
                .all(|r| r.outcome == Outcome::Bounced as i32 && r.enhanced == "5.7.1")
        );
    }

    #[tokio::test]
    async fn final_data_rejection_applies_to_accepted_recipients() {
        let (a, b) = duplex(8192);
        tokio::spawn(peer(
            b,
            "220 x\r\n",
            vec![
                "250 x\r\n",
                "250 ok\r\n",
                "250 ok\r\n",
                "354 go\r\n",
                "451 4.3.0 try later\r\n",
                "221 bye\r\n",
            ],
        ));
        let j = job(&["r1@x.test"]);
        let SessionEnd::Done(r) = session(
            a,
            "mx.x.test",
            &j,
            b"hi\r\n",
            "me.test",
            Timeouts::default(),
        )
        .await
        else {
            panic!("expected a definitive answer");
        };
        assert_eq!(r[0].outcome, Outcome::Deferred as i32);
        assert_eq!(r[0].code, 451);
    }

    #[tokio::test]
    async fn size_limit_is_honoured() {
        let (a, b) = duplex(8192);
        tokio::spawn(peer(
            b,
            "220 x\r\n",
            vec!["250-x\r\n250 SIZE 3\r\n", "221 bye\r\n"],
        ));
        let j = job(&["r1@x.test"]);
        let SessionEnd::Done(r) = session(
            a,
            "mx.x.test",
            &j,
            b"too big\r\n",
            "me.test",
            Timeouts::default(),
        )
        .await
        else {
            panic!("expected a definitive answer");
        };
        assert_eq!(r[0].outcome, Outcome::Bounced as i32);
        assert_eq!(r[0].enhanced, "5.3.4");
    }
}
