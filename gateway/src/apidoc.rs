//! The REST API's OpenAPI document, made from the same route table as the
//! router (`utoipa_axum::router::OpenApiRouter`): each handler carries its
//! `#[utoipa::path]` (path, parameters, bodies, responses), the types their
//! `ToSchema`, and [`typed_routes!`] mounts a handler generic over the store
//! and records its operation in one step. This module adds what no handler
//! owns: the document's info, the bearer scheme, the error answers (one per
//! HTTP status, whose `code` enum is exactly what [`crate::error`]'s table
//! gives for that status), and the error sets a handler declares.
//!
//! `gateway/openapi.json` is this document as generated: the gateway's test
//! `tests/openapi_document.rs` fails when the file differs and rewrites it
//! with `UPDATE_OPENAPI=1 cargo test -p gateway --test openapi_document`.

use std::collections::BTreeMap;

use utoipa::IntoResponses;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, OpenApi, RefOr, ResponseBuilder, Type, schema::Schema,
};

use crate::error::HTTP_CODES;

/// The name of the bearer security scheme in the document.
pub const BEARER: &str = "bearerAuth";

/// What the document says about the API as a whole.
const DESCRIPTION: &str = "Real-time predictions enriched with features. Mirrors the gRPC API gateway.v1 (proto/gateway/v1/gateway.proto). Errors are {\"code\", \"message\"} with the HTTP status of the gateway's error table. Every /v1 route needs an SSO access token (a JWT from the configured OIDC issuer) as 'Authorization: Bearer <token>': 401 invalid_token when it is missing or invalid (with a WWW-Authenticate challenge), 403 permission_denied when the caller's groups/scopes do not allow the call, 503 auth_unavailable while the issuer's keys have never loaded. /healthz, /readyz, /metrics and /openapi.json are open. This document is generated from the gateway's route table (gateway/src/apidoc.rs).";

/// Mounts handlers generic over the store (`handler::<S>`) on one path of an
/// `OpenApiRouter` and records each one's `#[utoipa::path]` operation, like
/// `utoipa_axum::routes!` (which cannot name a generic handler). Use:
/// `router.routes(typed_routes!(S; get_it, change_it))`, all on one path.
#[macro_export]
macro_rules! typed_routes {
    ($s:ty; $($handler:ident),+ $(,)?) => {{
        #[allow(unused_imports)]
        use utoipa::{Path as _, __dev::SchemaReferences as _};
        #[allow(unused_imports)]
        use utoipa_axum::PathItemExt as _;
        let mut schemas = Vec::new();
        let mut paths = utoipa::openapi::path::Paths::new();
        let mut router = axum::routing::MethodRouter::new();
        $(
            utoipa_axum::paste! {
                let methods = [<__path_ $handler>]::methods();
                for method in &methods {
                    router = router.on(method.to_method_filter(), $handler::<$s>);
                }
                [<__path_ $handler>]::schemas(&mut schemas);
                paths.add_path_operation(
                    &[<__path_ $handler>]::path(),
                    methods,
                    [<__path_ $handler>]::operation(),
                );
            }
        )+
        (schemas, paths, router)
    }};
}

/// The HTTP statuses of the error table with the codes each can carry.
fn codes_by_status() -> BTreeMap<u16, Vec<&'static str>> {
    let mut by = BTreeMap::<u16, Vec<&'static str>>::new();
    for (status, code) in HTTP_CODES {
        by.entry(*status).or_default().push(*code);
    }
    // The REST front's own answer for a route it does not serve.
    let nf = by.entry(404).or_default();
    if !nf.contains(&"not_found") {
        nf.push("not_found");
    }
    by
}

fn error_name(status: u16) -> String {
    format!("Error{status}")
}

/// Declares error answers by status: each refers to the document's
/// `#/components/responses/Error{status}`.
macro_rules! error_set {
    ($(#[$doc:meta])* $name:ident: $($status:literal),+) => {
        $(#[$doc])*
        pub struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
                [$($status),+]
                    .into_iter()
                    .map(|s: u16| {
                        (
                            s.to_string(),
                            RefOr::Ref(utoipa::openapi::Ref::from_response_name(error_name(s))),
                        )
                    })
                    .collect()
            }
        }
    };
}

error_set!(
    /// The errors of a prediction.
    PredictErrors: 400, 401, 403, 404, 429, 500, 502, 503, 504
);
error_set!(
    /// The errors of an asynchronous submit.
    SubmitErrors: 400, 401, 403, 404, 429, 500, 501, 503, 504
);
error_set!(
    /// The errors of a poll.
    PollErrors: 401, 404, 429, 500, 501, 503, 504
);
error_set!(
    /// The errors of a push.
    PushErrors: 400, 401, 403, 404, 429, 500, 503, 504
);
error_set!(
    /// The errors of a similarity lookup.
    SimilarErrors: 400, 401, 403, 404, 429, 500, 503, 504
);
error_set!(
    /// The errors of a feedback call.
    FeedbackErrors: 400, 401, 403, 404, 429, 500, 503, 504
);
error_set!(
    /// The errors of an admin call.
    AdminErrors: 400, 401, 403, 404, 409, 429, 500, 503, 504
);

/// The document's frame: info, the bearer scheme, and the error answers
/// and their schemas; the routes add their paths to it.
pub fn base() -> OpenApi {
    let mut doc = OpenApi::new(
        utoipa::openapi::InfoBuilder::new()
            .title("mlgw gateway REST API")
            .version("1")
            .description(Some(DESCRIPTION))
            .build(),
        utoipa::openapi::Paths::new(),
    );
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some("An access token of the configured OIDC issuer (aud = auth.audience, asymmetric signature, exp/iat within auth.max_token_lifetime_s); only the Authorization header is read, never a query parameter or cookie"))
                .build(),
        ),
    );
    for (status, codes) in codes_by_status() {
        let name = error_name(status);
        let example = serde_json::json!({"code": codes[0], "message": "…"});
        let schema = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "code",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(codes.clone()))
                    .description(Some("Stable machine-readable code")),
            )
            .property(
                "message",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some("What went wrong, for a person")),
            )
            .required("code")
            .required("message")
            .additional_properties(Some(
                utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
            ))
            .examples([example]);
        components
            .schemas
            .insert(name.clone(), RefOr::T(Schema::Object(schema.build())));
        let codes = codes.join(", ");
        components.responses.insert(
            name.clone(),
            RefOr::T(
                ResponseBuilder::new()
                    .description(format!("Error ({codes})"))
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(utoipa::openapi::Ref::from_schema_name(name)))
                            .build(),
                    )
                    .build(),
            ),
        );
    }
    doc
}

/// Marks every operation of `doc` under `/v1/` as needing the bearer token.
pub fn secure_v1(doc: &mut OpenApi) {
    let requirement =
        utoipa::openapi::security::SecurityRequirement::new::<&str, [&str; 0], &str>(BEARER, []);
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let ops: [&mut Option<Operation>; 4] = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
        ];
        for op in ops.into_iter().flatten() {
            op.security = Some(vec![requirement.clone()]);
        }
    }
}
