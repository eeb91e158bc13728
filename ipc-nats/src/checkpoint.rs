//! What a feeder has committed into its ring, kept in a side file so that a crashed feeder
//! resumes exactly where its ring stands.
//!
//! Before each commit the feeder writes an intent: "stream sequences through `pending` are
//! being committed into the ring whose frontier is `from`". After a crash the ring's frontier
//! says whether that commit happened (it moved past `from`) or not: a batch commit is atomic,
//! so either every record of it is in the ring or none is, and the file never needs to be
//! written after the commit. The file is rewritten whole (temporary file, then `rename`), and
//! lives beside the ring in `/dev/shm` by default: a host crash loses both.

use std::path::{Path, PathBuf};

const MAGIC: &str = "tadpole-jetstream-feeder 1";
/// Largest file read: one line of numbers.
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
pub(crate) fn load(path: &Path) -> Result<Option<State>, CheckpointError> {
    use std::io::Read;
    let io = |source| CheckpointError::Io { path: path.to_owned(), source };
    let mut text = String::new();
    match std::fs::File::open(path) {
        Ok(file) => file.take(MAX_FILE_LEN).read_to_string(&mut text).map_err(io)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    parse(&text).map(Some).ok_or_else(|| CheckpointError::Invalid { path: path.to_owned() })
}

fn parse(text: &str) -> Option<State> {
    let (body, sum) = text.strip_suffix('\n')?.rsplit_once('\n')?;
    if u64::from_str_radix(sum.strip_prefix("sum ")?, 16).ok()? != fnv(body) {
        return None;
    }
    let (magic, fields) = body.split_once('\n')?;
    if magic != MAGIC {
        return None;
    }
    let nums: Vec<u64> = fields.split('\t').map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let [epoch, committed, pending, from] = nums[..] else { return None };
    Some(State { epoch, committed, pending, from })
}

/// Writes `state` to `path` (temporary file, then rename).
pub(crate) fn store(path: &Path, state: &State) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.to_owned(), source };
    let body = format!("{MAGIC}\n{}\t{}\t{}\t{}", state.epoch, state.committed, state.pending, state.from);
    let text = format!("{body}\nsum {:016x}\n", fnv(&body));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_state_loads_back_and_a_damaged_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("ipc-nats-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("feeder");
        let state = State { epoch: 7, committed: 41, pending: 44, from: 4096 };
        store(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), Some(state));
        let text = std::fs::read_to_string(&path).unwrap().replace("41", "42");
        std::fs::write(&path, text).unwrap();
        assert!(matches!(load(&path), Err(CheckpointError::Invalid { .. })));
        assert_eq!(load(&dir.join("absent")).unwrap(), None);
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
