//! The report: a table on stdout and the same figures as JSON, with the
//! ratios to the broker's floor and the targets of issue 8.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;

use crate::broker::Published;
use crate::floor::Floor;
use crate::procs::CpuUse;
use crate::stats::{Rate, Summary};
use crate::workload::{OrdersResult, SignalResult};

/// Latency and rate of each GET series, by name.
#[derive(Debug, Default, Serialize)]
pub struct Gets(BTreeMap<String, (Summary, Rate)>);

impl Gets {
    pub fn insert(&mut self, name: &str, result: (Summary, Rate)) {
        // The key is the name up to its explanation in parentheses.
        let key = name.split(' ').next().unwrap_or(name).to_string();
        self.0.insert(key, result);
    }

    fn get(&self, key: &str) -> (Summary, Rate) {
        self.0.get(key).copied().unwrap_or_default()
    }
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
    pub rabbitmq: String,
}

impl Machine {
    pub async fn here() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024);
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory_mib,
            rabbitmq: crate::broker::rabbitmq_version().await,
        }
    }
}

pub struct Report {
    pub machine: Machine,
    pub args: String,
    pub managed: bool,
    /// The stores and replicas, e.g. `SQLite, 1 fulfillment-service replica`.
    pub setup: String,
    pub orders: OrdersResult,
    /// CPU time of each process during the order run.
    pub cpu: CpuUse,
    pub published: Published,
    pub floor: Floor,
    pub gets: Gets,
    pub signals: Option<Result<SignalResult, String>>,
}

/// The figures compared with the floor and the targets.
#[derive(Debug, Serialize)]
pub struct Derived {
    pub messages_per_order: f64,
    /// Orders per second the broker's confirmed-publish rate allows for
    /// the messages one order needs.
    pub broker_orders_per_second: f64,
    /// broker_orders_per_second / measured throughput (target <= 3).
    pub throughput_ratio: f64,
    pub throughput_target_met: bool,
    /// 2 x the raw round trip + the HTTP hop (p50).
    pub query_p50_target_ms: f64,
    pub query_c1_p50_ratio_to_rpc: f64,
    pub query_c64_p50_ratio_to_rpc: f64,
    pub query_target_met: bool,
}

impl Report {
    pub fn derived(&self) -> Derived {
        let shipped = self.orders.shipped.max(1) as f64;
        let messages_per_order = self.published.total as f64 / shipped;
        let broker_orders_per_second = if messages_per_order > 0.0 {
            self.floor.confirmed_publish.per_second / messages_per_order
        } else {
            0.0
        };
        let throughput = self.orders.throughput.per_second;
        let throughput_ratio = ratio(broker_orders_per_second, throughput);
        let (hop, _) = self.gets.get("http_hop_c1");
        let (q1, _) = self.gets.get("query_c1");
        let (q64, _) = self.gets.get("query_c64");
        let query_p50_target_ms = 2.0 * self.floor.rpc_c1.p50_ms + hop.p50_ms;
        Derived {
            messages_per_order,
            broker_orders_per_second,
            throughput_ratio,
            throughput_target_met: throughput_ratio <= 3.0,
            query_p50_target_ms,
            query_c1_p50_ratio_to_rpc: ratio(q1.p50_ms, self.floor.rpc_c1.p50_ms),
            query_c64_p50_ratio_to_rpc: ratio(q64.p50_ms, self.floor.rpc_c64.p50_ms),
            query_target_met: q1.p50_ms <= query_p50_target_ms,
        }
    }

    pub fn print(&self) {
        let d = self.derived();
        let f = &self.floor;
        let m = &self.machine;
        println!(
            "\nmachine: {} CPUs ({}), {} MiB, RabbitMQ {}; services {}; {}",
            m.cpus,
            m.cpu_model,
            m.memory_mib,
            m.rabbitmq,
            if self.managed {
                "started by loadgen, all delays 0"
            } else {
                "already running"
            },
            self.setup
        );
        println!(
            "\n{:<44} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8}",
            "latency (ms)", "p50", "p90", "p99", "max", "floor p50", "x floor"
        );
        let row = |name: &str, s: &Summary, floor: Option<f64>| {
            println!(
                "{:<44} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10} {:>8}",
                format!("{name} (n={})", s.count),
                s.p50_ms,
                s.p90_ms,
                s.p99_ms,
                s.max_ms,
                floor.map_or("".into(), |x| format!("{x:.2}")),
                floor.map_or("".into(), |x| format!("{:.1}", ratio(s.p50_ms, x))),
            );
        };
        row("floor: raw request/reply, c=1", &f.rpc_c1, None);
        row("floor: raw request/reply, c=64", &f.rpc_c64, None);
        row(
            "floor: one confirmed publish (quorum)",
            &f.confirm_one_at_a_time,
            None,
        );
        let rpc1 = Some(f.rpc_c1.p50_ms);
        let rpc64 = Some(f.rpc_c64.p50_ms);
        row(
            "HTTP hop: order-service /healthz, c=1",
            &self.gets.get("http_hop_c1").0,
            None,
        );
        row(
            "order status (store read), c=1",
            &self.gets.get("order_status_c1").0,
            None,
        );
        row(
            "fulfillment's own status route, c=1",
            &self.gets.get("fulfillment_direct_c1").0,
            None,
        );
        row(
            "fulfillment query via broker, c=1",
            &self.gets.get("query_c1").0,
            rpc1,
        );
        row(
            "fulfillment query via broker, c=64",
            &self.gets.get("query_c64").0,
            rpc64,
        );
        let o = &self.orders;
        let c = format!("c={}", o.concurrency);
        row(&format!("order create (POST), {c}"), &o.create, None);
        row(
            &format!("created -> fulfillment SHIPPED event, {c}"),
            &o.created_to_fulfillment_shipped,
            rpc1,
        );
        row(
            &format!("created -> order SHIPPED, {c}"),
            &o.created_to_order_shipped,
            rpc1,
        );
        match &self.signals {
            Some(Ok(s)) => {
                row("pause answered (HTTP 200), c=1", &s.pause_answered, rpc1);
                row(
                    "pause sent -> PAUSED by query, c=1",
                    &s.pause_to_paused_visible,
                    rpc1,
                );
                row(
                    "resume sent -> running by query, c=1",
                    &s.resume_to_running_visible,
                    rpc1,
                );
            }
            Some(Err(e)) => println!("signals: not measured: {e}"),
            None => {}
        }

        println!(
            "\n{:<44} {:>12} {:>14} {:>8}",
            "rate (per second)", "measured", "broker floor", "x floor"
        );
        let rate = |name: &str, value: f64, floor: f64| {
            println!(
                "{:<44} {:>12.0} {:>14.0} {:>8.2}",
                name,
                value,
                floor,
                ratio(value, floor)
            );
        };
        rate(
            "floor: confirmed publishes (quorum, window 512)",
            f.confirmed_publish.per_second,
            f.confirmed_publish.per_second,
        );
        rate(
            "floor: published + consumed + acked",
            f.publish_consume.per_second,
            f.confirmed_publish.per_second,
        );
        rate(
            "floor: raw request/reply, c=64",
            f.rpc_c64_rate.per_second,
            f.rpc_c64_rate.per_second,
        );
        rate(
            "fulfillment queries via broker, c=64",
            self.gets.get("query_c64").1.per_second,
            f.rpc_c64_rate.per_second,
        );
        rate(
            "orders shipped end to end",
            o.throughput.per_second,
            d.broker_orders_per_second,
        );

        println!(
            "\norders: {} shipped, {} not, at concurrency {}; {:.1} messages published per order: {}; {:.1} status reads per order by this tool",
            o.shipped,
            o.not_shipped,
            o.concurrency,
            d.messages_per_order,
            self.published
                .by_exchange
                .iter()
                .map(|(k, v)| format!("{k} {:.1}", *v as f64 / o.shipped.max(1) as f64))
                .collect::<Vec<_>>()
                .join(", "),
            o.status_reads_per_order,
        );
        let shipped = o.shipped.max(1) as f64;
        let measured: f64 = self.cpu.seconds.values().sum();
        println!(
            "CPU during the order run ({:.1} s; the machine's {} CPUs {:.0}% busy, {:.0}% of it by processes not listed here):",
            self.cpu.wall_seconds,
            m.cpus,
            100.0 * self.cpu.machine_busy_share,
            100.0 * ratio(
                (self.cpu.machine_busy_seconds - measured).max(0.0),
                self.cpu.machine_busy_seconds
            ),
        );
        for (name, seconds) in &self.cpu.seconds {
            println!(
                "  {name:<20} {:>6.2} ms per order  {:>4.0}% of a core",
                1e3 * seconds / shipped,
                100.0 * ratio(*seconds, self.cpu.wall_seconds)
            );
        }
        if let Some(rabbit) = self.cpu.seconds.get("rabbitmq") {
            println!(
                "  rabbitmq per message published: {:.0} us in the order flow; at the floor {:.0} us (confirms pipelined, consumed) and {:.0} us (one confirm at a time)",
                1e6 * rabbit / self.published.total.max(1) as f64,
                self.floor.broker_cpu_us_per_message,
                self.floor.broker_cpu_us_per_message_one_at_a_time
            );
        }
        println!("\ntargets:");
        println!(
            "  query p50 {:.2} ms <= 2 x raw round trip + HTTP hop = {:.2} ms: {}",
            self.gets.get("query_c1").0.p50_ms,
            d.query_p50_target_ms,
            met(d.query_target_met)
        );
        println!(
            "  throughput {:.0}/s within 3x of the broker's {:.0} orders/s ({:.0} confirmed msg/s / {:.1} msgs per order): {:.2}x, {}",
            o.throughput.per_second,
            d.broker_orders_per_second,
            f.confirmed_publish.per_second,
            d.messages_per_order,
            d.throughput_ratio,
            met(d.throughput_target_met)
        );
        println!("  (memory and recovery of 100,000 open fulfillments: run with --scale)");
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let value = json!({
            "machine": self.machine,
            "args": self.args,
            "servicesStartedByLoadgen": self.managed,
            "setup": self.setup,
            "orders": self.orders,
            "cpuDuringOrders": self.cpu,
            "published": {
                "total": self.published.total,
                "byExchange": self.published.by_exchange,
            },
            "floor": self.floor,
            "gets": self.gets,
            "signals": match &self.signals {
                Some(Ok(s)) => json!(s),
                Some(Err(e)) => json!({"error": e}),
                None => json!(null),
            },
            "derived": self.derived(),
        });
        write_json(path, &value)
    }
}

pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

pub fn met(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}
