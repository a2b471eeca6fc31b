//! Huge-page limits for the page sizes the guest has.
//!
//! The kubelet puts a `hugepageLimits` entry in every container's resources for each page size
//! the node has (0 when the pod asks for none), and CRI-O passes them on. The guest is not the
//! node: under TCG, or on a CPU without 1 GiB pages, the guest kernel has only 2 MiB pages, and
//! libcontainer fails the container on the missing `hugetlb.1GB.max`. A limit on a size the
//! guest does not have bounds nothing (no process in the guest can get such a page), so it is
//! left out, and the sizes the guest has keep their limits.

use std::path::Path;

use oci_spec::runtime::Spec;

/// Where the guest kernel lists its huge-page sizes (`hugepages-2048kB`, ...).
const HUGEPAGES_DIR: &str = "/sys/kernel/mm/hugepages";

/// The guest's huge-page sizes in the OCI (and cgroup file) form: `2MB`, `1GB`.
pub fn guest_sizes() -> Vec<String> {
    sizes_in(Path::new(HUGEPAGES_DIR))
}

fn sizes_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut sizes: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let kib: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some(oci_size(kib))
        })
        .collect();
    sizes.sort();
    sizes
}

/// `2048` -> `2MB`, `1048576` -> `1GB`, `64` -> `64KB` (the kernel's hugetlb file names).
fn oci_size(kib: u64) -> String {
    if kib >= 1 << 20 && kib % (1 << 20) == 0 {
        format!("{}GB", kib >> 20)
    } else if kib >= 1 << 10 && kib % (1 << 10) == 0 {
        format!("{}MB", kib >> 10)
    } else {
        format!("{kib}KB")
    }
}

/// Drops the spec's huge-page limits on sizes not in `supported`; returns the dropped sizes.
pub fn keep_supported(spec: &mut Spec, supported: &[String]) -> Vec<String> {
    let Some(mut linux) = spec.linux().clone() else {
        return Vec::new();
    };
    let Some(mut resources) = linux.resources().clone() else {
        return Vec::new();
    };
    let Some(limits) = resources.hugepage_limits().clone() else {
        return Vec::new();
    };
    let (kept, dropped): (Vec<_>, Vec<_>) = limits
        .into_iter()
        .partition(|l| supported.iter().any(|s| s == l.page_size()));
    if dropped.is_empty() {
        return Vec::new();
    }
    resources.set_hugepage_limits(Some(kept));
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    dropped.into_iter().map(|l| l.page_size().clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxHugepageLimitBuilder, LinuxResourcesBuilder, SpecBuilder,
    };

    fn spec_with(sizes: &[(&str, i64)]) -> Spec {
        let limits = sizes
            .iter()
            .map(|(s, l)| {
                LinuxHugepageLimitBuilder::default()
                    .page_size(s.to_string())
                    .limit(*l)
                    .build()
                    .unwrap()
            })
            .collect::<Vec<_>>();
        let resources = LinuxResourcesBuilder::default()
            .hugepage_limits(limits)
            .build()
            .unwrap();
        let linux = LinuxBuilder::default()
            .resources(resources)
            .build()
            .unwrap();
        SpecBuilder::default().linux(linux).build().unwrap()
    }

    fn sizes(spec: &Spec) -> Vec<(String, i64)> {
        spec.linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .and_then(|r| r.hugepage_limits().clone())
            .unwrap_or_default()
            .iter()
            .map(|l| (l.page_size().clone(), l.limit()))
            .collect()
    }

    #[test]
    fn sizes_the_guest_lacks_are_dropped_and_the_rest_kept() {
        let mut spec = spec_with(&[("2MB", 0), ("1GB", 0)]);
        let dropped = keep_supported(&mut spec, &["2MB".to_string()]);
        assert_eq!(dropped, ["1GB"]);
        assert_eq!(sizes(&spec), [("2MB".to_string(), 0)]);
        // Nothing to drop: the spec is left as it is.
        let mut spec = spec_with(&[("2MB", 4 << 20)]);
        assert!(keep_supported(&mut spec, &["2MB".to_string(), "1GB".to_string()]).is_empty());
        assert_eq!(sizes(&spec), [("2MB".to_string(), 4 << 20)]);
        // No huge pages in the guest at all.
        let mut spec = spec_with(&[("2MB", 0)]);
        assert_eq!(keep_supported(&mut spec, &[]), ["2MB"]);
        assert!(sizes(&spec).is_empty());
        let mut bare = SpecBuilder::default().build().unwrap();
        assert!(keep_supported(&mut bare, &[]).is_empty());
    }

    #[test]
    fn the_kernels_directory_names_become_oci_sizes() {
        let dir = tempfile::tempdir().unwrap();
        for d in [
            "hugepages-2048kB",
            "hugepages-1048576kB",
            "hugepages-64kB",
            "other",
        ] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        assert_eq!(sizes_in(dir.path()), ["1GB", "2MB", "64KB"]);
        assert!(sizes_in(&dir.path().join("missing")).is_empty());
    }
}
