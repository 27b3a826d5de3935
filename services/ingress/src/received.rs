//! The `Received:` trace header (RFC 5321 §4.4) ingress prepends to every
//! accepted message.

use std::net::IpAddr;

use tern_smtp::{ForwardPath, Message};

/// Build the `Received:` header for `message`, accepted from `client_ip` by
/// `hostname` under message id `id` at `unix_ms`, over `tls` (version and
/// cipher) if any, ending in CRLF.
///
/// ```text
/// Received: from client.example ([192.0.2.1])
///         by mx.example (Tern) with ESMTPSA
///         (TLSv1.3 TLS13_AES_256_GCM_SHA384; authenticated as alice@example.com)
///         id 01J...
///         for <bob@example.com>; Tue, 3 Jun 2025 12:34:56 +0000
/// ```
///
/// TLS and the authenticated user are a comment (RFC 5322 §3.2.2), which
/// RFC 5321 §4.4 allows between the clauses, as other MTAs write them.
///
/// The `for` clause names the recipient only when there is exactly one, so
/// the header does not disclose the other recipients (RFC 5321 §7.2).
pub fn received_header(
    message: &Message,
    client_ip: IpAddr,
    hostname: &str,
    id: &str,
    unix_ms: i64,
    tls: Option<&str>,
) -> String {
    let helo = if message.helo.is_empty() {
        "unknown"
    } else {
        message.helo.as_str()
    };
    let mut h = format!(
        "Received: from {helo} ({})\r\n\tby {hostname} (Tern) with {}",
        address_literal(client_ip),
        message.protocol(),
    );
    let mut notes = Vec::new();
    if let Some(tls) = tls {
        notes.push(comment_safe(tls));
    }
    if let Some(user) = &message.auth_user {
        notes.push(format!("authenticated as {}", comment_safe(user)));
    }
    if !notes.is_empty() {
        h.push_str(&format!("\r\n\t({})", notes.join("; ")));
    }
    h.push_str(&format!("\r\n\tid {id}"));
    if let [only] = message.rcpts.as_slice() {
        let rcpt = match &only.forward_path {
            ForwardPath::Postmaster => "postmaster".to_string(),
            ForwardPath::Mailbox(m) => m.to_string(),
        };
        h.push_str(&format!("\r\n\tfor <{rcpt}>"));
    }
    h.push_str(&format!(
        ";\r\n\t{}\r\n",
        tern_runtime::date::rfc5322(unix_ms)
    ));
    h
}

/// Text that cannot break out of a comment or the header: no parentheses,
/// backslashes or control characters.
fn comment_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '(' | ')' | '\\') {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3).
fn address_literal(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_smtp::{MailFrom, Mailbox, RcptTo};

    fn message(rcpts: usize, helo: &str) -> Message {
        let rcpt = |i: usize| RcptTo {
            forward_path: ForwardPath::Mailbox(Mailbox {
                local_part: format!("u{i}"),
                domain: "example.com".into(),
            }),
            notify: vec![],
            orcpt: None,
        };
        Message {
            helo: helo.into(),
            esmtp: true,
            tls: true,
            auth_user: None,
            mail_from: MailFrom::default(),
            rcpts: (0..rcpts).map(rcpt).collect(),
            body: bytes::Bytes::new(),
        }
    }

    #[test]
    fn header_shape() {
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let h = received_header(
            &message(1, "client.example"),
            ip,
            "mx.example",
            "01ID",
            0,
            None,
        );
        assert_eq!(
            h,
            "Received: from client.example ([192.0.2.1])\r\n\tby mx.example (Tern) with ESMTPS\r\n\tid 01ID\r\n\
             \tfor <u0@example.com>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
        let ip: IpAddr = "2001:db8::1".parse().expect("ip");
        let h = received_header(&message(2, ""), ip, "mx.example", "01ID", 0, None);
        assert!(
            h.starts_with("Received: from unknown ([IPv6:2001:db8::1])\r\n"),
            "{h}"
        );
        assert!(!h.contains("for <"), "{h}");
        let ip: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert!(received_header(&message(2, "x"), ip, "h", "i", 0, None).contains("([10.0.0.1])"));
    }

    #[test]
    fn tls_and_auth_are_recorded() {
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let mut m = message(1, "c");
        m.auth_user = Some("al(ice)@example.com".into());
        let h = received_header(
            &m,
            ip,
            "mx",
            "ID",
            0,
            Some("TLSv1.3 TLS13_AES_128_GCM_SHA256"),
        );
        assert!(
            h.contains(
                "with ESMTPSA\r\n\t(TLSv1.3 TLS13_AES_128_GCM_SHA256; authenticated as al?ice?@example.com)\r\n\tid ID"
            ),
            "{h}"
        );
    }
}
