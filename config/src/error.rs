//! Errors of loading and validating the configuration.
//!
//! Every message names the file (and, when known, the line and column), the
//! offending key, and says what to do about it.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Where in a configuration file something is: the file, and the 1-based
/// line and column when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The configuration file (the `origin` given to the parser).
    pub file: PathBuf,
    /// 1-based line and column (in characters), when known.
    pub line_col: Option<(u32, u32)>,
}

impl fmt::Display for Location {
    /// `file:line:column`, or just `file` when the position is unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line_col {
            Some((line, col)) => write!(f, "{}:{line}:{col}", self.file.display()),
            None => write!(f, "{}", self.file.display()),
        }
    }
}

/// Everything that can go wrong loading a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No file exists at any of the search paths.
    #[error(
        "no isola configuration file found (tried: {}); run `make install` to install the \
         default configuration, or set ISOLA_CONFIG to the path of a configuration file",
        join_paths(.tried)
    )]
    NotFound {
        /// Every path tried, in search order.
        tried: Vec<PathBuf>,
    },

    /// `$ISOLA_CONFIG` is set but names a file that does not exist.
    #[error(
        "{}: no such file, but ISOLA_CONFIG points to it; create it, fix ISOLA_CONFIG, or unset \
         ISOLA_CONFIG to use the standard search paths ({})",
        .path.display(), join_paths(.fallbacks)
    )]
    EnvFileMissing {
        /// The value of `$ISOLA_CONFIG`.
        path: PathBuf,
        /// The standard search paths that would be used without it.
        fallbacks: Vec<PathBuf>,
    },

    /// The file exists but could not be read.
    #[error("{}: cannot read the configuration file: {source}; check that it is a readable regular file", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// The file is not valid TOML.
    #[error("{location}: invalid TOML: {message}; fix the syntax (the shipped configuration.toml shows the expected format)")]
    Syntax {
        /// Where the syntax error is.
        location: Location,
        /// What the TOML parser said.
        message: String,
    },

    /// A key or section the runtime does not know (a typo, or a key from
    /// another version of isola).
    #[error(
        "{location}: unknown key `{key}`; remove it or fix its spelling (valid {}: {})",
        valid_scope(.key), .valid.join(", ")
    )]
    UnknownKey {
        /// Where the key is.
        location: Location,
        /// The full dotted key, e.g. `hypervisor.vcpu`.
        key: String,
        /// The keys accepted at that place.
        valid: Vec<String>,
    },

    /// A value of the wrong type, or a string that is not one of the accepted
    /// values of an enumerated key.
    #[error("{location}: {}{message}; {}", key_prefix(.key), type_fix(.key, .message))]
    WrongValue {
        /// Where the value is.
        location: Location,
        /// The full dotted key, e.g. `hypervisor.vcpus` (empty if unknown).
        key: String,
        /// What the deserializer said, e.g. `invalid type: string "2", expected u32`.
        message: String,
    },

    /// A well-typed value that fails validation (range, relative path, ...).
    #[error("{location}: {key} = {value} {problem}")]
    Invalid {
        /// Where the value is.
        location: Location,
        /// The full dotted key, e.g. `hypervisor.memory_mib`.
        key: String,
        /// The value as written in TOML, e.g. `64` or `"vmlinuz"`.
        value: String,
        /// What is wrong and what to do, e.g. `is too small: at least 128 MiB
        /// is needed; set it to a number from 128 to 1048576`.
        problem: String,
    },

    /// The configuration could not be rendered as TOML (e.g. a non-UTF-8 path).
    #[error("cannot render the configuration as TOML: {message}; make every path valid UTF-8")]
    Serialize {
        /// What the serializer said.
        message: String,
    },
}

impl ConfigError {
    /// The dotted key the error is about (e.g. `hypervisor.vcpus`), if any.
    pub fn key(&self) -> Option<&str> {
        let key = match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::WrongValue { key, .. }
            | ConfigError::Invalid { key, .. } => key,
            _ => return None,
        };
        (!key.is_empty()).then_some(key)
    }

    /// Where in which file the error is, if it is about a file's contents.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Syntax { location, .. }
            | ConfigError::UnknownKey { location, .. }
            | ConfigError::WrongValue { location, .. }
            | ConfigError::Invalid { location, .. } => Some(location),
            _ => None,
        }
    }
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn valid_scope(key: &str) -> String {
    match key.rsplit_once('.') {
        Some((section, _)) => format!("keys in [{section}]"),
        None => "top-level sections".to_owned(),
    }
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

fn type_fix(key: &str, message: &str) -> String {
    let what = if key.is_empty() {
        "the value".to_owned()
    } else {
        format!("`{key}`")
    };
    if message.starts_with("unknown variant") {
        format!("set {what} to one of the accepted values listed")
    } else {
        format!(
            "change {what} to a value of the expected type (the shipped configuration.toml \
             documents every key)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_stays_small() {
        // Keeps `Result<_, ConfigError>` below clippy's `result_large_err`
        // threshold, also in the crates that return it.
        assert!(std::mem::size_of::<ConfigError>() < 128);
    }
}
