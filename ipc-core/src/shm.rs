//! Platform layer: named POSIX shared memory and anonymous memfd mappings. Knows nothing of
//! rings; it owns a file descriptor and a `MAP_SHARED` mapping, and unmaps (and for the creator
//! of a named segment, unlinks) when the last handle drops.

use std::ffi::CString;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{FcntlArg, OFlag, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{self, MapFlags, ProtFlags};
use nix::sys::stat::{Mode, fstat};
use nix::unistd::ftruncate;

use crate::sigbus;

/// Prefix of every segment name in `/dev/shm`, so tools can find ours and nothing else.
pub const NAME_PREFIX: &str = "tadpole.";

/// Longest user-visible name (the OS limit is 255 with the prefix and slash).
pub const MAX_NAME_LEN: usize = 200;

/// Checks a user-visible segment name and returns the `shm_open` name (`/tadpole.<name>`).
pub(crate) fn os_name(name: &str) -> Option<CString> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !ok {
        return None;
    }
    CString::new(format!("/{NAME_PREFIX}{name}")).ok()
}

/// A file's size and the storage it really holds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FileSize {
    /// `st_size`.
    pub len: u64,
    /// `st_blocks * 512`.
    pub allocated: u64,
}

/// One mapping of a whole segment: shared memory behind a file descriptor, or (for rings
/// between threads of one process, and for Miri) a page-aligned heap allocation.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// `None` for a heap allocation.
    fd: Option<OwnedFd>,
    /// Set for the creator of a named segment: the name is unlinked when the mapping drops.
    unlink_on_drop: Option<CString>,
    keep: AtomicBool,
    /// The registration with the `SIGBUS` handler of a mapping of a file (see `sigbus`); `None`
    /// for the heap, and where no handler could be installed (under Miri).
    guard: Option<sigbus::Guard>,
}

// SAFETY: the mapping is plain shared memory; all cross-thread access to it goes through atomics
// or through the ring protocol, which hands each byte range to one side at a time.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only exposes the raw pointer and length.
unsafe impl Sync for Mapping {}

fn os_error(op: &'static str, e: nix::Error) -> io::Error {
    let e = io::Error::from(e);
    io::Error::new(e.kind(), format!("{op}: {e}"))
}

/// The seals every shared ring's memfd carries: its size can never change again, so no process
/// holding it can make a mapping of it fault.
pub(crate) const RING_SEALS: SealFlag =
    SealFlag::F_SEAL_SHRINK.union(SealFlag::F_SEAL_GROW).union(SealFlag::F_SEAL_SEAL);

impl Mapping {
    /// Creates `/tadpole.<name>` exclusively with mode 0600, sized `len`, zero-filled and mapped.
    pub(crate) fn create_named(os_name: &CString, len: usize) -> io::Result<Mapping> {
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC;
        let fd = mman::shm_open(os_name.as_c_str(), flags, Mode::S_IRUSR | Mode::S_IWUSR).map_err(io::Error::from)?;
        let result = Self::size_and_map(fd, len);
        if result.is_err() {
            // Removing the half-made segment we created.
            let _ = mman::shm_unlink(os_name.as_c_str());
        }
        let mut mapping = result?;
        mapping.unlink_on_drop = Some(os_name.clone());
        Ok(mapping)
    }

    /// Opens an existing named segment read-write (not mapped yet).
    pub(crate) fn open_named(os_name: &CString) -> io::Result<OwnedFd> {
        mman::shm_open(os_name.as_c_str(), OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()).map_err(io::Error::from)
    }

    /// Creates an anonymous memfd of `len` bytes, sealed with [`RING_SEALS`].
    pub(crate) fn create_memfd(len: usize) -> io::Result<Mapping> {
        let fd = memfd_create(c"tadpole-ring", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)
            .map_err(|e| os_error("memfd_create", e))?;
        let mapping = Self::size_and_map(fd, len)?;
        let fd = mapping.fd.as_ref().ok_or_else(|| io::Error::other("memfd mapping without its fd"))?;
        fcntl(fd, FcntlArg::F_ADD_SEALS(RING_SEALS)).map_err(|e| os_error("fcntl(F_ADD_SEALS)", e))?;
        Ok(mapping)
    }

    /// The current size of the file behind `fd`, and the bytes of storage it really holds
    /// (a sparse file holds fewer than its size).
    pub(crate) fn file_size(fd: impl AsFd) -> io::Result<FileSize> {
        let st = fstat(fd).map_err(|e| os_error("fstat", e))?;
        let len = u64::try_from(st.st_size).map_err(|_| io::Error::other("negative segment size"))?;
        let allocated = u64::try_from(st.st_blocks).unwrap_or(0).saturating_mul(512);
        Ok(FileSize { len, allocated })
    }

    /// The seals on `fd`; an error for a file that cannot carry seals (not a memfd).
    pub(crate) fn seals(fd: impl AsFd) -> io::Result<SealFlag> {
        let bits = fcntl(fd, FcntlArg::F_GET_SEALS).map_err(|e| os_error("fcntl(F_GET_SEALS)", e))?;
        Ok(SealFlag::from_bits_retain(bits))
    }

    /// Maps the first `len` bytes of a file someone else made, without faulting pages in: a
    /// hostile file's header is checked before any more of it is touched.
    pub(crate) fn map_prefix(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        Self::map_with(fd.try_clone()?, len, false)
    }

    /// Maps `len` bytes of a file whose header was checked. Pages are populated up front (so
    /// the fast path takes no page fault) only when the file already holds storage for all of
    /// them: populating a sparse file would allocate it, and a valid header on a sparse file
    /// must not let anyone fill `/dev/shm` through whoever opens it.
    pub(crate) fn map_existing(fd: OwnedFd, len: usize) -> io::Result<Mapping> {
        let populate = Self::file_size(&fd)?.allocated >= len as u64;
        Self::map_with(fd, len, populate)
    }

    fn size_and_map(fd: OwnedFd, len: usize) -> io::Result<Mapping> {
        let off = libc::off_t::try_from(len).map_err(|_| io::Error::other("segment too large"))?;
        // New bytes read as zero; populating the fresh mapping below allocates them.
        ftruncate(&fd, off).map_err(|e| os_error("ftruncate", e))?;
        Self::map_with(fd, len, true)
    }

    fn map_with(fd: OwnedFd, len: usize, populate: bool) -> io::Result<Mapping> {
        let Some(length) = NonZeroUsize::new(len) else {
            return Ok(Mapping {
                ptr: NonNull::dangling(),
                len: 0,
                fd: Some(fd),
                unlink_on_drop: None,
                keep: AtomicBool::new(false),
                guard: None,
            });
        };
        let flags = if populate { MapFlags::MAP_SHARED | MapFlags::MAP_POPULATE } else { MapFlags::MAP_SHARED };
        // SAFETY: a fresh shared mapping of an fd we hold, at an address the kernel picks, so it
        // aliases no Rust object; the pointer is used only through `Mapping`, which unmaps it.
        let ptr = unsafe { mman::mmap(None, length, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, flags, &fd, 0) }
            .map_err(|e| os_error("mmap", e))?;
        // Every mapping of a file, sealed or not: `from_fd` may be handed a file that can shrink.
        let guard = sigbus::register(ptr.as_ptr().cast(), len);
        Ok(Mapping { ptr: ptr.cast(), len, fd: Some(fd), unlink_on_drop: None, keep: AtomicBool::new(false), guard })
    }

    /// A zeroed, page-aligned heap allocation of `len` bytes, private to this process.
    pub(crate) fn heap(len: usize) -> io::Result<Mapping> {
        let layout = std::alloc::Layout::from_size_align(len, 4096).map_err(|e| io::Error::other(e.to_string()))?;
        // SAFETY: `len` is at least one header page, so the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Mapping { ptr, len, fd: None, unlink_on_drop: None, keep: AtomicBool::new(false), guard: None })
    }

    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    pub(crate) fn fd(&self) -> Option<&OwnedFd> {
        self.fd.as_ref()
    }

    /// Whether the `SIGBUS` handler found this mapping's file truncated and mapped zeros over it
    /// (see `sigbus`): one relaxed load.
    pub(crate) fn truncated(&self) -> bool {
        self.guard.as_ref().is_some_and(sigbus::Guard::truncated)
    }

    /// [`probe_truncated`](Self::probe_truncated), ordered after this thread's earlier loads of
    /// the mapping: `false` means none of them read zeros a truncation left (see `sigbus`).
    pub(crate) fn truncated_after_reads(&self) -> bool {
        self.guard.as_ref().is_some_and(sigbus::Guard::truncated_after_reads)
    }

    /// [`truncated`](Self::truncated), after touching the mapping's last byte so that a file
    /// shrunk below it is found now (see `sigbus::Guard::probe`). For liveness checks.
    pub(crate) fn probe_truncated(&self) -> bool {
        self.guard.as_ref().is_some_and(sigbus::Guard::probe)
    }

    /// Keeps the name after the creator's last handle drops.
    pub(crate) fn keep(&self) {
        self.keep.store(true, Ordering::Relaxed);
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.fd.is_none() {
            let layout = std::alloc::Layout::from_size_align(self.len, 4096).expect("checked at allocation");
            // SAFETY: allocated in `heap` with this very layout; every borrow of the mapping
            // holds an `Arc<Mapping>`, so none outlives this drop.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        } else if self.len != 0 {
            // Unregistered first: once unmapped, the range may be another mapping's.
            drop(self.guard.take());
            // SAFETY: `ptr`/`len` are exactly what mmap returned; every borrow of the mapping
            // holds an `Arc<Mapping>`, so none outlives this drop.
            let _ = unsafe { mman::munmap(self.ptr.cast(), self.len) };
        }
        if let Some(name) = &self.unlink_on_drop {
            // The name may have been unlinked and given to a newer segment since: that one is
            // not ours to remove. (Between this check and the unlink the name can still change
            // hands; no call unlinks a name only if it is a given file.)
            let ours = || self.fd.as_ref().is_some_and(|fd| names_file(os_name_path(name).as_deref(), fd.as_fd()));
            if !self.keep.load(Ordering::Relaxed) && ours() {
                let _ = mman::shm_unlink(name.as_c_str());
            }
        }
    }
}

/// The `/dev/shm` path of the `shm_open` name `os_name` (`/tadpole.<name>`).
fn os_name_path(os_name: &CString) -> Option<String> {
    os_name.to_str().ok().map(|n| format!("/dev/shm{n}"))
}

/// Whether `path` names the very file `fd` holds (same device and inode).
pub(crate) fn names_file(path: Option<&str>, fd: BorrowedFd<'_>) -> bool {
    let (Some(path), Ok(by_fd)) = (path, fstat(fd)) else { return false };
    nix::sys::stat::stat(path).is_ok_and(|by_name| by_name.st_dev == by_fd.st_dev && by_name.st_ino == by_fd.st_ino)
}

/// Removes a named segment. Processes that have it mapped keep their mapping.
pub(crate) fn unlink(os_name: &CString) -> io::Result<()> {
    mman::shm_unlink(os_name.as_c_str()).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_prefixed() {
        assert_eq!(os_name("md-feed.1").unwrap().to_str().unwrap(), "/tadpole.md-feed.1");
        for bad in ["", ".hidden", "a/b", "sp ace", "ünï", &"x".repeat(MAX_NAME_LEN + 1)] {
            assert!(os_name(bad).is_none(), "{bad:?} accepted");
        }
    }
}
