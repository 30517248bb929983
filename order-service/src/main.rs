//! The order-service binary: read config, init telemetry, build, run.

use order_service::config::Config;
use order_service::Application;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().map_err(anyhow::Error::msg)?;
    let common = config.common.clone();
    service_kit::serve::main(&common, env!("CARGO_CRATE_NAME"), async move {
        tracing::info!(?config, "starting order-service");
        let app = Application::build(config).await?;
        service_kit::serve::announce_port(env!("CARGO_PKG_NAME"), app.port());
        app.run_until_stopped().await
    })
    .await
}
