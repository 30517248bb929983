//! Processes seen through `/proc`: CPU time and resident memory.

use std::collections::BTreeMap;

use serde::Serialize;

/// `/proc/<pid>/stat` counts CPU time in clock ticks of 1/100 s on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// The process whose environment has `HTTP_ADDR=<addr>`: a service
/// started on that address (ports are unique, binaries may run twice).
pub fn by_http_addr(addr: &str) -> Option<u32> {
    let needle = format!("HTTP_ADDR={addr}");
    pids().find(|pid| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
            .unwrap_or(false)
    })
}

/// RabbitMQ's Erlang VM on this machine, if it runs here: the oldest
/// `beam.smp` (tests may start brokers of their own beside it).
pub fn rabbitmq() -> Option<u32> {
    pids()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "beam.smp")
        })
        .min()
}

/// Busy and total CPU seconds of the whole machine, from `/proc/stat`.
fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user).
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some(((total - idle) / TICKS_PER_SECOND, total / TICKS_PER_SECOND))
}

fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
}

/// User + system CPU seconds a process has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 of `rest`.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Resident memory (`VmRSS`) in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time of named processes over a stretch of work.
#[derive(Debug, Clone, Default)]
pub struct CpuMeter {
    start: BTreeMap<String, (u32, f64)>,
    machine: Option<(f64, f64)>,
    wall: Option<std::time::Instant>,
}

/// CPU seconds each process used, and its share of one core.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUse {
    pub wall_seconds: f64,
    /// Busy CPU seconds of the whole machine (all CPUs), including
    /// processes not measured here (other work on a shared machine).
    pub machine_busy_seconds: f64,
    /// Of all CPUs' time, the share that was busy.
    pub machine_busy_share: f64,
    /// name -> CPU seconds.
    pub seconds: BTreeMap<String, f64>,
}

impl CpuMeter {
    pub fn start(processes: &[(&str, Option<u32>)]) -> Self {
        let start = processes
            .iter()
            .filter_map(|(name, pid)| {
                let pid = (*pid)?;
                Some((name.to_string(), (pid, cpu_seconds(pid)?)))
            })
            .collect();
        Self {
            start,
            machine: machine_cpu(),
            wall: Some(std::time::Instant::now()),
        }
    }

    pub fn stop(&self) -> CpuUse {
        let (busy, share) = match (self.machine, machine_cpu()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0, (b1 - b0) / (t1 - t0)),
            _ => (0.0, 0.0),
        };
        CpuUse {
            machine_busy_seconds: busy,
            machine_busy_share: share,
            wall_seconds: self.wall.map_or(0.0, |w| w.elapsed().as_secs_f64()),
            seconds: self
                .start
                .iter()
                .filter_map(|(name, (pid, before))| {
                    Some((name.clone(), cpu_seconds(*pid)? - before))
                })
                .collect(),
        }
    }
}
