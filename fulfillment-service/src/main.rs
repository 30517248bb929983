//! The fulfillment-service binary: settings, logging, build, run.

use std::io::Write;

use fulfillment_service::config::Config;
use fulfillment_service::Application;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let common = config.common.clone();
    service_kit::serve::main(&common, env!("CARGO_CRATE_NAME"), async move {
        tracing::debug!(?config, "configuration");
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
    })
    .await
}
