//! `swell-io`: the writer or the reader of `swell_e2e::stream_io` as a
//! process of its own, so tests stream application I/O through a volume
//! while it grows. Prints its report as JSON on stdout when `STOP` appears.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use swell_e2e::stream_io;

#[derive(Debug, Parser)]
struct Args {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// Writes and fdatasyncs records FIRST..LIMIT until STOP exists, waiting
    /// before record GATE until PROGRESS's gate file exists.
    Write { path: PathBuf, stop: PathBuf, progress: PathBuf, limit: u64, first: u64, gate: u64 },
    /// Reads back the records PROGRESS counts as synced from FIRST, pass after pass, until STOP exists.
    Read { path: PathBuf, stop: PathBuf, progress: PathBuf, first: u64 },
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let report = match Args::parse().role {
        Role::Write { path, stop, progress, limit, first, gate } => stream_io::write_span(&path, &stop, &progress, stream_io::Span { first, gate, limit }),
        Role::Read { path, stop, progress, first } => stream_io::read_until(&path, &stop, &progress, first),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
