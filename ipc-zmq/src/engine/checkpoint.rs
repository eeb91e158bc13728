//! What a receiver has committed, per inbound stream, kept in a side file so that it survives a
//! crash of the receiving relay (see PROTOCOL.md, "Receiver state").
//!
//! The file is rewritten whole after every commit (write a temporary file, then `rename` over
//! the old one: a reader sees the old state or the new, never a mix) and not fsynced: it lives as
//! long as the shared-memory ring it describes (a process crash keeps both; a host crash loses
//! the ring anyway, and each entry names the local ring's epoch so a recreated ring voids it).

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::wire::{self, RejectReason, Rejected};

/// Largest checkpoint file read.
const MAX_FILE_LEN: u64 = 64 << 20;
const MAGIC: &str = "tadpole-relay-checkpoint 1";

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

/// Streams `(origin, stream)` → state, with the file that keeps them.
#[derive(Debug, Default)]
pub(crate) struct Checkpoints {
    pub path: Option<PathBuf>,
    pub streams: BTreeMap<(String, String), StreamState>,
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

impl Checkpoints {
    /// Loads `path` (empty when it does not exist).
    pub fn load(path: &Path) -> Result<Checkpoints, CheckpointError> {
        let io = |source| CheckpointError::Io { path: path.to_owned(), source };
        let text = match std::fs::File::open(path) {
            Ok(file) => {
                let mut text = String::new();
                use std::io::Read;
                file.take(MAX_FILE_LEN).read_to_string(&mut text).map_err(io)?;
                text
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let streams = if text.is_empty() { BTreeMap::new() } else { parse(&text, path)? };
        Ok(Checkpoints { path: Some(path.to_owned()), streams })
    }

    /// Writes the file (nothing without a path).
    pub fn store(&self) -> Result<(), CheckpointError> {
        let Some(path) = &self.path else { return Ok(()) };
        let io = |source| CheckpointError::Io { path: path.clone(), source };
        let text = render(&self.streams);
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(io)
    }
}

fn render(streams: &BTreeMap<(String, String), StreamState>) -> String {
    let mut body = format!("{MAGIC}\n");
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

fn parse(text: &str, path: &Path) -> Result<BTreeMap<(String, String), StreamState>, CheckpointError> {
    let invalid = |line: usize| CheckpointError::Invalid { path: path.to_owned(), line };
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let n = lines.len();
    if n < 2 || lines[0] != format!("{MAGIC}\n") {
        return Err(invalid(1));
    }
    let body_len: usize = lines[..n - 1].iter().map(|l| l.len()).sum();
    let sum_line = lines[n - 1].trim_end_matches('\n');
    let sum = sum_line.strip_prefix("sum ").and_then(|s| u64::from_str_radix(s, 16).ok());
    if sum != Some(fnv(&text[..body_len])) {
        return Err(invalid(n));
    }
    let mut streams = BTreeMap::new();
    for (i, line) in lines[1..n - 1].iter().enumerate() {
        let bad = || invalid(i + 2);
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
