//! Gateway errors and the one table that maps each to an HTTP status, a gRPC
//! code and a stable JSON code. Both fronts answer through [`ErrorCode`];
//! nothing else decides a status.

use feature_store::reader::ReadError;

use crate::auth::AuthError;
use crate::enrich::EnrichError;
use crate::infer::InferError;

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
    /// The request is malformed or does not fit the model's declarations.
    #[error("{0}")]
    InvalidArgument(String),
    /// Reading features failed.
    #[error("feature store: {0}")]
    FeatureStore(ReadError),
    /// The model-server call failed.
    #[error(transparent)]
    Model(#[from] InferError),
    /// The model answered something post-processing cannot use.
    #[error("model {model:?} answered an unexpected shape: {detail}")]
    BadModelAnswer {
        /// The model.
        model: String,
        /// What was wrong.
        detail: String,
    },
    /// Feedback names a prediction that is not in the log.
    #[error(
        "no prediction {prediction_id:?} in the prediction log; send the prediction_id returned by predict (records expire after the log's retention)"
    )]
    UnknownPrediction {
        /// The ID sent.
        prediction_id: String,
    },
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
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller asked for a model version the routing does not serve.
    #[error("{0}")]
    UnknownVersion(String),
    /// A routing change does not fit the current routing or its versions
    /// failed their model-server check.
    #[error("{0}")]
    RoutingRefused(String),
    /// Concurrent routing changes kept winning over this one.
    #[error("{0}")]
    RoutingConflict(String),
    /// The stored routing cannot be used.
    #[error("{0}")]
    RoutingDamaged(String),
}

impl From<crate::rollout::RouteError> for GatewayError {
    fn from(e: crate::rollout::RouteError) -> Self {
        match e {
            crate::rollout::RouteError::NotPilot { .. } => {
                GatewayError::PermissionDenied(e.to_string())
            }
            _ => GatewayError::UnknownVersion(e.to_string()),
        }
    }
}

impl From<crate::rollout::live::RolloutError> for GatewayError {
    fn from(e: crate::rollout::live::RolloutError) -> Self {
        use crate::rollout::live::RolloutError as R;
        match e {
            R::UnknownModel(model) => GatewayError::UnknownModel {
                model,
                known: "the models listed by GET /v1/admin/models".to_owned(),
            },
            R::Store(s) => GatewayError::FeatureStore(s.into()),
            R::Change(_) | R::VersionCheck(_) => GatewayError::RoutingRefused(e.to_string()),
            R::Conflict(_) => GatewayError::RoutingConflict(e.to_string()),
            other => GatewayError::RoutingDamaged(other.to_string()),
        }
    }
}

impl From<EnrichError> for GatewayError {
    fn from(e: EnrichError) -> Self {
        match e {
            EnrichError::Read(read) => match read {
                ReadError::Store(_) => GatewayError::FeatureStore(read),
                other => GatewayError::InvalidArgument(other.to_string()),
            },
            other => GatewayError::InvalidArgument(other.to_string()),
        }
    }
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
            GatewayError::UnknownTunerJob { .. } => (404, tonic::Code::NotFound, "unknown_job"),
            GatewayError::UnknownPrediction { .. } => {
                (404, tonic::Code::NotFound, "prediction_not_found")
            }
            GatewayError::InvalidArgument(_) => {
                (400, tonic::Code::InvalidArgument, "invalid_argument")
            }
            GatewayError::FeatureStore(e) => {
                if e.store_error().is_some_and(|s| s.is_transient()) {
                    (503, tonic::Code::Unavailable, "feature_store_unavailable")
                } else {
                    (500, tonic::Code::Internal, "feature_store_error")
                }
            }
            GatewayError::Model(InferError::Unavailable { .. }) => {
                (503, tonic::Code::Unavailable, "model_unavailable")
            }
            GatewayError::Model(InferError::DeadlineExceeded { .. })
            | GatewayError::DeadlineExceeded => {
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
            GatewayError::PermissionDenied(_) => {
                (403, tonic::Code::PermissionDenied, "permission_denied")
            }
            GatewayError::UnknownVersion(_) => (404, tonic::Code::NotFound, "unknown_version"),
            GatewayError::RoutingRefused(_) => {
                (400, tonic::Code::FailedPrecondition, "routing_refused")
            }
            GatewayError::RoutingConflict(_) => (409, tonic::Code::Aborted, "routing_conflict"),
            GatewayError::RoutingDamaged(_) => (500, tonic::Code::Internal, "routing_damaged"),
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
            GatewayError::PermissionDenied(_) => {
                Some("Bearer realm=\"mlgw\", error=\"insufficient_scope\"".to_owned())
            }
            _ => None,
        }
    }

    /// The gRPC status for this error.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.code().grpc, self.to_string())
    }
}
