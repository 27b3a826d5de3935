//! Resolver service: MX routes and DNS lookups for the whole cluster behind
//! one cache, served as `tern.v1.Resolver` over gRPC.
//!
//! `ResolveRoute` turns a mail domain into the ordered list of hosts delivery
//! should try (RFC 5321 §5.1): MX hosts by preference, shuffled within equal
//! preference, each with IPv6 then IPv4 addresses; the domain itself when it
//! has no MX (implicit MX); a permanent failure for NXDOMAIN (5.1.2) and null
//! MX (RFC 7505, 5.1.10); a temporary failure for SERVFAIL and timeouts.
//! Address literals (`[192.0.2.1]`, `[IPv6:2001:db8::1]`) need no DNS.
//!
//! Answers are cached for their TTL (negative ones per RFC 2308, capped),
//! concurrent identical requests share one upstream resolution, upstream
//! concurrency is bounded, and expired answers are served for a short window
//! when upstream fails (RFC 8767).
//!
//! With `TERN_DNS_DNSSEC` answers are validated (RFC 4035): bogus ones are
//! temporary failures, and responses say whether they were authenticated
//! (what DANE, RFC 7672, needs).

mod cache;
mod dns;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tern_proto::resolver_server::{Resolver, ResolverServer};
use tern_proto::{
    LookupRequest, LookupResponse, ResolveRouteRequest, ResolveRouteResponse, RouteStatus,
};
use tern_runtime::config::{CommonConfig, ConfigError, Key, List, Source, endpoints};
use tern_runtime::{Shutdown, admin, grpc, telemetry};
use tokio::net::TcpListener;
use tracing::Instrument;

pub use dns::{
    DnsResolver, DnsSettings, DnsSetupError, ENHANCED_BAD_SYNTAX, ENHANCED_NO_DOMAIN,
    ENHANCED_NO_ROUTE, ENHANCED_NULL_MX, LookupError,
};

/// `TERN_DNS_NAMESERVERS`.
pub const DNS_NAMESERVERS: Key<List<SocketAddr>> = Key::new(
    "dns_nameservers",
    "",
    "DNS servers as comma-separated ip:port (default: the system's resolv.conf)",
);
/// `TERN_DNS_TIMEOUT`.
pub const DNS_TIMEOUT: Key<Duration> = Key::new(
    "dns_timeout",
    "5s",
    "timeout of one DNS query to one server",
);
/// `TERN_DNS_TTL_FLOOR`.
pub const DNS_TTL_FLOOR: Key<Duration> = Key::new(
    "dns_ttl_floor",
    "0s",
    "shortest time a DNS answer is cached (0: as the zone says)",
);
/// `TERN_DNS_TTL_CEILING`.
pub const DNS_TTL_CEILING: Key<Duration> = Key::new(
    "dns_ttl_ceiling",
    "1d",
    "longest time a DNS answer is cached",
);

/// `TERN_DNS_NEGATIVE_TTL_MAX`.
pub const DNS_NEGATIVE_TTL_MAX: Key<Duration> = Key::new(
    "dns_negative_ttl_max",
    "5m",
    "longest time a negative answer (NXDOMAIN, no records) is cached (RFC 2308)",
);
/// `TERN_DNS_STALE_WINDOW`.
pub const DNS_STALE_WINDOW: Key<Duration> = Key::new(
    "dns_stale_window",
    "5m",
    "how long past its TTL an answer is still served when upstream DNS fails (0s: never)",
);
/// `TERN_DNS_MAX_INFLIGHT`.
pub const DNS_MAX_INFLIGHT: Key<usize> = Key::new(
    "dns_max_inflight",
    "128",
    "upstream DNS queries in flight at most",
);

/// `TERN_DNS_DNSSEC`.
pub const DNS_DNSSEC: Key<bool> = Key::new(
    "dns_dnssec",
    "false",
    "validate DNS answers with DNSSEC; answers that fail validation are temporary failures",
);
/// `TERN_DNS_TRUST_ANCHOR`.
pub const DNS_TRUST_ANCHOR: Key<Option<PathBuf>> = Key::new(
    "dns_trust_anchor",
    "",
    "file of DNSKEY records to trust for DNSSEC (default: the IANA root keys built in)",
);

/// Resolver configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shared settings (shutdown grace).
    pub common: CommonConfig,
    /// gRPC listen address.
    pub grpc_listen: SocketAddr,
    /// Admin HTTP listen address.
    pub admin_listen: SocketAddr,
    /// DNS client settings.
    pub dns: DnsSettings,
}

impl Config {
    /// Read the resolver's keys.
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let ttl_floor = src.get(&DNS_TTL_FLOOR)?;
        let ttl_ceiling = src.get(&DNS_TTL_CEILING)?;
        if ttl_ceiling < ttl_floor {
            return Err(ConfigError::Invalid {
                key: tern_runtime::config::env_name(DNS_TTL_CEILING.name),
                value: format!("{ttl_ceiling:?}"),
                expected: "a duration not shorter than TERN_DNS_TTL_FLOOR",
            });
        }
        Ok(Config {
            common: CommonConfig::from_source(src)?,
            grpc_listen: src.get(&endpoints::RESOLVER_GRPC)?,
            admin_listen: src.get(&endpoints::RESOLVER_ADMIN)?,
            dns: DnsSettings {
                nameservers: src.get(&DNS_NAMESERVERS)?.0,
                timeout: src.get(&DNS_TIMEOUT)?,
                ttl_floor,
                ttl_ceiling,
                negative_ttl_max: src.get(&DNS_NEGATIVE_TTL_MAX)?,
                stale_window: src.get(&DNS_STALE_WINDOW)?,
                max_inflight: src.get(&DNS_MAX_INFLIGHT)?,
                dnssec: src.get(&DNS_DNSSEC)?,
                trust_anchor: src.get(&DNS_TRUST_ANCHOR)?,
            },
        })
    }
}

/// Errors that stop the resolver service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("bind {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Configuration problem found at start.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The DNS client could not be built.
    #[error(transparent)]
    Dns(#[from] DnsSetupError),
    /// The gRPC server failed.
    #[error(transparent)]
    Grpc(#[from] grpc::GrpcError),
    /// The admin HTTP server failed.
    #[error("admin HTTP server: {0}")]
    Admin(std::io::Error),
}

/// The resolver with its listeners bound and its DNS client built.
pub struct Bound {
    config: Config,
    dns: DnsResolver,
    grpc: TcpListener,
    admin: TcpListener,
}

/// Bind the resolver's listeners and build the DNS client.
pub async fn bind(config: Config) -> Result<Bound, Error> {
    // Install the metrics recorder before the first lookup is counted.
    admin::metrics_handle();
    let dns = DnsResolver::new(&config.dns)?;
    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { what, addr, source })
    };
    Ok(Bound {
        grpc: bind("resolver gRPC", config.grpc_listen).await?,
        admin: bind("resolver admin", config.admin_listen).await?,
        dns,
        config,
    })
}

/// Bind and run until shutdown.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), Error> {
    bind(config).await?.run(shutdown).await
}

impl Bound {
    /// Addresses this service listens on.
    pub fn addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        [
            ("resolver grpc", &self.grpc),
            ("resolver admin", &self.admin),
        ]
        .into_iter()
        .filter_map(|(n, l)| l.local_addr().ok().map(|a| (n, a)))
        .collect()
    }

    /// Serve until shutdown, then let in-flight requests finish within the grace period.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        let Bound {
            config,
            dns,
            grpc,
            admin,
        } = self;
        let ready = admin::Readiness::default();
        let stop = Shutdown::new();
        let admin_task = tokio::spawn(admin::serve(
            admin,
            ready.clone(),
            shutdown.clone(),
            stop.clone(),
        ));

        let (reporter, health) = grpc::health();
        reporter.set_serving::<ResolverServer<Service>>().await;
        let routes =
            tonic::service::Routes::new(health).add_service(ResolverServer::new(Service { dns }));
        let mut grpc_task = tokio::spawn(grpc::serve(grpc, routes, shutdown.clone()));
        // No NATS here: ready as soon as the listeners serve.
        ready.set(true);
        tracing::info!("resolver ready");

        let grpc_result = tokio::select! {
            r = &mut grpc_task => Some(r),
            _ = shutdown.wait() => None,
        };
        let grpc_result = match grpc_result {
            Some(r) => r,
            None => {
                match tokio::time::timeout(config.common.shutdown_grace, &mut grpc_task).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!(
                            "gRPC requests still running after the shutdown grace; abandoning them"
                        );
                        grpc_task.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        stop.trigger();
        let admin_result = admin_task.await;
        if let Ok(r) = grpc_result {
            r?;
        }
        if let Ok(Err(e)) = admin_result {
            return Err(Error::Admin(e));
        }
        Ok(())
    }
}

/// The `tern.v1.Resolver` gRPC service.
struct Service {
    dns: DnsResolver,
}

fn status_name(status: i32) -> &'static str {
    match RouteStatus::try_from(status) {
        Ok(RouteStatus::Ok) => "ok",
        Ok(RouteStatus::Temporary) => "temporary",
        Ok(RouteStatus::Permanent) => "permanent",
        _ => "unspecified",
    }
}

/// Make `span` a child of the caller's trace. Skipped when nothing records
/// the span (no subscriber, or tracing filtered out): parsing `traceparent`
/// through the global propagator is then wasted work on every cache hit.
fn link_parent<T>(span: &tracing::Span, request: &tonic::Request<T>) {
    if !span.is_disabled() {
        telemetry::link_grpc_parent(span, request.metadata());
    }
}

#[tonic::async_trait]
impl Resolver for Service {
    async fn resolve_route(
        &self,
        request: tonic::Request<ResolveRouteRequest>,
    ) -> Result<tonic::Response<ResolveRouteResponse>, tonic::Status> {
        let span = tracing::info_span!(
            "resolver.resolve_route",
            otel.kind = "server",
            domain = %request.get_ref().domain,
            status = tracing::field::Empty,
            hosts = tracing::field::Empty,
        );
        link_parent(&span, &request);
        let domain = request.into_inner().domain;
        let route: ResolveRouteResponse = self
            .dns
            .resolve_route(&domain)
            .instrument(span.clone())
            .await;
        span.record("status", status_name(route.status));
        span.record("hosts", route.hosts.len());
        if route.status != RouteStatus::Ok as i32 {
            span.in_scope(|| tracing::info!(error = %route.error, "route not usable"));
        }
        Ok(tonic::Response::new(route))
    }

    async fn lookup(
        &self,
        request: tonic::Request<LookupRequest>,
    ) -> Result<tonic::Response<LookupResponse>, tonic::Status> {
        let req = request.get_ref();
        let span = tracing::info_span!(
            "resolver.lookup",
            otel.kind = "server",
            name = %req.name,
            record_type = %req.record_type,
            status = tracing::field::Empty,
        );
        link_parent(&span, &request);
        let resp = self
            .dns
            .lookup(&req.name, &req.record_type)
            .instrument(span.clone())
            .await
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        span.record("status", status_name(resp.status));
        Ok(tonic::Response::new((*resp).clone()))
    }
}
