//! `tadpole bench`: real runs of the command (real peer processes, real rings, sockets and
//! iceoryx2 services), kept to a few seconds each with `--quick`, few sizes and short rows.
//! Figures are not judged here (BENCHMARKS.md does that); what is checked is that every row
//! is produced, parses, and is internally consistent.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::Value;

/// The bench pins busy-spinning processes to CPUs 0 and 1: two runs at once would share them.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn bench(args: &[&str]) -> Output {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    Command::new(env!("CARGO_BIN_EXE_tadpole")).arg("bench").args(args).output().unwrap()
}

const FIELDS: [&str; 11] = [
    "scenario",
    "transport",
    "size",
    "p50_ns",
    "p90_ns",
    "p99_ns",
    "p999_ns",
    "max_ns",
    "msgs_per_s",
    "bytes_per_s",
    "ratio",
];

/// Parses every stdout line as a row and checks the fields each scenario must fill.
fn rows(out: &Output) -> Vec<Value> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tadpole bench failed: {stderr}");
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let rows: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?} is not JSON: {e}")))
        .collect();
    assert!(!rows.is_empty(), "no rows; stderr: {stderr}");
    for row in &rows {
        for field in FIELDS {
            assert!(row.get(field).is_some(), "row {row} lacks {field}");
        }
        let num = |f: &str| row[f].as_f64().unwrap_or_else(|| panic!("row {row}: {f} is not a number"));
        assert!(num("size") >= 8.0);
        let ratio = num("ratio");
        assert!(ratio.is_finite() && ratio > 0.0, "row {row}: ratio {ratio}");
        match row["scenario"].as_str().unwrap() {
            "latency" => {
                let p = ["p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"].map(num);
                assert!(p[0] > 0.0, "row {row}: p50 must be positive");
                assert!(p.windows(2).all(|w| w[0] <= w[1]), "row {row}: percentiles out of order");
                assert!(row["samples"].as_u64().unwrap() > 0);
                assert!(row["msgs_per_s"].is_null() && row["bytes_per_s"].is_null());
                assert!(num("floor_ns") > 0.0);
            }
            "throughput-seq" | "throughput-copy" => {
                let (msgs, bytes) = (num("msgs_per_s"), num("bytes_per_s"));
                assert!(msgs > 0.0, "row {row}: no messages");
                let expected = msgs * num("size");
                assert!((bytes - expected).abs() <= expected * 1e-6, "row {row}: bytes/s is not msgs/s × size");
                assert!(row["p50_ns"].is_null(), "row {row}: a throughput row has no latency");
                assert!(num("ratio_memcpy") > 0.0);
            }
            other => panic!("row {row}: unknown scenario {other}"),
        }
    }
    rows
}

fn keys(rows: &[Value]) -> BTreeSet<(String, String, u64)> {
    rows.iter()
        .map(|r| {
            (
                r["scenario"].as_str().unwrap().to_owned(),
                r["transport"].as_str().unwrap().to_owned(),
                r["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn expected(latency: &[&str], streaming: &[&str], sizes: &[u64]) -> BTreeSet<(String, String, u64)> {
    let mut want = BTreeSet::new();
    for &size in sizes {
        for t in latency {
            want.insert(("latency".to_owned(), (*t).to_owned(), size));
        }
        for t in streaming {
            want.insert(("throughput-seq".to_owned(), (*t).to_owned(), size));
        }
        for t in ["memcpy", "handoff"].iter().chain(streaming) {
            want.insert(("throughput-copy".to_owned(), (*t).to_owned(), size));
        }
    }
    want
}

#[test]
fn bench_json_prints_one_parsable_row_per_transport_size_and_scenario() {
    let out = bench(&[
        "--quick",
        "--json",
        "--transports",
        "floor,tadpole,iceoryx2,uds",
        "--sizes",
        "64,1KiB",
        "--row-ms",
        "20",
    ]);
    let rows = rows(&out);
    assert_eq!(rows.len(), keys(&rows).len(), "a row was printed twice");
    assert_eq!(
        keys(&rows),
        expected(&["floor", "tadpole", "iceoryx2", "uds"], &["tadpole", "iceoryx2", "uds"], &[64, 1024])
    );
    // The machine report goes to stderr with --json, stdout holds rows only.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kernel:") && stderr.contains("floor at start"), "stderr: {stderr}");
}

#[test]
fn bench_quick_runs_every_transport_between_two_processes() {
    let out = bench(&["--quick", "--json", "--sizes", "64", "--row-ms", "5"]);
    let rows = rows(&out);
    let all = [
        "floor",
        "floor-2line",
        "floor-futex",
        "tadpole",
        "tadpole-poll",
        "tadpole-waitset",
        "tadpole-waitset-block",
        "tadpole-batched",
        "tadpole-zerocopy",
        "tadpole-envelope",
        "tadpole-arrow",
        "iceoryx2",
        "iceoryx2-preloan",
        "uds",
        "pipe",
        "zmq-ipc",
        "zmq-tcp",
        "zmq-tcp-curve",
        "crossbeam",
        "tadpole-relay",
    ];
    let mut want = expected(&all, &all[3..], &[64]);
    // One message in flight cannot batch, nor skip its copy: these two stream only.
    want.remove(&("latency".to_owned(), "tadpole-batched".to_owned(), 64));
    want.remove(&("latency".to_owned(), "tadpole-zerocopy".to_owned(), 64));
    // The Arrow receive rows (1 k and 1 M rows) are sized by their batches, not by --sizes.
    let (arrow_recv, by_size): (Vec<Value>, Vec<Value>) =
        rows.into_iter().partition(|r| r["transport"].as_str().unwrap().starts_with("tadpole-arrow-recv"));
    assert_eq!(keys(&by_size), want);
    for transport in ["tadpole-arrow-recv", "tadpole-arrow-recv-trusted"] {
        let rows: Vec<Value> = arrow_recv.iter().filter(|r| r["transport"] == transport).cloned().collect();
        assert_arrow_receive_rows(&rows);
    }
}

#[test]
fn the_blocking_waitset_row_is_a_ratio_to_the_futex_floor_of_the_same_run() {
    let out = bench(&[
        "--quick",
        "--json",
        "--transports",
        "floor-futex,tadpole-waitset-block",
        "--sizes",
        "64,1KiB",
        "--scenarios",
        "latency",
        "--row-ms",
        "20",
    ]);
    let measured = rows(&out);
    let want: BTreeSet<(String, String, u64)> = ["floor-futex", "tadpole-waitset-block"]
        .iter()
        .flat_map(|t| [64, 1024].map(|size| ("latency".to_owned(), (*t).to_owned(), size)))
        .collect();
    assert_eq!(keys(&measured), want);
    let p50 = |r: &Value| r["p50_ns"].as_f64().unwrap();
    for size in [64, 1024] {
        let at = |t: &str| measured.iter().find(|r| r["transport"] == t && r["size"] == size).unwrap();
        let (futex, block) = (at("floor-futex"), at("tadpole-waitset-block"));
        // The futex floor is a latency-only row against the cache-line floor probe, like the others.
        assert!(futex["baseline"].as_str().unwrap().starts_with("floor probe"), "{futex}");
        // The blocking row divides by the futex floor measured just before it at that size.
        let ratio = block["ratio"].as_f64().unwrap();
        assert!((ratio - p50(block) / p50(futex)).abs() < 1e-9 * ratio, "{block} vs {futex}");
        assert!(block["baseline"].as_str().unwrap().contains("floor-futex"), "{block}");
        assert!(block["samples"].as_u64().unwrap() >= 50 && futex["samples"].as_u64().unwrap() >= 50);
    }
    // Alone, the blocking row measures its own futex floor first.
    let out = bench(&[
        "--quick",
        "--json",
        "--transports",
        "tadpole-waitset-block",
        "--sizes",
        "64",
        "--scenarios",
        "latency",
        "--row-ms",
        "10",
    ]);
    let alone = rows(&out);
    assert_eq!(alone.len(), 1);
    assert!(alone[0]["baseline"].as_str().unwrap().contains("measured just before this row"), "{}", alone[0]);
}

/// The two rows of one Arrow receive transport: 1 k then 1 M rows (so the second batch is ~1000x the
/// first's bytes), each a receive time, the first the baseline of the second's ratio.
fn assert_arrow_receive_rows(rows: &[Value]) {
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (small, large) = (&rows[0], &rows[1]);
    let size = |r: &Value| r["size"].as_f64().unwrap();
    assert!(size(large) > 500.0 * size(small), "{rows:?}");
    assert_eq!(small["ratio"].as_f64(), Some(1.0));
    let p50 = |r: &Value| r["p50_ns"].as_f64().unwrap();
    assert!(p50(small) > 0.0 && p50(large) > 0.0);
    assert!((large["ratio"].as_f64().unwrap() - p50(large) / p50(small)).abs() < 1e-9);
    assert!(large["baseline"].as_str().unwrap().contains("1000000 rows"), "{rows:?}");
}

#[test]
fn bench_plot_writes_svg_and_png_charts_per_size_and_streaming_mode() {
    let dir = tempfile::tempdir().unwrap();
    let charts = dir.path().join("charts");
    let out = bench(&[
        "--quick",
        "--transports",
        "floor,tadpole",
        "--sizes",
        "64,1024",
        "--row-ms",
        "10",
        "--plot",
        charts.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "tadpole bench failed: {}", String::from_utf8_lossy(&out.stderr));
    for stem in ["latency-64", "latency-1024", "throughput-seq", "throughput-copy"] {
        let png = std::fs::read(charts.join(format!("{stem}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{stem}.png is not a PNG");
        let svg = std::fs::read_to_string(charts.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("tadpole"), "{stem}.svg lacks the chart or its legend");
    }
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("charts:") && table.contains("coordinated omission"), "table output: {table}");
}

#[test]
fn bench_refuses_unknown_transports_and_sizes_below_the_sequence_number() {
    for args in [&["--transports", "carrier-pigeon"][..], &["--sizes", "4"][..]] {
        let out = bench(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(args[1]), "{args:?}: the error does not name the value: {stderr}");
    }
}

#[test]
fn bench_warns_and_names_a_busy_process_sharing_the_cores() {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut busy = Command::new("yes").stdout(std::process::Stdio::null()).spawn().unwrap();
    // Let it show up in the scheduler's accounting before the bench samples /proc.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let out = Command::new(env!("CARGO_BIN_EXE_tadpole"))
        .args(["bench", "--quick", "--transports", "floor", "--scenarios", "latency", "--sizes", "64", "--row-ms", "5"])
        .output()
        .unwrap();
    busy.kill().unwrap();
    busy.wait().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tadpole bench failed: {stderr}");
    assert!(stderr.contains("WARNING: the cores are not quiet"), "no warning: {stderr}");
    assert!(stderr.contains(&format!("yes (pid {})", busy.id())), "the busy process is not named: {stderr}");
}
