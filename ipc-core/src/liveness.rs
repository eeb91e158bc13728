//! Is a process alive, and is it still the process we recorded? A pid alone is not an identity
//! (pids are reused), so every attachment records the pid together with the process start time.

use std::fs;

/// Bits of the start time kept when an identity is packed into an owner word.
const START_MASK: u64 = 0x7FFF_FFFF;

/// A process identity: pid plus start time (clock ticks since boot, `/proc/<pid>/stat` field 22).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    /// The operating-system process id.
    pub pid: u32,
    /// Start time in clock ticks since boot; 0 when unknown.
    pub start_time: u64,
}

impl ProcessId {
    /// The calling process.
    pub fn current() -> ProcessId {
        let pid = std::process::id();
        ProcessId { pid, start_time: process_start_time(pid).unwrap_or(0) }
    }

    /// Packs pid and the low 31 bits of the start time into bits 0-62 of a word (never zero
    /// for a real pid); bit 63 is left to the caller.
    pub(crate) fn pack(self) -> u64 {
        u64::from(self.pid) | (self.start_time & START_MASK) << 32
    }

    pub(crate) fn unpack(word: u64) -> ProcessId {
        ProcessId { pid: word as u32, start_time: (word >> 32) & START_MASK }
    }

    /// Whether this process still runs. A recorded start time (low 31 bits) must match, so a
    /// reused pid reads as dead. Costs a `kill(pid, 0)` and a read of `/proc/<pid>/stat`.
    pub fn is_alive(self) -> bool {
        self.resolve().is_some()
    }

    /// The full identity of this process if it still runs (a packed identity keeps only 31
    /// bits of the start time; this restores all of them).
    pub(crate) fn resolve(self) -> Option<ProcessId> {
        if self.pid == 0 || self.pid > i32::MAX as u32 {
            return None;
        }
        // SAFETY: signal 0 performs only the existence and permission check; no signal is sent.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, 0) };
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM) {
            return None;
        }
        match process_state(self.pid)? {
            // A zombie keeps its /proc entry but will never touch the ring again.
            ('Z' | 'X', _) => None,
            (_, start) if self.start_time == 0 || start & START_MASK == self.start_time & START_MASK => {
                Some(ProcessId { pid: self.pid, start_time: start })
            }
            _ => None,
        }
    }
}

/// State letter and start time of `pid`, from `/proc/<pid>/stat`.
fn process_state(pid: u32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // `state` was field 3; the start time is field 22.
    let start = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start))
}

/// Start time of `pid` in clock ticks since boot, or `None` if there is no such process.
pub fn process_start_time(pid: u32) -> Option<u64> {
    process_state(pid).map(|(_, start)| start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_process_is_alive_and_a_reused_pid_is_not() {
        let me = ProcessId::current();
        assert!(me.start_time > 0);
        assert!(me.is_alive());
        let impostor = ProcessId { start_time: me.start_time + 1, ..me };
        assert!(!impostor.is_alive());
        assert_eq!(ProcessId::unpack(me.pack()), ProcessId { pid: me.pid, start_time: me.start_time & START_MASK });
    }

    #[test]
    fn exited_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessId { pid: child.id(), start_time: process_start_time(child.id()).unwrap_or(0) };
        child.wait().unwrap();
        assert!(!id.is_alive());
    }
}
