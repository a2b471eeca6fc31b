//! The agent's ttrpc services.
//!
//! Every handler runs through [`guard::guarded`], so a panic in one request answers that request
//! with INTERNAL and leaves PID 1 and every other request alone.

pub mod agent;
pub mod guard;
pub mod health;
mod sysinfo;
