//! The PROXY protocol header (HAProxy, versions 1 and 2) a load balancer
//! puts in front of the SMTP stream, so the client's address survives it.
//!
//! Spec: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>.
//! Only the header is parsed; TLVs of version 2 are skipped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version 2 signature (spec §2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Longest version 1 header, CRLF included (spec §2.1).
const V1_MAX: usize = 107;
/// Largest version 2 header we accept (the length field allows 64 KiB;
/// addresses plus common TLVs fit easily in this).
const V2_MAX: usize = 16 + 4096;

/// A malformed PROXY header; the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The stream does not start with a PROXY header.
    #[error("no PROXY protocol header")]
    Missing,
    /// The header is malformed or too long.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The original client, or `None` for `UNKNOWN`/`LOCAL` (use the
    /// connection's own peer address).
    pub source: Option<SocketAddr>,
}

/// Parse a PROXY header at the start of `buf`. `Ok(None)`: need more bytes.
/// `Ok(Some((header, n)))`: the header was `n` octets; what follows is SMTP.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] == V2_SIGNATURE[..n] {
        if buf.len() < 16 {
            return Ok(None);
        }
        return parse_v2(buf);
    }
    let n = buf.len().min(6);
    if buf[..n] != b"PROXY "[..n] {
        return Err(ProxyError::Missing);
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::Malformed("v1 line too long"))
        } else {
            Ok(None)
        };
    };
    let line = buf[..end]
        .strip_suffix(b"\r")
        .ok_or(ProxyError::Malformed("v1 line must end in CRLF"))?;
    let line = std::str::from_utf8(line).map_err(|_| ProxyError::Malformed("v1 not ASCII"))?;
    let words: Vec<&str> = line.split(' ').collect();
    let header = match words.as_slice() {
        ["PROXY", "UNKNOWN", ..] => ProxyHeader { source: None },
        ["PROXY", proto @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let src: IpAddr = src
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 source address"))?;
            let _: IpAddr = dst
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 destination address"))?;
            if (*proto == "TCP4") != src.is_ipv4() {
                return Err(ProxyError::Malformed("v1 address family"));
            }
            let sport: u16 = sport
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 source port"))?;
            let _: u16 = dport
                .parse()
                .map_err(|_| ProxyError::Malformed("v1 destination port"))?;
            ProxyHeader {
                source: Some(SocketAddr::new(src, sport)),
            }
        }
        _ => return Err(ProxyError::Malformed("v1 fields")),
    };
    Ok(Some((header, end + 1)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::Malformed("v2 version"));
    }
    let fam = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if 16 + len > V2_MAX {
        return Err(ProxyError::Malformed("v2 header too long"));
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let source = match (ver_cmd & 0x0f, fam) {
        // LOCAL: health checks from the proxy itself.
        (0, _) => None,
        // PROXY over TCP or UDP, IPv4.
        (1, 0x11 | 0x12) => {
            if body.len() < 12 {
                return Err(ProxyError::Malformed("v2 IPv4 addresses"));
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        // IPv6.
        (1, 0x21 | 0x22) => {
            if body.len() < 36 {
                return Err(ProxyError::Malformed("v2 IPv6 addresses"));
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        // UNSPEC or UNIX: no usable address.
        (1, _) => None,
        _ => return Err(ProxyError::Malformed("v2 command")),
    };
    Ok(Some((ProxyHeader { source }, 16 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 25\r\nEHLO x\r\n";
        let (p, n) = parse(h).expect("ok").expect("complete");
        assert_eq!(p.source, Some("192.0.2.7:40000".parse().expect("addr")));
        assert_eq!(&h[n..], b"EHLO x\r\n");
        let h = b"PROXY TCP6 2001:db8::1 ::1 1 2\r\n";
        let (p, _) = parse(h).expect("ok").expect("complete");
        assert_eq!(p.source, Some("[2001:db8::1]:1".parse().expect("addr")));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n")
                .expect("ok")
                .expect("c")
                .0
                .source,
            None
        );
        assert_eq!(parse(b"PROXY TCP4 1.2"), Ok(None));
        assert_eq!(parse(b"PRO"), Ok(None));
        assert_eq!(parse(b"EHLO x\r\n"), Err(ProxyError::Missing));
        assert!(parse(b"PROXY TCP4 ::1 ::1 1 2\r\n").is_err());
        assert!(parse(b"PROXY TCP4 1.2.3.4 1.2.3.4 99999 2\r\n").is_err());
        assert!(parse(&[b'P', b'R', b'O', b'X', b'Y', b' '].repeat(30)).is_err());
    }

    #[test]
    fn v2() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x9c, 0x40, 0, 25,
        ]);
        h.extend_from_slice(b"EHLO");
        assert_eq!(parse(&h[..20]), Ok(None));
        let (p, n) = parse(&h).expect("ok").expect("complete");
        assert_eq!(p.source, Some("198.51.100.9:40000".parse().expect("addr")));
        assert_eq!(&h[n..], b"EHLO");
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).expect("ok").expect("c").0.source, None);
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend_from_slice(&[0x11, 0x11, 0, 0]);
        assert!(parse(&bad).is_err());
    }
}
