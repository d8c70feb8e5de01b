//! `audit`: the audit trail, from the collector's query API (`GET /v1/events`), as the kubectl
//! user: through the API server's service proxy or `--collector-url` (see [`crate::collector`]),
//! with the kubeconfig's bearer token (or `--token`); the collector decides what that caller may
//! read.
//!
//! Events are fetched as NDJSON and printed here as a table, JSON (one event per line) or CSV,
//! so the output is the same whatever the collector's own formats. `--follow` asks again every
//! `--interval` for what came since the last event printed.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};
use jiff::Timestamp;
use streamward_api::audit::{AuditEvent, EventData};

use crate::collector::{Collector, CollectorArgs};
use crate::policy::BadInput;

/// `audit` flags.
#[derive(Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    pub collector: CollectorArgs,
    /// The workload: `namespace/serviceaccount`, or a service account of `--namespace`.
    #[arg(long)]
    pub identity: Option<String>,
    /// The workload's namespace (default: every namespace the caller may read).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The user the client authenticated to the proxy as.
    #[arg(long)]
    pub user: Option<String>,
    /// A topic among the request's resources.
    #[arg(long)]
    pub topic: Option<String>,
    /// The decision: Allow, Deny, Partial, RequireApproval, or WouldDeny (DryRun refusals).
    #[arg(long)]
    pub decision: Option<String>,
    /// The Kafka API: Produce, Fetch, DeleteTopics, ...
    #[arg(long)]
    pub api: Option<String>,
    /// The proxy session.
    #[arg(long)]
    pub session: Option<String>,
    /// The kinds of event, comma-separated: `request`, `dropped` (the default: the proxies'
    /// events) and `query` (who read the audit trail, recorded by the collector).
    #[arg(long = "type", value_name = "KINDS")]
    pub kinds: Option<String>,
    /// From (RFC 3339, or relative: `-15m`, `-24h`, `-7d`).
    #[arg(long, alias = "since", allow_hyphen_values = true)]
    pub from: Option<String>,
    /// Until (exclusive; RFC 3339 or relative).
    #[arg(long, alias = "until", allow_hyphen_values = true)]
    pub to: Option<String>,
    /// At most this many events (per poll with --follow).
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// The output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Keep polling for new events.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How often --follow polls.
    #[arg(long, default_value = "2s")]
    pub interval: String,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// One event (CloudEvents JSON) per line.
    Json,
    /// RFC 4180 CSV with a header line.
    Csv,
}

const COLUMNS: [&str; 8] = [
    "time",
    "identity",
    "user",
    "api",
    "resources",
    "decision",
    "rule",
    "session",
];

/// The query parameters the collector takes.
pub fn query_params(args: &AuditArgs) -> Result<Vec<(&'static str, String)>, BadInput> {
    let mut params = Vec::new();
    let mut push = |name, value: &Option<String>| {
        if let Some(value) = value {
            params.push((name, value.clone()));
        }
    };
    push("user", &args.user);
    push("topic", &args.topic);
    push("decision", &args.decision);
    push("apiKey", &args.api);
    push("session", &args.session);
    push("type", &args.kinds);
    push("since", &args.from);
    push("until", &args.to);
    match (&args.identity, &args.namespace) {
        (Some(identity), namespace) => {
            let (ns, sa) = match identity.split_once('/') {
                Some((ns, sa)) => (Some(ns.to_owned()), sa.to_owned()),
                None => (namespace.clone(), identity.clone()),
            };
            if sa.is_empty() || sa.contains('/') || ns.as_deref() == Some("") {
                return Err(BadInput(format!(
                    "--identity {identity:?} is not `namespace/serviceaccount` or `serviceaccount`"
                )));
            }
            if let Some(ns) = ns {
                params.push(("namespace", ns));
            }
            params.push(("serviceAccount", sa));
        }
        (None, Some(ns)) => params.push(("namespace", ns.clone())),
        (None, None) => {}
    }
    params.push(("limit", args.limit.to_string()));
    params.push(("format", "ndjson".to_owned()));
    Ok(params)
}

pub(crate) fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Runs the query (and keeps polling with `--follow`).
pub async fn run(args: AuditArgs) -> anyhow::Result<()> {
    let interval = crate::cluster::duration(&args.interval)?;
    let interval = Duration::try_from(interval)
        .map_err(|_| BadInput(format!("--interval {:?} is negative", args.interval)))?;
    let mut params = query_params(&args)?;
    let collector = Collector::connect(&args.collector).await?;
    let mut out = std::io::stdout().lock();
    let mut printed_header = false;
    // Events at the last printed instant, so a poll from that instant skips them.
    let mut last: Option<(Timestamp, HashSet<String>)> = None;
    loop {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        let events = collector
            .events(&format!("/v1/events?{}", query.join("&")))
            .await?;
        let fresh: Vec<AuditEvent> = events
            .into_iter()
            .filter(|e| {
                last.as_ref().is_none_or(|(at, seen)| {
                    e.time > *at || (e.time == *at && !seen.contains(&e.id))
                })
            })
            .collect();
        if !printed_header || !fresh.is_empty() {
            write_events(&mut out, args.output, &fresh, !printed_header, args.follow)?;
            printed_header = true;
        }
        out.flush()?;
        if !args.follow {
            return Ok(());
        }
        for event in &fresh {
            match &mut last {
                Some((at, seen)) if *at == event.time => {
                    seen.insert(event.id.clone());
                }
                _ => last = Some((event.time, HashSet::from([event.id.clone()]))),
            }
        }
        if let Some((at, _)) = &last {
            params.retain(|(k, _)| *k != "since");
            params.push(("since", at.to_string()));
        }
        tokio::time::sleep(interval).await;
    }
}

fn row(event: &AuditEvent) -> [String; 8] {
    let time = event.time.to_string();
    match &event.data {
        EventData::Request(r) => [
            time,
            format!("{}/{}", r.identity.namespace, r.identity.service_account),
            r.identity.user.clone().unwrap_or_default(),
            r.request.api_key.clone(),
            r.resources
                .iter()
                .map(|res| format!("{}:{}:{}", res.resource_type, res.name, res.operation))
                .collect::<Vec<_>>()
                .join(" "),
            if r.decision.dry_run {
                format!("{} (DryRun would refuse)", r.decision.effect)
            } else {
                r.decision.effect.clone()
            },
            r.decision.rule.clone(),
            format!("{}#{}", r.session_id, r.sequence),
        ],
        EventData::Dropped(d) => [
            time,
            format!("{}/{}", d.identity.namespace, d.identity.service_account),
            d.identity.user.clone().unwrap_or_default(),
            String::new(),
            String::new(),
            format!("{} events dropped by the proxy", d.dropped),
            String::new(),
            String::new(),
        ],
        // A read of the audit trail, recorded by the collector.
        EventData::Query(q) => [
            time,
            "(audit reader)".to_owned(),
            q.reader.user.clone(),
            "query".to_owned(),
            q.path.clone(),
            match &q.reason {
                Some(reason) => format!("{} {reason}", q.status),
                None => q.status.to_string(),
            },
            String::new(),
            q.results
                .map(|n| format!("{n} results"))
                .unwrap_or_default(),
        ],
    }
}

fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// Writes `events`; `header` the first time. A table is aligned over the events of one call
/// (with `follow`, over fixed minimum widths so later rows line up with the header).
fn write_events(
    out: &mut impl Write,
    format: Output,
    events: &[AuditEvent],
    header: bool,
    follow: bool,
) -> anyhow::Result<()> {
    match format {
        Output::Json => {
            for event in events {
                serde_json::to_writer(&mut *out, event)?;
                writeln!(out)?;
            }
        }
        Output::Csv => {
            if header {
                writeln!(out, "{}", COLUMNS.join(","))?;
            }
            for event in events {
                let fields: Vec<String> = row(event).iter().map(|f| csv_field(f)).collect();
                writeln!(out, "{}", fields.join(","))?;
            }
        }
        Output::Table => {
            let rows: Vec<[String; 8]> = events.iter().map(row).collect();
            let mut widths: Vec<usize> = COLUMNS.iter().map(|c| c.len()).collect();
            if follow {
                widths = vec![20, 24, 10, 12, 30, 8, 40, 10];
            }
            for row in &rows {
                for (width, field) in widths.iter_mut().zip(row) {
                    *width = (*width).max(field.chars().count());
                }
            }
            let mut line = |fields: &[String]| -> std::io::Result<()> {
                let cells: Vec<String> = fields
                    .iter()
                    .zip(&widths)
                    .map(|(f, w)| format!("{f:<w$}"))
                    .collect();
                writeln!(out, "{}", cells.join("  ").trim_end())
            };
            if header {
                let names: Vec<String> = COLUMNS.iter().map(|c| c.to_uppercase()).collect();
                line(&names)?;
            }
            for row in &rows {
                line(row)?;
            }
        }
    }
    Ok(())
}
