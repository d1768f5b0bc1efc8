use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = kiln_service_kit::config::config_path_from_args();
    let config: kiln_github_ingest::IngestConfig =
        kiln_service_kit::config::load(path.as_deref()).context("cannot load configuration")?;
    kiln_service_kit::telemetry::init("kiln-github-ingest", &config.common.log);
    let app = kiln_github_ingest::Application::build(config).await?;
    tracing::info!(http.addr = %app.addr(), "kiln-github-ingest listening");
    app.run_until_stopped(kiln_service_kit::shutdown::on_signal())
        .await
        .context("kiln-github-ingest stopped with an error")
}
