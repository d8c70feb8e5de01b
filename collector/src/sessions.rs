//! Proxy sessions as the store shows them: per workload identity and session id, the sequence
//! numbers that arrived, which are missing, when the last event was seen, and whether the
//! session went quiet.
//!
//! Proxies send no event when a session ends, so "quiet" cannot tell a client that
//! disconnected from a proxy that was killed or silenced mid-session: a quiet session is one
//! whose newest event is older than the threshold. A healthy Kafka connection is never silent
//! that long (clients refresh metadata every 5 minutes and consumers fetch continuously), so a
//! proxy that stops sending shows as its sessions all going quiet at the same moment.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use jiff::Timestamp;
use serde::Serialize;
use streamward_api::audit::{AuditEvent, EventData};

use crate::store;

/// The default `--quiet-after`.
pub const DEFAULT_QUIET_AFTER: Duration = Duration::from_secs(15 * 60);

/// Whether a session still sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum State {
    /// Its newest event is recent.
    Active,
    /// Its newest event is older than the threshold, and no event says it ended.
    Quiet,
}

/// One session's summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// The workload, `<namespace>/<serviceaccount>`.
    pub identity: String,
    /// The session id.
    pub session: String,
    /// The proxy (the events' `source`, with the pod).
    pub source: String,
    /// Events stored.
    pub events: usize,
    /// The lowest and highest sequence number stored.
    pub first_sequence: u64,
    /// The highest sequence number stored.
    pub last_sequence: u64,
    /// The time of its oldest and newest event (the proxy's clock).
    pub first_seen: Timestamp,
    /// The time of its newest event.
    pub last_seen: Timestamp,
    /// Inclusive ranges of sequence numbers that never arrived.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<(u64, u64)>,
    /// Active or quiet.
    pub state: State,
}

struct Tracked {
    source: String,
    sequences: Vec<u64>,
    first_seen: Timestamp,
    last_seen: Timestamp,
}

/// Collects sessions from events, in any order.
#[derive(Default)]
pub struct Sessions {
    by: BTreeMap<(String, String), Tracked>,
}

impl Sessions {
    /// Adds one request event.
    pub fn add(
        &mut self,
        identity: String,
        session: &str,
        source: &str,
        sequence: u64,
        time: Timestamp,
    ) {
        let tracked = self
            .by
            .entry((identity, session.to_string()))
            .or_insert_with(|| Tracked {
                source: source.to_string(),
                sequences: Vec::new(),
                first_seen: time,
                last_seen: time,
            });
        tracked.sequences.push(sequence);
        tracked.first_seen = tracked.first_seen.min(time);
        if time >= tracked.last_seen {
            tracked.last_seen = time;
            tracked.source = source.to_string();
        }
    }

    /// Adds an event as the query API reads it (events that report drops have no session).
    pub fn add_event(&mut self, event: &AuditEvent) {
        if let EventData::Request(record) = &event.data {
            let identity =
                store::identity_key(&record.identity.namespace, &record.identity.service_account);
            self.add(
                identity,
                &record.session_id,
                &event.source,
                record.sequence,
                event.time,
            );
        }
    }

    /// Adds an event as `verify` reads it (JSON, not parsed into an [`AuditEvent`]).
    pub fn add_json(&mut self, event: &serde_json::Value) {
        let data = &event["data"];
        let (Some(session), Some(sequence)) =
            (data["sessionId"].as_str(), data["sequence"].as_u64())
        else {
            return;
        };
        let Some(time) = event["time"].as_str().and_then(|t| t.parse().ok()) else {
            return;
        };
        let identity = store::identity_key(
            data["identity"]["namespace"].as_str().unwrap_or_default(),
            data["identity"]["serviceAccount"]
                .as_str()
                .unwrap_or_default(),
        );
        let source = event["source"].as_str().unwrap_or_default();
        self.add(identity, session, source, sequence, time);
    }

    /// The sessions, by identity and session id. Missing sequence numbers count from 1 when
    /// `from_start` (the store still holds its first record), else from the first one stored.
    /// A session is quiet when its newest event is older than `now - quiet_after`.
    pub fn finish(self, from_start: bool, now: Timestamp, quiet_after: Duration) -> Vec<Session> {
        let quiet_before = now
            .checked_sub(jiff::SignedDuration::try_from(quiet_after).unwrap_or_default())
            .unwrap_or(now);
        self.by
            .into_iter()
            .filter_map(|((identity, session), mut tracked)| {
                tracked.sequences.sort_unstable();
                tracked.sequences.dedup();
                let first = *tracked.sequences.first()?;
                let last = *tracked.sequences.last()?;
                let mut missing = Vec::new();
                let mut expected = if from_start { 1 } else { first };
                for &sequence in &tracked.sequences {
                    if sequence > expected {
                        missing.push((expected, sequence - 1));
                    }
                    expected = sequence + 1;
                }
                Some(Session {
                    identity,
                    session,
                    source: tracked.source,
                    events: tracked.sequences.len(),
                    first_sequence: first,
                    last_sequence: last,
                    first_seen: tracked.first_seen,
                    last_seen: tracked.last_seen,
                    missing,
                    state: if tracked.last_seen < quiet_before {
                        State::Quiet
                    } else {
                        State::Active
                    },
                })
            })
            .collect()
    }
}

/// Parses a duration: `90s`, `30m`, `2h`, `7d`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let (number, unit) = match text.char_indices().last() {
        Some((at, unit)) if unit.is_ascii_alphabetic() => (&text[..at], Some(unit)),
        _ => (text, None),
    };
    let number: u64 = number
        .parse()
        .with_context(|| format!("{text:?} is not a duration like 90s, 30m, 2h or 7d"))?;
    let seconds = match unit {
        None | Some('s') => number,
        Some('m') => number * 60,
        Some('h') => number * 3600,
        Some('d') => number * 86400,
        Some(_) => bail!("{text:?}: a duration ends in s, m, h or d"),
    };
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minutes_ago: i64) -> Timestamp {
        Timestamp::now() - jiff::SignedDuration::from_mins(minutes_ago)
    }

    #[test]
    fn sessions_are_per_identity_with_their_gaps_and_quiet_ones_are_marked() {
        let mut sessions = Sessions::default();
        for (sequence, ago) in [(1, 90), (2, 80), (4, 70)] {
            sessions.add("shop/a".into(), "s", "/a/pod-1", sequence, at(ago));
        }
        // Another identity using the same session id is another session.
        sessions.add("shop/b".into(), "s", "/b", 9, at(1));
        let all = sessions.finish(true, Timestamp::now(), Duration::from_secs(1800));
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].identity, "shop/a");
        assert_eq!(all[0].missing, vec![(3, 3)]);
        assert_eq!(all[0].last_sequence, 4);
        assert_eq!(all[0].state, State::Quiet);
        assert_eq!(all[1].missing, vec![(1, 8)]);
        assert_eq!(all[1].state, State::Active);
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3w").is_err());
    }
}
