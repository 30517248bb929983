//! Load generator: drives order-service and fulfillment-service over HTTP
//! and reports throughput and latencies, each beside what RabbitMQ alone
//! does on the same broker in the same run. See `docs/performance.md`.
//!
//! - [`args`]: options; `--help` prints them.
//! - [`system`]: the services, started here or already running.
//! - [`floor`]: raw lapin request/reply and confirmed publish/consume.
//! - [`events`]: learning of finished orders from the broker.
//! - [`workload`]: orders end to end, queries, pause/resume.
//! - [`broker`]: messages published, from the management API.
//! - [`procs`]: CPU time and memory of the processes, from `/proc`.
//! - [`scale`]: memory and recovery with many open fulfillments.
//! - [`failover`]: how long the replicas take to recover from a crash.
//! - [`report`]: the table and the JSON file.

mod args;
mod broker;
mod events;
mod failover;
mod floor;
mod procs;
mod report;
mod scale;
mod stats;
mod system;
mod workload;

use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use system_tests::Http;

use args::Args;
use report::Report;
use system::System;

/// Step delay while pause and resume are measured: long enough that a
/// fulfillment is always inside a step.
const LONG_STEP_MS: u64 = 600_000;

#[tokio::main]
async fn main() -> Result<()> {
    let Some(args) = Args::parse()? else {
        print!("{}", args::HELP);
        return Ok(());
    };
    if !args.external() && args.build {
        system::build_services()?;
    }
    if args.scale {
        return scale::run(&args).await;
    }
    if args.failover > 0 {
        return failover::run(&args).await;
    }
    let report = run(&args).await?;
    report.print();
    let path = args
        .out
        .clone()
        .map(Into::into)
        .unwrap_or_else(|| system::report_dir().join("report.json"));
    report.write(&path)?;
    println!("\nreport written to {}", path.display());
    Ok(())
}

fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:40} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("the template is valid"),
    );
    bar.set_message(what.to_string());
    bar
}

async fn run(args: &Args) -> Result<Report> {
    let spinner = ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner.set_message("starting the services");
    let mut system = System::start(args).await?;
    let http = Http::new();
    let order_url = system.order_url();
    let fulfillment_url = system.fulfillment_url();
    let completions = events::Completions::subscribe(&system.amqp_url())
        .await
        .context("subscribing to fulfillment events")?;
    let vhost = system.vhost();
    let before = broker::published(&vhost).await?;
    spinner.finish_and_clear();

    // 1. Orders end to end, with the CPU time each process spends on them.
    let mut processes = system.processes();
    processes.push(("rabbitmq".into(), procs::rabbitmq()));
    processes.push(("loadgen".into(), Some(std::process::id())));
    let named: Vec<(&str, Option<u32>)> = processes.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    let meter = procs::CpuMeter::start(&named);
    let progress = bar(args.orders, "orders: created -> SHIPPED");
    let (orders, shipped) = workload::orders(
        &http,
        &system.order_urls(),
        &completions,
        args.orders,
        args.concurrency,
        &progress,
    )
    .await
    .context("orders end to end")?;
    let cpu = meter.stop();
    progress.finish();

    // 2. The floor, on a vhost of its own, while the services' message
    //    counts settle in the management API.
    let counting = {
        let vhost = vhost.clone();
        tokio::spawn(async move {
            broker::settled(
                &vhost,
                Duration::from_millis(5_500),
                Duration::from_secs(30),
            )
            .await
        })
    };
    let spinner = ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    // lapin has been seen to fail a connection mid-measurement ("invalid
    // connection state") with nothing logged by the broker; one more try,
    // on a fresh vhost, keeps such a run from being lost.
    let mut attempt = 1;
    let floor = loop {
        let floor_vhost = system_tests::TestVhost::create("loadgen-floor").await?;
        let measured = floor::measure(
            &floor_vhost.amqp_url,
            args.queries,
            args.floor_messages,
            &spinner,
        )
        .await;
        drop(floor_vhost);
        match measured {
            Ok(floor) => break floor,
            Err(error) if attempt == 1 => {
                spinner.println(format!(
                    "measuring the broker's floor failed ({error:#}); measuring it again"
                ));
                attempt += 1;
            }
            Err(error) => return Err(error.context("measuring the broker's floor")),
        }
    };
    spinner.set_message("waiting for the management API's message counts");
    let published = counting.await?.context("message counts")?.since(&before);
    spinner.finish_and_clear();

    // 3. Queries and HTTP alone.
    let ids: Vec<&str> = shipped.iter().map(|o| o.fulfillment_id.as_str()).collect();
    let through_broker: Vec<String> = ids
        .iter()
        .map(|id| format!("{order_url}/orders/fulfillment/{id}/status"))
        .collect();
    let direct: Vec<String> = ids
        .iter()
        .map(|id| format!("{fulfillment_url}/fulfillments/{id}/status"))
        .collect();
    let order_status: Vec<String> = shipped
        .iter()
        .map(|o| format!("{order_url}/orders/{}/status", o.workflow_id))
        .collect();
    let healthz = vec![format!("{order_url}/healthz")];
    let n = args.queries;
    let mut gets = report::Gets::default();
    for (name, urls, requests, concurrency) in [
        ("http_hop_c1 (order-service /healthz)", &healthz, n, 1),
        ("order_status_c1 (store read)", &order_status, n, 1),
        ("fulfillment_direct_c1 (its own HTTP)", &direct, n, 1),
        ("query_c1 (HTTP -> broker -> actor)", &through_broker, n, 1),
        (
            "query_c64 (HTTP -> broker -> actor)",
            &through_broker,
            4 * n,
            64,
        ),
    ] {
        let progress = bar(requests, name);
        let result = workload::gets(&http, urls, requests, concurrency, &progress)
            .await
            .with_context(|| name.to_string())?;
        progress.finish();
        gets.insert(name, result);
    }

    // 4. Pause and resume, one at a time, on fulfillments inside a step.
    let signals = if args.signals == 0 {
        None
    } else {
        let spinner = ProgressBar::new_spinner();
        spinner.set_message("fulfillment-service with long steps: orders to pause");
        spinner.enable_steady_tick(Duration::from_millis(120));
        let result = async {
            system.set_step_delay(LONG_STEP_MS).await?;
            workload::running_orders(&http, &order_url, args.signals).await
        }
        .await;
        spinner.finish_and_clear();
        match result {
            Ok(running) => {
                let progress = bar(running.len(), "pause -> PAUSED, resume -> running");
                let result = workload::signals(&http, &order_url, &running, &progress).await;
                progress.finish();
                Some(result.map_err(|e| format!("{e:#}")))
            }
            Err(e) => Some(Err(format!("{e:#}"))),
        }
    };

    system.stop().await?;
    Ok(Report {
        machine: report::Machine::here().await,
        args: format!("{args:?}"),
        managed: !args.external(),
        setup: format!(
            "{}, {} fulfillment-service replica{}",
            if args.postgres {
                "PostgreSQL"
            } else {
                "SQLite"
            },
            args.replicas,
            if args.replicas == 1 { "" } else { "s" }
        ),
        orders,
        cpu,
        published,
        floor,
        gets,
        signals,
    })
}
