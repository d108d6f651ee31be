//! Named `mock` like a builtin: a plugin file must take the builtin's place.

use nanny_sdk::*;

#[derive(Default)]
struct ShadowMock;

impl Backend for ShadowMock {
    fn plan(&mut self, service: &Service) -> Result<Plan, Vec<ConfigError>> {
        Ok(process_plan(service, "true", Vec::new()))
    }
}

export_backend!("mock", ShadowMock);
