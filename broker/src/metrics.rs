//! Prometheus metrics, through the `metrics` facade and its Prometheus exporter (used as a
//! recorder only: `/metrics` on the broker's own listener renders it). Names follow the
//! Prometheus conventions: `wharf_` prefix, unit in the name, `_total` for counters.
//!
//! Counters and histograms are recorded where things happen; gauges that describe state
//! (log size, consumers' backlog) are computed when `/metrics` is scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const PUBLISHED: &str = "wharf_events_published_total";
pub const DUPLICATES: &str = "wharf_publish_duplicates_total";
pub const DELIVERED: &str = "wharf_events_delivered_total";
pub const REDELIVERED: &str = "wharf_events_redelivered_total";
pub const ACKED: &str = "wharf_events_acked_total";
pub const NACKED: &str = "wharf_events_nacked_total";
pub const TERMINATED: &str = "wharf_events_terminated_total";
pub const DEAD_LETTERED: &str = "wharf_events_dead_lettered_total";
pub const BYTES_IN: &str = "wharf_received_bytes_total";
pub const BYTES_OUT: &str = "wharf_sent_bytes_total";
pub const CONNECTIONS: &str = "wharf_connections_open";
pub const SUBSCRIPTIONS: &str = "wharf_subscriptions_open";
pub const COMMIT_EVENTS: &str = "wharf_group_commit_records";
pub const FSYNC_SECONDS: &str = "wharf_fsync_duration_seconds";
pub const LOG_BYTES: &str = "wharf_log_bytes";
pub const LOG_SEGMENTS: &str = "wharf_log_segments";
pub const STATE_BYTES: &str = "wharf_state_bytes";
pub const HEAD_SEQ: &str = "wharf_head_seq";
pub const CONSUMERS: &str = "wharf_consumers";
pub const CONSUMER_PENDING: &str = "wharf_consumer_ack_pending_events";
pub const CONSUMER_LAG: &str = "wharf_consumer_lag_events";

/// Handles for the metrics recorded per event, resolved once: the `counter!` macro looks the
/// name up in the registry on every call, which perf showed at about 20% of the broker's
/// samples in fan-out (a million deliveries per second).
macro_rules! resolved {
    ($($fn:ident: $kind:ty = $make:expr;)*) => {$(
        pub fn $fn() -> &'static $kind {
            static H: OnceLock<$kind> = OnceLock::new();
            H.get_or_init(|| {
                handle();
                $make
            })
        }
    )*};
}

/// A counter whose total the broker can also read (for `stats`: the console's rates), not
/// only the Prometheus scrape.
pub struct Tally {
    counter: metrics::Counter,
    total: AtomicU64,
}

impl Tally {
    fn new(counter: metrics::Counter) -> Tally {
        Tally {
            counter,
            total: AtomicU64::new(0),
        }
    }

    pub fn increment(&self, n: u64) {
        self.counter.increment(n);
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// Everything counted since the broker started.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

resolved! {
    published: Tally = Tally::new(metrics::counter!(PUBLISHED));
    delivered: Tally = Tally::new(metrics::counter!(DELIVERED));
    redelivered: Tally = Tally::new(metrics::counter!(REDELIVERED));
    acked: Tally = Tally::new(metrics::counter!(ACKED));
    terminated: Tally = Tally::new(metrics::counter!(TERMINATED));
    dead_lettered: Tally = Tally::new(metrics::counter!(DEAD_LETTERED));
    bytes_in: Tally = Tally::new(metrics::counter!(BYTES_IN));
    bytes_out: Tally = Tally::new(metrics::counter!(BYTES_OUT));
    commit_records: metrics::Histogram = metrics::histogram!(COMMIT_EVENTS);
    fsync_seconds: metrics::Histogram = metrics::histogram!(FSYNC_SECONDS);
}

/// Help text for every metric: Prometheus tooling (`promtool check metrics`) flags a metric
/// without it, and it is what a dashboard shows next to the name.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        PUBLISHED,
        Unit::Count,
        "Events stored (publishes confirmed to clients)."
    );
    describe_counter!(
        DUPLICATES,
        Unit::Count,
        "Publishes answered as duplicates of an earlier msg_id."
    );
    describe_counter!(
        DELIVERED,
        Unit::Count,
        "Event frames handed to subscribers' connections."
    );
    describe_counter!(
        REDELIVERED,
        Unit::Count,
        "Deliveries after the first of an event to a durable consumer."
    );
    describe_counter!(ACKED, Unit::Count, "Events acked by durable consumers.");
    describe_counter!(NACKED, Unit::Count, "Events nacked by durable consumers.");
    describe_counter!(
        TERMINATED,
        Unit::Count,
        "Events termed by durable consumers."
    );
    describe_counter!(
        DEAD_LETTERED,
        Unit::Count,
        "Events moved to a dead-letter topic."
    );
    describe_counter!(BYTES_IN, Unit::Bytes, "WebSocket payload bytes received.");
    describe_counter!(BYTES_OUT, Unit::Bytes, "WebSocket payload bytes sent.");
    describe_gauge!(CONNECTIONS, Unit::Count, "Open client connections.");
    describe_gauge!(
        SUBSCRIPTIONS,
        Unit::Count,
        "Open subscriptions, durable and ephemeral."
    );
    describe_histogram!(
        COMMIT_EVENTS,
        Unit::Count,
        "Records per group commit (one write and one fdatasync)."
    );
    describe_histogram!(
        FSYNC_SECONDS,
        Unit::Seconds,
        "Time of one fdatasync of the log."
    );
    describe_gauge!(
        LOG_BYTES,
        Unit::Bytes,
        "Synced bytes in the log's segments."
    );
    describe_gauge!(LOG_SEGMENTS, Unit::Count, "Segment files in the log.");
    describe_gauge!(
        STATE_BYTES,
        Unit::Bytes,
        "Bytes the sled state view uses on disk."
    );
    describe_gauge!(HEAD_SEQ, "Seq of the newest stored event.");
    describe_gauge!(CONSUMERS, Unit::Count, "Durable consumers.");
}

/// Help text of the per-consumer series, rendered by [`consumer_series`].
const CONSUMER_PENDING_HELP: &str = "Events delivered to the consumer and not yet settled.";
const CONSUMER_LAG_HELP: &str =
    "Events matching the consumer's patterns that it has not settled (exact when its floor is within a topic's newest 32 events or past them; otherwise at most 31 too many per topic).";

/// One consumer's row of per-consumer series.
pub struct ConsumerRow {
    pub name: String,
    pub ack_pending: u64,
    pub lag: u64,
}

/// The per-consumer series, rendered from the consumers that exist now. They are not kept
/// in the recorder: a gauge registered there would be exported forever, after its consumer
/// was deleted, and alerts on it would never clear.
pub fn consumer_series(rows: &[ConsumerRow]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if rows.is_empty() {
        return out;
    }
    let label = |name: &str| name.replace('\\', "\\\\").replace('"', "\\\"");
    for (metric, help, value) in [
        (
            CONSUMER_PENDING,
            CONSUMER_PENDING_HELP,
            (|r: &ConsumerRow| r.ack_pending) as fn(&ConsumerRow) -> u64,
        ),
        (CONSUMER_LAG, CONSUMER_LAG_HELP, |r: &ConsumerRow| r.lag),
    ] {
        let _ = writeln!(out, "# HELP {metric} {help}");
        let _ = writeln!(out, "# TYPE {metric} gauge");
        for row in rows {
            let _ = writeln!(
                out,
                "{metric}{{consumer=\"{}\"}} {}",
                label(&row.name),
                value(row)
            );
        }
        out.push('\n');
    }
    out
}

/// The process-wide recorder (one per process, however many brokers a test starts in it).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(FSYNC_SECONDS.into()),
                &[0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(COMMIT_EVENTS.into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0],
                )
            });
        match builder {
            Ok(builder) => {
                let recorder = builder.build_recorder();
                let handle = recorder.handle();
                if metrics::set_global_recorder(recorder).is_err() {
                    tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
                }
                describe();
                handle
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics buckets rejected; histograms render as summaries");
                let recorder = PrometheusBuilder::new().build_recorder();
                let handle = recorder.handle();
                let _already = metrics::set_global_recorder(recorder);
                handle
            }
        }
    })
}
