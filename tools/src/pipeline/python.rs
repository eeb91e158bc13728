//! The Python personality agent (`--python personality`), and the generated FlatBuffers Python
//! code it builds envelopes with, written next to each other into a scratch directory.

use std::path::Path;
use std::process::{Child, Command};

use anyhow::{Context, Result, bail};

use super::{AGENTS, AgentSettings, PYTHON_AGENTS, heartbeat_ring, ring_name};

const PERSONALITY_PY: &str = include_str!("../personality.py");
const ENVELOPE_GENERATED_PY: &str = include_str!("../../../schemas/tests/python/generated/envelope_generated.py");

/// Starts the Python version of `agent`: `python3` (or `$TADPOLE_PYTHON`) with the `tadpole`
/// bindings installed (`pip install ./python`).
pub fn spawn(agent: &str, run: &str, settings: &AgentSettings, scratch: &Path) -> Result<Child> {
    if !PYTHON_AGENTS.contains(&agent) {
        bail!("no Python implementation of the {agent} agent (there is one of: {})", PYTHON_AGENTS.join(", "));
    }
    let python = std::env::var("TADPOLE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe = Command::new(&python).args(["-c", "import tadpole, flatbuffers"]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => bail!(
            "{python} cannot import the tadpole bindings or flatbuffers ({}): install them with `pip install ./python flatbuffers`",
            String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("")
        ),
        Err(e) => bail!("cannot run {python} ({e}): set TADPOLE_PYTHON to a Python 3.11+ with the bindings installed"),
    }
    std::fs::write(scratch.join("personality.py"), PERSONALITY_PY)?;
    std::fs::write(scratch.join("envelope_generated.py"), ENVELOPE_GENERATED_PY)?;
    let position = AGENTS.iter().position(|a| *a == agent).unwrap_or(0);
    let next = AGENTS.get(position + 1).copied().unwrap_or(super::OUTCOMES);
    Command::new(&python)
        .arg(scratch.join("personality.py"))
        .args(["--inbox", &ring_name(run, agent), "--outbox", &ring_name(run, next)])
        .args(["--heartbeat", &heartbeat_ring(run, agent)])
        .args(["--heartbeat-ms", &settings.heartbeat_interval_ms.to_string()])
        .args(["--stall-ms", &settings.stall_ms.to_string()])
        .spawn()
        .with_context(|| format!("starting the Python {agent} agent"))
}
