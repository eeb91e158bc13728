//! `tadpole chaos`: real agent and relay processes under injected faults, checked for what
//! Tadpole promises (`ipc-zmq/PROTOCOL.md`): at-least-once delivery in order (no gap once the
//! faults are over, repeats only where and as many as the protocol allows), no corruption, bounded
//! memory, and every fault visible in the metrics an operator has (the relays' `/metrics`, the
//! rings' counters and attachments in shared memory).
//!
//! The world: producer `p-cross` → ring `xout` → relay `a` → (ZeroMQ + CURVE, across two network
//! namespaces when root) → relay `b` (envelope route) → ring `xin` → consumer `c-cross`; and
//! producer `p-local` → ring `local` → consumer `c-local`. Every agent is a `tadpole chaos-agent`
//! process (`agent.rs`); every relay a `tadpole relay`. Faults come one at a time, in a random
//! order drawn from the seed, each followed by a wait for its trace in the metrics.

pub mod agent;
mod net;
mod slots;

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipc_core::{PeerState, RingBuilder, RingStatus, Segment, Side};
use ipc_zmq::keys::KeyPair;

use net::{Net, http_get, metric};
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
    /// partition, kill-in-partition), or `none` (traffic and checks only).
    #[arg(long, value_delimiter = ',', value_name = "FAULTS")]
    faults: Vec<String>,
    /// Test only: a producer skips one sequence number behind the checks' back, which they must
    /// report as a violation.
    #[arg(long, hide = true)]
    inject_loss: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    KillAgent,
    KillRelay,
    Stall,
    Flood,
    Corrupt,
    Partition,
    KillInPartition,
}

const FAULTS: [Fault; 7] = [
    Fault::KillAgent,
    Fault::KillRelay,
    Fault::Stall,
    Fault::Flood,
    Fault::Corrupt,
    Fault::Partition,
    Fault::KillInPartition,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillAgent => "kill-agent",
            Fault::KillRelay => "kill-relay",
            Fault::Stall => "stall",
            Fault::Flood => "flood",
            Fault::Corrupt => "corrupt",
            Fault::Partition => "partition",
            Fault::KillInPartition => "kill-in-partition",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Fault::KillAgent => "kill -9 agent",
            Fault::KillRelay => "kill -9 relay",
            Fault::Stall => "stalled consumer",
            Fault::Flood => "producer flood",
            Fault::Corrupt => "corrupt records",
            Fault::Partition => "partition",
            Fault::KillInPartition => "kill -9 in partition",
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

/// A child process the harness starts, kills and restarts.
struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
    kills: u64,
    peak_rss_kib: u64,
    over_memory: bool,
}

impl Proc {
    fn new(name: &str, program: &Path, args: Vec<OsString>, dir: &Path) -> Proc {
        Proc {
            name: name.to_owned(),
            program: program.to_owned(),
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
            kills: 0,
            peak_rss_kib: 0,
            over_memory: false,
        }
    }

    fn start(&mut self) -> Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        // A process group of its own: a Ctrl-C of the harness does not reach it (the harness
        // stops it); and killed with the harness if that dies first.
        let mut command = Command::new(&self.program);
        // SAFETY: the closure runs between fork and exec and only calls prctl, which is
        // async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = command
            .args(&self.args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory preconditions; the pid is our unreaped child's, so it
            // names no other process.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }

    /// `kill -9`, and the zombie reaped (until then the kernel still shows the pid alive).
    fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let started = Instant::now();
            let _ = child.kill();
            let _ = child.wait();
            self.kills += 1;
            if started.elapsed() > Duration::from_secs(5) {
                println!("  note: {} took {:.1?} to die of SIGKILL", self.name, started.elapsed());
            }
        }
    }

    /// Waits up to `within` for the process to exit (after a stop request), then kills it.
    fn finish(&mut self, within: Duration) {
        let Some(mut child) = self.child.take() else { return };
        let started = Instant::now();
        while started.elapsed() < within {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The exit status if the process ended by itself.
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // A stopped child must run again to die of SIGKILL cleanly in every case.
            // SAFETY: the pid is our unreaped child's.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The agents, by index into `World::agents`.
const P_CROSS: usize = 0;
const C_CROSS: usize = 1;
const P_LOCAL: usize = 2;
const C_LOCAL: usize = 3;
/// The rings, by index into `World::rings`.
const XOUT: usize = 0;
const XIN: usize = 1;
const LOCAL: usize = 2;
/// The relays, by index into `World::relays`.
const A: usize = 0;
const B: usize = 1;

struct AgentProc {
    proc: Proc,
    side: Side,
    ring: usize,
    slots: Slots,
}

struct RelayProc {
    proc: Proc,
    which: char,
    health: String,
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
    relays: Vec<RelayProc>,
    rings: Vec<(String, Segment)>,
    net: Net,
    dir: PathBuf,
    /// The relays' checkpoint files, removed at the end.
    state_files: Vec<PathBuf>,
    started: Instant,
    faults: Vec<(Fault, Tally)>,
    checks: Vec<(&'static str, Tally)>,
    max_rss_kib: u64,
    last_sample: Instant,
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

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
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

        let rings = vec![
            (format!("chaos-{pid}-xout"), 256 << 10),
            (format!("chaos-{pid}-xin"), 256 << 10),
            (format!("chaos-{pid}-local"), 64 << 10),
        ];
        let rings = rings
            .into_iter()
            .map(|(name, capacity)| Ok((name.clone(), make_ring(&name, capacity)?)))
            .collect::<Result<Vec<_>>>()?;

        // Keys made as `tadpole keygen` makes them.
        let (a_keys, b_keys) = (KeyPair::generate()?, KeyPair::generate()?);
        a_keys.write_new(&dir.join("a")).context("writing relay a's keys")?;
        b_keys.write_new(&dir.join("b")).context("writing relay b's keys")?;
        // Each relay has a namespace of its own, or they share loopback.
        let (a_health, b_listen, b_health) = if net.is_namespaces() {
            (7401, 7400, 7401)
        } else {
            (net::free_port()?, net::free_port()?, net::free_port()?)
        };
        let (a_host, b_host) = (net.host('a').to_owned(), net.host('b').to_owned());
        let a_config = format!(
            "name = \"chaos-a\"\nkey_file = \"a.key\"\nhealth = \"{a_host}:{a_health}\"\n\n\
             [[route_out]]\nring = \"{xout}\"\nconnect = \"tcp://{b_host}:{b_listen}\"\nserver_key = \"{b_pub}\"\nstream = \"cross\"\n\n\
             [limits]\nrequest_timeout_ms = 1000\nconnect_timeout_ms = 500\n",
            xout = rings[XOUT].0,
            b_pub = b_keys.public(),
        );
        let b_config = format!(
            "name = \"chaos-b\"\nkey_file = \"b.key\"\nlisten = \"tcp://{b_host}:{b_listen}\"\nallow = [\"{a_pub}\"]\n\
             health = \"{b_host}:{b_health}\"\n\n[[route_in]]\nstream = \"cross\"\nring = \"{xin}\"\nenvelopes = true\n",
            xin = rings[XIN].0,
            a_pub = a_keys.public(),
        );
        let shm_dir = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { dir.clone() };
        let mut state_files = Vec::new();
        let mut relays = Vec::new();
        for (which, config, health) in [('a', a_config, a_health), ('b', b_config, b_health)] {
            let path = dir.join(format!("{which}.toml"));
            std::fs::write(&path, config)?;
            let mut relay_args = vec![OsString::from("relay"), "--config".into(), path.into()];
            // The checkpoint where the relay keeps it by default, in /dev/shm: on a disk file
            // system its rewrite per DATA message can make the receiving relay fall behind.
            let state = shm_dir.join(format!("tadpole-chaos-{pid}-{which}.state"));
            state_files.extend([state.clone(), PathBuf::from(format!("{}.origins", state.display()))]);
            relay_args.extend(["--state".into(), state.into()]);
            let (program, args) = match net.namespace(which) {
                Some(ns) => {
                    let mut all = os(&["netns", "exec", ns]);
                    all.push(exe.clone().into());
                    all.extend(relay_args);
                    (PathBuf::from("ip"), all)
                }
                None => (exe.clone(), relay_args),
            };
            let proc = Proc::new(&format!("relay-{which}"), &program, args, &dir);
            relays.push(RelayProc { proc, which, health: format!("{}:{health}", net.host(which)) });
        }

        let mut agents = Vec::new();
        let specs = [
            ("p-cross", "producer", XOUT, Side::Producer),
            ("c-cross", "consumer", XIN, Side::Consumer),
            ("p-local", "producer", LOCAL, Side::Producer),
            ("c-local", "consumer", LOCAL, Side::Consumer),
        ];
        for (i, (name, role, ring, side)) in specs.into_iter().enumerate() {
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
            relays,
            rings,
            net,
            dir: dir.clone(),
            state_files,
            started: Instant::now(),
            faults: FAULTS.iter().map(|&f| (f, Tally::default())).collect(),
            checks: CHECKS.iter().map(|&c| (c, Tally::default())).collect(),
            max_rss_kib: args.max_rss_mib * 1024,
            last_sample: Instant::now(),
        };
        world.relays[B].proc.start()?;
        world.relays[A].proc.start()?;
        for agent in &mut world.agents {
            agent.proc.start()?;
        }
        // Faults start once records flow end to end.
        let flowing = world.wait_until(Duration::from_secs(30), |w| {
            w.agents[C_CROSS].slots.get(slots::RECEIVED) > 0 && w.agents[C_LOCAL].slots.get(slots::RECEIVED) > 0
        });
        if !flowing {
            bail!("records did not flow end to end within 30 s (logs in {})", dir.display());
        }
        world.started = Instant::now();
        Ok(world)
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
        let r = &self.relays[relay];
        http_get(self.net.namespace(r.which), &r.health, "/metrics")
    }

    fn metric(&self, relay: usize, name: &str) -> Option<u64> {
        self.metrics(relay).map(|page| metric(&page, name))
    }

    fn procs(&mut self) -> impl Iterator<Item = &mut Proc> {
        self.agents.iter_mut().map(|a| &mut a.proc).chain(self.relays.iter_mut().map(|r| &mut r.proc))
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
                    Fault::Partition => self.partition(),
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
        let (ring, side) = (self.agents[i].ring, self.agents[i].side);
        let pid = self.agents[i].proc.pid();
        self.agents[i].proc.kill_9();
        let dead = self.wait_until(
            Duration::from_secs(3),
            |w| matches!(w.side_state(ring, side), PeerState::Dead(id) if id.pid == pid),
        );
        std::thread::sleep(Duration::from_millis(200));
        let moved = |s: &RingStatus| if side == Side::Producer { s.tail } else { s.head };
        let before = moved(&self.status(ring));
        if let Err(e) = self.agents[i].proc.start() {
            return (false, format!("restarting {}: {e}", self.agents[i].proc.name));
        }
        let new = self.agents[i].proc.pid();
        let back = self.wait_until(Duration::from_secs(15), |w| {
            matches!(w.side_state(ring, side), PeerState::Attached(id) if id.pid == new)
                && moved(&w.status(ring)) > before
        });
        let name = &self.agents[i].proc.name;
        let ring_name = &self.rings[ring].0;
        (
            dead && back,
            format!(
                "{name} (pid {pid}) killed: ring {ring_name} {} {}; restarted as pid {new}: {}",
                if side == Side::Producer { "producer" } else { "consumer" },
                if dead { "seen dead" } else { "never seen dead" },
                if back { "attached and moving again" } else { "not moving again" }
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
        let pid = self.relays[r].proc.pid();
        self.relays[r].proc.kill_9();
        // Relay a consumes ring xout; relay b produces into ring xin.
        let (ring, side) = if r == A { (XOUT, Side::Consumer) } else { (XIN, Side::Producer) };
        let dead = self.wait_until(
            Duration::from_secs(3),
            |w| matches!(w.side_state(ring, side), PeerState::Dead(id) if id.pid == pid),
        );
        std::thread::sleep(Duration::from_millis(300));
        if let Err(e) = self.relays[r].proc.start() {
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
        let name = self.relays[r].proc.name.clone();
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
            let new = self.relays[B].proc.pid();
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
        let i = [C_CROSS, C_LOCAL][rng.below(2)];
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
        let (p, ring) = [(P_CROSS, XOUT), (P_LOCAL, LOCAL)][rng.below(2)];
        let full_before = self.status(ring).produced.full_events;
        // The ring's consumer (relay a, or the local consumer) pauses while the flood starts,
        // so the flood meets a full ring whatever the machine's speed.
        let pause = |w: &mut World, signal| {
            if p == P_CROSS { w.relays[A].proc.signal(signal) } else { w.agents[C_LOCAL].proc.signal(signal) }
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

    fn corrupt(&mut self, rng: &mut Rng) -> (bool, String) {
        let p = [P_CROSS, P_LOCAL][rng.below(2)];
        let c = p + 1;
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
        if p == P_LOCAL {
            let seen = self.wait_until(Duration::from_secs(10), |w| {
                w.agents[c].slots.get(slots::REFUSED) - refused0 >= garbage + bad
            });
            let refused = self.agents[c].slots.get(slots::REFUSED) - refused0;
            (
                seen,
                format!("{name} committed {garbage} garbage + {bad} bad-checksum records; c-local refused {refused}"),
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
            self.relays[B].proc.signal(if down { libc::SIGSTOP } else { libc::SIGCONT });
            Ok("relay-b stopped")
        }
    }

    /// Stops the producers, waits for every record to arrive, stops everything, then checks.
    fn finish(&mut self) {
        for p in [P_CROSS, P_LOCAL] {
            self.agents[p].slots.set(slots::STOP, 1);
        }
        for p in [P_CROSS, P_LOCAL] {
            self.agents[p].proc.finish(Duration::from_secs(5));
        }
        let pairs = [(P_CROSS, C_CROSS), (P_LOCAL, C_LOCAL)];
        let targets: Vec<u64> = pairs.iter().map(|&(p, _)| self.agents[p].slots.get(slots::NEXT_SEQ)).collect();
        let drained = self.wait_until(DRAIN, |w| {
            pairs.iter().zip(&targets).all(|(&(_, c), &t)| w.agents[c].slots.get(slots::NEXT_EXPECTED) >= t)
        });
        if !drained {
            self.say(&format!("not every record arrived within {DRAIN:?} of the end"));
        }
        for c in [C_CROSS, C_LOCAL] {
            self.agents[c].slots.set(slots::STOP, 1);
        }
        for c in [C_CROSS, C_LOCAL] {
            self.agents[c].proc.finish(Duration::from_secs(5));
        }
        for r in [A, B] {
            self.relays[r].proc.signal(libc::SIGTERM);
            self.relays[r].proc.finish(Duration::from_secs(5));
        }

        let receiver_kills = self.relays[B].proc.kills;
        for (&(p, c), &target) in pairs.iter().zip(&targets) {
            let stream = if p == P_CROSS { "cross-host" } else { "local" };
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
            println!(
                "  {stream}: {target} records produced, {} received once, {repeats} repeats (allowed {budget}, \
                 farthest {distance} back, allowed {window}), {lost} lost, {refused} refused ({corrupt_in} corrupt committed)",
                cs.get(slots::RECEIVED)
            );
            let mut v = Vec::new();
            if lost > 0 {
                v.push(("delivery", format!("{stream}: {lost} records lost (next expected {next} of {target})")));
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
            if cs.get(slots::RING_CORRUPT) > 0 {
                v.push(("checksums", format!("{stream}: the ring reported a corrupt record header")));
            }
            for (check, note) in v {
                self.check(check).violations.push(note);
            }
        }
    }

    /// Prints the summary table; returns the number of violations.
    fn summary(&self) -> usize {
        println!();
        println!("  {:<20} {:>9} {:>9} {:>11}", "fault / check", "injected", "detected", "violations");
        let mut all = Vec::new();
        for (fault, t) in &self.faults {
            println!("  {:<20} {:>9} {:>9} {:>11}", fault.label(), t.injected, t.detected, t.violations.len());
            all.extend(&t.violations);
        }
        for (check, t) in &self.checks {
            println!("  {check:<20} {:>9} {:>9} {:>11}", "-", "-", t.violations.len());
            all.extend(&t.violations);
        }
        let peaks: Vec<String> = self
            .agents
            .iter()
            .map(|a| &a.proc)
            .chain(self.relays.iter().map(|r| &r.proc))
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
        // The rings go with `rings`, the namespaces with `net`.
        for proc in self.procs() {
            proc.signal(libc::SIGCONT);
            proc.kill_9();
        }
        for file in &self.state_files {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Resident memory of `pid`, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
