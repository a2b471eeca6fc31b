//! `Health`: is the agent up, and which version is it.

use async_trait::async_trait;
use isola_agent_proto::health::{health_check_response::ServingStatus, *};
use isola_agent_proto::{health_ttrpc, PROTOCOL_VERSION};
use ttrpc::r#async::TtrpcContext;

use super::guard::guarded;
use super::sysinfo;

/// The Health service.
pub struct HealthService;

#[async_trait]
impl health_ttrpc::Health for HealthService {
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckRequest,
    ) -> ttrpc::Result<HealthCheckResponse> {
        guarded("Check", async {
            Ok(HealthCheckResponse {
                status: ServingStatus::SERVING.into(),
                ..Default::default()
            })
        })
        .await
    }

    async fn version(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckRequest,
    ) -> ttrpc::Result<VersionCheckResponse> {
        guarded("Version", async {
            Ok(VersionCheckResponse {
                protocol_version: PROTOCOL_VERSION,
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
                kernel_release: sysinfo::kernel_release(),
                ..Default::default()
            })
        })
        .await
    }
}
