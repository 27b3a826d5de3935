//! `/v1/suppressions`: a tenant's own suppression list over the API (issue
//! 17), the same entries `tern suppress` manages. A key sees and changes
//! only its own tenant's entries; the system list is the operator's.

use serde::Serialize;
use serde_json::{Map, Value};
use tern_bounce::suppress::{Entry, Reason};
use tern_tenant::Tenant;

use super::core::{Api, Failure, Kind};
use super::request::valid_address;

/// Entries one `POST` may add (more: `422`).
pub(crate) const MAX_PER_CALL: usize = 10_000;

/// What a `POST` asks to add, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Addition {
    pub(crate) email: String,
    pub(crate) campaign: String,
    pub(crate) reason: Reason,
}

/// One entry as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct Shown {
    email: String,
    /// Empty: all of the tenant's mail.
    campaign: String,
    reason: &'static str,
    /// RFC 3339.
    at: String,
    source: String,
}

/// `GET`'s answer.
#[derive(Debug, Serialize)]
pub(crate) struct Listing {
    suppressions: Vec<Shown>,
}

/// `POST`'s answer.
#[derive(Debug, Serialize)]
pub(crate) struct Added {
    added: usize,
}

/// `DELETE`'s answer.
#[derive(Debug, Serialize)]
pub(crate) struct Deleted {
    deleted: String,
}

fn bad(field: &str, message: &str) -> Failure {
    Failure::new(Kind::BadField, field, message)
}

/// A `POST` body, `{"suppressions": [{"email", "campaign"?, "reason"?}]}`:
/// every entry is checked before any is stored, and an error names its field.
pub(crate) fn parse(body: &[u8]) -> Result<Vec<Addition>, Failure> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad("body", &e.to_string()))?;
    let Value::Object(top) = v else {
        return Err(bad("body", "must be a JSON object"));
    };
    if let Some(k) = top.keys().find(|k| *k != "suppressions") {
        return Err(bad(k, "unknown field"));
    }
    let Some(Value::Array(items)) = top.get("suppressions") else {
        return Err(bad("suppressions", "required: an array of entries"));
    };
    if items.is_empty() {
        return Err(bad("suppressions", "at least one entry"));
    }
    if items.len() > MAX_PER_CALL {
        return Err(Failure::new(
            Kind::TooManyRecipients,
            "suppressions",
            format!("at most {MAX_PER_CALL} entries per call"),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(o) => addition(i, o),
            _ => Err(bad(&format!("suppressions[{i}]"), "must be an object")),
        })
        .collect()
}

fn addition(i: usize, o: &Map<String, Value>) -> Result<Addition, Failure> {
    let field = |name: &str| format!("suppressions[{i}].{name}");
    if let Some(k) = o
        .keys()
        .find(|k| !matches!(k.as_str(), "email" | "campaign" | "reason"))
    {
        return Err(bad(&field(k), "unknown field"));
    }
    let text = |name: &str| match o.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(bad(&field(name), "must be a string")),
    };
    let email = text("email")?.ok_or_else(|| bad(&field("email"), "required"))?;
    if !valid_address(&email) {
        return Err(bad(&field("email"), "not a valid address"));
    }
    let reason = match text("reason")? {
        None => Reason::Manual,
        Some(r) => Reason::parse(&r).ok_or_else(|| {
            bad(
                &field("reason"),
                "one of hard_bounce, complaint, unsubscribe, manual",
            )
        })?,
    };
    Ok(Addition {
        email,
        campaign: text("campaign")?.unwrap_or_default(),
        reason,
    })
}

/// Store every addition for `tenant`. Adding is idempotent, so after a
/// `503` (storage failed part-way) the same call can simply be repeated.
pub(crate) async fn add(api: &Api, tenant: &Tenant, body: &[u8]) -> Result<Added, Failure> {
    let now = tern_runtime::now_unix_ms();
    let entries: Vec<Entry> = parse(body)?
        .into_iter()
        .map(|a| Entry {
            tenant: tenant.name.clone(),
            campaign: a.campaign,
            address: a.email,
            reason: a.reason,
            at_unix_ms: now,
            source: "api".into(),
        })
        .collect();
    api.suppressions
        .add_all(&entries)
        .await
        .map_err(Failure::unavailable)?;
    tracing::info!(tenant = %tenant.name, added = entries.len(), "suppressions added over the API");
    Ok(Added {
        added: entries.len(),
    })
}

/// The tenant's entries, of one campaign (or list) when `campaign` is given
/// (`""`: the tenant-wide ones).
pub(crate) async fn list(
    api: &Api,
    tenant: &Tenant,
    campaign: Option<&str>,
) -> Result<Listing, Failure> {
    let entries = api
        .suppressions
        .list(&tenant.name)
        .await
        .map_err(Failure::unavailable)?;
    let suppressions = entries
        .into_iter()
        .filter(|e| campaign.is_none_or(|c| e.campaign == c))
        .map(|e| Shown {
            email: e.address,
            campaign: e.campaign,
            reason: e.reason.name(),
            at: tern_runtime::date::rfc3339(e.at_unix_ms),
            source: e.source,
        })
        .collect();
    Ok(Listing { suppressions })
}

/// Remove the tenant's entry for `email` (in `campaign`, `""`: the
/// tenant-wide one); `404` when there is none.
pub(crate) async fn remove(
    api: &Api,
    tenant: &Tenant,
    email: &str,
    campaign: &str,
) -> Result<Deleted, Failure> {
    if !valid_address(email) {
        return Err(bad("email", "not a valid address"));
    }
    let existed = api
        .suppressions
        .remove(&tenant.name, campaign, email)
        .await
        .map_err(Failure::unavailable)?;
    if !existed {
        return Err(Failure::new(
            Kind::NotFound,
            "email",
            "no such entry in this tenant's suppression list",
        ));
    }
    Ok(Deleted {
        deleted: email.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(body: &str) -> (Kind, String) {
        let f = parse(body.as_bytes()).unwrap_err();
        (f.kind, f.field)
    }

    #[test]
    fn additions_default_to_a_manual_tenant_wide_entry() {
        let got = parse(
            br#"{"suppressions":[{"email":"a@b.test"},
            {"email":" c@d.test ","campaign":"spring","reason":"complaint"}]}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            [
                Addition {
                    email: "a@b.test".into(),
                    campaign: String::new(),
                    reason: Reason::Manual
                },
                Addition {
                    email: "c@d.test".into(),
                    campaign: "spring".into(),
                    reason: Reason::Complaint
                },
            ]
        );
    }

    #[test]
    fn every_bad_input_names_its_field() {
        let bad = Kind::BadField;
        for (body, want) in [
            ("nope", (bad, "body")),
            ("[]", (bad, "body")),
            ("{}", (bad, "suppressions")),
            (r#"{"suppressions":[]}"#, (bad, "suppressions")),
            (r#"{"suppressions":[],"x":1}"#, (bad, "x")),
            (r#"{"suppressions":["a@b.test"]}"#, (bad, "suppressions[0]")),
            (
                r#"{"suppressions":[{"email":"a@b.test"},{}]}"#,
                (bad, "suppressions[1].email"),
            ),
            (
                r#"{"suppressions":[{"email":"nope"}]}"#,
                (bad, "suppressions[0].email"),
            ),
            (
                r#"{"suppressions":[{"email":7}]}"#,
                (bad, "suppressions[0].email"),
            ),
            (
                r#"{"suppressions":[{"email":"a@b.test","reason":"bored"}]}"#,
                (bad, "suppressions[0].reason"),
            ),
            (
                r#"{"suppressions":[{"email":"a@b.test","tenant":"other"}]}"#,
                (bad, "suppressions[0].tenant"),
            ),
        ] {
            assert_eq!(field(body), (want.0, want.1.to_string()), "{body}");
        }
    }

    #[test]
    fn more_than_one_call_may_add_is_unprocessable() {
        let items: Vec<String> = (0..=MAX_PER_CALL)
            .map(|i| format!(r#"{{"email":"u{i}@b.test"}}"#))
            .collect();
        let body = format!(r#"{{"suppressions":[{}]}}"#, items.join(","));
        assert_eq!(
            field(&body),
            (Kind::TooManyRecipients, "suppressions".to_string())
        );
    }
}
