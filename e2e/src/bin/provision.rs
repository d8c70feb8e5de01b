//! `just provision`: installs and caches everything the end-to-end tests need.

fn main() -> anyhow::Result<()> {
    println!("cache: {}", streamward_e2e::cache::root().display());
    streamward_e2e::provision::all()
}
