//! Log line formats that carry the OpenTelemetry `trace_id` and `span_id` of
//! the span a line was written in, so a log line leads to its trace and a
//! message id from a `250` reply leads to both.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The (trace id, span id) of the current span, if it is being traced.
fn ids() -> Option<(String, String)> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Human-readable lines: the standard format with ` trace_id=… span_id=…` appended.
pub struct Text(pub Format);

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        // Colours off: the line is post-processed and often read by machines.
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        let line = line.trim_end_matches('\n');
        match ids() {
            Some((t, s)) => writeln!(writer, "{line} trace_id={t} span_id={s}"),
            None => writeln!(writer, "{line}"),
        }
    }
}

/// One JSON object per line: `timestamp`, `level`, `target`, `span`, the
/// event's fields (`message` among them), and `trace_id`/`span_id`.
pub struct Json;

struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

impl<S, N> FormatEvent<S, N> for Json
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut obj = serde_json::Map::new();
        let now = crate::now_unix_ms();
        obj.insert("timestamp".into(), crate::date::rfc3339_millis(now).into());
        obj.insert("level".into(), event.metadata().level().as_str().into());
        obj.insert("target".into(), event.metadata().target().into());
        if let Some(span) = ctx.lookup_current() {
            obj.insert("span".into(), span.name().into());
        }
        event.record(&mut Fields(&mut obj));
        if let Some((t, s)) = ids() {
            obj.insert("trace_id".into(), t.into());
            obj.insert("span_id".into(), s.into());
        }
        writeln!(writer, "{}", serde_json::Value::Object(obj))
    }
}
