//! The `[pod]` section and the per-pod configuration: how a pod's VM is sized from the pod's
//! declared resources, and which `io.isola.config.*` pod annotations may override the
//! configuration (pure, unit-tested).
//!
//! The VM of a pod is sized, in this order (a later step wins):
//! 1. `hypervisor.vcpus` and `hypervisor.memory_mib`: the size of a pod that declares nothing;
//! 2. the pod's declared limits, which containerd's CRI plugin puts on the sandbox as
//!    `io.kubernetes.cri.sandbox-cpu-quota`/`-cpu-period` and `io.kubernetes.cri.sandbox-memory`
//!    and CRI-O as the JSON `io.kubernetes.cri-o.PodLinuxResources` (both from the pod
//!    sandbox's `linux.resources`): vCPUs = `pod.overhead_vcpus` + ⌈quota/period⌉,
//!    memory = `pod.overhead_memory_mib` + ⌈limit in MiB⌉ — the overhead keeps the guest kernel
//!    and agent from competing with a pod that uses all it declared;
//! 3. `io.isola.config.hypervisor.vcpus` / `.memory_mib` annotations, when the configuration
//!    lists them in `pod.enable_annotations`: exactly that size.
//!
//! `io.isola.config.hypervisor.kind` (when enabled) picks the VMM of one pod, `qemu` or
//! `cloud-hypervisor`; a kind the rest of the node's `[hypervisor]` section cannot work with
//! (Cloud Hypervisor with `accelerator = "tcg"` or `vsock = "vhost"`) is refused.
//!
//! Any other `io.isola.config.*` annotation, or one the configuration does not enable, is
//! refused with an [`AnnotationError`]: a pod cannot quietly run with a configuration the
//! operator did not allow.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::model::{Config, HypervisorKind, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB, MIN_VCPUS};

/// The prefix of the pod annotations that override configuration keys.
pub const ANNOTATION_PREFIX: &str = "io.isola.config.";

/// containerd's CRI annotation: the sandbox's CFS quota in microseconds (from the pod's
/// `linux.resources.cpu_quota`).
pub const CRI_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// containerd's CRI annotation: the sandbox's CFS period in microseconds.
pub const CRI_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// containerd's CRI annotation: the sandbox's memory limit in bytes.
pub const CRI_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// CRI-O's annotation: the pod sandbox's `linux.resources` as JSON (cri-api's field names),
/// or `null`.
pub const CRIO_POD_RESOURCES: &str = "io.kubernetes.cri-o.PodLinuxResources";

/// The configuration keys a pod annotation `io.isola.config.<key>` can override, when listed
/// in `pod.enable_annotations`.
pub const OVERRIDABLE: [&str; 4] = [
    "hypervisor.vcpus",
    "hypervisor.memory_mib",
    "hypervisor.kernel_params",
    "hypervisor.kind",
];

/// Longest `io.isola.config.hypervisor.kernel_params` value accepted, in bytes.
pub const MAX_ANNOTATION_KERNEL_PARAMS: usize = 1024;

/// Kernel parameters a pod annotation may not set: they would replace the guest's init (the
/// agent) or its console, which the runtime depends on.
const RESERVED_KERNEL_PARAMS: [&str; 4] = ["init", "rdinit", "console", "agent."];

/// Default of `pod.overhead_vcpus`.
pub const DEFAULT_OVERHEAD_VCPUS: u32 = 1;
/// Default of `pod.overhead_memory_mib`.
pub const DEFAULT_OVERHEAD_MEMORY_MIB: u64 = 256;

/// The `[pod]` section: sizing a pod's VM from its declared resources, and which pod
/// annotations may override the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodConfig {
    /// `overhead_vcpus`: vCPUs added to a pod's declared CPU limit. Default 1.
    pub overhead_vcpus: u32,
    /// `overhead_memory_mib`: MiB added to a pod's declared memory limit. Default 256.
    pub overhead_memory_mib: u64,
    /// `enable_annotations`: the keys of [`OVERRIDABLE`] that `io.isola.config.<key>` pod
    /// annotations may override. Default none.
    pub enable_annotations: Vec<String>,
}

impl Default for PodConfig {
    fn default() -> Self {
        PodConfig {
            overhead_vcpus: DEFAULT_OVERHEAD_VCPUS,
            overhead_memory_mib: DEFAULT_OVERHEAD_MEMORY_MIB,
            enable_annotations: Vec::new(),
        }
    }
}

/// A pod annotation the runtime refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// An `io.isola.config.*` annotation that names no overridable key.
    #[error(
        "pod annotation {key}: isola has no such overridable setting; the pod annotations \
         isola knows are {}",
        known_annotations()
    )]
    Unknown {
        /// The annotation.
        key: String,
    },
    /// A known annotation that the configuration does not enable.
    #[error(
        "pod annotation {key} is not enabled on this node: the operator must add \"{name}\" to \
         pod.enable_annotations in the isola configuration, or remove the annotation from the pod"
    )]
    NotEnabled {
        /// The annotation.
        key: String,
        /// Its configuration key, e.g. `hypervisor.vcpus`.
        name: String,
    },
    /// An annotation whose value cannot be used.
    #[error("pod annotation {key}={value:?} {problem}")]
    Invalid {
        /// The annotation (an `io.isola.config.*` or a CRI sandbox sizing one).
        key: String,
        /// Its value.
        value: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

fn known_annotations() -> String {
    OVERRIDABLE
        .iter()
        .map(|k| format!("{ANNOTATION_PREFIX}{k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What [`Config::for_pod`] changed, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSizing {
    /// The pod's declared CPU limit in vCPUs (rounded up), if it declared one.
    pub declared_vcpus: Option<u32>,
    /// The pod's declared memory limit in MiB (rounded up), if it declared one.
    pub declared_memory_mib: Option<u64>,
    /// The `io.isola.config.*` annotations applied.
    pub overrides: Vec<String>,
}

impl Config {
    /// The configuration for one pod: `self` resized to the pod's declared resources and
    /// overridden by its enabled `io.isola.config.*` annotations (see the [module
    /// docs](self)). `annotations` are the sandbox container's OCI annotations.
    pub fn for_pod(
        &self,
        annotations: &HashMap<String, String>,
    ) -> Result<(Config, PodSizing), AnnotationError> {
        let mut config = self.clone();
        let mut sizing = PodSizing::default();
        let h = &mut config.hypervisor;
        if let Some(cpus) = declared_vcpus(annotations)? {
            sizing.declared_vcpus = Some(cpus);
            h.vcpus = cpus
                .saturating_add(self.pod.overhead_vcpus)
                .clamp(MIN_VCPUS, MAX_VCPUS);
        }
        if let Some(mib) = declared_memory_mib(annotations)? {
            sizing.declared_memory_mib = Some(mib);
            h.memory_mib = mib
                .saturating_add(self.pod.overhead_memory_mib)
                .clamp(MIN_MEMORY_MIB, MAX_MEMORY_MIB);
        }
        let mut overrides: Vec<(&String, &String)> = annotations
            .iter()
            .filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX))
            .collect();
        overrides.sort();
        for (key, value) in overrides {
            let name = &key[ANNOTATION_PREFIX.len()..];
            if !OVERRIDABLE.contains(&name) {
                return Err(AnnotationError::Unknown { key: key.clone() });
            }
            if !self.pod.enable_annotations.iter().any(|e| e == name) {
                return Err(AnnotationError::NotEnabled {
                    key: key.clone(),
                    name: name.to_string(),
                });
            }
            apply_override(h, key, name, value)?;
            sizing.overrides.push(format!("{key}={value}"));
            if name == "hypervisor.kind" {
                check_kind(h, key, value)?;
            }
        }
        Ok((config, sizing))
    }
}

fn apply_override(
    h: &mut crate::model::HypervisorConfig,
    key: &str,
    name: &str,
    value: &str,
) -> Result<(), AnnotationError> {
    let invalid = |problem: String| AnnotationError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        problem,
    };
    match name {
        "hypervisor.vcpus" => {
            h.vcpus = value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|v| (MIN_VCPUS..=MAX_VCPUS).contains(v))
                .ok_or_else(|| {
                    invalid(format!(
                        "is not a vCPU count: give a whole number from {MIN_VCPUS} to {MAX_VCPUS}"
                    ))
                })?;
        }
        "hypervisor.memory_mib" => {
            h.memory_mib = value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|v| (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(v))
                .ok_or_else(|| {
                    invalid(format!(
                        "is not a memory size: give MiB as a whole number from {MIN_MEMORY_MIB} \
                         to {MAX_MEMORY_MIB}"
                    ))
                })?;
        }
        "hypervisor.kind" => {
            h.kind = HypervisorKind::from_name(value.trim()).ok_or_else(|| {
                invalid(format!(
                    "is not a hypervisor kind: give one of {}",
                    quoted_list(HypervisorKind::VALUES)
                ))
            })?;
        }
        "hypervisor.kernel_params" => {
            check_kernel_params(value).map_err(invalid)?;
            let extra = value.trim();
            if !extra.is_empty() {
                if !h.kernel_params.trim().is_empty() {
                    h.kernel_params.push(' ');
                }
                h.kernel_params.push_str(extra);
            }
        }
        _ => {
            return Err(AnnotationError::Unknown {
                key: key.to_string(),
            })
        }
    }
    Ok(())
}

/// Refuses a `hypervisor.kind` annotation that the rest of the node's `[hypervisor]` section
/// cannot work with (see [`crate::validate::kind_conflict`]).
fn check_kind(
    h: &crate::model::HypervisorConfig,
    key: &str,
    value: &str,
) -> Result<(), AnnotationError> {
    match crate::validate::kind_conflict(h) {
        None => Ok(()),
        Some(c) => Err(AnnotationError::Invalid {
            key: key.to_string(),
            value: value.to_string(),
            problem: format!(
                "cannot be used on this node: its isola configuration sets {} = \"{}\", and {}; \
                 remove the annotation, or ask the operator for a runtime handler whose \
                 configuration fits {}",
                c.key, c.value, c.reason, h.kind
            ),
        }),
    }
}

/// `["a", "b"]` as `"a" or "b"` (`"a", "b" or "c"` for more).
fn quoted_list(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

/// Checks pod-supplied kernel parameters: bounded, printable, plain words, none of the
/// parameters the runtime owns.
fn check_kernel_params(value: &str) -> Result<(), String> {
    if value.len() > MAX_ANNOTATION_KERNEL_PARAMS {
        return Err(format!(
            "is too long: at most {MAX_ANNOTATION_KERNEL_PARAMS} bytes of kernel parameters"
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' ') || *c == '"' || *c == '\'')
    {
        return Err(format!(
            "contains {c:?}: kernel parameters are space-separated printable ASCII words \
             without quotes"
        ));
    }
    for word in value.split_whitespace() {
        let param = word.split('=').next().unwrap_or(word);
        if word == "--"
            || RESERVED_KERNEL_PARAMS
                .iter()
                .any(|r| param == *r || (r.ends_with('.') && param.starts_with(r)))
        {
            return Err(format!(
                "sets {word:?}, which isola sets itself (init, console and agent.* are \
                 reserved); remove it"
            ));
        }
    }
    Ok(())
}

/// The pod's declared CPU limit in whole vCPUs, from containerd's sandbox annotations or
/// CRI-O's.
fn declared_vcpus(a: &HashMap<String, String>) -> Result<Option<u32>, AnnotationError> {
    let quota = number(a, CRI_SANDBOX_CPU_QUOTA)?;
    let period = number(a, CRI_SANDBOX_CPU_PERIOD)?;
    let (quota, period) = match (quota, period, crio_resources(a)?) {
        (None, None, Some(r)) => (Some(r.cpu_quota), Some(r.cpu_period)),
        (q, p, _) => (q, p),
    };
    Ok(quota.zip(period).and_then(|(q, p)| vcpus_for_quota(q, p)))
}

/// The part of CRI-O's [`CRIO_POD_RESOURCES`] that sizes a VM.
#[derive(Debug, Default, Deserialize)]
struct CrioResources {
    #[serde(default)]
    cpu_period: i64,
    #[serde(default)]
    cpu_quota: i64,
    #[serde(default)]
    memory_limit_in_bytes: i64,
}

/// CRI-O's pod resources annotation, if the pod has one that is not `null`.
fn crio_resources(a: &HashMap<String, String>) -> Result<Option<CrioResources>, AnnotationError> {
    let Some(value) = a.get(CRIO_POD_RESOURCES) else {
        return Ok(None);
    };
    serde_json::from_str::<Option<CrioResources>>(value).map_err(|e| AnnotationError::Invalid {
        key: CRIO_POD_RESOURCES.to_string(),
        value: value.clone(),
        problem: format!("is not CRI-O's JSON of the pod's linux.resources: {e}"),
    })
}

/// Whole vCPUs a CFS `quota` per `period` allows (rounded up); None when either is not
/// positive (no limit). Pod sizing and VM growth on container updates both count this way.
pub fn vcpus_for_quota(quota: i64, period: i64) -> Option<u32> {
    let (q, p) = (u64::try_from(quota).ok()?, u64::try_from(period).ok()?);
    (q > 0 && p > 0).then(|| u32::try_from(q.div_ceil(p)).unwrap_or(u32::MAX))
}

/// MiB a memory limit of `bytes` needs (rounded up); None when it is not positive (no limit).
pub fn mib_for_bytes(bytes: i64) -> Option<u64> {
    u64::try_from(bytes)
        .ok()
        .filter(|b| *b > 0)
        .map(|b| b.div_ceil(1 << 20))
}

/// The pod's declared memory limit in MiB, from containerd's sandbox annotations or CRI-O's.
fn declared_memory_mib(a: &HashMap<String, String>) -> Result<Option<u64>, AnnotationError> {
    let bytes = match number(a, CRI_SANDBOX_MEMORY)? {
        Some(b) => Some(b),
        None => crio_resources(a)?.map(|r| r.memory_limit_in_bytes),
    };
    Ok(bytes.and_then(mib_for_bytes))
}

/// A CRI sizing annotation as a number (negative and 0 mean "no limit" to CRI).
fn number(a: &HashMap<String, String>, key: &str) -> Result<Option<i64>, AnnotationError> {
    let Some(value) = a.get(key) else {
        return Ok(None);
    };
    value
        .trim()
        .parse::<i64>()
        .map(Some)
        .map_err(|_| AnnotationError::Invalid {
            key: key.to_string(),
            value: value.clone(),
            problem: "is not an integer; containerd writes these from the pod's linux.resources"
                .into(),
        })
}

/// Checks `pod.enable_annotations` entries: the name of the first unknown one.
pub(crate) fn unknown_enabled(pod: &PodConfig) -> Option<&str> {
    pod.enable_annotations
        .iter()
        .find(|e| !OVERRIDABLE.contains(&e.as_str()))
        .map(String::as_str)
}

#[cfg(test)]
#[path = "pod_tests.rs"]
mod tests;
