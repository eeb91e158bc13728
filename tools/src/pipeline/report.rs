//! What the collector measured: per-hop and end-to-end latency, outcomes, drops, the breaker's
//! events, and the SLA alerts raised against the configured bounds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use ipc_core::RingStatus;
use schemas::channel::ReceivedEnvelope;
use schemas::envelope::{Event, MessageId};
use schemas::fb;

use super::Config;
use super::config::SlaConfig;
use super::metrics::Metrics;

/// What came back for a tick.
pub enum Outcome {
    Filled,
    RefusedByRisk,
    /// Refused by this agent while the circuit breaker was open.
    RefusedOpen(String),
    Unexpected(String),
}

/// A measured stretch of the pipeline: from stamp `from` to stamp `to` (5 = back at the
/// collector).
pub struct Hop {
    pub name: &'static str,
    from: usize,
    to: usize,
    /// Whether the per-hop or the end-to-end bounds apply.
    end_to_end: bool,
    pub latency_ns: Histogram<u64>,
    /// The slowest sample and its tick's correlation id (named in the alert).
    worst: (u64, MessageId),
}

pub const HOPS: [(&str, usize, usize, bool); 6] = [
    ("tick -> signal", 0, 1, false),
    ("signal -> risk", 1, 2, false),
    ("risk -> personality", 2, 3, false),
    ("personality -> execution", 3, 4, false),
    ("signal -> execution", 1, 4, true),
    ("end to end", 0, 5, true),
];

/// A bound a hop broke.
#[derive(Clone, Debug)]
pub struct SlaAlert {
    pub hop: &'static str,
    /// "average" or "p99".
    pub statistic: &'static str,
    pub observed_ms: f64,
    pub bound_ms: f64,
    pub correlation_id: MessageId,
}

/// Something the breaker said, as the collector heard it.
pub struct BreakerNotice {
    pub at: Duration,
    pub what: String,
}

/// Collects outcomes as they come back.
pub struct Recorder {
    /// The high half of every tick id of this run.
    pub nonce: u64,
    warmup: u64,
    seen: Vec<bool>,
    hops: Vec<Hop>,
    sent: u64,
    returned: u64,
    uncorrelated: u64,
    filled: u64,
    refused_by_risk: u64,
    refused_open: Vec<(String, u64)>,
    unexpected: Vec<String>,
    pub halted: Option<String>,
    breaker: Vec<BreakerNotice>,
    created: Instant,
    timing: Option<(Instant, Option<Instant>)>,
    bar: indicatif::ProgressBar,
    last_draw: Instant,
    rate: u64,
    sla: SlaConfig,
    /// Alerts raised so far (each hop and statistic once), and when the bounds were last looked at.
    raised: Vec<SlaAlert>,
    last_sla_check: Instant,
    metrics: Arc<Metrics>,
}

/// Samples a hop needs before its bounds are checked while the run goes on (the end of the run
/// checks them whatever the count).
const LIVE_SLA_MIN_SAMPLES: u64 = 200;

impl Recorder {
    pub fn new(
        config: &Config,
        warmup: u64,
        timed: u64,
        bar: indicatif::ProgressBar,
        metrics: Arc<Metrics>,
    ) -> Recorder {
        let hops = HOPS
            .iter()
            .map(|&(name, from, to, end_to_end)| Hop {
                name,
                from,
                to,
                end_to_end,
                // 1 ns to 10 min, 3 significant digits: bounds cannot fail.
                latency_ns: Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds"),
                worst: (0, MessageId::NIL),
            })
            .collect();
        Recorder {
            nonce: MessageId::new_v4().to_wire().hi(),
            warmup,
            seen: vec![false; (warmup + timed) as usize],
            hops,
            sent: 0,
            returned: 0,
            uncorrelated: 0,
            filled: 0,
            refused_by_risk: 0,
            refused_open: Vec::new(),
            unexpected: Vec::new(),
            halted: None,
            breaker: Vec::new(),
            created: Instant::now(),
            timing: None,
            bar,
            last_draw: Instant::now(),
            rate: config.rate,
            sla: config.sla.clone(),
            raised: Vec::new(),
            last_sla_check: Instant::now(),
            metrics,
        }
    }

    /// Raises the alerts of the bounds broken now (once per hop and statistic): a JSON log
    /// event and the `tadpole_demo_sla_alerts` counter.
    fn check_sla(&mut self, min_samples: u64) {
        self.last_sla_check = Instant::now();
        for alert in sla_alerts(&self.hops, &self.sla, min_samples) {
            match self.raised.iter_mut().find(|a| a.hop == alert.hop && a.statistic == alert.statistic) {
                Some(known) => *known = alert,
                None => {
                    self.bar.suspend(|| {
                        tracing::warn!(
                            event = "sla_alert",
                            hop = alert.hop,
                            statistic = alert.statistic,
                            observed_ms = alert.observed_ms,
                            bound_ms = alert.bound_ms,
                            correlation_id = %alert.correlation_id,
                            "SLA alert: {} {} {:.3} ms exceeds {} ms",
                            alert.hop,
                            alert.statistic,
                            alert.observed_ms,
                            alert.bound_ms
                        )
                    });
                    self.metrics.sla_alerts.fetch_add(1, Relaxed);
                    self.raised.push(alert);
                }
            }
        }
    }

    pub fn start_timing(&mut self) {
        self.timing = Some((Instant::now(), None));
    }

    pub fn finish_timing(&mut self) {
        if let Some((start, None)) = self.timing {
            self.timing = Some((start, Some(Instant::now())));
        }
        self.bar.finish_and_clear();
    }

    pub fn sent(&mut self, ticks: u64) {
        self.sent += ticks;
    }

    /// Ticks sent whose outcome has not come back.
    pub fn outstanding(&self) -> u64 {
        self.sent - self.returned
    }

    /// Takes in an outcome received at `now_ns`; its tick's sequence number if it answers one of
    /// this run's ticks (once).
    pub fn outcome(&mut self, msg: &ReceivedEnvelope<'_>, now_ns: u64) -> Option<u64> {
        let envelope = msg.envelope();
        let correlation = envelope.correlation_id().copied().unwrap_or(fb::Uuid::new(0, 0));
        let seq = correlation.lo();
        let fresh = correlation.hi() == self.nonce && self.seen.get(seq as usize).is_some_and(|s| !s);
        if !fresh {
            self.uncorrelated += 1;
            return None;
        }
        self.seen[seq as usize] = true;
        self.returned += 1;
        if seq < self.warmup {
            return Some(seq);
        }
        match msg.event().map(|e| super::Outcome::from(&e)) {
            Ok(Outcome::Filled) => self.filled += 1,
            Ok(Outcome::RefusedByRisk) => self.refused_by_risk += 1,
            Ok(Outcome::RefusedOpen(agent)) => match self.refused_open.iter_mut().find(|(a, _)| *a == agent) {
                Some((_, n)) => *n += 1,
                None => self.refused_open.push((agent, 1)),
            },
            Ok(Outcome::Unexpected(kind)) => self.unexpected.push(kind),
            Err(e) => self.unexpected.push(e.to_string()),
        }
        let mut stamps = [0u64; 6];
        stamps[..5].copy_from_slice(&super::stamps(&envelope));
        stamps[5] = now_ns;
        let id = MessageId::from_wire(&correlation);
        self.metrics.handled.fetch_add(1, Relaxed);
        for (hop, (_, live)) in self.hops.iter_mut().zip(&self.metrics.hops) {
            let (from, to) = (stamps[hop.from], stamps[hop.to]);
            if from != 0 && to >= from {
                let ns = (to - from).max(1);
                live.record(ns);
                let _ = hop.latency_ns.record(ns);
                if ns > hop.worst.0 {
                    hop.worst = (ns, id);
                }
            }
        }
        self.tick_progress();
        Some(seq)
    }

    /// Redraws the progress line (at most ten times a second), and checks the SLA bounds
    /// twice a second.
    pub fn tick_progress(&mut self) {
        if self.last_sla_check.elapsed() >= Duration::from_millis(500) {
            self.check_sla(LIVE_SLA_MIN_SAMPLES);
        }
        if self.bar.is_hidden() || self.last_draw.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last_draw = Instant::now();
        let e2e = &self.hops[5].latency_ns;
        let open: u64 = self.refused_open.iter().map(|(_, n)| n).sum();
        self.bar.set_position(self.returned);
        self.bar.set_message(format!(
            "end to end p50 {} p99 {}, {} refused while the breaker was open",
            us(e2e.value_at_quantile(0.5)),
            us(e2e.value_at_quantile(0.99)),
            open
        ));
    }

    /// Takes in a notice from the breaker.
    pub fn breaker_event(&mut self, event: &Event<'_>) {
        let at = self.created.elapsed();
        let what = match event {
            Event::BreakerAgentTriggered(b) => {
                let reason = b.reason().unwrap_or_default();
                // The breaker repeats a trip while it lasts; the report shows the first.
                if reason.ends_with("(still)") {
                    return;
                }
                if b.breaker() != Some("recovered") {
                    self.metrics.breaker_trips.fetch_add(1, Relaxed);
                }
                format!(
                    "BreakerAgentTriggered {} {}: {}",
                    b.agent_id().unwrap_or_default(),
                    b.breaker().unwrap_or_default(),
                    reason
                )
            }
            Event::BreakerSystemEmergency(e) => {
                let reason = e.reason().unwrap_or_default().to_owned();
                let what = format!("BreakerSystemEmergency by {}: {reason}", e.triggered_by().unwrap_or_default());
                self.metrics.breaker_emergencies.fetch_add(1, Relaxed);
                self.metrics.breaker_state.store(2, Relaxed);
                self.halted.get_or_insert(reason);
                what
            }
            other => format!("{:?}", other.message_type()),
        };
        self.bar.suspend(|| ());
        self.breaker.push(BreakerNotice { at, what });
    }

    /// The breaker process is gone while the run goes on.
    pub fn breaker_gone(&mut self) {
        if self.halted.is_none() {
            tracing::error!(event = "breaker_gone", "the circuit breaker is gone: trading halts");
            self.breaker
                .push(BreakerNotice { at: self.created.elapsed(), what: "the circuit breaker process is gone".into() });
            self.metrics.breaker_state.store(2, Relaxed);
            self.halted = Some("the circuit breaker is gone".into());
        }
    }

    pub fn into_report(mut self, rings: Vec<(String, RingStatus)>) -> Report {
        // Every receiver of every process counts what it refuses in its ring's segment.
        let dead_letters = rings.iter().map(|(_, s)| s.consumed.dead_letters()).sum();
        let elapsed = match self.timing {
            Some((start, Some(end))) => end - start,
            Some((start, None)) => start.elapsed(),
            None => Duration::ZERO,
        };
        self.check_sla(1);
        let alerts = std::mem::take(&mut self.raised);
        let timed_sent = self.sent.saturating_sub(self.warmup);
        let timed_returned = self.returned.saturating_sub(self.warmup.min(self.returned));
        Report {
            hops: self.hops,
            elapsed,
            rate: self.rate,
            filled: self.filled,
            refused_by_risk: self.refused_by_risk,
            refused_open: self.refused_open,
            unexpected: self.unexpected,
            sent: timed_sent,
            dropped: timed_sent.saturating_sub(timed_returned),
            uncorrelated: self.uncorrelated,
            dead_letters,
            breaker: self.breaker,
            halted: self.halted,
            alerts,
            rings,
        }
    }
}

fn sla_alerts(hops: &[Hop], sla: &SlaConfig, min_samples: u64) -> Vec<SlaAlert> {
    let mut alerts = Vec::new();
    for hop in hops.iter().filter(|h| h.latency_ns.len() >= min_samples.max(1)) {
        let (avg_bound, p99_bound) = if hop.end_to_end {
            (sla.end_to_end_avg_ms, sla.end_to_end_p99_ms)
        } else {
            (sla.hop_avg_ms, sla.hop_p99_ms)
        };
        let avg = hop.latency_ns.mean() / 1e6;
        let p99 = hop.latency_ns.value_at_quantile(0.99) as f64 / 1e6;
        let mut alert = |statistic, observed_ms, bound_ms| {
            alerts.push(SlaAlert { hop: hop.name, statistic, observed_ms, bound_ms, correlation_id: hop.worst.1 })
        };
        if avg > avg_bound {
            alert("average", avg, avg_bound);
        }
        if let Some(bound) = p99_bound.filter(|b| p99 > *b) {
            alert("p99", p99, bound);
        }
    }
    alerts
}

/// The run, measured.
pub struct Report {
    pub hops: Vec<Hop>,
    pub elapsed: Duration,
    pub rate: u64,
    pub filled: u64,
    pub refused_by_risk: u64,
    pub refused_open: Vec<(String, u64)>,
    pub unexpected: Vec<String>,
    pub sent: u64,
    pub dropped: u64,
    pub uncorrelated: u64,
    pub dead_letters: u64,
    pub breaker: Vec<BreakerNotice>,
    pub halted: Option<String>,
    pub alerts: Vec<SlaAlert>,
    pub rings: Vec<(String, RingStatus)>,
}

fn us(ns: u64) -> String {
    format!("{:.1} us", ns as f64 / 1000.0)
}

impl Report {
    pub fn print(&self, config: &Config) -> Result<()> {
        use std::io::Write;
        let mut o = std::io::stdout().lock();
        let agents: Vec<String> = super::AGENTS
            .iter()
            .map(|a| if config.python.iter().any(|p| p == a) { format!("{a} (python)") } else { (*a).to_owned() })
            .collect();
        writeln!(
            o,
            "Tadpole trading pipeline: {} agent processes, shared-memory rings, {} wait",
            agents.len() + 1,
            config.wait
        )?;
        writeln!(o, "  ticks ({}, Arrow) -> {}", config.market.symbols.join(", "), agents.join(" -> "))?;
        writeln!(
            o,
            "  circuit breaker hears the heartbeats of all {} (silent {} ms trips it)",
            agents.len(),
            config.breaker.silence_ms
        )?;
        if self.rate > 0 {
            writeln!(o, "  open loop at {} ticks/s; latency from each tick's intended send time", self.rate)?;
        } else {
            writeln!(o, "  one tick in flight at a time")?;
        }
        let open: u64 = self.refused_open.iter().map(|(_, n)| n).sum();
        let timed = self.filled + self.refused_by_risk + open;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(
            o,
            "  signals: {timed} timed ({} filled, {} refused by risk), {:.0} signals/s, {} dead letters",
            self.filled,
            self.refused_by_risk + open,
            timed as f64 / secs,
            self.dead_letters
        )?;
        writeln!(
            o,
            "  ticks: {} sent, {} dropped (no outcome), {} outcomes not matching a tick; correlation ids carried tick -> fill",
            self.sent, self.dropped, self.uncorrelated
        )?;
        let by: Vec<String> = self.refused_open.iter().map(|(a, n)| format!("{a} {n}")).collect();
        writeln!(
            o,
            "  refused while the circuit breaker was open: {open}{}",
            if by.is_empty() { String::new() } else { format!(" ({})", by.join(", ")) }
        )?;
        if !self.unexpected.is_empty() {
            writeln!(o, "  unexpected outcomes: {}", self.unexpected.join(", "))?;
        }
        if !self.breaker.is_empty() {
            writeln!(o, "  breaker events:")?;
            for n in &self.breaker {
                writeln!(o, "    +{:>7.3}s  {}", n.at.as_secs_f64(), n.what)?;
            }
        }
        writeln!(o, "  latency per hop (each hop: ring transit + the agent's work), us:")?;
        writeln!(o, "    {:<26} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}", "", "mean", "p50", "p90", "p99", "p99.9", "max")?;
        for h in &self.hops {
            let l = &h.latency_ns;
            let q = |q| format!("{:.2}", l.value_at_quantile(q) as f64 / 1000.0);
            writeln!(
                o,
                "    {:<26} {:>9.2} {:>9} {:>9} {:>9} {:>9} {:>9.2}",
                h.name,
                l.mean() / 1000.0,
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                l.max() as f64 / 1000.0
            )?;
        }
        let worst_hop = self.hops[..4].iter().map(|h| h.latency_ns.mean()).fold(0.0, f64::max) / 1e6;
        let to_execution = self.hops[4].latency_ns.mean() / 1e6;
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        writeln!(
            o,
            "  targets (requirements): < 10 ms average between agents: {} (slowest hop {:.3} ms); \
             < 100 ms signal to execution: {} ({:.3} ms average)",
            verdict(worst_hop < 10.0),
            worst_hop,
            verdict(to_execution < 100.0),
            to_execution
        )?;
        writeln!(o, "  SLA alerts: {}", self.alerts.len())?;
        for a in &self.alerts {
            writeln!(
                o,
                "    ALERT {} {} {:.3} ms exceeds {} ms (slowest tick {})",
                a.hop, a.statistic, a.observed_ms, a.bound_ms, a.correlation_id
            )?;
        }
        writeln!(o, "  rings (messages in, full-ring waits, wake-ups, dead letters):")?;
        for (name, s) in &self.rings {
            writeln!(
                o,
                "    {name:<22} {:>8} msgs  {:>6} full  {:>6} wakes  {:>4} dead",
                s.produced.messages,
                s.produced.full_events,
                s.produced.wakes,
                s.consumed.dead_letters()
            )?;
        }
        if let Some(h) = &self.halted {
            writeln!(o, "  HALTED by the circuit breaker: {h}")?;
        }
        Ok(())
    }

    /// Writes `<dir>/latency-<hop>.svg` and `.png` for every hop measured.
    pub fn plot(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut files = Vec::new();
        for h in self.hops.iter().filter(|h| !h.latency_ns.is_empty()) {
            let buckets: Vec<(f64, u64)> = h
                .latency_ns
                .iter_log(1_000, 1.25)
                .map(|v| (v.value_iterated_to() as f64, v.count_since_last_iteration()))
                .collect();
            let stem: String = h.name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
            let stem = dir
                .join(format!("latency-{}", stem.split('-').filter(|s| !s.is_empty()).collect::<Vec<_>>().join("-")));
            let title = format!("{} latency ({} samples)", h.name, h.latency_ns.len());
            files.extend(
                tadpole_benches::suite::plot_histogram(&stem, &title, &buckets).map_err(|e| anyhow::anyhow!(e))?,
            );
        }
        Ok(files)
    }
}
