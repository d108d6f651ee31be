//! The OpenAPI 3.1 document, generated from the handlers' annotations and types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{services, streams, system};

#[derive(OpenApi)]
#[openapi(
    info(title = "nanny", description = "A supervisor for model servers: services, their state, logs, events and models."),
    paths(
        system::health, system::info, system::plugins, system::metrics, system::openapi,
        services::list, services::one, services::models, services::all_models,
        services::start, services::stop, services::restart, services::ready,
        streams::logs, streams::events,
    ),
    modifiers(&BearerToken),
    security(("token" = [])),
)]
pub struct ApiDoc;

/// `token`: the daemon's bearer token (needed beyond loopback, or once configured);
/// `ready_token`: a launch's `NANNY_READY_TOKEN`.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for name in ["token", "ready_token"] {
            components.add_security_scheme(
                name,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}
