//! Hotplug sequences against a fake QEMU that keeps CPU and DIMM state like QEMU 7.2 does
//! (its replies are shaped after real `query-hotpluggable-cpus` / `query-memory-devices`
//! output) and records every command it receives.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::*;
use crate::qemu::args::{HotplugLimits, MemoryHotplug};

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}"#;

/// What the fake QEMU holds.
#[derive(Default)]
struct Fake {
    /// (core-id, device id if plugged). Core 0 is the boot CPU (id None but present).
    cpus: Vec<(u64, Option<String>)>,
    /// Present boot CPUs (core ids below this are present without a device id).
    boot_cpus: u64,
    /// (id, memdev, bytes) of plugged DIMMs.
    dimms: Vec<(String, String, u64)>,
    /// Memory backends created by object-add: (id, bytes).
    objects: Vec<(String, u64)>,
    /// Every command with its arguments, in order.
    log: Vec<(String, Value)>,
    /// Make the next device_add of this driver fail with this description.
    fail_device_add: Option<(&'static str, &'static str)>,
}

impl Fake {
    fn new(boot_cpus: u64, max_cpus: u64) -> Self {
        Fake {
            cpus: (0..max_cpus).map(|c| (c, None)).collect(),
            boot_cpus,
            ..Fake::default()
        }
    }

    fn answer(&mut self, cmd: &str, args: &Value) -> Result<Value, String> {
        self.log.push((cmd.to_owned(), args.clone()));
        match cmd {
            "qmp_capabilities" => Ok(json!({})),
            "query-hotpluggable-cpus" => {
                // QEMU lists the highest slot first.
                let list: Vec<Value> = self
                    .cpus
                    .iter()
                    .rev()
                    .map(|(core, id)| {
                        let mut e = json!({
                            "props": {"core-id": core, "thread-id": 0, "node-id": 0, "socket-id": 0},
                            "vcpus-count": 1,
                            "type": "qemu64-x86_64-cpu",
                        });
                        if let Some(id) = id {
                            e["qom-path"] = format!("/machine/peripheral/{id}").into();
                        } else if *core < self.boot_cpus {
                            e["qom-path"] = format!("/machine/unattached/device[{core}]").into();
                        }
                        e
                    })
                    .collect();
                Ok(Value::Array(list))
            }
            "query-memory-devices" => Ok(Value::Array(
                self.dimms
                    .iter()
                    .enumerate()
                    .map(|(slot, (id, memdev, size))| {
                        json!({"type": "dimm", "data": {
                            "memdev": format!("/objects/{memdev}"), "hotplugged": true,
                            "addr": 4_294_967_296_u64, "hotpluggable": true, "size": size,
                            "slot": slot, "node": 0, "id": id}})
                    })
                    .collect(),
            )),
            "object-add" => {
                assert_eq!(args["qom-type"], "memory-backend-memfd");
                assert_eq!(args["share"], true);
                let id = args["id"].as_str().unwrap().to_owned();
                if self.objects.iter().any(|(o, _)| *o == id) {
                    return Err(format!("attempt to add duplicate property '{id}'"));
                }
                self.objects.push((id, args["size"].as_u64().unwrap()));
                Ok(json!({}))
            }
            "object-del" => {
                let id = args["id"].as_str().unwrap();
                self.objects.retain(|(o, _)| o != id);
                Ok(json!({}))
            }
            "device_add" => {
                let driver = args["driver"].as_str().unwrap();
                if let Some((d, desc)) = self.fail_device_add {
                    if d == driver {
                        self.fail_device_add = None;
                        return Err(desc.to_owned());
                    }
                }
                let id = args["id"].as_str().unwrap().to_owned();
                match driver {
                    "qemu64-x86_64-cpu" => {
                        let core = args["core-id"].as_u64().unwrap();
                        let slot = self.cpus.iter_mut().find(|(c, _)| *c == core).unwrap();
                        assert!(slot.1.is_none() && core >= self.boot_cpus, "slot taken");
                        slot.1 = Some(id);
                    }
                    "pc-dimm" => {
                        let memdev = args["memdev"].as_str().unwrap().to_owned();
                        let size = self
                            .objects
                            .iter()
                            .find(|(o, _)| *o == memdev)
                            .map(|(_, s)| *s)
                            .ok_or_else(|| format!("can't find object {memdev}"))?;
                        self.dimms.push((id, memdev, size));
                    }
                    other => return Err(format!("unexpected driver {other}")),
                }
                Ok(json!({}))
            }
            other => Err(format!("The command {other} has not been found")),
        }
    }

    fn commands(&self) -> Vec<String> {
        self.log
            .iter()
            .map(|(c, _)| c.clone())
            .filter(|c| c != "qmp_capabilities")
            .collect()
    }
}

/// Connects a client to a fake QEMU holding `fake`.
async fn connect(fake: Arc<Mutex<Fake>>) -> QmpClient<UnixStream> {
    let (ours, theirs) = UnixStream::pair().unwrap();
    tokio::spawn(async move {
        let (r, mut w) = theirs.into_split();
        w.write_all(format!("{GREETING}\n").as_bytes())
            .await
            .unwrap();
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let req: Value = serde_json::from_str(&line).unwrap();
            let cmd = req["execute"].as_str().unwrap().to_owned();
            let args = req.get("arguments").cloned().unwrap_or(Value::Null);
            let reply = match fake.lock().unwrap().answer(&cmd, &args) {
                Ok(ret) => json!({"return": ret, "id": req["id"]}),
                Err(desc) => {
                    json!({"error": {"class": "GenericError", "desc": desc}, "id": req["id"]})
                }
            };
            if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                return;
            }
        }
    });
    QmpClient::handshake(ours, Duration::from_secs(2), MAX_LINE_FOR_TESTS, "t")
        .await
        .unwrap()
}

const MAX_LINE_FOR_TESTS: usize = 64 * 1024;

fn q35(vcpus: u32, max_vcpus: u32, slots: u32, max_mib: u32) -> HotplugLimits {
    HotplugLimits::resolve("q35", vcpus, 512, max_vcpus, max_mib, slots)
}

#[tokio::test]
async fn vcpus_are_plugged_lowest_slot_first_with_reported_driver_and_props() {
    let fake = Arc::new(Mutex::new(Fake::new(1, 4)));
    let mut c = connect(fake.clone()).await;
    let limits = q35(1, 4, 8, 2048);
    assert_eq!(plug_vcpus(&mut c, "t", &limits, 3).await.unwrap(), 3);
    {
        let f = fake.lock().unwrap();
        assert_eq!(
            f.commands(),
            ["query-hotpluggable-cpus", "device_add", "device_add"]
        );
        assert_eq!(
            f.log[2].1,
            json!({"driver": "qemu64-x86_64-cpu", "id": "cpu-1", "core-id": 1,
                   "thread-id": 0, "node-id": 0, "socket-id": 0})
        );
        assert_eq!(f.log[3].1["id"], "cpu-2");
        assert_eq!(f.log[3].1["core-id"], 2);
    }
    // Same total again: nothing to do, and QEMU's state is what counts.
    assert_eq!(plug_vcpus(&mut c, "t", &limits, 3).await.unwrap(), 3);
    // One more: the next id and slot.
    assert_eq!(plug_vcpus(&mut c, "t", &limits, 4).await.unwrap(), 4);
    let f = fake.lock().unwrap();
    let last = &f.log.last().unwrap().1;
    assert_eq!(
        (&last["id"], &last["core-id"]),
        (&json!("cpu-3"), &json!(3))
    );
}

#[tokio::test]
async fn vcpu_limits_and_shrinking_are_refused_clearly() {
    let fake = Arc::new(Mutex::new(Fake::new(2, 4)));
    let mut c = connect(fake.clone()).await;
    let limits = q35(2, 4, 8, 2048);
    let err = plug_vcpus(&mut c, "t", &limits, 5).await.unwrap_err();
    assert!(
        matches!(
            err,
            HypervisorError::HotplugLimit {
                resource: "vCPUs",
                requested: 5,
                limit: 4,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("raise max_vcpus"), "{err}");
    let err = plug_vcpus(&mut c, "t", &limits, 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            HypervisorError::ShrinkUnsupported {
                current: 2,
                requested: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("not supported"), "{err}");
    // Nothing was plugged by the refused calls.
    assert!(!fake
        .lock()
        .unwrap()
        .commands()
        .contains(&"device_add".into()));
    // microvm: no hotplug at all.
    let micro = HotplugLimits::resolve("microvm", 2, 512, 4, 2048, 8);
    let err = plug_vcpus(&mut c, "t", &micro, 3).await.unwrap_err();
    assert!(
        matches!(err, HypervisorError::Unsupported(ref m) if m.contains("q35")),
        "{err:?}"
    );
}

#[tokio::test]
async fn vcpu_device_add_error_reports_how_far_it_got() {
    let fake = Arc::new(Mutex::new(Fake::new(1, 4)));
    fake.lock().unwrap().fail_device_add = Some(("qemu64-x86_64-cpu", "CPU hotplug refused"));
    let mut c = connect(fake.clone()).await;
    let err = plug_vcpus(&mut c, "t", &q35(1, 4, 8, 2048), 3)
        .await
        .unwrap_err();
    match &err {
        HypervisorError::HotplugFailed {
            reached, source, ..
        } => {
            assert_eq!(*reached, 1);
            assert!(
                matches!(&**source, HypervisorError::Qmp(QmpError::Command { desc, .. }) if desc == "CPU hotplug refused")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("cpu-1"), "{err}");
    assert!(err.to_string().contains("core=1"), "{err}");
}

#[tokio::test]
async fn memory_is_one_shared_memfd_dimm_per_call_rounded_to_blocks() {
    let fake = Arc::new(Mutex::new(Fake::new(1, 1)));
    let mut c = connect(fake.clone()).await;
    let limits = q35(1, 1, 8, 2048);
    // 512 -> 600 MiB: one 128 MiB block.
    assert_eq!(
        plug_memory(&mut c, "t", &limits, 512, 600).await.unwrap(),
        640
    );
    {
        let f = fake.lock().unwrap();
        assert_eq!(
            f.commands(),
            ["query-memory-devices", "object-add", "device_add"]
        );
        assert_eq!(
            f.log[2].1,
            json!({"qom-type": "memory-backend-memfd", "id": "memdimm-0",
                   "size": 128_u64 << 20, "share": true})
        );
        assert_eq!(
            f.log[3].1,
            json!({"driver": "pc-dimm", "id": "dimm-0", "memdev": "memdimm-0"})
        );
    }
    // Within the rounding of what is there: nothing to do.
    assert_eq!(
        plug_memory(&mut c, "t", &limits, 512, 620).await.unwrap(),
        640
    );
    // 640 -> 1024: a 384 MiB DIMM.
    assert_eq!(
        plug_memory(&mut c, "t", &limits, 512, 1024).await.unwrap(),
        1024
    );
    let f = fake.lock().unwrap();
    assert_eq!(f.dimms.len(), 2);
    assert_eq!(f.dimms[1], ("dimm-1".into(), "memdimm-1".into(), 384 << 20));
}

#[tokio::test]
async fn memory_limits_slots_and_shrinking_are_refused_clearly() {
    let fake = Arc::new(Mutex::new(Fake::new(1, 1)));
    let mut c = connect(fake.clone()).await;
    let limits = q35(1, 1, 2, 1024);
    let err = plug_memory(&mut c, "t", &limits, 512, 1100)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HypervisorError::HotplugLimit {
                resource: "MiB of memory",
                requested: 1152,
                limit: 1024,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("raise max_memory_mib"), "{err}");
    plug_memory(&mut c, "t", &limits, 512, 640).await.unwrap();
    plug_memory(&mut c, "t", &limits, 512, 768).await.unwrap();
    let err = plug_memory(&mut c, "t", &limits, 512, 896)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HypervisorError::HotplugLimit {
                resource: "memory slots",
                requested: 3,
                limit: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let err = plug_memory(&mut c, "t", &limits, 512, 600)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HypervisorError::ShrinkUnsupported {
                current: 768,
                requested: 600,
                ..
            }
        ),
        "{err:?}"
    );
    // No memory room at all (maxmem not above the boot memory).
    let none = q35(1, 1, 8, 512);
    assert_eq!(none.memory, None);
    let err = plug_memory(&mut c, "t", &none, 512, 1024)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("without memory hotplug room"),
        "{err}"
    );
    assert_eq!(
        limits.memory,
        Some(MemoryHotplug {
            slots: 2,
            max_mib: 1024
        })
    );
}

#[tokio::test]
async fn failed_dimm_removes_its_backend() {
    let fake = Arc::new(Mutex::new(Fake::new(1, 1)));
    fake.lock().unwrap().fail_device_add = Some((
        "pc-dimm",
        "a used vhost backend has no free memory slots left",
    ));
    let mut c = connect(fake.clone()).await;
    let limits = q35(1, 1, 8, 2048);
    let err = plug_memory(&mut c, "t", &limits, 512, 768)
        .await
        .unwrap_err();
    assert!(
        matches!(err, HypervisorError::HotplugFailed { reached: 512, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("vhost backend"), "{err}");
    {
        let f = fake.lock().unwrap();
        assert_eq!(
            f.commands(),
            [
                "query-memory-devices",
                "object-add",
                "device_add",
                "object-del"
            ]
        );
        assert!(f.objects.is_empty());
    }
    // The same request works afterwards, reusing the ids.
    assert_eq!(
        plug_memory(&mut c, "t", &limits, 512, 768).await.unwrap(),
        768
    );
    assert_eq!(fake.lock().unwrap().dimms[0].0, "dimm-0");
}
