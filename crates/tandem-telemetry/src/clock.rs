//! Wall-clock times from monotonic instants, without a wall-clock read per timestamp.
//!
//! Spans carry Unix times, while the request path measures with [`Instant`]s it reads anyway
//! (latency metrics, timeouts). Reading `SystemTime::now` and converting it costs ~300
//! instructions; this clock keeps the Unix time of one fixed instant (`epoch`) and turns an
//! instant into Unix nanoseconds with one subtraction. The wall clock is read again at most
//! once a second ([`REFRESH`]), so steps of the system clock (NTP, an operator) are followed
//! within a second.
//!
//! A request converts all its instants with the [`Epoch`] it took at its start, so its times
//! are those of the monotonic clock: a try's span stays inside its request's span even when
//! the wall clock steps in between.
//!
//! The monotonic clock stops while the machine is suspended (and a paused VM's may too): for up
//! to a second after a resume, times are behind by the length of the pause, until the next
//! wall-clock read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the wall clock is read again at most.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The process's clock: the instant all conversions count from, and the Unix time of it.
#[derive(Debug)]
pub struct UnixClock {
    /// The instant conversions count from.
    base: Instant,
    /// Unix nanoseconds at `base`, as of the last wall-clock read.
    epoch: AtomicU64,
    /// Nanoseconds after `base` from which the wall clock is read again.
    next_read: AtomicU64,
}

/// An instant and its Unix time, as a request took them at its start: every instant of the
/// request is converted from it ([`Epoch::unix_nanos`]).
#[derive(Clone, Copy, Debug)]
pub struct Epoch {
    base: Instant,
    unix_nanos: u64,
}

static CLOCK: LazyLock<UnixClock> = LazyLock::new(UnixClock::new);

/// The process's clock.
pub fn clock() -> &'static UnixClock {
    &CLOCK
}

// === impl UnixClock ===

impl UnixClock {
    /// A clock reading the wall clock now.
    pub fn new() -> Self {
        let clock = UnixClock {
            base: Instant::now(),
            epoch: AtomicU64::new(0),
            next_read: AtomicU64::new(0),
        };
        clock.read_wall();
        clock
    }

    /// The epoch to convert instants around `at` with: the last one read, or a new one when
    /// the last read is older than [`REFRESH`] at `at`.
    #[cfg(test)]
    pub fn epoch(&self, at: Instant) -> Epoch {
        self.since_base(at);
        Epoch {
            base: self.base,
            unix_nanos: self.epoch.load(Ordering::Relaxed),
        }
    }

    /// Nanoseconds from the base to `at`, after reading the wall clock again if it is due.
    fn since_base(&self, at: Instant) -> u64 {
        let since = nanos(at.saturating_duration_since(self.base));
        if since >= self.next_read.load(Ordering::Relaxed) {
            self.read_wall();
        }
        since
    }

    /// The epoch a request starting at `at` converts its instants with (anchored at `at`, so
    /// `at` itself, which is often its first try's start too, costs no subtraction), and `at`
    /// in Unix nanoseconds.
    pub fn start(&self, at: Instant) -> (Epoch, u64) {
        let since = self.since_base(at);
        let unix_nanos = self.epoch.load(Ordering::Relaxed).saturating_add(since);
        (
            Epoch {
                base: at,
                unix_nanos,
            },
            unix_nanos,
        )
    }

    /// `at` in Unix nanoseconds.
    pub fn unix_nanos(&self, at: Instant) -> u64 {
        self.start(at).1
    }

    /// `at` on the wall clock.
    #[cfg(test)]
    pub fn system_time(&self, at: Instant) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.unix_nanos(at))
    }

    /// Reads the wall clock and the monotonic clock together, and keeps the Unix time of
    /// `base` they give. Two threads doing so at once store close values: either is right.
    fn read_wall(&self) {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, nanos);
        let since = nanos(self.base.elapsed());
        self.epoch
            .store(wall.saturating_sub(since), Ordering::Relaxed);
        self.next_read
            .store(since.saturating_add(nanos(REFRESH)), Ordering::Relaxed);
    }
}

impl Default for UnixClock {
    fn default() -> Self {
        UnixClock::new()
    }
}

// === impl Epoch ===

impl Epoch {
    /// `at` in Unix nanoseconds (an instant before the epoch's gives the epoch's time).
    pub fn unix_nanos(self, at: Instant) -> u64 {
        if at == self.base {
            return self.unix_nanos;
        }
        self.unix_nanos
            .saturating_add(nanos(at.saturating_duration_since(self.base)))
    }
}

/// `d` in nanoseconds (saturating: u64 nanoseconds last 584 years), without `as_nanos`'s
/// 128-bit arithmetic.
fn nanos(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wall_now() -> u64 {
        nanos(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }

    /// Converted instants are the wall clock's time within a millisecond, and one epoch
    /// keeps later instants exactly their monotonic distance apart.
    #[test]
    fn converts_instants_to_unix_time() {
        let clock = UnixClock::new();
        let before = wall_now();
        let now = Instant::now();
        let converted = clock.unix_nanos(now);
        let after = wall_now();
        assert!(
            converted + 1_000_000 >= before && converted <= after + 1_000_000,
            "{before} <= {converted} <= {after}"
        );
        let (epoch, start) = clock.start(now);
        assert_eq!(start, epoch.unix_nanos(now));
        assert_eq!(start, clock.epoch(now).unix_nanos(now));
        // Before the request's start: its start, not an underflow.
        if let Some(before) = now.checked_sub(Duration::from_millis(5)) {
            assert_eq!(epoch.unix_nanos(before), start);
        }
        assert_eq!(
            clock.system_time(now),
            UNIX_EPOCH + Duration::from_nanos(start)
        );
        let later = now + Duration::from_micros(1_234_567);
        assert_eq!(
            epoch.unix_nanos(later) - epoch.unix_nanos(now),
            1_234_567_000
        );
        // Before the base: the epoch itself, not an underflow.
        let early = clock.base.checked_sub(Duration::from_secs(1));
        if let Some(early) = early {
            assert_eq!(epoch.unix_nanos(early), epoch.unix_nanos(clock.base));
        }
    }

    /// The wall clock is read again once [`REFRESH`] has passed: a wall-clock step is
    /// followed (simulated by an epoch that is off by an hour), and not before then.
    #[test]
    fn follows_the_wall_clock_after_refresh() {
        let clock = UnixClock::new();
        let hour = 3_600_000_000_000;
        let right = clock.epoch.load(Ordering::Relaxed);
        clock.epoch.store(right - hour, Ordering::Relaxed);
        // At the base: less than REFRESH after the last read, whatever the machine's speed.
        assert_eq!(
            clock.epoch(clock.base).unix_nanos,
            right - hour,
            "no read before REFRESH"
        );
        // Past REFRESH after the last read: read again, the step is gone.
        let late = Instant::now() + REFRESH;
        let epoch = clock.epoch(late);
        assert!(epoch.unix_nanos.abs_diff(right) < 100_000_000);
        let expected = wall_now() + nanos(REFRESH);
        assert!(epoch.unix_nanos(late).abs_diff(expected) < 100_000_000);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
    }
}
