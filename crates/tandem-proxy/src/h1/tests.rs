//! Tests of the HTTP/1.1 client side: the decoders on every split of their input, and whole
//! exchanges over real loopback sockets against a scripted raw upstream.

#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use hyper::body::Incoming;

// --- pure decoders -----------------------------------------------------------------------------

/// Runs the chunked decoder over `input` delivered `split` bytes at a time.
fn chunked(input: &[u8], split: usize) -> Result<(Vec<u8>, Option<HeaderMap>, usize), Error> {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut state = Decoder::Chunked(Chunk::Size);
    let mut data = Vec::new();
    let mut trailers = None;
    loop {
        let Decoder::Chunked(chunk) = state else {
            return Ok((data, trailers, input.len() - fed + buf.len()));
        };
        match decode_chunk(&mut buf, chunk)? {
            Step::Frame(frame, next) => {
                match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                }
                state = next;
            }
            Step::Next(next) => state = next,
            Step::NeedMore => {
                if fed == input.len() {
                    return Err(Error::Protocol("input ended".into()));
                }
                let end = (fed + split).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
        }
    }
}

/// Chunk sizes in hex of any case, extensions and trailers decode the same at every split.
#[test]
fn chunked_body_decodes_at_every_split() {
    let input = b"5\r\nhello\r\nA;name=value\r\n, world!!!\r\n0\r\nx-checksum: abc\r\nx-more: 1\r\n\r\nNEXT";
    for split in 1..input.len() {
        let (data, trailers, left) = chunked(input, split).unwrap();
        assert_eq!(data, b"hello, world!!!", "split {split}");
        let t = trailers.unwrap();
        assert_eq!(
            (t["x-checksum"].as_bytes(), t["x-more"].as_bytes()),
            (&b"abc"[..], &b"1"[..])
        );
        assert_eq!(
            left, 4,
            "bytes after the body are not consumed (split {split})"
        );
    }
    let (data, trailers, _) = chunked(b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
    assert_eq!((data.as_slice(), trailers.is_none()), (&b"abc"[..], true));
}

/// Malformed chunked framing is a protocol error, never a guess.
#[test]
fn chunked_body_errors() {
    for bad in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"10000000000000000\r\n",
        b"-5\r\nhello\r\n",
        b"5 5\r\nhello\r\n0\r\n\r\n",
    ] {
        assert!(
            matches!(chunked(bad, 3), Err(Error::Protocol(_))),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let long_line = [b"5;".as_slice(), &[b'x'; 5000]].concat();
    assert!(matches!(chunked(&long_line, 1000), Err(Error::Protocol(_))));
}

fn head(text: &str, head_request: bool) -> Result<Option<Head>, Error> {
    parse_head(&mut BytesMut::from(text.as_bytes()), head_request)
}

fn framing(text: &str) -> (StatusCode, String, bool) {
    let h = head(text, false).unwrap().unwrap();
    (h.response.status(), format!("{:?}", h.decoder), h.reusable)
}

/// RFC 9112 §6.3, rule by rule.
#[test]
fn response_framing_rules() {
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n"),
        (StatusCode::OK, "Length(12)".into(), true)
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").1,
        "Chunked(Size)"
    );
    // Both framings: chunked wins, the length is dropped, the connection is not reused.
    let h = head(
        "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
        false,
    )
    .unwrap()
    .unwrap();
    assert!(!h.response.headers().contains_key(header::CONTENT_LENGTH));
    assert_eq!(
        (format!("{:?}", h.decoder), h.reusable),
        ("Chunked(Size)".into(), false)
    );
    // A transfer coding that does not end in chunked: read until close.
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n").1,
        "UntilClose"
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\n\r\n"),
        (StatusCode::OK, "UntilClose".into(), false)
    );
    assert_eq!(
        framing("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n").1,
        "Empty"
    );
    assert_eq!(framing("HTTP/1.1 304 Not Modified\r\n\r\n").1, "Empty");
    let h = head("HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n", true)
        .unwrap()
        .unwrap();
    assert_eq!(
        format!("{:?}", h.decoder),
        "Empty",
        "a response to HEAD has no body"
    );
    assert_eq!(
        framing("HTTP/1.1 200 OK\r\ncontent-length: 7, 7\r\n\r\n").1,
        "Length(7)"
    );
    assert_eq!(
        framing("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"),
        (StatusCode::SWITCHING_PROTOCOLS, "Upgrade".into(), false)
    );
}

/// Keep-alive follows the version and `connection`.
#[test]
fn response_reuse_rules() {
    assert!(!framing("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").2);
    assert!(
        !framing("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive, Close\r\n\r\n").2
    );
    assert!(!framing("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").2);
    assert!(framing("HTTP/1.0 200 OK\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n").2);
}

/// 1xx responses other than 101 are skipped; the final response follows in the same buffer.
#[test]
fn informational_responses_are_skipped() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok"[..],
    );
    let h = parse_head(&mut buf, false).unwrap().unwrap();
    assert_eq!(h.response.status(), StatusCode::CREATED);
    assert_eq!(&buf[..], b"ok");
}

/// A head that is not HTTP, or whose lengths disagree, is a protocol error.
#[test]
fn bad_response_heads() {
    for bad in [
        "GET / HTTP/1.1\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1e3\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
    ] {
        assert!(
            matches!(head(bad, false), Err(Error::Protocol(_))),
            "{bad:?}"
        );
    }
    let many: String = (0..MAX_HEADERS + 1)
        .map(|i| format!("x-{i}: 1\r\n"))
        .collect();
    assert!(head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n"), false).is_err());
    assert!(
        head("HTTP/1.1 200 OK\r\ncontent-le", false)
            .unwrap()
            .is_none(),
        "partial head waits"
    );
}

// --- whole exchanges over loopback ---------------------------------------------------------------

#[derive(Default)]
struct Returned(Mutex<Vec<Conn>>);

impl Recycle for Returned {
    fn recycle(&self, conn: Conn) {
        self.0.lock().unwrap().push(conn);
    }
}

impl Returned {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A client connection and the raw upstream end of it.
async fn pair() -> (Conn, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (Conn::new(Io::Tcp(c)), s)
}

/// What a request body looks like to Tandem.
enum Donor {
    /// A body of known length.
    Full(&'static [u8]),
    /// Data frames of unknown total length, then optional trailers.
    Stream(Vec<&'static [u8]>, Option<(&'static str, &'static str)>),
    /// Frames as the test sends them, ending when the sender is dropped.
    Channel(tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, std::convert::Infallible>>),
}

/// An [`Incoming`] with the given shape: the body of a response from a local hyper server.
async fn incoming(donor: Donor) -> Incoming {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let donor = std::sync::Arc::new(Mutex::new(Some(donor)));
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let svc = service_fn(move |_req| {
            let d = donor.lock().unwrap().take();
            async move {
                type B = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
                let body: B = match d {
                    Some(Donor::Full(b)) => Full::new(Bytes::from_static(b)).boxed(),
                    Some(Donor::Stream(parts, trailers)) => {
                        let mut frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = parts
                            .into_iter()
                            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
                            .collect();
                        if let Some((k, v)) = trailers {
                            let mut t = HeaderMap::new();
                            t.insert(k, HeaderValue::from_static(v));
                            frames.push(Ok(Frame::trailers(t)));
                        }
                        BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
                    }
                    Some(Donor::Channel(mut rx)) => {
                        BodyExt::boxed(StreamBody::new(futures_util::stream::poll_fn(move |cx| {
                            rx.poll_recv(cx)
                        })))
                    }
                    None => Full::new(Bytes::new()).boxed(),
                };
                // hyper sends HTTP/1.1 trailers only when `trailer` declares them.
                let mut res = Response::new(body);
                res.headers_mut()
                    .insert("trailer", HeaderValue::from_static("x-sum"));
                Ok::<_, std::convert::Infallible>(res)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(s), svc)
            .await;
    });
    let io = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake::<_, http_body_util::Empty<Bytes>>(TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    // hyper's HTTP/1.1 server sends trailers only to a client that accepts them.
    let req = Request::get("/")
        .header("host", "donor")
        .header("te", "trailers")
        .body(http_body_util::Empty::new())
        .unwrap();
    tx.send_request(req).await.unwrap().into_body()
}

/// Reads from the raw upstream until `needle` has been seen; returns everything read.
async fn read_until(s: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {:?} in time; got {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&got)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "closed before {:?}; got {:?}",
            String::from_utf8_lossy(needle),
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    got
}

async fn collect(res: Response<ResponseBody>) -> (Vec<u8>, Option<HeaderMap>) {
    let collected = res.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes().to_vec(), trailers)
}

fn request(method: Method, body: Incoming, length: Option<usize>) -> Request<RequestBody> {
    let mut b = Request::builder()
        .method(method)
        .uri("/p?q=1")
        .header("host", "up");
    if let Some(n) = length {
        b = b.header("content-length", n);
    }
    b.body(RequestBody::new(body, false, 0)).unwrap()
}

/// A bodiless GET: the head as given, no framing fields; a response split into tiny writes is
/// reassembled; the connection is returned for reuse.
#[tokio::test]
async fn get_round_trip_and_reuse() {
    let (conn, mut up) = pair().await;
    let returned = Arc::new(Returned::default());
    let req = request(Method::GET, incoming(Donor::Full(b"")).await, None);
    let server = tokio::spawn(async move {
        let got = read_until(&mut up, b"\r\n\r\n").await;
        assert_eq!(got, b"GET /p?q=1 HTTP/1.1\r\nhost: up\r\n\r\n");
        for piece in b"HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\n\r\nhello".chunks(3) {
            up.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        up
    });
    let res = Exchange::new(req)
        .send(conn, false, returned.clone())
        .await
        .unwrap();
    assert_eq!(
        (res.status(), res.headers()["x-a"].as_bytes()),
        (StatusCode::OK, &b"1"[..])
    );
    assert_eq!(collect(res).await.0, b"hello");
    assert_eq!(returned.count(), 1);
    let _up = server.await.unwrap();
}

/// A body of known length goes out as is with its `content-length`; one of unknown length is
/// chunked, with its trailers.
#[tokio::test]
async fn request_bodies_are_framed() {
    let (conn, mut up) = pair().await;
    let req = request(
        Method::POST,
        incoming(Donor::Full(b"0123456789")).await,
        Some(10),
    );
    let server = tokio::spawn(async move {
        let got = read_until(&mut up, b"0123456789").await;
        assert!(
            got.starts_with(b"POST /p?q=1 HTTP/1.1\r\n"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(!got
            .windows(17)
            .any(|w| w.eq_ignore_ascii_case(b"transfer-encoding")));
        up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
    });
    let res = Exchange::new(req)
        .send(conn, false, Arc::new(Returned::default()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    server.await.unwrap();

    let (conn, mut up) = pair().await;
    let body = incoming(Donor::Stream(vec![b"abc", b"defgh"], Some(("x-sum", "42")))).await;
    let req = request(Method::PUT, body, None);
    let server = tokio::spawn(async move {
        let got = read_until(&mut up, b"x-sum: 42\r\n\r\n").await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\nx-sum: 42\r\n\r\n"),
            "{text}"
        );
        up.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
    });
    let res = Exchange::new(req)
        .send(conn, false, Arc::new(Returned::default()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    server.await.unwrap();
}

/// Chunked responses stream through with their trailers; the connection is reusable after.
#[tokio::test]
async fn chunked_response_with_trailers() {
    let (conn, mut up) = pair().await;
    let returned = Arc::new(Returned::default());
    let req = request(Method::GET, incoming(Donor::Full(b"")).await, None);
    tokio::spawn(async move {
        read_until(&mut up, b"\r\n\r\n").await;
        up.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: grpc-status\r\n\r\n4\r\nwiki\r\n5\r\npedia\r\n0\r\ngrpc-status: 0\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let res = Exchange::new(req)
        .send(conn, false, returned.clone())
        .await
        .unwrap();
    let (data, trailers) = collect(res).await;
    assert_eq!(data, b"wikipedia");
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    assert_eq!(returned.count(), 1);
}

/// A response delimited by the close is read to the end and its connection is not reused.
#[tokio::test]
async fn close_delimited_response() {
    let (conn, mut up) = pair().await;
    let returned = Arc::new(Returned::default());
    let req = request(Method::GET, incoming(Donor::Full(b"")).await, None);
    tokio::spawn(async move {
        read_until(&mut up, b"\r\n\r\n").await;
        up.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        up.write_all(b" the end").await.unwrap();
    });
    let res = Exchange::new(req)
        .send(conn, false, returned.clone())
        .await
        .unwrap();
    assert_eq!(collect(res).await.0, b"until the end");
    assert_eq!(returned.count(), 0);
}

/// An upstream that closes inside a body of declared length: the body ends in an error (the
/// client must not take a truncated body for a whole one).
#[tokio::test]
async fn truncated_body_is_an_error() {
    let (conn, mut up) = pair().await;
    let req = request(Method::GET, incoming(Donor::Full(b"")).await, None);
    tokio::spawn(async move {
        read_until(&mut up, b"\r\n\r\n").await;
        up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
            .await
            .unwrap();
    });
    let res = Exchange::new(req)
        .send(conn, false, Arc::new(Returned::default()))
        .await
        .unwrap();
    let err = res.into_body().collect().await.unwrap_err();
    assert!(err.to_string().contains("91 bytes before the end"), "{err}");
}

/// Full duplex: the upstream answers and streams its response while the request body is still
/// coming; Tandem keeps sending the body as the response is read.
#[tokio::test]
async fn response_before_the_request_body_is_done() {
    let (conn, mut up) = pair().await;
    let (body_tx, body_rx) = tokio::sync::mpsc::channel(4);
    let body = incoming(Donor::Channel(body_rx)).await;
    body_tx
        .send(Ok(Frame::data(Bytes::from_static(b"ping1"))))
        .await
        .unwrap();
    let req = request(Method::POST, body, None);

    let server = tokio::spawn(async move {
        read_until(&mut up, b"ping1\r\n").await;
        up.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\npong1\r\n")
            .await
            .unwrap();
        read_until(&mut up, b"ping2\r\n").await;
        up.write_all(b"5\r\npong2\r\n0\r\n\r\n").await.unwrap();
        read_until(&mut up, b"0\r\n\r\n").await;
    });
    let returned = Arc::new(Returned::default());
    let res = Exchange::new(req)
        .send(conn, false, returned.clone())
        .await
        .unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"pong1");
    body_tx
        .send(Ok(Frame::data(Bytes::from_static(b"ping2"))))
        .await
        .unwrap();
    drop(body_tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"pong2");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

/// An early final response (413) while the request body is still being produced: the response
/// arrives, and the half-sent connection is not reused.
#[tokio::test]
async fn early_response_connection_not_reused() {
    let (conn, mut up) = pair().await;
    let body = incoming(Donor::Stream(vec![b"part"], None)).await;
    let req = request(Method::POST, body, None);
    let returned = Arc::new(Returned::default());
    tokio::spawn(async move {
        read_until(&mut up, b"\r\n\r\n").await;
        up.write_all(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbig!",
        )
        .await
        .unwrap();
    });
    let res = Exchange::new(req)
        .send(conn, false, returned.clone())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(collect(res).await.0, b"big!");
    assert_eq!(returned.count(), 0);
}

/// 101: the connection becomes the upgraded stream, bytes sent right behind the head first.
#[tokio::test]
async fn upgrade_hands_over_the_connection() {
    let (conn, mut up) = pair().await;
    let req = Request::get("/ws")
        .header("host", "up")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(incoming(Donor::Full(b"")).await)
        .unwrap();
    tokio::spawn(async move {
        read_until(&mut up, b"\r\n\r\n").await;
        up.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nearly").await.unwrap();
        let mut buf = [0u8; 4];
        up.read_exact(&mut buf).await.unwrap();
        up.write_all(&buf).await.unwrap();
    });
    let res = Exchange::new(req.map(|b| RequestBody::new(b, false, 0)))
        .send(conn, false, Arc::new(Returned::default()))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = res.into_body().into_upgraded().unwrap();
    let mut early = [0u8; 5];
    io.read_exact(&mut early).await.unwrap();
    assert_eq!(&early, b"early");
    io.write_all(b"echo").await.unwrap();
    let mut echo = [0u8; 4];
    io.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"echo");
}

/// Nothing back and the connection closed: `ClosedBeforeResponse`, and a bodiless GET on a
/// reused connection is handed back for a resend; a POST with a body is not.
#[tokio::test]
async fn closed_before_response_and_retry_rules() {
    for (method, donor, retry) in [
        (Method::GET, Donor::Full(b""), true),
        (Method::POST, Donor::Full(b"data"), false),
    ] {
        let (conn, mut up) = pair().await;
        let len = if let Donor::Full(b) = &donor {
            (!b.is_empty()).then_some(b.len())
        } else {
            None
        };
        let req = request(method.clone(), incoming(donor).await, len);
        tokio::spawn(async move {
            read_until(&mut up, b"\r\n\r\n").await;
            drop(up);
        });
        let failure = Exchange::new(req)
            .send(conn, true, Arc::new(Returned::default()))
            .await
            .unwrap_err();
        assert!(
            matches!(failure.error, Error::ClosedBeforeResponse | Error::Io(_)),
            "{method}: {:?}",
            failure.error
        );
        assert_eq!(failure.retry.is_some(), retry, "{method}");
    }
}

/// Bytes left over behind a complete response mean the upstream broke framing: not reused.
#[tokio::test]
async fn trailing_garbage_prevents_reuse() {
    let (conn, mut up) = pair().await;
    let returned = Arc::new(Returned::default());
    let req = request(Method::GET, incoming(Donor::Full(b"")).await, None);
    tokio::spawn(async move {
        read_until(&mut up, b"\r\n\r\n").await;
        up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let res = Exchange::new(req)
        .send(conn, false, returned.clone())
        .await
        .unwrap();
    assert_eq!(collect(res).await.0, b"ok");
    assert_eq!(returned.count(), 0);
}

/// Per-try lines go after the shared head's fields and before its blank line, with the body
/// behind them; the same head without lines is unchanged; a resend keeps the lines.
#[tokio::test]
async fn per_try_lines_go_into_the_head() {
    let (parts, _) = Request::builder()
        .method(Method::POST)
        .uri("/p")
        .header("host", "up")
        .header("content-length", "4")
        .body(())
        .unwrap()
        .into_parts();
    let head = RequestHead::new(&parts, true);
    for (lines, expected) in [
        (
            Some(&b"traceparent: 00-a-b-01\r\nb3: a-b-1\r\n"[..]),
            &b"POST /p HTTP/1.1\r\nhost: up\r\ncontent-length: 4\r\ntraceparent: 00-a-b-01\r\nb3: a-b-1\r\n\r\ndata"[..],
        ),
        (
            None,
            &b"POST /p HTTP/1.1\r\nhost: up\r\ncontent-length: 4\r\n\r\ndata"[..],
        ),
    ] {
        let (conn, mut up) = pair().await;
        let head = match lines {
            Some(l) => head.with_lines(|out| out.extend_from_slice(l)),
            None => head.clone(),
        };
        let body = RequestBody::new(incoming(Donor::Full(b"data")).await, false, 0);
        let server = tokio::spawn(async move {
            let got = read_until(&mut up, b"data").await;
            up.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
            (got, up)
        });
        let res = Exchange::with_head(head, body)
            .send(conn, false, Arc::new(Returned::default()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        let (got, _up) = server.await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(expected)
        );
    }
}
