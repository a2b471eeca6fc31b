//! What the shim learns from containerd besides the Task API requests: runtime options (which
//! configuration file), the sandbox a container belongs to, and valid ids.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use isola_config::Config;
use protobuf::well_known_types::any::Any;
use protobuf::CodedInputStream;

use crate::error::{Result, ShimError};

/// Annotation naming a container's sandbox, set by containerd's CRI plugin.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The same, as CRI-O sets it.
pub const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";

/// The message containerd uses for non-runc runtime options (CRI `[...runtimes.x.options]`,
/// `ctr run --runtime-config-path`).
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// `runtimeoptions.v1.Options`: where the runtime's configuration is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeOptions {
    /// `ConfigPath`: a configuration file.
    pub config_path: Option<PathBuf>,
    /// `ConfigBody`: the configuration inline (newer containerd).
    pub config_body: Option<String>,
}

impl RuntimeOptions {
    /// Decodes the `options` of a CreateTaskRequest. Options of another type (say, runc's)
    /// are ignored with a warning; a malformed message is an error.
    pub fn from_any(any: Option<&Any>) -> Result<RuntimeOptions> {
        let Some(any) = any.filter(|a| !a.type_url.is_empty()) else {
            return Ok(RuntimeOptions::default());
        };
        let name = any.type_url.rsplit('/').next().unwrap_or_default();
        if name != RUNTIME_OPTIONS_TYPE {
            tracing::warn!(type_url = %any.type_url, "ignoring runtime options of a type isola does not read");
            return Ok(RuntimeOptions::default());
        }
        Self::decode(&any.value).map_err(|e| {
            ShimError::InvalidArgument(format!(
                "malformed runtime options ({RUNTIME_OPTIONS_TYPE}): {e}"
            ))
        })
    }

    /// Hand-decodes the three-string message: { type_url = 1; config_path = 2; config_body = 3 }.
    fn decode(bytes: &[u8]) -> protobuf::Result<RuntimeOptions> {
        let mut input = CodedInputStream::from_bytes(bytes);
        let mut opts = RuntimeOptions::default();
        while let Some(tag) = input.read_raw_tag_or_eof()? {
            match tag {
                // field 2, wire type 2 (length-delimited)
                0x12 => opts.config_path = Some(PathBuf::from(input.read_string()?)),
                0x1a => opts.config_body = Some(input.read_string()?),
                other => {
                    let wire = protobuf::rt::WireType::new(other & 7).ok_or_else(|| {
                        protobuf::Error::from(std::io::Error::other(format!(
                            "bad wire type in tag {other}"
                        )))
                    })?;
                    input.skip_field(wire)?;
                }
            }
        }
        opts.config_path = opts.config_path.filter(|p| !p.as_os_str().is_empty());
        opts.config_body = opts.config_body.filter(|b| !b.trim().is_empty());
        Ok(opts)
    }

    /// Loads the configuration: `ConfigPath`, else `ConfigBody`, else `$ISOLA_CONFIG`, else
    /// the standard search (`/etc/isola/configuration.toml`, `$PREFIX/share/isola/...`).
    pub fn load_config(&self) -> Result<Config> {
        if let Some(path) = &self.config_path {
            return Ok(Config::load_from(path)?);
        }
        if let Some(body) = &self.config_body {
            return Ok(Config::from_toml_str(
                body,
                Path::new("<runtime option ConfigBody>"),
            )?);
        }
        Ok(Config::load()?.0)
    }
}

/// The sandbox a container belongs to: named by its annotations, else the container itself.
pub fn sandbox_id(container_id: &str, annotations: Option<&HashMap<String, String>>) -> String {
    annotations
        .and_then(|a| a.get(CRI_SANDBOX_ID).or_else(|| a.get(CRIO_SANDBOX_ID)))
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| container_id.to_string())
}

/// Checks that an id is safe as a file name (containerd's own rule is stricter).
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ShimError::InvalidArgument(format!(
            "{what} {id:?} is not a valid id: use 1 to 128 letters, digits, '.', '_' or '-', not starting with '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    fn encoded(path: &str) -> Vec<u8> {
        // type_url = "x" (field 1), config_path (field 2), an unknown varint field 9.
        let mut v = vec![0x0a, 1, b'x', 0x12, path.len() as u8];
        v.extend_from_slice(path.as_bytes());
        v.extend_from_slice(&[0x48, 7]);
        v
    }

    #[test]
    fn config_path_is_decoded() {
        let opts = RuntimeOptions::from_any(Some(&any(
            "runtimeoptions.v1.Options",
            encoded("/etc/isola/x.toml"),
        )))
        .unwrap();
        assert_eq!(
            opts.config_path.as_deref(),
            Some(Path::new("/etc/isola/x.toml"))
        );
        let opts = RuntimeOptions::from_any(Some(&any(
            "type.googleapis.com/runtimeoptions.v1.Options",
            encoded("/a"),
        )))
        .unwrap();
        assert_eq!(opts.config_path.as_deref(), Some(Path::new("/a")));
    }

    #[test]
    fn absent_or_foreign_options_mean_defaults() {
        assert_eq!(
            RuntimeOptions::from_any(None).unwrap(),
            RuntimeOptions::default()
        );
        let runc = any("containerd.runc.v1.Options", vec![0x12, 1, b'a']);
        assert_eq!(
            RuntimeOptions::from_any(Some(&runc)).unwrap(),
            RuntimeOptions::default()
        );
    }

    #[test]
    fn malformed_options_are_invalid() {
        let bad = any("runtimeoptions.v1.Options", vec![0x12, 50, b'a']);
        let err = RuntimeOptions::from_any(Some(&bad)).unwrap_err();
        assert!(matches!(err, ShimError::InvalidArgument(_)), "{err}");
    }

    #[test]
    fn config_body_and_path_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[hypervisor]\nvcpus = 2\n").unwrap();
        let opts = RuntimeOptions {
            config_path: Some(path),
            config_body: None,
        };
        assert_eq!(opts.load_config().unwrap().hypervisor.vcpus, 2);
        let opts = RuntimeOptions {
            config_path: None,
            config_body: Some("[hypervisor]\nvcpus = 3\n".into()),
        };
        assert_eq!(opts.load_config().unwrap().hypervisor.vcpus, 3);
        let opts = RuntimeOptions {
            config_path: Some(dir.path().join("missing.toml")),
            config_body: None,
        };
        assert!(matches!(
            opts.load_config().unwrap_err(),
            ShimError::Config(_)
        ));
    }

    #[test]
    fn sandbox_id_from_annotations() {
        let mut a = HashMap::new();
        assert_eq!(sandbox_id("c1", None), "c1");
        assert_eq!(sandbox_id("c1", Some(&a)), "c1");
        a.insert(CRIO_SANDBOX_ID.to_string(), "crio".to_string());
        assert_eq!(sandbox_id("c1", Some(&a)), "crio");
        a.insert(CRI_SANDBOX_ID.to_string(), "pod".to_string());
        assert_eq!(sandbox_id("c1", Some(&a)), "pod");
    }

    #[test]
    fn ids_must_be_safe_file_names() {
        for ok in ["c1", "a.b-c_d", &"x".repeat(128)] {
            validate_id("container", ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", ".hidden", "a b", &"x".repeat(129)] {
            assert!(validate_id("container", bad).is_err(), "{bad:?}");
        }
    }
}
