//! The fault proxy's latency, partitions and resets, seen from raw TCP clients.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::FaultProxy;
use crate::assert_eventually;
use crate::upstream::Upstream;

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";
const OK: &[u8] = b"ok";

/// A TCP server that writes back whatever it reads; stops when the test's runtime ends.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Reads until `want` bytes arrived, failing on EOF or after `within`.
async fn read_exactly(conn: &mut TcpStream, want: usize, within: Duration) -> Vec<u8> {
    let mut buf = vec![0u8; want];
    tokio::time::timeout(within, conn.read_exact(&mut buf))
        .await
        .expect("bytes in time")
        .expect("read");
    buf
}

/// Sends `GET /` and reads the `ok` body's response up to its last byte.
async fn get_ok(conn: &mut TcpStream, within: Duration) {
    conn.write_all(GET).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        while !seen.ends_with(b"\r\n\r\nok") {
            let n = conn.read(&mut buf).await.expect("read");
            assert_ne!(n, 0, "closed early: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response in time");
    assert!(seen.starts_with(b"HTTP/1.1 200"));
}

/// Nothing arrives on `conn` within `wait`.
async fn silent(conn: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1];
    tokio::time::timeout(wait, conn.read(&mut buf))
        .await
        .is_err()
}

/// Without faults, bytes go both ways and connections are counted.
#[tokio::test]
async fn forwards_both_ways() {
    let up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).await;
    let mut a = TcpStream::connect(proxy.addr).await.unwrap();
    let mut b = TcpStream::connect(proxy.addr).await.unwrap();
    get_ok(&mut a, Duration::from_secs(5)).await;
    get_ok(&mut b, Duration::from_secs(5)).await;
    get_ok(&mut a, Duration::from_secs(5)).await;
    assert_eq!(
        (proxy.connections(), up.connections(), up.requests()),
        (2, 2, 3)
    );
    drop((a, b));
    assert_eventually!(proxy.open_connections() == 0);
}

/// Latency adds about twice itself to an exchange, keeps bytes in order, and delays chunks in
/// flight together rather than one after another.
#[tokio::test]
async fn latency_delays_each_way_without_limiting_throughput() {
    let proxy = FaultProxy::start(echo_server().await).await;
    let latency = Duration::from_millis(150);
    proxy.set_latency(latency);
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();

    let started = Instant::now();
    conn.write_all(b"ping").await.unwrap();
    assert_eq!(
        read_exactly(&mut conn, 4, Duration::from_secs(5)).await,
        b"ping"
    );
    assert!(started.elapsed() >= 2 * latency, "{:?}", started.elapsed());

    let started = Instant::now();
    for i in 0..5u8 {
        conn.write_all(&[b'0' + i; 3]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let echoed = read_exactly(&mut conn, 15, Duration::from_secs(5)).await;
    assert_eq!(echoed, b"000111222333444", "in order");
    let took = started.elapsed();
    assert!(took >= 2 * latency, "{took:?}");
    // One after another would be 5 × 300 ms.
    assert!(
        took < Duration::from_millis(1000),
        "{took:?}: delays add up"
    );

    proxy.set_latency(Duration::ZERO);
    let started = Instant::now();
    conn.write_all(b"pong").await.unwrap();
    assert_eq!(
        read_exactly(&mut conn, 4, Duration::from_secs(5)).await,
        b"pong"
    );
    assert!(started.elapsed() < 2 * latency, "cleared");
}

/// A blackhole answers nothing on new or existing connections, forwards nothing to the target,
/// and when it heals the held requests get through.
#[tokio::test]
async fn blackhole_stalls_new_and_existing_connections_until_healed() {
    let up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).await;
    let mut existing = TcpStream::connect(proxy.addr).await.unwrap();
    get_ok(&mut existing, Duration::from_secs(5)).await;

    proxy.set_blackhole(true);
    existing.write_all(GET).await.unwrap();
    let mut new = TcpStream::connect(proxy.addr)
        .await
        .expect("accepted during the partition");
    new.write_all(GET).await.unwrap();
    assert!(silent(&mut existing, Duration::from_millis(300)).await);
    assert!(silent(&mut new, Duration::from_millis(300)).await);
    assert_eq!(
        (up.requests(), up.connections()),
        (1, 1),
        "nothing reached the target"
    );
    assert_eq!(proxy.connections(), 2);

    proxy.set_blackhole(false);
    let mut buf = vec![0u8; 1024];
    for conn in [&mut existing, &mut new] {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("answered once healed")
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        assert!(buf[..n].ends_with(OK));
    }
    assert_eq!(up.requests(), 3);
}

/// `reset_all` sends an RST on every open connection; later connections work.
#[tokio::test]
async fn reset_all_resets_open_connections() {
    let up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).await;
    let mut idle = TcpStream::connect(proxy.addr).await.unwrap();
    get_ok(&mut idle, Duration::from_secs(5)).await;
    let mut busy = TcpStream::connect(proxy.addr).await.unwrap();
    busy.write_all(b"GET /sleep/10000 HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eventually!(up.requests() == 2);

    proxy.reset_all();
    let mut buf = [0u8; 64];
    for conn in [&mut idle, &mut busy] {
        let read = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
            .await
            .expect("reset in time");
        assert_eq!(
            read.expect_err("an RST, not a FIN").kind(),
            ErrorKind::ConnectionReset
        );
    }
    assert_eventually!(up.open_connections() == 0);

    let mut later = TcpStream::connect(proxy.addr).await.unwrap();
    get_ok(&mut later, Duration::from_secs(5)).await;
}

/// A target that refuses connections shows as a reset client connection.
#[tokio::test]
async fn refused_target_resets_the_client() {
    let up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).await;
    up.kill().await;
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    conn.write_all(GET).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
        .await
        .expect("closed in time");
    assert_eq!(read.expect_err("reset").kind(), ErrorKind::ConnectionReset);
}

/// Dropping the proxy closes the connections through it.
#[tokio::test]
async fn drop_closes_connections() {
    let up = Upstream::start().await;
    let proxy = FaultProxy::start(up.addr).await;
    let mut conn = TcpStream::connect(proxy.addr).await.unwrap();
    get_ok(&mut conn, Duration::from_secs(5)).await;
    drop(proxy);
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf))
        .await
        .expect("closed, not left hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eventually!(up.open_connections() == 0);
}
