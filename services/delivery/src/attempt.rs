//! One delivery attempt for one job: ask the resolver for the route, try the
//! MX hosts in order, run the SMTP transaction, and turn every reply into a
//! per-recipient outcome.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tern_proto::resolver_client::ResolverClient;
use tern_proto::{
    DsnRet, Job, MxHost, Outcome, RecipientResult, ResolveRouteRequest, ResolveRouteResponse,
    RouteStatus,
};
use tern_runtime::Shutdown;
use tern_smtp::client::{ClientError, Reply, Stage, Timeouts};
use tokio::net::{TcpSocket, TcpStream};

use crate::automation::{Automation, Verdict};
use crate::egress::Egress;
use crate::limit::{Lease, Limiter};
use crate::pool::{Conn, Handover, Io, Pool, Session, Taken};
use crate::rate::RateLimiter;
use crate::shaping::{Plan, Shaping};
use crate::tls::{TlsPolicies, TlsPolicy};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::Instrument;

/// The interceptor type of the resolver client (adds the trace context).
pub(crate) type Interceptor = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
/// A resolver client that propagates the current trace.
pub(crate) type Resolver = ResolverClient<InterceptedService<Channel, Interceptor>>;

/// Most addresses connected to in one attempt (Postfix's `smtp_mx_address_limit`).
pub const MAX_ADDRESSES: usize = 5;
/// Most SMTP sessions (hosts that answered) in one attempt (`smtp_mx_session_limit`).
pub const MAX_SESSIONS: usize = 2;
/// Longest a resolver answer is reused in this process (the resolver's own
/// TTL-honouring cache stays the source of truth; this only saves a gRPC
/// round trip per message during a burst to one domain).
pub const ROUTE_CACHE_TIME: Duration = Duration::from_secs(5);
/// How often a job waiting for a connection slot retries the limiter even
/// without a freed-slot event (a slot whose holder died expires silently).
const SLOT_RETRY: Duration = Duration::from_secs(1);
/// Most destinations kept in the route cache.
const ROUTE_CACHE_ENTRIES: usize = 10_000;

/// Resolver answers (OK and permanent ones), reused for at most
/// `min(ttl, ROUTE_CACHE_TIME)`.
#[derive(Clone, Default)]
pub(crate) struct Routes {
    inner: Arc<Mutex<HashMap<String, (Instant, ResolveRouteResponse)>>>,
}

impl Routes {
    fn get(&self, domain: &str) -> Option<ResolveRouteResponse> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(domain)
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, r)| r.clone())
    }

    fn put(&self, domain: &str, route: &ResolveRouteResponse) {
        let cacheable = matches!(
            RouteStatus::try_from(route.status),
            Ok(RouteStatus::Ok | RouteStatus::Permanent)
        );
        let ttl = Duration::from_secs(route.ttl.into()).min(ROUTE_CACHE_TIME);
        if !cacheable || ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= ROUTE_CACHE_ENTRIES {
            map.retain(|_, (until, _)| now < *until);
            if map.len() >= ROUTE_CACHE_ENTRIES {
                map.clear();
            }
        }
        map.insert(domain.to_string(), (now + ttl, route.clone()));
    }
}

/// How an attempt ended.
pub(crate) enum Attempted {
    /// An outcome for every recipient, to be reported.
    Results(Vec<RecipientResult>),
    /// Not attempted: the destination's message rate is used up. The job
    /// goes back to the stream to come again after this long; it is not an
    /// attempt and nothing is reported.
    Later(Duration),
    /// Not attempted: a shaping action suspends sending to the provider
    /// from this source. Back to the stream like [`Attempted::Later`].
    Suspended(Duration),
}

/// What an attempt needs besides the job.
pub(crate) struct Env<'a> {
    pub resolver: Resolver,
    pub port: u16,
    pub connect_timeout: Duration,
    pub timeouts: Timeouts,
    /// Source address and EHLO name.
    pub egress: &'a Egress,
    /// STARTTLS policy per destination, and the default.
    pub tls: &'a TlsPolicies,
    pub tls_default: TlsPolicy,
    /// Retry a host in plaintext after its TLS failed (opportunistic only).
    pub tls_fallback: bool,
    pub tls_config: Arc<rustls::ClientConfig>,
    /// Verified TLS (trusted roots, host name checked), for REQUIRETLS.
    pub verified_tls: Arc<rustls::ClientConfig>,
    pub pool: &'a Pool,
    pub limiter: Option<&'a Limiter>,
    /// Cluster-wide message rate limits, if any are configured.
    pub rates: Option<&'a RateLimiter>,
    /// Limits per domain, provider and egress source.
    pub shaping: &'a Shaping,
    /// Shaping actions in force, cluster-wide.
    pub automation: &'a Automation,
    /// Resolver answers reused for a few seconds.
    pub routes: &'a Routes,
    /// Longest wait for a free connection slot before deferring.
    pub limit_wait: Duration,
    /// Shutting down: sessions are closed, not pooled.
    pub closing: &'a Shutdown,
}

/// Why a host could not take the message; reported when no host could.
#[derive(Debug, Clone)]
struct Failure {
    code: u32,
    enhanced: String,
    reply: String,
    remote_host: String,
}

/// Resolve, take a rate token, connect and relay. The body is loaded lazily
/// by `load_body` only once a route and a token exist, so a resolver failure
/// or a used-up rate costs no body read.
pub(crate) async fn attempt<F, Fut, E>(env: Env<'_>, job: &Job, load_body: F) -> Attempted
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<bytes::Bytes, E>>,
    E: std::fmt::Display,
{
    let route = match resolve(&env, &job.destination).await {
        Ok(r) => r,
        Err(status) => {
            return Attempted::Results(all(
                job,
                Outcome::Deferred,
                &Failure {
                    code: 0,
                    enhanced: "4.4.3".into(),
                    reply: format!("resolver unavailable: {}", status.message()),
                    remote_host: String::new(),
                },
            ));
        }
    };
    match RouteStatus::try_from(route.status) {
        Ok(RouteStatus::Ok) if !route.hosts.is_empty() => {}
        Ok(RouteStatus::Permanent) => {
            let enhanced = if route.enhanced.is_empty() {
                "5.1.2".into()
            } else {
                route.enhanced
            };
            return Attempted::Results(all(
                job,
                Outcome::Bounced,
                &Failure {
                    code: 0,
                    enhanced,
                    reply: route.error,
                    remote_host: String::new(),
                },
            ));
        }
        _ => {
            let reply = if route.error.is_empty() {
                "no route to the destination".into()
            } else {
                route.error
            };
            return Attempted::Results(all(
                job,
                Outcome::Deferred,
                &Failure {
                    code: 0,
                    enhanced: "4.4.3".into(),
                    reply,
                    remote_host: String::new(),
                },
            ));
        }
    }
    let site = if route.site.is_empty() {
        job.destination.as_str()
    } else {
        route.site.as_str()
    };
    let rules = env.shaping.rules();
    let plan = rules.plan(
        &job.destination,
        route.hosts.iter().map(|h| h.name.as_str()),
        site,
        &env.egress.name,
    );
    let lowered = match env.automation.verdict(&plan.pair) {
        Verdict::Go => None,
        Verdict::Rate(r) => Some(r),
        Verdict::Suspended(wait) => return Attempted::Suspended(wait),
        Verdict::Bounce(a) => {
            return Attempted::Results(all(
                job,
                Outcome::Bounced,
                &Failure {
                    code: 0,
                    enhanced: "5.7.1".into(),
                    reply: format!(
                        "bounced by shaping rule {} in force for {} (after: {})",
                        a.rule, a.target, a.reply
                    ),
                    remote_host: String::new(),
                },
            ));
        }
    };
    if let Some(rates) = env.rates {
        let limit = lowered.unwrap_or_else(|| {
            plan.limits
                .rate
                .map_or_else(|| rates.limit_for(&job.destination), |r| r.0)
        });
        if let Err(wait) = rates.take(&plan.key, limit).await {
            return Attempted::Later(wait);
        }
    }
    let body = match load_body().await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "message body could not be loaded");
            return Attempted::Results(all(
                job,
                Outcome::Deferred,
                &Failure {
                    code: 0,
                    enhanced: "4.3.0".into(),
                    reply: format!("message body unavailable: {e}"),
                    remote_host: String::new(),
                },
            ));
        }
    };
    let attempted = match Need::for_job(&env, job, &plan, &route) {
        Ok(need) => {
            let first = relay(&env, job, &route.hosts, site, &plan, &body, need).await;
            match first {
                // RFC 8689 §5: a report (empty return path) about a
                // REQUIRETLS message goes with REQUIRETLS where a path for it
                // exists, but "SHOULD NOT" be discarded for want of one, and
                // bouncing a report is discarding it. So it goes on as an
                // ordinary message (the destination's policy, no REQUIRETLS).
                Relayed::Refused(_) if job.mail_from.is_empty() => {
                    let need = Need::ordinary(&env, job, &plan);
                    relay(&env, job, &route.hosts, site, &plan, &body, need)
                        .await
                        .into_attempted(job)
                }
                other => other.into_attempted(job),
            }
        }
        Err(f) => Attempted::Results(all(job, Outcome::Bounced, &f)),
    };
    if let Attempted::Results(results) = &attempted {
        env.automation
            .observe(&rules, &plan, &env.egress.name, results)
            .await;
    }
    attempted
}

/// The route for `domain`: from the short-lived local cache, else from the
/// resolver (the call carries the trace).
async fn resolve(env: &Env<'_>, domain: &str) -> Result<ResolveRouteResponse, tonic::Status> {
    if let Some(r) = env.routes.get(domain) {
        return Ok(r);
    }
    let mut resolver = env.resolver.clone();
    let route = resolver
        .resolve_route(ResolveRouteRequest {
            domain: domain.to_string(),
        })
        .await?
        .into_inner();
    env.routes.put(domain, &route);
    Ok(route)
}

/// Try a pooled session for `key`, then fresh connections to the hosts in
/// order: the next address on a connection failure, the next host when a
/// session cannot take the message. Connection slots and connection rate
/// are counted under the shaping plan's key.
async fn relay(
    env: &Env<'_>,
    job: &Job,
    hosts: &[MxHost],
    site: &str,
    plan: &Plan,
    body: &[u8],
    need: Need,
) -> Relayed {
    let policy = need.policy;
    // Sessions are shared only between jobs with the same egress identity and
    // TLS needs, so a `required` job never rides a plaintext session and a
    // REQUIRETLS job only rides a verified one.
    let key = format!("{}|{}|{}", env.egress.name, need.label(), site);
    // A stale pooled session's slot carries the new connection.
    let mut lease = match try_pooled(env, &key, job, body).await {
        Pooled::Done(results) => return Relayed::Done(Attempted::Results(results)),
        Pooled::None(lease) => lease.map(|l| *l),
    };
    let limit = plan
        .limits
        .connection_limit
        .unwrap_or_else(|| env.limiter.map_or(0, |l| l.limit_for(&job.destination)));
    let mut last = Failure {
        code: 0,
        enhanced: "4.4.4".into(),
        reply: "no usable MX host address".into(),
        remote_host: String::new(),
    };
    let (mut addresses, mut sessions) = (0, 0);
    // A REQUIRETLS job bounces only if every host it reached refused it for
    // want of verified TLS or REQUIRETLS; any other failure defers it.
    let (mut refused, mut other_failure) = (None::<Failure>, false);
    'hosts: for host in hosts {
        for text in &host.addresses {
            let Ok(ip) = text.parse::<IpAddr>() else {
                continue;
            };
            let source = match env.egress.source_for(ip) {
                Ok(s) => s,
                Err(()) => continue,
            };
            if addresses == MAX_ADDRESSES || sessions == MAX_SESSIONS {
                // Hosts left untried: RFC 8689 §4.2.1 bounces a REQUIRETLS
                // message only once every MX host was tried, so this
                // attempt defers it.
                other_failure = true;
                break 'hosts;
            }
            addresses += 1;
            if lease.is_none()
                && let Some(limiter) = env.limiter
                && limit > 0
            {
                match wait_for_slot(env, limiter, &key, &plan.key, limit, job, body).await {
                    Slot::Lease(l) => lease = Some(*l),
                    Slot::Delivered(results) => {
                        return Relayed::Done(Attempted::Results(results));
                    }
                    Slot::Failed(f) => {
                        return Relayed::Done(Attempted::Results(all(job, Outcome::Deferred, &f)));
                    }
                }
            }
            if let Err(wait) = connection_token(env, plan).await {
                // No new connection now: not an attempt; the slot goes to
                // a waiting job or back to the cluster.
                if let Some(l) = lease.take()
                    && let Some(l) = env.pool.give_slot(&key, l)
                {
                    l.release().await;
                }
                return Relayed::Done(Attempted::Later(wait));
            }
            let addr = SocketAddr::new(ip, env.port);
            let mut policy_here = policy;
            loop {
                let span = tracing::info_span!("delivery.smtp", host = %host.name, addr = %addr, tls = tracing::field::Empty, result = tracing::field::Empty);
                let stream = match connect(addr, source, env.connect_timeout)
                    .instrument(span.clone())
                    .await
                {
                    Ok(s) => s,
                    Err(reply) => {
                        other_failure = true;
                        span.record("result", "connect failed");
                        last = Failure {
                            code: 0,
                            enhanced: "4.4.1".into(),
                            reply: format!("connect to {}[{addr}]: {reply}", host.name),
                            remote_host: host.name.clone(),
                        };
                        break;
                    }
                };
                sessions += 1;
                let tls_config = if need.requiretls {
                    &env.verified_tls
                } else {
                    &env.tls_config
                };
                let opened = open(
                    Box::new(stream),
                    &host.name,
                    &env.egress.ehlo_name,
                    env.timeouts,
                    tls_config,
                    policy_here,
                    need.requiretls,
                )
                .instrument(span.clone())
                .await;
                let mut s = match opened {
                    Ok(s) => s,
                    Err(OpenError::Tls(f, _))
                        if policy_here == TlsPolicy::Opportunistic && env.tls_fallback =>
                    {
                        // Explicitly allowed by the operator: the same host once more, in plaintext.
                        tracing::info!(parent: &span, reply = %f.reply, "TLS failed; retrying this host in plaintext as configured");
                        span.record("result", "TLS failed");
                        policy_here = TlsPolicy::Disabled;
                        continue;
                    }
                    Err(OpenError::Tls(f, _) | OpenError::Next(f)) if !need.requiretls => {
                        span.record("result", "next host");
                        tracing::info!(parent: &span, reply = %f.reply, "host did not take the message; trying the next");
                        last = f;
                        continue 'hosts;
                    }
                    Err(OpenError::Tls(f, TlsFault::Transient)) => {
                        // RFC 8689 §4.2.1: never in clear; a timeout or a
                        // lost connection says nothing final, so defer.
                        span.record("result", "TLS failed");
                        tracing::info!(parent: &span, reply = %f.reply, "TLS for a REQUIRETLS message failed for now; trying the next");
                        other_failure = true;
                        last = f;
                        continue 'hosts;
                    }
                    Err(OpenError::Tls(f, TlsFault::Refused) | OpenError::Policy(f)) => {
                        // RFC 8689 §4.2.1: not to this host, and never in clear.
                        span.record("result", "REQUIRETLS not met");
                        tracing::info!(parent: &span, reply = %f.reply, "host cannot take a REQUIRETLS message; trying the next");
                        metrics::counter!("tern_delivery_requiretls_refused_total").increment(1);
                        if (400..500).contains(&f.code) {
                            // The server itself said "not now" (454 to STARTTLS).
                            other_failure = true;
                            last = f;
                            continue 'hosts;
                        }
                        let enhanced = if f.enhanced == "5.7.30" {
                            f.enhanced
                        } else {
                            "5.7.10".into()
                        };
                        let f = Failure { enhanced, ..f };
                        last = f.clone();
                        refused = Some(f);
                        continue 'hosts;
                    }
                    Err(OpenError::Next(f)) => {
                        other_failure = true;
                        span.record("result", "next host");
                        tracing::info!(parent: &span, reply = %f.reply, "host did not take the message; trying the next");
                        last = f;
                        continue 'hosts;
                    }
                };
                span.record("tls", s.tls);
                s.lease = lease.take();
                s.max_messages = plan.limits.messages_per_connection.map(|n| n.max(1));
                metrics::counter!("tern_delivery_connections_total", "tls" => if s.tls { "yes" } else { "no" }).increment(1);
                match transact(s, job, body).instrument(span.clone()).await {
                    TransEnd::Done(results, session) => {
                        span.record("result", "done");
                        finish(env, key, session);
                        return Relayed::Done(Attempted::Results(results));
                    }
                    TransEnd::Next(f, mut session) => {
                        other_failure = true;
                        span.record("result", "next host");
                        tracing::info!(parent: &span, reply = %f.reply, "host did not take the message; trying the next");
                        lease = session.lease.take();
                        session.conn.quit().await;
                        last = f;
                        continue 'hosts;
                    }
                }
            }
        }
    }
    if let Some(l) = lease
        && let Some(l) = env.pool.give_slot(&key, l)
    {
        l.release().await;
    }
    if let Some(f) = refused
        && !other_failure
    {
        // RFC 8689 §4.2.1: no MX can take it with verified TLS and
        // REQUIRETLS ("If there are no more MX hosts, the client MUST NOT
        // transmit the message to the domain"): return it rather than send
        // it unprotected.
        return Relayed::Refused(f);
    }
    Relayed::Done(Attempted::Results(all(job, Outcome::Deferred, &last)))
}

/// How [`relay`] ended.
enum Relayed {
    /// Delivered, deferred, or not attempted.
    Done(Attempted),
    /// A REQUIRETLS job every MX host refused for want of verified TLS or
    /// REQUIRETLS (RFC 8689 §4.2.1): nothing was sent.
    Refused(Failure),
}

impl Relayed {
    /// A refusal bounces the job with the refusal's status (5.7.10, 5.7.30).
    fn into_attempted(self, job: &Job) -> Attempted {
        match self {
            Relayed::Done(a) => a,
            Relayed::Refused(f) => Attempted::Results(all(job, Outcome::Bounced, &f)),
        }
    }
}

/// What a job needs of a session's TLS.
#[derive(Debug, Clone, Copy)]
struct Need {
    /// The destination's STARTTLS policy (`required` for REQUIRETLS).
    policy: TlsPolicy,
    /// RFC 8689: verified TLS to a host that offers REQUIRETLS.
    requiretls: bool,
}

impl Need {
    /// What `job` needs on `route`. A REQUIRETLS job (RFC 8689 §4.2.1)
    /// needs verified TLS to a host that offers REQUIRETLS, whatever the
    /// shaping plan or the destination's policy say; any other job gets
    /// [`Need::ordinary`].
    ///
    /// `Err` (bounce, nothing sent) for a REQUIRETLS job whose MX hosts
    /// cannot be trusted: §4.2.1 step 2 wants the MX answer validated by
    /// DNSSEC or, failing that, the MX host names validated by MTA-STS
    /// (RFC 8461 §4.1), which Tern does not implement yet. An implicit MX
    /// (no MX records, the domain itself is the host) needs neither: the
    /// certificate must then name the domain itself. A report (empty return
    /// path) is not held to this (§4.2.1 applies to messages "for which the
    /// MAIL FROM return-path is not empty", §5): it goes as an ordinary
    /// message instead.
    fn for_job(
        env: &Env<'_>,
        job: &Job,
        plan: &Plan,
        route: &ResolveRouteResponse,
    ) -> Result<Need, Failure> {
        if !job.require_tls {
            return Ok(Need::ordinary(env, job, plan));
        }
        if !route.authenticated && !implicit_mx(&job.destination, &route.hosts) {
            if job.mail_from.is_empty() {
                return Ok(Need::ordinary(env, job, plan));
            }
            metrics::counter!("tern_delivery_requiretls_refused_total").increment(1);
            return Err(Failure {
                code: 0,
                enhanced: "5.7.10".into(),
                reply: format!(
                    "REQUIRETLS: the MX records of {} are not DNSSEC-validated, \
                     so the MX hosts cannot be trusted (RFC 8689 section 4.2.1; \
                     MTA-STS is not supported)",
                    job.destination
                ),
                remote_host: String::new(),
            });
        }
        Ok(Need {
            policy: TlsPolicy::Required,
            requiretls: true,
        })
    }

    /// The shaping plan's TLS rule, else the destination's policy.
    fn ordinary(env: &Env<'_>, job: &Job, plan: &Plan) -> Need {
        let policy = plan.limits.tls.map_or_else(
            || env.tls.for_destination(&job.destination, env.tls_default),
            |t| t.0,
        );
        Need {
            policy,
            requiretls: false,
        }
    }

    /// The part of the pool key that keeps sessions of different needs apart.
    fn label(self) -> &'static str {
        if self.requiretls {
            "requiretls"
        } else {
            self.policy.as_str()
        }
    }
}

/// Is `hosts` the implicit MX of `domain` (RFC 5321 §5.1: no MX records,
/// the domain itself is the one host)? The resolver answers it as one host
/// named as the domain.
fn implicit_mx(domain: &str, hosts: &[MxHost]) -> bool {
    let bare = |s: &str| s.trim_end_matches('.').to_ascii_lowercase();
    matches!(hosts, [h] if bare(&h.name) == bare(domain))
}

/// A token of the plan's connection rate (`Ok` when it has none), counted
/// under `<key>.conn` in the rates bucket.
async fn connection_token(env: &Env<'_>, plan: &Plan) -> Result<(), Duration> {
    match (env.rates, plan.limits.connection_rate) {
        (Some(rates), Some(rate)) => rates.take(&format!("{}.conn", plan.key), rate.0).await,
        _ => Ok(()),
    }
}

/// What the pooled sessions for a key did with a job.
enum Pooled {
    /// One carried it.
    Done(Vec<RecipientResult>),
    /// None could; the slot of a stale one, if any, for a new connection.
    None(Option<Box<Lease>>),
}

/// Run the job on pooled sessions for `key` while there are any.
async fn try_pooled(env: &Env<'_>, key: &str, job: &Job, body: &[u8]) -> Pooled {
    while let Some(s) = env.pool.take(key) {
        match on_session(env, key, s, job, body).await {
            Ok(results) => return Pooled::Done(results),
            Err(Some(lease)) => return Pooled::None(Some(Box::new(lease))),
            Err(None) => {}
        }
    }
    Pooled::None(None)
}

/// Run the job on a session that carried earlier messages. `Err` when it
/// turned out unusable (the server closed it while idle, or is going
/// away): nothing was accepted, so a fresh connection may carry the
/// message, on the stale session's slot if it had one.
async fn on_session(
    env: &Env<'_>,
    key: &str,
    s: Session,
    job: &Job,
    body: &[u8],
) -> Result<Vec<RecipientResult>, Option<Lease>> {
    let span = tracing::info_span!("delivery.smtp", host = %s.host, reused = true, tls = s.tls, result = tracing::field::Empty);
    match transact(s, job, body).instrument(span.clone()).await {
        TransEnd::Done(results, session) => {
            span.record("result", "done");
            finish(env, key.to_string(), session);
            Ok(results)
        }
        TransEnd::Next(f, mut session) => {
            span.record("result", "stale");
            tracing::debug!(parent: &span, reply = %f.reply, "pooled session unusable");
            // Closed before its slot carries a new connection, so the two
            // never overlap.
            let lease = session.lease.take();
            session.conn.quit().await;
            Err(lease)
        }
    }
}

/// What waiting for a connection slot ended with.
enum Slot {
    Lease(Box<Lease>),
    /// A session of this process became free meanwhile and carried the message.
    Delivered(Vec<RecipientResult>),
    Failed(Failure),
}

/// Claim a connection slot for `site`, waiting up to `env.limit_wait`.
/// While waiting, a session of this process that finishes a transaction for
/// the same key is handed over directly (and carries the message), as is the
/// slot of one that closes; one waiter per site and process retries the
/// bucket, when a slot is freed anywhere (KV watch) or every `SLOT_RETRY`.
async fn wait_for_slot(
    env: &Env<'_>,
    limiter: &Limiter,
    key: &str,
    site: &str,
    limit: usize,
    job: &Job,
    body: &[u8],
) -> Slot {
    let deadline = tokio::time::Instant::now() + env.limit_wait;
    let mut why = format!("all {limit} connection slots for the destination are in use");
    // When other jobs of this process already wait for the site, its slots
    // are known to be full: queue behind them instead of asking the bucket
    // (a scan of every slot) once more for each new job.
    let watch = match limiter.watching(site) {
        Some(w) => w,
        None => {
            match limiter.acquire(site, limit, None).await {
                Ok(Some(l)) => return Slot::Lease(Box::new(l)),
                Ok(None) => {}
                Err(e) => why = e.to_string(),
            }
            limiter.watch(site)
        }
    };
    let mut freed = watch.subscribe();
    loop {
        let mut waiter = match env.pool.take_or_wait(key) {
            Taken::Session(s) => match on_session(env, key, *s, job, body).await {
                Ok(results) => return Slot::Delivered(results),
                Err(Some(lease)) => return Slot::Lease(Box::new(lease)),
                Err(None) => continue,
            },
            Taken::Wait(w) => w,
        };
        // The claimer's turn: hold the site's claim lock, then wait for a
        // freed slot (try just that one: if another process took it, the
        // others are taken too) or, every SLOT_RETRY, scan them all.
        let turn = async {
            let guard = watch.claim.lock().await;
            let event = tokio::time::timeout(SLOT_RETRY, freed.changed()).await;
            (guard, event.is_ok())
        };
        let handed = tokio::select! {
            h = &mut waiter => h.ok(),
            (guard, event) = turn => {
                // Not waiting for a handover any more; one may have arrived
                // just now, though.
                waiter.close();
                match waiter.try_recv() {
                    Ok(h) => Some(h),
                    Err(_) => {
                        let first = freed.borrow_and_update().1;
                        let got = match first {
                            Some(slot) if event && slot < limit => {
                                limiter.acquire_slot(site, slot).await
                            }
                            _ => limiter.acquire(site, limit, first).await,
                        };
                        drop(guard);
                        match got {
                            Ok(Some(l)) => return Slot::Lease(Box::new(l)),
                            Ok(None) => {}
                            Err(e) => why = e.to_string(),
                        }
                        None
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => None,
        };
        match handed {
            Some(Handover::Slot(lease)) => return Slot::Lease(lease),
            Some(Handover::Session(s)) => match on_session(env, key, *s, job, body).await {
                Ok(results) => return Slot::Delivered(results),
                Err(Some(lease)) => return Slot::Lease(Box::new(lease)),
                Err(None) => {}
            },
            None => {}
        }
        if tokio::time::Instant::now() >= deadline {
            metrics::counter!("tern_delivery_limit_deferrals_total").increment(1);
            return Slot::Failed(Failure {
                code: 0,
                enhanced: "4.4.5".into(),
                reply: format!("{why} (waited {:?})", env.limit_wait),
                remote_host: String::new(),
            });
        }
    }
}

/// Put a session that ended cleanly back in the pool (or hand it to a job
/// waiting for it); close the others, handing their slot to a waiting job.
fn finish(env: &Env<'_>, key: String, mut session: Session) {
    if session.reusable && !env.closing.is_triggered() {
        env.pool.put(key, session);
    } else if !env.closing.is_triggered() {
        env.pool.close_then_hand_slot(key, session);
    } else {
        tokio::spawn(async move {
            session.conn.quit().await;
            if let Some(l) = session.lease.take() {
                l.release().await;
            }
        });
    }
}

/// TCP connect from the egress source address, if one is configured.
async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, String> {
    let fut = async {
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(src) = source {
            sock.bind(SocketAddr::new(src, 0))?;
        }
        sock.connect(addr).await
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

/// Why a new session could not be opened.
enum OpenError {
    /// Greeting, EHLO, or a TLS policy the host cannot meet: next host.
    Next(Failure),
    /// STARTTLS or the TLS handshake failed on this host (for verified
    /// TLS, also a certificate that does not verify).
    Tls(Failure, TlsFault),
    /// The host cannot meet the job's TLS needs: no STARTTLS where TLS is
    /// required, or no REQUIRETLS after verified TLS.
    Policy(Failure),
}

/// Why TLS failed on a host, for a REQUIRETLS job: a refusal bounces once
/// every MX refused (RFC 8689 §4.2.1), a fault of the moment only defers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsFault {
    /// The host answered and TLS cannot be had from it: a STARTTLS reply
    /// refusing it, a certificate that does not verify, a TLS alert.
    Refused,
    /// Nothing definite: the handshake timed out, or the connection was
    /// lost without a TLS error (the host may be overloaded).
    Transient,
}

/// Greeting, EHLO, STARTTLS as `policy` says (then EHLO again, RFC 3207 §4.2).
/// With `requiretls`, `tls_config` verifies the certificate against `host`
/// and the host must offer REQUIRETLS after the handshake (RFC 8689 §4.2.1).
async fn open(
    stream: Box<dyn Io>,
    host: &str,
    helo: &str,
    timeouts: Timeouts,
    tls_config: &Arc<rustls::ClientConfig>,
    policy: TlsPolicy,
    requiretls: bool,
) -> Result<Session, OpenError> {
    let (mut c, _greeting) = match Conn::connect(stream, timeouts).await {
        Ok(x) => x,
        // A 4xx or 5xx greeting, or no greeting: this host is not taking mail now.
        Err(e) => return Err(OpenError::Next(failure(&e, host))),
    };
    let offers_tls = match c.ehlo(helo).await {
        Ok(ext) => ext.starttls(),
        Err(e) => {
            c.quit().await;
            return Err(OpenError::Next(failure(&e, host)));
        }
    };
    let mut tls = false;
    if policy != TlsPolicy::Disabled && offers_tls {
        if let Err(e) = c.starttls().await {
            c.quit().await;
            let mut f = failure(&e, host);
            let fault = if e.reply().is_none() {
                f.enhanced = "4.7.5".into();
                TlsFault::Transient
            } else {
                TlsFault::Refused
            };
            f.reply = format!("STARTTLS: {}", f.reply);
            return Err(OpenError::Tls(f, fault));
        }
        let plain = c.into_inner();
        // SNI, and for verified TLS the name the certificate must carry.
        let name = match ServerName::try_from(host.trim_end_matches('.').to_string()) {
            Ok(n) => n,
            Err(_) if requiretls => {
                return Err(OpenError::Policy(Failure {
                    code: 0,
                    enhanced: "5.7.10".into(),
                    reply: format!("{host}: not a host name a certificate can be verified against"),
                    remote_host: host.into(),
                }));
            }
            Err(_) => ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()),
        };
        let connector = tokio_rustls::TlsConnector::from(tls_config.clone());
        let handshake =
            tokio::time::timeout(timeouts.command, connector.connect(name, plain)).await;
        let stream = match handshake {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                // rustls reports what it found (a certificate, an alert)
                // inside the I/O error; a bare one is a lost connection.
                let tls_error = e.get_ref().is_some_and(|i| i.is::<rustls::Error>());
                let fault = if tls_error {
                    TlsFault::Refused
                } else {
                    TlsFault::Transient
                };
                let f = Failure {
                    code: 0,
                    enhanced: "4.7.5".into(),
                    reply: format!("{host}: TLS handshake failed: {e}"),
                    remote_host: host.into(),
                };
                return Err(OpenError::Tls(f, fault));
            }
            Err(_) => {
                let f = Failure {
                    code: 0,
                    enhanced: "4.7.5".into(),
                    reply: format!("{host}: TLS handshake timed out"),
                    remote_host: host.into(),
                };
                return Err(OpenError::Tls(f, TlsFault::Transient));
            }
        };
        c = Conn::resume(Box::new(stream), timeouts);
        tls = true;
        if let Err(e) = c.ehlo(helo).await {
            c.quit().await;
            return Err(OpenError::Next(failure(&e, host)));
        }
    }
    if policy == TlsPolicy::Required && !tls {
        c.quit().await;
        let f = Failure {
            code: 0,
            enhanced: "4.7.4".into(),
            reply: format!("TLS is required, but was not offered by host {host}"),
            remote_host: host.into(),
        };
        return Err(if requiretls {
            OpenError::Policy(f)
        } else {
            OpenError::Next(f)
        });
    }
    if requiretls && !c.extensions().requiretls() {
        c.quit().await;
        // RFC 8689 §7.3 registers 5.7.30 for exactly this.
        return Err(OpenError::Policy(Failure {
            code: 0,
            enhanced: "5.7.30".into(),
            reply: format!("REQUIRETLS support required, but host {host} does not offer it"),
            remote_host: host.into(),
        }));
    }
    Ok(Session {
        conn: c,
        host: host.to_string(),
        tls,
        requiretls,
        messages: 0,
        max_messages: None,
        idle_since: std::time::Instant::now(),
        lease: None,
        reusable: false,
    })
}

/// How one transaction ended.
enum TransEnd {
    /// A definitive answer for every recipient; the session is reusable if
    /// `session.reusable`.
    Done(Vec<RecipientResult>, Session),
    /// The host could not take the message; try the next one.
    Next(Failure, Session),
}

/// Does the header section contain non-ASCII (RFC 6532 UTF-8 headers)?
fn utf8_headers(body: &[u8]) -> bool {
    let end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| body.windows(2).position(|w| w == b"\n\n"))
        .unwrap_or(body.len());
    !body[..end].is_ascii()
}

/// Could this address go on a command line at all?
fn sendable(address: &str) -> bool {
    !address
        .bytes()
        .any(|b| b.is_ascii_control() || b == b'<' || b == b'>')
}

/// One transaction for every recipient of `job` on an open session.
async fn transact(mut s: Session, job: &Job, body: &[u8]) -> TransEnd {
    s.reusable = false;
    s.messages += 1;
    let host = s.host.clone();
    let host = host.as_str();
    let ext = s.conn.extensions().clone();
    let bounce_all = |mut s: Session, enhanced: &str, reply: String| {
        // No transaction was started: the session is still clean.
        s.reusable = true;
        TransEnd::Done(
            all(
                job,
                Outcome::Bounced,
                &Failure {
                    code: 0,
                    enhanced: enhanced.into(),
                    reply,
                    remote_host: host.into(),
                },
            ),
            s,
        )
    };
    // RFC 6531 §3.2: a message whose envelope has non-ASCII addresses, or
    // whose header has UTF-8 (RFC 6532), may only go to a server that
    // offers SMTPUTF8; there is no downgrade, so it bounces (X.6.7 for
    // addresses, X.6.9 for a UTF-8 header, RFC 6531 §3.7.4.1 / RFC 6532).
    let utf8_addrs = !job.mail_from.is_ascii() || job.rcpts.iter().any(|r| !r.address.is_ascii());
    let utf8_header = (job.smtputf8 || utf8_addrs) && utf8_headers(body);
    if utf8_addrs && !ext.smtputf8() {
        return bounce_all(
            s,
            "5.6.7",
            format!("{host} does not support SMTPUTF8, which the addresses need"),
        );
    }
    if utf8_header && !ext.smtputf8() {
        return bounce_all(
            s,
            "5.6.9",
            format!("{host} does not support SMTPUTF8, which the UTF-8 header needs"),
        );
    }
    // RFC 6152 §3: 8-bit content to a server without 8BITMIME must be
    // converted or returned; Tern does not convert, so it is returned.
    let eight_bit = !body.is_ascii();
    if eight_bit && !ext.eight_bit_mime() {
        return bounce_all(
            s,
            "5.6.3",
            format!("{host} does not support 8BITMIME, which the 8-bit message needs"),
        );
    }
    if let Some(limit) = ext.size()
        && limit > 0
        && body.len() as u64 > limit
    {
        let mut end = bounce_all(
            s,
            "5.3.4",
            format!(
                "message of {} octets exceeds the {limit} octet limit of {host}",
                body.len()
            ),
        );
        if let TransEnd::Done(r, _) = &mut end {
            for x in r {
                x.code = 552;
            }
        }
        return end;
    }

    let mut params = Vec::new();
    if ext.size().is_some() {
        params.push(format!("SIZE={}", body.len()));
    }
    if (job.eight_bit || eight_bit) && ext.eight_bit_mime() {
        params.push("BODY=8BITMIME".to_string());
    }
    // RFC 6531 §3.4: SMTPUTF8 only when the message needs it.
    if (utf8_addrs || utf8_header) && ext.smtputf8() {
        params.push("SMTPUTF8".to_string());
    }
    if job.require_tls && s.requiretls {
        // RFC 8689 §4.2.1: the requirement travels with the message, and
        // only on a session that meets it (verified TLS, REQUIRETLS
        // offered after STARTTLS; §2 forbids the option on any other).
        params.push("REQUIRETLS".to_string());
    } else if job.require_tls && !job.mail_from.is_empty() {
        // Only a session opened for REQUIRETLS (pooled under its own key)
        // carries such a message; check again rather than send it
        // unprotected. (A report may go without, §5: see `Need::for_job`.)
        return TransEnd::Next(
            Failure {
                code: 0,
                enhanced: "5.7.10".into(),
                reply: format!("{host}: session not verified for REQUIRETLS"),
                remote_host: host.into(),
            },
            s,
        );
    }
    if ext.dsn() {
        match DsnRet::try_from(job.ret) {
            Ok(DsnRet::Full) => params.push("RET=FULL".into()),
            Ok(DsnRet::Hdrs) => params.push("RET=HDRS".into()),
            _ => {}
        }
        if !job.envid.is_empty() {
            params.push(format!("ENVID={}", job.envid));
        }
    }

    // Results by recipient index; None = accepted, waiting for DATA.
    let mut results: Vec<Option<RecipientResult>> = vec![None; job.rcpts.len()];
    let mut rcpt_params: Vec<Vec<String>> = Vec::new();
    let mut sent: Vec<usize> = Vec::new();
    for (i, r) in job.rcpts.iter().enumerate() {
        if !sendable(&r.address) {
            results[i] = Some(result(
                &r.address,
                Outcome::Bounced,
                &Failure {
                    code: 0,
                    enhanced: "5.1.3".into(),
                    reply: "recipient address cannot be sent over SMTP".into(),
                    remote_host: host.into(),
                },
            ));
            continue;
        }
        let mut p = Vec::new();
        if ext.dsn() {
            if !r.notify.is_empty() {
                p.push(format!("NOTIFY={}", r.notify.join(",")));
            }
            if !r.orcpt.is_empty() {
                p.push(format!("ORCPT={}", r.orcpt));
            }
        }
        rcpt_params.push(p);
        sent.push(i);
    }
    if sent.is_empty() {
        s.reusable = true;
        return TransEnd::Done(results.into_iter().flatten().collect(), s);
    }
    let rcpts: Vec<(&str, &[String])> = sent
        .iter()
        .zip(&rcpt_params)
        .map(|(&i, p)| (job.rcpts[i].address.as_str(), p.as_slice()))
        .collect();
    match s.conn.envelope(&job.mail_from, &params, &rcpts).await {
        Ok(replies) => {
            for (&i, reply) in sent.iter().zip(&replies) {
                if !reply.is_positive() {
                    let outcome = if reply.is_permanent() {
                        Outcome::Bounced
                    } else {
                        Outcome::Deferred
                    };
                    results[i] = Some(from_reply(&job.rcpts[i].address, outcome, reply, host));
                }
            }
        }
        Err(e)
            if e.stage() == Stage::MailFrom
                && (e.is_permanent() || matches!(e, ClientError::InvalidArgument { .. })) =>
        {
            s.reusable = e.reply().is_some_and(|r| r.code != 421);
            return TransEnd::Done(all(job, Outcome::Bounced, &failure(&e, host)), s);
        }
        Err(e) => return TransEnd::Next(failure(&e, host), s),
    }
    if results.iter().all(Option::is_some) {
        // Every recipient refused: end the transaction (RFC 5321 §4.1.1.5).
        s.reusable = s.conn.rset().await.is_ok();
        return TransEnd::Done(results.into_iter().flatten().collect(), s);
    }

    let sent_data = if ext.chunking() {
        s.conn.bdat(body).await
    } else {
        s.conn.data(body).await
    };
    let (outcome, f) = match sent_data {
        Ok(reply) => {
            s.reusable = true;
            (Outcome::Delivered, reply_failure(&reply, host))
        }
        Err(e) => {
            // After DATA the server may hold the message; retrying later (not
            // on another host now) is the conservative choice.
            let outcome = if e.is_permanent() {
                Outcome::Bounced
            } else {
                Outcome::Deferred
            };
            // A final reply other than 421 leaves the session in step.
            s.reusable = e.stage() == Stage::DataEnd && e.reply().is_some_and(|r| r.code != 421);
            (outcome, failure(&e, host))
        }
    };
    TransEnd::Done(
        results
            .into_iter()
            .zip(&job.rcpts)
            .map(|(r, rcpt)| r.unwrap_or_else(|| result(&rcpt.address, outcome, &f)))
            .collect(),
        s,
    )
}

fn enhanced_or(reply: &Reply) -> String {
    reply
        .enhanced
        .clone()
        .unwrap_or_else(|| format!("{}.0.0", reply.code / 100))
}

fn reply_failure(reply: &Reply, host: &str) -> Failure {
    Failure {
        code: u32::from(reply.code),
        enhanced: enhanced_or(reply),
        reply: reply.text(),
        remote_host: host.into(),
    }
}

fn from_reply(address: &str, outcome: Outcome, reply: &Reply, host: &str) -> RecipientResult {
    result(address, outcome, &reply_failure(reply, host))
}

/// Describe a client error for a result.
fn failure(e: &ClientError, host: &str) -> Failure {
    if let Some(reply) = e.reply() {
        return reply_failure(reply, host);
    }
    let enhanced = match e {
        ClientError::Timeout {
            stage: Stage::Greeting,
            ..
        } => "4.4.1",
        ClientError::Timeout { .. } | ClientError::Closed { .. } | ClientError::Io { .. } => {
            "4.4.2"
        }
        ClientError::InvalidArgument { .. } => "5.1.7",
        _ => "4.5.0",
    };
    Failure {
        code: 0,
        enhanced: enhanced.into(),
        reply: format!("{host}: {e}"),
        remote_host: host.into(),
    }
}

fn result(address: &str, outcome: Outcome, f: &Failure) -> RecipientResult {
    RecipientResult {
        address: address.to_string(),
        outcome: outcome as i32,
        code: f.code,
        enhanced: f.enhanced.clone(),
        reply: f.reply.clone(),
        remote_host: f.remote_host.clone(),
    }
}

fn all(job: &Job, outcome: Outcome, f: &Failure) -> Vec<RecipientResult> {
    job.rcpts
        .iter()
        .map(|r| result(&r.address, outcome, f))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// How one plaintext session ended.
    enum SessionEnd {
        Done(Vec<RecipientResult>),
        Next(Failure),
    }

    /// Open a plaintext session on `stream` and run one transaction.
    async fn session(
        stream: tokio::io::DuplexStream,
        host: &str,
        job: &Job,
        body: &[u8],
        helo: &str,
        timeouts: Timeouts,
    ) -> SessionEnd {
        let cfg = crate::tls::client_config().unwrap();
        let s = match open(
            Box::new(stream),
            host,
            helo,
            timeouts,
            &cfg,
            TlsPolicy::Disabled,
            false,
        )
        .await
        {
            Ok(s) => s,
            Err(OpenError::Next(f) | OpenError::Tls(f, _) | OpenError::Policy(f)) => {
                return SessionEnd::Next(f);
            }
        };
        match transact(s, job, body).await {
            TransEnd::Done(r, _) => SessionEnd::Done(r),
            TransEnd::Next(f, _) => SessionEnd::Next(f),
        }
    }
    use tern_proto::Recipient;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn job(rcpts: &[&str]) -> Job {
        Job {
            job_id: "m1/x.test".into(),
            message_id: "m1".into(),
            mail_from: "a@b.test".into(),
            rcpts: rcpts
                .iter()
                .map(|r| Recipient {
                    address: r.to_string(),
                    ..Default::default()
                })
                .collect(),
            destination: "x.test".into(),
            ..Default::default()
        }
    }

    /// A peer that answers each line it reads with the next scripted reply.
    async fn peer(
        mut s: tokio::io::DuplexStream,
        greeting: &'static str,
        replies: Vec<&'static str>,
    ) {
        s.write_all(greeting.as_bytes()).await.unwrap();
        let mut replies = replies.into_iter();
        let mut buf = Vec::new();
        let mut in_data = false;
        let mut chunk = [0u8; 1024];
        loop {
            let n = s.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            loop {
                let end = if in_data {
                    buf.windows(5)
                        .position(|w| w == b"\r\n.\r\n")
                        .map(|i| i + 5)
                } else {
                    buf.windows(2).position(|w| w == b"\r\n").map(|i| i + 2)
                };
                let Some(end) = end else { break };
                let line: Vec<u8> = buf.drain(..end).collect();
                in_data = line == b"DATA\r\n";
                let Some(r) = replies.next() else { return };
                s.write_all(r.as_bytes()).await.unwrap();
                if in_data && !r.starts_with("354") {
                    in_data = false;
                }
            }
        }
    }

    #[tokio::test]
    async fn mixed_recipient_outcomes() {
        let (a, b) = duplex(8192);
        tokio::spawn(peer(
            b,
            "220 x\r\n",
            vec![
                "250 x\r\n",
                "250 ok\r\n",
                "250 ok\r\n",
                "550 5.1.1 unknown\r\n",
                "452 4.2.2 full\r\n",
                "354 go\r\n",
                "250 2.0.0 queued\r\n",
                "221 bye\r\n",
            ],
        ));
        let j = job(&["ok@x.test", "no@x.test", "full@x.test"]);
        let SessionEnd::Done(r) = session(
            a,
            "mx.x.test",
            &j,
            b"hi\r\n",
            "me.test",
            Timeouts::default(),
        )
        .await
        else {
            panic!("expected a definitive answer");
        };
        let outcomes: Vec<i32> = r.iter().map(|r| r.outcome).collect();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Delivered as i32,
                Outcome::Bounced as i32,
                Outcome::Deferred as i32
            ]
        );
        assert_eq!(r[1].code, 550);
        assert_eq!(r[1].enhanced, "5.1.1");
        assert_eq!(r[2].enhanced, "4.2.2");
        assert_eq!(r[0].remote_host, "mx.x.test");
    }

    #[tokio::test]
    async fn transient_greeting_means_next_host() {
        let (a, b) = duplex(8192);
        tokio::spawn(peer(b, "421 4.7.0 busy\r\n", vec!["221 bye\r\n"]));
        let j = job(&["ok@x.test"]);
        let SessionEnd::Next(f) = session(
            a,
            "mx.x.test",
            &j,
            b"hi\r\n",
            "me.test",
            Timeouts::default(),
        )
        .await
        else {
            panic!("expected next host");
        };
        assert_eq!(f.code, 421);
    }

    #[tokio::test]
    async fn permanent_mail_from_bounces_everyone() {
        let (a, b) = duplex(8192);
        tokio::spawn(peer(
            b,
            "220 x\r\n",
            vec!["250 x\r\n", "553 5.7.1 sender denied\r\n", "221 bye\r\n"],
        ));
        let j = job(&["r1@x.test", "r2@x.test"]);
        let SessionEnd::Done(r) = session(
            a,
            "mx.x.test",
            &j,
            b"hi\r\n",
            "me.test",
            Timeouts::default(),
        )
        .await
        else {
            panic!("expected a definitive answer");
        };
        assert!(
            r.iter()
                .all(|r| r.outcome == Outcome::Bounced as i32 && r.enhanced == "5.7.1")
        );
    }

    #[tokio::test]
    async fn final_data_rejection_applies_to_accepted_recipients() {
        let (a, b) = duplex(8192);
        tokio::spawn(peer(
            b,
            "220 x\r\n",
            vec![
                "250 x\r\n",
                "250 ok\r\n",
                "250 ok\r\n",
                "354 go\r\n",
                "451 4.3.0 try later\r\n",
                "221 bye\r\n",
            ],
        ));
        let j = job(&["r1@x.test"]);
        let SessionEnd::Done(r) = session(
            a,
            "mx.x.test",
            &j,
            b"hi\r\n",
            "me.test",
            Timeouts::default(),
        )
        .await
        else {
            panic!("expected a definitive answer");
        };
        assert_eq!(r[0].outcome, Outcome::Deferred as i32);
        assert_eq!(r[0].code, 451);
    }

    #[tokio::test]
    async fn size_limit_is_honoured() {
        let (a, b) = duplex(8192);
        tokio::spawn(peer(
            b,
            "220 x\r\n",
            vec!["250-x\r\n250 SIZE 3\r\n", "221 bye\r\n"],
        ));
        let j = job(&["r1@x.test"]);
        let SessionEnd::Done(r) = session(
            a,
            "mx.x.test",
            &j,
            b"too big\r\n",
            "me.test",
            Timeouts::default(),
        )
        .await
        else {
            panic!("expected a definitive answer");
        };
        assert_eq!(r[0].outcome, Outcome::Bounced as i32);
        assert_eq!(r[0].enhanced, "5.3.4");
    }
}
