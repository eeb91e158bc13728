//! `tadpole bench`: Tadpole against the transports a user would pick instead, on this host, in
//! one run. Every transport runs between two processes pinned to CPU [`MAIN_CPU`] and CPU
//! [`PEER_CPU`] (crossbeam, the in-process reference, between two pinned threads), and every
//! row carries its ratio to a baseline measured in the same run:
//!
//! - latency rows (ping-pong, one message in flight, see [`measure`]): one-way p50 divided by
//!   the floor probe (two processes bouncing one cache line) taken just before the row; the
//!   blocking row (`tadpole-waitset-block`) by the blocking floor instead (`floor-futex`: raw
//!   futex ping-pong, measured at the same size just before it, or right then if not selected);
//! - throughput rows: bytes/s divided by the two-thread hardware handoff of the same size (the
//!   fastest any ring can move those bytes between the two CPUs), and by single-thread memcpy,
//!   both measured right before that size's rows.
//!
//! The floor is probed at the start and the end too; a run whose end floor differs from its
//! start by more than 20% is flagged, and so is each row whose probe moved that far.
//!
//! The peer is this executable started again (see [`crate::peer`]), so a binary that offers
//! this command must call [`crate::peer::run_peer_if_requested`] first thing in `main`.

mod floor2;
mod futex;
mod link;
mod machine;
mod measure;
mod plot;
mod report;
mod transports;

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::relay_pair::{MAX_RECORD, RelayPair};
use crate::stats::OneWay;
use crate::{BenchResult, MAIN_CPU, PEER_CPU, floor, memcpy, pin, throughput};
use measure::{Settings, Streamed};
use report::{Row, Scenario, format_size};
use transports::{Arrow, Crossbeam, Envelope, Iceoryx, Kind, Pipe, Ring, SetRing, Spec, Uds, Zmq};

pub(crate) use floor2::peer_main as floor2_peer_main;
pub(crate) use futex::peer_main as futex_peer_main;
pub use plot::histogram as plot_histogram;
pub(crate) use transports::peer_main as transport_peer_main;

/// Floor drift (start to end, or start to a row's probe) above which a run or row is flagged.
const DRIFT_LIMIT: f64 = 0.20;
/// The transport name of the Arrow receive rows (see [`Job::ArrowRows`]).
pub(crate) const ARROW_RECV: &str = "tadpole-arrow-recv";
/// The same with a trusted receiver (no array-data validation) and cold caches.
pub(crate) const ARROW_RECV_TRUSTED: &str = "tadpole-arrow-recv-trusted";
const DEFAULT_SIZES: [usize; 5] = [8, 64, 1024, 16 << 10, 1 << 20];
const QUICK_SIZES: [usize; 2] = [64, 1024];

/// Options of `tadpole bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// A short run (under 30 s): sizes 64 and 1024 unless --sizes says otherwise, short rows.
    #[arg(long)]
    pub quick: bool,
    /// Print one JSON object per row on stdout instead of the table (the machine report and
    /// warnings go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Write SVG and PNG charts into this directory.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Message sizes, comma-separated, e.g. `8,64,1KiB,16KiB,1MiB` (at least 8 bytes each).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Vec<usize>,
    /// Transports to run, comma-separated (default: all): floor, floor-2line, floor-futex,
    /// tadpole, tadpole-poll, tadpole-waitset, tadpole-waitset-block, tadpole-batched,
    /// tadpole-zerocopy, tadpole-envelope, tadpole-arrow, iceoryx2, iceoryx2-preloan, uds, pipe,
    /// zmq-ipc, zmq-tcp, zmq-tcp-curve, crossbeam, tadpole-relay.
    #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
    pub transports: Vec<String>,
    /// Scenarios, comma-separated (default both): latency, throughput.
    #[arg(long, value_delimiter = ',', value_parser = ["latency", "throughput"])]
    pub scenarios: Vec<String>,
    /// Measured milliseconds per latency row; each of a throughput row's three timed runs
    /// gets a sixth of it.
    #[arg(long, value_name = "MS")]
    pub row_ms: Option<u64>,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: usize = digits.parse().map_err(|_| format!("{s:?} is not a size"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" | "kb" => 1 << 10,
        "m" | "mib" | "mb" => 1 << 20,
        _ => return Err(format!("{s:?}: unknown unit (use B, KiB or MiB)")),
    };
    let size = n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))?;
    if !(8..=(64 << 20)).contains(&size) {
        return Err(format!("{s:?}: sizes go from 8 B (the sequence number) to 64 MiB"));
    }
    Ok(size)
}

fn parse_kind(s: &str) -> Result<String, String> {
    Kind::parse(s).map(|k| k.name().to_owned()).ok_or_else(|| {
        let all: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown transport {s:?} (known: {})", all.join(", "))
    })
}

impl Args {
    fn settings(&self) -> Settings {
        let mut s = if self.quick {
            Settings {
                latency: Duration::from_millis(100),
                warm: Duration::from_millis(20),
                runs: 3,
                per_run: Duration::from_millis(30),
                probe: Duration::from_millis(2),
                memcpy: Duration::from_millis(5),
                handoff: Duration::from_millis(15),
            }
        } else {
            Settings {
                latency: Duration::from_millis(1000),
                warm: Duration::from_millis(100),
                runs: 3,
                per_run: Duration::from_millis(150),
                probe: Duration::from_millis(5),
                memcpy: Duration::from_millis(50),
                handoff: Duration::from_millis(150),
            }
        };
        if let Some(ms) = self.row_ms {
            let ms = ms.max(1);
            s.latency = Duration::from_millis(ms);
            s.warm = Duration::from_millis(ms.div_ceil(10));
            s.per_run = Duration::from_millis(ms.div_ceil(6).max(1));
            s.handoff = Duration::from_millis(ms.div_ceil(6).max(1));
        }
        s
    }

    fn kinds(&self) -> Vec<Kind> {
        if self.transports.is_empty() {
            return Kind::ALL.to_vec();
        }
        Kind::ALL.into_iter().filter(|k| self.transports.iter().any(|t| t == k.name())).collect()
    }

    fn sizes(&self) -> Vec<usize> {
        let mut sizes = if !self.sizes.is_empty() {
            self.sizes.clone()
        } else if self.quick {
            QUICK_SIZES.to_vec()
        } else {
            DEFAULT_SIZES.to_vec()
        };
        sizes.sort_unstable();
        sizes.dedup();
        sizes
    }

    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.is_empty() || self.scenarios.iter().any(|s| s == scenario)
    }
}

/// A floor probe that a single preemption cannot turn into the baseline: a probe that managed
/// fewer than [`STEADY_SAMPLES`] round trips (the peer or this side was descheduled for most of
/// it) is taken again, up to three times, and the lowest p50 kept.
fn steady_probe(duration: Duration) -> BenchResult<OneWay> {
    let mut best = floor::probe(duration)?;
    for _ in 0..2 {
        if best.samples >= STEADY_SAMPLES {
            break;
        }
        let again = floor::probe(duration)?;
        if again.p50 < best.p50 {
            best = again;
        }
    }
    Ok(best)
}

/// Round trips a probe must complete to be trusted (a 2 ms probe at a 250 ns floor does ~4000).
const STEADY_SAMPLES: u64 = 500;

/// One unit of work, in run order.
#[derive(Clone, Copy, Debug)]
enum Job {
    Latency(Kind, usize),
    /// memcpy and the two-thread handoff at a size.
    Baselines(usize),
    Throughput(Kind, usize, bool),
    /// `tadpole-arrow-recv`: one validated Arrow receive, 1 k rows against 1 M rows.
    ArrowRows,
}

impl Job {
    fn label(self) -> String {
        match self {
            Job::Latency(k, size) => format!("latency {} {}", k.name(), format_size(size)),
            Job::Baselines(size) => format!("memcpy + handoff {}", format_size(size)),
            Job::ArrowRows => "latency tadpole-arrow-recv(-trusted) 1 k and 1 M rows".to_owned(),
            Job::Throughput(k, size, copy) => {
                format!("throughput-{} {} {}", if copy { "copy" } else { "seq" }, k.name(), format_size(size))
            }
        }
    }
}

fn plan(args: &Args) -> Vec<Job> {
    let (kinds, sizes) = (args.kinds(), args.sizes());
    let relay_fits = |k: Kind, size: usize| k != Kind::TadpoleRelay || size <= MAX_RECORD;
    let mut jobs = Vec::new();
    if args.wants("latency") {
        for &size in &sizes {
            jobs.extend(kinds.iter().filter(|k| k.pings() && relay_fits(**k, size)).map(|k| Job::Latency(*k, size)));
        }
        // Not a message size: the receive of a whole batch, whatever its row count.
        if kinds.contains(&Kind::TadpoleArrow) {
            jobs.push(Job::ArrowRows);
        }
    }
    if args.wants("throughput") {
        let streaming: Vec<Kind> = kinds.iter().copied().filter(|k| k.streams()).collect();
        for &size in &sizes {
            jobs.push(Job::Baselines(size));
            for copy in [false, true] {
                jobs.extend(
                    streaming.iter().filter(|k| relay_fits(**k, size)).map(|k| Job::Throughput(*k, size, copy)),
                );
            }
        }
    }
    jobs
}

/// What the run keeps between jobs.
struct Run {
    settings: Settings,
    start_floor: OneWay,
    /// memcpy and handoff bytes/s of the current throughput size.
    baselines: Option<(usize, f64, f64)>,
    /// The floor-2line p50 measured at the current latency size, if it ran.
    floor2: Option<(usize, f64)>,
    /// The floor-futex p50 measured at the current latency size, if it ran.
    futex: Option<(usize, f64)>,
    relay: Option<RelayPair>,
}

impl Run {
    fn moved(&self, probe: f64) -> bool {
        (probe - self.start_floor.p50).abs() / self.start_floor.p50 > DRIFT_LIMIT
    }

    fn relay(&mut self) -> BenchResult<&mut RelayPair> {
        if self.relay.is_none() {
            self.relay = Some(RelayPair::start()?);
        }
        self.relay.as_mut().ok_or_else(|| "relay pair not started".into())
    }

    fn job(&mut self, job: Job) -> BenchResult<Vec<Row>> {
        let s = self.settings;
        let probe = steady_probe(s.probe)?.p50;
        let moved = self.moved(probe);
        match job {
            Job::Latency(kind, size) => {
                let spec = Spec { kind, size };
                let one_way = match kind {
                    Kind::Floor => measure::floor_row(&s)?,
                    Kind::Floor2 => measure::floor2_row(&s)?,
                    Kind::FloorFutex => measure::futex_row(&s)?,
                    Kind::Tadpole | Kind::TadpolePoll | Kind::TadpoleBatched | Kind::TadpoleZeroCopy => {
                        measure::latency::<Ring>(spec, &s)?
                    }
                    Kind::TadpoleWaitSet => measure::latency::<SetRing>(spec, &s)?,
                    Kind::TadpoleWaitSetBlock => measure::latency_after_idle::<SetRing>(spec, &s)?,
                    Kind::TadpoleEnvelope => measure::latency::<Envelope>(spec, &s)?,
                    Kind::TadpoleArrow => measure::latency::<Arrow>(spec, &s)?,
                    Kind::Iceoryx2 | Kind::Iceoryx2Preloan => measure::latency::<Iceoryx>(spec, &s)?,
                    Kind::Uds => measure::latency::<Uds>(spec, &s)?,
                    Kind::Pipe => measure::latency::<Pipe>(spec, &s)?,
                    Kind::ZmqIpc | Kind::ZmqTcp | Kind::ZmqTcpCurve => measure::latency::<Zmq>(spec, &s)?,
                    Kind::Crossbeam => measure::latency::<Crossbeam>(spec, &s)?,
                    Kind::TadpoleRelay => measure::relay_latency(self.relay()?, size, &s)?,
                };
                if kind == Kind::Floor2 {
                    self.floor2 = Some((size, one_way.p50));
                }
                if kind == Kind::FloorFutex {
                    self.futex = Some((size, one_way.p50));
                }
                let ratio_floor2 = match self.floor2 {
                    Some((at, p50)) if at == size && kind != Kind::Floor2 => Some(one_way.p50 / p50),
                    _ => None,
                };
                // The blocking row against the blocking floor, the others against the floor probe.
                let (baseline, ratio) = if kind == Kind::TadpoleWaitSetBlock {
                    let (futex, how) = match self.futex {
                        Some((at, p50)) if at == size => (p50, "the floor-futex row above"),
                        _ => (measure::futex_row(&s)?.p50, "measured just before this row"),
                    };
                    (format!("floor-futex {} ({how})", report::format_ns(futex)), one_way.p50 / futex)
                } else {
                    (format!("floor probe {:.0} ns", probe), one_way.p50 / probe)
                };
                Ok(vec![Row {
                    scenario: Scenario::Latency,
                    transport: kind.name().to_owned(),
                    size,
                    latency: Some(one_way),
                    msgs_per_s: None,
                    bytes_per_s: None,
                    baseline,
                    ratio: Some(ratio),
                    ratio_floor2,
                    ratio_memcpy: None,
                    floor_ns: probe,
                    floor_moved: moved,
                }])
            }
            Job::ArrowRows => {
                let mut rows = Vec::new();
                for (transport, trusted) in [(ARROW_RECV, false), (ARROW_RECV_TRUSTED, true)] {
                    let mut first: Option<(usize, f64)> = None;
                    for count in measure::ARROW_ROWS {
                        let (bytes, receive) = measure::arrow_receive_row(count, trusted, &s)?;
                        let (base_rows, base_p50) = *first.get_or_insert((count, receive.p50));
                        rows.push(Row {
                            scenario: Scenario::Latency,
                            transport: transport.to_owned(),
                            size: bytes,
                            latency: Some(receive),
                            msgs_per_s: None,
                            bytes_per_s: None,
                            baseline: format!(
                                "{count} rows: receive time / the {base_rows}-row receive ({base_p50:.0} ns), one process"
                            ),
                            ratio: Some(receive.p50 / base_p50),
                            ratio_floor2: None,
                            ratio_memcpy: None,
                            floor_ns: probe,
                            floor_moved: moved,
                        });
                    }
                }
                Ok(rows)
            }
            Job::Baselines(size) => {
                let region = transports::ring_capacity(size);
                // Best of three: a ceiling is what the hardware allows when nothing interferes.
                let (mut copy, mut handoff) = (0f64, 0f64);
                for _ in 0..3 {
                    copy = copy.max(memcpy::bandwidth(size, region, s.memcpy));
                    handoff = handoff.max(throughput::handoff_bandwidth(size, region, s.handoff)?);
                }
                self.baselines = Some((size, copy, handoff));
                let row = |name: &str, bytes: f64, baseline: String, ratio: f64| Row {
                    scenario: Scenario::ThroughputCopy,
                    transport: name.to_owned(),
                    size,
                    latency: None,
                    msgs_per_s: Some(bytes / size as f64),
                    bytes_per_s: Some(bytes),
                    baseline,
                    ratio: Some(ratio),
                    ratio_floor2: None,
                    ratio_memcpy: Some(bytes / copy),
                    floor_ns: probe,
                    floor_moved: moved,
                };
                Ok(vec![
                    row("memcpy", copy, "itself (one thread, no second CPU)".into(), copy / handoff),
                    row("handoff", handoff, "itself (two threads, slot ring, no Tadpole code)".into(), 1.0),
                ])
            }
            Job::Throughput(kind, size, copy) => {
                let spec = Spec { kind, size };
                let streamed: Streamed = match kind {
                    Kind::Tadpole | Kind::TadpolePoll | Kind::TadpoleBatched | Kind::TadpoleZeroCopy => {
                        measure::throughput::<Ring>(spec, copy, &s)?
                    }
                    Kind::TadpoleWaitSet | Kind::TadpoleWaitSetBlock => measure::throughput::<SetRing>(spec, copy, &s)?,
                    Kind::TadpoleEnvelope => measure::throughput::<Envelope>(spec, copy, &s)?,
                    Kind::TadpoleArrow => measure::throughput::<Arrow>(spec, copy, &s)?,
                    Kind::Iceoryx2 | Kind::Iceoryx2Preloan => measure::throughput::<Iceoryx>(spec, copy, &s)?,
                    Kind::Uds => measure::throughput::<Uds>(spec, copy, &s)?,
                    Kind::Pipe => measure::throughput::<Pipe>(spec, copy, &s)?,
                    Kind::ZmqIpc | Kind::ZmqTcp | Kind::ZmqTcpCurve => measure::throughput::<Zmq>(spec, copy, &s)?,
                    Kind::Crossbeam => measure::throughput::<Crossbeam>(spec, copy, &s)?,
                    Kind::TadpoleRelay => measure::relay_throughput(self.relay()?, size, copy, &s)?,
                    Kind::Floor | Kind::Floor2 | Kind::FloorFutex => return Ok(Vec::new()),
                };
                let (memcpy_bw, handoff) = match self.baselines {
                    Some((at, m, h)) if at == size => (m, h),
                    _ => return Err(format!("no baselines measured for {size} B").into()),
                };
                let bytes = streamed.median.bytes_per_sec();
                Ok(vec![Row {
                    scenario: if copy { Scenario::ThroughputCopy } else { Scenario::ThroughputSeq },
                    transport: kind.name().to_owned(),
                    size,
                    latency: None,
                    msgs_per_s: Some(streamed.median.messages_per_sec()),
                    bytes_per_s: Some(bytes),
                    baseline: format!(
                        "handoff {} (memcpy {}); runs {}–{} msg/s",
                        report::format_bytes_per_s(handoff),
                        report::format_bytes_per_s(memcpy_bw),
                        report::format_rate(streamed.low_msgs_per_s),
                        report::format_rate(streamed.high_msgs_per_s)
                    ),
                    ratio: Some(bytes / handoff),
                    ratio_floor2: None,
                    ratio_memcpy: Some(bytes / memcpy_bw),
                    floor_ns: probe,
                    floor_moved: moved,
                }])
            }
        }
    }
}

/// Stops the run if one job takes far longer than its budget (a peer that never answers, a
/// transport that lost a message): the bench's waits spin, so without this it would hang.
/// Peer processes die with this one (`PR_SET_PDEATHSIG`).
struct Watchdog {
    job: std::sync::Arc<std::sync::Mutex<Option<(String, Instant, Duration)>>>,
}

impl Watchdog {
    /// Longest a job may run past its budget.
    const GRACE: Duration = Duration::from_secs(60);

    fn start() -> Watchdog {
        let job: std::sync::Arc<std::sync::Mutex<Option<(String, Instant, Duration)>>> = Default::default();
        let watched = job.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let Ok(current) = watched.lock() else { return };
                if let Some((label, since, budget)) = current.as_ref() {
                    if since.elapsed() > *budget + Self::GRACE {
                        eprintln!(
                            "tadpole bench: {label} has not finished after {:.0} s; giving up",
                            since.elapsed().as_secs_f64()
                        );
                        std::process::exit(3);
                    }
                }
            }
        });
        Watchdog { job }
    }

    fn begin(&self, label: String, budget: Duration) {
        if let Ok(mut job) = self.job.lock() {
            *job = Some((label, Instant::now(), budget));
        }
    }
}

/// Runs `tadpole bench` with `args`: prints the machine report, then the table (or JSON lines),
/// and writes the charts if asked.
///
/// A binary embedding the command (the peer is the binary itself, started again):
///
/// ```no_run
/// use clap::Parser;
///
/// #[derive(Parser)]
/// struct Cli {
///     #[command(flatten)]
///     bench: tadpole_benches::suite::Args,
/// }
///
/// // First thing: a re-executed peer plays its role here and exits.
/// tadpole_benches::peer::run_peer_if_requested();
/// let cli = Cli::parse_from(["my-bench", "--quick", "--transports", "tadpole,iceoryx2"]);
/// tadpole_benches::suite::run(&cli.bench)?;
/// # Ok::<(), tadpole_benches::BenchError>(())
/// ```
pub fn run(args: &Args) -> BenchResult<()> {
    if pin::allowed_cpus() < 2 {
        return Err("tadpole bench needs two CPUs (the two sides run on separate cores)".into());
    }
    let began = Instant::now();
    let machine = machine::Machine::inspect(Duration::from_millis(if args.quick { 100 } else { 300 }));
    pin::pin_to_cpu(MAIN_CPU)?;
    let jobs = plan(args);
    if jobs.is_empty() {
        return Err("nothing to run: no transport and scenario selected".into());
    }
    let settings = args.settings();
    // What goes around the table: to stdout with the table, to stderr with --json.
    let info = |text: &str| {
        if args.json {
            eprintln!("{text}");
        } else {
            println!("{text}");
        }
    };
    info(&format!("tadpole bench — {} measurements\n{machine}", jobs.len()));
    if let Some(w) = machine.warning() {
        eprintln!("{w}");
    }
    let start_floor = steady_probe(settings.probe)?;
    info(&format!("floor at start: {start_floor}"));

    let bar = ProgressBar::with_draw_target(Some(jobs.len() as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut run = Run { settings, start_floor, baselines: None, floor2: None, futex: None, relay: None };
    let watchdog = Watchdog::start();
    let mut rows: Vec<Row> = Vec::new();
    for job in jobs {
        bar.set_message(job.label());
        watchdog.begin(job.label(), settings.latency + settings.per_run * (settings.runs as u32 + 1));
        let measured = run.job(job).map_err(|e| format!("{}: {e}", job.label()));
        let measured = match measured {
            Ok(r) => r,
            Err(e) => {
                bar.abandon();
                return Err(e.into());
            }
        };
        if args.json {
            bar.suspend(|| -> BenchResult<()> {
                let mut out = std::io::stdout().lock();
                for r in &measured {
                    writeln!(out, "{}", r.json())?;
                }
                out.flush()?;
                Ok(())
            })?;
        }
        rows.extend(measured);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(pair) = run.relay.take() {
        pair.stop()?;
    }
    let end_floor = steady_probe(settings.probe)?;
    let drift = (end_floor.p50 - start_floor.p50).abs() / start_floor.p50;

    if !args.json {
        println!("\n{}", report::table_header());
        let mut last = None;
        for r in &rows {
            if last.is_some_and(|l| l != r.scenario) {
                println!();
            }
            last = Some(r.scenario);
            println!("{}", r.table_line());
        }
        println!();
        println!("{}", legend());
    }
    info(&format!("floor at end:   {end_floor}"));
    if drift > DRIFT_LIMIT {
        let flag = format!(
            "FLAGGED: the floor moved {:.0}% between start and end (limit {:.0}%): the host moved the CPUs or something else ran; rerun before trusting ratios.",
            drift * 100.0,
            DRIFT_LIMIT * 100.0
        );
        info(&flag);
    } else {
        info(&format!("floor drift start→end {:.0}% (limit {:.0}%): not flagged.", drift * 100.0, DRIFT_LIMIT * 100.0));
    }
    if rows.iter().any(|r| r.floor_moved) {
        info(&format!(
            "⚠ rows: the floor probed before them differs from the start floor by more than {:.0}%.",
            DRIFT_LIMIT * 100.0
        ));
    }
    if let Some(dir) = &args.plot {
        let files = plot::write(dir, &rows)?;
        info(&format!("charts: {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")));
    }
    info(&format!("run time {:.1} s", began.elapsed().as_secs_f64()));
    Ok(())
}

fn legend() -> String {
    let mut text = String::from(
        "How to read it: latency is one-way = round trip / 2 of a ping-pong with one message in flight; every round \
         trip is recorded (one clock read each, warm-up discarded, nothing dropped), and the next ping waits for the \
         previous echo, so there is no schedule to fall behind: no coordinated omission. Latency ratio = p50 / the \
         floor probe taken just before the row (tadpole-waitset-block: / the floor-futex p50 of the same size, \
         both timed per round trip after 200 µs idle so the receiver sleeps). Throughput: median of timed runs, counted when the receiving process \
         has checked every sequence number; ratio = bytes/s / the two-thread hardware handoff at that size \
         (ratio_memcpy in --json: / single-thread memcpy).\n\nTransports:\n",
    );
    for k in Kind::ALL {
        text.push_str(&format!("  {:<21} {}\n", k.name(), k.about()));
    }
    text.push_str(&format!(
        "  {ARROW_RECV:<17} one validated BatchReceiver::try_recv of a 1 k-row and a 1 M-row batch (id, price, symbol), one process; ratio = / the 1 k-row receive\n  {ARROW_RECV_TRUSTED:<17} the same, trusted receiver (no array-data validation): caches flushed, then the receive code warmed by a 1-row receive on another ring, before each receive\n"
    ));
    text.push_str(&format!(
        "  {:<17} single-thread copy of each size into a ring-sized buffer\n  {:<17} two threads (CPU {MAIN_CPU} → CPU {PEER_CPU}) copying blocks in and out of a slot ring with two counters: the ceiling for any ring\n",
        "memcpy", "handoff"
    ));
    text
}
