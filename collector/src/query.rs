//! Queries over the store: filters, and output as a table, NDJSON or CSV.
//!
//! Queries read the segment files directly, oldest first, so they work while the collector
//! is running (a record still being written has no newline yet and is skipped) and on a copy
//! of a data folder.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};
use jiff::Timestamp;
use streamward_api::audit::{AuditEvent, EventData};

use crate::chain;
use crate::index::SegmentIndex;
use crate::store;

/// Which events a query returns. Every field that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Events at or after this time.
    pub since: Option<Timestamp>,
    /// Events before this time.
    pub until: Option<Timestamp>,
    /// The workload's namespace.
    pub namespace: Option<String>,
    /// The workload's service account.
    pub service_account: Option<String>,
    /// The user the client authenticated as.
    pub user: Option<String>,
    /// A topic among the request's resources.
    pub topic: Option<String>,
    /// The Kafka API (`Produce`, `Fetch`, `DeleteTopics`, …), case-insensitive.
    pub api_key: Option<String>,
    /// The decision: `Allow`, `Deny`, `Partial`, `RequireApproval`, or `WouldDeny` for DryRun
    /// refusals (case-insensitive).
    pub decision: Option<String>,
    /// The proxy session.
    pub session: Option<String>,
    /// The kinds of event; `None` means the proxies' events (requests and drop reports), not
    /// the collector's records of queries.
    pub kinds: Option<Vec<Kind>>,
}

/// The kinds of stored event, by their CloudEvents `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Kind {
    /// A Kafka request a proxy decided.
    Request,
    /// A proxy's report of events it had to drop.
    Dropped,
    /// A read of the audit trail, recorded by the collector.
    Query,
}

impl Kind {
    /// The kind of `event`.
    pub fn of(event: &AuditEvent) -> Kind {
        match &event.data {
            EventData::Request(_) => Kind::Request,
            EventData::Dropped(_) => Kind::Dropped,
            EventData::Query(_) => Kind::Query,
        }
    }

    /// The kinds a query returns when it does not say (`type` unset).
    pub const DEFAULT: [Kind; 2] = [Kind::Request, Kind::Dropped];
}

impl std::str::FromStr for Kind {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> Result<Kind> {
        match text.to_ascii_lowercase().as_str() {
            "request" => Ok(Kind::Request),
            "dropped" => Ok(Kind::Dropped),
            "query" => Ok(Kind::Query),
            other => bail!("unknown event type {other:?}: use request, dropped or query"),
        }
    }
}

/// How a query's events are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One event (the stored CloudEvent) per line.
    Ndjson,
    /// Comma-separated columns with a header line (RFC 4180 quoting).
    Csv,
}

impl Format {
    /// The media type of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Table => "text/plain; charset=utf-8",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> Result<Format> {
        match text.to_ascii_lowercase().as_str() {
            "table" => Ok(Format::Table),
            "ndjson" | "json" => Ok(Format::Ndjson),
            "csv" => Ok(Format::Csv),
            other => bail!("unknown format {other:?}: use table, ndjson or csv"),
        }
    }
}

fn eq(want: &Option<String>, have: Option<&str>) -> bool {
    match want {
        None => true,
        Some(want) => have.is_some_and(|have| have == want),
    }
}

impl Filter {
    /// Builds a filter from URL query parameters (`since` or `from`, `until` or `to`,
    /// `namespace`, `serviceAccount`, `user`, `topic`, `apiKey`, `decision`, `session`, `type`
    /// as a comma-separated list); other parameters (`format`, `limit`) are ignored here.
    pub fn from_params<'a>(params: impl Iterator<Item = (&'a str, &'a str)>) -> Result<Filter> {
        let mut filter = Filter::default();
        for (name, value) in params {
            let value = value.to_string();
            match name {
                "since" | "from" => filter.since = Some(parse_time(&value)?),
                "until" | "to" => filter.until = Some(parse_time(&value)?),
                "type" => {
                    filter.kinds = Some(
                        value
                            .split(',')
                            .map(|kind| kind.trim().parse())
                            .collect::<Result<_>>()?,
                    )
                }
                "namespace" => filter.namespace = Some(value),
                "serviceAccount" => filter.service_account = Some(value),
                "user" => filter.user = Some(value),
                "topic" => filter.topic = Some(value),
                "apiKey" => filter.api_key = Some(value),
                "decision" => filter.decision = Some(value),
                "session" => filter.session = Some(value),
                "format" | "limit" => {}
                other => bail!("unknown query parameter {other:?}"),
            }
        }
        Ok(filter)
    }

    /// Whether events of `kind` may pass.
    pub fn wants(&self, kind: Kind) -> bool {
        match &self.kinds {
            Some(kinds) => kinds.contains(&kind),
            None => Kind::DEFAULT.contains(&kind),
        }
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &AuditEvent) -> bool {
        if self.since.is_some_and(|since| event.time < since)
            || self.until.is_some_and(|until| event.time >= until)
            || !self.wants(Kind::of(event))
        {
            return false;
        }
        let identity = match &event.data {
            EventData::Request(record) => &record.identity,
            EventData::Dropped(dropped) => &dropped.identity,
            // A query is about no workload; its user is the reader.
            EventData::Query(query) => {
                return self.namespace.is_none()
                    && self.service_account.is_none()
                    && self.topic.is_none()
                    && self.api_key.is_none()
                    && self.decision.is_none()
                    && self.session.is_none()
                    && eq(&self.user, Some(&query.reader.user));
            }
        };
        if !eq(&self.namespace, Some(&identity.namespace))
            || !eq(&self.service_account, Some(&identity.service_account))
            || !eq(&self.user, identity.user.as_deref())
        {
            return false;
        }
        let record = event.record();
        if let Some(topic) = &self.topic
            && !record.is_some_and(|r| {
                r.resources
                    .iter()
                    .any(|res| res.resource_type == "Topic" && res.name == *topic)
            })
        {
            return false;
        }
        if let Some(api) = &self.api_key
            && !record.is_some_and(|r| r.request.api_key.eq_ignore_ascii_case(api))
        {
            return false;
        }
        if let Some(decision) = &self.decision
            && !record.is_some_and(|r| decision_matches(decision, &r.decision))
        {
            return false;
        }
        eq(&self.session, record.map(|r| r.session_id.as_str()))
    }
}

fn decision_matches(want: &str, decision: &streamward_api::audit::Decision) -> bool {
    if want.eq_ignore_ascii_case("WouldDeny") {
        return decision.dry_run;
    }
    decision.effect.eq_ignore_ascii_case(want)
}

/// Parses an RFC 3339 time, or a time relative to now: `-15m`, `-24h`, `-7d`.
pub fn parse_time(text: &str) -> Result<Timestamp> {
    if let Some(relative) = text.strip_prefix('-') {
        let (number, unit) = relative.split_at(relative.len().saturating_sub(1));
        let number: i64 = number
            .parse()
            .with_context(|| format!("{text:?} is neither RFC 3339 nor like -15m, -24h, -7d"))?;
        let seconds = match unit {
            "s" => number,
            "m" => number * 60,
            "h" => number * 3600,
            "d" => number * 86400,
            _ => bail!("{text:?}: a relative time ends in s, m, h or d"),
        };
        return Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(seconds))
            .with_context(|| format!("{text:?} is too far back"));
    }
    text.parse()
        .with_context(|| format!("{text:?} is not an RFC 3339 time (2026-12-01T10:00:00Z)"))
}

/// What a scan read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scanned {
    /// Events passed to the caller.
    pub matched: usize,
    /// Segment files in the store.
    pub segments: usize,
    /// Segment files read (the others were skipped by their index, or after the limit).
    pub read: usize,
    /// Segments whose index said nothing in them could match.
    pub skipped: usize,
}

/// Calls `each` with every stored event that passes `filter`, oldest first, up to `limit`.
/// Damaged records are skipped with a warning (`verify` is the tool that reports them).
pub fn scan(
    dir: &Path,
    filter: &Filter,
    limit: Option<usize>,
    each: impl FnMut(&AuditEvent) -> Result<()>,
) -> Result<usize> {
    Ok(scan_segments(dir, filter, limit, each)?.matched)
}

/// [`scan`], saying how many segments it read and skipped. Sealed segments whose
/// [`SegmentIndex`] rules out a match are not read; those without a usable index are indexed
/// as they are read.
pub fn scan_segments(
    dir: &Path,
    filter: &Filter,
    limit: Option<usize>,
    mut each: impl FnMut(&AuditEvent) -> Result<()>,
) -> Result<Scanned> {
    let files = store::segment_files(dir)?;
    let mut scanned = Scanned {
        segments: files.len(),
        ..Scanned::default()
    };
    let newest = files.len().saturating_sub(1);
    for (n, path) in files.iter().enumerate() {
        if limit.is_some_and(|limit| scanned.matched >= limit) {
            break;
        }
        let sealed = n < newest;
        let mut index = None;
        if sealed {
            let bytes = match std::fs::metadata(path) {
                Ok(meta) => meta.len(),
                // Retention removed it while we were listing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            match SegmentIndex::load(path, bytes) {
                Some(known) if !known.may_match(filter) => {
                    scanned.skipped += 1;
                    continue;
                }
                Some(_) => {}
                None => index = Some(SegmentIndex::new(bytes)),
            }
        }
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        scanned.read += 1;
        if index
            .as_ref()
            .is_some_and(|i| i.bytes != bytes.len() as u64)
        {
            // It changed between the two looks: do not index what we did not see whole.
            index = None;
        }
        // Only complete lines: the last one may still be being written.
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        let mut stopped = false;
        for line in bytes[..complete].split(|b| *b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let event = match read_event(line) {
                Ok(event) => event,
                Err(error) => {
                    tracing::warn!(segment = %path.display(), %error, "skipping a damaged record");
                    continue;
                }
            };
            if let Some(index) = &mut index {
                index.add(&event);
            }
            if stopped || !filter.matches(&event) {
                continue;
            }
            if limit.is_some_and(|limit| scanned.matched >= limit) {
                if index.is_none() {
                    return Ok(scanned);
                }
                // Finish indexing the segment, passing nothing more on.
                stopped = true;
                continue;
            }
            each(&event)?;
            scanned.matched += 1;
        }
        if let Some(index) = index
            && let Err(error) = index.save(path)
        {
            tracing::debug!(error = format!("{error:#}"), "leaving a segment unindexed");
        }
    }
    Ok(scanned)
}

/// The event of one record line, after checking the line against its hash.
fn read_event(line: &[u8]) -> Result<AuditEvent, String> {
    let event = chain::verified_event(line).map_err(|damage| damage.to_string())?;
    serde_json::from_slice(event).map_err(|e| e.to_string())
}

/// The columns of the table and CSV formats.
pub const COLUMNS: [&str; 12] = [
    "time",
    "id",
    "namespace",
    "serviceAccount",
    "user",
    "apiKey",
    "resources",
    "decision",
    "rule",
    "dryRun",
    "masked",
    "session",
];

fn row(event: &AuditEvent) -> [String; 12] {
    let time = event.time.to_string();
    match &event.data {
        EventData::Request(r) => {
            let resources: Vec<String> = r
                .resources
                .iter()
                .map(|res| format!("{}:{}:{}", res.resource_type, res.name, res.operation))
                .collect();
            let masked: u64 = r.masking.iter().map(|m| m.fields).sum();
            [
                time,
                event.id.clone(),
                r.identity.namespace.clone(),
                r.identity.service_account.clone(),
                r.identity.user.clone().unwrap_or_default(),
                r.request.api_key.clone(),
                resources.join(" "),
                r.decision.effect.clone(),
                r.decision.rule.clone(),
                r.decision.dry_run.to_string(),
                masked.to_string(),
                r.session_id.clone(),
            ]
        }
        EventData::Dropped(d) => [
            time,
            event.id.clone(),
            d.identity.namespace.clone(),
            d.identity.service_account.clone(),
            d.identity.user.clone().unwrap_or_default(),
            String::new(),
            String::new(),
            format!("Dropped {}", d.dropped),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ],
        EventData::Query(q) => [
            time,
            event.id.clone(),
            String::new(),
            String::new(),
            q.reader.user.clone(),
            String::new(),
            q.path.clone(),
            format!("Query {}", q.status),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ],
    }
}

fn csv_field(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_string()
    }
}

/// Writes events in one of the formats. Tables are aligned, so they are buffered whole.
pub struct Writer<W: Write> {
    out: W,
    format: Format,
    rows: Vec<[String; 12]>,
    started: bool,
}

impl<W: Write> Writer<W> {
    /// A writer of `format` to `out`.
    pub fn new(out: W, format: Format) -> Writer<W> {
        Writer {
            out,
            format,
            rows: Vec::new(),
            started: false,
        }
    }

    /// Writes one event.
    pub fn write(&mut self, event: &AuditEvent) -> Result<()> {
        match self.format {
            Format::Ndjson => {
                serde_json::to_writer(&mut self.out, event)?;
                self.out.write_all(b"\n")?;
            }
            Format::Csv => {
                if !self.started {
                    writeln!(self.out, "{}", COLUMNS.join(","))?;
                    self.started = true;
                }
                let fields: Vec<String> = row(event).iter().map(|f| csv_field(f)).collect();
                writeln!(self.out, "{}", fields.join(","))?;
            }
            Format::Table => self.rows.push(row(event)),
        }
        Ok(())
    }

    /// Finishes the output (the table, or the CSV header when there were no events) and returns
    /// the sink.
    pub fn finish(mut self) -> Result<W> {
        match self.format {
            Format::Ndjson => {}
            Format::Csv => {
                if !self.started {
                    writeln!(self.out, "{}", COLUMNS.join(","))?;
                }
            }
            Format::Table => {
                let header: Vec<String> = COLUMNS.iter().map(|c| c.to_uppercase()).collect();
                let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
                for row in &self.rows {
                    for (width, field) in widths.iter_mut().zip(row) {
                        *width = (*width).max(field.chars().count());
                    }
                }
                let mut line = |fields: &[String]| -> Result<()> {
                    let cells: Vec<String> = fields
                        .iter()
                        .zip(&widths)
                        .map(|(f, w)| format!("{f:<w$}"))
                        .collect();
                    writeln!(self.out, "{}", cells.join("  ").trim_end())?;
                    Ok(())
                };
                line(&header)?;
                for row in &self.rows {
                    line(row)?;
                }
            }
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_they_must_be() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn times_are_absolute_or_relative() {
        assert_eq!(
            parse_time("2026-12-01T10:00:00Z").unwrap().to_string(),
            "2026-12-01T10:00:00Z"
        );
        let hour_ago = parse_time("-1h").unwrap();
        let delta = Timestamp::now().duration_since(hour_ago).as_secs();
        assert!((3599..=3601).contains(&delta));
        assert!(parse_time("yesterday").is_err());
    }
}
