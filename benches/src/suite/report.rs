//! A measured row, and its two renderings: a line of the table and a JSON object.

use serde_json::{Value, json};

use crate::stats::OneWay;

/// Which scenario a row belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Latency,
    /// Streaming; the receiver reads only each message's sequence number.
    ThroughputSeq,
    /// Streaming; the receiver copies each whole message out.
    ThroughputCopy,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::ThroughputSeq => "throughput-seq",
            Scenario::ThroughputCopy => "throughput-copy",
        }
    }
}

/// One measured row.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: Scenario,
    pub transport: String,
    pub size: usize,
    /// One-way latency (latency rows).
    pub latency: Option<OneWay>,
    /// Median run (throughput rows).
    pub msgs_per_s: Option<f64>,
    pub bytes_per_s: Option<f64>,
    /// What `ratio` divides by, in words.
    pub baseline: String,
    /// Latency: p50 / the floor probe before the row. Throughput: bytes/s / the two-thread
    /// hardware handoff's bytes/s at this size.
    pub ratio: Option<f64>,
    /// Latency: p50 / the floor-2line p50 of the same size, when that row ran before this one.
    pub ratio_floor2: Option<f64>,
    /// Throughput: bytes/s / single-thread memcpy's at this size.
    pub ratio_memcpy: Option<f64>,
    /// The floor probe (one-way p50, ns) taken just before the row.
    pub floor_ns: f64,
    /// That probe differs from the run's first by more than the drift limit.
    pub floor_moved: bool,
}

impl Row {
    pub fn json(&self) -> Value {
        let l = self.latency;
        json!({
            "scenario": self.scenario.name(),
            "transport": self.transport,
            "size": self.size,
            "p50_ns": l.map(|l| l.p50),
            "p90_ns": l.map(|l| l.p90),
            "p99_ns": l.map(|l| l.p99),
            "p999_ns": l.map(|l| l.p999),
            "max_ns": l.map(|l| l.max),
            "samples": l.map(|l| l.samples),
            "msgs_per_s": self.msgs_per_s,
            "bytes_per_s": self.bytes_per_s,
            "ratio": self.ratio,
            "baseline": self.baseline,
            "ratio_floor2": self.ratio_floor2,
            "ratio_memcpy": self.ratio_memcpy,
            "floor_ns": self.floor_ns,
            "floor_moved": self.floor_moved,
        })
    }

    pub fn table_line(&self) -> String {
        let ns = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), format_ns);
        let l = self.latency;
        let ratio = self.ratio.map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×"));
        let moved = if self.floor_moved { " ⚠" } else { "" };
        format!(
            "{:<15} {:<21} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>11} {:>7}  {}{moved}",
            self.scenario.name(),
            self.transport,
            format_size(self.size),
            ns(l.map(|l| l.p50)),
            ns(l.map(|l| l.p90)),
            ns(l.map(|l| l.p99)),
            ns(l.map(|l| l.p999)),
            ns(l.map(|l| l.max)),
            self.msgs_per_s.map_or_else(|| "—".to_owned(), format_rate),
            self.bytes_per_s.map_or_else(|| "—".to_owned(), format_bytes_per_s),
            ratio,
            self.baseline,
        )
    }
}

/// The table's header line.
pub fn table_header() -> String {
    format!(
        "{:<15} {:<21} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>11} {:>7}  {}",
        "scenario", "transport", "size", "p50", "p90", "p99", "p99.9", "max", "msg/s", "bytes/s", "ratio", "baseline"
    )
}

pub fn format_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

pub fn format_rate(per_s: f64) -> String {
    if per_s >= 1e6 { format!("{:.2} M", per_s / 1e6) } else { format!("{:.1} k", per_s / 1e3) }
}

pub fn format_size(size: usize) -> String {
    if size >= 1 << 20 && size % (1 << 20) == 0 {
        format!("{} MiB", size >> 20)
    } else if size >= 1 << 10 && size % (1 << 10) == 0 {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

pub fn format_bytes_per_s(b: f64) -> String {
    if b >= 1e9 { format!("{:.2} GB/s", b / 1e9) } else { format!("{:.1} MB/s", b / 1e6) }
}
