//! The PROXY protocol header (versions 1 and 2) in front of SMTP.

use std::net::{IpAddr, SocketAddr};

use tern_smtp::proxy;

/// No panic; a header's length is within the input; every shorter prefix
/// of a header asks for more input (never an error: reads arrive in
/// pieces); and the address it carries, written as a version 1 and as a
/// version 2 header, parses back to the same address.
pub fn header(data: &[u8]) {
    let Ok(Some((h, n))) = proxy::parse(data) else {
        return;
    };
    assert!(
        n > 0 && n <= data.len(),
        "header length {n} of {}",
        data.len()
    );
    for k in 0..n {
        assert_eq!(proxy::parse(&data[..k]), Ok(None), "prefix of {k} octets");
    }
    let Some(source) = h.source else {
        return;
    };
    for wire in [v1(source), v2(source)] {
        let (again, len) = proxy::parse(&wire)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{wire:?} does not parse"));
        assert_eq!(again.source, Some(source), "round trip via {wire:?}");
        assert_eq!(len, wire.len());
    }
}

fn v1(source: SocketAddr) -> Vec<u8> {
    let (proto, dst) = match source.ip() {
        IpAddr::V4(_) => ("TCP4", "192.0.2.1"),
        IpAddr::V6(_) => ("TCP6", "2001:db8::1"),
    };
    format!(
        "PROXY {proto} {} {dst} {} 25\r\n",
        source.ip(),
        source.port()
    )
    .into_bytes()
}

fn v2(source: SocketAddr) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n\x21".to_vec();
    match source.ip() {
        IpAddr::V4(ip) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&ip.octets());
            out.extend_from_slice(&[192, 0, 2, 1]);
        }
        IpAddr::V6(ip) => {
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&ip.octets());
            out.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&25u16.to_be_bytes());
    out
}
