//! The `file` connector: Debezium JSON lines from one file or a directory of them, followed
//! as they grow. For embedded use and tests.
//!
//! Each file is a stream; a record's offset is its line number. A line is read once it ends
//! with a newline, so a writer appending a line is never seen half-way.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::connector::{Connector, Health, Lag, SourceRecord};
use super::txn::{Position, Stream};
use super::{Result, SourceError};
use crate::sql::{OptionError, WithOptions};

/// Bytes read from one file per poll, at most: bounds memory on a large backlog.
const READ_CHUNK: u64 = 8 << 20;

/// How often an idle poll looks at the files again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// `WITH (connector = 'file', path = '...')`.
#[derive(Debug, Clone, PartialEq)]
pub struct FileConfig {
    /// One file, or a directory whose `*.jsonl`/`*.json` files are read in name order.
    pub path: PathBuf,
}

impl FileConfig {
    /// The connector's own `WITH (...)` options.
    pub const OPTIONS: &'static [&'static str] = &["path"];

    /// Read the connector's options; unknown ones are left to the caller to reject.
    pub fn from_options(options: impl Into<WithOptions>) -> Result<FileConfig, OptionError> {
        Ok(FileConfig { path: options.into().require("path", "the file connector needs path = '...'")?.into() })
    }
}

/// How far one file has been read.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    /// First line to hand out: lines before it were applied already (resuming).
    skip_to: u64,
    /// Line and byte offset reading continues at.
    line: u64,
    byte: u64,
}

pub struct FileConnector {
    config: FileConfig,
    cursors: HashMap<Stream, Cursor>,
    lag: u64,
    health: Option<Health>,
}

impl FileConnector {
    pub fn new(config: FileConfig) -> FileConnector {
        FileConnector { config, cursors: HashMap::new(), lag: 0, health: None }
    }

    /// The files to read, in name order; says in `health` why there are none.
    fn files(&mut self) -> Vec<PathBuf> {
        let path = &self.config.path;
        let (files, health) = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                let mut files: Vec<PathBuf> =
                    std::fs::read_dir(path).map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect()).unwrap_or_default();
                files.retain(|p| p.extension().is_some_and(|e| e == "jsonl" || e == "json"));
                files.sort();
                let health = files.is_empty().then(|| Health::Waiting(format!("no .jsonl or .json files in {}", path.display())));
                (files, health)
            }
            Ok(_) => (vec![path.clone()], None),
            Err(e) => (Vec::new(), Some(Health::Error(format!("cannot read {}: {e}", path.display())))),
        };
        self.health = health;
        files
    }

    /// Complete lines of `file` after its cursor, advancing the cursor. Returns whether the
    /// cursor moved.
    async fn read_new(&mut self, file: &PathBuf, out: &mut Vec<SourceRecord>) -> std::io::Result<bool> {
        let stream = file.display().to_string();
        let mut f = match tokio::fs::File::open(file).await {
            Ok(f) => f,
            Err(e) => {
                self.health = Some(Health::Error(format!("cannot read {stream}: {e}")));
                return Ok(false);
            }
        };
        let cursor = self.cursors.entry(stream.clone()).or_default();
        let len = f.metadata().await?.len();
        let start = cursor.byte;
        if start >= len {
            return Ok(false);
        }
        f.seek(SeekFrom::Start(start)).await?;
        let mut buf = Vec::new();
        (&mut f).take(READ_CHUNK).read_to_end(&mut buf).await?;
        let mut consumed = 0usize;
        for chunk in buf.split_inclusive(|b| *b == b'\n') {
            if !chunk.ends_with(b"\n") {
                // A line still being written (or cut by READ_CHUNK): read it next time.
                break;
            }
            consumed += chunk.len();
            if cursor.line >= cursor.skip_to {
                let raw = chunk.strip_suffix(b"\n").unwrap_or(chunk);
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                if !raw.iter().all(u8::is_ascii_whitespace) {
                    out.push(SourceRecord {
                        position: Position::File { path: stream.clone(), line: cursor.line },
                        payload: Some(raw.to_vec()),
                    });
                }
            }
            cursor.line += 1;
        }
        cursor.byte = start + consumed as u64;
        // The file may have grown while it was read.
        self.lag += len.saturating_sub(cursor.byte);
        Ok(consumed > 0)
    }
}

#[async_trait::async_trait]
impl Connector for FileConnector {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn open(&mut self, _upstreams: &[String], resume: &HashMap<Stream, u64>) -> Result<()> {
        self.cursors = resume.iter().map(|(s, line)| (s.clone(), Cursor { skip_to: *line, ..Cursor::default() })).collect();
        Ok(())
    }

    async fn poll(&mut self, max_wait: Duration) -> Result<Vec<SourceRecord>> {
        let deadline = Instant::now() + max_wait;
        loop {
            let mut out = Vec::new();
            let mut moved = false;
            self.lag = 0;
            for file in self.files() {
                moved |= self.read_new(&file, &mut out).await.map_err(|e| SourceError::io(format!("reading {}", file.display()), e))?;
            }
            if !out.is_empty() {
                return Ok(out);
            }
            // Lines skipped on the way to the resume point are not the end of the input.
            if moved {
                continue;
            }
            if Instant::now() >= deadline {
                return Ok(out);
            }
            tokio::time::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    fn lag(&self) -> Lag {
        Lag { amount: self.lag, ..Lag::default() }
    }

    fn health(&self) -> Option<Health> {
        self.health.clone()
    }
}
