//! `tadpole tap RING`: the records passing through a ring, decoded, without consuming them.
//!
//! Tap reads through an [`ipc_core::Observer`]: it maps the ring, copies each record out with
//! atomic loads and checks afterwards that the producer did not overwrite it meanwhile. It never
//! attaches as the producer or the consumer and never stores into the segment, so a ring that a
//! real consumer owns is not disturbed: nothing is consumed or released, no doorbell is rung,
//! no counter moves. A tap that falls a lap behind says so (`"kind": "lagged"`) and resumes at
//! the consumer's position; it cannot slow the producer down.
//!
//! Each record is classified by its bytes (or as `--decode` says): a verified FlatBuffers
//! envelope, an Arrow IPC frame (`0xFFFFFFFF` first), a relay dead-letter record (format
//! `ipc_zmq::engine::DeadLetter`, its message type equal to the ring record's), or raw bytes.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use arrow_buffer::{Buffer, MutableBuffer};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ipc_core::{ObserveError, Observed};
use ipc_zmq::engine::DeadLetter;
use ipc_zmq::wire::RejectReason;
use schemas::arrow_frame::{ArrowFrameDecoder, CONTINUATION_MARKER, DecodedFrame, END_OF_STREAM, FrameDecodeError};
use schemas::envelope::{EnvelopeHeader, VerifyOptions, envelope_to_json, verify_envelope};
use schemas::fb;
use serde_json::{Value, json};

use crate::exit;
use crate::json::safe_integers;
use crate::sigbus;
use crate::source::{RingSource, ensure_intact};

const AFTER_HELP: &str = "\
Examples:
  tadpole tap orders                        what is in the ring now, as JSON lines, then exit
  tadpole tap orders --follow               ... and every record committed after (Ctrl-C stops)
  tadpole tap orders --follow --new --count 10   the next 10 records
  tadpole tap orders --type Heartbeat --type 7   only these message types (names or numbers)
  tadpole tap ticks --follow --arrow-out ticks.arrows   Arrow batches to a file pyarrow opens
  tadpole tap orders-dead --decode dead-letter      what the far relay refused, and why
  tadpole tap orders --format hex            every record as hex

Each JSON line has position, message_type, len and kind, one of:
  envelope     \"envelope\": every header field and the decoded payload (a payload type this
               build does not know: also \"record_base64\", the whole record)
  arrow        \"arrow\": {frame: schema|dictionary|record_batch|end_of_stream, fields or rows}
  dead_letter  \"dead_letter\": {reason, route, origin, message_id, correlation_id,
               source_position, source_epoch, original_message_type, payload}
  raw          \"payload_base64\"
  lagged       the tap fell a lap behind and skipped \"skipped_bytes\" of traffic
Integers beyond 2^53 (timestamps, positions, u64 fields) are JSON strings.

--arrow-out writes the ring's Arrow frames as one Arrow IPC stream (pyarrow.ipc.open_stream):
it starts at the first schema frame seen, so start the tap before the producer's first batch
(or while the schema frame is still unreleased in the ring). Tap never consumes: the ring's
consumer sees every record as if no tap ran.";

/// How `tap` prints records.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// One JSON object per record (see below).
    Json,
    /// `pos N  type T  LEN B  <every byte in hex>`.
    Hex,
}

/// How `tap` reads records' bytes.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Decode {
    /// Envelope, Arrow frame, dead letter or raw, by the bytes.
    Auto,
    /// Every record must be an envelope (a record that fails verification is shown with why).
    Envelope,
    /// Every record is an Arrow IPC frame.
    Arrow,
    /// Every record is a relay dead-letter record.
    DeadLetter,
    /// No decoding: base64 in JSON.
    Raw,
}

/// `tadpole tap`'s arguments.
#[derive(clap::Args)]
#[command(after_help = format!("{AFTER_HELP}\n\n{}", exit::EXIT_STATUS_HELP))]
pub struct TapArgs {
    /// The ring's name (without the `tadpole.` prefix).
    #[arg(required_unless_present = "socket", conflicts_with = "socket")]
    name: Option<String>,
    /// Tap the sealed ring served at this Unix socket path (`SegmentServer`) instead.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Keep waiting for new records instead of stopping once the ring has no more.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Skip the records already in the ring: show only those committed from now on.
    #[arg(long, requires = "follow")]
    new: bool,
    /// The default now (kept so older scripts still run): start at the oldest unreleased record.
    #[arg(long, hide = true, conflicts_with = "new")]
    from_oldest: bool,
    /// Stop after this many records (after --type filtering).
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// Only records of this message type: a number, or an envelope payload name such as
    /// `Heartbeat` (repeat for several).
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_message_type)]
    types: Vec<u16>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// How to read the records' bytes.
    #[arg(long, value_enum, default_value_t = Decode::Auto)]
    decode: Decode,
    /// Also write the Arrow frames seen to this file as an Arrow IPC stream. Refuses to
    /// overwrite an existing file.
    #[arg(long, value_name = "FILE")]
    arrow_out: Option<PathBuf>,
}

/// A `--type` value: a number, or the name of an envelope payload type (the record message type
/// of an envelope is its payload union tag).
fn parse_message_type(s: &str) -> Result<u16, String> {
    if let Ok(n) = s.parse::<u16>() {
        return Ok(n);
    }
    fb::Payload::ENUM_VALUES
        .iter()
        .find(|p| p.variant_name().is_some_and(|n| n.eq_ignore_ascii_case(s)))
        .map(|p| u16::from(p.0))
        .ok_or_else(|| {
            let names: Vec<&str> = fb::Payload::ENUM_VALUES.iter().filter_map(|p| p.variant_name()).skip(1).collect();
            format!("not a number (0-65535) or an envelope payload name ({})", names.join(", "))
        })
}

/// Runs `tadpole tap`.
pub fn run(args: &TapArgs) -> Result<()> {
    let source = match (&args.socket, &args.name) {
        (Some(path), _) => RingSource::Socket(path.clone()),
        (None, Some(name)) => RingSource::Named(name.clone()),
        (None, None) => bail!("give a ring name or --socket PATH"),
    };
    let name = source.label();
    let mut arrow = ArrowState {
        decoder: ArrowFrameDecoder::new(),
        out: args.arrow_out.as_deref().map(ArrowOut::create).transpose()?,
    };
    let segment = source.open().with_context(|| format!("opening ring {name:?}"))?;
    let mut tap = segment.observer();
    if args.new {
        tap.skip_to_latest();
    }
    if args.follow {
        exit::stop_on_interrupt().context("installing the Ctrl-C handler")?;
        let from = if args.new { "new records only" } else { "from the oldest unreleased record" };
        eprintln!("tadpole tap: following {name} ({from}); Ctrl-C stops");
    }
    let mut out = io::stdout().lock();
    let mut copy = Vec::new();
    let (mut seen, mut idle_polls) = (0u64, 0u64);
    let idle = crossbeam_utils::Backoff::new();
    let outcome = (|| -> Result<()> {
        while args.count.is_none_or(|n| seen < n) && !exit::interrupted() {
            ensure_intact(&segment).with_context(|| format!("tapping ring {name:?}"))?;
            match tap.try_observe(&mut copy) {
                Ok(rec) => {
                    idle.reset();
                    if !args.types.is_empty() && !args.types.contains(&rec.message_type) {
                        continue;
                    }
                    seen += 1;
                    let shown = describe(rec, &copy, args.decode, &mut arrow)?;
                    match args.format {
                        Format::Json => writeln!(out, "{}", safe_integers(shown))?,
                        Format::Hex => writeln!(
                            out,
                            "pos {:>12}  type {:>5}  {:>7} B  {}",
                            rec.position,
                            rec.message_type,
                            copy.len(),
                            hex(&copy)
                        )?,
                    }
                }
                Err(ObserveError::Empty) if !args.follow => break,
                Err(ObserveError::Empty) => {
                    if idle.is_completed() {
                        std::thread::sleep(Duration::from_millis(1));
                        idle_polls += 1;
                        if idle_polls % 100 == 0 && exit::stdout_closed() {
                            break;
                        }
                    } else {
                        idle.snooze();
                    }
                }
                // Never twice in a row without moving forward (see `Observer::try_observe`).
                Err(ObserveError::Lagged { skipped }) => match args.format {
                    Format::Json => writeln!(out, "{}", json!({"kind": "lagged", "skipped_bytes": skipped}))?,
                    Format::Hex => writeln!(out, "-- lagged: skipped {skipped} bytes of traffic")?,
                },
                // ipc-core caught the SIGBUS of a read past the file's new end.
                Err(ObserveError::Truncated) => {
                    return Err(anyhow::Error::new(sigbus::RingTruncated { how: "SIGBUS caught" }))
                        .with_context(|| format!("tapping ring {name:?}"));
                }
                Err(e @ (ObserveError::Corrupt(_) | ObserveError::ImpossibleBounds { .. })) => bail!(
                    "ring {name:?}: {e}; the segment is corrupt or a writer is misbehaving \
                     (`tadpole stat {name}` shows who is attached)"
                ),
            }
        }
        Ok(())
    })();
    // The file is finished whatever stopped the tap, so what was written stays readable.
    let finished = arrow.out.take().map(ArrowOut::finish).transpose();
    outcome?;
    finished?;
    Ok(())
}

/// A record as one JSON value.
fn describe(rec: Observed, bytes: &[u8], decode: Decode, arrow: &mut ArrowState) -> Result<Value> {
    let mut line = json!({ "position": rec.position, "message_type": rec.message_type, "len": bytes.len() });
    let fields = line.as_object_mut().expect("an object");
    let looks_arrow = bytes.len() >= 8 && bytes[..4] == CONTINUATION_MARKER;
    let letter = DeadLetter::decode(bytes).filter(|l| l.message_type == rec.message_type && !l.stream.is_empty());
    let kind = match decode {
        Decode::Auto => {
            if let Some(env) = envelope_json(bytes) {
                fields.insert("envelope".into(), env);
                "envelope"
            } else if looks_arrow {
                fields.insert("arrow".into(), arrow.frame(bytes)?);
                "arrow"
            } else if let Some(letter) = letter {
                fields.insert("dead_letter".into(), dead_letter_json(&letter));
                "dead_letter"
            } else {
                fields.insert("payload_base64".into(), BASE64.encode(bytes).into());
                "raw"
            }
        }
        Decode::Envelope => match verify_envelope(bytes, &VerifyOptions::default()) {
            Ok(_) => {
                fields.insert("envelope".into(), envelope_json(bytes).expect("verified above"));
                "envelope"
            }
            Err(e) => {
                fields.insert("error".into(), format!("not a valid envelope: {e}").into());
                fields.insert("payload_base64".into(), BASE64.encode(bytes).into());
                "invalid"
            }
        },
        Decode::Arrow => {
            fields.insert("arrow".into(), arrow.frame(bytes)?);
            "arrow"
        }
        Decode::DeadLetter => match DeadLetter::decode(bytes) {
            Some(letter) => {
                fields.insert("dead_letter".into(), dead_letter_json(&letter));
                "dead_letter"
            }
            None => {
                fields.insert("error".into(), "not a dead-letter record (ipc_zmq::engine::DeadLetter v1)".into());
                fields.insert("payload_base64".into(), BASE64.encode(bytes).into());
                "invalid"
            }
        },
        Decode::Raw => {
            fields.insert("payload_base64".into(), BASE64.encode(bytes).into());
            "raw"
        }
    };
    fields.insert("kind".into(), kind.into());
    Ok(line)
}

/// The envelope in `bytes` as JSON, if they are exactly one that verifies. A payload type this
/// build does not know comes with the whole record in base64, so nothing is lost.
fn envelope_json(bytes: &[u8]) -> Option<Value> {
    let envelope = verify_envelope(bytes, &VerifyOptions::default()).ok()?;
    let mut json = envelope_to_json(&envelope);
    if envelope.payload_type().variant_name().is_none() {
        json["record_base64"] = BASE64.encode(bytes).into();
    }
    Some(json)
}

fn dead_letter_json(letter: &DeadLetter<'_>) -> Value {
    let reason = match letter.reason {
        RejectReason::UnknownRoute => "unknown_route",
        RejectReason::TooLarge => "too_large",
        RejectReason::InvalidEnvelope => "invalid_envelope",
    };
    let envelope = verify_envelope(letter.payload, &VerifyOptions::default()).ok();
    // A dead letter records the route, not the relay: the origin shown is the envelope's
    // source, when the refused record is an envelope.
    let (origin, message_id, correlation_id) = match &envelope {
        Some(env) => {
            let h = EnvelopeHeader::from_envelope(env);
            (env.source().map(str::to_owned), Some(h.message_id.to_string()), Some(h.correlation_id.to_string()))
        }
        None => (None, None, None),
    };
    let payload = match envelope_json(letter.payload) {
        Some(env) => json!({ "kind": "envelope", "envelope": env }),
        None => json!({ "kind": "raw", "payload_base64": BASE64.encode(letter.payload) }),
    };
    json!({
        "reason": reason,
        "route": letter.stream,
        "origin": origin,
        "message_id": message_id,
        "correlation_id": correlation_id,
        "source_position": letter.position,
        "source_epoch": letter.epoch,
        "original_message_type": letter.message_type,
        "payload": payload,
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Arrow frames: decoded (which validates them) for the JSON line, and kept in `--arrow-out`.
struct ArrowState {
    decoder: ArrowFrameDecoder,
    out: Option<ArrowOut>,
}

impl ArrowState {
    fn frame(&mut self, bytes: &[u8]) -> Result<Value> {
        // The decoder reads arrays in place and needs the frame 8-aligned: an Arrow buffer is
        // 64-aligned.
        let mut aligned = MutableBuffer::new(bytes.len());
        aligned.extend_from_slice(bytes);
        let frame: Buffer = aligned.into();
        let (shown, keep) = match self.decoder.decode(&frame) {
            Ok(DecodedFrame::Schema(schema)) => {
                let fields: Vec<Value> = schema
                    .fields()
                    .iter()
                    .map(
                        |f| json!({ "name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable() }),
                    )
                    .collect();
                (json!({ "frame": "schema", "fields": fields }), Keep::Schema)
            }
            Ok(DecodedFrame::Dictionary { id, is_delta }) => {
                (json!({ "frame": "dictionary", "id": id, "is_delta": is_delta }), Keep::Frame)
            }
            Ok(DecodedFrame::RecordBatch(batch)) => (
                json!({ "frame": "record_batch", "rows": batch.num_rows(), "columns": batch.num_columns() }),
                Keep::Frame,
            ),
            Ok(DecodedFrame::EndOfStream) => (json!({ "frame": "end_of_stream" }), Keep::Nothing),
            Err(e @ FrameDecodeError::MissingSchema(_)) => {
                if let Some(out) = &mut self.out {
                    out.skipped_before_schema += 1;
                }
                (json!({ "error": e.to_string() }), Keep::Nothing)
            }
            Err(e) => (json!({ "error": e.to_string() }), Keep::Nothing),
        };
        if let Some(out) = &mut self.out {
            out.keep(keep, bytes)?;
        }
        Ok(shown)
    }
}

/// What of a decoded frame goes into `--arrow-out`.
#[derive(Clone, Copy)]
enum Keep {
    Schema,
    Frame,
    Nothing,
}

/// `--arrow-out`: the frames of the first schema seen, as one Arrow IPC stream. The ring's
/// frames are IPC messages already, so they are written as they are, then an end-of-stream
/// marker.
struct ArrowOut {
    path: PathBuf,
    file: BufWriter<File>,
    /// The schema frame the file holds, once one was seen.
    schema: Option<Vec<u8>>,
    /// Whether the frames now arriving belong to that schema.
    current: bool,
    skipped_before_schema: u64,
    skipped_other_schema: u64,
    batches: u64,
}

impl ArrowOut {
    fn create(path: &Path) -> Result<ArrowOut> {
        let file = File::create_new(path).with_context(|| {
            format!("--arrow-out {}: cannot create it (an existing file is never overwritten)", path.display())
        })?;
        Ok(ArrowOut {
            path: path.to_owned(),
            file: BufWriter::new(file),
            schema: None,
            current: false,
            skipped_before_schema: 0,
            skipped_other_schema: 0,
            batches: 0,
        })
    }

    fn keep(&mut self, keep: Keep, frame: &[u8]) -> Result<()> {
        match keep {
            Keep::Schema => match &self.schema {
                None => {
                    self.write(frame)?;
                    self.schema = Some(frame.to_vec());
                    self.current = true;
                }
                // The same schema again (a producer restarting its stream) continues the file.
                Some(first) => self.current = first.as_slice() == frame,
            },
            Keep::Frame if self.current => {
                self.write(frame)?;
                self.batches += 1;
            }
            Keep::Frame => self.skipped_other_schema += 1,
            Keep::Nothing => {}
        }
        Ok(())
    }

    fn write(&mut self, frame: &[u8]) -> Result<()> {
        self.file.write_all(frame).with_context(|| format!("writing {}", self.path.display()))
    }

    /// Ends the stream and says what the file holds (on stderr: stdout carries the records).
    fn finish(mut self) -> Result<()> {
        let path = self.path.display().to_string();
        if self.schema.is_some() {
            self.file.write_all(&END_OF_STREAM).with_context(|| format!("writing {path}"))?;
        }
        self.file.flush().with_context(|| format!("writing {path}"))?;
        if self.schema.is_none() {
            eprintln!(
                "tadpole tap: --arrow-out {path}: no Arrow schema frame went by, so the file is empty; \
                 start the tap before the producer sends its first batch"
            );
        } else {
            eprintln!("tadpole tap: --arrow-out {path}: wrote {} dictionary and record batch frames", self.batches);
        }
        if self.skipped_before_schema > 0 {
            eprintln!(
                "tadpole tap: --arrow-out {path}: {} frames skipped: they came before any schema frame \
                 (the schema went by before the tap started)",
                self.skipped_before_schema
            );
        }
        if self.skipped_other_schema > 0 {
            eprintln!(
                "tadpole tap: --arrow-out {path}: {} frames of a different schema skipped (an IPC stream \
                 has one schema; tap again with another file for the new one)",
                self.skipped_other_schema
            );
        }
        Ok(())
    }
}
