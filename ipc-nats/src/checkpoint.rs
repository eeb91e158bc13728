//! What a feeder has committed into its ring, kept in a side file so that a crashed feeder
//! resumes exactly where its ring stands.
//!
//! Before each commit the feeder writes an intent: "stream sequences through `pending` are
//! being committed into the ring whose frontier is `from`". After a crash the ring's frontier
//! says whether that commit happened (it moved past `from`) or not: a batch commit is atomic,
//! so either every record of it is in the ring or none is, and the file never needs to be
//! written after the commit. It lives beside the ring in `/dev/shm` by default: a host crash
//! loses both.
//!
//! The file holds two slots of [`SLOT`] bytes; each save overwrites the older slot in place with
//! one `pwrite` (no fsync: a process crash keeps the page cache), so a save costs one system
//! call wherever the file lives (the version 1 file was written anew and renamed over the old
//! one before every batch, which on a disk tripled the feeder's latency). A save torn by a
//! crash damages only the slot being written, whose commit never happened: loading takes the
//! whole slot with the highest save number. Each slot, padded with spaces to [`SLOT`] bytes:
//!
//! ```text
//! tadpole-jetstream-feeder 2\n
//! <save number>\t<epoch>\t<committed>\t<pending>\t<from>\n
//! sum <FNV-1a of the two lines above, 16 hex digits>\n
//! ```
//!
//! Version 1 files (one copy of the first and last lines, without a save number) are read, and
//! replaced by version 2 at the first save.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &str = "tadpole-jetstream-feeder 2";
const MAGIC_V1: &str = "tadpole-jetstream-feeder 1";
/// Bytes per slot: the text of the largest state, padded.
const SLOT: usize = 160;
/// Largest file read.
const MAX_FILE_LEN: u64 = 4096;

/// Why a feeder's checkpoint file could not be read or written.
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
    /// The file is not a feeder checkpoint, or is damaged.
    #[error("checkpoint file {path} is not a valid feeder checkpoint; remove it to start from the durable consumer")]
    Invalid {
        /// The file.
        path: PathBuf,
    },
}

/// The recorded state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct State {
    /// The local ring's epoch the state is for.
    pub epoch: u64,
    /// Every stream sequence through this is done (committed, or dropped).
    pub committed: u64,
    /// Sequences through this were being committed when the file was written (0: none).
    pub pending: u64,
    /// The ring's frontier before that commit.
    pub from: u64,
}

impl State {
    /// Resolves the intent against the ring as found: `frontier` its committed frontier now,
    /// `epoch` its epoch. A ring of another epoch was recreated: what the file says of the old
    /// one is kept (what was committed into it is not fed again).
    pub fn resolve(self, epoch: u64, frontier: u64) -> State {
        let committed = if self.pending != 0 && self.epoch == epoch && frontier > self.from {
            self.pending.max(self.committed)
        } else {
            self.committed
        };
        State { epoch, committed, pending: 0, from: 0 }
    }
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Reads `path`: `None` when it does not exist.
#[cfg(test)]
pub(crate) fn load(path: &Path) -> Result<Option<State>, CheckpointError> {
    Ok(read(path)?.map(|(_, state)| state))
}

/// The save number and state of the newest whole slot of `path`; `None` when it does not exist.
fn read(path: &Path) -> Result<Option<(u64, State)>, CheckpointError> {
    use std::io::Read;
    let io = |source| CheckpointError::Io { path: path.to_owned(), source };
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(file) => file.take(MAX_FILE_LEN).read_to_end(&mut bytes).map_err(io)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let invalid = || CheckpointError::Invalid { path: path.to_owned() };
    if bytes.is_empty() {
        // Made at start by a feeder that died before its first save.
        return Ok(None);
    }
    if bytes.starts_with(MAGIC_V1.as_bytes()) {
        let text = std::str::from_utf8(&bytes).map_err(|_| invalid())?;
        return parse_v1(text).map(|state| Some((0, state))).ok_or_else(invalid);
    }
    let newest = bytes
        .chunks(SLOT)
        .filter_map(|slot| parse_slot(std::str::from_utf8(slot).ok()?))
        .max_by_key(|(number, _)| *number);
    newest.map(Some).ok_or_else(invalid)
}

/// The checked body (the lines before `sum`) of one copy.
fn checked(text: &str) -> Option<&str> {
    let (body, sum) = text.strip_suffix('\n')?.rsplit_once('\n')?;
    (u64::from_str_radix(sum.strip_prefix("sum ")?, 16).ok()? == fnv(body)).then_some(body)
}

fn numbers(fields: &str) -> Option<Vec<u64>> {
    fields.split('\t').map(|f| f.parse().ok()).collect()
}

fn parse_slot(slot: &str) -> Option<(u64, State)> {
    let (magic, fields) = checked(slot.trim_end_matches(' '))?.split_once('\n')?;
    if magic != MAGIC {
        return None;
    }
    let [number, epoch, committed, pending, from] = numbers(fields)?[..] else { return None };
    Some((number, State { epoch, committed, pending, from }))
}

fn parse_v1(text: &str) -> Option<State> {
    let (magic, fields) = checked(text)?.split_once('\n')?;
    if magic != MAGIC_V1 {
        return None;
    }
    let [epoch, committed, pending, from] = numbers(fields)?[..] else { return None };
    Some(State { epoch, committed, pending, from })
}

/// An open checkpoint file, saved in place (see the module docs).
pub(crate) struct Checkpoint {
    path: PathBuf,
    file: File,
    /// The number of the last save (0: none yet).
    saves: u64,
}

impl Checkpoint {
    /// Opens (or makes) the file at `path`, with the state it holds (`None`: a new file).
    pub(crate) fn open(path: &Path) -> Result<(Checkpoint, Option<State>), CheckpointError> {
        let found = read(path)?;
        let io = |source| CheckpointError::Io { path: path.to_owned(), source };
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        let saves = found.map_or(0, |(number, _)| number);
        if saves == 0 && found.is_some() {
            // A version 1 file: its text would shadow the first slot's end.
            file.set_len(0).map_err(io)?;
        }
        Ok((Checkpoint { path: path.to_owned(), file, saves }, found.map(|(_, state)| state)))
    }

    /// Saves `state` over the older slot: one `pwrite`.
    pub(crate) fn store(&mut self, state: &State) -> Result<(), CheckpointError> {
        let number = self.saves + 1;
        let body =
            format!("{MAGIC}\n{number}\t{}\t{}\t{}\t{}", state.epoch, state.committed, state.pending, state.from);
        let mut slot = format!("{body}\nsum {:016x}\n", fnv(&body)).into_bytes();
        debug_assert!(slot.len() <= SLOT, "a slot holds any state");
        slot.resize(SLOT, b' ');
        let offset = (number % 2) * SLOT as u64;
        self.file
            .write_all_at(&slot, offset)
            .map_err(|source| CheckpointError::Io { path: self.path.clone(), source })?;
        self.saves = number;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_state_loads_back_and_a_damaged_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("ipc-nats-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("feeder");
        let _ = std::fs::remove_file(&path);
        let state = State { epoch: 7, committed: 41, pending: 44, from: 4096 };
        let (mut file, found) = Checkpoint::open(&path).unwrap();
        assert_eq!(found, None);
        file.store(&state).unwrap();
        assert_eq!(load(&path).unwrap(), Some(state));
        let text = std::fs::read_to_string(&path).unwrap().replace("41", "42");
        std::fs::write(&path, text).unwrap();
        assert!(matches!(load(&path), Err(CheckpointError::Invalid { .. })));
        assert_eq!(load(&dir.join("absent")).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_save_torn_by_a_crash_leaves_the_slot_before_it() {
        let dir = std::env::temp_dir().join(format!("ipc-nats-ckpt-torn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("feeder");
        let states: Vec<State> = (1..=5).map(|i| State { epoch: 3, committed: i * 10, pending: 0, from: 0 }).collect();
        let (mut file, _) = Checkpoint::open(&path).unwrap();
        for state in &states {
            file.store(state).unwrap();
        }
        assert_eq!(load(&path).unwrap(), Some(states[4]), "the newest save");
        // Save 5 went into slot 1; tear it: the older slot (save 4) is what a restart finds.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT + 30] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();
        let (mut file, found) = Checkpoint::open(&path).unwrap();
        assert_eq!(found, Some(states[3]));
        // Saving again goes on from there, over the torn slot.
        file.store(&states[0]).unwrap();
        assert_eq!(load(&path).unwrap(), Some(states[0]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_version_1_file_is_read_and_replaced_at_the_first_save() {
        let dir = std::env::temp_dir().join(format!("ipc-nats-ckpt-v1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("feeder");
        let body = format!("{MAGIC_V1}\n7\t41\t44\t4096");
        std::fs::write(&path, format!("{body}\nsum {:016x}\n", fnv(&body))).unwrap();
        let old = State { epoch: 7, committed: 41, pending: 44, from: 4096 };
        assert_eq!(load(&path).unwrap(), Some(old));
        let (mut file, found) = Checkpoint::open(&path).unwrap();
        assert_eq!(found, Some(old));
        let new = State { epoch: 7, committed: 50, pending: 0, from: 0 };
        file.store(&new).unwrap();
        assert_eq!(load(&path).unwrap(), Some(new));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_intent_counts_as_committed_only_if_the_ring_moved_past_it() {
        let state = State { epoch: 7, committed: 41, pending: 44, from: 4096 };
        assert_eq!(state.resolve(7, 4096).committed, 41, "crashed before the commit");
        assert_eq!(state.resolve(7, 4200).committed, 44, "crashed after the commit");
        assert_eq!(state.resolve(8, 4200).committed, 41, "another ring: the intent says nothing of it");
    }
}
