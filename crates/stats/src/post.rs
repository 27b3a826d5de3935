//! A minimal HTTP/1.1 POST for webhook deliveries: the request bytes and the
//! status-line parse are pure; [`post`] does the I/O over a tokio TcpStream,
//! for `https://` inside rustls with the certificate verified against the
//! configured roots and the URL's host (RFC 9110 §4.3.4).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::webhook::SIGNATURE_HEADER;

/// The most of a response head read to find the status line.
const MAX_HEAD: usize = 8192;

/// Why a POST did not get a `2xx`.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The URL has no host or a bad port.
    #[error("bad webhook url {0:?}")]
    Url(String),
    /// Connecting, the TLS handshake (a certificate that does not verify),
    /// writing or reading failed.
    #[error("webhook i/o: {0}")]
    Io(#[from] std::io::Error),
    /// No complete answer within the timeout.
    #[error("webhook timed out after {0:?}")]
    Timeout(Duration),
    /// The answer was not an HTTP status line.
    #[error("webhook answered something that is not HTTP")]
    Malformed,
    /// The receiver answered a status other than 2xx.
    #[error("webhook answered {0}")]
    Status(u16),
}

/// Where a delivery goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port (80, or 443 for https, when the URL names none).
    pub port: u16,
    /// `https://`: TLS, the certificate verified for `host`.
    pub tls: bool,
    /// The `Host` header value, as the URL spells it.
    pub authority: String,
    /// Path and query, `/` when empty.
    pub path: String,
}

/// Split an `http://` or `https://` URL into its target.
pub fn parse_url(url: &str) -> Result<Target, PostError> {
    let bad = || PostError::Url(url.to_string());
    let (tls, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://").ok_or_else(bad)?),
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    // An IPv6 literal is bracketed (RFC 3986 §3.2.2).
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| bad())?,
        None if tls => 443,
        None => 80,
    };
    if host.is_empty() || authority.contains('@') {
        return Err(bad());
    }
    Ok(Target {
        host: host.to_string(),
        port,
        tls,
        authority: authority.to_string(),
        path,
    })
}

/// The request bytes: one POST of `body` with its signature, connection closed after.
pub fn request(target: &Target, body: &[u8], signature: &str) -> Vec<u8> {
    let mut out = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tern-webhooks\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\
         {SIGNATURE_HEADER}: {signature}\r\nConnection: close\r\n\r\n",
        target.path,
        target.authority,
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The status code of a response whose head starts `head`, once its status
/// line is complete (RFC 9112 §4); `Err` if it is not HTTP.
pub fn status(head: &[u8]) -> Result<Option<u16>, PostError> {
    let Some(end) = head.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&head[..end]).map_err(|_| PostError::Malformed)?;
    let mut parts = line.split(' ');
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") && code.len() == 3 => {
            code.parse().map(Some).map_err(|_| PostError::Malformed)
        }
        _ => Err(PostError::Malformed),
    }
}

/// POST `body` to `url` signed with `signature`; `Ok` on a `2xx` answer.
/// `tls` verifies an `https://` receiver.
pub async fn post(
    url: &str,
    body: &[u8],
    signature: &str,
    timeout: Duration,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(), PostError> {
    let target = parse_url(url)?;
    let request = request(&target, body, signature);
    let exchange = async {
        let conn = tokio::net::TcpStream::connect((target.host.as_str(), target.port)).await?;
        if !target.tls {
            return exchange(conn, &request).await;
        }
        let name =
            ServerName::try_from(target.host.clone()).map_err(|_| PostError::Url(url.into()))?;
        let conn = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, conn)
            .await?;
        exchange(conn, &request).await
    };
    let code = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| PostError::Timeout(timeout))??;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(PostError::Status(code))
    }
}

/// Write the request and read up to the status line.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: S,
    request: &[u8],
) -> Result<u16, PostError> {
    conn.write_all(request).await?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(code) = status(&head)? {
            return Ok(code);
        }
        let n = conn.read(&mut buf).await?;
        if n == 0 || head.len() > MAX_HEAD {
            return Err(PostError::Malformed);
        }
        head.extend_from_slice(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        let t = parse_url("http://127.0.0.1:8080/hooks?x=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8080, "/hooks?x=1")
        );
        let t = parse_url("http://hooks.example").unwrap();
        assert_eq!(
            (t.port, t.path.as_str(), t.authority.as_str()),
            (80, "/", "hooks.example")
        );
        let t = parse_url("http://[::1]:9/a").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("::1", 9, "[::1]:9")
        );
        let t = parse_url("https://hooks.example/in").unwrap();
        assert_eq!((t.tls, t.port, t.path.as_str()), (true, 443, "/in"));
        assert!(!parse_url("http://h/").unwrap().tls);
        assert!(matches!(parse_url("ftp://x/"), Err(PostError::Url(_))));
        assert!(matches!(
            parse_url("http://x:99999/"),
            Err(PostError::Url(_))
        ));
        assert!(matches!(parse_url("http://u@x/"), Err(PostError::Url(_))));
    }

    #[test]
    fn the_request_carries_the_signature_and_the_body() {
        let t = parse_url("http://h:1/p").unwrap();
        let r = String::from_utf8(request(&t, b"[1]", "t=1, v1=ab")).unwrap();
        assert!(r.starts_with("POST /p HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(r.contains("\r\nContent-Length: 3\r\n"));
        assert!(r.contains("\r\nTern-Signature: t=1, v1=ab\r\n"));
        assert!(r.ends_with("\r\n\r\n[1]"));
    }

    #[test]
    fn the_status_line_is_read_once_complete() {
        assert_eq!(status(b"HTTP/1.1 20").unwrap(), None);
        assert_eq!(status(b"HTTP/1.0 204 No Content\r\n").unwrap(), Some(204));
        assert_eq!(status(b"HTTP/1.1 500 Oops\r\nX: y").unwrap(), Some(500));
        assert!(status(b"SSH-2.0-x\r\n").is_err());
    }
}
