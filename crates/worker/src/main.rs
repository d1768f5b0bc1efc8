use anyhow::Context;

#[tokio::main]
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
