//! The peer process: this same executable started again with [`PEER_ENV`] set to a role.
//!
//! The parent reads one line `ready` from the peer's stdout once the peer has pinned itself to
//! [`PEER_CPU`](crate::PEER_CPU) and mapped its shared memory, and one line `done <count>` when
//! it stops. The peer dies with its parent (`PR_SET_PDEATHSIG`); dropping a [`Peer`] that has not
//! finished kills and reaps it.

use std::io::{self, BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::BenchResult;

/// Environment variable naming the role a re-executed binary plays.
pub const PEER_ENV: &str = "TADPOLE_BENCH_PEER";

/// If this process was started as a peer, plays the role and exits; otherwise returns at once.
/// Call it first thing in `main`.
pub fn run_peer_if_requested() {
    let Ok(role) = std::env::var(PEER_ENV) else { return };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run_role(&role, &args) {
        Ok(count) => {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "done {count}");
            let _ = out.flush();
            0
        }
        Err(e) => {
            eprintln!("bench peer ({role}): {e}");
            1
        }
    };
    std::process::exit(code);
}

fn run_role(role: &str, args: &[String]) -> BenchResult<u64> {
    let parent: libc::pid_t = args.first().ok_or("missing parent pid")?.parse()?;
    // SAFETY: prctl with constant arguments; only affects this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        return Err("parent exited before the peer started".into());
    }
    crate::pin::pin_to_cpu(crate::PEER_CPU)?;
    let rest = &args[1..];
    match role {
        "floor" => crate::floor::peer_main(rest),
        "echo" => crate::latency::peer_main(rest),
        "suite-floor2" => crate::suite::floor2_peer_main(rest),
        "suite-floor-futex" => crate::suite::futex_peer_main(rest),
        "suite-echo" | "suite-sink" => crate::suite::transport_peer_main(role, rest),
        other => Err(format!("unknown peer role {other:?}").into()),
    }
}

/// Tells the parent the peer is set up. Peers call it once, after mapping and attaching.
pub(crate) fn signal_ready() -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()
}

/// A running peer process.
pub struct Peer {
    child: Child,
    stdout: BufReader<ChildStdout>,
    role: &'static str,
    reaped: bool,
}

impl Peer {
    /// Starts this executable as `role` with `args` and waits for its `ready` line.
    pub fn spawn(role: &'static str, args: &[String]) -> BenchResult<Peer> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .env(PEER_ENV, role)
            .arg(std::process::id().to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = BufReader::new(child.stdout.take().ok_or("peer stdout not piped")?);
        let mut peer = Peer { child, stdout, role, reaped: false };
        let line = peer.read_line()?;
        if line != "ready" {
            return Err(format!("{role} peer said {line:?} instead of ready").into());
        }
        Ok(peer)
    }

    fn read_line(&mut self) -> BenchResult<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            let status = self.child.wait()?;
            self.reaped = true;
            return Err(format!("{} peer exited early ({status})", self.role).into());
        }
        Ok(line.trim_end().to_owned())
    }

    /// Waits for the peer's `done <count>` line and its exit (at most 5 s); returns the count.
    pub fn finish(mut self) -> BenchResult<u64> {
        let line = self.read_line()?;
        let count = line
            .strip_prefix("done ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("{} peer said {line:?} instead of done", self.role))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.reaped = true;
                if !status.success() {
                    return Err(format!("{} peer exited with {status}", self.role).into());
                }
                return Ok(count);
            }
            if Instant::now() > deadline {
                return Err(format!("{} peer did not exit", self.role).into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
