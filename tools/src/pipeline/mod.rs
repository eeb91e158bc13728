//! The trading pipeline demo: five agent processes joined by shared-memory rings. Market data
//! enters as Arrow record batches; signals, risk decisions and orders are verified FlatBuffers
//! envelopes carrying the tick's id as their `correlation_id` from tick to fill.
//!
//! ```text
//!  feed (this process) --Arrow ticks--> market-analysis --TradingSignalGenerated--> risk
//!        ^                                                                            |
//!        |                                          ExecutionOrderPlaced / refusal    v
//!        +---- ExecutionOrderFilled / refusal ---- execution <------------------ personality
//!
//!  every agent --Heartbeat--> breaker --BreakerAgentTriggered / BreakerSystemEmergency-->
//!                                       risk, execution, and this process (for the report)
//! ```
//!
//! Each agent stamps the monotonic clock into the envelope's metadata (`t.1.signal`, ...) as it
//! sends, so this process measures every hop from the fill that comes back. In the default mode
//! one tick is in flight at a time; `--rate N` sends ticks open-loop on a schedule and measures
//! from each tick's intended send time, so a stall delays the figures of every tick behind it
//! (coordinated omission accounted for).

mod agents;
mod breaker;
pub mod config;
mod crossing;
mod feed;
mod metrics;
mod python;
mod report;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ipc_core::{PayloadAlign, RingBuilder, Segment, WaitStrategy};
use schemas::channel::{BatchSender, EnvelopeReceiver, EnvelopeRecvError};
use schemas::envelope::{Envelope, Event};
use serde::{Deserialize, Serialize};

use crate::Wait;
pub use config::Config;
use report::{Outcome, Recorder};

/// The agents in the trading path, in pipeline order; each reads the ring named after itself.
pub const AGENTS: [&str; 4] = ["market-analysis", "risk", "personality", "execution"];
/// The agent that hears every other agent's heartbeats.
pub const BREAKER: &str = "breaker";
/// Agents that have a Python implementation.
pub const PYTHON_AGENTS: [&str; 1] = ["personality"];
/// The ring execution writes outcomes into, read by this process.
const OUTCOMES: &str = "outcomes";
/// The ring the tick feed writes Arrow batches into.
const TICKS: &str = "ticks";
/// Breaker events go to these (the last is this process, for the report).
const BREAKER_LISTENERS: [&str; 3] = ["risk", "execution", "main"];

/// Metadata keys of the hop stamps (monotonic ns), in pipeline order.
pub const STAMPS: [&str; 5] = ["t.0.tick", "t.1.signal", "t.2.risk", "t.3.personality", "t.4.execution"];

const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));
/// Longest the end of a run waits with nothing coming back before it calls the shutdown unclean.
const SHUTDOWN: Duration = Duration::from_secs(10);

fn ring_name(run: &str, ring: &str) -> String {
    format!("{run}-{ring}")
}

fn heartbeat_ring(run: &str, agent: &str) -> String {
    ring_name(run, &format!("hb-{agent}"))
}

fn breaker_ring(run: &str, listener: &str) -> String {
    ring_name(run, &format!("breaker-{listener}"))
}

/// With `--cross-host`: the ring relay A drains towards agent `next`'s ring on host B.
fn relay_ring(run: &str, next: &str) -> String {
    ring_name(run, &format!("relay-{next}"))
}

/// The ring agent `role` sends into, for agent (or the collector's ring) `next`.
fn outbox(run: &str, next: &str, settings: &AgentSettings) -> String {
    if settings.relay_out { relay_ring(run, next) } else { ring_name(run, next) }
}

/// CLOCK_MONOTONIC in ns: the same clock in every process on the host (Python's
/// `time.monotonic_ns()` too), so stamps from different agents subtract.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The hop stamps an envelope carries (0 where absent or unreadable).
pub fn stamps(envelope: &Envelope<'_>) -> [u64; 5] {
    let mut out = [0; 5];
    for kv in envelope.metadata().into_iter().flatten() {
        if let Some(i) = STAMPS.iter().position(|k| *k == kv.key()) {
            out[i] = kv.value().and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    out
}

/// What the agent processes are told (as JSON on their command line).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentSettings {
    pub heartbeat_interval_ms: u64,
    pub risk: config::RiskConfig,
    pub breaker: config::BreakerConfig,
    /// Sleep this long before handling each message (the SLA alert test's stalled agent).
    pub stall_ms: u64,
    /// Serve /metrics and /health on 127.0.0.1 at this port.
    pub metrics_port: Option<u16>,
    /// `--cross-host`: send into relay A's ring instead of the next agent's.
    pub relay_out: bool,
    /// Testing: commit this many records that are no envelope into the outbox, once (the
    /// misbehaving-agent test).
    #[serde(default)]
    pub corrupt_records: u64,
}

/// `tadpole demo`'s options; each given one overrides the configuration file's value.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// A TOML file of rates, symbols, agents and thresholds (see examples/pipeline.toml);
    /// without it the embedded defaults apply.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Ticks to time end to end (after warm-up; one in flight at a time), or with --rate the
    /// ticks to send [default: 10000, or rate × duration with --rate]
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    signals: Option<u64>,
    /// Open-loop load: send this many ticks per second on a fixed schedule, latency measured
    /// from each tick's intended send time (coordinated omission accounted for).
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    rate: Option<u64>,
    /// With --rate: how long to send ticks, in seconds [default: 5]
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Symbols the tick generator ticks, comma-separated [default: BTC-USD,ETH-USD,SOL-USD]
    #[arg(long, value_delimiter = ',')]
    symbols: Option<Vec<String>>,
    /// How every agent waits for its next message. With six processes on two cores, spinning
    /// agents starve each other: `yield` (the default) or `block` suit small machines.
    #[arg(long, value_enum)]
    wait: Option<Wait>,
    /// Alert if the end-to-end p99 exceeds this many microseconds (sla.end_to_end_p99_ms).
    #[arg(long, value_name = "US")]
    alert_p99_us: Option<u64>,
    /// Run this agent as a Python process on the `tadpole` bindings instead (`personality`;
    /// needs `pip install ./python flatbuffers`, Python from `$TADPOLE_PYTHON` or `python3`).
    #[arg(long, value_name = "AGENT")]
    python: Vec<String>,
    /// Serve /metrics (Prometheus text) and /health on 127.0.0.1 from every process: this one
    /// (the collector: every hop, SLA alerts) on PORT, then market analysis, risk, personality,
    /// execution and the breaker on the ports after it (a Python agent too, with
    /// `prometheus_client` installed). Each also serves the `tadpole_ring_*` series (depth,
    /// messages, bytes, full-ring waits, dead letters, sides) of the rings it uses.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..=65_000))]
    metrics_port_base: Option<u16>,
    /// Write an SVG and a PNG latency histogram per hop into this directory.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
    /// One hop (cross_host.sender's output, risk -> personality by default) crosses two hosts:
    /// the sender's ring on host A -> relay A -> ZeroMQ + CURVE (keys made for the run) -> relay
    /// B -> the next agent's ring on host B. The hosts are two network namespaces made for the
    /// run and joined by a veth pair (as root), else loopback; the agents up to the sender run in
    /// the first, the rest in the second (their --metrics-port-base endpoints too: reach them
    /// with `ip netns exec`). The report shows the hop on its own.
    #[arg(long)]
    cross_host: bool,
    /// With --cross-host: the relays on loopback even where network namespaces could be made.
    #[arg(long, requires = "cross_host")]
    loopback: bool,
    /// Testing: make this agent sleep before handling each message.
    #[arg(long, hide = true, requires = "stall_ms")]
    stall_agent: Option<String>,
    /// Testing: how long the stalled agent sleeps per message, in ms.
    #[arg(long, hide = true)]
    stall_ms: Option<u64>,
    /// Testing: this agent (risk or personality) commits a few records that are no envelope
    /// into its next agent's ring, once, as a buggy agent would.
    #[arg(long, hide = true)]
    corrupt_agent: Option<String>,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let n: u64 =
        s.trim_end_matches("/s").parse().map_err(|e| format!("{s:?} is not a rate in ticks per second: {e}"))?;
    if n == 0 { Err("the rate must be at least 1 tick per second".into()) } else { Ok(n) }
}

impl DemoArgs {
    /// The configuration file (or the defaults) with the command line's overrides applied.
    fn config(&self) -> Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(rate) = self.rate {
            // --rate sends rate × duration ticks, unless --signals says how many.
            c.rate = rate;
            c.signals = 0;
        }
        if let Some(n) = self.signals {
            c.signals = n;
        }
        if let Some(d) = self.duration {
            c.duration_secs = d;
        }
        if let Some(s) = &self.symbols {
            c.market.symbols.clone_from(s);
        }
        if let Some(w) = self.wait {
            c.wait = w.name().to_owned();
        }
        if let Some(us) = self.alert_p99_us {
            c.sla.end_to_end_p99_ms = Some(us as f64 / 1000.0);
        }
        if !self.python.is_empty() {
            c.python.clone_from(&self.python);
        }
        c.validate().map_err(|(field, reason)| anyhow!("{field}: {reason}"))?;
        if let Some(agent) = &self.corrupt_agent {
            if !["risk", "personality"].contains(&agent.as_str()) || c.python.contains(agent) {
                bail!("--corrupt-agent: {agent:?} is not risk or personality (in Rust)");
            }
        }
        if let Some(agent) = &self.stall_agent {
            if !AGENTS.contains(&agent.as_str()) {
                bail!("--stall-agent: {agent:?} is not one of {}", AGENTS.join(", "));
            }
        }
        Ok(c)
    }
}

fn wait_of(name: &str) -> Wait {
    match name {
        "spin" => Wait::Spin,
        "block" => Wait::Block,
        _ => Wait::Yield,
    }
}

/// Kills and reaps agent processes when the demo ends early.
struct Agents(Vec<(String, Child)>);

impl Drop for Agents {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Removes a scratch directory when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `tadpole demo`: runs the pipeline and prints its report.
pub fn demo(args: &DemoArgs) -> Result<()> {
    init_logs();
    let config = args.config()?;
    // Ctrl-C ends the run early with its report; the agents (in the same process group) ignore
    // it and leave as their upstream closes.
    crate::exit::stop_on_interrupt()?;
    let faults = TestFaults { stall: args.stall_agent.clone().zip(args.stall_ms), corrupt: args.corrupt_agent.clone() };
    let cross_host = args.cross_host.then_some(crossing::CrossHost { loopback: args.loopback });
    let report = run(&config, &faults, args.metrics_port_base, cross_host.as_ref())?;
    report.print(&config)?;
    if let Some(dir) = &args.plot {
        let files = report.plot(dir)?;
        println!("  wrote {} charts into {}", files.len(), dir.display());
    }
    if let Some(reason) = &report.halted {
        bail!("trading halted by the circuit breaker: {reason}");
    }
    Ok(())
}

/// JSON lines on stderr (`RUST_LOG` sets the level; warnings by default, so a quiet run prints
/// only its report).
pub fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Faults the tests ask of the agents (hidden options of `tadpole demo`).
#[derive(Default)]
pub struct TestFaults {
    /// This agent sleeps this many ms before handling each message.
    pub stall: Option<(String, u64)>,
    /// This agent commits [`CORRUPT_RECORDS`] records that are no envelope into its outbox.
    pub corrupt: Option<String>,
}

/// How many records a `--corrupt-agent` commits.
pub const CORRUPT_RECORDS: u64 = 3;

/// The run's rings: those this process reads or writes, and all of them for the report.
struct Rings {
    ticks: Segment,
    outcomes: Segment,
    /// The breaker's notices to this process.
    notices: Segment,
    all: Vec<(String, Segment)>,
}

/// Runs the whole pipeline: creates the rings (and with `cross_host` the two hosts and their
/// relays), starts the agents as processes (those named in `config.python` as Python
/// processes) and plays the tick feed and the fill collector here.
pub fn run(
    config: &Config,
    faults: &TestFaults,
    metrics_port: Option<u16>,
    cross_host: Option<&crossing::CrossHost>,
) -> Result<report::Report> {
    let run = format!("pipeline-{}", std::process::id());
    let ring_bytes = config.agents.ring_bytes;
    let mut all = Vec::new();
    let mut create = |name: String, align: PayloadAlign| -> Result<Segment> {
        let seg = RingBuilder::new(ring_bytes)
            .payload_align(align)
            .create_named(&name)
            .with_context(|| format!("creating ring {name}"))?;
        all.push((name, seg.clone()));
        Ok(seg)
    };
    let ticks = create(ring_name(&run, TICKS), PayloadAlign::SixtyFour)?;
    for agent in &AGENTS[1..] {
        create(ring_name(&run, agent), PayloadAlign::Eight)?;
    }
    let outcomes = create(ring_name(&run, OUTCOMES), PayloadAlign::Eight)?;
    for agent in AGENTS {
        create(heartbeat_ring(&run, agent), PayloadAlign::Eight)?;
    }
    let mut listeners = Vec::new();
    for l in BREAKER_LISTENERS {
        listeners.push(create(breaker_ring(&run, l), PayloadAlign::Eight)?);
    }
    // Declared before the agents start (in `drive`), so it goes after they have: it deletes
    // the namespaces they run in.
    let mut crossing = match cross_host {
        Some(how) => {
            let sender = config.cross_host.sender.as_str();
            let next = AGENTS.iter().skip_while(|a| **a != sender).nth(1).copied().unwrap_or(OUTCOMES);
            let (from, to) = (relay_ring(&run, next), ring_name(&run, next));
            let outbox = create(from.clone(), PayloadAlign::Eight)?;
            Some(crossing::Crossing::start(how, sender, outbox, &from, &to)?)
        }
        None => None,
    };
    let rings = Rings { ticks, outcomes, notices: listeners.swap_remove(2), all };
    match drive(config, &run, &rings, crossing.as_mut(), faults, metrics_port) {
        Ok(mut report) => {
            report.crossing = crossing.as_ref().map(crossing::Crossing::report);
            Ok(report)
        }
        Err(e) => match crossing.as_mut().and_then(crossing::Crossing::diagnosis) {
            Some(why) => Err(e.context(why)),
            None => Err(e),
        },
    }
}

/// Starts the agents, plays the feed and collects the outcomes until the pipeline has drained
/// (or the breaker halted it).
fn drive(
    config: &Config,
    run: &str,
    rings: &Rings,
    mut crossing: Option<&mut crossing::Crossing>,
    faults: &TestFaults,
    metrics_port: Option<u16>,
) -> Result<report::Report> {
    let wait = wait_of(&config.wait);
    let mut agents = Agents(Vec::new());
    let scratch = Scratch(std::env::temp_dir().join(format!("tadpole-demo-{}", std::process::id())));
    let collector = metrics::Metrics::new("collector", &report::HOPS.map(|h| h.0));
    let _endpoint = metrics_port.map(|port| metrics::serve(port, &collector)).transpose()?;
    let exe = std::env::current_exe()?;
    for (i, agent) in AGENTS.iter().chain([&BREAKER]).enumerate() {
        let settings = AgentSettings {
            metrics_port: metrics_port.map(|p| p + 1 + i as u16),
            heartbeat_interval_ms: config.agents.heartbeat_interval_ms,
            risk: config.risk.clone(),
            breaker: config.breaker.clone(),
            stall_ms: faults.stall.as_ref().filter(|(a, _)| a == agent).map_or(0, |(_, ms)| *ms),
            corrupt_records: if faults.corrupt.as_deref() == Some(*agent) { CORRUPT_RECORDS } else { 0 },
            relay_out: crossing.as_ref().is_some_and(|c| c.relays_out(agent)),
        };
        let namespace = crossing.as_ref().and_then(|c| c.namespace_of(agent));
        let child = if config.python.iter().any(|p| p == agent) {
            std::fs::create_dir_all(&scratch.0)?;
            python::spawn(agent, run, &settings, &scratch.0, namespace)?
        } else {
            let mut args = crate::hosts::os(&["agent", "--role", agent, "--run", run, "--wait", wait.name()]);
            args.extend(["--settings".into(), serde_json::to_string(&settings)?.into()]);
            let (program, args) = crate::hosts::in_namespace(namespace, &exe, args);
            Command::new(program).args(args).spawn().with_context(|| format!("starting the {agent} agent"))?
        };
        agents.0.push(((*agent).to_owned(), child));
    }

    for segment in [&rings.ticks, &rings.outcomes, &rings.notices] {
        collector.watch_ring(segment.name().context("the demo's rings are named")?);
    }
    let mut producer = rings.ticks.producer()?;
    producer.set_wait_strategy(wait.strategy());
    let mut feed = feed::Feed::new(BatchSender::new(producer)?, &config.market);
    let mut consumer = rings.outcomes.consumer()?;
    consumer.set_wait_strategy(wait.strategy());
    let mut inbox = EnvelopeReceiver::new(consumer);
    let mut breaker_events = EnvelopeReceiver::new(rings.notices.consumer()?);

    let ticks_timed = config.ticks();
    let warmup = (ticks_timed / 10).clamp(10, 2_000);
    let mut rec = Recorder::new(config, warmup, ticks_timed, progress_bar(warmup + ticks_timed), collector.clone());
    // Warm-up, one in flight: also waits until every agent is up.
    for seq in 0..warmup {
        if !round_trip(&mut feed, &mut inbox, &mut breaker_events, &mut rec, seq, true)? {
            break;
        }
    }
    rec.start_timing();
    if config.rate == 0 {
        for seq in warmup..warmup + ticks_timed {
            if crate::exit::interrupted()
                || !round_trip(&mut feed, &mut inbox, &mut breaker_events, &mut rec, seq, false)?
            {
                break;
            }
        }
    } else if rec.halted.is_none() {
        open_loop(config, &mut feed, &mut inbox, &mut breaker_events, &mut rec, warmup, ticks_timed)?;
    }
    rec.finish_timing();
    let halted = rec.halted.is_some();
    drop(feed);
    if !halted {
        // The agents drain and leave in turn (the relays once everything crossed); this process
        // sees the outcomes ring close last.
        let mut last = Instant::now();
        loop {
            if let Some(c) = crossing.as_deref_mut() {
                c.stop_when_drained();
            }
            match inbox.recv_timeout(Some(Duration::from_millis(50))) {
                Err(EnvelopeRecvError::Disconnected) => break,
                Ok(msg) => {
                    rec.outcome(&msg, now_ns());
                    last = Instant::now();
                }
                Err(EnvelopeRecvError::Timeout) if last.elapsed() < SHUTDOWN => {}
                Err(e) => bail!("the pipeline did not shut down cleanly: {e}"),
            }
        }
        read_breaker(&mut breaker_events, &mut rec);
        for (name, child) in &mut agents.0 {
            let status = child.wait()?;
            if !status.success() {
                bail!("the {name} agent exited with {status}");
            }
        }
    }
    if let Some(c) = crossing {
        c.finish();
    }
    read_breaker(&mut breaker_events, &mut rec);
    let rings =
        rings.all.iter().map(|(n, s)| (n.trim_start_matches(&format!("{run}-")).to_owned(), s.status())).collect();
    Ok(rec.into_report(rings))
}

fn progress_bar(total: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr_with_hz(10));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} ticks  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Sends tick `seq` and waits for its outcome. `false` once the breaker halted trading.
fn round_trip(
    feed: &mut feed::Feed,
    inbox: &mut EnvelopeReceiver,
    breaker_events: &mut EnvelopeReceiver,
    rec: &mut Recorder,
    seq: u64,
    warming: bool,
) -> Result<bool> {
    if rec.halted.is_some() {
        return Ok(false);
    }
    let intended = now_ns();
    feed.send(rec.nonce, seq, 1, |_| intended, TIMEOUT).with_context(|| format!("sending tick {seq}"))?;
    rec.sent(1);
    // A Python agent starting up can take a while to answer the first tick.
    let patience = Duration::from_secs(if warming { 60 } else { 30 });
    let asked = Instant::now();
    loop {
        drain_breaker(breaker_events, rec);
        if rec.halted.is_some() {
            return Ok(false);
        }
        match inbox.recv_timeout(Some(Duration::from_millis(100))) {
            Ok(msg) => {
                let got = rec.outcome(&msg, now_ns());
                if got == Some(seq) {
                    return Ok(true);
                }
            }
            Err(EnvelopeRecvError::Timeout) if asked.elapsed() < patience => {}
            Err(EnvelopeRecvError::Disconnected) if halted_meanwhile(breaker_events, rec) => return Ok(false),
            Err(e) => bail!("waiting for tick {seq}'s outcome: {e}"),
        }
    }
}

/// Sends `count` ticks at `config.rate` per second from a fixed schedule, collecting outcomes
/// meanwhile, then waits for the stragglers.
fn open_loop(
    config: &Config,
    feed: &mut feed::Feed,
    inbox: &mut EnvelopeReceiver,
    breaker_events: &mut EnvelopeReceiver,
    rec: &mut Recorder,
    first: u64,
    count: u64,
) -> Result<()> {
    let interval = 1e9 / config.rate as f64;
    let t0 = now_ns();
    let intended = |seq: u64| t0 + ((seq - first) as f64 * interval) as u64;
    let mut next = first;
    let end = first + count;
    let max_rows = config.market.max_batch_rows as u64;
    while rec.halted.is_none() && !crate::exit::interrupted() {
        let now = now_ns();
        // Every tick whose time has come goes now, however late: its latency counts from its
        // intended time.
        let due = (((now - t0) as f64 / interval) as u64 + 1 + first).min(end);
        while next < due {
            let rows = (due - next).min(max_rows);
            match feed.try_send(rec.nonce, next, rows, intended) {
                Ok(true) => {
                    rec.sent(rows);
                    next += rows;
                }
                // Full: market analysis is behind; the ticks wait for room and count as late.
                Ok(false) => break,
                Err(e) => return Err(anyhow!(e).context(format!("sending tick {next}"))),
            }
        }
        drain_breaker(breaker_events, rec);
        while let Ok(msg) = inbox.try_recv() {
            rec.outcome(&msg, now_ns());
        }
        if next == end {
            break;
        }
        let until_next = intended(next).saturating_sub(now_ns()).min(1_000_000);
        match inbox.recv_timeout(Some(Duration::from_nanos(until_next))) {
            Ok(msg) => {
                rec.outcome(&msg, now_ns());
            }
            Err(EnvelopeRecvError::Timeout) => {}
            Err(EnvelopeRecvError::Disconnected) if halted_meanwhile(breaker_events, rec) => break,
            Err(e) => bail!("collecting outcomes: {e}"),
        }
        rec.tick_progress();
    }
    // Stragglers: until every tick came back, or nothing came for a while.
    let mut last = Instant::now();
    while rec.outstanding() > 0 && last.elapsed() < Duration::from_secs(5) {
        drain_breaker(breaker_events, rec);
        if rec.halted.is_some() && last.elapsed() > Duration::from_millis(500) {
            break;
        }
        match inbox.recv_timeout(Some(Duration::from_millis(50))) {
            Ok(msg) => {
                rec.outcome(&msg, now_ns());
                last = Instant::now();
            }
            Err(EnvelopeRecvError::Timeout) => {}
            Err(EnvelopeRecvError::Disconnected) if halted_meanwhile(breaker_events, rec) => break,
            Err(e) => bail!("collecting outcomes: {e}"),
        }
    }
    Ok(())
}

/// The outcomes ring closed early: an agent died and the ones after it left. Whether the
/// breaker says so (it hears of the death within its poll interval).
fn halted_meanwhile(breaker_events: &mut EnvelopeReceiver, rec: &mut Recorder) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while rec.halted.is_none() && Instant::now() < deadline {
        drain_breaker(breaker_events, rec);
        std::thread::sleep(Duration::from_millis(5));
    }
    rec.halted.is_some()
}

/// Takes in the breaker's notices while the run goes on: the breaker gone is a halt (nobody
/// watches the agents any more; risk and execution fail closed on it too).
fn drain_breaker(breaker_events: &mut EnvelopeReceiver, rec: &mut Recorder) {
    if read_breaker(breaker_events, rec) {
        rec.breaker_gone();
    }
}

/// Takes in the breaker's notices; `true` if the breaker is gone.
fn read_breaker(breaker_events: &mut EnvelopeReceiver, rec: &mut Recorder) -> bool {
    loop {
        match breaker_events.try_recv() {
            Ok(msg) => {
                if let Ok(event) = msg.event() {
                    rec.breaker_event(&event);
                }
            }
            Err(EnvelopeRecvError::Rejected { .. }) => {}
            Err(EnvelopeRecvError::Disconnected) => return true,
            Err(_) => return false,
        }
    }
}

impl From<&Event<'_>> for Outcome {
    fn from(event: &Event<'_>) -> Outcome {
        match event {
            Event::ExecutionOrderFilled(_) => Outcome::Filled,
            Event::BreakerAgentTriggered(b) if b.breaker() == Some(agents::CIRCUIT_OPEN) => {
                Outcome::RefusedOpen(b.agent_id().unwrap_or_default().to_owned())
            }
            Event::BreakerAgentTriggered(_) => Outcome::RefusedByRisk,
            other => Outcome::Unexpected(format!("{:?}", other.message_type())),
        }
    }
}

/// One agent process (the hidden `tadpole agent` command).
pub fn agent(role: &str, run: &str, wait: WaitStrategy, settings: &str) -> Result<()> {
    init_logs();
    // A Ctrl-C meant for the demo reaches its agents too: they leave when their upstream closes.
    crate::exit::stop_on_interrupt()?;
    let settings: AgentSettings = serde_json::from_str(settings).context("--settings")?;
    if role == BREAKER {
        return breaker::run(run, &settings);
    }
    if !AGENTS.contains(&role) {
        bail!("unknown agent role {role:?}: use one of {}, {BREAKER}", AGENTS.join(", "));
    }
    agents::run(role, run, wait, &settings)
}
