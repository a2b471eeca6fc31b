//! The task service pushes the scanned pod network into the guest (fake VM, fake agent, fake
//! netns scan).

use isola_agent_proto::types::IPFamily;

use super::{IpNet, PodInterface, PodNetwork, PodRoute};
use crate::fake::Env;

fn pod() -> PodNetwork {
    PodNetwork {
        port_forward: None,
        interfaces: vec![PodInterface {
            name: "eth0".into(),
            mac: "0a:58:0a:58:00:07".into(),
            mtu: 1450,
            addrs: vec![IpNet {
                addr: "10.88.0.7".parse().unwrap(),
                prefix: 16,
            }],
        }],
        routes: vec![PodRoute {
            dest: None,
            gateway: Some("10.88.0.1".parse().unwrap()),
            source: None,
            scope: 0,
            device: "eth0".into(),
            ipv6: false,
        }],
        neighbors: Vec::new(),
    }
}

/// A create request whose spec joins the network namespace `netns` (as CRI's pause has).
fn request_in_netns(
    env: &Env,
    id: &str,
    netns: &str,
) -> containerd_shim_protos::shim::shim::CreateTaskRequest {
    let req = env.request(id, "{}");
    let config = std::path::Path::new(&req.bundle).join("config.json");
    let spec = std::fs::read_to_string(&config).unwrap().replace(
        r#"{"type":"mount"}"#,
        &format!(r#"{{"type":"mount"}},{{"type":"network","path":"{netns}"}}"#),
    );
    std::fs::write(&config, spec).unwrap();
    req
}

#[tokio::test]
async fn the_scanned_pod_network_reaches_the_agent_after_create_sandbox() {
    let env = Env::new();
    *env.factory.networking.network.lock().unwrap() = pod();
    let req = request_in_netns(&env, "pause", "/var/run/netns/cni-1234");
    env.service.create(req).await.unwrap();

    assert_eq!(
        *env.factory.networking.attached.lock().unwrap(),
        [std::path::PathBuf::from("/var/run/netns/cni-1234")]
    );
    let agent = env.agent();
    let calls = agent.calls();
    let pos = |rpc: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(rpc))
            .unwrap_or_else(|| panic!("no {rpc} in {calls:?}"))
    };
    assert!(pos("CreateSandbox") < pos("UpdateInterface"));
    assert!(pos("UpdateInterface") < pos("UpdateRoutes"));
    assert!(pos("UpdateRoutes") < pos("CreateContainer"));
    assert!(
        !calls.iter().any(|c| c.starts_with("AddARPNeighbors")),
        "no neighbours to add"
    );

    let ifaces = agent.interfaces.lock().unwrap().clone();
    assert_eq!(ifaces.len(), 1);
    assert_eq!(ifaces[0].hw_addr, "0a:58:0a:58:00:07");
    assert_eq!(ifaces[0].mtu, 1450);
    assert_eq!(ifaces[0].ip_addresses[0].address, "10.88.0.7");
    assert_eq!(ifaces[0].ip_addresses[0].mask, "16");
    assert_eq!(
        ifaces[0].ip_addresses[0].family.enum_value_or_default(),
        IPFamily::V4
    );
    let routes = agent.routes.lock().unwrap().clone();
    assert_eq!(routes.len(), 1);
    assert_eq!(
        (routes[0].dest.as_str(), routes[0].gateway.as_str()),
        ("", "10.88.0.1")
    );
}

#[tokio::test]
async fn no_netns_no_network_rpcs() {
    let env = Env::new();
    env.service.create(env.request("c1", "{}")).await.unwrap();
    assert!(env.factory.networking.attached.lock().unwrap().is_empty());
    let calls = env.agent().calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("Update") || c.starts_with("AddARP")),
        "{calls:?}"
    );
}

#[tokio::test]
async fn a_failed_interface_update_fails_the_create_and_stops_the_vm() {
    let env = Env::new();
    *env.factory.networking.network.lock().unwrap() = pod();
    env.agent()
        .fail("UpdateInterface", ttrpc::Code::INVALID_ARGUMENT, "bad MAC");
    let req = request_in_netns(&env, "pause", "/var/run/netns/cni-1");
    let err = env.service.create(req).await.unwrap_err();
    assert!(err.to_string().contains("bad MAC"), "{err}");
    assert!(env.vm().stopped());
}
