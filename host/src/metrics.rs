//! Prometheus metrics: one registry for the process, served as text on `/metrics` (with `/healthz`)
//! by [`serve`] when the node is given a metrics address.
//!
//! Every room records into [`METRICS`]; nothing here carries message content or key material.

use std::net::SocketAddr;
use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Every metric pigeon exports.
pub struct Metrics {
    registry: Registry,
    /// Seconds from queueing to the recipient's ack.
    pub send_latency: Histogram,
    /// Attempts a message took until it was acked.
    pub send_retries: Histogram,
    /// Messages per batch sent.
    pub batch_messages: Histogram,
    /// Messages waiting in the outbox.
    pub outbox_depth: IntGauge,
    /// Age of the oldest queued message, in seconds.
    pub outbox_oldest_age: IntGauge,
    /// Messages acked by their recipients.
    pub sent: IntCounter,
    /// Messages received and stored.
    pub received: IntCounter,
    /// Messages received again and re-acked.
    pub duplicates: IntCounter,
    /// Envelopes refused (not a contact, undecryptable, malformed, ...).
    pub rejected: IntCounter,
    /// Peers with at least one connection.
    pub connected_peers: IntGauge,
    /// Attachment bytes received and verified.
    pub attachment_bytes: IntCounter,
    /// Attachment chunks received and verified.
    pub attachment_chunks: IntCounter,
    /// Attachment chunks refused for failing their hash.
    pub attachment_chunk_failures: IntCounter,
    /// Attachment chunks served to peers.
    pub attachment_chunks_served: IntCounter,
    /// Bytes per second of each completed attachment transfer.
    pub attachment_throughput: Histogram,
    /// Seconds per plugin call, by plugin and hook.
    pub plugin_call_seconds: HistogramVec,
    /// Plugin calls that failed, by plugin and reason (trap, timeout, memory, init).
    pub plugin_failures: IntCounterVec,
    /// 1 while a plugin's circuit breaker has it disabled, by plugin.
    pub plugin_disabled: IntGaugeVec,
    /// Received messages stored without the rule plugins because their batch's plugin time ran out.
    pub plugin_rules_skipped: IntCounter,
    /// Network events the node could not take in because its event queue was full.
    pub net_events_dropped: IntCounter,
    /// CPU time spent opening received envelopes (HPKE), in microseconds.
    pub open_cpu_micros: IntCounter,
    /// CPU time the store thread spent on its jobs, in microseconds.
    pub store_cpu_micros: IntCounter,
    /// Control-socket connections being served.
    pub control_connections: IntGauge,
    /// Control-socket connections refused: another user's, or idle past the request time.
    pub control_refused: IntCounter,
    /// Hole punches (DCUtR) by result: `direct` or `failed`.
    pub hole_punches: IntCounterVec,
    /// Open connections by kind: `direct` or `relayed`.
    pub connections: IntGaugeVec,
    /// Reservations this node holds for others as a relay.
    pub relay_reservations: IntGauge,
    /// Connections this node relays now.
    pub relay_circuits: IntGauge,
    /// Contacts' answers to this node's requests for one-time keys, by result: `kept` (every key
    /// checked out), `refused` (some did not) or `failed` (no answer, or one that did not decode).
    pub one_time_key_answers: IntCounterVec,
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric name");
            h
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric name");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric name");
            g
        };
        let plugin_call_seconds = HistogramVec::new(
            HistogramOpts::new("pigeon_plugin_call_seconds", "Seconds per plugin call")
                .buckets(prometheus::exponential_buckets(1e-6, 4.0, 12).expect("buckets")),
            &["plugin", "hook"],
        )
        .expect("valid histogram");
        let plugin_failures = IntCounterVec::new(
            Opts::new("pigeon_plugin_failures_total", "Plugin calls that failed"),
            &["plugin", "reason"],
        )
        .expect("valid counter");
        let plugin_disabled = IntGaugeVec::new(
            Opts::new(
                "pigeon_plugin_disabled",
                "1 while a plugin's circuit breaker has it disabled",
            ),
            &["plugin"],
        )
        .expect("valid gauge");
        let hole_punches = IntCounterVec::new(
            Opts::new(
                "pigeon_hole_punches_total",
                "Hole punches (DCUtR) by result: direct or failed",
            ),
            &["result"],
        )
        .expect("valid counter");
        let connections = IntGaugeVec::new(
            Opts::new(
                "pigeon_connections",
                "Open connections by kind: direct or relayed",
            ),
            &["kind"],
        )
        .expect("valid gauge");
        let one_time_key_answers = IntCounterVec::new(
            Opts::new(
                "pigeon_one_time_key_answers_total",
                "Contacts' answers to requests for one-time keys, by result: kept, refused (some keys did not check out) or failed",
            ),
            &["result"],
        )
        .expect("valid counter");
        for m in [
            Box::new(plugin_call_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(one_time_key_answers.clone()),
            Box::new(plugin_failures.clone()),
            Box::new(plugin_disabled.clone()),
            Box::new(hole_punches.clone()),
            Box::new(connections.clone()),
        ] {
            registry.register(m).expect("unique metric name");
        }
        Metrics {
            one_time_key_answers,
            hole_punches,
            connections,
            relay_reservations: gauge(
                "pigeon_relay_reservations",
                "Reservations this node holds for others as a relay",
            ),
            relay_circuits: gauge("pigeon_relay_circuits", "Connections this node relays now"),
            plugin_call_seconds,
            plugin_failures,
            plugin_disabled,
            open_cpu_micros: counter(
                "pigeon_envelope_open_cpu_microseconds_total",
                "CPU time spent opening received envelopes (HPKE), in microseconds",
            ),
            store_cpu_micros: counter(
                "pigeon_store_cpu_microseconds_total",
                "CPU time the store thread spent on its jobs, in microseconds",
            ),
            net_events_dropped: counter(
                "pigeon_net_events_dropped_total",
                "Network events not taken in because the node's event queue was full (batches among them were answered `unavailable`)",
            ),
            plugin_rules_skipped: counter(
                "pigeon_plugin_rules_skipped_total",
                "Received messages stored without the rule plugins: their batch's plugin time ran out",
            ),
            send_latency: histogram(
                "pigeon_send_latency_seconds",
                "Seconds from queueing a message to its recipient's ack",
                prometheus::exponential_buckets(0.001, 4.0, 12).expect("buckets"),
            ),
            send_retries: histogram(
                "pigeon_send_retries",
                "Delivery attempts per acked message",
                vec![1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0],
            ),
            batch_messages: histogram(
                "pigeon_batch_messages",
                "Messages per batch sent",
                vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ],
            ),
            outbox_depth: gauge("pigeon_outbox_depth", "Messages waiting in the outbox"),
            outbox_oldest_age: gauge(
                "pigeon_outbox_oldest_age_seconds",
                "Age of the oldest queued message in seconds",
            ),
            sent: counter(
                "pigeon_messages_sent_total",
                "Messages acked by their recipients",
            ),
            received: counter(
                "pigeon_messages_received_total",
                "Messages received and stored",
            ),
            duplicates: counter(
                "pigeon_messages_duplicate_total",
                "Messages received again and re-acked",
            ),
            rejected: counter("pigeon_messages_rejected_total", "Envelopes refused"),
            connected_peers: gauge(
                "pigeon_connected_peers",
                "Peers with at least one connection",
            ),
            control_connections: gauge(
                "pigeon_control_connections",
                "Control-socket connections being served (at most 64)",
            ),
            control_refused: counter(
                "pigeon_control_refused_total",
                "Control-socket connections closed unserved: another user's, or no request in time",
            ),
            attachment_bytes: counter(
                "pigeon_attachment_bytes_total",
                "Attachment bytes received and verified",
            ),
            attachment_chunks: counter(
                "pigeon_attachment_chunks_total",
                "Attachment chunks received and verified",
            ),
            attachment_chunk_failures: counter(
                "pigeon_attachment_chunk_failures_total",
                "Attachment chunks refused for failing their hash",
            ),
            attachment_chunks_served: counter(
                "pigeon_attachment_chunks_served_total",
                "Attachment chunks served to peers",
            ),
            attachment_throughput: histogram(
                "pigeon_attachment_throughput_bytes_per_second",
                "Bytes per second of each completed attachment transfer",
                prometheus::exponential_buckets(64.0 * 1024.0, 2.0, 14).expect("buckets"),
            ),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A running metrics endpoint; stops when dropped.
pub struct MetricsServer {
    server: std::sync::Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// The address it listens on (with the real port if 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves `/metrics` and `/healthz` on `addr` from a thread of its own.
pub fn serve(addr: SocketAddr) -> Result<MetricsServer, std::io::Error> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let addr = server.server_addr().to_ip().unwrap_or(addr);
    let server = std::sync::Arc::new(server);
    let worker = server.clone();
    let thread = std::thread::Builder::new()
        .name("pigeon-metrics".into())
        .spawn(move || {
            for request in worker.incoming_requests() {
                let (status, body, content_type) = match request.url() {
                    "/metrics" => (200, METRICS.render(), "text/plain; version=0.0.4"),
                    "/healthz" => (200, "ok\n".to_owned(), "text/plain"),
                    _ => (
                        404,
                        "not found: try /metrics or /healthz\n".to_owned(),
                        "text/plain",
                    ),
                };
                let header = tiny_http::Header::from_bytes("Content-Type", content_type)
                    .expect("valid header");
                let _ = request.respond(
                    tiny_http::Response::from_string(body)
                        .with_status_code(status)
                        .with_header(header),
                );
            }
        })?;
    Ok(MetricsServer {
        server,
        thread: Some(thread),
        addr,
    })
}
