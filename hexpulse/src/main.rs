//! `hexpulse`: every Hexpulse role as a subcommand, or all of them in one process (`up`).

/// `println!` that returns a closed stdout as an error (`hexpulse lake files | head`), where
/// `println!` panics; `main` ends quietly on it, as other command-line tools do.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::commands::stdout_error)?
    }};
}

mod bench;
mod broker_watch;
mod cli;
mod commands;
mod config;

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use hexpulse_common::telemetry;

use crate::cli::Cli;
use crate::config::Config;

/// mimalloc instead of the system allocator: the query service's Parquet decoding allocates and
/// frees a buffer per page and column, and glibc's malloc spent a fifth of a query's CPU on it.
/// Built with `no_thp`: on hosts with transparent huge pages "always", mimalloc's arenas otherwise
/// grow resident memory in 2 MiB steps (the query service's peak RSS went from ~100 MiB to ~1 GiB).
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "dhat-heap")]
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

/// With the `dhat-heap` feature: profiles the heap from here on, and writes `dhat-heap-PID.json` (the
/// blocks live at that moment, by allocation site: open it in dhat's viewer) after
/// `HEXPULSE_DHAT_SECS` seconds, or at exit.
#[cfg(feature = "dhat-heap")]
fn heap_profile() -> Option<dhat::Profiler> {
    // Per process: the soak runs several (up, a second processor, the simulators) in one directory.
    let profiler = dhat::Profiler::builder()
        .file_name(format!("dhat-heap-{}.json", std::process::id()))
        .build();
    let Some(secs) = std::env::var("HEXPULSE_DHAT_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return Some(profiler);
    };
    std::thread::spawn(move || {
        #[expect(
            clippy::disallowed_methods,
            reason = "a plain thread of its own, outside the runtime"
        )]
        std::thread::sleep(std::time::Duration::from_secs(secs));
        drop(profiler);
        eprintln!("dhat: heap profile written after {secs} s");
    });
    None
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    #[cfg(feature = "dhat-heap")]
    let _profile = heap_profile();
    let cli = Cli::parse();
    telemetry::init_logging();
    // A descriptor per connection and per file written: the soft limit (often 1024) is too low.
    match hexpulse_common::serve::raise_open_files_limit() {
        Ok(n) => tracing::debug!(open_files = n, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open files limit"),
    }
    // Comma-separated lists (HEXPULSE_CONFIG=base.toml,overlay.toml) layer in order.
    let files: Vec<PathBuf> = cli
        .config
        .iter()
        .flat_map(|p| match p.to_str() {
            Some(s) => s
                .split(',')
                .filter(|f| !f.is_empty())
                .map(PathBuf::from)
                .collect(),
            None => vec![p.clone()],
        })
        .collect();
    let cfg = Config::load(&files).context("loading configuration")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match rt.block_on(commands::run(cli.cmd, cfg)) {
        // The reader of stdout went away: stop as a killed-by-SIGPIPE tool would (128 + 13),
        // without waiting for tasks still running.
        Err(e) if e.is::<commands::StdoutClosed>() => {
            rt.shutdown_background();
            Ok(std::process::ExitCode::from(141))
        }
        r => r.map(|()| std::process::ExitCode::SUCCESS),
    }
}
