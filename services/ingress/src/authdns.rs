//! DNS for the inbound checks, answered by the resolver service.
//!
//! `mail-auth` 0.13.3 resolves through its own hickory `TokioResolver`; its
//! cache hooks cannot express a negative answer for A/AAAA/MX/PTR (a miss
//! falls through to the resolver), so they cannot replace it. Instead ingress
//! runs this tiny DNS responder on `127.0.0.1:<ephemeral>` (UDP, loopback
//! only) and points mail-auth's resolver at it: every question it receives is
//! asked of the resolver service's `Lookup` gRPC, so the cluster shares one
//! cache, and mail-auth keeps its own RFC 7208 §4.6.4 lookup accounting. The
//! hickory resolver in front keeps a short local cache (TTL-bound), which is
//! what makes a warm check cheap. The responder answers over TCP on the same
//! port too: an answer over [`MAX_UDP`] octets (a long SPF or DKIM record) is
//! sent truncated over UDP and asked again over TCP (RFC 7766 §5).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, PTR, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tern_proto::{LookupRequest, LookupResponse, RouteStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;

use crate::conn::Interceptor;

/// The resolver service client used for lookups.
pub(crate) type ResolverClient = tern_proto::resolver_client::ResolverClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Interceptor>,
>;

/// How long one `Lookup` may take before the question is SERVFAIL.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(5);
/// Largest UDP answer sent; hickory's receive buffer is 4096 octets.
const MAX_UDP: usize = 4096;
/// One TXT character-string holds at most 255 octets (RFC 1035 §3.3).
const TXT_CHUNK: usize = 255;

/// How long a TCP connection may sit idle before it is closed (RFC 7766 §6.2.3).
const TCP_IDLE: Duration = Duration::from_secs(10);

/// Bind the responder on loopback, UDP and TCP on one port; returns its
/// address and the serve task.
pub(crate) async fn start(
    resolver: ResolverClient,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let (udp, tcp) = bind_pair().await?;
    let addr = udp.local_addr()?;
    let task = tokio::spawn(async move {
        tokio::join!(
            serve(Arc::new(udp), resolver.clone()),
            serve_tcp(tcp, resolver)
        );
    });
    Ok((addr, task))
}

/// A UDP socket and a TCP listener on the same loopback port. The TCP port
/// of a fresh UDP port can be taken by an unrelated connection: try a few.
async fn bind_pair() -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no loopback port for DNS UDP and TCP")))
}

async fn serve_tcp(listener: TcpListener, resolver: ResolverClient) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: do not spin.
                tracing::debug!(error = %e, "inbound-check DNS: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if from.ip().is_loopback() {
            tokio::spawn(tcp_session(stream, resolver.clone()));
        }
    }
}

/// Queries on one connection, each framed by its two-octet length (RFC 1035
/// §4.2.2), answered in order until the client closes or idles.
async fn tcp_session(mut stream: TcpStream, resolver: ResolverClient) {
    loop {
        let mut len = [0u8; 2];
        if !matches!(
            timeout(TCP_IDLE, stream.read_exact(&mut len)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if !matches!(
            timeout(TCP_IDLE, stream.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Ok(query) = Message::from_vec(&buf) else {
            return;
        };
        let reply = answer(&query, resolver.clone()).await;
        let Some(bytes) = wire(&reply, usize::from(u16::MAX)) else {
            return;
        };
        let Ok(n) = u16::try_from(bytes.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&bytes);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

async fn serve(socket: Arc<UdpSocket>, resolver: ResolverClient) {
    let mut buf = vec![0u8; MAX_UDP];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        // Only our own process asks (the socket is loopback-bound).
        if !from.ip().is_loopback() {
            continue;
        }
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let (socket, resolver) = (socket.clone(), resolver.clone());
        tokio::spawn(async move {
            let answer = answer(&query, resolver).await;
            if let Some(bytes) = wire(&answer, MAX_UDP) {
                let _ = socket.send_to(&bytes, from).await;
            }
        });
    }
}

/// `reply` encoded, at most `max` octets: a longer one goes out truncated
/// (TC set, no records), which tells the client to ask again over TCP.
fn wire(reply: &Message, max: usize) -> Option<Vec<u8>> {
    let bytes = reply.to_vec().ok()?;
    if bytes.len() <= max {
        return Some(bytes);
    }
    reply.truncate().to_vec().ok()
}

/// The reply to one query, from the resolver service's answer.
async fn answer(query: &Message, mut resolver: ResolverClient) -> Message {
    let id = query.metadata.id;
    let Some(q) = query.queries.first() else {
        return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
    };
    let mut reply = Message::new(id, MessageType::Response, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_query(q.clone());
    let Some(kind) = lookup_type(q.query_type()) else {
        reply.metadata.response_code = ResponseCode::NotImp;
        return reply;
    };
    let request = LookupRequest {
        name: q.name().to_ascii(),
        record_type: kind.to_string(),
    };
    let response = match tokio::time::timeout(LOOKUP_DEADLINE, resolver.lookup(request)).await {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(status)) => {
            tracing::debug!(error = %status, "resolver Lookup failed");
            reply.metadata.response_code = ResponseCode::ServFail;
            return reply;
        }
        Err(_) => {
            reply.metadata.response_code = ResponseCode::ServFail;
            return reply;
        }
    };
    fill(&mut reply, q.name(), q.query_type(), &response);
    reply
}

/// The `Lookup` type name for a DNS question type, if supported.
fn lookup_type(t: RecordType) -> Option<&'static str> {
    Some(match t {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::MX => "MX",
        RecordType::TXT => "TXT",
        RecordType::PTR => "PTR",
        _ => return None,
    })
}

/// Turn a `LookupResponse` into the answer section and response code.
fn fill(reply: &mut Message, name: &Name, rtype: RecordType, r: &LookupResponse) {
    let ttl = r.ttl;
    match RouteStatus::try_from(r.status).unwrap_or(RouteStatus::Unspecified) {
        RouteStatus::Ok => {
            for text in &r.records {
                if let Some(rdata) = parse_rdata(rtype, text) {
                    reply.add_answer(Record::from_rdata(name.clone(), ttl, rdata));
                }
            }
            if reply.answers.is_empty() {
                negative(reply, name, ttl);
            }
        }
        RouteStatus::Permanent => {
            reply.metadata.response_code = ResponseCode::NXDomain;
            negative(reply, name, ttl);
        }
        _ => reply.metadata.response_code = ResponseCode::ServFail,
    }
}

/// An SOA in the authority section so the negative answer is cached for
/// the resolver service's TTL (RFC 2308 §5).
fn negative(reply: &mut Message, name: &Name, ttl: u32) {
    let mname = Name::from_ascii("lookup.tern.invalid.").unwrap_or_else(|_| Name::root());
    let soa = SOA::new(mname.clone(), mname, 1, 3600, 600, 86400, ttl);
    reply.add_authority(Record::from_rdata(name.clone(), ttl, RData::SOA(soa)));
}

/// One record in the resolver's presentation format as RDATA.
fn parse_rdata(rtype: RecordType, text: &str) -> Option<RData> {
    match rtype {
        RecordType::A => text.parse::<Ipv4Addr>().ok().map(|a| RData::A(A(a))),
        RecordType::AAAA => text.parse::<Ipv6Addr>().ok().map(|a| RData::AAAA(AAAA(a))),
        RecordType::MX => {
            let (pref, host) = text.trim().split_once(char::is_whitespace)?;
            let name = Name::from_str_relaxed(host.trim()).ok()?;
            Some(RData::MX(MX::new(pref.parse().ok()?, name)))
        }
        RecordType::PTR => Name::from_str_relaxed(text.trim())
            .ok()
            .map(|n| RData::PTR(PTR(n))),
        // The resolver concatenates a TXT record's strings; split it again
        // into character-strings (consumers concatenate them back).
        RecordType::TXT => {
            let bytes = text.as_bytes();
            let chunks: Vec<&[u8]> = if bytes.is_empty() {
                vec![&[][..]]
            } else {
                bytes.chunks(TXT_CHUNK).collect()
            };
            Some(RData::TXT(TXT::from_bytes(chunks)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presentation_records_become_rdata() {
        assert!(matches!(
            parse_rdata(RecordType::A, "192.0.2.1"),
            Some(RData::A(A(a))) if a == Ipv4Addr::new(192, 0, 2, 1)
        ));
        match parse_rdata(RecordType::MX, "10 mx.example.com.") {
            Some(RData::MX(mx)) => {
                assert_eq!(mx.preference, 10);
                assert_eq!(mx.exchange.to_ascii(), "mx.example.com.");
            }
            other => panic!("MX: {other:?}"),
        }
        let long = "p=".to_string() + &"A".repeat(600);
        match parse_rdata(RecordType::TXT, &long) {
            Some(RData::TXT(t)) => {
                assert_eq!(t.txt_data.len(), 3);
                let joined: Vec<u8> = t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
                assert_eq!(joined, long.as_bytes());
            }
            other => panic!("TXT: {other:?}"),
        }
        assert!(parse_rdata(RecordType::A, "not an address").is_none());
    }
}
