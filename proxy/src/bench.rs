//! `xki-proxy bench`: load generator (placeholder until implemented).

/// Bench options.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

/// Run the bench.
pub fn run(_args: BenchArgs) -> Result<(), String> {
    Err("bench is not implemented yet".into())
}
