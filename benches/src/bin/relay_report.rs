//! The relay against raw libzmq in the same run, printed as a Markdown table.
//!
//! Baseline: a DEALER → ROUTER pair with CURVE over `tcp://127.0.0.1`, the `zmq` crate, keys from
//! `zmq::CurveKeyPair::new()`, no ZAP handler (ZAP runs once per connection at the handshake, so
//! it costs a message nothing). Measured: a one-way stream of records in batches of the relay's
//! default size (512 records, at most 1 MiB), which the ROUTER counts and checks, sent two ways:
//! *packed*, one 1-byte header part plus one part holding the batch's records back to back
//! (each behind a 4-byte length, as a user of raw libzmq would pack them) — the shape of a relay
//! DATA message, whose prefix is 2 bytes at 64-byte records since protocol version 3 — and *a
//! part per record*,
//! header part plus one part per record; the relay is judged against the faster of the two. And
//! a ping-pong of one 64-byte record (blocking receives on both sides).
//!
//! Relay pair: two `tadpole relay` processes listening on 127.0.0.1, each with a route to the
//! other. Throughput: this process writes numbered records into relay A's source ring and reads
//! them, checked, from relay B's destination ring. Latency: ring → relay A → relay B → ring, an
//! echo thread writes each record back into relay B's return ring, and the pinging side reads
//! it from relay A's; one-way = round trip / 2.
//!
//! Throughput runs make this process's ring ends sleep on the ring's futex when they must wait
//! (`WaitStrategy::Block`, as the raw sockets block); the judged latency row lets the ring
//! readers yield between polls (`WaitStrategy::SpinThenYield`, the ring's default), and a
//! context row shows them asleep on the futex.
//!
//! Side A (the sending thread, its libzmq context's I/O thread, relay A) runs on CPU
//! [`MAIN_CPU`], side B (the receiving thread and its context, the echo thread, relay B) on CPU
//! [`PEER_CPU`]: each "host" has one core. Throughput runs alternate raw and relay, latency is
//! taken in alternating slices, so a slowdown of the shared VM hits both. A floor probe at the
//! start and end flags a run during which the host moved the vCPUs.
//!
//! ```text
//! cargo run --release -p tadpole-benches --bin relay_report            # ~30 s
//! cargo run --release -p tadpole-benches --bin relay_report -- --quick # a few seconds (smoke)
//! cargo run --release -p tadpole-benches --bin relay_report -- --throughput-sizes=  # latency only
//! cargo run --release -p tadpole-benches --bin relay_report -- --throughput-sizes=64 --no-latency
//! ```
//!
//! The `tadpole` binary is `$TADPOLE_BIN`, or `tadpole` next to this executable, or
//! `target/release/tadpole`, built with `cargo build --release -p tadpole-tools` if missing.
//! Exits non-zero only when a measurement fails (a record lost or damaged, a relay that does not
//! come up); missed targets are reported, not failed.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ipc_core::WaitStrategy;
use tadpole_benches::relay_pair::{MAX_RECORD, Rate, RelayPair, STALL, seq_of, stamp, tcp_bytes_sent_to};
use tadpole_benches::stats::{OneWay, rtt_histogram};
use tadpole_benches::{BenchResult, MAIN_CPU, PEER_CPU, floor, peer, pin};

const THROUGHPUT_SIZES: [usize; 2] = [64, 16 << 10];
const LATENCY_SIZE: usize = 64;
/// The relay sender's defaults (`SenderConfig::new`): most records and bytes per DATA message.
const BATCH_RECORDS: usize = 512;
const BATCH_BYTES: usize = 1 << 20;
/// Relay throughput must reach this fraction of raw CURVE throughput.
const THROUGHPUT_TARGET: f64 = 0.8;
/// Relay end-to-end one-way p50 must stay within this factor of raw CURVE one-way p50.
const LATENCY_TARGET: f64 = 1.2;
/// Floor drift between start and end of the run above which the run is flagged.
const DRIFT_LIMIT: f64 = 0.20;

/// Header part of a raw message: records follow, one part each.
const RAW_DATA: &[u8] = b"D";
/// Header part of a raw message: one part follows, records back to back, each behind its length
/// (`u32`, little-endian).
const RAW_PACKED: &[u8] = b"K";
/// Header part of a raw message: end of a run, answer with the count received since the last.
const RAW_END: &[u8] = b"E";
/// Header part of a raw message: echo this message.
const RAW_PING: &[u8] = b"P";
/// Header part of a raw message: stop.
const RAW_QUIT: &[u8] = b"Q";

struct Settings {
    /// Timed runs per throughput row, alternating raw and relay (the median is reported).
    runs: usize,
    /// Length of each timed throughput run.
    per_run: Duration,
    /// Latency slices per side, alternating raw and relay.
    slices: usize,
    /// Length of each latency slice.
    slice: Duration,
    /// Duration of each floor probe.
    probe: Duration,
    /// Record sizes of the throughput rows (`--throughput-sizes`; empty: no throughput rows).
    sizes: Vec<usize>,
    /// Whether to take the latency rows (`--no-latency` skips them).
    latency: bool,
}

impl Settings {
    fn from_args() -> Result<Settings, String> {
        let mut s = Settings {
            runs: 5,
            per_run: Duration::from_millis(1000),
            slices: 4,
            slice: Duration::from_millis(1000),
            probe: Duration::from_millis(5),
            sizes: THROUGHPUT_SIZES.to_vec(),
            latency: true,
        };
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--quick" => {
                    s = Settings {
                        runs: 3,
                        per_run: Duration::from_millis(100),
                        slices: 2,
                        slice: Duration::from_millis(150),
                        probe: Duration::from_millis(2),
                        ..s
                    }
                }
                "--no-latency" => s.latency = false,
                "-h" | "--help" => {
                    println!(
                        "usage: relay_report [--quick] [--throughput-sizes=64,16384] [--no-latency]\n\
                         (--throughput-sizes= with no sizes skips the throughput rows; used to profile one phase)"
                    );
                    std::process::exit(0);
                }
                other => match other.strip_prefix("--throughput-sizes=") {
                    Some(list) => {
                        s.sizes = list
                            .split(',')
                            .filter(|v| !v.is_empty())
                            .map(|v| match v.parse::<usize>() {
                                Ok(size) if (8..=MAX_RECORD).contains(&size) => Ok(size),
                                _ => Err(format!("--throughput-sizes: {v:?} is not a size from 8 to {MAX_RECORD}")),
                            })
                            .collect::<Result<_, _>>()?
                    }
                    None => return Err(format!("unknown argument {other:?} (try --help)")),
                },
            }
        }
        Ok(s)
    }
}

/// Records per multipart message for `size`-byte records, as the relay's sender batches them.
fn batch_for(size: usize) -> usize {
    (BATCH_BYTES / size).clamp(1, BATCH_RECORDS)
}

// ---------------------------------------------------------------------------------------------
// Raw libzmq: DEALER → ROUTER with CURVE.

/// The sending end of the raw pair; the ROUTER runs on a thread pinned to [`PEER_CPU`].
struct RawPair {
    dealer: zmq::Socket,
    router: Option<std::thread::JoinHandle<BenchResult<()>>>,
    /// Next record number; the ROUTER checks they arrive in order.
    next: u64,
    /// The ROUTER's TCP port.
    port: u16,
    _ctx: zmq::Context,
}

impl RawPair {
    /// Must be called on [`MAIN_CPU`]: the context's I/O thread inherits the caller's CPU.
    fn start() -> BenchResult<RawPair> {
        let server = zmq::CurveKeyPair::new()?;
        let client = zmq::CurveKeyPair::new()?;
        let (tx, rx) = mpsc::channel();
        let secret = server.secret_key;
        let router = std::thread::spawn(move || raw_router(secret, tx));
        let endpoint = rx.recv_timeout(STALL).map_err(|_| "raw ROUTER did not bind")??;
        let ctx = zmq::Context::new();
        let dealer = ctx.socket(zmq::DEALER)?;
        dealer.set_linger(0)?;
        dealer.set_curve_serverkey(&server.public_key)?;
        dealer.set_curve_publickey(&client.public_key)?;
        dealer.set_curve_secretkey(&client.secret_key)?;
        dealer.set_rcvtimeo(STALL.as_millis() as i32)?;
        dealer.connect(&endpoint)?;
        let port =
            endpoint.rsplit(':').next().and_then(|p| p.parse().ok()).ok_or("raw ROUTER endpoint without a port")?;
        let mut pair = RawPair { dealer, router: Some(router), next: 0, port, _ctx: ctx };
        // The CURVE handshake happens here, outside every timed run.
        pair.ping(&mut [0; LATENCY_SIZE])?;
        Ok(pair)
    }

    /// Streams `n` records of `size` bytes and waits until the ROUTER has them all.
    fn run(&mut self, n: u64, size: usize, packed: bool) -> BenchResult<Rate> {
        let batch = batch_for(size) as u64;
        let mut buf = vec![0x5a; size];
        let started = Instant::now();
        let end = self.next + n;
        while self.next < end {
            let last = (self.next + batch).min(end);
            if packed {
                // Built afresh per message, as the relay's sender does.
                let mut body = Vec::with_capacity((last - self.next) as usize * (4 + size));
                while self.next < last {
                    stamp(&mut buf, self.next);
                    self.next += 1;
                    body.extend_from_slice(&(size as u32).to_le_bytes());
                    body.extend_from_slice(&buf);
                }
                self.dealer.send(RAW_PACKED, zmq::SNDMORE)?;
                self.dealer.send(body, 0)?;
                continue;
            }
            self.dealer.send(RAW_DATA, zmq::SNDMORE)?;
            while self.next < last {
                stamp(&mut buf, self.next);
                self.next += 1;
                let more = if self.next < last { zmq::SNDMORE } else { 0 };
                self.dealer.send(&buf[..], more)?;
            }
        }
        self.dealer.send(RAW_END, 0)?;
        let got = self.dealer.recv_bytes(0).map_err(|e| format!("raw: waiting for the end of a run: {e}"))?;
        let elapsed = started.elapsed();
        let count = u64::from_le_bytes(got.as_slice().try_into().map_err(|_| "raw: bad end answer")?);
        if count != n {
            return Err(format!("raw: ROUTER counted {count} records, {n} sent").into());
        }
        Ok(Rate { records: n, size, elapsed })
    }

    /// One round trip of one record.
    fn ping(&mut self, buf: &mut [u8]) -> BenchResult<()> {
        let seq = self.next;
        self.next += 1;
        stamp(buf, seq);
        self.dealer.send(RAW_PING, zmq::SNDMORE)?;
        self.dealer.send(&buf[..], 0)?;
        let head = self.dealer.recv_bytes(0).map_err(|e| format!("raw: waiting for an echo: {e}"))?;
        if head != RAW_PING || !self.dealer.get_rcvmore()? {
            return Err("raw: malformed echo".into());
        }
        self.dealer.recv_into(buf, 0)?;
        if seq_of(buf)? != seq {
            return Err(format!("raw: echo of record {} for record {seq}", seq_of(buf)?).into());
        }
        Ok(())
    }

    fn record_for(&mut self, duration: Duration, rtt: &mut Histogram<u64>) -> BenchResult<()> {
        let mut buf = vec![0x5a; LATENCY_SIZE];
        let start = Instant::now();
        let mut prev = start;
        loop {
            self.ping(&mut buf)?;
            let now = Instant::now();
            rtt.saturating_record((now - prev).as_nanos() as u64);
            prev = now;
            if now - start >= duration {
                return Ok(());
            }
        }
    }

    fn stop(mut self) -> BenchResult<()> {
        self.dealer.send(RAW_QUIT, 0)?;
        self.router.take().ok_or("raw ROUTER already stopped")?.join().map_err(|_| "raw ROUTER panicked")?
    }
}

/// The ROUTER side: CURVE server, counts and checks records, answers END and PING.
fn raw_router(secret: [u8; 32], endpoint: mpsc::Sender<BenchResult<String>>) -> BenchResult<()> {
    pin::pin_to_cpu(PEER_CPU)?;
    let ctx = zmq::Context::new();
    let bound = (|| -> BenchResult<zmq::Socket> {
        let router = ctx.socket(zmq::ROUTER)?;
        router.set_linger(1000)?;
        router.set_curve_server(true)?;
        router.set_curve_secretkey(&secret)?;
        router.bind("tcp://127.0.0.1:*")?;
        Ok(router)
    })();
    let router = match bound {
        Ok(r) => r,
        Err(e) => {
            let _ = endpoint.send(Err(e.to_string().into()));
            return Err(e);
        }
    };
    let last = router.get_last_endpoint()?.map_err(|_| "endpoint not UTF-8")?;
    endpoint.send(Ok(last)).map_err(|_| "raw pair gone")?;
    let (mut id, mut head, mut part) = (zmq::Message::new(), zmq::Message::new(), zmq::Message::new());
    let (mut expected, mut counted) = (0u64, 0u64);
    loop {
        router.recv(&mut id, 0)?;
        router.recv(&mut head, 0)?;
        match &head[..] {
            RAW_DATA => {
                while router.get_rcvmore()? {
                    router.recv(&mut part, 0)?;
                    let seq = seq_of(&part)?;
                    if seq != expected {
                        return Err(format!("raw ROUTER: record {seq} where {expected} was due").into());
                    }
                    expected += 1;
                    counted += 1;
                }
            }
            RAW_PACKED => {
                router.recv(&mut part, 0)?;
                let mut body = &part[..];
                while !body.is_empty() {
                    let len = body.get(..4).map(|l| u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize);
                    let record = len.and_then(|len| body.get(4..4 + len)).ok_or("raw ROUTER: truncated body")?;
                    let seq = seq_of(record)?;
                    if seq != expected {
                        return Err(format!("raw ROUTER: record {seq} where {expected} was due").into());
                    }
                    body = &body[4 + record.len()..];
                    expected += 1;
                    counted += 1;
                }
            }
            RAW_END => {
                router.send(&id[..], zmq::SNDMORE)?;
                router.send(&counted.to_le_bytes()[..], 0)?;
                counted = 0;
            }
            RAW_PING => {
                router.recv(&mut part, 0)?;
                let seq = seq_of(&part)?;
                if seq != expected {
                    return Err(format!("raw ROUTER: ping {seq} where {expected} was due").into());
                }
                expected += 1;
                router.send(&id[..], zmq::SNDMORE)?;
                router.send(RAW_PING, zmq::SNDMORE)?;
                router.send(&part[..], 0)?;
            }
            RAW_QUIT => return Ok(()),
            other => return Err(format!("raw ROUTER: unknown header {other:?}").into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ---------------------------------------------------------------------------------------------
// The report.

struct Row {
    name: String,
    value: String,
    baseline: String,
    ratio: f64,
    target: String,
    met: Option<bool>,
}

fn main() {
    peer::run_peer_if_requested();
    let settings = match Settings::from_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("relay_report: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(&settings) {
        eprintln!("relay_report: measurement failed: {e}");
        std::process::exit(1);
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map_or_else(|_| "?".into(), |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn median(mut rates: Vec<Rate>) -> (Rate, Rate, Rate) {
    rates.sort_by(|a, b| a.per_sec().total_cmp(&b.per_sec()));
    (rates[rates.len() / 2], rates[0], rates[rates.len() - 1])
}

fn throughput_row(settings: &Settings, raw: &mut RawPair, relay: &mut RelayPair, size: usize) -> BenchResult<Row> {
    // Warm-up runs, which also size the timed ones.
    let warm_n = if size >= 4096 { 2_000 } else { 50_000 };
    let mut packed_rate = raw.run(warm_n, size, true)?.per_sec();
    let mut raw_rate = raw.run(warm_n, size, false)?.per_sec();
    relay.set_wait(Some(WaitStrategy::Block));
    let warm = relay.run(warm_n, size, false);
    relay.set_wait(None);
    let mut relay_rate = warm?.per_sec();
    let (mut packs, mut raws, mut relays) = (Vec::new(), Vec::new(), Vec::new());
    let mut relay_time = Duration::ZERO;
    let mut relay_cpu = [Duration::ZERO; 2];
    // Bytes on the wire per record: what the sending side's TCP connection carried during the
    // packed raw runs and the relay runs.
    let (mut raw_wire, mut raw_records, mut relay_wire, mut relay_records) = (0u64, 0u64, 0u64, 0u64);
    let sized = |rate: f64| ((rate * settings.per_run.as_secs_f64()) as u64).max(256);
    for _ in 0..settings.runs {
        let sent = tcp_bytes_sent_to(raw.port)?;
        let r = raw.run(sized(packed_rate), size, true)?;
        raw_wire += tcp_bytes_sent_to(raw.port)? - sent;
        raw_records += r.records;
        packed_rate = r.per_sec();
        packs.push(r);
        let r = raw.run(sized(raw_rate), size, false)?;
        raw_rate = r.per_sec();
        raws.push(r);
        let before = relay.relay_cpu()?;
        let sent = relay.sender_bytes_sent()?;
        relay.set_wait(Some(WaitStrategy::Block));
        let r = relay.run(sized(relay_rate), size, false);
        relay.set_wait(None);
        let r = r?;
        let after = relay.relay_cpu()?;
        relay_wire += relay.sender_bytes_sent()? - sent;
        relay_records += r.records;
        for i in 0..2 {
            relay_cpu[i] += after[i] - before[i];
        }
        relay_time += r.elapsed;
        relay_rate = r.per_sec();
        relays.push(r);
    }
    let (pack_med, pack_lo, pack_hi) = median(packs);
    let (raw_med, raw_lo, raw_hi) = median(raws);
    let (relay_med, relay_lo, relay_hi) = median(relays);
    let best = pack_med.per_sec().max(raw_med.per_sec());
    let ratio = relay_med.per_sec() / best;
    let busy = |cpu: Duration| 100.0 * cpu.as_secs_f64() / relay_time.as_secs_f64();
    let range = |lo: Rate, hi: Rate| format!("{:.3}–{:.3}", lo.per_sec() / 1e6, hi.per_sec() / 1e6);
    Ok(Row {
        name: format!("throughput {} B, ring → relay → relay → ring ({} rec/msg)", size, batch_for(size)),
        value: format!(
            "{relay_med} (median of {}, range {} M rec/s; relay A {:.0}%, relay B {:.0}% of a CPU; {:.1} B on the wire per record)",
            settings.runs,
            range(relay_lo, relay_hi),
            busy(relay_cpu[0]),
            busy(relay_cpu[1]),
            relay_wire as f64 / relay_records.max(1) as f64
        ),
        baseline: format!(
            "raw CURVE packed {pack_med} (range {} M rec/s; {:.1} B on the wire per record); a part per record {raw_med} (range {} M rec/s); judged against the faster",
            range(pack_lo, pack_hi),
            raw_wire as f64 / raw_records.max(1) as f64,
            range(raw_lo, raw_hi)
        ),
        ratio,
        target: format!("≥ {THROUGHPUT_TARGET}× raw"),
        met: Some(ratio >= THROUGHPUT_TARGET),
    })
}

fn latency_rows(settings: &Settings, raw: &mut RawPair, relay: &mut RelayPair) -> BenchResult<Vec<Row>> {
    let (mut raw_rtt, mut relay_rtt, mut blocking_rtt) = (rtt_histogram(), rtt_histogram(), rtt_histogram());
    let blocking_slice = |relay: &mut RelayPair, duration: Duration, rtt: &mut Histogram<u64>| {
        relay.set_wait(Some(WaitStrategy::Block));
        let r = relay.record_for(duration, LATENCY_SIZE, rtt);
        relay.set_wait(None);
        r
    };
    let yielding_slice = |relay: &mut RelayPair, duration: Duration, rtt: &mut Histogram<u64>| {
        relay.set_wait(Some(WaitStrategy::SpinThenYield));
        let r = relay.record_for(duration, LATENCY_SIZE, rtt);
        relay.set_wait(None);
        r
    };
    // Warm-up slice of each, discarded.
    raw.record_for(settings.slice / 4, &mut raw_rtt)?;
    yielding_slice(relay, settings.slice / 4, &mut relay_rtt)?;
    blocking_slice(relay, settings.slice / 4, &mut blocking_rtt)?;
    raw_rtt.reset();
    relay_rtt.reset();
    blocking_rtt.reset();
    for _ in 0..settings.slices {
        raw.record_for(settings.slice, &mut raw_rtt)?;
        yielding_slice(relay, settings.slice, &mut relay_rtt)?;
        blocking_slice(relay, settings.slice, &mut blocking_rtt)?;
    }
    let (raw1, relay1, blocking1) =
        (OneWay::from_rtt(&raw_rtt), OneWay::from_rtt(&relay_rtt), OneWay::from_rtt(&blocking_rtt));
    let us = |ns: f64| format!("{:.1} µs", ns / 1e3);
    let p50_ratio = relay1.p50 / raw1.p50;
    Ok(vec![
        Row {
            name: format!(
                "latency {LATENCY_SIZE} B one-way p50, ring → relay → relay → ring (ping-pong / 2; ring readers yield between polls, `WaitStrategy::SpinThenYield`, the ring's default)"
            ),
            value: format!("{} (added {} over raw; n={})", us(relay1.p50), us(relay1.p50 - raw1.p50), relay1.samples),
            baseline: format!("raw CURVE {} (n={})", us(raw1.p50), raw1.samples),
            ratio: p50_ratio,
            target: format!("≤ {LATENCY_TARGET}× raw"),
            met: Some(p50_ratio <= LATENCY_TARGET),
        },
        Row {
            name: format!("latency {LATENCY_SIZE} B one-way p99, ring → relay → relay → ring"),
            value: format!("{} (p99.9 {})", us(relay1.p99), us(relay1.p999)),
            baseline: format!("raw CURVE {} (p99.9 {})", us(raw1.p99), us(raw1.p999)),
            ratio: relay1.p99 / raw1.p99,
            target: "— (context)".to_owned(),
            met: None,
        },
        Row {
            name: format!(
                "latency {LATENCY_SIZE} B one-way p50, ring readers asleep on the ring's futex (`WaitStrategy::Block`)"
            ),
            value: format!("{} (p99 {}; n={})", us(blocking1.p50), us(blocking1.p99), blocking1.samples),
            baseline: format!("raw CURVE {}", us(raw1.p50)),
            ratio: blocking1.p50 / raw1.p50,
            target: "— (context)".to_owned(),
            met: None,
        },
    ])
}

fn run(settings: &Settings) -> BenchResult<()> {
    if pin::allowed_cpus() < 2 {
        return Err("needs two CPUs (one per side)".into());
    }
    pin::pin_to_cpu(MAIN_CPU)?;
    let began = Instant::now();
    let load_start = load_average();
    let start_floor = floor::probe(settings.probe)?;
    let mut raw = RawPair::start()?;
    let mut relay = RelayPair::start()?;
    let mut rows = Vec::new();
    for &size in &settings.sizes {
        rows.push(throughput_row(settings, &mut raw, &mut relay, size)?);
    }
    if settings.latency {
        rows.extend(latency_rows(settings, &mut raw, &mut relay)?);
    }
    raw.stop()?;
    let repeats = relay.stop()?;
    let end_floor = floor::probe(settings.probe)?;
    let drift = (end_floor.p50 - start_floor.p50).abs() / start_floor.p50;

    println!("## Tadpole relay benchmark report\n");
    println!(
        "Two `tadpole relay` processes over tcp 127.0.0.1 (CURVE, ZAP allowlist, default limits) against raw libzmq DEALER → ROUTER with CURVE (no ZAP handler: it runs only at the handshake), measured in the same run. Side A on CPU {MAIN_CPU}, side B on CPU {PEER_CPU}. Raw batches: up to {BATCH_RECORDS} records, at most {} KiB, per message (the relay's DATA batch), either packed in one part behind a 1-byte header part (the relay's DATA shape) or a part per record. Run time {:.1} s. Load average (1/5/15 min) at start: {load_start}; at end: {}. Repeated records seen from the relay: {repeats}.\n",
        BATCH_BYTES >> 10,
        began.elapsed().as_secs_f64(),
        load_average()
    );
    println!("| Row | Value | Baseline (same run) | Ratio | Target | Met |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        let met = match r.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "n/a",
        };
        println!("| {} | {} | {} | {:.2}× | {} | {met} |", r.name, r.value, r.baseline, r.ratio, r.target);
    }
    println!();
    println!("Floor at start: {start_floor}");
    println!("Floor at end:   {end_floor}");
    if drift > DRIFT_LIMIT {
        println!(
            "\n**FLAGGED: the floor moved {:.0}% between start and end (limit {:.0}%): the host re-placed the vCPUs; rerun before trusting ratios.**",
            drift * 100.0,
            DRIFT_LIMIT * 100.0
        );
    } else {
        println!("\nFloor drift start→end {:.0}% (limit {:.0}%): run not flagged.", drift * 100.0, DRIFT_LIMIT * 100.0);
    }
    Ok(())
}
