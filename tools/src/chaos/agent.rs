//! `tadpole chaos-agent`: one simulated agent of `tadpole chaos`, a real process on a real ring.
//!
//! A producer commits envelopes numbered 0, 1, 2, … whose metadata carries the number, a filler
//! derived from it and a checksum of both, at a steady rate; on the harness's command it floods
//! (records back to back into a full ring: it must wait, never drop) or commits corrupt records
//! (random bytes, or an envelope with a wrong checksum). A consumer checks every record: refused
//! and counted if it is not an envelope or its checksum fails, a repeat if its number is below
//! the one expected, a loss if it is above. Both keep their counters in a [`Slots`] file, so a
//! restart after `kill -9` goes on where the last one stopped.
//!
//! A record *header* the ring refuses (`TryRecvError::Corrupt`: someone wrote the length, flags
//! or check byte in shared memory) ends that ring for good: its records cannot be found past
//! it. The consumer counts the refusal, says so on stderr, and waits (alive) until the harness
//! replaces the ring and raises the generation in the slots; then both agents open the new
//! ring under the same name, and the producer notes where it left the old one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipc_core::{AttachError, Consumer, CorruptReason, Producer, Segment, TryRecvError, TrySendError};
use schemas::envelope::{EnvelopeEncoder, EnvelopeHeader, PayloadOffset, VerifyOptions, verify_envelope};

use super::slots::{self, Slots};

/// The hidden `chaos-agent` subcommand's arguments.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// `producer` or `consumer`.
    #[arg(long)]
    role: String,
    /// The ring to produce into or consume from.
    #[arg(long)]
    ring: String,
    /// The agent's slots file (counters and commands).
    #[arg(long)]
    slots: PathBuf,
    /// The envelope source name.
    #[arg(long, default_value = "chaos")]
    name: String,
    /// Producer: records per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Producer, test only: skip this sequence number without sending it (a loss the checks
    /// must find).
    #[arg(long)]
    skip_seq: Option<u64>,
}

/// Runs the agent until the harness sets its stop slot.
pub fn run(args: &AgentArgs) -> Result<()> {
    let slots = Slots::open(&args.slots).with_context(|| format!("mapping {}", args.slots.display()))?;
    match args.role.as_str() {
        "producer" => produce(args, &slots),
        "consumer" => consume(args, &slots),
        other => bail!("unknown chaos agent role {other:?}"),
    }
}

/// How an agent's turn on one ring ended.
enum Ended {
    /// The harness set the stop slot.
    Stop,
    /// The harness replaced the ring: open it again.
    Replaced,
}

/// Opens ring `name` as it is now, and the generation it is (read first: a replacement landing
/// in between is seen at the next look, and opening the new ring again is harmless).
fn open_ring(name: &str, slots: &Slots) -> Result<(Segment, u64)> {
    let generation = slots.get(slots::GENERATION);
    let segment = Segment::open(name).with_context(|| format!("opening ring {name:?}"))?;
    Ok((segment, generation))
}

/// Whether the harness replaced the ring since generation `open` was opened.
fn replaced(slots: &Slots, open: u64) -> bool {
    slots.get(slots::GENERATION) != open
}

/// Attaches through the window where a killed predecessor still looks alive.
fn attach<T>(what: &str, mut try_attach: impl FnMut() -> Result<T, AttachError>) -> Result<T> {
    let started = Instant::now();
    loop {
        match try_attach() {
            Ok(handle) => return Ok(handle),
            Err(AttachError::Busy { .. }) if started.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("attaching as {what}")),
        }
    }
}

/// FNV-1a over the sequence number and the filler: any changed byte changes it.
pub fn checksum(seq: u64, fill: &str) -> u64 {
    seq.to_le_bytes()
        .iter()
        .chain(fill.as_bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The filler of record `seq`: 0 to 96 letters that depend on it, so records differ in length.
fn fill(seq: u64, out: &mut String) {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let len = (x % 97) as usize;
    out.clear();
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(char::from(b'a' + (x % 26) as u8));
    }
}

/// Record `seq` as an envelope; with `bad_sum` its checksum does not match.
fn encode<'e>(enc: &'e mut EnvelopeEncoder, source: &str, seq: u64, bad_sum: bool, filler: &mut String) -> &'e [u8] {
    fill(seq, filler);
    let sum = checksum(seq, filler) ^ if bad_sum { 0x0100_0000_0000_0001 } else { 0 };
    let (seq_text, sum_text) = (seq.to_string(), format!("{sum:016x}"));
    let metadata = [("fill", filler.as_str()), ("seq", seq_text.as_str()), ("sum", sum_text.as_str())];
    let header = EnvelopeHeader::new(source, "chaos").with_metadata(&metadata);
    enc.encode(&header, |_| PayloadOffset::none())
}

/// The sequence number of a record that is an envelope with a matching checksum.
pub fn check(payload: &[u8]) -> Option<u64> {
    let envelope = verify_envelope(payload, &VerifyOptions::default()).ok()?;
    let (mut seq, mut sum, mut filler) = (None, None, None);
    for kv in envelope.metadata()?.iter() {
        match kv.key() {
            "seq" => seq = kv.value(),
            "sum" => sum = kv.value(),
            "fill" => filler = kv.value(),
            _ => {}
        }
    }
    let seq: u64 = seq?.parse().ok()?;
    let sum = u64::from_str_radix(sum?, 16).ok()?;
    (checksum(seq, filler?) == sum).then_some(seq)
}

/// A small xorshift generator for the garbage bytes (no need for a crate).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Commits `payload`, waiting while the ring is full or its consumer is away (a restarting
/// consumer or relay): backpressure, never loss. `Err(Ended)` (nothing committed) if told to
/// stop, or the ring was replaced, meanwhile.
fn send(producer: &mut Producer, slots: &Slots, generation: u64, payload: &[u8]) -> Result<Result<(), Ended>> {
    loop {
        match producer.try_send(payload) {
            Ok(()) => return Ok(Ok(())),
            Err(TrySendError::Full | TrySendError::Disconnected) => {
                if slots.get(slots::STOP) != 0 {
                    return Ok(Err(Ended::Stop));
                }
                if replaced(slots, generation) {
                    return Ok(Err(Ended::Replaced));
                }
                std::thread::sleep(Duration::from_micros(50));
            }
            Err(e) => return Err(e).context("sending"),
        }
    }
}

fn produce(args: &AgentArgs, slots: &Slots) -> Result<()> {
    loop {
        let (segment, generation) = open_ring(&args.ring, slots)?;
        let mut producer = attach("producer", || segment.producer())?;
        slots.set(slots::GENERATION_OPEN, generation);
        match produce_on(args, slots, &mut producer, generation)? {
            Ended::Stop => return Ok(()),
            Ended::Replaced => {
                // Every number below it was committed into the old ring (the slot is stored after
                // each commit, and this is not between the two).
                let left_at = slots.get(slots::NEXT_SEQ);
                slots.set(slots::LEFT_AT_SEQ, left_at);
                eprintln!("chaos-agent: ring {:?} replaced; leaving it at record {left_at}", args.ring);
            }
        }
    }
}

fn produce_on(args: &AgentArgs, slots: &Slots, producer: &mut Producer, generation: u64) -> Result<Ended> {
    let mut enc = EnvelopeEncoder::new();
    let mut filler = String::new();
    let mut rng = Rng(u64::from(std::process::id()) | 1 << 40);
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut due = Instant::now();
    let mut corrupt_made = slots.get(slots::GARBAGE_SENT) + slots.get(slots::BAD_SUM_SENT);
    while slots.get(slots::STOP) == 0 {
        if replaced(slots, generation) {
            return Ok(Ended::Replaced);
        }
        if corrupt_made < slots.get(slots::CORRUPT_ASKED) {
            // Alternately random bytes (not an envelope) and an envelope with a wrong checksum.
            let sent = if corrupt_made % 2 == 0 {
                let len = 16 + (rng.next() % 200) as usize;
                let garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                send(producer, slots, generation, &garbage)?
            } else {
                let seq = slots.get(slots::NEXT_SEQ);
                let record = encode(&mut enc, &args.name, seq, true, &mut filler);
                send(producer, slots, generation, record)?
            };
            match sent {
                Ok(()) => {
                    slots.add(if corrupt_made % 2 == 0 { slots::GARBAGE_SENT } else { slots::BAD_SUM_SENT }, 1);
                    corrupt_made += 1;
                }
                Err(ended) => return Ok(ended),
            }
            continue;
        }
        let flooding = slots.get(slots::FLOOD_SENT) < slots.get(slots::FLOOD_ASKED);
        if !flooding {
            let now = Instant::now();
            if now < due {
                std::thread::sleep((due - now).min(Duration::from_millis(5)));
                continue;
            }
            // After a long wait (a full ring, a stall) the rate starts over instead of bursting.
            due = if now - due > Duration::from_millis(100) { now + interval } else { due + interval };
        }
        let mut seq = slots.get(slots::NEXT_SEQ);
        if args.skip_seq == Some(seq) {
            // The injected loss: the number is used up and the record never sent.
            seq += 1;
            slots.set(slots::NEXT_SEQ, seq);
        }
        let record = encode(&mut enc, &args.name, seq, false, &mut filler);
        if let Err(ended) = send(producer, slots, generation, record)? {
            return Ok(ended);
        }
        // Stored after the commit: a kill between the two sends this record again (a repeat
        // of one), never skips one.
        slots.set(slots::NEXT_SEQ, seq + 1);
        if flooding {
            slots.add(slots::FLOOD_SENT, 1);
        }
    }
    Ok(Ended::Stop)
}

fn consume(args: &AgentArgs, slots: &Slots) -> Result<()> {
    loop {
        let (segment, generation) = open_ring(&args.ring, slots)?;
        let mut consumer: Consumer = attach("consumer", || segment.consumer())?;
        slots.set(slots::GENERATION_OPEN, generation);
        match consume_on(&args.ring, slots, &mut consumer, generation)? {
            Ended::Stop => return Ok(()),
            Ended::Replaced => eprintln!("chaos-agent: ring {:?} replaced; opening the new one", args.ring),
        }
    }
}

/// Refuses the corrupt header at `position`: counted, said, and nothing more read from this
/// ring (it cannot be: the next record starts where the bad header says). Waits, alive, for
/// the ring to be replaced.
fn refuse_ring(ring: &str, slots: &Slots, generation: u64, position: u64, reason: CorruptReason) -> Ended {
    slots.set(slots::CORRUPT_POSITION, position);
    slots.set(slots::CORRUPT_NEXT, slots.get(slots::NEXT_EXPECTED));
    slots.add(slots::RING_CORRUPT, 1);
    eprintln!(
        "chaos-agent: ring {ring:?}: record header at position {position} refused ({reason}); records from {} on \
         are behind it, waiting for the ring to be replaced",
        slots.get(slots::NEXT_EXPECTED)
    );
    loop {
        if slots.get(slots::STOP) != 0 {
            return Ended::Stop;
        }
        if replaced(slots, generation) {
            return Ended::Replaced;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn consume_on(ring: &str, slots: &Slots, consumer: &mut Consumer, generation: u64) -> Result<Ended> {
    while slots.get(slots::STOP) == 0 {
        if replaced(slots, generation) {
            return Ok(Ended::Replaced);
        }
        let record = match consumer.try_recv() {
            Ok(record) => record,
            // A producer (agent or relay) being restarted: wait for the next one.
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            Err(TryRecvError::Corrupt { position, reason }) => {
                return Ok(refuse_ring(ring, slots, generation, position, reason));
            }
            Err(e) => return Err(e).context("receiving"),
        };
        // Counted before the record is released: a kill between the two sees it again (a
        // repeat of one), never misses one.
        match check(&record) {
            None => slots.add(slots::REFUSED, 1),
            Some(seq) => {
                let next = slots.get(slots::NEXT_EXPECTED);
                if seq < next {
                    slots.add(slots::DUPLICATES, 1);
                    slots.raise(slots::MAX_REPEAT_DISTANCE, next - seq);
                } else {
                    if seq > next {
                        slots.add(slots::LOST, seq - next);
                        eprintln!("chaos-agent: ring {ring:?}: records {next}..{seq} lost");
                    }
                    slots.add(slots::RECEIVED, 1);
                    slots.set(slots::NEXT_EXPECTED, seq + 1);
                }
            }
        }
        drop(record);
    }
    Ok(Ended::Stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_checks_and_a_bad_sum_or_garbage_does_not() {
        let mut enc = EnvelopeEncoder::new();
        let mut filler = String::new();
        for seq in [0, 1, 77, u64::MAX / 3] {
            assert_eq!(check(encode(&mut enc, "t", seq, false, &mut filler)), Some(seq));
            assert_eq!(check(encode(&mut enc, "t", seq, true, &mut filler)), None);
        }
        assert_eq!(check(b"not an envelope at all"), None);
        // One hex digit of the checksum changed (to another hex digit: still a valid envelope).
        let mut changed = encode(&mut enc, "t", 5, false, &mut filler).to_vec();
        let sum = format!("{:016x}", checksum(5, &filler));
        let at = changed.windows(16).position(|w| w == sum.as_bytes()).expect("the checksum text");
        changed[at] = if changed[at] == b'0' { b'1' } else { b'0' };
        assert_eq!(check(&changed), None);
    }
}
