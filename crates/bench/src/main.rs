//! `make bench` / `make bench-quick`: starts a private redis-server and the real (release)
//! services, measures each figure next to a baseline taken in the same run, and prints a
//! table plus one JSON line per figure (also written to `target/bench/results.jsonl`).
//! `--quick` shrinks every figure; `--only=throughput,api` measures just those figures.
//! `KILN_BIN_DIR` runs other service binaries (A/B comparisons); `KILN_BENCH_LOG_DIR` keeps
//! the services' logs.

mod cluster;
mod cpu;
mod figures;
mod http1;
mod report;
mod stats;

use anyhow::Context;

/// Sizes of one run: `--quick` shrinks every figure so the whole run takes minutes.
#[derive(Clone, Copy)]
pub(crate) struct Size {
    pub(crate) trigger_builds: usize,
    /// Builds of figure 1 triggered each after a quiet spell (`figures::QUIET`).
    pub(crate) quiet_builds: usize,
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
                quiet_builds: 3,
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
                quiet_builds: 10,
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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Vec<String> = args
        .iter()
        .filter_map(|a| a.strip_prefix("--only="))
        .flat_map(|list| list.split(','))
        .map(str::to_owned)
        .collect();
    if let Some(bad) = only.iter().find(|o| !figures::NAMES.contains(&o.as_str())) {
        anyhow::bail!(
            "--only: unknown figure {bad:?}; figures are {}",
            figures::NAMES.join(", ")
        );
    }
    let size = Size::new(quick);
    let mut report = report::Report::new().context("cannot open target/bench/results.jsonl")?;
    println!(
        "Kiln benchmark ({}), {} cores, {}",
        if quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    figures::run(size, &only, &mut report).await?;
    report.print_table();
    Ok(())
}
