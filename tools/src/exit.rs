//! How `tadpole` ends: its exit statuses, the error line (with what to do about it), a quiet
//! success when stdout is a closed pipe, and Ctrl-C as a clean stop for the commands that run
//! until interrupted (`stat --watch`, `tap --follow`).
//!
//! It must never turn a closed pipe into a panic (`tadpole stat | head`): the commands write with
//! `writeln!` and return the error, which [`report`] treats as success, and a panic hook catches
//! the `println!` of code that does not.

use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use ipc_core::OpenError;

use crate::sigbus::{EXIT_TRUNCATED, RingTruncated};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// The exit statuses, for every command's `--help` (the README has the same table).
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success (also when stdout was closed early, e.g. `| head`, and on Ctrl-C of --watch/--follow)
  1  the command failed (the message says why and what to do)
  2  usage error (unknown option, missing or invalid argument)
  3  a ring's file was truncated by another process while it was being read";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Makes Ctrl-C (SIGINT) and SIGTERM set [`interrupted`] instead of killing the process, once: a
/// second signal has the default action, so a stuck loop can still be killed.
pub fn stop_on_interrupt() -> io::Result<()> {
    let action = SigAction::new(SigHandler::Handler(on_interrupt), SaFlags::SA_RESETHAND, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// Whether Ctrl-C (or SIGTERM) arrived since [`stop_on_interrupt`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Whether stdout is a pipe whose reading end has been closed: a command idling in `--follow`
/// or `--watch` stops then, instead of waiting for its next write to fail.
pub fn stdout_closed() -> bool {
    let mut fd = libc::pollfd { fd: libc::STDOUT_FILENO, events: 0, revents: 0 };
    // SAFETY: one valid pollfd, a zero timeout: poll only reports the descriptor's state.
    let ready = unsafe { libc::poll(&mut fd, 1, 0) };
    // A pipe reports POLLERR to its writer once no reader is left.
    ready == 1 && fd.revents & libc::POLLERR != 0
}

/// Ends the process quietly with status 0 when a `println!` panics on a closed stdout, so code
/// that prints with the macros (the demos, the relay) never shows a backtrace after `| head`.
pub fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        // The message std's print macros panic with (`failed printing to stdout: {error}`).
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// The exit status for a command's outcome, printing the error (and a hint) on stderr.
pub fn report(outcome: anyhow::Result<()>) -> ExitCode {
    let Err(error) = outcome else { return ExitCode::SUCCESS };
    if is_broken_pipe(&error) {
        return ExitCode::SUCCESS;
    }
    eprintln!("tadpole: error: {}", describe(&error));
    if let Some(hint) = hint(&error) {
        eprintln!("  hint: {hint}");
    }
    if error.chain().any(|e| e.is::<RingTruncated>()) {
        return ExitCode::from(EXIT_TRUNCATED);
    }
    ExitCode::FAILURE
}

/// The error and its causes on one line, leaving out a cause the message before it already
/// quotes (error types that print their source inside their own message).
pub fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe))
}

/// What the user can do about an error, when the error itself does not say.
fn hint(error: &anyhow::Error) -> Option<&'static str> {
    for cause in error.chain() {
        if cause.is::<RingTruncated>() {
            return Some("recreate the ring; sealed rings (served with --socket) cannot be truncated");
        }
        if let Some(e) = cause.downcast_ref::<OpenError>() {
            return match e {
                OpenError::NotFound(_) => {
                    Some("`tadpole stat` lists the rings on this host (names are given without the `tadpole.` prefix)")
                }
                OpenError::InvalidName(_) => {
                    Some("a ring name is ASCII letters, digits, `-`, `_` and `.` (not first), without `/`")
                }
                OpenError::Io(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    Some("the ring belongs to another user: run as that user (or root)")
                }
                _ => None,
            };
        }
        if let Some(e) = cause.downcast_ref::<io::Error>() {
            if e.kind() == io::ErrorKind::PermissionDenied {
                return Some("run as the user that owns the file (or root)");
            }
        }
    }
    None
}
