//! Traffic shaping: limits per destination domain, per mailbox provider and
//! per egress source, read from a TOML file (`TERN_SHAPING_FILE`) and
//! reloaded while delivery runs.
//!
//! A *provider* is matched by the names of the destination's MX hosts
//! (`.google.com` matches `aspmx.l.google.com`), so every domain hosted by
//! Google Workspace shares Google's limits: the cluster-wide connection
//! slots and message-rate counters of [`crate::limit`] and [`crate::rate`]
//! are then kept under the provider's key instead of the resolver's site.
//! Values are layered: the delivery keys (`TERN_DELIVERY_*`) apply where
//! the file says nothing, then `[default]`, the provider, the domain and
//! last the egress source (`[source.<pool>]`, this process's
//! `TERN_DELIVERY_POOL`), the most specific winning. A source section also
//! makes the counters per (source, provider): each pool gets its own
//! share.
//!
//! The file is checked in full when it is read: an unknown key or a bad
//! value is an error naming the key and its line. A file that fails to
//! parse on reload is logged and the rules in force stay.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tern_runtime::bus;
use tern_runtime::config::{ConfigValue, parse_duration};

use crate::rate::RateLimit;
use crate::tls::TlsPolicy;

/// The shipped provider definitions and automation rules, used unless the
/// file says `include_defaults = false`. The limits are deliberately left
/// to the operator; the MX suffixes and the providers' throttling replies
/// are what every sender needs.
pub const DEFAULTS: &str = include_str!("shaping-defaults.toml");

/// How often the shaping file is checked for changes.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Why a shaping file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ShapingError {
    /// The file could not be read.
    #[error("shaping file {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// A syntax error, an unknown key or a bad value; the message names
    /// the key and the line.
    #[error("shaping file {path}: {message}")]
    Invalid {
        /// The file (or `defaults` for the shipped rules).
        path: String,
        /// What is wrong, with the line.
        message: String,
    },
}

/// A rate in the file (`100/s`, `600/m`, `none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub RateLimit);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RateLimit::parse_value(&s).map(Rate).ok_or_else(|| {
            serde::de::Error::custom(format!("{s:?}: expected {}", RateLimit::EXPECTED))
        })
    }
}

/// A TLS policy in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tls(pub TlsPolicy);

impl<'de> Deserialize<'de> for Tls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TlsPolicy::parse_value(&s).map(Tls).ok_or_else(|| {
            serde::de::Error::custom(format!("{s:?}: expected {}", TlsPolicy::EXPECTED))
        })
    }
}

/// A duration in the file (`30s`, `5m`, `1h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .filter(|d| !d.is_zero())
            .map(Dur)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("{s:?}: expected a duration like 30s, 5m or 1h"))
            })
    }
}

/// One section of limits. Every value is optional: a missing one falls
/// through to the less specific layer.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// MX host suffixes (`.google.com`) or names; providers only.
    pub mx: Option<Vec<String>>,
    /// Connections open at once across the cluster (0 = unlimited).
    pub connection_limit: Option<usize>,
    /// Transactions per SMTP connection (at least 1).
    pub messages_per_connection: Option<usize>,
    /// Messages per time across the cluster.
    pub rate: Option<Rate>,
    /// New connections per time across the cluster.
    pub connection_rate: Option<Rate>,
    /// STARTTLS policy.
    pub tls: Option<Tls>,
}

impl Limits {
    /// `self` with the values `over` sets replacing its own.
    fn overlay(&mut self, over: &Limits) {
        macro_rules! take {
            ($($f:ident),*) => { $( if over.$f.is_some() { self.$f = over.$f.clone(); } )* };
        }
        take!(
            connection_limit,
            messages_per_connection,
            rate,
            connection_rate,
            tls
        );
    }
}

/// What an automation rule does while it is in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    /// No messages to the provider from the source.
    Suspend,
    /// The provider's message rate lowered to the rule's `rate`.
    Rate,
    /// Messages to the provider from the source are bounced.
    Bounce,
}

impl ActionKind {
    /// The file's spelling (also the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Suspend => "suspend",
            ActionKind::Rate => "rate",
            ActionKind::Bounce => "bounce",
        }
    }
}

/// When an automation rule acts: at the first matching reply, or once
/// `count` replies matched within `within`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// At the first matching reply.
    Once,
    /// After `count` matching replies within `within` (`3 in 5m`).
    Threshold {
        /// Replies needed (at least 2).
        count: u32,
        /// The sliding window.
        within: Duration,
    },
}

impl Trigger {
    fn parse(s: &str) -> Option<Trigger> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("once") || s == "1" {
            return Some(Trigger::Once);
        }
        let (n, within) = s.split_once(" in ")?;
        let count: u32 = n.trim().parse().ok()?;
        let within = parse_duration(within.trim()).filter(|d| !d.is_zero())?;
        match count {
            0 => None,
            1 => Some(Trigger::Once),
            _ => Some(Trigger::Threshold { count, within }),
        }
    }
}

impl<'de> Deserialize<'de> for Trigger {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Trigger::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{s:?}: expected once or a threshold like \"3 in 5m\""
            ))
        })
    }
}

/// A regular expression in the file.
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        regex::Regex::new(&s)
            .map(Pattern)
            .map_err(|e| serde::de::Error::custom(format!("bad regular expression: {e}")))
    }
}

/// A rule that watches remote replies and acts on the (egress source,
/// provider) pair for a while.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Automation {
    /// Name (in events, metrics and `tern shaping status`).
    pub name: String,
    /// The provider it watches; every destination when absent (then the
    /// pair is keyed by the resolver's site).
    pub provider: Option<String>,
    /// The reply code to match (`421`); any when absent.
    pub code: Option<u16>,
    /// Matched against the reply's enhanced code and text (`4\.7\.28`).
    #[serde(rename = "match")]
    pub pattern: Pattern,
    /// What to do.
    pub action: ActionKind,
    /// The lowered rate, for `action = "rate"`.
    pub rate: Option<Rate>,
    /// How long the action holds; it ends by itself.
    pub duration: Dur,
    /// When to act (default `once`).
    #[serde(default = "once")]
    pub trigger: Trigger,
}

fn once() -> Trigger {
    Trigger::Once
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    include_defaults: Option<bool>,
    #[serde(default)]
    default: Limits,
    #[serde(default)]
    provider: BTreeMap<String, Limits>,
    #[serde(default)]
    domain: BTreeMap<String, Limits>,
    #[serde(default)]
    source: BTreeMap<String, Limits>,
    #[serde(default)]
    automation: Vec<Automation>,
}

/// A provider: its MX suffixes and limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// The name from the file (`google`).
    pub name: String,
    /// Lower-case MX suffixes (`.google.com`) or whole names.
    pub mx: Vec<String>,
    /// Its limits.
    pub limits: Limits,
}

/// Every rule from the shaping file (and the shipped defaults), checked.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// `[default]`.
    pub default: Limits,
    /// Providers, in the order they are matched (by name).
    pub providers: Vec<Provider>,
    /// `[domain."example.com"]` (a leading dot also covers subdomains).
    pub domains: BTreeMap<String, Limits>,
    /// `[source.<pool>]`.
    pub sources: BTreeMap<String, Limits>,
    /// `[[automation]]`, the file's first, then the defaults'.
    pub automation: Vec<Automation>,
}

/// The limits for one message, from every layer of the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The provider the MX hosts matched, if any.
    pub provider: Option<String>,
    /// The key the cluster-wide counters are kept under: the provider's
    /// (`provider-google`) or the site, prefixed with the source when a
    /// source section applies.
    pub key: String,
    /// The (egress source, provider-or-site) pair automation acts on.
    pub pair: String,
    /// `provider-<name>`, or the site when no provider matched.
    pub target: String,
    /// Limits from the file; `None` = the delivery keys decide.
    pub limits: Limits,
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn parse_file(text: &str, path: &str) -> Result<File, ShapingError> {
    toml::from_str::<File>(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        let message = e.message().trim().to_string();
        ShapingError::Invalid {
            path: path.into(),
            message: match line {
                Some(l) => format!("line {l}: {message}"),
                None => message,
            },
        }
    })
}

/// The line of `[section.name]` (or `[section."name"]`) for an error about it.
fn section_line(text: &str, section: &str, name: &str) -> Option<usize> {
    let plain = format!("[{section}.{name}]");
    let quoted = format!("[{section}.\"{name}\"]");
    text.lines()
        .position(|l| {
            let l = l.trim();
            l.starts_with(&plain) || l.starts_with(&quoted)
        })
        .map(|i| i + 1)
}

fn norm(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

impl Rules {
    /// Parse and check a shaping file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Rules, ShapingError> {
        let file = parse_file(text, path)?;
        let include = file.include_defaults.unwrap_or(true);
        let mut rules = Rules::default();
        if include && path != "defaults" {
            rules = Rules::parse(DEFAULTS, "defaults")?;
        }
        let invalid = |section: &str, name: &str, what: &str| ShapingError::Invalid {
            path: path.into(),
            message: match section_line(text, section, name) {
                Some(l) => format!("line {l}: [{section}.{name}]: {what}"),
                None => format!("[{section}.{name}]: {what}"),
            },
        };
        if file.default.mx.is_some() {
            return Err(invalid(
                "default",
                "mx",
                "mx belongs in a [provider.<name>] section",
            ));
        }
        rules.default.overlay(&file.default);
        for (name, limits) in file.provider {
            // A shipped provider may be given limits without its MX list.
            let shipped = rules.providers.iter().position(|p| p.name == name);
            let mx = match (limits.mx.clone().filter(|m| !m.is_empty()), shipped) {
                (Some(mx), _) => mx.iter().map(|m| norm(m)).collect(),
                (None, Some(i)) => rules.providers[i].mx.clone(),
                (None, None) => {
                    return Err(invalid(
                        "provider",
                        &name,
                        "a provider needs mx = [suffixes]",
                    ));
                }
            };
            rules.providers.retain(|p| p.name != name);
            rules.providers.push(Provider { name, mx, limits });
        }
        for (section, map, into) in [
            ("domain", file.domain, &mut rules.domains),
            ("source", file.source, &mut rules.sources),
        ] {
            for (name, limits) in map {
                if limits.mx.is_some() {
                    return Err(invalid(
                        section,
                        &name,
                        "mx belongs in a [provider.<name>] section",
                    ));
                }
                into.insert(norm(&name), limits);
            }
        }
        let mut automation = Vec::new();
        for a in file.automation {
            if a.action == ActionKind::Rate && a.rate.is_none() {
                return Err(invalid(
                    "automation",
                    &a.name,
                    "action = \"rate\" needs rate = \"N/period\"",
                ));
            }
            if let Some(p) = &a.provider
                && !rules.providers.iter().any(|x| &x.name == p)
            {
                return Err(invalid(
                    "automation",
                    &a.name,
                    &format!("unknown provider {p:?}"),
                ));
            }
            automation.push(a);
        }
        automation.append(&mut rules.automation);
        rules.automation = automation;
        Ok(rules)
    }

    /// Read and check the file at `path`.
    pub fn load(path: &Path) -> Result<Rules, ShapingError> {
        let text = std::fs::read_to_string(path).map_err(|e| ShapingError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Rules::parse(&text, &path.display().to_string())
    }

    /// The shipped defaults alone.
    pub fn defaults() -> Rules {
        // Checked by a unit test; an empty rule set if it ever failed.
        Rules::parse(DEFAULTS, "defaults").unwrap_or_default()
    }

    /// The provider whose MX suffixes match one of `mx_hosts`.
    pub fn provider_for<'a>(
        &self,
        mx_hosts: impl IntoIterator<Item = &'a str>,
    ) -> Option<&Provider> {
        let hosts: Vec<String> = mx_hosts.into_iter().map(norm).collect();
        self.providers.iter().find(|p| {
            hosts.iter().any(|h| {
                p.mx.iter().any(|m| {
                    if m.starts_with('.') {
                        h.ends_with(m.as_str())
                    } else {
                        h == m || h.ends_with(&format!(".{m}"))
                    }
                })
            })
        })
    }

    /// The domain section for `destination`: exact, then the longest
    /// `.suffix` section covering it.
    fn domain_for(&self, destination: &str) -> Option<&Limits> {
        let d = norm(destination);
        if let Some(l) = self.domains.get(&d) {
            return Some(l);
        }
        self.domains
            .iter()
            .filter(|(k, _)| k.starts_with('.') && (d.ends_with(k.as_str()) || d == k[1..]))
            .max_by_key(|(k, _)| k.len())
            .map(|(_, l)| l)
    }

    /// The limits for a message to `destination` whose MX hosts are
    /// `mx_hosts` (resolver site `site`), sent from egress pool `source`.
    pub fn plan<'a>(
        &self,
        destination: &str,
        mx_hosts: impl IntoIterator<Item = &'a str>,
        site: &str,
        source: &str,
    ) -> Plan {
        let provider = self.provider_for(mx_hosts);
        let mut limits = self.default.clone();
        if let Some(p) = provider {
            limits.overlay(&p.limits);
        }
        if let Some(d) = self.domain_for(destination) {
            limits.overlay(d);
        }
        let base = match provider {
            Some(p) => format!("provider-{}", p.name),
            None => site.to_string(),
        };
        let pair = bus::kv_token(&format!("{source}|{base}"));
        let target = base.clone();
        let key = match self.sources.get(&norm(source)) {
            Some(s) => {
                limits.overlay(s);
                pair.clone()
            }
            None => base,
        };
        limits.mx = None;
        Plan {
            provider: provider.map(|p| p.name.clone()),
            key,
            pair,
            target,
            limits,
        }
    }
}

/// The rules in force, replaced when the file changes.
#[derive(Clone)]
pub struct Shaping {
    current: Arc<RwLock<Arc<Rules>>>,
}

impl Shaping {
    /// Rules fixed for the life of the process (no file to watch).
    pub fn fixed(rules: Rules) -> Shaping {
        Shaping {
            current: Arc::new(RwLock::new(Arc::new(rules))),
        }
    }

    /// The rules in force now.
    pub fn rules(&self) -> Arc<Rules> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn replace(&self, rules: Rules) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
    }

    /// Start with `rules` (read from `path` at start), then check `path`
    /// every [`RELOAD_EVERY`] until `shutdown`; a changed file that parses
    /// replaces the rules, one that does not is logged and ignored.
    pub fn watch(path: PathBuf, rules: Rules, shutdown: tern_runtime::Shutdown) -> Shaping {
        let shaping = Shaping::fixed(rules);
        let handle = shaping.clone();
        let mut seen = stamp(&path);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(RELOAD_EVERY) => {}
                    _ = shutdown.wait() => return,
                }
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                match Rules::load(&path) {
                    Ok(r) => {
                        tracing::info!(path = %path.display(), providers = r.providers.len(), automation = r.automation.len(), "shaping file reloaded");
                        metrics::counter!("tern_shaping_reloads_total", "result" => "ok")
                            .increment(1);
                        handle.replace(r);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "shaping file not reloaded; the rules in force stay");
                        metrics::counter!("tern_shaping_reloads_total", "result" => "error")
                            .increment(1);
                    }
                }
            }
        });
        shaping
    }
}

/// What identifies a version of the file: modification time and length.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn per(count: u64, secs: u64) -> Option<Rate> {
        Some(Rate(RateLimit::PerWindow {
            count,
            period: Duration::from_secs(secs),
        }))
    }

    #[test]
    fn shipped_defaults_parse_and_match_the_big_providers() {
        let r = Rules::parse(DEFAULTS, "defaults").unwrap();
        let google = r.provider_for(["aspmx.l.google.com."]).unwrap();
        assert_eq!(google.name, "google");
        assert_eq!(
            r.provider_for(["alt1.aspmx.l.google.com"]).unwrap().name,
            "google"
        );
        assert_eq!(
            r.provider_for(["contoso-com.mail.protection.outlook.com"])
                .unwrap()
                .name,
            "microsoft"
        );
        assert_eq!(
            r.provider_for(["mta5.am0.yahoodns.net"]).unwrap().name,
            "yahoo"
        );
        assert!(r.provider_for(["mx.example.org"]).is_none());
        // Not fooled by a look-alike that only ends in the same letters.
        assert!(r.provider_for(["mx.notgoogle.com"]).is_none());
        assert!(r.automation.iter().any(|a| {
            a.provider.as_deref() == Some("google")
                && a.pattern
                    .0
                    .is_match("4.7.28 Our system has detected an unusual rate")
        }));
    }

    #[test]
    fn layers_most_specific_wins_and_providers_share_a_key() {
        let text = r#"
[default]
connection_limit = 10
rate = "100/s"

[provider.google]
mx = [".google.com"]
connection_limit = 5
messages_per_connection = 20

[domain."bigcorp.example"]
rate = "10/s"
tls = "required"

[source.warm]
connection_rate = "2/s"
"#;
        let r = Rules::parse(text, "t.toml").unwrap();
        let p = r.plan(
            "bigcorp.example",
            ["aspmx.l.google.com"],
            "aspmx.l.google.com",
            "default",
        );
        assert_eq!(p.provider.as_deref(), Some("google"));
        assert_eq!(p.key, "provider-google");
        assert_eq!(p.limits.connection_limit, Some(5));
        assert_eq!(p.limits.messages_per_connection, Some(20));
        assert_eq!(p.limits.rate, per(10, 1));
        assert_eq!(p.limits.tls, Some(Tls(TlsPolicy::Required)));
        // Another Workspace domain: Google's limits, the same counters.
        let q = r.plan("small.example", ["alt2.aspmx.l.google.com"], "x", "default");
        assert_eq!(q.key, p.key);
        assert_eq!(q.limits.rate, per(100, 1));
        // A source section: its own share, its own values on top.
        let w = r.plan("small.example", ["aspmx.l.google.com"], "x", "warm");
        assert_eq!(w.key, "warm_provider-google");
        assert_eq!(w.limits.connection_rate, per(2, 1));
        // No provider: the site is the key, the defaults apply.
        let o = r.plan(
            "other.example",
            ["mx.other.example"],
            "mx.other.example",
            "default",
        );
        assert_eq!(o.key, "mx.other.example");
        assert_eq!(o.limits.connection_limit, Some(10));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_line() {
        let e = Rules::parse(
            "[default]\nconnection_limit = 3\nconection_rate = \"1/s\"\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 3") && e.contains("conection_rate"), "{e}");
        let e = Rules::parse("[provider.x]\nmx = [\"mx.x\"]\nrate = \"fast\"\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("fast"), "{e}");
        let e = Rules::parse("\n\n[provider.y]\nrate = \"1/s\"\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("mx"), "{e}");
        let e = Rules::parse("colour = 1\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("colour"), "{e}");
        let e = Rules::parse(
            "[[automation]]\nname = \"a\"\nmatch = \"x\"\naction = \"rate\"\nduration = \"1m\"\n",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs rate"), "{e}");
    }

    #[test]
    fn triggers_parse() {
        assert_eq!(Trigger::parse("once"), Some(Trigger::Once));
        assert_eq!(
            Trigger::parse("3 in 5m"),
            Some(Trigger::Threshold {
                count: 3,
                within: Duration::from_secs(300)
            })
        );
        assert_eq!(Trigger::parse("3 in"), None);
        assert_eq!(Trigger::parse("0 in 5m"), None);
    }

    #[test]
    fn a_shipped_provider_takes_limits_without_its_mx_list() {
        let r = Rules::parse("[provider.google]\nconnection_limit = 7\n", "s.toml").unwrap();
        let p = r.plan("gmail.com", ["gmail-smtp-in.l.google.com"], "x", "default");
        assert_eq!(p.provider.as_deref(), Some("google"));
        assert_eq!(p.limits.connection_limit, Some(7));
        assert_eq!(r.providers.len(), 3);
    }

    #[test]
    fn defaults_can_be_left_out() {
        let r = Rules::parse("include_defaults = false\n", "s.toml").unwrap();
        assert!(r.providers.is_empty() && r.automation.is_empty());
    }
}
