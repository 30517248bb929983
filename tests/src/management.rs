//! RabbitMQ management API calls that change a test vhost's topology or
//! contents, to make a fault happen on purpose: an event that never
//! arrives (a binding removed), a signal lost (a queue purged).

use anyhow::{bail, Result};
use serde_json::Value;

use crate::{encode, management_base, TestVhost};

fn api(vhost: &TestVhost, path: &str) -> String {
    format!("{}/api/{path}", management_base()).replace("{vhost}", &encode(&vhost.name))
}

/// Removes every binding of `queue` to `exchange` on the vhost; answers
/// how many there were.
pub async fn unbind(vhost: &TestVhost, exchange: &str, queue: &str) -> Result<usize> {
    let client = reqwest::Client::new();
    let url = api(
        vhost,
        &format!(
            "bindings/{{vhost}}/e/{}/q/{}",
            encode(exchange),
            encode(queue)
        ),
    );
    let response = client.get(&url).send().await?;
    if !response.status().is_success() {
        bail!(
            "listing bindings of {queue} to {exchange}: {}",
            response.status()
        );
    }
    let bindings: Vec<Value> = response.json().await?;
    for binding in &bindings {
        let key = binding["properties_key"].as_str().unwrap_or_default();
        let response = client
            .delete(format!("{url}/{}", encode(key)))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("removing binding {key} of {queue}: {}", response.status());
        }
    }
    Ok(bindings.len())
}

/// Removes every ready message from `queue`.
pub async fn purge(vhost: &TestVhost, queue: &str) -> Result<()> {
    let url = api(
        vhost,
        &format!("queues/{{vhost}}/{}/contents", encode(queue)),
    );
    let response = reqwest::Client::new().delete(url).send().await?;
    if !response.status().is_success() {
        bail!("purging {queue}: {}", response.status());
    }
    Ok(())
}
