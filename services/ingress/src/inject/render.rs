//! A batch's templates (MiniJinja) rendered per recipient, and the rendered
//! message built as RFC 5322 / RFC 2045 MIME (pure: no I/O).

use std::fmt::Write as _;

use base64::Engine as _;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::{Map, Value};

use super::request::{FieldError, Recipient, Template};

/// Fuel of one render: bounds the work a template loop may cost.
const FUEL: u64 = 1_000_000;
/// Longest encoded header line we write (RFC 5322 §2.1.1 recommends 78).
const LINE: usize = 76;

/// What a message gets besides its template: identity and list headers.
#[derive(Debug, Clone, Default)]
pub struct Extras {
    /// Message id without angle brackets, `id@host`.
    pub message_id: String,
    /// `Date:` value (RFC 5322 §3.3).
    pub date: String,
    /// `List-Unsubscribe:` value, when one-click unsubscribe is on.
    pub list_unsubscribe: Option<String>,
}

/// The compiled templates of one batch.
pub struct Renderer {
    env: Environment<'static>,
    template: Template,
    header_names: Vec<String>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer").finish_non_exhaustive()
    }
}

fn template_error(field: &str, e: &minijinja::Error) -> FieldError {
    let mut message = format!("template error: {}", e.kind());
    if let Some(detail) = e.detail() {
        let _ = write!(message, ": {detail}");
    }
    if let Some(line) = e.line() {
        let _ = write!(message, " (line {line})");
    }
    FieldError::new(field, message)
}

impl Renderer {
    /// Compile every template; a syntax error names its field.
    pub fn new(template: &Template) -> Result<Renderer, FieldError> {
        let mut env = Environment::new();
        // Only the HTML part is escaped: a name with `<` in the subject or
        // text must stay as typed.
        env.set_auto_escape_callback(|name| match name {
            "html" => AutoEscape::Html,
            _ => AutoEscape::None,
        });
        // A variable that is neither shared nor the recipient's is a
        // mistake worth refusing, not an empty string in 10,000 mails.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_fuel(Some(FUEL));
        let mut sources: Vec<(String, String)> = Vec::new();
        if let Some(raw) = &template.raw {
            sources.push(("raw".into(), raw.clone()));
        } else {
            sources.push(("subject".into(), template.subject.clone()));
            if let Some(t) = &template.text {
                sources.push(("text".into(), t.clone()));
            }
            if let Some(h) = &template.html {
                sources.push(("html".into(), h.clone()));
            }
        }
        let mut header_names = Vec::new();
        for (name, value) in &template.headers {
            let key = format!("headers.{name}");
            sources.push((key.clone(), value.clone()));
            header_names.push(name.clone());
        }
        for (name, source) in sources {
            env.add_template_owned(name.clone(), source)
                .map_err(|e| template_error(&name, &e))?;
        }
        Ok(Renderer {
            env,
            template: template.clone(),
            header_names,
        })
    }

    fn render(&self, name: &str, ctx: &minijinja::Value) -> Result<String, FieldError> {
        let t = self
            .env
            .get_template(name)
            .map_err(|e| template_error(name, &e))?;
        t.render(ctx.clone()).map_err(|e| template_error(name, &e))
    }

    /// The variables of one recipient: shared `vars`, overridden by the
    /// recipient's, plus `email` and `name`.
    pub fn context(shared: &Map<String, Value>, r: &Recipient) -> minijinja::Value {
        let mut ctx = shared.clone();
        for (k, v) in &r.vars {
            ctx.insert(k.clone(), v.clone());
        }
        ctx.insert("email".into(), Value::String(r.email.clone()));
        ctx.insert("name".into(), Value::String(r.name.clone()));
        minijinja::Value::from(minijinja::value::Serde(Value::Object(ctx)))
    }

    /// Render every template for `r` without building the message: what
    /// accept time checks for each recipient after the first.
    pub fn check(&self, shared: &Map<String, Value>, r: &Recipient) -> Result<(), FieldError> {
        let ctx = Self::context(shared, r);
        for name in &self.header_names {
            self.render(&format!("headers.{name}"), &ctx)?;
        }
        let parts: &[&str] = if self.template.raw.is_some() {
            &["raw"]
        } else {
            &["subject", "text", "html"]
        };
        for part in parts {
            if self.env.get_template(part).is_ok() {
                self.render(part, &ctx)?;
            }
        }
        Ok(())
    }

    /// Render every template for `r` and build the message.
    pub fn message(
        &self,
        shared: &Map<String, Value>,
        r: &Recipient,
        extras: &Extras,
    ) -> Result<Vec<u8>, FieldError> {
        let ctx = Self::context(shared, r);
        let mut headers = Vec::new();
        for name in &self.header_names {
            let v = self.render(&format!("headers.{name}"), &ctx)?;
            headers.push((name.clone(), v));
        }
        if self.template.raw.is_some() {
            let raw = self.render("raw", &ctx)?;
            return Ok(raw_message(&raw, &headers, extras));
        }
        let subject = self.render("subject", &ctx)?;
        let text = match self.template.text {
            Some(_) => Some(self.render("text", &ctx)?),
            None => None,
        };
        let html = match self.template.html {
            Some(_) => Some(self.render("html", &ctx)?),
            None => None,
        };
        let mut out = String::new();
        header(&mut out, "From", &mailbox_header(&self.template.from));
        header(&mut out, "To", &mailbox(&r.name, &r.email));
        if let Some(reply_to) = &self.template.reply_to {
            header(&mut out, "Reply-To", &mailbox_header(reply_to));
        }
        header(&mut out, "Subject", &encode_unstructured(&subject));
        common_headers(&mut out, &headers, extras);
        header(&mut out, "MIME-Version", "1.0");
        let body = mime_body(
            text.as_deref(),
            html.as_deref(),
            &self.template.attachments,
            &extras.message_id,
        );
        out.push_str(&body);
        Ok(out.into_bytes())
    }
}

/// Date, Message-ID, the request's headers and List-Unsubscribe.
fn common_headers(out: &mut String, headers: &[(String, String)], extras: &Extras) {
    header(out, "Date", &extras.date);
    header(out, "Message-ID", &format!("<{}>", extras.message_id));
    for (name, value) in headers {
        header(out, name, &encode_unstructured(value));
    }
    if let Some(lu) = &extras.list_unsubscribe {
        header(out, "List-Unsubscribe", lu);
        // RFC 8058 §3.1: the one-click marker.
        header(out, "List-Unsubscribe-Post", "List-Unsubscribe=One-Click");
    }
}

/// A rendered `raw` message: CRLF line ends, our Date/Message-ID when it has
/// none, and the list headers, put in front of its header section.
fn raw_message(raw: &str, headers: &[(String, String)], extras: &Extras) -> Vec<u8> {
    let mut normalized = raw.replace("\r\n", "\n").replace('\n', "\r\n");
    if !normalized.ends_with("\r\n") {
        normalized.push_str("\r\n");
    }
    let (head, body) = match normalized.find("\r\n\r\n") {
        Some(i) => (&normalized[..i + 2], &normalized[i + 2..]),
        None => (normalized.as_str(), "\r\n"),
    };
    let has = |name: &str| {
        head.split("\r\n").any(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        })
    };
    let mut extra = String::new();
    if !has("Date") {
        header(&mut extra, "Date", &extras.date);
    }
    if !has("Message-ID") {
        header(
            &mut extra,
            "Message-ID",
            &format!("<{}>", extras.message_id),
        );
    }
    if !has("MIME-Version") {
        header(&mut extra, "MIME-Version", "1.0");
    }
    for (name, value) in headers {
        header(&mut extra, name, &encode_unstructured(value));
    }
    if let Some(lu) = &extras.list_unsubscribe {
        header(&mut extra, "List-Unsubscribe", lu);
        header(
            &mut extra,
            "List-Unsubscribe-Post",
            "List-Unsubscribe=One-Click",
        );
    }
    let mut out = String::with_capacity(extra.len() + normalized.len());
    out.push_str(&extra);
    out.push_str(head);
    out.push_str(body);
    out.into_bytes()
}

/// One header field; CR and LF in a rendered value become spaces (a
/// variable must not add header fields), long values are folded.
fn header(out: &mut String, name: &str, value: &str) {
    let value: String = value
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    let mut line_len = name.len() + 2;
    out.push_str(name);
    out.push(':');
    for (i, word) in value.split(' ').enumerate() {
        if i > 0 && line_len + 1 + word.len() > LINE && line_len > name.len() + 2 {
            // RFC 5322 §2.2.3: fold before whitespace.
            out.push_str("\r\n");
            line_len = 0;
        }
        out.push(' ');
        out.push_str(word);
        line_len += 1 + word.len();
    }
    out.push_str("\r\n");
}

/// `text` as an unstructured value: as is when ASCII, else RFC 2047
/// encoded-words (UTF-8, base64), each short enough for one line.
fn encode_unstructured(text: &str) -> String {
    if text.is_ascii() {
        return text.to_string();
    }
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in text.chars() {
        // 45 octets of UTF-8 make 60 base64 characters: with the
        // `=?UTF-8?B?` wrapping the word stays under 76 (RFC 2047 §2).
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| {
            format!(
                "=?UTF-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `Name <addr>` with the display name quoted or encoded (RFC 5322 §3.4).
fn mailbox(name: &str, addr: &str) -> String {
    let name = name.trim();
    if name.is_empty() {
        return addr.to_string();
    }
    if !name.is_ascii() {
        return format!("{} <{addr}>", encode_unstructured(name));
    }
    let atom = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " !#$%&'*+-/=?^_`{|}~".contains(c));
    if atom {
        format!("{name} <{addr}>")
    } else {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\" <{addr}>")
    }
}

/// A `from`/`reply_to` as given (`Name <a@b>` or `a@b`), re-encoded.
fn mailbox_header(given: &str) -> String {
    let g = given.trim();
    match g.rfind('<') {
        Some(i) if g.ends_with('>') => {
            let name = g[..i].trim().trim_matches('"');
            mailbox(name, &g[i + 1..g.len() - 1])
        }
        _ => g.to_string(),
    }
}

/// Quoted-printable (RFC 2045 §6.7) with CRLF line breaks: 7-bit safe,
/// lines at most 76 characters.
pub fn quoted_printable(text: &str) -> String {
    let normalized = text.replace("\r\n", "\n");
    let mut out = String::with_capacity(normalized.len() + normalized.len() / 8);
    for (n, line) in normalized.split('\n').enumerate() {
        if n > 0 {
            out.push_str("\r\n");
        }
        let bytes = line.as_bytes();
        let mut len = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let last = i + 1 == bytes.len();
            // Rule 3: space and tab at the end of a line are encoded.
            let literal =
                (b == b' ' || b == b'\t') && !last || (33..=126).contains(&b) && b != b'=';
            let piece_len = if literal { 1 } else { 3 };
            if len + piece_len > 75 {
                out.push_str("=\r\n");
                len = 0;
            }
            if literal {
                out.push(b as char);
            } else {
                let _ = write!(out, "={b:02X}");
            }
            len += piece_len;
        }
    }
    out
}

fn base64_lines(data: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 38);
    for chunk in encoded.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push_str("\r\n");
    }
    out
}

fn text_part(subtype: &str, content: &str) -> String {
    format!(
        "Content-Type: text/{subtype}; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}\r\n",
        quoted_printable(content)
    )
}

/// Content headers and body after `MIME-Version`. Boundaries start with
/// `=_`, which neither quoted-printable nor base64 output can contain
/// (RFC 2045 §6.7, RFC 2046 §5.1.1).
fn mime_body(
    text: Option<&str>,
    html: Option<&str>,
    attachments: &[super::request::Attachment],
    id: &str,
) -> String {
    let alternative = match (text, html) {
        (Some(t), Some(h)) => {
            let b = format!("=_alt_{id}");
            format!(
                "Content-Type: multipart/alternative; boundary=\"{b}\"\r\n\r\n--{b}\r\n{}--{b}\r\n{}--{b}--\r\n",
                text_part("plain", t),
                text_part("html", h)
            )
        }
        (Some(t), None) => text_part("plain", t),
        (None, Some(h)) => text_part("html", h),
        (None, None) => text_part("plain", ""),
    };
    if attachments.is_empty() {
        return alternative;
    }
    let b = format!("=_mix_{id}");
    let mut out =
        format!("Content-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n--{b}\r\n{alternative}");
    for a in attachments {
        let _ = write!(
            out,
            "--{b}\r\nContent-Type: {}; name=\"{}\"\r\nContent-Disposition: attachment; filename=\"{}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
            a.content_type,
            a.filename,
            a.filename,
            base64_lines(&a.content)
        );
    }
    let _ = write!(out, "--{b}--\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::request;
    use mail_parser::MimeHeaders;

    fn renderer(body: &str) -> (Renderer, request::Request) {
        let req = request::parse(body.as_bytes()).unwrap();
        (Renderer::new(&req.template).unwrap(), req)
    }

    fn extras() -> Extras {
        Extras {
            message_id: "01J0000000000000000000000.1@mx.test".into(),
            date: "Thu, 3 Dec 2026 10:00:00 +0000".into(),
            list_unsubscribe: None,
        }
    }

    #[test]
    fn renders_per_recipient_with_html_escaping_only_in_html() {
        let (r, req) = renderer(
            r#"{"from":"Shop <news@shop.test>","subject":"Hi {{ name }}, {{ offer }}",
                "text":"Dear {{ name }}: {{ code }}","html":"<p>{{ name }}</p>",
                "vars":{"offer":"10% off","code":"A"},
                "recipients":[{"email":"bob@x.test","name":"Bob <3","vars":{"code":"B"}}]}"#,
        );
        let msg = String::from_utf8(r.message(&req.vars, &req.recipients[0], &extras()).unwrap())
            .unwrap();
        assert!(msg.contains("Subject: Hi Bob <3, 10% off\r\n"), "{msg}");
        assert!(msg.contains("To: \"Bob <3\" <bob@x.test>\r\n"), "{msg}");
        assert!(msg.contains("Dear Bob <3: B"), "{msg}");
        assert!(msg.contains("<p>Bob &lt;3</p>"), "{msg}");
        assert!(msg.contains("Message-ID: <01J0000000000000000000000.1@mx.test>\r\n"));
        assert!(msg.contains("MIME-Version: 1.0\r\n"));
        assert!(msg.contains("multipart/alternative"));
        // Parses as MIME with both parts.
        let parsed = mail_parser::MessageParser::default()
            .parse(msg.as_bytes())
            .unwrap();
        assert_eq!(parsed.body_text(0).unwrap().trim_end(), "Dear Bob <3: B");
        assert!(parsed.body_html(0).unwrap().contains("Bob &lt;3"));
    }

    #[test]
    fn syntax_errors_and_undefined_variables_name_the_field() {
        let req = request::parse(
            br#"{"from":"a@shop.test","text":"{% if %}","recipients":[{"email":"b@x.test"}]}"#,
        )
        .unwrap();
        assert_eq!(Renderer::new(&req.template).unwrap_err().field, "text");
        let (r, req) = renderer(
            r#"{"from":"a@shop.test","text":"x","headers":{"X-Code":"{{ nope }}"},"recipients":[{"email":"b@x.test"}]}"#,
        );
        assert_eq!(
            r.message(&req.vars, &req.recipients[0], &extras())
                .unwrap_err()
                .field,
            "headers.X-Code"
        );
    }

    #[test]
    fn variables_cannot_inject_header_fields() {
        let (r, req) = renderer(
            r#"{"from":"a@shop.test","subject":"{{ name }}","text":"x","recipients":[{"email":"b@x.test","name":"x\r\nBcc: evil@x.test"}]}"#,
        );
        let msg = String::from_utf8(r.message(&req.vars, &req.recipients[0], &extras()).unwrap())
            .unwrap();
        assert!(!msg.contains("\r\nBcc:"), "{msg}");
    }

    #[test]
    fn attachments_and_non_ascii() {
        let (r, req) = renderer(
            r#"{"from":"a@shop.test","subject":"Grüße {{ name }}","text":"Grüße","attachments":[{"filename":"a.bin","content_type":"application/pdf","content":"AAECAw=="}],"recipients":[{"email":"b@x.test","name":"Jürgen"}]}"#,
        );
        let msg = r.message(&req.vars, &req.recipients[0], &extras()).unwrap();
        assert!(msg.is_ascii());
        let parsed = mail_parser::MessageParser::default().parse(&msg).unwrap();
        assert_eq!(parsed.subject(), Some("Grüße Jürgen"));
        assert_eq!(parsed.body_text(0).unwrap().trim_end(), "Grüße");
        let att = parsed.attachment(0).unwrap();
        assert_eq!(att.contents(), [0, 1, 2, 3]);
        assert_eq!(att.attachment_name(), Some("a.bin"));
    }

    #[test]
    fn raw_gets_identity_headers_it_lacks() {
        let (r, req) = renderer(
            r#"{"raw":"From: a@shop.test\nTo: {{ email }}\nSubject: s\n\nhello {{ name }}\n","recipients":[{"email":"b@x.test","name":"Bo"}]}"#,
        );
        let msg = String::from_utf8(r.message(&req.vars, &req.recipients[0], &extras()).unwrap())
            .unwrap();
        assert!(msg.contains("To: b@x.test\r\n"));
        assert!(msg.contains("Message-ID: <"));
        assert!(msg.ends_with("\r\n\r\nhello Bo\r\n"), "{msg:?}");
    }

    #[test]
    fn quoted_printable_lines_stay_short() {
        let qp = quoted_printable(&"é".repeat(100));
        assert!(qp.split("\r\n").all(|l| l.len() <= 76));
        assert_eq!(quoted_printable("a = b \nc"), "a =3D b=20\r\nc");
    }
}
