//! The OpenAPI 3.1 document, generated from the handlers' annotations and types.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{nodes, services, streams, system};

#[derive(OpenApi)]
#[openapi(
    info(title = "nanny", description = "A supervisor for model servers: services, their state, logs, events and models."),
    paths(
        system::health, system::info, system::plugins, system::gpus, system::metrics, system::openapi,
        system::reload,
        services::list, services::one, services::models, services::config, services::all_models, services::catalog,
        services::start, services::stop, services::restart, services::ready,
        streams::logs, streams::events,
        nodes::list, nodes::act,
    ),
    components(schemas(super::views::EventView, super::views::LogLineView, nodes::Action)),
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
        // The guard answers before any handler: 403 for a foreign Host header
        // everywhere, 401/403 for a missing or wrong token everywhere but /health.
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [&mut item.get, &mut item.post];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, description: &str| {
                    responses
                        .entry(status.to_string())
                        .or_insert_with(|| error_response(description).into());
                };
                add(
                    "403",
                    "A Host header not naming this machine, or a wrong token",
                );
                if path != "/health" {
                    add("401", "No token, where one is needed");
                }
            }
        }
    }
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}
