//! The relay pair: two `tadpole relay` processes on 127.0.0.1 with a CURVE route each way, and
//! this process's ends of their four rings. Used by `relay_report` and by `tadpole bench`'s
//! `tadpole-relay` rows.
//!
//! Throughput: this process writes numbered records into relay A's source ring and reads them,
//! checked, from relay B's destination ring. Latency: ring → relay A → relay B → ring, an echo
//! thread writes each record back into relay B's return ring, and the pinging side reads it from
//! relay A's; one-way = round trip / 2. Relay A runs on [`MAIN_CPU`], relay B on [`PEER_CPU`].
//!
//! The `tadpole` binary is `$TADPOLE_BIN`, or this executable if it is `tadpole`, or `tadpole`
//! next to this executable, or `target/release/tadpole`, built with
//! `cargo build --release -p tadpole-tools` if missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ipc_core::{
    Consumer, Producer, RecvTimeoutError, RingBuilder, Segment, SendTimeoutError, TryRecvError, TrySendError,
    WaitStrategy,
};

use crate::{BenchResult, MAIN_CPU, PEER_CPU, pin};

/// Each of the four rings: room for the relay's in-flight window (16 MiB) and more.
const RING_BYTES: usize = 32 << 20;
/// Longest wait for a relay to come up or a record to arrive before the run fails.
pub const STALL: Duration = Duration::from_secs(30);
/// Largest record the pair is set up for (the relay batches at most 1 MiB per DATA message).
pub const MAX_RECORD: usize = 256 << 10;

/// Fills `buf` (already `size` bytes) as record `seq`: the number, then whatever was there.
pub fn stamp(buf: &mut [u8], seq: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
}

/// The record number `stamp` wrote into the first 8 bytes.
pub fn seq_of(record: &[u8]) -> BenchResult<u64> {
    let head: [u8; 8] = record.get(..8).and_then(|b| b.try_into().ok()).ok_or("record shorter than 8 bytes")?;
    Ok(u64::from_le_bytes(head))
}

/// One throughput run: records moved in `elapsed` (one clock, first send to last receipt).
#[derive(Clone, Copy)]
pub struct Rate {
    /// Records moved.
    pub records: u64,
    /// Bytes per record.
    pub size: usize,
    /// First send to last receipt.
    pub elapsed: Duration,
}

impl Rate {
    /// Records per second.
    pub fn per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
    /// Payload bytes per second.
    pub fn bytes_per_sec(&self) -> f64 {
        self.per_sec() * self.size as f64
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} M rec/s, {:.1} MB/s", self.per_sec() / 1e6, self.bytes_per_sec() / 1e6)
    }
}

/// Kills a relay process when dropped.
struct RelayProcess(Child);

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the relays' checkpoint files (`state` and `state.origins`), if there are any.
fn remove_states(states: &[PathBuf]) {
    for state in states {
        let _ = std::fs::remove_file(state);
        let mut origins = state.clone().into_os_string();
        origins.push(".origins");
        let _ = std::fs::remove_file(origins);
    }
}

/// The four rings of the relay pair, the two relays, and this process's ends of the rings.
pub struct RelayPair {
    /// Into relay A: forward records (producer side, this process).
    fwd_in: Producer,
    /// Out of relay B: forward records.
    fwd_out: Consumer,
    /// Into relay B: echoes.
    back_in: Producer,
    /// Out of relay A: echoes.
    back_out: Consumer,
    next: u64,
    /// Records that arrived twice (the relay delivers at least once).
    repeats: u64,
    /// Whether this process's four ring ends wait with the ring's own wait (`recv_timeout`,
    /// `send_timeout`, with the strategy [`set_wait`](Self::set_wait) gave them), or yield,
    /// then sleep 20 µs at a time (the default).
    ring_wait: bool,
    relays: Vec<RelayProcess>,
    /// The relays' checkpoint files, removed by [`stop`](Self::stop).
    states: Vec<PathBuf>,
    /// Where relay B listens (relay A's link connects there).
    b_port: u16,
    _rings: Vec<Segment>,
    dir: PathBuf,
}

/// CPU time (user + system) process `pid` has used, all its threads.
fn cpu_time(pid: u32) -> BenchResult<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is the first, utime the 12th.
    let rest = stat.rsplit_once(')').ok_or("unreadable /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> BenchResult<u64> { Ok(fields.get(i).ok_or("short /proc stat")?.parse::<u64>()?) };
    // SAFETY: sysconf only reads a configuration value.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(Duration::from_secs_f64((ticks(11)? + ticks(12)?) as f64 / per_sec))
}

/// Bytes sent so far over every established TCP connection to `127.0.0.1:port` (the kernel's
/// `tcpi_bytes_sent`, read with `ss -ti`): what went on the wire, headers of TCP excluded. Takes
/// a few milliseconds (a process); call it outside timed spans.
pub fn tcp_bytes_sent_to(port: u16) -> BenchResult<u64> {
    let out = Command::new("ss").args(["-tinH", "dst", &format!("127.0.0.1:{port}")]).output()?;
    if !out.status.success() {
        return Err(format!("ss -ti: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let sent = text.split_whitespace().filter_map(|f| f.strip_prefix("bytes_sent:")).map(str::parse::<u64>);
    Ok(sent.sum::<Result<u64, _>>()?)
}

fn free_port() -> BenchResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The `tadpole` binary, found (or built) as the module docs say.
pub fn tadpole_binary() -> BenchResult<PathBuf> {
    if let Some(path) = std::env::var_os("TADPOLE_BIN") {
        return Ok(path.into());
    }
    let me = std::env::current_exe()?;
    if me.file_name().is_some_and(|n| n == "tadpole") {
        return Ok(me);
    }
    if let Some(next_to_me) = me.parent().map(|d| d.join("tadpole")) {
        if next_to_me.is_file() {
            return Ok(next_to_me);
        }
    }
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("release").join("tadpole");
    if !bin.is_file() {
        eprintln!("bench: building {} (cargo build --release -p tadpole-tools)", bin.display());
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "-p", "tadpole-tools", "--bin", "tadpole"])
            .current_dir(&root)
            .status()?;
        if !status.success() || !bin.is_file() {
            return Err(format!("building the tadpole binary failed ({status})").into());
        }
    }
    Ok(bin)
}

/// `tadpole keygen --out dir/name`; returns the public key line.
fn keygen(bin: &Path, dir: &Path, name: &str) -> BenchResult<String> {
    let out = Command::new(bin).args(["keygen", "--out"]).arg(dir.join(name)).output()?;
    if !out.status.success() {
        return Err(format!("tadpole keygen: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let text = std::fs::read_to_string(dir.join(format!("{name}.pub")))?;
    let key = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#'));
    Ok(key.ok_or("keygen wrote no public key")?.to_owned())
}

/// Spawns `tadpole relay` from a thread pinned to `cpu`, so the relay and all its threads
/// inherit that CPU.
/// Its checkpoint goes to `state` (and `<state>.origins`), which [`RelayPair::stop`] removes
/// (the relay's default state path is per config path, so every run would leave its own).
fn spawn_relay(bin: &Path, config: &Path, state: &Path, cpu: usize) -> BenchResult<RelayProcess> {
    let (bin, config, state) = (bin.to_path_buf(), config.to_path_buf(), state.to_path_buf());
    let child = std::thread::spawn(move || -> BenchResult<Child> {
        pin::pin_to_cpu(cpu)?;
        Ok(Command::new(bin)
            .args(["relay", "--config"])
            .arg(config)
            .arg("--state")
            .arg(state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    })
    .join()
    .map_err(|_| "spawning thread panicked")??;
    Ok(RelayProcess(child))
}

/// How this process waits on a ring that is empty (or full): a few yields, then short sleeps.
/// The relay sharing the CPU must run to fill (or drain) it, and a thread that only yields stays
/// runnable and takes its share of a CPU the relay needs; a sleep of ~50 µs is small next to
/// the relay's own 1 ms idle poll.
struct Waiter(u32);

impl Waiter {
    const YIELDS: u32 = 16;
    const SLEEP: Duration = Duration::from_micros(20);

    fn new() -> Waiter {
        Waiter(0)
    }

    fn wait(&mut self) {
        if self.0 < Self::YIELDS {
            self.0 += 1;
            std::thread::yield_now();
        } else {
            std::thread::sleep(Self::SLEEP);
        }
    }
}

fn nothing_yet(e: &TryRecvError) -> bool {
    matches!(e, TryRecvError::Empty | TryRecvError::Disconnected)
}

/// Writes `payload` into `ring`, waiting while the ring is full: with `ring_wait`, in the ring's
/// own wait (`send_timeout`: asleep on its futex with [`WaitStrategy::Block`]); otherwise
/// yielding the CPU (to the relay on it), then sleeping briefly.
fn send_record(ring: &mut Producer, payload: &[u8], deadline: Instant, ring_wait: bool) -> BenchResult<()> {
    let mut waiter = Waiter::new();
    loop {
        match ring.try_send(payload) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full | TrySendError::Disconnected) => {
                if Instant::now() > deadline {
                    return Err("relay: a ring stayed full (the relay stopped draining it)".into());
                }
                if !ring_wait {
                    waiter.wait();
                    continue;
                }
                match ring.send_timeout(payload, BLOCKING_SLICE) {
                    Ok(()) => return Ok(()),
                    Err(SendTimeoutError::Timeout | SendTimeoutError::Disconnected) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for the record numbered `want` (skipping repeats of earlier ones); copies it into `buf`.
/// With `ring_wait`, in the ring's own wait (`recv_timeout`: asleep on its futex with
/// [`WaitStrategy::Block`], as the raw baseline's blocking `recv` sleeps in libzmq, or yielding
/// between polls with [`WaitStrategy::SpinThenYield`]); otherwise yielding, then sleeping 20 µs
/// at a time.
fn recv_record(
    ring: &mut Consumer,
    want: u64,
    repeats: &mut u64,
    buf: &mut [u8],
    deadline: Instant,
    ring_wait: bool,
) -> BenchResult<()> {
    let mut waiter = Waiter::new();
    loop {
        let got = if ring_wait {
            match ring.recv_timeout(BLOCKING_SLICE) {
                Ok(record) => Ok(record),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => Err(TryRecvError::Empty),
                Err(e) => return Err(e.into()),
            }
        } else {
            ring.try_recv()
        };
        match got {
            Ok(record) => {
                let seq = seq_of(&record)?;
                if seq == want {
                    let n = record.len().min(buf.len());
                    buf[..n].copy_from_slice(&record[..n]);
                    return Ok(());
                }
                if seq > want {
                    return Err(format!("relay: record {want} lost (got {seq})").into());
                }
                *repeats += 1;
            }
            Err(e) if nothing_yet(&e) => {
                if Instant::now() > deadline {
                    return Err(format!("relay: record {want} never arrived").into());
                }
                if !ring_wait {
                    waiter.wait();
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Longest single ring_wait wait of a ring end, so it notices a stop or a deadline.
const BLOCKING_SLICE: Duration = Duration::from_millis(10);

impl RelayPair {
    /// Must be called on [`MAIN_CPU`].
    pub fn start() -> BenchResult<RelayPair> {
        let bin = tadpole_binary()?;
        let tag = std::process::id();
        let dir = std::env::temp_dir().join(format!("tadpole-relay-report-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (a_pub, b_pub) = (keygen(&bin, &dir, "a")?, keygen(&bin, &dir, "b")?);
        let (a_port, b_port) = (free_port()?, free_port()?);
        let ring = |n: &str| format!("relay-report-{tag}-{n}");
        let rings: Vec<Segment> = ["fwd-in", "fwd-out", "back-in", "back-out"]
            .iter()
            .map(|n| RingBuilder::new(RING_BYTES).create_named(&ring(n)))
            .collect::<Result<_, _>>()?;
        let config = |me: &str,
                      port: u16,
                      peer_port: u16,
                      peer_pub: &str,
                      out: &str,
                      out_stream: &str,
                      inn: &str,
                      in_stream: &str| {
            format!(
                "name = \"{me}\"\nkey_file = \"{me}.key\"\nlisten = \"tcp://127.0.0.1:{port}\"\nallow = [\"{peer_pub}\"]\n\n\
                 [[route_out]]\nring = \"{out}\"\nconnect = \"tcp://127.0.0.1:{peer_port}\"\nserver_key = \"{peer_pub}\"\nstream = \"{out_stream}\"\n\n\
                 [[route_in]]\nstream = \"{in_stream}\"\nring = \"{inn}\"\n"
            )
        };
        let a_config = dir.join("a.toml");
        let b_config = dir.join("b.toml");
        std::fs::write(
            &a_config,
            config("a", a_port, b_port, &b_pub, &ring("fwd-in"), "fwd", &ring("back-out"), "back"),
        )?;
        std::fs::write(
            &b_config,
            config("b", b_port, a_port, &a_pub, &ring("back-in"), "back", &ring("fwd-out"), "fwd"),
        )?;
        // In shared memory, as the relay's default (checkpoints are written per ACK).
        let state = |me: &str| Path::new("/dev/shm").join(format!("tadpole-relay-report-{tag}-{me}.state"));
        let states = vec![state("a"), state("b")];
        remove_states(&states);
        let relays = vec![
            spawn_relay(&bin, &a_config, &states[0], MAIN_CPU)?,
            spawn_relay(&bin, &b_config, &states[1], PEER_CPU)?,
        ];
        let ring_wait = false;
        let mut pair = RelayPair {
            fwd_in: rings[0].producer()?,
            fwd_out: rings[1].consumer()?,
            back_in: rings[2].producer()?,
            back_out: rings[3].consumer()?,
            b_port,
            next: 0,
            repeats: 0,
            ring_wait,
            relays,
            states,
            _rings: rings,
            dir,
        };
        // Both links connected (HELLO/WELCOME done) before anything is timed.
        let mut buf = vec![0x5a; 64];
        let deadline = Instant::now() + STALL;
        let seq = pair.next;
        pair.next += 1;
        stamp(&mut buf, seq);
        send_record(&mut pair.fwd_in, &buf, deadline, ring_wait)?;
        recv_record(&mut pair.fwd_out, seq, &mut pair.repeats, &mut buf, deadline, ring_wait)?;
        send_record(&mut pair.back_in, &buf, deadline, ring_wait)?;
        recv_record(&mut pair.back_out, seq, &mut pair.repeats, &mut buf, deadline, ring_wait)?;
        Ok(pair)
    }

    /// How this process's ring ends wait from now on: `Some(strategy)`, in the ring's own wait
    /// with that strategy — [`WaitStrategy::Block`], asleep on the ring's futex (the relay's
    /// commit or release wakes them), as both ends of the raw baseline sleep in blocking libzmq
    /// calls, or [`WaitStrategy::SpinThenYield`], yielding between polls and never sleeping;
    /// `None` (the default), yielding, then sleeping 20 µs at a time. On a side with one CPU, a
    /// thread that yields stays runnable and shares the CPU its relay needs (throughput
    /// suffers); one that sleeps costs a wake-up per record when records come one at a time
    /// (latency suffers).
    pub fn set_wait(&mut self, wait: Option<WaitStrategy>) {
        let strategy = wait.unwrap_or(WaitStrategy::SpinThenYield);
        self.fwd_in.set_wait_strategy(strategy);
        self.back_in.set_wait_strategy(strategy);
        self.fwd_out.set_wait_strategy(strategy);
        self.back_out.set_wait_strategy(strategy);
        self.ring_wait = wait.is_some();
    }

    /// Streams `n` records of `size` bytes from relay A's source ring to relay B's destination
    /// ring; the clock runs from the first write to the last read.
    /// With `copy`, the reader copies each whole record out; otherwise only its number.
    pub fn run(&mut self, n: u64, size: usize, copy: bool) -> BenchResult<Rate> {
        let first = self.next;
        let end = first + n;
        let (fwd_in, fwd_out, repeats) = (&mut self.fwd_in, &mut self.fwd_out, &mut self.repeats);
        let ring_wait = self.ring_wait;
        let started = Instant::now();
        let deadline = started + STALL.max(Duration::from_secs(n / 10_000));
        std::thread::scope(|s| -> BenchResult<Rate> {
            let reader = s.spawn(move || -> BenchResult<Instant> {
                pin::pin_to_cpu(PEER_CPU)?;
                let mut buf = vec![0u8; if copy { size } else { 8 }];
                for seq in first..end {
                    recv_record(fwd_out, seq, repeats, &mut buf, deadline, ring_wait)?;
                }
                Ok(Instant::now())
            });
            let mut buf = vec![0x5a; size];
            let mut sent = Ok(());
            for seq in first..end {
                stamp(&mut buf, seq);
                sent = send_record(fwd_in, &buf, deadline, ring_wait);
                if sent.is_err() {
                    break;
                }
            }
            let finished = reader.join().map_err(|_| "relay reader panicked")??;
            sent?;
            Ok(Rate { records: n, size, elapsed: finished - started })
        })
        .inspect(|_| self.next = end)
    }

    /// Ping-pong through both relays for `duration`; an echo thread on [`PEER_CPU`] turns each
    /// record around from relay B's destination ring into its return ring.
    pub fn record_for(&mut self, duration: Duration, size: usize, rtt: &mut Histogram<u64>) -> BenchResult<()> {
        let stop = AtomicBool::new(false);
        let first = self.next;
        let ring_wait = self.ring_wait;
        let (fwd_in, fwd_out, back_in, back_out) =
            (&mut self.fwd_in, &mut self.fwd_out, &mut self.back_in, &mut self.back_out);
        let repeats = &mut self.repeats;
        let stop = &stop;
        let mut next = first;
        let result = std::thread::scope(|s| -> BenchResult<()> {
            let echo = s.spawn(move || -> BenchResult<u64> {
                pin::pin_to_cpu(PEER_CPU)?;
                let mut buf = vec![0u8; size];
                let mut want = first;
                let mut repeats = 0;
                let mut waiter = Waiter::new();
                while !stop.load(Ordering::Relaxed) {
                    let got = if ring_wait {
                        match fwd_out.recv_timeout(BLOCKING_SLICE) {
                            Ok(record) => Ok(record),
                            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => Err(TryRecvError::Empty),
                            Err(e) => return Err(e.into()),
                        }
                    } else {
                        fwd_out.try_recv()
                    };
                    match got {
                        Ok(record) => {
                            let seq = seq_of(&record)?;
                            if seq < want {
                                repeats += 1;
                                continue;
                            }
                            if seq > want {
                                return Err(format!("relay echo: record {want} lost (got {seq})").into());
                            }
                            if record.len() != buf.len() {
                                return Err(format!("relay echo: record {seq} has {} bytes", record.len()).into());
                            }
                            buf.copy_from_slice(&record);
                            drop(record);
                            send_record(back_in, &buf, Instant::now() + STALL, ring_wait)?;
                            want += 1;
                            waiter = Waiter::new();
                        }
                        Err(e) if nothing_yet(&e) => {
                            if !ring_wait {
                                waiter.wait();
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(repeats)
            });
            let mut buf = vec![0x5a; size];
            let timed = (|| -> BenchResult<()> {
                let start = Instant::now();
                let mut prev = start;
                loop {
                    let deadline = Instant::now() + STALL;
                    stamp(&mut buf, next);
                    send_record(fwd_in, &buf, deadline, ring_wait)?;
                    recv_record(back_out, next, repeats, &mut buf, deadline, ring_wait)?;
                    next += 1;
                    let now = Instant::now();
                    rtt.saturating_record((now - prev).as_nanos() as u64);
                    prev = now;
                    if now - start >= duration {
                        return Ok(());
                    }
                }
            })();
            stop.store(true, Ordering::Relaxed);
            let echo_repeats = echo.join().map_err(|_| "relay echo panicked")??;
            *repeats += echo_repeats;
            timed
        });
        self.next = next;
        result
    }

    /// CPU time used so far by relay A and relay B.
    pub fn relay_cpu(&self) -> BenchResult<[Duration; 2]> {
        Ok([cpu_time(self.relays[0].0.id())?, cpu_time(self.relays[1].0.id())?])
    }

    /// Bytes relay A has sent over TCP to relay B so far (ZMTP framing and CURVE included).
    pub fn sender_bytes_sent(&self) -> BenchResult<u64> {
        tcp_bytes_sent_to(self.b_port)
    }

    /// Stops both relays; returns how many records arrived twice.
    pub fn stop(self) -> BenchResult<u64> {
        let repeats = self.repeats;
        drop(self.relays);
        remove_states(&self.states);
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(repeats)
    }
}
