//! The standard Prometheus process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, ...), read from `/proc/self` at each
//! scrape, so a sidecar's own footprint is on the same dashboard as what it proxies.
//!
//! Names follow the Prometheus client guidelines (no `tandem_` prefix) so existing process
//! dashboards and alerts work unchanged. On other systems the collector exports nothing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Reads the process's own resource usage on every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One scrape's readings; `None` where `/proc` could not be read.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, bytes.
    pub resident_bytes: Option<u64>,
    /// Virtual memory size, bytes.
    pub virtual_bytes: Option<u64>,
    /// Open file descriptors.
    pub open_fds: Option<u64>,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// OS threads.
    pub threads: Option<u64>,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads the current process's figures.
    #[cfg(target_os = "linux")]
    pub fn read() -> Self {
        use procfs::process::{LimitValue, Process};
        use procfs::WithCurrentSystemInfo as _;

        let mut stats = ProcessStats::default();
        let Ok(me) = Process::myself() else {
            return stats;
        };
        let ticks = procfs::ticks_per_second() as f64;
        if let Ok(stat) = me.stat() {
            stats.cpu_seconds = Some((stat.utime + stat.stime) as f64 / ticks);
            stats.resident_bytes = Some(stat.rss_bytes().get());
            stats.virtual_bytes = Some(stat.vsize);
            stats.threads = u64::try_from(stat.num_threads).ok();
            if let Ok(boot) = procfs::boot_time_secs() {
                stats.start_time_seconds = Some(boot as f64 + stat.starttime as f64 / ticks);
            }
        }
        stats.open_fds = me.fd_count().ok().and_then(|n| u64::try_from(n).ok());
        if let Ok(limits) = me.limits() {
            stats.max_fds = match limits.max_open_files.soft_limit {
                LimitValue::Value(v) => Some(v),
                LimitValue::Unlimited => None,
            };
        }
        stats
    }

    /// Reads nothing: process metrics are Linux-only.
    #[cfg(not(target_os = "linux"))]
    pub fn read() -> Self {
        ProcessStats::default()
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = ProcessStats::read();
        if let Some(v) = s.cpu_seconds {
            let m = ConstCounter::new(v);
            m.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent",
                Some(&Unit::Seconds),
                m.metric_type(),
            )?)?;
        }
        let gauges: [(&str, &str, Option<Unit>, Option<f64>); 6] = [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                s.resident_bytes.map(|v| v as f64),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                s.virtual_bytes.map(|v| v as f64),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                None,
                s.open_fds.map(|v| v as f64),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (soft limit)",
                None,
                s.max_fds.map(|v| v as f64),
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                None,
                s.threads.map(|v| v as f64),
            ),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(Unit::Seconds),
                s.start_time_seconds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(v) = value {
                let m = ConstGauge::new(v);
                m.encode(encoder.encode_descriptor(name, help, unit.as_ref(), m.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The readings are this test process's own: plausible, and growing with what it does.
    #[test]
    fn reads_own_process() {
        let before = ProcessStats::read();
        let files: Vec<std::fs::File> = (0..8)
            .filter_map(|_| std::fs::File::open("/proc/self/stat").ok())
            .collect();
        let after = ProcessStats::read();
        assert_eq!(files.len(), 8);
        let (Some(b), Some(a)) = (before.open_fds, after.open_fds) else {
            panic!("open fds unreadable: {before:?} {after:?}");
        };
        assert!(a >= b + 8, "8 more files open: {b} -> {a}");
        assert!(
            after.resident_bytes.is_some_and(|r| r > 1 << 20),
            "{after:?}"
        );
        assert!(after.threads.is_some_and(|t| t >= 1), "{after:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let started = after.start_time_seconds.unwrap_or_default();
        assert!(
            started > now - 3600.0 && started <= now + 1.0,
            "started {started}, now {now}"
        );
        assert!(after.cpu_seconds.is_some());
        assert!(after.max_fds.is_some_and(|m| m >= a), "{after:?}");
    }
}
