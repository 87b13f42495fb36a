//! `herald-bench`: the fan-out load tool. See `herald_bench` (the library) for how it
//! works and `herald-bench --help` for how to use it.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use herald_bench::args::Args;
use herald_bench::{limits, run};

/// File descriptors kept free beyond one per connection (the publisher, /proc reads,
/// the runtime).
const SPARE_FILES: u64 = 256;

fn main() -> ExitCode {
    let args = Args::parse();
    match bench(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Every error message names its cause already; the chain would repeat it.
            eprintln!("herald-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: Args) -> anyhow::Result<()> {
    let want = args.connections as u64 + SPARE_FILES;
    let nofile = limits::raise_nofile(want);
    if nofile.after != nofile.before {
        eprintln!(
            "herald-bench: raised the open-file limit (RLIMIT_NOFILE) from {} to {}",
            show(nofile.before),
            show(nofile.after)
        );
    }
    if nofile.after.is_some_and(|n| n < want) {
        eprintln!(
            "herald-bench: warning: the open-file limit is {} but {} connections need about {want}; \
             connections past it will fail (raise the hard limit: ulimit -Hn, or run as root)",
            show(nofile.after),
            args.connections
        );
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))?;
    let summary = runtime.block_on(run::run(args.clone(), nofile, threads))?;
    if summary
        .connections
        .failures
        .contains_key("too_many_open_files")
    {
        eprintln!(
            "herald-bench: some connections failed for lack of file descriptors: raise the open-file limit (ulimit -n)"
        );
    }
    eprint!("{}", summary.human());
    let json = serde_json::to_string_pretty(&summary)?;
    match &args.json {
        Some(path) => std::fs::write(path, json + "\n")
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
        None => writeln!(std::io::stdout(), "{json}")?,
    }
    // Thousands of connection tasks are still blocked in reads; there is nothing
    // left to wait for.
    runtime.shutdown_background();
    Ok(())
}

fn show(limit: Option<u64>) -> String {
    limit.map_or("unlimited".into(), |n| n.to_string())
}
