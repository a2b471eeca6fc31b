//! Loading the kernel modules the guest image lists.
//!
//! The image build (guest/build.sh) writes `/etc/isola/modules`: one `.ko` file name per line, in
//! dependency order, the files themselves in `/lib/modules/isola/`. A kernel with the drivers
//! built in (the tailored kernel) ships neither list nor directory, and nothing is loaded; a
//! module the kernel already has (`/sys/module/<name>`) is skipped ([`still_needed`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// The load-order file written by the image build.
pub const MODULE_LIST: &str = "/etc/isola/modules";
/// Where the image keeps the module files.
pub const MODULE_DIR: &str = "/lib/modules/isola";

/// A module that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("module list {path}: line {line} {name:?} is not a plain .ko file name")]
    BadName {
        path: PathBuf,
        line: usize,
        name: String,
    },
    #[error("reading module list {path}: {source}")]
    ReadList {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening module {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading module {path}: {source}")]
    Load { path: PathBuf, source: Errno },
}

/// Parses the load-order list: one file name per line, `#` comments and blank lines skipped.
/// Names are plain `.ko` file names (no `/`, no `..`), so the list cannot point outside
/// the module directory.
pub fn parse_list(text: &str, origin: &Path) -> Result<Vec<String>, ModuleError> {
    let mut names = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let name = raw.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        let plain = !name.contains('/') && name != ".." && name.ends_with(".ko") && name.len() > 3;
        if !plain {
            return Err(ModuleError::BadName {
                path: origin.to_path_buf(),
                line: i + 1,
                name: name.to_string(),
            });
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// Loads every listed module in order. A missing list means "nothing to load".
/// Returns the number of modules loaded (already-present ones count as loaded).
#[cfg(test)]
pub fn load_all(list: &Path, dir: &Path) -> Result<usize, ModuleError> {
    let names = read_list(list)?;
    for name in &names {
        load_one(dir, name)?;
    }
    Ok(names.len())
}

/// Reads and parses the load-order list; a missing list means "nothing to load".
pub fn read_list(list: &Path) -> Result<Vec<String>, ModuleError> {
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ModuleError::ReadList {
                path: list.to_path_buf(),
                source,
            })
        }
    };
    parse_list(&text, list)
}

/// The kernel's name of a module file: `virtio-net.ko` -> `virtio_net` (the kernel treats `-`
/// and `_` alike and shows `_` under /sys/module).
pub fn module_name(file: &str) -> String {
    file.strip_suffix(".ko").unwrap_or(file).replace('-', "_")
}

/// Which of the listed module files still need loading: none when the image has no module
/// directory (a kernel with its drivers built in, e.g. the tailored one), otherwise those the
/// kernel does not already have (`present(name)`: `/sys/module/<name>` exists, i.e. loaded or
/// built in). Keeps the list's order. The Debian kernel's path costs one failed stat per module.
pub fn still_needed(
    files: &[String],
    have_module_dir: bool,
    present: impl Fn(&str) -> bool,
) -> Vec<String> {
    if !have_module_dir {
        return Vec::new();
    }
    files
        .iter()
        .filter(|f| !present(&module_name(f)))
        .cloned()
        .collect()
}

/// [`still_needed`] against this guest: [`MODULE_DIR`] and `/sys/module`.
pub fn still_needed_here(files: &[String]) -> Vec<String> {
    still_needed(files, Path::new(MODULE_DIR).is_dir(), |name| {
        Path::new("/sys/module").join(name).exists()
    })
}

/// Loads modules named by the host (CreateSandbox's `kernel_modules`): plain module names
/// (`.ko` optional) from `dir`, in order.
pub fn load_named(dir: &Path, names: &[String]) -> Result<usize, ModuleError> {
    let list: String = names
        .iter()
        .map(|n| {
            if n.ends_with(".ko") {
                format!("{n}\n")
            } else {
                format!("{n}.ko\n")
            }
        })
        .collect();
    let files = parse_list(&list, Path::new("<CreateSandbox kernel_modules>"))?;
    for file in &files {
        load_one(dir, file)?;
    }
    Ok(files.len())
}

/// Loads one module file from `dir` (already-loaded counts as success).
pub fn load_one(dir: &Path, name: &str) -> Result<(), ModuleError> {
    let path = dir.join(name);
    let started = Instant::now();
    let file = File::open(&path).map_err(|source| ModuleError::Open {
        path: path.clone(),
        source,
    })?;
    match finit_module(&file, c"", ModuleInitFlags::empty()) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(source) => return Err(ModuleError::Load { path, source }),
    }
    tracing::debug!(module = %name, elapsed_us = started.elapsed().as_micros() as u64, "module loaded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_in_order_skipping_comments() {
        let names = parse_list(
            "# order matters\nvirtio_ring.ko\n\n virtio.ko \nvsock.ko\n",
            Path::new("/x"),
        )
        .unwrap();
        assert_eq!(names, ["virtio_ring.ko", "virtio.ko", "vsock.ko"]);
    }

    #[test]
    fn rejects_paths_and_non_modules() {
        for bad in ["../../bin/sh.ko", "a/b.ko", "virtio", ".ko", "x.ko.xz"] {
            let err = parse_list(bad, Path::new("/etc/isola/modules")).unwrap_err();
            assert!(
                err.to_string().contains("line 1"),
                "{bad}: unexpected error {err}"
            );
        }
    }

    #[test]
    fn missing_list_loads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let n = load_all(&dir.path().join("absent"), dir.path()).unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn named_modules_are_checked_like_the_list() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_named(dir.path(), &[]).unwrap(), 0);
        let err = load_named(dir.path(), &["../../etc/passwd".into()]).unwrap_err();
        assert!(matches!(err, ModuleError::BadName { .. }), "{err}");
        let err = load_named(dir.path(), &["dummy".into()]).unwrap_err();
        assert!(err.to_string().contains("dummy.ko"), "{err}");
    }

    fn files(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn no_module_directory_means_nothing_to_load() {
        let list = files(&["virtio_ring.ko", "vsock.ko"]);
        assert!(still_needed(&list, false, |_| false).is_empty());
    }

    #[test]
    fn modules_the_kernel_has_are_skipped_in_order() {
        let list = files(&["virtio_ring.ko", "virtio-net.ko", "vsock.ko", "fuse.ko"]);
        let present = |n: &str| n == "virtio_net" || n == "fuse";
        assert_eq!(
            still_needed(&list, true, present),
            ["virtio_ring.ko", "vsock.ko"]
        );
        assert_eq!(
            still_needed(&list, true, |_| false),
            list,
            "Debian path: all"
        );
        assert!(still_needed(&list, true, |_| true).is_empty());
        assert_eq!(module_name("vmw_vsock-virtio.ko"), "vmw_vsock_virtio");
    }

    #[test]
    fn missing_module_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("modules");
        std::fs::write(&list, "nope.ko\n").unwrap();
        let err = load_all(&list, dir.path()).unwrap_err();
        assert!(err.to_string().contains("nope.ko"), "{err}");
    }
}
