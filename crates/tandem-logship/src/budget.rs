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
//! Sources are threads (they block on the budget); permits are dropped on any thread.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use tandem_telemetry::logs::Gauge;

/// The shared budget.
#[derive(Clone, Debug)]
pub struct Budget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: usize,
    used: Mutex<usize>,
    freed: Condvar,
    gauge: Gauge,
}

/// Bytes taken from the budget, given back on drop.
#[derive(Debug)]
pub struct BudgetPermit {
    budget: Budget,
    bytes: usize,
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
        }
    }

    /// Bytes in use now.
    pub fn used(&self) -> usize {
        *self.lock()
    }

    /// A permit of no bytes, to be resized: for lines that must go out whatever the budget
    /// (the last line of a released file).
    pub fn empty_permit(&self) -> BudgetPermit {
        BudgetPermit {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Takes `bytes` (at most the whole budget) if they are free now.
    pub fn try_acquire(&self, bytes: usize) -> Option<BudgetPermit> {
        let bytes = bytes.min(self.inner.limit);
        let mut used = self.lock();
        self.take(&mut used, bytes)
    }

    /// Waits up to `timeout` for `bytes` (at most the whole budget) to be free and takes them.
    pub fn acquire_timeout(&self, bytes: usize, timeout: Duration) -> Option<BudgetPermit> {
        let bytes = bytes.min(self.inner.limit);
        let used = self.lock();
        let (mut used, _) = self
            .inner
            .freed
            .wait_timeout_while(used, timeout, |u| *u + bytes > self.inner.limit)
            .unwrap_or_else(PoisonError::into_inner);
        self.take(&mut used, bytes)
    }

    fn take(&self, used: &mut usize, bytes: usize) -> Option<BudgetPermit> {
        if *used + bytes > self.inner.limit {
            return None;
        }
        *used += bytes;
        self.inner
            .gauge
            .set(i64::try_from(*used).unwrap_or(i64::MAX));
        Some(BudgetPermit {
            budget: self.clone(),
            bytes,
        })
    }

    fn give_back(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut used = self.lock();
        *used = used.saturating_sub(bytes);
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

impl BudgetPermit {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps `bytes` and gives the rest back; or takes more without waiting (the lines of one
    /// read may include a partial line held from the read before).
    pub fn resize(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.give_back(self.bytes - bytes);
        } else if bytes > self.bytes {
            let mut used = self.budget.lock();
            *used += bytes - self.bytes;
            self.budget
                .inner
                .gauge
                .set(i64::try_from(*used).unwrap_or(i64::MAX));
        }
        self.bytes = bytes;
    }
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
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
}
