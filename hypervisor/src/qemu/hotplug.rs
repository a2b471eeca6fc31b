//! CPU and memory hotplug over QMP: the command sequences, generic over the QMP stream so
//! they are unit-tested against a fake QEMU (hotplug_tests.rs).
//!
//! QEMU is the source of truth for what is plugged (`query-hotpluggable-cpus`,
//! `query-memory-devices`), so a retried or repeated call plugs only the difference.
//!
//! - vCPUs: the free slots of `query-hotpluggable-cpus` (lowest socket/die/core/thread first)
//!   are plugged with `device_add` of the driver QEMU reports for them (`qemu64-x86_64-cpu`
//!   under TCG, `host-x86_64-cpu` with `-cpu host`), their topology props verbatim, and
//!   id `cpu-N`. The guest sees them through ACPI and leaves them offline.
//! - Memory: one DIMM per growing call: `object-add` of a `memory-backend-memfd` with
//!   `share=on` (vhost-user daemons map it like boot RAM) named `memdimm-N`, then
//!   `device_add pc-dimm,memdev=memdimm-N,id=dimm-N`. Its size is the difference rounded up
//!   to [`MEMORY_BLOCK_MIB`], so DIMMs stay block-aligned and the guest can online all of
//!   them. A failed `device_add` deletes the backend again.
//! - Shrinking is refused ([`HypervisorError::ShrinkUnsupported`]): CPU hot-unplug needs the
//!   guest to cooperate with an asynchronous ACPI eject, and memory unplug mostly fails on a
//!   guest that uses its memory.

use std::collections::HashSet;

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};

use super::args::HotplugLimits;
use super::qmp::{HotpluggableCpu, QmpClient, QmpError};
use crate::{HypervisorError, MEMORY_BLOCK_MIB};

const VCPUS: &str = "vCPUs";
const MEMORY: &str = "MiB of memory";

const MIB: u64 = 1024 * 1024;

fn unsupported(what: &str) -> HypervisorError {
    HypervisorError::Unsupported(format!(
        "{what} hotplug needs ACPI hotplug, which the microvm machine type does not have; use \
         machine_type q35"
    ))
}

/// The first `<prefix>-N`, N counting from `from`, that is not in `used`.
fn free_id(prefix: &str, from: usize, used: &HashSet<String>) -> String {
    (from..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|id| !used.contains(id))
        .unwrap_or_else(|| format!("{prefix}-x"))
}

fn topology(c: &HotpluggableCpu) -> String {
    ["socket-id", "die-id", "core-id", "thread-id"]
        .iter()
        .filter(|k| c.props.contains_key(**k))
        .map(|k| format!("{}={}", k.trim_end_matches("-id"), c.prop(k)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Grows the VM to `total` vCPUs; returns the resulting count.
pub async fn plug_vcpus<S: AsyncRead + AsyncWrite>(
    qmp: &mut QmpClient<S>,
    vm: &str,
    limits: &HotplugLimits,
    total: u32,
) -> Result<u32, HypervisorError> {
    if !limits.supported {
        return Err(unsupported("CPU"));
    }
    let cpus = qmp.query_hotpluggable_cpus().await?;
    let mut present: u32 = cpus
        .iter()
        .filter(|c| c.qom_path.is_some())
        .map(|c| c.vcpus_count)
        .sum();
    if total < present || total == 0 {
        return Err(HypervisorError::ShrinkUnsupported {
            vm: vm.to_owned(),
            resource: VCPUS,
            current: present.into(),
            requested: total.into(),
        });
    }
    if total == present {
        return Ok(present);
    }
    if total > limits.max_vcpus {
        return Err(HypervisorError::HotplugLimit {
            vm: vm.to_owned(),
            resource: VCPUS,
            requested: total.into(),
            limit: limits.max_vcpus.into(),
            hint: "the VM was started with that maxcpus; raise max_vcpus for new VMs",
        });
    }
    let mut used: HashSet<String> = cpus
        .iter()
        .filter_map(|c| c.device_id().map(str::to_owned))
        .collect();
    let mut free: Vec<&HotpluggableCpu> = cpus.iter().filter(|c| c.qom_path.is_none()).collect();
    free.sort_by_key(|c| {
        (
            c.prop("socket-id"),
            c.prop("die-id"),
            c.prop("core-id"),
            c.prop("thread-id"),
        )
    });
    let mut free = free.into_iter();
    while present < total {
        let Some(slot) = free.next() else {
            // QEMU reports fewer possible CPUs than maxcpus said: should not happen.
            return Err(HypervisorError::HotplugLimit {
                vm: vm.to_owned(),
                resource: VCPUS,
                requested: total.into(),
                limit: present.into(),
                hint: "QEMU reports no free CPU slot left",
            });
        };
        let id = free_id("cpu", present as usize, &used);
        let mut args = slot.props.clone();
        args.insert("driver".into(), Value::from(slot.driver.clone()));
        args.insert("id".into(), Value::from(id.clone()));
        if let Err(source) = qmp.device_add(Value::Object(args)).await {
            return Err(HypervisorError::HotplugFailed {
                vm: vm.to_owned(),
                what: format!("vCPU {id} ({})", topology(slot)),
                resource: VCPUS,
                reached: present.into(),
                source: Box::new(source.into()),
            });
        }
        tracing::info!(sandbox = %vm, %id, topology = %topology(slot), "vCPU hot-plugged");
        used.insert(id);
        present += slot.vcpus_count;
    }
    Ok(present)
}

/// Grows guest memory to `total_mib` (boot RAM is `boot_mib`); returns the resulting size.
pub async fn plug_memory<S: AsyncRead + AsyncWrite>(
    qmp: &mut QmpClient<S>,
    vm: &str,
    limits: &HotplugLimits,
    boot_mib: u32,
    total_mib: u32,
) -> Result<u32, HypervisorError> {
    if !limits.supported {
        return Err(unsupported("memory"));
    }
    let devices = qmp.query_memory_devices().await?;
    let plugged: u64 = devices.iter().map(|d| d.size).sum::<u64>() / MIB;
    let current = u64::from(boot_mib) + plugged;
    // Everything above boot RAM comes in whole memory blocks.
    let block = u64::from(MEMORY_BLOCK_MIB);
    let target =
        u64::from(boot_mib) + u64::from(total_mib.saturating_sub(boot_mib)).div_ceil(block) * block;
    let to_u32 = |mib: u64| u32::try_from(mib).unwrap_or(u32::MAX);
    if target < current {
        return Err(HypervisorError::ShrinkUnsupported {
            vm: vm.to_owned(),
            resource: MEMORY,
            current,
            requested: total_mib.into(),
        });
    }
    if target == current {
        return Ok(to_u32(current));
    }
    let Some(room) = limits.memory else {
        return Err(HypervisorError::HotplugLimit {
            vm: vm.to_owned(),
            resource: MEMORY,
            requested: target,
            limit: current,
            hint: "the VM was started without memory hotplug room; set max_memory_mib above \
                   memory_mib and memory_slots above 0 for new VMs",
        });
    };
    if target > u64::from(room.max_mib) {
        return Err(HypervisorError::HotplugLimit {
            vm: vm.to_owned(),
            resource: MEMORY,
            requested: target,
            limit: room.max_mib.into(),
            hint: "the VM was started with that maxmem (requests are rounded up to 128 MiB \
                   blocks); raise max_memory_mib for new VMs",
        });
    }
    let dimms = devices
        .iter()
        .filter(|d| d.kind == "dimm" || d.kind == "nvdimm")
        .count();
    if dimms >= room.slots as usize {
        return Err(HypervisorError::HotplugLimit {
            vm: vm.to_owned(),
            resource: "memory slots",
            requested: dimms as u64 + 1,
            limit: room.slots.into(),
            hint: "every growing hotplug_memory call takes a DIMM slot; grow in fewer, larger \
                   steps or raise memory_slots for new VMs",
        });
    }
    let used: HashSet<String> = devices.iter().filter_map(|d| d.id.clone()).collect();
    let id = free_id("dimm", dimms, &used);
    let memdev = format!("mem{id}");
    let delta = target - current;
    let failed = |what: String, source: QmpError| HypervisorError::HotplugFailed {
        vm: vm.to_owned(),
        what,
        resource: MEMORY,
        reached: current,
        source: Box::new(source.into()),
    };
    qmp.object_add(json!({
        "qom-type": "memory-backend-memfd",
        "id": memdev,
        "size": delta * MIB,
        "share": true,
    }))
    .await
    .map_err(|e| failed(format!("the {delta} MiB memory backend {memdev}"), e))?;
    let added = qmp
        .device_add(json!({ "driver": "pc-dimm", "id": id, "memdev": memdev }))
        .await;
    if let Err(e) = added {
        if let Err(del) = qmp.object_del(&memdev).await {
            tracing::warn!(sandbox = %vm, %memdev, error = %del, "removing the backend of a DIMM that failed to plug");
        }
        return Err(failed(format!("the {delta} MiB DIMM {id}"), e));
    }
    tracing::info!(sandbox = %vm, %id, delta_mib = delta, total_mib = target, "DIMM hot-plugged");
    Ok(to_u32(target))
}

#[cfg(test)]
#[path = "hotplug_tests.rs"]
mod tests;
