//! The Streamward operator. The controllers and webhooks are not built yet; until then this
//! binary says so rather than pretending to run.

fn main() -> std::process::ExitCode {
    eprintln!("streamward-operator: not implemented yet (controllers and webhooks are planned)");
    std::process::ExitCode::from(2)
}
