//! Start-up checks and readiness: every version the routing serves is
//! checked against its model-server's metadata at start and before a
//! routing change brings it in; readiness asks each serving version.

use std::time::Duration;

use feature_store::store::FullStore;

use super::{Core, Route};

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A configured model is not in the definitions file.
    #[error("model {model:?} is configured but {definitions} declares no [[model]] of that name")]
    ModelNotDefined {
        /// The model.
        model: String,
        /// The definitions file.
        definitions: String,
    },
    /// A model to answer from the prediction store has no scoring job.
    #[error(
        "model {model:?} has precomputed = \"{mode}\" but {definitions} declares no [[scoring_job]] for it; declare one or set precomputed = \"off\""
    )]
    NoScoringJob {
        /// The model.
        model: String,
        /// The mode asked for.
        mode: &'static str,
        /// The definitions file.
        definitions: String,
    },
    /// The model-server's metadata does not match what the gateway assembles.
    #[error("model {model:?} on {endpoint}: {detail}")]
    Mismatch {
        /// The model.
        model: String,
        /// The endpoint.
        endpoint: String,
        /// What differs.
        detail: String,
    },
    /// The downstream publisher could not be made.
    #[error(transparent)]
    Publish(#[from] crate::publish::PublishError),
    /// The model-server could not be asked.
    #[error(transparent)]
    Model(#[from] crate::model::infer::InferError),
    /// The stored routing could not be read or stored.
    #[error("routing: {0}")]
    Routing(#[from] crate::rollout::live::RolloutError),
}

/// Why versions a routing change brings in cannot serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VersionCheckError {
    /// The model is not configured here.
    #[error("model {0:?} is not configured")]
    UnknownModel(String),
    /// A version failed its check.
    #[error("version '{version}' cannot serve: {source}")]
    CannotServe {
        /// The version.
        version: String,
        /// What failed.
        #[source]
        source: StartError,
    },
}

impl<S: FullStore> Core<S> {
    /// Checks every version the routing serves (stable, canary, pilots)
    /// against its model-server's metadata: the input tensor's name, FP32
    /// datatype and width, and the scores output. A shadow version that
    /// fails is only logged: it never answers a caller.
    ///
    /// # Errors
    /// [`StartError::Mismatch`] saying exactly what differs, or the call's
    /// error.
    pub async fn check_models(&self, deadline: Duration) -> Result<(), StartError> {
        for route in self.routes.values() {
            let Some(served) = self.routing.current(&route.config.name) else {
                continue;
            };
            for version in served.table.serving_versions() {
                Self::check_version(route, version, deadline).await?;
            }
            for version in &served.table.shadows {
                if let Err(e) = Self::check_version(route, version, deadline).await {
                    tracing::warn!(model = %route.config.name, version = %version, "shadow version failed its check (its copies will fail and be counted): {e}");
                }
            }
        }
        Ok(())
    }

    /// Checks `versions` of `model` on their model-servers before a routing
    /// change brings them into service.
    ///
    /// # Errors
    /// [`VersionCheckError`] saying what differs or why the model-server
    /// could not say.
    pub async fn check_versions(
        &self,
        model: &str,
        versions: &[String],
        deadline: Duration,
    ) -> Result<(), VersionCheckError> {
        let route = self
            .routes
            .get(model)
            .ok_or_else(|| VersionCheckError::UnknownModel(model.to_owned()))?;
        for v in versions {
            Self::check_version(route, v, deadline)
                .await
                .map_err(|source| VersionCheckError::CannotServe {
                    version: v.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    async fn check_version(
        route: &Route,
        version: &str,
        deadline: Duration,
    ) -> Result<(), StartError> {
        let m = &route.config;
        let endpoint = m.endpoint_of(version);
        let client = route.client(version).map_err(|e| StartError::Mismatch {
            model: m.name.clone(),
            endpoint: endpoint.to_owned(),
            detail: e.to_string(),
        })?;
        let meta = client.client().metadata(&m.name, version, deadline).await?;
        let mismatch = |detail: String| StartError::Mismatch {
            model: m.name.clone(),
            endpoint: endpoint.to_owned(),
            detail: if version.is_empty() {
                detail
            } else {
                format!("version {version}: {detail}")
            },
        };
        let input = route.features.input();
        let Some(t) = meta.inputs.iter().find(|t| t.name == input.name()) else {
            let names: Vec<&str> = meta.inputs.iter().map(|t| t.name.as_str()).collect();
            return Err(mismatch(format!(
                "the definitions build input {:?}, the server's inputs are {names:?}",
                input.name()
            )));
        };
        if t.datatype != input.dtype().as_str() {
            return Err(mismatch(format!(
                "input {:?} is {} on the server, the definitions build {}",
                t.name,
                t.datatype,
                input.dtype()
            )));
        }
        let width = input.width() as i64;
        if t.shape.len() != 2 || t.shape[1] != width {
            return Err(mismatch(format!(
                "input {:?} has shape {:?} on the server, the definitions build [batch, {width}]",
                t.name, t.shape
            )));
        }
        let coalesce = m.coalesce;
        if coalesce.max_in_flight > 0 && coalesce.max_rows > 1 && t.shape[0] != -1 {
            return Err(mismatch(format!(
                "input {:?} has a fixed batch size ({}) on the server, so predictions cannot be sent together; set [model.coalesce] max_rows = 1 (or max_in_flight = 0)",
                t.name, t.shape[0]
            )));
        }
        let scores = &m.postprocess.scores_output;
        if !meta.outputs.iter().any(|o| &o.name == scores) {
            let names: Vec<&str> = meta.outputs.iter().map(|o| o.name.as_str()).collect();
            return Err(mismatch(format!(
                "postprocess.scores_output {scores:?} is not an output; the server's outputs are {names:?}"
            )));
        }
        Ok(())
    }

    /// Whether every version that answers callers is ready on its
    /// model-server (shadows do not count).
    pub async fn models_ready(&self, deadline: Duration) -> bool {
        for route in self.routes.values() {
            let Some(served) = self.routing.current(&route.config.name) else {
                return false;
            };
            for version in served.table.serving_versions() {
                let Ok(client) = route.client(version) else {
                    return false;
                };
                if !client
                    .client()
                    .ready(&route.config.name, version, deadline)
                    .await
                {
                    return false;
                }
            }
        }
        true
    }
}
