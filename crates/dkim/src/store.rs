//! The key directory: every key in it loaded as one [`KeySet`], and a
//! [`KeyStore`] that swaps in a new set when the directory changes (the
//! same stamp-and-compare scheme as ingress's TLS certificate reload).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::DkimError;
use crate::key::{Algorithm, KeyName, SigningKey};

/// Every key in the directory, by domain.
#[derive(Debug, Default)]
pub struct KeySet {
    /// Domain → its keys, RSA before Ed25519, then by selector.
    domains: BTreeMap<String, Vec<SigningKey>>,
}

/// The key files of a directory: `(name, path)`, skipping hidden entries
/// (a mounted Secret's `..data`) and names that are not keys (logged).
fn key_files(dir: &Path) -> Result<Vec<(KeyName, PathBuf)>, DkimError> {
    let io = |source| DkimError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if file.starts_with('.') || entry.path().is_dir() {
            continue;
        }
        match KeyName::parse_file_name(file) {
            Some(name) => out.push((name, entry.path())),
            None => tracing::warn!(
                file,
                dir = %dir.display(),
                "not a DKIM key file name (expected <selector>._domainkey.<domain>.<rsa|ed25519>.pem); ignored"
            ),
        }
    }
    out.sort();
    Ok(out)
}

impl KeySet {
    /// Load every key in `dir`. A missing directory is an empty set; an
    /// unreadable or malformed key file is an error naming it, and so is a
    /// domain in `required` without any key. `expiry` (seconds) sets `x=`.
    pub fn load(dir: &Path, required: &[String], expiry: Option<u64>) -> Result<Self, DkimError> {
        let files = if dir.exists() {
            key_files(dir)?
        } else {
            Vec::new()
        };
        let mut set = KeySet::default();
        let mut by_selector: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
        for (name, path) in files {
            let id = (name.domain.clone(), name.selector.clone());
            if let Some(first) = by_selector.get(&id) {
                return Err(DkimError::SelectorClash {
                    first: first.clone(),
                    second: path,
                });
            }
            by_selector.insert(id, path.clone());
            let key = SigningKey::load(&path, name, expiry)?;
            set.domains
                .entry(key.name.domain.clone())
                .or_default()
                .push(key);
        }
        for keys in set.domains.values_mut() {
            keys.sort_by(|a, b| {
                (a.name.algorithm, &a.name.selector).cmp(&(b.name.algorithm, &b.name.selector))
            });
        }
        for domain in required {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            if !set.domains.contains_key(&domain) {
                let example = KeyName::new(&domain, "SELECTOR", Algorithm::Rsa)?;
                return Err(DkimError::MissingKey {
                    expected: dir.join(example.file_name()),
                    domain,
                });
            }
        }
        Ok(set)
    }

    /// No keys at all: signing is off.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Every key, by domain, then algorithm and selector.
    pub fn keys(&self) -> impl Iterator<Item = &SigningKey> {
        self.domains.values().flatten()
    }

    /// The keys of the most specific domain that is `from_domain` or one of
    /// its parents; empty if there is none.
    pub fn keys_for(&self, from_domain: &str) -> &[SigningKey] {
        let mut d = from_domain.trim_end_matches('.');
        loop {
            if let Some(keys) = self.domains.get(d) {
                return keys;
            }
            match d.split_once('.') {
                Some((_, parent)) if !parent.is_empty() => d = parent,
                _ => return &[],
            }
        }
    }
}

/// Names, modification times and sizes of the directory's entries.
type Stamp = Option<Vec<(String, SystemTime, u64)>>;

fn stamp(dir: &Path) -> Stamp {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).ok()? {
        let entry = entry.ok()?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // Follows symlinks: a Secret's files point into `..data`, which is
        // swapped atomically on update.
        let m = std::fs::metadata(entry.path()).ok()?;
        out.push((name, m.modified().ok()?, m.len()));
    }
    out.sort();
    Some(out)
}

/// The current key set, re-read when the directory changes.
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    required: Vec<String>,
    expiry: Option<u64>,
    current: RwLock<Arc<KeySet>>,
    stamp: RwLock<Stamp>,
}

impl KeyStore {
    /// Load `dir` (see [`KeySet::load`]); errors here are start-up errors.
    pub fn open(dir: &Path, required: &[String], expiry: Option<u64>) -> Result<Self, DkimError> {
        let stamp = stamp(dir);
        let set = KeySet::load(dir, required, expiry)?;
        Ok(KeyStore {
            dir: dir.to_path_buf(),
            required: required.to_vec(),
            expiry,
            current: RwLock::new(Arc::new(set)),
            stamp: RwLock::new(stamp),
        })
    }

    /// The key directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The keys in use now.
    pub fn current(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reload if the directory changed. `None`: unchanged; `Some(Ok(n))`:
    /// now `n` keys in use; `Some(Err(_))`: changed but not loadable (the old
    /// set stays, and the next call tries again, e.g. after a half-written file).
    pub fn reload_if_changed(&self) -> Option<Result<usize, DkimError>> {
        let now = stamp(&self.dir);
        let old = self.stamp.read().ok().map(|s| s.clone())?;
        if now == old {
            return None;
        }
        match KeySet::load(&self.dir, &self.required, self.expiry) {
            Ok(set) => {
                let n = set.keys().count();
                if let (Ok(mut cur), Ok(mut st)) = (self.current.write(), self.stamp.write()) {
                    *cur = Arc::new(set);
                    *st = now;
                }
                Some(Ok(n))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// `tern dkim keygen`: generate a key for `domain`/`selector`, write it
/// into `dir` (mode 0600, never overwriting) and return its path and the DNS
/// record to publish. A selector already used by the other algorithm is
/// refused: one selector is one DNS record.
pub fn keygen(
    dir: &Path,
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    bits: usize,
) -> Result<(PathBuf, crate::DnsRecord), DkimError> {
    let name = KeyName::new(domain, selector, algorithm)?;
    for other in [Algorithm::Rsa, Algorithm::Ed25519] {
        let taken = dir.join(
            KeyName {
                algorithm: other,
                ..name.clone()
            }
            .file_name(),
        );
        if taken.exists() {
            return Err(DkimError::Exists(taken));
        }
    }
    let pem = crate::key::generate(algorithm, bits)?;
    // Parse before writing: what is written is known to load.
    let key = SigningKey::from_pem(
        &dir.join(name.file_name()),
        name.clone(),
        pem.as_bytes(),
        None,
    )?;
    let path = crate::key::write_key(dir, &name, &pem)?;
    Ok((path, key.dns_record()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{generate, write_key};

    fn add(dir: &Path, domain: &str, selector: &str, alg: Algorithm) {
        let name = KeyName::new(domain, selector, alg).unwrap();
        write_key(dir, &name, &generate(alg, 2048).unwrap()).unwrap();
    }

    #[test]
    fn keys_for_a_from_domain_or_its_parent() {
        let dir = tempfile::tempdir().unwrap();
        add(dir.path(), "example.com", "e1", Algorithm::Ed25519);
        add(dir.path(), "example.com", "r1", Algorithm::Rsa);
        add(dir.path(), "news.example.com", "n1", Algorithm::Ed25519);
        std::fs::write(dir.path().join("README"), "not a key").unwrap();
        let set = KeySet::load(dir.path(), &["example.com".into()], None).unwrap();
        let names = |d: &str| -> Vec<String> {
            set.keys_for(d)
                .iter()
                .map(|k| k.name.selector.clone())
                .collect()
        };
        assert_eq!(names("example.com"), ["r1", "e1"]);
        assert_eq!(names("a.b.example.com"), ["r1", "e1"]);
        assert_eq!(names("news.example.com"), ["n1"]);
        assert!(names("example.org").is_empty());
        assert!(names("com").is_empty());
    }

    #[test]
    fn start_up_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = KeySet::load(dir.path(), &["example.com".into()], None).unwrap_err();
        assert!(
            err.to_string()
                .contains("SELECTOR._domainkey.example.com.rsa.pem"),
            "{err}"
        );
        let bad = dir.path().join("s._domainkey.example.com.rsa.pem");
        std::fs::write(
            &bad,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = KeySet::load(dir.path(), &[], None).unwrap_err();
        assert!(err.to_string().contains(bad.to_str().unwrap()), "{err}");
        std::fs::remove_file(&bad).unwrap();
        add(dir.path(), "example.com", "s", Algorithm::Rsa);
        add(dir.path(), "example.com", "s", Algorithm::Ed25519);
        let err = KeySet::load(dir.path(), &[], None).unwrap_err();
        assert!(matches!(err, DkimError::SelectorClash { .. }), "{err}");
    }

    #[test]
    fn keygen_refuses_a_taken_selector_and_writes_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (path, rec) = keygen(dir.path(), "Example.com", "s1", Algorithm::Ed25519, 0).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(rec.name, "s1._domainkey.example.com.");
        let err = keygen(dir.path(), "example.com", "s1", Algorithm::Rsa, 2048).unwrap_err();
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
        let set = KeySet::load(dir.path(), &["example.com".into()], None).unwrap();
        assert!(set.keys().next().unwrap().dns_record() == rec);
    }

    #[test]
    fn store_reloads_when_the_directory_changes_and_keeps_the_old_set_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path(), &[], None).unwrap();
        assert!(store.current().is_empty());
        assert!(store.reload_if_changed().is_none());
        add(dir.path(), "example.com", "s1", Algorithm::Ed25519);
        assert_eq!(store.reload_if_changed().map(|r| r.unwrap()), Some(1));
        assert_eq!(store.current().keys_for("example.com").len(), 1);
        std::fs::write(
            dir.path().join("s2._domainkey.example.com.rsa.pem"),
            "garbage",
        )
        .unwrap();
        assert!(matches!(store.reload_if_changed(), Some(Err(_))));
        assert_eq!(store.current().keys_for("example.com").len(), 1);
    }
}
