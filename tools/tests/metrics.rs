//! `tadpole metrics` as a real process serving real HTTP: the counters of real rings with
//! traffic, rings made and removed while it runs, unreadable and truncated segments skipped and
//! counted; and the Grafana dashboard in examples/grafana, whose every query must name a series
//! the exporter or a real relay serves.

mod ops_support;
#[path = "support/relay.rs"]
mod relay_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipc_core::{DeadLetterReason, RingBuilder, Segment, TryRecvError};
use ops_support::{Unlink, unique};
use relay_support::{free_port, keygen};

/// A running `tadpole metrics`, killed when dropped.
struct Exporter {
    child: Child,
    addr: String,
}

impl Exporter {
    fn start() -> Exporter {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tadpole"))
            .args(["metrics", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("serving http://")
            .and_then(|rest| rest.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Exporter { child, addr }
    }

    fn scrape(&mut self) -> String {
        let (code, body) = http_get(&self.addr, "/metrics").expect("the exporter answers");
        assert_eq!(code, 200, "{body}");
        assert_eq!(self.child.try_wait().unwrap(), None, "the exporter is still running");
        body
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned()))
}

/// The value of the sample `series` (name and labels exactly as the exposition prints them).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

fn ring_sample(metrics: &str, name: &str, ring: &str) -> Option<f64> {
    sample(metrics, &format!("{name}{{ring=\"{ring}\"}}"))
}

#[test]
fn metrics_serves_a_ring_s_depth_traffic_dead_letters_and_liveness_over_http() {
    let name = unique("metrics");
    let _unlink = Unlink(name.clone());
    let segment = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    let (mut producer, mut consumer) = (segment.producer().unwrap(), segment.consumer().unwrap());
    for _ in 0..10 {
        producer.try_send(&[7; 40]).unwrap();
    }
    for _ in 0..10 {
        drop(consumer.try_recv().unwrap());
    }
    // The consumer publishes its counts every 64 empty polls.
    for _ in 0..64 {
        assert_eq!(consumer.try_recv().err(), Some(TryRecvError::Empty));
    }
    for _ in 0..5 {
        producer.try_send(&[7; 40]).unwrap();
    }
    consumer.count_dead_letter(DeadLetterReason::Malformed);
    let mut exporter = Exporter::start();
    let m = exporter.scrape();
    let value = |metric: &str| ring_sample(&m, metric, &name).unwrap_or_else(|| panic!("no {metric} for {name}:\n{m}"));
    assert_eq!(value("tadpole_ring_capacity_bytes"), 65536.0);
    assert_eq!(value("tadpole_ring_produced_messages_total"), 15.0);
    assert_eq!(value("tadpole_ring_consumed_messages_total"), 10.0);
    assert_eq!(value("tadpole_ring_consumed_bytes_total"), 400.0);
    assert_eq!(value("tadpole_ring_depth_messages"), 5.0);
    assert_eq!(value("tadpole_ring_depth_bytes"), 5.0 * 48.0, "5 records of 8 + 40 bytes");
    assert_eq!(value("tadpole_ring_full_ring_waits_total"), 0.0);
    assert_eq!(value("tadpole_ring_corrupt_records_total"), 0.0);
    assert_eq!(value("tadpole_ring_leases_held"), 0.0);
    let by = |metric: &str, labels: &str| sample(&m, &format!("{metric}{{{labels}}}"));
    assert_eq!(
        by("tadpole_ring_dead_letters_total", &format!("ring=\"{name}\",reason=\"malformed\"")),
        Some(1.0),
        "{m}"
    );
    assert_eq!(by("tadpole_ring_dead_letters_total", &format!("ring=\"{name}\",reason=\"undeliverable\"")), Some(0.0));
    let me = f64::from(std::process::id());
    for side in ["creator", "producer", "consumer"] {
        assert_eq!(by("tadpole_ring_alive", &format!("ring=\"{name}\",side=\"{side}\"")), Some(1.0), "{side}: {m}");
        assert_eq!(by("tadpole_ring_pid", &format!("ring=\"{name}\",side=\"{side}\"")), Some(me), "{side}");
    }
    assert!(m.contains("# TYPE tadpole_ring_depth_bytes gauge"), "{m}");
    assert!(m.contains("# TYPE tadpole_ring_produced_messages counter"), "{m}");
    // A consumer that lets go shows at the next scrape; /health answers.
    drop(consumer);
    let m = exporter.scrape();
    assert_eq!(sample(&m, &format!("tadpole_ring_alive{{ring=\"{name}\",side=\"consumer\"}}")), Some(0.0), "{m}");
    assert_eq!(sample(&m, &format!("tadpole_ring_dead{{ring=\"{name}\",side=\"consumer\"}}")), Some(0.0), "{m}");
    let (code, health) = http_get(&exporter.addr, "/health").unwrap();
    assert_eq!(code, 200, "{health}");
    assert!(health.contains("\"healthy\":true"), "{health}");
}

#[test]
fn metrics_shows_a_ring_made_after_it_started_and_drops_it_once_removed() {
    let mut exporter = Exporter::start();
    let name = unique("late");
    let unlink = Unlink(name.clone());
    assert_eq!(ring_sample(&exporter.scrape(), "tadpole_ring_capacity_bytes", &name), None);
    let segment = RingBuilder::new(1 << 14).create_named(&name).unwrap();
    let mut producer = segment.producer().unwrap();
    producer.try_send(b"late").unwrap();
    let m = exporter.scrape();
    assert_eq!(ring_sample(&m, "tadpole_ring_capacity_bytes", &name), Some(16384.0), "{m}");
    assert_eq!(ring_sample(&m, "tadpole_ring_produced_messages_total", &name), Some(1.0), "{m}");
    drop((producer, segment));
    drop(unlink);
    let m = exporter.scrape();
    assert_eq!(ring_sample(&m, "tadpole_ring_capacity_bytes", &name), None, "a removed ring is gone:\n{m}");
}

#[test]
fn metrics_skips_and_counts_a_hostile_file_and_a_ring_truncated_under_it_and_keeps_serving() {
    let mut exporter = Exporter::start();
    let skipped = |m: &str| sample(m, "tadpole_metrics_rings_skipped_total").unwrap_or_else(|| panic!("{m}"));
    let before = skipped(&exporter.scrape());
    // Not a ring: a page of garbage where a ring's file would be.
    let junk = unique("junk");
    let _junk = Unlink(junk.clone());
    std::fs::write(format!("/dev/shm/tadpole.{junk}"), vec![0x5A; 4096]).unwrap();
    // A real ring, mapped by the exporter at one scrape, then truncated to nothing.
    let name = unique("trunc");
    let _unlink = Unlink(name.clone());
    // The creator stays mapped here: its heartbeat thread meets the truncation, a SIGBUS the
    // library catches.
    let segment = RingBuilder::new(1 << 14).create_named(&name).unwrap();
    let m = exporter.scrape();
    assert_eq!(ring_sample(&m, "tadpole_ring_capacity_bytes", &name), Some(16384.0), "{m}");
    assert!(skipped(&m) >= before + 1.0, "the junk file is counted:\n{m}");
    assert_eq!(ring_sample(&m, "tadpole_ring_capacity_bytes", &junk), None, "{m}");
    assert!(sample(&m, "tadpole_metrics_rings_unreadable").is_some_and(|n| n >= 1.0), "{m}");
    std::fs::OpenOptions::new().write(true).open(format!("/dev/shm/tadpole.{name}")).unwrap().set_len(0).unwrap();
    let after = skipped(&m);
    let m = exporter.scrape();
    assert_eq!(ring_sample(&m, "tadpole_ring_capacity_bytes", &name), None, "the truncated ring is skipped:\n{m}");
    assert!(skipped(&m) >= after + 2.0, "both are counted again:\n{m}");
    let (code, health) = http_get(&exporter.addr, "/health").unwrap();
    assert_eq!(code, 200);
    assert!(health.contains(&name) && health.contains("truncated"), "{health}");
    assert!(segment.was_truncated());
}

/// Every `tadpole_*` name in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("tadpole_") {
        let preceded = rest[..at].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let len = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        if !preceded {
            names.push(tail[..len].to_owned());
        }
        rest = &tail[len..];
    }
    names
}

#[test]
fn metrics_outlives_a_ring_truncated_to_nothing_even_without_its_size_check() {
    // Without the size check before each read, the exporter meets the truncated file in the read
    // itself: through the mapping that is a SIGBUS; from the file, an unreadable ring.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tadpole"))
        .args(["metrics", "--listen", "127.0.0.1:0"])
        .env("TADPOLE_SKIP_SIZE_CHECK", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().trim_start_matches("serving http://").trim_end_matches("/metrics").to_owned();
    let mut exporter = Exporter { child, addr };
    let name = unique("sigbus");
    let _unlink = Unlink(name.clone());
    // The creator stays mapped here: its heartbeat thread meets the truncation, a SIGBUS the
    // library catches.
    let segment = RingBuilder::new(1 << 14).create_named(&name).unwrap();
    assert_eq!(ring_sample(&exporter.scrape(), "tadpole_ring_capacity_bytes", &name), Some(16384.0));
    std::fs::OpenOptions::new().write(true).open(format!("/dev/shm/tadpole.{name}")).unwrap().set_len(0).unwrap();
    let m = exporter.scrape();
    assert_eq!(ring_sample(&m, "tadpole_ring_capacity_bytes", &name), None, "{m}");
    let (_, health) = http_get(&exporter.addr, "/health").unwrap();
    assert!(health.contains(&name) && health.contains("truncated by another process"), "{health}");
    assert!(segment.was_truncated());
}

/// Every PromQL expression of a Grafana dashboard: each panel's (and row's) target `expr`s, and
/// each query variable's query.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    exprs(&dashboard["panels"], &mut out);
    for variable in dashboard["templating"]["list"].as_array().expect("templating.list") {
        if variable["type"] == "query" {
            let query = &variable["query"];
            out.push(query["query"].as_str().or(query.as_str()).expect("a variable's query").to_owned());
        }
    }
    out
}

/// The sample names (`name_total`, `name_bucket`, ...) of a Prometheus text exposition.
fn served_names(metrics: &str) -> std::collections::BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect()
}

/// One relay connected to itself: it forwards `source` to its own listener on a stream that
/// has no route there, so every record comes back rejected (`UnknownRoute`).
struct SelfRelay {
    child: Child,
    health: String,
    _dir: tempfile::TempDir,
}

impl SelfRelay {
    fn start(source: &str, sink: &str) -> SelfRelay {
        let dir = tempfile::tempdir().unwrap();
        let key = keygen(dir.path(), "m");
        let (port, health_port) = (free_port(), free_port());
        let config = format!(
            "name = \"m\"\nkey_file = \"m.key\"\nlisten = \"tcp://127.0.0.1:{port}\"\nallow = [\"{key}\"]\n\
             health = \"127.0.0.1:{health_port}\"\n\n[[route_out]]\nring = \"{source}\"\n\
             connect = \"tcp://127.0.0.1:{port}\"\nserver_key = \"{key}\"\nstream = \"unrouted\"\n\n\
             [[route_in]]\nstream = \"routed\"\nring = \"{sink}\"\n"
        );
        std::fs::write(dir.path().join("m.toml"), config).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tadpole"))
            .args(["relay", "--config"])
            .arg(dir.path().join("m.toml"))
            .arg("--state")
            .arg(dir.path().join("m.state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        SelfRelay { child, health: format!("127.0.0.1:{health_port}"), _dir: dir }
    }
}

impl Drop for SelfRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_record_a_relay_s_far_side_rejects_is_a_dead_letter_of_its_source_ring_and_the_dashboard_queries_only_served_names()
{
    let (source, sink) = (unique("relay-src"), unique("relay-sink"));
    let _unlinks = (Unlink(source.clone()), Unlink(sink.clone()));
    let rings = [
        RingBuilder::new(1 << 16).create_named(&source).unwrap(),
        RingBuilder::new(1 << 16).create_named(&sink).unwrap(),
    ];
    let relay = SelfRelay::start(&source, &sink);
    let mut producer = Segment::open(&source).unwrap().producer().unwrap();
    producer.try_send(b"nobody routes this").unwrap();
    let mut exporter = Exporter::start();
    let undeliverable = format!("tadpole_ring_dead_letters_total{{ring=\"{source}\",reason=\"undeliverable\"}}");
    let started = Instant::now();
    let ring_metrics = loop {
        let m = exporter.scrape();
        if sample(&m, &undeliverable) == Some(1.0) {
            break m;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the rejection never reached the source ring:\n{m}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let relay_metrics = loop {
        if let Some((200, m)) = http_get(&relay.health, "/metrics") {
            if m.contains("tadpole_relay_dead_letters_total") {
                break m;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the relay never served its metrics");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        sample(
            &relay_metrics,
            &format!("tadpole_relay_dead_letters_total{{relay=\"m\",ring=\"{source}\",stream=\"unrouted\"}}")
        ) == Some(1.0),
        "{relay_metrics}"
    );

    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/grafana/tadpole.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid JSON");
    let mut served = served_names(&ring_metrics);
    served.extend(served_names(&relay_metrics));
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 10, "the dashboard has its panels: {queries:?}");
    let mut queried = std::collections::BTreeSet::new();
    for expr in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "a query without a tadpole metric: {expr}");
        for name in names {
            assert!(served.contains(&name), "the dashboard queries {name}, which nothing serves ({expr})");
            queried.insert(name);
        }
    }
    for needed in [
        "tadpole_ring_depth_bytes",
        "tadpole_ring_dead_letters_total",
        "tadpole_ring_full_ring_waits_total",
        "tadpole_relay_round_trip_seconds_bucket",
    ] {
        assert!(queried.contains(needed), "the dashboard shows {needed}");
    }
    drop(rings);
}

#[test]
fn metrics_help_gives_examples_and_exit_statuses_and_a_taken_address_fails_with_status_1() {
    let out = ops_support::tadpole(&["metrics", "--help"]);
    let text = ops_support::stdout(&out);
    assert!(out.status.success() && text.contains("Examples:\n  tadpole metrics"), "{text}");
    assert!(text.contains("Exit status:") && text.contains("tadpole_ring_dead_letters_total"), "{text}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = ops_support::tadpole(&["metrics", "--listen", &addr]);
    assert_eq!(out.status.code(), Some(1), "{}", ops_support::stderr(&out));
    assert!(
        ops_support::stderr(&out).contains(&format!("cannot serve HTTP on {addr}")),
        "{}",
        ops_support::stderr(&out)
    );
}
