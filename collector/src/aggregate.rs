//! Counts of events grouped by one or more dimensions: events by decision, top denied
//! identities, decisions per hour (what an evidence report charts).

use std::collections::HashMap;

use anyhow::{Result, bail};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Unit};
use serde_json::{Map, Value, json};
use streamward_api::audit::{AuditEvent, EventData};

use crate::store;

/// What events are grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dimension {
    /// The decision: `Allow`, `Deny`, `Partial`, `RequireApproval`, `WouldDeny` (a DryRun
    /// refusal), `Dropped` (a proxy's report of lost events) or `Query`.
    Decision,
    /// The workload, `<namespace>/<serviceaccount>`.
    Identity,
    /// The workload's namespace.
    Namespace,
    /// The user the client authenticated as (the reader, for queries); `null` when none.
    User,
    /// Each topic the request touched (an event with two topics counts for both; one with
    /// none is not counted in any topic group).
    Topic,
    /// The Kafka API.
    Api,
    /// The rule that decided.
    Rule,
    /// The hour of the event's time (UTC, RFC 3339).
    Hour,
    /// The day of the event's time (UTC, RFC 3339).
    Day,
}

impl Dimension {
    /// The parameter value and the key in the answer.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::Decision => "decision",
            Dimension::Identity => "identity",
            Dimension::Namespace => "namespace",
            Dimension::User => "user",
            Dimension::Topic => "topic",
            Dimension::Api => "api",
            Dimension::Rule => "rule",
            Dimension::Hour => "hour",
            Dimension::Day => "day",
        }
    }

    fn is_time(self) -> bool {
        matches!(self, Dimension::Hour | Dimension::Day)
    }

    /// Parses `by`: one to three comma-separated dimensions.
    pub fn parse_list(text: &str) -> Result<Vec<Dimension>> {
        let all = [
            Dimension::Decision,
            Dimension::Identity,
            Dimension::Namespace,
            Dimension::User,
            Dimension::Topic,
            Dimension::Api,
            Dimension::Rule,
            Dimension::Hour,
            Dimension::Day,
        ];
        let mut dimensions = Vec::new();
        for name in text.split(',').map(str::trim) {
            let Some(dimension) = all.iter().find(|d| d.name().eq_ignore_ascii_case(name)) else {
                let names: Vec<&str> = all.iter().map(|d| d.name()).collect();
                bail!(
                    "cannot group by {name:?}: by is one or more of {}",
                    names.join(", ")
                );
            };
            if dimensions.contains(dimension) {
                bail!("by names {name:?} twice");
            }
            dimensions.push(*dimension);
        }
        if dimensions.len() > 3 {
            bail!("by takes at most three dimensions");
        }
        Ok(dimensions)
    }

    /// The values of this dimension for `event` (several for topics).
    fn values(self, event: &AuditEvent) -> Vec<Option<String>> {
        let record = event.record();
        let one = |value: Option<String>| vec![value];
        match self {
            Dimension::Decision => one(Some(match &event.data {
                EventData::Request(r) if r.decision.dry_run => "WouldDeny".into(),
                EventData::Request(r) => r.decision.effect.clone(),
                EventData::Dropped(_) => "Dropped".into(),
                EventData::Query(_) => "Query".into(),
            })),
            Dimension::Identity => one(event
                .identity()
                .map(|i| store::identity_key(&i.namespace, &i.service_account))),
            Dimension::Namespace => one(event.identity().map(|i| i.namespace.clone())),
            Dimension::User => one(match &event.data {
                EventData::Query(q) => Some(q.reader.user.clone()),
                _ => event.identity().and_then(|i| i.user.clone()),
            }),
            Dimension::Topic => {
                let mut topics: Vec<Option<String>> = record
                    .map(|r| {
                        r.resources
                            .iter()
                            .filter(|res| res.resource_type == "Topic")
                            .map(|res| Some(res.name.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                topics.sort();
                topics.dedup();
                topics
            }
            Dimension::Api => one(record.map(|r| r.request.api_key.clone())),
            Dimension::Rule => one(record.map(|r| r.decision.rule.clone())),
            Dimension::Hour => one(truncate(event.time, Unit::Hour)),
            Dimension::Day => one(truncate(event.time, Unit::Day)),
        }
    }
}

fn truncate(time: Timestamp, unit: Unit) -> Option<String> {
    let zoned = time.to_zoned(TimeZone::UTC);
    let start = match unit {
        Unit::Day => zoned.start_of_day().ok()?,
        _ => zoned
            .round(
                jiff::ZonedRound::new()
                    .smallest(unit)
                    .mode(jiff::RoundMode::Trunc),
            )
            .ok()?,
    };
    Some(start.timestamp().to_string())
}

/// Counts being gathered.
pub struct Aggregation {
    by: Vec<Dimension>,
    counts: HashMap<Vec<Option<String>>, u64>,
    total: u64,
}

impl Aggregation {
    /// Counts grouped by `by`.
    pub fn new(by: Vec<Dimension>) -> Aggregation {
        Aggregation {
            by,
            counts: HashMap::new(),
            total: 0,
        }
    }

    /// Counts one event in each group it belongs to.
    pub fn add(&mut self, event: &AuditEvent) {
        self.total += 1;
        let mut keys: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(self.by.len())];
        for dimension in &self.by {
            let values = dimension.values(event);
            keys = keys
                .into_iter()
                .flat_map(|key| {
                    values.iter().map(move |value| {
                        let mut key = key.clone();
                        key.push(value.clone());
                        key
                    })
                })
                .collect();
        }
        for key in keys {
            *self.counts.entry(key).or_default() += 1;
        }
    }

    /// The answer: `{by, total, groups: [{<dimension>: value, …, count}], truncated}`, at most
    /// `limit` groups. Groups over time come in time order; others largest first.
    pub fn finish(self, limit: usize) -> Value {
        let mut groups: Vec<(Vec<Option<String>>, u64)> = self.counts.into_iter().collect();
        if self.by.iter().any(|d| d.is_time()) {
            groups.sort();
        } else {
            groups.sort_by(|(ka, ca), (kb, cb)| cb.cmp(ca).then_with(|| ka.cmp(kb)));
        }
        let truncated = groups.len() > limit;
        groups.truncate(limit);
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(key, count)| {
                let mut group = Map::new();
                for (dimension, value) in self.by.iter().zip(key) {
                    group.insert(dimension.name().into(), json!(value));
                }
                group.insert("count".into(), json!(count));
                Value::Object(group)
            })
            .collect();
        let by: Vec<&str> = self.by.iter().map(|d| d.name()).collect();
        json!({
            "by": by,
            "total": self.total,
            "groups": groups,
            "truncated": truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamward_api::audit::{Decision, Identity, Request, RequestRecord, Resource};

    fn event(namespace: &str, effect: &str, time: &str, topics: &[&str]) -> AuditEvent {
        AuditEvent::request(
            time.parse().unwrap(),
            RequestRecord {
                session_id: "s".into(),
                sequence: 1,
                identity: Identity {
                    namespace: namespace.into(),
                    service_account: "app".into(),
                    ..Identity::default()
                },
                client: Default::default(),
                request: Request {
                    api_key: "Produce".into(),
                    ..Request::default()
                },
                resources: topics
                    .iter()
                    .map(|t| Resource {
                        resource_type: "Topic".into(),
                        name: t.to_string(),
                        ..Resource::default()
                    })
                    .collect(),
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

    fn aggregate(by: &str, events: &[AuditEvent]) -> Value {
        let mut aggregation = Aggregation::new(Dimension::parse_list(by).unwrap());
        for event in events {
            aggregation.add(event);
        }
        aggregation.finish(100)
    }

    #[test]
    fn counts_by_decision_identity_topic_and_hour() {
        let events = [
            event("shop", "Allow", "2026-12-01T10:05:00Z", &["orders"]),
            event(
                "shop",
                "Deny",
                "2026-12-01T10:59:59Z",
                &["orders", "secrets"],
            ),
            event("billing", "Deny", "2026-12-01T11:00:00Z", &[]),
        ];
        assert_eq!(
            aggregate("decision", &events)["groups"],
            json!([{"decision": "Deny", "count": 2}, {"decision": "Allow", "count": 1}])
        );
        assert_eq!(
            aggregate("topic", &events)["groups"],
            json!([{"topic": "orders", "count": 2}, {"topic": "secrets", "count": 1}])
        );
        assert_eq!(
            aggregate("hour,decision", &events)["groups"],
            json!([
                {"hour": "2026-12-01T10:00:00Z", "decision": "Allow", "count": 1},
                {"hour": "2026-12-01T10:00:00Z", "decision": "Deny", "count": 1},
                {"hour": "2026-12-01T11:00:00Z", "decision": "Deny", "count": 1},
            ])
        );
        assert_eq!(
            aggregate("day", &events)["groups"],
            json!([{"day": "2026-12-01T00:00:00Z", "count": 3}])
        );
        let by_identity = aggregate("identity", &events);
        assert_eq!(by_identity["total"], 3);
        assert_eq!(
            by_identity["groups"][0],
            json!({"identity": "shop/app", "count": 2})
        );
        assert!(Dimension::parse_list("colour").is_err());
        assert!(Dimension::parse_list("hour,hour").is_err());
    }
}
