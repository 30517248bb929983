//! The order-service binary: read config, init telemetry, build, run.

use std::io::Write;

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
    let result = async {
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
    }
    .await;
    // Stopped (SIGTERM, SIGINT) or failed: the last spans go out first.
    telemetry.shutdown();
    result
}
