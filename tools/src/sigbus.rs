//! Surviving a ring truncated underneath `tadpole stat` and `tadpole tap`.
//!
//! Both read rings that other processes own. A named segment can be shrunk by any process that
//! can open its file; touching the mapping past the new end then raises `SIGBUS`, whose default
//! action kills the tool without a word. Two layers keep that from happening:
//!
//! 1. Before each read the tools ask [`Segment::is_truncated`] (one `fstat`) and stop with an
//!    ordinary error when the file has shrunk. That alone leaves a window: the file may shrink
//!    between the check and the access.
//! 2. [`confine`] installs a `SIGBUS` handler that closes the window. A fault on a file mapping
//!    past the end of its file (`BUS_ADRERR`) can here only be a truncated ring: the handler
//!    prints a message and ends the process with [`EXIT_TRUNCATED`]. It cannot resume the read
//!    (nothing could be read, and unwinding out of a signal handler is not allowed), so exiting
//!    from the handler is the confinement. Any other `SIGBUS` keeps its default action.
//!
//! Library users get the same protection, without a handler, from sealed rings
//! (`Segment::connect`), which nobody can truncate.
//!
//! [`Segment::is_truncated`]: ipc_core::Segment::is_truncated

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// The exit status of a tool whose ring was truncated while it read it.
pub const EXIT_TRUNCATED: i32 = 3;

/// For the test of the handler itself: skip layer 1, so a truncation is met by a fault.
const SKIP_SIZE_CHECK_ENV: &str = "TADPOLE_SKIP_SIZE_CHECK";

const MESSAGE: &[u8] = b"tadpole: the ring's file was truncated by another process while being read (SIGBUS); \
stopping. Sealed rings (Segment::connect) cannot be truncated.\n";

extern "C" fn on_sigbus(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let code = unsafe { (*info).si_code };
    if code == libc::BUS_ADRERR {
        // SAFETY: write(2) and _exit(2) are async-signal-safe; MESSAGE is a static buffer.
        unsafe {
            libc::write(libc::STDERR_FILENO, MESSAGE.as_ptr().cast(), MESSAGE.len());
            libc::_exit(EXIT_TRUNCATED);
        }
    }
    // SA_RESETHAND restored the default action: returning re-runs the faulting access, which
    // now ends the process by SIGBUS exactly as it would have without this handler.
}

/// Installs the `SIGBUS` handler described in the module docs (once per process is enough;
/// installing it again is harmless).
pub fn confine() -> std::io::Result<()> {
    let action = SigAction::new(SigHandler::SigAction(on_sigbus), SaFlags::SA_RESETHAND, SigSet::empty());
    // SAFETY: the handler only reads its siginfo and calls async-signal-safe functions.
    unsafe { sigaction(Signal::SIGBUS, &action) }.map_err(std::io::Error::from)?;
    Ok(())
}

/// Whether the tools should check the file's size before each read (layer 1).
pub fn check_sizes() -> bool {
    std::env::var_os(SKIP_SIZE_CHECK_ENV).is_none()
}
