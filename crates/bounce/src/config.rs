//! The configuration keys of the feedback loop, read by every service that
//! classifies or makes/verifies tokens (validated once at start).

use std::path::PathBuf;

use tern_runtime::config::{ConfigError, Key, Source};

use crate::rules::Rules;
use crate::token::Secret;

/// `TERN_BOUNCE_RULES_FILE`.
pub const RULES_FILE: Key<Option<PathBuf>> = Key::new(
    "bounce_rules_file",
    "",
    "bounce classification rules (TOML, replaces the built-in rules); empty: built-in",
);

/// `TERN_SECRET_FILE`.
pub const SECRET_FILE: Key<Option<PathBuf>> = Key::new(
    "secret_file",
    "",
    "cluster secret (>= 32 bytes) that signs VERP return paths and unsubscribe tokens; empty: neither is made",
);

/// The feedback loop's settings.
#[derive(Debug, Clone)]
pub struct BounceConfig {
    /// The classification rules: the file's, or the built-in ones.
    pub rules: Rules,
    /// The cluster secret, when configured.
    pub secret: Option<Secret>,
}

impl BounceConfig {
    /// Read both keys; a rules file that does not parse, or a secret file
    /// that cannot be read or is too short, is an error naming the key.
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let rules_file = src.get(&RULES_FILE)?;
        let rules = Rules::load(rules_file.as_deref()).map_err(|e| ConfigError::File {
            path: rules_file.clone().unwrap_or_default(),
            message: format!("TERN_BOUNCE_RULES_FILE: {}", e.detail()),
        })?;
        let secret = match src.get(&SECRET_FILE)? {
            None => None,
            Some(path) => Some(Secret::load(&path).map_err(|e| ConfigError::File {
                path,
                message: format!("TERN_SECRET_FILE: {}", e.detail()),
            })?),
        };
        Ok(BounceConfig { rules, secret })
    }
}
