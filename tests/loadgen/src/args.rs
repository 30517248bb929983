//! Command-line options (`loadgen --help`).

use anyhow::{bail, Context, Result};

pub const HELP: &str = "\
loadgen: load and performance figures for order-service and fulfillment-service,
each measured against RabbitMQ's own floor in the same run.

usage: cargo run --release -p loadgen -- [options]

By default it builds the release binaries of both services (when run through
cargo), starts them on a vhost of its own with every delay 0, measures, and
removes the vhost. With --order-url it targets services already running.

  --orders N            orders for the end-to-end run (default 2000)
  --concurrency C       orders in flight at once (default 32)
  --queries N           fulfillment queries at concurrency 1 (default 1000;
                        four times as many at concurrency 64)
  --signals N           fulfillments paused and resumed one by one (default 100)
  --floor-messages N    messages for the broker's confirmed publish floor (default 20000)
  --order-url URL       target a running order-service (e.g. http://127.0.0.1:3232)
  --fulfillment-url URL its fulfillment-service (e.g. http://127.0.0.1:3233)
  --amqp-url URL        the services' broker vhost, for the event subscription
                        (default amqp://guest:guest@127.0.0.1:5672/%2f)
  --vhost NAME          the services' vhost, for message counts (default /)
  --out PATH            the JSON report (default target/loadgen/report.json,
                        target/loadgen/scale.json with --scale)
  --no-build            do not run cargo build for the service binaries
  --store S             sqlite (default) or postgres: both services' stores, a
                        fresh database each on the local PostgreSQL
  --replicas R          replicas of each service (default 1; more than one
                        needs --store postgres): each service's replicas share
                        its database and its partitions, balanced before the
                        run starts; orders are placed through every
                        order-service replica
  --failover K          measure failover instead: K times, kill -9 one
                        fulfillment-service replica (round robin) with orders
                        under way, and time until the others own every
                        partition and until those orders have shipped (needs
                        --store postgres and --replicas 2 or more)
  --scale               measure scale instead: memory with --open fulfillments
                        waiting, restart to /readyz, status requests per second
  --open N              open fulfillments for --scale (default 100000)
  --scale-timeout S     give up --scale after S seconds (default 900)
";

#[derive(Debug, Clone)]
pub struct Args {
    pub orders: usize,
    pub concurrency: usize,
    pub queries: usize,
    pub signals: usize,
    pub floor_messages: usize,
    pub order_url: Option<String>,
    pub fulfillment_url: Option<String>,
    pub amqp_url: String,
    pub vhost: String,
    pub out: Option<String>,
    pub build: bool,
    pub postgres: bool,
    pub replicas: usize,
    pub failover: usize,
    pub scale: bool,
    pub open: usize,
    pub scale_timeout_s: u64,
}

impl Args {
    pub fn parse() -> Result<Option<Self>> {
        let mut args = Self {
            orders: 2000,
            concurrency: 32,
            queries: 1000,
            signals: 100,
            floor_messages: 20_000,
            order_url: None,
            fulfillment_url: None,
            amqp_url: format!("{}/%2f", system_tests::amqp_base()),
            vhost: "/".into(),
            out: None,
            build: true,
            postgres: false,
            replicas: 1,
            failover: 0,
            scale: false,
            open: 100_000,
            scale_timeout_s: 900,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "-h" | "--help" => return Ok(None),
                "--orders" => args.orders = number(&flag, &value()?)?,
                "--concurrency" => args.concurrency = number(&flag, &value()?)?.max(1),
                "--queries" => args.queries = number(&flag, &value()?)?.max(1),
                "--signals" => args.signals = number(&flag, &value()?)?,
                "--floor-messages" => args.floor_messages = number(&flag, &value()?)?.max(1),
                "--order-url" => args.order_url = Some(trim(value()?)),
                "--fulfillment-url" => args.fulfillment_url = Some(trim(value()?)),
                "--amqp-url" => args.amqp_url = value()?,
                "--vhost" => args.vhost = value()?,
                "--out" => args.out = Some(value()?),
                "--no-build" => args.build = false,
                "--store" => {
                    args.postgres = match value()?.as_str() {
                        "sqlite" => false,
                        "postgres" => true,
                        other => bail!("--store is sqlite or postgres, not {other:?}"),
                    }
                }
                "--replicas" => args.replicas = number(&flag, &value()?)?.max(1),
                "--failover" => args.failover = number(&flag, &value()?)?.max(1),
                "--scale" => args.scale = true,
                "--open" => args.open = number(&flag, &value()?)?.max(1),
                "--scale-timeout" => args.scale_timeout_s = number(&flag, &value()?)? as u64,
                other => bail!("unknown option {other}; see --help"),
            }
        }
        if args.order_url.is_some() != args.fulfillment_url.is_some() {
            bail!("--order-url and --fulfillment-url go together");
        }
        if args.replicas > 1 && !args.postgres {
            bail!("--replicas above 1 needs --store postgres (a SQLite store serves one process)");
        }
        if args.failover > 0 && (args.replicas < 2 || !args.postgres) {
            bail!("--failover needs --store postgres and --replicas 2 or more");
        }
        if (args.replicas > 1 || args.postgres) && args.external() {
            bail!("--store and --replicas are for services started here, not with --order-url");
        }
        Ok(Some(args))
    }

    /// Services already running, or started by the load generator.
    pub fn external(&self) -> bool {
        self.order_url.is_some()
    }
}

fn number(flag: &str, value: &str) -> Result<usize> {
    value
        .parse()
        .with_context(|| format!("{flag} wants a number, not {value:?}"))
}

fn trim(url: String) -> String {
    url.trim_end_matches('/').to_string()
}
