//! Running `tadpole demo` as a user does, and finding its agent processes. (Each test binary
//! uses part of it.)
#![allow(dead_code)]

use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One demo at a time per test binary: each is six processes that spin-yield, and the machine
/// has two cores; a dozen at once starve each other past the breaker's silence threshold.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct Run {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

fn finish(out: Output) -> Run {
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn command(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tadpole"));
    c.arg("demo").args(args).env_remove("RUST_LOG");
    c
}

pub fn demo(args: &[&str]) -> Run {
    finish(command(args).output().unwrap())
}

pub fn spawn(mut c: Command) -> Child {
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
}

pub fn wait(child: Child) -> Run {
    finish(child.wait_with_output().unwrap())
}

/// The pid of `parent`'s agent child playing `role`, once it runs (within 20 s).
pub fn agent_pid(parent: u32, role: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            // The ppid is the second field after the parenthesised command name.
            let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1));
            if ppid != Some(parent.to_string().as_str()) {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.windows(2).any(|w| w[0] == b"--role" && w[1] == role.as_bytes()) {
                return pid;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no {role} agent under pid {parent}");
}

/// The JSON log lines on stderr.
pub fn log_events(stderr: &str) -> Vec<serde_json::Value> {
    stderr.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).collect()
}

/// The first stdout line containing `what`.
pub fn line<'a>(out: &'a str, what: &str) -> &'a str {
    out.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("no line with {what:?} in:\n{out}"))
}

/// The numbers in `text`, in order.
pub fn numbers(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// No ring of the demo run `pid` is left in /dev/shm.
pub fn no_rings_left(pid: u32) -> bool {
    let prefix = format!("pipeline-{pid}-");
    !std::fs::read_dir("/dev/shm").unwrap().flatten().any(|e| e.file_name().to_string_lossy().contains(&prefix))
}

/// GET `path` from 127.0.0.1:`port`: the status code and body, or `None` if nothing listens.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text.split_once("\r\n\r\n")?.1.to_owned()))
}

/// A free-looking port range for `--metrics-port-base`, different per test process and call.
pub fn metrics_base() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    20_000 + (std::process::id() % 2_000) as u16 * 10 + NEXT.fetch_add(6, Ordering::Relaxed) % 10_000
}

/// Waits (up to 60 s) until the collector on `port` has taken in `n` outcomes: the run is past
/// its warm-up and under its open-loop load.
pub fn wait_for_outcomes(port: u16, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let handled = http_get(port, "/metrics").and_then(|(_, body)| {
            body.lines().find(|l| l.starts_with("tadpole_demo_handled_total"))?.split_whitespace().last()?.parse().ok()
        });
        if handled.is_some_and(|h: u64| h >= n) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the collector on port {port} did not take in {n} outcomes");
}
