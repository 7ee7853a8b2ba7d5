//! The memory budget: one count of log bytes in flight, shared by every source and sink.
//!
//! A source takes a permit before it reads and keeps the part its lines use inside their chunk;
//! the permit goes back when the last sink is done with the chunk (confirmed, or dropped at
//! shutdown). When the budget is spent, sources wait: the files are the buffer, so nothing is
//! lost, and `tandem_logs_source_paused` says so.
//!
//! The bound is on line bytes. Records, encoded request bodies and a partial line per file
//! (at most `max_line_bytes`) come on top, so memory in use is a small multiple of the budget.
//!
//! A file source also has its own window ([`Budget::window`]): a bound on the lines and bytes
//! it has in flight, sized from what its sinks take in their next deliveries. Reading further
//! ahead than that only fills memory (the files are the buffer), so a source that is ahead of
//! its sinks pauses on its window long before the shared budget is spent. A window's count is
//! kept under the shared budget's lock, so one wait covers both.
//!
//! Sources are threads (they block on the budget); permits are dropped on any thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use tandem_telemetry::logs::Gauge;

/// The shared budget, or a source's window within it.
#[derive(Clone, Debug)]
pub struct Budget {
    inner: Arc<Inner>,
    window: Option<Arc<Window>>,
}

/// One source's share: bytes and lines in flight, on top of the shared count. The counts only
/// change under the shared budget's lock (the atomics just make them `Sync`).
#[derive(Debug)]
struct Window {
    bytes_limit: usize,
    lines_limit: usize,
    bytes: AtomicUsize,
    lines: AtomicUsize,
}

impl Window {
    fn has_room(&self, bytes: usize) -> bool {
        self.bytes.load(Ordering::Relaxed) + bytes <= self.bytes_limit
            && self.lines.load(Ordering::Relaxed) < self.lines_limit
    }
}

#[derive(Debug)]
struct Inner {
    limit: usize,
    used: Mutex<usize>,
    freed: Condvar,
    gauge: Gauge,
}

/// Bytes (and, within a window, lines) taken from the budget, given back on drop.
#[derive(Debug)]
pub struct BudgetPermit {
    budget: Budget,
    bytes: usize,
    lines: usize,
}

impl Budget {
    /// A budget of `limit` bytes, its use shown on `gauge`.
    pub fn new(limit: usize, gauge: Gauge) -> Budget {
        Budget {
            inner: Arc::new(Inner {
                limit: limit.max(1),
                used: Mutex::new(0),
                freed: Condvar::new(),
                gauge,
            }),
            window: None,
        }
    }

    /// A window of this budget: permits taken through it count against the shared budget and
    /// also against at most `bytes` (clamped to the budget) and `lines` (at least 1) of this
    /// window's own.
    pub fn window(&self, bytes: usize, lines: usize) -> Budget {
        Budget {
            inner: self.inner.clone(),
            window: Some(Arc::new(Window {
                bytes_limit: bytes.clamp(1, self.inner.limit),
                lines_limit: lines.max(1),
                bytes: AtomicUsize::new(0),
                lines: AtomicUsize::new(0),
            })),
        }
    }

    /// The largest permit one acquire gives: the budget, or the window's bytes.
    fn max_permit(&self) -> usize {
        self.window
            .as_ref()
            .map_or(self.inner.limit, |w| w.bytes_limit.min(self.inner.limit))
    }

    fn has_room(&self, used: usize, bytes: usize) -> bool {
        used + bytes <= self.inner.limit && self.window.as_ref().is_none_or(|w| w.has_room(bytes))
    }

    /// Bytes in use now, in the whole budget.
    pub fn used(&self) -> usize {
        *self.lock()
    }

    /// Whether the shared budget (not counting the window) has `bytes` free now.
    pub fn shared_has_room(&self, bytes: usize) -> bool {
        *self.lock() + bytes.min(self.inner.limit) <= self.inner.limit
    }

    /// Bytes and lines in use now in this window; None for the shared budget itself.
    pub fn window_used(&self) -> Option<(usize, usize)> {
        let _used = self.lock();
        self.window.as_ref().map(|w| {
            (
                w.bytes.load(Ordering::Relaxed),
                w.lines.load(Ordering::Relaxed),
            )
        })
    }

    /// A permit of no bytes, to be resized: for lines that must go out whatever the budget
    /// (the last line of a released file).
    pub fn empty_permit(&self) -> BudgetPermit {
        BudgetPermit {
            budget: self.clone(),
            bytes: 0,
            lines: 0,
        }
    }

    /// Takes `bytes` (at most the whole budget, or window) if they are free now; within a
    /// window, only while it holds fewer lines than its limit.
    pub fn try_acquire(&self, bytes: usize) -> Option<BudgetPermit> {
        let bytes = bytes.min(self.max_permit());
        let mut used = self.lock();
        self.take(&mut used, bytes)
    }

    /// Waits up to `timeout` for `bytes` (at most the whole budget, or window) to be free and
    /// takes them.
    pub fn acquire_timeout(&self, bytes: usize, timeout: Duration) -> Option<BudgetPermit> {
        let bytes = bytes.min(self.max_permit());
        let used = self.lock();
        let (mut used, _) = self
            .inner
            .freed
            .wait_timeout_while(used, timeout, |u| !self.has_room(*u, bytes))
            .unwrap_or_else(PoisonError::into_inner);
        self.take(&mut used, bytes)
    }

    fn take(&self, used: &mut usize, bytes: usize) -> Option<BudgetPermit> {
        if !self.has_room(*used, bytes) {
            return None;
        }
        *used += bytes;
        if let Some(w) = &self.window {
            w.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        self.inner
            .gauge
            .set(i64::try_from(*used).unwrap_or(i64::MAX));
        Some(BudgetPermit {
            budget: self.clone(),
            bytes,
            lines: 0,
        })
    }

    fn give_back(&self, bytes: usize, lines: usize) {
        if bytes == 0 && lines == 0 {
            return;
        }
        let mut used = self.lock();
        *used = used.saturating_sub(bytes);
        if let Some(w) = &self.window {
            sub(&w.bytes, bytes);
            sub(&w.lines, lines);
        }
        self.inner
            .gauge
            .set(i64::try_from(*used).unwrap_or(i64::MAX));
        drop(used);
        self.inner.freed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, usize> {
        // The count stays valid even if a holder panicked: it is only ever a sum.
        self.inner
            .used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Takes `n` from a window count (under the budget's lock), never below 0.
fn sub(count: &AtomicUsize, n: usize) {
    let now = count.load(Ordering::Relaxed);
    count.store(now.saturating_sub(n), Ordering::Relaxed);
}

impl BudgetPermit {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps `bytes` and gives the rest back; or takes more without waiting (the lines of one
    /// read may include a partial line held from the read before).
    pub fn resize(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.give_back(self.bytes - bytes, 0);
        } else if bytes > self.bytes {
            let mut used = self.budget.lock();
            *used += bytes - self.bytes;
            if let Some(w) = &self.budget.window {
                w.bytes.fetch_add(bytes - self.bytes, Ordering::Relaxed);
            }
            self.budget
                .inner
                .gauge
                .set(i64::try_from(*used).unwrap_or(i64::MAX));
        }
        self.bytes = bytes;
    }

    /// Counts `lines` records against the window (without waiting: the lines are read), until
    /// the permit is dropped. No effect outside a window.
    pub fn hold_lines(&mut self, lines: usize) {
        let Some(w) = &self.budget.window else {
            return;
        };
        let _used = self.budget.lock();
        w.lines.fetch_add(lines, Ordering::Relaxed);
        self.lines += lines;
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes, self.lines);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Permits hold bytes until dropped; a waiting acquire succeeds as soon as bytes come back,
    /// from another thread.
    #[test]
    fn permits_bound_and_release() {
        let b = Budget::new(100, Gauge::default());
        let p1 = b.try_acquire(60).unwrap();
        assert!(b.try_acquire(50).is_none());
        let mut p2 = b.try_acquire(40).unwrap();
        p2.resize(10);
        assert_eq!(b.used(), 70);
        assert!(b.acquire_timeout(40, Duration::from_millis(10)).is_none());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(p1);
        });
        let p3 = b.acquire_timeout(80, Duration::from_secs(5)).unwrap();
        t.join().unwrap();
        assert_eq!(b.used(), 90);
        drop((p2, p3));
        assert_eq!(b.used(), 0);
        assert_eq!(
            b.try_acquire(1000).unwrap().bytes(),
            100,
            "clamped to the budget"
        );
    }

    /// A window bounds its own bytes and lines on top of the shared budget; what it gives back
    /// also goes back to the budget, and a wait on a full window ends when a permit of that
    /// window is dropped on another thread.
    #[test]
    fn window_bounds_lines_and_bytes() {
        let b = Budget::new(1000, Gauge::default());
        let w = b.window(300, 10);
        let other = b.window(2000, 10);
        let mut p1 = w.try_acquire(200).unwrap();
        assert!(w.try_acquire(200).is_none(), "window bytes spent");
        assert_eq!(w.try_acquire(100).unwrap().bytes(), 100);
        assert_eq!(w.window_used(), Some((200, 0)));
        assert_eq!(b.window_used(), None);
        p1.hold_lines(10);
        assert!(w.try_acquire(1).is_none(), "window lines spent");
        assert!(
            other.try_acquire(500).is_some(),
            "another window is not held back"
        );
        let fresh = Budget::new(1000, Gauge::default()).window(2000, 10);
        assert_eq!(
            fresh.try_acquire(5000).unwrap().bytes(),
            1000,
            "a window's limit is clamped to the budget"
        );
        assert_eq!(b.used(), 200);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(p1);
        });
        let p2 = w.acquire_timeout(250, Duration::from_secs(5)).unwrap();
        t.join().unwrap();
        assert_eq!(w.window_used(), Some((250, 0)));
        assert_eq!(b.used(), 250);
        drop(p2);
        assert_eq!((b.used(), w.window_used()), (0, Some((0, 0))));
    }

    /// A window cannot go past the shared budget: when other sources spent it, a window with
    /// room waits too, and goes on once they give bytes back.
    #[test]
    fn window_waits_on_the_shared_budget() {
        let b = Budget::new(100, Gauge::default());
        let w = b.window(100, 1000);
        let p = b.try_acquire(90).unwrap();
        assert!(w.try_acquire(20).is_none());
        assert!(w.acquire_timeout(20, Duration::from_millis(10)).is_none());
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(p);
        });
        let got = w.acquire_timeout(20, Duration::from_secs(5)).unwrap();
        t.join().unwrap();
        assert_eq!((got.bytes(), b.used()), (20, 20));
    }
}
