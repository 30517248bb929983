//! The fulfillment-service binary: settings, logging, build, run.

use std::io::Write;

use fulfillment_service::config::Config;
use fulfillment_service::{telemetry, Application};

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    // `RUST_LOG` filters the log (default `info`); stderr, so a test
    // harness that ignores it stays quiet.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let telemetry = telemetry::init(
        &filter,
        config.log_format,
        config.exported_as(),
        env!("CARGO_CRATE_NAME"),
        std::io::stderr,
    )?;
    tracing::debug!(?config, "configuration");
    let result = async {
        let app = Application::build(config).await?;
        // The bound port on stdout, one line: with `HTTP_ADDR=127.0.0.1:0`
        // the OS picks a free port, and whoever started the process reads
        // it here (logs go to stderr). A closed stdout is no reason to stop.
        let _ = writeln!(
            std::io::stdout(),
            "fulfillment-service listening on port {}",
            app.port()
        );
        app.run_until_stopped().await
    }
    .await;
    // Stopped (SIGTERM, SIGINT) or failed: the last spans go out first.
    telemetry.shutdown();
    result
}
