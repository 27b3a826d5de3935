//! An in-process authoritative DNS server (hickory-server) on 127.0.0.1,
//! answering over UDP and TCP from zone text written in the test. It counts
//! the queries it receives and can hold its answers back, so tests can see
//! what a resolver actually asked upstream.
//!
//! Zones can be DNSSEC-signed (NSEC, one ECDSA P-256 key per zone) for
//! validation tests; [`DnsServer::trust_anchor`] gives the key to trust.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::dnssec::crypto::EcdsaSigningKey;
use hickory_proto::dnssec::rdata::{DNSKEY, DNSSECRData};
use hickory_proto::dnssec::{Algorithm, DnssecSigner, SigningKey};
use hickory_proto::rr::{LowerName, Name, RData, Record};
use hickory_proto::serialize::txt::Parser;
use hickory_server::Server;
use hickory_server::dnssec::NxProofKind;
use hickory_server::net::runtime::{Time, TokioRuntimeProvider};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};

/// A running DNS server; stops on drop.
pub struct DnsServer {
    addr: SocketAddr,
    server: Server<Counting>,
    state: Arc<State>,
    /// DNSKEY record (presentation format) of each signed zone, by origin.
    anchors: HashMap<String, String>,
}

/// Query counts and the hold gate, shared with the request handler.
struct State {
    /// Transaction IDs of the queries received, by (lower-case name without
    /// the trailing dot, type).
    counts: Mutex<HashMap<(String, String), HashSet<u16>>>,
    /// `true` while answers are held back.
    hold: tokio::sync::watch::Sender<bool>,
}

/// The catalog, plus counting and holding.
struct Counting {
    catalog: Catalog,
    state: Arc<State>,
}

// hickory's trait is an `#[async_trait]`; this is its expansion, written out
// so the testkit needs no extra dependency.
impl RequestHandler for Counting {
    fn handle_request<'life0, 'life1, 'async_trait, R, T>(
        &'life0 self,
        request: &'life1 Request,
        response_handle: R,
    ) -> Pin<Box<dyn Future<Output = ResponseInfo> + Send + 'async_trait>>
    where
        R: ResponseHandler + 'async_trait,
        T: Time + 'async_trait,
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            if let Ok(info) = request.request_info() {
                let name = Name::from(info.query.name().clone())
                    .to_ascii()
                    .to_ascii_lowercase();
                let key = (
                    name.trim_end_matches('.').to_string(),
                    info.query.query_type().to_string(),
                );
                if let Ok(mut counts) = self.state.counts.lock() {
                    counts.entry(key).or_default().insert(info.metadata.id);
                }
            }
            let mut hold = self.state.hold.subscribe();
            // Returns at once when not held; errs only if the server is gone.
            let _ = hold.wait_for(|held| !*held).await;
            self.catalog
                .handle_request::<R, T>(request, response_handle)
                .await
        })
    }
}

impl DnsServer {
    /// Serve the given zones, each `(origin, zone text)`. Zone text is RFC 1035
    /// master-file syntax; it needs an SOA record.
    pub async fn start(zones: &[(&str, &str)]) -> DnsServer {
        DnsServer::start_signed(zones, &[]).await
    }

    /// Like [`start`](Self::start), but the zones whose origins are listed in
    /// `signed` are DNSSEC-signed (RFC 4035): each gets a fresh ECDSA P-256
    /// key (a DNSKEY at the apex), RRSIGs valid for a day, and NSEC records
    /// for authenticated denial. [`trust_anchor`](Self::trust_anchor) gives
    /// its key.
    pub async fn start_signed(zones: &[(&str, &str)], signed: &[&str]) -> DnsServer {
        let mut catalog = Catalog::new();
        let mut anchors = HashMap::new();
        for (origin, text) in zones {
            let origin = Name::from_ascii(origin).expect("zone origin");
            let (name, records) = Parser::new(*text, None, Some(origin.clone()))
                .parse()
                .unwrap_or_else(|e| panic!("zone text does not parse: {e}"));
            let sign = signed
                .iter()
                .any(|s| Name::from_ascii(s).is_ok_and(|s| s == origin));
            let mut handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
                name.clone(),
                records,
                ZoneType::Primary,
                AxfrPolicy::Deny,
                sign.then_some(NxProofKind::Nsec),
            )
            .expect("build zone");
            if sign {
                let signer = zone_signer(&name);
                let dnskey = Record::from_rdata(
                    name.clone(),
                    3600,
                    RData::DNSSEC(DNSSECRData::DNSKEY(DNSKEY::from_key(
                        &signer.key().to_public_key().expect("public key"),
                    ))),
                );
                anchors.insert(zone_key(&name.to_ascii()), dnskey.to_string());
                handler
                    .add_zone_signing_key_mut(signer)
                    .expect("add zone key");
                handler.secure_zone_mut().expect("sign zone");
            }
            let handler: Arc<dyn ZoneHandler> = Arc::new(handler);
            catalog.upsert(LowerName::from(&name), vec![handler]);
        }
        // UDP and TCP must share one port number; the TCP port can be taken
        // by an unrelated connection, so try a few UDP ports.
        let mut bound = None;
        for _ in 0..20 {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind DNS UDP");
            let addr = udp.local_addr().expect("DNS UDP address");
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                bound = Some((udp, addr, tcp));
                break;
            }
        }
        let (udp, addr, tcp) = bound.expect("a loopback port free for both DNS UDP and TCP");
        let state = Arc::new(State {
            counts: Mutex::new(HashMap::new()),
            hold: tokio::sync::watch::Sender::new(false),
        });
        let mut server = Server::new(Counting {
            catalog,
            state: state.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        DnsServer {
            addr,
            server,
            state,
            anchors,
        }
    }

    /// The DNSKEY record of a zone signed by [`start_signed`](Self::start_signed),
    /// in presentation format (`origin. 3600 IN DNSKEY 257 3 13 ...`): the
    /// trust anchor a validating resolver needs for it. `None` for unsigned zones.
    pub fn trust_anchor(&self, origin: &str) -> Option<String> {
        self.anchors.get(&zone_key(origin)).cloned()
    }

    /// `ip:port` to give resolvers (`TERN_DNS_NAMESERVERS`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many queries for `name` (case-insensitive, trailing dot optional)
    /// and `record_type` (`"MX"`, `"A"`, ...) this server has received.
    ///
    /// A query is one transaction ID: a client retransmitting a query over
    /// UDP because the answer is slow (hickory does after 333 ms) reuses its
    /// ID and counts once.
    pub fn queries(&self, name: &str, record_type: &str) -> usize {
        let key = (
            name.trim_end_matches('.').to_ascii_lowercase(),
            record_type.to_ascii_uppercase(),
        );
        self.state
            .counts
            .lock()
            .map(|c| c.get(&key).map_or(0, HashSet::len))
            .unwrap_or(0)
    }

    /// How many queries of any name and type this server has received
    /// (counted as [`queries`](Self::queries) does).
    pub fn total_queries(&self) -> usize {
        self.state
            .counts
            .lock()
            .map(|c| c.values().map(HashSet::len).sum())
            .unwrap_or(0)
    }

    /// Hold every answer back (queries are still counted on arrival) until
    /// [`release`](Self::release).
    pub fn hold(&self) {
        self.state.hold.send_replace(true);
    }

    /// Answer held and future queries again.
    pub fn release(&self) {
        self.state.hold.send_replace(false);
    }
}

/// Lower-case origin with the trailing dot.
fn zone_key(origin: &str) -> String {
    format!("{}.", origin.trim_end_matches('.').to_ascii_lowercase())
}

/// A fresh ECDSA P-256 key for `origin`, marked as a zone key and secure
/// entry point (it signs both the DNSKEY RRset and the zone's data).
fn zone_signer(origin: &Name) -> DnssecSigner {
    let algorithm = Algorithm::ECDSAP256SHA256;
    let pkcs8 = EcdsaSigningKey::generate_pkcs8(algorithm).expect("generate zone key");
    let key = EcdsaSigningKey::from_pkcs8(&pkcs8, algorithm).expect("load zone key");
    let dnskey = DNSKEY::from_key(&key.to_public_key().expect("public key"));
    DnssecSigner::new(
        dnskey,
        Box::new(key),
        origin.clone(),
        Duration::from_secs(86_400),
    )
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.server.shutdown_token().cancel();
    }
}
