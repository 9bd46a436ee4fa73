//! Process-wide counters and gauges, rendered in the Prometheus text format at `/metrics`.
//!
//! Everything is a relaxed atomic: metrics are observations, not synchronization, and a
//! scrape that is a few events out of date is fine.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the commit-latency histogram's buckets.
const COMMIT_BUCKETS_S: [f64; 12] = [
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [AtomicU64; COMMIT_BUCKETS_S.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let slot = COMMIT_BUCKETS_S
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(COMMIT_BUCKETS_S.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (slot, bound) in COMMIT_BUCKETS_S.iter().enumerate() {
            cumulative += self.buckets[slot].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[COMMIT_BUCKETS_S.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

/// Every metric the server exports.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Open WebSocket connections (gauge).
    pub connections: AtomicU64,
    /// WebSocket connections accepted since start.
    pub connections_accepted: AtomicU64,
    /// WebSocket upgrades refused because `max_connections` was reached.
    pub connections_refused: AtomicU64,
    /// Connections closed because their outbound queue was full.
    pub slow_consumers_closed: AtomicU64,
    /// Room objects whose state is in memory (gauge).
    pub rooms_resident: AtomicU64,
    /// Room objects alive (sockets open or recently used) whose state is evicted (gauge).
    pub rooms_hibernated: AtomicU64,
    /// Room tasks running (gauge); a dormant room (hibernated, sockets open) has none.
    pub room_tasks: AtomicU64,
    /// Evictions since start.
    pub hibernations: AtomicU64,
    /// Rebuilds from storage and attachments since start.
    pub restores: AtomicU64,
    /// Chat messages made durable (and so broadcast).
    pub messages: AtomicU64,
    /// Frames refused with the rate-limit error.
    pub rate_limited: AtomicU64,
    /// Limiter questions left unanswered because the limiters' map was full.
    pub limiter_asks_dropped: AtomicU64,
    /// Rate limiters held in memory (gauge; idle ones are dropped).
    pub limiters: AtomicU64,
    /// Counter objects alive (gauge).
    pub counters: AtomicU64,
    /// SQLite transactions committed.
    pub storage_commits: AtomicU64,
    /// Object write batches committed (several per transaction under load).
    pub storage_batches: AtomicU64,
    /// Failed storage operations: commit attempts (retried while healthy), recovery probes
    /// and reads.
    pub storage_errors: AtomicU64,
    /// Write batches given up on: rolled back and refused to their objects.
    pub storage_commit_failures: AtomicU64,
    /// Chat messages (and publishes) refused because their write failed.
    pub messages_refused_storage: AtomicU64,
    /// 1 while storage fails (writes are refused), else 0 (gauge).
    pub storage_failing: AtomicU64,
    /// Time from `BEGIN` to a finished `COMMIT`.
    pub storage_commit_latency: Histogram,
}

/// Adds one to a counter.
pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Subtracts one from a gauge.
pub(crate) fn dec(gauge: &AtomicU64) {
    gauge.fetch_sub(1, Ordering::Relaxed);
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let rows: [(&str, &str, &str, &AtomicU64); 20] = [
            (
                "edgechat_connections",
                "gauge",
                "Open WebSocket connections.",
                &self.connections,
            ),
            (
                "edgechat_connections_accepted_total",
                "counter",
                "WebSocket connections accepted.",
                &self.connections_accepted,
            ),
            (
                "edgechat_connections_refused_total",
                "counter",
                "WebSocket upgrades refused at max_connections.",
                &self.connections_refused,
            ),
            (
                "edgechat_slow_consumers_closed_total",
                "counter",
                "Connections closed because their outbound queue was full.",
                &self.slow_consumers_closed,
            ),
            (
                "edgechat_rooms_resident",
                "gauge",
                "Rooms whose state is in memory.",
                &self.rooms_resident,
            ),
            (
                "edgechat_rooms_hibernated",
                "gauge",
                "Rooms alive with their state evicted from memory.",
                &self.rooms_hibernated,
            ),
            (
                "edgechat_room_tasks",
                "gauge",
                "Room tasks running (a hibernated room with open sockets has none).",
                &self.room_tasks,
            ),
            (
                "edgechat_room_hibernations_total",
                "counter",
                "Room evictions (hibernations).",
                &self.hibernations,
            ),
            (
                "edgechat_room_restores_total",
                "counter",
                "Rooms rebuilt from storage and attachments.",
                &self.restores,
            ),
            (
                "edgechat_messages_total",
                "counter",
                "Chat messages made durable and broadcast.",
                &self.messages,
            ),
            (
                "edgechat_rate_limited_total",
                "counter",
                "Frames refused by the rate limiter.",
                &self.rate_limited,
            ),
            (
                "edgechat_limiter_asks_dropped_total",
                "counter",
                "Rate-limiter questions left unanswered because the limiters were full.",
                &self.limiter_asks_dropped,
            ),
            (
                "edgechat_rate_limiters",
                "gauge",
                "Per-IP rate limiters held in memory.",
                &self.limiters,
            ),
            (
                "edgechat_counters",
                "gauge",
                "Counter objects alive.",
                &self.counters,
            ),
            (
                "edgechat_storage_commits_total",
                "counter",
                "SQLite transactions committed.",
                &self.storage_commits,
            ),
            (
                "edgechat_storage_batches_total",
                "counter",
                "Object write batches committed.",
                &self.storage_batches,
            ),
            (
                "edgechat_storage_errors_total",
                "counter",
                "Failed storage operations (commit attempts, recovery probes, reads).",
                &self.storage_errors,
            ),
            (
                "edgechat_storage_commit_failures_total",
                "counter",
                "Write batches rolled back and refused (never written, senders told).",
                &self.storage_commit_failures,
            ),
            (
                "edgechat_messages_refused_storage_total",
                "counter",
                "Chat messages and publishes refused because storage failed.",
                &self.messages_refused_storage,
            ),
            (
                "edgechat_storage_failing",
                "gauge",
                "1 while storage fails and writes are refused, else 0.",
                &self.storage_failing,
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        self.storage_commit_latency.render(
            &mut out,
            "edgechat_storage_commit_seconds",
            "Storage commit latency (one transaction, all queued batches).",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::default();
        metrics
            .storage_commit_latency
            .observe(Duration::from_micros(300));
        metrics
            .storage_commit_latency
            .observe(Duration::from_secs(10));
        let text = metrics.render();
        assert!(text.contains("edgechat_storage_commit_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("edgechat_storage_commit_seconds_bucket{le=\"2.5\"} 1"));
        assert!(text.contains("edgechat_storage_commit_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("edgechat_storage_commit_seconds_count 2"));
    }
}
