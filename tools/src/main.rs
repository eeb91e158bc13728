//! `tadpole`: the operator's command. `demo` (five trading agents in five processes, joined by
//! shared-memory rings, with a per-hop latency report), `pingpong` (raw one-way latency
//! between two processes), `stat` (every ring, who is attached, depth, counters and rates),
//! `tap` (a ring's records decoded, without consuming them), `clean` (remove rings whose
//! processes are all gone), `keygen` (CURVE key pairs), `relay` (rings between hosts) and
//! `chaos` (agents and relays under injected faults, checked for loss and corruption).
//!
//! Each subcommand is one variant of [`Cmd`], with its arguments in its own module where it has
//! more than a couple; adding one is a variant and a `match` arm.

mod chaos;
mod clean;
mod exit;
mod json;
mod metrics;
mod pipeline;
mod relay;
mod sigbus;
mod source;
mod stat;
mod tap;

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ipc_core::{RecvError, RecvTimeoutError, RingBuilder, Segment, WaitStrategy};

const AFTER_HELP: &str = "\
Examples:
  tadpole demo                      the trading pipeline on this host, with latency percentiles
  tadpole stat --watch              every ring, refreshed like top
  tadpole tap orders --follow       the records passing through ring `orders`, as JSON lines
  tadpole clean --dry-run           which rings are left over by dead processes
  tadpole help tap                  one command's options and examples";

#[derive(Parser)]
#[command(
    name = "tadpole",
    version,
    about = "Shared-memory IPC for latency-critical agents",
    after_help = format!("{AFTER_HELP}\n\n{}", exit::EXIT_STATUS_HELP)
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Five agent processes (market analysis, risk, personality, execution and a circuit
    /// breaker) trade Arrow ticks and envelopes through shared-memory rings; prints per-hop
    /// latency percentiles against the targets, and raises SLA alerts.
    #[command(after_help = format!(
        "Examples:\n  tadpole demo\n  tadpole demo --rate 2000/s --duration 10 --plot charts\n  \
         tadpole demo --config examples/pipeline.toml --python personality\n\n\
         Runs on one host (a --cross-host mode is not there yet). Ctrl-C ends the run early with \
         its report. Exits 1, after the report, when the circuit breaker halted trading (an \
         agent died).\n\n{}",
        exit::EXIT_STATUS_HELP
    ))]
    Demo(pipeline::DemoArgs),
    /// Two processes bounce raw messages through a pair of rings; prints one-way latency.
    #[command(after_help = format!(
        "Examples:\n  tadpole pingpong\n  tadpole pingpong --size 4096 --wait block\n\n{}",
        exit::EXIT_STATUS_HELP
    ))]
    Pingpong(DemoArgs),
    /// Every ring on the host (or one): producer and consumer pids and liveness, depth,
    /// counters and rates; `--watch` refreshes a full-screen view, `--json` prints one document.
    Stat(stat::StatArgs),
    /// Serves the counters of every ring on the host, read from shared memory, as Prometheus
    /// metrics on `/metrics` (and `/health`) for Prometheus and Grafana.
    Metrics(metrics::MetricsArgs),
    /// Prints the records passing through a ring, decoded (envelopes, Arrow frames, relay dead
    /// letters), without consuming them.
    Tap(tap::TapArgs),
    /// Bridges rings between hosts over ZeroMQ with CURVE: forwards local rings to far relays
    /// and commits what allowlisted relays send into local rings (see examples/relay.toml).
    #[command(after_help = format!(
        "Examples:\n  tadpole relay --config /etc/tadpole/relay.toml\n  \
         RUST_LOG=debug tadpole relay --config relay.toml --state /var/lib/tadpole/relay.state\n\n\
         SIGHUP reloads the allowlist; SIGINT/SIGTERM stop it cleanly.\n\n{}",
        exit::EXIT_STATUS_HELP
    ))]
    Relay {
        /// The relay's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// Where the inbound side records what it has committed (default: in /dev/shm, named
        /// after the relay and its config file's path; see README).
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Writes a CURVE key pair for `tadpole relay`: `<out>.key` (secret, mode 0600) and
    /// `<out>.pub`; prints the public key. Never overwrites. `--check=KEY` validates a public
    /// key instead (write `--check=KEY`: Z85 keys may begin with `-`).
    #[command(after_help = format!(
        "Examples:\n  tadpole keygen --out /etc/tadpole/host-a\n  tadpole keygen --check=\"$(cat host-b.pub)\"\n\n{}",
        exit::EXIT_STATUS_HELP
    ))]
    Keygen {
        /// Path prefix of the files to write, e.g. `/etc/tadpole/host-a`.
        #[arg(long, required_unless_present = "check", conflicts_with = "check")]
        out: Option<PathBuf>,
        /// Check that this is a valid Z85 public key, and write nothing.
        #[arg(long, allow_hyphen_values = true, value_name = "KEY")]
        check: Option<String>,
    },
    /// Measures Tadpole against iceoryx2, Unix sockets, pipes, ZeroMQ and crossbeam on this
    /// host: latency and throughput, each row as a ratio to a baseline of the same run.
    Bench(tadpole_benches::suite::Args),
    /// Removes rings whose creator and attached processes are all gone, and says why it kept
    /// each other ring.
    Clean(clean::CleanArgs),
    /// Runs agents and two relays (in two network namespaces when root) and injects faults:
    /// kill -9 and restart, stalled consumers, floods, corrupt records, partitions. Checks
    /// delivery, checksums, memory and the metrics; exits 1 on any violation.
    #[command(after_help = format!(
        "Examples:\n  tadpole chaos --minutes 30\n  tadpole chaos --seconds 60 --seed 42\n\n{}",
        exit::EXIT_STATUS_HELP
    ))]
    Chaos(chaos::ChaosArgs),
    /// Internal: one agent of `chaos`.
    #[command(hide = true, name = "chaos-agent")]
    ChaosAgent(chaos::AgentArgs),
    /// Internal: one agent of `demo`.
    #[command(hide = true)]
    Agent {
        #[arg(long)]
        role: String,
        #[arg(long)]
        run: String,
        #[arg(long, value_enum)]
        wait: Wait,
        #[arg(long, default_value = "{}")]
        settings: String,
    },
    /// Internal: the echo side of `pingpong`.
    #[command(hide = true, name = "pingpong-echo")]
    DemoEcho {
        #[arg(long)]
        ping: String,
        #[arg(long)]
        pong: String,
        #[arg(long, value_enum)]
        wait: Wait,
        #[arg(long)]
        cpu: Option<usize>,
    },
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Round trips to time (after warm-up).
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    round_trips: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(8..=65_536))]
    size: u32,
    /// How both sides wait for the next message.
    #[arg(long, value_enum, default_value_t = Wait::Spin)]
    wait: Wait,
}

#[derive(Clone, Copy, ValueEnum)]
enum Wait {
    Spin,
    Yield,
    Block,
}

impl Wait {
    fn strategy(self) -> WaitStrategy {
        match self {
            Wait::Spin => WaitStrategy::BusySpin,
            Wait::Yield => WaitStrategy::SpinThenYield,
            Wait::Block => WaitStrategy::Block,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Wait::Spin => "spin",
            Wait::Yield => "yield",
            Wait::Block => "block",
        }
    }
}

fn main() -> ExitCode {
    // `tadpole bench` re-executes this binary as its peer process.
    tadpole_benches::peer::run_peer_if_requested();
    exit::quiet_on_closed_stdout();
    let command = Cli::parse().command;
    exit::report(match command {
        Cmd::Bench(args) => tadpole_benches::suite::run(&args).map_err(|e| anyhow::anyhow!(e)),
        Cmd::Demo(args) => pipeline::demo(&args),
        Cmd::Pingpong(args) => demo(&args),
        Cmd::Agent { role, run, wait, settings } => pipeline::agent(&role, &run, wait.strategy(), &settings),
        Cmd::DemoEcho { ping, pong, wait, cpu } => demo_echo(&ping, &pong, wait, cpu),
        Cmd::Stat(args) => stat::run(&args),
        Cmd::Metrics(args) => metrics::run(&args),
        Cmd::Tap(args) => tap::run(&args),
        Cmd::Clean(args) => clean::run(&args),
        Cmd::Relay { config, state } => relay::run(&config, state),
        Cmd::Keygen { out, check } => keygen(out.as_deref(), check.as_deref()),
        Cmd::Chaos(args) => chaos::run(&args),
        Cmd::ChaosAgent(args) => chaos::agent::run(&args),
    })
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below the number of online CPUs, within CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is this thread; `set` is a valid cpu_set_t of the size passed.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Kills the echo child if the demo fails half-way.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn demo(args: &DemoArgs) -> Result<()> {
    let tag = std::process::id();
    let (ping_name, pong_name) = (format!("demo-{tag}-ping"), format!("demo-{tag}-pong"));
    let ring = RingBuilder::new(1 << 20);
    let ping = ring.create_named(&ping_name).context("creating the ping ring")?;
    let pong = ring.create_named(&pong_name).context("creating the pong ring")?;
    let mut tx = ping.producer()?;
    let mut rx = pong.consumer()?;
    tx.set_wait_strategy(args.wait.strategy());
    rx.set_wait_strategy(args.wait.strategy());

    let pinned = cpus() >= 2;
    let mut echo = Command::new(std::env::current_exe()?);
    echo.args(["pingpong-echo", "--ping", &ping_name, "--pong", &pong_name, "--wait", args.wait.name()]);
    if pinned {
        echo.args(["--cpu", "1"]);
        pin_to_cpu(0);
    }
    let _child = ChildGuard(echo.spawn().context("starting the echo process")?);

    let payload = vec![0xA5u8; args.size as usize];
    let timeout = Duration::from_secs(10);
    let mut round_trip = |seq: u64| -> Result<()> {
        let mut grant = tx.reserve_timeout(payload.len(), timeout)?;
        grant.copy_from_slice(&payload);
        grant[..8].copy_from_slice(&seq.to_le_bytes());
        grant.commit();
        let reply = rx.recv_timeout(timeout)?;
        if reply.len() != payload.len() || reply[..8] != seq.to_le_bytes() {
            bail!("echo returned the wrong message for {seq}");
        }
        Ok(())
    };
    let warmup = (args.round_trips / 10).clamp(1_000, 100_000);
    for seq in 0..warmup {
        round_trip(seq)?;
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let started = Instant::now();
    for seq in warmup..warmup + args.round_trips {
        let t = Instant::now();
        round_trip(seq)?;
        // One clock pair per round trip: one-way latency is half of it.
        hist.record((t.elapsed().as_nanos() as u64 / 2).max(1))?;
    }
    let elapsed = started.elapsed();
    drop(tx);
    let closing = rx.recv_timeout(Duration::from_secs(5));
    if !matches!(closing, Err(RecvTimeoutError::Disconnected)) {
        bail!("echo did not shut down cleanly");
    }

    println!("Tadpole ping-pong: two processes, {} B messages, {} wait", args.size, args.wait.name());
    println!("  processes pinned to CPUs 0 and 1: {}", if pinned { "yes" } else { "no (one CPU)" });
    println!(
        "  round trips: {} in {:.2?} ({:.0} round trips/s)",
        args.round_trips,
        elapsed,
        args.round_trips as f64 / elapsed.as_secs_f64()
    );
    println!("  one-way latency (round trip / 2), ns:");
    for (label, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999), ("p99.99", 0.9999)] {
        println!("    {label:>7}  {:>9}", hist.value_at_quantile(q));
    }
    println!("    {:>7}  {:>9}", "max", hist.max());
    println!("  (figures include ~20 ns of clock reads per round trip; see BENCHMARKS.md for floor ratios)");
    Ok(())
}

fn demo_echo(ping: &str, pong: &str, wait: Wait, cpu: Option<usize>) -> Result<()> {
    if let Some(cpu) = cpu {
        pin_to_cpu(cpu);
    }
    let mut rx = Segment::open(ping)?.consumer()?;
    let mut tx = Segment::open(pong)?.producer()?;
    rx.set_wait_strategy(wait.strategy());
    tx.set_wait_strategy(wait.strategy());
    loop {
        let msg = match rx.recv() {
            Ok(msg) => msg,
            Err(RecvError::Disconnected) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        tx.send(&msg)?;
    }
}

fn keygen(out: Option<&std::path::Path>, check: Option<&str>) -> Result<()> {
    use ipc_zmq::keys::{KeyPair, PublicKey};
    if let Some(key) = check {
        let key = PublicKey::from_z85(key).with_context(|| format!("{key:?}"))?;
        println!("{key}");
        return Ok(());
    }
    let out = out.context("--out <path-prefix>")?;
    let pair = KeyPair::generate().context("generating a CURVE key pair")?;
    let files = pair.write_new(out)?;
    eprintln!("wrote {} (secret, mode 0600) and {}", files.secret.display(), files.public.display());
    println!("{}", pair.public());
    Ok(())
}
