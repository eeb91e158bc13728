//! `--plot DIR`: SVG and PNG charts of a run. One latency chart per size (one-way p50, p90, p99,
//! p99.9 per transport, log scale) and one throughput chart per streaming mode (bytes/s against
//! message size per transport, with memcpy and the hardware handoff, log-log).
//!
//! Text is drawn with `ab_glyph` from a TrueType font read at run time (DejaVu Sans or another
//! common one, or `$TADPOLE_BENCH_FONT`), so the binary needs no fontconfig library.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::ARROW_RECV;
use super::report::{Row, Scenario, format_size};
use crate::BenchResult;

const FONT_ENV: &str = "TADPOLE_BENCH_FONT";
const FONTS: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];
const SIZE: (u32, u32) = (1000, 600);

fn register_font() -> BenchResult<()> {
    use std::sync::OnceLock;
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let candidates: Vec<PathBuf> =
            std::env::var_os(FONT_ENV).map(PathBuf::from).into_iter().chain(FONTS.iter().map(PathBuf::from)).collect();
        let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
            format!(
                "--plot needs a TrueType font: none of {} exists; install fonts-dejavu-core or set {FONT_ENV}",
                FONTS.join(", ")
            )
        })?;
        let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a usable TrueType font", path.display()))
    })
    .clone()
    .map_err(Into::into)
}

/// Writes the charts for `rows` into `dir` (created if missing); returns the files written.
pub fn write(dir: &Path, rows: &[Row]) -> BenchResult<Vec<PathBuf>> {
    register_font()?;
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut latency: BTreeMap<usize, Vec<&Row>> = BTreeMap::new();
    // The Arrow receive rows time one receive of a batch, not a message of a size: no chart.
    let messages =
        |r: &&Row| r.scenario == Scenario::Latency && r.latency.is_some() && !r.transport.starts_with(ARROW_RECV);
    for r in rows.iter().filter(messages) {
        latency.entry(r.size).or_default().push(r);
    }
    for (size, rows) in &latency {
        let title = format!("one-way latency, {} messages (ping-pong / 2)", format_size(*size));
        let stem = dir.join(format!("latency-{size}"));
        written.extend(both(&stem, Chart::Latency(&title, rows))?);
    }
    for scenario in [Scenario::ThroughputSeq, Scenario::ThroughputCopy] {
        let rows: Vec<&Row> = rows.iter().filter(|r| r.scenario == scenario && r.bytes_per_s.is_some()).collect();
        if rows.is_empty() {
            continue;
        }
        let what = if scenario == Scenario::ThroughputSeq {
            "receiver reads the sequence number"
        } else {
            "receiver copies the payload out"
        };
        let title = format!("streaming throughput ({what})");
        let stem = dir.join(scenario.name());
        written.extend(both(&stem, Chart::Throughput(&title, &rows))?);
    }
    Ok(written)
}

/// One latency histogram (used by `tadpole demo --plot`): `buckets` are (upper bound in ns,
/// samples since the previous bucket), drawn as bars over a log latency axis into `<stem>.svg`
/// and `<stem>.png`.
pub fn histogram(stem: &Path, title: &str, buckets: &[(f64, u64)]) -> BenchResult<Vec<PathBuf>> {
    register_font()?;
    if let Some(dir) = stem.parent() {
        std::fs::create_dir_all(dir)?;
    }
    both(stem, Chart::Histogram(title, buckets))
}

enum Chart<'a> {
    Latency(&'a str, &'a [&'a Row]),
    Throughput(&'a str, &'a [&'a Row]),
    Histogram(&'a str, &'a [(f64, u64)]),
}

impl Chart<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        match self {
            Chart::Latency(title, rows) => latency_chart(root, title, rows),
            Chart::Throughput(title, rows) => throughput_chart(root, title, rows),
            Chart::Histogram(title, buckets) => histogram_chart(root, title, buckets),
        }
    }
}

/// Draws `chart` into `<stem>.svg` and `<stem>.png`.
fn both(stem: &Path, chart: Chart<'_>) -> BenchResult<Vec<PathBuf>> {
    let (svg, png) = (stem.with_extension("svg"), stem.with_extension("png"));
    {
        let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
        chart.draw(&root)?;
        root.present().map_err(|e| format!("{}: {e}", svg.display()))?;
    }
    {
        let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
        chart.draw(&root)?;
        root.present().map_err(|e| format!("{}: {e}", png.display()))?;
    }
    Ok(vec![svg, png])
}

/// Axis labels of a log scale land on 1..9 × 10^k, so they are written in decimal units.
fn decimal_bytes(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.0} MB", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.0} kB", x / 1e3)
    } else {
        format!("{x:.0} B")
    }
}

fn series_color(i: usize) -> RGBColor {
    let c = Palette99::pick(i).to_rgba();
    RGBColor(c.0, c.1, c.2)
}

fn latency_chart<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, rows: &[&Row]) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let values: Vec<f64> = rows
        .iter()
        .filter_map(|r| r.latency)
        .flat_map(|l| [l.p50, l.p90, l.p99, l.p999])
        .filter(|v| *v > 0.0)
        .collect();
    let lo = values.iter().copied().fold(f64::MAX, f64::min).max(1.0) / 1.5;
    let hi = values.iter().copied().fold(1.0, f64::max) * 1.5;
    let labels = ["p50", "p90", "p99", "p99.9"];
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.2f64..3.2f64, (lo..hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| labels.get(x.round() as usize).map_or(String::new(), |s| (*s).to_owned()))
        .y_desc("one-way latency (log)")
        .y_label_formatter(&|y| super::report::format_ns(*y))
        .draw()
        .map_err(err)?;
    for (i, row) in rows.iter().enumerate() {
        let Some(l) = row.latency else { continue };
        let color = series_color(i);
        let points: Vec<(f64, f64)> =
            [l.p50, l.p90, l.p99, l.p999].iter().enumerate().map(|(x, y)| (x as f64, y.max(lo))).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(err)?
            .label(row.transport.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    Ok(())
}

fn histogram_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    buckets: &[(f64, u64)],
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let bars: Vec<(f64, f64, u64)> = buckets
        .iter()
        .scan(None, |prev: &mut Option<f64>, &(upper, count)| {
            let lower = prev.unwrap_or(upper / 1.25).max(1.0);
            *prev = Some(upper);
            Some((lower, upper.max(lower * 1.01), count))
        })
        .filter(|b| b.2 > 0)
        .collect();
    let lo = bars.iter().map(|b| b.0).fold(f64::MAX, f64::min).min(1e9) / 1.2;
    let hi = bars.iter().map(|b| b.1).fold(lo * 10.0, f64::max) * 1.2;
    let top = bars.iter().map(|b| b.2).max().unwrap_or(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency (log)")
        .y_desc("samples")
        .x_label_formatter(&|x| super::report::format_ns(*x))
        .draw()
        .map_err(err)?;
    let color = series_color(0);
    chart
        .draw_series(bars.iter().map(|&(a, b, n)| Rectangle::new([(a, 0.0), (b, n as f64)], color.filled())))
        .map_err(err)?;
    Ok(())
}

fn throughput_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    rows: &[&Row],
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let mut by_transport: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    let mut order: Vec<&str> = Vec::new();
    for r in rows {
        if let Some(b) = r.bytes_per_s {
            if !order.contains(&r.transport.as_str()) {
                order.push(&r.transport);
            }
            by_transport.entry(&r.transport).or_default().push((r.size as f64, b.max(1.0)));
        }
    }
    let sizes: Vec<f64> = rows.iter().map(|r| r.size as f64).collect();
    let (xlo, xhi) =
        (sizes.iter().copied().fold(f64::MAX, f64::min) / 1.5, sizes.iter().copied().fold(1.0, f64::max) * 1.5);
    let values: Vec<f64> = by_transport.values().flatten().map(|p| p.1).collect();
    let (ylo, yhi) =
        (values.iter().copied().fold(f64::MAX, f64::min) / 2.0, values.iter().copied().fold(1.0, f64::max) * 2.0);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d((xlo..xhi).log_scale(), (ylo..yhi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("message size (bytes, log)")
        .y_desc("bytes/s (log)")
        .x_label_formatter(&|x| decimal_bytes(*x))
        .y_label_formatter(&|y| super::report::format_bytes_per_s(*y))
        .draw()
        .map_err(err)?;
    for (i, name) in order.iter().enumerate() {
        let mut points = by_transport[name].clone();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let color = series_color(i);
        let dashed = matches!(*name, "memcpy" | "handoff");
        let style = if dashed { color.stroke_width(1) } else { color.stroke_width(2) };
        chart
            .draw_series(LineSeries::new(points.clone(), style))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    Ok(())
}
