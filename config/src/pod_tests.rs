use super::*;

fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn enabled(keys: &[&str]) -> Config {
    let mut c = Config::default();
    c.pod.enable_annotations = keys.iter().map(|k| k.to_string()).collect();
    c
}

#[test]
fn a_pod_that_declares_nothing_gets_the_configured_size() {
    let base = Config::default();
    let (c, sizing) = base.for_pod(&HashMap::new()).unwrap();
    assert_eq!(c, base);
    assert_eq!(sizing, PodSizing::default());
}

#[test]
fn declared_limits_plus_overhead_size_the_vm() {
    let a = annotations(&[
        (CRI_SANDBOX_CPU_QUOTA, "150000"),
        (CRI_SANDBOX_CPU_PERIOD, "100000"),
        (CRI_SANDBOX_MEMORY, "268435457"), // 256 MiB + 1 byte
    ]);
    let (c, sizing) = Config::default().for_pod(&a).unwrap();
    assert_eq!(sizing.declared_vcpus, Some(2));
    assert_eq!(sizing.declared_memory_mib, Some(257));
    assert_eq!(c.hypervisor.vcpus, 2 + DEFAULT_OVERHEAD_VCPUS);
    assert_eq!(c.hypervisor.memory_mib, 257 + DEFAULT_OVERHEAD_MEMORY_MIB);
}

#[test]
fn cri_o_declares_the_pods_limits_as_json() {
    let a = annotations(&[(
        CRIO_POD_RESOURCES,
        r#"{"cpu_period":100000,"cpu_quota":150000,"memory_limit_in_bytes":209715200}"#,
    )]);
    let (c, sizing) = Config::default().for_pod(&a).unwrap();
    assert_eq!(sizing.declared_vcpus, Some(2));
    assert_eq!(sizing.declared_memory_mib, Some(200));
    assert_eq!(c.hypervisor.memory_mib, 200 + DEFAULT_OVERHEAD_MEMORY_MIB);
    // A pod without limits: "null", or fields left out.
    for nothing in ["null", "{}", r#"{"cpu_shares":2}"#] {
        let (_, sizing) = Config::default()
            .for_pod(&annotations(&[(CRIO_POD_RESOURCES, nothing)]))
            .unwrap();
        assert_eq!(
            (sizing.declared_vcpus, sizing.declared_memory_mib),
            (None, None),
            "{nothing}"
        );
    }
    // containerd's annotations win when both are there.
    let both = annotations(&[
        (CRIO_POD_RESOURCES, r#"{"memory_limit_in_bytes":209715200}"#),
        (CRI_SANDBOX_MEMORY, "104857600"),
    ]);
    assert_eq!(
        Config::default()
            .for_pod(&both)
            .unwrap()
            .1
            .declared_memory_mib,
        Some(100)
    );
    let bad = annotations(&[(CRIO_POD_RESOURCES, "{not json")]);
    let e = Config::default().for_pod(&bad).unwrap_err();
    assert!(matches!(e, AnnotationError::Invalid { .. }), "{e}");
}

#[test]
fn cri_no_limit_values_leave_the_default() {
    // CRI writes 0 (unset) or -1 (unlimited) when the pod declares nothing.
    let a = annotations(&[
        (CRI_SANDBOX_CPU_QUOTA, "-1"),
        (CRI_SANDBOX_CPU_PERIOD, "100000"),
        (CRI_SANDBOX_MEMORY, "0"),
    ]);
    let (c, sizing) = Config::default().for_pod(&a).unwrap();
    assert_eq!((c.hypervisor.vcpus, c.hypervisor.memory_mib), (1, 512));
    assert_eq!(sizing.declared_vcpus, None);
}

#[test]
fn a_tiny_memory_limit_never_goes_below_the_minimum() {
    let mut base = Config::default();
    base.pod.overhead_memory_mib = 0;
    let a = annotations(&[(CRI_SANDBOX_MEMORY, "1048576")]);
    let (c, _) = base.for_pod(&a).unwrap();
    assert_eq!(c.hypervisor.memory_mib, MIN_MEMORY_MIB);
}

#[test]
fn garbage_in_a_cri_sizing_annotation_is_refused() {
    let a = annotations(&[(CRI_SANDBOX_MEMORY, "lots")]);
    let err = Config::default().for_pod(&a).unwrap_err();
    assert!(matches!(err, AnnotationError::Invalid { ref key, .. } if key == CRI_SANDBOX_MEMORY));
}

#[test]
fn enabled_overrides_set_the_exact_size_over_declared_limits() {
    let a = annotations(&[
        (CRI_SANDBOX_CPU_QUOTA, "400000"),
        (CRI_SANDBOX_CPU_PERIOD, "100000"),
        ("io.isola.config.hypervisor.vcpus", "2"),
        ("io.isola.config.hypervisor.memory_mib", "768"),
    ]);
    let base = enabled(&["hypervisor.vcpus", "hypervisor.memory_mib"]);
    let (c, sizing) = base.for_pod(&a).unwrap();
    assert_eq!((c.hypervisor.vcpus, c.hypervisor.memory_mib), (2, 768));
    assert_eq!(sizing.overrides.len(), 2);
}

#[test]
fn an_override_the_config_does_not_enable_is_refused() {
    let a = annotations(&[("io.isola.config.hypervisor.vcpus", "2")]);
    let err = enabled(&["hypervisor.memory_mib"]).for_pod(&a).unwrap_err();
    assert_eq!(
        err,
        AnnotationError::NotEnabled {
            key: "io.isola.config.hypervisor.vcpus".into(),
            name: "hypervisor.vcpus".into()
        }
    );
    assert!(err.to_string().contains("pod.enable_annotations"), "{err}");
}

#[test]
fn an_unknown_isola_annotation_is_refused_even_when_others_are_enabled() {
    let a = annotations(&[("io.isola.config.hypervisor.path", "/bin/evil")]);
    let err = enabled(&OVERRIDABLE).for_pod(&a).unwrap_err();
    assert!(matches!(err, AnnotationError::Unknown { .. }));
    assert!(
        err.to_string()
            .contains("io.isola.config.hypervisor.memory_mib"),
        "the message lists the known annotations: {err}"
    );
}

#[test]
fn other_annotations_are_not_ours_to_judge() {
    let a = annotations(&[("io.kubernetes.cri.container-type", "sandbox"), ("x", "y")]);
    assert!(Config::default().for_pod(&a).is_ok());
}

#[test]
fn override_values_are_range_checked() {
    let base = enabled(&OVERRIDABLE);
    for (k, v) in [
        ("io.isola.config.hypervisor.vcpus", "0"),
        ("io.isola.config.hypervisor.vcpus", "256"),
        ("io.isola.config.hypervisor.vcpus", "two"),
        ("io.isola.config.hypervisor.memory_mib", "64"),
        ("io.isola.config.hypervisor.memory_mib", "-1"),
    ] {
        let err = base.for_pod(&annotations(&[(k, v)])).unwrap_err();
        assert!(
            matches!(err, AnnotationError::Invalid { .. }),
            "{k}={v}: {err}"
        );
    }
}

#[test]
fn kernel_params_are_appended_and_reserved_ones_refused() {
    let mut base = enabled(&["hypervisor.kernel_params"]);
    base.hypervisor.kernel_params = "quiet".into();
    let key = "io.isola.config.hypervisor.kernel_params";
    let (c, _) = base
        .for_pod(&annotations(&[(key, " sysctl.vm.swappiness=10 ")]))
        .unwrap();
    assert_eq!(c.hypervisor.kernel_params, "quiet sysctl.vm.swappiness=10");
    for bad in [
        "init=/bin/sh",
        "rdinit=/x",
        "console=tty0",
        "agent.log=trace",
        "a -- b",
        "x=\"y\"",
        "a\nb",
    ] {
        let err = base.for_pod(&annotations(&[(key, bad)])).unwrap_err();
        assert!(
            matches!(err, AnnotationError::Invalid { .. }),
            "{bad:?}: {err}"
        );
    }
    let long = "a".repeat(MAX_ANNOTATION_KERNEL_PARAMS + 1);
    assert!(base.for_pod(&annotations(&[(key, &long)])).is_err());
}

#[test]
fn unknown_enable_annotations_entries_are_found() {
    let mut pod = PodConfig::default();
    assert_eq!(unknown_enabled(&pod), None);
    pod.enable_annotations = vec!["hypervisor.vcpus".into(), "hypervisor.path".into()];
    assert_eq!(unknown_enabled(&pod), Some("hypervisor.path"));
}

#[test]
fn quotas_and_limits_round_up_and_non_positive_means_none() {
    assert_eq!(vcpus_for_quota(150_000, 100_000), Some(2));
    assert_eq!(vcpus_for_quota(100_000, 100_000), Some(1));
    assert_eq!(vcpus_for_quota(-1, 100_000), None);
    assert_eq!(vcpus_for_quota(100_000, 0), None);
    assert_eq!(mib_for_bytes(67_108_865), Some(65));
    assert_eq!(mib_for_bytes(0), None);
    assert_eq!(mib_for_bytes(-1), None);
}

#[test]
fn an_enabled_kind_annotation_selects_the_hypervisor() {
    let key = "io.isola.config.hypervisor.kind";
    let base = enabled(&["hypervisor.kind"]);
    let (c, sizing) = base
        .for_pod(&annotations(&[(key, "cloud-hypervisor")]))
        .unwrap();
    assert_eq!(c.hypervisor.kind, HypervisorKind::CloudHypervisor);
    assert_eq!(
        sizing.overrides,
        ["io.isola.config.hypervisor.kind=cloud-hypervisor"]
    );
    // And back to QEMU on a node whose default is Cloud Hypervisor.
    let mut clh = base.clone();
    clh.hypervisor.kind = HypervisorKind::CloudHypervisor;
    let (c, _) = clh.for_pod(&annotations(&[(key, " qemu ")])).unwrap();
    assert_eq!(c.hypervisor.kind, HypervisorKind::Qemu);
}

#[test]
fn the_kind_annotation_must_be_enabled_and_known() {
    let key = "io.isola.config.hypervisor.kind";
    let err = Config::default()
        .for_pod(&annotations(&[(key, "cloud-hypervisor")]))
        .unwrap_err();
    assert!(
        matches!(err, AnnotationError::NotEnabled { ref name, .. } if name == "hypervisor.kind")
    );
    let base = enabled(&["hypervisor.kind"]);
    for bad in ["firecracker", "QEMU", "clh", ""] {
        let err = base.for_pod(&annotations(&[(key, bad)])).unwrap_err();
        assert!(
            matches!(err, AnnotationError::Invalid { .. }),
            "{bad:?}: {err}"
        );
        assert!(
            err.to_string().contains("\"qemu\" or \"cloud-hypervisor\""),
            "{err}"
        );
    }
}

#[test]
fn cloud_hypervisor_by_annotation_is_refused_where_the_node_forces_tcg_or_kernel_vsock() {
    let key = "io.isola.config.hypervisor.kind";
    let mut tcg = enabled(&["hypervisor.kind"]);
    tcg.hypervisor.accelerator = crate::model::Accelerator::Tcg;
    let err = tcg
        .for_pod(&annotations(&[(key, "cloud-hypervisor")]))
        .unwrap_err();
    assert!(matches!(err, AnnotationError::Invalid { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("hypervisor.accelerator = \"tcg\"") && msg.contains("no software emulation"),
        "{msg}"
    );
    let mut vhost = enabled(&["hypervisor.kind"]);
    vhost.hypervisor.vsock = crate::model::Vsock::Vhost;
    let err = vhost
        .for_pod(&annotations(&[(key, "cloud-hypervisor")]))
        .unwrap_err();
    assert!(err.to_string().contains("hypervisor.vsock"), "{err}");
    // QEMU is fine with both.
    assert!(tcg.for_pod(&annotations(&[(key, "qemu")])).is_ok());
}
