//! The response body Tandem sends downstream: either the upstream's body, streamed as it
//! arrives, or a short message Tandem wrote itself. A concrete enum instead of a boxed trait
//! object keeps the hot path free of an allocation per response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use crate::pool::PooledBody;

/// A downstream response body.
#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from the upstream, trailers included (gRPC status lives there).
    Upstream(PooledBody),
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
}

impl From<PooledBody> for ProxyBody {
    fn from(body: PooledBody) -> Self {
        ProxyBody::Upstream(body)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // Both variants are `Unpin`, so no pin projection is needed.
        match self.get_mut() {
            ProxyBody::Upstream(body) => Pin::new(body).poll_frame(cx),
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
            ProxyBody::Upstream(body) => body.is_end_stream(),
            ProxyBody::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(body) => body.size_hint(),
            ProxyBody::Local(body) => body.size_hint(),
        }
    }
}
