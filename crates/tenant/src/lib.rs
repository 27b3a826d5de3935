//! The tenant registry of bulk sending (issue 16): tenants, the domains they
//! own and their API keys, in a NATS JetStream key-value bucket that every
//! replica of every service reaches (why there: `README.md`).

#![forbid(unsafe_code)]

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::TryStreamExt;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The KV bucket holding the registry.
pub const BUCKET: &str = "tern-tenants";
/// What every API key starts with, so a leaked one is recognisable.
pub const KEY_PREFIX: &str = "tern_";
/// Random bytes in an API key's secret part.
const SECRET_BYTES: usize = 24;
/// Compare-and-set retries before giving up on a contended counter.
const CAS_TRIES: usize = 20;

/// A tenant: a customer that sends through the injection API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Numeric id (1, 2, ...), carried in VERP and unsubscribe tokens.
    pub id: u32,
    /// Unique name.
    pub name: String,
    /// Sending domains it owns (lower case); subdomains are included.
    pub domains: Vec<String>,
    /// The bounce domain of its VERP return paths; `None`: the cluster's.
    pub bounce_domain: Option<String>,
    /// Base URL of its unsubscribe links; `None`: the cluster's.
    pub public_url: Option<String>,
    /// Whether messages get List-Unsubscribe when a request does not say.
    pub unsubscribe: bool,
}

impl Tenant {
    /// The tenant may send from `domain`: one it owns or a subdomain of one.
    pub fn owns(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        self.domains.iter().any(|d| {
            domain == *d
                || domain
                    .strip_suffix(d.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        })
    }
}

/// What `tern tenant add` sets.
#[derive(Debug, Clone, Default)]
pub struct NewTenant {
    /// Unique name (see [`valid_name`]).
    pub name: String,
    /// At least one sending domain.
    pub domains: Vec<String>,
    /// Per-tenant bounce domain.
    pub bounce_domain: Option<String>,
    /// Per-tenant unsubscribe base URL.
    pub public_url: Option<String>,
    /// List-Unsubscribe by default.
    pub unsubscribe: bool,
}

/// A stored API key (the secret itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// The key id (a ULID), the middle part of the key.
    pub id: String,
    /// The tenant's name.
    pub tenant: String,
    /// SHA-256 of the whole key, hex.
    pub sha256: String,
    /// Creation time, Unix milliseconds.
    pub created_unix_ms: u64,
}

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// A tenant name outside `[a-z0-9][a-z0-9-]{0,62}`.
    #[error(
        "invalid tenant name {0:?}: use 1-63 of a-z, 0-9 and '-', starting with a letter or digit"
    )]
    InvalidName(String),
    /// A domain that is not a host name.
    #[error("invalid domain {0:?}")]
    InvalidDomain(String),
    /// `tenant add` without `--domain`.
    #[error("a tenant needs at least one --domain")]
    NoDomain,
    /// The tenant name is taken.
    #[error("tenant {0:?} exists")]
    Exists(String),
    /// The domain belongs to a tenant already.
    #[error("domain {domain:?} belongs to tenant {owner:?}")]
    DomainTaken {
        /// The domain.
        domain: String,
        /// Its owner.
        owner: String,
    },
    /// No tenant of that name.
    #[error("no tenant {0:?}")]
    NoSuchTenant(String),
    /// No API key with that id.
    #[error("no API key {0:?}")]
    NoSuchKey(String),
    /// The bearer token is not a valid, current API key.
    #[error("invalid API key")]
    BadKey,
    /// A counter stayed contended through every compare-and-set retry.
    #[error("{0}: too much contention, try again")]
    Contended(&'static str),
    /// A stored value does not parse (written by another version?).
    #[error("stored {key}: {source}")]
    Corrupt {
        /// The KV key.
        key: String,
        /// Why it does not parse.
        source: serde_json::Error,
    },
    /// NATS failed or could not be reached.
    #[error("tenant registry ({op}): {message}")]
    Store {
        /// What was being done.
        op: &'static str,
        /// NATS's error.
        message: String,
    },
}

fn store_err(op: &'static str) -> impl FnOnce(Box<dyn std::error::Error>) -> TenantError {
    move |e| TenantError::Store {
        op,
        message: e.to_string(),
    }
}

/// A tenant name: 1-63 of `a-z0-9-`, not starting with `-` (a KV key token).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A domain, lower-cased, if it is a plausible host name (RFC 1035 §2.3.1
/// letters, digits, hyphens; labels of 1-63 octets).
pub fn normalize_domain(domain: &str) -> Result<String, TenantError> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        });
    if ok {
        Ok(d)
    } else {
        Err(TenantError::InvalidDomain(domain.to_string()))
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Equality in time independent of where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key id inside a bearer token `tern_<id>_<secret>`.
fn key_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let ok = id.len() == 26 && id.bytes().all(|c| c.is_ascii_alphanumeric());
    (ok && secret.len() == SECRET_BYTES * 2).then_some(id)
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Names for the numeric ids in VERP and unsubscribe tokens
/// ([`Registry::names`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// Tenant names by id.
    pub tenants: std::collections::HashMap<u32, String>,
    /// Campaign tags by (tenant id, campaign id).
    pub campaigns: std::collections::HashMap<(u32, u32), String>,
}

/// The campaign tag a `campaign.` key spells in hex.
fn unhex(tag: &str) -> Option<String> {
    if !tag.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..tag.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(tag.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// The registry: a handle on the bucket. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    kv: kv::Store,
}

impl Registry {
    /// Open the bucket, creating it with `replicas` copies if missing.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, TenantError> {
        if let Ok(kv) = js.get_key_value(BUCKET).await {
            return Ok(Registry { kv });
        }
        let kv = js
            .create_key_value(kv::Config {
                bucket: BUCKET.into(),
                history: 1,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas.max(1),
                ..Default::default()
            })
            .await
            .map_err(|e| store_err("create bucket")(Box::new(e)))?;
        Ok(Registry { kv })
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
    ) -> Result<Option<T>, TenantError> {
        let Some(bytes) = self
            .kv
            .get(key)
            .await
            .map_err(|e| store_err("get")(Box::new(e)))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| TenantError::Corrupt {
                key: key.to_string(),
                source,
            })
    }

    fn json<T: Serialize>(value: &T) -> Bytes {
        // Our own plain structs always serialize.
        Bytes::from(serde_json::to_vec(value).unwrap_or_default())
    }

    /// The next value of the counter at `key` (1 for the first).
    async fn next_id(&self, key: &str, what: &'static str) -> Result<u32, TenantError> {
        for _ in 0..CAS_TRIES {
            let entry = self
                .kv
                .entry(key)
                .await
                .map_err(|e| store_err("read counter")(Box::new(e)))?;
            let (current, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse::<u32>().ok())
                        .unwrap_or(0),
                    e.revision,
                ),
                Some(e) => (0, e.revision),
                None => (0, 0),
            };
            let next = current + 1;
            let value = Bytes::from(next.to_string());
            let written = if revision == 0 {
                self.kv.create(key, value).await.is_ok()
            } else {
                self.kv.update(key, value, revision).await.is_ok()
            };
            if written {
                return Ok(next);
            }
        }
        Err(TenantError::Contended(what))
    }

    /// Add a tenant; its domains must be free. On a taken domain nothing of
    /// the tenant stays behind.
    pub async fn add_tenant(&self, new: NewTenant) -> Result<Tenant, TenantError> {
        if !valid_name(&new.name) {
            return Err(TenantError::InvalidName(new.name));
        }
        if new.domains.is_empty() {
            return Err(TenantError::NoDomain);
        }
        let mut domains = Vec::new();
        for d in &new.domains {
            let d = normalize_domain(d)?;
            if !domains.contains(&d) {
                domains.push(d);
            }
        }
        let bounce_domain = new
            .bounce_domain
            .as_deref()
            .map(normalize_domain)
            .transpose()?;
        let tkey = format!("tenant.{}", new.name);
        if self.get_json::<Tenant>(&tkey).await?.is_some() {
            return Err(TenantError::Exists(new.name));
        }
        let mut claimed = Vec::new();
        for d in &domains {
            let dkey = format!("domain.{d}");
            if self
                .kv
                .create(&dkey, Bytes::from(new.name.clone()))
                .await
                .is_err()
            {
                let owner = self
                    .kv
                    .get(&dkey)
                    .await
                    .ok()
                    .flatten()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                self.release(&claimed).await;
                return Err(TenantError::DomainTaken {
                    domain: d.clone(),
                    owner,
                });
            }
            claimed.push(dkey);
        }
        let tenant = Tenant {
            id: 0,
            name: new.name.clone(),
            domains,
            bounce_domain,
            public_url: new.public_url.map(|u| u.trim_end_matches('/').to_string()),
            unsubscribe: new.unsubscribe,
        };
        let result = async {
            let id = self.next_id("seq.tenant", "tenant id").await?;
            let tenant = Tenant { id, ..tenant };
            self.kv
                .create(&tkey, Self::json(&tenant))
                .await
                .map_err(|_| TenantError::Exists(new.name.clone()))?;
            Ok(tenant)
        }
        .await;
        if result.is_err() {
            self.release(&claimed).await;
        }
        result
    }

    async fn release(&self, keys: &[String]) {
        for k in keys {
            let _ = self.kv.purge(k).await;
        }
    }

    /// Every tenant, by name.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, TenantError> {
        let mut out = Vec::new();
        for key in self.keys_with_prefix("tenant.").await? {
            if let Some(t) = self.get_json::<Tenant>(&key).await? {
                out.push(t);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn keys_with_prefix(&self, prefix: &str) -> Result<Vec<String>, TenantError> {
        let keys = match self.kv.keys().await {
            Ok(k) => k,
            Err(e) => return Err(store_err("list keys")(Box::new(e))),
        };
        let all: Vec<String> = keys
            .try_collect()
            .await
            .map_err(|e| store_err("list keys")(Box::new(e)))?;
        Ok(all.into_iter().filter(|k| k.starts_with(prefix)).collect())
    }

    /// The tenant called `name`.
    pub async fn tenant(&self, name: &str) -> Result<Tenant, TenantError> {
        if !valid_name(name) {
            return Err(TenantError::NoSuchTenant(name.to_string()));
        }
        self.get_json(&format!("tenant.{name}"))
            .await?
            .ok_or_else(|| TenantError::NoSuchTenant(name.to_string()))
    }

    /// Make an API key for `tenant`: the record and the key, which is shown
    /// once and never stored.
    pub async fn create_key(&self, tenant: &str) -> Result<(ApiKey, String), TenantError> {
        let tenant = self.tenant(tenant).await?;
        let id = ulid::Ulid::new().to_string();
        let mut secret = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut secret);
        let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
        let token = format!("{KEY_PREFIX}{id}_{hex}");
        let key = ApiKey {
            id: id.clone(),
            tenant: tenant.name,
            sha256: sha256_hex(token.as_bytes()),
            created_unix_ms: now_unix_ms(),
        };
        self.kv
            .create(format!("key.{id}"), Self::json(&key))
            .await
            .map_err(|e| store_err("create key")(Box::new(e)))?;
        Ok((key, token))
    }

    /// Delete the key `id`: from now on it authenticates nobody.
    pub async fn revoke_key(&self, id: &str) -> Result<ApiKey, TenantError> {
        let ok = id.len() == 26 && id.bytes().all(|c| c.is_ascii_alphanumeric());
        let kkey = format!("key.{}", id.to_ascii_uppercase());
        let key = match ok {
            true => self.get_json::<ApiKey>(&kkey).await?,
            false => None,
        }
        .ok_or_else(|| TenantError::NoSuchKey(id.to_string()))?;
        self.kv
            .purge(&kkey)
            .await
            .map_err(|e| store_err("revoke key")(Box::new(e)))?;
        Ok(key)
    }

    /// The keys of `tenant`, oldest first.
    pub async fn list_keys(&self, tenant: &str) -> Result<Vec<ApiKey>, TenantError> {
        self.tenant(tenant).await?;
        let mut out = Vec::new();
        for k in self.keys_with_prefix("key.").await? {
            if let Some(key) = self.get_json::<ApiKey>(&k).await?
                && key.tenant == tenant
            {
                out.push(key);
            }
        }
        out.sort_by_key(|k| k.created_unix_ms);
        Ok(out)
    }

    /// The tenant a bearer token belongs to; [`TenantError::BadKey`] for a
    /// malformed, unknown, revoked or altered key.
    pub async fn authenticate(&self, token: &str) -> Result<Tenant, TenantError> {
        let id = key_id(token.trim()).ok_or(TenantError::BadKey)?;
        let key = self
            .get_json::<ApiKey>(&format!("key.{id}"))
            .await?
            .ok_or(TenantError::BadKey)?;
        let given = sha256_hex(token.trim().as_bytes());
        if !constant_time_eq(given.as_bytes(), key.sha256.as_bytes()) {
            return Err(TenantError::BadKey);
        }
        match self.tenant(&key.tenant).await {
            Err(TenantError::NoSuchTenant(_)) => Err(TenantError::BadKey),
            other => other,
        }
    }

    /// A stream of changes to the registry (new tenants, keys, campaigns),
    /// for caches of [`Registry::names`] that reload when something changed.
    pub async fn changes(&self) -> Result<kv::Watch, TenantError> {
        self.kv
            .watch_all()
            .await
            .map_err(|e| store_err("watch")(Box::new(e)))
    }

    /// Every id the tokens carry with its name: tenants by id, campaigns by
    /// (tenant id, campaign id). For the unsubscribe endpoint and late-bounce
    /// matching, which turn a token's ids back into list names.
    pub async fn names(&self) -> Result<Names, TenantError> {
        let mut names = Names::default();
        for t in self.list_tenants().await? {
            names.tenants.insert(t.id, t.name);
        }
        for key in self.keys_with_prefix("campaign.").await? {
            let Some((tenant, tag)) = key["campaign.".len()..].split_once('.') else {
                continue;
            };
            let (Ok(tenant), Some(name)) = (tenant.parse::<u32>(), unhex(tag)) else {
                continue;
            };
            let Some(v) = self
                .kv
                .get(&key)
                .await
                .map_err(|e| store_err("campaign names")(Box::new(e)))?
            else {
                continue;
            };
            if let Some(id) = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()) {
                names.campaigns.insert((tenant, id), name);
            }
        }
        Ok(names)
    }

    /// The numeric id of `campaign` for the tenant with id `tenant`, given
    /// on first use (0 for no campaign).
    pub async fn campaign_id(&self, tenant: u32, campaign: &str) -> Result<u32, TenantError> {
        if campaign.is_empty() {
            return Ok(0);
        }
        let tag: String = campaign.bytes().map(|b| format!("{b:02x}")).collect();
        let key = format!("campaign.{tenant}.{tag}");
        for _ in 0..CAS_TRIES {
            if let Some(v) = self
                .kv
                .get(&key)
                .await
                .map_err(|e| store_err("campaign id")(Box::new(e)))?
            {
                return std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| TenantError::Store {
                        op: "campaign id",
                        message: format!("{key} is not a number"),
                    });
            }
            let id = self
                .next_id(&format!("seq.campaign.{tenant}"), "campaign id")
                .await?;
            if self
                .kv
                .create(&key, Bytes::from(id.to_string()))
                .await
                .is_ok()
            {
                return Ok(id);
            }
            // Another replica named it first: read theirs.
        }
        Err(TenantError::Contended("campaign id"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_domains() {
        assert!(valid_name("acme"));
        assert!(valid_name("a-1"));
        assert!(!valid_name("-a"));
        assert!(!valid_name("Acme"));
        assert!(!valid_name("a.b"));
        assert!(!valid_name(""));
        assert_eq!(
            normalize_domain("Example.COM.").ok().as_deref(),
            Some("example.com")
        );
        assert!(normalize_domain("a..b").is_err());
        assert!(normalize_domain("-a.b").is_err());
        assert!(normalize_domain("a b").is_err());
    }

    #[test]
    fn ownership_includes_subdomains_only() {
        let t = Tenant {
            id: 1,
            name: "acme".into(),
            domains: vec!["acme.test".into()],
            bounce_domain: None,
            public_url: None,
            unsubscribe: false,
        };
        assert!(t.owns("acme.test"));
        assert!(t.owns("News.Acme.Test"));
        assert!(!t.owns("evilacme.test"));
        assert!(!t.owns("acme.test.evil"));
    }

    #[test]
    fn key_ids_parse_only_from_well_formed_tokens() {
        let id = "01JABCDEFGHJKMNPQRSTVWXYZ0";
        let good = format!("tern_{id}_{}", "ab".repeat(SECRET_BYTES));
        assert_eq!(key_id(&good), Some(id));
        assert_eq!(key_id(&good[1..]), None);
        assert_eq!(key_id(&format!("tern_{id}_abc")), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
