//! The fulfillment-service binary: settings, then the service kit's start-up.

use fulfillment_service::config::Config;
use fulfillment_service::Application;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    service_kit::serve::run::<Application>(config, env!("CARGO_CRATE_NAME")).await
}
