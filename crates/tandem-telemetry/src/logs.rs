//! Log shipping metrics: what sources read, what sinks shipped and retried, what was dropped and
//! why, how far each file's shipped offset lags behind its end, and the memory budget in use.
//!
//! Labels are source and sink names from the config and, for the lag gauge, the paths of files
//! being tailed (bounded by the files the globs match; a file's series goes when it is
//! released). Handles are resolved once per source or sink, so recording is an atomic add.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

/// The handle types, for crates that record into them.
pub use prometheus_client::metrics::{counter::Counter, gauge::Gauge};

use crate::{latency_histogram, IntHistogram, Metrics};

/// Why a sink delivery is tried again, in [`LogSinkMetrics::retries`] order.
pub const LOG_RETRY_REASONS: [&str; 6] = [
    "connect",
    "timeout",
    "status_429",
    "status_5xx",
    "status_other",
    "io",
];

/// Why lines were lost, in [`LogSourceMetrics::dropped_bytes`] order.
/// `truncated`: a file was truncated (copytruncate) with bytes not yet read, and no copy of it
/// appeared where the source looks.
pub const LOG_DROP_REASONS: [&str; 1] = ["truncated"];

/// Why a sink dropped lines the receiver refused for good, in [`LogSinkMetrics::dropped_lines`]
/// order. `item_rejected`: an Elasticsearch bulk item failed with a status that retrying cannot
/// fix (a 4xx other than 429, e.g. `mapper_parsing_exception`); `partial_success`: an OTLP
/// receiver answered with `rejected_log_records`; `rejected`: the receiver refused a whole
/// request with a status retrying cannot fix (400, 413 for a single record, 422).
pub const LOG_SINK_DROP_REASONS: [&str; 3] = ["item_rejected", "partial_success", "rejected"];

/// Why records were not shipped on purpose, in [`LogSourceMetrics::dropped_records`] order.
/// `level`: the level is in the source's `drop.levels`; `sample`: sampled out by `sample`.
pub const LOG_FILTER_REASONS: [&str; 2] = ["level", "sample"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceReasonLabels {
    source: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabels {
    source: String,
    file: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkReasonLabels {
    sink: String,
    reason: &'static str,
}

/// Why lines of a stdio or access_log source were lost, in [`StreamSourceMetrics::dropped_lines`]
/// order. `disk_buffer_full`: the disk buffer held its `disk_buffer` bytes; `disk_buffer_error`:
/// writing the disk buffer failed (a full file system).
pub const LOG_STREAM_DROP_REASONS: [&str; 2] = ["disk_buffer_full", "disk_buffer_error"];

type SinkHistogramFamily = Family<SinkLabels, IntHistogram, fn() -> IntHistogram>;

/// The log shipping metric families (part of [`Metrics`]).
pub(crate) struct LogFamilies {
    read_lines: Family<SourceLabels, Counter>,
    read_bytes: Family<SourceLabels, Counter>,
    split_lines: Family<SourceLabels, Counter>,
    parse_errors: Family<SourceLabels, Counter>,
    dropped_bytes: Family<SourceReasonLabels, Counter>,
    dropped_records: Family<SourceReasonLabels, Counter>,
    redactions: Family<SourceLabels, Counter>,
    paused: Family<SourceLabels, Gauge>,
    files: Family<SourceLabels, Gauge>,
    lag: Family<FileLabels, Gauge>,
    shipped_lines: Family<SinkLabels, Counter>,
    shipped_bytes: Family<SinkLabels, Counter>,
    retries: Family<SinkReasonLabels, Counter>,
    sink_dropped: Family<SinkReasonLabels, Counter>,
    latency: SinkHistogramFamily,
    budget_used: Gauge,
    checkpoint_errors: Counter,
    checkpoint_age: Gauge,
    dropped_lines: Family<SourceReasonLabels, Counter>,
    passthrough_dropped: Family<SourceLabels, Counter>,
    disk_buffer_used: Family<SourceLabels, Gauge>,
    spilled_lines: Family<SourceLabels, Counter>,
}

/// Handles for one stdio or access_log source, on top of [`LogSourceMetrics`].
#[derive(Clone, Debug)]
pub struct StreamSourceMetrics {
    /// Lines lost, by reason ([`LOG_STREAM_DROP_REASONS`] order).
    pub dropped_lines: [Counter; 2],
    /// Bytes of the app's output not passed through to Tandem's own stdout/stderr because it
    /// was slower than the app.
    pub passthrough_dropped: Counter,
    /// Bytes in the disk buffer.
    pub disk_buffer_used: Gauge,
    /// Lines written to the disk buffer.
    pub spilled_lines: Counter,
}

/// Handles for one log source.
#[derive(Clone, Debug)]
pub struct LogSourceMetrics {
    /// Lines read (a split piece of a long line counts as a line).
    pub read_lines: Counter,
    /// Bytes read.
    pub read_bytes: Counter,
    /// Lines longer than the source's `max_line_bytes`, split into pieces.
    pub split_lines: Counter,
    /// Lines the parser could not parse (shipped as plain text).
    pub parse_errors: Counter,
    /// Bytes lost, by reason ([`LOG_DROP_REASONS`] order).
    pub dropped_bytes: [Counter; 1],
    /// Records not shipped by the source's rules, by reason ([`LOG_FILTER_REASONS`] order).
    pub dropped_records: [Counter; 2],
    /// Secrets replaced by the redaction marker (field values and pattern matches).
    pub redactions: Counter,
    /// 1 while the source waits for the memory budget (a sink is slower than the files grow).
    pub paused: Gauge,
    /// Files tailed now.
    pub files: Gauge,
}

/// Handles for one log sink.
#[derive(Clone, Debug)]
pub struct LogSinkMetrics {
    /// Lines delivered and confirmed.
    pub shipped_lines: Counter,
    /// Bytes of request bodies (or file writes) delivered and confirmed, after compression.
    pub shipped_bytes: Counter,
    /// Deliveries tried again, by reason ([`LOG_RETRY_REASONS`] order).
    pub retries: [Counter; 6],
    /// Time of one delivery attempt, in nanoseconds.
    pub latency: IntHistogram,
    /// Lines the receiver refused for good, by reason ([`LOG_SINK_DROP_REASONS`] order).
    pub dropped_lines: [Counter; 3],
}

// === impl LogFamilies ===

impl LogFamilies {
    pub(crate) fn register(registry: &mut Registry) -> LogFamilies {
        let f = LogFamilies {
            read_lines: Family::default(),
            read_bytes: Family::default(),
            split_lines: Family::default(),
            parse_errors: Family::default(),
            dropped_bytes: Family::default(),
            dropped_records: Family::default(),
            redactions: Family::default(),
            paused: Family::default(),
            files: Family::default(),
            lag: Family::default(),
            shipped_lines: Family::default(),
            shipped_bytes: Family::default(),
            retries: Family::default(),
            sink_dropped: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            budget_used: Gauge::default(),
            checkpoint_errors: Counter::default(),
            checkpoint_age: Gauge::default(),
            dropped_lines: Family::default(),
            passthrough_dropped: Family::default(),
            disk_buffer_used: Family::default(),
            spilled_lines: Family::default(),
        };
        registry.register(
            "logs_read_lines",
            "Log lines read, by source",
            f.read_lines.clone(),
        );
        registry.register_with_unit(
            "logs_read",
            "Log bytes read, by source",
            Unit::Bytes,
            f.read_bytes.clone(),
        );
        registry.register(
            "logs_split_lines",
            "Log lines longer than max_line_bytes, split into pieces, by source",
            f.split_lines.clone(),
        );
        registry.register(
            "logs_parse_errors",
            "Log lines the source's parser could not parse (shipped as plain text)",
            f.parse_errors.clone(),
        );
        registry.register_with_unit(
            "logs_dropped",
            "Log bytes lost, by source and reason (truncated: copytruncate with unread bytes and no copy found)",
            Unit::Bytes,
            f.dropped_bytes.clone(),
        );
        registry.register(
            "logs_dropped_records",
            "Log records not shipped by the source's rules, by source and reason (level: drop.levels; sample: sampled out)",
            f.dropped_records.clone(),
        );
        registry.register(
            "logs_redactions",
            "Secrets replaced by the redaction marker before shipping, by source",
            f.redactions.clone(),
        );
        registry.register(
            "logs_source_paused",
            "1 while a log source waits for the memory budget because sinks are slower than the files grow",
            f.paused.clone(),
        );
        registry.register(
            "logs_files",
            "Files a log source tails now",
            f.files.clone(),
        );
        registry.register_with_unit(
            "logs_file_lag",
            "Bytes of a tailed file not yet confirmed by every sink (file size minus checkpointed offset)",
            Unit::Bytes,
            f.lag.clone(),
        );
        registry.register(
            "logs_shipped_lines",
            "Log lines delivered and confirmed, by sink",
            f.shipped_lines.clone(),
        );
        registry.register_with_unit(
            "logs_shipped",
            "Bytes delivered and confirmed (request bodies after compression, or file writes), by sink",
            Unit::Bytes,
            f.shipped_bytes.clone(),
        );
        registry.register(
            "logs_retries",
            "Log deliveries tried again, by sink and reason",
            f.retries.clone(),
        );
        registry.register(
            "logs_sink_dropped_lines",
            "Log lines a sink's receiver refused for good (not retried), by sink and reason",
            f.sink_dropped.clone(),
        );
        registry.register_with_unit(
            "logs_sink_duration",
            "Time of one log delivery attempt, by sink",
            Unit::Seconds,
            f.latency.clone(),
        );
        registry.register_with_unit(
            "logs_budget_used",
            "Bytes of log lines in flight, out of logs.memory_budget",
            Unit::Bytes,
            f.budget_used.clone(),
        );
        registry.register(
            "logs_checkpoint_errors",
            "Failed writes of the log checkpoint file (offsets stay where they were on disk)",
            f.checkpoint_errors.clone(),
        );
        registry.register_with_unit(
            "logs_checkpoint_age",
            "How far the log checkpoint on disk is behind the confirmations: 0 when it holds every one, else seconds since the oldest it lacks (grows while checkpoint writes fail)",
            Unit::Seconds,
            f.checkpoint_age.clone(),
        );
        registry.register(
            "logs_dropped_lines",
            "Lines of a stdio or access_log source lost, by source and reason (disk_buffer_full, disk_buffer_error)",
            f.dropped_lines.clone(),
        );
        registry.register_with_unit(
            "logs_passthrough_dropped",
            "Bytes of the app's output not passed through to Tandem's stdout/stderr because that output was slower than the app (shipping is not affected)",
            Unit::Bytes,
            f.passthrough_dropped.clone(),
        );
        registry.register_with_unit(
            "logs_disk_buffer_used",
            "Bytes in a stdio or access_log source's disk buffer, out of its disk_buffer",
            Unit::Bytes,
            f.disk_buffer_used.clone(),
        );
        registry.register(
            "logs_spilled_lines",
            "Lines of a stdio or access_log source written to its disk buffer because the memory budget was full",
            f.spilled_lines.clone(),
        );
        f
    }
}

// === impl Metrics (logs) ===

impl Metrics {
    /// Resolves the handles of one log source.
    pub fn log_source(&self, source: &str) -> LogSourceMetrics {
        let f = &self.logs;
        let l = SourceLabels {
            source: source.to_owned(),
        };
        LogSourceMetrics {
            read_lines: f.read_lines.get_or_create(&l).clone(),
            read_bytes: f.read_bytes.get_or_create(&l).clone(),
            split_lines: f.split_lines.get_or_create(&l).clone(),
            parse_errors: f.parse_errors.get_or_create(&l).clone(),
            dropped_bytes: LOG_DROP_REASONS.map(|reason| {
                f.dropped_bytes
                    .get_or_create(&SourceReasonLabels {
                        source: source.to_owned(),
                        reason,
                    })
                    .clone()
            }),
            dropped_records: LOG_FILTER_REASONS.map(|reason| {
                f.dropped_records
                    .get_or_create(&SourceReasonLabels {
                        source: source.to_owned(),
                        reason,
                    })
                    .clone()
            }),
            redactions: f.redactions.get_or_create(&l).clone(),
            paused: f.paused.get_or_create(&l).clone(),
            files: f.files.get_or_create(&l).clone(),
        }
    }

    /// Resolves the handles of one log sink.
    pub fn log_sink(&self, sink: &str) -> LogSinkMetrics {
        let f = &self.logs;
        let l = SinkLabels {
            sink: sink.to_owned(),
        };
        LogSinkMetrics {
            shipped_lines: f.shipped_lines.get_or_create(&l).clone(),
            shipped_bytes: f.shipped_bytes.get_or_create(&l).clone(),
            retries: LOG_RETRY_REASONS.map(|reason| {
                f.retries
                    .get_or_create(&SinkReasonLabels {
                        sink: sink.to_owned(),
                        reason,
                    })
                    .clone()
            }),
            latency: f.latency.get_or_create(&l).clone(),
            dropped_lines: LOG_SINK_DROP_REASONS.map(|reason| {
                f.sink_dropped
                    .get_or_create(&SinkReasonLabels {
                        sink: sink.to_owned(),
                        reason,
                    })
                    .clone()
            }),
        }
    }

    /// The lag gauge of one tailed file; call [`Metrics::forget_log_file`] when it is released.
    pub fn log_file_lag(&self, source: &str, file: &str) -> Gauge {
        self.logs
            .lag
            .get_or_create(&FileLabels {
                source: source.to_owned(),
                file: file.to_owned(),
            })
            .clone()
    }

    /// Removes the lag series of a file no longer tailed.
    pub fn forget_log_file(&self, source: &str, file: &str) {
        self.logs.lag.remove(&FileLabels {
            source: source.to_owned(),
            file: file.to_owned(),
        });
    }

    /// The gauge of log bytes in flight.
    pub fn log_budget_used(&self) -> Gauge {
        self.logs.budget_used.clone()
    }

    /// Resolves the handles of one stdio or access_log source.
    pub fn log_stream_source(&self, source: &str) -> StreamSourceMetrics {
        let f = &self.logs;
        let l = SourceLabels {
            source: source.to_owned(),
        };
        StreamSourceMetrics {
            dropped_lines: LOG_STREAM_DROP_REASONS.map(|reason| {
                f.dropped_lines
                    .get_or_create(&SourceReasonLabels {
                        source: source.to_owned(),
                        reason,
                    })
                    .clone()
            }),
            passthrough_dropped: f.passthrough_dropped.get_or_create(&l).clone(),
            disk_buffer_used: f.disk_buffer_used.get_or_create(&l).clone(),
            spilled_lines: f.spilled_lines.get_or_create(&l).clone(),
        }
    }

    /// The gauge of the checkpoint's age behind the confirmations, in seconds.
    pub fn log_checkpoint_age(&self) -> Gauge {
        self.logs.checkpoint_age.clone()
    }

    /// The counter of failed checkpoint writes.
    pub fn log_checkpoint_errors(&self) -> Counter {
        self.logs.checkpoint_errors.clone()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Log handles record into the registry under their documented names; a forgotten file's
    /// lag series disappears.
    #[test]
    fn log_handles_record() {
        let m = Metrics::new();
        let s = m.log_source("app");
        s.read_lines.inc_by(3);
        s.dropped_bytes[0].inc_by(7);
        s.dropped_records[1].inc_by(9);
        s.redactions.inc();
        let k = m.log_sink("central");
        k.retries[2].inc();
        k.dropped_lines[0].inc_by(2);
        k.latency.observe(2_000_000);
        m.log_file_lag("app", "/var/log/app.log").set(42);
        let text = m.encode_prometheus();
        for want in [
            r#"tandem_logs_read_lines_total{source="app"} 3"#,
            r#"tandem_logs_dropped_bytes_total{source="app",reason="truncated"} 7"#,
            r#"tandem_logs_dropped_records_total{source="app",reason="sample"} 9"#,
            r#"tandem_logs_redactions_total{source="app"} 1"#,
            r#"tandem_logs_retries_total{sink="central",reason="status_429"} 1"#,
            r#"tandem_logs_sink_duration_seconds_count{sink="central"} 1"#,
            r#"tandem_logs_sink_dropped_lines_total{sink="central",reason="item_rejected"} 2"#,
            r#"tandem_logs_file_lag_bytes{source="app",file="/var/log/app.log"} 42"#,
            "tandem_logs_budget_used_bytes 0",
            "tandem_logs_checkpoint_errors_total 0",
            "tandem_logs_checkpoint_age_seconds 0",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        let st = m.log_stream_source("out");
        st.dropped_lines[0].inc_by(5);
        st.disk_buffer_used.set(4096);
        let text = m.encode_prometheus();
        for want in [
            r#"tandem_logs_dropped_lines_total{source="out",reason="disk_buffer_full"} 5"#,
            r#"tandem_logs_dropped_lines_total{source="out",reason="disk_buffer_error"} 0"#,
            r#"tandem_logs_disk_buffer_used_bytes{source="out"} 4096"#,
            r#"tandem_logs_passthrough_dropped_bytes_total{source="out"} 0"#,
            r#"tandem_logs_spilled_lines_total{source="out"} 0"#,
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        m.forget_log_file("app", "/var/log/app.log");
        assert!(!m.encode().contains("/var/log/app.log"));
    }
}
