//! `ferry-agent`: the sync agent installed on or next to a domain controller.
//!
//! This crate will hold the AD connector, the sync engine and the install
//! wizard; for now it only knows its version.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "ferry-agent",
    version,
    about = "Ferry sync agent: keeps one Active Directory domain and the Ferry cloud directory in step"
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!(
        "ferry-agent {}: the AD connector and sync engine are not built yet",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
