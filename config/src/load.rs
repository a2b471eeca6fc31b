//! Finding, reading and parsing the configuration file, and turning parser
//! errors into [`ConfigError`]s that name the file, the line and the key.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, Location};
use crate::locate;
use crate::model::Config;
use crate::validate;

/// Where to look for the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Search {
    /// `$ISOLA_CONFIG`, if set and non-empty: then it is the only file consulted.
    pub env: Option<PathBuf>,
    /// The standard locations, in order.
    pub standard: Vec<PathBuf>,
}

impl Search {
    /// The search for the given `$ISOLA_CONFIG` value and standard paths.
    pub fn new(env: Option<&OsStr>, standard: Vec<PathBuf>) -> Search {
        Search {
            env: env.filter(|v| !v.is_empty()).map(PathBuf::from),
            standard,
        }
    }

    /// The paths [`Search::load`] will consult, in order.
    pub fn paths(&self) -> Vec<PathBuf> {
        match &self.env {
            Some(env) => vec![env.clone()],
            None => self.standard.clone(),
        }
    }

    /// Loads the first existing file. With `env` set, only that file is
    /// consulted and its absence is an error; otherwise a missing file means
    /// "try the next one". A file that exists but cannot be read or is
    /// invalid is always an error: there is no silent fallback.
    pub fn load(&self) -> Result<(Config, PathBuf), ConfigError> {
        if let Some(path) = &self.env {
            return match read(path)? {
                Some(text) => Ok((parse(&text, path)?, path.clone())),
                None => Err(ConfigError::EnvFileMissing {
                    path: path.clone(),
                    fallbacks: self.standard.clone(),
                }),
            };
        }
        for path in &self.standard {
            if let Some(text) = read(path)? {
                return Ok((parse(&text, path)?, path.clone()));
            }
        }
        Err(ConfigError::NotFound {
            tried: self.standard.clone(),
        })
    }
}

/// Reads `path`; `Ok(None)` if it does not exist.
fn read(path: &Path) -> Result<Option<String>, ConfigError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads and parses the file at `path` (which must exist).
pub(crate) fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses and validates `text`; `origin` is the file name used in errors.
pub(crate) fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    let location = |span: Option<std::ops::Range<usize>>| Location {
        file: origin.to_owned(),
        line_col: span.map(|s| locate::line_col(text, s.start)),
    };

    // Syntax first, so that schema errors below are about a valid document.
    if let Err(e) = toml::from_str::<toml::Table>(text) {
        return Err(ConfigError::Syntax {
            location: location(e.span()),
            message: one_line(e.message()),
        });
    }

    let config = toml::from_str::<Config>(text).map_err(|e| {
        let message = one_line(e.message());
        let key = e
            .span()
            .and_then(|s| locate::key_at(text, s.start))
            .unwrap_or_default();
        let location = location(e.span());
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let key = if key.is_empty() {
                rest.split('`').next().unwrap_or_default().to_owned()
            } else {
                key
            };
            let valid = valid_keys(key.rsplit_once('.').map(|(parent, _)| parent));
            ConfigError::UnknownKey {
                location,
                key,
                valid,
            }
        } else {
            ConfigError::WrongValue {
                location,
                key,
                message: humanize(&message),
            }
        }
    })?;

    validate_in(&config, origin, Some(text))?;
    Ok(config)
}

/// Validates `config`; when the source `text` is known, errors carry the
/// line and column of the offending value.
pub(crate) fn validate_in(
    config: &Config,
    origin: &Path,
    text: Option<&str>,
) -> Result<(), ConfigError> {
    let Some(p) = validate::check(config) else {
        return Ok(());
    };
    let line_col =
        text.and_then(|t| locate::span_of(t, p.key).map(|span| locate::line_col(t, span.start)));
    Err(ConfigError::Invalid {
        location: Location {
            file: origin.to_owned(),
            line_col,
        },
        key: p.key.to_owned(),
        value: p.value,
        problem: format!("{}; {}", p.problem, p.fix),
    })
}

/// The keys accepted in the table at dotted path `parent` (top level when
/// `None`), derived from the serialized defaults so it cannot drift.
fn valid_keys(parent: Option<&str>) -> Vec<String> {
    let Ok(mut table) = toml::Table::try_from(Config::default()) else {
        return Vec::new();
    };
    for part in parent.into_iter().flat_map(|p| p.split('.')) {
        match table.remove(part) {
            Some(toml::Value::Table(t)) => table = t,
            _ => return Vec::new(),
        }
    }
    table.keys().cloned().collect()
}

/// Replaces Rust type names in deserializer messages with TOML terms.
fn humanize(message: &str) -> String {
    let mut out = message
        .replace(
            "expected u32",
            "expected a non-negative integer no larger than 4294967295",
        )
        .replace("expected u64", "expected a non-negative integer")
        .replace("expected path string", "expected a path string");
    if let Some(i) = out.find("expected struct ") {
        out.replace_range(i.., "expected a table");
    }
    out
}

/// Collapses a possibly multi-line parser message into one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        path
    }

    fn standard(dir: &Path) -> Vec<PathBuf> {
        vec![dir.join("etc.toml"), dir.join("share.toml")]
    }

    #[test]
    fn empty_env_counts_as_unset() {
        let s = Search::new(Some(OsStr::new("")), vec!["/a".into()]);
        assert_eq!(s.env, None);
        assert_eq!(s.paths(), vec![PathBuf::from("/a")]);
    }

    #[test]
    fn env_file_wins_over_standard_paths() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "etc.toml", "[hypervisor]\nvcpus = 2\n");
        let env = write(dir.path(), "env.toml", "[hypervisor]\nvcpus = 3\n");
        let s = Search::new(Some(env.as_os_str()), standard(dir.path()));
        assert_eq!(s.paths(), vec![env.clone()]);
        let (config, path) = s.load().unwrap();
        assert_eq!(path, env);
        assert_eq!(config.hypervisor.vcpus, 3);
    }

    #[test]
    fn missing_env_file_is_an_error_not_a_fallback() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "etc.toml", "");
        let env = dir.path().join("typo.toml");
        let err = Search::new(Some(env.as_os_str()), standard(dir.path()))
            .load()
            .unwrap_err();
        assert!(matches!(err, ConfigError::EnvFileMissing { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&*env.to_string_lossy()), "{msg}");
        assert!(msg.contains("ISOLA_CONFIG"), "{msg}");
    }

    #[test]
    fn first_existing_standard_path_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let share = write(dir.path(), "share.toml", "[hypervisor]\nvcpus = 4\n");
        let s = Search::new(None, standard(dir.path()));
        let (config, path) = s.load().unwrap();
        assert_eq!((config.hypervisor.vcpus, path), (4, share));

        let etc = write(dir.path(), "etc.toml", "[hypervisor]\nvcpus = 2\n");
        let (config, path) = s.load().unwrap();
        assert_eq!((config.hypervisor.vcpus, path), (2, etc));
    }

    #[test]
    fn invalid_first_file_does_not_fall_back() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "etc.toml", "[hypervisor]\nvcpus = 0\n");
        write(dir.path(), "share.toml", "");
        let err = Search::new(None, standard(dir.path())).load().unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        assert!(err.to_string().contains("etc.toml"), "{err}");
    }

    #[test]
    fn unreadable_file_does_not_fall_back() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where a file is expected: exists, but cannot be read.
        fs::create_dir(dir.path().join("etc.toml")).unwrap();
        write(dir.path(), "share.toml", "");
        let err = Search::new(None, standard(dir.path())).load().unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        assert!(err.to_string().contains("etc.toml"), "{err}");
    }

    #[test]
    fn nothing_found_lists_every_path_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let paths = standard(dir.path());
        let err = Search::new(None, paths.clone()).load().unwrap_err();
        let msg = err.to_string();
        for p in &paths {
            assert!(msg.contains(&*p.to_string_lossy()), "{msg}");
        }
        assert!(msg.contains("make install"), "{msg}");
        assert!(msg.contains("ISOLA_CONFIG"), "{msg}");
        match err {
            ConfigError::NotFound { tried } => assert_eq!(tried, paths),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn valid_keys_follow_the_model() {
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(valid_keys(None)),
            ["agent", "factory", "hypervisor", "pod", "runtime"]
        );
        assert_eq!(sorted(valid_keys(Some("runtime"))), ["debug", "state_dir"]);
        assert!(valid_keys(Some("hypervisor")).contains(&"vhost_user_vsock_path".to_owned()));
        assert!(valid_keys(Some("nope")).is_empty());
    }
}
