//! The gRPC front end, `tern.v1.Inject` on ingress's gRPC listener: the
//! same calls into `core.rs` as HTTP. A `SendRequest` becomes the JSON body
//! HTTP would have received, so validation, field names and idempotency
//! are literally the same code.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use base64::Engine as _;
use serde_json::{Map, Value};
use tern_proto::inject_server::{Inject, InjectServer};
use tern_proto::{
    BatchRecipients, BatchRequest, BatchStatus, CampaignStatsRequest, CampaignStatsResponse,
    RejectedRecipient, SendRequest, SendResponse,
};
use tern_tenant::Tenant;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};

use super::batch::{Record, State};
use super::core::{self, Answer, Api, Failure, Kind};

/// The service; answers `UNAVAILABLE` until the API's state is set (its
/// buckets and lists are opened after the gRPC listener is up).
#[derive(Clone, Default)]
pub(crate) struct InjectService {
    api: Arc<OnceLock<Api>>,
}

impl InjectService {
    /// Make the API live (once; later calls are ignored).
    pub(crate) fn set(&self, api: Api) {
        let _ = self.api.set(api);
    }

    /// The tonic service, refusing messages over `max_body` octets like
    /// HTTP's `413`: `RESOURCE_EXHAUSTED` naming `body`.
    pub(crate) fn server(&self, max_body: usize) -> SizedInjectServer {
        SizedInjectServer {
            inner: InjectServer::new(self.clone()).max_decoding_message_size(max_body),
            max_body,
        }
    }

    /// The state and the caller's tenant (metadata `authorization`).
    async fn caller<T>(&self, req: &Request<T>) -> Result<(&Api, Tenant), Status> {
        let api = self.api.get().ok_or_else(|| {
            Status::unavailable("the injection API is starting (or TERN_API_LISTEN is empty)")
        })?;
        let value = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let tenant = core::authenticate(api, value).await.map_err(status)?;
        Ok((api, tenant))
    }
}

/// [`InjectServer`] with the size refusal of the other refusals: tonic
/// refuses a message over its decoding limit with `OUT_OF_RANGE` and a
/// message of its own before any handler runs; this answers
/// `RESOURCE_EXHAUSTED` `body: larger than N octets` instead, as
/// `tern.v1.Inject` promises (none of its handlers answers `OUT_OF_RANGE`).
#[derive(Clone)]
pub(crate) struct SizedInjectServer {
    inner: InjectServer<InjectService>,
    max_body: usize,
}

impl NamedService for SizedInjectServer {
    const NAME: &'static str = <InjectServer<InjectService> as NamedService>::NAME;
}

impl Service<http::Request<tonic::body::Body>> for SizedInjectServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let answer = self.inner.call(req);
        let max_body = self.max_body;
        Box::pin(async move {
            let response = answer.await?;
            let too_large = Status::from_header_map(response.headers())
                .is_some_and(|s| s.code() == Code::OutOfRange);
            if too_large {
                return Ok(status(too_large_failure(max_body)).into_http());
            }
            Ok(response)
        })
    }
}

/// The refusal of a request over `max_body` octets (HTTP's `413`).
fn too_large_failure(max_body: usize) -> Failure {
    Failure::new(
        Kind::TooLarge,
        "body",
        format!("larger than {max_body} octets"),
    )
}

/// The gRPC status of a refusal: the field first in the message.
fn status(f: Failure) -> Status {
    let code = match f.kind {
        Kind::BadField | Kind::TooManyRecipients => Code::InvalidArgument,
        Kind::TooLarge => Code::ResourceExhausted,
        Kind::KeyReused | Kind::AlreadySpooled => Code::FailedPrecondition,
        Kind::BadKey => Code::Unauthenticated,
        Kind::ForeignDomain => Code::PermissionDenied,
        Kind::NotFound => Code::NotFound,
        Kind::InProgress => Code::Aborted,
        Kind::Unavailable => Code::Unavailable,
    };
    if f.field.is_empty() {
        Status::new(code, f.message)
    } else {
        Status::new(code, format!("{}: {}", f.field, f.message))
    }
}

/// A JSON object given as a string (`vars`); empty: none.
fn json_object(field: &str, text: &str) -> Result<Option<Value>, Failure> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v @ Value::Object(_)) => Ok(Some(v)),
        Ok(_) => Err(Failure::new(Kind::BadField, field, "must be a JSON object")),
        Err(e) => Err(Failure::new(
            Kind::BadField,
            field,
            format!("not a JSON object: {e}"),
        )),
    }
}

/// The JSON body HTTP would have got for `req` (fields left empty are
/// absent, as they would be in JSON). Deterministic, so a repeated request
/// hashes alike for idempotency.
fn request_json(req: SendRequest) -> Result<Vec<u8>, Failure> {
    let mut obj = Map::new();
    let mut put = |k: &str, v: Value| {
        obj.insert(k.to_string(), v);
    };
    for (k, v) in [("from", req.from), ("subject", req.subject)] {
        if !v.is_empty() {
            put(k, Value::String(v));
        }
    }
    for (k, v) in [
        ("reply_to", req.reply_to),
        ("text", req.text),
        ("html", req.html),
        ("raw", req.raw),
    ] {
        if let Some(v) = v {
            put(k, Value::String(v));
        }
    }
    if !req.headers.is_empty() {
        let sorted: BTreeMap<_, _> = req.headers.into_iter().collect();
        let headers = sorted
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect::<Map<_, _>>();
        put("headers", Value::Object(headers));
    }
    let mut recipients = Vec::with_capacity(req.recipients.len());
    for (i, r) in req.recipients.into_iter().enumerate() {
        let mut o = Map::new();
        o.insert("email".into(), Value::String(r.email));
        o.insert("name".into(), Value::String(r.name));
        if let Some(v) = json_object(&format!("recipients[{i}].vars"), &r.vars)? {
            o.insert("vars".into(), v);
        }
        recipients.push(Value::Object(o));
    }
    put("recipients", Value::Array(recipients));
    if let Some(v) = json_object("vars", &req.vars)? {
        put("vars", v);
    }
    for (k, v) in [("campaign", req.campaign), ("send_at", req.send_at)] {
        if !v.is_empty() {
            put(k, Value::String(v));
        }
    }
    if let Some(u) = req.unsubscribe {
        put("unsubscribe", Value::Bool(u));
    }
    if !req.attachments.is_empty() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let list = req
            .attachments
            .into_iter()
            .map(|a| {
                serde_json::json!({
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "content": b64.encode(&a.content),
                })
            })
            .collect();
        put("attachments", Value::Array(list));
    }
    serde_json::to_vec(&Value::Object(obj)).map_err(Failure::unavailable)
}

fn send_response(a: Answer) -> SendResponse {
    SendResponse {
        batch_id: a.batch_id,
        accepted: a.accepted,
        suppressed: a.suppressed,
        rejected: a
            .rejected
            .into_iter()
            .map(|r| RejectedRecipient {
                email: r.email,
                reason: r.reason,
            })
            .collect(),
    }
}

fn batch_status(r: Record, counts: Option<tern_stats::BatchCounts>) -> BatchStatus {
    let state = match r.state {
        State::Scheduled => "scheduled",
        State::Expanding => "expanding",
        State::Spooled => "spooled",
        State::Cancelled => "cancelled",
    };
    BatchStatus {
        batch_id: r.batch_id,
        tenant: r.tenant,
        campaign: r.campaign,
        state: state.into(),
        total: r.total,
        spooled: r.spooled,
        rejected: r.rejected,
        failed: r.failed,
        created_unix_ms: r.created_unix_ms,
        send_at_unix_ms: r.send_at_unix_ms,
        recipients: counts.map(|c| BatchRecipients {
            accepted: c.accepted,
            pending: c.pending,
            delivered: c.delivered,
            bounced: c.bounced,
            expired: c.expired,
            cancelled: c.cancelled,
            suppressed: c.suppressed,
            deferrals: c.deferrals,
        }),
    }
}

fn stats_response(s: tern_stats::Stats) -> CampaignStatsResponse {
    CampaignStatsResponse {
        campaign: s.campaign,
        from: s.from,
        to: s.to,
        accepted: s.accepted,
        delivered: s.delivered,
        deferred: s.deferred,
        bounced: s.bounced.total,
        bounced_by_class: s.bounced.by_class.into_iter().collect(),
        complained: s.complained,
        unsubscribed: s.unsubscribed,
        suppressed: s.suppressed,
        expired: s.expired,
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl Inject for InjectService {
    async fn send(&self, req: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let (api, tenant) = self.caller(&req).await?;
        let mut req = req.into_inner();
        let key = std::mem::take(&mut req.idempotency_key);
        let body = request_json(req).map_err(status)?;
        let answer = core::send(api, &tenant, body.into(), non_empty(&key))
            .await
            .map_err(status)?;
        Ok(Response::new(send_response(answer)))
    }

    async fn get_batch(&self, req: Request<BatchRequest>) -> Result<Response<BatchStatus>, Status> {
        let (api, tenant) = self.caller(&req).await?;
        let (record, counts) = core::batch_status(api, &tenant, &req.get_ref().batch_id)
            .await
            .map_err(status)?;
        Ok(Response::new(batch_status(record, counts)))
    }

    async fn cancel_batch(
        &self,
        req: Request<BatchRequest>,
    ) -> Result<Response<BatchStatus>, Status> {
        let (api, tenant) = self.caller(&req).await?;
        let record = core::cancel(api, &tenant, &req.get_ref().batch_id)
            .await
            .map_err(status)?;
        Ok(Response::new(batch_status(record, None)))
    }

    async fn stats(
        &self,
        req: Request<CampaignStatsRequest>,
    ) -> Result<Response<CampaignStatsResponse>, Status> {
        let (api, tenant) = self.caller(&req).await?;
        let q = req.get_ref();
        let s = core::stats(
            api,
            &tenant,
            &q.campaign,
            non_empty(&q.from),
            non_empty(&q.to),
        )
        .await
        .map_err(status)?;
        Ok(Response::new(stats_response(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_request_becomes_the_http_body() {
        let req = SendRequest {
            from: "a@shop.test".into(),
            text: Some("hi {{ n }}".into()),
            vars: r#"{"n": 3}"#.into(),
            recipients: vec![tern_proto::InjectRecipient {
                email: "r@x.test".into(),
                name: "R".into(),
                vars: String::new(),
            }],
            headers: [
                ("X-B".to_string(), "2".to_string()),
                ("X-A".into(), "1".into()),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let body: Value = serde_json::from_slice(&request_json(req.clone()).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"from": "a@shop.test", "text": "hi {{ n }}", "vars": {"n": 3},
                "headers": {"X-A": "1", "X-B": "2"},
                "recipients": [{"email": "r@x.test", "name": "R"}]})
        );
        // Deterministic: the same request hashes alike.
        assert_eq!(
            request_json(req.clone()).unwrap(),
            request_json(req).unwrap()
        );
    }

    #[test]
    fn vars_that_are_not_an_object_name_their_field() {
        let req = SendRequest {
            recipients: vec![tern_proto::InjectRecipient {
                email: "r@x.test".into(),
                vars: "[1]".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = request_json(req).unwrap_err();
        assert_eq!(e.field, "recipients[0].vars");
        assert_eq!(status(e).code(), Code::InvalidArgument);
    }
}
