//! isola's containerd shim v2 (`containerd-shim-isola-v2`): one shim and one VM per pod.
//!
//! containerd starts the shim with `start`; the shim serves containerd's Task API over ttrpc
//! and forwards container lifecycle and stdio to `isola-agent` in the pod's VM.

pub mod agent;
pub mod cleanup;
pub mod control;
pub(crate) mod counters;
pub mod error;
pub mod events;
pub mod features;
pub mod logging;
pub mod metrics;
pub mod mountinfo;
pub mod mounts;
pub mod network;
pub mod options;
pub mod persist;
pub mod pod;
pub(crate) mod podvm;
pub mod queries;
pub mod rlimits;
pub mod sandbox;
pub mod serve;
pub mod service;
pub mod start;
pub mod state;
pub mod stdio;
pub mod task;
pub mod translate;
mod watchdog;

#[cfg(test)]
mod control_tests;
#[cfg(test)]
pub mod fake;
#[cfg(test)]
pub mod fake_vm;
#[cfg(test)]
mod sandbox_tests;
#[cfg(test)]
mod service_tests;
