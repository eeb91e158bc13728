//! The Python personality agent (`--python personality`), and the generated FlatBuffers Python
//! code it builds envelopes with, written next to each other into a scratch directory.

use std::path::Path;
use std::process::{Child, Command};

use anyhow::{Context, Result, bail};

use super::{AGENTS, AgentSettings, PYTHON_AGENTS, heartbeat_ring, outbox, ring_name};

const PERSONALITY_PY: &str = include_str!("../personality.py");
const ENVELOPE_GENERATED_PY: &str = include_str!("../../../schemas/tests/python/generated/envelope_generated.py");

/// Starts the Python version of `agent`: `python3` (or `$TADPOLE_PYTHON`) with the `tadpole`
/// bindings installed (`pip install ./python`), in network namespace `namespace` if given. With
/// a metrics port it serves `/metrics` and `/health` there as the Rust agents do, which needs
/// `prometheus_client` too.
pub fn spawn(
    agent: &str,
    run: &str,
    settings: &AgentSettings,
    scratch: &Path,
    namespace: Option<&str>,
) -> Result<Child> {
    if !PYTHON_AGENTS.contains(&agent) {
        bail!("no Python implementation of the {agent} agent (there is one of: {})", PYTHON_AGENTS.join(", "));
    }
    let python = std::env::var("TADPOLE_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let (imports, install) = if settings.metrics_port.is_some() {
        ("import tadpole, flatbuffers, prometheus_client", "pip install ./python flatbuffers prometheus_client")
    } else {
        ("import tadpole, flatbuffers", "pip install ./python flatbuffers")
    };
    let probe = Command::new(&python).args(["-c", imports]).output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => bail!(
            "{python} cannot import what the Python {agent} agent needs ({}): install it with `{install}`",
            String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("")
        ),
        Err(e) => bail!("cannot run {python} ({e}): set TADPOLE_PYTHON to a Python 3.11+ with the bindings installed"),
    }
    std::fs::write(scratch.join("personality.py"), PERSONALITY_PY)?;
    std::fs::write(scratch.join("envelope_generated.py"), ENVELOPE_GENERATED_PY)?;
    let position = AGENTS.iter().position(|a| *a == agent).unwrap_or(0);
    let next = AGENTS.get(position + 1).copied().unwrap_or(super::OUTCOMES);
    let mut args = vec![scratch.join("personality.py").into_os_string()];
    args.extend(crate::hosts::os(&[
        "--inbox",
        &ring_name(run, agent),
        "--outbox",
        &outbox(run, next, settings),
        "--heartbeat",
        &heartbeat_ring(run, agent),
        "--heartbeat-ms",
        &settings.heartbeat_interval_ms.to_string(),
        "--stall-ms",
        &settings.stall_ms.to_string(),
    ]));
    if let Some(port) = settings.metrics_port {
        args.extend(crate::hosts::os(&["--metrics-port", &port.to_string()]));
    }
    let (program, args) = crate::hosts::in_namespace(namespace, Path::new(&python), args);
    Command::new(program).args(args).spawn().with_context(|| format!("starting the Python {agent} agent"))
}
