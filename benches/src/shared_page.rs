//! One page of named POSIX shared memory for the floor probe: the same mechanism the rings use
//! (`shm_open` + `MAP_SHARED | MAP_POPULATE`), without any ring on top. The creator unlinks the
//! name as soon as the peer has mapped it, or on drop at the latest.

use std::ffi::CString;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

/// Bytes mapped.
pub const PAGE_LEN: usize = 4096;

/// A mapped page of shared memory.
pub struct SharedPage {
    ptr: NonNull<u8>,
    /// Set while this process created the name and has not unlinked it yet.
    linked: Option<CString>,
}

// SAFETY: the page is only accessed through atomics.
unsafe impl Send for SharedPage {}

fn os_name(name: &str) -> io::Result<CString> {
    CString::new(format!("/tadpole-bench.{name}")).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

impl SharedPage {
    /// Creates `name` exclusively (mode 0600), zero-filled.
    pub fn create(name: &str) -> io::Result<SharedPage> {
        let c = os_name(name)?;
        // SAFETY: valid C string, constant flags and mode.
        let fd =
            unsafe { libc::shm_open(c.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC, 0o600) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is the descriptor just opened.
        let sized = unsafe { libc::ftruncate(fd, PAGE_LEN as libc::off_t) } == 0;
        let mapped = if sized { Self::map(fd) } else { Err(io::Error::last_os_error()) };
        if mapped.is_err() {
            // SAFETY: removing the name this call created.
            unsafe { libc::shm_unlink(c.as_ptr()) };
        }
        Ok(SharedPage { ptr: mapped?, linked: Some(c) })
    }

    /// Opens and maps a page another process created.
    pub fn open(name: &str) -> io::Result<SharedPage> {
        let c = os_name(name)?;
        // SAFETY: valid C string; no O_CREAT.
        let fd = unsafe { libc::shm_open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedPage { ptr: Self::map(fd)?, linked: None })
    }

    /// Maps `fd` and closes it (the mapping keeps the memory).
    fn map(fd: libc::c_int) -> io::Result<NonNull<u8>> {
        // SAFETY: a fresh shared mapping of an open fd; the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                0,
            )
        };
        let err = io::Error::last_os_error();
        // SAFETY: closing the descriptor we own; the mapping stays valid.
        unsafe { libc::close(fd) };
        if ptr == libc::MAP_FAILED {
            return Err(err);
        }
        NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
    }

    /// Removes the name (both processes keep their mapping). Idempotent.
    pub fn unlink(&mut self) {
        if let Some(c) = self.linked.take() {
            // SAFETY: valid C string naming the segment this process created.
            unsafe { libc::shm_unlink(c.as_ptr()) };
        }
    }

    /// The 64-bit word at byte `offset` (a multiple of 8 below [`PAGE_LEN`]).
    pub fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset % 8 == 0 && offset < PAGE_LEN);
        // SAFETY: in bounds and 8-aligned (the mapping is page aligned); the mapping lives as
        // long as `self`, and the page is only ever accessed through atomics.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }
}

impl SharedPage {
    /// The 32-bit word at byte `offset` (a multiple of 4 below [`PAGE_LEN`]): a futex word.
    pub fn word32(&self, offset: usize) -> &AtomicU32 {
        assert!(offset % 4 == 0 && offset < PAGE_LEN);
        // SAFETY: in bounds and 4-aligned (the mapping is page aligned); the mapping lives as
        // long as `self`, and the page is only ever accessed through atomics.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }
}

impl Drop for SharedPage {
    fn drop(&mut self) {
        self.unlink();
        // SAFETY: exactly the mapping `map` returned; borrows of it end with `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), PAGE_LEN) };
    }
}
