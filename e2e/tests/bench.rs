//! A tiny run of `just bench`'s harness, so the comparison cannot rot: every column (direct,
//! Streamward three ways, Kroxylicious two ways) carries two thousand lz4-compressed records
//! (the codec that makes the masking proxy and Kroxylicious's transform decompress and
//! recompress), and every number of the table is measured. Timings are not asserted: they mean
//! nothing on a shared CI machine at this size.

use streamward_e2e::bench::compare::{self, Options, ROUTES};
use streamward_e2e::workspace_binaries;

#[test]
fn every_column_of_the_side_by_side_benchmark_is_measured() -> anyhow::Result<()> {
    let [sidecar, collector] = <[_; 2]>::try_from(workspace_binaries(&[
        ("streamward-sidecar", "streamward-sidecar"),
        ("streamward-collector", "streamward-collector"),
    ])?)
    .map_err(|_| anyhow::anyhow!("two binaries asked for"))?;
    let options = Options {
        sidecar,
        collector,
        records: 2_000,
        rounds: 1,
        compressions: vec!["lz4".into()],
        probe_blocks: 2,
        probe_requests: 20,
    };
    // `run` itself fails if a proxy handed out the brokers' addresses, used no CPU for a run,
    // left audit events undelivered or served a record unmasked.
    let report = compare::run(&options)?;

    let measured: Vec<_> = report.columns.iter().map(|c| c.route).collect();
    assert_eq!(measured, ROUTES, "one column per route, in table order");
    for column in &report.columns {
        let label = &column.label;
        assert_eq!(
            column.throughput.len(),
            1,
            "{label}: one row per compression"
        );
        for t in &column.throughput {
            for (what, value) in [
                ("produce MB/s", t.produce_mb_per_sec),
                ("produce records/s", t.produce_records_per_sec),
                ("consume MB/s", t.consume_mb_per_sec),
                ("consume records/s", t.consume_records_per_sec),
                ("MB moved", t.mb_moved),
            ] {
                assert!(
                    value > 0.0,
                    "{label} ({}): {what} is {value}",
                    t.compression
                );
            }
        }
        assert_eq!(column.round_trips, 20, "{label}: round trips timed");
        assert!(
            column.round_trip_p99_us >= column.round_trip_p50_us && column.round_trip_p50_us > 0
        );
        let proxied = column.route != compare::Route::Direct;
        assert_eq!(
            column.cpu_seconds_per_gb.is_some_and(|v| v > 0.0),
            proxied,
            "{label}: CPU per GB"
        );
        assert_eq!(
            column.peak_rss_mib.is_some_and(|v| v > 0.0),
            proxied,
            "{label}: peak RSS"
        );
    }
    assert!(!report.targets.is_empty(), "the targets are worked out");

    let out = tempfile::tempdir()?;
    report.write(out.path())?;
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("results.json"))?)?;
    assert_eq!(json["columns"].as_array().map(Vec::len), Some(ROUTES.len()));
    let table = std::fs::read_to_string(out.path().join("results.md"))?;
    for route in ROUTES {
        assert!(table.contains(&format!("| {} |", route.label())), "{table}");
    }
    let svg = std::fs::read_to_string(out.path().join("throughput.svg"))?;
    assert!(svg.starts_with("<svg") && svg.contains("kroxylicious +transform"));
    Ok(())
}
