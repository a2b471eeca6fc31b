//! `containerd-shim-isola-v2`: containerd (and CRI-O, for `runtime_type = "vm"`) runs it as
//! `start` (find or spawn the sandbox's shim), without an action (serve the Task API), as
//! `delete` (clean up after a dead shim) and as `features` (what the runtime supports).

use std::io::Write;
use std::process::ExitCode;

use containerd_shim_isola_v2::{cleanup, features, logging, serve, start};
use protobuf::Message;

/// The runtime name containerd knows this shim by.
const RUNTIME_ID: &str = "io.containerd.isola.v2";

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if flags.version {
        println!(
            "containerd-shim-isola-v2 {} ({RUNTIME_ID})",
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    if flags.info {
        let info = containerd_shim_protos::types::introspection::RuntimeInfo {
            name: RUNTIME_ID.to_string(),
            ..Default::default()
        };
        let bytes = info.write_to_bytes().unwrap_or_default();
        return match std::io::stdout().write_all(&bytes) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    if flags.action == "features" {
        // CRI-O asks every runtime what it supports (the OCI "features" document).
        return match features::document() {
            Ok(doc) => {
                println!("{doc}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{RUNTIME_ID} features: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match flags.action.as_str() {
        "start" => {
            // containerd reads stdout and stderr together as the address: log to the FIFO.
            logging::init(logging::Target::ContainerdFifo, flags.debug, &flags.id);
            match start::start(&flags) {
                Ok(reply) => {
                    let mut out = std::io::stdout();
                    if out.write_all(&reply).and_then(|()| out.flush()).is_err() {
                        return ExitCode::FAILURE;
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!(error = %e, "start failed");
                    eprintln!("{RUNTIME_ID} start: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        "delete" => {
            logging::init(logging::Target::Stderr, flags.debug, &flags.id);
            let bundle = if flags.bundle.is_empty() {
                std::env::current_dir().unwrap_or_default()
            } else {
                flags.bundle.clone().into()
            };
            let resp = runtime.block_on(async {
                tokio::task::spawn_blocking(move || cleanup::delete(&bundle, &flags.id)).await
            });
            let Ok(resp) = resp else {
                return ExitCode::FAILURE;
            };
            let bytes = resp.write_to_bytes().unwrap_or_default();
            match std::io::stdout().write_all(&bytes) {
                Ok(()) => ExitCode::SUCCESS,
                Err(_) => ExitCode::FAILURE,
            }
        }
        "" => {
            logging::init(logging::Target::ContainerdFifo, flags.debug, &flags.id);
            match runtime.block_on(serve::serve(&flags)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "the shim failed");
                    eprintln!("{RUNTIME_ID}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        other => {
            eprintln!(
                "{RUNTIME_ID}: unknown action {other:?} (expected start, delete, features or none)"
            );
            ExitCode::FAILURE
        }
    }
}
