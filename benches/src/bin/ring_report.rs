//! Runs the whole benchmark matrix once and prints a Markdown table: each row with its
//! baseline measured in the same run (a floor probe right before every row, memcpy bandwidth
//! right before every large-message throughput row), the ratio, the target and whether it was
//! met; then the start and end floor and whether the floor drifted by more than 20%.
//!
//! ```text
//! cargo run --release -p tadpole-benches --bin ring_report            # ~30 s
//! cargo run --release -p tadpole-benches --bin ring_report -- --quick # a few seconds (CI smoke)
//! ```
//!
//! Exits non-zero only when a measurement fails (a message lost or corrupted, a peer that does
//! not start); missed targets are reported, not failed, since figures on a shared VM vary.

use std::time::{Duration, Instant};

use tadpole_benches::latency::{EchoSession, Mode};
use tadpole_benches::stats::{OneWay, rtt_histogram};
use tadpole_benches::throughput::{Batching, Rate, ThroughputRing, batch_len_for, capacity_for, handoff_bandwidth};
use tadpole_benches::{BenchResult, MAIN_CPU, floor, memcpy, peer, pin};

const LATENCY_SIZES: [usize; 3] = [8, 64, 1024];
const THROUGHPUT_SIZES: [usize; 4] = [8, 64, 4096, 65536];
/// One-way p50 spinning latency must be within this factor of the floor probed before it.
const LATENCY_TARGET: f64 = 1.3;
/// 64-byte batched throughput target, messages per second.
const SMALL_BATCHED_TARGET: f64 = 30e6;
/// 64 KiB throughput must reach this fraction of single-thread memcpy bandwidth.
const LARGE_TARGET: f64 = 0.7;
/// Floor drift between start and end of the run above which the run is flagged.
const DRIFT_LIMIT: f64 = 0.20;

struct Settings {
    /// Measured time per row.
    row: Duration,
    /// Duration of each floor probe.
    probe: Duration,
    /// Duration of each memcpy probe.
    memcpy: Duration,
    /// Timed runs per throughput row (the median is reported).
    runs: usize,
}

impl Settings {
    fn from_args() -> Result<Settings, String> {
        let mut s = Settings {
            row: Duration::from_millis(1500),
            probe: Duration::from_millis(5),
            memcpy: Duration::from_millis(100),
            runs: 5,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => {
                    s = Settings {
                        row: Duration::from_millis(30),
                        probe: Duration::from_millis(2),
                        memcpy: Duration::from_millis(5),
                        runs: 3,
                    }
                }
                "--row-ms" => {
                    let ms: u64 = args.next().and_then(|v| v.parse().ok()).ok_or("--row-ms needs a number")?;
                    s.row = Duration::from_millis(ms);
                }
                "-h" | "--help" => {
                    println!("usage: ring_report [--quick] [--row-ms N]");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?} (try --help)")),
            }
        }
        Ok(s)
    }
}

/// One line of the table.
struct Row {
    name: String,
    value: String,
    floor: f64,
    baseline: String,
    ratio: Option<f64>,
    target: String,
    met: Option<bool>,
}

fn main() {
    peer::run_peer_if_requested();
    let settings = match Settings::from_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ring_report: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&settings) {
        eprintln!("ring_report: measurement failed: {e}");
        std::process::exit(1);
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "?".into(), |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn probe(settings: &Settings) -> BenchResult<OneWay> {
    floor::probe(settings.probe)
}

fn run(settings: &Settings) -> BenchResult<()> {
    if pin::allowed_cpus() < 2 {
        return Err("needs two CPUs (producer and consumer on separate cores)".into());
    }
    pin::pin_to_cpu(MAIN_CPU)?;
    let began = Instant::now();
    let load_start = load_average();
    let start_floor = probe(settings)?;
    let mut rows = Vec::new();

    for mode in [Mode::Spin, Mode::Poll, Mode::Block] {
        for size in LATENCY_SIZES {
            rows.push(latency_row(settings, mode, size)?);
        }
    }
    for size in THROUGHPUT_SIZES {
        if size >= 4096 {
            rows.push(handoff_row(settings, size)?);
        }
        for batching in [Batching::Unbatched, Batching::Batched] {
            rows.push(throughput_row(settings, size, batching)?);
        }
    }

    let end_floor = probe(settings)?;
    let drift = (end_floor.p50 - start_floor.p50).abs() / start_floor.p50;
    let load_end = load_average();

    println!("## Tadpole ring benchmark report\n");
    println!(
        "Producer/pinging side on CPU {MAIN_CPU}, consumer/peer on CPU {}; latency between two processes, throughput between two threads. Run time {:.1} s. Load average (1/5/15 min) at start: {load_start}; at end: {load_end}.\n",
        tadpole_benches::PEER_CPU,
        began.elapsed().as_secs_f64()
    );
    println!("| Row | Value (context) | Floor before (one-way p50) | Baseline | Ratio | Target | Met |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let ratio = r.ratio.map_or("—".into(), |x| format!("{x:.2}×"));
        let met = match r.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "n/a",
        };
        // A probe far from the start floor means the vCPUs moved or something else ran.
        let odd = (r.floor - start_floor.p50).abs() / start_floor.p50 > DRIFT_LIMIT;
        let floor = if odd { format!("{:.1} ns ⚠", r.floor) } else { format!("{:.1} ns", r.floor) };
        println!("| {} | {} | {floor} | {} | {} | {} | {} |", r.name, r.value, r.baseline, ratio, r.target, met);
    }
    println!();
    println!(
        "⚠: the floor probed before this row differs from the start floor by more than {:.0}%; distrust the row.\n",
        DRIFT_LIMIT * 100.0
    );
    println!("Floor at start: {start_floor}");
    println!("Floor at end:   {end_floor}");
    if drift > DRIFT_LIMIT {
        println!(
            "\n**FLAGGED: the floor moved {:.0}% between start and end (limit {:.0}%): the host re-placed the vCPUs; rerun before trusting ratios.**",
            drift * 100.0,
            DRIFT_LIMIT * 100.0
        );
    } else {
        println!("\nFloor drift start→end {:.0}% (limit {:.0}%): run not flagged.", drift * 100.0, DRIFT_LIMIT * 100.0);
    }
    Ok(())
}

fn latency_row(settings: &Settings, mode: Mode, size: usize) -> BenchResult<Row> {
    let floor = probe(settings)?;
    let mut session = EchoSession::start(size, mode)?;
    let mut rtt = rtt_histogram();
    // Warm-up: caches, branch predictors, the peer's first page touches.
    let warm = if mode == Mode::Block { settings.row / 30 } else { settings.row / 10 };
    session.record_for(warm, &mut rtt)?;
    rtt.reset();
    session.record_for(settings.row, &mut rtt)?;
    let summary = session.finish()?;
    let one_way = OneWay::from_rtt(&rtt);
    let ratio = one_way.p50 / floor.p50;
    let wakes = summary.wakes as f64 / summary.round_trips as f64 / 2.0;
    let (target, met) = match mode {
        Mode::Spin => (format!("p50 ≤ {LATENCY_TARGET}× floor"), Some(ratio <= LATENCY_TARGET)),
        Mode::Block => ("— (futex wake-up bound)".to_owned(), None),
        Mode::Poll => ("— (diagnostic: no waiter)".to_owned(), None),
    };
    let mut value = format!("{one_way}");
    if mode == Mode::Block {
        value.push_str(&format!(", {wakes:.2} futex wakes per one-way"));
    }
    Ok(Row {
        name: format!("latency {} {size} B, one-way", mode.name()),
        value,
        floor: floor.p50,
        baseline: format!("floor p50 {:.1} ns", floor.p50),
        ratio: Some(ratio),
        target,
        met,
    })
}

fn throughput_row(settings: &Settings, size: usize, batching: Batching) -> BenchResult<Row> {
    let floor = probe(settings)?;
    let large = size >= 4096;
    let memcpy_bw = large.then(|| memcpy::bandwidth(size, capacity_for(size), settings.memcpy));
    let mut ring = ThroughputRing::new(size, batching)?;
    // Warm-up run, which also sizes the timed runs.
    let warm = ring.run(if large { 256 } else { 20_000 })?;
    let per_run = settings.row / settings.runs as u32;
    // Each run is sized from the rate of the one before, so a slowdown mid-row (the host
    // moving a vCPU) cannot stretch the row far past its time budget.
    let mut rate = warm.messages_per_sec();
    let mut rates: Vec<Rate> = Vec::with_capacity(settings.runs);
    for _ in 0..settings.runs {
        let n = ((rate * per_run.as_secs_f64()) as u64).max(64);
        let r = ring.run(n)?;
        rate = r.messages_per_sec();
        rates.push(r);
    }
    rates.sort_by(|a, b| a.messages_per_sec().total_cmp(&b.messages_per_sec()));
    let median = rates[rates.len() / 2];
    let (lo, hi) = (rates[0], rates[rates.len() - 1]);
    let mps = median.messages_per_sec();
    let gbps = median.bytes_per_sec() / 1e9;
    let value = format!(
        "{:.2} M msg/s, {gbps:.2} GB/s, {:.1} ns/msg (median of {} runs of ~{} msgs; range {:.2}–{:.2} M msg/s)",
        mps / 1e6,
        1e9 / mps,
        rates.len(),
        median.messages,
        lo.messages_per_sec() / 1e6,
        hi.messages_per_sec() / 1e6
    );
    let batch_note =
        if batching == Batching::Batched { format!(" ({} msgs/commit)", batch_len_for(size)) } else { String::new() };
    let name = format!("throughput {} {size} B{batch_note}", batching.name());
    let (baseline, ratio, target, met) = match (size, batching, memcpy_bw) {
        (64, Batching::Batched, _) => (
            "—".to_owned(),
            Some(mps / SMALL_BATCHED_TARGET),
            format!("≥ {:.0} M msg/s", SMALL_BATCHED_TARGET / 1e6),
            Some(mps >= SMALL_BATCHED_TARGET),
        ),
        (_, _, Some(bw)) => {
            let ratio = median.bytes_per_sec() / bw;
            let (target, met) = if size == 65536 {
                (format!("≥ {LARGE_TARGET}× memcpy"), Some(ratio >= LARGE_TARGET))
            } else {
                ("— (context)".to_owned(), None)
            };
            (format!("memcpy {:.1} GB/s", bw / 1e9), Some(ratio), target, met)
        }
        _ => ("—".to_owned(), None, "— (context)".to_owned(), None),
    };
    Ok(Row { name, value, floor: floor.p50, baseline, ratio, target, met })
}

/// The ring-less ceiling for large messages between the two CPUs, next to memcpy.
fn handoff_row(settings: &Settings, size: usize) -> BenchResult<Row> {
    let floor = probe(settings)?;
    let region = capacity_for(size);
    let bw = memcpy::bandwidth(size, region, settings.memcpy);
    let handoff = handoff_bandwidth(size, region, settings.row / 2)?;
    Ok(Row {
        name: format!("hardware: 2-thread copy-in/copy-out handoff {size} B, no ring"),
        value: format!("{:.2} GB/s", handoff / 1e9),
        floor: floor.p50,
        baseline: format!("memcpy {:.1} GB/s", bw / 1e9),
        ratio: Some(handoff / bw),
        target: "— (ceiling for any ring)".to_owned(),
        met: None,
    })
}
