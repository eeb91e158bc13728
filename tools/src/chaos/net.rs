//! Where the chaos relays run: two network namespaces joined by a veth pair (root, where
//! `ip netns add` works; a partition is the veth taken down), or loopback (a partition is the
//! receiving relay stopped with SIGSTOP). Also the relay's `/metrics` read over HTTP, from
//! inside the relay's namespace.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use std::time::Duration;

/// The two hosts the relays run on.
pub enum Net {
    /// Namespaces `a` and `b` at `a_ip` and `b_ip`, linked by `veth_a` (in `a`) and its peer.
    Namespaces { a: String, b: String, a_ip: String, b_ip: String, veth_a: String },
    /// Both relays on 127.0.0.1.
    Loopback,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let started = std::time::Instant::now();
    let out =
        Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("cannot run `ip`: {e}"))?;
    // A stuck `ip` (the kernel's RTNL lock held, e.g. by namespaces being torn down) would
    // otherwise look like a slow relay.
    if started.elapsed() > Duration::from_secs(5) {
        println!("  note: `ip {}` took {:.1?}", args.join(" "), started.elapsed());
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Net {
    /// Namespaces if this process may make them (and `loopback` is not asked for), else
    /// loopback; the second value says why loopback was chosen.
    pub fn create(loopback: bool) -> (Net, Option<String>) {
        if loopback {
            return (Net::Loopback, Some("--loopback given".into()));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return (Net::Loopback, Some("not running as root".into()));
        }
        // Interface names are at most 15 bytes; the subnet is private to the namespaces.
        let n = std::process::id() % 200 + 20;
        let tag = format!("ch{}", std::process::id() % 100_000);
        let (a, b) = (format!("tpc-{tag}-a"), format!("tpc-{tag}-b"));
        let (veth_a, veth_b) = (format!("vc{tag}a"), format!("vc{tag}b"));
        let (a_ip, b_ip) = (format!("10.{n}.0.1"), format!("10.{n}.0.2"));
        let net = Net::Namespaces {
            a: a.clone(),
            b: b.clone(),
            a_ip: a_ip.clone(),
            b_ip: b_ip.clone(),
            veth_a: veth_a.clone(),
        };
        let (a_cidr, b_cidr) = (format!("{a_ip}/24"), format!("{b_ip}/24"));
        let steps: [&[&str]; 11] = [
            &["netns", "add", &a],
            &["netns", "add", &b],
            &["link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b],
            &["link", "set", &veth_a, "netns", &a],
            &["link", "set", &veth_b, "netns", &b],
            &["-n", &a, "addr", "add", &a_cidr, "dev", &veth_a],
            &["-n", &b, "addr", "add", &b_cidr, "dev", &veth_b],
            &["-n", &a, "link", "set", &veth_a, "up"],
            &["-n", &b, "link", "set", &veth_b, "up"],
            &["-n", &a, "link", "set", "lo", "up"],
            &["-n", &b, "link", "set", "lo", "up"],
        ];
        for step in steps {
            if let Err(e) = ip(step) {
                // Dropping `net` removes what was made.
                drop(net);
                return (Net::Loopback, Some(e));
            }
        }
        (net, None)
    }

    /// The address relay `a` or `b` listens and serves metrics on.
    pub fn host(&self, which: char) -> &str {
        match (self, which) {
            (Net::Namespaces { a_ip, .. }, 'a') => a_ip,
            (Net::Namespaces { b_ip, .. }, _) => b_ip,
            (Net::Loopback, _) => "127.0.0.1",
        }
    }

    /// The namespace of relay `a` or `b` (`None` on loopback).
    pub fn namespace(&self, which: char) -> Option<&str> {
        match (self, which) {
            (Net::Namespaces { a, .. }, 'a') => Some(a),
            (Net::Namespaces { b, .. }, _) => Some(b),
            (Net::Loopback, _) => None,
        }
    }

    /// Takes the link between the namespaces down (a partition) or up. Namespaces only.
    pub fn set_link(&self, up: bool) -> Result<(), String> {
        match self {
            Net::Namespaces { a, veth_a, .. } => ip(&["-n", a, "link", "set", veth_a, if up { "up" } else { "down" }]),
            Net::Loopback => Err("no link to take down on loopback".into()),
        }
    }

    /// Whether the relays are in namespaces.
    pub fn is_namespaces(&self) -> bool {
        matches!(self, Net::Namespaces { .. })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Net::Namespaces { a, b, .. } = self {
            // Deleting a namespace deletes the veth end inside it, and with it the pair.
            let _ = ip(&["netns", "del", a]);
            let _ = ip(&["netns", "del", b]);
        }
    }
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

/// `GET path` from `addr` (in namespace `ns`, if any): the body of a 200 answer.
pub fn http_get(ns: Option<&str>, addr: &str, path: &str) -> Option<String> {
    let (ns, addr, path) = (ns.map(str::to_owned), addr.to_owned(), path.to_owned());
    let fetch = move || -> Option<String> {
        if let Some(ns) = &ns {
            enter(ns).ok()?;
        }
        let addr: std::net::SocketAddr = addr.parse().ok()?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).ok()?;
        let code: u16 = text.split_whitespace().nth(1)?.parse().ok()?;
        (code == 200).then(|| text.split_once("\r\n\r\n").map_or(String::new(), |(_, body)| body.to_owned()))
    };
    // A thread of its own: entering a namespace must not move the harness's main thread.
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

/// A TCP port on 127.0.0.1 free at the time of the call.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
