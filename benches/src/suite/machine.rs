//! What the run ran on, and whether something else was using the two cores: read from `/proc`
//! and `/sys` before the run starts (the measuring process sleeps while it samples).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::{MAIN_CPU, PEER_CPU};

/// A CPU busier than this (percent, over the sampling window) draws a warning.
const BUSY_PERCENT: f64 = 10.0;

/// The machine report printed before the table.
pub struct Machine {
    pub cpu_model: String,
    pub online_cpus: usize,
    pub kernel: String,
    pub governor: String,
    pub isolated: String,
    pub virtualised: bool,
    /// Percent busy of [`MAIN_CPU`] and [`PEER_CPU`] while this process slept.
    pub busy: [f64; 2],
    /// Other processes that used more than [`BUSY_PERCENT`] of a CPU meanwhile: (pid, name, %).
    pub busy_processes: Vec<(u32, String, f64)>,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

impl Machine {
    /// Reads the machine and samples CPU use for `window`.
    pub fn inspect(window: Duration) -> Machine {
        let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        };
        let governors: Vec<String> = [MAIN_CPU, PEER_CPU]
            .iter()
            .map(|cpu| {
                read(&format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"))
                    .unwrap_or_else(|| "none exposed".into())
            })
            .collect();
        let governor = if governors[0] == governors[1] { governors[0].clone() } else { governors.join(" / ") };
        let isolated =
            read("/sys/devices/system/cpu/isolated").filter(|s| !s.is_empty()).unwrap_or_else(|| "none".into());
        let before_cpu = cpu_ticks();
        let before_procs = process_ticks();
        std::thread::sleep(window);
        let after_cpu = cpu_ticks();
        let after_procs = process_ticks();
        let busy = [MAIN_CPU, PEER_CPU].map(|cpu| match (before_cpu.get(&cpu), after_cpu.get(&cpu)) {
            (Some(b), Some(a)) if a.1 > b.1 => 100.0 * (a.0 - b.0) as f64 / (a.1 - b.1) as f64,
            _ => 0.0,
        });
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let me = std::process::id();
        let mut busy_processes: Vec<(u32, String, f64)> = after_procs
            .iter()
            .filter(|(pid, _)| **pid != me)
            .filter_map(|(pid, (name, ticks))| {
                let before = before_procs.get(pid).map_or(0, |(_, t)| *t);
                let percent = 100.0 * ticks.saturating_sub(before) as f64 / hz / window.as_secs_f64();
                (percent > BUSY_PERCENT).then(|| (*pid, name.clone(), percent))
            })
            .collect();
        busy_processes.sort_by(|a, b| b.2.total_cmp(&a.2));
        Machine {
            cpu_model: field("model name").unwrap_or_else(|| "unknown".into()),
            online_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
            governor,
            isolated,
            virtualised: field("flags").is_some_and(|f| f.split_whitespace().any(|x| x == "hypervisor")),
            busy,
            busy_processes,
        }
    }

    /// The warning to print, if the cores were not quiet.
    pub fn warning(&self) -> Option<String> {
        if self.busy.iter().all(|b| *b <= BUSY_PERCENT) && self.busy_processes.is_empty() {
            return None;
        }
        let procs: Vec<String> =
            self.busy_processes.iter().take(5).map(|(pid, name, p)| format!("{name} (pid {pid}) {p:.0}%")).collect();
        Some(format!(
            "WARNING: the cores are not quiet: CPU {MAIN_CPU} {:.0}% busy, CPU {PEER_CPU} {:.0}% busy before the run{}. \
             Latency figures will be noisy; compare rows by their ratios to the baselines of this run.",
            self.busy[0],
            self.busy[1],
            if procs.is_empty() { String::new() } else { format!("; busy processes: {}", procs.join(", ")) }
        ))
    }
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "CPU:        {}{}",
            self.cpu_model,
            if self.virtualised { " (virtual machine guest)" } else { "" }
        )?;
        writeln!(
            f,
            "cores used: CPU {MAIN_CPU} (measuring side) and CPU {PEER_CPU} (peer), of {} online",
            self.online_cpus
        )?;
        writeln!(f, "kernel:     {}", self.kernel)?;
        writeln!(f, "governor:   {}", self.governor)?;
        writeln!(f, "isolated:   {}", self.isolated)?;
        write!(f, "idle check: CPU {MAIN_CPU} {:.0}% busy, CPU {PEER_CPU} {:.0}% busy", self.busy[0], self.busy[1])
    }
}

/// Per CPU: (busy ticks, total ticks) from `/proc/stat`.
fn cpu_ticks() -> HashMap<usize, (u64, u64)> {
    let stat = read("/proc/stat").unwrap_or_default();
    stat.lines()
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let cpu: usize = fields.next()?.strip_prefix("cpu")?.parse().ok()?;
            let ticks: Vec<u64> = fields.filter_map(|v| v.parse().ok()).collect();
            let total: u64 = ticks.iter().sum();
            // idle and iowait
            let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
            Some((cpu, (total - idle, total)))
        })
        .collect()
}

/// Per process: (command name, user + system ticks), all threads.
fn process_ticks() -> HashMap<u32, (String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return HashMap::new() };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1.to_owned();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some((pid, (name, ticks)))
    })
    .collect()
}
