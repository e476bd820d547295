//! One measured figure, and the small statistics the runners share.

use std::time::Instant;

use serde_json::{json, Value};

/// What one system did in one scenario.
#[derive(Debug, Clone, Default)]
pub struct Figure {
    pub system: String,
    /// The durability promise behind the figure, in the peer's own words.
    pub durability: String,
    pub scenario: String,
    /// events/s (publish, replay, latency) or deliveries/s (fanout).
    pub rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub rss_peak_mb: Option<f64>,
    /// Cluster systems: CPU time per event (per delivery for fan-out) of the wharf nodes
    /// together, in microseconds.
    pub wharf_cpu_us: Option<f64>,
    /// Cluster systems: CPU time per event of the three NATS servers together.
    pub nats_cpu_us: Option<f64>,
    /// Cluster systems: CPU time per event of the busiest NATS server (the stream leader).
    pub nats_max_cpu_us: Option<f64>,
    /// CPU time per event of the load generator: wharf-compare's clients, or for the wharf
    /// system the `wharf bench` process.
    pub client_cpu_us: Option<f64>,
    /// Single-server systems: CPU time per event (per delivery for fan-out) of the server.
    pub server_cpu_us: Option<f64>,
}

impl Figure {
    /// A figure from one line of `--json` output.
    pub fn from_json(line: &str) -> anyhow::Result<Figure> {
        let v: Value = serde_json::from_str(line)?;
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let num = |k: &str| v[k].as_f64();
        Ok(Figure {
            system: text("system"),
            durability: text("durability"),
            scenario: text("scenario"),
            rate: num("rate").ok_or_else(|| anyhow::anyhow!("no rate in {line}"))?,
            p50_ms: num("p50_ms"),
            p99_ms: num("p99_ms"),
            rss_peak_mb: num("rss_peak_mb"),
            wharf_cpu_us: num("wharf_cpu_us"),
            nats_cpu_us: num("nats_cpu_us"),
            nats_max_cpu_us: num("nats_max_cpu_us"),
            client_cpu_us: num("client_cpu_us"),
            server_cpu_us: num("server_cpu_us"),
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "system": self.system, "durability": self.durability, "scenario": self.scenario,
            "rate": self.rate, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "rss_peak_mb": self.rss_peak_mb, "wharf_cpu_us": self.wharf_cpu_us,
            "nats_cpu_us": self.nats_cpu_us, "nats_max_cpu_us": self.nats_max_cpu_us,
            "client_cpu_us": self.client_cpu_us, "server_cpu_us": self.server_cpu_us,
        })
    }
}

/// One figure per (system, scenario): the median of each measure over the runs given.
pub fn medians(figures: Vec<Figure>) -> Vec<Figure> {
    fn median(mut v: Vec<f64>) -> Option<f64> {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len().checked_sub(1)? / 2).copied()
    }
    let mut out: Vec<Figure> = Vec::new();
    for f in &figures {
        if out
            .iter()
            .any(|o| o.system == f.system && o.scenario == f.scenario)
        {
            continue;
        }
        let same: Vec<&Figure> = figures
            .iter()
            .filter(|g| g.system == f.system && g.scenario == f.scenario)
            .collect();
        let of = |pick: fn(&Figure) -> Option<f64>| {
            median(same.iter().filter_map(|g| pick(g)).collect())
        };
        out.push(Figure {
            rate: of(|g| Some(g.rate)).unwrap_or(0.0),
            p50_ms: of(|g| g.p50_ms),
            p99_ms: of(|g| g.p99_ms),
            rss_peak_mb: of(|g| g.rss_peak_mb),
            wharf_cpu_us: of(|g| g.wharf_cpu_us),
            nats_cpu_us: of(|g| g.nats_cpu_us),
            nats_max_cpu_us: of(|g| g.nats_max_cpu_us),
            client_cpu_us: of(|g| g.client_cpu_us),
            server_cpu_us: of(|g| g.server_cpu_us),
            ..f.clone()
        });
    }
    out
}

/// Latencies in ms, summarised.
pub fn percentiles(mut ms: Vec<f64>) -> (Option<f64>, Option<f64>) {
    if ms.is_empty() {
        return (None, None);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[(((ms.len() - 1) as f64) * q).round() as usize];
    (Some(at(0.5)), Some(at(0.99)))
}

pub fn ms_since(at: Instant) -> f64 {
    at.elapsed().as_secs_f64() * 1000.0
}

/// Wall-clock ms since the epoch, carried in latency payloads.
pub fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// A JSON payload of about `size` bytes, like `wharf bench` publishes.
pub fn payload(size: usize, i: u64) -> Vec<u8> {
    format!(
        r#"{{"i":{i},"pad":"{}"}}"#,
        "x".repeat(size.saturating_sub(24))
    )
    .into_bytes()
}

/// A latency payload: the send time, padded to about `size` bytes.
pub fn timed_payload(size: usize) -> Vec<u8> {
    format!(
        r#"{{"t":{:.3},"pad":"{}"}}"#,
        now_ms(),
        "x".repeat(size.saturating_sub(40))
    )
    .into_bytes()
}

/// The send time a latency payload carries.
pub fn sent_ms(payload: &[u8]) -> f64 {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v["t"].as_f64())
        .unwrap_or(0.0)
}

/// Splits `events` over `load.connections` tasks, each running `publisher(its share)`, and
/// gathers the latencies they return.
pub async fn across_connections<F, Fut>(
    load: &crate::Load,
    events: u64,
    publisher: F,
) -> anyhow::Result<Vec<f64>>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Vec<f64>>> + Send + 'static,
{
    let n = load.connections;
    let tasks: Vec<_> = (0..n)
        .map(|c| tokio::spawn(publisher(events / n + u64::from(c < events % n))))
        .collect();
    let mut all = Vec::with_capacity(events as usize);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}
