//! `tadpole demo` as a user runs it: six real processes over real shared memory — the report,
//! the open-loop mode, configuration files, correlation ids from tick to fill, and SLA alerts.

mod demo_support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use demo_support::{demo, line, log_events, numbers};

#[test]
fn demo_without_arguments_reports_every_hop_against_the_targets_in_seconds() {
    let _one = demo_support::one_at_a_time();
    let started = Instant::now();
    let run = demo(&[]);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    // Loose: "a few seconds" on a quiet machine, this one is shared.
    assert!(started.elapsed() < Duration::from_secs(120), "took {:?}", started.elapsed());
    let out = &run.stdout;
    for want in [
        "market-analysis -> risk -> personality -> execution",
        "one tick in flight",
        "tick -> signal",
        "signal -> risk",
        "risk -> personality",
        "personality -> execution",
        "signal -> execution",
        "end to end",
        "p99.9",
        "< 10 ms average between agents",
        "< 100 ms signal to execution",
        "SLA alerts:",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let signals = numbers(line(out, "signals:"));
    // timed, filled, refused: every 16th signal is over the risk limit.
    assert_eq!(signals[0], 10_000, "{out}");
    assert_eq!(signals[1] + signals[2], 10_000, "{out}");
    // (An agent starved of CPU for longer than the breaker's silence, on a loaded machine, makes
    // the breaker refuse some more: those are counted apart.)
    let while_open = numbers(line(out, "refused while the circuit breaker was open"))[0];
    assert_eq!(signals[2] - while_open, 625, "{out}");
    assert_eq!(numbers(line(out, "ticks:"))[..3], [10_000, 0, 0], "{out}");
}

#[test]
fn every_tick_id_reaches_execution_and_comes_back_as_its_fills_correlation_id() {
    let _one = demo_support::one_at_a_time();
    let mut c = demo_support::command(&["--signals", "200"]);
    c.env("RUST_LOG", "debug");
    let run = demo_support::wait(demo_support::spawn(c));
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let events = log_events(&run.stderr);
    let ids = |pred: &dyn Fn(&serde_json::Value) -> bool| -> BTreeSet<String> {
        events.iter().filter(|e| pred(e)).filter_map(|e| e["correlation_id"].as_str().map(str::to_owned)).collect()
    };
    let sent = ids(&|e| e["event"] == "tick_sent");
    let signalled = ids(&|e| e["event"] == "handled" && e["agent"] == "market-analysis");
    let executed = ids(&|e| e["event"] == "handled" && e["agent"] == "execution");
    // 20 warm-up ticks and 200 timed ones, each followed from the feed through market analysis
    // (a separate process, reading Arrow) to execution under the same id.
    assert_eq!(sent.len(), 220, "{}", run.stderr.lines().take(5).collect::<Vec<_>>().join("\n"));
    assert_eq!(signalled, sent);
    assert_eq!(executed, sent);
    // And the collector matched every outcome to its tick.
    assert_eq!(numbers(line(&run.stdout, "ticks:"))[..3], [200, 0, 0], "{}", run.stdout);
}

#[test]
fn rate_mode_sends_on_a_schedule_and_reports_throughput_and_drops() {
    let _one = demo_support::one_at_a_time();
    let run = demo(&["--rate", "400/s", "--duration", "1.5"]);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    assert!(out.contains("open loop at 400 ticks/s; latency from each tick's intended send time"), "{out}");
    let signals = numbers(line(out, "signals:"));
    assert_eq!(signals[0], 600, "{out}");
    // Throughput: the schedule's rate, give or take the machine.
    assert!((150..=800).contains(&signals[3]), "{out}");
    assert_eq!(numbers(line(out, "ticks:"))[..3], [600, 0, 0], "{out}");
    assert!(line(out, "end to end").split_whitespace().count() >= 8, "{out}");
}

#[test]
fn a_config_file_sets_symbols_rates_and_thresholds() {
    let _one = demo_support::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(
        &path,
        "signals = 300\n[market]\nsymbols = [\"AAPL\", \"MSFT\"]\nstart_price = 190.5\n\
         [breaker]\nsilence_ms = 800\n[sla]\nhop_avg_ms = 5.0\n",
    )
    .unwrap();
    let run = demo(&["--config", path.to_str().unwrap()]);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("ticks (AAPL, MSFT, Arrow)"), "{}", run.stdout);
    assert!(run.stdout.contains("silent 800 ms trips it"), "{}", run.stdout);
    assert_eq!(numbers(line(&run.stdout, "signals:"))[0], 300, "{}", run.stdout);
    // The example file loads as it is.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/pipeline.toml");
    let run = demo(&["--config", example, "--signals", "50"]);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn a_bad_config_field_is_refused_naming_the_file_the_field_and_why() {
    let _one = demo_support::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    for (text, field, reason) in [
        ("[breaker]\nsilence = 300\n", "breaker", "unknown field `silence`"),
        ("rate = \"fast\"\n", "rate", "invalid type"),
        ("[market]\nsymbols = []\n", "market.symbols", "needs at least one symbol"),
        ("[agents]\nheartbeat_interval_ms = 900\n", "breaker.silence_ms", "not longer than"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let run = demo(&["--config", path.to_str().unwrap()]);
        assert_eq!(run.code, Some(1), "{text}: {}", run.stderr);
        let err = line(&run.stderr, "error");
        let file = path.display().to_string();
        assert!(err.contains(&file) && err.contains(field) && err.contains(reason), "{text}: {err}");
        assert!(run.stdout.is_empty(), "nothing runs: {}", run.stdout);
    }
}

#[test]
fn a_stalled_agent_raises_an_sla_alert_in_the_logs_and_the_report() {
    let _one = demo_support::one_at_a_time();
    let run = demo(&["--signals", "20", "--stall-agent", "risk", "--stall-ms", "50"]);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let alerts: Vec<_> = log_events(&run.stderr).into_iter().filter(|e| e["event"] == "sla_alert").collect();
    let risk = alerts.iter().find(|a| a["hop"] == "signal -> risk").unwrap_or_else(|| panic!("{}", run.stderr));
    assert_eq!(risk["statistic"], "average");
    assert_eq!(risk["bound_ms"], 10.0);
    assert!(risk["observed_ms"].as_f64().unwrap() >= 50.0, "{risk}");
    // The slowest tick is named, by its correlation id.
    assert_eq!(risk["correlation_id"].as_str().map(str::len), Some(36), "{risk}");
    let count = numbers(line(&run.stdout, "SLA alerts:"))[0];
    assert_eq!(count as usize, alerts.len(), "{}", run.stdout);
    assert!(run.stdout.contains("ALERT signal -> risk average"), "{}", run.stdout);
}

#[test]
fn plot_writes_an_svg_and_a_png_histogram_per_hop() {
    let _one = demo_support::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let run = demo(&["--signals", "300", "--plot", dir.path().to_str().unwrap()]);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    for hop in
        ["tick-signal", "signal-risk", "risk-personality", "personality-execution", "signal-execution", "end-to-end"]
    {
        for ext in ["svg", "png"] {
            let file = dir.path().join(format!("latency-{hop}.{ext}"));
            let len = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            assert!(len > 1000, "{} missing or empty", file.display());
        }
    }
}

#[test]
fn every_process_serves_metrics_with_per_hop_histograms_and_health() {
    let _one = demo_support::one_at_a_time();
    let base = demo_support::metrics_base();
    let child = demo_support::spawn(demo_support::command(&[
        "--rate",
        "200",
        "--duration",
        "4",
        "--metrics-port-base",
        &base.to_string(),
    ]));
    let deadline = Instant::now() + Duration::from_secs(30);
    let scrape = |port| loop {
        match demo_support::http_get(port, "/metrics") {
            Some((200, body)) if body.contains("_count") || port == base + 5 => return body,
            _ if Instant::now() > deadline => panic!("nothing on port {port}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let collector = scrape(base);
    for hop in ["tick -> signal", "signal -> risk", "risk -> personality", "personality -> execution", "end to end"] {
        let series = format!("tadpole_demo_hop_latency_seconds_count{{process=\"collector\",hop=\"{hop}\"}}");
        assert!(collector.contains(&series), "{series} missing:\n{collector}");
    }
    assert!(collector.contains("tadpole_demo_sla_alerts_total{process=\"collector\"}"), "{collector}");
    // Each agent publishes the hop into it; risk and execution their breaker state.
    for (port, agent, hop) in [
        (base + 1, "market-analysis", "tick -> signal"),
        (base + 2, "risk", "signal -> risk"),
        (base + 4, "execution", "personality -> execution"),
    ] {
        let body = scrape(port);
        let series =
            format!("tadpole_demo_hop_latency_seconds_bucket{{le=\"0.01\",process=\"{agent}\",hop=\"{hop}\"}}");
        assert!(body.contains(&series), "{series} missing:\n{body}");
        assert!(body.contains(&format!("tadpole_demo_handled_total{{process=\"{agent}\"}}")), "{body}");
    }
    // Every process serves the series of the rings it uses, read from shared memory: an agent
    // its inbox (received from), its heartbeat ring (sent into), with their sides' processes.
    let run = format!("pipeline-{}", child.id());
    let value = |body: &str, series: &str| -> u64 {
        let line = body.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("{series} missing:\n{body}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    for (port, agent, inbox) in [(base + 2, "risk", "risk"), (base + 4, "execution", "execution")] {
        let deadline = Instant::now() + Duration::from_secs(20);
        let (inbox, beats) = (format!("{run}-{inbox}"), format!("{run}-hb-{agent}"));
        loop {
            let body = scrape(port);
            let received = value(&body, &format!("tadpole_ring_consumed_messages_total{{ring=\"{inbox}\"}}"));
            let sent = value(&body, &format!("tadpole_ring_produced_messages_total{{ring=\"{beats}\"}}"));
            if received > 0 && sent > 0 {
                let consumer = format!("tadpole_ring_alive{{ring=\"{inbox}\",side=\"consumer\"}}");
                assert_eq!(value(&body, &consumer), 1, "{body}");
                let ring = format!("ring=\"{inbox}\"");
                for family in [
                    "tadpole_ring_depth_messages",
                    "tadpole_ring_full_ring_waits_total",
                    "tadpole_ring_dead_letters_total",
                ] {
                    assert!(
                        body.lines().any(|l| l.starts_with(family) && l.contains(&ring)),
                        "{family} {ring}:\n{body}"
                    );
                }
                break;
            }
            assert!(Instant::now() < deadline, "{agent}: ring series never moved:\n{body}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let breaker = scrape(base + 5);
    assert!(breaker.contains("tadpole_demo_heartbeats_total{process=\"breaker\"}"), "{breaker}");
    let heard = format!("tadpole_ring_consumed_messages_total{{ring=\"{run}-hb-risk\"}}");
    assert!(breaker.contains(&heard), "{heard} missing:\n{breaker}");
    let (code, health) = demo_support::http_get(base + 2, "/health").unwrap();
    assert_eq!(code, 200, "{health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["detail"]["process"], "risk");
    assert_eq!(health["detail"]["breaker"], "closed");
    let run = demo_support::wait(child);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn ctrl_c_ends_the_run_early_with_its_report_and_no_breaker_alarm() {
    let _one = demo_support::one_at_a_time();
    use std::os::unix::process::CommandExt;
    let base = demo_support::metrics_base();
    let mut c =
        demo_support::command(&["--rate", "200", "--duration", "600", "--metrics-port-base", &base.to_string()]);
    // Its own process group, as a shell's job: Ctrl-C reaches the demo and every agent.
    c.process_group(0);
    let child = demo_support::spawn(c);
    let demo = child.id();
    demo_support::agent_pid(demo, "breaker");
    // Past the warm-up (2,000 ticks one in flight for this run's length; on a loaded machine
    // that outlasted a fixed 3 s wait, and the report then had no timed tick) and into the
    // open-loop phase.
    demo_support::wait_for_outcomes(base, 2_100);
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(demo as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let run = demo_support::wait(child);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let sent = numbers(line(&run.stdout, "ticks:"));
    assert!(sent[0] > 0 && sent[0] < 120_000 && sent[1] == 0, "{}", run.stdout);
    // The agents said goodbye: no emergency (a starved agent may trip the breaker meanwhile).
    assert!(!run.stdout.contains("BreakerSystemEmergency"), "{}", run.stdout);
    assert!(!run.stdout.contains("HALTED"), "{}", run.stdout);
    assert!(demo_support::no_rings_left(demo));
}

#[test]
fn the_python_personality_agent_stamps_its_hop_and_heartbeats_to_the_breaker() {
    let _one = demo_support::one_at_a_time();
    let python = std::env::var("TADPOLE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe = std::process::Command::new(&python).args(["-c", "import tadpole, flatbuffers"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: {python} has no tadpole bindings (pip install ./python flatbuffers)");
        return;
    }
    let run = demo(&["--signals", "300", "--python", "personality"]);
    assert!(run.ok, "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    assert!(out.contains("-> personality (python) ->"), "{out}");
    assert_eq!(numbers(line(out, "ticks:"))[..3], [300, 0, 0], "{out}");
    // Both hops around the Python agent are measured from its stamp (t.3.personality)...
    for hop in ["risk -> personality", "personality -> execution"] {
        let mean =
            line(out, &format!("    {hop} ")).split_whitespace().nth(3).and_then(|m| m.parse::<f64>().ok()).unwrap();
        assert!(mean > 0.0, "{hop} not measured: {out}");
    }
    // ...and the breaker heard its heartbeats, and its goodbye (no emergency).
    assert!(numbers(line(out, "hb-personality"))[0] > 0, "{out}");
    assert!(!out.contains("BreakerSystemEmergency"), "{out}");
}
