//! The tower stack both fronts share, composed in one place
//! ([`GatewayLayer`]): a tracing span per request, load shedding in front of
//! a concurrency limit, a request timeout, and the request metrics (front,
//! route, result code, latency by model) recorded once per request.
//!
//! Shedding: a request that finds every permit taken is answered at once
//! (429 / RESOURCE_EXHAUSTED `overloaded`) and never queued, so requests that
//! were admitted keep their latency. Health, readiness, metrics, the OpenAPI
//! document, gRPC health and reflection are exempt: probes must answer when
//! the gateway is busiest. The timeout is a safety net at the request budget
//! (the core also enforces it, with the caller's shorter gRPC deadline).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::sync::Semaphore;
use tower::{Layer, Service};
use tracing::Instrument as _;

use crate::error::GatewayError;
use crate::metrics::{Front, Metrics, ModelSlot, Route};

/// How a front answers a request the stack refuses.
pub trait Reject<B>: Clone + Send + Sync + 'static {
    /// The response for `error` in this front's wire format.
    fn reject(&self, error: GatewayError) -> Response<B>;
}

/// REST: the JSON error body with the error table's status.
#[derive(Debug, Clone, Copy)]
pub struct RestReject;

impl Reject<axum::body::Body> for RestReject {
    fn reject(&self, error: GatewayError) -> Response<axum::body::Body> {
        error.to_response()
    }
}

/// gRPC: a trailers-only response with the error table's status code.
#[derive(Debug, Clone, Copy)]
pub struct GrpcReject;

impl Reject<tonic::body::Body> for GrpcReject {
    fn reject(&self, error: GatewayError) -> Response<tonic::body::Body> {
        error.into_status().into_http()
    }
}

/// The shared stack. Clone it once per front.
#[derive(Clone)]
pub struct GatewayLayer<R> {
    limit: Arc<Semaphore>,
    timeout: Duration,
    front: Front,
    reject: R,
    metrics: Arc<Metrics>,
}

impl<R> GatewayLayer<R> {
    /// A stack admitting at most the permits of `limit` at once, with
    /// requests cut at `timeout`, each counted and timed in `metrics`.
    pub fn new(
        limit: Arc<Semaphore>,
        timeout: Duration,
        front: Front,
        reject: R,
        metrics: Arc<Metrics>,
    ) -> Self {
        GatewayLayer {
            limit,
            timeout,
            front,
            reject,
            metrics,
        }
    }
}

impl<S, R: Clone> Layer<S> for GatewayLayer<R> {
    type Service = GatewayService<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        GatewayService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`GatewayLayer`] wraps around a front.
#[derive(Clone)]
pub struct GatewayService<S, R> {
    inner: S,
    layer: GatewayLayer<R>,
}

/// The route of a request path, as `/metrics` shows it (None: exempt from
/// shedding and not counted).
pub fn route_of(path: &str) -> Option<Route> {
    if path.starts_with("/grpc.health.")
        || path.starts_with("/grpc.reflection.")
        || matches!(path, "/healthz" | "/readyz" | "/metrics" | "/openapi.json")
    {
        return None;
    }
    Some(match path {
        "/gateway.v1.PredictionService/Predict" => Route::Predict,
        "/gateway.v1.PredictionService/PredictBatch" => Route::PredictBatch,
        "/gateway.v1.PredictionService/PredictAsync" => Route::PredictAsync,
        "/gateway.v1.PredictionService/GetPrediction" => Route::Poll,
        "/gateway.v1.FeatureService/PushFeatures" => Route::Push,
        "/gateway.v1.FeedbackService/Feedback" | "/v1/feedback" => Route::Feedback,
        p if p.starts_with("/v1/models/") && p.ends_with("/predict") => Route::Predict,
        p if p.starts_with("/v1/models/") && p.ends_with("/predict-batch") => Route::PredictBatch,
        p if p.starts_with("/v1/models/") && p.ends_with("/predict-async") => Route::PredictAsync,
        p if p.starts_with("/v1/predictions/") => Route::Poll,
        p if p.starts_with("/v1/features/") => Route::Push,
        "/gateway.v1.SimilarityService/Similar" => Route::Similar,
        p if p.starts_with("/v1/similar/") => Route::Similar,
        p if p.starts_with("/v1/admin/")
            || p.starts_with("/gateway.v1.RoutingAdminService/")
            || p.starts_with("/gateway.v1.TunerAdminService/") =>
        {
            Route::Admin
        }
        _ => Route::Other,
    })
}

/// The result code of an answer: the error table's code for an error made
/// by [`GatewayError`], `ok` for a success, None for anything else (an
/// unknown path or method answered by the framework: not counted).
fn code_of<B>(response: &Response<B>) -> Option<&'static str> {
    if let Some(code) = GatewayError::code_of_response(response) {
        return Some(code.code);
    }
    let framework_error =
        response.extensions().get::<tonic::Status>().is_some() || !response.status().is_success();
    (!framework_error).then_some("ok")
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqB, ResB, R> Service<Request<ReqB>> for GatewayService<S, R>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Send + 'static,
    R: Reject<ResB>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(route) = route_of(request.uri().path()) else {
            return Box::pin(inner.call(request));
        };
        let layer = self.layer.clone();
        let started = std::time::Instant::now();
        let Ok(permit) = Arc::clone(&layer.limit).try_acquire_owned() else {
            let error = GatewayError::Overloaded;
            layer.metrics.request(
                layer.front,
                route,
                error.code().code,
                ModelSlot::NONE,
                started.elapsed(),
            );
            let response = layer.reject.reject(error);
            return Box::pin(async move { Ok(response) });
        };
        let span = tracing::info_span!(
            "request",
            front = layer.front.as_str(),
            route = route.as_str()
        );
        // Continue the caller's W3C trace (REST headers and gRPC metadata
        // alike); a no-op when export is off.
        telemetry::continue_trace(&span, request.headers());
        let call = inner.call(request);
        Box::pin(
            async move {
                let _permit = permit;
                let (answer, model) =
                    crate::metrics::observe(tokio::time::timeout(layer.timeout, call)).await;
                let response = match answer {
                    Ok(Ok(response)) => response,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => layer.reject.reject(GatewayError::DeadlineExceeded),
                };
                if let Some(code) = code_of(&response) {
                    layer
                        .metrics
                        .request(layer.front, route, code, model, started.elapsed());
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_exempt_and_api_paths_have_their_route() {
        for exempt in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(route_of(exempt), None, "{exempt}");
        }
        assert_eq!(route_of("/v1/models/fraud/predict"), Some(Route::Predict));
        assert_eq!(
            route_of("/v1/models/fraud/predict-batch"),
            Some(Route::PredictBatch)
        );
        assert_eq!(route_of("/v1/features/clicks/push"), Some(Route::Push));
        assert_eq!(route_of("/v1/similar/merchants"), Some(Route::Similar));
        assert_eq!(route_of("/v1/feedback"), Some(Route::Feedback));
        assert_eq!(route_of("/v1/admin/tuner/jobs/j"), Some(Route::Admin));
        assert_eq!(
            route_of("/gateway.v1.RoutingAdminService/ListRouting"),
            Some(Route::Admin)
        );
        assert_eq!(
            route_of("/gateway.v1.PredictionService/Predict"),
            Some(Route::Predict)
        );
        assert_eq!(route_of("/nope"), Some(Route::Other));
    }
}
