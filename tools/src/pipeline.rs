//! The trading pipeline demo: four agent processes joined by shared-memory rings, exchanging
//! verified FlatBuffers envelopes, with an end-to-end latency report.
//!
//! ```text
//!  market-analysis --TradingSignalGenerated--> risk --ExecutionOrderPlaced--> personality
//!        ^                                       \--BreakerAgentTriggered-->      |
//!        |                                                                        v
//!        +----------- ExecutionOrderFilled / BreakerAgentTriggered ---------- execution
//! ```
//!
//! Market analysis keeps one signal in flight and times it until its fill (or its rejection)
//! comes back, so the figure is four ring hops plus four agents' work. Every envelope carries the
//! signal's `correlation_id` end to end.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ipc_core::{RingBuilder, Segment, WaitStrategy};
use schemas::channel::{EnvelopeReceiver, EnvelopeRecvError, EnvelopeSender};
use schemas::envelope::{EnvelopeHeader, Event, MessageId};
use schemas::fb;

/// The agents, in pipeline order. Each reads the ring named after itself and writes the next.
pub const AGENTS: [&str; 4] = ["market-analysis", "risk", "personality", "execution"];

/// Orders above this notional (fixed point, 1e8) are refused by the risk agent.
const MAX_NOTIONAL_E8: i128 = 100_000 * 100_000_000;
const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));

fn ring_name(run: &str, agent: &str) -> String {
    format!("{run}-{agent}")
}

/// What market analysis measured.
pub struct PipelineReport {
    pub latency_ns: hdrhistogram::Histogram<u64>,
    pub elapsed: Duration,
    pub filled: u64,
    pub rejected: u64,
    pub dead_letters: u64,
    pub rings: Vec<(String, ipc_core::RingStatus)>,
}

/// Kills and reaps agent processes if the demo fails half-way.
struct Agents(Vec<Child>);

impl Drop for Agents {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// The Python personality agent (`--python personality`), and the generated FlatBuffers
/// Python code it builds envelopes with; written next to each other into a scratch directory.
const PERSONALITY_PY: &str = include_str!("personality.py");
const ENVELOPE_GENERATED_PY: &str = include_str!("../../schemas/tests/python/generated/envelope_generated.py");
/// Agents that have a Python implementation.
pub const PYTHON_AGENTS: [&str; 1] = ["personality"];

/// Starts the Python version of `agent` (only `personality` has one): `python3` (or
/// `$TADPOLE_PYTHON`) with the `tadpole` bindings installed (`pip install ./python`).
fn spawn_python_agent(agent: &str, run: &str, scratch: &std::path::Path) -> Result<Child> {
    if !PYTHON_AGENTS.contains(&agent) {
        bail!("no Python implementation of the {agent} agent (there is one of: {})", PYTHON_AGENTS.join(", "));
    }
    let python = std::env::var("TADPOLE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe = Command::new(&python).args(["-c", "import tadpole, flatbuffers"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => bail!(
            "{python} cannot import the tadpole bindings or flatbuffers ({}): install them with `pip install ./python flatbuffers`",
            String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("")
        ),
        Err(e) => bail!("cannot run {python} ({e}): set TADPOLE_PYTHON to a Python 3.11+ with the bindings installed"),
    }
    std::fs::write(scratch.join("personality.py"), PERSONALITY_PY)?;
    std::fs::write(scratch.join("envelope_generated.py"), ENVELOPE_GENERATED_PY)?;
    let next = AGENTS[(AGENTS.iter().position(|a| *a == agent).unwrap_or(0) + 1) % AGENTS.len()];
    Command::new(&python)
        .arg(scratch.join("personality.py"))
        .args(["--inbox", &ring_name(run, agent), "--outbox", &ring_name(run, next)])
        .spawn()
        .with_context(|| format!("starting the Python {agent} agent"))
}

/// Removes the scratch directory of the Python agents.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the whole pipeline: creates the rings, starts risk, personality and execution as
/// processes (those named in `python` as Python processes), and plays market analysis in this
/// one.
pub fn run(signals: u64, wait: WaitStrategy, wait_name: &str, python: &[String]) -> Result<PipelineReport> {
    for agent in python {
        if !PYTHON_AGENTS.contains(&agent.as_str()) {
            bail!("no Python implementation of the {agent} agent (there is one of: {})", PYTHON_AGENTS.join(", "));
        }
    }
    let run = format!("pipeline-{}", std::process::id());
    let segments = AGENTS
        .iter()
        .map(|agent| RingBuilder::new(1 << 18).create_named(&ring_name(&run, agent)))
        .collect::<Result<Vec<Segment>, _>>()
        .context("creating the pipeline rings")?;
    let mut agents = Agents(Vec::new());
    let scratch = Scratch(std::env::temp_dir().join(format!("tadpole-demo-{}", std::process::id())));
    for agent in &AGENTS[1..] {
        if python.iter().any(|p| p == agent) {
            std::fs::create_dir_all(&scratch.0)?;
            agents.0.push(spawn_python_agent(agent, &run, &scratch.0)?);
            continue;
        }
        let child = Command::new(std::env::current_exe()?)
            .args(["agent", "--role", agent, "--run", &run, "--wait", wait_name])
            .spawn()
            .with_context(|| format!("starting the {agent} agent"))?;
        agents.0.push(child);
    }
    let mut producer = segments[1].producer()?;
    producer.set_wait_strategy(wait);
    let mut to_risk = EnvelopeSender::new(producer);
    let mut consumer = segments[0].consumer()?;
    consumer.set_wait_strategy(wait);
    let mut inbox = EnvelopeReceiver::new(consumer);

    let mut latency = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut filled, mut rejected) = (0u64, 0u64);
    let mut price_e8: i64 = 65_000 * 100_000_000;
    let warmup = (signals / 10).min(2_000);
    let started = Instant::now();
    let mut timed_from = started;
    for i in 0..warmup + signals {
        if i == warmup {
            timed_from = Instant::now();
        }
        // A random walk of the reference price; every 16th signal is sized over the risk limit.
        price_e8 += ((i.wrapping_mul(0x9E37_79B9) >> 7) % 2001) as i64 * 1_000_000 - 1_000_000_000;
        let confidence_e8 = if i % 16 == 15 { 100_000_000 } else { 60_000_000 };
        let header = EnvelopeHeader::new("market-analysis", "risk");
        let sent = Instant::now();
        to_risk.send_timeout(
            &header,
            |fbb| {
                let symbol = fbb.create_string("BTC-USD");
                let strategy = fbb.create_string("mean-reversion");
                fb::TradingSignalGenerated::create(
                    fbb,
                    &fb::TradingSignalGeneratedArgs {
                        signal_id: Some(&header.message_id.to_wire()),
                        symbol: Some(symbol),
                        side: if i % 2 == 0 { fb::Side::Buy } else { fb::Side::Sell },
                        confidence_e8,
                        reference_price_e8: price_e8,
                        strategy: Some(strategy),
                        ..Default::default()
                    },
                )
            },
            TIMEOUT,
        )?;
        let reply = inbox.recv_timeout(TIMEOUT).map_err(|e| anyhow!("waiting for signal {i}'s outcome: {e}"))?;
        let rtt = sent.elapsed();
        let correlation = reply.envelope().correlation_id().map(MessageId::from_wire);
        if correlation != Some(header.message_id) {
            bail!("signal {i}: the outcome carries correlation id {correlation:?}, not {}", header.message_id);
        }
        let outcome = reply.event()?;
        if i >= warmup {
            match outcome {
                Event::ExecutionOrderFilled(_) => filled += 1,
                Event::BreakerAgentTriggered(_) => rejected += 1,
                other => bail!("unexpected outcome {:?}", other.message_type()),
            }
            latency.record(rtt.as_nanos().max(1) as u64)?;
        }
    }
    let elapsed = timed_from.elapsed();
    let dead_letters = inbox.dead_letters();
    drop(to_risk);
    // The agents drain and leave in turn; market analysis sees its inbox close last.
    match inbox.recv_timeout(TIMEOUT) {
        Err(EnvelopeRecvError::Disconnected) => {}
        other => bail!("pipeline did not shut down cleanly: {:?}", other.map(|m| m.message_type())),
    }
    for child in &mut agents.0 {
        let status = child.wait()?;
        if !status.success() {
            bail!("an agent exited with {status}");
        }
    }
    let rings = AGENTS.iter().zip(&segments).map(|(a, s)| (format!("into {a}"), s.status())).collect();
    Ok(PipelineReport { latency_ns: latency, elapsed, filled, rejected, dead_letters, rings })
}

/// One agent process: risk, personality or execution.
pub fn agent(role: &str, run: &str, wait: WaitStrategy) -> Result<()> {
    let position = AGENTS
        .iter()
        .position(|a| *a == role)
        .filter(|&p| p > 0)
        .ok_or_else(|| anyhow!("unknown agent role {role:?}: use one of {}", AGENTS[1..].join(", ")))?;
    let next = AGENTS[(position + 1) % AGENTS.len()];
    let mut consumer = Segment::open(&ring_name(run, role))?.consumer()?;
    consumer.set_wait_strategy(wait);
    let mut inbox = EnvelopeReceiver::new(consumer);
    let mut producer = Segment::open(&ring_name(run, next))?.producer()?;
    producer.set_wait_strategy(wait);
    let mut out = EnvelopeSender::new(producer);
    loop {
        let msg = match inbox.recv_timeout(None) {
            Ok(msg) => msg,
            Err(EnvelopeRecvError::Disconnected) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        // Every hop keeps the signal's correlation id.
        let mut header = EnvelopeHeader::new(role, next);
        header.correlation_id = msg.envelope().correlation_id().map_or(MessageId::NIL, MessageId::from_wire);
        match (role, msg.event()?) {
            ("risk", Event::TradingSignalGenerated(signal)) => {
                let quantity_e8: i64 = 2 * 100_000_000 * signal.confidence_e8() / 100_000_000;
                let notional = i128::from(quantity_e8) * i128::from(signal.reference_price_e8()) / 100_000_000;
                if notional > MAX_NOTIONAL_E8 {
                    out.send_timeout(
                        &header,
                        |fbb| {
                            let agent_id = fbb.create_string("risk");
                            let breaker = fbb.create_string("max_notional");
                            let reason = fbb.create_string("order notional above the per-order limit");
                            fb::BreakerAgentTriggered::create(
                                fbb,
                                &fb::BreakerAgentTriggeredArgs {
                                    agent_id: Some(agent_id),
                                    breaker: Some(breaker),
                                    severity: fb::Severity::Warning,
                                    threshold_e8: (MAX_NOTIONAL_E8 / 100_000_000) as i64,
                                    observed_e8: (notional / 100_000_000) as i64,
                                    reason: Some(reason),
                                    ..Default::default()
                                },
                            )
                        },
                        TIMEOUT,
                    )?;
                } else {
                    let symbol = signal.symbol().unwrap_or_default();
                    out.send_timeout(
                        &header,
                        |fbb| {
                            let symbol = fbb.create_string(symbol);
                            let account = fbb.create_string("acct-1");
                            let venue = fbb.create_string("sim");
                            fb::ExecutionOrderPlaced::create(
                                fbb,
                                &fb::ExecutionOrderPlacedArgs {
                                    order_id: Some(&MessageId::new_v4().to_wire()),
                                    signal_id: signal.signal_id(),
                                    account_id: Some(account),
                                    symbol: Some(symbol),
                                    side: signal.side(),
                                    order_type: fb::OrderType::Limit,
                                    quantity_e8,
                                    limit_price_e8: signal.reference_price_e8(),
                                    venue: Some(venue),
                                    ..Default::default()
                                },
                            )
                        },
                        TIMEOUT,
                    )?;
                }
            }
            ("personality", Event::ExecutionOrderPlaced(order)) => {
                // A small, deterministic size variance: the agent's "personality".
                let quantity_e8 = order.quantity_e8() - order.quantity_e8() / 100;
                let (symbol, account, venue) = (
                    order.symbol().unwrap_or_default(),
                    order.account_id().unwrap_or_default(),
                    order.venue().unwrap_or_default(),
                );
                out.send_timeout(
                    &header.with_metadata(&[("personality", "cautious")]),
                    |fbb| {
                        let (symbol, account, venue) =
                            (fbb.create_string(symbol), fbb.create_string(account), fbb.create_string(venue));
                        fb::ExecutionOrderPlaced::create(
                            fbb,
                            &fb::ExecutionOrderPlacedArgs {
                                order_id: order.order_id(),
                                signal_id: order.signal_id(),
                                account_id: Some(account),
                                symbol: Some(symbol),
                                side: order.side(),
                                order_type: order.order_type(),
                                quantity_e8,
                                limit_price_e8: order.limit_price_e8(),
                                venue: Some(venue),
                                ..Default::default()
                            },
                        )
                    },
                    TIMEOUT,
                )?;
            }
            ("execution", Event::ExecutionOrderPlaced(order)) => {
                let (symbol, account) = (order.symbol().unwrap_or_default(), order.account_id().unwrap_or_default());
                out.send_timeout(
                    &header,
                    |fbb| {
                        let (symbol, account) = (fbb.create_string(symbol), fbb.create_string(account));
                        let fill_id = fbb.create_string("fill-1");
                        fb::ExecutionOrderFilled::create(
                            fbb,
                            &fb::ExecutionOrderFilledArgs {
                                order_id: order.order_id(),
                                fill_id: Some(fill_id),
                                account_id: Some(account),
                                symbol: Some(symbol),
                                side: order.side(),
                                fill_quantity_e8: order.quantity_e8(),
                                fill_price_e8: order.limit_price_e8(),
                                cumulative_quantity_e8: order.quantity_e8(),
                                filled_at_ns: header.timestamp_ns,
                                ..Default::default()
                            },
                        )
                    },
                    TIMEOUT,
                )?;
            }
            // Rejections travel on to market analysis.
            (_, Event::BreakerAgentTriggered(b)) => {
                let (agent, breaker, reason) =
                    (b.agent_id().unwrap_or_default(), b.breaker().unwrap_or_default(), b.reason().unwrap_or_default());
                out.send_timeout(
                    &header,
                    |fbb| {
                        let (agent_id, breaker, reason) =
                            (fbb.create_string(agent), fbb.create_string(breaker), fbb.create_string(reason));
                        fb::BreakerAgentTriggered::create(
                            fbb,
                            &fb::BreakerAgentTriggeredArgs {
                                agent_id: Some(agent_id),
                                breaker: Some(breaker),
                                severity: b.severity(),
                                threshold_e8: b.threshold_e8(),
                                observed_e8: b.observed_e8(),
                                reason: Some(reason),
                                ..Default::default()
                            },
                        )
                    },
                    TIMEOUT,
                )?;
            }
            (_, other) => bail!("{role} agent got an unexpected {:?}", other.message_type()),
        }
    }
}
