//! Configuration from `TERN_*` environment variables and an optional TOML file.
//!
//! Every key has one name: `TERN_SMTP_LISTEN` in the environment is
//! `smtp_listen` in the TOML file (a flat table). The environment wins over the
//! file. Each service declares its keys as [`Key`] constants and builds its own
//! typed config struct from a [`Source`]; the source remembers what was read,
//! so `tern config check` can print the effective values and any key nobody
//! read is reported as unknown.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

/// Prefix of every Tern environment variable.
pub const ENV_PREFIX: &str = "TERN_";

/// A configuration problem, always naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value did not parse.
    #[error("config key {key}: invalid value {value:?}: expected {expected}")]
    Invalid {
        /// The key as the operator wrote it (`TERN_X` or `x` in the file).
        key: String,
        /// The value given.
        value: String,
        /// The expected form.
        expected: &'static str,
    },
    /// A key that no service knows.
    #[error("unknown config key {key} (from {origin}); see `tern config check` for the known keys")]
    Unknown {
        /// The key as written.
        key: String,
        /// Where it came from.
        origin: Origin,
    },
    /// The TOML file could not be read or parsed.
    #[error("config file {path}: {message}")]
    File {
        /// Path of the file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The key's built-in default.
    Default,
    /// The TOML file.
    File,
    /// A `TERN_*` environment variable.
    Env,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Default => "default",
            Origin::File => "config file",
            Origin::Env => "environment",
        })
    }
}

/// A value type that can be read from a config string.
pub trait ConfigValue: Sized {
    /// The expected form, shown in errors.
    const EXPECTED: &'static str;
    /// Parse the operator's text.
    fn parse_value(s: &str) -> Option<Self>;
}

/// A declared configuration key of type `T`.
#[derive(Debug)]
pub struct Key<T> {
    /// Lower-case name without prefix, e.g. `smtp_listen`.
    pub name: &'static str,
    /// Default as text, parsed like operator input. Empty means "unset".
    pub default: &'static str,
    /// One line for `tern config check`.
    pub help: &'static str,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T> Key<T> {
    /// Declare a key.
    pub const fn new(name: &'static str, default: &'static str, help: &'static str) -> Self {
        Key {
            name,
            default,
            help,
            _t: std::marker::PhantomData,
        }
    }
}

/// The environment variable name of a key.
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

/// One effective value, as recorded for `tern config check`.
#[derive(Debug, Clone)]
pub struct Effective {
    /// Key name.
    pub name: &'static str,
    /// Effective text value.
    pub value: String,
    /// Where it came from.
    pub origin: Origin,
    /// Help line.
    pub help: &'static str,
}

/// Raw configuration values, before typing.
#[derive(Debug, Default)]
pub struct Source {
    values: BTreeMap<String, (String, Origin)>,
    read: Mutex<BTreeMap<&'static str, Effective>>,
}

impl Source {
    /// Build from explicit pairs (tests); keys are lower-case names without prefix.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let values = pairs
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), (v.to_string(), Origin::Env)))
            .collect();
        Source {
            values,
            read: Mutex::default(),
        }
    }

    /// Load the optional TOML file, then overlay the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut values = BTreeMap::new();
        if let Some(path) = file {
            let err = |message: String| ConfigError::File {
                path: path.to_path_buf(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            let table: toml::Table = text
                .parse()
                .map_err(|e: toml::de::Error| err(e.to_string()))?;
            for (k, v) in table {
                let s = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Array(items) => items
                        .iter()
                        .map(|i| match i {
                            toml::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                values.insert(k.to_ascii_lowercase(), (s, Origin::File));
            }
        }
        for (k, v) in std::env::vars() {
            if let Some(name) = k.strip_prefix(ENV_PREFIX) {
                values.insert(name.to_ascii_lowercase(), (v, Origin::Env));
            }
        }
        Ok(Source {
            values,
            read: Mutex::default(),
        })
    }

    /// Read and type a key, recording its effective value.
    pub fn get<T: ConfigValue>(&self, key: &Key<T>) -> Result<T, ConfigError> {
        let (text, origin) = match self.values.get(key.name) {
            Some((v, o)) => (v.clone(), *o),
            None => (key.default.to_string(), Origin::Default),
        };
        self.record(key, &text, origin);
        T::parse_value(text.trim()).ok_or_else(|| ConfigError::Invalid {
            key: match origin {
                Origin::File => key.name.to_string(),
                _ => env_name(key.name),
            },
            value: text,
            expected: T::EXPECTED,
        })
    }

    /// Read a key whose default is computed at run time (e.g. from another key).
    pub fn get_or<T: ConfigValue>(&self, key: &Key<T>, default: &str) -> Result<T, ConfigError> {
        if self.values.contains_key(key.name) {
            return self.get(key);
        }
        self.record(key, default, Origin::Default);
        T::parse_value(default).ok_or_else(|| ConfigError::Invalid {
            key: env_name(key.name),
            value: default.to_string(),
            expected: T::EXPECTED,
        })
    }

    fn record<T>(&self, key: &Key<T>, text: &str, origin: Origin) {
        if let Ok(mut read) = self.read.lock() {
            read.insert(
                key.name,
                Effective {
                    name: key.name,
                    value: text.to_string(),
                    origin,
                    help: key.help,
                },
            );
        }
    }

    /// After every config struct was built: fail on keys nobody read.
    pub fn finish(&self) -> Result<Vec<Effective>, ConfigError> {
        let read = self.read.lock().map(|r| r.clone()).unwrap_or_default();
        for (k, (_, origin)) in &self.values {
            if !read.contains_key(k.as_str()) {
                return Err(ConfigError::Unknown {
                    key: match origin {
                        Origin::File => k.clone(),
                        _ => env_name(k),
                    },
                    origin: *origin,
                });
            }
        }
        Ok(read.into_values().collect())
    }
}

impl ConfigValue for String {
    const EXPECTED: &'static str = "a string";
    fn parse_value(s: &str) -> Option<Self> {
        Some(s.to_string())
    }
}

impl ConfigValue for SocketAddr {
    const EXPECTED: &'static str = "an address and port like 127.0.0.1:2525 or [::1]:2525";
    fn parse_value(s: &str) -> Option<Self> {
        SocketAddr::from_str(s).ok()
    }
}

impl ConfigValue for Option<SocketAddr> {
    const EXPECTED: &'static str = "an address and port like 127.0.0.1:2525, or empty to disable";
    fn parse_value(s: &str) -> Option<Self> {
        if s.is_empty() {
            Some(None)
        } else {
            SocketAddr::from_str(s).ok().map(Some)
        }
    }
}

impl ConfigValue for Option<Duration> {
    const EXPECTED: &'static str = "a duration like 30s, 5m or 4h, or empty for never";
    fn parse_value(s: &str) -> Option<Self> {
        if s.is_empty() {
            Some(None)
        } else {
            parse_duration(s).map(Some)
        }
    }
}

impl ConfigValue for Option<PathBuf> {
    const EXPECTED: &'static str = "a file path, or empty";
    fn parse_value(s: &str) -> Option<Self> {
        Some((!s.is_empty()).then(|| PathBuf::from(s)))
    }
}

impl ConfigValue for PathBuf {
    const EXPECTED: &'static str = "a path";
    fn parse_value(s: &str) -> Option<Self> {
        (!s.is_empty()).then(|| PathBuf::from(s))
    }
}

impl ConfigValue for Option<String> {
    const EXPECTED: &'static str = "a string, or empty";
    fn parse_value(s: &str) -> Option<Self> {
        Some((!s.is_empty()).then(|| s.to_string()))
    }
}

impl ConfigValue for u16 {
    const EXPECTED: &'static str = "a port number 1-65535";
    fn parse_value(s: &str) -> Option<Self> {
        s.parse().ok().filter(|p| *p != 0)
    }
}

impl ConfigValue for u32 {
    const EXPECTED: &'static str = "a non-negative integer";
    fn parse_value(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

impl ConfigValue for u64 {
    const EXPECTED: &'static str = "a non-negative integer";
    fn parse_value(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

impl ConfigValue for usize {
    const EXPECTED: &'static str = "a non-negative integer";
    fn parse_value(s: &str) -> Option<Self> {
        s.parse().ok()
    }
}

impl ConfigValue for bool {
    const EXPECTED: &'static str = "true or false";
    fn parse_value(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => None,
        }
    }
}

impl ConfigValue for Duration {
    const EXPECTED: &'static str = "a duration like 500ms, 30s, 5m, 4h or 5d";
    fn parse_value(s: &str) -> Option<Self> {
        parse_duration(s)
    }
}

/// Parse `500ms`, `30s`, `5m`, `4h`, `5d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => return Some(Duration::from_millis(n)),
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// A comma-separated list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct List<T>(pub Vec<T>);

impl<T: ConfigValue> ConfigValue for List<T> {
    const EXPECTED: &'static str = "a comma-separated list";
    fn parse_value(s: &str) -> Option<Self> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(T::parse_value)
            .collect::<Option<Vec<_>>>()
            .map(List)
    }
}

/// A domain name, stored lower-case without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(pub String);

impl ConfigValue for Domain {
    const EXPECTED: &'static str = "a domain name like example.com";
    fn parse_value(s: &str) -> Option<Self> {
        let d = s.trim_end_matches('.').to_ascii_lowercase();
        let ok = !d.is_empty()
            && d.len() <= 253
            && d.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        ok.then_some(Domain(d))
    }
}

/// An IP network in CIDR form (`10.0.0.0/8`, `::1/128`); a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Is `ip` inside this network?
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl ConfigValue for Cidr {
    const EXPECTED: &'static str = "an IP network like 10.0.0.0/8 or ::1/128";
    fn parse_value(s: &str) -> Option<Self> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() { max } else { p.parse().ok()? };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }
}

/// Keys shared by every service.
pub mod keys {
    use super::*;

    /// `TERN_DATA_DIR`.
    pub const DATA_DIR: Key<PathBuf> = Key::new("data_dir", "./tern-data", "data directory");
    /// `TERN_NATS_URL`.
    pub const NATS_URL: Key<Option<String>> = Key::new(
        "nats_url",
        "",
        "NATS server URL(s), comma-separated; unset under `tern up` starts a managed nats-server",
    );
    /// `TERN_NATS_TLS_CA`.
    pub const NATS_TLS_CA: Key<Option<PathBuf>> = Key::new(
        "nats_tls_ca",
        "",
        "PEM CA certificate(s) to trust for NATS (instead of the system roots); set: TLS required",
    );
    /// `TERN_NATS_TLS_CERT`.
    pub const NATS_TLS_CERT: Key<Option<PathBuf>> = Key::new(
        "nats_tls_cert",
        "",
        "PEM client certificate chain for mutual TLS with NATS (with TERN_NATS_TLS_KEY)",
    );
    /// `TERN_NATS_TLS_KEY`.
    pub const NATS_TLS_KEY: Key<Option<PathBuf>> =
        Key::new("nats_tls_key", "", "PEM private key of TERN_NATS_TLS_CERT");
    /// `TERN_NATS_CREDS`.
    pub const NATS_CREDS: Key<Option<PathBuf>> = Key::new(
        "nats_creds",
        "",
        "NATS .creds file (user JWT + nkey seed, as made by nsc)",
    );
    /// `TERN_NATS_NKEY`.
    pub const NATS_NKEY: Key<Option<PathBuf>> = Key::new(
        "nats_nkey",
        "",
        "file holding a NATS user nkey seed (SU...)",
    );
    /// `TERN_HOSTNAME`.
    pub const HOSTNAME: Key<Option<String>> = Key::new(
        "hostname",
        "",
        "name in banners, EHLO and Received (default: machine hostname)",
    );
    /// `TERN_LOCAL_DOMAINS`.
    pub const LOCAL_DOMAINS: Key<List<Domain>> = Key::new(
        "local_domains",
        "localhost",
        "domains whose mail is stored here",
    );
    /// `TERN_LOG`.
    pub const LOG: Key<String> = Key::new(
        "log",
        "",
        "log filter, e.g. info,tern_delivery=debug (default: RUST_LOG, else info)",
    );
    /// `TERN_LOG_FORMAT`.
    pub const LOG_FORMAT: Key<String> = Key::new("log_format", "text", "log format: text or json");
    /// `TERN_NATS_REPLICAS`.
    pub const NATS_REPLICAS: Key<usize> = Key::new(
        "nats_replicas",
        "1",
        "copies of every JetStream stream (3 in a production cluster)",
    );
    /// `TERN_SHUTDOWN_GRACE`.
    pub const SHUTDOWN_GRACE: Key<Duration> = Key::new(
        "shutdown_grace",
        "25s",
        "how long in-flight work may take after SIGTERM",
    );
}

/// Settings every service shares.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// NATS URL(s); `None` means "managed by `tern up`" and is an error for a lone service.
    pub nats_url: Option<String>,
    /// TLS and credential files for NATS, beyond what the URL carries.
    pub nats_security: crate::bus::NatsSecurity,
    /// Host name for banners and EHLO.
    pub hostname: String,
    /// Local mail domains.
    pub local_domains: Vec<Domain>,
    /// How long to drain after SIGTERM.
    pub shutdown_grace: Duration,
    /// Replicas of every JetStream stream.
    pub nats_replicas: usize,
}

impl CommonConfig {
    /// Read the shared keys.
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let hostname = match src.get(&keys::HOSTNAME)? {
            Some(h) => h,
            None => hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into()),
        };
        let nats_url = src.get(&keys::NATS_URL)?;
        let nats_security = crate::bus::NatsSecurity::from_source(src, nats_url.as_deref())?;
        Ok(CommonConfig {
            data_dir: src.get(&keys::DATA_DIR)?,
            nats_url,
            nats_security,
            hostname,
            local_domains: src.get(&keys::LOCAL_DOMAINS)?.0,
            shutdown_grace: src.get(&keys::SHUTDOWN_GRACE)?,
            nats_replicas: match src.get(&keys::NATS_REPLICAS)? {
                n @ 1..=5 => n,
                n => {
                    return Err(ConfigError::Invalid {
                        key: env_name(keys::NATS_REPLICAS.name),
                        value: n.to_string(),
                        expected: "a replica count from 1 to 5",
                    });
                }
            },
        })
    }

    /// Is `domain` one of ours?
    pub fn is_local_domain(&self, domain: &str) -> bool {
        let d = domain.trim_end_matches('.');
        self.local_domains
            .iter()
            .any(|l| l.0.eq_ignore_ascii_case(d))
    }

    /// The NATS URL, or an error naming the key when it is required.
    pub fn require_nats_url(&self) -> Result<&str, ConfigError> {
        self.nats_url.as_deref().ok_or(ConfigError::Invalid {
            key: env_name(keys::NATS_URL.name),
            value: String::new(),
            expected: "a NATS URL like nats://127.0.0.1:4222 (only `tern up` manages its own)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_value_names_the_key() {
        let src = Source::from_pairs([("smtp_listen", "not-an-address")]);
        let key: Key<SocketAddr> = Key::new("smtp_listen", "127.0.0.1:2525", "");
        let err = src.get(&key).unwrap_err().to_string();
        assert!(err.contains("TERN_SMTP_LISTEN"), "{err}");
        assert!(err.contains("address and port"), "{err}");
    }

    #[test]
    fn unknown_key_is_reported() {
        let src = Source::from_pairs([("smtp_lisen", "127.0.0.1:25")]);
        let key: Key<SocketAddr> = Key::new("smtp_listen", "127.0.0.1:2525", "");
        assert_eq!(src.get(&key).unwrap().port(), 2525);
        let err = src.finish().unwrap_err().to_string();
        assert!(err.contains("TERN_SMTP_LISEN"), "{err}");
    }

    #[test]
    fn durations_and_cidrs() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5x"), None);
        let net = Cidr::parse_value("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(Cidr::parse_value("10.0.0.0/33").is_none());
    }
}

/// Where each service listens for gRPC and admin HTTP, and where its clients
/// find it. Kept together because both sides of every connection read them.
pub mod endpoints {
    use super::*;

    macro_rules! listen_key {
        ($(#[$m:meta])* $name:ident, $key:literal, $default:literal, $help:literal) => {
            $(#[$m])*
            pub const $name: Key<SocketAddr> = Key::new($key, $default, $help);
        };
    }

    listen_key!(/// `TERN_INGRESS_GRPC_LISTEN`.
        INGRESS_GRPC, "ingress_grpc_listen", "127.0.0.1:50051", "ingress gRPC (health)");
    listen_key!(/// `TERN_QUEUE_GRPC_LISTEN`.
        QUEUE_GRPC, "queue_grpc_listen", "127.0.0.1:50052", "queue gRPC (admin API, health)");
    listen_key!(/// `TERN_RESOLVER_GRPC_LISTEN`.
        RESOLVER_GRPC, "resolver_grpc_listen", "127.0.0.1:50053", "resolver gRPC (routes, health)");
    listen_key!(/// `TERN_DELIVERY_GRPC_LISTEN`.
        DELIVERY_GRPC, "delivery_grpc_listen", "127.0.0.1:50054", "delivery gRPC (health)");
    listen_key!(/// `TERN_MAILBOX_GRPC_LISTEN`.
        MAILBOX_GRPC, "mailbox_grpc_listen", "127.0.0.1:50055", "mailbox gRPC (accounts, health)");
    listen_key!(/// `TERN_INGRESS_ADMIN_LISTEN`.
        INGRESS_ADMIN, "ingress_admin_listen", "127.0.0.1:9081", "ingress /healthz /readyz /metrics");
    listen_key!(/// `TERN_QUEUE_ADMIN_LISTEN`.
        QUEUE_ADMIN, "queue_admin_listen", "127.0.0.1:9082", "queue /healthz /readyz /metrics");
    listen_key!(/// `TERN_RESOLVER_ADMIN_LISTEN`.
        RESOLVER_ADMIN, "resolver_admin_listen", "127.0.0.1:9083", "resolver /healthz /readyz /metrics");
    listen_key!(/// `TERN_DELIVERY_ADMIN_LISTEN`.
        DELIVERY_ADMIN, "delivery_admin_listen", "127.0.0.1:9084", "delivery /healthz /readyz /metrics");
    listen_key!(/// `TERN_MAILBOX_ADMIN_LISTEN`.
        MAILBOX_ADMIN, "mailbox_admin_listen", "127.0.0.1:9085", "mailbox /healthz /readyz /metrics");

    /// `TERN_QUEUE_URL`.
    pub const QUEUE_URL: Key<String> = Key::new(
        "queue_url",
        "",
        "queue gRPC URL (default: from TERN_QUEUE_GRPC_LISTEN)",
    );
    /// `TERN_RESOLVER_URL`.
    pub const RESOLVER_URL: Key<String> = Key::new(
        "resolver_url",
        "",
        "resolver gRPC URL (default: from TERN_RESOLVER_GRPC_LISTEN)",
    );
    /// `TERN_MAILBOX_URL`.
    pub const MAILBOX_URL: Key<String> = Key::new(
        "mailbox_url",
        "",
        "mailbox gRPC URL (default: from TERN_MAILBOX_GRPC_LISTEN)",
    );

    /// Read a client URL, defaulting to `http://` + the server's listen address.
    pub fn url(
        src: &Source,
        url: &Key<String>,
        listen: &Key<SocketAddr>,
    ) -> Result<String, ConfigError> {
        let addr = src.get(listen)?;
        src.get_or(url, &format!("http://{addr}"))
    }
}
