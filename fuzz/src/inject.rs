//! The injection API's JSON request body (`POST /v1/messages`).

use base64::Engine as _;
use serde_json::{Map, Value, json};
use tern_ingress::inject_request::{self, Request};

/// No panic; a refusal names a field; every accepted recipient is a valid
/// address; and an accepted request written back as JSON parses to the
/// same request (its refused recipients left out).
pub fn request(data: &[u8]) {
    let req = match inject_request::parse(data) {
        Ok(r) => r,
        Err(e) => {
            assert!(!e.field.is_empty() && !e.message.is_empty(), "{e:?}");
            return;
        }
    };
    for r in &req.recipients {
        assert!(inject_request::valid_address(&r.email), "{:?}", r.email);
    }
    // A request whose recipients were all refused is answered with the
    // refusals; without recipients it cannot be sent again.
    if req.recipients.is_empty() {
        assert!(!req.rejected.is_empty(), "accepted with no recipients");
        return;
    }
    let body = render(&req);
    let again = inject_request::parse(body.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{body} is refused: {e}"));
    let expected = Request {
        rejected: Vec::new(),
        ..req
    };
    assert_eq!(again, expected, "round trip via {body}");
}

/// The request as a client would send it.
fn render(req: &Request) -> Value {
    let t = &req.template;
    let mut o = Map::new();
    if let Some(raw) = &t.raw {
        o.insert("raw".into(), json!(raw));
    } else {
        o.insert("from".into(), json!(t.from));
        o.insert("subject".into(), json!(t.subject));
        if let Some(v) = &t.reply_to {
            o.insert("reply_to".into(), json!(v));
        }
        if let Some(v) = &t.text {
            o.insert("text".into(), json!(v));
        }
        if let Some(v) = &t.html {
            o.insert("html".into(), json!(v));
        }
        o.insert("headers".into(), json!(t.headers));
    }
    let attachments: Vec<Value> = t
        .attachments
        .iter()
        .map(|a| {
            json!({
                "filename": a.filename,
                "content_type": a.content_type,
                "content": base64::engine::general_purpose::STANDARD.encode(&a.content),
            })
        })
        .collect();
    o.insert("attachments".into(), Value::Array(attachments));
    let recipients: Vec<Value> = req
        .recipients
        .iter()
        .map(|r| json!({"email": r.email, "name": r.name, "vars": r.vars}))
        .collect();
    o.insert("recipients".into(), Value::Array(recipients));
    o.insert("vars".into(), Value::Object(req.vars.clone()));
    o.insert("campaign".into(), json!(req.campaign));
    if let Some(ms) = req.send_at_unix_ms {
        o.insert("send_at".into(), json!(rfc3339(ms)));
    }
    if let Some(u) = req.unsubscribe {
        o.insert("unsubscribe".into(), json!(u));
    }
    Value::Object(o)
}

/// Unix milliseconds as an RFC 3339 UTC date-time.
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to a civil date (the proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}
