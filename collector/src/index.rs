//! A small index per sealed segment, so a query reads only the segments that can hold a match.
//!
//! For each sealed segment `segments/<n>.seg` a query may find `segments/<n>.idx`: JSON with the
//! segment's length when it was indexed, the span of its events' times, and the sets of kinds,
//! workload identities, users, topics, sessions, APIs and decisions among them. A scan that
//! reads a sealed segment without a usable index builds one from the events it reads anyway
//! and leaves it beside the segment (best effort: a read-only copy of a data folder is still
//! queried, only never faster). An index whose segment length differs, that does not parse, or
//! of another version is rebuilt the same way.
//!
//! The index only ever lets a scan *skip* a segment; it is never evidence: `verify` reads every
//! segment and ignores these files. The open segment (the newest file) is always read.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use streamward_api::audit::{AuditEvent, EventData};

use crate::query::{Filter, Kind};
use crate::store;

/// The format of the index files; an index of another version is rebuilt.
const VERSION: u32 = 1;

/// What one sealed segment holds, in brief.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SegmentIndex {
    version: u32,
    /// The segment's length in bytes when it was indexed.
    pub bytes: u64,
    /// Events indexed.
    pub events: u64,
    /// The oldest and newest event time (the proxies' clocks: not in order in a segment).
    pub min_time: Option<Timestamp>,
    /// The newest event time.
    pub max_time: Option<Timestamp>,
    kinds: BTreeSet<String>,
    /// `<namespace>/<serviceaccount>` of the workloads.
    identities: BTreeSet<String>,
    /// Users of requests and readers of queries.
    users: BTreeSet<String>,
    topics: BTreeSet<String>,
    sessions: BTreeSet<String>,
    /// Kafka API names, as stored.
    apis: BTreeSet<String>,
    /// Decision effects, as stored.
    effects: BTreeSet<String>,
    /// Whether any request was a DryRun refusal (`decision=WouldDeny`).
    would_deny: bool,
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Request => "request",
        Kind::Dropped => "dropped",
        Kind::Query => "query",
    }
}

impl SegmentIndex {
    /// An empty index of a segment `bytes` long.
    pub fn new(bytes: u64) -> SegmentIndex {
        SegmentIndex {
            version: VERSION,
            bytes,
            ..SegmentIndex::default()
        }
    }

    /// Takes in one event of the segment.
    pub fn add(&mut self, event: &AuditEvent) {
        self.events += 1;
        self.min_time = Some(self.min_time.map_or(event.time, |t| t.min(event.time)));
        self.max_time = Some(self.max_time.map_or(event.time, |t| t.max(event.time)));
        self.kinds.insert(kind_name(Kind::of(event)).to_string());
        if let Some(identity) = event.identity() {
            self.identities.insert(store::identity_key(
                &identity.namespace,
                &identity.service_account,
            ));
            if let Some(user) = &identity.user {
                self.users.insert(user.clone());
            }
        }
        match &event.data {
            EventData::Request(record) => {
                self.sessions.insert(record.session_id.clone());
                self.apis.insert(record.request.api_key.clone());
                self.effects.insert(record.decision.effect.clone());
                self.would_deny |= record.decision.dry_run;
                for resource in &record.resources {
                    if resource.resource_type == "Topic" {
                        self.topics.insert(resource.name.clone());
                    }
                }
            }
            EventData::Query(query) => {
                self.users.insert(query.reader.user.clone());
            }
            EventData::Dropped(_) => {}
        }
    }

    /// Whether an event of this segment can pass `filter`. `false` is a promise: none can.
    pub fn may_match(&self, filter: &Filter) -> bool {
        let (Some(min), Some(max)) = (self.min_time, self.max_time) else {
            return false;
        };
        if filter.since.is_some_and(|since| max < since)
            || filter.until.is_some_and(|until| min >= until)
        {
            return false;
        }
        let kinds = [Kind::Request, Kind::Dropped, Kind::Query];
        if !kinds
            .iter()
            .any(|k| filter.wants(*k) && self.kinds.contains(kind_name(*k)))
        {
            return false;
        }
        let identity_fits = |identity: &String| {
            let (namespace, service_account) = identity.split_once('/').unwrap_or_default();
            filter.namespace.as_ref().is_none_or(|n| n == namespace)
                && filter
                    .service_account
                    .as_ref()
                    .is_none_or(|s| s == service_account)
        };
        if (filter.namespace.is_some() || filter.service_account.is_some())
            && !self.identities.iter().any(identity_fits)
        {
            return false;
        }
        let has = |set: &BTreeSet<String>, want: &Option<String>| {
            want.as_ref().is_none_or(|w| set.contains(w))
        };
        let has_folded = |set: &BTreeSet<String>, want: &Option<String>| {
            want.as_ref()
                .is_none_or(|w| set.iter().any(|v| v.eq_ignore_ascii_case(w)))
        };
        let decision = match &filter.decision {
            Some(want) if want.eq_ignore_ascii_case("WouldDeny") => self.would_deny,
            want => has_folded(&self.effects, want),
        };
        decision
            && has(&self.users, &filter.user)
            && has(&self.topics, &filter.topic)
            && has(&self.sessions, &filter.session)
            && has_folded(&self.apis, &filter.api_key)
    }

    /// The index file of `segment`.
    pub fn path(segment: &Path) -> PathBuf {
        segment.with_extension("idx")
    }

    /// The index of `segment` if one is there for its current length `bytes`; `None` when it is
    /// missing, damaged, stale or of another version.
    pub fn load(segment: &Path, bytes: u64) -> Option<SegmentIndex> {
        let text = std::fs::read(SegmentIndex::path(segment)).ok()?;
        let index: SegmentIndex = serde_json::from_slice(&text).ok()?;
        (index.version == VERSION && index.bytes == bytes).then_some(index)
    }

    /// Writes the index beside `segment` (through a temporary file and a rename, so a reader
    /// never sees half of it).
    pub fn save(&self, segment: &Path) -> Result<()> {
        static TEMP: AtomicU64 = AtomicU64::new(0);
        let path = SegmentIndex::path(segment);
        let temp = path.with_extension(format!(
            "idx.{}.{}.tmp",
            std::process::id(),
            TEMP.fetch_add(1, Ordering::Relaxed)
        ));
        let json = serde_json::to_vec(self)?;
        std::fs::write(&temp, json).with_context(|| format!("writing {}", temp.display()))?;
        std::fs::rename(&temp, &path).with_context(|| {
            let _ = std::fs::remove_file(&temp);
            format!("renaming {} to {}", temp.display(), path.display())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamward_api::audit::{Decision, Identity, Request, RequestRecord, Resource};

    fn event(namespace: &str, topic: &str, time: &str, effect: &str) -> AuditEvent {
        AuditEvent::request(
            time.parse().unwrap(),
            RequestRecord {
                session_id: format!("{namespace}-session"),
                sequence: 1,
                identity: Identity {
                    namespace: namespace.into(),
                    service_account: "app".into(),
                    user: Some("alice".into()),
                    ..Identity::default()
                },
                client: Default::default(),
                request: Request {
                    api_key: "Produce".into(),
                    ..Request::default()
                },
                resources: vec![Resource {
                    resource_type: "Topic".into(),
                    name: topic.into(),
                    ..Resource::default()
                }],
                decision: Decision {
                    effect: effect.into(),
                    ..Decision::default()
                },
                masking: vec![],
                approval: None,
                payload: None,
            },
        )
    }

    fn filter(params: &[(&str, &str)]) -> Filter {
        Filter::from_params(params.iter().copied()).unwrap()
    }

    #[test]
    fn a_segment_is_skipped_only_when_nothing_in_it_can_match() {
        let mut index = SegmentIndex::new(100);
        index.add(&event("shop", "orders", "2026-12-01T10:00:00Z", "Allow"));
        index.add(&event(
            "billing",
            "invoices",
            "2026-12-01T11:30:00Z",
            "Deny",
        ));
        for (params, expected) in [
            (vec![], true),
            (vec![("namespace", "shop")], true),
            (vec![("namespace", "payroll")], false),
            (vec![("namespace", "shop"), ("serviceAccount", "app")], true),
            (vec![("serviceAccount", "other")], false),
            (vec![("topic", "invoices")], true),
            (vec![("topic", "secrets")], false),
            (vec![("since", "2026-12-01T11:30:00Z")], true),
            (vec![("since", "2026-12-01T11:30:01Z")], false),
            (vec![("until", "2026-12-01T10:00:00Z")], false),
            (vec![("until", "2026-12-01T10:00:01Z")], true),
            (vec![("decision", "deny")], true),
            (vec![("decision", "WouldDeny")], false),
            (vec![("apiKey", "produce")], true),
            (vec![("apiKey", "Fetch")], false),
            (vec![("session", "shop-session")], true),
            (vec![("session", "other")], false),
            (vec![("user", "alice")], true),
            (vec![("user", "mallory")], false),
            (vec![("type", "query")], false),
        ] {
            assert_eq!(index.may_match(&filter(&params)), expected, "{params:?}");
        }
        assert!(!SegmentIndex::new(0).may_match(&Filter::default()));
    }

    #[test]
    fn an_index_of_another_length_or_damaged_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let segment = dir.path().join("00000000000000000000.seg");
        let mut index = SegmentIndex::new(42);
        index.add(&event("shop", "orders", "2026-12-01T10:00:00Z", "Allow"));
        index.save(&segment).unwrap();
        assert_eq!(SegmentIndex::load(&segment, 42), Some(index));
        assert_eq!(SegmentIndex::load(&segment, 43), None);
        std::fs::write(SegmentIndex::path(&segment), b"{\"version\":1,").unwrap();
        assert_eq!(SegmentIndex::load(&segment, 42), None);
    }
}
