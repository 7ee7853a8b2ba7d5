//! What `tandem logs status` and `GET /logs` show: every source (files with their offsets and
//! lag; stream sources with their disk buffer), every sink (state, queue, last error,
//! deliveries), the checkpoint (age, last error) and the memory budget.
//!
//! Each part is kept by whoever owns it (tailer, stream source, sink driver, committer) in a
//! shared cell that only they write; [`StatusBoard::snapshot`] reads them all, so asking for
//! the status never takes a lock the pipeline holds for long.

use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

use crate::budget::Budget;
use crate::committer::{CheckpointState, CheckpointView};
use crate::sink::{SinkState, SinkView};
use crate::source::file::FileRow;
use crate::source::stream::{StreamInput, StreamStatus};

/// Where the status comes from. Cheap to clone.
#[derive(Clone)]
pub struct StatusBoard {
    inner: Arc<Inner>,
}

struct Inner {
    budget: Budget,
    budget_limit: usize,
    files: Vec<(String, Arc<Mutex<Vec<FileRow>>>)>,
    streams: Vec<(String, &'static str, StreamInput)>,
    sinks: Vec<(String, Arc<SinkState>)>,
    checkpoint: Arc<CheckpointState>,
}

/// The whole status, as `GET /logs` serves it.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// File sources, then stdio and access_log sources, each in config order.
    pub sources: Vec<SourceView>,
    /// Sinks in config order.
    pub sinks: Vec<NamedSink>,
    /// The checkpoint file.
    pub checkpoint: CheckpointView,
    /// The memory budget.
    pub memory: MemoryView,
}

/// One source.
#[derive(Clone, Debug, Serialize)]
pub struct SourceView {
    /// Its name.
    pub name: String,
    /// `file`, `stdio` or `access_log`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// File sources: the files read now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<FileView>>,
    /// Stream sources: lines, drops and the disk buffer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamStatus>,
}

/// One file.
#[derive(Clone, Debug, Serialize)]
pub struct FileView {
    /// Its path.
    pub path: String,
    /// Its size at the last look.
    pub size: u64,
    /// Read up to here.
    pub read_offset: u64,
    /// Checkpointed (confirmed by every sink) up to here.
    pub checkpointed_offset: u64,
    /// `size - checkpointed_offset`.
    pub lag_bytes: u64,
    /// 0 when the checkpointed offset is the file's size, else seconds since it last moved.
    pub checkpoint_age_seconds: u64,
}

/// One sink.
#[derive(Clone, Debug, Serialize)]
pub struct NamedSink {
    /// Its name.
    pub name: String,
    /// Its state.
    #[serde(flatten)]
    pub view: SinkView,
}

/// The memory budget.
#[derive(Clone, Debug, Serialize)]
pub struct MemoryView {
    /// Bytes in flight.
    pub used_bytes: usize,
    /// `logs.memory_budget`.
    pub limit_bytes: usize,
}

impl StatusBoard {
    pub(crate) fn new(
        budget: Budget,
        budget_limit: usize,
        checkpoint: Arc<CheckpointState>,
    ) -> Self {
        StatusBoard {
            inner: Arc::new(Inner {
                budget,
                budget_limit,
                files: Vec::new(),
                streams: Vec::new(),
                sinks: Vec::new(),
                checkpoint,
            }),
        }
    }

    fn inner_mut(&mut self) -> Option<&mut Inner> {
        Arc::get_mut(&mut self.inner)
    }

    pub(crate) fn add_files(&mut self, source: &str) -> Arc<Mutex<Vec<FileRow>>> {
        let cell = Arc::new(Mutex::new(Vec::new()));
        if let Some(i) = self.inner_mut() {
            i.files.push((source.to_owned(), cell.clone()));
        }
        cell
    }

    pub(crate) fn add_stream(&mut self, kind: &'static str, input: StreamInput) {
        if let Some(i) = self.inner_mut() {
            i.streams.push((input.name().to_owned(), kind, input));
        }
    }

    pub(crate) fn add_sink(&mut self, name: &str) -> Arc<SinkState> {
        let state = Arc::new(SinkState::default());
        if let Some(i) = self.inner_mut() {
            i.sinks.push((name.to_owned(), state.clone()));
        }
        state
    }

    /// The status now.
    pub fn snapshot(&self) -> Status {
        let i = &*self.inner;
        let mut sources: Vec<SourceView> = i
            .files
            .iter()
            .map(|(name, cell)| SourceView {
                name: name.clone(),
                kind: "file",
                files: Some(
                    cell.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .iter()
                        .map(|r| FileView {
                            path: r.path.clone(),
                            size: r.size,
                            read_offset: r.read,
                            checkpointed_offset: r.committed,
                            lag_bytes: r.size.saturating_sub(r.committed),
                            checkpoint_age_seconds: r.checkpoint_age.as_secs(),
                        })
                        .collect(),
                ),
                stream: None,
            })
            .collect();
        sources.extend(i.streams.iter().map(|(name, kind, input)| SourceView {
            name: name.clone(),
            kind,
            files: None,
            stream: Some(input.status()),
        }));
        Status {
            sources,
            sinks: i
                .sinks
                .iter()
                .map(|(name, s)| NamedSink {
                    name: name.clone(),
                    view: s.view(),
                })
                .collect(),
            checkpoint: i.checkpoint.view(),
            memory: MemoryView {
                used_bytes: i.budget.used(),
                limit_bytes: i.budget_limit,
            },
        }
    }
}
