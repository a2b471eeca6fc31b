//! `isola install containerd` / `isola uninstall containerd`: the isola runtime in a containerd
//! configuration, edited with `toml_edit` so that everything else in the file (comments, order,
//! formatting, other runtimes) stays as it was.
//!
//! The runtime is the CRI plugin's runtime `isola`:
//!
//! ```toml
//! [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.isola]
//! runtime_type = "io.containerd.isola.v2"
//! pod_annotations = ["io.isola.config.*"]
//! privileged_without_host_devices = true
//!
//! [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.isola.options]
//! ConfigPath = "/usr/local/share/isola/configuration.toml"
//! ```
//!
//! in a version 2 file (containerd 1.3 to 1.7), or under
//! `plugins."io.containerd.cri.v1.runtime"` in a version 3 file (containerd 2). Version 1 files
//! (and files without `version`, which containerd reads as version 1) are refused. Installing
//! twice changes nothing the second time; uninstalling removes exactly the `isola` table again,
//! giving back the file as it was before the install.
//!
//! Further handlers (e.g. `isola-clh`, whose `ConfigPath` selects Cloud Hypervisor) are tables
//! of the same shape under their own name, added and removed one by one the same way.

use std::fmt;
use std::path::Path;

use toml_edit::{DocumentMut, Item, Table};

/// The default runtime's name in containerd's configuration (and a Kubernetes RuntimeClass
/// handler); `--handler` names others.
pub const RUNTIME_NAME: &str = "isola";
/// The shim's runtime type: containerd runs `containerd-shim-isola-v2` for it.
pub const RUNTIME_TYPE: &str = "io.containerd.isola.v2";
/// The pod annotations containerd passes to the runtime: isola's configuration overrides.
pub const POD_ANNOTATIONS: &str = "io.isola.config.*";
/// containerd's configuration file.
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// The comment on the runc entry isola adds to a file that relied on containerd's built-in
/// runtime list (see [`install`]); uninstall removes a runc entry only when it carries this.
const RUNC_MARKER: &str = "# runc, as containerd has it built in: a runtimes table in this file \
replaces containerd's built-in list.\n# Added by `isola install containerd`, removed by \
`isola uninstall containerd`.\n";

/// Why a containerd configuration could not be edited.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// Not TOML.
    Parse(String),
    /// `version = 1`, or no version in a non-empty file.
    Version1 { explicit: bool },
    /// A version this code does not know.
    UnknownVersion(String),
    /// A key on the way to the runtimes table is not a table (or is an inline table).
    NotATable { key: String, found: &'static str },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Parse(e) => write!(f, "not a valid TOML file: {e}"),
            Error::Version1 { explicit } => {
                if *explicit {
                    write!(
                        f,
                        "this is a version 1 containerd configuration (version = 1)"
                    )?;
                } else {
                    write!(
                        f,
                        "this containerd configuration has no `version` key, so containerd reads \
                         it as version 1"
                    )?;
                }
                write!(
                    f,
                    "; isola only edits version 2 (containerd 1.3 to 1.7) and version 3 \
                     (containerd 2) files. Migrate the file to version 2 (`containerd config \
                     default` shows the layout), or add the runtime by hand as \
                     [plugins.cri.containerd.runtimes.{RUNTIME_NAME}] with runtime_type = \
                     \"{RUNTIME_TYPE}\""
                )
            }
            Error::UnknownVersion(v) => write!(
                f,
                "unknown containerd configuration version {v}; isola edits versions 2 and 3"
            ),
            Error::NotATable { key, found } => write!(
                f,
                "`{key}` is {found}, not a table; isola cannot add its runtime under it, \
                 edit the file by hand"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// The result of an edit: the new text, and whether it differs from the old one.
#[derive(Debug, PartialEq, Eq)]
pub struct Edit {
    pub text: String,
    pub changed: bool,
}

/// The keys of the CRI runtimes table in a configuration of this version.
fn runtimes_path(version: i64) -> Result<[&'static str; 4], Error> {
    match version {
        1 => Err(Error::Version1 { explicit: true }),
        2 => Ok([
            "plugins",
            "io.containerd.grpc.v1.cri",
            "containerd",
            "runtimes",
        ]),
        3 => Ok([
            "plugins",
            "io.containerd.cri.v1.runtime",
            "containerd",
            "runtimes",
        ]),
        v => Err(Error::UnknownVersion(v.to_string())),
    }
}

/// The configuration's version; `None` for a file without any key or table (empty, or only
/// comments), which isola may turn into a version 2 file.
fn version(doc: &DocumentMut) -> Result<Option<i64>, Error> {
    match doc.get("version") {
        Some(item) => match item.as_integer() {
            Some(v) => Ok(Some(v)),
            None => Err(Error::UnknownVersion(item.to_string().trim().to_string())),
        },
        None if doc.as_table().is_empty() => Ok(None),
        None => Err(Error::Version1 { explicit: false }),
    }
}

fn parse(text: &str) -> Result<DocumentMut, Error> {
    text.parse::<DocumentMut>()
        .map_err(|e| Error::Parse(e.to_string().trim().to_string()))
}

fn kind(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) if v.is_inline_table() => "an inline table",
        Item::Value(_) => "a value",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

fn dotted(path: &[&str]) -> String {
    path.iter()
        .map(|k| {
            if k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                k.to_string()
            } else {
                format!("\"{k}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The table at `path` under `root`, created (as implicit tables, which print no header of
/// their own) where missing.
fn table_at<'a>(root: &'a mut Table, path: &[&str]) -> Result<&'a mut Table, Error> {
    let mut table = root;
    for (i, key) in path.iter().enumerate() {
        let item = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        let found = kind(item);
        table = item.as_table_mut().ok_or_else(|| Error::NotATable {
            key: dotted(&path[..=i]),
            found,
        })?;
    }
    Ok(table)
}

/// The largest document position of the tables in `table`, recursively.
fn max_position(table: &Table) -> Option<isize> {
    let mut max = table.position();
    for (_, item) in table.iter() {
        let inner = match item {
            Item::Table(t) => max_position(t),
            Item::ArrayOfTables(a) => a.iter().filter_map(max_position).max(),
            _ => None,
        };
        max = max.max(inner);
    }
    max
}

/// Sets `table[key]` to the string `value` unless it already is that string (so that an
/// unchanged value keeps its formatting and comments).
fn set_string(table: &mut Table, key: &str, value: &str) {
    if table.get(key).and_then(Item::as_str) != Some(value) {
        table.insert(key, toml_edit::value(value));
    }
}

/// Adds (or updates) the isola runtime `handler` with `ConfigPath = isola_config` in the
/// configuration `text` (empty for a file that does not exist yet).
///
/// A file that names no runtime relies on containerd's built-in list, `runc` only; naming one
/// replaces that list, and the CRI plugin then refuses to start for want of its default runtime
/// (`default_runtime_name = "runc"`). So when the file names no other runtime and the default is
/// runc, runc is added as well, marked as isola's doing.
pub fn install(text: &str, handler: &str, isola_config: &Path) -> Result<Edit, Error> {
    let mut doc = parse(text)?;
    let version = match version(&doc)? {
        Some(v) => v,
        None => {
            // Comments of an otherwise empty file stay at its top.
            let comments = doc.trailing().as_str().unwrap_or_default().to_string();
            doc.set_trailing("");
            doc.insert("version", toml_edit::value(2));
            if let Some(mut key) = doc.key_mut("version") {
                key.leaf_decor_mut().set_prefix(comments);
            }
            2
        }
    };
    let path = runtimes_path(version)?;
    let end = max_position(doc.as_table()).map_or(0, |p| p + 1);
    let default_runtime = path[..3]
        .iter()
        .try_fold(doc.as_item(), |item, key| item.get(key))
        .and_then(|containerd| containerd.get("default_runtime_name"))
        .and_then(Item::as_str)
        .unwrap_or("runc")
        .to_string();
    let runtimes = table_at(doc.as_table_mut(), &path)?;
    // A new entry goes after the other runtimes when there are any (a table without a position
    // prints right after the tables before it), else at the end of the file.
    let has_runtimes = runtimes.iter().any(|(_, item)| item.is_table());
    let is_new = !runtimes.contains_key(handler);
    let others = runtimes
        .iter()
        .any(|(name, item)| name != handler && item.is_table_like());
    if !others && default_runtime == "runc" {
        let mut runc = Table::new();
        runc.insert("runtime_type", toml_edit::value("io.containerd.runc.v2"));
        runc.decor_mut().set_prefix(format!("\n{RUNC_MARKER}"));
        if !has_runtimes {
            runc.set_position(Some(end));
        }
        runtimes.insert("runc", Item::Table(runc));
    }
    let mut runtime_path = path.to_vec();
    runtime_path.push(handler);
    let runtime = table_at(runtimes, &[handler]).map_err(|e| match e {
        Error::NotATable { found, .. } => Error::NotATable {
            key: dotted(&runtime_path),
            found,
        },
        e => e,
    })?;
    runtime.set_implicit(false);
    if is_new && !has_runtimes {
        runtime.set_position(Some(end));
    }
    set_string(runtime, "runtime_type", RUNTIME_TYPE);
    // Pod annotations reach the runtime only when listed here (see isola's `[pod]` section).
    if runtime
        .get("pod_annotations")
        .and_then(Item::as_array)
        .is_none()
    {
        let mut list = toml_edit::Array::new();
        list.push(POD_ANNOTATIONS);
        runtime.insert("pod_annotations", toml_edit::value(list));
    }
    // A privileged pod gets no host devices: they would be the host's, not the guest's.
    if runtime
        .get("privileged_without_host_devices")
        .and_then(Item::as_bool)
        != Some(true)
    {
        runtime.insert("privileged_without_host_devices", toml_edit::value(true));
    }
    runtime_path.push("options");
    let options = table_at(runtime, &["options"]).map_err(|e| match e {
        Error::NotATable { found, .. } => Error::NotATable {
            key: dotted(&runtime_path),
            found,
        },
        e => e,
    })?;
    options.set_implicit(false);
    set_string(options, "ConfigPath", &isola_config.to_string_lossy());
    let new = doc.to_string();
    Ok(Edit {
        changed: new != text,
        text: new,
    })
}

/// Removes the isola runtime table `handler` from the configuration `text`; unchanged when it
/// is not there. The runc entry [`install`] added goes too once no other runtime is left.
pub fn uninstall(text: &str, handler: &str) -> Result<Edit, Error> {
    let mut doc = parse(text)?;
    let unchanged = || Edit {
        text: text.to_string(),
        changed: false,
    };
    let Some(version) = version(&doc)? else {
        return Ok(unchanged());
    };
    let path = runtimes_path(version)?;
    let mut table = doc.as_table_mut();
    for key in path {
        match table.get_mut(key).and_then(Item::as_table_mut) {
            Some(t) => table = t,
            None => return Ok(unchanged()),
        }
    }
    if table.remove(handler).is_none() {
        return Ok(unchanged());
    }
    // Another isola handler (or any runtime) still needs containerd's default runc entry.
    let others = table
        .iter()
        .any(|(name, item)| name != "runc" && item.is_table_like());
    let added_runc = !others
        && table
            .get("runc")
            .and_then(Item::as_table)
            .and_then(|t| t.decor().prefix())
            .and_then(|p| p.as_str())
            .is_some_and(|p| p.contains(RUNC_MARKER));
    if added_runc {
        table.remove("runc");
    }
    let new = doc.to_string();
    Ok(Edit {
        changed: new != text,
        text: new,
    })
}

/// Sets `runtime_path` (the shim binary containerd runs, instead of finding
/// `containerd-shim-isola-v2` on its `PATH`; containerd 1.6 and later) of the runtime `handler`,
/// which [`install`] added to `text` before.
pub fn set_runtime_path(text: &str, handler: &str, shim: &Path) -> Result<Edit, Error> {
    set_runtime_key(text, handler, "runtime_path", &shim.to_string_lossy())
}

/// Sets `runtime_type` of the runtime `handler` (added by [`install`] with
/// `io.containerd.isola.v2`), e.g. to `io.containerd.<handler>.v2`: containerd looks for the
/// binary `containerd-shim-<handler>-v2` on its `PATH` then.
pub fn set_runtime_type(text: &str, handler: &str, runtime_type: &str) -> Result<Edit, Error> {
    set_runtime_key(text, handler, "runtime_type", runtime_type)
}

fn set_runtime_key(text: &str, handler: &str, key: &str, value: &str) -> Result<Edit, Error> {
    let mut doc = parse(text)?;
    let path = runtimes_path(version(&doc)?.unwrap_or(2))?;
    let mut keys = path.to_vec();
    keys.push(handler);
    let runtime = table_at(doc.as_table_mut(), &keys)?;
    set_string(runtime, key, value);
    let new = doc.to_string();
    Ok(Edit {
        changed: new != text,
        text: new,
    })
}

/// The isola configuration file containerd's runtime entry `handler` points at, if the
/// configuration `text` has one.
pub fn installed_config_path(text: &str, handler: &str) -> Option<String> {
    let doc = parse(text).ok()?;
    let path = runtimes_path(version(&doc).ok()??).ok()?;
    let mut item = doc.as_item();
    for key in path.iter().chain(&[handler, "options", "ConfigPath"]) {
        item = item.get(key)?;
    }
    item.as_str().map(str::to_string)
}

#[cfg(test)]
#[path = "containerd_tests.rs"]
mod tests;
