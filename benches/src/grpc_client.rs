//! gRPC clients of the benchmarks: a few shared HTTP/2 [`channels`] (as a
//! client pool would use), the [`Bearer`] token on every gateway call, and
//! the client types for the gateway ([`GatewayClient`]) and for a V2
//! inference server ([`DirectClient`]: our model-server, or any other
//! server speaking `inference.GRPCInferenceService`, e.g. MLServer).

use anyhow::{Context, Result};
use gateway::model::h2conn::Target;
use hyper_util::rt::TokioIo;
use proto::gateway::v1::prediction_service_client::PredictionServiceClient;
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use tokio::net::UnixStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Uri};

/// The gateway's `PredictionService` with the bearer token.
pub type GatewayClient = PredictionServiceClient<InterceptedService<Channel, Bearer>>;
/// A V2 inference server's `GRPCInferenceService`.
pub type DirectClient = GrpcInferenceServiceClient<Channel>;

/// Adds `authorization: Bearer <token>` to every gateway call: the token
/// comes from MLGW_BENCH_TOKEN, or the dev token the gateway prints at start
/// (the benches run it with the dev issuer, like the demo); none: no header.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// From MLGW_BENCH_TOKEN, else the `dev token …` line of the gateway's
    /// start-up output.
    ///
    /// # Errors
    /// When the token is not valid header text.
    pub fn new(gateway_banner: &[String]) -> Result<Self> {
        let token = std::env::var("MLGW_BENCH_TOKEN").ok().or_else(|| {
            gateway_banner
                .iter()
                .find(|l| l.starts_with("dev token"))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        });
        token
            .map(|t| {
                MetadataValue::try_from(format!("Bearer {t}"))
                    .context("the bearer token is not valid header text")
            })
            .transpose()
            .map(Bearer)
    }

    /// `Bearer <token>` on every call.
    ///
    /// # Errors
    /// When the token is not valid header text.
    pub fn token(token: &str) -> Result<Self> {
        MetadataValue::try_from(format!("Bearer {token}"))
            .context("the bearer token is not valid header text")
            .map(|v| Bearer(Some(v)))
    }

    /// No header: the caller sets `authorization` on each request itself.
    pub fn none() -> Self {
        Bearer(None)
    }

    /// The token as text (for REST calls), if any.
    pub fn header(&self) -> Option<&str> {
        self.0.as_ref().and_then(|v| v.to_str().ok())
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// `count` connected HTTP/2 channels to `url`: `http://host:port` (TCP,
/// with TCP_NODELAY) or `unix:/abs/path` (a Unix-domain socket, as a
/// sidecar's caller would use; the model-server's `--grpc-socket`).
///
/// # Errors
/// When `url` is not a URI or does not accept a connection.
pub async fn channels(url: &str, count: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        // The gateway's own endpoint parser: the same spellings it accepts.
        let channel = match gateway::model::infer::parse_endpoint(url) {
            Ok((Target::Unix(path), _)) => {
                // The URI only names the HTTP/2 authority; the connector
                // ignores it and dials the socket.
                Endpoint::from_static("http://localhost")
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                        }
                    }))
                    .await
            }
            _ => {
                Channel::from_shared(url.to_owned())?
                    .tcp_nodelay(true)
                    .connect()
                    .await
            }
        };
        out.push(channel.with_context(|| format!("cannot connect to {url}"))?);
    }
    Ok(out)
}

/// Gateway clients over `channels`, each with `bearer`.
pub fn gateway_clients(channels: &[Channel], bearer: &Bearer) -> Vec<GatewayClient> {
    channels
        .iter()
        .map(|c| PredictionServiceClient::with_interceptor(c.clone(), bearer.clone()))
        .collect()
}

/// V2 inference clients over `channels`.
pub fn direct_clients(channels: &[Channel]) -> Vec<DirectClient> {
    channels
        .iter()
        .cloned()
        .map(GrpcInferenceServiceClient::new)
        .collect()
}
