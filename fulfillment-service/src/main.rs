//! The fulfillment-service binary: settings, then the service kit's start-up.

use fulfillment_service::config::Config;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    service_kit::serve::run(
        config,
        env!("CARGO_PKG_NAME"),
        env!("CARGO_CRATE_NAME"),
        fulfillment_service::build,
    )
    .await
}
