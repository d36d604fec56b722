//! Snapshot files of the in-memory indexes behind lists (the execution
//! history, the trigger-instance and rule-enforcement indexes), so a
//! restart replays only what changed since: the framing every such file
//! shares (a magic naming its kind, the identity of the stream it was
//! built from and the sequence it reflects, a body, a SHA-256 over all of
//! it), little-endian writers and bounds-checked readers of the body, and
//! the file written to a temporary name and renamed, so a crash leaves the
//! previous one.

use std::path::{Path, PathBuf};

use roaring::RoaringBitmap;
use sha2::{Digest, Sha256};
use squall_domain::time::Timestamp;

use crate::error::{bus_err, EngineError};

/// Why a snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is corrupt: {0}")]
    Corrupt(String),
    #[error("snapshot is of another stream (created {found}, the stream {expected})")]
    OtherStream { found: String, expected: String },
    #[error("snapshot is ahead of the stream (sequence {found}, the stream ends at {last})")]
    Ahead { found: u64, last: u64 },
    #[error("snapshot: {0}")]
    Io(#[from] std::io::Error),
}

/// Where a snapshot was taken: the stream's identity (its name and
/// creation time: one deleted and made again differs) and the last
/// sequence (a bucket's revision) folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub stream: String,
    pub seq: u64,
}

impl Origin {
    /// Whether a snapshot taken at `self` can start an index of `stream`,
    /// which ends at sequence `last` now.
    pub fn check(&self, stream: &str, last: u64) -> Result<(), SnapshotError> {
        if self.stream != stream {
            return Err(SnapshotError::OtherStream {
                found: self.stream.clone(),
                expected: stream.into(),
            });
        }
        if self.seq > last {
            return Err(SnapshotError::Ahead {
                found: self.seq,
                last,
            });
        }
        Ok(())
    }
}

/// Little-endian writer of a snapshot.
pub struct Out(Vec<u8>);

impl Out {
    /// A snapshot of kind `magic` taken at `origin`, `capacity` bytes
    /// expected.
    pub fn new(magic: &[u8; 8], origin: &Origin, capacity: usize) -> Out {
        let mut out = Out(Vec::with_capacity(capacity + 64));
        out.0.extend_from_slice(magic);
        out.u64(origin.seq);
        out.str(&origin.stream);
        out
    }
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }
    pub fn time(&mut self, t: &Timestamp) {
        self.i64(t.timestamp_micros());
    }
    pub fn opt_time(&mut self, t: Option<&Timestamp>) {
        self.i64(t.map_or(i64::MIN, Timestamp::timestamp_micros));
    }
    /// The file's bytes: what was written and its checksum.
    pub fn finish(mut self) -> Vec<u8> {
        let digest = Sha256::digest(&self.0);
        self.0.extend_from_slice(&digest);
        self.0
    }
}

/// Reader of a snapshot, every read bounds-checked.
pub struct In<'a>(&'a [u8]);

impl<'a> In<'a> {
    /// The body of `bytes`, a snapshot of kind `magic`, and where it was
    /// taken, once its checksum holds.
    pub fn open(bytes: &'a [u8], magic: &[u8; 8]) -> Result<(In<'a>, Origin), SnapshotError> {
        if bytes.len() < magic.len() + 32 {
            return Err(SnapshotError::Corrupt("too short".into()));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != sum {
            return Err(SnapshotError::Corrupt("checksum mismatch".into()));
        }
        let mut r = In(body);
        if r.take(magic.len())? != magic {
            return Err(SnapshotError::Corrupt(format!(
                "not a {} snapshot",
                String::from_utf8_lossy(magic)
            )));
        }
        let seq = r.u64()?;
        let stream = r.str()?.to_string();
        Ok((r, Origin { stream, seq }))
    }
    /// Bytes left unread.
    pub fn remaining(&self) -> usize {
        self.0.len()
    }
    /// Refuses bytes left after the last field.
    pub fn end(&self) -> Result<(), SnapshotError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(SnapshotError::Corrupt("trailing bytes".into()))
        }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.0.len() < n {
            return Err(SnapshotError::Corrupt("truncated".into()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    pub fn str(&mut self) -> Result<&'a str, SnapshotError> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|e| SnapshotError::Corrupt(e.to_string()))
    }
    pub fn opt_str(&mut self) -> Result<Option<&'a str>, SnapshotError> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.str().map(Some),
        }
    }
    pub fn time(&mut self) -> Result<Timestamp, SnapshotError> {
        from_micros(self.i64()?)
    }
    pub fn opt_time(&mut self) -> Result<Option<Timestamp>, SnapshotError> {
        match self.i64()? {
            i64::MIN => Ok(None),
            m => from_micros(m).map(Some),
        }
    }
    /// A symbol of a table of `count`, or none ([`u32::MAX`]).
    pub fn sym(&mut self, count: usize) -> Result<u32, SnapshotError> {
        let s = self.u32()?;
        if s != u32::MAX && s as usize >= count {
            return Err(SnapshotError::Corrupt(format!("symbol {s} out of range")));
        }
        Ok(s)
    }
}

fn from_micros(m: i64) -> Result<Timestamp, SnapshotError> {
    chrono::DateTime::from_timestamp_micros(m)
        .ok_or_else(|| SnapshotError::Corrupt(format!("time {m} out of range")))
}

/// A bitmap of the ordinals in `ords` (mostly ascending already), built
/// in bulk rather than one insertion at a time.
pub fn bitmap_of(mut ords: Vec<u32>) -> RoaringBitmap {
    ords.sort_unstable();
    ords.dedup();
    // Sorted and without repeats, so never refused.
    RoaringBitmap::from_sorted_iter(ords).unwrap_or_default()
}

/// Writes `bytes` to `path` (its directory made if need be) through a
/// temporary file renamed over it. Blocking.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The bytes of the snapshot at `path`, when there is one (an unreadable
/// file is logged and treated as none). Blocking.
pub fn read_file(path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read a snapshot");
            None
        }
    }
}

/// Where `stream` is now: its identity (name and creation time) and its
/// last sequence; a snapshot taken at an [`Origin`] must match the one
/// and not pass the other.
pub async fn origin_of(
    stream: &async_nats::jetstream::stream::Stream,
) -> Result<Origin, EngineError> {
    let info = stream
        .clone()
        .info()
        .await
        .map_err(|e| bus_err("stream status", e))?
        .clone();
    Ok(Origin {
        stream: format!("{}:{}", info.config.name, info.created),
        seq: info.state.last_sequence,
    })
}

/// Writes `bytes` to `path` ([`write_file`]) on a blocking thread.
pub async fn save(path: &Path, bytes: Vec<u8>) -> Result<(), EngineError> {
    let path: PathBuf = path.to_path_buf();
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || write_file(&path, &bytes))
        .await
        .map_err(|e| EngineError::Config(format!("snapshot writer: {e}")))?
        .map_err(|e| EngineError::Config(format!("writing the snapshot {shown}: {e}")))
}

/// Runs `save` every `period` and once more at `stop`: each call gives
/// the sequence the last saved snapshot reflected (`None` before the
/// first) and answers the one it saved, or `None` when nothing changed
/// since. A failure is logged as `what` and tried next period.
pub async fn keep<F, Fut>(
    period: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
    what: &'static str,
    mut save: F,
) where
    F: FnMut(Option<u64>) -> Fut,
    Fut: std::future::Future<Output = Result<Option<u64>, EngineError>>,
{
    let mut saved = None;
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            _ = every.tick() => false,
        };
        match save(saved).await {
            Ok(Some(seq)) => saved = Some(seq),
            Ok(None) => {}
            Err(e) => tracing::warn!(snapshot = what, error = %e, "saving a snapshot failed"),
        }
        if stopping {
            return;
        }
    }
}
