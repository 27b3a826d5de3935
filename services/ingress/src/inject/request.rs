//! `POST /v1/messages`: the JSON body parsed and checked field by field, so
//! every refusal names the field (pure: no I/O).

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Most recipients in one call (the issue's limit; more is `422`).
pub const MAX_RECIPIENTS: usize = 10_000;
/// Longest campaign tag.
const MAX_CAMPAIGN: usize = 128;

/// A refusal naming the field: `400` (or `422` for too many recipients).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The JSON path of the field, e.g. `recipients[3].email`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// `true`: `422` (recipients over the limit), else `400`.
    pub unprocessable: bool,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
            unprocessable: false,
        }
    }
}

/// One recipient of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    /// The address.
    pub email: String,
    /// Display name (empty: none).
    #[serde(default)]
    pub name: String,
    /// Template variables of this recipient.
    #[serde(default)]
    pub vars: Map<String, Value>,
}

/// A base64 attachment, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// File name for `Content-Disposition`.
    pub filename: String,
    /// MIME type.
    pub content_type: String,
    /// The bytes.
    pub content: Vec<u8>,
}

/// The message template of a batch: the fields, or `raw`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Template {
    /// `From:` as given (`Name <a@b>` or `a@b`); empty with `raw`.
    pub from: String,
    /// `Reply-To:`.
    pub reply_to: Option<String>,
    /// Subject template.
    pub subject: String,
    /// Plain-text part template.
    pub text: Option<String>,
    /// HTML part template (auto-escaped).
    pub html: Option<String>,
    /// Extra header templates, by name.
    pub headers: BTreeMap<String, String>,
    /// A whole RFC 5322 message used as the template instead.
    pub raw: Option<String>,
    /// Attachments.
    pub attachments: Vec<Attachment>,
}

/// A checked request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    /// What every message is made from.
    pub template: Template,
    /// Valid, distinct recipients, in the order given.
    pub recipients: Vec<Recipient>,
    /// Recipients refused, with why (bad address, duplicate).
    pub rejected: Vec<(String, String)>,
    /// Shared template variables.
    pub vars: Map<String, Value>,
    /// Campaign tag (empty: none).
    pub campaign: String,
    /// Send time, Unix ms (`None`: now).
    pub send_at_unix_ms: Option<i64>,
    /// Add RFC 8058 List-Unsubscribe (`None`: the tenant's default).
    pub unsubscribe: Option<bool>,
}

/// Header fields the API writes itself; a request may not set them.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "reply-to",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "dkim-signature",
    "received",
    "return-path",
];

const KNOWN_FIELDS: &[&str] = &[
    "from",
    "reply_to",
    "subject",
    "text",
    "html",
    "headers",
    "recipients",
    "vars",
    "campaign",
    "send_at",
    "unsubscribe",
    "raw",
    "attachments",
];

fn opt_str(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(FieldError::new(field, "must be a string")),
    }
}

fn opt_object(obj: &Map<String, Value>, field: &str) -> Result<Map<String, Value>, FieldError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(FieldError::new(field, "must be an object")),
    }
}

/// Parse and check a request body.
pub fn parse(body: &[u8]) -> Result<Request, FieldError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| FieldError::new("body", format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(FieldError::new("body", "must be a JSON object"));
    };
    if let Some(unknown) = obj.keys().find(|k| !KNOWN_FIELDS.contains(&k.as_str())) {
        // An empty key cannot name itself: the refusal would point at no
        // field at all (found by the fuzzer, fuzz/corpus/inject_request/).
        return Err(if unknown.is_empty() {
            FieldError::new("body", "unknown field \"\" (an empty key)")
        } else {
            FieldError::new(unknown.as_str(), "unknown field")
        });
    }
    let template = parse_template(&obj)?;
    let (recipients, rejected) = parse_recipients(obj.get("recipients"))?;
    let campaign = opt_str(&obj, "campaign")?.unwrap_or_default();
    if campaign.len() > MAX_CAMPAIGN || campaign.chars().any(char::is_control) {
        return Err(FieldError::new(
            "campaign",
            format!("at most {MAX_CAMPAIGN} octets, no control characters"),
        ));
    }
    let send_at_unix_ms = opt_str(&obj, "send_at")?
        .map(|s| {
            parse_rfc3339(&s).ok_or_else(|| {
                FieldError::new(
                    "send_at",
                    "not an RFC 3339 date-time (2026-12-03T10:00:00Z)",
                )
            })
        })
        .transpose()?;
    let unsubscribe = match obj.get("unsubscribe") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(FieldError::new("unsubscribe", "must be true or false")),
    };
    Ok(Request {
        template,
        recipients,
        rejected,
        vars: opt_object(&obj, "vars")?,
        campaign,
        send_at_unix_ms,
        unsubscribe,
    })
}

fn parse_template(obj: &Map<String, Value>) -> Result<Template, FieldError> {
    let raw = opt_str(obj, "raw")?;
    let from = opt_str(obj, "from")?.unwrap_or_default();
    let text = opt_str(obj, "text")?;
    let html = opt_str(obj, "html")?;
    let subject = opt_str(obj, "subject")?;
    if raw.is_some() {
        for f in ["from", "subject", "text", "html", "reply_to", "headers"] {
            if obj.get(f).is_some_and(|v| !v.is_null()) {
                return Err(FieldError::new(
                    f,
                    "not allowed with raw (raw is the whole message)",
                ));
            }
        }
    } else {
        if from.trim().is_empty() {
            return Err(FieldError::new("from", "required"));
        }
        if address_of(&from).is_none() {
            return Err(FieldError::new(
                "from",
                "not an address (a@example.com or Name <a@example.com>)",
            ));
        }
        if text.is_none() && html.is_none() {
            return Err(FieldError::new("text", "text or html (or raw) is required"));
        }
    }
    let reply_to = opt_str(obj, "reply_to")?;
    if reply_to.as_deref().is_some_and(|r| address_of(r).is_none()) {
        return Err(FieldError::new("reply_to", "not an address"));
    }
    let mut headers = BTreeMap::new();
    for (name, value) in opt_object(obj, "headers")? {
        let field = format!("headers.{name}");
        let valid_name =
            !name.is_empty() && name.bytes().all(|c| (33..=126).contains(&c) && c != b':');
        if !valid_name {
            return Err(FieldError::new(
                field,
                "not a header field name (RFC 5322 §3.6.8)",
            ));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(FieldError::new(field, "set by its own field or by Tern"));
        }
        let Value::String(v) = value else {
            return Err(FieldError::new(field, "must be a string"));
        };
        headers.insert(name, v);
    }
    Ok(Template {
        from,
        reply_to,
        subject: subject.unwrap_or_default(),
        text,
        html,
        headers,
        raw,
        attachments: parse_attachments(obj.get("attachments"))?,
    })
}

fn parse_attachments(value: Option<&Value>) -> Result<Vec<Attachment>, FieldError> {
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(FieldError::new("attachments", "must be an array")),
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = |f: &str| format!("attachments[{i}].{f}");
        let Value::Object(o) = item else {
            return Err(FieldError::new(
                format!("attachments[{i}]"),
                "must be an object",
            ));
        };
        let get = |f: &str| match o.get(f) {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            None | Some(Value::Null) => Ok(None),
            Some(_) => Err(FieldError::new(at(f), "must be a string")),
        };
        let filename =
            get("filename")?.ok_or_else(|| FieldError::new(at("filename"), "required"))?;
        if filename.is_empty()
            || filename
                .chars()
                .any(|c| c.is_control() || c == '"' || c == '\\')
        {
            return Err(FieldError::new(
                at("filename"),
                "empty, or has quotes, backslashes or control characters",
            ));
        }
        let content_type =
            get("content_type")?.unwrap_or_else(|| "application/octet-stream".into());
        let valid_type = content_type.split_once('/').is_some_and(|(a, b)| {
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&c))
            };
            token(a) && token(b)
        });
        if !valid_type {
            return Err(FieldError::new(
                at("content_type"),
                "not a MIME type (type/subtype)",
            ));
        }
        let content = get("content")?.ok_or_else(|| FieldError::new(at("content"), "required"))?;
        let content = base64::engine::general_purpose::STANDARD
            .decode(content.trim())
            .map_err(|e| FieldError::new(at("content"), format!("not base64: {e}")))?;
        out.push(Attachment {
            filename,
            content_type,
            content,
        });
    }
    Ok(out)
}

type Recipients = (Vec<Recipient>, Vec<(String, String)>);

fn parse_recipients(value: Option<&Value>) -> Result<Recipients, FieldError> {
    let items = match value {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err(FieldError::new(
                "recipients",
                "at least one recipient is required",
            ));
        }
        Some(_) => return Err(FieldError::new("recipients", "must be an array")),
    };
    if items.len() > MAX_RECIPIENTS {
        return Err(FieldError {
            unprocessable: true,
            ..FieldError::new(
                "recipients",
                format!(
                    "{} recipients; at most {MAX_RECIPIENTS} per call",
                    items.len()
                ),
            )
        });
    }
    let mut ok = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let Value::Object(o) = item else {
            return Err(FieldError::new(
                format!("recipients[{i}]"),
                "must be an object",
            ));
        };
        let email = match o.get("email") {
            Some(Value::String(s)) => s.trim().to_string(),
            _ => {
                return Err(FieldError::new(
                    format!("recipients[{i}].email"),
                    "required string",
                ));
            }
        };
        let name = match o.get("name") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(FieldError::new(
                    format!("recipients[{i}].name"),
                    "must be a string",
                ));
            }
        };
        let vars = match o.get("vars") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return Err(FieldError::new(
                    format!("recipients[{i}].vars"),
                    "must be an object",
                ));
            }
        };
        if !valid_address(&email) {
            rejected.push((email, "invalid address".to_string()));
            continue;
        }
        if !seen.insert(email.to_ascii_lowercase()) {
            rejected.push((email, "duplicate recipient".to_string()));
            continue;
        }
        ok.push(Recipient { email, name, vars });
    }
    Ok((ok, rejected))
}

/// `local@domain` with a dot-atom or quoted-free local part and a host name:
/// what the API sends to (RFC 5321 §4.1.2, without quoted strings and
/// address literals, which bulk mail never needs).
pub fn valid_address(addr: &str) -> bool {
    let Some((local, domain)) = addr.rsplit_once('@') else {
        return false;
    };
    let atext = |c: char| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(atext));
    local_ok && tern_tenant::normalize_domain(domain).is_ok() && domain.contains('.')
}

/// The address in `a@b` or `Name <a@b>`.
pub fn address_of(mailbox: &str) -> Option<String> {
    let m = mailbox.trim();
    let addr = match (m.rfind('<'), m.ends_with('>')) {
        (Some(i), true) => &m[i + 1..m.len() - 1],
        (None, false) => m,
        _ => return None,
    };
    valid_address(addr).then(|| addr.to_string())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An RFC 3339 §5.6 `date-time` as Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let month_days = [
        31,
        if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) {
            29
        } else {
            28
        },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > month_days[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i.min(start + 3)];
        millis = frac.parse::<i64>().ok()? * 10_i64.pow(3 - frac.len() as u32);
    }
    let offset_min = match &s[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    let secs =
        days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec.min(59) - offset_min * 60;
    Some(secs * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> FieldError {
        parse(body.as_bytes()).expect_err(body)
    }

    /// Found by the fuzzer (fuzz/corpus/inject_request/regress-empty-key):
    /// an empty key was refused with an empty field name, which points a
    /// client at nothing.
    #[test]
    fn an_empty_key_is_refused_naming_the_body() {
        let e =
            err(r#"{"raw":"Subject: x\r\n\r\nhi","recipients":[{"email":"b@example.com"}],"":1}"#);
        assert_eq!(e.field, "body");
        assert!(e.message.contains("empty key"), "{e:?}");
        assert_eq!(err(r#"{"nope":1}"#).field, "nope");
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(err("[1]").field, "body");
        assert_eq!(err("{").field, "body");
        assert_eq!(
            err(r#"{"recipients":[{"email":"a@b.test"}],"text":"x"}"#).field,
            "from"
        );
        assert_eq!(
            err(r#"{"from":"a@b.test","recipients":[{"email":"a@b.test"}]}"#).field,
            "text"
        );
        assert_eq!(err(r#"{"from":"a@b.test","text":"x"}"#).field, "recipients");
        assert_eq!(err(r#"{"from":"a@b.test","text":"x","recipients":[{"email":"a@b.test"}],"send_at":"tomorrow"}"#).field, "send_at");
        assert_eq!(err(r#"{"from":"a@b.test","text":"x","recipients":[{"email":"a@b.test"}],"headers":{"From":"x"}}"#).field, "headers.From");
        assert_eq!(err(r#"{"from":"a@b.test","text":"x","recipients":[{"email":"a@b.test"}],"attachments":[{"filename":"a.txt","content":"!!"}]}"#).field, "attachments[0].content");
        assert_eq!(
            err(r#"{"from":"a@b.test","text":"x","recipients":[{"name":"x"}]}"#).field,
            "recipients[0].email"
        );
        assert_eq!(
            err(r#"{"from":"a@b.test","text":"x","recipients":[{"email":"a@b.test"}],"bogus":1}"#)
                .field,
            "bogus"
        );
        assert_eq!(
            err(r#"{"raw":"x","from":"a@b.test","recipients":[{"email":"a@b.test"}]}"#).field,
            "from"
        );
    }

    #[test]
    fn too_many_recipients_is_unprocessable() {
        let rcpts: Vec<String> = (0..=MAX_RECIPIENTS)
            .map(|i| format!(r#"{{"email":"u{i}@b.test"}}"#))
            .collect();
        let body = format!(
            r#"{{"from":"a@b.test","text":"x","recipients":[{}]}}"#,
            rcpts.join(",")
        );
        let e = err(&body);
        assert!(e.unprocessable);
        assert_eq!(e.field, "recipients");
    }

    #[test]
    fn bad_and_duplicate_recipients_are_rejected_not_fatal() {
        let r = parse(br#"{"from":"Shop <a@b.test>","text":"x","recipients":[{"email":"a@c.test"},{"email":"nope"},{"email":"A@c.test"}]}"#).unwrap();
        assert_eq!(r.recipients.len(), 1);
        assert_eq!(
            r.rejected,
            [
                ("nope".to_string(), "invalid address".to_string()),
                ("A@c.test".to_string(), "duplicate recipient".to_string())
            ]
        );
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2026-12-03T10:00:00.5+01:00"),
            Some(1_796_288_400_500)
        );
        assert_eq!(parse_rfc3339("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(parse_rfc3339("2001-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("2026-12-03 10:00:00"), None);
        assert_eq!(parse_rfc3339("2026-13-03T10:00:00Z"), None);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            address_of("Shop <a.b@shop.test>").as_deref(),
            Some("a.b@shop.test")
        );
        assert_eq!(address_of("a@shop.test").as_deref(), Some("a@shop.test"));
        assert_eq!(address_of("Shop <a@shop.test"), None);
        assert!(!valid_address("a..b@shop.test"));
        assert!(!valid_address("a@localhost"));
    }
}
