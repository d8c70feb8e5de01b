//! The Streamward audit collector. Not built yet; until then this binary says so rather than
//! pretending to store anything.

fn main() -> std::process::ExitCode {
    eprintln!("streamward-collector: not implemented yet (audit ingest and storage are planned)");
    std::process::ExitCode::from(2)
}
