#![allow(dead_code)]
//! Many hosts on one machine: a network namespace per host, each joined by a veth pair to a
//! Linux bridge in a switch namespace of its own (made, and removed on drop, by the test).
//! A partition is a host's switch port taken down: the host keeps its address and routes, its
//! packets go nowhere, and TCP connections through it stall rather than fail, as when a cable is
//! pulled. Needs root (CI runs as root); [`Topology::create`] returns `None`, with the reason on
//! stderr, where namespaces cannot be made.
//!
//! Also here: processes run inside a host (killed on drop, their stderr kept in a log file that
//! is printed when the test fails), `GET` of a relay's `/metrics` inside its namespace, and the
//! sequence-numbered, checksummed records the topology tests send.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn ip(args: &[&str]) -> Result<Output, String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// One host: its namespace, its address on the bridge, and its port on the switch.
pub struct Host {
    pub name: String,
    pub ns: String,
    pub ip: String,
    port: String,
}

/// Hosts on one bridge. Namespace names carry the test's pid and tag, so runs and tests do not
/// collide; interface names live inside the namespaces (made there directly), so they cannot.
pub struct Topology {
    switch: String,
    pub hosts: Vec<Host>,
}

impl Topology {
    /// Hosts named `names` at 10.77.0.1, .2, ... behind one bridge; `None` (with the reason on
    /// stderr) where this machine cannot make namespaces.
    pub fn create(tag: &str, names: &[&str]) -> Option<Topology> {
        let pid = std::process::id();
        let switch = format!("tp{pid}-{tag}-sw");
        let mut topology = Topology { switch: switch.clone(), hosts: Vec::new() };
        let mut steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), switch.clone()],
            vec![
                "-n".into(),
                switch.clone(),
                "link".into(),
                "add".into(),
                "br0".into(),
                "type".into(),
                "bridge".into(),
            ],
            vec!["-n".into(), switch.clone(), "link".into(), "set".into(), "br0".into(), "up".into()],
        ];
        for (i, name) in names.iter().enumerate() {
            let host = Host {
                name: (*name).to_owned(),
                ns: format!("tp{pid}-{tag}-{name}"),
                ip: format!("10.77.0.{}", i + 1),
                port: format!("p{i}"),
            };
            let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<String>>();
            steps.push(s(&["netns", "add", &host.ns]));
            steps.push(s(&[
                "link", "add", "eth0", "netns", &host.ns, "type", "veth", "peer", "name", &host.port, "netns", &switch,
            ]));
            steps.push(s(&["-n", &switch, "link", "set", &host.port, "master", "br0"]));
            steps.push(s(&["-n", &switch, "link", "set", &host.port, "up"]));
            steps.push(s(&["-n", &host.ns, "addr", "add", &format!("{}/24", host.ip), "dev", "eth0"]));
            steps.push(s(&["-n", &host.ns, "link", "set", "eth0", "up"]));
            steps.push(s(&["-n", &host.ns, "link", "set", "lo", "up"]));
            topology.hosts.push(host);
        }
        for step in &steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if let Err(e) = ip(&args) {
                eprintln!("SKIPPED: cannot make network namespaces here: {e}");
                return None; // dropping `topology` removes what was made
            }
        }
        Some(topology)
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no host {name}"))
    }

    /// Cuts host `name` off the bridge (`up == false`) or joins it again.
    pub fn set_link(&self, name: &str, up: bool) {
        let port = &self.host(name).port;
        ip(&["-n", &self.switch, "link", "set", port, if up { "up" } else { "down" }]).expect("set link");
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the pair.
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &host.ns]);
        }
        let _ = ip(&["netns", "del", &self.switch]);
    }
}

/// A process in a host's namespace, killed (SIGKILL) when dropped; its stderr goes to `log`,
/// printed (the last lines) if the test is failing when it is dropped.
pub struct Proc {
    pub what: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Runs `program args` inside `host` (`ip netns exec` execs it: the child's pid is the
    /// program's).
    pub fn spawn(host: &Host, what: &str, log_dir: &Path, program: &Path, args: &[&str]) -> Proc {
        let log = log_dir.join(format!("{what}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        Proc { what: what.to_owned(), log, child: Some(child) }
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(child) = &mut self.child {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.what, tail(&self.log));
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- {} ({}):\n{}", self.what, self.log.display(), tail(&self.log));
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// `nats-server` (Debian installs it in /usr/sbin), if installed.
pub fn nats_server() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("nats-server")).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path.into_iter().chain([PathBuf::from("/usr/sbin/nats-server")]).find(|p| p.is_file())
}

/// Moves the calling thread into network namespace `ns` (setns changes only this thread's).
fn enter(ns: &str) -> std::io::Result<()> {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: `file` is an open namespace file for the duration of the call; CLONE_NEWNET moves
    // only the calling thread, which is one spawned for this request.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The body of `GET path` from `addr` inside `host`'s namespace.
pub fn http_get(host: &Host, addr: &str, path: &str) -> Option<String> {
    let (ns, addr, path) = (host.ns.clone(), addr.to_owned(), path.to_owned());
    let fetch = move || -> Option<String> {
        enter(&ns).ok()?;
        let addr: std::net::SocketAddr = addr.parse().ok()?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        Some(text.split_once("\r\n\r\n").map_or(String::new(), |(_, body)| body.to_owned()))
    };
    // A thread of its own: entering a namespace must not move the harness's thread.
    std::thread::spawn(fetch).join().ok().flatten()
}

/// The sum of every sample of metric `name` (any labels) in a Prometheus text page.
pub fn metric(page: &str, name: &str) -> u64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
