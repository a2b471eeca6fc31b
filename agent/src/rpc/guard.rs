//! Containing failures of single requests.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use ttrpc::{get_status, Code};

/// A ttrpc error with a status code and message.
pub fn rpc_error(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(get_status(code, msg.into()))
}

/// UNIMPLEMENTED for an RPC the agent does not serve yet.
pub fn unimplemented(rpc: &str) -> ttrpc::Error {
    rpc_error(
        Code::UNIMPLEMENTED,
        format!("{rpc} is not implemented by this isola-agent version"),
    )
}

/// Runs a handler, turning a panic into an INTERNAL error for that request alone.
pub async fn guarded<T, F>(rpc: &'static str, fut: F) -> ttrpc::Result<T>
where
    F: Future<Output = ttrpc::Result<T>>,
{
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => {
            if let Err(e) = &result {
                tracing::debug!(rpc, error = ?e, "request failed");
            }
            result
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(rpc, panic = %what, "request handler panicked");
            Err(rpc_error(
                Code::INTERNAL,
                format!(
                    "{rpc}: the agent hit an internal error ({what}); see the guest console log"
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(e: &ttrpc::Error) -> Code {
        match e {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[tokio::test]
    async fn panic_becomes_internal_error() {
        let r: ttrpc::Result<()> = guarded("Boom", async { panic!("kaboom") }).await;
        let e = r.unwrap_err();
        assert_eq!(code_of(&e), Code::INTERNAL);
        assert!(format!("{e:?}").contains("kaboom"));
    }

    #[tokio::test]
    async fn results_pass_through() {
        assert_eq!(guarded("Ok", async { Ok(7) }).await.unwrap(), 7);
        let e = guarded::<(), _>("X", async { Err(unimplemented("X")) })
            .await
            .unwrap_err();
        assert_eq!(code_of(&e), Code::UNIMPLEMENTED);
    }
}
