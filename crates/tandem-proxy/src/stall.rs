//! Stalled HTTP/2 response streams: a client that keeps one stream's flow-control window shut
//! (zero-window stall) while the connection stays busy otherwise.
//!
//! HTTP/1's `send_timeout` sees a blocked socket write, but HTTP/2 flow control keeps Tandem
//! from writing at all, so no write ever blocks: hyper waits for capacity and stops polling the
//! response body, whose own `stream_idle_timeout` is then never checked either. The stalled
//! stream would hold its upstream request until the client went away.
//!
//! Each HTTP/2 stream task runs inside a [`Watched`] future (spawned by [`StreamExecutor`], the
//! server's executor). While it polls the stream, the response body ([`crate::body::ProxyBody`])
//! reports through a thread-local whether it was polled ([`polled`]) or handed out data
//! ([`handed_out`]). A stream whose last event was a hand-out and that then waited `timeout`
//! without being polled again waits on the client's window: it is dropped, which resets the
//! stream (`RST_STREAM CANCEL`) and releases its upstream request. A stream waiting on its
//! upstream was polled last, so it is left to the route's and `stream_idle_timeout`'s bounds.
//! The timeout is the listener's `send_timeout`: in both protocols, a client that accepts no
//! bytes for that long while Tandem has some to send is cut off.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// What the response body did last during the current poll of a watched stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    /// Nothing (or not inside a watched stream).
    Nothing,
    /// It was polled: hyper had capacity, or the body waited for its upstream.
    Polled,
    /// It handed out a data frame.
    HandedOut,
}

thread_local! {
    /// The event slot of the stream being polled on this thread, if any.
    static EVENT: Cell<Option<Event>> = const { Cell::new(None) };
}

/// The response body is being polled.
#[inline]
pub fn polled() {
    record(Event::Polled);
}

/// The response body returned a data frame.
#[inline]
pub fn handed_out() {
    record(Event::HandedOut);
}

#[inline]
fn record(e: Event) {
    EVENT.with(|slot| {
        if slot.get().is_some() {
            slot.set(Some(e));
        }
    });
}

/// The HTTP/2 server's executor: spawns each stream's task on tokio inside a [`Watched`].
#[derive(Clone, Copy, Debug)]
pub struct StreamExecutor {
    timeout: Duration,
}

impl StreamExecutor {
    /// Streams stalled by the client longer than `timeout` are reset.
    pub fn new(timeout: Duration) -> Self {
        StreamExecutor { timeout }
    }
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(Watched {
            inner: Box::pin(fut),
            timeout: self.timeout,
            handed_out_at: None,
            sleep: None,
        });
    }
}

/// A stream's task, dropped once the client has kept it from sending for `timeout`.
pub struct Watched<F> {
    inner: Pin<Box<F>>,
    timeout: Duration,
    /// Since when the body's last data waits for the client's window.
    handed_out_at: Option<Instant>,
    /// Armed while `handed_out_at` is set; allocated on the first stall only.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<F: Future> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // `inner` is boxed, so `Watched` is `Unpin`.
        let this = self.get_mut();
        let outer = EVENT.with(|slot| slot.replace(Some(Event::Nothing)));
        let polled = this.inner.as_mut().poll(cx);
        let event = EVENT.with(|slot| slot.replace(outer));
        if polled.is_ready() {
            return Poll::Ready(());
        }
        match event {
            Some(Event::HandedOut) => {
                this.handed_out_at = Some(Instant::now());
            }
            Some(Event::Polled) => this.handed_out_at = None,
            Some(Event::Nothing) | None => {}
        }
        let Some(since) = this.handed_out_at else {
            return Poll::Pending;
        };
        let deadline = since + this.timeout;
        let sleep = match &mut this.sleep {
            Some(s) => {
                if s.deadline() != deadline {
                    s.as_mut().reset(deadline);
                }
                s
            }
            None => this
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                tracing::debug!(
                    timeout = ?this.timeout,
                    "HTTP/2 stream reset: the client accepted none of its response for send_timeout (zero-window stall)"
                );
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A stream that hands out data and then waits (as hyper does without window) is dropped
    /// after the timeout; one whose body was polled last (waiting for its upstream) is not.
    #[tokio::test(start_paused = true)]
    async fn handed_out_then_waiting_is_dropped_polled_is_not() {
        for (last, dropped) in [(Event::HandedOut, true), (Event::Polled, false)] {
            let dropped_flag = Arc::new(AtomicBool::new(false));
            struct Guard(Arc<AtomicBool>);
            impl Drop for Guard {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let guard = Guard(dropped_flag.clone());
            let stream = async move {
                let _guard = guard;
                polled();
                if last == Event::HandedOut {
                    handed_out();
                }
                std::future::pending::<()>().await;
            };
            StreamExecutor::new(Duration::from_secs(5)).execute_for_test(stream);
            tokio::time::sleep(Duration::from_secs(4)).await;
            assert!(
                !dropped_flag.load(Ordering::SeqCst),
                "dropped before the timeout"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            assert_eq!(dropped_flag.load(Ordering::SeqCst), dropped, "{last:?}");
        }
    }

    /// Outside a watched stream the hooks do nothing (HTTP/1 responses).
    #[test]
    fn hooks_outside_a_stream_are_inert() {
        handed_out();
        polled();
        assert_eq!(EVENT.with(Cell::get), None);
    }

    impl StreamExecutor {
        fn execute_for_test<F>(&self, fut: F)
        where
            F: Future + Send + 'static,
            F::Output: Send + 'static,
        {
            hyper::rt::Executor::execute(self, fut);
        }
    }
}
