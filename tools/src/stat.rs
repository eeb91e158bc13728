//! `tadpole stat`: every ring on the host (or one), who is attached and whether they still run,
//! depth, counters and rates, as a table, a full-screen view that refreshes (`--watch`), or one
//! JSON document (`--json`).
//!
//! Everything comes from [`Segment::status_from_file`]: plain loads of the counters the ring's owners keep
//! in the segment. `stat` never attaches and never writes, so it cannot disturb the hot path
//! beyond the cache lines it reads. Rates are differences between two readings.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use ipc_core::{OpenError, PeerState, ProcessId, RingStatus, Segment};
use serde_json::{Value, json};

use crate::exit;
use crate::json::safe_integers;
use crate::source::{RingSource, ensure_intact};

/// What the counters' freshness is, shown under every view and in the JSON document.
pub const FRESHNESS: &str = "produced messages, full-ring waits, held leases and dead letters are exact \
at every operation; bytes, commits and the consumer's counts are published every 64 producer claims, every \
256 receives or 64 empty polls, when the ring is full, and when a side detaches, so they (and their \
rates) may trail by that much";

const AFTER_HELP: &str = "\
Examples:
  tadpole stat                      every ring on this host, with rates over 250 ms
  tadpole stat orders               one ring in detail
  tadpole stat --watch              a full-screen view refreshed every second (Ctrl-C quits)
  tadpole stat --json | jq '.rings[] | {name, depth_bytes}'
  tadpole stat --socket /run/tadpole/orders.sock

--json prints one JSON document: {\"sampled_over_ms\", \"freshness\", \"rings\": [...]}; each ring has
name, capacity, max_message_len, payload_align, epoch, creator {pid, alive}, producer and
consumer {state: alive|dead|detached|never_attached, pid}, head, tail, depth_bytes,
depth_messages, fill_ratio, produced {messages, bytes, commits, full_ring_waits, wakes,
padding_bytes, oversize_rejects}, consumed {messages, bytes, releases, empty_polls, wakes,
corrupt_records}, leases_held, lease_capacity, dead_letters (records a receiver refused) with
dead_letters_by_reason {malformed, undeliverable}, and rates {messages_per_s, bytes_per_s,
consumed_messages_per_s, consumed_bytes_per_s, full_ring_waits_per_s} (null without two
readings). An unreadable ring is {name, error}. Integers beyond 2^53 are strings.

Counters: produced messages, full-ring waits, held leases and dead letters are exact; bytes, commits and the
consumer's counts are published every 64 producer claims, 256 receives or 64 empty polls, when
the ring is full, and when a side detaches.";

/// `tadpole stat`'s arguments.
#[derive(clap::Args)]
#[command(after_help = format!("{AFTER_HELP}\n\n{}", exit::EXIT_STATUS_HELP))]
pub struct StatArgs {
    /// A ring name (without the `tadpole.` prefix); every ring on the host when omitted.
    #[arg(conflicts_with = "socket")]
    name: Option<String>,
    /// Show the sealed ring served at this Unix socket path (`SegmentServer`) instead.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Print one JSON document and exit.
    #[arg(long, conflicts_with = "watch")]
    json: bool,
    /// Redraw a full-screen view every --interval-ms until Ctrl-C (rates since the last redraw).
    #[arg(long, short = 'w')]
    watch: bool,
    /// How often --watch redraws, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=3_600_000))]
    interval_ms: u64,
    /// Without --watch: read the counters twice, this many milliseconds apart, for the rates
    /// (0: read once, no rates).
    #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    sample_ms: u64,
}

/// Runs `tadpole stat`.
pub fn run(args: &StatArgs) -> Result<()> {
    let single = match (&args.socket, &args.name) {
        (Some(path), _) => Some(RingSource::Socket(path.clone())),
        (None, Some(name)) => Some(RingSource::Named(name.clone())),
        (None, None) => None,
    };
    let mut rings = Rings { single, names: None, tracked: HashMap::new() };
    let mut out = io::stdout().lock();
    if args.watch {
        return watch(&mut rings, Duration::from_millis(args.interval_ms), &mut out);
    }
    let mut rows = rings.read()?;
    let mut window = None;
    if args.sample_ms > 0 {
        std::thread::sleep(Duration::from_millis(args.sample_ms));
        rows = rings.read()?;
        window = Some(Duration::from_millis(args.sample_ms));
    }
    if args.json {
        let doc = json!({
            "sampled_over_ms": window.map(|w| w.as_millis() as u64),
            "freshness": FRESHNESS,
            "rings": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        });
        writeln!(out, "{}", safe_integers(doc))?;
        return Ok(());
    }
    out.write_all(render(&rows, rings.single.is_some(), window).as_bytes())?;
    Ok(())
}

fn watch(rings: &mut Rings, interval: Duration, out: &mut impl Write) -> Result<()> {
    exit::stop_on_interrupt().context("installing the Ctrl-C handler")?;
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(io::stdout().as_raw_fd()) } == 1;
    if tty {
        // The alternate screen, as `top` uses: the terminal comes back as it was on exit.
        out.write_all(b"\x1b[?1049h\x1b[?25l")?;
    }
    let outcome = (|| -> Result<()> {
        // A first reading shortly before the first frame, so it already has rates.
        rings.read()?;
        std::thread::sleep(interval.min(Duration::from_millis(250)));
        let mut last = Instant::now() - interval.min(Duration::from_millis(250));
        while !exit::interrupted() {
            let rows = rings.read()?;
            let window = rows.iter().any(|r| r.rates.is_some()).then(|| last.elapsed());
            last = Instant::now();
            let mut screen = String::from("\x1b[H\x1b[2J");
            let _ = writeln!(
                screen,
                "tadpole stat  {}  {} ring(s), every {:.1} s  (Ctrl-C quits)\n",
                utc_time_of_day(),
                rows.len(),
                interval.as_secs_f64()
            );
            screen.push_str(&render(&rows, rings.single.is_some(), window));
            out.write_all(screen.as_bytes())?;
            out.flush()?;
            let until = Instant::now() + interval;
            while Instant::now() < until && !exit::interrupted() {
                if exit::stdout_closed() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20).min(interval));
            }
        }
        Ok(())
    })();
    if tty {
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
    }
    outcome
}

/// The rings being shown, kept mapped between readings so rates compare like with like. Also
/// what `tadpole metrics` reads at each scrape.
pub(crate) struct Rings {
    /// The one ring asked for, or `None` for several.
    single: Option<RingSource>,
    /// With `single` `None`: the rings of these names (a process's own), or `None` for every
    /// ring in /dev/shm.
    names: Option<Vec<String>>,
    tracked: HashMap<String, Tracked>,
}

struct Tracked {
    segment: Segment,
    last: Option<(Instant, RingStatus)>,
}

/// One ring as shown: its status and the rates since the previous reading, or why it could not
/// be read.
pub(crate) struct Row {
    pub(crate) name: String,
    pub(crate) reading: Result<Reading, String>,
    rates: Option<Rates>,
}

pub(crate) struct Reading {
    pub(crate) status: RingStatus,
    epoch: u64,
}

#[derive(Clone, Copy)]
struct Rates {
    messages: f64,
    bytes: f64,
    consumed_messages: f64,
    consumed_bytes: f64,
    full_waits: f64,
}

impl Rings {
    /// Every ring in /dev/shm, as many as there are at each reading.
    pub(crate) fn all() -> Rings {
        Rings { single: None, names: None, tracked: HashMap::new() }
    }

    /// The rings of these names, those that exist at each reading.
    pub(crate) fn named(names: Vec<String>) -> Rings {
        Rings { single: None, names: Some(names), tracked: HashMap::new() }
    }

    /// Adds `name` to the rings of [`Rings::named`] (nothing for the other kinds).
    pub(crate) fn watch(&mut self, name: &str) {
        if let Some(names) = &mut self.names {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
    }

    /// Reads every ring once. Asked about one ring, failing to read it is the command failing;
    /// listing them all, an unreadable ring is a row saying why.
    pub(crate) fn read(&mut self) -> Result<Vec<Row>> {
        let sources = match &self.single {
            Some(source) => vec![source.clone()],
            None => match &self.names {
                Some(names) => names.iter().cloned().map(RingSource::Named).collect(),
                None => Segment::list()
                    .context("listing the rings in /dev/shm")?
                    .into_iter()
                    .map(RingSource::Named)
                    .collect(),
            },
        };
        let labels: Vec<String> = sources.iter().map(RingSource::label).collect();
        self.tracked.retain(|label, _| labels.contains(label));
        let mut rows = Vec::with_capacity(sources.len());
        for (source, name) in sources.iter().zip(labels) {
            match self.read_one(source, &name) {
                Ok((reading, rates)) => rows.push(Row { name, reading: Ok(reading), rates }),
                Err(e) if self.single.is_some() => return Err(e.context(format!("ring {name:?} unreadable"))),
                // Removed between the listing and the opening: nothing to show.
                Err(e) if matches!(e.downcast_ref::<OpenError>(), Some(OpenError::NotFound(_))) => {}
                Err(e) => rows.push(Row { name, reading: Err(exit::describe(&e)), rates: None }),
            }
        }
        Ok(rows)
    }

    fn read_one(&mut self, source: &RingSource, name: &str) -> Result<(Reading, Option<Rates>)> {
        let stale = match (self.tracked.get(name), source) {
            (Some(t), RingSource::Named(n)) => !maps_named_file(&t.segment, n),
            (Some(_), RingSource::Socket(_)) => false,
            (None, _) => true,
        };
        if stale {
            self.tracked.remove(name);
            let segment = source.open()?;
            self.tracked.insert(name.to_owned(), Tracked { segment, last: None });
        }
        let tracked = self.tracked.get_mut(name).expect("inserted above");
        ensure_intact(&tracked.segment)?;
        // From the file, not the mapping: a truncation after the size check is an error here, not
        // a SIGBUS (which would end `tadpole metrics` with every other ring).
        let (now, status) = (Instant::now(), tracked.segment.status_from_file()?);
        let rates = tracked.last.as_ref().and_then(|(then, before)| rates(before, &status, now - *then));
        tracked.last = Some((now, status.clone()));
        Ok((Reading { status, epoch: tracked.segment.epoch() }, rates))
    }
}

/// Whether `segment` maps the file `/dev/shm/tadpole.<name>` is now (a ring removed and made
/// again under the same name is another file, with counters starting over).
fn maps_named_file(segment: &Segment, name: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(fd) = segment.as_fd() else { return false };
    let (Ok(by_fd), Ok(by_name)) =
        (nix::sys::stat::fstat(fd), std::fs::metadata(format!("/dev/shm/{}{name}", ipc_core::NAME_PREFIX)))
    else {
        return false;
    };
    by_fd.st_ino == by_name.ino() && by_fd.st_dev == by_name.dev()
}

fn rates(before: &RingStatus, now: &RingStatus, elapsed: Duration) -> Option<Rates> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    // Counters only grow; one that went back belongs to a new owner restored from a hostile or
    // recreated segment: no rate rather than a huge one.
    let per_s = |a: u64, b: u64| b.checked_sub(a).map(|d| d as f64 / secs);
    Some(Rates {
        messages: per_s(before.produced.messages, now.produced.messages)?,
        bytes: per_s(before.produced.bytes, now.produced.bytes)?,
        consumed_messages: per_s(before.consumed.messages, now.consumed.messages)?,
        consumed_bytes: per_s(before.consumed.bytes, now.consumed.bytes)?,
        full_waits: per_s(before.produced.full_events, now.produced.full_events)?,
    })
}

impl Row {
    fn to_json(&self) -> Value {
        let r = match &self.reading {
            Ok(r) => r,
            Err(error) => return json!({ "name": self.name, "error": error }),
        };
        let s = &r.status;
        json!({
            "name": self.name,
            "capacity": s.capacity,
            "max_message_len": s.max_message_len,
            "payload_align": s.payload_align.bytes(),
            "epoch": r.epoch,
            "creator": { "pid": s.creator.pid, "alive": s.creator_alive },
            "producer": peer_json(s.producer),
            "consumer": peer_json(s.consumer),
            "head": s.head,
            "tail": s.tail,
            "depth_bytes": s.used_bytes(),
            "depth_messages": depth_messages(s),
            "fill_ratio": s.used_bytes() as f64 / s.capacity as f64,
            "produced": {
                "messages": s.produced.messages,
                "bytes": s.produced.bytes,
                "commits": s.produced.commits,
                "full_ring_waits": s.produced.full_events,
                "wakes": s.produced.wakes,
                "padding_bytes": s.produced.padding_bytes,
                "oversize_rejects": s.produced.oversize_rejects,
            },
            "consumed": {
                "messages": s.consumed.messages,
                "bytes": s.consumed.bytes,
                "releases": s.consumed.releases,
                "empty_polls": s.consumed.empty_polls,
                "wakes": s.consumed.wakes,
                "corrupt_records": s.consumed.corrupt_records,
            },
            "leases_held": s.consumed.leases_held,
            "lease_capacity": s.consumed.lease_capacity,
            "dead_letters": s.consumed.dead_letters(),
            "dead_letters_by_reason": {
                "malformed": s.consumed.dead_letters_malformed,
                "undeliverable": s.consumed.dead_letters_undeliverable,
            },
            "rates": self.rates.map(|x| json!({
                "messages_per_s": x.messages,
                "bytes_per_s": x.bytes,
                "consumed_messages_per_s": x.consumed_messages,
                "consumed_bytes_per_s": x.consumed_bytes,
                "full_ring_waits_per_s": x.full_waits,
            })),
        })
    }
}

/// Messages committed and not yet received, as far as the (periodically published) consumer
/// count tells.
pub(crate) fn depth_messages(s: &RingStatus) -> u64 {
    s.produced.messages.saturating_sub(s.consumed.messages)
}

fn peer_json(state: PeerState) -> Value {
    let (state, pid) = match state {
        PeerState::NeverAttached => ("never_attached", None),
        PeerState::Attached(id) => ("alive", Some(id.pid)),
        PeerState::Closed => ("detached", None),
        PeerState::Dead(id) => ("dead", Some(id.pid)),
    };
    json!({ "state": state, "pid": pid })
}

/// A side's owner in a few words: `pid 12 (running)`, `pid 12 (DEAD)`, `detached`.
pub fn peer_words(state: PeerState) -> String {
    match state {
        PeerState::NeverAttached => "never attached".into(),
        PeerState::Attached(ProcessId { pid, .. }) => format!("pid {pid} (running)"),
        PeerState::Closed => "detached".into(),
        PeerState::Dead(ProcessId { pid, .. }) => format!("pid {pid} (DEAD)"),
    }
}

/// The short form for table cells.
fn peer_cell(state: PeerState) -> String {
    match state {
        PeerState::NeverAttached => "-".into(),
        PeerState::Attached(id) => format!("{} alive", id.pid),
        PeerState::Closed => "detached".into(),
        PeerState::Dead(id) => format!("{} DEAD", id.pid),
    }
}

fn render(rows: &[Row], detailed: bool, window: Option<Duration>) -> String {
    let mut text = String::new();
    if rows.is_empty() {
        text.push_str("no Tadpole rings in /dev/shm\n");
        return text;
    }
    if detailed {
        for row in rows {
            render_detail(&mut text, row);
        }
    } else {
        render_table(&mut text, rows);
    }
    match window {
        Some(w) => {
            let _ = writeln!(text, "\nrates over {:.2} s; {FRESHNESS}.", w.as_secs_f64());
        }
        None => {
            let _ = writeln!(text, "\nno rates (one reading); {FRESHNESS}.");
        }
    }
    text
}

fn render_table(text: &mut String, rows: &[Row]) {
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).clamp(4, 40);
    let _ = writeln!(
        text,
        "{:<width$}  {:<14} {:<14} {:>16} {:>9} {:>9} {:>10} {:>9} {:>11} {:>7} {:>7}",
        "RING", "PRODUCER", "CONSUMER", "DEPTH", "CAPACITY", "MSG/S", "BYTES/S", "FULL", "LEASES", "CORRUPT", "DEAD"
    );
    for row in rows {
        let r = match &row.reading {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(text, "{:<width$}  unreadable: {e}", row.name);
                continue;
            }
        };
        let s = &r.status;
        let depth = format!("{} {:>3.0}%", bytes(s.used_bytes()), 100.0 * s.used_bytes() as f64 / s.capacity as f64);
        let (msgs, bps) = row.rates.map_or(("-".into(), "-".into()), |x| (count(x.messages), bytes_rate(x.bytes)));
        let _ = writeln!(
            text,
            "{:<width$}  {:<14} {:<14} {:>16} {:>9} {:>9} {:>10} {:>9} {:>11} {:>7} {:>7}",
            row.name,
            peer_cell(s.producer),
            peer_cell(s.consumer),
            depth,
            bytes(s.capacity),
            msgs,
            bps,
            s.produced.full_events,
            format!("{}/{}", s.consumed.leases_held, s.consumed.lease_capacity),
            s.consumed.corrupt_records,
            s.consumed.dead_letters(),
        );
    }
}

fn render_detail(text: &mut String, row: &Row) {
    let r = match &row.reading {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(text, "{}: unreadable: {e}", row.name);
            return;
        }
    };
    let s = &r.status;
    let _ = writeln!(
        text,
        "{}: capacity {} B, max message {} B, payload align {}, epoch {:#018x}",
        row.name,
        s.capacity,
        s.max_message_len,
        s.payload_align.bytes(),
        r.epoch
    );
    let _ = writeln!(text, "  creator  pid {} ({})", s.creator.pid, if s.creator_alive { "running" } else { "gone" });
    let p = &s.produced;
    let _ = writeln!(
        text,
        "  producer {}: {} messages, {} B, {} commits, {} full, {} wakes, {} oversize",
        peer_words(s.producer),
        p.messages,
        p.bytes,
        p.commits,
        p.full_events,
        p.wakes,
        p.oversize_rejects
    );
    let c = &s.consumed;
    let _ = writeln!(
        text,
        "  consumer {}: {} messages, {} B, {} releases, {} wakes, {} corrupt, leases {}/{}, \
         {} dead letters ({} malformed, {} undeliverable)",
        peer_words(s.consumer),
        c.messages,
        c.bytes,
        c.releases,
        c.wakes,
        c.corrupt_records,
        c.leases_held,
        c.lease_capacity,
        c.dead_letters(),
        c.dead_letters_malformed,
        c.dead_letters_undeliverable
    );
    let _ = writeln!(
        text,
        "  depth    {} B in use of {} B ({:.1}%), ~{} messages",
        s.used_bytes(),
        s.capacity,
        100.0 * s.used_bytes() as f64 / s.capacity as f64,
        depth_messages(s)
    );
    if let Some(x) = row.rates {
        let _ = writeln!(
            text,
            "  rates    in {} msg/s, {}; out {} msg/s, {}; {} full-ring waits/s",
            count(x.messages),
            bytes_rate(x.bytes),
            count(x.consumed_messages),
            bytes_rate(x.consumed_bytes),
            count(x.full_waits)
        );
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut unit) = (n as f64, 0);
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

fn bytes_rate(per_s: f64) -> String {
    format!("{}/s", bytes(per_s.round() as u64))
}

fn count(per_s: f64) -> String {
    match per_s {
        x if x >= 1e9 => format!("{:.1}G", x / 1e9),
        x if x >= 1e6 => format!("{:.1}M", x / 1e6),
        x if x >= 1e4 => format!("{:.1}k", x / 1e3),
        x => format!("{x:.0}"),
    }
}

/// `HH:MM:SS UTC`, without a date library.
fn utc_time_of_day() -> String {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!("{:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}
