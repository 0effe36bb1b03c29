//! The gRPC front (tonic): `gateway.v1.PredictionService`, `FeatureService`
//! and `FeedbackService`. Handlers convert
//! protobuf to the core's types (no JSON on this path) and back.

use std::collections::HashMap;
use std::sync::Arc;

use feature_store::log::Outcome;
use feature_store::store::FullStore;
use proto::gateway::v1 as pb;
use proto::gateway::v1::prediction_service_server::PredictionService;
use tonic::{Request, Response, Status};

use crate::auth::{Access, Caller};
use crate::core::{FeedbackInput, PredictInput, Prediction, PushEvent, PushRow};
use crate::enrich::WireValue;
use crate::error::GatewayError;
use crate::server::Shared;

/// `PredictionService` over the shared core.
pub struct PredictionGrpc<S> {
    shared: Arc<Shared<S>>,
}

impl<S> PredictionGrpc<S> {
    /// Serves `shared`.
    pub fn new(shared: Arc<Shared<S>>) -> Self {
        PredictionGrpc { shared }
    }
}

fn wire(name: &str, v: &pb::FeatureValue) -> Result<WireValue, GatewayError> {
    use pb::feature_value::Kind;
    Ok(match &v.kind {
        Some(Kind::DoubleValue(d)) => WireValue::Double(*d),
        Some(Kind::Int64Value(i)) => WireValue::Int(*i),
        Some(Kind::BoolValue(b)) => WireValue::Bool(*b),
        Some(Kind::StringValue(s)) => WireValue::Text(s.clone()),
        None => {
            return Err(GatewayError::InvalidArgument(format!(
                "request_features.{name}: no value set"
            )));
        }
    })
}

/// A raw event field's value; None when no value is set.
fn event_field(v: &pb::FeatureValue) -> Option<WireValue> {
    use pb::feature_value::Kind;
    Some(match v.kind.as_ref()? {
        Kind::DoubleValue(d) => WireValue::Double(*d),
        Kind::Int64Value(i) => WireValue::Int(*i),
        Kind::BoolValue(b) => WireValue::Bool(*b),
        Kind::StringValue(s) => WireValue::Text(s.clone()),
    })
}

fn input(
    model: String,
    version: String,
    r: pb::PredictRequest,
    caller: Option<&Caller>,
) -> Result<PredictInput, GatewayError> {
    let mut request_features = HashMap::with_capacity(r.request_features.len());
    for (k, v) in &r.request_features {
        request_features.insert(k.clone(), wire(k, v)?);
    }
    Ok(PredictInput {
        model,
        model_version: version,
        keys: r.entity.map(|e| e.keys).unwrap_or_default(),
        request_features,
        subject: caller.map_or_else(|| crate::core::ANONYMOUS.to_owned(), |c| c.subject.clone()),
        groups: caller.map(|c| c.groups.clone()).unwrap_or_default(),
    })
}

/// The protobuf form of a prediction.
pub fn to_proto(p: Prediction) -> pb::PredictResponse {
    pb::PredictResponse {
        prediction_id: p.prediction_id,
        model: p.model,
        model_version: p.model_version,
        route: p.route.as_str().to_owned(),
        outputs: p
            .outputs
            .into_iter()
            .map(|o| pb::Output {
                name: o.name,
                label: o.label,
                score: o.score,
                top_k: o
                    .top_k
                    .into_iter()
                    .map(|(label, score)| pb::LabelScore { label, score })
                    .collect(),
                values: o.values,
            })
            .collect(),
        freshness: Some(pb::Freshness {
            view_age_ms: p
                .view_ages
                .into_iter()
                .map(|(v, age)| {
                    (
                        v,
                        age.map_or(-1, |a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX)),
                    )
                })
                .collect(),
            defaulted_features: p.defaulted,
        }),
    }
}

/// `FeatureService` (dynamic-feature pushes) over the shared core.
pub struct FeatureGrpc<S> {
    shared: Arc<Shared<S>>,
}

impl<S> FeatureGrpc<S> {
    /// Serves `shared`.
    pub fn new(shared: Arc<Shared<S>>) -> Self {
        FeatureGrpc { shared }
    }
}

#[tonic::async_trait]
impl<S: FullStore> proto::gateway::v1::feature_service_server::FeatureService for FeatureGrpc<S> {
    async fn push_features(
        &self,
        request: Request<pb::PushFeaturesRequest>,
    ) -> Result<Response<pb::PushFeaturesResponse>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        if let Err(e) = self.shared.authorize("grpc", caller.as_ref(), Access::Push) {
            self.shared.metrics.request("grpc", "push", e.code().code);
            return Err(e.to_status());
        }
        let r = request.into_inner();
        let mut rows = Vec::with_capacity(r.rows.len());
        for (i, row) in r.rows.into_iter().enumerate() {
            let mut values = HashMap::with_capacity(row.values.len());
            for (k, v) in &row.values {
                let w = wire(k, v).map_err(|e| {
                    GatewayError::InvalidArgument(format!("rows[{i}].values.{k}: {e}")).to_status()
                })?;
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
                let w = event_field(v).ok_or_else(|| {
                    GatewayError::InvalidArgument(format!("events[{i}].fields.{k}: no value set"))
                        .to_status()
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
        let started = std::time::Instant::now();
        let result = self.shared.gateway.push(&r.view, &rows, &events).await;
        self.shared
            .record_timed("grpc", "push", "-", started, &result);
        let written = result.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::PushFeaturesResponse {
            rows_written: written.rows,
            events_written: written.events,
        }))
    }
}

/// `FeedbackService` (ground truth for predictions) over the shared core.
pub struct FeedbackGrpc<S> {
    shared: Arc<Shared<S>>,
}

impl<S> FeedbackGrpc<S> {
    /// Serves `shared`.
    pub fn new(shared: Arc<Shared<S>>) -> Self {
        FeedbackGrpc { shared }
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
        let caller = request.extensions().get::<Caller>().cloned();
        if let Err(e) = self
            .shared
            .authorize("grpc", caller.as_ref(), Access::Feedback)
        {
            self.shared
                .metrics
                .request("grpc", "feedback", e.code().code);
            return Err(e.to_status());
        }
        let r = request.into_inner();
        let outcome = r.outcome.map(|o| match o {
            Wire::Label(l) => Outcome::Label(l),
            Wire::Value(v) => Outcome::Value(v),
        });
        let started = std::time::Instant::now();
        let result = self
            .shared
            .gateway
            .feedback(FeedbackInput {
                prediction_id: r.prediction_id,
                outcome,
                observed_at: event_time(r.observed_at_ms),
                subject: caller.map_or_else(|| crate::core::ANONYMOUS.to_owned(), |c| c.subject),
            })
            .await;
        self.shared
            .record_timed("grpc", "feedback", "-", started, &result);
        result.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::FeedbackResponse {}))
    }
}

fn authorize_predict<S: FullStore>(
    shared: &Shared<S>,
    caller: Option<&Caller>,
    input: &PredictInput,
) -> Result<(), GatewayError> {
    match caller {
        Some(caller) => crate::http::authorize_predict(shared, "grpc", caller, input),
        // Only reachable if the auth layer were not installed.
        None => Err(GatewayError::Unauthenticated(
            crate::auth::AuthError::Missing,
        )),
    }
}

/// Unix milliseconds to a time; 0 (or negative) means now.
pub fn event_time(ms: i64) -> Option<std::time::SystemTime> {
    u64::try_from(ms)
        .ok()
        .filter(|ms| *ms > 0)
        .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

#[tonic::async_trait]
impl<S: FullStore> PredictionService for PredictionGrpc<S> {
    async fn predict(
        &self,
        request: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let started = std::time::Instant::now();
        let deadline = proto::grpc_timeout(request.metadata());
        let caller = request.extensions().get::<Caller>().cloned();
        let mut r = request.into_inner();
        let (model, version) = (
            std::mem::take(&mut r.model),
            std::mem::take(&mut r.model_version),
        );
        let result = async {
            let input = input(model.clone(), version, r, caller.as_ref())?;
            authorize_predict(&self.shared, caller.as_ref(), &input)?;
            self.shared.gateway.predict(&input, deadline).await
        }
        .await;
        self.shared
            .record_timed("grpc", "predict", &model, started, &result);
        let p = result.map_err(|e| e.to_status())?;
        self.shared
            .metrics
            .prediction(started.elapsed(), p.model_time);
        Ok(Response::new(to_proto(p)))
    }

    async fn predict_batch(
        &self,
        request: Request<pb::PredictBatchRequest>,
    ) -> Result<Response<pb::PredictBatchResponse>, Status> {
        let started = std::time::Instant::now();
        let deadline = proto::grpc_timeout(request.metadata());
        let caller = request.extensions().get::<Caller>().cloned();
        let r = request.into_inner();
        let model = r.model.clone();
        let result = async {
            let limit = self.shared.max_batch_entities;
            if r.requests.len() > limit {
                return Err(GatewayError::InvalidArgument(format!(
                    "requests: {} entities, at most {limit} per call",
                    r.requests.len()
                )));
            }
            let mut inputs = Vec::with_capacity(r.requests.len());
            for (i, one) in r.requests.into_iter().enumerate() {
                let one = input(
                    r.model.clone(),
                    r.model_version.clone(),
                    one,
                    caller.as_ref(),
                )
                .map_err(|e| GatewayError::InvalidArgument(format!("requests[{i}].{e}")))?;
                inputs.push(one);
            }
            for one in &inputs {
                authorize_predict(&self.shared, caller.as_ref(), one)?;
            }
            self.shared.metrics.batch_entities(inputs.len());
            let gateway = &self.shared.gateway;
            let answers =
                futures_util::future::join_all(inputs.iter().map(|i| gateway.predict(i, deadline)))
                    .await;
            let mut responses = Vec::with_capacity(answers.len());
            for a in answers {
                responses.push(to_proto(a?));
            }
            Ok(responses)
        }
        .await;
        self.shared
            .record_timed("grpc", "predict_batch", &model, started, &result);
        let responses = result.map_err(|e| e.to_status())?;
        Ok(Response::new(pb::PredictBatchResponse { responses }))
    }
}
