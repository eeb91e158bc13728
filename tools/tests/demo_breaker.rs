//! The demo's circuit breaker against real faults: an agent stopped with SIGSTOP (silent, not
//! dead) and an agent killed with SIGKILL, in a pipeline of real processes under open-loop load.

mod demo_support;

use std::time::{Duration, Instant};

use demo_support::{agent_pid, command, line, log_events, no_rings_left, numbers, spawn, wait};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A demo under open-loop load at 300 ticks/s for `secs`, serving metrics so the test can tell
/// when it is past its warm-up (150 ticks, one in flight).
fn loaded_demo(secs: &str) -> (std::process::Child, u16) {
    let base = demo_support::metrics_base();
    let c = command(&["--rate", "300", "--duration", secs, "--metrics-port-base", &base.to_string()]);
    (spawn(c), base)
}

/// Lets the run get past warm-up into its open-loop phase.
fn wait_for_load(base: u16) {
    demo_support::wait_for_outcomes(base, 250);
}

#[test]
fn a_stopped_agent_trips_the_breaker_and_risk_and_execution_refuse_while_it_is_open() {
    let _one = demo_support::one_at_a_time();
    let (child, base) = loaded_demo("5");
    let demo = child.id();
    let personality = Pid::from_raw(agent_pid(demo, "personality") as i32);
    wait_for_load(base);
    kill(personality, Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    kill(personality, Signal::SIGCONT).unwrap();
    let run = wait(child);
    assert!(run.ok, "a stall is not fatal: {}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    // The breaker heard the silence (500 ms by default) and said so, then heard it end.
    let tripped = line(out, "BreakerAgentTriggered personality heartbeat_silence");
    assert!(tripped.contains("no heartbeat from personality for"), "{out}");
    assert!(out.contains("BreakerAgentTriggered personality recovered"), "{out}");
    let trips: Vec<_> = log_events(&run.stderr)
        .into_iter()
        .filter(|e| e["event"] == "breaker_agent_triggered" && e["agent"] == "personality")
        .collect();
    assert!(!trips.is_empty(), "{}", run.stderr);
    // Risk stopped approving the signals that came while it was open, and execution refused the
    // orders personality had queued when it came back inside the cooldown.
    let open = line(out, "refused while the circuit breaker was open");
    let count =
        |agent: &str| open.split([',', '(', ')']).find(|p| p.trim().starts_with(agent)).map_or(0, |p| numbers(p)[0]);
    assert!(count("risk") > 0, "{out}\n{}", run.stderr);
    assert!(count("execution") > 0, "{out}\n{}", run.stderr);
    // Nothing was lost: every tick has its outcome.
    assert_eq!(numbers(line(out, "ticks:"))[..3], [1500, 0, 0], "{out}");
    assert!(no_rings_left(demo));
}

#[test]
fn a_killed_agent_raises_a_system_emergency_and_the_demo_halts() {
    let _one = demo_support::one_at_a_time();
    let (child, base) = loaded_demo("30");
    let demo = child.id();
    let risk = Pid::from_raw(agent_pid(demo, "risk") as i32);
    wait_for_load(base);
    let killed = Instant::now();
    kill(risk, Signal::SIGKILL).unwrap();
    let run = wait(child);
    // Halted well before the 30 s of load it was asked for.
    assert!(killed.elapsed() < Duration::from_secs(15), "took {:?} to halt", killed.elapsed());
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("trading halted by the circuit breaker"), "{}", run.stderr);
    let out = &run.stdout;
    assert!(line(out, "BreakerSystemEmergency by risk").contains("gone without saying goodbye"), "{out}");
    assert!(line(out, "HALTED by the circuit breaker").contains("risk"), "{out}");
    let emergencies: Vec<_> = log_events(&run.stderr)
        .into_iter()
        .filter(|e| e["event"] == "breaker_system_emergency" && e["agent"] == "risk")
        .collect();
    assert_eq!(emergencies.len(), 1, "{}", run.stderr);
    // The run left no rings behind.
    assert!(no_rings_left(demo));
}

#[test]
fn a_killed_breaker_halts_trading_rather_than_trading_unwatched() {
    let _one = demo_support::one_at_a_time();
    let (child, base) = loaded_demo("30");
    let demo = child.id();
    let breaker = Pid::from_raw(agent_pid(demo, "breaker") as i32);
    wait_for_load(base);
    let killed = Instant::now();
    kill(breaker, Signal::SIGKILL).unwrap();
    let run = wait(child);
    assert!(killed.elapsed() < Duration::from_secs(15), "took {:?} to halt", killed.elapsed());
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(
        line(&run.stdout, "HALTED by the circuit breaker").contains("the circuit breaker is gone"),
        "{}",
        run.stdout
    );
    assert!(log_events(&run.stderr).iter().any(|e| e["event"] == "breaker_gone"), "{}", run.stderr);
    assert!(no_rings_left(demo));
}
