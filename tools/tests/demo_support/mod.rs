//! Running `tadpole demo` as a user does, and finding its agent processes. (Each test binary
//! uses part of it.)
#![allow(dead_code)]

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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
