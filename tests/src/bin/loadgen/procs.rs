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

/// RabbitMQ's Erlang VM on this machine, if it runs here.
pub fn rabbitmq() -> Option<u32> {
    pids().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim() == "beam.smp")
    })
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
    wall: Option<std::time::Instant>,
}

/// CPU seconds each process used, and its share of one core.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuUse {
    pub wall_seconds: f64,
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
            wall: Some(std::time::Instant::now()),
        }
    }

    pub fn stop(&self) -> CpuUse {
        CpuUse {
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
