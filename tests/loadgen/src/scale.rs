//! `--scale`: fulfillment-service holding many open fulfillments.
//!
//! 1. Start fulfillment-service alone on a vhost of its own.
//! 2. Publish `StartFulfillmentWorkflow` for `--open` fulfillments to
//!    `fulfillment.signals` (persistent, confirms pipelined), and wait
//!    until `/metrics` counts them all `WAITING`.
//! 3. Resident memory (`VmRSS`) before and after: per open fulfillment.
//! 4. Status requests per second on its own status route (`wrk` when it is
//!    installed, else an HTTP loop in this process).
//! 5. `kill -9`, start again, time until `/readyz` answers with all of them
//!    recovered into running actors.
//!
//! Every wait is bounded by `--scale-timeout`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde::Serialize;
use serde_json::json;
use shared_messages::ids::fulfillment_workflow_id;
use shared_messages::messages::StartFulfillmentWorkflow;
use shared_messages::topology::{FULFILLMENT_SIGNALS_EXCHANGE, FULFILLMENT_SIGNAL_KEY};
use shared_messages::{Envelope, Message};
use system_tests::{Http, Service, TestVhost};

use crate::args::Args;
use crate::procs;
use crate::report::{met, ratio, write_json};
use crate::stats::{Rate, Summary};
use crate::system::report_dir;

/// Unconfirmed signals in flight at once.
const CONFIRM_WINDOW: usize = 1000;
/// How long the status-route load runs.
const STATUS_LOAD: Duration = Duration::from_secs(10);
/// Connections for the status-route load.
const STATUS_CONNECTIONS: usize = 64;

#[derive(Debug, Serialize)]
struct ScaleReport {
    open: usize,
    machine: crate::report::Machine,
    /// Signals published until all confirmed.
    signals_published: Rate,
    /// First publish until `/metrics` counts all of them `WAITING`.
    fulfillments_created: Rate,
    rss_idle_kib: u64,
    rss_open_kib: u64,
    bytes_per_open_fulfillment: f64,
    memory_target_met: bool,
    store_bytes: u64,
    status_requests: StatusLoad,
    /// `kill -9`, start: until `/readyz` answers 200.
    restart_to_ready_seconds: f64,
    /// Until `/metrics` counts every actor started (None: not within 120 s).
    restart_to_all_actors_started_seconds: Option<f64>,
    recovered_actors: u64,
    rss_after_restart_kib: u64,
    recovery_target_met: bool,
}

#[derive(Debug, Serialize)]
struct StatusLoad {
    tool: String,
    connections: usize,
    seconds: f64,
    requests_per_second: f64,
    latency: Option<Summary>,
    detail: String,
}

pub async fn run(args: &Args) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.scale_timeout_s);
    let n = args.open;
    let vhost = TestVhost::create("loadgen-scale").await?;
    let dir = tempfile::tempdir()?;
    let mut service = Service::start(
        "fulfillment-service",
        &vhost,
        dir.path(),
        &[("STEP_DELAY_MS", "0")],
    )
    .await?;
    service.wait_ready().await?;
    let http = Http::new();
    let pid = service.pid().context("fulfillment-service's pid")?;
    let rss_idle_kib = procs::rss_kib(pid).unwrap_or(0);

    // Open fulfillments: signals in confirmed windows, then wait for all.
    let bar = crate::bar(n, "StartFulfillmentWorkflow published");
    let start = Instant::now();
    publish_starts(&vhost.amqp_url, n, &bar)
        .await
        .context("publishing StartFulfillmentWorkflow signals")?;
    let signals_published = Rate::of(n as u64, start.elapsed());
    bar.finish();
    let bar = crate::bar(n, "fulfillments WAITING (by /metrics)");
    loop {
        let waiting = match metric(
            &service.url("/metrics"),
            "fulfillments",
            "status=\"WAITING\"",
        )
        .await
        {
            Ok(Some(n)) => n,
            Ok(None) => {
                bail!("fulfillment-service's /metrics has no fulfillments{{status=\"WAITING\"}}")
            }
            Err(_) => 0, // busy; ask again
        };
        bar.set_position(waiting);
        if waiting as usize >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {waiting} of {n} fulfillments created before --scale-timeout");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let fulfillments_created = Rate::of(n as u64, start.elapsed());
    bar.finish();
    // Let allocator and store settle before reading memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_open_kib = procs::rss_kib(pid).unwrap_or(0);
    let bytes_per_open_fulfillment =
        (rss_open_kib.saturating_sub(rss_idle_kib) * 1024) as f64 / n as f64;

    // Status requests on the service's own route.
    let id = fulfillment_workflow_id(&order_id(n / 2));
    let status_url = service.url(&format!("/fulfillments/{id}/status"));
    let status_requests = status_load(&http, &status_url).await?;

    // Restart with all of them unfinished in the store.
    let store_bytes = dir_size(dir.path());
    service.kill().await?;
    let started = Instant::now();
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner.set_message(format!("restart with {n} open: waiting for /readyz"));
    // Recovery runs before the listener binds: the port is known once every
    // fulfillment is loaded, and a new one (the restart binds port 0 again).
    service
        .launch(deadline.saturating_duration_since(Instant::now()))
        .await
        .context("fulfillment-service during recovery")?;
    let ready_url = service.url("/readyz");
    let ready_body = loop {
        if let Ok((200, body)) = http.get(&ready_url).await {
            break body;
        }
        if Instant::now() > deadline {
            bail!("fulfillment-service not ready before --scale-timeout");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let restart_to_ready_seconds = started.elapsed().as_secs_f64();
    spinner.finish_and_clear();
    let rss_after_restart_kib = service.pid().and_then(procs::rss_kib).unwrap_or_default();
    // Ready means every actor is spawned (recovery runs before the listener
    // binds); each then starts on the actix arbiter. Count those started.
    let metrics_url = service.url("/metrics");
    let mut recovered_actors = 0;
    let mut all_actors_started_seconds = None;
    while Instant::now() < deadline && started.elapsed() < Duration::from_secs(120) {
        recovered_actors = match metric(&metrics_url, "actors", "").await {
            Ok(Some(n)) => n,
            _ => match metric(&metrics_url, "actors_running", "").await {
                Ok(Some(n)) => n,
                _ => ready_body["runningFulfillments"].as_u64().unwrap_or(0),
            },
        };
        if recovered_actors as usize >= n {
            all_actors_started_seconds = Some(started.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = service.kill().await;

    let report = ScaleReport {
        open: n,
        machine: crate::report::Machine::here().await,
        signals_published,
        fulfillments_created,
        rss_idle_kib,
        rss_open_kib,
        bytes_per_open_fulfillment,
        memory_target_met: rss_open_kib * 1024 < (1 << 30) * n as u64 / 100_000,
        store_bytes,
        status_requests,
        restart_to_ready_seconds,
        restart_to_all_actors_started_seconds: all_actors_started_seconds,
        recovered_actors,
        rss_after_restart_kib,
        recovery_target_met: restart_to_ready_seconds < 10.0 * n as f64 / 100_000.0,
    };
    print(&report);
    let path = args
        .out
        .clone()
        .map(Into::into)
        .unwrap_or_else(|| report_dir().join("scale.json"));
    write_json(&path, &json!(report))?;
    println!("\nreport written to {}", path.display());
    drop(vhost);
    Ok(())
}

fn order_id(i: usize) -> String {
    format!("LOAD-{i:07}")
}

/// Publishes `n` `StartFulfillmentWorkflow` signals as order-service
/// would publish a signal: persistent, mandatory, confirmed.
async fn publish_starts(amqp_url: &str, n: usize, bar: &indicatif::ProgressBar) -> Result<()> {
    let connection = Connection::connect(
        amqp_url,
        ConnectionProperties::default().with_connection_name("loadgen-scale".into()),
    )
    .await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut window = VecDeque::with_capacity(CONFIRM_WINDOW);
    for i in 0..n {
        if window.len() == CONFIRM_WINDOW {
            confirmed(window.pop_front().expect("window is full")).await?;
            bar.inc(1);
        }
        let order_id = order_id(i);
        let id = fulfillment_workflow_id(&order_id);
        let envelope = Envelope::new(
            id.as_str(),
            Message::StartFulfillmentWorkflow(StartFulfillmentWorkflow { order_id }),
        );
        let confirm = channel
            .basic_publish(
                FULFILLMENT_SIGNALS_EXCHANGE.into(),
                FULFILLMENT_SIGNAL_KEY.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &envelope.to_json(),
                BasicProperties::default()
                    .with_message_id(envelope.message_id.to_string().into())
                    .with_type(envelope.message_type().into())
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await?;
        window.push_back(confirm);
    }
    for confirm in window {
        confirmed(confirm).await?;
        bar.inc(1);
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

async fn confirmed(confirm: lapin::PublisherConfirm) -> Result<()> {
    let confirmation = confirm.await?;
    if confirmation.is_nack() || confirmation.take_message().is_some() {
        bail!("a StartFulfillmentWorkflow signal was refused (nack or unroutable)");
    }
    Ok(())
}

/// The sum of the Prometheus samples named `name` (or `<prefix>_name`: the
/// services prefix their metrics) whose labels contain `label`; `None` when
/// there is no such sample.
async fn metric(url: &str, name: &str, label: &str) -> Result<Option<u64>> {
    let text = reqwest::get(url).await?.text().await?;
    let suffix = format!("_{name}");
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
        if (metric == name || metric.ends_with(&suffix)) && labels.contains(label) {
            if let Ok(v) = value.parse::<f64>() {
                *sum.get_or_insert(0.0) += v;
            }
        }
    }
    Ok(sum.map(|s: f64| s as u64))
}

/// `wrk` for `STATUS_LOAD` when installed, else this process's HTTP client.
async fn status_load(http: &Http, url: &str) -> Result<StatusLoad> {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner.set_message(format!("status requests for {STATUS_LOAD:?}"));
    let wrk = tokio::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{STATUS_CONNECTIONS}"),
            &format!("-d{}s", STATUS_LOAD.as_secs()),
            "--latency",
            url,
        ])
        .output()
        .await;
    let result = match wrk {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let rps = text
                .lines()
                .find_map(|l| l.strip_prefix("Requests/sec:"))
                .and_then(|v| v.trim().parse().ok())
                .context("wrk printed no Requests/sec")?;
            let non_2xx = text.lines().find(|l| l.contains("Non-2xx"));
            if let Some(line) = non_2xx {
                bail!("wrk saw errors: {line}");
            }
            StatusLoad {
                tool: "wrk -t2 -c64 --latency".into(),
                connections: STATUS_CONNECTIONS,
                seconds: STATUS_LOAD.as_secs_f64(),
                requests_per_second: rps,
                latency: None,
                detail: text,
            }
        }
        _ => {
            // No wrk: as many GETs as fit in STATUS_LOAD, 64 at a time.
            let urls = vec![url.to_string()];
            let hidden = indicatif::ProgressBar::hidden();
            let probe =
                crate::workload::gets(http, &urls, 2000, STATUS_CONNECTIONS, &hidden).await?;
            let requests = ((probe.1.per_second * STATUS_LOAD.as_secs_f64()) as usize).max(1000);
            let (latency, rate) =
                crate::workload::gets(http, &urls, requests, STATUS_CONNECTIONS, &hidden).await?;
            StatusLoad {
                tool: "in-process HTTP loop (reqwest), 64 concurrent (wrk not installed)".into(),
                connections: STATUS_CONNECTIONS,
                seconds: rate.seconds,
                requests_per_second: rate.per_second,
                latency: Some(latency),
                detail: String::new(),
            }
        }
    };
    spinner.finish_and_clear();
    Ok(result)
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn print(r: &ScaleReport) {
    let m = &r.machine;
    println!(
        "\nmachine: {} CPUs ({}), {} MiB, RabbitMQ {}",
        m.cpus, m.cpu_model, m.memory_mib, m.rabbitmq
    );
    println!(
        "\nfulfillment-service with {} open fulfillments (WAITING)",
        r.open
    );
    println!(
        "  signals published and confirmed     {:>10.0} /s ({:.1} s)",
        r.signals_published.per_second, r.signals_published.seconds
    );
    println!(
        "  fulfillments created (all WAITING)  {:>10.0} /s ({:.1} s)",
        r.fulfillments_created.per_second, r.fulfillments_created.seconds
    );
    println!(
        "  resident memory                     {:>10.1} MiB idle -> {:.1} MiB open ({:.0} bytes per open fulfillment); store files {:.1} MiB",
        r.rss_idle_kib as f64 / 1024.0,
        r.rss_open_kib as f64 / 1024.0,
        r.bytes_per_open_fulfillment,
        r.store_bytes as f64 / 1048576.0
    );
    println!(
        "  status requests (own route)         {:>10.0} /s with {} ({} connections, {:.0} s)",
        r.status_requests.requests_per_second,
        r.status_requests.tool,
        r.status_requests.connections,
        r.status_requests.seconds
    );
    println!(
        "  kill -9, start -> /readyz           {:>10.2} s; all {} actors started after {}; {:.1} MiB then",
        r.restart_to_ready_seconds,
        r.recovered_actors,
        r.restart_to_all_actors_started_seconds
            .map_or("(not within 120 s)".to_string(), |s| format!("{s:.2} s")),
        r.rss_after_restart_kib as f64 / 1024.0
    );
    println!("\ntargets:");
    println!(
        "  {} open in under 1 GiB: {:.1} MiB, {}",
        r.open,
        r.rss_open_kib as f64 / 1024.0,
        met(r.memory_target_met)
    );
    println!(
        "  recovery of {} in under 10 s: {:.2} s, {} ({:.0} fulfillments/s)",
        r.open,
        r.restart_to_ready_seconds,
        met(r.recovery_target_met),
        ratio(r.open as f64, r.restart_to_ready_seconds)
    );
}
