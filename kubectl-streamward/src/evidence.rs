//! `evidence`: a report for an auditor of what Streamward recorded in a period, per control of
//! NIST SP 800-53 and SOC 2, from the collector's query API as the kubectl user: the chain
//! verification (`/v1/verify`), counts (`/v1/aggregate`) and the events themselves
//! (`/v1/events`). Written as `evidence.json` and `evidence.html` (one page: inline CSS and
//! SVG, no external asset, so it opens offline and prints).
//!
//! Which evidence answers which control is the one table [`CONTROLS`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use streamward_api::audit::{AuditEvent, EventData};

use crate::audit::encode;
use crate::collector::{Collector, CollectorArgs};
use crate::policy::BadInput;

/// Events read for the report at most (the collector's largest page).
const MAX_EVENTS: usize = 100_000;
/// Sample events listed per kind of evidence.
const SAMPLES: usize = 10;

/// `evidence` flags.
#[derive(Args, Debug)]
pub struct EvidenceArgs {
    /// The start of the period (RFC 3339, or relative: `-24h`, `-7d`).
    #[arg(long, allow_hyphen_values = true)]
    pub from: String,
    /// The end of the period, exclusive (RFC 3339 or relative; `now`).
    #[arg(long, default_value = "now", allow_hyphen_values = true)]
    pub to: String,
    /// The frameworks: `nist-800-53`, `soc2` (comma-separated).
    #[arg(long, default_value = "nist-800-53,soc2")]
    pub controls: String,
    /// The folder the report is written to (created if missing).
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub collector: CollectorArgs,
}

/// A kind of evidence the report gathers once and the controls cite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// Events by decision.
    Decisions,
    /// Refused requests, with samples.
    Denied,
    /// Requests allowed by an AccessGrant.
    Grants,
    /// Held requests and who approved or denied them.
    Approvals,
    /// Values masked, by MaskingRule and topic.
    Masking,
    /// The policy configurations in force (config hashes), first and last seen.
    PolicyChanges,
    /// The workloads and users seen.
    Identities,
    /// Who read the audit trail.
    AuditReads,
    /// The hash chain and signed checkpoints, with the key's fingerprint.
    Chain,
    /// Sequence numbers that never arrived, and events proxies reported dropped.
    Gaps,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Decisions => "decisions",
            Kind::Denied => "denied",
            Kind::Grants => "grants",
            Kind::Approvals => "approvals",
            Kind::Masking => "masking",
            Kind::PolicyChanges => "policyChanges",
            Kind::Identities => "identities",
            Kind::AuditReads => "auditReads",
            Kind::Chain => "chain",
            Kind::Gaps => "gaps",
        }
    }
}

/// One control and the evidence that answers it.
struct Control {
    framework: &'static str,
    id: &'static str,
    title: &'static str,
    /// What the evidence shows for this control.
    statement: &'static str,
    evidence: &'static [Kind],
}

/// The controls and their evidence: the one mapping of the report.
const CONTROLS: &[Control] = &[
    Control {
        framework: "nist-800-53",
        id: "AU-2",
        title: "Event Logging",
        statement: "Every Kafka request through a proxy is logged with its decision; the workloads and users it came from.",
        evidence: &[Kind::Decisions, Kind::Identities],
    },
    Control {
        framework: "nist-800-53",
        id: "AU-3",
        title: "Content of Audit Records",
        statement: "Each record says what (API, resources), when, where (pod, client address), who (workload, user), the outcome and the rule that decided; sample records are linked.",
        evidence: &[Kind::Decisions, Kind::Denied],
    },
    Control {
        framework: "nist-800-53",
        id: "AU-6",
        title: "Audit Record Review, Analysis, and Reporting",
        statement: "Refused attempts are reported with their records; every read of the audit trail is itself recorded.",
        evidence: &[Kind::Denied, Kind::AuditReads],
    },
    Control {
        framework: "nist-800-53",
        id: "AU-9",
        title: "Protection of Audit Information",
        statement: "Records are hash-chained and checkpoints Ed25519-signed; the chain was verified for this report; reads of the trail are authorized and recorded.",
        evidence: &[Kind::Chain, Kind::AuditReads],
    },
    Control {
        framework: "nist-800-53",
        id: "AU-12",
        title: "Audit Record Generation",
        statement: "Records are generated at every proxy for every request; missing sequence numbers and events proxies dropped are counted.",
        evidence: &[Kind::Decisions, Kind::Gaps],
    },
    Control {
        framework: "nist-800-53",
        id: "AC-2",
        title: "Account Management",
        statement: "The workload identities and users that used Kafka, and the time-bound AccessGrants they used.",
        evidence: &[Kind::Identities, Kind::Grants],
    },
    Control {
        framework: "nist-800-53",
        id: "AC-3",
        title: "Access Enforcement",
        statement: "Policy decisions were enforced at the proxy: requests allowed, refused, and data masked.",
        evidence: &[Kind::Decisions, Kind::Denied, Kind::Masking],
    },
    Control {
        framework: "nist-800-53",
        id: "AC-6",
        title: "Least Privilege",
        statement: "Extra access was just-in-time (AccessGrants) or approved by people; sensitive fields were masked.",
        evidence: &[Kind::Grants, Kind::Approvals, Kind::Masking],
    },
    Control {
        framework: "nist-800-53",
        id: "SC-7",
        title: "Boundary Protection",
        statement: "The proxy is the boundary in front of the brokers: what it refused, under which policy configurations.",
        evidence: &[Kind::Denied, Kind::PolicyChanges],
    },
    Control {
        framework: "nist-800-53",
        id: "IR-4",
        title: "Incident Handling",
        statement: "Refused attempts to investigate, held requests decided by people, and gaps in the record.",
        evidence: &[Kind::Denied, Kind::Approvals, Kind::Gaps],
    },
    Control {
        framework: "soc2",
        id: "CC6.1",
        title: "Logical access security software, infrastructure, and architectures",
        statement: "Access to topics is decided by policy at the proxy and sensitive fields are masked; the policy configurations in force.",
        evidence: &[Kind::Decisions, Kind::Masking, Kind::PolicyChanges],
    },
    Control {
        framework: "soc2",
        id: "CC6.2",
        title: "Registration and authorization of users",
        statement: "The identities that used Kafka, the grants they were given and the approvals of people.",
        evidence: &[Kind::Identities, Kind::Grants, Kind::Approvals],
    },
    Control {
        framework: "soc2",
        id: "CC6.3",
        title: "Role-based access: authorize, modify, remove",
        statement: "Access granted for a time, approved per request, and the changes of policy configuration.",
        evidence: &[Kind::Grants, Kind::Approvals, Kind::PolicyChanges],
    },
    Control {
        framework: "soc2",
        id: "CC7.2",
        title: "Monitoring of system components for anomalies",
        statement: "Refused attempts, gaps in the record, and the integrity of the record itself.",
        evidence: &[Kind::Denied, Kind::Gaps, Kind::Chain],
    },
    Control {
        framework: "soc2",
        id: "CC7.3",
        title: "Evaluation of security events",
        statement: "Refused attempts with their records, decisions of approvers, and who reviewed the trail.",
        evidence: &[Kind::Denied, Kind::Approvals, Kind::AuditReads],
    },
];

/// A time flag: RFC 3339, `now`, or a signed duration from now (`-24h`).
fn instant(flag: &str, text: &str, now: Timestamp) -> Result<Timestamp, BadInput> {
    let text = text.trim();
    if text == "now" {
        return Ok(now);
    }
    if let Ok(at) = text.parse::<Timestamp>() {
        return Ok(at);
    }
    let (sign, rest) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    let bad = || {
        BadInput(format!(
            "{flag} {text:?} is not RFC 3339, `now` or like `-24h`"
        ))
    };
    let duration = crate::cluster::duration(rest).map_err(|_| bad())?;
    let duration: SignedDuration = if sign < 0 { -duration } else { duration };
    now.checked_add(duration).map_err(|_| bad())
}

/// What the events of the period show, gathered in one pass.
#[derive(Default)]
struct Gathered {
    events: usize,
    denied: Vec<Value>,
    denied_total: u64,
    grants: BTreeMap<String, u64>,
    grant_samples: Vec<Value>,
    approvals: Vec<Value>,
    approval_steps: BTreeMap<String, u64>,
    approvers: BTreeSet<String>,
    /// (rule, topic) → (events, values masked).
    masking: BTreeMap<(String, String), (u64, u64)>,
    /// config hash → (first seen, last seen, events).
    configs: BTreeMap<String, (Timestamp, Timestamp, u64)>,
    identities: BTreeMap<String, u64>,
    users: BTreeSet<String>,
    reads: Vec<Value>,
    reads_total: u64,
    dropped: u64,
}

fn sample(event: &AuditEvent, what: String) -> Value {
    json!({"id": event.id, "time": event.time, "what": what})
}

fn gather(events: &[AuditEvent]) -> Gathered {
    let mut g = Gathered {
        events: events.len(),
        ..Gathered::default()
    };
    for event in events {
        match &event.data {
            EventData::Request(r) => {
                let identity = format!("{}/{}", r.identity.namespace, r.identity.service_account);
                *g.identities.entry(identity.clone()).or_default() += 1;
                if let Some(user) = &r.identity.user {
                    g.users.insert(user.clone());
                }
                let resources: Vec<String> = r
                    .resources
                    .iter()
                    .map(|res| format!("{} {}:{}", res.operation, res.resource_type, res.name))
                    .collect();
                let who = match &r.identity.user {
                    Some(user) => format!("{identity} (user {user})"),
                    None => identity.clone(),
                };
                let what = format!(
                    "{who} {} {}: {} by {}",
                    r.request.api_key,
                    resources.join(", "),
                    r.decision.effect,
                    r.decision.rule
                );
                let effect = r.decision.effect.as_str();
                if matches!(effect, "Deny" | "Partial") || (r.decision.dry_run && effect != "Allow")
                {
                    g.denied_total += 1;
                    if g.denied.len() < SAMPLES {
                        g.denied.push(sample(event, what.clone()));
                    }
                }
                if r.decision.rule.starts_with("AccessGrant/") {
                    *g.grants.entry(r.decision.rule.clone()).or_default() += 1;
                    if g.grant_samples.len() < SAMPLES {
                        g.grant_samples.push(sample(event, what.clone()));
                    }
                }
                if let Some(approval) = &r.approval {
                    let step = serde_json::to_value(approval.step)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    *g.approval_steps.entry(step.clone()).or_default() += 1;
                    let mut text = format!("{step} {} for {what}", approval.request);
                    g.approvers.extend(approval.approvers.iter().cloned());
                    if !approval.approvers.is_empty() {
                        let _ = write!(text, "; approvers: {}", approval.approvers.join(", "));
                    }
                    if let Some(comment) = &approval.comment {
                        let _ = write!(text, "; comment: {comment}");
                    }
                    g.approvals.push(sample(event, text));
                }
                for masked in &r.masking {
                    for topic in r
                        .resources
                        .iter()
                        .filter(|res| res.resource_type == "Topic")
                    {
                        let entry = g
                            .masking
                            .entry((masked.rule.clone(), topic.name.clone()))
                            .or_default();
                        entry.0 += 1;
                        entry.1 += masked.fields;
                    }
                }
                let entry = g
                    .configs
                    .entry(r.decision.config_hash.clone())
                    .or_insert((event.time, event.time, 0));
                entry.0 = entry.0.min(event.time);
                entry.1 = entry.1.max(event.time);
                entry.2 += 1;
            }
            EventData::Dropped(d) => g.dropped += d.dropped,
            EventData::Query(q) => {
                g.reads_total += 1;
                if g.reads.len() < SAMPLES {
                    g.reads.push(sample(
                        event,
                        format!("{} read {} ({})", q.reader.user, q.path, q.status),
                    ));
                }
            }
        }
    }
    g
}

fn counts(groups: &Value, key: &str) -> Vec<(String, u64)> {
    groups["groups"]
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .map(|g| {
                    (
                        g[key].as_str().unwrap_or("(none)").to_owned(),
                        g["count"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The first problem of a verification, in words naming the record.
fn problem_text(problem: &Value) -> String {
    let mut text = problem["kind"].as_str().unwrap_or("damage").to_owned();
    if let Some(segment) = problem["segment"].as_str() {
        let _ = write!(text, " in segment {segment}");
    }
    if let Some(line) = problem["line"].as_u64() {
        let _ = write!(text, " line {line}");
    }
    if let Some(index) = problem["index"].as_u64() {
        let _ = write!(text, " (record {index}");
        if let Some(id) = problem["eventId"].as_str() {
            let _ = write!(text, ", event {id}");
        }
        text.push(')');
    }
    let _ = write!(text, ": {}", problem["message"].as_str().unwrap_or(""));
    text
}

/// The evidence of each kind: (findings in words, data for the JSON).
fn evidence(
    kind: Kind,
    g: &Gathered,
    decisions: &[(String, u64)],
    verification: &Value,
) -> (Vec<String>, Value) {
    let list = |items: &[(String, u64)]| {
        items
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match kind {
        Kind::Decisions => {
            let total: u64 = decisions.iter().map(|(_, n)| n).sum();
            (
                vec![format!(
                    "{total} events recorded in the period, by decision: {}",
                    if decisions.is_empty() {
                        "none".to_owned()
                    } else {
                        list(decisions)
                    }
                )],
                json!(
                    decisions
                        .iter()
                        .map(|(d, n)| json!({"decision": d, "count": n}))
                        .collect::<Vec<_>>()
                ),
            )
        }
        Kind::Denied => (
            vec![format!(
                "{} requests refused (Deny, Partial, or refusals a DryRun policy would make){}",
                g.denied_total,
                if g.denied.is_empty() {
                    String::new()
                } else {
                    format!("; {} sample records linked", g.denied.len())
                }
            )],
            json!({"total": g.denied_total, "samples": g.denied}),
        ),
        Kind::Grants => {
            let grants: Vec<(String, u64)> =
                g.grants.iter().map(|(k, n)| (k.clone(), *n)).collect();
            (
                vec![if grants.is_empty() {
                    "no request was allowed by an AccessGrant".to_owned()
                } else {
                    format!("requests allowed by AccessGrants: {}", list(&grants))
                }],
                json!({"byGrant": g.grants, "samples": g.grant_samples}),
            )
        }
        Kind::Approvals => {
            let steps: Vec<(String, u64)> = g
                .approval_steps
                .iter()
                .map(|(k, n)| (k.clone(), *n))
                .collect();

            (
                vec![if steps.is_empty() {
                    "no request was held for approval".to_owned()
                } else {
                    format!(
                        "held requests by step: {}; approvers: {}",
                        list(&steps),
                        if g.approvers.is_empty() {
                            "none".to_owned()
                        } else {
                            g.approvers.iter().cloned().collect::<Vec<_>>().join(", ")
                        }
                    )
                }],
                json!({"bySteps": g.approval_steps, "approvers": g.approvers, "events": g.approvals}),
            )
        }
        Kind::Masking => {
            let rows: Vec<Value> = g
                .masking
                .iter()
                .map(|((rule, topic), (events, fields))| {
                    json!({"rule": rule, "topic": topic, "events": events, "valuesMasked": fields})
                })
                .collect();
            let values: u64 = g.masking.values().map(|(_, f)| f).sum();
            let rules: BTreeSet<&str> = g.masking.keys().map(|(r, _)| r.as_str()).collect();
            let topics: BTreeSet<&str> = g.masking.keys().map(|(_, t)| t.as_str()).collect();
            (
                vec![if rows.is_empty() {
                    "no value was masked".to_owned()
                } else {
                    format!(
                        "{values} values masked by {} MaskingRules ({}) on {} topics ({})",
                        rules.len(),
                        rules.into_iter().collect::<Vec<_>>().join(", "),
                        topics.len(),
                        topics.into_iter().collect::<Vec<_>>().join(", ")
                    )
                }],
                json!(rows),
            )
        }
        Kind::PolicyChanges => {
            let mut configs: Vec<(&String, &(Timestamp, Timestamp, u64))> =
                g.configs.iter().collect();
            configs.sort_by_key(|(_, (first, _, _))| *first);
            let rows: Vec<Value> = configs
                .iter()
                .map(|(hash, (first, last, n))| json!({"configHash": hash, "firstSeen": first, "lastSeen": last, "events": n}))
                .collect();
            (
                vec![format!(
                    "{} policy configurations (config hashes) decided requests in the period{}",
                    rows.len(),
                    match configs.len() {
                        0 | 1 => String::new(),
                        n => format!(", so the policy changed {} times", n - 1),
                    }
                )],
                json!(rows),
            )
        }
        Kind::Identities => (
            vec![format!(
                "{} workload identities ({}) and {} users ({}) made requests",
                g.identities.len(),
                g.identities.keys().cloned().collect::<Vec<_>>().join(", "),
                g.users.len(),
                if g.users.is_empty() {
                    "none".to_owned()
                } else {
                    g.users.iter().cloned().collect::<Vec<_>>().join(", ")
                }
            )],
            json!({"identities": g.identities, "users": g.users}),
        ),
        Kind::AuditReads => (
            vec![format!(
                "{} reads of the audit trail recorded (who, what, how many results)",
                g.reads_total
            )],
            json!({"total": g.reads_total, "samples": g.reads}),
        ),
        Kind::Chain => {
            let ok = verification["ok"].as_bool() == Some(true);
            let lines = verification["checkpointLines"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let valid = lines.iter().filter(|c| c["signature"] == "valid").count();
            let mut findings = vec![if ok {
                format!(
                    "chain verified: {} records in {} segments unbroken",
                    verification["records"], verification["segments"]
                )
            } else {
                format!(
                    "CHAIN VERIFICATION FAILED: {}",
                    problem_text(&verification["problems"][0])
                )
            }];
            findings.push(format!(
                "{} checkpoints read, {valid} with a valid Ed25519 signature; {} records after the newest not yet signed",
                lines.len(),
                verification["unsignedRecords"]
            ));
            findings.push(format!(
                "public key fingerprint (SHA-256): {}",
                verification["key"]["fingerprint"].as_str().unwrap_or("?")
            ));
            (
                findings,
                json!({
                    "ok": ok,
                    "problems": verification["problems"],
                    "records": verification["records"],
                    "checkpoints": lines,
                    "fingerprint": verification["key"]["fingerprint"],
                }),
            )
        }
        Kind::Gaps => {
            let gaps = verification["gaps"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let mut findings = vec![if gaps.is_empty() {
                "no proxy session is missing sequence numbers".to_owned()
            } else {
                format!(
                    "{} proxy sessions are missing sequence numbers (events never delivered)",
                    gaps.len()
                )
            }];
            for gap in gaps.iter().take(SAMPLES) {
                let ranges: Vec<String> = gap["missing"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .map(|pair| match (pair[0].as_u64(), pair[1].as_u64()) {
                                (Some(a), Some(b)) if a == b => a.to_string(),
                                (Some(a), Some(b)) => format!("{a}-{b}"),
                                _ => "?".to_owned(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                findings.push(format!(
                    "session {} of {}: sequence numbers {} missing",
                    gap["session"].as_str().unwrap_or("?"),
                    gap["identity"].as_str().unwrap_or("?"),
                    ranges.join(", ")
                ));
            }
            findings.push(format!(
                "{} events reported dropped by proxies in the period",
                g.dropped
            ));
            (
                findings,
                json!({"sessions": gaps, "droppedReported": g.dropped}),
            )
        }
    }
}

/// The report as written to evidence.json: whether the trail verified comes first.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    verified: bool,
    /// The first problem the chain verification found, naming the record.
    verification_problem: Option<String>,
    period: Value,
    generated_at: Timestamp,
    collector: String,
    events_read: usize,
    events_truncated: bool,
    controls: Vec<Value>,
    evidence: serde_json::Map<String, Value>,
    charts: Value,
}

/// Writes the report; fails only when the collector cannot be asked.
pub async fn run(args: EvidenceArgs) -> anyhow::Result<()> {
    let now = Timestamp::now();
    let from = instant("--from", &args.from, now)?;
    let to = instant("--to", &args.to, now)?;
    if from >= to {
        return Err(BadInput(format!("--from {from} is not before --to {to}")).into());
    }
    let frameworks: Vec<&str> = args.controls.split(',').map(str::trim).collect();
    for framework in &frameworks {
        if !CONTROLS.iter().any(|c| c.framework == *framework) {
            return Err(BadInput(format!(
                "--controls {framework:?}: the frameworks are nist-800-53 and soc2"
            ))
            .into());
        }
    }
    let collector = Collector::connect(&args.collector).await?;
    let period = format!(
        "since={}&until={}",
        encode(&from.to_string()),
        encode(&to.to_string())
    );
    let verification = collector.get_json("/v1/verify").await?;
    let decisions = collector
        .get_json(&format!("/v1/aggregate?by=decision&{period}"))
        .await?;
    let over_time = collector
        .get_json(&format!(
            "/v1/aggregate?by=hour,decision&limit=10000&{period}"
        ))
        .await?;
    let top_denied = collector
        .get_json(&format!(
            "/v1/aggregate?by=identity&decision=Deny&limit=10&{period}"
        ))
        .await?;
    let events = collector
        .events(&format!(
            "/v1/events?type=request,dropped,query&format=ndjson&limit={MAX_EVENTS}&{period}"
        ))
        .await?;

    let gathered = gather(&events);
    let decisions = counts(&decisions, "decision");
    let verified = verification["ok"].as_bool() == Some(true);
    let problem = (!verified).then(|| problem_text(&verification["problems"][0]));

    let mut kinds: BTreeMap<Kind, (Vec<String>, Value)> = BTreeMap::new();
    let mut controls = Vec::new();
    for control in CONTROLS
        .iter()
        .filter(|c| frameworks.contains(&c.framework))
    {
        let mut findings = Vec::new();
        for kind in control.evidence {
            let (text, _) = kinds
                .entry(*kind)
                .or_insert_with(|| evidence(*kind, &gathered, &decisions, &verification));
            findings.extend(text.iter().cloned());
        }
        controls.push(json!({
            "framework": control.framework,
            "control": control.id,
            "title": control.title,
            "statement": control.statement,
            "evidence": control.evidence.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "findings": findings,
        }));
    }
    let report = Report {
        verified,
        verification_problem: problem.clone(),
        period: json!({"from": from, "to": to}),
        generated_at: now,
        collector: collector.location(),
        events_read: gathered.events,
        events_truncated: gathered.events >= MAX_EVENTS,
        controls: controls.clone(),
        evidence: kinds
            .iter()
            .map(|(k, (_, v))| (k.name().to_owned(), v.clone()))
            .collect(),
        charts: json!({
            "decisionsOverTime": over_time["groups"],
            "topDeniedIdentities": top_denied["groups"],
        }),
    };

    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let json_path = args.output.join("evidence.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let html_path = args.output.join("evidence.html");
    std::fs::write(&html_path, html(&serde_json::to_value(&report)?, &events))
        .with_context(|| format!("writing {}", html_path.display()))?;
    match &problem {
        None => println!(
            "wrote {} and {}: chain verified, {} events, {} controls",
            json_path.display(),
            html_path.display(),
            gathered.events,
            controls.len()
        ),
        Some(problem) => println!(
            "wrote {} and {}: CHAIN VERIFICATION FAILED: {problem}",
            json_path.display(),
            html_path.display()
        ),
    }
    Ok(())
}

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn color(decision: &str) -> &'static str {
    match decision {
        "Allow" => "#2e7d32",
        "Deny" => "#c62828",
        "Partial" => "#ef6c00",
        "RequireApproval" => "#6a1b9a",
        "WouldDeny" => "#f9a825",
        "Query" => "#1565c0",
        _ => "#757575",
    }
}

/// Decisions per hour, as stacked bars.
fn chart_over_time(groups: &Value) -> String {
    let mut hours: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for g in groups.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        hours
            .entry(g["hour"].as_str().unwrap_or("?").to_owned())
            .or_default()
            .push((
                g["decision"].as_str().unwrap_or("?").to_owned(),
                g["count"].as_u64().unwrap_or(0),
            ));
    }
    let (width, height, left, bottom) = (720.0, 220.0, 40.0, 40.0);
    let max = hours
        .values()
        .map(|d| d.iter().map(|(_, n)| n).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let slot = (width - left) / hours.len().max(1) as f64;
    let mut svg = format!(
        "<svg role=\"img\" aria-label=\"Decisions over time\" viewBox=\"0 0 {width} {height}\" width=\"100%\">"
    );
    let _ = write!(
        svg,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{width}\" y2=\"{}\" stroke=\"#333\"/>",
        height - bottom,
        height - bottom
    );
    let _ = write!(
        svg,
        "<text x=\"0\" y=\"12\" font-size=\"10\">{}</text>",
        max as u64
    );
    let mut decisions = BTreeSet::new();
    for (i, (hour, counts)) in hours.iter().enumerate() {
        let x = left + i as f64 * slot + slot * 0.1;
        let mut y = height - bottom;
        for (decision, n) in counts {
            decisions.insert(decision.clone());
            let h = *n as f64 / max * (height - bottom - 20.0);
            y -= h;
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"><title>{} {}: {n}</title></rect>",
                slot * 0.8,
                color(decision),
                esc(hour),
                esc(decision)
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{x:.1}\" y=\"{}\" font-size=\"9\">{}</text>",
            height - bottom + 12.0,
            esc(hour.get(5..16).unwrap_or(hour))
        );
    }
    for (i, decision) in decisions.iter().enumerate() {
        let x = left + i as f64 * 110.0;
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\" font-size=\"10\">{}</text>",
            height - 14.0,
            color(decision),
            x + 14.0,
            height - 5.0,
            esc(decision)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The identities refused most, as horizontal bars.
fn chart_top_denied(groups: &Value) -> String {
    let rows: Vec<(String, u64)> = groups
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|g| {
            (
                g["identity"].as_str().unwrap_or("(none)").to_owned(),
                g["count"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let (width, row, label) = (720.0, 22.0, 240.0);
    let height = (rows.len().max(1) as f64) * row + 10.0;
    let max = rows.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1) as f64;
    let mut svg = format!(
        "<svg role=\"img\" aria-label=\"Top denied identities\" viewBox=\"0 0 {width} {height}\" width=\"100%\">"
    );
    if rows.is_empty() {
        svg.push_str(
            "<text x=\"0\" y=\"16\" font-size=\"12\">no request was denied in the period</text>",
        );
    }
    for (i, (identity, n)) in rows.iter().enumerate() {
        let y = i as f64 * row + 4.0;
        let w = *n as f64 / max * (width - label - 50.0);
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{:.1}\" font-size=\"11\">{}</text><rect x=\"{label}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"#c62828\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\">{n}</text>",
            y + 13.0,
            esc(identity),
            row - 6.0,
            label + w + 4.0,
            y + 13.0
        );
    }
    svg.push_str("</svg>");
    svg
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222;line-height:1.4}
h1{font-size:1.6rem}h2{font-size:1.2rem;border-bottom:1px solid #ccc;padding-bottom:.2rem;margin-top:2rem}
h3{font-size:1rem;margin-bottom:.2rem}.failed{border:3px solid #c62828;background:#ffebee;padding:1rem;font-size:1.1rem}
.ok{border:2px solid #2e7d32;background:#e8f5e9;padding:.6rem 1rem}section.control{break-inside:avoid;margin-bottom:1.2rem}
.statement{color:#555;font-style:italic}table{border-collapse:collapse;width:100%;font-size:.85rem}
td,th{border:1px solid #ccc;padding:.2rem .4rem;text-align:left;vertical-align:top}code,pre{font-size:.75rem;white-space:pre-wrap;word-break:break-all}
.event{break-inside:avoid;border-top:1px dotted #aaa}
@media print{body{margin:0;max-width:none}a{color:inherit;text-decoration:none}h2{break-after:avoid}}";

fn anchor(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("event-{safe}")
}

/// The page: the verification first (a failure before anything else), then the charts, the
/// controls, the evidence with its samples, and the sample events themselves.
fn html(report: &Value, events: &[AuditEvent]) -> String {
    let mut page =
        String::from("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    let _ = write!(
        page,
        "<title>Streamward evidence {} to {}</title><style>{STYLE}</style></head><body>",
        esc(report["period"]["from"].as_str().unwrap_or("")),
        esc(report["period"]["to"].as_str().unwrap_or(""))
    );
    match report["verificationProblem"].as_str() {
        Some(problem) => {
            let _ = write!(
                page,
                "<div class=\"failed\" id=\"verification\"><strong>CHAIN VERIFICATION FAILED.</strong> The audit trail does not verify: {}. The evidence below comes from a trail that was changed after it was written and cannot be relied on as it stands.</div>",
                esc(problem)
            );
        }
        None => {
            let _ = write!(
                page,
                "<div class=\"ok\" id=\"verification\">Chain verified: the audit trail is unbroken and its signed checkpoints agree (key fingerprint <code>{}</code>).</div>",
                esc(report["evidence"]["chain"]["fingerprint"]
                    .as_str()
                    .unwrap_or("?"))
            );
        }
    }
    let _ = write!(
        page,
        "<h1>Streamward audit evidence</h1><p>Period: <strong>{}</strong> to <strong>{}</strong> (exclusive). Generated {} from the collector at <code>{}</code>; {} events read{}.</p>",
        esc(report["period"]["from"].as_str().unwrap_or("")),
        esc(report["period"]["to"].as_str().unwrap_or("")),
        esc(report["generatedAt"].as_str().unwrap_or("")),
        esc(report["collector"].as_str().unwrap_or("")),
        report["eventsRead"],
        if report["eventsTruncated"] == true {
            " (the first 100,000 only)"
        } else {
            ""
        }
    );
    page.push_str("<h2>Decisions over time (per hour)</h2>");
    page.push_str(&chart_over_time(&report["charts"]["decisionsOverTime"]));
    page.push_str("<h2>Top denied identities</h2>");
    page.push_str(&chart_top_denied(&report["charts"]["topDeniedIdentities"]));

    page.push_str("<h2>Controls</h2>");
    for control in report["controls"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let id = control["control"].as_str().unwrap_or("");
        let _ = write!(
            page,
            "<section class=\"control\" id=\"control-{}\"><h3>{} {} — {}</h3><p class=\"statement\">{}</p><ul>",
            esc(id),
            if control["framework"] == "soc2" {
                "SOC 2"
            } else {
                "NIST SP 800-53"
            },
            esc(id),
            esc(control["title"].as_str().unwrap_or("")),
            esc(control["statement"].as_str().unwrap_or(""))
        );
        for finding in control["findings"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let _ = write!(page, "<li>{}</li>", esc(finding.as_str().unwrap_or("")));
        }
        page.push_str("<li>Evidence: ");
        let links: Vec<String> = control["evidence"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .filter_map(|k| k.as_str())
            .map(|k| format!("<a href=\"#evidence-{k}\">{k}</a>"))
            .collect();
        page.push_str(&links.join(", "));
        page.push_str("</li></ul></section>");
    }

    page.push_str("<h2>Evidence</h2>");
    let mut linked = BTreeSet::new();
    if let Some(kinds) = report["evidence"].as_object() {
        for (name, data) in kinds {
            let _ = write!(page, "<h3 id=\"evidence-{}\">{}</h3>", esc(name), esc(name));
            let samples: Vec<&Value> = ["samples", "events"]
                .iter()
                .filter_map(|k| data[*k].as_array())
                .flatten()
                .collect();
            if !samples.is_empty() {
                page.push_str("<table><tr><th>time</th><th>event</th><th>what</th></tr>");
                for s in samples {
                    let id = s["id"].as_str().unwrap_or("");
                    linked.insert(id.to_owned());
                    let _ = write!(
                        page,
                        "<tr><td>{}</td><td><a href=\"#{}\">{}</a></td><td>{}</td></tr>",
                        esc(s["time"].as_str().unwrap_or("")),
                        anchor(id),
                        esc(id),
                        esc(s["what"].as_str().unwrap_or(""))
                    );
                }
                page.push_str("</table>");
            }
            let mut rest = data.clone();
            if let Some(object) = rest.as_object_mut() {
                object.remove("samples");
                object.remove("events");
            }
            let _ = write!(
                page,
                "<pre>{}</pre>",
                esc(&serde_json::to_string_pretty(&rest).unwrap_or_default())
            );
        }
    }

    page.push_str("<h2>Sample events</h2>");
    for event in events.iter().filter(|e| linked.contains(&e.id)) {
        let _ = write!(
            page,
            "<div class=\"event\" id=\"{}\"><h3>{}</h3><pre>{}</pre></div>",
            anchor(&event.id),
            esc(&event.id),
            esc(&serde_json::to_string_pretty(event).unwrap_or_default())
        );
    }
    page.push_str("</body></html>\n");
    page
}
