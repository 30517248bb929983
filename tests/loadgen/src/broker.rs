//! Counting what crosses the broker, from the management API.
//!
//! The management API refreshes its statistics every
//! `collect_statistics_interval` (5 s by default), so a count is read again
//! until it stops changing.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;
use system_tests::{encode, management_base};

/// Publishes into each exchange of a vhost (`""` is the default exchange,
/// used by replies), and the vhost's total.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Published {
    pub total: u64,
    pub by_exchange: BTreeMap<String, u64>,
}

impl Published {
    pub fn since(&self, before: &Published) -> Published {
        Published {
            total: self.total.saturating_sub(before.total),
            by_exchange: self
                .by_exchange
                .iter()
                .map(|(k, v)| {
                    let was = before.by_exchange.get(k).copied().unwrap_or(0);
                    (k.clone(), v.saturating_sub(was))
                })
                .filter(|(_, v)| *v > 0)
                .collect(),
        }
    }
}

pub async fn published(vhost: &str) -> Result<Published> {
    let client = reqwest::Client::new();
    let base = management_base();
    let response = client
        .get(format!("{base}/api/vhosts/{}", encode(vhost)))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("management API: vhost {vhost}: {}", response.status());
    }
    let v: Value = response.json().await?;
    let total = v["message_stats"]["publish"].as_u64().unwrap_or(0);
    let response = client
        .get(format!("{base}/api/exchanges/{}", encode(vhost)))
        .send()
        .await?;
    let exchanges: Vec<Value> = response.json().await?;
    let by_exchange = exchanges
        .iter()
        .filter_map(|e| {
            let n = e["message_stats"]["publish_in"].as_u64()?;
            let name = e["name"].as_str()?;
            let name = if name.is_empty() { "(default)" } else { name };
            Some((name.to_string(), n))
        })
        .collect();
    Ok(Published { total, by_exchange })
}

/// Reads the counts until two reads `interval` apart agree (at most
/// `deadline`), so the statistics cover everything already published.
pub async fn settled(vhost: &str, interval: Duration, deadline: Duration) -> Result<Published> {
    let start = Instant::now();
    let mut last = published(vhost).await?;
    loop {
        tokio::time::sleep(interval).await;
        let now = published(vhost).await?;
        if now == last || start.elapsed() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// The broker's version, for the report.
pub async fn rabbitmq_version() -> String {
    let url = format!("{}/api/overview", management_base());
    match reqwest::get(url).await {
        Ok(r) => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["rabbitmq_version"].as_str().map(str::to_string))
            .unwrap_or_else(|| "unknown".into()),
        Err(_) => "unknown".into(),
    }
}
