//! The order-service binary: read config, init telemetry, build, run.

use order_service::config::Config;
use order_service::{telemetry, Application};

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().map_err(anyhow::Error::msg)?;
    telemetry::init(&config.log_filter, config.log_format, std::io::stderr);
    tracing::info!(?config, "starting order-service");
    let app = Application::build(config).await?;
    app.run_until_stopped().await
}
