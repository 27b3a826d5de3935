//! The one-click unsubscribe endpoint, `/u/TOKEN` (RFC 8058, RFC 2369),
//! as an axum router the injection API's listener mounts:
//!
//! - `POST` with the body `List-Unsubscribe=One-Click` (what a mailbox
//!   provider sends, RFC 8058 §3.2) unsubscribes at once, no confirmation;
//! - `GET` (a person clicking the link) shows a small page with one button,
//!   a form that POSTs the same body, so the link is safe against scanners
//!   that follow every URL in a message;
//! - a token that does not verify gets `404` and changes nothing.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::suppress::{Entry, Reason, Suppressions};
use crate::token::{self, Secret, UnsubscribeFields};

/// Tenant and list names for the numeric ids tokens carry (the injection
/// API's store implements it).
pub trait Names: Send + Sync + 'static {
    /// The tenant's name (the suppression lists' key) for its id.
    fn tenant(&self, id: u32) -> Option<String>;
    /// The list's or campaign's name; never asked for id 0 (whole tenant).
    fn list(&self, tenant: u32, id: u32) -> Option<String>;
    /// The address of recipient `index` of message `message` (a ULID), for
    /// a `mailto:` unsubscribe or a redacted complaint; `None` when unknown.
    fn recipient(&self, message: u128, index: u32) -> Option<String> {
        let _ = (message, index);
        None
    }
}

/// What the endpoint needs.
pub struct UnsubscribeState {
    /// Verifies the tokens.
    pub secret: Secret,
    /// Where the unsubscribe goes.
    pub lists: Suppressions,
    /// Names for the token's ids.
    pub names: Arc<dyn Names>,
}

/// The `/u/{token}` routes.
pub fn router(state: Arc<UnsubscribeState>) -> Router {
    Router::new()
        .route("/u/{token}", get(page).post(one_click))
        .with_state(state)
}

/// The RFC 8058 §3.1 body (a form field; other fields may come with it).
const ONE_CLICK: &str = "List-Unsubscribe=One-Click";

fn html(status: StatusCode, title: &str, body: &str) -> Response {
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title>\
         <style>body{{font:1.1rem/1.5 system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}\
         button{{font:inherit;padding:.6rem 1.4rem;cursor:pointer}}</style></head>\
         <body><main><h1>{title}</h1>{body}</main></body></html>\n"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
        .into_response()
}

fn not_found() -> Response {
    html(
        StatusCode::NOT_FOUND,
        "Link not valid",
        "<p>This unsubscribe link is not valid.</p>",
    )
}

/// Escape text for HTML content and attribute values.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn verify(state: &UnsubscribeState, t: &str) -> Option<UnsubscribeFields> {
    token::parse_unsubscribe_token(&state.secret, t).ok()
}

async fn page(State(state): State<Arc<UnsubscribeState>>, Path(t): Path<String>) -> Response {
    let Some(fields) = verify(&state, &t) else {
        return not_found();
    };
    let who = escape(&fields.recipient);
    html(
        StatusCode::OK,
        "Unsubscribe",
        &format!(
            "<p>Stop sending mail to <strong>{who}</strong>?</p>\
             <form method=\"post\">\
             <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
             <button type=\"submit\" id=\"unsubscribe\">Unsubscribe</button></form>"
        ),
    )
}

async fn one_click(
    State(state): State<Arc<UnsubscribeState>>,
    Path(t): Path<String>,
    body: Bytes,
) -> Response {
    let Some(fields) = verify(&state, &t) else {
        return not_found();
    };
    let body = String::from_utf8_lossy(&body);
    if !body.split('&').any(|f| f.trim() == ONE_CLICK) {
        return html(
            StatusCode::BAD_REQUEST,
            "Not unsubscribed",
            "<p>The request did not ask to unsubscribe.</p>",
        );
    }
    let (Some(tenant), campaign) = (
        state.names.tenant(fields.tenant),
        match fields.list {
            0 => Some(String::new()),
            id => state.names.list(fields.tenant, id),
        },
    ) else {
        // Signed by us but the tenant is gone: nothing left to unsubscribe from.
        return not_found();
    };
    let Some(campaign) = campaign else {
        return not_found();
    };
    let entry = Entry {
        tenant,
        campaign,
        address: fields.recipient.clone(),
        reason: Reason::Unsubscribe,
        at_unix_ms: tern_runtime::now_unix_ms(),
        source: "one-click".into(),
    };
    match state.lists.add(&entry).await {
        Ok(()) => {
            metrics::counter!("tern_unsubscribes_total", "via" => "one_click").increment(1);
            html(
                StatusCode::OK,
                "Unsubscribed",
                &format!(
                    "<p role=\"status\"><strong>{}</strong> will get no more of these messages.</p>",
                    escape(&fields.recipient)
                ),
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "unsubscribe not stored");
            html(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "<p>The unsubscribe could not be saved; please try again in a minute.</p>",
            )
        }
    }
}
