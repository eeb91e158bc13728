//! A chaos agent's counters and the harness's commands to it: a page of `u64` atomics in a file
//! both processes map. The file outlives a `kill -9` of the agent (the page cache keeps it), so a
//! restarted producer goes on from its last committed sequence number and a restarted consumer
//! from the last one it checked.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots in the file (one page).
const SLOTS: usize = 512;
const BYTES: usize = SLOTS * 8;

/// Both roles: set by the harness to make the agent exit.
pub const STOP: usize = 0;

/// Producer: the sequence number of the next record to commit (stored after each commit).
pub const NEXT_SEQ: usize = 1;
/// Producer: records the harness asked to be sent back to back, ignoring the rate (cumulative).
pub const FLOOD_ASKED: usize = 2;
/// Producer: flood records sent.
pub const FLOOD_SENT: usize = 3;
/// Producer: corrupt records the harness asked for (cumulative).
pub const CORRUPT_ASKED: usize = 4;
/// Producer: committed records that are not envelopes at all (random bytes).
pub const GARBAGE_SENT: usize = 5;
/// Producer: committed envelopes whose checksum does not match their contents.
pub const BAD_SUM_SENT: usize = 6;

/// Consumer: the sequence number it expects next (one past the highest checked).
pub const NEXT_EXPECTED: usize = 1;
/// Consumer: records received for the first time.
pub const RECEIVED: usize = 2;
/// Consumer: records received again (sequence number below the expected one).
pub const DUPLICATES: usize = 3;
/// Consumer: the largest distance of a repeat behind the expected number.
pub const MAX_REPEAT_DISTANCE: usize = 4;
/// Consumer: sequence numbers skipped over (records that never came before a later one did).
pub const LOST: usize = 5;
/// Consumer: records refused: not an envelope, or a checksum that does not match.
pub const REFUSED: usize = 6;
/// Consumer: corrupt record headers the ring refused (`TryRecvError::Corrupt`; the ring cannot
/// be read past one, so the consumer waits for the harness to replace it).
pub const RING_CORRUPT: usize = 7;
/// Consumer: position of the last corrupt header refused.
pub const CORRUPT_POSITION: usize = 8;
/// Consumer: its `NEXT_EXPECTED` when it refused the last corrupt header: the first record
/// left behind in the dead ring.
pub const CORRUPT_NEXT: usize = 9;

/// Both roles: the ring's generation, raised by the harness each time it replaces the ring (a
/// new segment under the same name); an agent that sees it change opens the ring again.
pub const GENERATION: usize = 16;
/// Both roles: the generation of the ring the agent has open.
pub const GENERATION_OPEN: usize = 17;
/// Producer: its `NEXT_SEQ` when it left the last replaced ring: the first record it did not
/// commit there.
pub const LEFT_AT_SEQ: usize = 18;

/// The mapped file.
pub struct Slots {
    base: NonNull<AtomicU64>,
    _file: File,
}

// SAFETY: the mapping is only accessed through atomics, and lives as long as the struct.
unsafe impl Send for Slots {}
// SAFETY: as above: every access is an atomic operation on shared memory.
unsafe impl Sync for Slots {}

impl Slots {
    /// Maps `path`, creating it zeroed when it does not exist.
    pub fn open(path: &Path) -> io::Result<Slots> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if file.metadata()?.len() < BYTES as u64 {
            file.set_len(BYTES as u64)?;
        }
        // SAFETY: a fresh shared mapping of `BYTES` bytes of an open file at least that long;
        // the kernel picks the address, so nothing existing is replaced.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<AtomicU64>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Slots { base, _file: file })
    }

    fn slot(&self, i: usize) -> &AtomicU64 {
        assert!(i < SLOTS, "slot {i} out of range");
        // SAFETY: the mapping is `SLOTS` page-aligned u64s and `i < SLOTS`; AtomicU64 has the
        // layout of u64, and every process touches the file only through atomics.
        unsafe { &*self.base.as_ptr().add(i) }
    }

    /// The value of slot `i`.
    pub fn get(&self, i: usize) -> u64 {
        self.slot(i).load(Ordering::Acquire)
    }

    /// Stores `v` in slot `i`.
    pub fn set(&self, i: usize, v: u64) {
        self.slot(i).store(v, Ordering::Release);
    }

    /// Adds `n` to slot `i`.
    pub fn add(&self, i: usize, n: u64) {
        self.slot(i).fetch_add(n, Ordering::AcqRel);
    }

    /// Raises slot `i` to `v` if it is lower.
    pub fn raise(&self, i: usize, v: u64) {
        self.slot(i).fetch_max(v, Ordering::AcqRel);
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`; no reference into it outlives
        // `self` (they borrow it).
        unsafe { libc::munmap(self.base.as_ptr().cast(), BYTES) };
    }
}
