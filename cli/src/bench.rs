//! `isola bench boot`: how long from spawning the VMM until the agent answers, next to how long
//! the same kernel on the same VM needs to reach a trivial /init (the floor).
//!
//! The floor runs the image's floor initrd (a static /init that powers the VM off at once) and is
//! timed from spawn to VMM exit. Both use the same configuration and devices; runs alternate
//! between the two so background noise hits both alike.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use isola_sandbox::{vm_config, BootedVm, SandboxPaths};

#[derive(Subcommand)]
pub enum Which {
    /// Spawn-to-agent-ready vs the bare-kernel floor
    Boot {
        /// Boots of each kind
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The floor initrd (a trivial /init that powers off)
        #[arg(long)]
        floor_initrd: PathBuf,
        /// A second kernel to measure side by side with the configured one (e.g. the Debian
        /// kernel, build/guest/debian/vmlinux); needs --compare-initrd
        #[arg(long, requires = "compare_initrd")]
        compare_kernel: Option<PathBuf>,
        /// The agent initrd for --compare-kernel (e.g. build/guest/debian/initrd.img)
        #[arg(long, requires = "compare_kernel")]
        compare_initrd: Option<PathBuf>,
    },
}

pub async fn run(config: Option<&Path>, which: Which) -> anyhow::Result<bool> {
    let (mut cfg, _) = crate::load_config(config)?;
    // The boot benchmark measures QEMU (the floor VM is started with `new_qemu`); the agent
    // boots run on it too, so that both sides of the comparison use the same VMM.
    if cfg.hypervisor.kind != isola_config::HypervisorKind::Qemu {
        eprintln!(
            "isola: the boot benchmark measures QEMU; ignoring hypervisor.kind = \"{}\"",
            cfg.hypervisor.kind
        );
        cfg.hypervisor.kind = isola_config::HypervisorKind::Qemu;
    }
    // It measures a boot: VM templates have their own lines in `make bench`.
    cfg.factory.template = false;
    match which {
        Which::Boot {
            runs,
            floor_initrd,
            compare_kernel,
            compare_initrd,
        } => {
            let compare = compare_kernel.zip(compare_initrd).map(|(kernel, initrd)| {
                let mut c = cfg.clone();
                c.hypervisor.kernel = kernel;
                c.hypervisor.initrd = initrd;
                c
            });
            boot(&cfg, compare.as_ref(), runs.max(1), &floor_initrd).await
        }
    }
}

/// `<release>, <kind>` of a kernel file, for the report.
fn kernel_label(path: &Path) -> String {
    match crate::kernel::inspect(path) {
        Ok(info) => format!(
            "{} ({}, {:?}, {:?})",
            path.display(),
            info.release.as_deref().unwrap_or("release unknown"),
            info.kind(),
            info.boot_path
        ),
        Err(e) => format!("{} ({e})", path.display()),
    }
}

/// Floor and agent-ready boot times of one kernel.
struct Times {
    floor: Vec<Duration>,
    agent: Vec<Duration>,
}

impl Times {
    fn medians(&self) -> (Duration, Duration) {
        (
            median(&mut self.floor.clone()),
            median(&mut self.agent.clone()),
        )
    }

    fn print(&self, name: &str) {
        let (mf, ma) = self.medians();
        println!(
            "  {name:<9} floor  (spawn -> trivial /init powers off): median {:.3} s   [{}]",
            mf.as_secs_f64(),
            secs(&self.floor)
        );
        println!(
            "  {name:<9} isola  (spawn -> agent answers Check):      median {:.3} s   [{}]",
            ma.as_secs_f64(),
            secs(&self.agent)
        );
    }
}

/// Median of a non-empty list.
pub fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2
    }
}

fn secs(list: &[Duration]) -> String {
    list.iter()
        .map(|d| format!("{:.2}", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn floor_once(
    cfg: &isola_config::Config,
    initrd: &Path,
    n: usize,
) -> anyhow::Result<Duration> {
    let id = crate::throwaway_id("floor", n);
    let paths = SandboxPaths::new(&cfg.runtime.state_dir, &id);
    let mut vm_cfg = vm_config(cfg, &id, &paths);
    vm_cfg.initrd = initrd.to_path_buf();
    vm_cfg.kind = isola_hypervisor::HypervisorKind::Qemu;
    if vm_cfg.shared_fs.is_some() {
        std::fs::create_dir_all(&paths.shared_dir)?;
    }
    let vm = isola_hypervisor::new_qemu(vm_cfg);
    let started = Instant::now();
    let result = async {
        vm.start().await?;
        let exit = tokio::time::timeout(Duration::from_secs(120), vm.wait())
            .await
            .context("the floor VM did not power off within 120 s")??;
        anyhow::Ok((started.elapsed(), exit))
    }
    .await;
    let _ = vm.stop().await;
    let _ = std::fs::remove_dir(&paths.shared_dir);
    let (took, exit) = result?;
    tracing::debug!(%exit, "floor VM ended");
    Ok(took)
}

async fn agent_once(cfg: &isola_config::Config, n: usize) -> anyhow::Result<Duration> {
    let id = crate::throwaway_id("bench", n);
    let vm = BootedVm::boot(cfg, &id).await?;
    let took = vm.timings.agent_ready;
    vm.stop().await?;
    Ok(took)
}

async fn boot(
    cfg: &isola_config::Config,
    compare: Option<&isola_config::Config>,
    runs: usize,
    floor_initrd: &Path,
) -> anyhow::Result<bool> {
    let accel = isola_hypervisor::accel::resolve(match cfg.hypervisor.accelerator {
        isola_config::Accelerator::Auto => isola_hypervisor::AcceleratorChoice::Auto,
        isola_config::Accelerator::Kvm => isola_hypervisor::AcceleratorChoice::Kvm,
        isola_config::Accelerator::Tcg => isola_hypervisor::AcceleratorChoice::Tcg,
    })
    .await?;
    println!(
        "bench-boot: {:?}, {}, {} vCPU, {} MiB, {} runs each (alternating)",
        accel.0, cfg.hypervisor.machine_type, cfg.hypervisor.vcpus, cfg.hypervisor.memory_mib, runs
    );
    let mut kernels = vec![("default", cfg)];
    kernels.extend(compare.map(|c| ("compare", c)));
    for (name, c) in &kernels {
        println!("  {name:<9} kernel {}", kernel_label(&c.hypervisor.kernel));
    }
    let mut times: Vec<Times> = Vec::new();
    for (_, c) in &kernels {
        // One unmeasured boot of each warms the page cache (kernel, initrd, binaries).
        floor_once(c, floor_initrd, 0).await?;
        agent_once(c, 0).await?;
        times.push(Times {
            floor: Vec::with_capacity(runs),
            agent: Vec::with_capacity(runs),
        });
    }
    // Round-robin over kernels and kinds, so background noise hits all alike.
    for n in 1..=runs {
        for ((_, c), t) in kernels.iter().zip(times.iter_mut()) {
            t.floor.push(floor_once(c, floor_initrd, n).await?);
            t.agent.push(agent_once(c, n).await?);
        }
    }
    for ((name, _), t) in kernels.iter().zip(&times) {
        t.print(name);
    }
    let (mf, ma) = times[0].medians();
    let ratio = ma.as_secs_f64() / mf.as_secs_f64();
    println!("  ratio isola/floor (default kernel): {ratio:.2}  (target <= 1.20)");
    if let Some(other) = times.get(1) {
        let (of, oa) = other.medians();
        println!(
            "  ratio default/compare kernel: agent-ready {:.2} (target <= 0.55), floor {:.2}",
            ma.as_secs_f64() / oa.as_secs_f64(),
            mf.as_secs_f64() / of.as_secs_f64()
        );
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        let ms = Duration::from_millis;
        assert_eq!(median(&mut [ms(3), ms(1), ms(2)]), ms(2));
        assert_eq!(
            median(&mut [ms(4), ms(1), ms(2), ms(3)]),
            Duration::from_micros(2500)
        );
    }
}
