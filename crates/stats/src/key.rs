//! Bucket keys: pure, one-to-one encodings of tenant, campaign and batch
//! names into the key alphabet of NATS KV (`[-/_=.a-zA-Z0-9]`).

/// Milliseconds in one hour bucket.
pub const HOUR_MS: u64 = 3_600_000;

/// `s` as one key token: ASCII letters, digits and `-` stay, every other
/// byte becomes `_` and two lower-case hex digits, so distinct names never
/// share a token and no token contains the `.` separator. The empty name is
/// `_` alone, which no escape produces.
pub fn token(s: &str) -> String {
    if s.is_empty() {
        return "_".to_string();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// The hour bucket (hours since the Unix epoch) of a time in Unix ms.
pub fn hour_of(unix_ms: u64) -> u64 {
    unix_ms / HOUR_MS
}

/// The counter key of one tenant, campaign and hour.
pub fn campaign_key(tenant: &str, campaign: &str, hour: u64) -> String {
    format!("c.{}.{}.{hour}", token(tenant), token(campaign))
}

/// The lifetime counter key of one tenant and campaign: what the complaint
/// and hard-bounce rates and the circuit breaker are computed from.
pub fn totals_key(tenant: &str, campaign: &str) -> String {
    format!("t.{}", pair(tenant, campaign))
}

/// `tenant` and `campaign` as two tokens joined by `.`: one to one, and
/// valid both as a KV key and as NATS subject tokens.
pub fn pair(tenant: &str, campaign: &str) -> String {
    format!("{}.{}", token(tenant), token(campaign))
}

/// The counter key of one batch of a tenant.
pub fn batch_key(tenant: &str, batch_id: &str) -> String {
    format!("b.{}.{}", token(tenant), token(batch_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_one_to_one_and_key_safe() {
        let names = ["", "_", "a.b", "a_2eb", "A-b", "ä", "a b", "x/y"];
        let tokens: Vec<String> = names.iter().map(|n| token(n)).collect();
        for (i, t) in tokens.iter().enumerate() {
            assert!(
                t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{t}"
            );
            for (j, u) in tokens.iter().enumerate() {
                assert_eq!(i == j, t == u, "{} vs {}", names[i], names[j]);
            }
        }
    }

    #[test]
    fn keys_separate_tenants() {
        assert_ne!(campaign_key("a.b", "c", 1), campaign_key("a", "b.c", 1));
        assert_eq!(campaign_key("acme", "spring", 7), "c.acme.spring.7");
        assert_eq!(totals_key("acme", "spring"), "t.acme.spring");
        assert_ne!(totals_key("a.b", "c"), totals_key("a", "b.c"));
        assert_eq!(hour_of(HOUR_MS * 5 + 1), 5);
    }
}
