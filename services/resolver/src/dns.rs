//! MX route resolution (RFC 5321 §5.1, RFC 7505) and raw lookups over
//! hickory-resolver, behind the coalescing cache.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::{Resolver, TokioResolver};
use rand::seq::SliceRandom;
use tern_proto::{LookupResponse, MxHost, ResolveRouteResponse, RouteStatus};

use crate::cache::{Answer, Served, TtlCache};

/// Enhanced status for a domain that does not exist (RFC 3463).
pub const ENHANCED_NO_DOMAIN: &str = "5.1.2";
/// Enhanced status for a malformed domain or address literal.
pub const ENHANCED_BAD_SYNTAX: &str = "5.1.3";
/// Enhanced status for a null MX (RFC 7505 §4.2).
pub const ENHANCED_NULL_MX: &str = "5.1.10";
/// Enhanced status when every MX host name is unresolvable.
pub const ENHANCED_NO_ROUTE: &str = "5.4.4";

/// How long a negative answer is kept when the server gave no SOA TTL.
const DEFAULT_NEGATIVE_TTL: u32 = 300;
/// Answers kept at most in the route and lookup caches.
const CACHE_ENTRIES: usize = 10_000;

/// DNS settings for [`DnsResolver::new`].
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// Name servers to ask (`ip:port`); empty means the system's resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// Timeout of one query to one name server.
    pub timeout: Duration,
    /// Shortest time an answer is cached.
    pub ttl_floor: Duration,
    /// Longest time an answer is cached.
    pub ttl_ceiling: Duration,
    /// Longest time a negative answer (NXDOMAIN, NODATA) is cached; the
    /// RFC 2308 §5 negative TTL (from the SOA) is capped at this.
    pub negative_ttl_max: Duration,
    /// How long past its TTL an answer may still be served when upstream
    /// fails (RFC 8767); zero disables serve-stale.
    pub stale_window: Duration,
    /// Upstream queries in flight at most; more wait for a slot.
    pub max_inflight: usize,
}

/// Building the DNS client failed.
#[derive(Debug, thiserror::Error)]
pub enum DnsSetupError {
    /// The system resolver configuration could not be read.
    #[error("read the system DNS configuration: {0}")]
    SystemConfig(String),
    /// hickory refused the configuration.
    #[error("build the DNS resolver: {0}")]
    Build(String),
}

/// A raw lookup request that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The record type is not one of A, AAAA, MX, TXT, TLSA.
    #[error("unsupported record type {0:?} (expected A, AAAA, MX, TXT or TLSA)")]
    UnsupportedType(String),
    /// The name is not a valid domain name.
    #[error("invalid domain name {0:?}")]
    InvalidName(String),
}

/// The cluster's DNS client: MX routes and raw lookups, cached and coalesced.
#[derive(Clone)]
pub struct DnsResolver {
    inner: Arc<Inner>,
    routes: TtlCache<ResolveRouteResponse>,
    lookups: TtlCache<LookupResponse>,
}

impl std::fmt::Debug for DnsResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsResolver").finish_non_exhaustive()
    }
}

struct Inner {
    resolver: TokioResolver,
    floor: u32,
    ceiling: u32,
    negative_max: u32,
    /// Bounds upstream concurrency (`max_inflight`).
    upstream: tokio::sync::Semaphore,
}

/// What a failed query means for mail routing.
#[derive(Debug, Clone)]
enum Failure {
    /// NXDOMAIN: the name does not exist.
    NxDomain { ttl: u32 },
    /// NOERROR without records of the type asked.
    NoData { ttl: u32 },
    /// SERVFAIL, REFUSED, timeout, network error: try later.
    Temporary(String),
}

impl DnsResolver {
    /// Build the resolver; reads resolv.conf when no name servers are given.
    pub fn new(settings: &DnsSettings) -> Result<DnsResolver, DnsSetupError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if settings.nameservers.is_empty() {
            Resolver::builder(provider).map_err(|e| DnsSetupError::SystemConfig(e.to_string()))?
        } else {
            let servers = settings
                .nameservers
                .iter()
                .map(|addr| {
                    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                    for c in &mut ns.connections {
                        c.port = addr.port();
                    }
                    ns
                })
                .collect();
            let mut b =
                Resolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider);
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        };
        let floor = secs(settings.ttl_floor);
        let ceiling = secs(settings.ttl_ceiling).max(floor);
        let negative_max = secs(settings.negative_ttl_max).clamp(floor, ceiling);
        let max_inflight = settings.max_inflight.max(1);
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = settings.timeout;
        opts.positive_min_ttl = (floor > 0).then(|| Duration::from_secs(u64::from(floor)));
        opts.negative_min_ttl = opts.positive_min_ttl;
        opts.positive_max_ttl = Some(Duration::from_secs(u64::from(ceiling)));
        opts.negative_max_ttl = Some(Duration::from_secs(u64::from(negative_max)));
        // hickory answers "busy" beyond this per connection; our semaphore
        // keeps us below it.
        opts.max_active_requests = opts.max_active_requests.max(max_inflight);
        let resolver = builder
            .build()
            .map_err(|e| DnsSetupError::Build(e.to_string()))?;
        Ok(DnsResolver {
            inner: Arc::new(Inner {
                resolver,
                floor,
                ceiling,
                negative_max,
                upstream: tokio::sync::Semaphore::new(max_inflight),
            }),
            routes: TtlCache::new("route", CACHE_ENTRIES, settings.stale_window),
            lookups: TtlCache::new("lookup", CACHE_ENTRIES, settings.stale_window),
        })
    }

    /// The ordered route for a mail domain or address literal (cached).
    pub async fn resolve_route(&self, domain: &str) -> ResolveRouteResponse {
        let key = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let inner = self.inner.clone();
        let k = key.clone();
        let (route, served) = self
            .routes
            .get_or_resolve(&key, async move { inner.resolve_route(&k).await })
            .await;
        let mut route = Arc::unwrap_or_clone(route);
        if served != Served::Miss && route.hosts.len() > 1 {
            // A shared answer still gets a fresh shuffle within each preference.
            shuffle_equal_preferences(&mut route.hosts);
        }
        route
    }

    /// A raw lookup of `record_type` (A, AAAA, MX, TXT, TLSA) for `name` (cached).
    pub async fn lookup(
        &self,
        name: &str,
        record_type: &str,
    ) -> Result<Arc<LookupResponse>, LookupError> {
        let rtype = match record_type.to_ascii_uppercase().as_str() {
            "A" => RecordType::A,
            "AAAA" => RecordType::AAAA,
            "MX" => RecordType::MX,
            "TXT" => RecordType::TXT,
            "TLSA" => RecordType::TLSA,
            _ => return Err(LookupError::UnsupportedType(record_type.to_string())),
        };
        let fqdn = to_fqdn(name, true).ok_or_else(|| LookupError::InvalidName(name.to_string()))?;
        let key = format!("{rtype} {fqdn}").to_ascii_lowercase();
        let inner = self.inner.clone();
        let (resp, _) = self
            .lookups
            .get_or_resolve(&key, async move { inner.lookup(fqdn, rtype).await })
            .await;
        Ok(resp)
    }
}

/// Temporary failures are never kept; everything else for its TTL.
impl Answer for ResolveRouteResponse {
    fn keep_for(&self) -> Duration {
        if self.is_temporary() {
            Duration::ZERO
        } else {
            Duration::from_secs(u64::from(self.ttl))
        }
    }
    fn is_temporary(&self) -> bool {
        self.status == RouteStatus::Temporary as i32
    }
    fn as_stale(&self, ttl: u32) -> Self {
        ResolveRouteResponse {
            ttl,
            ..self.clone()
        }
    }
}

/// Temporary failures are never kept; everything else for its TTL.
impl Answer for LookupResponse {
    fn keep_for(&self) -> Duration {
        if self.is_temporary() {
            Duration::ZERO
        } else {
            Duration::from_secs(u64::from(self.ttl))
        }
    }
    fn is_temporary(&self) -> bool {
        self.status == RouteStatus::Temporary as i32
    }
    fn as_stale(&self, ttl: u32) -> Self {
        LookupResponse {
            ttl,
            ..self.clone()
        }
    }
}

/// Counts a query waiting for an upstream slot in `tern_dns_upstream_queued`
/// (also when the waiting request is cancelled).
struct Queued(metrics::Gauge);

impl Queued {
    fn enter() -> Queued {
        let g = metrics::gauge!("tern_dns_upstream_queued");
        g.increment(1.0);
        Queued(g)
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Whole seconds of `d`, saturating.
pub(crate) fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl Inner {
    fn clamp(&self, ttl: u32) -> u32 {
        ttl.clamp(self.floor, self.ceiling)
    }

    /// TTL for a negative answer: RFC 2308 §5 (the SOA's negative TTL, which
    /// hickory computes), capped at `negative_max`.
    fn clamp_negative(&self, ttl: u32) -> u32 {
        self.clamp(ttl).min(self.negative_max)
    }

    /// One query, with the outcome counted in `tern_dns_lookups_total` and
    /// its latency in `tern_dns_upstream_seconds`. At most `max_inflight`
    /// queries run at once.
    async fn query(&self, name: &Name, rtype: RecordType) -> Result<Lookup, Failure> {
        let _slot = match self.upstream.try_acquire() {
            Ok(slot) => Ok(slot),
            Err(_) => {
                let _queued = Queued::enter();
                self.upstream.acquire().await
            }
        };
        let started = Instant::now();
        let res = self.resolver.lookup(name.clone(), rtype).await;
        metrics::histogram!("tern_dns_upstream_seconds", "type" => rtype.to_string())
            .record(started.elapsed().as_secs_f64());
        let (outcome, result) = match res {
            Ok(l) => ("ok", Ok(l)),
            Err(e) => {
                let f = classify(&e);
                let label = match &f {
                    Failure::NxDomain { .. } => "nxdomain",
                    Failure::NoData { .. } => "nodata",
                    Failure::Temporary(_) => match &e {
                        NetError::Timeout => "timeout",
                        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => "servfail",
                        _ => "error",
                    },
                };
                tracing::debug!(%name, %rtype, error = %e, "DNS lookup failed");
                (label, Err(f))
            }
        };
        metrics::counter!("tern_dns_lookups_total", "type" => rtype.to_string(), "outcome" => outcome).increment(1);
        result
    }

    async fn resolve_route(&self, domain: &str) -> ResolveRouteResponse {
        if domain.starts_with('[') {
            return address_literal(domain);
        }
        let Some(name) = to_fqdn(domain, false) else {
            return permanent(
                ENHANCED_BAD_SYNTAX,
                format!("invalid mail domain {domain:?}"),
                0,
            );
        };
        let mx = match self.query(&name, RecordType::MX).await {
            Ok(l) => l,
            Err(Failure::NxDomain { ttl }) => {
                return permanent(
                    ENHANCED_NO_DOMAIN,
                    format!("domain {domain} does not exist (NXDOMAIN)"),
                    self.clamp_negative(ttl),
                );
            }
            Err(Failure::NoData { ttl }) => {
                return self
                    .implicit_mx(domain, &name, self.clamp_negative(ttl))
                    .await;
            }
            Err(Failure::Temporary(e)) => {
                return temporary(format!("MX lookup for {domain} failed: {e}"));
            }
        };
        let mut mx_ttl = remaining(mx.valid_until());
        let mut records: Vec<(u16, Name)> = mx
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(m) => Some((m.preference, m.exchange.clone())),
                _ => None,
            })
            .collect();
        if records.is_empty() {
            // Only a CNAME chain or other types came back: treat as NODATA.
            let ttl = mx_ttl.min(self.negative_max);
            return self.implicit_mx(domain, &name, ttl).await;
        }
        if records.iter().all(|(_, host)| host.is_root()) {
            return permanent(
                ENHANCED_NULL_MX,
                format!("domain {domain} does not accept mail (null MX)"),
                self.clamp(mx_ttl),
            );
        }
        // A null MX mixed with real ones is a misconfiguration; use the real ones.
        records.retain(|(_, host)| !host.is_root());
        records.sort_by_key(|(pref, _)| *pref);

        let mut site: Vec<String> = records.iter().map(|(_, h)| display_name(h)).collect();
        site.sort();
        site.dedup();

        // RFC 1035 §3.3.9 / RFC 5321 §5.1: the exchange is a host *name*. A
        // target spelled like an IPv4 address ("MX 10 192.0.2.1.") is a
        // misconfiguration; like Exim and Postfix we do not use it (nor look
        // it up as a name), and say so if nothing else is left.
        let mut ip_targets = Vec::new();
        records.retain(|(_, host)| {
            let text = display_name(host);
            if text.parse::<Ipv4Addr>().is_ok() {
                ip_targets.push(text);
                false
            } else {
                true
            }
        });

        let lookups = records.iter().map(|(pref, host)| async move {
            let (addrs, ttl, temp) = self.addresses(host).await;
            (*pref, host, addrs, ttl, temp)
        });
        let resolved = futures::future::join_all(lookups).await;
        let mut hosts = Vec::with_capacity(resolved.len());
        let mut temp_errors = Vec::new();
        for (pref, host, addrs, ttl, temp) in resolved {
            if let Some(t) = ttl {
                mx_ttl = mx_ttl.min(t);
            }
            if let Some(e) = temp {
                temp_errors.push(format!("{}: {e}", display_name(host)));
            }
            if !addrs.is_empty() {
                hosts.push(MxHost {
                    name: display_name(host),
                    preference: u32::from(pref),
                    addresses: addrs,
                });
            }
        }
        if hosts.is_empty() {
            if !temp_errors.is_empty() {
                return temporary(format!(
                    "no MX host of {domain} resolved: {}",
                    temp_errors.join("; ")
                ));
            }
            let why = if ip_targets.is_empty() {
                String::new()
            } else {
                format!(
                    "; MX targets that are IP addresses, not host names, are not used: {}",
                    ip_targets.join(", ")
                )
            };
            return permanent(
                ENHANCED_NO_ROUTE,
                format!(
                    "no MX host of {domain} has an address ({}){why}",
                    site.join(", ")
                ),
                self.clamp(mx_ttl).min(self.negative_max),
            );
        }
        shuffle_equal_preferences(&mut hosts);
        ResolveRouteResponse {
            status: RouteStatus::Ok as i32,
            hosts,
            ttl: self.clamp(mx_ttl),
            site: site.join(","),
            error: String::new(),
            enhanced: String::new(),
        }
    }

    /// RFC 5321 §5.1: no MX records means the domain itself is the one host
    /// (the "implicit MX"). `mx_ttl` is how long the NODATA answer for MX may
    /// be cached; the route is cached no longer than that.
    async fn implicit_mx(&self, domain: &str, name: &Name, mx_ttl: u32) -> ResolveRouteResponse {
        let (addrs, ttl, temp) = self.addresses(name).await;
        let ttl = ttl.unwrap_or(DEFAULT_NEGATIVE_TTL).min(mx_ttl);
        if addrs.is_empty() {
            if let Some(e) = temp {
                return temporary(format!("address lookup for {domain} failed: {e}"));
            }
            return permanent(
                ENHANCED_NO_DOMAIN,
                format!("domain {domain} has no MX and no address records"),
                self.clamp_negative(ttl),
            );
        }
        let host = display_name(name);
        ResolveRouteResponse {
            status: RouteStatus::Ok as i32,
            hosts: vec![MxHost {
                name: host.clone(),
                preference: 0,
                addresses: addrs,
            }],
            ttl: self.clamp(ttl),
            site: host,
            error: String::new(),
            enhanced: String::new(),
        }
    }

    /// IPv6 then IPv4 addresses of `host`, the shortest TTL seen, and a
    /// temporary error if one of the two lookups failed that way.
    async fn addresses(&self, host: &Name) -> (Vec<String>, Option<u32>, Option<String>) {
        let (v6, v4) = futures::join!(
            self.query(host, RecordType::AAAA),
            self.query(host, RecordType::A)
        );
        let mut addrs = Vec::new();
        let mut ttl: Option<u32> = None;
        let mut temp = None;
        for res in [v6, v4] {
            match res {
                Ok(l) => {
                    ttl = Some(ttl.map_or(remaining(l.valid_until()), |t| {
                        t.min(remaining(l.valid_until()))
                    }));
                    for r in l.answers() {
                        match &r.data {
                            RData::AAAA(a) => addrs.push(a.0.to_string()),
                            RData::A(a) => addrs.push(a.0.to_string()),
                            _ => {}
                        }
                    }
                }
                Err(Failure::NxDomain { ttl: t } | Failure::NoData { ttl: t }) => {
                    let t = t.min(self.negative_max);
                    ttl = Some(ttl.map_or(t, |x| x.min(t)));
                }
                Err(Failure::Temporary(e)) => temp = Some(e),
            }
        }
        (addrs, ttl, temp)
    }

    async fn lookup(&self, name: Name, rtype: RecordType) -> LookupResponse {
        match self.query(&name, rtype).await {
            Ok(l) => LookupResponse {
                status: RouteStatus::Ok as i32,
                records: l
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data.to_string())
                    .collect(),
                ttl: self.clamp(remaining(l.valid_until())),
                error: String::new(),
            },
            Err(Failure::NoData { ttl }) => LookupResponse {
                status: RouteStatus::Ok as i32,
                records: Vec::new(),
                ttl: self.clamp_negative(ttl),
                error: String::new(),
            },
            Err(Failure::NxDomain { ttl }) => LookupResponse {
                status: RouteStatus::Permanent as i32,
                records: Vec::new(),
                ttl: self.clamp_negative(ttl),
                error: format!("{} does not exist (NXDOMAIN)", display_name(&name)),
            },
            Err(Failure::Temporary(e)) => LookupResponse {
                status: RouteStatus::Temporary as i32,
                records: Vec::new(),
                ttl: 0,
                error: e,
            },
        }
    }
}

fn classify(e: &NetError) -> Failure {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code,
            negative_ttl,
            ..
        })) => {
            let ttl = negative_ttl.unwrap_or(DEFAULT_NEGATIVE_TTL);
            if *response_code == ResponseCode::NXDomain {
                Failure::NxDomain { ttl }
            } else {
                Failure::NoData { ttl }
            }
        }
        NetError::Timeout => Failure::Temporary("DNS query timed out".into()),
        NetError::Dns(DnsError::ResponseCode(code)) => {
            let name = match code {
                ResponseCode::ServFail => "SERVFAIL",
                ResponseCode::Refused => "REFUSED",
                ResponseCode::FormErr => "FORMERR",
                ResponseCode::NotImp => "NOTIMP",
                _ => "an error",
            };
            Failure::Temporary(format!("DNS server answered {name} ({code})"))
        }
        other => Failure::Temporary(other.to_string()),
    }
}

/// Seconds until `until`, rounded down.
fn remaining(until: Instant) -> u32 {
    secs(until.saturating_duration_since(Instant::now()))
}

/// Host name without the trailing dot, lower case.
fn display_name(name: &Name) -> String {
    let mut s = name.to_ascii();
    if s.len() > 1 && s.ends_with('.') {
        s.pop();
    }
    s.to_ascii_lowercase()
}

/// Parse a domain (U-labels are converted to A-labels) into a fully
/// qualified name. `relaxed` also allows `_` (for `_25._tcp` TLSA names and
/// `_mta-sts` TXT names).
fn to_fqdn(domain: &str, relaxed: bool) -> Option<Name> {
    let d = domain.trim().trim_end_matches('.');
    if d.is_empty() || d.len() > 253 {
        return None;
    }
    let mut name = if d.is_ascii() {
        let ok = d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || (relaxed && b == b'_'))
        });
        if !ok {
            return None;
        }
        Name::from_ascii(d).ok()?
    } else {
        Name::from_utf8(d).ok()?
    };
    name.set_fqdn(true);
    Some(name)
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3), without DNS.
fn address_literal(text: &str) -> ResolveRouteResponse {
    let bad = || {
        permanent(
            ENHANCED_BAD_SYNTAX,
            format!("invalid address literal {text}"),
            0,
        )
    };
    let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
        return bad();
    };
    let ip: IpAddr = if inner.len() > 5 && inner[..5].eq_ignore_ascii_case("ipv6:") {
        match inner[5..].parse::<Ipv6Addr>() {
            Ok(v6) => IpAddr::V6(v6),
            Err(_) => return bad(),
        }
    } else {
        match inner.parse::<Ipv4Addr>() {
            Ok(v4) => IpAddr::V4(v4),
            Err(_) => return bad(),
        }
    };
    ResolveRouteResponse {
        status: RouteStatus::Ok as i32,
        hosts: vec![MxHost {
            name: text.to_string(),
            preference: 0,
            addresses: vec![ip.to_string()],
        }],
        ttl: 0,
        site: text.to_string(),
        error: String::new(),
        enhanced: String::new(),
    }
}

fn permanent(enhanced: &str, error: String, ttl: u32) -> ResolveRouteResponse {
    ResolveRouteResponse {
        status: RouteStatus::Permanent as i32,
        hosts: Vec::new(),
        ttl,
        site: String::new(),
        error,
        enhanced: enhanced.to_string(),
    }
}

fn temporary(error: String) -> ResolveRouteResponse {
    ResolveRouteResponse {
        status: RouteStatus::Temporary as i32,
        hosts: Vec::new(),
        ttl: 0,
        site: String::new(),
        error,
        enhanced: String::new(),
    }
}

/// Hosts must already be sorted by preference; shuffle each run of equal
/// preference (RFC 5321 §5.1: spread load across equal MX hosts).
fn shuffle_equal_preferences(hosts: &mut [MxHost]) {
    let mut rng = rand::rng();
    let mut start = 0;
    while start < hosts.len() {
        let pref = hosts[start].preference;
        let end = hosts[start..]
            .iter()
            .position(|h| h.preference != pref)
            .map_or(hosts.len(), |i| start + i);
        hosts[start..end].shuffle(&mut rng);
        start = end;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn address_literals() {
        let r = address_literal("[192.0.2.1]");
        assert_eq!(r.status, RouteStatus::Ok as i32);
        assert_eq!(r.hosts[0].addresses, vec!["192.0.2.1"]);
        let r = address_literal("[IPv6:2001:db8::1]");
        assert_eq!(r.hosts[0].addresses, vec!["2001:db8::1"]);
        let r = address_literal("[ipv6:::1]");
        assert_eq!(r.hosts[0].addresses, vec!["::1"]);
        for bad in [
            "[300.1.1.1]",
            "[2001:db8::1]",
            "[IPv6:zz]",
            "[]",
            "[1.2.3.4",
            "[x:1.2.3.4]",
        ] {
            let r = address_literal(bad);
            assert_eq!(r.status, RouteStatus::Permanent as i32, "{bad}");
            assert_eq!(r.enhanced, ENHANCED_BAD_SYNTAX);
        }
    }

    #[test]
    fn domain_names() {
        assert_eq!(
            to_fqdn("Example.COM.", false).unwrap().to_ascii(),
            "Example.COM."
        );
        assert_eq!(
            display_name(&to_fqdn("Example.COM", false).unwrap()),
            "example.com"
        );
        assert_eq!(
            display_name(&to_fqdn("bücher.example", false).unwrap()),
            "xn--bcher-kva.example"
        );
        assert!(to_fqdn("a..b", false).is_none());
        assert!(to_fqdn("a b.c", false).is_none());
        assert!(to_fqdn("_25._tcp.mx.example", false).is_none());
        assert!(to_fqdn("_25._tcp.mx.example", true).is_some());
        assert!(to_fqdn("", false).is_none());
    }

    #[test]
    fn shuffle_keeps_preference_order() {
        let mk = |p: u32, n: &str| MxHost {
            name: n.into(),
            preference: p,
            addresses: vec![],
        };
        let mut seen_first = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut hosts = vec![
                mk(5, "a"),
                mk(10, "b"),
                mk(10, "c"),
                mk(10, "d"),
                mk(20, "e"),
            ];
            shuffle_equal_preferences(&mut hosts);
            let prefs: Vec<u32> = hosts.iter().map(|h| h.preference).collect();
            assert_eq!(prefs, vec![5, 10, 10, 10, 20]);
            assert_eq!(hosts[0].name, "a");
            assert_eq!(hosts[4].name, "e");
            seen_first.insert(hosts[1].name.clone());
        }
        assert_eq!(
            seen_first.len(),
            3,
            "every equal-preference host comes first sometimes"
        );
    }
}
