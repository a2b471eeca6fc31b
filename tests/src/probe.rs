//! What a process in a container reports of its own confinement, for tests that compare
//! isola with runc: seccomp mode, no_new_privs, capability sets, uid, open-file limit, OOM
//! score, and whether it may change a file's mode (which [`CHMOD_DENIED_PROFILE`] refuses).

/// A shell command printing the probe's fields, one per line (`Key:\tvalue` or `key=value`).
pub const PROBE: &str = "grep -E '^(Seccomp|NoNewPrivs|CapEff|CapPrm|CapBnd):' /proc/self/status; \
     echo uid=$(id -u); echo nofile=$(ulimit -n); echo oom=$(cat /proc/self/oom_score_adj); \
     f=/tmp/probe-file; touch $f; \
     if chmod 600 $f 2>/tmp/probe-err; then echo chmod=allowed; else echo chmod=$(cat /tmp/probe-err); fi; \
     rm -f $f /tmp/probe-err";

/// A seccomp profile (OCI `LinuxSeccomp` JSON, what `ctr --seccomp-profile` and CRI Localhost
/// profiles take): everything allowed but changing a file's mode, which fails with EOPNOTSUPP
/// ("Operation not supported"), an errno nothing else gives here.
pub const CHMOD_DENIED_PROFILE: &str = r#"{
    "defaultAction": "SCMP_ACT_ALLOW",
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "syscalls": [
        {"names": ["chmod", "fchmod", "fchmodat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95}
    ]
}"#;

/// What the probe says when [`CHMOD_DENIED_PROFILE`] refused the chmod.
pub const DENIED_BY_PROFILE: &str = "Operation not supported";

/// The value of `key:` or `key=` in the probe's output; panics when it is missing.
pub fn field<'a>(probe: &'a str, key: &str) -> &'a str {
    probe
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix(':').or_else(|| r.strip_prefix('=')))
        })
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in the probe's output:\n{probe}"))
}

/// A capability set field (`CapEff`, ...) as bits.
pub fn caps(probe: &str, key: &str) -> u64 {
    u64::from_str_radix(field(probe, key), 16)
        .unwrap_or_else(|e| panic!("{key} is not hexadecimal ({e}):\n{probe}"))
}

/// The fields that must be equal for the same container under isola and under runc.
pub fn confinement(probe: &str) -> Vec<String> {
    [
        "Seccomp",
        "NoNewPrivs",
        "CapEff",
        "CapPrm",
        "CapBnd",
        "uid",
        "nofile",
        "chmod",
    ]
    .iter()
    .map(|k| format!("{k}={}", field(probe, k)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_from_either_form() {
        let out = "Seccomp:\t2\nCapEff:\t0000000000000021\nuid=1000\nchmod=allowed\n";
        assert_eq!(field(out, "Seccomp"), "2");
        assert_eq!(field(out, "uid"), "1000");
        assert_eq!(caps(out, "CapEff"), 0x21);
        assert!(std::panic::catch_unwind(|| field(out, "NoNewPrivs")).is_err());
    }
}
