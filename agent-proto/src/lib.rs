//! The host <-> guest protocol of isola: ttrpc services compiled from `proto/*.proto`.
//!
//! Two services run on the agent's control port ([`AGENT_PORT`], vsock): `Health` (Check,
//! Version) and `Agent` (sandbox, containers, processes, networking, resources). Every RPC the
//! agent does not implement yet answers `UNIMPLEMENTED` with a message naming it.
//!
//! # How stdio travels
//!
//! Each stdio stream of a process is its own vsock connection to [`STDIO_PORT`]. The host opens
//! it and writes one frame: a 4-byte big-endian length and a [`agent::StdioStreamHeader`] naming
//! the container, the exec id and the stream. After that the connection carries raw bytes: the
//! agent writes a process's stdout/stderr into it and shuts it down at EOF; the host writes stdin
//! into it and shuts down its write half to pass EOF on.
//!
//! Why not RPCs (Kata's `ReadStdout`/`WriteStdin`)? Polling RPCs cost a round trip per chunk,
//! add latency to interactive terminals, and need their own flow control and EOF signalling.
//! A dedicated stream gets all three from the transport: the vsock socket's buffer gives
//! back-pressure (a process whose output nobody reads blocks instead of its bytes being dropped
//! or buffered without bound in the agent), EOF is a shutdown, and the bytes are never parsed.
//! The agent holds a process's output pipes until its stream attaches, so no bytes are lost
//! between start and attach. The header is bounded by [`MAX_STDIO_HEADER_LEN`].

mod endpoint;
pub use endpoint::AgentEndpoint;

mod generated {
    #![allow(clippy::all, clippy::undocumented_unsafe_blocks)]
    #![allow(
        unused_imports,
        unused_qualifications,
        missing_docs,
        non_camel_case_types
    )]
    #![allow(
        dead_code,
        non_snake_case,
        non_upper_case_globals,
        unused_mut,
        unknown_lints
    )]
    pub mod health {
        include!(concat!(env!("OUT_DIR"), "/health.rs"));
    }
    pub mod health_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/health_ttrpc.rs"));
    }
    pub mod types {
        include!(concat!(env!("OUT_DIR"), "/types.rs"));
    }
    pub mod agent {
        include!(concat!(env!("OUT_DIR"), "/agent.rs"));
    }
    pub mod agent_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
    }
}

pub use generated::{agent, agent_ttrpc, health, health_ttrpc, types};

/// vsock port the agent serves ttrpc on.
pub const AGENT_PORT: u32 = 1024;
/// vsock port the agent accepts stdio streams on (see the crate docs).
pub const STDIO_PORT: u32 = 1025;
/// Host vsock port the agent connects to once it serves, to announce that it is ready (when the
/// host asks for it with `agent.ready_port=`). Over hybrid vsock the host waits for this before
/// its first connection: vhost-user vsock backends can stall for good when the host connects
/// while the guest driver is still initialising the device (rust-vmm/vhost#247), so the host
/// must not poll the agent during early boot.
pub const READY_PORT: u32 = 1026;
/// vsock port of the debug console (`isola debug console`), served only when the guest kernel
/// command line carries `agent.debug_console=<port>` (the runtime adds it when the
/// configuration sets `[agent] debug_console = true`). Each connection is a root shell in the
/// guest, outside every container, on a pty: raw bytes both ways, no framing.
pub const DEBUG_CONSOLE_PORT: u32 = 1027;
/// The directory, at the top of the sandbox's shared directory, where the host puts the debug
/// console's shell binary (a static busybox) before boot when the console is enabled.
pub const DEBUG_DIR: &str = ".isola-debug";
/// The shell binary's name in [`DEBUG_DIR`].
pub const DEBUG_SHELL: &str = "busybox";
/// Where the guest sees the debug console's shell binary: the shared directory is mounted at
/// `/run/isola/shared` by CreateSandbox.
pub const DEBUG_SHELL_GUEST_PATH: &str = "/run/isola/shared/.isola-debug/busybox";
/// The line the agent (PID 1) writes on the guest console once it serves and its boot work is
/// done: the moment a VM template is saved (the host cannot ask a template's agent over vsock,
/// which templates do not have).
pub const CONSOLE_SERVING_LINE: &str = "isola-agent: serving, boot work done";
/// The line the agent writes on the readiness connection.
pub const READY_LINE: &[u8] = b"READY\n";
/// Upper bound on a stdio stream's header frame, in bytes.
pub const MAX_STDIO_HEADER_LEN: u32 = 4096;
/// Version of this protocol; bumped on incompatible changes, reported by `Health.Version`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The header frame of a stdio stream (see "How stdio travels"): both sides use these, so the
/// framing and its bound live in one place.
pub mod pod;

pub mod stdio_header {
    use protobuf::Message;

    use super::agent::StdioStreamHeader;
    use super::MAX_STDIO_HEADER_LEN;

    /// A header frame that cannot be accepted.
    #[derive(Debug)]
    pub enum HeaderError {
        /// The length prefix exceeds [`MAX_STDIO_HEADER_LEN`].
        TooLong(u32),
        /// The bytes are not a `StdioStreamHeader`.
        Decode(protobuf::Error),
    }

    impl std::fmt::Display for HeaderError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                HeaderError::TooLong(n) => write!(
                    f,
                    "stdio header of {n} bytes exceeds the limit of {MAX_STDIO_HEADER_LEN}"
                ),
                HeaderError::Decode(e) => write!(f, "stdio header is not a StdioStreamHeader: {e}"),
            }
        }
    }

    impl std::error::Error for HeaderError {}

    /// The whole frame: 4-byte big-endian length, then the encoded header.
    pub fn encode(header: &StdioStreamHeader) -> Vec<u8> {
        let body = header
            .write_to_bytes()
            .expect("encoding a StdioStreamHeader into memory cannot fail");
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    /// The body length announced by a frame's 4-byte prefix, checked against the bound.
    pub fn body_len(prefix: [u8; 4]) -> Result<usize, HeaderError> {
        let n = u32::from_be_bytes(prefix);
        if n > MAX_STDIO_HEADER_LEN {
            return Err(HeaderError::TooLong(n));
        }
        Ok(n as usize)
    }

    /// Decodes a frame's body.
    pub fn decode(body: &[u8]) -> Result<StdioStreamHeader, HeaderError> {
        StdioStreamHeader::parse_from_bytes(body).map_err(HeaderError::Decode)
    }

    #[cfg(test)]
    mod tests {
        use super::super::agent::stdio_stream_header::Stream;
        use super::*;

        #[test]
        fn frames_round_trip() {
            let h = StdioStreamHeader {
                container_id: "c1".into(),
                exec_id: "e1".into(),
                stream: Stream::STDERR.into(),
                ..Default::default()
            };
            let frame = encode(&h);
            let n = body_len(frame[..4].try_into().unwrap()).unwrap();
            assert_eq!(n, frame.len() - 4);
            assert_eq!(decode(&frame[4..]).unwrap(), h);
        }

        #[test]
        fn oversized_and_garbled_headers_are_rejected() {
            let too_long = (MAX_STDIO_HEADER_LEN + 1).to_be_bytes();
            assert!(matches!(
                body_len(too_long),
                Err(HeaderError::TooLong(n)) if n == MAX_STDIO_HEADER_LEN + 1
            ));
            assert_eq!(
                body_len(MAX_STDIO_HEADER_LEN.to_be_bytes()).unwrap(),
                MAX_STDIO_HEADER_LEN as usize
            );
            assert!(decode(&[0xff, 0xff, 0xff]).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_console_port_and_path_fit_the_others() {
        let ports = [AGENT_PORT, STDIO_PORT, READY_PORT, DEBUG_CONSOLE_PORT];
        for (i, a) in ports.iter().enumerate() {
            assert!(!ports[i + 1..].contains(a), "port {a} used twice");
        }
        assert_eq!(
            DEBUG_SHELL_GUEST_PATH,
            format!("/run/isola/shared/{DEBUG_DIR}/{DEBUG_SHELL}")
        );
    }
}
