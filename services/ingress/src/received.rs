//! The `Received:` trace header (RFC 5321 §4.4) ingress prepends to every
//! accepted message.

use std::net::IpAddr;

use tern_smtp::{ForwardPath, Message};

/// Build the `Received:` header for `message`, accepted from `client_ip` by
/// `hostname` under message id `id` at `unix_ms`, ending in CRLF.
///
/// ```text
/// Received: from client.example ([192.0.2.1])
///         by mx.example (Tern) with ESMTPS id 01J...
///         for <bob@example.com>; Tue, 3 Jun 2025 12:34:56 +0000
/// ```
///
/// The `for` clause names the recipient only when there is exactly one, so
/// the header does not disclose the other recipients (RFC 5321 §7.2).
pub fn received_header(
    message: &Message,
    client_ip: IpAddr,
    hostname: &str,
    id: &str,
    unix_ms: i64,
) -> String {
    let helo = if message.helo.is_empty() {
        "unknown"
    } else {
        message.helo.as_str()
    };
    let mut h = format!(
        "Received: from {helo} ({})\r\n\tby {hostname} (Tern) with {} id {id}",
        address_literal(client_ip),
        message.protocol(),
    );
    if let [only] = message.rcpts.as_slice() {
        let rcpt = match &only.forward_path {
            ForwardPath::Postmaster => "postmaster".to_string(),
            ForwardPath::Mailbox(m) => m.to_string(),
        };
        h.push_str(&format!("\r\n\tfor <{rcpt}>"));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(unix_ms)));
    h
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3).
fn address_literal(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// An RFC 5322 §3.3 date-time in UTC: `Tue, 3 Jun 2025 12:34:56 +0000`.
pub(crate) fn rfc5322_date(unix_ms: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = unix_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{}, {day} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
    )
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic
/// Gregorian (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_smtp::{MailFrom, Mailbox, RcptTo};

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(951_782_400_000),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(1_748_954_096_789),
            "Tue, 3 Jun 2025 12:34:56 +0000"
        );
        assert_eq!(rfc5322_date(-1000), "Wed, 31 Dec 1969 23:59:59 +0000");
    }

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
            mail_from: MailFrom::default(),
            rcpts: (0..rcpts).map(rcpt).collect(),
            body: bytes::Bytes::new(),
        }
    }

    #[test]
    fn header_shape() {
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let h = received_header(&message(1, "client.example"), ip, "mx.example", "01ID", 0);
        assert_eq!(
            h,
            "Received: from client.example ([192.0.2.1])\r\n\tby mx.example (Tern) with ESMTPS id 01ID\r\n\
             \tfor <u0@example.com>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
        let ip: IpAddr = "2001:db8::1".parse().expect("ip");
        let h = received_header(&message(2, ""), ip, "mx.example", "01ID", 0);
        assert!(
            h.starts_with("Received: from unknown ([IPv6:2001:db8::1])\r\n"),
            "{h}"
        );
        assert!(!h.contains("for <"), "{h}");
        let ip: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert!(received_header(&message(2, "x"), ip, "h", "i", 0).contains("([10.0.0.1])"));
    }
}
