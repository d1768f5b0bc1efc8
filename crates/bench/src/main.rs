//! `make bench` / `make bench-quick`: starts a private redis-server and the real (release)
//! services, measures each figure next to a baseline taken in the same run, and prints a
//! table plus one JSON line per figure (also written to `target/bench/results.jsonl`).

mod cluster;
mod figures;
mod report;
mod stats;

use anyhow::Context;

/// Sizes of one run: `--quick` shrinks every figure so the whole run takes minutes.
#[derive(Clone, Copy)]
pub(crate) struct Size {
    pub(crate) trigger_builds: usize,
    pub(crate) throughput_builds: usize,
    pub(crate) output_lines: usize,
    pub(crate) watchers: &'static [usize],
    pub(crate) api_secs: u64,
    pub(crate) scale_jobs: usize,
    pub(crate) scale_builds_per_job: usize,
}

impl Size {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                trigger_builds: 100,
                throughput_builds: 400,
                output_lines: 2_000,
                watchers: &[1, 100, 300],
                api_secs: 3,
                scale_jobs: 1_000,
                scale_builds_per_job: 100,
            }
        } else {
            Self {
                trigger_builds: 500,
                throughput_builds: 2_000,
                output_lines: 5_000,
                watchers: &[1, 100, 1_000],
                api_secs: 10,
                scale_jobs: 10_000,
                scale_builds_per_job: 100,
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let size = Size::new(quick);
    let mut report = report::Report::new().context("cannot open target/bench/results.jsonl")?;
    println!(
        "Kiln benchmark ({}), {} cores, {}",
        if quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    figures::run_all(size, &mut report).await?;
    report.print_table();
    Ok(())
}
