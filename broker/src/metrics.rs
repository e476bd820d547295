//! Prometheus metrics, through the `metrics` facade and its Prometheus exporter (used as a
//! recorder only: `/metrics` on the broker's own listener renders it). Names follow the
//! Prometheus conventions: `wharf_` prefix, unit in the name, `_total` for counters.
//!
//! Counters and histograms are recorded where things happen; gauges that describe state
//! (log size, consumers' backlog) are computed when `/metrics` is scraped.

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
    ($($fn:ident: $kind:ident $macro:ident $name:ident;)*) => {$(
        pub fn $fn() -> &'static metrics::$kind {
            static H: OnceLock<metrics::$kind> = OnceLock::new();
            H.get_or_init(|| {
                handle();
                metrics::$macro!($name)
            })
        }
    )*};
}

resolved! {
    published: Counter counter PUBLISHED;
    delivered: Counter counter DELIVERED;
    redelivered: Counter counter REDELIVERED;
    acked: Counter counter ACKED;
    terminated: Counter counter TERMINATED;
    dead_lettered: Counter counter DEAD_LETTERED;
    bytes_in: Counter counter BYTES_IN;
    bytes_out: Counter counter BYTES_OUT;
    commit_records: Histogram histogram COMMIT_EVENTS;
    fsync_seconds: Histogram histogram FSYNC_SECONDS;
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
