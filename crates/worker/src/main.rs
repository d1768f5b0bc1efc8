/// The worker allocates through mimalloc: glibc's allocator was about a seventh of a busy
/// worker's CPU, and with mimalloc the workers spent 8 % less CPU per build in alternating
/// `make bench` runs (28 % less for a job at its retention), for about 10 MB more resident
/// memory per worker (docs/performance-history.md, session 13). Session 3 had measured the
/// opposite, for code that has since changed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;

/// One thread runs the worker's tasks: they mostly wait on Redis, pipes and children, and
/// keeping them on one thread spares a cross-thread wake-up at every hop between them
/// (trigger to first step went from 1.09 to 0.90 ms p50 and 2.15 to 1.30 ms p99 in
/// `make bench`, throughput unchanged). File work that can be slow (network storage,
/// workspaces, artifacts) goes to tokio's blocking pool.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let path = kiln_service_kit::config::config_path_from_args();
    let config: kiln_worker::WorkerConfig =
        kiln_service_kit::config::load(path.as_deref()).context("cannot load configuration")?;
    kiln_service_kit::telemetry::init("kiln-worker", &config.common.log);
    let app = kiln_worker::Application::build(config).await?;
    tracing::info!(worker.id = %app.id(), http.addr = %app.addr(), "kiln-worker started");
    app.run_until_stopped(kiln_service_kit::shutdown::on_signal())
        .await
        .context("kiln-worker stopped with an error")
}
