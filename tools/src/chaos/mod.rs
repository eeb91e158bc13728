//! `tadpole chaos`: real agent and relay processes under injected faults, checked for what
//! Tadpole promises (`ipc-zmq/PROTOCOL.md`): at-least-once delivery in order (no gap once the
//! faults are over, repeats only where and as many as the protocol allows), no corruption, bounded
//! memory, and every fault visible in the metrics an operator has (the relays' `/metrics`, the
//! rings' counters and attachments in shared memory).
//!
//! The world: producer `p-cross` → ring `xout` → relay `a` → (ZeroMQ + CURVE, across two network
//! namespaces when root) → relay `b` (envelope route) → ring `xin` → consumer `c-cross`; and
//! producer `p-local` → ring `local` → consumer `c-local`, and with `--agents N` more such local
//! pairs (`p-local2` → `local2` → `c-local2`, …). Every agent is a `tadpole chaos-agent`
//! process (`agent.rs`); every relay a `tadpole relay`. Faults come one after another, in a
//! random order drawn from the seed (targets too), each followed by a wait for its trace in the
//! metrics. Some are two faults at once: a kill of a relay or of an agent during a partition, a
//! consumer stalled while another producer (or the same one) floods.
//!
//! `corrupt-header` writes a bad record *header* (length, flags or check byte) into a local
//! ring's shared memory, ahead of its consumer. The ring refuses it (`TryRecvError::Corrupt`,
//! the ring's `corrupt_records` counter) and, by design, cannot be read past it
//! (README, threat model: the ring is dead); the consumer stays up and says so. The harness
//! then does what an operator would: replaces the ring under the same name, and both agents
//! move to it. The records left behind in the dead ring are the only losses the checks allow,
//! counted exactly: from the consumer's next expected record when it refused the header to the
//! first one the producer did not commit into the dead ring.
//!
//! `corrupt-header-relayed` does the same to the ring relay `a` reads (`xout`), ahead of what
//! the relay has read: relay `a` counts it once (`tadpole_relay_source_corrupt_records`) and
//! stops the route (`tadpole_relay_source_blocked` 1); once the harness has replaced the ring
//! and moved the producer to it, the relay re-attaches by itself (no restart) and records flow
//! through both relays again. The loss is counted as in the local case, from the damaged
//! record's own sequence number.

pub mod agent;
mod slots;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipc_core::{PeerState, RingBuilder, RingStatus, Segment, Side};

use crate::hosts::net::metric;
use crate::hosts::{Net, Proc, RelayLink, os};
use slots::Slots;

pub use agent::AgentArgs;

/// What the receiving relay may deliver again after a `kill -9` (PROTOCOL.md: the one DATA
/// message committed but not checkpointed, at most `max_batch_records`).
const RECEIVER_KILL_REPEATS: u64 = 512;
/// Records a producer floods per flood fault (several times what the rings hold).
const FLOOD_RECORDS: u64 = 5000;
/// Corrupt records per corruption fault (half random bytes, half bad checksums).
const CORRUPT_RECORDS: u64 = 4;
const PARTITION: Duration = Duration::from_secs(3);
/// How long the consumer of a `corrupt-header` ring is stopped while its header is written.
const HEADER_WINDOW: Duration = Duration::from_millis(100);
const STALL: Duration = Duration::from_secs(2);
/// Longest the end waits for every record to arrive.
const DRAIN: Duration = Duration::from_secs(60);

/// `tadpole chaos`'s arguments.
#[derive(clap::Args)]
pub struct ChaosArgs {
    /// How long to inject faults, in minutes (every kind of fault is injected at least once,
    /// however short).
    #[arg(long, conflicts_with = "seconds", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    minutes: Option<u64>,
    /// How long to inject faults, in seconds (for short runs).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    seconds: Option<u64>,
    /// Seed of the fault schedule (which fault, which target, in which order); printed at the
    /// start so a run can be repeated. Default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// How many agents to run: an even number, at least 4. The first two are the producer and
    /// consumer on either side of the relays; every further two a producer and consumer sharing a
    /// local ring. Every agent is a target of the agent faults.
    #[arg(long, default_value_t = 4, value_parser = parse_agents)]
    agents: usize,
    /// Records per second each producer sends between floods.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rate: u64,
    /// Most resident memory any relay or agent may use, in MiB.
    #[arg(long, default_value_t = 256)]
    max_rss_mib: u64,
    /// Run the relays on loopback even where network namespaces could be made.
    #[arg(long)]
    loopback: bool,
    /// Only these faults (comma-separated: kill-agent, kill-relay, stall, flood, corrupt,
    /// corrupt-header, corrupt-header-relayed, partition, kill-in-partition, kill-agent-in-partition,
    /// stall-during-flood), or `none` (traffic and checks only).
    #[arg(long, value_delimiter = ',', value_name = "FAULTS")]
    faults: Vec<String>,
    /// Test only: a producer skips one sequence number behind the checks' back, which they must
    /// report as a violation.
    #[arg(long, hide = true)]
    inject_loss: bool,
}

/// `--agents`: even, 4 to 64.
fn parse_agents(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|e| format!("{text:?} is not a number: {e}"))?;
    if !(4..=64).contains(&n) || n % 2 != 0 {
        return Err(format!("{n} agents: give an even number from 4 to 64 (producer and consumer pairs)"));
    }
    Ok(n)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    KillAgent,
    KillRelay,
    Stall,
    Flood,
    Corrupt,
    CorruptHeader,
    CorruptRelayedHeader,
    Partition,
    KillInPartition,
    KillAgentInPartition,
    StallDuringFlood,
}

const FAULTS: [Fault; 11] = [
    Fault::KillAgent,
    Fault::KillRelay,
    Fault::Stall,
    Fault::Flood,
    Fault::Corrupt,
    Fault::CorruptHeader,
    Fault::CorruptRelayedHeader,
    Fault::Partition,
    Fault::KillInPartition,
    Fault::KillAgentInPartition,
    Fault::StallDuringFlood,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillAgent => "kill-agent",
            Fault::KillRelay => "kill-relay",
            Fault::Stall => "stall",
            Fault::Flood => "flood",
            Fault::Corrupt => "corrupt",
            Fault::CorruptHeader => "corrupt-header",
            Fault::CorruptRelayedHeader => "corrupt-header-relayed",
            Fault::Partition => "partition",
            Fault::KillInPartition => "kill-in-partition",
            Fault::KillAgentInPartition => "kill-agent-in-partition",
            Fault::StallDuringFlood => "stall-during-flood",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Fault::KillAgent => "kill -9 agent",
            Fault::KillRelay => "kill -9 relay",
            Fault::Stall => "stalled consumer",
            Fault::Flood => "producer flood",
            Fault::Corrupt => "corrupt records",
            Fault::CorruptHeader => "corrupt header",
            Fault::CorruptRelayedHeader => "corrupt relayed header",
            Fault::Partition => "partition",
            Fault::KillInPartition => "kill -9 in partition",
            Fault::KillAgentInPartition => "agent kill in partition",
            Fault::StallDuringFlood => "stall during flood",
        }
    }
}

/// The checks made at the end, one summary row each.
const CHECKS: [&str; 5] = ["delivery", "repeats", "checksums", "memory", "process exits"];

/// splitmix64: the schedule's randomness, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn shuffled(&mut self) -> Vec<Fault> {
        let mut v = FAULTS.to_vec();
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
        v
    }
}

/// The agents, by index into `World::agents`: pairs, each producer followed by its consumer;
/// the first pair crosses the relays, the others (from `P_LOCAL` on) share a local ring each.
const P_CROSS: usize = 0;
const C_CROSS: usize = 1;
const P_LOCAL: usize = 2;
/// The rings, by index into `World::rings`: the local rings follow, one per local pair.
const XOUT: usize = 0;
const XIN: usize = 1;
/// The relays, by index into `World::relays`.
const A: usize = 0;
const B: usize = 1;

struct AgentProc {
    proc: Proc,
    side: Side,
    ring: usize,
    slots: Slots,
}

#[derive(Default)]
struct Tally {
    injected: u64,
    detected: u64,
    violations: Vec<String>,
}

/// Fields drop in order: the processes first, then their rings, then the namespaces.
struct World {
    agents: Vec<AgentProc>,
    link: RelayLink,
    rings: Vec<(String, Segment)>,
    net: Net,
    dir: PathBuf,
    started: Instant,
    faults: Vec<(Fault, Tally)>,
    checks: Vec<(&'static str, Tally)>,
    /// Per pair: record headers corrupted in its ring, and records left behind in rings dead of
    /// one (the only losses the design allows).
    headers_corrupted: Vec<u64>,
    stranded: Vec<u64>,
    /// Corrupt headers in ring `xout` that relay `a` counted (each exactly once).
    relay_refused_headers: u64,
    max_rss_kib: u64,
    last_sample: Instant,
}

/// An agent killed and started again (see `World::kill_and_restart`).
struct Killed {
    i: usize,
    ring: usize,
    side: Side,
    pid: u32,
    new: u32,
    dead: bool,
    /// Its ring's position on its side just before the restart.
    before: u64,
}

impl Killed {
    /// The position a `side` moves on.
    fn moved(side: Side, s: &RingStatus) -> u64 {
        if side == Side::Producer { s.tail } else { s.head }
    }
}

/// What `corrupt-header` writes over a record header (`ipc_core::layout`: length in the low 32
/// bits, type in the next 16, flags, the position's check byte on top). The type field is not
/// among them: any 16-bit type is legal, so a changed type is a well-formed lie the ring cannot
/// refuse (README, threat model).
#[derive(Clone, Copy)]
enum HeaderDamage {
    /// A length far above the ring's maximum.
    Length,
    /// An unknown flag bit.
    Flags,
    /// Another position's check byte.
    CheckByte,
}

impl HeaderDamage {
    const ALL: [HeaderDamage; 3] = [HeaderDamage::Length, HeaderDamage::Flags, HeaderDamage::CheckByte];

    fn name(self) -> &'static str {
        match self {
            HeaderDamage::Length => "length",
            HeaderDamage::Flags => "flags",
            HeaderDamage::CheckByte => "check byte",
        }
    }

    fn apply(self, word: u64, max_message_len: u32, rng: &mut Rng) -> u64 {
        match self {
            HeaderDamage::Length => {
                let room = u64::from(u32::MAX - max_message_len).max(1);
                let len = (u64::from(max_message_len) + 1 + rng.next() % room).min(u64::from(u32::MAX));
                (word & !0xFFFF_FFFF) | len
            }
            // Bits 50 to 55: no flag is defined there.
            HeaderDamage::Flags => word | 1 << (50 + rng.below(6)),
            HeaderDamage::CheckByte => word ^ (1 + rng.next() % 255) << 56,
        }
    }
}

/// Runs the chaos harness; an error (exit status 1) if any check found a violation.
pub fn run(args: &ChaosArgs) -> Result<()> {
    let seconds = match (args.minutes, args.seconds) {
        (Some(m), _) => m * 60,
        (None, Some(s)) => s,
        (None, None) => 60,
    };
    let seed = args.seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        (nanos as u64) ^ u64::from(std::process::id()) << 32
    });
    crate::exit::stop_on_interrupt()?;
    println!("tadpole chaos: {seconds} s of faults, seed {seed} (repeat the schedule with --seed {seed})");
    let mut world = World::build(args)?;
    if !world.net.is_namespaces() {
        println!("  note: relays on loopback; a partition is the receiving relay stopped (SIGSTOP) for {PARTITION:?}");
    }
    let chosen: Vec<Fault> = if args.faults.is_empty() {
        FAULTS.to_vec()
    } else {
        for name in &args.faults {
            if name != "none" && !FAULTS.iter().any(|f| f.name() == name) {
                bail!("unknown fault {name:?} in --faults");
            }
        }
        FAULTS.iter().copied().filter(|f| args.faults.iter().any(|n| n == f.name())).collect()
    };
    world.inject(seconds, seed, &chosen);
    world.finish();
    let violations = world.summary();
    if violations > 0 {
        bail!("chaos: {violations} violation(s); the relays' and agents' logs are in {}", world.dir.display());
    }
    let dir = world.dir.clone();
    drop(world);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

fn make_ring(name: &str, capacity: usize) -> Result<Segment> {
    let _ = Segment::unlink(name);
    RingBuilder::new(capacity).create_named(name).with_context(|| format!("creating ring {name:?}"))
}

impl World {
    fn build(args: &ChaosArgs) -> Result<World> {
        let (net, why_loopback) = Net::create(args.loopback);
        if let Some(why) = why_loopback {
            println!("  note: no network namespaces ({why}): the relays run on loopback");
        }
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("tadpole-chaos-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        println!("  logs and state in {}", dir.display());
        let exe = std::env::current_exe().context("finding the tadpole binary")?;

        let mut rings = vec![(format!("chaos-{pid}-xout"), 256 << 10), (format!("chaos-{pid}-xin"), 256 << 10)];
        let locals = args.agents / 2 - 1;
        for k in 1..=locals {
            rings.push((format!("chaos-{pid}-{}", local_name("local", k)), 64 << 10));
        }
        let rings = rings
            .into_iter()
            .map(|(name, capacity)| Ok((name.clone(), make_ring(&name, capacity)?)))
            .collect::<Result<Vec<_>>>()?;

        let link = RelayLink::configure(&net, &dir, "chaos", &rings[XOUT].0, &rings[XIN].0)?;

        let mut agents = Vec::new();
        let mut specs = vec![
            ("p-cross".to_owned(), "producer", XOUT, Side::Producer),
            ("c-cross".to_owned(), "consumer", XIN, Side::Consumer),
        ];
        for k in 1..=locals {
            let ring = XIN + k;
            specs.push((local_name("p-local", k), "producer", ring, Side::Producer));
            specs.push((local_name("c-local", k), "consumer", ring, Side::Consumer));
        }
        for (i, (name, role, ring, side)) in specs.into_iter().enumerate() {
            let name = name.as_str();
            let slots_path = dir.join(format!("{name}.slots"));
            let slots = Slots::open(&slots_path).with_context(|| format!("mapping {}", slots_path.display()))?;
            let mut agent_args = os(&["chaos-agent", "--role", role, "--ring", &rings[ring].0, "--name", name]);
            agent_args.extend(["--slots".into(), slots_path.into(), "--rate".into(), args.rate.to_string().into()]);
            if args.inject_loss && i == P_LOCAL {
                agent_args.extend(["--skip-seq".into(), (args.rate / 2).max(1).to_string().into()]);
            }
            agents.push(AgentProc { proc: Proc::new(name, &exe, agent_args, &dir), side, ring, slots });
        }

        let mut world = World {
            agents,
            link,
            rings,
            net,
            dir: dir.clone(),
            started: Instant::now(),
            faults: FAULTS.iter().map(|&f| (f, Tally::default())).collect(),
            checks: CHECKS.iter().map(|&c| (c, Tally::default())).collect(),
            headers_corrupted: vec![0; args.agents / 2],
            stranded: vec![0; args.agents / 2],
            relay_refused_headers: 0,
            max_rss_kib: args.max_rss_mib * 1024,
            last_sample: Instant::now(),
        };
        world.link.relays[B].proc.start()?;
        world.link.relays[A].proc.start()?;
        for agent in &mut world.agents {
            agent.proc.start()?;
        }
        // Faults start once records flow end to end.
        let flowing = world.wait_until(Duration::from_secs(30), |w| {
            w.pairs().all(|(_, c)| w.agents[c].slots.get(slots::RECEIVED) > 0)
        });
        if !flowing {
            bail!("records did not flow end to end within 30 s (logs in {})", dir.display());
        }
        world.started = Instant::now();
        Ok(world)
    }

    /// The (producer, consumer) pairs by agent index, the cross-host pair first.
    fn pairs(&self) -> impl Iterator<Item = (usize, usize)> + use<> {
        (0..self.agents.len() / 2).map(|k| (2 * k, 2 * k + 1))
    }

    /// A random pair's producer and consumer.
    fn random_pair(&self, rng: &mut Rng) -> (usize, usize) {
        let k = rng.below(self.agents.len() / 2);
        (2 * k, 2 * k + 1)
    }

    fn say(&self, text: &str) {
        println!("  [{:>7.1}s] {text}", self.started.elapsed().as_secs_f64());
    }

    fn status(&self, ring: usize) -> RingStatus {
        self.rings[ring].1.status()
    }

    fn side_state(&self, ring: usize, side: Side) -> PeerState {
        let s = self.status(ring);
        match side {
            Side::Producer => s.producer,
            Side::Consumer => s.consumer,
        }
    }

    fn metrics(&self, relay: usize) -> Option<String> {
        self.link.metrics(&self.net, relay)
    }

    fn metric(&self, relay: usize, name: &str) -> Option<u64> {
        self.metrics(relay).map(|page| metric(&page, name))
    }

    fn procs(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.agents.iter_mut().map(|a| &mut a.proc).chain(self.link.relays.iter_mut().map(|r| &mut r.proc))
    }

    /// Housekeeping between steps: memory samples, and processes that ended by themselves
    /// (a violation; they are started again so the run goes on).
    fn tick(&mut self) {
        let mut notes = Vec::new();
        let max = self.max_rss_kib;
        let sample = self.last_sample.elapsed() >= Duration::from_millis(500);
        if sample {
            self.last_sample = Instant::now();
        }
        for proc in self.procs() {
            if sample && proc.child.is_some() {
                if let Some(kib) = rss_kib(proc.pid()) {
                    proc.peak_rss_kib = proc.peak_rss_kib.max(kib);
                    if kib > max && !proc.over_memory {
                        proc.over_memory = true;
                        notes.push((
                            "memory",
                            format!("{} uses {} MiB (bound {} MiB)", proc.name, kib / 1024, max / 1024),
                        ));
                    }
                }
            }
            if let Some(status) = proc.exited() {
                notes.push((
                    "process exits",
                    format!("{} exited by itself ({status}); see {}", proc.name, proc.log.display()),
                ));
                if let Err(e) = proc.start() {
                    notes.push(("process exits", format!("{}: {e}", proc.name)));
                }
            }
        }
        for (check, note) in notes {
            self.say(&format!("VIOLATION: {note}"));
            self.check(check).violations.push(note);
        }
    }

    fn check(&mut self, name: &str) -> &mut Tally {
        &mut self.checks.iter_mut().find(|(c, _)| *c == name).expect("a known check").1
    }

    fn sleep(&mut self, d: Duration) {
        let started = Instant::now();
        while started.elapsed() < d {
            self.tick();
            std::thread::sleep(Duration::from_millis(50).min(d.saturating_sub(started.elapsed())));
        }
    }

    /// The operator's repair of ring `ring`: a new ring under the same name, and the next
    /// generation (one past the first agent's) told to the `agents` that move to it. Returns
    /// that generation.
    fn replace_ring(&mut self, ring: usize, agents: &[usize]) -> Result<u64, String> {
        let name = self.rings[ring].0.clone();
        let capacity = self.rings[ring].1.capacity();
        self.rings[ring].1 = make_ring(&name, capacity).map_err(|e| format!("replacing ring {name}: {e:#}"))?;
        let generation = self.agents[agents[0]].slots.get(slots::GENERATION) + 1;
        for &i in agents {
            self.agents[i].slots.set(slots::GENERATION, generation);
        }
        Ok(generation)
    }

    fn wait_until(&mut self, timeout: Duration, mut done: impl FnMut(&mut World) -> bool) -> bool {
        let started = Instant::now();
        loop {
            if done(self) {
                return true;
            }
            if started.elapsed() >= timeout {
                return false;
            }
            self.tick();
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Faults one after another until `seconds` pass, each kind at least once.
    fn inject(&mut self, seconds: u64, seed: u64, chosen: &[Fault]) {
        let mut rng = Rng(seed);
        let deadline = Duration::from_secs(seconds);
        let mut round = 0;
        loop {
            for fault in rng.shuffled().into_iter().filter(|f| chosen.contains(f)) {
                if crate::exit::interrupted() || (round > 0 && self.started.elapsed() >= deadline) {
                    return;
                }
                let began = Instant::now();
                let (detected, note) = match fault {
                    Fault::KillAgent => self.kill_agent(&mut rng),
                    Fault::KillRelay => self.kill_relay(&mut rng, false),
                    Fault::KillInPartition => self.kill_relay(&mut rng, true),
                    Fault::Stall => self.stall(&mut rng),
                    Fault::Flood => self.flood(&mut rng),
                    Fault::Corrupt => self.corrupt(&mut rng),
                    Fault::CorruptHeader => self.corrupt_header(&mut rng),
                    Fault::CorruptRelayedHeader => self.corrupt_relayed_header(&mut rng),
                    Fault::Partition => self.partition(),
                    Fault::KillAgentInPartition => self.kill_agent_in_partition(&mut rng),
                    Fault::StallDuringFlood => self.stall_during_flood(&mut rng),
                };
                let tally = &mut self.faults.iter_mut().find(|(f, _)| *f == fault).expect("a known fault").1;
                tally.injected += 1;
                if detected {
                    tally.detected += 1;
                } else {
                    tally.violations.push(format!("{}: not seen in the metrics: {note}", fault.label()));
                }
                self.say(&format!(
                    "{}: {note}{} ({:.1} s)",
                    fault.label(),
                    if detected { "" } else { " — NOT DETECTED" },
                    began.elapsed().as_secs_f64()
                ));
                self.sleep(Duration::from_millis(1500));
            }
            round += 1;
            if chosen.is_empty() {
                self.sleep(deadline.saturating_sub(self.started.elapsed()));
            }
            if self.started.elapsed() >= deadline || crate::exit::interrupted() {
                return;
            }
        }
    }

    fn kill_agent(&mut self, rng: &mut Rng) -> (bool, String) {
        let i = rng.below(self.agents.len());
        let killed = match self.kill_and_restart(i) {
            Ok(k) => k,
            Err(e) => return (false, e),
        };
        let back = self.back_again(&killed, Duration::from_secs(15));
        (killed.dead && back, self.kill_note(&killed, back))
    }

    /// `kill -9` of agent `i`, seen dead in its ring's attachments, and its restart.
    fn kill_and_restart(&mut self, i: usize) -> Result<Killed, String> {
        let (ring, side) = (self.agents[i].ring, self.agents[i].side);
        let pid = self.agents[i].proc.pid();
        self.agents[i].proc.kill_9();
        let dead = self.wait_until(
            Duration::from_secs(3),
            |w| matches!(w.side_state(ring, side), PeerState::Dead(id) if id.pid == pid),
        );
        std::thread::sleep(Duration::from_millis(200));
        let before = Killed::moved(side, &self.status(ring));
        if let Err(e) = self.agents[i].proc.start() {
            return Err(format!("restarting {}: {e}", self.agents[i].proc.name));
        }
        Ok(Killed { i, ring, side, pid, new: self.agents[i].proc.pid(), dead, before })
    }

    /// The restarted agent holds its side of the ring and moves it on, within `timeout`.
    fn back_again(&mut self, k: &Killed, timeout: Duration) -> bool {
        let (ring, side, new, before) = (k.ring, k.side, k.new, k.before);
        self.wait_until(timeout, |w| {
            matches!(w.side_state(ring, side), PeerState::Attached(id) if id.pid == new)
                && Killed::moved(side, &w.status(ring)) > before
        })
    }

    fn kill_note(&self, k: &Killed, back: bool) -> String {
        format!(
            "{} (pid {}) killed: ring {} {} {}; restarted as pid {}: {}",
            self.agents[k.i].proc.name,
            k.pid,
            self.rings[k.ring].0,
            if k.side == Side::Producer { "producer" } else { "consumer" },
            if k.dead { "seen dead" } else { "never seen dead" },
            k.new,
            if back { "attached and moving again" } else { "not moving again" }
        )
    }

    /// A partition, and meanwhile a `kill -9` of a random agent and its restart: the agent must
    /// be back and the relayed stream flowing (with resends) once the partition heals.
    fn kill_agent_in_partition(&mut self, rng: &mut Rng) -> (bool, String) {
        let resends_before = self.metric(A, "tadpole_relay_resends_total").unwrap_or(0);
        let cut_at = Instant::now();
        let how = match self.cut(true) {
            Ok(how) => how,
            Err(e) => return (false, e),
        };
        self.sleep(PARTITION / 3);
        let i = rng.below(self.agents.len());
        let killed = self.kill_and_restart(i);
        self.sleep(PARTITION.saturating_sub(cut_at.elapsed()));
        if let Err(e) = self.cut(false) {
            return (false, e);
        }
        let killed = match killed {
            Ok(k) => k,
            Err(e) => return (false, e),
        };
        let next_at_heal = self.agents[C_CROSS].slots.get(slots::NEXT_EXPECTED);
        // A relayed agent cannot move its ring on before the heal (the ring fills, or nothing
        // arrives): it is judged after it.
        let back = self.back_again(&killed, Duration::from_secs(20));
        let resends =
            |w: &World| w.metric(A, "tadpole_relay_resends_total").unwrap_or(0).saturating_sub(resends_before);
        let flowing = self.wait_until(Duration::from_secs(30), |w| {
            resends(w) > 0 && w.agents[C_CROSS].slots.get(slots::NEXT_EXPECTED) > next_at_heal
        });
        (
            killed.dead && back && flowing,
            format!(
                "{how} for {PARTITION:?}, during it {}; after it relay-a resends_total +{}, c-cross {}",
                self.kill_note(&killed, back),
                resends(self),
                if flowing { "receiving again" } else { "NOT receiving again" }
            ),
        )
    }

    /// `kill -9` of a relay and its restart; `in_partition`: in the middle of a partition,
    /// so the new process starts cut off from its peer.
    fn kill_relay(&mut self, rng: &mut Rng, in_partition: bool) -> (bool, String) {
        let r = rng.below(2);
        let resends_before = self.metric(A, "tadpole_relay_resends_total").unwrap_or(0);
        let committed_before = self.metric(B, "tadpole_relay_records_committed_total").unwrap_or(0);
        if in_partition {
            if let Err(e) = self.cut(true) {
                return (false, e);
            }
            self.sleep(PARTITION / 2);
        }
        let pid = self.link.relays[r].proc.pid();
        self.link.relays[r].proc.kill_9();
        // Relay a consumes ring xout; relay b produces into ring xin.
        let (ring, side) = if r == A { (XOUT, Side::Consumer) } else { (XIN, Side::Producer) };
        let dead = self.wait_until(
            Duration::from_secs(3),
            |w| matches!(w.side_state(ring, side), PeerState::Dead(id) if id.pid == pid),
        );
        std::thread::sleep(Duration::from_millis(300));
        if let Err(e) = self.link.relays[r].proc.start() {
            return (false, format!("restarting relay: {e}"));
        }
        let next_at_heal = if in_partition {
            self.sleep(PARTITION / 2);
            if let Err(e) = self.cut(false) {
                return (false, e);
            }
            Some(self.agents[C_CROSS].slots.get(slots::NEXT_EXPECTED))
        } else {
            None
        };
        let name = self.link.relays[r].proc.name.clone();
        let (back, how) = if r == A {
            // The new sender process reconnected and the far side acknowledged it.
            let back = self.wait_until(Duration::from_secs(20), |w| {
                w.metric(A, "tadpole_relay_acks_total").is_some_and(|n| n > 0)
            });
            (back, "the new relay-a's acks_total > 0".to_owned())
        } else {
            // The new receiver process (its counters start over: a restart, as Prometheus sees
            // one) holds the ring again and commits what the sender resumed sending. The sender
            // resends only if a DATA message was in flight when the receiver died.
            let new = self.link.relays[B].proc.pid();
            let back = self.wait_until(Duration::from_secs(20), |w| {
                matches!(w.side_state(XIN, Side::Producer), PeerState::Attached(id) if id.pid == new)
                    && w.metric(B, "tadpole_relay_records_committed_total").is_some_and(|n| n > 0)
            });
            let resends = self.metric(A, "tadpole_relay_resends_total").unwrap_or(0).saturating_sub(resends_before);
            let committed = self.metric(B, "tadpole_relay_records_committed_total").unwrap_or(0);
            let how = format!(
                "ring xin producer attached to the new pid {new}, relay-b records_committed_total \
                 {committed_before} -> {committed} (relay-a resends +{resends})"
            );
            (back, how)
        };
        // After a partition the stream must also flow end to end again.
        let flowing = next_at_heal.is_none_or(|next| {
            self.wait_until(Duration::from_secs(30), |w| w.agents[C_CROSS].slots.get(slots::NEXT_EXPECTED) > next)
        });
        let how = if in_partition {
            format!("{how}; after the partition c-cross {}", if flowing { "receiving again" } else { "NOT receiving" })
        } else {
            how
        };
        (
            dead && back && flowing,
            format!(
                "{name} (pid {pid}) killed: ring {} side {}; restarted: {how}: {}",
                self.rings[ring].0,
                if dead { "seen dead" } else { "never seen dead" },
                if back { "yes" } else { "no" }
            ),
        )
    }

    fn stall(&mut self, rng: &mut Rng) -> (bool, String) {
        let i = self.random_pair(rng).1;
        let ring = self.agents[i].ring;
        self.agents[i].proc.signal(libc::SIGSTOP);
        self.sleep(Duration::from_millis(200));
        let before = self.status(ring);
        self.sleep(STALL);
        let during = self.status(ring);
        self.agents[i].proc.signal(libc::SIGCONT);
        let stalled = during.head == before.head && during.tail > during.head;
        let resumed = self.wait_until(Duration::from_secs(10), |w| w.status(ring).head > during.head);
        (
            stalled && resumed,
            format!(
                "{} stopped {STALL:?}: ring {} head {} ({} bytes waiting), then {}",
                self.agents[i].proc.name,
                self.rings[ring].0,
                if during.head == before.head { "stood still" } else { "moved" },
                during.used_bytes(),
                if resumed { "moved again" } else { "never moved again" }
            ),
        )
    }

    fn flood(&mut self, rng: &mut Rng) -> (bool, String) {
        let (p, c) = self.random_pair(rng);
        let ring = self.agents[p].ring;
        let full_before = self.status(ring).produced.full_events;
        // The ring's consumer (relay a, or the local consumer) pauses while the flood starts,
        // so the flood meets a full ring whatever the machine's speed.
        let pause = |w: &mut World, signal| {
            if p == P_CROSS { w.link.relays[A].proc.signal(signal) } else { w.agents[c].proc.signal(signal) }
        };
        pause(self, libc::SIGSTOP);
        let asked = self.agents[p].slots.get(slots::FLOOD_ASKED) + FLOOD_RECORDS;
        self.agents[p].slots.set(slots::FLOOD_ASKED, asked);
        self.sleep(Duration::from_millis(700));
        pause(self, libc::SIGCONT);
        let sent = self.wait_until(Duration::from_secs(30), |w| w.agents[p].slots.get(slots::FLOOD_SENT) >= asked);
        let full = self.status(ring).produced.full_events - full_before;
        (
            sent && full > 0,
            format!(
                "{} sent {FLOOD_RECORDS} records back to back{}; ring {} full_events +{full}",
                self.agents[p].proc.name,
                if sent { "" } else { " (not all within 30 s)" },
                self.rings[ring].0
            ),
        )
    }

    /// A consumer stopped for [`STALL`] while a producer (of any pair, its own included) floods:
    /// the stall must show (its ring's head stands still with records waiting, then moves again)
    /// and so must the flood (every record sent, the ring full at least once).
    fn stall_during_flood(&mut self, rng: &mut Rng) -> (bool, String) {
        let stalled = self.random_pair(rng).1;
        let (p, c) = self.random_pair(rng);
        let (stall_ring, flood_ring) = (self.agents[stalled].ring, self.agents[p].ring);
        let full_before = self.status(flood_ring).produced.full_events;
        // The flooded ring's consumer pauses while the flood starts, as in `flood`, unless it is
        // the stalled consumer (then the stall is the pause).
        let pauses_relay = p == P_CROSS;
        let pause = |w: &mut World, signal| {
            if pauses_relay {
                w.link.relays[A].proc.signal(signal);
            } else if c != stalled {
                w.agents[c].proc.signal(signal);
            }
        };
        self.agents[stalled].proc.signal(libc::SIGSTOP);
        pause(self, libc::SIGSTOP);
        let asked = self.agents[p].slots.get(slots::FLOOD_ASKED) + FLOOD_RECORDS;
        self.agents[p].slots.set(slots::FLOOD_ASKED, asked);
        self.sleep(Duration::from_millis(200));
        let before = self.status(stall_ring);
        self.sleep(Duration::from_millis(500));
        pause(self, libc::SIGCONT);
        self.sleep(STALL.saturating_sub(Duration::from_millis(500)));
        let during = self.status(stall_ring);
        self.agents[stalled].proc.signal(libc::SIGCONT);
        let stood = during.head == before.head && during.tail > during.head;
        let resumed = self.wait_until(Duration::from_secs(10), |w| w.status(stall_ring).head > during.head);
        let sent = self.wait_until(Duration::from_secs(30), |w| w.agents[p].slots.get(slots::FLOOD_SENT) >= asked);
        let full = self.status(flood_ring).produced.full_events - full_before;
        (
            stood && resumed && sent && full > 0,
            format!(
                "{} stopped {STALL:?} (ring {} head {}, {} bytes waiting, then {}) while {} sent {FLOOD_RECORDS} \
                 records back to back{} (ring {} full_events +{full})",
                self.agents[stalled].proc.name,
                self.rings[stall_ring].0,
                if during.head == before.head { "stood still" } else { "moved" },
                during.used_bytes(),
                if resumed { "moved again" } else { "never moved again" },
                self.agents[p].proc.name,
                if sent { "" } else { " (not all within 30 s)" },
                self.rings[flood_ring].0
            ),
        )
    }

    /// Writes a bad header over a record a local consumer has not read, checks the consumer
    /// refuses exactly that header (and stays up), then replaces the dead ring and counts the
    /// records left in it.
    fn corrupt_header(&mut self, rng: &mut Rng) -> (bool, String) {
        // Local pairs only: a relay at either end of a dead ring would need restarting too.
        let k = 1 + rng.below(self.agents.len() / 2 - 1);
        let (p, c) = (2 * k, 2 * k + 1);
        let ring = self.agents[p].ring;
        let (refused0, corrupt0) =
            (self.agents[c].slots.get(slots::RING_CORRUPT), self.status(ring).consumed.corrupt_records);
        let kind = HeaderDamage::ALL[rng.below(HeaderDamage::ALL.len())];
        self.agents[c].proc.signal(libc::SIGSTOP);
        let written = self.damage_header(ring, kind, rng, None);
        self.agents[c].proc.signal(libc::SIGCONT);
        let (position, old, new, _) = match written {
            Ok(w) => w,
            Err(e) => return (false, e),
        };
        let refused = self.wait_until(Duration::from_secs(10), |w| {
            w.agents[c].slots.get(slots::RING_CORRUPT) > refused0 && w.status(ring).consumed.corrupt_records > corrupt0
        });
        let at = self.agents[c].slots.get(slots::CORRUPT_POSITION);
        let exact = refused && at == position;
        let consumer_up = self.agents[c].proc.exited().is_none();
        let first_behind = self.agents[c].slots.get(slots::CORRUPT_NEXT);
        // An operator's repair: a new ring under the same name; both agents move to it.
        let name = self.rings[ring].0.clone();
        let generation = match self.replace_ring(ring, &[p, c]) {
            Ok(generation) => generation,
            Err(e) => return (false, e),
        };
        let moved = self.wait_until(Duration::from_secs(15), |w| {
            [p, c].iter().all(|&i| w.agents[i].slots.get(slots::GENERATION_OPEN) >= generation)
                && w.status(ring).head > 0
        });
        let left_at = self.agents[p].slots.get(slots::LEFT_AT_SEQ);
        let stranded = left_at.saturating_sub(first_behind);
        self.headers_corrupted[k] += 1;
        self.stranded[k] += stranded;
        (
            exact && consumer_up && moved,
            format!(
                "{} header at {position} of ring {name} {old:#018x} -> {new:#018x}: {} {}{}; ring replaced, {}; \
                 records {first_behind}..{left_at} ({stranded}) left in the dead ring",
                kind.name(),
                self.agents[c].proc.name,
                if !refused {
                    "did not refuse it".to_owned()
                } else if exact {
                    "refused it (corrupt_records +1)".to_owned()
                } else {
                    format!("refused a header at {at} instead")
                },
                if consumer_up { " and stayed up" } else { " and EXITED" },
                if moved { "both agents on the new one and records moving" } else { "the agents did NOT move to it" }
            ),
        )
    }

    /// Writes a bad header over a record of ring `xout` that relay `a` has not read, checks the
    /// relay counts it once and stops the route, then replaces the ring as an operator would and
    /// checks the relay goes on from the new ring by itself, records flowing through both relays
    /// again; counts the records left in the dead ring.
    fn corrupt_relayed_header(&mut self, rng: &mut Rng) -> (bool, String) {
        let (p, c, ring) = (P_CROSS, C_CROSS, XOUT);
        let corrupt_metric = "tadpole_relay_source_corrupt_records_total";
        let blocked_metric = "tadpole_relay_source_blocked";
        let Some(corrupt0) = self.metric(A, corrupt_metric) else {
            return (false, "relay-a's /metrics did not answer".to_owned());
        };
        let kind = HeaderDamage::ALL[rng.below(HeaderDamage::ALL.len())];
        // Stopped, relay a reads nothing: every record committed from now on is unread by it.
        let relay = self.link.relays[A].proc.pid();
        self.link.relays[A].proc.signal(libc::SIGSTOP);
        let stopped = self.wait_until(Duration::from_secs(2), |_| process_stopped(relay));
        let from = self.status(ring).tail;
        let written = if stopped {
            self.damage_header(ring, kind, rng, Some(from))
        } else {
            Err("relay-a did not stop on SIGSTOP".to_owned())
        };
        self.link.relays[A].proc.signal(libc::SIGCONT);
        let (position, old, new, seq) = match written {
            Ok(w) => w,
            Err(e) => return (false, e),
        };
        let Some(first_behind) = seq else {
            return (false, format!("the record damaged at {position} is no envelope of p-cross"));
        };
        let refused = self.wait_until(Duration::from_secs(10), |w| {
            w.metric(A, blocked_metric) == Some(1) && w.metric(A, corrupt_metric).is_some_and(|n| n > corrupt0)
        });
        let counted = self.metric(A, corrupt_metric).unwrap_or(0).saturating_sub(corrupt0);
        let exact = refused && counted == 1;
        // The operator's repair: a new ring under the same name; the producer moves to it, and
        // relay a finds it by itself.
        let name = self.rings[ring].0.clone();
        let generation = match self.replace_ring(ring, &[p]) {
            Ok(generation) => generation,
            Err(e) => return (false, e),
        };
        let moved = self.wait_until(Duration::from_secs(15), |w| {
            w.agents[p].slots.get(slots::GENERATION_OPEN) >= generation
                && w.metric(A, blocked_metric) == Some(0)
                && w.agents[c].slots.get(slots::NEXT_EXPECTED) > w.agents[p].slots.get(slots::LEFT_AT_SEQ)
        });
        let left_at = self.agents[p].slots.get(slots::LEFT_AT_SEQ);
        let stranded = left_at.saturating_sub(first_behind);
        self.headers_corrupted[0] += 1;
        self.stranded[0] += stranded;
        if exact {
            self.relay_refused_headers += 1;
        }
        (
            exact && moved,
            format!(
                "{} header at {position} of ring {name} {old:#018x} -> {new:#018x} (record {first_behind}): relay-a {}; \
                 ring replaced, {}; records {first_behind}..{left_at} ({stranded}) left in the dead ring",
                kind.name(),
                if !refused {
                    "did not stop the route".to_owned()
                } else if exact {
                    "source_corrupt_records +1, source_blocked 1".to_owned()
                } else {
                    format!("source_corrupt_records +{counted}")
                },
                if moved {
                    "relay-a on the new one (source_blocked 0) and c-cross receiving again"
                } else {
                    "relay-a or p-cross did NOT move to it, or nothing crossed"
                }
            ),
        )
    }

    /// Writes `kind` of damage over the header of a committed record the (stopped) consumer of
    /// `ring` has not read: with `from` `None`, the record after the one at its head (it may hold
    /// that one); with `Some(position)`, the first record at or after it that is a valid
    /// envelope. Waits up to 2 s for such a record. Returns the position, the old and new header
    /// word, and the sequence number of the damaged record when it is a valid envelope.
    fn damage_header(
        &mut self,
        ring: usize,
        kind: HeaderDamage,
        rng: &mut Rng,
        from: Option<u64>,
    ) -> Result<(u64, u64, u64, Option<u64>), String> {
        use std::os::unix::fs::FileExt;
        let name = &self.rings[ring].0;
        let path = format!("/dev/shm/{}{name}", ipc_core::NAME_PREFIX);
        let file =
            std::fs::OpenOptions::new().read(true).write(true).open(&path).map_err(|e| format!("{path}: {e}"))?;
        let started = Instant::now();
        loop {
            std::thread::sleep(HEADER_WINDOW);
            let status = self.status(ring);
            let bounds = ipc_core::layout::RecordBounds {
                capacity: status.capacity,
                max_message_len: status.max_message_len,
                payload_align: status.payload_align.bytes(),
            };
            let limit = ipc_core::layout::producer_limit(status.head, status.capacity);
            let word_at = |pos: u64| -> Result<u64, String> {
                let mut bytes = [0u8; 8];
                let offset = ipc_core::layout::HEADER_LEN as u64 + (pos & (status.capacity - 1));
                file.read_exact_at(&mut bytes, offset).map_err(|e| format!("reading {path}: {e}"))?;
                Ok(u64::from_le_bytes(bytes))
            };
            let seq_at = |pos: u64, header: &ipc_core::layout::RecordHeader| -> Result<Option<u64>, String> {
                let mut payload = vec![0u8; header.payload_len as usize];
                let offset = ipc_core::layout::HEADER_LEN as u64
                    + ((pos + ipc_core::layout::RECORD_HEADER_LEN) & (status.capacity - 1));
                file.read_exact_at(&mut payload, offset).map_err(|e| format!("reading {path}: {e}"))?;
                Ok(agent::check(&payload))
            };
            let target = match from {
                None => match ipc_core::layout::check_record(status.head, word_at(status.head)?, bounds, limit) {
                    Ok(Some(first)) => Some(first.end),
                    _ => None,
                },
                // The committed records from the head on, up to the first valid envelope at or
                // after `from` (the ring's producer writes them in order; nothing here is hostile).
                Some(from) => {
                    let (mut pos, mut found) = (status.head, None);
                    while pos < status.tail {
                        match ipc_core::layout::check_record(pos, word_at(pos)?, bounds, limit) {
                            Ok(Some(r)) if pos >= from && !r.header.padding && seq_at(pos, &r.header)?.is_some() => {
                                found = Some(pos);
                                break;
                            }
                            Ok(Some(r)) => pos = r.end,
                            _ => break,
                        }
                    }
                    found
                }
            };
            if let Some(target) = target {
                let word = word_at(target)?;
                if let (true, Ok(Some(record))) =
                    (target < status.tail, ipc_core::layout::check_record(target, word, bounds, limit))
                {
                    let seq = if record.header.padding { None } else { seq_at(target, &record.header)? };
                    let new = kind.apply(word, status.max_message_len, rng);
                    let offset = ipc_core::layout::HEADER_LEN as u64 + (target & (status.capacity - 1));
                    file.write_all_at(&new.to_le_bytes(), offset).map_err(|e| format!("writing {path}: {e}"))?;
                    return Ok((target, word, new, seq));
                }
            }
            if started.elapsed() > Duration::from_secs(2) {
                return Err(format!("ring {name}: no unread record to damage within 2 s"));
            }
        }
    }

    fn corrupt(&mut self, rng: &mut Rng) -> (bool, String) {
        let (p, c) = self.random_pair(rng);
        let made = |w: &World| (w.agents[p].slots.get(slots::GARBAGE_SENT), w.agents[p].slots.get(slots::BAD_SUM_SENT));
        let (garbage0, bad0) = made(self);
        let refused0 = self.agents[c].slots.get(slots::REFUSED);
        let dead_letters0 = self.metric(A, "tadpole_relay_dead_letters_total").unwrap_or(0);
        self.agents[p].slots.add(slots::CORRUPT_ASKED, CORRUPT_RECORDS);
        let asked = self.agents[p].slots.get(slots::CORRUPT_ASKED);
        self.wait_until(Duration::from_secs(10), |w| {
            let (g, b) = made(w);
            g + b >= asked
        });
        let (garbage, bad) = (made(self).0 - garbage0, made(self).1 - bad0);
        let name = self.agents[p].proc.name.clone();
        if p != P_CROSS {
            let seen = self.wait_until(Duration::from_secs(10), |w| {
                w.agents[c].slots.get(slots::REFUSED) - refused0 >= garbage + bad
            });
            let refused = self.agents[c].slots.get(slots::REFUSED) - refused0;
            (
                seen,
                format!(
                    "{name} committed {garbage} garbage + {bad} bad-checksum records; {} refused {refused}",
                    self.agents[c].proc.name
                ),
            )
        } else {
            // Garbage is no envelope: relay b refuses it and relay a dead-letters it. A bad
            // checksum is a valid envelope: it crosses and the consumer refuses it.
            let seen = self.wait_until(Duration::from_secs(20), |w| {
                w.agents[c].slots.get(slots::REFUSED) - refused0 >= bad
                    && w.metric(A, "tadpole_relay_dead_letters_total")
                        .is_some_and(|n| n.saturating_sub(dead_letters0) >= garbage)
            });
            let refused = self.agents[c].slots.get(slots::REFUSED) - refused0;
            let dead = self.metric(A, "tadpole_relay_dead_letters_total").unwrap_or(0).saturating_sub(dead_letters0);
            (
                seen,
                format!(
                    "{name} committed {garbage} garbage + {bad} bad-checksum records; relay-a dead_letters_total +{dead}, c-cross refused {refused}"
                ),
            )
        }
    }

    fn partition(&mut self) -> (bool, String) {
        let resends_before = self.metric(A, "tadpole_relay_resends_total").unwrap_or(0);
        let how = match self.cut(true) {
            Ok(how) => how,
            Err(e) => return (false, e),
        };
        self.sleep(PARTITION);
        if let Err(e) = self.cut(false) {
            return (false, e);
        }
        let next_at_heal = self.agents[C_CROSS].slots.get(slots::NEXT_EXPECTED);
        let resends =
            |w: &World| w.metric(A, "tadpole_relay_resends_total").unwrap_or(0).saturating_sub(resends_before);
        let seen = self.wait_until(Duration::from_secs(30), |w| {
            resends(w) > 0 && w.agents[C_CROSS].slots.get(slots::NEXT_EXPECTED) > next_at_heal
        });
        (
            seen,
            format!(
                "{how} for {PARTITION:?}; relay-a resends_total +{}, c-cross {}",
                resends(self),
                if self.agents[C_CROSS].slots.get(slots::NEXT_EXPECTED) > next_at_heal {
                    "receiving again"
                } else {
                    "not receiving again"
                }
            ),
        )
    }

    /// Starts (`down`) or ends a partition between the relays: the veth down, or on loopback
    /// relay-b stopped (a relay restarted meanwhile is continued, which it does not mind).
    fn cut(&mut self, down: bool) -> Result<&'static str, String> {
        if self.net.is_namespaces() {
            self.net.set_link(!down)?;
            Ok("veth down")
        } else {
            self.link.relays[B].proc.signal(if down { libc::SIGSTOP } else { libc::SIGCONT });
            Ok("relay-b stopped")
        }
    }

    /// Stops the producers, waits for every record to arrive, stops everything, then checks.
    fn finish(&mut self) {
        let pairs: Vec<(usize, usize)> = self.pairs().collect();
        for &(p, _) in &pairs {
            self.agents[p].slots.set(slots::STOP, 1);
        }
        for &(p, _) in &pairs {
            self.agents[p].proc.finish(Duration::from_secs(5));
        }
        let targets: Vec<u64> = pairs.iter().map(|&(p, _)| self.agents[p].slots.get(slots::NEXT_SEQ)).collect();
        let drained = self.wait_until(DRAIN, |w| {
            pairs.iter().zip(&targets).all(|(&(_, c), &t)| w.agents[c].slots.get(slots::NEXT_EXPECTED) >= t)
        });
        if !drained {
            self.say(&format!("not every record arrived within {DRAIN:?} of the end"));
        }
        for &(_, c) in &pairs {
            self.agents[c].slots.set(slots::STOP, 1);
        }
        for &(_, c) in &pairs {
            self.agents[c].proc.finish(Duration::from_secs(5));
        }
        for r in [A, B] {
            self.link.relays[r].proc.signal(libc::SIGTERM);
            self.link.relays[r].proc.finish(Duration::from_secs(5));
        }

        let receiver_kills = self.link.relays[B].proc.kills;
        for (k, (&(p, c), &target)) in pairs.iter().zip(&targets).enumerate() {
            let stream = if p == P_CROSS { "cross-host".to_owned() } else { local_name("local", p / 2) };
            let (ps, cs) = (&self.agents[p].slots, &self.agents[c].slots);
            let next = cs.get(slots::NEXT_EXPECTED);
            let lost = cs.get(slots::LOST) + target.saturating_sub(next);
            let repeats = cs.get(slots::DUPLICATES);
            let distance = cs.get(slots::MAX_REPEAT_DISTANCE);
            let refused = cs.get(slots::REFUSED);
            let (garbage, bad) = (ps.get(slots::GARBAGE_SENT), ps.get(slots::BAD_SUM_SENT));
            // What the protocol allows: one record again per kill of either agent (killed
            // between commit and bookkeeping), one DATA message per kill of the receiving relay.
            let agent_kills = self.agents[p].proc.kills + self.agents[c].proc.kills;
            let relay_repeats = if p == P_CROSS { RECEIVER_KILL_REPEATS * receiver_kills } else { 0 };
            let budget = agent_kills + relay_repeats;
            let window = if relay_repeats > 0 { RECEIVER_KILL_REPEATS } else { 1 };
            // Garbage never reaches the cross-host consumer: relay b refuses it.
            let corrupt_in = if p == P_CROSS { bad } else { garbage + bad };
            // A ring dead of a corrupt header loses what was left in it, and nothing else may go.
            let (headers, stranded) = (self.headers_corrupted[k], self.stranded[k]);
            // The cross-host pair's ring is read by relay a, which counts what it refuses.
            let ring_refused = if p == P_CROSS { self.relay_refused_headers } else { cs.get(slots::RING_CORRUPT) };
            let dead_rings = if headers > 0 {
                format!(
                    ", {ring_refused} corrupt headers refused of {headers} written ({stranded} records left in the dead rings)"
                )
            } else {
                String::new()
            };
            println!(
                "  {stream}: {target} records produced, {} received once, {repeats} repeats (allowed {budget}, \
                 farthest {distance} back, allowed {window}), {lost} lost, {refused} refused ({corrupt_in} corrupt committed){dead_rings}",
                cs.get(slots::RECEIVED)
            );
            let mut v = Vec::new();
            if lost > stranded {
                let beyond = if stranded > 0 {
                    format!(", {stranded} of them left in rings dead of a corrupt header")
                } else {
                    String::new()
                };
                v.push((
                    "delivery",
                    format!("{stream}: {lost} records lost (next expected {next} of {target}){beyond}"),
                ));
            } else if lost < stranded {
                v.push((
                    "delivery",
                    format!("{stream}: {stranded} records were left in rings dead of a corrupt header, but {lost} are missing"),
                ));
            }
            if repeats > budget {
                v.push(("repeats", format!("{stream}: {repeats} repeats, the faults allow {budget}")));
            }
            if distance > window {
                v.push((
                    "repeats",
                    format!("{stream}: a record repeated {distance} behind, the protocol allows {window}"),
                ));
            }
            if refused < corrupt_in {
                v.push((
                    "checksums",
                    format!("{stream}: {corrupt_in} corrupt records committed, only {refused} refused"),
                ));
            }
            if refused > corrupt_in + budget {
                v.push((
                    "checksums",
                    format!("{stream}: {refused} records refused, only {corrupt_in} corrupt ones committed"),
                ));
            }
            if ring_refused != headers {
                v.push((
                    "checksums",
                    format!("{stream}: the ring refused {ring_refused} corrupt record headers, {headers} were written"),
                ));
            }
            for (check, note) in v {
                self.check(check).violations.push(note);
            }
        }
    }

    /// Prints the summary table; returns the number of violations.
    fn summary(&self) -> usize {
        println!();
        println!("  {:<24} {:>9} {:>9} {:>11}", "fault / check", "injected", "detected", "violations");
        let mut all = Vec::new();
        for (fault, t) in &self.faults {
            println!("  {:<24} {:>9} {:>9} {:>11}", fault.label(), t.injected, t.detected, t.violations.len());
            all.extend(&t.violations);
        }
        for (check, t) in &self.checks {
            println!("  {check:<24} {:>9} {:>9} {:>11}", "-", "-", t.violations.len());
            all.extend(&t.violations);
        }
        let peaks: Vec<String> = self
            .agents
            .iter()
            .map(|a| &a.proc)
            .chain(self.link.relays.iter().map(|r| &r.proc))
            .map(|p| format!("{} {:.1}", p.name, p.peak_rss_kib as f64 / 1024.0))
            .collect();
        println!("  peak RSS, MiB: {}", peaks.join(", "));
        for v in &all {
            println!("  VIOLATION: {v}");
        }
        if all.is_empty() {
            println!("  no violations");
        }
        all.len()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // The relays and their checkpoints go with `link`, the rings with `rings`, the
        // namespaces with `net`.
        for proc in self.procs() {
            proc.signal(libc::SIGCONT);
            proc.kill_9();
        }
    }
}

/// The `k`th local pair's name for `base`: `base` for the first, `base2`, `base3`, … after it.
fn local_name(base: &str, k: usize) -> String {
    if k == 1 { base.to_owned() } else { format!("{base}{k}") }
}

/// Whether `pid` is stopped (by a signal), from /proc.
fn process_stopped(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses and may hold spaces.
    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) == Some("T")
}

/// Resident memory of `pid`, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
