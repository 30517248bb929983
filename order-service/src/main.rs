//! The order-service binary: read config, init telemetry, build, run.

use order_service::config::Config;
use order_service::{telemetry, Application};

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().map_err(anyhow::Error::msg)?;
    let telemetry = telemetry::init(
        &config.log_filter,
        config.log_format,
        config.exported_as(),
        env!("CARGO_CRATE_NAME"),
        std::io::stderr,
    )?;
    tracing::info!(?config, "starting order-service");
    let result = async { Application::build(config).await?.run_until_stopped().await }.await;
    // Stopped (SIGTERM, SIGINT) or failed: the last spans go out first.
    telemetry.shutdown();
    result
}
