//! The tower stack both fronts share, composed in one place
//! ([`GatewayLayer`]): a tracing span per request, load shedding in front of
//! a concurrency limit, and a request timeout.
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

/// How a front answers a request the stack refuses.
pub trait Reject<B>: Clone + Send + Sync + 'static {
    /// The response for `error` in this front's wire format.
    fn reject(&self, error: &GatewayError) -> Response<B>;
}

/// REST: the JSON error body with the error table's status.
#[derive(Debug, Clone, Copy)]
pub struct RestReject;

impl Reject<axum::body::Body> for RestReject {
    fn reject(&self, error: &GatewayError) -> Response<axum::body::Body> {
        let code = error.code();
        let body = serde_json::json!({"code": code.code, "message": error.to_string()});
        let mut response = Response::new(axum::body::Body::from(body.to_string()));
        *response.status_mut() = http::StatusCode::from_u16(code.http)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// gRPC: a trailers-only response with the error table's status code.
#[derive(Debug, Clone, Copy)]
pub struct GrpcReject;

impl Reject<tonic::body::Body> for GrpcReject {
    fn reject(&self, error: &GatewayError) -> Response<tonic::body::Body> {
        error.to_status().into_http()
    }
}

/// Called with (front, route) for each request the stack sheds or times out,
/// so `/metrics` counts it like any other answer.
pub type OnRefused = Arc<dyn Fn(&'static str, &'static str, &GatewayError) + Send + Sync>;

/// The shared stack. Clone it once per front.
#[derive(Clone)]
pub struct GatewayLayer<R> {
    limit: Arc<Semaphore>,
    timeout: Duration,
    front: &'static str,
    reject: R,
    on_refused: OnRefused,
}

impl<R> GatewayLayer<R> {
    /// A stack admitting at most the permits of `limit` at once, with
    /// requests cut at `timeout`.
    pub fn new(
        limit: Arc<Semaphore>,
        timeout: Duration,
        front: &'static str,
        reject: R,
        on_refused: OnRefused,
    ) -> Self {
        GatewayLayer {
            limit,
            timeout,
            front,
            reject,
            on_refused,
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

/// The route label of a request path, as `/metrics` shows it (None: exempt
/// from shedding).
pub fn route_of(path: &str) -> Option<&'static str> {
    if path.starts_with("/grpc.health.")
        || path.starts_with("/grpc.reflection.")
        || matches!(path, "/healthz" | "/readyz" | "/metrics" | "/openapi.json")
    {
        return None;
    }
    Some(match path {
        "/gateway.v1.PredictionService/Predict" => "predict",
        "/gateway.v1.PredictionService/PredictBatch" => "predict_batch",
        "/gateway.v1.FeatureService/PushFeatures" => "push",
        "/gateway.v1.FeedbackService/Feedback" | "/v1/feedback" => "feedback",
        p if p.starts_with("/v1/models/") && p.ends_with("/predict") => "predict",
        p if p.starts_with("/v1/models/") && p.ends_with("/predict-batch") => "predict_batch",
        p if p.starts_with("/v1/features/") => "push",
        p if p.starts_with("/v1/admin/") => "admin",
        _ => "other",
    })
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
        let Ok(permit) = Arc::clone(&layer.limit).try_acquire_owned() else {
            let error = GatewayError::Overloaded;
            (layer.on_refused)(layer.front, route, &error);
            let response = layer.reject.reject(&error);
            return Box::pin(async move { Ok(response) });
        };
        let span = tracing::info_span!("request", front = layer.front, route);
        // --- telemetry (issue 9): continue the caller's W3C trace (REST
        // headers and gRPC metadata alike); a no-op when export is off.
        telemetry::continue_trace(&span, request.headers());
        // --- end telemetry ---
        let call = inner.call(request);
        Box::pin(
            async move {
                let _permit = permit;
                match tokio::time::timeout(layer.timeout, call).await {
                    Ok(result) => result,
                    Err(_) => {
                        let error = GatewayError::DeadlineExceeded;
                        (layer.on_refused)(layer.front, route, &error);
                        Ok(layer.reject.reject(&error))
                    }
                }
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
        assert_eq!(route_of("/v1/models/fraud/predict"), Some("predict"));
        assert_eq!(
            route_of("/v1/models/fraud/predict-batch"),
            Some("predict_batch")
        );
        assert_eq!(route_of("/v1/features/clicks/push"), Some("push"));
        assert_eq!(route_of("/v1/feedback"), Some("feedback"));
        assert_eq!(route_of("/v1/admin/tuner/jobs/j"), Some("admin"));
        assert_eq!(
            route_of("/gateway.v1.PredictionService/Predict"),
            Some("predict")
        );
        assert_eq!(route_of("/nope"), Some("other"));
    }
}
