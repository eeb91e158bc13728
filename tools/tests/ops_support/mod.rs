//! What the operator-tool tests share: running `tadpole`, unique ring names, rings removed
//! whatever happens, and child processes that own a side of a ring (liveness is about real
//! processes).

#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ipc_core::Segment;

/// Runs `tadpole` to the end.
pub fn tadpole(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tadpole")).args(args).output().unwrap()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A ring name no other test (or run) uses.
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("ops-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Unlinks a named segment when dropped, whatever happened.
pub struct Unlink(pub String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

/// A child process (this test binary, running only `test_fn`) with `env` set; killed when
/// dropped. Waits for it to print `ready` when `wait_ready`.
pub struct ChildProcess(pub Child);

impl ChildProcess {
    pub fn start(test_fn: &str, env: &[(&str, &str)], wait_ready: bool) -> ChildProcess {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", test_fn, "--nocapture", "--test-threads", "1"]).stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = ChildProcess(cmd.spawn().unwrap());
        if wait_ready {
            let out = child.0.stdout.take().unwrap();
            let mut lines = BufReader::new(out).lines();
            loop {
                match lines.next() {
                    // libtest prints `test NAME ... ` before the test's own output, on the same line.
                    Some(Ok(line)) if line.trim_end().ends_with("ready") => break,
                    Some(Ok(_)) => continue,
                    other => panic!("the child {test_fn} ended before it was ready: {other:?}"),
                }
            }
            // Keep draining its stdout so it never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
        }
        child
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// `kill -9`, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Waits for it to exit by itself.
    pub fn wait_success(&mut self) {
        assert!(self.0.wait().unwrap().success());
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs forever in a child: `f` every `period`.
pub fn forever(period: Duration, mut f: impl FnMut()) -> ! {
    loop {
        f();
        std::thread::sleep(period);
    }
}
