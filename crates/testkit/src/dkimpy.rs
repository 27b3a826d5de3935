//! PyPI's `dkimpy` as an independent DKIM verifier (installed into the
//! project `.venv` by `scripts/deps.sh`), looking key records up over real
//! DNS with PyPI's `dnspython`, at a test [`DnsServer`](crate::DnsServer).

use std::net::SocketAddr;
use std::process::Command;

/// The project virtualenv's Python, which has dkimpy, dnspython and PyNaCl.
pub fn venv_python() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin/python").to_string()
}

const VERIFY: &str = r#"
import sys, dkim, dkim.util, dns.message, dns.query, dns.rdatatype
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = open(path, 'rb').read()
def txt(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    r = dns.query.udp(dns.message.make_query(name, 'TXT'), host, port=port, timeout=timeout)
    for rrset in r.answer:
        for rd in rrset:
            if rd.rdtype == dns.rdatatype.TXT:
                return b''.join(rd.strings)
    return None
headers, _ = dkim.rfc822_parse(data)
sigs = [v for (k, v) in headers if k.lower() == b'dkim-signature']
for i, v in enumerate(sigs):
    tags = dkim.util.parse_tag_value(b''.join(v.split()))
    try:
        ok = dkim.DKIM(data).verify(idx=i, dnsfunc=txt)
    except dkim.DKIMException as e:
        print(e, file=sys.stderr)
        ok = False
    print(tags[b'a'].decode(), tags[b'd'].decode(), tags[b's'].decode(), 'pass' if ok else 'fail')
"#;

/// One DKIM-Signature as dkimpy judged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimpyVerdict {
    /// `a=`, e.g. `rsa-sha256`.
    pub algorithm: String,
    /// `d=`.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// dkimpy verified it.
    pub pass: bool,
}

/// Verify every `DKIM-Signature` of `message` with dkimpy, key records
/// fetched from the DNS server at `dns`. Blocking (runs Python).
pub fn dkimpy_verify(dns: SocketAddr, message: &[u8]) -> Vec<DkimpyVerdict> {
    let file = tempfile::NamedTempFile::new().expect("temp message file");
    std::fs::write(file.path(), message).expect("write message");
    let out = Command::new(venv_python())
        .arg("-c")
        .arg(VERIFY)
        .arg(dns.ip().to_string())
        .arg(dns.port().to_string())
        .arg(file.path())
        .output()
        .expect("run the venv's python (scripts/deps.sh installs dkimpy)");
    assert!(
        out.status.success(),
        "dkimpy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() == 4).then(|| DkimpyVerdict {
                algorithm: f[0].into(),
                domain: f[1].into(),
                selector: f[2].into(),
                pass: f[3] == "pass",
            })
        })
        .collect()
}
