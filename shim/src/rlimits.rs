//! The resource limits a container gets when its spec names none: the runtime's own, as runc
//! gives them.
//!
//! A runc container inherits the rlimits of runc, hence of the shim and of containerd (whose
//! service manager usually raises `RLIMIT_NOFILE` far above the kernel's 1024). A process in
//! isola's guest would inherit the agent's instead, the guest kernel's defaults, so a database
//! that runs under runc could fail with "too many open files" in a pod VM. The shim therefore
//! writes its own limits into the guest spec for every kind the spec leaves out (CRI never
//! sets rlimits; `ctr` sets RLIMIT_NOFILE to 1024 itself, which stays). Exec'd processes get
//! the container's through the agent's inheritance rules.

use nix::sys::resource::{getrlimit, Resource};
use oci_spec::runtime::{PosixRlimit, PosixRlimitBuilder, PosixRlimitType, Process};

/// Every limit the OCI spec can name, with the kernel resource it is.
const KINDS: [(PosixRlimitType, Resource); 16] = [
    (PosixRlimitType::RlimitCpu, Resource::RLIMIT_CPU),
    (PosixRlimitType::RlimitFsize, Resource::RLIMIT_FSIZE),
    (PosixRlimitType::RlimitData, Resource::RLIMIT_DATA),
    (PosixRlimitType::RlimitStack, Resource::RLIMIT_STACK),
    (PosixRlimitType::RlimitCore, Resource::RLIMIT_CORE),
    (PosixRlimitType::RlimitRss, Resource::RLIMIT_RSS),
    (PosixRlimitType::RlimitNproc, Resource::RLIMIT_NPROC),
    (PosixRlimitType::RlimitNofile, Resource::RLIMIT_NOFILE),
    (PosixRlimitType::RlimitMemlock, Resource::RLIMIT_MEMLOCK),
    (PosixRlimitType::RlimitAs, Resource::RLIMIT_AS),
    (PosixRlimitType::RlimitLocks, Resource::RLIMIT_LOCKS),
    (
        PosixRlimitType::RlimitSigpending,
        Resource::RLIMIT_SIGPENDING,
    ),
    (PosixRlimitType::RlimitMsgqueue, Resource::RLIMIT_MSGQUEUE),
    (PosixRlimitType::RlimitNice, Resource::RLIMIT_NICE),
    (PosixRlimitType::RlimitRtprio, Resource::RLIMIT_RTPRIO),
    (PosixRlimitType::RlimitRttime, Resource::RLIMIT_RTTIME),
];

/// This process's limits (what runc would pass on), skipping any the kernel does not report.
pub fn of_this_process() -> Vec<PosixRlimit> {
    KINDS
        .iter()
        .filter_map(|(typ, resource)| {
            let (soft, hard) = getrlimit(*resource).ok()?;
            PosixRlimitBuilder::default()
                .typ(*typ)
                .soft(soft)
                .hard(hard)
                .build()
                .ok()
        })
        .collect()
}

/// Adds to `process` each of `inherited` whose kind it does not set; returns how many.
pub fn fill(process: &mut Process, inherited: &[PosixRlimit]) -> usize {
    let mut limits = process.rlimits().clone().unwrap_or_default();
    let before = limits.len();
    for l in inherited {
        if !limits.iter().any(|have| have.typ() == l.typ()) {
            limits.push(*l);
        }
    }
    let added = limits.len() - before;
    if added > 0 {
        process.set_rlimits(Some(limits));
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(typ: PosixRlimitType, soft: u64, hard: u64) -> PosixRlimit {
        PosixRlimitBuilder::default()
            .typ(typ)
            .soft(soft)
            .hard(hard)
            .build()
            .unwrap()
    }

    #[test]
    fn missing_kinds_are_filled_and_given_ones_kept() {
        let mut p: Process = serde_json::from_str(
            r#"{"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]}"#,
        )
        .unwrap();
        let host = [
            limit(PosixRlimitType::RlimitNofile, 1 << 20, 1 << 20),
            limit(PosixRlimitType::RlimitMemlock, 8 << 20, u64::MAX),
        ];
        assert_eq!(fill(&mut p, &host), 1);
        let got = p.rlimits().as_ref().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].hard(), 1024, "the spec's own NOFILE stays");
        assert_eq!(got[1].typ(), PosixRlimitType::RlimitMemlock);
        assert_eq!(got[1].hard(), u64::MAX);
        // Nothing missing: nothing changes.
        let before = p.clone();
        assert_eq!(fill(&mut p, &host), 0);
        assert_eq!(p, before);
    }

    #[test]
    fn a_spec_without_rlimits_gets_the_runtimes() {
        let mut p: Process =
            serde_json::from_str(r#"{"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}}"#)
                .unwrap();
        let mine = of_this_process();
        assert!(
            mine.iter()
                .any(|l| l.typ() == PosixRlimitType::RlimitNofile),
            "{mine:?}"
        );
        assert_eq!(fill(&mut p, &mine), mine.len());
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let nofile = p
            .rlimits()
            .as_ref()
            .unwrap()
            .iter()
            .find(|l| l.typ() == PosixRlimitType::RlimitNofile)
            .unwrap();
        assert_eq!((nofile.soft(), nofile.hard()), (soft, hard));
    }
}
