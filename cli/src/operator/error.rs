//! The operator's errors: each says which request or object failed, so the controller's error
//! line (and its retry) is enough to act on.

/// A reconcile's failure; the controller logs it and retries the IsolaConfig later.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed (boxed: kube's error is large, and every result
    /// of the operator carries this type).
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: Box<kube::Error>,
    },
    /// The embedded deploy/isola-deploy.yaml is not the DaemonSet the operator builds on (a
    /// build of a broken manifest; its unit tests catch this first).
    #[error("the embedded deploy/isola-deploy.yaml: {0}")]
    Manifest(String),
    /// The IsolaConfig as received lacks what every stored object has (uid, name).
    #[error("the IsolaConfig has no {0} (not from the API server?)")]
    Incomplete(&'static str),
    /// A patch body could not be serialized.
    #[error("serializing {what}: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// A closure for `map_err` naming the request.
    pub fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Kube {
            what,
            source: Box::new(source),
        }
    }
}
