//! The fulfillment-service binary: settings, logging, build, run.

use fulfillment_service::config::Config;
use fulfillment_service::{telemetry, Application};

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    telemetry::init(config.log_format);
    tracing::debug!(?config, "configuration");
    let app = Application::build(config).await?;
    app.run_until_stopped().await
}
