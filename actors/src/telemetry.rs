//! Trace context for the engine: whether spans are on, W3C `traceparent`
//! written into and read from NATS headers, the trace context stored with
//! an execution, and the spans of long work (a workflow, its tasks) that
//! outlive any one process, recorded when they end.
//!
//! Spans are `tracing` spans; the binary's OpenTelemetry layer turns them
//! into OpenTelemetry spans and makes each entered span's context current
//! (`opentelemetry::Context::current()`), which is what [`inject`] writes.
//! When tracing is off (the default) nothing here allocates beyond what the
//! bus did before: headers carry the trace id derived from the cause
//! ([`crate::bus::traceparent`]) and [`span`] returns `Span::none()`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use async_nats::HeaderMap;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};
use sha2::{Digest, Sha256};

use crate::bus::TRACEPARENT;

static ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are recorded (an OpenTelemetry layer is installed).
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Called once by the binary after it installed the OpenTelemetry layer.
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// `make()` when spans are on, else `Span::none()` (no allocation).
pub fn span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if on() {
        make()
    } else {
        tracing::Span::none()
    }
}

/// The W3C `traceparent` of a span context.
pub fn format(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// Parses a W3C `traceparent` (version 00); `None` when malformed or all
/// zeros.
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// The current span's `traceparent`, when spans are on and one is current.
pub fn current() -> Option<String> {
    if !on() {
        return None;
    }
    let cx = Context::current();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| format(&sc))
}

/// Writes the trace context into `headers`: `stored` (the context an
/// execution's work hangs under, kept with its record) when given, else
/// the current span's when spans are on, else the one derived from
/// `cause_id`.
pub fn inject(headers: &mut HeaderMap, stored: Option<&str>, cause_id: &str) {
    let value = stored
        .map(str::to_string)
        .or_else(current)
        .unwrap_or_else(|| crate::bus::traceparent(cause_id));
    headers.insert(TRACEPARENT, value.as_str());
}

/// The remote context a message's headers carry, when spans are on.
pub fn extract(headers: Option<&HeaderMap>) -> Option<Context> {
    if !on() {
        return None;
    }
    let value = headers?.get(TRACEPARENT)?.as_str();
    remote(value)
}

/// A context whose parent is the span `traceparent` names.
pub fn remote(traceparent: &str) -> Option<Context> {
    parse(traceparent).map(|sc| Context::new().with_remote_span_context(sc))
}

/// A span id derived from `seed`: the span of a workflow or task is known
/// before it is recorded, by every node, after any restart.
pub fn derived_span_id(seed: &str) -> SpanId {
    let digest = Sha256::digest(seed.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    if bytes == [0; 8] {
        bytes[7] = 1;
    }
    SpanId::from_bytes(bytes)
}

/// The `traceparent` of the span with id [`derived_span_id`]`(seed)` in the
/// trace of `parent`.
pub fn derived(parent: &str, seed: &str) -> Option<String> {
    let p = parse(parent)?;
    let sc = SpanContext::new(
        p.trace_id(),
        derived_span_id(seed),
        p.trace_flags(),
        false,
        TraceState::default(),
    );
    Some(format(&sc))
}

thread_local! {
    static NEXT_SPAN_ID: std::cell::Cell<Option<SpanId>> = const { std::cell::Cell::new(None) };
}

/// The span id the next span started on this thread must take, if
/// [`record`] set one: the binary's id generator asks here first.
pub fn take_span_id() -> Option<SpanId> {
    NEXT_SPAN_ID.with(std::cell::Cell::take)
}

/// A finished span of work that outlived one message (a workflow run, a
/// task run), recorded at its end with its known id and start.
#[derive(Debug)]
pub struct Finished<'a> {
    pub name: &'static str,
    /// The `traceparent` the span has (its id is the span's).
    pub traceparent: &'a str,
    /// The `traceparent` of its parent.
    pub parent: &'a str,
    pub start: SystemTime,
    pub attributes: Vec<KeyValue>,
}

/// Records `span` as ended now. Nothing when spans are off.
pub fn record(span: Finished<'_>) {
    if !on() {
        return;
    }
    let (Some(me), Some(parent)) = (parse(span.traceparent), remote(span.parent)) else {
        return;
    };
    // The id generator gives the span its known id.
    NEXT_SPAN_ID.with(|n| n.set(Some(me.span_id())));
    let tracer = opentelemetry::global::tracer("squall");
    let builder = tracer
        .span_builder(span.name)
        .with_kind(SpanKind::Internal)
        .with_start_time(span.start)
        .with_attributes(span.attributes);
    let mut started = tracer.build_with_context(builder, &parent);
    NEXT_SPAN_ID.with(std::cell::Cell::take);
    opentelemetry::trace::Span::end(&mut started);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_garbage() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let sc = parse(tp).expect("valid");
        assert_eq!(format(&sc), tp);
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        let child = derived(tp, "task:x").expect("derived");
        assert!(child.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert_eq!(derived(tp, "task:x"), Some(child.clone()));
        assert_ne!(derived(tp, "task:y"), Some(child));
    }

    #[test]
    fn off_by_default_injects_the_derived_context() {
        assert!(!on());
        assert!(current().is_none());
        let mut h = HeaderMap::new();
        inject(&mut h, None, "6740f0aa0123456789abcdef");
        assert_eq!(
            h.get(TRACEPARENT).map(|v| v.as_str().to_string()),
            Some(crate::bus::traceparent("6740f0aa0123456789abcdef"))
        );
        assert!(extract(Some(&h)).is_none());
    }
}
