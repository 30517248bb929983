//! The order-service binary: settings, then the service kit's start-up.

use order_service::config::Config;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().map_err(anyhow::Error::msg)?;
    service_kit::serve::run(
        config,
        env!("CARGO_PKG_NAME"),
        env!("CARGO_CRATE_NAME"),
        order_service::build,
    )
    .await
}
