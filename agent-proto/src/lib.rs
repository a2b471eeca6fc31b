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
/// Upper bound on a stdio stream's header frame, in bytes.
pub const MAX_STDIO_HEADER_LEN: u32 = 4096;
/// Version of this protocol; bumped on incompatible changes, reported by `Health.Version`.
pub const PROTOCOL_VERSION: u32 = 1;
