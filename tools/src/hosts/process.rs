//! The child processes of the two hosts (relays, and `tadpole chaos`'s agents): each in a
//! process group of its own, so a Ctrl-C meant for the harness does not reach it (the harness
//! stops it when the run is drained), and killed with the harness if that dies first.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A child process that is started, killed and restarted by whoever runs the two hosts
/// (stderr into `<dir>/<name>.log`; stdout discarded).
pub struct Proc {
    pub name: String,
    program: PathBuf,
    args: Vec<OsString>,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub kills: u64,
    pub peak_rss_kib: u64,
    pub over_memory: bool,
}

impl Proc {
    pub fn new(name: &str, program: &Path, args: Vec<OsString>, dir: &Path) -> Proc {
        Proc {
            name: name.to_owned(),
            program: program.to_owned(),
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
            kills: 0,
            peak_rss_kib: 0,
            over_memory: false,
        }
    }

    pub fn start(&mut self) -> Result<()> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        // A process group of its own: a Ctrl-C of the harness does not reach it (the harness
        // stops it); and killed with the harness if that dies first.
        let mut command = Command::new(&self.program);
        // SAFETY: the closure runs between fork and exec and only calls prctl, which is
        // async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = command
            .args(&self.args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory preconditions; the pid is our unreaped child's, so it
            // names no other process.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }

    /// `kill -9`, and the zombie reaped (until then the kernel still shows the pid alive).
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let started = Instant::now();
            let _ = child.kill();
            let _ = child.wait();
            self.kills += 1;
            if started.elapsed() > Duration::from_secs(5) {
                println!("  note: {} took {:.1?} to die of SIGKILL", self.name, started.elapsed());
            }
        }
    }

    /// Waits up to `within` for the process to exit (after a stop request), then kills it.
    pub fn finish(&mut self, within: Duration) {
        let Some(mut child) = self.child.take() else { return };
        let started = Instant::now();
        while started.elapsed() < within {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The exit status if the process ended by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // A stopped child must run again to die of SIGKILL cleanly in every case.
            // SAFETY: the pid is our unreaped child's.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
