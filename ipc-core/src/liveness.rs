//! Is a process alive, and is it still the process we recorded? A pid alone is not an identity:
//! pids are reused, and a process in another PID namespace (another container sharing
//! `/dev/shm`) has a pid that means nothing here. So every attachment records the pid, the
//! process start time, the PID- and time-namespace inodes and the boot id, and keeps a heartbeat
//! (see `heartbeat`). The rule everywhere: "cannot tell" is judged alive, never dead.
//!
//! Judging a recorded process:
//! - different boot id (both known): dead;
//! - same PID namespace (both known): `kill(pid, 0)` answers "no such process" → dead;
//!   otherwise, with a `/proc` of this namespace readable, its start time must match (a reused
//!   pid, a zombie → dead; a match → alive); anything else is "cannot tell";
//! - "cannot tell", another or an unknown namespace: the heartbeat decides. Older than the
//!   timeout → dead; fresh, in the future, or written on a clock we cannot compare (another
//!   time namespace) → alive.

use std::fs;
use std::sync::OnceLock;
use std::time::Duration;

/// Bits of the start time kept when an identity is packed into an owner word.
const START_MASK: u64 = 0x7FFF_FFFF;

/// A process identity: pid plus start time (clock ticks since boot, `/proc/<pid>/stat` field 22).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessId {
    /// The operating-system process id, as the process itself sees it (in its PID namespace).
    pub pid: u32,
    /// Start time in clock ticks since boot; 0 when unknown.
    pub start_time: u64,
}

impl ProcessId {
    /// The calling process.
    pub fn current() -> ProcessId {
        // `/proc/self`, not `/proc/<pid>`: a `/proc` mounted for another PID namespace numbers
        // this process differently, but `self` is always this process.
        ProcessId { pid: std::process::id(), start_time: read_state("/proc/self/stat").map_or(0, |(_, s)| s) }
    }

    /// The pid and the low 31 bits of bits 32-62 of an owner word (see `layout::AttachBlock`).
    pub(crate) fn unpack(word: u64) -> ProcessId {
        ProcessId { pid: word as u32, start_time: (word >> 32) & START_MASK }
    }

    /// Whether this process, a pid of the caller's PID namespace, still runs. A recorded start
    /// time (low 31 bits) must match, so a reused pid reads as dead. When it cannot tell (no
    /// `/proc` of this namespace to read), it says alive. Costs a `kill(pid, 0)` and a read of
    /// `/proc/<pid>/stat`.
    pub fn is_alive(self) -> bool {
        !matches!(check_local(self.pid, self.start_time), Local::Dead)
    }
}

/// What `kill` and `/proc` say of a pid of this PID namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Local {
    /// Runs, with this start time (0 if `/proc` did not say).
    Alive(u64),
    Dead,
    /// `kill` found it but `/proc` cannot confirm it is the process recorded.
    Unknown,
}

/// Checks `pid` of this PID namespace; `start_time` 0 accepts any start time.
pub(crate) fn check_local(pid: u32, start_time: u64) -> Local {
    if pid == 0 || pid > i32::MAX as u32 {
        return Local::Dead;
    }
    // Miri runs the rings between threads of one process, and cannot make this syscall.
    if cfg!(miri) {
        return Local::Unknown;
    }
    // SAFETY: signal 0 performs only the existence and permission check; no signal is sent.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return Local::Dead;
    }
    if !facts().proc_is_ours {
        return Local::Unknown;
    }
    match read_state(&format!("/proc/{pid}/stat")) {
        // A zombie keeps its /proc entry but will never touch the ring again.
        Ok(('X', _)) => Local::Dead,
        // `Z` is the state of the thread-group leader: a process whose main thread exited while
        // other threads run shows it too, and is alive. Only a zombie without threads is dead.
        Ok(('Z', start)) => match live_threads(pid) {
            Some(0 | 1) => Local::Dead,
            Some(_) if start_time == 0 || start & START_MASK == start_time & START_MASK => Local::Alive(start),
            Some(_) => Local::Dead,
            None => Local::Unknown,
        },
        Ok((_, start)) if start_time == 0 || start & START_MASK == start_time & START_MASK => Local::Alive(start),
        Ok(_) => Local::Dead,
        // Gone between `kill` and the read, unless `/proc` itself went away since we looked.
        Err(StatError::NotFound) if fs::metadata("/proc/self/stat").is_ok() => Local::Dead,
        Err(_) => Local::Unknown,
    }
}

/// The `Threads:` count of `/proc/<pid>/status`: every thread of the group, including an exited
/// leader while others run (a real zombie counts 1, or 0 once its last thread is released).
fn live_threads(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok())
}

enum StatError {
    NotFound,
    Unreadable,
}

/// State letter and start time from a `/proc/<pid>/stat` file.
fn read_state(path: &str) -> Result<(char, u64), StatError> {
    let stat = fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => StatError::NotFound,
        _ => StatError::Unreadable,
    })?;
    parse_state(&stat).ok_or(StatError::Unreadable)
}

fn parse_state(stat: &str) -> Option<(char, u64)> {
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    // `state` was field 3; the start time is field 22.
    let start = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start))
}

/// Start time of `pid` in clock ticks since boot, or `None` if there is no such process (or no
/// `/proc` to read it from).
pub fn process_start_time(pid: u32) -> Option<u64> {
    read_state(&format!("/proc/{pid}/stat")).ok().map(|(_, start)| start)
}

/// What this process knows of itself, read once: the identity it records.
#[derive(Debug)]
pub(crate) struct Facts {
    pub pid_ns: u64,
    pub time_ns: u64,
    pub boot_id: u64,
    /// `/proc` is a procfs of this process's PID namespace (`/proc/self` is our own pid), so
    /// `/proc/<pid>` names the process `kill(pid)` does.
    pub proc_is_ours: bool,
}

pub(crate) fn facts() -> &'static Facts {
    static FACTS: OnceLock<Facts> = OnceLock::new();
    FACTS.get_or_init(|| Facts {
        pid_ns: namespace_inode("pid"),
        time_ns: namespace_inode("time"),
        boot_id: fs::read_to_string("/proc/sys/kernel/random/boot_id").map_or(0, |s| parse_boot_id(&s)),
        proc_is_ours: fs::read_link("/proc/self")
            .is_ok_and(|target| target.as_os_str().to_str() == Some(&std::process::id().to_string())),
    })
}

/// The inode of this process's namespace of `kind` (`/proc/self/ns/<kind>` reads
/// `kind:[inode]`); 0 when unknown.
fn namespace_inode(kind: &str) -> u64 {
    let Ok(target) = fs::read_link(format!("/proc/self/ns/{kind}")) else { return 0 };
    target.to_str().and_then(|t| t.strip_prefix(kind)?.strip_prefix(":[")?.strip_suffix(']')?.parse().ok()).unwrap_or(0)
}

/// The first 16 hex digits of a boot id (a UUID); 0 when unreadable.
fn parse_boot_id(text: &str) -> u64 {
    let digits: String = text.chars().filter(char::is_ascii_hexdigit).take(16).collect();
    if digits.len() < 16 { 0 } else { u64::from_str_radix(&digits, 16).unwrap_or(0) }
}

/// `CLOCK_BOOTTIME` in ns: one clock for every process of the host (outside time namespaces),
/// and it keeps counting through a suspend, when both sides stop together.
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-parameter; CLOCK_BOOTTIME exists on every supported kernel.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}

/// Everything recorded about a process that owns a side (or created a segment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub pid: u32,
    pub start_time: u64,
    pub pid_ns: u64,
    pub time_ns: u64,
    pub boot_id: u64,
}

impl Identity {
    /// `me` with this process's namespaces and boot id.
    pub(crate) fn of(me: ProcessId) -> Identity {
        let f = facts();
        Identity { pid: me.pid, start_time: me.start_time, pid_ns: f.pid_ns, time_ns: f.time_ns, boot_id: f.boot_id }
    }

    pub(crate) fn process(&self) -> ProcessId {
        ProcessId { pid: self.pid, start_time: self.start_time }
    }
}

/// A fresh owner word for a claim by `id`: the pid, and 31 bits drawn from everything that
/// tells this claim from another (start time, namespace, boot, clock, a counter). Two processes
/// with one pid in two namespaces, or two claims by one process, never share a word (but by a
/// 2^-31 chance), so a compare-and-swap on it detaches exactly the claim it made.
pub(crate) fn claim_word(id: &Identity) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static CLAIMS: AtomicU64 = AtomicU64::new(0);
    let mut h = mix(id.start_time ^ mix(id.pid_ns ^ mix(id.boot_id ^ mix(now_ns()))));
    h = mix(h ^ CLAIMS.fetch_add(1, Relaxed));
    // Never 0: see `is_claim_word`.
    u64::from(id.pid) | (h & START_MASK).max(1) << 32
}

/// Whether `word` is one `claim_word` can make (its claim bits are not all 0), rather than a
/// bare pid written by hand or by an older layout.
pub(crate) fn is_claim_word(word: u64) -> bool {
    (word >> 32) & START_MASK != 0
}

/// splitmix64's finaliser.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The verdict on a recorded process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Alive(ProcessId),
    Dead(ProcessId),
}

/// Judges a process recorded with `id` whose heartbeat last read `heartbeat_ns` (see the module
/// docs). At most one `kill` and one read of `/proc`.
pub(crate) fn judge(id: &Identity, heartbeat_ns: u64, timeout: Duration) -> Verdict {
    let f = facts();
    let process = id.process();
    if id.boot_id != 0 && f.boot_id != 0 && id.boot_id != f.boot_id {
        return Verdict::Dead(process);
    }
    if id.pid_ns != 0 && id.pid_ns == f.pid_ns {
        match check_local(id.pid, id.start_time) {
            Local::Alive(start) => return Verdict::Alive(ProcessId { pid: id.pid, start_time: start }),
            Local::Dead => return Verdict::Dead(process),
            Local::Unknown => {}
        }
    }
    if heartbeat_fresh(id.time_ns, heartbeat_ns, timeout) { Verdict::Alive(process) } else { Verdict::Dead(process) }
}

/// Whether a heartbeat written on the clock of time namespace `time_ns` is younger than
/// `timeout`. A clock we cannot compare with ours, or a heartbeat in our future, counts as fresh.
pub(crate) fn heartbeat_fresh(time_ns: u64, heartbeat_ns: u64, timeout: Duration) -> bool {
    let ours = facts().time_ns;
    if time_ns != 0 && ours != 0 && time_ns != ours {
        return true;
    }
    let now = now_ns();
    heartbeat_ns > now || now - heartbeat_ns <= timeout.as_nanos() as u64
}

/// Judges an owner word that has no identity record and no fresh announcement: a bare pid
/// written by hand, or a claim that stalled or died before recording it for longer than the
/// timeout. Only `kill` can speak for it: "no such process" in this namespace is dead; anything
/// else is alive (it may be a process we cannot see into).
pub(crate) fn judge_unrecorded(word: u64) -> Verdict {
    let process = ProcessId::unpack(word);
    match check_local(process.pid, 0) {
        Local::Dead => Verdict::Dead(process),
        Local::Alive(start) => Verdict::Alive(ProcessId { pid: process.pid, start_time: start }),
        Local::Unknown => Verdict::Alive(process),
    }
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
        assert_eq!(ProcessId::unpack(u64::from(me.pid) | 5 << 32), ProcessId { pid: me.pid, start_time: 5 });
    }

    #[test]
    fn exited_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessId { pid: child.id(), start_time: process_start_time(child.id()).unwrap_or(0) };
        child.wait().unwrap();
        assert!(!id.is_alive());
    }

    #[test]
    fn this_process_knows_its_namespaces_and_boot() {
        let f = facts();
        assert!(f.pid_ns != 0 && f.boot_id != 0 && f.proc_is_ours, "{f:?}");
        assert_eq!(parse_boot_id("9c0a5e6e-13dd-4503-949c-dff632dd9a35\n"), 0x9c0a_5e6e_13dd_4503);
        assert_eq!(parse_boot_id("garbage"), 0);
    }

    #[test]
    fn claims_get_distinct_words_with_the_pid_in_the_low_bits() {
        let id = Identity::of(ProcessId::current());
        let (a, b) = (claim_word(&id), claim_word(&id));
        assert_ne!(a, b);
        assert_eq!(a as u32, id.pid);
        assert_eq!(a >> 63, 0, "bit 63 is the detached flag");
    }

    #[test]
    fn a_foreign_namespace_is_judged_by_its_heartbeat_and_another_boot_is_dead() {
        let timeout = Duration::from_millis(500);
        let me = Identity::of(ProcessId::current());
        let foreign = Identity { pid: 1, start_time: 1, pid_ns: me.pid_ns ^ 1, ..me };
        let now = now_ns();
        assert!(matches!(judge(&foreign, now, timeout), Verdict::Alive(_)));
        assert!(matches!(judge(&foreign, now + 10_000_000_000, timeout), Verdict::Alive(_)), "future");
        assert!(matches!(judge(&foreign, now - 2_000_000_000, timeout), Verdict::Dead(_)), "stale");
        let other_clock = Identity { time_ns: me.time_ns ^ 1, ..foreign };
        assert!(matches!(judge(&other_clock, 1, timeout), Verdict::Alive(_)), "incomparable clock");
        let other_boot = Identity { boot_id: me.boot_id ^ 1, ..foreign };
        assert!(matches!(judge(&other_boot, now, timeout), Verdict::Dead(_)));
        // Our own namespace: kill and /proc decide, whatever the heartbeat says.
        assert!(matches!(judge(&me, 1, timeout), Verdict::Alive(_)));
        let reused = Identity { start_time: me.start_time + 1, ..me };
        assert!(matches!(judge(&reused, now, timeout), Verdict::Dead(_)));
    }
}
