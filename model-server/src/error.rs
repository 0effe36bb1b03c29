//! Errors an inference, metadata or repository call can end with, and the one table that maps each to its
//! HTTP status, gRPC code and stable error code. Both fronts use it; nothing else
//! decides a status.

/// Why an inference, metadata or repository call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InferError {
    /// No model of that name is in the repository.
    #[error("unknown model \"{model}\"; this server has {available}")]
    ModelNotFound {
        /// The name asked for.
        model: String,
        /// The models served, for the message.
        available: String,
    },
    /// The model exists but not that version.
    #[error("model \"{model}\" has no version \"{version}\"; available versions: {available}")]
    VersionNotFound {
        /// The model.
        model: String,
        /// The version asked for.
        version: String,
        /// The versions served, for the message.
        available: String,
    },
    /// The version is still loading or warming up, or failed to load.
    #[error("model \"{model}\" version {version} is not ready ({reason}); check /v2/health/ready")]
    ModelNotReady {
        /// The model.
        model: String,
        /// The version.
        version: String,
        /// "loading" or the load error.
        reason: String,
    },
    /// The request does not fit the model; the message names the tensor and
    /// what was expected.
    #[error("{0}")]
    InvalidInput(String),
    /// The version's queue is full; the caller should back off and retry.
    #[error(
        "model \"{model}\" version {version} is overloaded: {capacity} requests already queued; retry with backoff"
    )]
    QueueFull {
        /// The model.
        model: String,
        /// The version.
        version: String,
        /// The queue bound.
        capacity: usize,
    },
    /// The caller's deadline passed before the answer was ready.
    #[error("deadline exceeded after {waited_ms} ms while the request waited for inference")]
    DeadlineExceeded {
        /// How long the request had waited.
        waited_ms: u64,
    },
    /// The model failed while running; the input was accepted.
    #[error("model \"{model}\" version {version} failed to run: {message}")]
    Inference {
        /// The model.
        model: String,
        /// The version.
        version: String,
        /// The runtime's error.
        message: String,
    },
    /// A repository load call could not load what the repository holds.
    #[error("cannot load model \"{model}\": {detail}; fix the model folder, then call load again")]
    LoadFailed {
        /// The model.
        model: String,
        /// What failed (versions and reasons, or the folder's problem).
        detail: String,
    },
    /// The server is shutting down and takes no new work.
    #[error("the server is shutting down; retry on another replica")]
    ShuttingDown,
}

/// Where an error goes on each wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireStatus {
    /// HTTP status code.
    pub http: u16,
    /// gRPC status code.
    pub grpc: tonic::Code,
    /// Stable machine-readable code, also at the start of gRPC messages.
    pub code: &'static str,
}

impl InferError {
    /// `ModelNotFound` for `model`, listing the `served` names.
    pub fn model_not_found<'a>(model: &str, served: impl Iterator<Item = &'a String>) -> Self {
        InferError::ModelNotFound {
            model: model.to_owned(),
            available: format!(
                "models: {}",
                served
                    .map(|k| format!("\"{k}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The one mapping of errors to wire statuses.
    pub fn wire(&self) -> WireStatus {
        let (http, grpc, code) = match self {
            InferError::ModelNotFound { .. } | InferError::VersionNotFound { .. } => {
                (404, tonic::Code::NotFound, "model_not_found")
            }
            InferError::ModelNotReady { .. } => (503, tonic::Code::Unavailable, "model_not_ready"),
            InferError::InvalidInput(_) => (400, tonic::Code::InvalidArgument, "invalid_input"),
            InferError::QueueFull { .. } => (429, tonic::Code::ResourceExhausted, "overloaded"),
            InferError::DeadlineExceeded { .. } => {
                (504, tonic::Code::DeadlineExceeded, "deadline_exceeded")
            }
            InferError::Inference { .. } => (500, tonic::Code::Internal, "inference_failed"),
            // The repository's content is at fault, not the server: a retry
            // without changing the folder fails the same way.
            InferError::LoadFailed { .. } => (422, tonic::Code::FailedPrecondition, "load_failed"),
            InferError::ShuttingDown => (503, tonic::Code::Unavailable, "shutting_down"),
        };
        WireStatus { http, grpc, code }
    }

    /// The gRPC status for this error: the matching code, the stable code first
    /// in the message.
    pub fn to_status(&self) -> tonic::Status {
        let wire = self.wire();
        tonic::Status::new(wire.grpc, format!("{}: {self}", wire.code))
    }
}

impl From<InferError> for tonic::Status {
    fn from(e: InferError) -> Self {
        e.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_table() {
        let nf = InferError::ModelNotFound {
            model: "x".into(),
            available: "fraud_detector".into(),
        };
        assert_eq!(nf.wire().http, 404);
        assert_eq!(nf.to_status().code(), tonic::Code::NotFound);
        assert!(
            nf.to_status()
                .message()
                .starts_with("model_not_found: unknown model \"x\"")
        );
        let full = InferError::QueueFull {
            model: "m".into(),
            version: "1".into(),
            capacity: 8,
        };
        assert_eq!(
            (full.wire().http, full.wire().grpc),
            (429, tonic::Code::ResourceExhausted)
        );
        assert_eq!(InferError::InvalidInput("bad".into()).wire().http, 400);
    }
}
