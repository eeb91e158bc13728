//! The trading agents: market analysis (Arrow ticks in, signals out), risk, personality and
//! execution (envelopes in and out). Each one heartbeats to the circuit breaker from its main
//! loop, so an agent that stalls falls silent; risk and execution also hear the breaker, and
//! refuse while it is open.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow_array::{Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use ipc_core::WaitStrategy;
use schemas::channel::{
    BatchReceiver, BatchRecvError, EnvelopeReceiver, EnvelopeRecvError, EnvelopeSendError, EnvelopeSender,
};
use schemas::envelope::{EnvelopeHeader, Event, MessageId};
use schemas::fb;

use super::metrics::{self, Metrics};
use super::{
    AGENTS, AgentSettings, OUTCOMES, STAMPS, TICKS, TIMEOUT, breaker_ring, heartbeat_ring, now_ns, outbox, ring_name,
};

/// `breaker` of the refusal risk and execution send while the circuit breaker is open.
pub const CIRCUIT_OPEN: &str = "circuit_open";

/// Heartbeats from an agent's main loop to the breaker.
pub struct Beat<'a> {
    tx: EnvelopeSender,
    metrics: Arc<Metrics>,
    role: &'a str,
    sequence: u64,
    interval: Duration,
    next: Instant,
    started: Instant,
    /// The agent refused an input record since its last heartbeat: the next one says Degraded.
    refused_input: bool,
}

impl<'a> Beat<'a> {
    pub fn open(role: &'a str, run: &str, interval_ms: u64, metrics: Arc<Metrics>) -> Result<Beat<'a>> {
        let tx = EnvelopeSender::new(metrics.open_ring(&heartbeat_ring(run, role))?.producer()?);
        let now = Instant::now();
        let interval = Duration::from_millis(interval_ms);
        Ok(Beat { tx, metrics, role, sequence: 0, interval, next: now, started: now, refused_input: false })
    }

    /// Notes that the agent refused an input record (not a valid envelope or batch): its next
    /// heartbeat reports it Degraded, so the breaker hears of it.
    pub fn input_refused(&mut self) {
        self.refused_input = true;
    }

    /// Sends a heartbeat if one is due.
    pub fn tick(&mut self) -> Result<()> {
        let now = Instant::now();
        if now < self.next {
            return Ok(());
        }
        self.next = now + self.interval;
        self.sequence += 1;
        let (sequence, interval_ns) = (self.sequence, self.interval.as_nanos() as u64);
        let header = EnvelopeHeader::new(self.role, super::BREAKER);
        let status = if self.refused_input { fb::HealthStatus::Degraded } else { fb::HealthStatus::Healthy };
        let sent = self
            .tx
            .try_send(&header, |fbb| fb::Heartbeat::create(fbb, &fb::HeartbeatArgs { sequence, interval_ns, status }));
        match sent {
            Ok(()) => {
                self.refused_input = false;
                self.metrics.heartbeats.fetch_add(1, Relaxed);
                Ok(())
            }
            // A breaker that is behind misses a beat rather than stalling the agent.
            Err(EnvelopeSendError::Full) => Ok(()),
            Err(e) => Err(e).context("sending a heartbeat"),
        }
    }

    /// How long the agent may wait for work before its next heartbeat is due.
    pub fn until_next(&self) -> Duration {
        self.next.saturating_duration_since(Instant::now()).max(Duration::from_micros(100))
    }

    /// Tells the breaker this agent is leaving (so its ring closing is not a crash).
    pub fn terminate(mut self, outcome: &Result<()>) {
        let header = EnvelopeHeader::new(self.role, super::BREAKER);
        let (reason, detail) = match outcome {
            Ok(()) => (fb::TerminationReason::Completed, String::new()),
            Err(e) => (fb::TerminationReason::Crashed, format!("{e:#}")),
        };
        let uptime_ns = self.started.elapsed().as_nanos() as u64;
        let role = self.role;
        let _ = self.tx.send_timeout(
            &header,
            |fbb| {
                let (agent_id, detail) = (fbb.create_string(role), fbb.create_string(&detail));
                fb::AgentTerminated::create(
                    fbb,
                    &fb::AgentTerminatedArgs {
                        agent_id: Some(agent_id),
                        reason,
                        detail: Some(detail),
                        exit_code: i32::from(outcome.is_err()),
                        uptime_ns,
                    },
                )
            },
            Some(Duration::from_secs(1)),
        );
    }
}

/// What risk and execution know of the circuit breaker.
struct Gate {
    rx: EnvelopeReceiver,
    open_until: Option<Instant>,
    cause: String,
    halted: Option<String>,
}

impl Gate {
    fn open_ring(run: &str, role: &str, metrics: &Metrics) -> Result<Gate> {
        let rx = EnvelopeReceiver::new(metrics.open_ring(&breaker_ring(run, role))?.consumer()?);
        Ok(Gate { rx, open_until: None, cause: String::new(), halted: None })
    }

    /// Takes in what the breaker said since the last look.
    fn poll(&mut self) {
        loop {
            let msg = match self.rx.try_recv() {
                Ok(msg) => msg,
                Err(EnvelopeRecvError::Rejected { .. }) => continue,
                Err(EnvelopeRecvError::Disconnected) => {
                    // Fail closed: nobody watches the agents any more.
                    self.halted.get_or_insert_with(|| "the circuit breaker is gone".to_owned());
                    return;
                }
                Err(_) => return,
            };
            match msg.event() {
                Ok(Event::BreakerAgentTriggered(b)) => {
                    let until = Instant::now() + Duration::from_nanos(b.cooldown_ns());
                    self.open_until = Some(self.open_until.map_or(until, |u| u.max(until)));
                    self.cause = format!(
                        "{} tripped for {}: {}",
                        b.breaker().unwrap_or_default(),
                        b.agent_id().unwrap_or_default(),
                        b.reason().unwrap_or_default()
                    );
                }
                Ok(Event::BreakerSystemEmergency(e)) => {
                    if self.halted.is_none() {
                        tracing::warn!(
                            reason = e.reason().unwrap_or_default(),
                            "trading halted by the circuit breaker"
                        );
                    }
                    self.halted.get_or_insert_with(|| e.reason().unwrap_or_default().to_owned());
                }
                _ => {}
            }
        }
    }

    /// Why orders must not go on now, if they must not.
    fn refusal(&self) -> Option<String> {
        if let Some(h) = &self.halted {
            return Some(format!("trading halted: {h}"));
        }
        self.open_until.filter(|u| Instant::now() < *u).map(|_| self.cause.clone())
    }
}

/// Runs agent `role` until its upstream closes.
pub fn run(role: &str, run: &str, wait: WaitStrategy, settings: &AgentSettings) -> Result<()> {
    let position = AGENTS.iter().position(|a| *a == role).context("not a trading agent")?;
    let metrics = Metrics::new(role, &[super::report::HOPS[position].0]);
    let _endpoint = settings.metrics_port.map(|port| metrics::serve(port, &metrics)).transpose()?;
    let mut beat = Beat::open(role, run, settings.heartbeat_interval_ms, metrics.clone())?;
    let result = work(role, run, wait, settings, &mut beat, &metrics);
    beat.terminate(&result);
    result
}

fn work(
    role: &str,
    run: &str,
    wait: WaitStrategy,
    settings: &AgentSettings,
    beat: &mut Beat<'_>,
    metrics: &Metrics,
) -> Result<()> {
    let hop = &metrics.hops[0].1;
    let position = AGENTS.iter().position(|a| *a == role).context("not a trading agent")?;
    let next = AGENTS.get(position + 1).copied().unwrap_or(OUTCOMES);
    let mut producer = metrics.open_ring(&outbox(run, next, settings))?.producer()?;
    producer.set_wait_strategy(wait);
    let mut out = EnvelopeSender::new(producer);
    let stall = Duration::from_millis(settings.stall_ms);
    if role == "market-analysis" {
        let mut consumer = metrics.open_ring(&ring_name(run, TICKS))?.consumer()?;
        consumer.set_wait_strategy(wait);
        let mut rx = BatchReceiver::new(consumer)?;
        loop {
            beat.tick()?;
            match rx.recv_timeout(Some(beat.until_next())) {
                Ok(batch) => signals(&batch, &mut out, beat, stall, metrics)?,
                Err(BatchRecvError::Timeout) => {}
                Err(BatchRecvError::Disconnected) => return Ok(()),
                Err(e @ BatchRecvError::Rejected { .. }) => {
                    tracing::warn!(error = %e, "tick batch refused");
                    beat.input_refused();
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut consumer = metrics.open_ring(&ring_name(run, role))?.consumer()?;
    consumer.set_wait_strategy(wait);
    let mut inbox = EnvelopeReceiver::new(consumer);
    let mut gate = if matches!(role, "risk" | "execution") { Some(Gate::open_ring(run, role, metrics)?) } else { None };
    loop {
        beat.tick()?;
        if let Some(g) = &mut gate {
            g.poll();
        }
        let msg = match inbox.recv_timeout(Some(beat.until_next())) {
            Ok(msg) => msg,
            Err(EnvelopeRecvError::Timeout) => continue,
            Err(EnvelopeRecvError::Disconnected) => return Ok(()),
            Err(e @ EnvelopeRecvError::Rejected { .. }) => {
                tracing::warn!(agent = role, error = %e, "envelope refused");
                beat.input_refused();
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if !stall.is_zero() {
            std::thread::sleep(stall);
            beat.tick()?;
        }
        if let Some(g) = &mut gate {
            g.poll();
        }
        let refusal = gate.as_ref().and_then(Gate::refusal);
        if let Some(g) = &gate {
            let state = if g.halted.is_some() { 2 } else { u64::from(refusal.is_some()) };
            metrics.breaker_state.store(state, Relaxed);
        }
        // Every hop keeps the tick's correlation id and adds its stamp to the earlier ones.
        let envelope = msg.envelope();
        let mut header = EnvelopeHeader::new(role, next);
        header.correlation_id = envelope.correlation_id().map_or(MessageId::NIL, MessageId::from_wire);
        let mut stamps = super::stamps(&envelope);
        stamps[position + 1] = now_ns();
        if stamps[position] != 0 {
            hop.record(stamps[position + 1].saturating_sub(stamps[position]));
        }
        let handled = metrics.handled.fetch_add(1, Relaxed) + 1;
        if settings.corrupt_records > 0 && handled == CORRUPT_AFTER {
            out = corrupt(out, settings.corrupt_records)?;
        }
        let values: Vec<(usize, String)> =
            stamps.iter().enumerate().filter(|(_, t)| **t != 0).map(|(i, t)| (i, t.to_string())).collect();
        let mut metadata: Vec<(&str, &str)> = values.iter().map(|(i, v)| (STAMPS[*i], v.as_str())).collect();
        if role == "personality" {
            metadata.push(("personality", "cautious"));
        }
        let header = header.with_metadata(&metadata);
        let event = msg.event()?;
        tracing::debug!(
            event = "handled",
            agent = role,
            message_type = ?event.message_type(),
            correlation_id = %header.correlation_id,
            refusing = refusal.is_some(),
        );
        if refusal.is_some() || matches!(event, Event::BreakerAgentTriggered(_)) {
            metrics.refused.fetch_add(u64::from(role != "personality"), Relaxed);
        }
        match (role, event) {
            ("risk", Event::TradingSignalGenerated(signal)) => {
                let price = i128::from(signal.reference_price_e8().max(1));
                let notional_e8 =
                    (settings.risk.order_notional * 1e8) as i128 * i128::from(signal.confidence_e8()) / 100_000_000;
                let max_e8 = (settings.risk.max_notional * 1e8) as i128;
                if let Some(cause) = refusal {
                    refuse(&mut out, &header, role, CIRCUIT_OPEN, 0, 0, &cause)?;
                } else if notional_e8 > max_e8 {
                    let reason = "order notional above the per-order limit";
                    refuse(&mut out, &header, role, "max_notional", max_e8 as i64, notional_e8 as i64, reason)?;
                } else {
                    let quantity_e8 = (notional_e8 * 100_000_000 / price) as i64;
                    let symbol = signal.symbol().unwrap_or_default();
                    out.send_timeout(
                        &header,
                        |fbb| {
                            let (symbol, account, venue) =
                                (fbb.create_string(symbol), fbb.create_string("acct-1"), fbb.create_string("sim"));
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
                    &header,
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
            ("execution", Event::ExecutionOrderPlaced(_)) if refusal.is_some() => {
                let cause = refusal.unwrap_or_default();
                refuse(&mut out, &header, role, CIRCUIT_OPEN, 0, 0, &cause)?;
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
            // Refusals travel on to the collector unchanged.
            (_, Event::BreakerAgentTriggered(b)) => {
                let (agent, breaker, reason) =
                    (b.agent_id().unwrap_or_default(), b.breaker().unwrap_or_default(), b.reason().unwrap_or_default());
                refuse(&mut out, &header, agent, breaker, b.threshold_e8(), b.observed_e8(), reason)?;
            }
            (_, other) => bail!("{role} agent got an unexpected {:?}", other.message_type()),
        }
    }
}

/// Sends a refusal: a `BreakerAgentTriggered` naming who refused and why.
fn refuse(
    out: &mut EnvelopeSender,
    header: &EnvelopeHeader<'_>,
    agent: &str,
    breaker: &str,
    threshold_e8: i64,
    observed_e8: i64,
    reason: &str,
) -> Result<()> {
    out.send_timeout(
        header,
        |fbb| {
            let (agent_id, breaker, reason) =
                (fbb.create_string(agent), fbb.create_string(breaker), fbb.create_string(reason));
            fb::BreakerAgentTriggered::create(
                fbb,
                &fb::BreakerAgentTriggeredArgs {
                    agent_id: Some(agent_id),
                    breaker: Some(breaker),
                    severity: fb::Severity::Warning,
                    threshold_e8,
                    observed_e8,
                    reason: Some(reason),
                    ..Default::default()
                },
            )
        },
        TIMEOUT,
    )?;
    Ok(())
}

/// The columns market analysis reads, checked once per batch (a batch is a peer's input).
struct Ticks<'a> {
    hi: &'a UInt64Array,
    lo: &'a UInt64Array,
    symbol: &'a StringArray,
    bid: &'a Int64Array,
    ask: &'a Int64Array,
    intended: &'a UInt64Array,
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .with_context(|| format!("tick batch without a {name} column of the expected type"))
}

impl<'a> Ticks<'a> {
    fn of(batch: &'a RecordBatch) -> Result<Ticks<'a>> {
        let t = Ticks {
            hi: column(batch, "tick_id_hi")?,
            lo: column(batch, "tick_id_lo")?,
            symbol: column(batch, "symbol")?,
            bid: column(batch, "bid_e8")?,
            ask: column(batch, "ask_e8")?,
            intended: column(batch, "intended_ns")?,
        };
        if [t.hi.null_count(), t.lo.null_count(), t.symbol.null_count(), t.bid.null_count(), t.ask.null_count()]
            .iter()
            .any(|n| *n > 0)
        {
            bail!("tick batch with null ids, symbols or prices");
        }
        Ok(t)
    }
}

/// Market analysis: one signal per tick, correlated to the tick's id. Every 16th is sized at full
/// confidence, which the risk agent's default limits refuse.
fn signals(
    batch: &RecordBatch,
    out: &mut EnvelopeSender,
    beat: &mut Beat<'_>,
    stall: Duration,
    metrics: &Metrics,
) -> Result<()> {
    let ticks = match Ticks::of(batch) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "tick batch refused");
            return Ok(());
        }
    };
    for row in 0..batch.num_rows() {
        if !stall.is_zero() {
            std::thread::sleep(stall);
        }
        beat.tick()?;
        let seq = ticks.lo.value(row);
        let mut header = EnvelopeHeader::new("market-analysis", "risk");
        header.correlation_id = MessageId::from_wire(&fb::Uuid::new(ticks.hi.value(row), seq));
        let (intended, sent) = (ticks.intended.value(row), now_ns());
        metrics.hops[0].1.record(sent.saturating_sub(intended));
        metrics.handled.fetch_add(1, Relaxed);
        let (tick_at, now) = (intended.to_string(), sent.to_string());
        let metadata = [(STAMPS[0], tick_at.as_str()), (STAMPS[1], now.as_str())];
        let header = header.with_metadata(&metadata);
        tracing::debug!(event = "handled", agent = "market-analysis", message_type = "tick", correlation_id = %header.correlation_id);
        let mid = ticks.bid.value(row) / 2 + ticks.ask.value(row) / 2;
        let confidence_e8 = if seq % 16 == 15 { 100_000_000 } else { 60_000_000 };
        let symbol = ticks.symbol.value(row);
        out.send_timeout(
            &header,
            |fbb| {
                let (symbol, strategy) = (fbb.create_string(symbol), fbb.create_string("mean-reversion"));
                fb::TradingSignalGenerated::create(
                    fbb,
                    &fb::TradingSignalGeneratedArgs {
                        signal_id: Some(&header.message_id.to_wire()),
                        symbol: Some(symbol),
                        side: if seq % 2 == 0 { fb::Side::Buy } else { fb::Side::Sell },
                        confidence_e8,
                        reference_price_e8: mid,
                        strategy: Some(strategy),
                        ..Default::default()
                    },
                )
            },
            TIMEOUT,
        )?;
    }
    Ok(())
}

/// After how many handled messages a `--corrupt-agent` commits its bad records.
const CORRUPT_AFTER: u64 = 100;

/// Testing (`tadpole demo --corrupt-agent`): commits `n` records that are no envelope into the
/// outbox, as a buggy agent would; the next agent refuses them and reports itself Degraded.
fn corrupt(out: EnvelopeSender, n: u64) -> Result<EnvelopeSender> {
    let mut producer = out.into_producer();
    for i in 0..n {
        producer.send(format!("not an envelope {i}").as_bytes()).context("committing a bad record")?;
    }
    Ok(EnvelopeSender::new(producer))
}
