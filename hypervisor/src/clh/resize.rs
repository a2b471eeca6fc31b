//! Growing a Cloud Hypervisor VM with `vm.resize`: the checks and rounding, pure so every
//! branch is unit-tested. The VMM is the source of truth for the current size (`vm.info`),
//! so a repeated call asks only for what is missing.
//!
//! Same contract as the QEMU backend: vCPUs and memory only grow ([`ShrinkUnsupported`]),
//! memory grows in [`MEMORY_BLOCK_MIB`] steps, at most `memory_slots` growing calls (each is
//! one more region the vhost-user daemons map).
//!
//! [`ShrinkUnsupported`]: HypervisorError::ShrinkUnsupported

use crate::{HypervisorError, MEMORY_BLOCK_MIB};

const VCPUS: &str = "vCPUs";
const MEMORY: &str = "MiB of memory";

/// The ceilings fixed at `vm.create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ceilings {
    /// `cpus.max_vcpus`.
    pub max_vcpus: u32,
    /// Boot memory plus `memory.hotplug_size`, MiB.
    pub max_memory_mib: u32,
    /// How many growing memory resizes are allowed.
    pub memory_slots: u32,
}

/// The vCPU count to ask for, or None when the VM already has `total`.
pub fn vcpus(
    vm: &str,
    current: u32,
    ceil: &Ceilings,
    total: u32,
) -> Result<Option<u32>, HypervisorError> {
    if total < current || total == 0 {
        return Err(HypervisorError::ShrinkUnsupported {
            vm: vm.to_owned(),
            resource: VCPUS,
            current: current.into(),
            requested: total.into(),
        });
    }
    if total == current {
        return Ok(None);
    }
    if total > ceil.max_vcpus {
        return Err(HypervisorError::HotplugLimit {
            vm: vm.to_owned(),
            resource: VCPUS,
            requested: total.into(),
            limit: ceil.max_vcpus.into(),
            hint: "the VM was created with that max_vcpus; raise max_vcpus for new VMs",
        });
    }
    Ok(Some(total))
}

/// The memory size in MiB to ask for (the difference rounded up to whole blocks), or None
/// when the VM already has at least `total_mib`. `plugs` is how many growing resizes
/// happened before.
pub fn memory(
    vm: &str,
    current_mib: u32,
    plugs: u32,
    ceil: &Ceilings,
    total_mib: u32,
) -> Result<Option<u32>, HypervisorError> {
    if total_mib < current_mib {
        return Err(HypervisorError::ShrinkUnsupported {
            vm: vm.to_owned(),
            resource: MEMORY,
            current: current_mib.into(),
            requested: total_mib.into(),
        });
    }
    if total_mib == current_mib {
        return Ok(None);
    }
    let delta = (total_mib - current_mib).div_ceil(MEMORY_BLOCK_MIB) * MEMORY_BLOCK_MIB;
    let target = u64::from(current_mib) + u64::from(delta);
    if ceil.max_memory_mib <= current_mib || target > u64::from(ceil.max_memory_mib) {
        return Err(HypervisorError::HotplugLimit {
            vm: vm.to_owned(),
            resource: MEMORY,
            requested: target,
            limit: ceil.max_memory_mib.into(),
            hint:
                "the VM was created with that much hotplug room; raise max_memory_mib for new VMs",
        });
    }
    if plugs >= ceil.memory_slots {
        return Err(HypervisorError::HotplugLimit {
            vm: vm.to_owned(),
            resource: "memory slots",
            requested: u64::from(plugs) + 1,
            limit: ceil.memory_slots.into(),
            hint: "each growth is one more memory region vhost-user daemons map; grow in \
                   fewer steps or raise memory_slots for new VMs",
        });
    }
    // target <= max_memory_mib, a u32.
    Ok(Some(u32::try_from(target).unwrap_or(ceil.max_memory_mib)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Ceilings = Ceilings {
        max_vcpus: 4,
        max_memory_mib: 2048,
        memory_slots: 2,
    };

    #[test]
    fn vcpu_growth_limits_and_shrink() {
        assert_eq!(vcpus("t", 1, &C, 3).unwrap(), Some(3));
        assert_eq!(vcpus("t", 3, &C, 3).unwrap(), None);
        assert!(matches!(
            vcpus("t", 3, &C, 2),
            Err(HypervisorError::ShrinkUnsupported {
                current: 3,
                requested: 2,
                ..
            })
        ));
        assert!(matches!(
            vcpus("t", 1, &C, 5),
            Err(HypervisorError::HotplugLimit {
                limit: 4,
                requested: 5,
                ..
            })
        ));
        assert!(vcpus("t", 1, &C, 0).is_err());
    }

    #[test]
    fn memory_rounds_to_blocks_and_counts_slots() {
        assert_eq!(memory("t", 512, 0, &C, 600).unwrap(), Some(640));
        assert_eq!(memory("t", 512, 0, &C, 1024).unwrap(), Some(1024));
        assert_eq!(memory("t", 1024, 1, &C, 1024).unwrap(), None);
        assert!(matches!(
            memory("t", 1024, 1, &C, 512),
            Err(HypervisorError::ShrinkUnsupported { .. })
        ));
        assert!(matches!(
            memory("t", 512, 0, &C, 2049),
            Err(HypervisorError::HotplugLimit {
                requested: 2176,
                limit: 2048,
                ..
            })
        ));
        let err = memory("t", 768, 2, &C, 1024).unwrap_err();
        assert!(err.to_string().contains("memory slots"), "{err}");
        let no_room = Ceilings {
            max_memory_mib: 512,
            ..C
        };
        assert!(matches!(
            memory("t", 512, 0, &no_room, 640),
            Err(HypervisorError::HotplugLimit { .. })
        ));
    }
}
