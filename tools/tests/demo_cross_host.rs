//! `tadpole demo --cross-host`: risk -> personality goes through two real `tadpole relay`
//! processes (CURVE over a veth pair between two network namespaces made for the run, as root;
//! loopback otherwise), with the agents of each host inside its namespace. The hop is reported
//! on its own; correlation ids, refusals and the breaker work across it; and nothing of the two
//! hosts (namespaces, veth, keys, checkpoints, rings) is left afterwards, also after Ctrl-C and
//! after a halt.

mod demo_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use demo_support::{agent_pid, command, line, log_events, no_rings_left, numbers, spawn, wait};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The tag the demo run `pid` names its namespaces and veth pair with (`tpc-xh<pid>-a`,
/// `vcxh<pid>a`).
fn tag(pid: u32) -> String {
    format!("xh{pid}")
}

/// What of the two hosts of demo run `pid` is still there: namespaces, interfaces (in the root
/// namespace), the key directory and the relays' checkpoints.
fn leftovers(pid: u32) -> Vec<String> {
    let tag = tag(pid);
    let mut left = Vec::new();
    let ip =
        |args: &[&str]| String::from_utf8_lossy(&Command::new("ip").args(args).output().unwrap().stdout).into_owned();
    if is_root() {
        left.extend(ip(&["netns", "list"]).lines().filter(|l| l.contains(&format!("tpc-{tag}-"))).map(str::to_owned));
        let veth = [format!("vc{tag}a"), format!("vc{tag}b")];
        left.extend(ip(&["-o", "link"]).lines().filter(|l| veth.iter().any(|v| l.contains(v))).map(str::to_owned));
    }
    let keys = std::env::temp_dir().join(format!("tadpole-demo-{pid}-relays"));
    if keys.exists() {
        left.push(keys.display().to_string());
    }
    for entry in std::fs::read_dir("/dev/shm").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("tadpole-demo-{pid}-")) {
            left.push(name);
        }
    }
    left
}

/// `tadpole demo --cross-host` under open-loop load at 300 ticks/s for `secs`, the collector's
/// metrics on `base` (so a test can wait until the run is past its warm-up).
fn loaded_cross_host_command(secs: &str, base: u16) -> Command {
    command(&["--cross-host", "--rate", "300", "--duration", secs, "--metrics-port-base", &base.to_string()])
}

/// [`loaded_cross_host_command`], started.
fn loaded_cross_host_demo(secs: &str) -> (std::process::Child, u16) {
    let base = demo_support::metrics_base();
    (spawn(loaded_cross_host_command(secs, base)), base)
}

/// "netns" as root (namespaces can be made), "loopback" otherwise.
fn expected_via() -> &'static str {
    if is_root() { "netns" } else { "loopback" }
}

#[test]
fn cross_host_run_reports_the_relayed_hop_carries_ids_and_refusals_and_leaves_nothing() {
    let _one = demo_support::one_at_a_time();
    let started = Instant::now();
    let mut c = command(&["--cross-host", "--signals", "300"]);
    c.env("RUST_LOG", "debug");
    let child = spawn(c);
    let demo = child.id();
    let run = wait(child);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    let hop = format!("risk -> personality (via relays, {})", expected_via());
    // The hop in the table, and on its own with its sample count and the way it went.
    line(out, &format!("    {hop} "));
    let own = line(out, &format!("cross-host hop {hop}"));
    // 30 warm-up ticks and 300 timed ones; the hop is timed for the timed ones.
    assert_eq!(numbers(own)[0], 300, "{out}");
    assert!(own.contains("risk -> relay-a -> CURVE over"), "{out}");
    assert!(line(out, "the local hops' p50").contains("x and"), "{out}");
    if is_root() {
        let place = line(out, "relays in network namespaces");
        assert!(place.contains(&format!("tpc-{}-a", tag(demo))) && place.contains("veth"), "{out}");
        assert!(line(out, "host A (").contains("market-analysis, risk, relay-a"), "{out}");
        assert!(line(out, "host B (").contains("relay-b, personality, execution"), "{out}");
    } else {
        assert!(line(out, "relays on loopback").contains("not running as root"), "{out}");
    }
    // Every signal's outcome (an order or risk's refusal) crossed once, committed once.
    let relays = numbers(line(out, "relay-a sent"));
    assert!(relays[0] >= 330, "{out}");
    assert_eq!(relays[3], 330, "relay-b committed: {out}");
    // Nothing dropped, and the refusals (every 16th signal, over the risk limit) crossed too.
    assert_eq!(numbers(line(out, "ticks:"))[..3], [300, 0, 0], "{out}");
    let signals = numbers(line(out, "signals:"));
    let while_open = numbers(line(out, "refused while the circuit breaker was open"))[0];
    assert_eq!(signals[2] - while_open, (30..330).filter(|s| s % 16 == 15).count() as u64, "{out}");

    // Each tick id went from the feed through risk (host A) and personality and execution
    // (host B) under the same id.
    let events = log_events(&run.stderr);
    let ids = |pred: &dyn Fn(&serde_json::Value) -> bool| -> BTreeSet<String> {
        events.iter().filter(|e| pred(e)).filter_map(|e| e["correlation_id"].as_str().map(str::to_owned)).collect()
    };
    let sent = ids(&|e| e["event"] == "tick_sent");
    assert_eq!(sent.len(), 330, "{}", run.stderr.lines().take(5).collect::<Vec<_>>().join("\n"));
    for agent in ["risk", "personality", "execution"] {
        assert_eq!(ids(&|e| e["event"] == "handled" && e["agent"] == agent), sent, "{agent}");
    }
    assert!(leftovers(demo).is_empty(), "left behind: {:?}", leftovers(demo));
    assert!(no_rings_left(demo));
    eprintln!("cross-host run took {:?}", started.elapsed());
}

#[test]
fn loopback_flag_runs_the_relays_on_loopback_and_says_so() {
    let _one = demo_support::one_at_a_time();
    let child = spawn(command(&["--cross-host", "--loopback", "--signals", "100"]));
    let demo = child.id();
    let run = wait(child);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    assert_eq!(numbers(line(out, "cross-host hop risk -> personality (via relays, loopback)"))[0], 100, "{out}");
    assert!(line(out, "relays on loopback").contains("--loopback given"), "{out}");
    assert!(line(out, "all on loopback").contains("host B: relay-b, personality, execution"), "{out}");
    assert_eq!(numbers(line(out, "ticks:"))[..3], [100, 0, 0], "{out}");
    assert!(leftovers(demo).is_empty(), "left behind: {:?}", leftovers(demo));
    assert!(no_rings_left(demo));
}

#[test]
fn loopback_needs_cross_host() {
    let run = demo_support::demo(&["--loopback"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--cross-host"), "{}", run.stderr);
}

#[test]
fn agents_run_in_their_hosts_namespaces_and_ctrl_c_reports_the_hop_and_removes_them() {
    let _one = demo_support::one_at_a_time();
    use std::os::unix::process::CommandExt;
    let base = demo_support::metrics_base();
    let mut c = loaded_cross_host_command("600", base);
    // Its own process group, as a shell's job: Ctrl-C reaches the demo and every agent (the
    // relays are in groups of their own, stopped by the demo once everything has crossed).
    c.process_group(0);
    let child = spawn(c);
    let demo = child.id();
    demo_support::wait_for_outcomes(base, 250);
    // The run's keys: in a directory only this user may enter, the secret ones mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let keys = std::env::temp_dir().join(format!("tadpole-demo-{demo}-relays"));
    let mode = |name: &str| std::fs::metadata(keys.join(name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(""), 0o700);
    assert_eq!((mode("a.key"), mode("b.key")), (0o600, 0o600));
    if is_root() {
        // Each agent runs in its host's namespace; the breaker in the root one, as this test.
        use std::os::unix::fs::MetadataExt;
        let ns = |path: String| std::fs::metadata(path).unwrap().ino();
        let of = |role: &str| ns(format!("/proc/{}/ns/net", agent_pid(demo, role)));
        let host = |which: &str| ns(format!("/run/netns/tpc-{}-{which}", tag(demo)));
        assert_eq!((of("market-analysis"), of("risk")), (host("a"), host("a")));
        assert_eq!((of("personality"), of("execution")), (host("b"), host("b")));
        assert_eq!(of("breaker"), ns("/proc/self/ns/net".into()));
        assert_ne!(host("a"), host("b"));
    }
    nix::sys::signal::killpg(Pid::from_raw(demo as i32), Signal::SIGINT).unwrap();
    let run = wait(child);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    let hop = format!("cross-host hop risk -> personality (via relays, {})", expected_via());
    assert!(numbers(line(out, &hop))[0] > 0, "{out}");
    let ticks = numbers(line(out, "ticks:"));
    assert!(ticks[0] > 0 && ticks[1] == 0, "{out}");
    assert!(!out.contains("HALTED"), "{out}");
    assert!(leftovers(demo).is_empty(), "left behind: {:?}", leftovers(demo));
    assert!(no_rings_left(demo));
}

#[test]
fn an_agent_killed_on_host_b_halts_trading_and_the_hosts_are_still_removed() {
    let _one = demo_support::one_at_a_time();
    let (child, base) = loaded_cross_host_demo("30");
    let demo = child.id();
    // Personality runs in host B's namespace; the breaker in the root one hears it die.
    let personality = agent_pid(demo, "personality");
    demo_support::wait_for_outcomes(base, 250);
    let run = demo_support::kill_and_wait_for_halt(child, personality);
    let out = &run.stdout;
    demo_support::assert_halted_for_the_death_of(out, "personality");
    assert!(out.contains("cross-host hop risk -> personality"), "{out}");
    assert!(leftovers(demo).is_empty(), "left behind: {:?}", leftovers(demo));
    assert!(no_rings_left(demo));
}

#[test]
fn the_config_picks_the_relayed_hop_and_refuses_an_agent_without_a_next_one() {
    let _one = demo_support::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, "[cross_host]\nsender = \"market-analysis\"\n").unwrap();
    let child = spawn(command(&["--config", path.to_str().unwrap(), "--cross-host", "--signals", "100"]));
    let demo = child.id();
    let run = wait(child);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    let hop = format!("cross-host hop signal -> risk (via relays, {})", expected_via());
    assert_eq!(numbers(line(out, &hop))[0], 100, "{out}");
    assert!(line(out, &hop).contains("market-analysis -> relay-a"), "{out}");
    assert!(line(out, "host B").contains("relay-b, risk, personality, execution"), "{out}");
    assert!(out.contains("    risk -> personality "), "the other hops stay local: {out}");
    assert_eq!(numbers(line(out, "ticks:"))[..3], [100, 0, 0], "{out}");
    assert!(leftovers(demo).is_empty(), "left behind: {:?}", leftovers(demo));

    std::fs::write(&path, "[cross_host]\nsender = \"execution\"\n").unwrap();
    let run = demo_support::demo(&["--config", path.to_str().unwrap(), "--cross-host"]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let err = line(&run.stderr, "error");
    assert!(err.contains("cross_host.sender") && err.contains("market-analysis, risk, personality"), "{err}");
}

#[test]
fn namespaces_left_by_a_killed_run_are_removed_by_the_next_one() {
    if !is_root() {
        eprintln!("skipped: making network namespaces needs root");
        return;
    }
    let _one = demo_support::one_at_a_time();
    // A pid no process has now: a child that ran and was reaped.
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let stale = format!("tpc-{}-a", tag(gone.id()));
    assert!(Command::new("ip").args(["netns", "add", &stale]).status().unwrap().success());
    let run = demo_support::demo(&["--cross-host", "--signals", "50"]);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let listed =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output().unwrap().stdout).into_owned();
    let _ = Command::new("ip").args(["netns", "del", &stale]).status();
    assert!(!listed.contains(&stale), "{listed}");
    assert!(
        run.stdout.contains(&format!("removed network namespace {stale}, left by a run that was killed")),
        "{}",
        run.stdout
    );
}

/// The pid of demo run `parent`'s relay `which` ("a" or "b").
fn relay_pid(parent: u32, which: &str) -> u32 {
    let config = format!("tadpole-demo-{parent}-relays/{which}.toml");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|a| a.ends_with(config.as_bytes())) {
            return pid;
        }
    }
    panic!("no relay-{which} under pid {parent}");
}

#[test]
fn a_stalled_receiving_relay_makes_relay_a_resend_and_relay_b_drops_the_repeats() {
    let _one = demo_support::one_at_a_time();
    let (child, base) = loaded_cross_host_demo("8");
    let demo = child.id();
    demo_support::wait_for_outcomes(base, 250);
    // Longer than relay A's request timeout (1 s): it rewinds and sends again what relay B,
    // stopped, had not acknowledged, behind the first copies waiting in the socket.
    demo_support::stop_for(relay_pid(demo, "b"), Duration::from_secs(2));
    let run = wait(child);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    let relays = numbers(line(out, "relay-a sent"));
    let (resends, committed, duplicates) = (relays[1], relays[3], relays[4]);
    assert!(resends >= 1 && duplicates >= 1, "{out}");
    // 2400 ticks and 240 warm-up ones, each outcome committed once: no tick got two outcomes.
    assert_eq!(committed, 2640, "{out}");
    assert_eq!(numbers(line(out, "ticks:"))[..3], [2400, 0, 0], "{out}");
    assert!(leftovers(demo).is_empty(), "left behind: {:?}", leftovers(demo));
}
