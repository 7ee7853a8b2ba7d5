//! The response body Tandem sends downstream: the upstream's body (HTTP/1.1 or HTTP/2), streamed
//! as it arrives, or a short message Tandem wrote itself. A concrete enum instead of a boxed trait
//! object keeps the hot path free of an allocation per response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::h1;

/// A downstream response body.
#[derive(Debug)]
pub enum ProxyBody {
    /// Read from an HTTP/1.1 upstream connection by Tandem's client ([`crate::h1`]), trailers
    /// included; the connection goes back to its pool at the end.
    Http1(h1::ResponseBody),
    /// Streamed from an HTTP/2 upstream stream, trailers included (gRPC status lives there).
    Http2(Incoming),
    /// Written by Tandem (errors, tunnels' empty bodies).
    Local(Full<Bytes>),
}

impl ProxyBody {
    /// A body Tandem wrote itself.
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Local(Full::new(bytes.into()))
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::local(Bytes::new())
    }

    /// For a 101 response over HTTP/1.1: the connection, now carrying the upgraded protocol.
    pub fn into_upgraded(self) -> Option<h1::Upgraded> {
        match self {
            ProxyBody::Http1(b) => b.into_upgraded(),
            ProxyBody::Http2(_) | ProxyBody::Local(_) => None,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // Every variant is `Unpin`, so no pin projection is needed.
        match self.get_mut() {
            ProxyBody::Http1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ProxyBody::Http2(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ProxyBody::Local(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Http1(body) => body.is_end_stream(),
            ProxyBody::Http2(body) => body.is_end_stream(),
            ProxyBody::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Http1(body) => body.size_hint(),
            ProxyBody::Http2(body) => body.size_hint(),
            ProxyBody::Local(body) => body.size_hint(),
        }
    }
}
