//! Late bounces and complaints, parsed from the bytes that arrive at the
//! bounce domain: RFC 3464 delivery status notifications and RFC 5965 ARF
//! feedback reports, both `multipart/report` (RFC 6522). MIME structure comes
//! from crates.io's `mail-parser`; the machine-readable parts are header-like
//! field blocks, read here.

use std::net::IpAddr;

use mail_parser::{Encoding, MessageParser, MimeHeaders, PartType};
use tern_smtp::Enhanced;

use crate::observation::Observation;

/// A report that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// The bytes are not a MIME message.
    #[error("not a MIME message")]
    NotMime,
    /// Not `multipart/report`, or a `report-type` this parser does not read.
    #[error("not a delivery status notification or feedback report (content type {0})")]
    NotAReport(String),
    /// The report lacks its machine-readable part.
    #[error("the report has no {0} part")]
    MissingPart(&'static str),
    /// A required field is missing.
    #[error("the report has no {0} field")]
    MissingField(&'static str),
    /// A field has a value outside its grammar.
    #[error("the report's {field} field has an invalid value {value:?}")]
    BadField {
        /// The field's name.
        field: &'static str,
        /// The value found.
        value: String,
    },
}

/// A parsed late bounce or complaint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// An RFC 3464 delivery status notification.
    Dsn(Dsn),
    /// An RFC 5965 feedback report.
    Feedback(Feedback),
}

/// RFC 3464 §2.3.3 `Action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The message could not be delivered: a late bounce.
    Failed,
    /// Not delivered yet; the reporting MTA keeps trying.
    Delayed,
    /// Delivered.
    Delivered,
    /// Relayed to a system that sends no DSNs.
    Relayed,
    /// Delivered and forwarded to several recipients.
    Expanded,
}

impl Action {
    fn parse(s: &str) -> Option<Action> {
        Some(match s.to_ascii_lowercase().as_str() {
            "failed" => Action::Failed,
            "delayed" => Action::Delayed,
            "delivered" => Action::Delivered,
            "relayed" => Action::Relayed,
            "expanded" => Action::Expanded,
            _ => return None,
        })
    }
}

/// One recipient of a DSN (RFC 3464 §2.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    /// `Final-Recipient`, without its address type.
    pub final_recipient: String,
    /// `Original-Recipient`, without its address type.
    pub original_recipient: Option<String>,
    /// `Action`.
    pub action: Action,
    /// `Status`.
    pub status: Enhanced,
    /// `Diagnostic-Code`, as written (`smtp; 550 5.1.1 …`).
    pub diagnostic_code: Option<String>,
    /// `Remote-MTA`, without its type.
    pub remote_mta: Option<String>,
}

impl DsnRecipient {
    /// What the classifier reads for this recipient.
    pub fn observation(&self) -> Observation {
        Observation::from_dsn(Some(self.status), self.diagnostic_code.as_deref())
    }
}

/// The original message's headers, when the report includes them
/// (`message/rfc822` or `text/rfc822-headers`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Original {
    /// Every header field, names as written, values unfolded.
    pub headers: Vec<(String, String)>,
}

impl Original {
    /// The first value of a header field, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Message-ID` without angle brackets.
    pub fn message_id(&self) -> Option<&str> {
        self.header("Message-ID").map(strip_angles)
    }

    /// `Return-Path` without angle brackets: the VERP address it was sent with.
    pub fn return_path(&self) -> Option<&str> {
        self.header("Return-Path").map(strip_angles)
    }
}

/// An RFC 3464 delivery status notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// `Reporting-MTA`, without its type.
    pub reporting_mta: Option<String>,
    /// `Original-Envelope-Id` (RFC 3461 `ENVID`).
    pub original_envelope_id: Option<String>,
    /// Each recipient block, in order.
    pub recipients: Vec<DsnRecipient>,
    /// The original message's headers, if included.
    pub original: Option<Original>,
    /// The addresses in the report's own `To:` (normally the VERP return path).
    pub to: Vec<String>,
}

impl Dsn {
    /// Addresses that may be the VERP return path, best first: the report's
    /// `To:`, then the original's `Return-Path`. The envelope recipient the
    /// report arrived for is better than both, when the caller has it.
    pub fn return_path_candidates(&self) -> Vec<&str> {
        candidates(&self.to, self.original.as_ref())
    }
}

/// RFC 5965 §3.1 `Feedback-Type` (and RFC 6591's `auth-failure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedbackType {
    /// Unsolicited mail: a spam complaint.
    Abuse,
    /// Fraud or phishing.
    Fraud,
    /// A virus.
    Virus,
    /// Not spam (the reporter's "this is not spam").
    NotSpam,
    /// An authentication failure report (RFC 6591).
    AuthFailure,
    /// `other`, or a type registered later, as written (lower case).
    Other(String),
}

impl FeedbackType {
    fn parse(s: &str) -> FeedbackType {
        match s.to_ascii_lowercase().as_str() {
            "abuse" => FeedbackType::Abuse,
            "fraud" => FeedbackType::Fraud,
            "virus" => FeedbackType::Virus,
            "not-spam" => FeedbackType::NotSpam,
            "auth-failure" => FeedbackType::AuthFailure,
            other => FeedbackType::Other(other.to_string()),
        }
    }

    /// Is this a complaint about the mail (abuse or fraud): a `complained`
    /// event that suppresses the recipient?
    pub fn is_complaint(&self) -> bool {
        matches!(self, FeedbackType::Abuse | FeedbackType::Fraud)
    }
}

/// An RFC 5965 feedback report (a complaint, as Yahoo's CFL and Microsoft's
/// JMRP send them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    /// `Feedback-Type`.
    pub feedback_type: FeedbackType,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// `Version`.
    pub version: Option<String>,
    /// `Original-Mail-From`, without angle brackets.
    pub original_mail_from: Option<String>,
    /// `Original-Rcpt-To`, each without angle brackets: the complainer.
    pub original_rcpt_to: Vec<String>,
    /// `Arrival-Date`, as written.
    pub arrival_date: Option<String>,
    /// `Reporting-MTA`, without its type.
    pub reporting_mta: Option<String>,
    /// `Source-IP`.
    pub source_ip: Option<IpAddr>,
    /// `Incidents`.
    pub incidents: Option<u32>,
    /// The reported message's headers, if included.
    pub original: Option<Original>,
    /// The addresses in the report's own `To:`.
    pub to: Vec<String>,
}

impl Feedback {
    /// Addresses that may be the VERP return path: `Original-Mail-From`
    /// (RFC 5965 §3.2: the reported message's envelope sender), then the
    /// original's `Return-Path`, then the report's `To:`.
    pub fn return_path_candidates(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.original_mail_from.iter().map(String::as_str).collect();
        for c in candidates(&self.to, self.original.as_ref())
            .into_iter()
            .rev()
        {
            if !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }
}

fn candidates<'a>(to: &'a [String], original: Option<&'a Original>) -> Vec<&'a str> {
    let mut out: Vec<&str> = to.iter().map(String::as_str).collect();
    if let Some(rp) = original.and_then(Original::return_path)
        && !out.contains(&rp)
    {
        out.push(rp);
    }
    out
}

/// The MIME parts of a report that this module reads.
struct Parts {
    report_type: String,
    fields: Option<Vec<u8>>,
    original: Option<Vec<u8>>,
    to: Vec<String>,
}

/// Split a `multipart/report` into its machine-readable part (`fields_type`
/// is e.g. `delivery-status`) and the original message or headers.
fn split(message: &[u8], fields_types: &[&str]) -> Result<Parts, ReportError> {
    let msg = MessageParser::default()
        .parse(message)
        .ok_or(ReportError::NotMime)?;
    let ct = msg
        .content_type()
        .ok_or_else(|| ReportError::NotAReport("text/plain".into()))?;
    let full = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""));
    if !full.eq_ignore_ascii_case("multipart/report") {
        return Err(ReportError::NotAReport(full));
    }
    let report_type = ct
        .attribute("report-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut parts = Parts {
        report_type,
        fields: None,
        original: None,
        to: msg
            .to()
            .map(|a| {
                a.iter()
                    .filter_map(|a| a.address())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
    };
    for part in &msg.parts {
        let Some(pct) = part.content_type() else {
            continue;
        };
        let (ty, sub) = (pct.ctype(), pct.subtype().unwrap_or(""));
        let bytes: Option<Vec<u8>> = match &part.body {
            PartType::Text(t) | PartType::Html(t) => Some(t.as_bytes().to_vec()),
            PartType::Binary(b) | PartType::InlineBinary(b) => Some(b.to_vec()),
            PartType::Message(m) => Some(match part.encoding {
                // Decoded from base64/QP: the nested message owns its bytes.
                Encoding::Base64 | Encoding::QuotedPrintable => m.raw_message().to_vec(),
                Encoding::None => message
                    .get(part.offset_body as usize..part.offset_end as usize)
                    .unwrap_or_default()
                    .to_vec(),
            }),
            PartType::Multipart(_) => None,
        };
        let Some(bytes) = bytes else { continue };
        let is = |t: &str, s: &str| ty.eq_ignore_ascii_case(t) && sub.eq_ignore_ascii_case(s);
        if ty.eq_ignore_ascii_case("message")
            && fields_types.iter().any(|f| sub.eq_ignore_ascii_case(f))
        {
            parts.fields.get_or_insert(bytes);
        } else if is("message", "rfc822")
            || is("text", "rfc822-headers")
            || is("message", "global")
            || is("message", "global-headers")
        {
            parts.original.get_or_insert(bytes);
        }
    }
    Ok(parts)
}

/// Parse either kind of report, by its `report-type`.
pub fn parse(message: &[u8]) -> Result<Report, ReportError> {
    let parts = split(
        message,
        &[
            "delivery-status",
            "global-delivery-status",
            "feedback-report",
        ],
    )?;
    match parts.report_type.as_str() {
        "delivery-status" | "global-delivery-status" => dsn_from(parts).map(Report::Dsn),
        "feedback-report" => feedback_from(parts).map(Report::Feedback),
        other => Err(ReportError::NotAReport(format!(
            "multipart/report; report-type={other}"
        ))),
    }
}

/// Parse an RFC 3464 DSN (also RFC 6533's `global-delivery-status`).
pub fn parse_dsn(message: &[u8]) -> Result<Dsn, ReportError> {
    match parse(message)? {
        Report::Dsn(d) => Ok(d),
        Report::Feedback(_) => Err(ReportError::NotAReport(
            "multipart/report; report-type=feedback-report".into(),
        )),
    }
}

/// Parse an RFC 5965 ARF feedback report.
pub fn parse_arf(message: &[u8]) -> Result<Feedback, ReportError> {
    match parse(message)? {
        Report::Feedback(f) => Ok(f),
        Report::Dsn(_) => Err(ReportError::NotAReport(
            "multipart/report; report-type=delivery-status".into(),
        )),
    }
}

fn dsn_from(parts: Parts) -> Result<Dsn, ReportError> {
    let fields = parts
        .fields
        .ok_or(ReportError::MissingPart("message/delivery-status"))?;
    let text = String::from_utf8_lossy(&fields);
    let mut groups = field_groups(&text).into_iter();
    let per_message = groups.next().unwrap_or_default();
    let recipients = groups
        .map(|g| dsn_recipient(&g))
        .collect::<Result<Vec<_>, _>>()?;
    if recipients.is_empty() {
        return Err(ReportError::MissingField("Final-Recipient"));
    }
    Ok(Dsn {
        reporting_mta: get(&per_message, "Reporting-MTA").map(strip_type),
        original_envelope_id: get(&per_message, "Original-Envelope-Id").map(str::to_string),
        recipients,
        original: parts.original.map(|o| original(&o)),
        to: parts.to,
    })
}

fn dsn_recipient(g: &[(String, String)]) -> Result<DsnRecipient, ReportError> {
    let final_recipient = get(g, "Final-Recipient")
        .map(strip_type)
        .ok_or(ReportError::MissingField("Final-Recipient"))?;
    let action = get(g, "Action").ok_or(ReportError::MissingField("Action"))?;
    let action = Action::parse(first_word(action)).ok_or_else(|| ReportError::BadField {
        field: "Action",
        value: action.to_string(),
    })?;
    let status = get(g, "Status").ok_or(ReportError::MissingField("Status"))?;
    let status = Enhanced::parse(first_word(status)).ok_or_else(|| ReportError::BadField {
        field: "Status",
        value: status.to_string(),
    })?;
    Ok(DsnRecipient {
        final_recipient,
        original_recipient: get(g, "Original-Recipient").map(strip_type),
        action,
        status,
        diagnostic_code: get(g, "Diagnostic-Code").map(str::to_string),
        remote_mta: get(g, "Remote-MTA").map(strip_type),
    })
}

fn feedback_from(parts: Parts) -> Result<Feedback, ReportError> {
    let fields = parts
        .fields
        .ok_or(ReportError::MissingPart("message/feedback-report"))?;
    let text = String::from_utf8_lossy(&fields);
    let f: Vec<(String, String)> = field_groups(&text).into_iter().flatten().collect();
    let feedback_type =
        get(&f, "Feedback-Type").ok_or(ReportError::MissingField("Feedback-Type"))?;
    let source_ip = match get(&f, "Source-IP") {
        None => None,
        Some(ip) => Some(ip.parse().map_err(|_| ReportError::BadField {
            field: "Source-IP",
            value: ip.to_string(),
        })?),
    };
    let incidents = match get(&f, "Incidents") {
        None => None,
        Some(n) => Some(n.parse().map_err(|_| ReportError::BadField {
            field: "Incidents",
            value: n.to_string(),
        })?),
    };
    Ok(Feedback {
        feedback_type: FeedbackType::parse(first_word(feedback_type)),
        user_agent: get(&f, "User-Agent").map(str::to_string),
        version: get(&f, "Version").map(str::to_string),
        original_mail_from: get(&f, "Original-Mail-From").map(|v| strip_angles(v).to_string()),
        original_rcpt_to: f
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Original-Rcpt-To"))
            .map(|(_, v)| strip_angles(v).to_string())
            .collect(),
        arrival_date: get(&f, "Arrival-Date")
            .or_else(|| get(&f, "Received-Date"))
            .map(str::to_string),
        reporting_mta: get(&f, "Reporting-MTA").map(strip_type),
        source_ip,
        incidents,
        original: parts.original.map(|o| original(&o)),
        to: parts.to,
    })
}

fn original(bytes: &[u8]) -> Original {
    let text = String::from_utf8_lossy(bytes);
    Original {
        headers: field_groups(&text).into_iter().next().unwrap_or_default(),
    }
}

/// Header-style field blocks separated by blank lines (RFC 3464 §2.1,
/// RFC 5322 §2.2.3 folding). Lines that are not fields are skipped.
fn field_groups(text: &str) -> Vec<Vec<(String, String)>> {
    let mut groups: Vec<Vec<(String, String)>> = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if line.trim().is_empty() {
            if !current.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = current.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':')
            && !name.is_empty()
            && !name.contains(' ')
        {
            current.push((name.to_string(), value.trim().to_string()));
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

fn get<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `rfc822; bob@example.com` → `bob@example.com` (RFC 3464 §2.3.2).
fn strip_type(v: &str) -> String {
    let value = v.split_once(';').map_or(v, |(_, rest)| rest).trim();
    strip_angles(value).to_string()
}

fn strip_angles(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(v)
}

fn first_word(v: &str) -> &str {
    v.split_whitespace().next().unwrap_or("")
}
