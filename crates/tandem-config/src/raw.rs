//! The YAML file as serde sees it. Every field is documented: these comments become the JSON
//! Schema's descriptions (`tandem config schema`). Values that need checking with a line number
//! (durations, addresses) stay strings here and are parsed by `check`.
//!
//! Every struct denies unknown fields, so a typo is an error with a "did you mean" hint instead of
//! a setting silently ignored. Name maps (`listeners`, `upstreams`, `match.headers`) keep file
//! order and reject a name given twice; serde's own maps would silently keep the last one.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// A Tandem configuration file.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The admin API (health, readiness, metrics, effective config). Default: 127.0.0.1:7901.
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    /// The app Tandem runs beside; `/ready` waits for it when Tandem supervises it.
    #[serde(default)]
    pub app: Option<RawApp>,
    /// How long in-flight requests may take to finish after SIGTERM (default "30s").
    #[serde(default)]
    pub drain_timeout: Option<String>,
    /// Protections applied to every listener.
    #[serde(default)]
    pub limits: Option<RawLimits>,
    /// Listeners by name. At least one.
    #[serde(default, deserialize_with = "unique_map")]
    pub listeners: IndexMap<String, RawListener>,
    /// Upstreams by name.
    #[serde(default, deserialize_with = "unique_map")]
    pub upstreams: IndexMap<String, RawUpstream>,
}

/// The admin API.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `IP:port` or `unix:/path`. Keep it on loopback or a Unix socket.
    pub address: String,
}

/// The app Tandem runs beside.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    /// The upstream that reaches the app (readiness probes its first endpoint).
    pub upstream: String,
}

/// Listener protections.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Connections one listener holds at once (default 10000); more wait in the kernel backlog.
    pub max_connections: Option<usize>,
    /// Largest request head in bytes (default 65536, at least 1024); larger gets 431.
    pub max_header_bytes: Option<usize>,
    /// Most header fields in a request (default 100); more gets 431.
    pub max_headers: Option<usize>,
    /// Time a client has to send a complete request head (default "10s").
    pub header_read_timeout: Option<String>,
    /// A TCP proxy connection idle this long in both directions is closed (default "1h").
    pub tcp_idle_timeout: Option<String>,
}

/// A listener.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// `IP:port` or `unix:/path`.
    pub address: String,
    /// `inbound` (peers to the app; sets forwarded headers) or `outbound` (the app to others).
    #[serde(default)]
    pub direction: Option<RawDirection>,
    /// `http` (HTTP/1.1 and HTTP/2 on one port) or `tcp` (opaque bytes). Default `http`.
    #[serde(default)]
    pub protocol: Option<RawListenerProtocol>,
    /// Default upstream: for HTTP requests no route matches; the target of a TCP listener.
    #[serde(default)]
    pub upstream: Option<String>,
    /// HTTP forward proxy: `http://NAME/...` and `CONNECT NAME:port` reach upstream NAME.
    #[serde(default)]
    pub forward_proxy: bool,
    /// Routes, first match wins (HTTP only).
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// Listener direction.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawDirection {
    /// Peers to the app.
    Inbound,
    /// The app to other services.
    Outbound,
}

/// Listener protocol.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawListenerProtocol {
    /// HTTP/1.1 and HTTP/2 prior knowledge on one port.
    Http,
    /// Opaque TCP.
    Tcp,
}

/// A route.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Name for metrics (default `<listener>.<index>`), unique within the listener.
    #[serde(default)]
    pub name: Option<String>,
    /// Conditions, all of which must hold; absent matches every request.
    #[serde(default, rename = "match")]
    pub matcher: Option<RawMatch>,
    /// Upstream name.
    pub upstream: String,
    /// Time to the response head for this route, overriding the upstream's `request_timeout`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Local rate limit: requests beyond it are answered 429 with `Retry-After`.
    #[serde(default)]
    pub rate_limit: Option<RawRateLimit>,
}

/// A token bucket per key: `requests` per `per`, up to `burst` at once.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// Requests admitted per `per` (the steady rate), at least 1.
    pub requests: u32,
    /// The period of `requests` (default `1s`).
    #[serde(default)]
    pub per: Option<String>,
    /// Requests admitted at once after a quiet spell (default: `requests`).
    #[serde(default)]
    pub burst: Option<u32>,
    /// What gets its own bucket: `none` (one for the route, the default), `client_ip`, or
    /// `header:NAME` (requests without the header share one bucket).
    #[serde(default)]
    pub key: Option<String>,
    /// Most keys tracked at once (default 100000); beyond it, new keys share one bucket.
    #[serde(default)]
    pub max_keys: Option<usize>,
}

/// Route conditions.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Exact host (`api.example.com`) or wildcard (`*.example.com`), without port.
    #[serde(default)]
    pub host: Option<String>,
    /// Path condition: `{ exact: /healthz }` or `{ prefix: /api }`.
    #[serde(default)]
    pub path: Option<RawPathMatch>,
    /// A method or a list of methods.
    #[serde(default)]
    pub method: Option<OneOrMany>,
    /// Headers that must be present with exactly these values.
    #[serde(default, deserialize_with = "unique_map")]
    pub headers: IndexMap<String, String>,
}

/// Path condition; exactly one of the two.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPathMatch {
    /// The path equals this.
    #[serde(default)]
    pub exact: Option<String>,
    /// The path starts with this, on a segment boundary.
    #[serde(default)]
    pub prefix: Option<String>,
}

/// One value or a list of values.
// Deserialized by hand rather than `#[serde(untagged)]`: untagged enums buffer the value and lose
// its key path, so a bad `method` was reported at `match` with "did not match any variant".
#[derive(Debug, JsonSchema)]
#[schemars(untagged)]
pub enum OneOrMany {
    /// One value, e.g. GET.
    One(String),
    /// A list of values, e.g. [GET, HEAD].
    Many(Vec<String>),
}

/// An upstream.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// Endpoints: `IP:port`, `host:port` (resolved when connecting) or `unix:/path`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// `http1`, `http2` (prior knowledge) or `auto` (same as the downstream request). Default `auto`.
    #[serde(default)]
    pub protocol: Option<RawUpstreamProtocol>,
    /// Bound on opening one connection (default "2s").
    #[serde(default)]
    pub connect_timeout: Option<String>,
    /// Bound from sending a request to receiving the response head (default "15s").
    #[serde(default)]
    pub request_timeout: Option<String>,
    /// Connection pool.
    #[serde(default)]
    pub pool: Option<RawPool>,
}

/// Upstream HTTP version.
#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawUpstreamProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 prior knowledge.
    Http2,
    /// Same as downstream.
    Auto,
}

/// Connection pool settings.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Idle connections close after this long (default "4s": before the app closes them).
    #[serde(default)]
    pub idle_timeout: Option<String>,
    /// Most idle connections kept per endpoint (default 256).
    #[serde(default)]
    pub max_idle_per_endpoint: Option<usize>,
}

// === impl OneOrMany ===

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor;

        impl<'de> Visitor<'de> for OneOrManyVisitor {
            type Value = OneOrMany;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(v.to_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }

        d.deserialize_any(OneOrManyVisitor)
    }
}

/// A name map that keeps file order and refuses a name given twice.
///
/// The error text `duplicate name `NAME`` is matched by the serde error translation in `lib.rs`
/// to build the key path and hint; keep them in step.
fn unique_map<'de, D, K, V>(d: D) -> Result<IndexMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Eq + Hash + fmt::Display,
    V: Deserialize<'de>,
{
    struct UniqueVisitor<K, V>(PhantomData<(K, V)>);

    impl<'de, K, V> Visitor<'de> for UniqueVisitor<K, V>
    where
        K: Deserialize<'de> + Eq + Hash + fmt::Display,
        V: Deserialize<'de>,
    {
        type Value = IndexMap<K, V>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a map of names to values")
        }

        // `listeners:` with nothing after it is an empty map, so the checker can say what is
        // missing ("no listeners") instead of reporting a type error.
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(IndexMap::new())
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = IndexMap::new();
            while let Some(k) = map.next_key::<K>()? {
                if out.contains_key(&k) {
                    return Err(de::Error::custom(format_args!("duplicate name `{k}`")));
                }
                let v = map.next_value()?;
                out.insert(k, v);
            }
            Ok(out)
        }
    }

    d.deserialize_map(UniqueVisitor(PhantomData))
}
