//! Platform layer: named POSIX shared memory and anonymous memfd mappings. Knows nothing of
//! rings; it owns a file descriptor and a `MAP_SHARED` mapping, and unmaps (and for the creator
//! of a named segment, unlinks) when the last handle drops.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

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
}

// SAFETY: the mapping is plain shared memory; all cross-thread access to it goes through atomics
// or through the ring protocol, which hands each byte range to one side at a time.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only exposes the raw pointer and length.
unsafe impl Sync for Mapping {}

fn last_os_error(op: &'static str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{op}: {e}"))
}

impl Mapping {
    /// Creates `/tadpole.<name>` exclusively with mode 0600, sized `len`, zero-filled and mapped.
    pub(crate) fn create_named(os_name: &CString, len: usize) -> io::Result<Mapping> {
        // SAFETY: `os_name` is a valid NUL-terminated string; flags and mode are constants.
        let raw = unsafe {
            libc::shm_open(os_name.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC, 0o600)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a file descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let result = Self::size_and_map(fd, len);
        if result.is_err() {
            // SAFETY: valid C string; removing the half-made segment we created.
            unsafe { libc::shm_unlink(os_name.as_ptr()) };
        }
        let mut mapping = result?;
        mapping.unlink_on_drop = Some(os_name.clone());
        Ok(mapping)
    }

    /// Opens an existing named segment read-write (not mapped yet).
    pub(crate) fn open_named(os_name: &CString) -> io::Result<OwnedFd> {
        // SAFETY: valid C string; no O_CREAT, so mode is unused.
        let raw = unsafe { libc::shm_open(os_name.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a file descriptor we just opened and own.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// Creates an anonymous memfd of `len` bytes, sealed against shrinking and growing so no
    /// process holding it can make the mapping fault.
    pub(crate) fn create_memfd(len: usize) -> io::Result<Mapping> {
        // SAFETY: the name is a valid C string literal; flags are constants.
        let raw = unsafe { libc::memfd_create(c"tadpole-ring".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if raw < 0 {
            return Err(last_os_error("memfd_create"));
        }
        // SAFETY: `raw` is a file descriptor we just created and own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mapping = Self::size_and_map(fd, len)?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        let raw = mapping.fd.as_ref().map_or(-1, |fd| fd.as_raw_fd());
        // SAFETY: fcntl on an fd we own with a constant command and argument.
        if unsafe { libc::fcntl(raw, libc::F_ADD_SEALS, seals) } != 0 {
            return Err(last_os_error("fcntl(F_ADD_SEALS)"));
        }
        Ok(mapping)
    }

    /// The current size of the file behind `fd`.
    pub(crate) fn file_len(fd: &OwnedFd) -> io::Result<u64> {
        // SAFETY: zeroed `stat` is a valid out-parameter for fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; `st` is a valid pointer to a stat struct.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(last_os_error("fstat"));
        }
        u64::try_from(st.st_size).map_err(|_| io::Error::other("negative segment size"))
    }

    /// Maps the first `len` bytes of a file someone else made, without faulting pages in: a
    /// hostile file's header is checked before any more of it is touched.
    pub(crate) fn map_prefix(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        Self::map_with(fd.try_clone()?, len, false)
    }

    /// Maps `len` bytes of a file whose header was checked, populating every page.
    pub(crate) fn map_existing(fd: OwnedFd, len: usize) -> io::Result<Mapping> {
        Self::map_with(fd, len, true)
    }

    fn size_and_map(fd: OwnedFd, len: usize) -> io::Result<Mapping> {
        let off = libc::off_t::try_from(len).map_err(|_| io::Error::other("segment too large"))?;
        // SAFETY: fd is open and owned; ftruncate only sets its size (new bytes read as zero).
        if unsafe { libc::ftruncate(fd.as_raw_fd(), off) } != 0 {
            return Err(last_os_error("ftruncate"));
        }
        Self::map_with(fd, len, true)
    }

    fn map_with(fd: OwnedFd, len: usize, populate: bool) -> io::Result<Mapping> {
        if len == 0 {
            return Ok(Mapping {
                ptr: NonNull::dangling(),
                len: 0,
                fd: Some(fd),
                unlink_on_drop: None,
                keep: AtomicBool::new(false),
            });
        }
        // SAFETY: a fresh shared mapping of an fd we hold; the kernel picks the address. Populate
        // up front so the fast path never takes a page fault.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                if populate { libc::MAP_SHARED | libc::MAP_POPULATE } else { libc::MAP_SHARED },
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(last_os_error("mmap"));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len, fd: Some(fd), unlink_on_drop: None, keep: AtomicBool::new(false) })
    }

    /// A zeroed, page-aligned heap allocation of `len` bytes, private to this process.
    pub(crate) fn heap(len: usize) -> io::Result<Mapping> {
        let layout = std::alloc::Layout::from_size_align(len, 4096).map_err(|e| io::Error::other(e.to_string()))?;
        // SAFETY: `len` is at least one header page, so the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Mapping { ptr, len, fd: None, unlink_on_drop: None, keep: AtomicBool::new(false) })
    }

    pub(crate) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    pub(crate) fn fd(&self) -> Option<&OwnedFd> {
        self.fd.as_ref()
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
            // SAFETY: `ptr`/`len` are exactly what mmap returned; every borrow of the mapping
            // holds an `Arc<Mapping>`, so none outlives this drop.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
        if let Some(name) = &self.unlink_on_drop {
            if !self.keep.load(Ordering::Relaxed) {
                // SAFETY: valid C string naming the segment this process created.
                unsafe { libc::shm_unlink(name.as_ptr()) };
            }
        }
    }
}

/// Removes a named segment. Processes that have it mapped keep their mapping.
pub(crate) fn unlink(os_name: &CString) -> io::Result<()> {
    // SAFETY: valid C string.
    if unsafe { libc::shm_unlink(os_name.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
