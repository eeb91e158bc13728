//! What a receiver has committed, per inbound stream, kept in a side file so that it survives a
//! crash of the receiving relay (see PROTOCOL.md, "Receiver state").
//!
//! The file holds two copies (*slots*) of the state, each with a sequence number and a checksum;
//! a save overwrites the older slot in place with one `pwrite` (no new file, no rename: those
//! cost the receiving relay more than the records of a small DATA message), so a save torn by
//! a crash leaves the other slot, the state before it, intact, and loading takes the newest
//! valid slot. When the state outgrows a slot, the file is written anew (temporary file, then
//! `rename`: a reader sees the old file or the new, never a mix) with larger slots. Not
//! fsynced: the file lives as long as the shared-memory ring it describes (a process crash keeps
//! both; a host crash loses the ring anyway, and each entry names the local ring's epoch so a
//! recreated ring voids it). Version 1 files (one copy, no sequence number) are still read.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::wire::{self, RejectReason, Rejected};

/// Largest checkpoint file read.
const MAX_FILE_LEN: u64 = 64 << 20;
/// First line of a version 1 file (one copy of the state, rewritten whole by each save).
const MAGIC_V1: &str = "tadpole-relay-checkpoint 1";
/// First line of each slot of a version 2 file.
const MAGIC: &str = "tadpole-relay-checkpoint 2";
/// Smallest slot: a page holds dozens of streams.
const MIN_SLOT_LEN: usize = 4096;

/// Why a checkpoint file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// Reading or writing failed.
    #[error("checkpoint file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a checkpoint, is damaged (checksum), or holds an impossible entry.
    #[error("checkpoint file {path} is invalid at line {line}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The first bad line (1-based).
        line: usize,
    },
}

/// What a receiver knows of one inbound stream `(origin, stream)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StreamState {
    /// The source ring's epoch this state is for.
    pub epoch: u64,
    /// Every record below this position is done.
    pub next: u64,
    /// The local ring's epoch when `next` was recorded (0: no local ring, unknown route).
    pub local_epoch: u64,
    /// Earlier source epochs of this stream: DATA for them is stale.
    pub retired: VecDeque<u64>,
    /// Rejected records the sender has not released yet (positions increasing).
    pub rejects: VecDeque<Rejected>,
}

/// Streams `(origin, stream)` → state.
type Streams = BTreeMap<(String, String), StreamState>;

/// Streams `(origin, stream)` → state, with the file that keeps them.
#[derive(Debug, Default)]
pub(crate) struct Checkpoints {
    pub path: Option<PathBuf>,
    pub streams: Streams,
    /// The open version 2 file; `None` until the first save (or after a version 1 file).
    file: Option<SlotFile>,
    /// Sequence number of the last save (or of the slot loaded).
    seq: u64,
}

/// A version 2 file: two slots of `slot_len` bytes, the one of save `seq` at `(seq % 2) *
/// slot_len`, each its text then NUL bytes.
#[derive(Debug)]
struct SlotFile {
    file: File,
    slot_len: usize,
    /// Length of the text last written into each slot: a shorter one overwrites the rest with
    /// NULs.
    written: [usize; 2],
    /// Reused for each save.
    buf: Vec<u8>,
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

impl Checkpoints {
    /// Loads `path` (empty when it does not exist).
    pub fn load(path: &Path) -> Result<Checkpoints, CheckpointError> {
        let io = |source| CheckpointError::Io { path: path.to_owned(), source };
        let text = match File::open(path) {
            Ok(file) => {
                let mut text = String::new();
                use std::io::Read;
                file.take(MAX_FILE_LEN).read_to_string(&mut text).map_err(io)?;
                text
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let mut checkpoints = Checkpoints { path: Some(path.to_owned()), ..Checkpoints::default() };
        if text.is_empty() {
            return Ok(checkpoints);
        }
        if text.starts_with(&format!("{MAGIC_V1}\n")) {
            checkpoints.streams = parse(&text, MAGIC_V1, path)?;
            return Ok(checkpoints);
        }
        // Version 2: the newest slot that is whole. A save torn by a crash damages only the
        // slot it was writing, whose ACK never left; the other slot is the state before it.
        let invalid = CheckpointError::Invalid { path: path.to_owned(), line: 1 };
        if text.len() % 2 != 0 || text.len() < 2 * MIN_SLOT_LEN {
            return Err(invalid);
        }
        let slot_len = text.len() / 2;
        let (mut best, mut first_error, mut written) = (None, None, [0; 2]);
        for (i, slot) in [&text[..slot_len], &text[slot_len..]].into_iter().enumerate() {
            let body = slot.split('\0').next().unwrap_or("");
            written[i] = body.len();
            match parse_slot(body, path) {
                Ok((seq, streams)) => {
                    if best.as_ref().is_none_or(|(s, _)| seq > *s) {
                        best = Some((seq, streams));
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let Some((seq, streams)) = best else { return Err(first_error.unwrap_or(invalid)) };
        let file = std::fs::OpenOptions::new().write(true).open(path).map_err(io)?;
        checkpoints.streams = streams;
        checkpoints.seq = seq;
        checkpoints.file = Some(SlotFile { file, slot_len, written, buf: Vec::new() });
        Ok(checkpoints)
    }

    /// Saves the state (nothing without a path): into the older slot, or a new file when it
    /// has outgrown its slots.
    pub fn store(&mut self) -> Result<(), CheckpointError> {
        let Some(path) = &self.path else { return Ok(()) };
        let io = |source| CheckpointError::Io { path: path.clone(), source };
        let seq = self.seq + 1;
        let text = render(seq, &self.streams);
        match &mut self.file {
            Some(f) if text.len() <= f.slot_len => {
                let slot = (seq % 2) as usize;
                f.buf.clear();
                f.buf.extend_from_slice(text.as_bytes());
                f.buf.resize(text.len().max(f.written[slot]), 0);
                f.file.write_all_at(&f.buf, (slot * f.slot_len) as u64).map_err(io)?;
                f.written[slot] = text.len();
            }
            _ => {
                let slot_len = (2 * text.len()).next_power_of_two().max(MIN_SLOT_LEN);
                let mut image = vec![0u8; 2 * slot_len];
                image[..text.len()].copy_from_slice(text.as_bytes());
                image[slot_len..slot_len + text.len()].copy_from_slice(text.as_bytes());
                let mut tmp = path.clone().into_os_string();
                tmp.push(".tmp");
                let mut file = File::create(&tmp).map_err(io)?;
                file.write_all(&image).map_err(io)?;
                std::fs::rename(&tmp, path).map_err(io)?;
                // The descriptor follows the file through the rename.
                self.file = Some(SlotFile { file, slot_len, written: [text.len(); 2], buf: Vec::new() });
            }
        }
        self.seq = seq;
        Ok(())
    }
}

fn render(seq: u64, streams: &BTreeMap<(String, String), StreamState>) -> String {
    let mut body = format!("{MAGIC}\nseq {seq}\n");
    for ((origin, stream), s) in streams {
        let retired: Vec<String> = s.retired.iter().map(u64::to_string).collect();
        let rejects: Vec<String> = s.rejects.iter().map(|r| format!("{}:{}", r.position, r.reason.code())).collect();
        body.push_str(&format!(
            "{origin}\t{stream}\t{}\t{}\t{}\t{}\t{}\n",
            s.epoch,
            s.next,
            s.local_epoch,
            retired.join(","),
            rejects.join(",")
        ));
    }
    let sum = fnv(&body);
    body.push_str(&format!("sum {sum:016x}\n"));
    body
}

/// One version 2 slot: its sequence number and streams.
fn parse_slot(text: &str, path: &Path) -> Result<(u64, Streams), CheckpointError> {
    let invalid = CheckpointError::Invalid { path: path.to_owned(), line: 2 };
    let seq_line =
        text.split_inclusive('\n').nth(1).ok_or(CheckpointError::Invalid { path: path.to_owned(), line: 1 })?;
    let seq =
        seq_line.strip_prefix("seq ").and_then(|s| s.trim_end_matches('\n').parse::<u64>().ok()).ok_or(invalid)?;
    // The checksum covers the sequence line too; parse skips it as the second line.
    Ok((seq, parse(text, MAGIC, path)?))
}

fn parse(text: &str, magic: &str, path: &Path) -> Result<Streams, CheckpointError> {
    let invalid = |line: usize| CheckpointError::Invalid { path: path.to_owned(), line };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let n = lines.len();
    if n < 2 || lines[0] != format!("{magic}\n") {
        return Err(invalid(1));
    }
    // Version 2 slots carry their sequence number on the second line.
    let first_entry = if magic == MAGIC { 2 } else { 1 };
    if n < first_entry + 1 {
        return Err(invalid(n));
    }
    let body_len: usize = lines[..n - 1].iter().map(|l| l.len()).sum();
    let sum_line = lines[n - 1].trim_end_matches('\n');
    let sum = sum_line.strip_prefix("sum ").and_then(|s| u64::from_str_radix(s, 16).ok());
    if sum != Some(fnv(&text[..body_len])) {
        return Err(invalid(n));
    }
    let mut streams = BTreeMap::new();
    for (i, line) in lines[first_entry..n - 1].iter().enumerate() {
        let bad = || invalid(i + first_entry + 1);
        let fields: Vec<&str> = line.trim_end_matches('\n').split('\t').collect();
        let [origin, stream, epoch, next, local_epoch, retired, rejects] = fields[..] else { return Err(bad()) };
        if !wire::valid_name(origin) || !wire::valid_name(stream) {
            return Err(bad());
        }
        let num = |s: &str| s.parse::<u64>().map_err(|_| bad());
        let (epoch, next, local_epoch) = (num(epoch)?, num(next)?, num(local_epoch)?);
        let retired = retired.split(',').filter(|s| !s.is_empty()).map(num).collect::<Result<VecDeque<_>, _>>()?;
        let mut parsed = VecDeque::new();
        for r in rejects.split(',').filter(|s| !s.is_empty()) {
            let (pos, code) = r.split_once(':').ok_or_else(bad)?;
            let reason = code.parse::<u8>().ok().and_then(RejectReason::from_code).ok_or_else(bad)?;
            let position = num(pos)?;
            if position >= next || parsed.len() >= wire::MAX_REJECTS {
                return Err(bad());
            }
            parsed.push_back(Rejected { position, reason });
        }
        let state = StreamState { epoch, next, local_epoch, retired, rejects: parsed };
        streams.insert((origin.to_owned(), stream.to_owned()), state);
    }
    Ok(streams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_file_is_read_and_the_next_save_writes_version_2() {
        let path = std::env::temp_dir().join(format!("tadpole-ckpt-v1-{}", std::process::id()));
        let body = format!("{MAGIC_V1}\nhost-a\torders\t7\t64\t9\t3\t8:1\n");
        std::fs::write(&path, format!("{body}sum {:016x}\n", fnv(&body))).unwrap();
        let mut checkpoints = Checkpoints::load(&path).unwrap();
        let state = &checkpoints.streams[&("host-a".to_owned(), "orders".to_owned())];
        assert_eq!((state.epoch, state.next, state.local_epoch), (7, 64, 9));
        assert_eq!(state.rejects.len(), 1);
        checkpoints.store().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&format!("{MAGIC}\nseq 1\n")), "{text:?}");
        let again = Checkpoints::load(&path).unwrap();
        assert_eq!(again.streams, checkpoints.streams);
        let _ = std::fs::remove_file(&path);
    }
}
