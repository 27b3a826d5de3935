//! An in-process authoritative DNS server (hickory-server) on 127.0.0.1,
//! answering over UDP and TCP from zone text written in the test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::{LowerName, Name};
use hickory_proto::serialize::txt::Parser;
use hickory_server::Server;
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};

/// A running DNS server; stops on drop.
pub struct DnsServer {
    addr: SocketAddr,
    server: Server<Catalog>,
}

impl DnsServer {
    /// Serve the given zones, each `(origin, zone text)`. Zone text is RFC 1035
    /// master-file syntax; it needs an SOA record.
    pub async fn start(zones: &[(&str, &str)]) -> DnsServer {
        let mut catalog = Catalog::new();
        for (origin, text) in zones {
            let origin = Name::from_ascii(origin).expect("zone origin");
            let (name, records) = Parser::new(*text, None, Some(origin))
                .parse()
                .unwrap_or_else(|e| panic!("zone text does not parse: {e}"));
            let handler = InMemoryZoneHandler::<TokioRuntimeProvider>::new(
                name.clone(),
                records,
                ZoneType::Primary,
                AxfrPolicy::Deny,
            )
            .expect("build zone");
            let handler: Arc<dyn ZoneHandler> = Arc::new(handler);
            catalog.upsert(LowerName::from(&name), vec![handler]);
        }
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind DNS UDP");
        let addr = udp.local_addr().expect("DNS UDP address");
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind DNS TCP on the UDP port");
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        DnsServer { addr, server }
    }

    /// `ip:port` to give resolvers (`TERN_DNS_NAMESERVERS`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.server.shutdown_token().cancel();
    }
}
