//! Spans to OTLP's protobuf wire format (`ExportTraceServiceRequest`), and the resource that
//! describes this Tandem.
//!
//! The request path writes each sampled span while what it describes is at hand (a server span
//! begins when the request arrives, before its name is known, and is closed with the response),
//! straight from borrowed strings and integers, into an [`EncodedSpans`] (a few hundred bytes:
//! ids, times, attributes as `KeyValue` fields), which are copied into a batch buffer; the
//! exporter task writes the request's header in front of them ([`Encoder`]). Nothing is built in
//! between: an attribute list of copied strings, moved through the queue, encoded and dropped
//! on the exporter task, cost about three times as many instructions per span, and the
//! exporter shares the proxy's core. Neither goes through `opentelemetry-proto`'s generated
//! structs, which would cost a heap allocation per attribute key, value and id (about 1.5 µs a
//! span). The generated types remain the reference: the resource and scope are encoded with
//! them once at start, and the tests decode what is written with them and compare it to the
//! same spans converted field by field.
//!
//! Field numbers are those of `opentelemetry/proto/trace/v1/trace.proto`,
//! `common/v1/common.proto` and `collector/trace/v1/trace_service.proto`.

use std::cell::RefCell;
use std::net::IpAddr;

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tandem_config::Tracing;

use super::context::{SpanId, TraceId};
use super::span::{SpanKind, SpanRecord, Status, Value};

/// OTLP span flags: the W3C sampled flag (bits 0-7 carry trace flags), and whether the parent is
/// known to be remote (bit 8) and is (bit 9).
const FLAG_SAMPLED: u32 = 0x01;
const FLAG_HAS_IS_REMOTE: u32 = 0x100;
const FLAG_IS_REMOTE: u32 = 0x200;

/// `Span.SpanKind` and `Status.StatusCode` values.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
const STATUS_ERROR: u64 = 2;

/// The instrumentation scope of every span: Tandem itself.
const SCOPE: &str = "tandem";

/// Writes export requests for one resource.
///
/// A batch is written in one buffer from the start: [`Encoder::header_room`] bytes kept free,
/// then the spans appended as they are recorded. [`Encoder::finish`] writes the request's
/// header (whose lengths depend on the spans) into the end of that room, so the request goes
/// out as the bytes the spans were first copied into: no copy per export.
#[derive(Debug)]
pub struct Encoder {
    /// `ResourceSpans.resource` (field 1), key and length included.
    resource: Bytes,
    /// `ScopeSpans.scope` (field 1), key and length included.
    scope: Bytes,
    /// Whether requests start with gRPC's message prefix.
    grpc: bool,
}

/// Spans already in OTLP's wire form, each one a whole `ScopeSpans.spans` field (key, length,
/// `Span`), so that an export request is these bytes spliced after a fixed header.
///
/// The request path writes a sampled request's spans here as they finish, straight from what
/// it holds (borrowed strings, integers): no attribute list, no `String` per value, nothing to
/// convert or move again on the exporter task. Spans are written one after the other: [`begin`]
/// opens one, attributes and the status go to the open span, [`end`] closes it. Fields may come
/// in any order in protobuf, so a span's end time and late attributes can follow the rest.
///
/// [`begin`]: EncodedSpans::begin
/// [`end`]: EncodedSpans::end
#[derive(Debug, Default)]
pub struct EncodedSpans {
    bytes: Vec<u8>,
    /// Whole spans in `bytes`.
    spans: u32,
    /// Where the open span's length goes (two bytes are kept for it), if one is open.
    open: Option<usize>,
    /// Bytes at the start of `bytes` that are no span: attributes written once to be copied
    /// into each span that carries them ([`EncodedSpans::preamble_str_parts_attr`]). 32 bits,
    /// beside `spans`: the proxy keeps two of these in each traced request's state, which is
    /// kept small (see `tandem_proxy::trace`).
    preamble: u32,
}

/// String attributes encoded once, exactly as [`EncodedSpans::str`] writes them one by one,
/// for attributes every span of a route carries with the same values (its listener, route and
/// upstream names): one copy per span instead of a key and value written per attribute.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedAttributes(Box<[u8]>);

impl EncodedAttributes {
    /// `pairs` (key, value) as string attributes, in order.
    pub fn strs(pairs: &[(&str, &str)]) -> EncodedAttributes {
        EncodedAttributes::build(|s| {
            for (k, v) in pairs {
                s.str(k, v);
            }
        })
    }

    /// The attributes `write` adds to a span ([`EncodedSpans::str`], [`EncodedSpans::int`]
    /// ...), in order.
    pub fn build(write: impl FnOnce(&mut EncodedSpans)) -> EncodedAttributes {
        let mut s = EncodedSpans {
            bytes: Vec::new(),
            spans: 0,
            // Open, so that attributes are written: the bytes are never closed as a span.
            open: Some(0),
            preamble: 0,
        };
        write(&mut s);
        EncodedAttributes(s.bytes.into_boxed_slice())
    }
}

/// An attribute key known in advance, with the bytes around it in every attribute made
/// for it: `Span.attributes`' tag, a byte for the `KeyValue`'s length, `KeyValue.key` (tag,
/// length, the key) and `KeyValue.value`'s tag. An attribute is then a fixed-size copy of
/// these, a few bytes set in it, and the value: [`EncodedSpans::str_attr`] and
/// [`EncodedSpans::int_attr`] cost about half as many instructions as [`EncodedSpans::str`]
/// and [`EncodedSpans::int`], which copy a key of any length and compute its lengths on every
/// call (a traced request writes a dozen such attributes).
#[derive(Clone, Copy, Debug)]
pub struct Key {
    name: &'static str,
    /// The bytes before the `AnyValue`'s length, then room for the value's first bytes.
    head: [u8; KEY_ROOM],
    /// Bytes of `head` before the `AnyValue`'s length.
    len: usize,
}

/// Bytes of a [`Key`]'s head: a key of [`MAX_KEY`] bytes, its five bytes of tags and lengths,
/// and an `AnyValue` with an integer (two bytes and a ten-byte varint) or an IPv4 address as
/// text (three bytes and fifteen) fit.
const KEY_ROOM: usize = 64;
/// Longest key a [`Key`] holds.
const MAX_KEY: usize = 40;

impl Key {
    /// The key `name` (at most 40 bytes: semantic-convention names are far shorter).
    pub const fn new(name: &'static str) -> Key {
        let k = name.as_bytes();
        assert!(k.len() <= MAX_KEY, "attribute key too long for a Key");
        let mut head = [0; KEY_ROOM];
        head[0] = ATTRIBUTE;
        head[2] = KV_KEY;
        head[3] = k.len() as u8;
        let mut i = 0;
        while i < k.len() {
            head[4 + i] = k[i];
            i += 1;
        }
        head[4 + k.len()] = ANY_VALUE;
        Key {
            name,
            head,
            len: 5 + k.len(),
        }
    }

    /// The key.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// Largest span buffer kept for reuse (a request whose spans took more frees its buffer).
pub const MAX_SPARE: usize = 8 * 1024;

/// Most span buffers kept per thread. Requests in flight each hold one, and they end in any
/// order: with a single spare, a proxy with hundreds of requests in flight allocated and
/// freed a buffer for nearly every request.
pub const MAX_SPARES: usize = 128;

thread_local! {
    /// Span buffers given back on this thread ([`EncodedSpans::recycle`]), the last on top.
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// What a span starts with: identity, place in the trace, name, kind and start.
#[derive(Clone, Copy, Debug)]
pub struct SpanStart<'a> {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// The parent span, if any.
    pub parent: Option<SpanId>,
    /// Whether the parent lives in another process.
    pub remote_parent: bool,
    /// W3C `tracestate` of the trace at this span.
    pub trace_state: Option<&'a [u8]>,
    /// Span name.
    pub name: &'a str,
    /// More of the name, after a space (`GET` and `/api/*` make `GET /api/*`).
    pub name_suffix: Option<&'a str>,
    /// Server or client.
    pub kind: SpanKind,
    /// Start, in nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
}

/// The resource of this process: `service.name`, `service.instance.id` (a random UUID per
/// start, as the semantic conventions recommend), `service.version` (Tandem's), then the
/// configured attributes, which may replace the last two.
pub fn resource(config: &Tracing) -> Resource {
    let mut attributes = vec![kv("service.name", config.service_name.clone())];
    let configured = |key: &str| config.resource.iter().any(|(k, _)| k == key);
    if !configured("service.instance.id") {
        attributes.push(kv("service.instance.id", uuid_v4()));
    }
    if !configured("service.version") {
        attributes.push(kv("service.version", env!("CARGO_PKG_VERSION").to_owned()));
    }
    attributes.extend(config.resource.iter().map(|(k, v)| kv(k, v.clone())));
    Resource {
        attributes,
        ..Default::default()
    }
}

// === impl Encoder ===

impl Encoder {
    /// An encoder for spans of `resource`.
    pub fn new(resource: &Resource) -> Self {
        let scope = InstrumentationScope {
            name: SCOPE.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        };
        Encoder {
            resource: field_bytes(1, &resource.encode_to_vec()),
            scope: field_bytes(1, &scope.encode_to_vec()),
            grpc: false,
        }
    }

    /// Requests from now on start with gRPC's 5-byte message prefix (uncompressed, length), so
    /// that they are a gRPC request body as they are.
    pub fn grpc_framed(mut self) -> Self {
        self.grpc = true;
        self
    }

    /// Bytes to keep at the start of a batch buffer for [`Encoder::finish`]: the longest
    /// header (gRPC prefix, two keys and two lengths of five bytes at most, resource, scope).
    pub fn header_room(&self) -> usize {
        5 + 1 + 5 + self.resource.len() + 1 + 5 + self.scope.len()
    }

    /// One `ExportTraceServiceRequest` (behind gRPC's prefix when [`Encoder::grpc_framed`])
    /// carrying the whole spans that follow the first `room` bytes of `batch` (at least
    /// [`Encoder::header_room`]; what is in them is overwritten).
    pub fn finish(&self, batch: Vec<u8>, room: usize) -> Bytes {
        let room = room.min(batch.len());
        let spans = batch.len() - room;
        // ExportTraceServiceRequest { resource_spans (1): ResourceSpans {
        //   resource (1), scope_spans (2): ScopeSpans { scope (1), spans (2)... } } }
        let scope_spans = self.scope.len() + spans;
        let resource_spans = self.resource.len() + 1 + varint_len(scope_spans as u64) + scope_spans;
        let message = 1 + varint_len(resource_spans as u64) + resource_spans;
        let mut head = Vec::with_capacity(self.header_room());
        if self.grpc {
            head.push(0);
            // A message over 4 GiB cannot be sent; the collector refuses it (counted as failed).
            head.extend_from_slice(&u32::try_from(message).unwrap_or(u32::MAX).to_be_bytes());
        }
        key(&mut head, 1, LEN);
        varint(&mut head, resource_spans as u64);
        head.extend_from_slice(&self.resource);
        key(&mut head, 2, LEN);
        varint(&mut head, scope_spans as u64);
        head.extend_from_slice(&self.scope);
        let mut out = batch;
        let Some(at) = room.checked_sub(head.len()) else {
            // Less room than asked for (not done here): make it.
            let mut whole = head;
            whole.extend_from_slice(&out[room..]);
            return Bytes::from(whole);
        };
        out[at..room].copy_from_slice(&head);
        let mut out = Bytes::from(out);
        bytes::Buf::advance(&mut out, at);
        out
    }

    /// One request carrying the spans of `chunks` (a batch buffer made and finished at once).
    pub fn encode(&self, chunks: impl IntoIterator<Item = EncodedSpans>) -> Bytes {
        let room = self.header_room();
        let mut batch = vec![0; room];
        for c in chunks {
            // Only whole spans: an open one is left out, as `Tracer::record_encoded` does.
            let mut c = c;
            c.discard_open();
            batch.extend_from_slice(c.as_bytes());
        }
        self.finish(batch, room)
    }
}

// === impl EncodedSpans ===

impl EncodedSpans {
    /// Room for about `bytes` of spans (a span with a dozen attributes takes a few hundred).
    pub fn with_capacity(bytes: usize) -> Self {
        EncodedSpans {
            bytes: Vec::with_capacity(bytes),
            spans: 0,
            open: None,
            preamble: 0,
        }
    }

    /// Room for at least `bytes`, in the buffer this thread last gave back
    /// ([`EncodedSpans::recycle`]) when it is large enough: a traced request takes the buffer
    /// one before it recorded from, likely still in cache, instead of an allocation of its own.
    pub fn recycled(bytes: usize) -> Self {
        let mut buf = SPARE
            .with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()))
            .unwrap_or_default();
        if buf.capacity() < bytes {
            buf = Vec::with_capacity(bytes);
        }
        EncodedSpans {
            bytes: buf,
            spans: 0,
            open: None,
            preamble: 0,
        }
    }

    /// Gives the buffer back to this thread, for the next [`EncodedSpans::recycled`] (up to
    /// [`MAX_SPARES`] are kept per thread, and only those not larger than [`MAX_SPARE`]).
    pub fn recycle(mut self) {
        if self.bytes.capacity() <= MAX_SPARE {
            self.bytes.clear();
            SPARE.with(|s| {
                if let Ok(mut s) = s.try_borrow_mut() {
                    if s.len() < MAX_SPARES {
                        s.push(self.bytes);
                    }
                }
            });
        }
    }

    /// The whole spans' bytes (each a `ScopeSpans.spans` field), and an open span's so far.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.bytes.get(self.preamble as usize..).unwrap_or_default()
    }

    /// Writes a string attribute made of `parts` (the bytes [`EncodedSpans::str_parts_attr`]
    /// writes) ahead of the spans, for [`EncodedSpans::copy_preamble`] to add to spans later: an
    /// attribute several spans carry, written once from what is at hand now. Only before the
    /// first span is begun; replaces an earlier preamble.
    pub fn preamble_str_parts_attr(&mut self, key_: &Key, parts: &[&str]) {
        if self.open.is_some() || self.bytes.len() != self.preamble as usize {
            return;
        }
        self.bytes.clear();
        // Open at 0 for the writer; the bytes are never closed as a span.
        self.open = Some(0);
        self.str_parts_attr(key_, parts);
        self.open = None;
        match u32::try_from(self.bytes.len()) {
            Ok(n) => self.preamble = n,
            // An attribute of 4 GiB is not kept.
            Err(_) => {
                self.bytes.clear();
                self.preamble = 0;
            }
        }
    }

    /// Adds the preamble's attributes to the open span.
    pub fn copy_preamble(&mut self) {
        if self.open.is_some() {
            self.bytes.extend_from_within(..self.preamble as usize);
        }
    }

    /// Whole spans written.
    pub fn spans(&self) -> u32 {
        self.spans
    }

    /// Removes the whole spans (once recorded), keeping the preamble; nothing while a span is
    /// open.
    pub fn clear_spans(&mut self) {
        if self.open.is_none() {
            self.bytes.truncate(self.preamble as usize);
            self.spans = 0;
        }
    }

    /// Whether a span is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Opens a span with `s`'s fields (its end and attributes to follow); a span still open is
    /// closed first as it is (with no end time).
    pub fn begin(&mut self, s: &SpanStart<'_>) {
        self.open_span(s, true);
    }

    /// Opens a span with `s`'s fields but its name (`s.name` and `s.name_suffix` are not
    /// read), which [`EncodedSpans::name`] writes later: a span begun before its name is
    /// known (a server span's name has the route).
    pub fn begin_unnamed(&mut self, s: &SpanStart<'_>) {
        self.open_span(s, false);
    }

    /// The open span's name, `name` then `suffix` after a space when there is one (only for a
    /// span begun by [`EncodedSpans::begin_unnamed`]).
    pub fn name(&mut self, name: &str, suffix: Option<&str>) {
        if self.open.is_none() {
            return;
        }
        let len = match suffix {
            None => name.len(),
            Some(suffix) => name.len() + 1 + suffix.len(),
        };
        let buf = &mut self.bytes;
        buf.reserve(len + 6);
        key(buf, 5, LEN);
        varint(buf, len as u64);
        buf.extend_from_slice(name.as_bytes());
        if let Some(suffix) = suffix {
            buf.push(b' ');
            buf.extend_from_slice(suffix.as_bytes());
        }
    }

    fn open_span(&mut self, s: &SpanStart<'_>, named: bool) {
        if self.open.is_some() {
            self.close();
        }
        let name_len = match (named, s.name_suffix) {
            (false, _) => 0,
            (true, None) => s.name.len(),
            (true, Some(suffix)) => s.name.len() + 1 + suffix.len(),
        };
        // The span's key, two bytes kept for its length, Span { trace_id (1), span_id (2) }
        // and, when no tracestate comes between, parent_span_id (4) and the key and one-byte
        // length of name (5): one copy of a fixed size, cut to what was set.
        let mut head = [0; 43];
        head[0] = 2 << 3 | 2;
        head[3] = 1 << 3 | 2;
        head[4] = 16;
        head[5..21].copy_from_slice(&s.trace_id.to_bytes());
        head[21] = 2 << 3 | 2;
        head[22] = 8;
        head[23..31].copy_from_slice(&s.span_id.to_bytes());
        let mut n = 31;
        let mut name_head = false;
        if s.trace_state.is_none() {
            if let Some(p) = s.parent {
                head[31] = 4 << 3 | 2;
                head[32] = 8;
                head[33..41].copy_from_slice(&p.to_bytes());
                n = 41;
            }
            if !named {
                // No name: nothing to write.
                name_head = true;
            } else if name_len < 0x80 {
                head[n] = 5 << 3 | 2;
                head[n + 1] = name_len as u8;
                n += 2;
                name_head = true;
            }
        }
        let buf = &mut self.bytes;
        let at = buf.len();
        buf.reserve(head.len() + name_len + 17);
        buf.extend_from_slice(&head);
        buf.truncate(at + n);
        self.open = Some(at + 1);
        if let Some(ts) = s.trace_state {
            len_field(buf, 3, ts);
            if let Some(p) = s.parent {
                let mut parent = [4 << 3 | 2, 8, 0, 0, 0, 0, 0, 0, 0, 0];
                parent[2..].copy_from_slice(&p.to_bytes());
                buf.extend_from_slice(&parent);
            }
        }
        if named {
            if !name_head {
                key(buf, 5, LEN);
                varint(buf, name_len as u64);
            }
            buf.extend_from_slice(s.name.as_bytes());
            if let Some(suffix) = s.name_suffix {
                buf.push(b' ');
                buf.extend_from_slice(suffix.as_bytes());
            }
        }
        let mut flags = FLAG_SAMPLED;
        if s.parent.is_some() {
            flags |= FLAG_HAS_IS_REMOTE;
            if s.remote_parent {
                flags |= FLAG_IS_REMOTE;
            }
        }
        // kind (6), start_time_unix_nano (7), flags (16).
        let mut tail = [0; 17];
        tail[0] = 6 << 3;
        tail[1] = match s.kind {
            SpanKind::Server => KIND_SERVER,
            SpanKind::Client => KIND_CLIENT,
        } as u8;
        tail[2] = 7 << 3 | I64 as u8;
        tail[3..11].copy_from_slice(&s.start_unix_nanos.to_le_bytes());
        // Field 16's key takes two bytes as a varint.
        // Field 16 with wire type I32 is 133: two varint bytes.
        tail[11] = ((16 << 3 | I32) as u8) | 0x80;
        tail[12] = 1;
        tail[13..17].copy_from_slice(&flags.to_le_bytes());
        buf.extend_from_slice(&tail);
    }

    /// Attributes encoded beforehand, added to the open span as they are.
    pub fn attributes(&mut self, encoded: &EncodedAttributes) {
        if self.open.is_none() {
            return;
        }
        self.bytes.extend_from_slice(&encoded.0);
    }

    /// A string attribute of the open span.
    pub fn str(&mut self, key_: &str, value: &str) {
        if self.open.is_none() {
            return;
        }
        // KeyValue { key (1), value (2): AnyValue { string_value (1) } }
        let any_len = 1 + varint_len(value.len() as u64) + value.len();
        if let Some(head) = short_kv(key_, any_len) {
            // Every length fits one byte (the usual case): four writes.
            let buf = &mut self.bytes;
            buf.reserve(head.len() + key_.len() + 4 + value.len());
            buf.extend_from_slice(&head);
            buf.extend_from_slice(key_.as_bytes());
            buf.extend_from_slice(&[ANY_VALUE, any_len as u8, STRING_VALUE, value.len() as u8]);
            buf.extend_from_slice(value.as_bytes());
            return;
        }
        self.kv_head(key_, any_len);
        len_field(&mut self.bytes, 1, value.as_bytes());
    }

    /// A string attribute of the open span with a key known in advance: the bytes
    /// [`EncodedSpans::str`] writes.
    pub fn str_attr(&mut self, key_: &Key, value: &str) {
        self.str_parts_attr(key_, &[value]);
    }

    /// A string attribute of the open span from bytes that are text only when ASCII (a header
    /// value), with a key known in advance: the bytes [`EncodedSpans::str_attr`] writes for
    /// them when they are ASCII, else nothing (`false`). One check a word at a time, where
    /// `HeaderValue::to_str` checks byte by byte.
    pub fn ascii_attr(&mut self, key_: &Key, value: &[u8]) -> bool {
        if !value.is_ascii() {
            return false;
        }
        if self.open.is_none() {
            return true;
        }
        let len = value.len();
        if !self.short_str_head(key_, len) {
            // Longer lengths: the general way (a long user agent).
            self.kv_head(key_.name, 1 + varint_len(len as u64) + len);
            len_field(&mut self.bytes, 1, value);
            return true;
        }
        self.bytes.extend_from_slice(value);
        true
    }

    /// A string attribute of the open span made of `parts` one after the other, with a key
    /// known in advance: the bytes [`EncodedSpans::str_parts`] writes.
    pub fn str_parts_attr(&mut self, key_: &Key, parts: &[&str]) {
        if self.open.is_none() {
            return;
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if !self.short_str_head(key_, len) {
            // Longer lengths: the general way (rare: long paths and user agents).
            return self.str_parts(key_.name, parts);
        }
        for p in parts {
            self.bytes.extend_from_slice(p.as_bytes());
        }
    }

    /// Writes the bytes before a string value of `len` bytes for `key_`, with room reserved
    /// for the value, when every length in them takes one byte; `false` (nothing written) when
    /// they do not.
    #[inline]
    fn short_str_head(&mut self, key_: &Key, len: usize) -> bool {
        let n = key_.len;
        // KeyValue { key, value: AnyValue { string_value } }: the key field is `n - 3` bytes,
        // the value field 2 + 2 + `len` when every length takes one byte.
        let kv_len = n + 1 + len;
        if kv_len >= 0x80 {
            return false;
        }
        let mut head = key_.head;
        head[1] = kv_len as u8;
        head[n] = (2 + len) as u8;
        head[n + 1] = STRING_VALUE;
        head[n + 2] = len as u8;
        let buf = &mut self.bytes;
        let at = buf.len();
        buf.reserve(KEY_ROOM + len);
        // The whole head, then cut back: a copy of a fixed size is a few moves, one of the
        // key's length a call to `memcpy`.
        buf.extend_from_slice(&head);
        buf.truncate(at + n + 3);
        true
    }

    /// An IP address as a string attribute of the open span with a key known in advance: the
    /// bytes [`EncodedSpans::str`] writes for the address's text. IPv4 (the common case) is
    /// written digit by digit into the buffer, without `fmt` (~1,000 instructions an address
    /// on this path) or a UTF-8 check of text made of digits and dots.
    pub fn ip_attr(&mut self, key_: &Key, ip: IpAddr) {
        if self.open.is_none() {
            return;
        }
        let v4 = match ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => return self.str_attr(key_, &v6.to_string()),
        };
        let mut text = [0u8; 15];
        let mut len = 0;
        for (i, o) in v4.octets().into_iter().enumerate() {
            if i > 0 {
                text[len] = b'.';
                len += 1;
            }
            if o >= 100 {
                text[len] = b'0' + o / 100;
                len += 1;
            }
            if o >= 10 {
                text[len] = b'0' + o / 10 % 10;
                len += 1;
            }
            text[len] = b'0' + o % 10;
            len += 1;
        }
        // At most 15 bytes: every length takes one byte (keys are at most 40 bytes).
        let n = key_.len;
        let mut head = key_.head;
        head[1] = (n + 1 + len) as u8;
        head[n] = (2 + len) as u8;
        head[n + 1] = STRING_VALUE;
        head[n + 2] = len as u8;
        head[n + 3..n + 3 + len].copy_from_slice(&text[..len]);
        let buf = &mut self.bytes;
        let at = buf.len();
        buf.extend_from_slice(&head);
        buf.truncate(at + n + 3 + len);
    }

    /// An integer attribute of the open span with a key known in advance: the bytes
    /// [`EncodedSpans::int`] writes.
    pub fn int_attr(&mut self, key_: &Key, value: i64) {
        if self.open.is_none() {
            return;
        }
        let n = key_.len;
        let mut head = key_.head;
        // AnyValue { int_value (3) }, the varint written into the head's room: at most
        // 2 + 10 bytes after the key, so the `KeyValue` is always shorter than 0x80.
        let mut v = value as u64;
        let mut end = n + 2;
        while v >= 0x80 {
            head[end] = (v as u8) | 0x80;
            v >>= 7;
            end += 1;
        }
        head[end] = v as u8;
        end += 1;
        let any_len = end - n - 1;
        head[1] = (n - 1 + any_len) as u8;
        head[n] = any_len as u8;
        head[n + 1] = INT_VALUE;
        let buf = &mut self.bytes;
        let at = buf.len();
        buf.extend_from_slice(&head);
        buf.truncate(at + end);
    }

    /// A string attribute of the open span made of `parts` one after the other.
    pub fn str_parts(&mut self, key_: &str, parts: &[&str]) {
        if self.open.is_none() {
            return;
        }
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let any_len = 1 + varint_len(len as u64) + len;
        self.kv_head(key_, any_len);
        key(&mut self.bytes, 1, LEN);
        varint(&mut self.bytes, len as u64);
        for p in parts {
            self.bytes.extend_from_slice(p.as_bytes());
        }
    }

    /// An integer attribute of the open span.
    pub fn int(&mut self, key_: &str, value: i64) {
        if self.open.is_none() {
            return;
        }
        // AnyValue { int_value (3) }: int64, two's complement as a varint.
        let any_len = 1 + varint_len(value as u64);
        if let Some(head) = short_kv(key_, any_len) {
            let buf = &mut self.bytes;
            buf.extend_from_slice(&head);
            buf.extend_from_slice(key_.as_bytes());
            buf.extend_from_slice(&[ANY_VALUE, any_len as u8, INT_VALUE]);
            varint(buf, value as u64);
            return;
        }
        self.kv_head(key_, any_len);
        varint_field(&mut self.bytes, 3, value as u64);
    }

    /// `Span.attributes` entry up to the `AnyValue`'s contents, which are `any_len` bytes.
    fn kv_head(&mut self, k: &str, any_len: usize) {
        let buf = &mut self.bytes;
        let kv_len =
            1 + varint_len(k.len() as u64) + k.len() + 1 + varint_len(any_len as u64) + any_len;
        key(buf, 9, LEN);
        varint(buf, kv_len as u64);
        len_field(buf, 1, k.as_bytes());
        key(buf, 2, LEN);
        varint(buf, any_len as u64);
    }

    /// The open span's status: an error, with `message`.
    pub fn error(&mut self, message: &str) {
        if self.open.is_none() {
            return;
        }
        // Status { message (2), code (3) }
        let buf = &mut self.bytes;
        let len = 1 + varint_len(message.len() as u64) + message.len() + 2;
        key(buf, 15, LEN);
        varint(buf, len as u64);
        len_field(buf, 2, message.as_bytes());
        varint_field(buf, 3, STATUS_ERROR);
    }

    /// Closes the open span, which ended at `end_unix_nanos`.
    pub fn end(&mut self, end_unix_nanos: u64) {
        if self.open.is_none() {
            return;
        }
        key(&mut self.bytes, 8, I64);
        self.bytes.extend_from_slice(&end_unix_nanos.to_le_bytes());
        self.close();
    }

    /// Writes the open span's length in the room kept for it.
    fn close(&mut self) {
        let Some(at) = self.open.take() else {
            return;
        };
        let body = at + 2;
        let len = self.bytes.len() - body;
        let n = varint_len(len as u64);
        match n {
            1 => {
                self.bytes[at] = len as u8;
                self.bytes.copy_within(body.., at + 1);
                self.bytes.truncate(self.bytes.len() - 1);
            }
            2 => {
                self.bytes[at] = (len as u8) | 0x80;
                self.bytes[at + 1] = (len >> 7) as u8;
            }
            _ => {
                // 16 KiB or more (a very long path or user agent): make room.
                let mut prefix = Vec::with_capacity(n);
                varint(&mut prefix, len as u64);
                self.bytes.splice(at..body, prefix);
            }
        }
        self.spans += 1;
    }

    /// Drops the open span, if any, leaving the whole ones.
    pub fn discard_open(&mut self) {
        if let Some(at) = self.open.take() {
            // The span's key is the one byte before its length.
            self.bytes.truncate(at - 1);
        }
    }

    /// Appends a whole span record.
    pub fn push_record(&mut self, s: &SpanRecord) {
        self.begin(&SpanStart {
            trace_id: s.trace_id,
            span_id: s.span_id,
            parent: s.parent,
            remote_parent: s.remote_parent,
            trace_state: s.trace_state.as_ref().map(|v| v.as_bytes()),
            name: &s.name,
            name_suffix: None,
            kind: s.kind,
            start_unix_nanos: s.start_unix_nanos,
        });
        for (k, value) in &s.attributes {
            match value {
                Value::Static(v) => self.str(k, v),
                Value::String(v) => self.str(k, v),
                Value::Shared(v) => self.str(k, v),
                Value::Int(i) => self.int(k, *i),
            }
        }
        if let Status::Error(message) = &s.status {
            self.error(message);
        }
        self.end(s.end_unix_nanos);
    }
}

impl From<&SpanRecord> for EncodedSpans {
    fn from(s: &SpanRecord) -> Self {
        let mut e = EncodedSpans::with_capacity(256);
        e.push_record(s);
        e
    }
}

impl From<SpanRecord> for EncodedSpans {
    fn from(s: SpanRecord) -> Self {
        EncodedSpans::from(&s)
    }
}

/// `Span.attributes` (9), `KeyValue.key` (1), `KeyValue.value` (2), `AnyValue.string_value`
/// (1) and `AnyValue.int_value` (3), each with its wire type: the keys of an attribute.
const ATTRIBUTE: u8 = 9 << 3 | 2;
const KV_KEY: u8 = 1 << 3 | 2;
const ANY_VALUE: u8 = 2 << 3 | 2;
const STRING_VALUE: u8 = 1 << 3 | 2;
const INT_VALUE: u8 = 3 << 3;

/// The first bytes of a `Span.attributes` entry with key `k` and an `AnyValue` of `any_len`
/// bytes, when every length in it takes one byte (`None`: write it the long way).
#[inline]
fn short_kv(k: &str, any_len: usize) -> Option<[u8; 4]> {
    let kv_len = 2 + k.len() + 2 + any_len;
    (kv_len < 0x80).then_some([ATTRIBUTE, kv_len as u8, KV_KEY, k.len() as u8])
}

/// Protobuf wire types used here.
const VARINT: u32 = 0;
const I64: u32 = 1;
const LEN: u32 = 2;
const I32: u32 = 5;

// Wire-format primitives on a `Vec<u8>`: prost's generic `BufMut` versions cost several times
// as much per call, and a span makes dozens of calls.

/// A field key: field number and wire type.
#[inline]
fn key(buf: &mut Vec<u8>, tag: u32, wire_type: u32) {
    varint(buf, u64::from(tag << 3 | wire_type));
}

#[inline]
fn varint(buf: &mut Vec<u8>, mut v: u64) {
    if v < 0x80 {
        buf.push(v as u8);
        return;
    }
    if v < 0x4000 {
        // Two bytes (ports, status codes, most lengths): one write.
        buf.extend_from_slice(&[(v as u8) | 0x80, (v >> 7) as u8]);
        return;
    }
    // Gathered on the stack, then one copy.
    let mut tmp = [0; 10];
    let mut n = 0;
    while v >= 0x80 {
        tmp[n] = (v as u8) | 0x80;
        v >>= 7;
        n += 1;
    }
    tmp[n] = v as u8;
    buf.extend_from_slice(&tmp[..=n]);
}

/// Bytes [`varint`] writes for `v`.
#[inline]
fn varint_len(v: u64) -> usize {
    // 1 byte per started 7 bits; zero takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// A length-delimited field: key, length, bytes.
#[inline]
fn len_field(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    key(buf, tag, LEN);
    varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

#[inline]
fn varint_field(buf: &mut Vec<u8>, tag: u32, v: u64) {
    key(buf, tag, VARINT);
    varint(buf, v);
}

/// A length-delimited field as its own bytes.
fn field_bytes(tag: u32, bytes: &[u8]) -> Bytes {
    let mut b = Vec::with_capacity(bytes.len() + 6);
    len_field(&mut b, tag, bytes);
    Bytes::from(b)
}

fn kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

/// A random (version 4) UUID in its usual text form.
fn uuid_v4() -> String {
    let mut v = fastrand::u128(..);
    v = (v & !(0xf << 76)) | (0x4 << 76); // version 4
    v = (v & !(0x3 << 62)) | (0x2 << 62); // RFC 9562 variant
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span};

    use super::*;

    /// The reference: the same spans converted to the generated types field by field.
    fn reference(resource: &Resource, spans: Vec<SpanRecord>) -> ExportTraceServiceRequest {
        let to_span = |s: SpanRecord| {
            let mut flags = FLAG_SAMPLED;
            if s.parent.is_some() {
                flags |= FLAG_HAS_IS_REMOTE | if s.remote_parent { FLAG_IS_REMOTE } else { 0 };
            }
            Span {
                trace_id: s.trace_id.to_bytes().to_vec(),
                span_id: s.span_id.to_bytes().to_vec(),
                trace_state: s
                    .trace_state
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default(),
                parent_span_id: s.parent.map(|p| p.to_bytes().to_vec()).unwrap_or_default(),
                flags,
                name: s.name.into_owned(),
                kind: match s.kind {
                    SpanKind::Server => span::SpanKind::Server,
                    SpanKind::Client => span::SpanKind::Client,
                } as i32,
                start_time_unix_nano: s.start_unix_nanos,
                end_time_unix_nano: s.end_unix_nanos,
                attributes: s
                    .attributes
                    .into_iter()
                    .map(|(k, v)| KeyValue {
                        key: k.to_owned(),
                        value: Some(AnyValue {
                            value: Some(match v {
                                Value::Static(s) => any_value::Value::StringValue(s.to_owned()),
                                Value::String(s) => any_value::Value::StringValue(s),
                                Value::Shared(s) => any_value::Value::StringValue(s.to_string()),
                                Value::Int(i) => any_value::Value::IntValue(i),
                            }),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                status: match s.status {
                    Status::Unset => None,
                    Status::Error(message) => Some(opentelemetry_proto::tonic::trace::v1::Status {
                        message,
                        code: status::StatusCode::Error as i32,
                    }),
                },
                ..Default::default()
            }
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: SCOPE.to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..Default::default()
                    }),
                    spans: spans.into_iter().map(to_span).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    /// The resource of a config whose `tracing` has `otlp` and then the lines `extra`.
    fn test_resource(otlp: &str, extra: &str) -> Resource {
        let yaml = format!(
            "listeners:\n  a: {{ address: 127.0.0.1:1, upstream: u }}\nupstreams:\n  u: {{}}\n\
             tracing:\n  otlp: {otlp}\n{extra}"
        );
        let config = tandem_config::parse("t.yaml", &yaml).unwrap();
        resource(config.tracing.as_ref().unwrap())
    }

    fn spans() -> Vec<SpanRecord> {
        let server = SpanRecord {
            trace_id: TraceId::from_u128(0x0af7651916cd43dd8448eb211c80319c).unwrap(),
            span_id: SpanId::from_u64(0xb7ad6b7169203331).unwrap(),
            parent: Some(SpanId::from_u64(1).unwrap()),
            remote_parent: true,
            trace_state: Some(http::HeaderValue::from_static("a=1")),
            name: "GET /api/*".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: u64::MAX,
            attributes: vec![
                ("http.request.method", Value::Static("GET")),
                ("url.path", Value::String("/ä/".repeat(100))),
                ("http.response.status_code", Value::Int(503)),
                ("negative", Value::Int(-1)),
                ("empty", Value::String(String::new())),
                ("tandem.route", Value::Shared("api".into())),
            ],
            status: Status::Error("x".repeat(300)),
        };
        let client = SpanRecord {
            trace_id: TraceId::from_u128(u128::MAX).unwrap(),
            span_id: SpanId::from_u64(u64::MAX).unwrap(),
            parent: Some(SpanId::from_u64(2).unwrap()),
            remote_parent: false,
            trace_state: None,
            name: "GET".into(),
            kind: SpanKind::Client,
            start_unix_nanos: 0,
            end_unix_nanos: 1,
            attributes: Vec::new(),
            status: Status::Unset,
        };
        let root = SpanRecord {
            parent: None,
            remote_parent: false,
            // A name whose length takes two bytes.
            name: "r".repeat(200).into(),
            status: Status::Error(String::new()),
            ..client.clone()
        };
        vec![server, client, root]
    }

    /// What the encoder writes decodes, with the generated types, to exactly the reference
    /// conversion: ids, flags, kinds, times, every attribute type, status, resource and scope.
    #[test]
    fn encoder_matches_the_generated_types() {
        let resource = test_resource("{ endpoint: \"http://c:4318\" }", "  resource: { k: v }\n");
        let encoder = Encoder::new(&resource);
        // Twice: buffers reused between batches leave nothing behind.
        for _ in 0..2 {
            let bytes = encoder.encode(spans().into_iter().map(EncodedSpans::from));
            let decoded = ExportTraceServiceRequest::decode(bytes).unwrap();
            assert_eq!(decoded, reference(&resource, spans()));
        }
        let empty =
            ExportTraceServiceRequest::decode(encoder.encode(Vec::<EncodedSpans>::new())).unwrap();
        assert_eq!(empty, reference(&resource, Vec::new()));
        let flags: Vec<u32> = reference(&resource, spans()).resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| s.flags)
            .collect();
        assert_eq!(flags, [0x301, 0x101, 0x001]);
    }

    /// The proxy's way of writing spans (a client span left open while others are written
    /// after it is closed, late attributes, a name in two parts, a value in parts, a span
    /// dropped open) decodes to the same spans as the plain records.
    #[test]
    fn written_as_they_end_matches_the_records() {
        let resource = test_resource("{ endpoint: \"http://c:4318\" }", "");
        let trace_id = TraceId::from_u128(7).unwrap();
        let server_id = SpanId::from_u64(1).unwrap();
        let client_id = SpanId::from_u64(2).unwrap();
        let long = "p".repeat(20_000);
        let mut e = EncodedSpans::with_capacity(64);
        e.begin(&SpanStart {
            trace_id,
            span_id: client_id,
            parent: Some(server_id),
            remote_parent: false,
            trace_state: Some(b"k=v"),
            name: "GET",
            name_suffix: None,
            kind: SpanKind::Client,
            start_unix_nanos: 10,
        });
        e.str("http.request.method", "GET");
        e.str_parts("url.full", &["http://", "app:80", "/x"]);
        e.int("http.response.status_code", 503);
        e.error("HTTP 503 Service Unavailable");
        // ... the response body ends later:
        e.int("http.response.body.size", 12);
        e.end(30);
        e.begin(&SpanStart {
            trace_id,
            span_id: server_id,
            parent: None,
            remote_parent: false,
            trace_state: None,
            name: "GET",
            name_suffix: Some("/api/*"),
            kind: SpanKind::Server,
            start_unix_nanos: 5,
        });
        e.str("url.path", &long);
        e.int("negative", -3);
        e.end(40);
        assert_eq!(e.spans(), 2);
        // A span still open when the chunk is queued is not sent.
        e.begin(&SpanStart {
            trace_id,
            span_id: SpanId::from_u64(3).unwrap(),
            parent: None,
            remote_parent: false,
            trace_state: None,
            name: "lost",
            name_suffix: None,
            kind: SpanKind::Client,
            start_unix_nanos: 1,
        });
        e.str("k", "v");
        e.discard_open();
        assert_eq!(e.spans(), 2);
        let records = vec![
            SpanRecord {
                trace_id,
                span_id: client_id,
                parent: Some(server_id),
                remote_parent: false,
                trace_state: Some(http::HeaderValue::from_static("k=v")),
                name: "GET".into(),
                kind: SpanKind::Client,
                start_unix_nanos: 10,
                end_unix_nanos: 30,
                attributes: vec![
                    ("http.request.method", Value::Static("GET")),
                    ("url.full", Value::String("http://app:80/x".into())),
                    ("http.response.status_code", Value::Int(503)),
                    ("http.response.body.size", Value::Int(12)),
                ],
                status: Status::Error("HTTP 503 Service Unavailable".into()),
            },
            SpanRecord {
                trace_id,
                span_id: server_id,
                parent: None,
                remote_parent: false,
                trace_state: None,
                name: "GET /api/*".into(),
                kind: SpanKind::Server,
                start_unix_nanos: 5,
                end_unix_nanos: 40,
                attributes: vec![
                    ("url.path", Value::String(long.clone())),
                    ("negative", Value::Int(-3)),
                ],
                status: Status::Unset,
            },
        ];
        let decoded =
            ExportTraceServiceRequest::decode(Encoder::new(&resource).encode([e])).unwrap();
        assert_eq!(decoded, reference(&resource, records));
    }

    /// A span begun before its name is known, named after some of its attributes, decodes
    /// to the same span as one written whole, for each shape of span head (tracestate and a
    /// remote parent, a local parent, a root with a name whose length takes two bytes, a name
    /// with a suffix); and the spans before and after it are untouched.
    #[test]
    fn named_later_matches_the_records() {
        let resource = test_resource("{ endpoint: \"http://c:4318\" }", "");
        let records = spans();
        let mut e = EncodedSpans::with_capacity(16);
        for r in &records {
            let (name, suffix) = match r.name.split_once(' ') {
                Some((n, s)) => (n, Some(s)),
                None => (&*r.name, None),
            };
            e.begin_unnamed(&SpanStart {
                trace_id: r.trace_id,
                span_id: r.span_id,
                parent: r.parent,
                remote_parent: r.remote_parent,
                trace_state: r.trace_state.as_ref().map(|v| v.as_bytes()),
                name: "ignored",
                name_suffix: Some("ignored too"),
                kind: r.kind,
                start_unix_nanos: r.start_unix_nanos,
            });
            let (first, rest) = r.attributes.split_at(r.attributes.len() / 2);
            let write = |e: &mut EncodedSpans, attributes: &[(&str, Value)]| {
                for (k, v) in attributes {
                    match v {
                        Value::Static(v) => e.str(k, v),
                        Value::String(v) => e.str(k, v),
                        Value::Shared(v) => e.str(k, v),
                        Value::Int(i) => e.int(k, *i),
                    }
                }
            };
            write(&mut e, first);
            e.name(name, suffix);
            write(&mut e, rest);
            if let Status::Error(m) = &r.status {
                e.error(m);
            }
            e.end(r.end_unix_nanos);
        }
        assert_eq!(e.spans(), 3);
        let decoded =
            ExportTraceServiceRequest::decode(Encoder::new(&resource).encode([e])).unwrap();
        assert_eq!(decoded, reference(&resource, records));
        // Without `name`, no name at all; with no span open, nothing.
        let mut unnamed = EncodedSpans::with_capacity(16);
        unnamed.begin_unnamed(&root_get(1));
        unnamed.end(2);
        let mut closed = EncodedSpans::with_capacity(16);
        closed.name("GET", Some("/"));
        assert!(closed.bytes.is_empty());
        let decoded =
            ExportTraceServiceRequest::decode(Encoder::new(&resource).encode([unnamed])).unwrap();
        let named = SpanRecord {
            trace_id: TraceId::from_u128(7).unwrap(),
            span_id: SpanId::from_u64(1).unwrap(),
            parent: None,
            remote_parent: false,
            trace_state: None,
            name: "".into(),
            kind: SpanKind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: Vec::new(),
            status: Status::Unset,
        };
        assert_eq!(decoded, reference(&resource, vec![named]));
    }

    /// An attribute written once in the preamble and copied into spans is what writing it in
    /// each span gives; the preamble itself is never part of the spans sent (as a request or
    /// a batch chunk), and is only written before the first span.
    #[test]
    fn preamble_is_copied_into_spans_and_never_sent() {
        const URL_FULL: Key = Key::new("url.full");
        let long = "q".repeat(300);
        for path in ["/x", long.as_str()] {
            let parts = ["http://", "app:80", path];
            let mut by_copy = EncodedSpans::with_capacity(16);
            by_copy.copy_preamble();
            by_copy.preamble_str_parts_attr(&URL_FULL, &["http://", "stale"]);
            // Replaced: the last one written before the first span counts.
            by_copy.preamble_str_parts_attr(&URL_FULL, &parts);
            let mut by_write = EncodedSpans::with_capacity(16);
            for i in 1..=2 {
                by_copy.begin(&root_get(i));
                by_copy.int("n", 1);
                by_copy.copy_preamble();
                by_copy.end(10);
                by_write.begin(&root_get(i));
                by_write.int("n", 1);
                by_write.str_parts_attr(&URL_FULL, &parts);
                by_write.end(10);
            }
            // Too late: spans were begun.
            by_copy.preamble_str_parts_attr(&URL_FULL, &["http://", "late"]);
            assert_eq!(by_copy.as_bytes(), &by_write.bytes[..], "{path}");
            assert_eq!(by_copy.spans(), 2);
            let encoder = Encoder::new(&Resource::default());
            assert_eq!(encoder.encode([by_copy]), encoder.encode([by_write]));
        }
    }

    /// ASCII values are the bytes `str_attr` writes, at every length boundary; others are not
    /// written and say so.
    #[test]
    fn ascii_attributes_match_str_attr() {
        const UA: Key = Key::new("user_agent.original");
        let long = "Mozilla/5.0 (X11; Linux x86_64) ".repeat(20);
        for len in (0..140).chain([300, 600]) {
            let v = &long[..len];
            let mut by_ascii = EncodedSpans::with_capacity(8);
            by_ascii.begin(&root_get(1));
            assert!(by_ascii.ascii_attr(&UA, v.as_bytes()));
            let mut by_str = EncodedSpans::with_capacity(8);
            by_str.begin(&root_get(1));
            by_str.str_attr(&UA, v);
            assert_eq!(by_ascii.bytes, by_str.bytes, "{len}");
        }
        let mut e = EncodedSpans::with_capacity(8);
        e.begin(&root_get(1));
        let before = e.bytes.len();
        assert!(!e.ascii_attr(&UA, b"caf\xe9"));
        assert!(!e.ascii_attr(&UA, "café".as_bytes()));
        assert_eq!(e.bytes.len(), before);
        let mut closed = EncodedSpans::with_capacity(8);
        assert!(closed.ascii_attr(&UA, b"x"));
        assert!(closed.bytes.is_empty());
    }

    /// IP addresses are the bytes `str` writes for their text.
    #[test]
    fn ip_attributes_match_str() {
        const CLIENT: Key = Key::new("client.address");
        const LONGEST: Key = Key::new("a.key.of.forty.bytes.exactly.0123456789");
        for ip in [
            "0.0.0.0",
            "10.1.20.255",
            "127.0.0.1",
            "255.255.255.255",
            "9.99.100.199",
            "::1",
            "2001:db8::7",
        ] {
            let parsed: IpAddr = ip.parse().unwrap();
            for key in [&CLIENT, &LONGEST] {
                let mut by_ip = EncodedSpans::with_capacity(8);
                by_ip.begin(&root_get(1));
                by_ip.ip_attr(key, parsed);
                let mut by_str = EncodedSpans::with_capacity(8);
                by_str.begin(&root_get(1));
                by_str.str(key.name(), ip);
                assert_eq!(by_ip.bytes, by_str.bytes, "{ip}");
            }
        }
        let mut closed = EncodedSpans::with_capacity(8);
        closed.ip_attr(&CLIENT, IpAddr::from([1, 2, 3, 4]));
        assert!(closed.bytes.is_empty());
    }

    /// gRPC framing: the same message behind an uncompressed-flag byte and its length.
    /// Attributes encoded beforehand are the bytes `str` writes for them one by one, short
    /// values and values whose lengths take more than one byte alike.
    #[test]
    fn encoded_attributes_match_str() {
        let long = "u".repeat(300);
        let pairs = [
            ("tandem.listener", "inbound"),
            ("tandem.route", ""),
            ("tandem.upstream", long.as_str()),
            ("tandem.route", "r\u{e9}\"q"),
        ];
        let start = root_get(10);
        let mut by_str = EncodedSpans::with_capacity(64);
        by_str.begin(&start);
        by_str.int("http.response.status_code", 200);
        for (k, v) in pairs {
            by_str.str(k, v);
        }
        by_str.end(20);
        let mut encoded = EncodedSpans::with_capacity(64);
        encoded.begin(&start);
        encoded.int("http.response.status_code", 200);
        encoded.attributes(&EncodedAttributes::strs(&pairs));
        encoded.end(20);
        assert_eq!(encoded.bytes, by_str.bytes);
        assert_eq!(encoded.spans, 1);
        // Nothing is written when no span is open.
        let mut closed = EncodedSpans::with_capacity(64);
        closed.attributes(&EncodedAttributes::strs(&pairs));
        assert!(closed.bytes.is_empty());
    }

    /// Attributes with keys known in advance are the bytes the general writers give, at every
    /// length boundary of key, value and varint, and nothing when no span is open.
    #[test]
    fn keyed_attributes_match_the_general_writers() {
        const KEYS: [Key; 4] = [
            Key::new("k"),
            Key::new("url.path"),
            Key::new("http.response.status_code"),
            Key::new("a.key.of.forty.bytes.exactly.0123456789"),
        ];
        let long = "v".repeat(400);
        let ints = [0, 1, 127, 128, 503, 16_383, 16_384, -1, i64::MIN, i64::MAX];
        for key in &KEYS {
            let by_key = |write: &dyn Fn(&mut EncodedSpans)| {
                let mut e = EncodedSpans::with_capacity(8);
                e.begin(&root_get(1));
                write(&mut e);
                e.bytes
            };
            for len in (0..140).chain([300, 400]) {
                let v = &long[..len];
                assert_eq!(
                    by_key(&|e| e.str_attr(key, v)),
                    by_key(&|e| e.str(key.name(), v)),
                    "{} = {len} bytes",
                    key.name()
                );
                let (a, b) = v.split_at(len / 3);
                assert_eq!(
                    by_key(&|e| e.str_parts_attr(key, &["http://", a, b])),
                    by_key(&|e| e.str_parts(key.name(), &["http://", a, b])),
                    "{} = 7 + {len} bytes in parts",
                    key.name()
                );
            }
            for i in ints {
                assert_eq!(
                    by_key(&|e| e.int_attr(key, i)),
                    by_key(&|e| e.int(key.name(), i)),
                    "{} = {i}",
                    key.name()
                );
            }
        }
        let mut closed = EncodedSpans::with_capacity(8);
        closed.str_attr(&KEYS[1], "/");
        closed.int_attr(&KEYS[2], 200);
        closed.str_parts_attr(&KEYS[1], &["a", "b"]);
        assert!(closed.bytes.is_empty());
    }

    /// A server span "GET" starting a trace (trace 7, span 1) at `start_unix_nanos`.
    fn root_get(start_unix_nanos: u64) -> SpanStart<'static> {
        SpanStart {
            trace_id: TraceId::from_u128(7).unwrap(),
            span_id: SpanId::from_u64(1).unwrap(),
            parent: None,
            remote_parent: false,
            trace_state: None,
            name: "GET",
            name_suffix: None,
            kind: SpanKind::Server,
            start_unix_nanos,
        }
    }

    #[test]
    fn grpc_framing_prefixes_the_message() {
        let resource = test_resource("{ endpoint: \"http://c:4317\", protocol: grpc }", "");
        let plain = Encoder::new(&resource).encode(spans().into_iter().map(EncodedSpans::from));
        let framed = Encoder::new(&resource)
            .grpc_framed()
            .encode(spans().into_iter().map(EncodedSpans::from));
        assert_eq!(framed[0], 0);
        assert_eq!(
            u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize,
            plain.len()
        );
        assert_eq!(&framed[5..], &plain[..]);
    }

    /// A buffer given back is the next one taken on the thread, empty; several given back
    /// are all taken again (requests in flight end in any order), up to `MAX_SPARES`; a larger
    /// one than `MAX_SPARE` is not kept, nor is one taken when a larger one is asked for.
    #[test]
    fn span_buffers_are_recycled() {
        std::thread::spawn(|| {
            let mut e = EncodedSpans::recycled(100);
            e.begin(&root_get(1));
            e.end(2);
            let at = e.bytes.as_ptr();
            e.recycle();
            let again = EncodedSpans::recycled(50);
            assert_eq!(again.bytes.as_ptr(), at);
            assert!(again.bytes.is_empty() && again.spans == 0 && !again.is_open());
            again.recycle();
            assert!(EncodedSpans::recycled(100_000).bytes.capacity() >= 100_000);
            EncodedSpans::with_capacity(MAX_SPARE + 1).recycle();
            assert_eq!(EncodedSpans::recycled(0).bytes.capacity(), 0);

            let held: Vec<EncodedSpans> = (0..MAX_SPARES + 3)
                .map(|_| EncodedSpans::recycled(64))
                .collect();
            let mut given: Vec<*const u8> = held.iter().map(|e| e.bytes.as_ptr()).collect();
            for e in held {
                e.recycle();
            }
            let mut taken: Vec<*const u8> = (0..MAX_SPARES)
                .map(|_| EncodedSpans::recycled(64))
                .map(|e| e.bytes.as_ptr())
                .collect();
            given.truncate(MAX_SPARES);
            given.sort();
            taken.sort();
            assert_eq!(taken, given, "the first MAX_SPARES given back are kept");
            assert_eq!(EncodedSpans::recycled(0).bytes.capacity(), 0, "no more");
        })
        .join()
        .unwrap();
    }

    /// Varints and their lengths agree with prost's at every size boundary.
    #[test]
    fn varints_match_prost() {
        for shift in 0..64 {
            for v in [
                (1u64 << shift) - 1,
                1u64 << shift,
                (1u64 << shift) + 1,
                u64::MAX,
            ] {
                let mut ours = Vec::new();
                varint(&mut ours, v);
                let mut theirs = Vec::new();
                prost::encoding::encode_varint(v, &mut theirs);
                assert_eq!(ours, theirs, "{v}");
                assert_eq!(varint_len(v), prost::encoding::encoded_len_varint(v), "{v}");
            }
        }
    }

    /// UUIDs have the v4 shape and differ between calls.
    #[test]
    fn uuid_shape() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert_ne!(u, uuid_v4());
    }
}
