/// The api allocates through mimalloc: under load glibc's allocator took about a fifth of
/// its CPU, much of it in locks between its http worker threads (measured with `perf`), and
/// mimalloc served 5-7 % more history pages per second (docs/performance.md). The worker
/// allocates through it too.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = kiln_service_kit::config::config_path_from_args();
    let config: kiln_api::ApiConfig =
        kiln_service_kit::config::load(path.as_deref()).context("cannot load configuration")?;
    kiln_service_kit::telemetry::init("kiln-api", &config.common.log);
    let app = kiln_api::Application::build(config).await?;
    tracing::info!(http.addr = %app.addr(), "kiln-api listening");
    app.run_until_stopped(kiln_service_kit::shutdown::on_signal())
        .await
        .context("kiln-api stopped with an error")
}
