//! `tadpole demo --cross-host`: one hop of the pipeline crosses two hosts. The sender
//! (`cross_host.sender`) writes into ring `relay-<next>` on host A; relay A drains it over
//! ZeroMQ with CURVE (keys made for the run) across the veth to relay B on host B, which verifies
//! each envelope, drops message ids it has already committed, and commits into ring `<next>`,
//! where the next agent reads as it always does. The envelope crosses opaquely: correlation id,
//! hop stamps and refusals arrive as sent.
//!
//! Host A is network namespace A (the sender and the agents before it, relay A), host B is
//! namespace B (relay B and the agents after it); this process (feed, collector) and the breaker
//! stay in the root namespace. Shared memory is one per machine, so the other rings (heartbeats,
//! breaker notices, outcomes) reach across the namespaces directly: only the one hop goes over
//! the network. Where namespaces cannot be made, the relays run on loopback and so does
//! everything else.
//!
//! It owns the run's namespaces, keys and relays, and removes them when dropped (at the end, on
//! Ctrl-C, on error); it must outlive the agents in its namespaces, never the reverse.

use std::os::unix::fs::DirBuilderExt;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use ipc_core::{PeerState, Segment};

use super::report::{CrossingReport, RelayCounters};
use super::{AGENTS, Scratch};
use crate::hosts::net::{http_get, metric};
use crate::hosts::{Net, RelayLink};

/// How `--cross-host` runs.
pub struct CrossHost {
    /// Relays on loopback even where namespaces could be made (`--loopback`).
    pub loopback: bool,
}

/// The two hosts of a `--cross-host` run. Fields drop in order: the relays, then the
/// namespaces, then the directory with the keys.
pub struct Crossing {
    link: RelayLink,
    net: Net,
    why_loopback: Option<String>,
    /// Index into `AGENTS` of the agent whose output crosses.
    sender: usize,
    /// The ring relay A drains: its producer gone and it empty means relay B acknowledged
    /// every record.
    outbox: Segment,
    counters: Option<RelayCounters>,
    stopped: bool,
    _dir: Scratch,
}

/// Longest a relay may take to serve `/ready` after it starts.
const RELAY_START: Duration = Duration::from_secs(10);

impl Crossing {
    /// Makes the namespaces (or says why loopback), the keys and configurations, and starts
    /// both relays: relay A drains `outbox` into ring `inbox` on host B.
    pub fn start(how: &CrossHost, sender: &str, outbox: Segment, from: &str, to: &str) -> Result<Crossing> {
        let sender = AGENTS.iter().position(|a| *a == sender).filter(|i| i + 1 < AGENTS.len());
        let Some(sender) = sender else { bail!("cross_host.sender must be an agent with a next agent") };
        let (net, why_loopback) = Net::create_tagged("xh", how.loopback);
        let dir = Scratch(std::env::temp_dir().join(format!("tadpole-demo-{}-relays", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        // Only this user may read the secret keys' directory (the key files are 0600 too).
        std::fs::DirBuilder::new().mode(0o700).create(&dir.0)?;
        let link = RelayLink::configure(&net, &dir.0, "demo", from, to)?;
        let mut crossing =
            Crossing { link, net, why_loopback, sender, outbox, counters: None, stopped: false, _dir: dir };
        // The receiver first, so the sender's first connection finds it listening.
        for i in [1, 0] {
            crossing.link.relays[i].proc.start()?;
            let started = Instant::now();
            while crossing.get(i, "/ready").is_none() {
                if let Some(why) = crossing.diagnosis() {
                    bail!("{why}");
                }
                if started.elapsed() > RELAY_START {
                    bail!("relay-{} did not get ready within {RELAY_START:?}", crossing.link.relays[i].which);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(crossing)
    }

    fn get(&self, i: usize, path: &str) -> Option<String> {
        let r = &self.link.relays[i];
        http_get(self.net.namespace(r.which), &r.health, path)
    }

    /// The namespace agent `role` runs in (`None`: the root namespace).
    pub fn namespace_of(&self, role: &str) -> Option<&str> {
        let i = AGENTS.iter().position(|a| *a == role)?;
        self.net.namespace(if i <= self.sender { 'a' } else { 'b' })
    }

    /// Whether agent `role` sends into relay A's ring instead of the next agent's.
    pub fn relays_out(&self, role: &str) -> bool {
        AGENTS[self.sender] == role
    }

    /// While the pipeline drains at the end: once the sender has left and relay B has
    /// acknowledged everything it sent, reads the relays' counters and stops them (relay B
    /// leaving closes the next agent's ring, which then drains and leaves in turn).
    pub fn stop_when_drained(&mut self) {
        if self.stopped {
            return;
        }
        let s = self.outbox.status();
        if matches!(s.producer, PeerState::Closed | PeerState::Dead(_)) && s.head == s.tail {
            self.finish();
        }
    }

    /// Reads the relays' counters (once) and stops them.
    pub fn finish(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let (a, b) = (self.get(0, "/metrics"), self.get(1, "/metrics"));
        if let (Some(a), Some(b)) = (a, b) {
            self.counters = Some(RelayCounters {
                sent: metric(&a, "tadpole_relay_records_sent_total"),
                resends: metric(&a, "tadpole_relay_resends_total"),
                dead_letters: metric(&a, "tadpole_relay_dead_letters_total"),
                committed: metric(&b, "tadpole_relay_records_committed_total"),
                duplicates: metric(&b, "tadpole_relay_duplicates_dropped_total"),
                refused: metric(&b, "tadpole_relay_auth_failures_total")
                    + metric(&b, "tadpole_relay_malformed_messages_total"),
            });
        }
        for relay in &mut self.link.relays {
            relay.proc.signal(libc::SIGTERM);
        }
        for relay in &mut self.link.relays {
            relay.proc.finish(Duration::from_secs(5));
        }
    }

    /// A relay that exited by itself (before [`Crossing::finish`]): which, how, and the last line
    /// of its log.
    pub fn diagnosis(&mut self) -> Option<String> {
        if self.stopped {
            return None;
        }
        self.link.relays.iter_mut().find_map(|r| {
            let status = r.proc.exited()?;
            let log = std::fs::read_to_string(&r.proc.log).unwrap_or_default();
            let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(nothing logged)");
            Some(format!("relay-{} exited with {status}: {last}", r.which))
        })
    }

    /// What the report says about the crossing.
    pub fn report(&self) -> CrossingReport {
        let sender = AGENTS[self.sender];
        let (before, after) = (AGENTS[..=self.sender].join(", "), AGENTS[self.sender + 1..].join(", "));
        let (place, hosts) = match (self.net.namespace('a'), self.net.namespace('b')) {
            (Some(a), Some(b)) => (
                format!(
                    "in network namespaces {a} ({}) and {b} ({}) made for the run, joined by a veth pair",
                    self.net.host('a'),
                    self.net.host('b')
                ),
                format!(
                    "host A ({a}): {before}, relay-a; host B ({b}): relay-b, {after}; \
                     feed, collector and breaker in the root namespace"
                ),
            ),
            _ => (
                format!("on loopback ({})", self.why_loopback.as_deref().unwrap_or("no namespaces")),
                format!("all on loopback; host A: {before}, relay-a; host B: relay-b, {after}"),
            ),
        };
        CrossingReport {
            hop: self.sender + 1,
            via: if self.net.is_namespaces() { "netns" } else { "loopback" },
            path: format!(
                "{sender} -> relay-a -> CURVE over {} -> relay-b -> {}",
                if self.net.is_namespaces() { "the veth" } else { "loopback" },
                AGENTS[self.sender + 1]
            ),
            place,
            hosts,
            relays: self.counters.clone(),
        }
    }
}
