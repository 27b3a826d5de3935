//! What the benchmarks sign and verify.

/// A plain-text message of about 4 KiB from `alice@example.com`.
pub fn message() -> Vec<u8> {
    let mut m = b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\n\
Subject: benchmark\r\nDate: Wed, 2 Dec 2026 22:00:00 +0000\r\n\
Message-ID: <bench@example.com>\r\nMIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\r\n"
        .to_vec();
    while m.len() < 4096 {
        m.extend_from_slice(b"The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    m
}
