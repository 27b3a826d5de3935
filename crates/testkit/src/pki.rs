//! A throwaway certificate authority for TLS tests: a CA, a server
//! certificate for `127.0.0.1` and `localhost`, and a client certificate,
//! written as PEM files into a temp dir.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM files of a test CA and the certificates it issued; removed on drop.
pub struct TestPki {
    dir: tempfile::TempDir,
    /// The CA, to issue more certificates ([`TestPki::issue_server`]).
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate.
    pub ca: PathBuf,
    /// Server certificate (SANs `127.0.0.1`, `localhost`).
    pub server_cert: PathBuf,
    /// Server private key.
    pub server_key: PathBuf,
    /// Client certificate (client auth, CN `tern-test-client`).
    pub client_cert: PathBuf,
    /// Client private key.
    pub client_key: PathBuf,
}

impl TestPki {
    /// Generate the CA and both certificates.
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("temp dir for test certificates");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Tern test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names).expect("certificate params");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![eku];
            let key = KeyPair::generate().expect("certificate key");
            let cert = params.signed_by(&key, &issuer).expect("sign certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) = leaf(
            Vec::new(),
            "tern-test-client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, pem: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write PEM file");
            path
        };
        TestPki {
            issuer,
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
            dir,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses, the
    /// first also the CN) issued by this CA, and its key, as PEM files
    /// `<stem>.pem` and `<stem>-key.pem` in [`TestPki::dir`].
    pub fn issue_server(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<String>>())
                .expect("certificate params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(stem));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("certificate key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign certificate");
        let cert_path = self.dir.path().join(format!("{stem}.pem"));
        let key_path = self.dir.path().join(format!("{stem}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write PEM file");
        std::fs::write(&key_path, key.serialize_pem()).expect("write PEM file");
        (cert_path, key_path)
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A nats-server `tls { }` block for the client port with the server
    /// certificate, requiring (`verify: true`) a client certificate this
    /// CA issued.
    pub fn nats_tls_block(&self) -> String {
        format!(
            "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n  timeout: 2\n}}\n",
            self.server_cert, self.server_key, self.ca
        )
    }
}

impl Default for TestPki {
    fn default() -> Self {
        TestPki::new()
    }
}
