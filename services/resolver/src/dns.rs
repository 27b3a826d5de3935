//! MX route resolution (RFC 5321 §5.1, RFC 7505) and raw lookups over
//! hickory-resolver, behind the coalescing cache.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::dnssec::{DnssecSummary, TrustAnchors};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};
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
    /// Validate answers with DNSSEC (RFC 4035); answers that fail validation
    /// become temporary failures.
    pub dnssec: bool,
    /// DNSKEY records to trust instead of the IANA root keys built into
    /// hickory (for private or test zones); only used with `dnssec`.
    pub trust_anchor: Option<PathBuf>,
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
    /// The DNSSEC trust anchor file could not be read or parsed.
    #[error("DNSSEC trust anchor {path}: {message}")]
    TrustAnchor {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
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

/// What a failed query means for mail routing. `secure`: the denial was
/// validated with DNSSEC (RFC 4035 §5.4).
#[derive(Debug, Clone)]
enum Failure {
    /// NXDOMAIN: the name does not exist.
    NxDomain { ttl: u32, secure: bool },
    /// NOERROR without records of the type asked.
    NoData { ttl: u32, secure: bool },
    /// SERVFAIL, REFUSED, timeout, network error, DNSSEC-bogus answer: try later.
    Temporary(String),
}

/// A positive answer and whether DNSSEC validated every record of it.
struct Answered {
    lookup: Lookup,
    secure: bool,
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
        // With validation hickory sets the DO bit, checks the RRSIGs up to
        // a trust anchor (RFC 4035 §5) and fails bogus answers.
        opts.validate = settings.dnssec;
        if settings.dnssec
            && let Some(path) = &settings.trust_anchor
        {
            builder = builder.with_trust_anchor(Arc::new(read_trust_anchor(path)?));
        }
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
        let key = cache_key(domain);
        let (route, served) = self
            .routes
            .get_or_resolve(&key, || {
                let (inner, key) = (self.inner.clone(), key.to_string());
                async move { inner.resolve_route(&key).await }
            })
            .await;
        let mut route = Arc::unwrap_or_clone(route);
        if served != Served::Miss && route.hosts.len() > 1 {
            // A shared answer still gets a fresh shuffle within each preference.
            shuffle_equal_preferences(&mut route.hosts);
        }
        route
    }

    /// A raw lookup of `record_type` (A, AAAA, MX, TXT, TLSA, PTR) for `name` (cached).
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
            // Reverse names (`1.2.0.192.in-addr.arpa`) for SPF `ptr` and `%{p}`.
            "PTR" => RecordType::PTR,
            _ => return Err(LookupError::UnsupportedType(record_type.to_string())),
        };
        let fqdn = to_fqdn(name, true).ok_or_else(|| LookupError::InvalidName(name.to_string()))?;
        let key = format!("{rtype} {fqdn}").to_ascii_lowercase();
        let (resp, _) = self
            .lookups
            .get_or_resolve(&key, || {
                let inner = self.inner.clone();
                async move { inner.lookup(fqdn, rtype).await }
            })
            .await;
        Ok(resp)
    }
}

/// The DNSKEY records in `path` (presentation format, one per line, as
/// `dig DNSKEY` prints them; `;` starts a comment); a file without any is
/// refused rather than silently validating nothing.
fn read_trust_anchor(path: &std::path::Path) -> Result<TrustAnchors, DnsSetupError> {
    let err = |message: String| DnsSetupError::TrustAnchor {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let keys = text
        .lines()
        .map(|l| l.split(';').next().unwrap_or(""))
        .filter(|l| {
            l.split_whitespace()
                .any(|t| t.eq_ignore_ascii_case("DNSKEY"))
        })
        .count();
    if keys == 0 {
        return Err(err("no DNSKEY records".into()));
    }
    text.parse::<TrustAnchors>().map_err(|e| err(e.to_string()))
}

/// The route cache key: the domain without surrounding space and trailing
/// dot, lower case. Borrowed when the caller already sent it that way (the
/// common case), so a cache hit allocates nothing for the key.
fn cache_key(domain: &str) -> std::borrow::Cow<'_, str> {
    let d = domain.trim().trim_end_matches('.');
    if d.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(d.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(d)
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
    async fn query(&self, name: &Name, rtype: RecordType) -> Result<Answered, Failure> {
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
            // Records come back with their proof; without validation they
            // are all "indeterminate", so never secure.
            Ok(lookup) => match DnssecSummary::from_records(lookup.answers().iter()) {
                DnssecSummary::Secure => (
                    "ok",
                    Ok(Answered {
                        lookup,
                        secure: true,
                    }),
                ),
                DnssecSummary::Insecure => (
                    "ok",
                    Ok(Answered {
                        lookup,
                        secure: false,
                    }),
                ),
                // hickory already fails bogus answers (DnssecBogus); kept
                // in case a bogus record slips through.
                DnssecSummary::Bogus => ("bogus", Err(Failure::Temporary(bogus_cause()))),
            },
            Err(e) => {
                let f = classify(&e);
                let label = match &f {
                    Failure::NxDomain { .. } => "nxdomain",
                    Failure::NoData { .. } => "nodata",
                    Failure::Temporary(_) => match &e {
                        NetError::Timeout => "timeout",
                        NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail)) => "servfail",
                        NetError::Dns(DnsError::DnssecBogus) => "bogus",
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
        let Answered {
            lookup: mx,
            secure: mx_secure,
        } = match self.query(&name, RecordType::MX).await {
            Ok(a) => a,
            Err(Failure::NxDomain { ttl, secure }) => {
                return ResolveRouteResponse {
                    authenticated: secure,
                    ..permanent(
                        ENHANCED_NO_DOMAIN,
                        format!("domain {domain} does not exist (NXDOMAIN)"),
                        self.clamp_negative(ttl),
                    )
                };
            }
            Err(Failure::NoData { ttl, secure }) => {
                return self
                    .implicit_mx(domain, &name, self.clamp_negative(ttl), secure)
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
            return self.implicit_mx(domain, &name, ttl, mx_secure).await;
        }
        if records.iter().all(|(_, host)| host.is_root()) {
            return ResolveRouteResponse {
                authenticated: mx_secure,
                ..permanent(
                    ENHANCED_NULL_MX,
                    format!("domain {domain} does not accept mail (null MX)"),
                    self.clamp(mx_ttl),
                )
            };
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

        let lookups = records
            .iter()
            .map(|(pref, host)| async move { (*pref, host, self.addresses(host).await) });
        let resolved = futures::future::join_all(lookups).await;
        let mut hosts = Vec::with_capacity(resolved.len());
        let mut temp_errors = Vec::new();
        for (pref, host, a) in resolved {
            if let Some(t) = a.ttl {
                mx_ttl = mx_ttl.min(t);
            }
            if let Some(e) = a.temp {
                temp_errors.push(format!("{}: {e}", display_name(host)));
            }
            if !a.addrs.is_empty() {
                hosts.push(MxHost {
                    name: display_name(host),
                    preference: u32::from(pref),
                    addresses: a.addrs,
                    authenticated: a.secure,
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
            authenticated: mx_secure,
        }
    }

    /// RFC 5321 §5.1: no MX records means the domain itself is the one host
    /// (the "implicit MX"). `mx_ttl` is how long the NODATA answer for MX may
    /// be cached; the route is cached no longer than that. `mx_secure`: that
    /// NODATA answer was validated (RFC 7672 §2.2.1).
    async fn implicit_mx(
        &self,
        domain: &str,
        name: &Name,
        mx_ttl: u32,
        mx_secure: bool,
    ) -> ResolveRouteResponse {
        let a = self.addresses(name).await;
        let ttl = a.ttl.unwrap_or(DEFAULT_NEGATIVE_TTL).min(mx_ttl);
        if a.addrs.is_empty() {
            if let Some(e) = a.temp {
                return temporary(format!("address lookup for {domain} failed: {e}"));
            }
            return ResolveRouteResponse {
                authenticated: mx_secure && a.secure,
                ..permanent(
                    ENHANCED_NO_DOMAIN,
                    format!("domain {domain} has no MX and no address records"),
                    self.clamp_negative(ttl),
                )
            };
        }
        let host = display_name(name);
        ResolveRouteResponse {
            status: RouteStatus::Ok as i32,
            hosts: vec![MxHost {
                name: host.clone(),
                preference: 0,
                addresses: a.addrs,
                authenticated: a.secure,
            }],
            ttl: self.clamp(ttl),
            site: host,
            error: String::new(),
            enhanced: String::new(),
            authenticated: mx_secure,
        }
    }

    /// IPv6 then IPv4 addresses of `host`, the shortest TTL seen, whether
    /// both answers (records or denial) were validated, and a temporary
    /// error if one of the two lookups failed that way.
    async fn addresses(&self, host: &Name) -> Addresses {
        let (v6, v4) = futures::join!(
            self.query(host, RecordType::AAAA),
            self.query(host, RecordType::A)
        );
        let mut out = Addresses {
            addrs: Vec::new(),
            ttl: None,
            secure: true,
            temp: None,
        };
        for res in [v6, v4] {
            let (t, secure) = match res {
                Ok(Answered { lookup, secure }) => {
                    for r in lookup.answers() {
                        match &r.data {
                            RData::AAAA(a) => out.addrs.push(a.0.to_string()),
                            RData::A(a) => out.addrs.push(a.0.to_string()),
                            _ => {}
                        }
                    }
                    (remaining(lookup.valid_until()), secure)
                }
                Err(Failure::NxDomain { ttl, secure } | Failure::NoData { ttl, secure }) => {
                    (ttl.min(self.negative_max), secure)
                }
                Err(Failure::Temporary(e)) => {
                    out.temp = Some(e);
                    out.secure = false;
                    continue;
                }
            };
            out.ttl = Some(out.ttl.map_or(t, |x| x.min(t)));
            out.secure &= secure;
        }
        out
    }

    async fn lookup(&self, name: Name, rtype: RecordType) -> LookupResponse {
        match self.query(&name, rtype).await {
            Ok(Answered { lookup, secure }) => LookupResponse {
                status: RouteStatus::Ok as i32,
                records: lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .map(|r| r.data.to_string())
                    .collect(),
                ttl: self.clamp(remaining(lookup.valid_until())),
                error: String::new(),
                authenticated: secure,
            },
            Err(Failure::NoData { ttl, secure }) => LookupResponse {
                status: RouteStatus::Ok as i32,
                records: Vec::new(),
                ttl: self.clamp_negative(ttl),
                error: String::new(),
                authenticated: secure,
            },
            Err(Failure::NxDomain { ttl, secure }) => LookupResponse {
                status: RouteStatus::Permanent as i32,
                records: Vec::new(),
                ttl: self.clamp_negative(ttl),
                error: format!("{} does not exist (NXDOMAIN)", display_name(&name)),
                authenticated: secure,
            },
            Err(Failure::Temporary(e)) => LookupResponse {
                status: RouteStatus::Temporary as i32,
                records: Vec::new(),
                ttl: 0,
                error: e,
                authenticated: false,
            },
        }
    }
}

/// The addresses of one host, from its AAAA and A lookups.
struct Addresses {
    /// IPv6 then IPv4.
    addrs: Vec<String>,
    /// Shortest TTL seen (`None`: both lookups failed temporarily).
    ttl: Option<u32>,
    /// Both answers, records or denials, validated with DNSSEC.
    secure: bool,
    /// A temporary failure of one of the lookups.
    temp: Option<String>,
}

fn classify(e: &NetError) -> Failure {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords {
            response_code,
            negative_ttl,
            soa,
            authorities,
            ..
        })) => {
            // With validation on hickory drops `negative_ttl`; RFC 2308 §5
            // gives it from the SOA: its MINIMUM, or its own TTL if shorter.
            let ttl = negative_ttl
                .or_else(|| soa.as_ref().map(|s| s.ttl.min(s.data.minimum)))
                .unwrap_or(DEFAULT_NEGATIVE_TTL);
            // The denial (SOA, NSEC/NSEC3 and their RRSIGs) is in the
            // authority section, each record with its proof.
            let secure = authorities
                .as_deref()
                .is_some_and(|a| DnssecSummary::from_records(a.iter()) == DnssecSummary::Secure);
            negative(*response_code, ttl, secure)
        }
        // A denial DNSSEC could not prove either way (e.g. NSEC3 beyond the
        // RFC 9276 iteration limits): usable, but not authenticated. Bogus
        // ones arrive as `DnssecBogus`.
        NetError::Dns(DnsError::Nsec { response, .. }) => {
            let ttl = response
                .authorities
                .iter()
                .find_map(|r: &Record| match &r.data {
                    RData::SOA(s) => Some(r.ttl.min(s.minimum)),
                    _ => None,
                })
                .unwrap_or(DEFAULT_NEGATIVE_TTL);
            negative(response.response_code, ttl, false)
        }
        NetError::Dns(DnsError::DnssecBogus) => Failure::Temporary(bogus_cause()),
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

fn negative(code: ResponseCode, ttl: u32, secure: bool) -> Failure {
    if code == ResponseCode::NXDomain {
        Failure::NxDomain { ttl, secure }
    } else {
        Failure::NoData { ttl, secure }
    }
}

/// Why a bogus answer is refused. hickory does not say which check failed;
/// its debug log does.
fn bogus_cause() -> String {
    "DNSSEC validation failed: the answer is bogus (signatures missing, expired or not \
     matching a trusted key; RFC 4035 §5.5)"
        .into()
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
            authenticated: false,
        }],
        ttl: 0,
        site: text.to_string(),
        error: String::new(),
        enhanced: String::new(),
        authenticated: false,
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
        authenticated: false,
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
        authenticated: false,
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
            authenticated: false,
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
