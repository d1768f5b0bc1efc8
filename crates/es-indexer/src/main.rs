use anyhow::Context;

/// `kiln-es-indexer [--config <file>]` runs the indexer; `kiln-es-indexer backfill
/// [--config <file>]` re-indexes every finished build still in Redis and exits.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let path = kiln_service_kit::config::config_path_from_args();
    let config: kiln_es_indexer::IndexerConfig =
        kiln_service_kit::config::load(path.as_deref()).context("cannot load configuration")?;
    kiln_service_kit::telemetry::init("kiln-es-indexer", &config.common.log);
    if std::env::args().nth(1).as_deref() == Some("backfill") {
        let n = kiln_es_indexer::backfill(config).await?;
        println!("queued {n} finished builds for indexing");
        return Ok(());
    }
    let app = kiln_es_indexer::Application::build(config).await?;
    tracing::info!(http.addr = %app.addr(), "kiln-es-indexer started");
    app.run_until_stopped(kiln_service_kit::shutdown::on_signal())
        .await
        .context("kiln-es-indexer stopped with an error")
}
