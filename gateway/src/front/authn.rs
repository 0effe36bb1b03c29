//! Authentication as one layer per front: the gRPC tower layer and the REST
//! axum middleware both verify the `Authorization: Bearer` header (REST
//! also the console's session cookie, with its CSRF check), count
//! failures by reason, answer 401 / UNAUTHENTICATED (503 / UNAVAILABLE while
//! no signing key was ever loaded), and on success put the [`Caller`] into the
//! request's extensions and run the request inside a span naming its subject.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument as _;

use crate::auth::{Authenticator, Caller, session};
use crate::error::GatewayError;
use crate::metrics::Front;

fn span(caller: &Caller) -> tracing::Span {
    tracing::info_span!("request", caller = %caller.subject)
}

/// REST: axum middleware for the routes that need a caller. A request
/// without an `Authorization` header may bring the console's session
/// cookie instead.
pub async fn rest(State(auth): State<Authenticator>, mut req: Request, next: Next) -> Response {
    let headers = req.headers();
    let verdict = match session::token(headers) {
        Some(token) if !headers.contains_key(http::header::AUTHORIZATION) => {
            if let Err(e) = session::check(req.method(), headers, token) {
                auth.metrics.auth_failure(Front::Rest, "csrf");
                return GatewayError::Csrf(e).into_response();
            }
            auth.session(Front::Rest, token).await
        }
        _ => auth.caller(Front::Rest, headers).await,
    };
    match verdict {
        Ok(caller) => {
            let span = span(&caller);
            req.extensions_mut().insert(caller);
            next.run(req).instrument(span).await
        }
        Err(e) => GatewayError::Unauthenticated(e).into_response(),
    }
}

/// gRPC paths that stay open: health checks and reflection.
fn open_grpc_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// gRPC: a tower layer over the tonic router.
#[derive(Clone)]
pub struct GrpcAuthLayer {
    auth: Authenticator,
}

impl GrpcAuthLayer {
    /// The layer.
    pub fn new(auth: Authenticator) -> Self {
        GrpcAuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;
    fn layer(&self, inner: S) -> GrpcAuth<S> {
        GrpcAuth {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// The service [`GrpcAuthLayer`] makes.
#[derive(Clone)]
pub struct GrpcAuth<S> {
    inner: S,
    auth: Authenticator,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if open_grpc_path(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        // The ready service goes into the future; a clone stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            match auth.caller(Front::Grpc, req.headers()).await {
                Ok(caller) => {
                    let span = span(&caller);
                    req.extensions_mut().insert(caller);
                    inner.call(req).instrument(span).await
                }
                Err(e) => Ok(GatewayError::Unauthenticated(e).into_status().into_http()),
            }
        })
    }
}
