//! The gRPC front (tonic): `gateway.v1.PredictionService`, `FeatureService`,
//! `FeedbackService` and `SimilarityService`. Each handler converts protobuf to the prediction
//! path's types (no JSON on this path), runs the one auth check of its API
//! kind and calls one function of the prediction path.

use std::collections::HashMap;
use std::sync::Arc;

use feature_store::log::Outcome;
use feature_store::store::FullStore;
use proto::gateway::v1 as pb;
use proto::gateway::v1::prediction_service_server::PredictionService;
use tonic::{Request, Response, Status};

use super::wire::{self, event_time};
use crate::auth::Caller;
use crate::error::GatewayError;
use crate::metrics::Front;
use crate::serve::{FeedbackInput, PredictInput, Prediction, PushEvent, PushRow};
use crate::similar::{QueryBy, SimilarQuery};
use crate::state::AppState;

/// The caller the authentication layer found.
///
/// # Errors
/// [`GatewayError::Unauthenticated`] when there is none.
pub fn caller(extensions: &http::Extensions) -> Result<&Caller, GatewayError> {
    Ok(Caller::of(extensions)?)
}

/// `PredictionService` over the prediction path.
pub struct PredictionGrpc<S> {
    state: Arc<AppState<S>>,
}

impl<S> PredictionGrpc<S> {
    /// Serves `state`.
    pub fn new(state: Arc<AppState<S>>) -> Self {
        PredictionGrpc { state }
    }
}

fn input(
    model: String,
    version: String,
    r: pb::PredictRequest,
    caller: &Caller,
) -> Result<PredictInput, GatewayError> {
    let mut request_features = HashMap::with_capacity(r.request_features.len());
    for (k, v) in &r.request_features {
        request_features.insert(k.clone(), wire::proto_feature(k, v)?);
    }
    Ok(PredictInput {
        model,
        model_version: version,
        keys: r.entity.map(|e| e.keys).unwrap_or_default(),
        request_features,
        subject: caller.subject.clone(),
        groups: caller.groups.clone(),
    })
}

fn batch_input(
    r: pb::PredictBatchRequest,
    caller: &Caller,
    limit: usize,
) -> Result<Vec<PredictInput>, GatewayError> {
    if r.requests.len() > limit {
        return Err(GatewayError::InvalidArgument(format!(
            "requests: {} entities, at most {limit} per call",
            r.requests.len()
        )));
    }
    let mut inputs = Vec::with_capacity(r.requests.len());
    for (i, one) in r.requests.into_iter().enumerate() {
        let one = input(r.model.clone(), r.model_version.clone(), one, caller)
            .map_err(|e| GatewayError::InvalidArgument(format!("requests[{i}].{e}")))?;
        inputs.push(one);
    }
    Ok(inputs)
}

#[tonic::async_trait]
impl<S: FullStore> PredictionService for PredictionGrpc<S> {
    async fn predict(
        &self,
        request: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let deadline = proto::grpc_timeout(request.metadata());
        let (_, extensions, mut r) = request.into_parts();
        let result = async {
            let caller = caller(&extensions)?;
            let (model, version) = (
                std::mem::take(&mut r.model),
                std::mem::take(&mut r.model_version),
            );
            let input = input(model, version, r, caller)?;
            self.state
                .core
                .predict(Front::Grpc, caller, &input, deadline)
                .await
        }
        .await;
        let p = result.map_err(GatewayError::into_status)?;
        Ok(Response::new(p.into_proto()))
    }

    async fn predict_batch(
        &self,
        request: Request<pb::PredictBatchRequest>,
    ) -> Result<Response<pb::PredictBatchResponse>, Status> {
        let deadline = proto::grpc_timeout(request.metadata());
        let (_, extensions, r) = request.into_parts();
        let result = async {
            let caller = caller(&extensions)?;
            let inputs = batch_input(r, caller, self.state.core.max_batch_entities())?;
            self.state
                .core
                .predict_batch(Front::Grpc, caller, &inputs, deadline)
                .await
        }
        .await;
        let answers = result.map_err(GatewayError::into_status)?;
        Ok(Response::new(pb::PredictBatchResponse {
            responses: answers.into_iter().map(Prediction::into_proto).collect(),
        }))
    }

    async fn predict_async(
        &self,
        request: Request<pb::PredictAsyncRequest>,
    ) -> Result<Response<pb::PredictAsyncResponse>, Status> {
        let (_, extensions, r) = request.into_parts();
        let result = async {
            let caller = caller(&extensions)?;
            let queue = self.state.queue()?;
            let mut inner = r.request.ok_or_else(|| {
                GatewayError::InvalidArgument("request: the prediction request is missing".into())
            })?;
            let (model, version) = (
                std::mem::take(&mut inner.model),
                std::mem::take(&mut inner.model_version),
            );
            let input = input(model, version, inner, caller)?;
            let deadline = match u64::try_from(r.deadline_ms) {
                Ok(0) => None,
                Ok(ms) => Some(std::time::Duration::from_millis(ms)),
                Err(_) => {
                    return Err(GatewayError::InvalidArgument(
                        "deadline_ms: must not be negative".into(),
                    ));
                }
            };
            let key = (!r.idempotency_key.is_empty()).then_some(r.idempotency_key.as_str());
            queue
                .submit(&self.state.core, Front::Grpc, caller, input, key, deadline)
                .await
        }
        .await;
        let accepted = result.map_err(GatewayError::into_status)?;
        Ok(Response::new(pb::PredictAsyncResponse {
            id: accepted.id,
            duplicate: accepted.duplicate,
        }))
    }

    async fn get_prediction(
        &self,
        request: Request<pb::GetPredictionRequest>,
    ) -> Result<Response<pb::AsyncPrediction>, Status> {
        let (_, extensions, r) = request.into_parts();
        let result = async {
            let caller = caller(&extensions)?;
            let queue = self.state.queue()?;
            queue
                .poll(caller, || self.state.authz.is_admin(caller), &r.id)
                .await
        }
        .await;
        Ok(Response::new(result.map_err(GatewayError::into_status)?))
    }
}

/// `FeatureService` (dynamic-feature pushes) over the prediction path.
pub struct FeatureGrpc<S> {
    state: Arc<AppState<S>>,
}

impl<S> FeatureGrpc<S> {
    /// Serves `state`.
    pub fn new(state: Arc<AppState<S>>) -> Self {
        FeatureGrpc { state }
    }
}

fn push_input(
    r: pb::PushFeaturesRequest,
) -> Result<(String, Vec<PushRow>, Vec<PushEvent>), GatewayError> {
    let mut rows = Vec::with_capacity(r.rows.len());
    for (i, row) in r.rows.into_iter().enumerate() {
        let mut values = HashMap::with_capacity(row.values.len());
        for (k, v) in &row.values {
            let w = wire::proto_feature(k, v)
                .map_err(|e| GatewayError::InvalidArgument(format!("rows[{i}].values.{k}: {e}")))?;
            values.insert(k.clone(), w);
        }
        rows.push(PushRow {
            keys: row.entity.map(|e| e.keys).unwrap_or_default(),
            values,
            event_time: event_time(row.event_time_ms),
        });
    }
    let mut events = Vec::with_capacity(r.events.len());
    for (i, e) in r.events.into_iter().enumerate() {
        let mut fields = HashMap::with_capacity(e.fields.len());
        for (k, v) in &e.fields {
            let w = wire::proto_value(v).ok_or_else(|| {
                GatewayError::InvalidArgument(format!("events[{i}].fields.{k}: no value set"))
            })?;
            fields.insert(k.clone(), w);
        }
        events.push(PushEvent {
            keys: e.entity.map(|e| e.keys).unwrap_or_default(),
            event_id: e.event_id,
            fields,
            event_time: event_time(e.event_time_ms),
        });
    }
    Ok((r.view, rows, events))
}

#[tonic::async_trait]
impl<S: FullStore> proto::gateway::v1::feature_service_server::FeatureService for FeatureGrpc<S> {
    async fn push_features(
        &self,
        request: Request<pb::PushFeaturesRequest>,
    ) -> Result<Response<pb::PushFeaturesResponse>, Status> {
        let (_, extensions, r) = request.into_parts();
        let result = async {
            self.state.authz.push(Front::Grpc, caller(&extensions)?)?;
            let (view, rows, events) = push_input(r)?;
            self.state.core.push(&view, &rows, &events).await
        }
        .await;
        let written = result.map_err(GatewayError::into_status)?;
        Ok(Response::new(pb::PushFeaturesResponse {
            rows_written: written.rows,
            events_written: written.events,
        }))
    }
}

/// `FeedbackService` (ground truth for predictions) over the prediction path.
pub struct FeedbackGrpc<S> {
    state: Arc<AppState<S>>,
}

impl<S> FeedbackGrpc<S> {
    /// Serves `state`.
    pub fn new(state: Arc<AppState<S>>) -> Self {
        FeedbackGrpc { state }
    }
}

#[tonic::async_trait]
impl<S: FullStore> proto::gateway::v1::feedback_service_server::FeedbackService
    for FeedbackGrpc<S>
{
    async fn feedback(
        &self,
        request: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        use pb::feedback_request::Outcome as Wire;
        let (_, extensions, r) = request.into_parts();
        let result = async {
            let caller = caller(&extensions)?;
            self.state.authz.feedback(Front::Grpc, caller)?;
            let outcome = r.outcome.map(|o| match o {
                Wire::Label(l) => Outcome::Label(l),
                Wire::Value(v) => Outcome::Value(v),
            });
            self.state
                .core
                .feedback(FeedbackInput {
                    prediction_id: r.prediction_id,
                    outcome,
                    observed_at: event_time(r.observed_at_ms),
                    subject: caller.subject.clone(),
                })
                .await
        }
        .await;
        result.map_err(GatewayError::into_status)?;
        Ok(Response::new(pb::FeedbackResponse {}))
    }
}

/// `SimilarityService` over the view indexes.
pub struct SimilarityGrpc<S> {
    state: Arc<AppState<S>>,
}

impl<S> SimilarityGrpc<S> {
    /// Serves `state`.
    pub fn new(state: Arc<AppState<S>>) -> Self {
        SimilarityGrpc { state }
    }
}

#[tonic::async_trait]
impl<S: FullStore> proto::gateway::v1::similarity_service_server::SimilarityService
    for SimilarityGrpc<S>
{
    async fn similar(
        &self,
        request: Request<pb::SimilarRequest>,
    ) -> Result<Response<pb::SimilarResponse>, Status> {
        use pb::similar_request::Query;
        let (_, extensions, r) = request.into_parts();
        let result = (|| {
            let caller = caller(&extensions)?;
            self.state.authz.similar(Front::Grpc, caller)?;
            let by = match r.query {
                Some(Query::Entity(e)) => QueryBy::Entity(e.keys.into_iter().collect()),
                Some(Query::Vector(v)) => QueryBy::Vector(v.values),
                None => {
                    return Err(GatewayError::InvalidArgument(
                        "give either `entity` or `vector`".to_owned(),
                    ));
                }
            };
            let k = if r.k == 0 { 10 } else { r.k as usize };
            self.state.similar.query(
                &r.view,
                &SimilarQuery {
                    by,
                    k,
                    include_query: r.include_query,
                },
            )
        })();
        let answer = result.map_err(GatewayError::into_status)?;
        Ok(Response::new(pb::SimilarResponse {
            view: answer.view,
            batch_id: answer.batch_id,
            index_id: answer.index_id,
            index_age_s: answer.age.as_secs_f64(),
            distance: answer.distance.to_owned(),
            neighbours: answer
                .neighbours
                .into_iter()
                .map(|n| pb::Neighbour {
                    entity: n.entity,
                    distance: n.distance,
                })
                .collect(),
        }))
    }
}
