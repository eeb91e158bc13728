//! The circuit breaker agent: waits on every agent's heartbeat ring at once (one [`WaitSet`],
//! asleep on one doorbell), and tells risk, execution and the demo's collector when an agent
//! falls silent or misbehaves (`BreakerAgentTriggered`, repeated while it lasts, so the
//! listeners' cooldown keeps them stopped) or dies (`BreakerSystemEmergency`: trading halts).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Result;
use ipc_core::{DeadLetterReason, RingKey, TryRecvError, WaitSet, WaitStrategy};
use schemas::channel::EnvelopeSender;
use schemas::envelope::{EnvelopeHeader, Event, VerifyOptions, verify_envelope};
use schemas::fb;

use super::metrics::Metrics;
use super::{AGENTS, AgentSettings, BREAKER, BREAKER_LISTENERS, breaker_ring, heartbeat_ring};

struct Watched {
    agent: &'static str,
    key: Option<RingKey>,
    last_beat: Option<Instant>,
    /// When the breaker last told the listeners about this agent (while tripped).
    tripped_at: Option<Instant>,
    /// When the current trip began.
    opened_at: Option<Instant>,
    terminated: bool,
    last_sequence: u64,
}

enum Notice<'a> {
    Trip { agent: &'a str, breaker: &'a str, threshold_ms: u64, observed_ms: u64, reason: String },
    Recovered { agent: &'a str, silent_ms: u64 },
    Emergency { agent: &'a str, reason: String },
}

pub fn run(run: &str, settings: &AgentSettings) -> Result<()> {
    let cfg = &settings.breaker;
    let (silence, grace) = (Duration::from_millis(cfg.silence_ms), Duration::from_millis(cfg.startup_grace_ms));
    let cooldown = Duration::from_millis(cfg.cooldown_ms);
    let metrics = Metrics::new(BREAKER, &[]);
    let _endpoint = settings.metrics_port.map(|port| super::metrics::serve(port, &metrics)).transpose()?;
    let mut set = WaitSet::new(WaitStrategy::Block)?;
    let mut watched = Vec::new();
    for agent in AGENTS {
        let consumer = metrics.open_ring(&heartbeat_ring(run, agent))?.consumer()?;
        let key = set.insert(consumer);
        watched.push(Watched {
            agent,
            key: Some(key),
            last_beat: None,
            tripped_at: None,
            opened_at: None,
            terminated: false,
            last_sequence: 0,
        });
    }
    let mut listeners = BREAKER_LISTENERS
        .iter()
        .map(|l| Ok(EnvelopeSender::new(metrics.open_ring(&breaker_ring(run, l))?.producer()?)))
        .collect::<Result<Vec<_>>>()?;
    let started = Instant::now();
    let mut halted = false;
    let mut last_round = started;
    let poll = silence.min(cooldown / 2).clamp(Duration::from_millis(1), Duration::from_millis(20));
    while watched.iter().any(|w| w.key.is_some()) {
        let ready = set.wait(poll).to_vec();
        let now = Instant::now();
        // The breaker itself was not running (stopped, or starved of CPU): the agents' silence
        // meanwhile is no evidence against them, so their clocks restart.
        if now.duration_since(last_round) > silence / 2 {
            for w in &mut watched {
                w.last_beat = w.last_beat.map(|_| now);
            }
        }
        last_round = now;
        let mut notices = Vec::new();
        for key in ready {
            let Some(w) = watched.iter_mut().find(|w| w.key == Some(key)) else { continue };
            let Some(consumer) = set.get_mut(key) else { continue };
            // A few records per ring per round: one flooding agent cannot starve the others.
            for _ in 0..32 {
                let verdict = match consumer.try_recv() {
                    Ok(record) => {
                        metrics.heartbeats.fetch_add(1, Relaxed);
                        judge(w, &record, now).unwrap_or_else(|malformed| {
                            // Shown by `tadpole stat` and the demo's ring table.
                            record.count_dead_letter(DeadLetterReason::Malformed);
                            Some(malformed)
                        })
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        w.key = None;
                        if !w.terminated {
                            notices.push(Notice::Emergency {
                                agent: w.agent,
                                reason: format!("the {} agent is gone without saying goodbye", w.agent),
                            });
                        }
                        break;
                    }
                    Err(e) => Some(format!("its heartbeat ring cannot be read: {e}")),
                };
                if let Some(reason) = verdict {
                    notices.push(Notice::Trip {
                        agent: w.agent,
                        breaker: "misbehaving",
                        threshold_ms: 0,
                        observed_ms: 0,
                        reason,
                    });
                }
            }
            if w.key.is_none() {
                set.remove(key);
            }
        }
        for w in watched.iter_mut().filter(|w| w.key.is_some() && !w.terminated) {
            let since = w.last_beat.unwrap_or(started);
            let limit = if w.last_beat.is_some() { silence } else { grace };
            let silent = now.duration_since(since);
            if silent > limit {
                // Repeated at half the cooldown while the silence lasts, so risk and execution
                // stay stopped until the agent is back.
                if w.tripped_at.is_none_or(|t| now.duration_since(t) >= cooldown / 2) {
                    let first = w.tripped_at.is_none();
                    w.tripped_at = Some(now);
                    w.opened_at.get_or_insert(now);
                    notices.push(Notice::Trip {
                        agent: w.agent,
                        breaker: "heartbeat_silence",
                        threshold_ms: limit.as_millis() as u64,
                        observed_ms: silent.as_millis() as u64,
                        reason: format!(
                            "no heartbeat from {} for {} ms{}",
                            w.agent,
                            silent.as_millis(),
                            if first { "" } else { " (still)" }
                        ),
                    });
                }
            } else if let Some(t) = w.tripped_at.take().and(w.opened_at.take()) {
                notices.push(Notice::Recovered { agent: w.agent, silent_ms: now.duration_since(t).as_millis() as u64 });
            }
        }
        for notice in notices {
            if let Notice::Emergency { .. } = notice {
                if halted {
                    continue;
                }
                halted = true;
            }
            match notice {
                Notice::Trip { .. } => metrics.breaker_trips.fetch_add(1, Relaxed),
                Notice::Emergency { .. } => metrics.breaker_emergencies.fetch_add(1, Relaxed),
                Notice::Recovered { .. } => 0,
            };
            metrics
                .breaker_state
                .store(if halted { 2 } else { u64::from(watched.iter().any(|w| w.tripped_at.is_some())) }, Relaxed);
            tell(&mut listeners, &notice, cooldown);
        }
    }
    Ok(())
}

/// What a record on an agent's heartbeat ring says about the agent: `Some(reason)` if it
/// misbehaves, `Err(reason)` if the record is not a heartbeat or goodbye at all (a dead letter).
fn judge(w: &mut Watched, record: &[u8], now: Instant) -> Result<Option<String>, String> {
    let envelope = verify_envelope(record, &VerifyOptions::default())
        .map_err(|e| format!("an invalid envelope on its heartbeat ring: {e}"))?;
    match Event::from_envelope(&envelope) {
        Ok(Event::Heartbeat(h)) => {
            w.last_beat = Some(now);
            let (sequence, last) = (h.sequence(), w.last_sequence);
            w.last_sequence = sequence;
            Ok(if sequence <= last {
                Some(format!("heartbeat sequence {sequence} after {last}: a restarted or confused agent"))
            } else if matches!(h.status(), fb::HealthStatus::Degraded | fb::HealthStatus::Unhealthy) {
                Some(format!("it reports itself {:?}", h.status()))
            } else {
                None
            })
        }
        Ok(Event::AgentTerminated(t)) => {
            w.terminated = true;
            w.key.take();
            Ok((t.reason() != fb::TerminationReason::Completed)
                .then(|| format!("it stopped: {}", t.detail().unwrap_or_default())))
        }
        Ok(other) => Err(format!("an unexpected {:?} on its heartbeat ring", other.message_type())),
        Err(e) => Err(format!("an unreadable payload on its heartbeat ring: {e}")),
    }
}

fn tell(listeners: &mut [EnvelopeSender], notice: &Notice<'_>, cooldown: Duration) {
    match notice {
        Notice::Trip { agent, breaker, reason, observed_ms, .. } => {
            tracing::warn!(
                event = "breaker_agent_triggered",
                agent,
                breaker,
                observed_ms,
                reason = reason.as_str(),
                "circuit breaker open"
            )
        }
        Notice::Recovered { agent, silent_ms } => {
            tracing::warn!(event = "breaker_recovered", agent, open_ms = silent_ms, "agent heard from again")
        }
        Notice::Emergency { agent, reason } => {
            tracing::error!(event = "breaker_system_emergency", agent, reason = reason.as_str(), "trading halted")
        }
    }
    for (i, tx) in listeners.iter_mut().enumerate() {
        // The collector (last) hears recoveries too; risk and execution close on the cooldown.
        if matches!(notice, Notice::Recovered { .. }) && i + 1 != BREAKER_LISTENERS.len() {
            continue;
        }
        let header = EnvelopeHeader::new(BREAKER, BREAKER_LISTENERS[i]);
        // A listener that left (the run is ending) or is full misses this notice; trips repeat.
        let _ = match notice {
            Notice::Trip { agent, breaker, threshold_ms, observed_ms, reason } => tx.send_timeout(
                &header,
                |fbb| trip(fbb, agent, breaker, reason, fb::Severity::Critical, *threshold_ms, *observed_ms, cooldown),
                Some(Duration::from_millis(100)),
            ),
            Notice::Recovered { agent, silent_ms } => tx.send_timeout(
                &header,
                |fbb| {
                    trip(
                        fbb,
                        agent,
                        "recovered",
                        "heartbeats resumed",
                        fb::Severity::Info,
                        0,
                        *silent_ms,
                        Duration::ZERO,
                    )
                },
                Some(Duration::from_millis(100)),
            ),
            Notice::Emergency { agent, reason } => tx.send_timeout(
                &header,
                |fbb| {
                    let (reason, by) = (fbb.create_string(reason), fbb.create_string(agent));
                    fb::BreakerSystemEmergency::create(
                        fbb,
                        &fb::BreakerSystemEmergencyArgs {
                            severity: fb::Severity::Emergency,
                            reason: Some(reason),
                            triggered_by: Some(by),
                            halt_trading: true,
                            cancel_open_orders: true,
                            open_positions: 0,
                        },
                    )
                },
                Some(Duration::from_millis(100)),
            ),
        };
    }
}

#[allow(clippy::too_many_arguments)]
fn trip<'b>(
    fbb: &mut flatbuffers::FlatBufferBuilder<'b>,
    agent: &str,
    breaker: &str,
    reason: &str,
    severity: fb::Severity,
    threshold_ms: u64,
    observed_ms: u64,
    cooldown: Duration,
) -> flatbuffers::WIPOffset<fb::BreakerAgentTriggered<'b>> {
    let (agent_id, breaker, reason) = (fbb.create_string(agent), fbb.create_string(breaker), fbb.create_string(reason));
    fb::BreakerAgentTriggered::create(
        fbb,
        &fb::BreakerAgentTriggeredArgs {
            agent_id: Some(agent_id),
            breaker: Some(breaker),
            severity,
            // Milliseconds, fixed point like every quantity in the catalogue.
            threshold_e8: threshold_ms as i64 * 100_000_000,
            observed_e8: observed_ms as i64 * 100_000_000,
            cooldown_ns: cooldown.as_nanos() as u64,
            reason: Some(reason),
        },
    )
}
