//! `--failover K`: how long the fulfillment-service replicas take to
//! recover from a crash. Each of K rounds places orders, lets them get
//! under way, kills one replica (`kill -9`, round robin), and times:
//! - **takeover**: from the kill until the survivors own every partition
//!   between them (their `/readyz`), which waits out the dead replica's
//!   leases (`LEASE_TTL_MS`, 10 s by default);
//! - **last order shipped**: from the kill until every order of the round
//!   has shipped (those of the dead replica's partitions are resumed by
//!   their new owners from the store).
//!
//! The killed replica is started again and the partitions rebalanced
//! before the next round.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use system_tests::{eventually, Http, Service};

use crate::args::Args;
use crate::stats::Summary;
use crate::system::{self, System};

/// Each step this long, so a round's fulfillments are still under way
/// when the replica dies.
const STEP_MS: u64 = 200;
/// Orders placed in each round, before the kill.
const ORDERS_PER_ROUND: usize = 30;
/// The services' defaults (`PARTITIONS`, `LEASE_TTL_MS`), which the
/// load generator leaves as they are.
const PARTITIONS: u16 = 16;
const LEASE_TTL_MS: u64 = 10_000;
/// Longest a takeover or a round's orders may take before the run fails.
const ROUND_LIMIT: Duration = Duration::from_secs(120);

#[derive(Debug, Serialize)]
struct Round {
    killed: String,
    /// Partitions the killed replica owned.
    partitions: usize,
    takeover_ms: f64,
    last_order_shipped_ms: f64,
}

#[derive(Debug, Serialize)]
struct FailoverReport {
    replicas: usize,
    lease_ttl_ms: u64,
    step_delay_ms: u64,
    orders_per_round: usize,
    takeover: Summary,
    last_order_shipped: Summary,
    rounds: Vec<Round>,
}

pub async fn run(args: &Args) -> Result<()> {
    if args.replicas < 2 || !args.postgres {
        bail!("--failover needs --store postgres and --replicas 2 or more");
    }
    let mut system = System::start(args).await?;
    system.set_step_delay(STEP_MS).await?;
    let order_url = system.order_url();
    let http = Http::new();
    let mut rounds = Vec::new();
    for round in 0..args.failover {
        let victim = round % args.replicas;
        let mut orders = Vec::new();
        for _ in 0..ORDERS_PER_ROUND {
            let (code, body) = http.post(&format!("{order_url}/orders/demo"), None).await?;
            if code != 201 {
                bail!("creating an order: {code} {body}");
            }
            let id = body["workflowId"]
                .as_str()
                .context("the created order's workflowId")?;
            orders.push(id.to_owned());
        }
        // Under way: picked up by fulfillment, not yet shipped.
        tokio::time::sleep(Duration::from_millis(2 * STEP_MS)).await;

        let mut replicas = system.fulfillment_replicas_mut();
        let partitions = owned(&http, replicas[victim]).await?.len();
        let killed = replicas[victim].base_url();
        replicas[victim].kill().await?;
        let killed_at = Instant::now();
        let survivors: Vec<&Service> = system
            .fulfillment_replicas()
            .into_iter()
            .filter(|s| s.pid().is_some())
            .collect();
        let takeover = taken_over(&http, &survivors, PARTITIONS, killed_at).await?;
        let shipped = all_shipped(&http, &order_url, &orders, killed_at).await?;
        println!(
            "round {}: killed {killed} ({partitions} partitions): taken over in {:.1} s, last order shipped {:.1} s after the kill",
            round + 1,
            takeover.as_secs_f64(),
            shipped.as_secs_f64()
        );
        rounds.push(Round {
            killed,
            partitions,
            takeover_ms: takeover.as_secs_f64() * 1e3,
            last_order_shipped_ms: shipped.as_secs_f64() * 1e3,
        });

        let mut replicas = system.fulfillment_replicas_mut();
        replicas[victim].restart().await?;
        replicas[victim].wait_ready().await?;
        system.wait_balanced().await?;
    }

    let takeovers: Vec<Duration> = rounds
        .iter()
        .map(|r| Duration::from_secs_f64(r.takeover_ms / 1e3))
        .collect();
    let shipped: Vec<Duration> = rounds
        .iter()
        .map(|r| Duration::from_secs_f64(r.last_order_shipped_ms / 1e3))
        .collect();
    let report = FailoverReport {
        replicas: args.replicas,
        lease_ttl_ms: LEASE_TTL_MS,
        step_delay_ms: STEP_MS,
        orders_per_round: ORDERS_PER_ROUND,
        takeover: Summary::of(&takeovers),
        last_order_shipped: Summary::of(&shipped),
        rounds,
    };
    println!(
        "\nfailover over {} kills, {} replicas, LEASE_TTL_MS {}: takeover p50 {:.1} s, max {:.1} s; last order shipped p50 {:.1} s, max {:.1} s",
        report.rounds.len(),
        report.replicas,
        report.lease_ttl_ms,
        report.takeover.p50_ms / 1e3,
        report.takeover.max_ms / 1e3,
        report.last_order_shipped.p50_ms / 1e3,
        report.last_order_shipped.max_ms / 1e3,
    );
    let path: PathBuf = args
        .out
        .clone()
        .map(Into::into)
        .unwrap_or_else(|| system::report_dir().join("failover.json"));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("report written to {}", path.display());
    system.stop().await
}

/// The partitions `service` owns, from its `/readyz`.
async fn owned(http: &Http, service: &Service) -> Result<Vec<u64>> {
    let (_, body) = http.get(&service.url("/readyz")).await?;
    Ok(body["partitions"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p.as_u64()).collect())
        .unwrap_or_default())
}

/// How long after `since` the `survivors` owned all `partitions` between
/// them, none twice.
async fn taken_over(
    http: &Http,
    survivors: &[&Service],
    partitions: u16,
    since: Instant,
) -> Result<Duration> {
    eventually(
        "the survivors to own every partition",
        ROUND_LIMIT,
        || async {
            let mut all = BTreeSet::new();
            let mut count = 0;
            for service in survivors {
                let share = owned(http, service).await?;
                count += share.len();
                all.extend(share);
            }
            Ok((all.len() == usize::from(partitions) && count == all.len())
                .then(|| since.elapsed()))
        },
    )
    .await
}

/// How long after `since` every order of `orders` was `SHIPPED`.
async fn all_shipped(
    http: &Http,
    order_url: &str,
    orders: &[String],
    since: Instant,
) -> Result<Duration> {
    eventually("the round's orders to ship", ROUND_LIMIT, || async {
        for id in orders {
            let (_, body) = http.get(&format!("{order_url}/orders/{id}/status")).await?;
            match body["status"].as_str() {
                Some("SHIPPED") => {}
                Some(s @ ("CANCELLED" | "FAILED")) => bail!("order {id} ended {s}"),
                _ => return Ok(None),
            }
        }
        Ok(Some(since.elapsed()))
    })
    .await
}
