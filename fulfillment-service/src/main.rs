//! The fulfillment-service binary: settings, logging, build, run.

use fulfillment_service::config::Config;
use fulfillment_service::{telemetry, Application};

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let telemetry = telemetry::init(config.log_format, config.exported_as())?;
    tracing::debug!(?config, "configuration");
    let result = async { Application::build(config).await?.run_until_stopped().await }.await;
    // Stopped (SIGTERM, SIGINT) or failed: the last spans go out first.
    telemetry.shutdown();
    result
}
