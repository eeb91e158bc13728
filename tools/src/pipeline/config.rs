//! What a demo run does: the embedded default ([`Config::default`], the same values as
//! examples/pipeline.toml) or a TOML file (`--config FILE`), refused with the file, the field and
//! why when a field is unknown, mistyped or out of range.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Ticks to time in the one-in-flight mode (after warm-up); in `--rate` mode, how many ticks
    /// to send (0: `rate` × `duration_secs`).
    pub signals: u64,
    /// Open-loop ticks per second; 0 keeps one tick in flight at a time.
    pub rate: u64,
    /// How long an open-loop run sends ticks, when `signals` is 0.
    pub duration_secs: f64,
    /// How every agent waits for its next message: "spin", "yield" or "block".
    pub wait: String,
    /// Agents run as Python processes on the `tadpole` bindings (only "personality" has one).
    pub python: Vec<String>,
    pub market: MarketConfig,
    pub agents: AgentsConfig,
    pub risk: RiskConfig,
    pub breaker: BreakerConfig,
    pub sla: SlaConfig,
}

/// The synthetic tick generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MarketConfig {
    /// Symbols ticked round-robin, each with its own random-walk price.
    pub symbols: Vec<String>,
    /// Starting mid price of every symbol (whole units).
    pub start_price: f64,
    /// Most ticks in one Arrow record batch (an open-loop sender that falls behind batches what
    /// is due).
    pub max_batch_rows: usize,
}

/// What every agent does besides its work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// How often each agent sends a heartbeat to the circuit breaker.
    pub heartbeat_interval_ms: u64,
    /// Bytes of each ring between agents (a power of two).
    pub ring_bytes: usize,
}

/// The risk agent's limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RiskConfig {
    /// Orders above this notional (whole units) are refused.
    pub max_notional: f64,
    /// Notional of an order at full confidence: signals above `max_notional / order_notional`
    /// confidence are refused.
    pub order_notional: f64,
}

/// The circuit breaker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// An agent with no heartbeat for this long trips the breaker.
    pub silence_ms: u64,
    /// How long risk and execution stay stopped after a trip (the breaker repeats the trip while
    /// the agent stays silent).
    pub cooldown_ms: u64,
    /// Silence allowed before an agent's first heartbeat (Python agents start slowly).
    pub startup_grace_ms: u64,
}

/// Service-level alerts: a hop whose average or p99 is above its bound logs an alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlaConfig {
    /// Average of each hop between agents.
    pub hop_avg_ms: f64,
    /// Average from signal to execution, and end to end.
    pub end_to_end_avg_ms: f64,
    /// p99 of each hop between agents (no bound if absent).
    pub hop_p99_ms: Option<f64>,
    /// p99 end to end (no bound if absent).
    pub end_to_end_p99_ms: Option<f64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            signals: 10_000,
            rate: 0,
            duration_secs: 5.0,
            wait: "yield".into(),
            python: Vec::new(),
            market: MarketConfig::default(),
            agents: AgentsConfig::default(),
            risk: RiskConfig::default(),
            breaker: BreakerConfig::default(),
            sla: SlaConfig::default(),
        }
    }
}

impl Default for MarketConfig {
    fn default() -> Self {
        MarketConfig {
            symbols: vec!["BTC-USD".into(), "ETH-USD".into(), "SOL-USD".into()],
            start_price: 65_000.0,
            max_batch_rows: 64,
        }
    }
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig { heartbeat_interval_ms: 20, ring_bytes: 1 << 20 }
    }
}

impl Default for RiskConfig {
    fn default() -> Self {
        RiskConfig { max_notional: 100_000.0, order_notional: 130_000.0 }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { silence_ms: 500, cooldown_ms: 1_000, startup_grace_ms: 10_000 }
    }
}

impl Default for SlaConfig {
    fn default() -> Self {
        SlaConfig { hop_avg_ms: 10.0, end_to_end_avg_ms: 100.0, hop_p99_ms: None, end_to_end_p99_ms: None }
    }
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {field}: {reason}", file.display())]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The field (`market.symbols[1]`), `line N` or `file`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Config {
    /// Reads and validates `path`; fields it leaves out keep their defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |field: &str, reason: String| ConfigError { file: path.to_owned(), field: field.to_owned(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| err("file", e.to_string()))?;
        let config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(&text)).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let line = inner.span().and_then(|s| text.get(..s.start)).map(|t| t.matches('\n').count() + 1);
            let field = match (field.as_str(), line) {
                (".", Some(line)) => format!("line {line}"),
                (".", None) => "file".to_owned(),
                _ => field,
            };
            err(&field, inner.message().trim().replace('\n', "; "))
        })?;
        config.validate().map_err(|(field, reason)| err(field, reason))?;
        Ok(config)
    }

    /// Checks the ranges serde cannot: `Err((field, reason))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let counted = (1..=10_000_000).contains(&self.signals);
        let rate_sets_count = self.rate > 0 && self.signals == 0;
        if !(counted || rate_sets_count) {
            return Err(("signals", format!("{} is not between 1 and 10000000 (0 only with a rate)", self.signals)));
        }
        if self.rate > 1_000_000 {
            return Err(("rate", format!("{} ticks/s is above the 1000000 this demo can schedule", self.rate)));
        }
        if !positive(self.duration_secs) || self.duration_secs > 3600.0 {
            return Err(("duration_secs", format!("{} is not a number of seconds in (0, 3600]", self.duration_secs)));
        }
        if !["spin", "yield", "block"].contains(&self.wait.as_str()) {
            return Err(("wait", format!("{:?} is not one of \"spin\", \"yield\", \"block\"", self.wait)));
        }
        if let Some(p) = self.python.iter().find(|p| !super::PYTHON_AGENTS.contains(&p.as_str())) {
            return Err((
                "python",
                format!("no Python implementation of the {p} agent (there is one of: personality)"),
            ));
        }
        let m = &self.market;
        if m.symbols.is_empty() {
            return Err(("market.symbols", "needs at least one symbol".into()));
        }
        if let Some(s) = m.symbols.iter().find(|s| s.is_empty() || s.len() > 32 || s.chars().any(char::is_control)) {
            return Err(("market.symbols", format!("{s:?} is not a symbol (1 to 32 printable characters)")));
        }
        if !positive(m.start_price) || m.start_price > 1e9 {
            return Err(("market.start_price", format!("{} is not a price in (0, 1e9]", m.start_price)));
        }
        if !(1..=4096).contains(&m.max_batch_rows) {
            return Err(("market.max_batch_rows", format!("{} is not between 1 and 4096", m.max_batch_rows)));
        }
        let a = &self.agents;
        if !(1..=10_000).contains(&a.heartbeat_interval_ms) {
            return Err((
                "agents.heartbeat_interval_ms",
                format!("{} is not between 1 and 10000", a.heartbeat_interval_ms),
            ));
        }
        if !a.ring_bytes.is_power_of_two() || !(1 << 16..=1 << 30).contains(&a.ring_bytes) {
            return Err((
                "agents.ring_bytes",
                format!("{} is not a power of two from 65536 to 1073741824", a.ring_bytes),
            ));
        }
        if !positive(self.risk.max_notional) || !positive(self.risk.order_notional) {
            return Err(("risk", "max_notional and order_notional must be positive".into()));
        }
        let b = &self.breaker;
        if b.silence_ms <= a.heartbeat_interval_ms {
            return Err((
                "breaker.silence_ms",
                format!(
                    "{} ms is not longer than agents.heartbeat_interval_ms ({} ms)",
                    b.silence_ms, a.heartbeat_interval_ms
                ),
            ));
        }
        if b.cooldown_ms == 0 || b.cooldown_ms > 3_600_000 {
            return Err(("breaker.cooldown_ms", format!("{} is not between 1 and 3600000", b.cooldown_ms)));
        }
        let s = &self.sla;
        for (field, v) in [
            ("sla.hop_avg_ms", Some(s.hop_avg_ms)),
            ("sla.end_to_end_avg_ms", Some(s.end_to_end_avg_ms)),
            ("sla.hop_p99_ms", s.hop_p99_ms),
            ("sla.end_to_end_p99_ms", s.end_to_end_p99_ms),
        ] {
            if let Some(v) = v.filter(|v| !positive(*v)) {
                return Err((field, format!("{v} is not a positive number of milliseconds")));
            }
        }
        Ok(())
    }

    /// Ticks this run sends (timed ones; the one-in-flight mode warms up first).
    pub fn ticks(&self) -> u64 {
        if self.rate > 0 && self.signals == 0 {
            ((self.rate as f64) * self.duration_secs).ceil().max(1.0) as u64
        } else {
            self.signals
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_holds_the_embedded_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pipeline.toml");
        assert_eq!(Config::load(&example).unwrap(), Config::default());
    }

    #[test]
    fn an_unknown_field_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[market]\nsymbol = [\"X\"]\n").unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(e.field.starts_with("market"), "{e}");
        assert!(e.reason.contains("unknown field `symbol`"), "{e}");
    }
}
