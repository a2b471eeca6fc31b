//! The TOML configuration of the isola runtime: what `configuration.toml` is
//! for Kata Containers.
//!
//! The file has four sections, `[hypervisor]`, `[agent]`, `[runtime]` and `[pod]`;
//! every key is optional and has a documented default (see [`Config`] and the
//! shipped, commented `configuration.toml`, also available as
//! [`DEFAULT_CONFIG_TOML`]). Unknown keys, wrong types, out-of-range numbers
//! and relative paths are errors whose message names the file, the line, the
//! key, and what to do.
//!
//! ```
//! use std::path::Path;
//! use isola_config::{Config, MachineType};
//!
//! let text = "[hypervisor]\nmachine_type = \"microvm\"\nvcpus = 2\n";
//! let config = Config::from_toml_str(text, Path::new("example.toml")).unwrap();
//! assert_eq!(config.hypervisor.machine_type, MachineType::Microvm);
//! assert_eq!(config.hypervisor.memory_mib, 512); // default
//! ```

mod error;
mod load;
mod locate;
mod model;
mod pod;
mod validate;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, Location};
pub use model::{
    share_dir, Accelerator, AgentConfig, Config, FactoryConfig, HypervisorConfig, HypervisorKind,
    LogLevel, MachineType, RuntimeConfig, SharedFs, VirtiofsdCache, VirtiofsdSandbox, Vsock,
    DEFAULT_CLOUD_HYPERVISOR_PATH, DEFAULT_DEBUG_BUSYBOX_PATH, DEFAULT_DIAL_TIMEOUT_MS,
    DEFAULT_FIRMWARE, DEFAULT_MEMORY_MIB, DEFAULT_QEMU_PATH, DEFAULT_STATE_DIR, DEFAULT_VCPUS,
    DEFAULT_VHOST_USER_VSOCK_PATH, DEFAULT_VIRTIOFSD_PATH, MAX_MEMORY_MIB, MAX_VCPUS,
    MIN_MEMORY_MIB, MIN_VCPUS, VHOST_VSOCK_DEVICE,
};
pub use pod::{
    mib_for_bytes, vcpus_for_quota, AnnotationError, PodConfig, PodSizing, ANNOTATION_PREFIX,
    CRI_SANDBOX_CPU_PERIOD, CRI_SANDBOX_CPU_QUOTA, CRI_SANDBOX_MEMORY, DEFAULT_OVERHEAD_MEMORY_MIB,
    DEFAULT_OVERHEAD_VCPUS, OVERRIDABLE,
};

/// The installation prefix, fixed at build time from the `ISOLA_PREFIX`
/// environment variable; `/usr/local` when it is not set.
pub const PREFIX: &str = match option_env!("ISOLA_PREFIX") {
    Some(prefix) => prefix,
    None => "/usr/local",
};

/// The environment variable naming an explicit configuration file.
pub const CONFIG_ENV_VAR: &str = "ISOLA_CONFIG";

/// The system-wide configuration file, consulted first when
/// [`CONFIG_ENV_VAR`] is not set.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/isola/configuration.toml";

/// The shipped default configuration file (`config/configuration.toml`),
/// fully commented; `make install` puts it at [`Config::default_config_path`].
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../configuration.toml");

impl Config {
    /// Loads the configuration from the standard search order and returns it
    /// with the path of the file it came from:
    ///
    /// 1. `$ISOLA_CONFIG`, if set and non-empty. It is then the only file
    ///    consulted: if it does not exist, that is an error (a mistyped path
    ///    must not silently select another file).
    /// 2. otherwise `/etc/isola/configuration.toml`,
    /// 3. else `$PREFIX/share/isola/configuration.toml`.
    ///
    /// A missing file means "try the next one"; when none exists the error
    /// lists every path tried. A file that exists but cannot be read or is
    /// invalid is an error; there is no fallback to the next file.
    pub fn load() -> Result<(Config, PathBuf), ConfigError> {
        search_from_env().load()
    }

    /// Loads and validates the configuration file at `path`.
    pub fn load_from(path: &Path) -> Result<Config, ConfigError> {
        load::load_file(path)
    }

    /// Parses and validates TOML text; `origin` is the file name used in
    /// error messages.
    pub fn from_toml_str(s: &str, origin: &Path) -> Result<Config, ConfigError> {
        load::parse(s, origin)
    }

    /// The files [`Config::load`] consults, in order (for `isola check` to
    /// print): just `$ISOLA_CONFIG` when it is set, else
    /// `/etc/isola/configuration.toml` then
    /// `$PREFIX/share/isola/configuration.toml`.
    pub fn search_paths() -> Vec<PathBuf> {
        search_from_env().paths()
    }

    /// Where `make install` puts the default configuration:
    /// `$PREFIX/share/isola/configuration.toml`.
    pub fn default_config_path() -> PathBuf {
        share_dir().join("configuration.toml")
    }

    /// Checks ranges and paths of a configuration built in code (files are
    /// validated when loaded). `origin` names the source in the error.
    pub fn validate(&self, origin: &Path) -> Result<(), ConfigError> {
        load::validate_in(self, origin, None)
    }

    /// The configuration rendered as TOML (e.g. for `isola check` to print
    /// the effective configuration).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Serialize {
            message: e.to_string(),
        })
    }
}

fn search_from_env() -> load::Search {
    let env = std::env::var_os(CONFIG_ENV_VAR);
    load::Search::new(
        env.as_deref(),
        vec![
            PathBuf::from(SYSTEM_CONFIG_PATH),
            Config::default_config_path(),
        ],
    )
}
