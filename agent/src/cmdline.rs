//! Agent options from the kernel command line (`agent.*` parameters).
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `agent.log=LEVEL` | error, warn, info, debug, trace | `info` |
//! | `agent.port=N` | vsock port of the ttrpc server | 1024 |
//! | `agent.listen=unix:PATH` | serve on a Unix socket instead of vsock (tests, debugging); stdio streams are then accepted on `PATH.stdio` instead of vsock port 1025 | — |
//! | `agent.ready_port=N` | once serving, connect to host vsock port N to announce readiness | — |
//! | `agent.debug_console=N` | serve the debug console (a root shell in the guest) on vsock port N; with `agent.listen=unix:PATH` on `PATH.debug` | off |
//! | `agent.factory=on\|off` | run container operations through the warm container factory (see `libct::factory`) | on |
//!
//! Unknown `agent.*` keys and bad values are reported (logged) and ignored, so an old agent
//! still boots under a newer shim.

use isola_agent_proto::AGENT_PORT;

/// Where the ttrpc server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// AF_VSOCK on any CID, this port.
    Vsock(u32),
    /// A Unix socket path (the agent run outside a VM).
    Unix(String),
}

/// Options parsed from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentOptions {
    pub log_level: String,
    pub listen: Listen,
    /// Host vsock port to announce readiness on (see `ready.rs`).
    pub ready_port: Option<u32>,
    /// vsock port of the debug console (see `debug_console.rs`); None: not served.
    pub debug_console: Option<u32>,
    /// Whether container operations go through the container factory (`libct::factory`).
    pub container_factory: bool,
    /// Problems found while parsing, logged once logging is up.
    pub warnings: Vec<String>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            log_level: "info".into(),
            listen: Listen::Vsock(AGENT_PORT),
            ready_port: None,
            debug_console: None,
            container_factory: true,
            warnings: Vec::new(),
        }
    }
}

const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Parses a kernel command line (the contents of /proc/cmdline).
pub fn parse(cmdline: &str) -> AgentOptions {
    let mut opts = AgentOptions::default();
    for word in cmdline.split_whitespace() {
        let Some(rest) = word.strip_prefix("agent.") else {
            continue;
        };
        let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
        match key {
            "log" if LEVELS.contains(&value) => opts.log_level = value.to_string(),
            "port" => match value.parse::<u32>() {
                Ok(port) if port > 0 => opts.listen = Listen::Vsock(port),
                _ => opts.warnings.push(format!(
                    "agent.port={value:?} is not a port number; keeping the default"
                )),
            },
            "ready_port" => match value.parse::<u32>() {
                Ok(port) if port > 0 => opts.ready_port = Some(port),
                _ => opts.warnings.push(format!(
                    "agent.ready_port={value:?} is not a port number; not announcing readiness"
                )),
            },
            "debug_console" => match value.parse::<u32>() {
                Ok(port) if port > 0 => opts.debug_console = Some(port),
                _ => opts.warnings.push(format!(
                    "agent.debug_console={value:?} is not a port number; no debug console"
                )),
            },
            "factory" => match value {
                "on" => opts.container_factory = true,
                "off" => opts.container_factory = false,
                _ => opts.warnings.push(format!(
                    "agent.factory={value:?} is neither on nor off; keeping the factory on"
                )),
            },
            "listen" => match value.strip_prefix("unix:") {
                Some(path) if path.starts_with('/') => opts.listen = Listen::Unix(path.to_string()),
                _ => opts.warnings.push(format!(
                    "agent.listen={value:?} is not unix:/absolute/path; keeping vsock"
                )),
            },
            _ => opts.warnings.push(format!(
                "ignoring unknown or invalid kernel parameter {word:?}"
            )),
        }
    }
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_nothing_given() {
        let o = parse("console=ttyS0 quiet panic=-1");
        assert_eq!(o, AgentOptions::default());
    }

    #[test]
    fn reads_level_port_and_listen() {
        let o = parse("quiet agent.log=debug agent.port=2000");
        assert_eq!(o.log_level, "debug");
        assert_eq!(o.listen, Listen::Vsock(2000));
        assert_eq!(o.ready_port, None);
        assert_eq!(parse("agent.ready_port=1026").ready_port, Some(1026));
        assert_eq!(o.debug_console, None);
        assert_eq!(
            parse("agent.debug_console=1027").debug_console,
            Some(isola_agent_proto::DEBUG_CONSOLE_PORT)
        );
        assert!(parse("").container_factory);
        assert!(!parse("agent.factory=off").container_factory);
        assert!(parse("agent.factory=off agent.factory=on").container_factory);
        let odd = parse("agent.factory=no");
        assert!(odd.container_factory);
        assert_eq!(odd.warnings.len(), 1, "{:?}", odd.warnings);
        let bad = parse("agent.debug_console=yes");
        assert_eq!(bad.debug_console, None);
        assert!(
            bad.warnings[0].contains("no debug console"),
            "{:?}",
            bad.warnings
        );
        let o = parse("agent.listen=unix:/tmp/a.sock");
        assert_eq!(o.listen, Listen::Unix("/tmp/a.sock".into()));
        assert!(o.warnings.is_empty());
    }

    #[test]
    fn bad_values_warn_and_keep_defaults() {
        let o = parse("agent.log=loud agent.port=x agent.listen=tcp:1 agent.bogus=1");
        assert_eq!(o.log_level, "info");
        assert_eq!(o.listen, Listen::Vsock(AGENT_PORT));
        assert_eq!(o.warnings.len(), 4, "{:?}", o.warnings);
        assert!(o.warnings[0].contains("agent.log=loud"));
    }

    #[test]
    fn last_value_wins() {
        let o = parse("agent.log=debug agent.log=warn");
        assert_eq!(o.log_level, "warn");
    }
}
