//! Gateway errors and the one table that maps each to an HTTP status, a gRPC
//! code and a stable JSON code ([`GatewayError::code`]); the REST answer
//! (`IntoResponse`) and the gRPC status ([`GatewayError::into_status`]) are
//! both made here, so nothing else decides a status.

use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use feature_store::reader::ReadError;
use feature_store::schedule::jobs::JobsError;

use crate::auth::session::CsrfError;
use crate::auth::{AuthError, Denied};
use crate::enrich::EnrichError;
use crate::model::infer::InferError;
use crate::rollout::RouteError;
use crate::rollout::live::RolloutError;
use crate::scoring::host::StartError;

/// Why a prediction (or another gateway call) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// No such model is configured.
    #[error("unknown model {model:?}; this gateway serves {known}")]
    UnknownModel {
        /// The model asked for.
        model: String,
        /// The models served.
        known: String,
    },
    /// No such feature view is defined.
    #[error("unknown feature view {view:?}; dynamic views: {known}")]
    UnknownView {
        /// The view asked for.
        view: String,
        /// The dynamic views defined.
        known: String,
    },
    /// No similarity index is declared on that view.
    #[error("no similarity index on view {view:?}; indexed views: {known}")]
    UnknownIndex {
        /// The view asked for.
        view: String,
        /// The views with an index.
        known: String,
    },
    /// The view's index has not been loaded yet (never built, or loading).
    #[error("the similarity index of view {view:?} is not loaded yet: {why}")]
    IndexNotReady {
        /// The view.
        view: String,
        /// Why (never built, still loading, the artifact failed to load).
        why: String,
    },
    /// The query entity has no vector in the view's current index.
    #[error("entity {entity:?} has no vector in the current index of view {view:?}")]
    UnknownEntity {
        /// The view.
        view: String,
        /// The entity key asked for.
        entity: String,
    },
    /// The request is malformed or does not fit the model's declarations.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request's entity or features do not fit the model's declarations.
    #[error(transparent)]
    Input(EnrichError),
    /// Reading features failed.
    #[error("feature store: {0}")]
    FeatureStore(#[source] ReadError),
    /// The model-server call failed.
    #[error(transparent)]
    Model(#[from] InferError),
    /// The model answered something post-processing cannot use.
    #[error("model {model:?} answered an unexpected shape: {detail}")]
    BadModelAnswer {
        /// The model.
        model: String,
        /// What was wrong.
        #[source]
        detail: crate::postprocess::AnswerError,
    },
    /// Feedback names a prediction that is not in the log.
    #[error(
        "no prediction {prediction_id:?} in the prediction log; send the prediction_id returned by predict (records expire after the log's retention)"
    )]
    UnknownPrediction {
        /// The ID sent.
        prediction_id: String,
    },
    /// A model answered only from the prediction store has no usable entry
    /// for the key asked for.
    #[error(
        "model {model:?} answers only from precomputed predictions, and there is none to serve for this key ({reason}); it is not run live"
    )]
    NotPrecomputed {
        /// The model.
        model: String,
        /// Why (`miss`, `stale`, `version`, …).
        reason: &'static str,
    },
    /// No asynchronous request of that ID is visible to the caller.
    #[error(
        "no asynchronous prediction {id:?} for this caller; send the id returned by predict-async (results expire after the configured retention)"
    )]
    UnknownRequest {
        /// The ID sent.
        id: String,
    },
    /// Asynchronous predictions are not enabled on this gateway.
    #[error(
        "asynchronous predictions are not enabled on this gateway ([async_predict] enabled = false)"
    )]
    AsyncDisabled,
    /// An asynchronous request waited for a worker past its deadline and
    /// was not scored.
    #[error(
        "waited {waited_ms} ms for a worker, past its deadline of {deadline_ms} ms; it was not scored"
    )]
    QueueDeadline {
        /// Time from acceptance to the worker.
        waited_ms: u64,
        /// The request's deadline, from acceptance.
        deadline_ms: u64,
    },
    /// The request queue (Kafka) or the request store cannot take an
    /// asynchronous request: nothing was accepted.
    #[error("{0}")]
    QueueUnavailable(String),
    /// A batch-scoring job failed to start or list.
    #[error(transparent)]
    Scoring(#[from] crate::scoring::host::StartError),
    /// No `[[refresh_job]]` of that name is declared.
    #[error(
        "no refresh job {job:?} is declared in the feature definitions; `GET /v1/admin/tuner/jobs` lists them"
    )]
    UnknownTunerJob {
        /// The job asked for.
        job: String,
    },
    /// Too many requests in flight; refused at once.
    #[error("the gateway is at its limit of concurrent requests; retry with backoff")]
    Overloaded,
    /// The request's deadline passed.
    #[error("the request did not finish within its deadline")]
    DeadlineExceeded,
    /// No valid bearer token (or the issuer's keys are not loaded yet).
    #[error(transparent)]
    Unauthenticated(#[from] AuthError),
    /// A valid caller without the right to do this.
    #[error(transparent)]
    PermissionDenied(#[from] Denied),
    /// A request with the console's session cookie that fails the CSRF
    /// check (no token for a change, or another site's origin).
    #[error(transparent)]
    Csrf(#[from] CsrfError),
    /// The caller asked for a version it may not have (a pilot outside its
    /// groups: permission denied) or that the routing does not serve.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A routing change was refused, lost to concurrent changes, or the
    /// stored routing cannot be used (the table tells which).
    #[error(transparent)]
    Rollout(RolloutError),
    /// A tuner admin request does not fit the job.
    #[error(transparent)]
    Tuner(JobsError),
    /// The routing cannot be used (a configuration the start-up checks
    /// should have refused).
    #[error("{0}")]
    RoutingDamaged(String),
    /// A shadow report could not be encoded.
    #[error("{0}")]
    Report(#[source] serde_json::Error),
}

impl From<RolloutError> for GatewayError {
    fn from(e: RolloutError) -> Self {
        match e {
            RolloutError::UnknownModel(model) => GatewayError::UnknownModel {
                model,
                known: "the models listed by GET /v1/admin/models".to_owned(),
            },
            RolloutError::Store(s) => GatewayError::FeatureStore(s.into()),
            other => GatewayError::Rollout(other),
        }
    }
}

impl From<EnrichError> for GatewayError {
    fn from(e: EnrichError) -> Self {
        match e {
            EnrichError::Read(read @ ReadError::Store(_)) => GatewayError::FeatureStore(read),
            other => GatewayError::Input(other),
        }
    }
}

impl From<JobsError> for GatewayError {
    fn from(e: JobsError) -> Self {
        match e {
            JobsError::UnknownJob { job, .. } => GatewayError::UnknownTunerJob { job },
            JobsError::Store(s) => GatewayError::FeatureStore(s.into()),
            other => GatewayError::Tuner(other),
        }
    }
}

/// Every (HTTP status, code) pair [`GatewayError::code`] gives, for the
/// OpenAPI document's error answers; a unit test keeps the two equal.
pub const HTTP_CODES: &[(u16, &str)] = &[
    (404, "unknown_model"),
    (404, "unknown_view"),
    (404, "unknown_job"),
    (404, "prediction_not_found"),
    (404, "not_precomputed"),
    (404, "request_not_found"),
    (501, "async_disabled"),
    (503, "queue_unavailable"),
    (400, "invalid_argument"),
    (503, "feature_store_unavailable"),
    (500, "feature_store_error"),
    (503, "model_unavailable"),
    (504, "deadline_exceeded"),
    (429, "overloaded"),
    (502, "model_failed"),
    (503, "auth_unavailable"),
    (401, "invalid_token"),
    (403, "permission_denied"),
    (403, "csrf_rejected"),
    (404, "unknown_version"),
    (400, "routing_refused"),
    (409, "routing_conflict"),
    (409, "job_running"),
    (500, "routing_damaged"),
];

/// The JSON body of every REST error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

/// The wire form of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    /// HTTP status.
    pub http: u16,
    /// gRPC status code.
    pub grpc: tonic::Code,
    /// Stable machine-readable code.
    pub code: &'static str,
}

impl GatewayError {
    /// The one table from error to wire codes.
    pub fn code(&self) -> ErrorCode {
        let (http, grpc, code) = match self {
            GatewayError::UnknownModel { .. } => (404, tonic::Code::NotFound, "unknown_model"),
            GatewayError::UnknownView { .. } => (404, tonic::Code::NotFound, "unknown_view"),
            GatewayError::UnknownIndex { .. } => (404, tonic::Code::NotFound, "unknown_index"),
            GatewayError::UnknownEntity { .. } => (404, tonic::Code::NotFound, "unknown_entity"),
            GatewayError::IndexNotReady { .. } => {
                (503, tonic::Code::Unavailable, "index_not_ready")
            }
            GatewayError::UnknownTunerJob { .. } => (404, tonic::Code::NotFound, "unknown_job"),
            GatewayError::UnknownPrediction { .. } => {
                (404, tonic::Code::NotFound, "prediction_not_found")
            }
            GatewayError::NotPrecomputed { .. } => (404, tonic::Code::NotFound, "not_precomputed"),
            GatewayError::UnknownRequest { .. } => {
                (404, tonic::Code::NotFound, "request_not_found")
            }
            GatewayError::AsyncDisabled => (501, tonic::Code::Unimplemented, "async_disabled"),
            GatewayError::QueueUnavailable(_) => {
                (503, tonic::Code::Unavailable, "queue_unavailable")
            }
            GatewayError::Scoring(StartError::UnknownJob { .. }) => {
                (404, tonic::Code::NotFound, "unknown_job")
            }
            GatewayError::Scoring(StartError::Running { .. }) => {
                (409, tonic::Code::Aborted, "job_running")
            }
            GatewayError::Scoring(StartError::Store(e)) if e.is_transient() => {
                (503, tonic::Code::Unavailable, "feature_store_unavailable")
            }
            GatewayError::Scoring(_) => (500, tonic::Code::Internal, "feature_store_error"),
            GatewayError::InvalidArgument(_) | GatewayError::Input(_) | GatewayError::Tuner(_) => {
                (400, tonic::Code::InvalidArgument, "invalid_argument")
            }
            GatewayError::FeatureStore(e) => {
                if e.store_error().is_some_and(|s| s.is_transient()) {
                    (503, tonic::Code::Unavailable, "feature_store_unavailable")
                } else {
                    (500, tonic::Code::Internal, "feature_store_error")
                }
            }
            GatewayError::Model(InferError::Unavailable { .. } | InferError::Endpoint(_)) => {
                (503, tonic::Code::Unavailable, "model_unavailable")
            }
            GatewayError::Model(InferError::DeadlineExceeded { .. })
            | GatewayError::DeadlineExceeded
            | GatewayError::QueueDeadline { .. } => {
                (504, tonic::Code::DeadlineExceeded, "deadline_exceeded")
            }
            GatewayError::Model(InferError::Overloaded { .. }) | GatewayError::Overloaded => {
                (429, tonic::Code::ResourceExhausted, "overloaded")
            }
            GatewayError::Model(_) | GatewayError::BadModelAnswer { .. } => {
                (502, tonic::Code::Internal, "model_failed")
            }
            GatewayError::Unauthenticated(AuthError::KeysUnavailable) => {
                (503, tonic::Code::Unavailable, "auth_unavailable")
            }
            GatewayError::Unauthenticated(_) => {
                (401, tonic::Code::Unauthenticated, "invalid_token")
            }
            GatewayError::PermissionDenied(_)
            | GatewayError::Route(RouteError::NotPilot { .. }) => {
                (403, tonic::Code::PermissionDenied, "permission_denied")
            }
            GatewayError::Csrf(_) => (403, tonic::Code::PermissionDenied, "csrf_rejected"),
            GatewayError::Route(_) => (404, tonic::Code::NotFound, "unknown_version"),
            GatewayError::Rollout(RolloutError::Change(_) | RolloutError::VersionCheck(_)) => {
                (400, tonic::Code::FailedPrecondition, "routing_refused")
            }
            GatewayError::Rollout(RolloutError::Conflict(_)) => {
                (409, tonic::Code::Aborted, "routing_conflict")
            }
            GatewayError::Rollout(_)
            | GatewayError::RoutingDamaged(_)
            | GatewayError::Report(_) => (500, tonic::Code::Internal, "routing_damaged"),
        };
        ErrorCode { http, grpc, code }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750) for a 401 or 403.
    pub fn challenge(&self) -> Option<String> {
        match self {
            GatewayError::Unauthenticated(AuthError::KeysUnavailable) => None,
            // The descriptions are fixed texts: no quote or token inside.
            GatewayError::Unauthenticated(e) => Some(format!(
                "Bearer realm=\"mlgw\", error=\"invalid_token\", error_description=\"{}\"",
                e.to_string().replace('"', "'")
            )),
            GatewayError::PermissionDenied(_)
            | GatewayError::Route(RouteError::NotPilot { .. }) => {
                Some("Bearer realm=\"mlgw\", error=\"insufficient_scope\"".to_owned())
            }
            _ => None,
        }
    }

    /// Whether this is a policy denial (counted with the others).
    pub fn is_denial(&self) -> bool {
        self.code().code == "permission_denied"
    }

    /// The gRPC status for this error, with the error as its source (so the
    /// request metrics read its code, and the chain stays typed).
    pub fn into_status(self) -> tonic::Status {
        let mut status = tonic::Status::new(self.code().grpc, self.to_string());
        status.set_source(Arc::new(self));
        status
    }

    /// The JSON error body with the table's status (and the bearer challenge
    /// for a 401 or 403); the [`ErrorCode`] rides in the response's
    /// extensions for the request metrics.
    pub fn to_response(&self) -> Response {
        let code = self.code();
        let status = StatusCode::from_u16(code.http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            Json(ErrorBody {
                code: code.code,
                message: self.to_string(),
            }),
        )
            .into_response();
        if let Some(value) = self
            .challenge()
            .and_then(|c| axum::http::HeaderValue::from_str(&c).ok())
        {
            response
                .headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, value);
        }
        response.extensions_mut().insert(code);
        response
    }

    /// The [`ErrorCode`] of an answer made by [`GatewayError::to_response`]
    /// or [`GatewayError::into_status`] (None: not an error answer).
    pub fn code_of_response<B>(response: &http::Response<B>) -> Option<ErrorCode> {
        if let Some(code) = response.extensions().get::<ErrorCode>() {
            return Some(*code);
        }
        let status = response.extensions().get::<tonic::Status>()?;
        let source = std::error::Error::source(status)?;
        source
            .downcast_ref::<GatewayError>()
            .map(GatewayError::code)
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        self.to_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_counted_by_the_request_metrics() {
        let errors = [
            GatewayError::InvalidArgument("x".into()),
            GatewayError::UnknownTunerJob { job: "j".into() },
            GatewayError::UnknownPrediction {
                prediction_id: "p".into(),
            },
            GatewayError::Overloaded,
            GatewayError::DeadlineExceeded,
            GatewayError::Unauthenticated(AuthError::Missing),
            GatewayError::Unauthenticated(AuthError::KeysUnavailable),
            GatewayError::PermissionDenied(Denied::from("no")),
            GatewayError::RoutingDamaged("x".into()),
        ];
        for e in errors {
            let code = e.code().code;
            assert!(crate::metrics::CODES.contains(&code), "{code}");
        }
    }

    /// One error for each arm of the table.
    fn samples() -> Vec<GatewayError> {
        use feature_store::store::StoreError;
        let s = |x: &str| x.to_owned();
        let read = |e: StoreError| ReadError::Store(Arc::new(e));
        vec![
            GatewayError::UnknownModel {
                model: s("m"),
                known: s("k"),
            },
            GatewayError::UnknownView {
                view: s("v"),
                known: s("k"),
            },
            GatewayError::UnknownTunerJob { job: s("j") },
            GatewayError::UnknownPrediction {
                prediction_id: s("p"),
            },
            GatewayError::NotPrecomputed {
                model: s("m"),
                reason: "miss",
            },
            GatewayError::UnknownRequest { id: s("r") },
            GatewayError::AsyncDisabled,
            GatewayError::QueueUnavailable(s("q")),
            GatewayError::QueueDeadline {
                waited_ms: 2,
                deadline_ms: 1,
            },
            GatewayError::Scoring(StartError::Running {
                job: s("j"),
                holder: s("h"),
            }),
            GatewayError::InvalidArgument(s("x")),
            GatewayError::FeatureStore(read(StoreError::Timeout(std::time::Duration::ZERO))),
            GatewayError::FeatureStore(read(StoreError::Backend(s("b")))),
            GatewayError::Model(InferError::Unavailable {
                endpoint: s("e"),
                detail: s("d"),
            }),
            GatewayError::DeadlineExceeded,
            GatewayError::Overloaded,
            GatewayError::Model(InferError::Refused {
                endpoint: s("e"),
                detail: s("d"),
            }),
            GatewayError::Unauthenticated(AuthError::KeysUnavailable),
            GatewayError::Unauthenticated(AuthError::Missing),
            GatewayError::PermissionDenied(Denied::from("no")),
            GatewayError::Csrf(CsrfError::Token),
            GatewayError::Route(RouteError::NotServed {
                model: s("m"),
                version: s("v"),
                detail: s(""),
                served: s("1"),
            }),
            GatewayError::Rollout(RolloutError::VersionCheck(s("x").into())),
            GatewayError::Rollout(RolloutError::Conflict(s("m"))),
            GatewayError::RoutingDamaged(s("x")),
        ]
    }

    #[test]
    fn http_codes_list_exactly_the_table() {
        // Every pair the table can give (one error per arm).
        let mut given: Vec<(u16, &str)> = Vec::new();
        for e in samples() {
            let c = e.code();
            given.push((c.http, c.code));
        }
        for pair in &given {
            assert!(
                HTTP_CODES.contains(pair),
                "{pair:?} missing from HTTP_CODES"
            );
        }
        for pair in HTTP_CODES {
            assert!(
                given.contains(pair),
                "{pair:?} listed but no sample gives it"
            );
        }
    }

    #[test]
    fn both_answers_carry_the_code() {
        let e = GatewayError::InvalidArgument("bad".into());
        let rest = e.to_response();
        assert_eq!(rest.status(), 400);
        assert_eq!(
            GatewayError::code_of_response(&rest).map(|c| c.code),
            Some("invalid_argument")
        );
        let grpc: http::Response<tonic::body::Body> =
            GatewayError::Overloaded.into_status().into_http();
        assert_eq!(
            GatewayError::code_of_response(&grpc).map(|c| c.code),
            Some("overloaded")
        );
    }
}
