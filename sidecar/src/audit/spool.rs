//! The on-disk spool: audit events waiting for the collector, in the order they happened.
//!
//! Events are JSON lines appended to segment files `<dir>/<20-digit number>.jsonl`; a new
//! segment starts when the current one reaches its size, and at every start (so a file a crash
//! left with a torn last line is never appended to). The sender reads from the position in
//! `<dir>/acked` (segment and byte offset, rewritten after every delivered batch) and a segment
//! is removed once everything in it is delivered. So the spool is a queue on disk: append at
//! the tail, deliver from the head, and a restart carries on where the last run stopped — at
//! worst re-sending the last batch, which the collector stores once (ids are stable).
//!
//! The spool is bounded: an event that would take it past `max_bytes` is not written. What
//! could not be written is counted, and a [`DroppedEvents`] event saying how many is written
//! as soon as there is room, so the loss itself is on the record.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use streamward_api::audit::{AuditEvent, DroppedEvents, Identity};

/// Most events in one batch (the collector's contract).
pub const MAX_BATCH_EVENTS: usize = 1000;
/// Most bytes in one batch (the collector takes up to 16 MiB; 1 MiB already spreads a batch's
/// fixed costs over hundreds of events, and keeps the proxy's memory small).
pub const MAX_BATCH_BYTES: usize = 1 << 20;
/// The largest segment file (smaller when the whole spool is small).
const SEGMENT_BYTES: u64 = 4 << 20;
const SUFFIX: &str = ".jsonl";
const ACKED: &str = "acked";

/// Opening or using the spool failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed.
    #[error(
        "audit spool {path}: {action}: {source}; check that the folder exists, is writable and has space"
    )]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The error.
        source: io::Error,
    },
}

fn io_error<'p>(path: &'p Path, action: &'static str) -> impl FnOnce(io::Error) -> SpoolError + 'p {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// A place in the spool: a segment and a byte offset in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    segment: u64,
    offset: u64,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    len: u64,
}

/// Events read from the spool for one delivery, as the JSON array the collector takes.
#[derive(Debug)]
pub struct Batch {
    /// `[event,event,…]`.
    pub body: Vec<u8>,
    /// How many events.
    pub events: usize,
    /// Where the spool continues after this batch.
    pub end: Position,
}

/// The spool of one proxy (see the module docs). Not thread-safe by itself: the proxy keeps it
/// behind a mutex shared by the task that appends and the one that delivers.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; the last one is appended to (once `active` is open).
    segments: VecDeque<Segment>,
    /// The segment appended to by this run; `None` until the first append.
    active: Option<File>,
    next_id: u64,
    acked: Position,
    total_bytes: u64,
    /// Events lost since the last report, and when the first of them was lost.
    dropped: u64,
    dropped_since: Option<Timestamp>,
    /// Reports of dropped events written by this run (for their ids).
    reports: u64,
    /// Who the reports are about, and the id prefix that makes them unique to this run.
    identity: Identity,
    instance: String,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, holding at most `max_bytes`. Events a previous
    /// run left undelivered are kept, in order; a torn last line (a crash mid-write) is cut.
    /// `identity` and `instance` (unique per run) name the reports of dropped events.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        identity: Identity,
        instance: String,
    ) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io_error(dir, "creating the folder"))?;
        let mut ids = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error(dir, "listing the folder"))? {
            let entry = entry.map_err(io_error(dir, "listing the folder"))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .filter(|n| n.len() == 20)
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            ids.push(id);
        }
        ids.sort_unstable();
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes: SEGMENT_BYTES.min((max_bytes / 8).max(1)),
            segments: VecDeque::new(),
            active: None,
            next_id: ids.last().map_or(1, |last| last + 1),
            acked: Position::default(),
            total_bytes: 0,
            dropped: 0,
            dropped_since: None,
            reports: 0,
            identity,
            instance,
        };
        for (index, id) in ids.iter().enumerate() {
            let path = spool.segment_path(*id);
            let mut len = fs::metadata(&path)
                .map_err(io_error(&path, "reading the size"))?
                .len();
            if index + 1 == ids.len() {
                len = cut_torn_line(&path, len)?;
            }
            spool.total_bytes += len;
            spool.segments.push_back(Segment { id: *id, len });
        }
        spool.acked = spool.read_acked();
        if let Some(first) = spool.segments.front()
            && spool.acked.segment < first.id
        {
            spool.acked = Position {
                segment: first.id,
                offset: 0,
            };
        }
        // Segments wholly before the acked position were delivered by the last run.
        spool.remove_delivered()?;
        Ok(spool)
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}{SUFFIX}"))
    }

    fn read_acked(&self) -> Position {
        let path = self.dir.join(ACKED);
        let Ok(text) = fs::read_to_string(&path) else {
            return Position::default();
        };
        let mut parts = text.split_whitespace().map(str::parse::<u64>);
        match (parts.next(), parts.next()) {
            (Some(Ok(segment)), Some(Ok(offset))) => Position { segment, offset },
            _ => {
                // Delivering again is safe (the collector keeps each id once); skipping is not.
                tracing::warn!(path = %path.display(), "unreadable audit spool position; delivering the spool from its start");
                Position::default()
            }
        }
    }

    /// Bytes in the spool's files.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Whether an event of `len` more bytes fits under the bound.
    fn fits(&self, len: usize) -> bool {
        self.total_bytes + len as u64 <= self.max_bytes
    }

    /// Whether events were lost and the report of it is not written yet.
    pub fn has_unreported(&self) -> bool {
        self.dropped > 0
    }

    /// Counts `n` events lost (the queue overflowed, or the collector refused their batch);
    /// a report is written as soon as there is room.
    pub fn note_dropped(&mut self, n: u64, now: Timestamp) {
        if n == 0 {
            return;
        }
        self.dropped += n;
        self.dropped_since.get_or_insert(now);
    }

    /// Appends `events` in order; returns how many were dropped because the spool is full
    /// (they are counted for the next report). A pending report of earlier drops goes first.
    pub fn append<E: std::borrow::Borrow<AuditEvent>>(
        &mut self,
        events: &[E],
        now: Timestamp,
    ) -> Result<u64, SpoolError> {
        let mut chunk = Vec::with_capacity(events.len() * 512);
        let mut pending = 0u64; // bytes of `chunk` not yet counted in total_bytes
        let mut lost = 0u64;
        if self.dropped > 0 {
            self.write_report(&mut chunk, &mut pending, now);
        }
        for event in events {
            let start = chunk.len();
            if serde_json::to_writer(&mut chunk, event.borrow()).is_err() {
                // Plain data always serializes; if it ever did not, the event is lost, and says so.
                chunk.truncate(start);
                lost += 1;
                continue;
            }
            chunk.push(b'\n');
            let len = chunk.len() - start;
            if !self.fits(pending as usize + len) {
                chunk.truncate(start);
                lost += 1;
                continue;
            }
            pending += len as u64;
            // Rotate between events, so a segment holds whole lines only.
            if self.active_len() + pending > self.segment_bytes && pending > len as u64 {
                let head = chunk.len() - len;
                let tail = chunk.split_off(head);
                self.write(&chunk)?;
                chunk = tail;
                pending = len as u64;
                self.rotate()?;
            }
        }
        if lost > 0 {
            self.note_dropped(lost, now);
        }
        if !chunk.is_empty() {
            if self.active.is_none() || self.active_len() >= self.segment_bytes {
                self.rotate()?;
            }
            self.write(&chunk)?;
        }
        Ok(lost)
    }

    /// Adds the report of events dropped so far to `chunk`, if it fits.
    fn write_report(&mut self, chunk: &mut Vec<u8>, pending: &mut u64, now: Timestamp) {
        let event = AuditEvent::dropped(
            format!("{}:dropped:{}", self.instance, self.reports + 1),
            now,
            DroppedEvents {
                identity: self.identity.clone(),
                dropped: self.dropped,
                since: self.dropped_since.unwrap_or(now),
            },
        );
        let start = chunk.len();
        if serde_json::to_writer(&mut *chunk, &event).is_err() {
            chunk.truncate(start);
            return;
        }
        chunk.push(b'\n');
        let len = (chunk.len() - start) as u64;
        if !self.fits(len as usize) {
            chunk.truncate(start);
            return;
        }
        *pending += len;
        self.reports += 1;
        tracing::warn!(
            dropped = self.dropped,
            "audit events were lost; a report of the loss is spooled"
        );
        self.dropped = 0;
        self.dropped_since = None;
    }

    fn active_len(&self) -> u64 {
        match (&self.active, self.segments.back()) {
            (Some(_), Some(last)) => last.len,
            _ => 0,
        }
    }

    /// Starts a new segment.
    fn rotate(&mut self) -> Result<(), SpoolError> {
        if let Some(active) = self.active.take() {
            let path = self.segment_path(self.segments.back().map_or(0, |s| s.id));
            active
                .sync_data()
                .map_err(io_error(&path, "syncing a full segment"))?;
        }
        let id = self.next_id;
        let path = self.segment_path(id);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path, "creating a segment"))?;
        self.next_id += 1;
        self.segments.push_back(Segment { id, len: 0 });
        self.active = Some(file);
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.active.is_none() {
            self.rotate()?;
        }
        let path = self.segment_path(self.segments.back().map_or(0, |s| s.id));
        let (Some(file), Some(last)) = (self.active.as_mut(), self.segments.back_mut()) else {
            return Ok(()); // rotate always leaves an active segment
        };
        file.write_all(bytes)
            .map_err(io_error(&path, "appending events"))?;
        last.len += bytes.len() as u64;
        self.total_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Makes what was appended durable (the proxy does it periodically and on shutdown).
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if let Some(file) = &self.active {
            let path = self.segment_path(self.segments.back().map_or(0, |s| s.id));
            file.sync_data()
                .map_err(io_error(&path, "syncing the segment"))?;
        }
        Ok(())
    }

    /// Where delivery stands and what can be read from there: the segment to read, from
    /// which offset, up to which length. `None` when everything is delivered.
    pub fn next_read(&mut self) -> Result<Option<(PathBuf, Position, u64)>, SpoolError> {
        self.remove_delivered()?;
        let Some(segment) = self.segments.iter().find(|s| s.id == self.acked.segment) else {
            return Ok(None);
        };
        if self.acked.offset >= segment.len {
            return Ok(None);
        }
        Ok(Some((
            self.segment_path(segment.id),
            self.acked,
            segment.len,
        )))
    }

    /// Everything up to `end` was delivered: remember it, and remove what is wholly done.
    pub fn ack(&mut self, end: Position) -> Result<(), SpoolError> {
        if end <= self.acked {
            return Ok(());
        }
        self.acked = end;
        self.remove_delivered()?;
        let path = self.dir.join(ACKED);
        let tmp = self.dir.join(".acked.tmp");
        fs::write(
            &tmp,
            format!("{} {}\n", self.acked.segment, self.acked.offset),
        )
        .map_err(io_error(&tmp, "writing the delivery position"))?;
        fs::rename(&tmp, &path).map_err(io_error(&path, "replacing the delivery position"))?;
        Ok(())
    }

    /// Removes the segments before the acked position, and the acked one once it is complete
    /// and no longer appended to.
    fn remove_delivered(&mut self) -> Result<(), SpoolError> {
        while let Some(first) = self.segments.front() {
            let is_active = self.active.is_some() && self.segments.len() == 1;
            let done = first.id < self.acked.segment
                || (first.id == self.acked.segment
                    && self.acked.offset >= first.len
                    && !is_active
                    && self.segments.len() > 1);
            let stale = first.id == self.acked.segment
                && self.acked.offset >= first.len
                && self.active.is_none()
                && self.segments.len() == 1;
            if !(done || stale) {
                break;
            }
            let path = self.segment_path(first.id);
            let len = first.len;
            fs::remove_file(&path)
                .or_else(|e| match e.kind() {
                    io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .map_err(io_error(&path, "removing a delivered segment"))?;
            self.total_bytes -= len;
            self.segments.pop_front();
            if let Some(next) = self.segments.front()
                && self.acked.segment < next.id
            {
                self.acked = Position {
                    segment: next.id,
                    offset: 0,
                };
            }
        }
        if self.segments.is_empty() {
            // Nothing left: new segments start from the next id.
            self.acked = Position {
                segment: self.next_id,
                offset: 0,
            };
        }
        Ok(())
    }
}

/// Reads up to [`MAX_BATCH_EVENTS`] events (and about [`MAX_BATCH_BYTES`], at least one event)
/// from `path` at `from`, stopping at `len`: whole lines only. Runs without the spool's lock
/// (the part of a segment before its length never changes).
pub fn read_batch(
    path: &Path,
    from: Position,
    len: u64,
    max_events: usize,
) -> Result<Option<Batch>, SpoolError> {
    let mut file = File::open(path).map_err(io_error(path, "opening a segment"))?;
    file.seek(SeekFrom::Start(from.offset))
        .map_err(io_error(path, "seeking in a segment"))?;
    let want = (len - from.offset).min(MAX_BATCH_BYTES as u64) as usize;
    let mut bytes = vec![0u8; want];
    file.read_exact(&mut bytes)
        .map_err(io_error(path, "reading a segment"))?;
    if memchr_newline(&bytes).is_none() && (len - from.offset) as usize > want {
        // One event larger than a batch's size: read it whole (a batch holds at least one).
        let mut rest = Vec::new();
        let mut reader = file.take(len - from.offset - want as u64);
        reader
            .read_to_end(&mut rest)
            .map_err(io_error(path, "reading a segment"))?;
        bytes.extend_from_slice(&rest);
    }
    let mut body = Vec::with_capacity(bytes.len() + 2);
    body.push(b'[');
    let mut events = 0usize;
    let mut consumed = 0usize;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if events == max_events || line.last() != Some(&b'\n') {
            break;
        }
        consumed += line.len();
        let line = &line[..line.len() - 1];
        if line.is_empty() {
            continue;
        }
        if events > 0 {
            body.push(b',');
        }
        body.extend_from_slice(line);
        events += 1;
    }
    if consumed == 0 {
        return Ok(None);
    }
    body.push(b']');
    Ok(Some(Batch {
        body,
        events,
        end: Position {
            segment: from.segment,
            offset: from.offset + consumed as u64,
        },
    }))
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', bytes)
}

/// Cuts a segment after its last complete line; returns its new length.
fn cut_torn_line(path: &Path, len: u64) -> Result<u64, SpoolError> {
    if len == 0 {
        return Ok(0);
    }
    let bytes = fs::read(path).map_err(io_error(path, "reading the last segment"))?;
    let keep = memchr::memrchr(b'\n', &bytes).map_or(0, |i| i + 1) as u64;
    if keep < len {
        tracing::warn!(path = %path.display(), cut = len - keep, "audit spool: cutting a torn last line (the proxy stopped mid-write)");
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_error(path, "opening the last segment"))?;
        file.set_len(keep)
            .map_err(io_error(path, "cutting a torn line"))?;
    }
    Ok(keep)
}

#[cfg(test)]
pub(super) mod tests {
    use streamward_api::audit::{Client, Decision, EventData, Identity, Request, RequestRecord};

    use super::*;

    /// The workload of the test events (the pipeline tests in `audit` share it).
    pub(in crate::audit) fn identity() -> Identity {
        Identity {
            namespace: "shop".into(),
            service_account: "orders".into(),
            ..Identity::default()
        }
    }

    /// A small Produce event of session `s`, at a fixed time so its size is the same each run.
    pub(in crate::audit) fn event(sequence: u64) -> AuditEvent {
        AuditEvent::request(
            Timestamp::UNIX_EPOCH,
            RequestRecord {
                session_id: "s".into(),
                sequence,
                identity: identity(),
                client: Client {
                    address: "127.0.0.1:1".into(),
                    ..Client::default()
                },
                request: Request {
                    api_key: "Produce".into(),
                    ..Request::default()
                },
                resources: Vec::new(),
                decision: Decision::default(),
                masking: Vec::new(),
                approval: None,
                payload: None,
            },
        )
    }

    fn open(dir: &Path, max: u64) -> Spool {
        Spool::open(dir, max, identity(), "run".into()).unwrap()
    }

    /// Reads and acknowledges everything, returning the events in order.
    fn drain(spool: &mut Spool, max_events: usize) -> Vec<AuditEvent> {
        let mut out = Vec::new();
        while let Some((path, from, len)) = spool.next_read().unwrap() {
            let batch = read_batch(&path, from, len, max_events).unwrap().unwrap();
            let events: Vec<AuditEvent> = serde_json::from_slice(&batch.body).unwrap();
            assert_eq!(events.len(), batch.events);
            assert!(batch.events <= max_events);
            out.extend(events);
            spool.ack(batch.end).unwrap();
        }
        out
    }

    fn sequences(events: &[AuditEvent]) -> Vec<u64> {
        events
            .iter()
            .map(|e| e.record().map_or(0, |r| r.sequence))
            .collect()
    }

    #[test]
    fn events_come_out_in_the_order_they_went_in_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        // A small bound makes small segments, so the events span many files.
        let mut spool = open(dir.path(), 400_000);
        for chunk in (1..=600u64).collect::<Vec<_>>().chunks(7) {
            let events: Vec<_> = chunk.iter().map(|&s| event(s)).collect();
            assert_eq!(spool.append(&events, Timestamp::UNIX_EPOCH).unwrap(), 0);
        }
        let files = fs::read_dir(dir.path()).unwrap().count();
        assert!(files > 3, "expected several segments, found {files} files");
        let out = drain(&mut spool, 64);
        assert_eq!(sequences(&out), (1..=600).collect::<Vec<_>>());
        // Delivered segments are removed, but the one still appended to stays.
        assert!(spool.bytes() < spool.segment_bytes + 1000);
    }

    #[test]
    fn a_full_spool_drops_and_then_reports_the_loss() {
        let dir = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&event(1)).unwrap().len() as u64 + 1;
        // Room for ten events (sequences 10..15 are a byte longer than 1..9).
        let mut spool = open(dir.path(), one * 10 + 10);
        let events: Vec<_> = (1..=15).map(event).collect();
        let lost = spool.append(&events, Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(lost, 5);
        assert!(spool.bytes() <= one * 10 + 10);
        // Still full: nothing more goes in, the count grows.
        assert_eq!(
            spool.append(&[event(16)], Timestamp::UNIX_EPOCH).unwrap(),
            1
        );

        let delivered = drain(&mut spool, 1000);
        assert_eq!(sequences(&delivered), (1..=10).collect::<Vec<_>>());
        // Room again: the report goes first, then the new event.
        assert_eq!(
            spool.append(&[event(17)], Timestamp::UNIX_EPOCH).unwrap(),
            0
        );
        let after = drain(&mut spool, 1000);
        assert_eq!(after.len(), 2);
        match &after[0].data {
            EventData::Dropped(report) => {
                assert_eq!(report.dropped, 6);
                assert_eq!(report.identity, identity());
            }
            other => panic!("expected a report of dropped events, got {other:?}"),
        }
        assert_eq!(after[0].id, "run:dropped:1");
        assert_eq!(sequences(&after[1..]), vec![17]);
    }

    #[test]
    fn a_restart_delivers_what_the_last_run_left_from_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = open(dir.path(), 1 << 20);
            let events: Vec<_> = (1..=50).map(event).collect();
            spool.append(&events, Timestamp::UNIX_EPOCH).unwrap();
            // Deliver the first 20, then "crash".
            let (path, from, len) = spool.next_read().unwrap().unwrap();
            let batch = read_batch(&path, from, len, 20).unwrap().unwrap();
            spool.ack(batch.end).unwrap();
        }
        // A torn line, as a crash mid-write leaves it.
        let last = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .max()
            .unwrap();
        OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap()
            .write_all(b"{\"specversion\":\"1.0\",\"id\":\"s:5")
            .unwrap();

        let mut spool = open(dir.path(), 1 << 20);
        spool.append(&[event(51)], Timestamp::UNIX_EPOCH).unwrap();
        let out = drain(&mut spool, 1000);
        assert_eq!(sequences(&out), (21..=51).collect::<Vec<_>>());

        // And once everything is delivered, a restart has nothing to send.
        drop(spool);
        let mut spool = open(dir.path(), 1 << 20);
        assert!(spool.next_read().unwrap().is_none());
        assert_eq!(spool.bytes(), 0);
    }

    #[test]
    fn an_unreadable_position_delivers_again_rather_than_skip() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = open(dir.path(), 1 << 20);
            spool
                .append(
                    &(1..=5).map(event).collect::<Vec<_>>(),
                    Timestamp::UNIX_EPOCH,
                )
                .unwrap();
        }
        fs::write(dir.path().join(ACKED), "garbage").unwrap();
        let mut spool = open(dir.path(), 1 << 20);
        assert_eq!(sequences(&drain(&mut spool, 1000)), vec![1, 2, 3, 4, 5]);
    }
}
