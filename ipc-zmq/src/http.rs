//! The relay's HTTP endpoint: `/metrics` (Prometheus text format, rendered by `prometheus-client`),
//! `/health` and `/ready` (JSON). Read-only, served by one thread with `tiny_http`; it never
//! touches a ring or a socket, only what the relay publishes through [`Status`].
//!
//! Counters stay plain atomics where the relay updates them; they are read at scrape time by a
//! [`CounterSet`] (a `prometheus_client` collector), so the fast path pays nothing for metrics.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// What a value read at scrape time is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows (records, bytes, failures).
    Counter,
    /// Goes up and down (in flight, breaker state).
    Gauge,
}

/// A histogram read at scrape time: sum, count, and `(upper bound, observations in the bucket)`
/// (not cumulative), the last bound `f64::MAX` for `+Inf`.
pub type HistogramReading = (f64, u64, Vec<(f64, u64)>);

enum Reader {
    Value(Box<dyn Fn() -> u64 + Send + Sync>),
    Histogram(Box<dyn Fn() -> HistogramReading + Send + Sync>),
}

struct Series {
    labels: Vec<(String, String)>,
    read: Reader,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FamilyKind {
    Value(Kind),
    Histogram,
}

struct Family {
    name: String,
    help: String,
    kind: FamilyKind,
    series: Vec<Series>,
}

/// Metrics read from the relay's atomics on every scrape.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use ipc_zmq::http::{CounterSet, Kind};
///
/// let sent = Arc::new(AtomicU64::new(3));
/// let mut set = CounterSet::default();
/// let s = sent.clone();
/// set.add("tadpole_relay_records_sent", "Records sent to the far relay", Kind::Counter, &[("route", "signals")], move || {
///     s.load(Ordering::Relaxed)
/// });
/// let text = set.render();
/// assert!(text.contains("tadpole_relay_records_sent_total{route=\"signals\"} 3"));
/// ```
#[derive(Default)]
pub struct CounterSet {
    families: Vec<Family>,
}

impl fmt::Debug for CounterSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CounterSet").field("families", &self.families.len()).finish()
    }
}

impl CounterSet {
    /// Adds one series: `name` with `labels`, its value read by `read` at scrape time. Series of
    /// one name share its help and kind (the first given).
    pub fn add(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        self.push(name, help, FamilyKind::Value(kind), labels, Reader::Value(Box::new(read)));
    }

    /// Adds one histogram series (e.g. link round trips), read by `read` at scrape time.
    /// Series of one name share its help (the first given); a name is either a histogram or a
    /// counter/gauge family, never both (a histogram series given to a counter family is
    /// dropped).
    pub fn add_histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        read: impl Fn() -> HistogramReading + Send + Sync + 'static,
    ) {
        self.push(name, help, FamilyKind::Histogram, labels, Reader::Histogram(Box::new(read)));
    }

    fn push(&mut self, name: &str, help: &str, kind: FamilyKind, labels: &[(&str, &str)], read: Reader) {
        let series = Series { labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(), read };
        match self.families.iter_mut().find(|f| f.name == name) {
            Some(family) if (family.kind == FamilyKind::Histogram) == matches!(series.read, Reader::Histogram(_)) => {
                family.series.push(series)
            }
            Some(_) => {}
            None => {
                self.families.push(Family { name: name.to_owned(), help: help.to_owned(), kind, series: vec![series] })
            }
        }
    }

    /// The Prometheus text exposition of every series (what `/metrics` serves).
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

impl Collector for CounterSet {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for family in &self.families {
            let metric_type = match family.kind {
                FamilyKind::Value(Kind::Counter) => ConstCounter::new(0u64).metric_type(),
                FamilyKind::Value(Kind::Gauge) => ConstGauge::new(0i64).metric_type(),
                FamilyKind::Histogram => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(&family.name, &family.help, None, metric_type)?;
            if let [series] = family.series.as_slice()
                && series.labels.is_empty()
            {
                // A family encoder writes `name{} value` for an empty label set; a lone series
                // without labels is written as plain `name value`.
                encode_series(series, family.kind, metric)?;
                continue;
            }
            for series in &family.series {
                encode_series(series, family.kind, metric.encode_family(&series.labels)?)?;
            }
        }
        Ok(())
    }
}

fn encode_series(series: &Series, kind: FamilyKind, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
    match (&series.read, kind) {
        (Reader::Value(read), FamilyKind::Value(Kind::Counter)) => ConstCounter::new(read()).encode(encoder),
        (Reader::Value(read), _) => ConstGauge::new(i64::try_from(read()).unwrap_or(i64::MAX)).encode(encoder),
        (Reader::Histogram(read), _) => {
            let (sum, count, buckets) = read();
            encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
        }
    }
}

/// What the relay publishes to its HTTP endpoint.
pub trait Status: Send + Sync + 'static {
    /// Every metric, read now.
    fn metrics(&self) -> CounterSet;
    /// Whether the relay is healthy, with details (links, handshake failures, breakers) as JSON.
    fn health(&self) -> (bool, serde_json::Value);
    /// Whether the relay serves: its listener is bound behind a running ZAP handler, and its
    /// rings are attached.
    fn ready(&self) -> bool;
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve HTTP on {addr}: {reason}")]
pub struct HttpError {
    /// The address asked for.
    pub addr: String,
    /// What went wrong.
    pub reason: String,
}

/// The running endpoint; stops (and joins its thread) when dropped.
pub struct HttpEndpoint {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpEndpoint {
    /// Serves `/metrics`, `/health` and `/ready` on `addr` (`127.0.0.1:0` picks a free port).
    pub fn start(addr: &str, status: Arc<dyn Status>) -> Result<HttpEndpoint, HttpError> {
        let fail = |reason: String| HttpError { addr: addr.to_owned(), reason };
        let server = tiny_http::Server::http(addr).map_err(|e| fail(e.to_string()))?;
        let bound = server.server_addr().to_ip().ok_or_else(|| fail("not an IP address".to_owned()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tadpole-http".to_owned())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    match server.recv_timeout(Duration::from_millis(100)) {
                        Ok(Some(request)) => respond(request, &*status),
                        Ok(None) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .map_err(|e| fail(e.to_string()))?;
        Ok(HttpEndpoint { addr: bound, stop, thread: Some(thread) })
    }

    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn respond(request: tiny_http::Request, status: &dyn Status) {
    let header = |value: &str| tiny_http::Header::from_bytes(&b"Content-Type"[..], value.as_bytes()).ok();
    let (code, body, content_type) = if *request.method() != tiny_http::Method::Get {
        (405, "only GET\n".to_owned(), "text/plain")
    } else {
        match request.url().split('?').next().unwrap_or("") {
            "/metrics" => {
                (200, status.metrics().render(), "application/openmetrics-text; version=1.0.0; charset=utf-8")
            }
            "/health" => {
                let (ok, detail) = status.health();
                let body = serde_json::json!({ "healthy": ok, "detail": detail }).to_string();
                (if ok { 200 } else { 503 }, body, "application/json")
            }
            "/ready" => {
                let ready = status.ready();
                (if ready { 200 } else { 503 }, serde_json::json!({ "ready": ready }).to_string(), "application/json")
            }
            _ => (404, "not found: try /metrics, /health or /ready\n".to_owned(), "text/plain"),
        }
    };
    let mut response = tiny_http::Response::from_string(body).with_status_code(code);
    if let Some(h) = header(content_type) {
        response = response.with_header(h);
    }
    // A client that went away is not our problem.
    let _ = request.respond(response);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicU64;

    struct Fake {
        sent: Arc<AtomicU64>,
        healthy: AtomicBool,
    }

    impl Status for Fake {
        fn metrics(&self) -> CounterSet {
            let mut set = CounterSet::default();
            let sent = self.sent.clone();
            set.add("tadpole_relay_records_sent", "Records sent", Kind::Counter, &[("route", "a")], move || {
                sent.load(Ordering::Relaxed)
            });
            set.add("tadpole_relay_in_flight", "Records in flight", Kind::Gauge, &[("route", "a")], || 7);
            set.add("tadpole_relay_links", "Links", Kind::Gauge, &[], || 3);
            set.add_histogram("tadpole_relay_round_trip_seconds", "Round trips", &[("route", "a")], || {
                (0.003, 2, vec![(0.001, 1), (0.01, 1), (f64::MAX, 0)])
            });
            set
        }
        fn health(&self) -> (bool, serde_json::Value) {
            (self.healthy.load(Ordering::Relaxed), serde_json::json!({ "handshake_failures": 4 }))
        }
        fn ready(&self) -> bool {
            true
        }
    }

    fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
        (code, text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
    }

    #[test]
    fn metrics_health_and_ready_are_served_from_the_live_status() {
        let fake = Arc::new(Fake { sent: Arc::new(AtomicU64::new(41)), healthy: AtomicBool::new(true) });
        let endpoint = HttpEndpoint::start("127.0.0.1:0", fake.clone()).unwrap();
        fake.sent.fetch_add(1, Ordering::Relaxed);
        let (code, body) = get(endpoint.addr(), "/metrics");
        assert_eq!(code, 200);
        assert!(body.contains("tadpole_relay_records_sent_total{route=\"a\"} 42"), "{body}");
        assert!(body.contains("tadpole_relay_in_flight{route=\"a\"} 7"), "{body}");
        assert!(body.lines().any(|l| l == "tadpole_relay_links 3"), "an unlabelled series is `name value`:\n{body}");
        for line in [
            "# TYPE tadpole_relay_round_trip_seconds histogram",
            "tadpole_relay_round_trip_seconds_count{route=\"a\"} 2",
            "tadpole_relay_round_trip_seconds_bucket{le=\"0.001\",route=\"a\"} 1",
            "tadpole_relay_round_trip_seconds_bucket{le=\"0.01\",route=\"a\"} 2",
            "tadpole_relay_round_trip_seconds_bucket{le=\"+Inf\",route=\"a\"} 2",
        ] {
            assert!(body.contains(line), "{line} missing from\n{body}");
        }
        let (code, body) = get(endpoint.addr(), "/health");
        assert_eq!(code, 200);
        assert!(body.contains("\"handshake_failures\":4"), "{body}");
        fake.healthy.store(false, Ordering::Relaxed);
        assert_eq!(get(endpoint.addr(), "/health").0, 503);
        assert_eq!(get(endpoint.addr(), "/ready").0, 200);
        assert_eq!(get(endpoint.addr(), "/nope").0, 404);
    }
}
