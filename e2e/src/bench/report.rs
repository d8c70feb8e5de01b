//! The comparison's results: the machine it ran on, the table (markdown and JSON), the targets
//! met or missed, and a plot (SVG, written by hand: no plotting dependency for one chart).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use super::compare::{Column, Options, Route};
use crate::kafka::KAFKA_VERSION;

/// Where the numbers were measured.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub java: String,
    pub kafka: String,
    /// The 1-minute load average when the run started and when it ended: other work on the
    /// machine (on a shared builder) shows here.
    pub load_average_before: f64,
    pub load_average_after: f64,
}

impl Machine {
    /// The machine now; `load_before` was read when the run started.
    pub fn describe(load_before: f64) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v)
            })
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let memory_kib: f64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let java = std::process::Command::new("java")
            .arg("-version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_default();
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: memory_kib / 1024.0 / 1024.0,
            kernel,
            java,
            kafka: format!("Apache Kafka {KAFKA_VERSION}, one KRaft node"),
            load_average_before: load_before,
            load_average_after: Machine::load_average(),
        }
    }

    /// The 1-minute load average.
    pub fn load_average() -> f64 {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

/// One goal of issue 14, as measured in this run.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub what: String,
    /// The measured value and the goal, in the same unit.
    pub measured: f64,
    pub goal: f64,
    pub unit: String,
    /// The goal is a ceiling (memory, latency, CPU), not a floor.
    pub at_most: bool,
    pub met: bool,
}

/// The workload every column ran.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    pub records_per_run: u64,
    pub record_bytes: usize,
    pub rounds: usize,
    pub compressions: Vec<String>,
    pub round_trip_requests_per_column: usize,
}

/// Everything one `just bench` measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub workload: Workload,
    pub columns: Vec<Column>,
    pub targets: Vec<Target>,
    /// Peers that could not be run here, and why.
    pub not_measured: Vec<String>,
    pub elapsed_seconds: f64,
}

impl Report {
    /// The report of a finished run, with the targets worked out from the columns.
    pub fn new(
        machine: Machine,
        options: &Options,
        record_bytes: usize,
        columns: Vec<Column>,
        elapsed: Duration,
    ) -> Report {
        let workload = Workload {
            records_per_run: options.records,
            record_bytes,
            rounds: options.rounds,
            compressions: options.compressions.clone(),
            round_trip_requests_per_column: options.probe_requests
                * options.probe_blocks.saturating_sub(1),
        };
        let targets = targets(&columns);
        Report {
            machine,
            workload,
            columns,
            targets,
            not_measured: vec![
                "grepplabs kafka-proxy: the Go module proxy refuses github.com/grepplabs/kafka-proxy \
                 (403 for its version list and for every release tried), so it cannot be built here"
                    .into(),
            ],
            elapsed_seconds: elapsed.as_secs_f64(),
        }
    }

    /// The column of `route`.
    pub fn column(&self, route: Route) -> Option<&Column> {
        self.columns.iter().find(|c| c.route == route)
    }

    /// Writes `results.md`, `results.json` and `throughput.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        std::fs::write(dir.join("throughput.svg"), self.svg())?;
        Ok(())
    }

    /// The table, the round trips, the targets and the machine, in markdown.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let w = &self.workload;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} records of {} B (JSON orders) per run, {} round(s), compression {}; {}; \
             {} cores ({}), {:.0} GiB, Linux {}, {}; load average {:.1} at the start, {:.1} at \
             the end; {:.0} s in all.\n",
            w.records_per_run,
            w.record_bytes,
            w.rounds,
            w.compressions.join(" and "),
            m.kafka,
            m.cores,
            m.cpu,
            m.memory_gib,
            m.kernel,
            m.java,
            m.load_average_before,
            m.load_average_after,
            self.elapsed_seconds
        );
        out.push_str(
            "| column | compression | produce MB/s | produce rec/s | consume MB/s | consume rec/s | \
             proxy CPU s / GB | round trip p50 µs | p99 µs | peak RSS MiB |\n",
        );
        out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        let dash = || "–".to_string();
        for c in &self.columns {
            for t in &c.throughput {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.1} | {:.0} | {:.1} | {:.0} | {} | {} | {} | {} |",
                    c.label,
                    t.compression,
                    t.produce_mb_per_sec,
                    t.produce_records_per_sec,
                    t.consume_mb_per_sec,
                    t.consume_records_per_sec,
                    c.cpu_seconds_per_gb
                        .map_or_else(dash, |v| format!("{v:.1}")),
                    c.round_trip_p50_us,
                    c.round_trip_p99_us,
                    c.peak_rss_mib.map_or_else(dash, |v| format!("{v:.1}")),
                );
            }
        }
        out.push_str("\nColumns:\n\n");
        for c in &self.columns {
            let _ = writeln!(out, "- **{}**: {}", c.label, c.description);
        }
        out.push_str("\nTargets (ratios within this run):\n\n| target | measured | goal | met |\n|---|---|---|---|\n");
        for t in &self.targets {
            let _ = writeln!(
                out,
                "| {} | {:.1} {} | {} {:.1} {} | {} |",
                t.what,
                t.measured,
                t.unit,
                if t.at_most { "≤" } else { "≥" },
                t.goal,
                t.unit,
                if t.met { "yes" } else { "**no**" }
            );
        }
        for note in &self.not_measured {
            let _ = writeln!(out, "\nNot measured: {note}.");
        }
        out
    }

    /// Produce and consume MB/s of every column, one group of bars per compression.
    pub fn svg(&self) -> String {
        let rows: Vec<(&Column, usize)> = self
            .columns
            .iter()
            .flat_map(|c| (0..c.throughput.len()).map(move |i| (c, i)))
            .collect();
        let max = rows
            .iter()
            .map(|(c, i)| {
                let t = &c.throughput[*i];
                t.produce_mb_per_sec.max(t.consume_mb_per_sec)
            })
            .fold(1.0_f64, f64::max);
        let (left, width, bar, gap) = (260.0, 480.0, 11.0, 10.0);
        let row_height = 2.0 * bar + gap;
        let height = 60.0 + rows.len() as f64 * row_height + 30.0;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
             font-family=\"sans-serif\" font-size=\"12\">",
            left + width + 90.0
        );
        let _ = writeln!(
            svg,
            "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" \
             font-size=\"14\">Throughput, MB/s ({} records of {} B per run, mean of {} rounds, {} cores)</text>",
            self.workload.records_per_run,
            self.workload.record_bytes,
            self.workload.rounds,
            self.machine.cores
        );
        let _ = writeln!(
            svg,
            "<rect x=\"10\" y=\"32\" width=\"12\" height=\"10\" fill=\"#4878a8\"/><text x=\"26\" \
             y=\"41\">produce</text><rect x=\"90\" y=\"32\" width=\"12\" height=\"10\" \
             fill=\"#e08a3c\"/><text x=\"106\" y=\"41\">consume</text>"
        );
        for (n, (column, i)) in rows.iter().enumerate() {
            let t = &column.throughput[*i];
            let y = 60.0 + n as f64 * row_height;
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{} ({})</text>",
                left - 8.0,
                y + bar + 4.0,
                escape(&column.label),
                escape(&t.compression)
            );
            for (k, (value, colour)) in [
                (t.produce_mb_per_sec, "#4878a8"),
                (t.consume_mb_per_sec, "#e08a3c"),
            ]
            .into_iter()
            .enumerate()
            {
                let top = y + k as f64 * bar;
                let length = width * value / max;
                let _ = writeln!(
                    svg,
                    "<rect x=\"{left}\" y=\"{top}\" width=\"{length:.1}\" height=\"{}\" fill=\"{colour}\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{value:.1}</text>",
                    bar - 1.0,
                    left + length + 4.0,
                    top + bar - 2.0
                );
            }
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The goals of issue 14, as ratios between the columns of one run.
fn targets(columns: &[Column]) -> Vec<Target> {
    let of = |route: Route| columns.iter().find(|c| c.route == route);
    let mut targets = Vec::new();
    let mut ratio = |what: String, measured: f64, goal: f64| {
        if measured.is_finite() {
            targets.push(Target {
                what,
                measured,
                goal,
                unit: "%".into(),
                at_most: false,
                met: measured >= goal,
            });
        }
    };
    let (Some(direct), Some(policy), Some(audit), Some(masked)) = (
        of(Route::Direct),
        of(Route::Streamward),
        of(Route::StreamwardAudit),
        of(Route::StreamwardMasked),
    ) else {
        return Vec::new();
    };
    for (i, t) in policy.throughput.iter().enumerate() {
        let c = &t.compression;
        let d = &direct.throughput[i];
        let a = &audit.throughput[i];
        let m = &masked.throughput[i];
        ratio(
            format!("streamward / direct, produce ({c})"),
            100.0 * t.produce_mb_per_sec / d.produce_mb_per_sec,
            98.0,
        );
        ratio(
            format!("streamward / direct, consume ({c})"),
            100.0 * t.consume_mb_per_sec / d.consume_mb_per_sec,
            98.0,
        );
        ratio(
            format!("audit on / off, produce ({c})"),
            100.0 * a.produce_mb_per_sec / t.produce_mb_per_sec,
            95.0,
        );
        ratio(
            format!("audit on / off, consume ({c})"),
            100.0 * a.consume_mb_per_sec / t.consume_mb_per_sec,
            95.0,
        );
        ratio(
            format!("masked / unmasked consume ({c})"),
            100.0 * m.consume_mb_per_sec / a.consume_mb_per_sec,
            80.0,
        );
    }
    for column in [policy, audit, masked] {
        if let Some(rss) = column.peak_rss_mib {
            targets.push(Target {
                what: format!("{} peak RSS", column.label),
                measured: rss,
                goal: 32.0,
                unit: "MiB".into(),
                at_most: true,
                met: rss <= 32.0,
            });
        }
    }
    if let Some(peer) = of(Route::Kroxylicious) {
        for (i, t) in policy.throughput.iter().enumerate() {
            let p = &peer.throughput[i];
            let mine = t.produce_mb_per_sec + t.consume_mb_per_sec;
            let theirs = p.produce_mb_per_sec + p.consume_mb_per_sec;
            targets.push(Target {
                what: format!(
                    "streamward / kroxylicious, produce + consume MB/s ({})",
                    t.compression
                ),
                measured: 100.0 * mine / theirs,
                goal: 100.0,
                unit: "%".into(),
                at_most: false,
                met: mine >= theirs,
            });
        }
        targets.push(Target {
            what: "streamward round trip p99 (kroxylicious's as the goal)".into(),
            measured: policy.round_trip_p99_us as f64,
            goal: peer.round_trip_p99_us as f64,
            unit: "µs".into(),
            at_most: true,
            met: policy.round_trip_p99_us <= peer.round_trip_p99_us,
        });
        if let (Some(mine), Some(theirs)) = (policy.cpu_seconds_per_gb, peer.cpu_seconds_per_gb) {
            targets.push(Target {
                what: "streamward CPU s / GB (kroxylicious's as the goal)".into(),
                measured: mine,
                goal: theirs,
                unit: "s".into(),
                at_most: true,
                met: mine <= theirs,
            });
        }
    }
    targets
}
