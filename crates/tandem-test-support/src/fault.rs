//! A TCP proxy for network faults, put between Tandem and an upstream (this kernel has no `tc
//! netem`): one-way latency, partitions and resets.
//!
//! - **Latency** ([`FaultProxy::set_latency`]) models a link with that much added one-way delay:
//!   each chunk read is written to the other side `latency` after it was read, in order. Chunks in
//!   flight are delayed together, not one after another, so it is not a throughput limit: a
//!   request/response exchange takes about 2 × latency more. Connection setup is not delayed.
//! - **Blackhole** ([`FaultProxy::set_blackhole`]) models dropped packets: new connections are
//!   accepted (the kernel completes the handshake) but nothing is forwarded or answered, and
//!   existing connections stall the same way. Bytes read during a partition are held, as TCP would
//!   retransmit them: when it heals, everything flows again.
//! - **Reset** ([`FaultProxy::reset_all`]) closes every current connection on both sides with an
//!   RST (`SO_LINGER` 0, then close); later connections are unaffected.
//!
//! A read error (e.g. an RST) on one side resets both sides, after the latency; an orderly close
//! (FIN) is passed on as one, also after the latency. If the target refuses, the client's
//! connection is reset.
//!
//! Limits: each direction queues at most 256 chunks of up to 16 KiB, so a direction carries at most
//! 4 MiB per latency period. Everything is torn down on drop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

#[cfg(test)]
mod tests;

const CHUNK: usize = 16 * 1024;
const QUEUE: usize = 256;

/// A running fault proxy; stops on drop, closing every connection.
pub struct FaultProxy {
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    /// Where it forwards to.
    pub target: SocketAddr,
    knobs: watch::Sender<Knobs>,
    /// Bumped by [`FaultProxy::reset_all`]; each connection watches it from its accept on.
    resets: watch::Sender<u64>,
    conns: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    /// The accept loop; it owns the connection tasks, so aborting it ends them all.
    task: JoinHandle<()>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Knobs {
    latency: Duration,
    blackhole: bool,
}

/// What crosses a direction's queue, each due at a time.
enum Chunk {
    Data(Bytes),
    /// The sender closed its side in order: shut the other side's write half.
    Fin,
    /// Reading failed: reset both sides.
    Reset,
}

/// Counts a connection as closed however its task ends, aborted included.
struct OpenGuard(Arc<AtomicUsize>);

// === impl FaultProxy ===

impl FaultProxy {
    /// Starts forwarding from a free port on 127.0.0.1 to `target`, with no fault set.
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (knobs, _) = watch::channel(Knobs::default());
        let (resets, _) = watch::channel(0);
        let conns = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            target,
            knobs.subscribe(),
            resets.subscribe(),
            conns.clone(),
            open.clone(),
        ));
        FaultProxy {
            addr,
            target,
            knobs,
            resets,
            conns,
            open,
            task,
        }
    }

    /// Adds `latency` to every chunk in each direction, from now on; zero to clear.
    pub fn set_latency(&self, latency: Duration) {
        self.knobs.send_modify(|k| k.latency = latency);
    }

    /// Starts (`true`) or heals (`false`) a partition between clients and the target.
    pub fn set_blackhole(&self, on: bool) {
        self.knobs.send_modify(|k| k.blackhole = on);
    }

    /// Resets (RST) both sides of every connection open now.
    pub fn reset_all(&self) {
        self.resets.send_modify(|generation| *generation += 1);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === impl OpenGuard ===

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

// === forwarding ===

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    knobs: watch::Receiver<Knobs>,
    resets: watch::Receiver<u64>,
    conns: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
) {
    let mut tasks = JoinSet::new();
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        conns.fetch_add(1, Ordering::SeqCst);
        open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(open.clone());
        // Resets asked for before this connection was accepted are not for it.
        let mut reset = resets.clone();
        reset.borrow_and_update();
        while tasks.try_join_next().is_some() {}
        tasks.spawn(connection(client, target, knobs.clone(), reset, guard));
    }
}

async fn connection(
    mut client: TcpStream,
    target: SocketAddr,
    mut knobs: watch::Receiver<Knobs>,
    mut reset: watch::Receiver<u64>,
    _guard: OpenGuard,
) {
    let _ = client.set_nodelay(true);
    let upstream = tokio::select! {
        upstream = connect(target, &mut knobs) => upstream,
        () = reset_requested(&mut reset) => None,
    };
    let Some(mut upstream) = upstream else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = upstream.set_nodelay(true);
    let reset_both = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let pump = async {
            tokio::try_join!(
                pipe(client_read, upstream_write, knobs.clone()),
                pipe(upstream_read, client_write, knobs.clone()),
            )
            .is_err()
        };
        tokio::select! {
            failed = pump => failed,
            () = reset_requested(&mut reset) => true,
        }
    };
    if reset_both {
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
}

/// Connects once no partition is on; `None` if the target refuses.
async fn connect(target: SocketAddr, knobs: &mut watch::Receiver<Knobs>) -> Option<TcpStream> {
    reachable(knobs).await?;
    TcpStream::connect(target).await.ok()
}

/// One direction: a reader queueing chunks with their due time, and a writer sending each when due.
/// `Err` when either side failed and the connection should be reset.
async fn pipe<R, W>(mut from: R, mut to: W, knobs: watch::Receiver<Knobs>) -> Result<(), ()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (queue, mut due) = mpsc::channel::<(Instant, Chunk)>(QUEUE);
    let mut read_knobs = knobs.clone();
    let mut write_knobs = knobs;
    let read = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            // During a partition nothing is read; what was read is held until it heals.
            reachable(&mut read_knobs).await.ok_or(())?;
            let chunk = match from.read(&mut buf).await {
                Ok(0) => Chunk::Fin,
                Ok(n) => Chunk::Data(Bytes::copy_from_slice(&buf[..n])),
                Err(_) => Chunk::Reset,
            };
            let knobs = reachable(&mut read_knobs).await.ok_or(())?;
            let last = !matches!(chunk, Chunk::Data(_));
            // The writer only stops after a failure of its own, which it reports.
            if queue
                .send((Instant::now() + knobs.latency, chunk))
                .await
                .is_err()
                || last
            {
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            reachable(&mut write_knobs).await.ok_or(())?;
            match chunk {
                Chunk::Data(bytes) => to.write_all(&bytes).await.map_err(|_| ())?,
                Chunk::Fin => {
                    let _ = to.shutdown().await;
                    return Ok(());
                }
                Chunk::Reset => return Err(()),
            }
        }
        Ok(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Waits until no partition is on; `None` once the proxy is gone.
async fn reachable(knobs: &mut watch::Receiver<Knobs>) -> Option<Knobs> {
    knobs.wait_for(|k| !k.blackhole).await.ok().map(|k| *k)
}

/// Completes when [`FaultProxy::reset_all`] is called; never once the proxy is gone.
async fn reset_requested(reset: &mut watch::Receiver<u64>) {
    if reset.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}
