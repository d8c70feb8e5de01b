//! The Streamward proxy. Not built yet; until then this binary says so rather than pretending
//! to proxy.

fn main() -> std::process::ExitCode {
    eprintln!("streamward-sidecar: not implemented yet (the Kafka proxy is planned)");
    std::process::ExitCode::from(2)
}
