//! The guest paths through which the host's spec names what a pod's containers share; the
//! shim writes them into the guest spec, the agent resolves them (and refuses anything else).
//!
//! - `<NS_DIR>/<sandbox id>/<ns file>`: namespace `<ns file>` (as under `/proc/<pid>/ns/`) of
//!   the pod's sandbox (pause) container;
//! - [`POD_SHM`]: the pod's `/dev/shm`, one guest tmpfs for the whole pod;
//! - `<EMPTY_DIRS>/<name>`: the pod's emptyDir volume `name`, a directory in guest memory.

use oci_spec::runtime::LinuxNamespaceType;

/// Guest directory of the references to a sandbox container's namespaces.
pub const NS_DIR: &str = "/run/isola/ns";
/// Guest directory of pod-level volumes (the agent creates what is below it).
pub const POD_DIR: &str = "/run/isola/pod";
/// The pod's shared memory in the guest.
pub const POD_SHM: &str = "/run/isola/pod/shm";
/// The directory of the pod's emptyDir volumes in the guest.
pub const EMPTY_DIRS: &str = "/run/isola/pod/empty-dir";

/// The file name of a namespace type under `/proc/<pid>/ns/`.
pub fn ns_file(typ: LinuxNamespaceType) -> &'static str {
    match typ {
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Time => "time",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_files_are_what_proc_calls_them() {
        assert_eq!(ns_file(LinuxNamespaceType::Network), "net");
        assert_eq!(ns_file(LinuxNamespaceType::Mount), "mnt");
        // The agent parses them back with oci-spec, which accepts the /proc names.
        for t in [
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
        ] {
            assert_eq!(LinuxNamespaceType::try_from(ns_file(t)).unwrap(), t);
        }
        assert!(POD_SHM.starts_with(POD_DIR) && EMPTY_DIRS.starts_with(POD_DIR));
    }
}
