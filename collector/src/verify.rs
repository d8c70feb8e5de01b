//! `verify`: proves the chain of a data folder unbroken, or names the first record that was
//! altered, removed or moved, and reports gaps in each proxy session's sequence numbers.
//!
//! What is checked, in this order:
//! 1. every line hashes to the hash it carries (else: *altered*, with segment, line and event);
//! 2. every record follows the one before: the next index, and the `prev` that is the hash of
//!    the record before (else: *removed* when the missing index is nowhere in the store,
//!    *reordered* when it is elsewhere, *altered* when the record was re-linked);
//! 3. the first record left is index 0 after the genesis hash, or is anchored by a signed
//!    checkpoint of the segment retention removed before it;
//! 4. every checkpoint carries a valid Ed25519 signature, follows the checkpoint line before it
//!    (its `seq` and `prev`), and the record at its last index has the hash it signed (so a
//!    chain rewritten from some record on, hashes and all, is found, and so are records cut off
//!    the end while a checkpoint of them is left);
//! 5. a segment a signed checkpoint calls sealed is followed by another segment (the collector
//!    creates the next one before it seals), so the newest segment removed together with its
//!    checkpoints is found.
//!
//! It also reports what no signature covers yet (records after the newest checkpoint), whether
//! the newest checkpoint is the one a clean shutdown writes, which key it trusted and whether
//! that key was pinned, and per proxy session the sequence numbers that never arrived and the
//! sessions that went quiet.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::chain::{self, GENESIS};
use crate::checkpoint::{Checkpoint, PublicKey};
use crate::sessions::{Session, Sessions, State};
use crate::store;

/// Quiet sessions listed in a report at most (the total is counted).
const QUIET_LISTED: usize = 1000;

/// What kind of damage a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ProblemKind {
    /// A record's bytes were changed.
    Altered,
    /// Records are missing.
    Removed,
    /// A record is not where its index says it belongs.
    Reordered,
    /// A checkpoint's signature is not the collector key's.
    CheckpointForged,
    /// The public key beside the data is not the pinned one.
    UntrustedKey,
}

/// The first thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// What.
    pub kind: ProblemKind,
    /// The segment file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// The line in the segment (from 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The index of the record concerned, or of the first missing one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// The event concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// In words.
    pub message: String,
}

/// Sequence numbers missing from one proxy session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Gap {
    /// The workload, `<namespace>/<serviceaccount>`.
    pub identity: String,
    /// The session id.
    pub session: String,
    /// Inclusive ranges of missing sequence numbers.
    pub missing: Vec<(u64, u64)>,
}

/// The outcome of `verify`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// No problem found.
    pub ok: bool,
    /// Segment files read.
    pub segments: usize,
    /// Records read.
    pub records: u64,
    /// The first and last index present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The last index present.
    pub last_index: Option<u64>,
    /// Checkpoints with a valid signature.
    pub checkpoints: usize,
    /// The first problem of the chain, then any checkpoint problems.
    pub problems: Vec<Problem>,
    /// Sequence gaps per session (events the proxies never delivered).
    pub gaps: Vec<Gap>,
    /// Events proxies reported as dropped (spool full).
    pub dropped_reported: u64,
    /// The last record index a valid signed checkpoint covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_signed_index: Option<u64>,
    /// Records present after it: not yet signed, so their removal would not show.
    pub unsigned_records: u64,
    /// When the newest valid checkpoint was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_checkpoint: Option<jiff::Timestamp>,
    /// Whether the newest valid checkpoint is the one a clean shutdown writes and covers the
    /// last record: false while the collector runs, after it was killed, and when the store
    /// was cut back to an earlier checkpoint.
    pub stopped: bool,
    /// The key the checkpoints were checked with.
    pub key: KeyReport,
    /// Sessions whose newest event is older than this are quiet.
    pub quiet_after_seconds: u64,
    /// Sessions that went quiet without an end (newest first, at most 1,000).
    pub quiet_sessions: Vec<Session>,
    /// How many sessions went quiet.
    pub quiet_sessions_total: usize,
}

/// Which key `verify` trusted.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyReport {
    /// The hex SHA-256 of the public key used.
    pub fingerprint: String,
    /// Where it came from.
    pub source: String,
    /// Whether it was pinned (`--public-key` or `--fingerprint`) rather than taken from beside
    /// the data it checks.
    pub pinned: bool,
}

/// The event id in a damaged line, read without parsing it as JSON.
fn scrape_id(line: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    let event = text.find(",\"event\":{")?;
    let rest = &text[event..];
    let start = rest.find("\"id\":\"")? + 6;
    let end = rest[start..].find('"')?;
    Some(rest[start..start + end].to_string())
}

/// The index of a record line, read from its start (`{"i":<digits>,`) without parsing the rest.
fn index_of(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"i\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

fn event_id(record: &chain::Record) -> Option<String> {
    record
        .event
        .get("id")
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// A record that skipped ahead: whether it was *removed* or *reordered* depends on whether
/// the missing index turns up later in the store.
struct Skipped {
    missing: u64,
    found: bool,
    removed: Problem,
    reordered: Problem,
}

/// What of a store one verification reads: the segment files and the checkpoints file, each
/// up to the length it had when the cut was taken. A cut taken while the writer is between
/// writes is a consistent store however much the writer appends after it.
#[derive(Clone, Debug)]
pub struct Cut {
    /// The segment files, oldest first, with their lengths.
    pub segments: Vec<(PathBuf, u64)>,
    /// The length of the checkpoints file.
    pub checkpoints: u64,
}

impl Cut {
    /// The store in `dir` as it is now (whole files).
    pub fn take(dir: &Path) -> Result<Cut> {
        let mut segments = Vec::new();
        for path in store::segment_files(dir)? {
            let length = std::fs::metadata(&path)
                .with_context(|| format!("reading the length of {}", path.display()))?
                .len();
            segments.push((path, length));
        }
        let checkpoints = match std::fs::metadata(dir.join(store::CHECKPOINTS)) {
            Ok(meta) => meta.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "reading the length of {}",
                        dir.join(store::CHECKPOINTS).display()
                    )
                });
            }
        };
        Ok(Cut {
            segments,
            checkpoints,
        })
    }
}

/// Verifies the store in `dir` with the checkpoint key `key`.
///
/// Segments are read one at a time and records are not kept, so memory stays small however
/// large the store is: what is kept per record is its session's sequence number.
pub fn verify(dir: &Path, key: &PublicKey, quiet_after: Duration) -> Result<Report> {
    verify_cut(dir, key, quiet_after, &Cut::take(dir)?)
}

/// Verifies what `cut` holds of the store in `dir` (see [`verify`]).
pub fn verify_cut(dir: &Path, key: &PublicKey, quiet_after: Duration, cut: &Cut) -> Result<Report> {
    let files: Vec<PathBuf> = cut.segments.iter().map(|(p, _)| p.clone()).collect();

    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    let mut problems = Vec::new();
    let mut checkpoint_gap = None;
    // (hash, seq) of the line before.
    let mut before: Option<(String, Option<u64>)> = None;
    for line in store::read_checkpoints_upto(dir, Some(cut.checkpoints))? {
        let number = line.number;
        let this = (
            line.hash.clone(),
            line.checkpoint.as_ref().ok().and_then(|c| c.seq),
        );
        match line.checkpoint {
            Ok(c) if c.is_signed_by(key) => {
                if let Some(seq) = c.seq {
                    let follows = match &before {
                        None => seq == 0 && c.prev.as_deref() == Some(GENESIS),
                        Some((hash, previous)) => {
                            c.prev.as_deref() == Some(hash.as_str())
                                && previous.is_none_or(|p| p + 1 == seq)
                        }
                    };
                    if !follows && checkpoint_gap.is_none() {
                        checkpoint_gap = Some(Problem {
                            kind: ProblemKind::Removed,
                            segment: Some(c.segment.clone()),
                            line: None,
                            index: None,
                            event_id: None,
                            message: format!(
                                "checkpoint {seq} (line {number} of {}) does not follow the \
                                 line before it: checkpoints before it were removed or changed",
                                store::CHECKPOINTS
                            ),
                        });
                    }
                }
                checkpoints.push(c);
            }
            Ok(c) => problems.push(Problem {
                kind: ProblemKind::CheckpointForged,
                segment: Some(c.segment.clone()),
                line: None,
                index: Some(c.last_index),
                event_id: None,
                message: format!(
                    "a checkpoint of {} up to index {} is not signed by the collector key",
                    c.segment, c.last_index
                ),
            }),
            Err(error) => problems.push(Problem {
                kind: ProblemKind::CheckpointForged,
                segment: None,
                line: Some(number),
                index: None,
                event_id: None,
                message: format!(
                    "line {number} of {} is not a checkpoint: {error}",
                    store::CHECKPOINTS
                ),
            }),
        }
        before = Some(this);
    }
    if let Some(problem) = checkpoint_gap {
        problems.insert(0, problem);
    }
    let checkpointed: HashSet<u64> = checkpoints.iter().map(|c| c.last_index).collect();

    let mut records = 0u64;
    let mut at_checkpoints: HashMap<u64, (String, usize, String, Option<String>)> = HashMap::new();
    let mut sessions = Sessions::default();
    let mut dropped_reported = 0;
    let mut chain_problem = None;
    let mut skipped: Option<Skipped> = None;
    let mut previous: Option<(u64, String)> = None;
    let mut first_index = None;
    let mut last_index = None;
    for (path, length) in &cut.segments {
        let segment = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut bytes = std::fs::read(path)
            .with_context(|| format!("reading the segment {}", path.display()))?;
        bytes.truncate(usize::try_from(*length).unwrap_or(usize::MAX));
        for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            records += 1;
            if let Some(skip) = &mut skipped {
                skip.found |= index_of(line) == Some(skip.missing);
                continue;
            }
            if chain_problem.is_some() {
                continue;
            }
            let at = |kind, record: Option<&chain::Record>, message: String| Problem {
                kind,
                segment: Some(segment.clone()),
                line: Some(n + 1),
                index: record.map(|r| r.index),
                event_id: record.and_then(event_id),
                message,
            };
            let record = match chain::decode(line) {
                Ok(record) => record,
                Err(broken) => {
                    let mut problem = at(
                        ProblemKind::Altered,
                        broken.record.as_deref(),
                        format!("the record was altered: {}", broken.damage),
                    );
                    if broken.record.is_none() {
                        // Where it stands says which record it was.
                        problem.index = Some(previous.as_ref().map_or(0, |(index, _)| index + 1));
                        problem.event_id = scrape_id(line);
                    }
                    chain_problem = Some(problem);
                    continue;
                }
            };
            let problem = match &previous {
                None if record.index == 0 && record.prev != GENESIS => Some(at(
                    ProblemKind::Altered,
                    Some(&record),
                    "the first record does not start from the genesis hash".into(),
                )),
                None if record.index == 0 => None,
                None => {
                    // Only retention may remove the beginning, and it leaves a signed note
                    // saying up to where.
                    let anchored = checkpoints.iter().any(|c| {
                        c.removed && c.last_index + 1 == record.index && c.last_hash == record.prev
                    });
                    (!anchored).then(|| Problem {
                        index: Some(0),
                        ..at(
                            ProblemKind::Removed,
                            Some(&record),
                            format!(
                                "records 0 to {} are missing and no signed retention checkpoint \
                                 says they were removed by retention up to record {}",
                                record.index - 1,
                                record.index
                            ),
                        )
                    })
                }
                Some((index, hash)) => {
                    let expected = index + 1;
                    if record.index == expected && record.prev == *hash {
                        None
                    } else if record.index == expected {
                        Some(at(
                            ProblemKind::Altered,
                            Some(&record),
                            format!(
                                "the record does not follow record {index}: its prev is not \
                                 that record's hash (the chain was re-linked here)"
                            ),
                        ))
                    } else {
                        let reordered = at(
                            ProblemKind::Reordered,
                            Some(&record),
                            format!(
                                "record {} stands where record {expected} belongs (after \
                                 record {index})",
                                record.index
                            ),
                        );
                        if record.index < expected {
                            Some(reordered)
                        } else {
                            let removed = Problem {
                                index: Some(expected),
                                ..at(
                                    ProblemKind::Removed,
                                    Some(&record),
                                    format!(
                                        "records {expected} to {} are missing before this one",
                                        record.index - 1
                                    ),
                                )
                            };
                            skipped = Some(Skipped {
                                missing: expected,
                                found: false,
                                removed,
                                reordered,
                            });
                            continue;
                        }
                    }
                }
            };
            if let Some(problem) = problem {
                chain_problem = Some(problem);
                continue;
            }
            first_index.get_or_insert(record.index);
            last_index = Some(record.index);
            if checkpointed.contains(&record.index) {
                at_checkpoints.insert(
                    record.index,
                    (
                        segment.clone(),
                        n + 1,
                        record.hash.clone(),
                        event_id(&record),
                    ),
                );
            }
            sessions.add_json(&record.event);
            let data = &record.event["data"];
            if let Some(dropped) = data["dropped"].as_u64() {
                dropped_reported += dropped;
            }
            previous = Some((record.index, record.hash));
        }
    }
    if let Some(skip) = skipped {
        chain_problem = Some(if skip.found {
            skip.reordered
        } else {
            skip.removed
        });
    }

    if let Some(problem) = chain_problem {
        problems.insert(0, problem);
    } else if let (Some(first), Some(last)) = (first_index, last_index) {
        let mut checkpoint_problem = None;
        for c in checkpoints.iter().filter(|c| !c.removed) {
            if c.last_index < first {
                continue;
            }
            if c.last_index > last {
                checkpoint_problem = Some(Problem {
                    kind: ProblemKind::Removed,
                    segment: Some(c.segment.clone()),
                    line: None,
                    index: Some(last + 1),
                    event_id: None,
                    message: format!(
                        "records {} to {} were cut off the end: a signed checkpoint covers them",
                        last + 1,
                        c.last_index
                    ),
                });
                break;
            }
            if let Some((segment, line, hash, id)) = at_checkpoints.get(&c.last_index)
                && *hash != c.last_hash
            {
                checkpoint_problem = Some(Problem {
                    kind: ProblemKind::Altered,
                    segment: Some(segment.clone()),
                    line: Some(*line),
                    index: Some(c.last_index),
                    event_id: id.clone(),
                    message: format!(
                        "record {} is not the record a signed checkpoint holds: the chain up to \
                         it was rewritten",
                        c.last_index
                    ),
                });
                break;
            }
        }
        // A sealed segment always has a successor; the newest segment cannot be sealed.
        if checkpoint_problem.is_none()
            && let Some(newest) = files.last()
        {
            let name = newest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if let Some(c) = checkpoints
                .iter()
                .find(|c| c.sealed && !c.removed && c.segment == name)
            {
                checkpoint_problem = Some(Problem {
                    kind: ProblemKind::Removed,
                    segment: Some(store::segment_name(c.last_index + 1)),
                    line: None,
                    index: Some(c.last_index + 1),
                    event_id: None,
                    message: format!(
                        "segment {name} was sealed (a signed checkpoint says so), but the \
                         segment after it, which begins with record {}, is missing: the newest \
                         segment was removed",
                        c.last_index + 1
                    ),
                });
            }
        }
        if let Some(problem) = checkpoint_problem {
            problems.insert(0, problem);
        }
    } else if let Some(c) = checkpoints.iter().max_by_key(|c| c.last_index) {
        problems.insert(
            0,
            Problem {
                kind: ProblemKind::Removed,
                segment: Some(c.segment.clone()),
                line: None,
                index: Some(c.first_index),
                event_id: None,
                message: format!(
                    "the store holds no records, but a signed checkpoint covers records up to {}",
                    c.last_index
                ),
            },
        );
    }

    let from_start = first_index == Some(0);
    let all = sessions.finish(from_start, jiff::Timestamp::now(), quiet_after);
    let mut gaps = Vec::new();
    let mut quiet = Vec::new();
    for session in all {
        if !session.missing.is_empty() {
            gaps.push(Gap {
                identity: session.identity.clone(),
                session: session.session.clone(),
                missing: session.missing.clone(),
            });
        }
        if session.state == State::Quiet {
            quiet.push(session);
        }
    }
    quiet.sort_by_key(|s| std::cmp::Reverse(s.last_seen));
    let quiet_sessions_total = quiet.len();
    quiet.truncate(QUIET_LISTED);

    let last_signed_index = checkpoints.iter().map(|c| c.last_index).max();
    let unsigned_records = match (first_index, last_index) {
        (Some(first), Some(last)) => {
            let from = last_signed_index.map_or(first, |signed| (signed + 1).max(first));
            (last + 1).saturating_sub(from)
        }
        _ => 0,
    };
    let newest = checkpoints.last();
    let stopped = newest.is_some_and(|c| c.stopped && Some(c.last_index) == last_index);

    Ok(Report {
        ok: problems.is_empty(),
        segments: files.len(),
        records,
        first_index,
        last_index,
        checkpoints: checkpoints.len(),
        problems,
        gaps,
        dropped_reported,
        last_signed_index,
        unsigned_records,
        newest_checkpoint: newest.map(|c| c.time),
        stopped,
        key: KeyReport {
            fingerprint: key.fingerprint(),
            source: String::new(),
            pinned: false,
        },
        quiet_after_seconds: quiet_after.as_secs(),
        quiet_sessions: quiet,
        quiet_sessions_total,
    })
}

impl Report {
    /// Records which key was trusted; with `pinned_fingerprint`, a key that is not the pinned
    /// one is the first problem.
    pub fn trust(&mut self, source: String, pinned: bool, pinned_fingerprint: Option<&str>) {
        self.key.source = source;
        self.key.pinned = pinned;
        if let Some(expected) = pinned_fingerprint
            && expected != self.key.fingerprint
        {
            self.problems.insert(
                0,
                Problem {
                    kind: ProblemKind::UntrustedKey,
                    segment: None,
                    line: None,
                    index: None,
                    event_id: None,
                    message: format!(
                        "the public key {} (fingerprint {}) is not the pinned key (fingerprint \
                         {expected}): the key beside the data was replaced, so no checkpoint of \
                         this store can be trusted",
                        self.key.source, self.key.fingerprint
                    ),
                },
            );
            self.ok = false;
        }
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        match self.problems.first() {
            None => text.push_str(&format!(
                "OK: {} records in {} segments, chain unbroken, {} signed checkpoints agree\n",
                self.records, self.segments, self.checkpoints
            )),
            Some(problem) => {
                let kind = serde_json::to_value(problem.kind).unwrap_or_default();
                text.push_str(&format!("FAILED: {}", kind.as_str().unwrap_or("damage")));
                if let Some(segment) = &problem.segment {
                    text.push_str(&format!(" in segment {segment}"));
                }
                if let Some(line) = problem.line {
                    text.push_str(&format!(" line {line}"));
                }
                if let Some(index) = problem.index {
                    text.push_str(&format!(" (record {index}"));
                    if let Some(id) = &problem.event_id {
                        text.push_str(&format!(", event {id}"));
                    }
                    text.push(')');
                }
                text.push_str(&format!(": {}\n", problem.message));
                for other in &self.problems[1..] {
                    text.push_str(&format!("also: {}\n", other.message));
                }
            }
        }
        for gap in &self.gaps {
            let ranges: Vec<String> = gap
                .missing
                .iter()
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            text.push_str(&format!(
                "gap: session {} of {} is missing sequence numbers {}\n",
                gap.session,
                gap.identity,
                ranges.join(", ")
            ));
        }
        if self.unsigned_records > 0 {
            let last = self.last_index.unwrap_or_default();
            text.push_str(&format!(
                "unsigned: {} records (up to record {last}) after the newest signed checkpoint \
                 are present but not yet signed: had they been cut off, nothing here would show it\n",
                self.unsigned_records
            ));
        }
        match (self.stopped, self.newest_checkpoint) {
            (true, Some(time)) => text.push_str(&format!(
                "stopped: the newest checkpoint ({time}) was signed at a clean shutdown and \
                 covers the last record\n"
            )),
            (false, Some(time)) => text.push_str(&format!(
                "open: the newest checkpoint ({time}) is not a clean shutdown's: the collector is \
                 running, was killed, or the store was cut back to this checkpoint\n"
            )),
            _ => {}
        }
        if !self.key.pinned {
            text.push_str(&format!(
                "note: the key is not pinned: checked with {} (fingerprint {}), which whoever can \
                 rewrite the data folder can replace; pass --fingerprint or --public-key with the \
                 key recorded at the collector's first start\n",
                self.key.source, self.key.fingerprint
            ));
        }
        for session in self.quiet_sessions.iter().take(20) {
            text.push_str(&format!(
                "quiet: session {} of {} ({}) last seen {} at sequence {}, and no event says it \
                 ended\n",
                session.session,
                session.identity,
                session.source,
                session.last_seen,
                session.last_sequence
            ));
        }
        if self.quiet_sessions_total > 20 {
            text.push_str(&format!(
                "quiet: … {} sessions in all went quiet (--json lists them)\n",
                self.quiet_sessions_total
            ));
        }
        if self.dropped_reported > 0 {
            text.push_str(&format!(
                "proxies reported {} events dropped (spool full)\n",
                self.dropped_reported
            ));
        }
        text
    }
}
