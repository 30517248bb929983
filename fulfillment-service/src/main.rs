//! The fulfillment-service binary: settings, logging, build, run.

use fulfillment_service::config::Config;
use fulfillment_service::Application;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let common = config.common.clone();
    service_kit::serve::main(&common, env!("CARGO_CRATE_NAME"), async move {
        tracing::debug!(?config, "configuration");
        let app = Application::build(config).await?;
        service_kit::serve::announce_port(env!("CARGO_PKG_NAME"), app.port());
        app.run_until_stopped().await
    })
    .await
}
