//! The order-service binary: read config, init telemetry, build, run.

use std::io::Write;

use order_service::config::Config;
use order_service::Application;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env().map_err(anyhow::Error::msg)?;
    let common = config.common.clone();
    service_kit::serve::main(&common, env!("CARGO_CRATE_NAME"), async move {
        tracing::info!(?config, "starting order-service");
        let app = Application::build(config).await?;
        // The bound port on stdout, one line: with `HTTP_ADDR=127.0.0.1:0`
        // the OS picks a free port, and whoever started the process reads
        // it here (logs go to stderr). A closed stdout is no reason to stop.
        let _ = writeln!(
            std::io::stdout(),
            "order-service listening on port {}",
            app.port()
        );
        app.run_until_stopped().await
    })
    .await
}
