//! The order-service binary: settings, then the service kit's start-up.

use order_service::config::Config;
use order_service::Application;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().map_err(anyhow::Error::msg)?;
    service_kit::serve::run::<Application>(config, env!("CARGO_CRATE_NAME")).await
}
