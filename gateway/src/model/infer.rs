//! The model-server client: the Open Inference Protocol (KServe V2) over gRPC,
//! so it works against this project's model-server and, unchanged, against
//! Triton or MLServer.
//!
//! Calls are spread over a few HTTP/2 connections per endpoint ([`CONNECTIONS`],
//! each a [`Connection`] that calls start on directly). Every call carries a deadline (the caller's, capped by the
//! model's configured timeout). Calls are never retried: an inference that
//! timed out may have run. A circuit breaker opens after consecutive
//! connection failures or timeouts and fails calls at once until a cool-down
//! has passed, when one probe call is let through.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::inference as pb;
use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

use super::h2conn::{ConnError, ConnSettings, Connection, Target};

/// Why an inference call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum InferError {
    /// The endpoint is not one a client can be made for.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The model-server cannot be reached, or the breaker is open.
    #[error("model-server {endpoint} unavailable: {detail}")]
    Unavailable {
        /// The endpoint.
        endpoint: String,
        /// What happened.
        detail: String,
    },
    /// The call did not finish within its deadline.
    #[error("model-server {endpoint} did not answer within {deadline:?}")]
    DeadlineExceeded {
        /// The endpoint.
        endpoint: String,
        /// The deadline used.
        deadline: Duration,
    },
    /// The model-server is overloaded (its queue is full).
    #[error("model-server {endpoint} is overloaded: {detail}")]
    Overloaded {
        /// The endpoint.
        endpoint: String,
        /// Its message.
        detail: String,
    },
    /// The model-server refused the call's input (INVALID_ARGUMENT): nothing
    /// ran, so the rows may be sent again (e.g. in smaller calls).
    #[error("model-server {endpoint} refused the call: {detail}")]
    Refused {
        /// The endpoint.
        endpoint: String,
        /// Its message.
        detail: String,
    },
    /// The model-server failed the call or answered something unusable.
    #[error("model-server {endpoint} failed the call: {detail}")]
    Failed {
        /// The endpoint.
        endpoint: String,
        /// What happened.
        detail: String,
    },
}

/// What the config or the caller should write instead.
const ENDPOINT_SPELLINGS: &str = "write http://host:port of the model-server's gRPC port, or unix:/path/to/socket for one on this host";

/// A model-server endpoint that cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EndpointError {
    /// `unix:` without a path.
    #[error("{0:?} names no socket path; {ENDPOINT_SPELLINGS}")]
    NoSocketPath(String),
    /// A relative socket path.
    #[error("{0:?}: the socket path must be absolute (unix:/run/mlgw/model.sock)")]
    RelativeSocket(String),
    /// Not a URI.
    #[error("{0:?} is not a URL ({1}); {ENDPOINT_SPELLINGS}")]
    NotUrl(String, Arc<http::uri::InvalidUri>),
    /// A scheme other than `http`.
    #[error("{0:?}: only plaintext HTTP/2 is spoken; {ENDPOINT_SPELLINGS}")]
    NotHttp(String),
    /// No host.
    #[error("{0:?} names no host; {ENDPOINT_SPELLINGS}")]
    NoHost(String),
}

/// One output tensor as f64 values.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    /// Output name.
    pub name: String,
    /// Shape as returned.
    pub shape: Vec<i64>,
    /// Values, row-major.
    pub values: Vec<f64>,
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct InferOutputs {
    /// The version that answered.
    pub model_version: String,
    /// The outputs.
    pub outputs: Vec<OutputTensor>,
    /// Time spent in the call.
    pub elapsed: Duration,
}

#[derive(Debug)]
struct BreakerState {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    /// A half-open probe is out (let through after the cool-down).
    probing: bool,
    /// Times the breaker opened since start.
    opens: u64,
}

/// Where a client's circuit breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls fail at once until the cool-down has passed.
    Open,
    /// The cool-down has passed: one probe call decides.
    HalfOpen,
}

impl CircuitState {
    /// The gauge value exported at `/metrics` (0 closed, 1 open, 2 half-open).
    pub fn gauge(self) -> u8 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

/// Breaker settings.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub failures_to_open: u32,
    /// How long it stays open before one probe goes through.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures_to_open: 5,
            cool_down: Duration::from_secs(2),
        }
    }
}

/// A V2 gRPC client for one model-server endpoint.
pub struct ModelClient {
    endpoint: String,
    /// [`CONNECTIONS`] HTTP/2 connections, used in turn.
    clients: Vec<GrpcInferenceServiceClient<Connection>>,
    next: std::sync::atomic::AtomicUsize,
    breaker: Mutex<BreakerState>,
    breaker_config: BreakerConfig,
    /// `ModelInfer` calls sent, and the rows they carried.
    calls: AtomicU64,
    rows: AtomicU64,
    /// Calls of several predictions the model-server refused (their rows
    /// were sent again alone; see [`super::coalesce`]).
    refused_batches: AtomicU64,
}

impl std::fmt::Debug for ModelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// HTTP/2 connections per model-server endpoint. One connection carries every
/// call on one connection task at each end, which serialises framing: at
/// ~5,000 calls/s over one connection the model call took 4 ms inside the
/// gateway against 0.9 ms for the same calls spread over four.
pub const CONNECTIONS: usize = 4;

impl ModelClient {
    /// A client for `endpoint` (see [`parse_endpoint`]) over [`CONNECTIONS`]
    /// connections used in turn; each connects on first use and reconnects by
    /// itself after the server comes back.
    ///
    /// # Errors
    /// [`InferError::Endpoint`] if the endpoint is not usable.
    pub fn new(
        endpoint: &str,
        connect_timeout: Duration,
        breaker_config: BreakerConfig,
    ) -> Result<Self, InferError> {
        let (target, origin) = parse_endpoint(endpoint)?;
        let settings = ConnSettings {
            connect_timeout,
            keep_alive_interval: Duration::from_secs(30),
        };
        let clients = (0..CONNECTIONS)
            .map(|_| {
                GrpcInferenceServiceClient::with_origin(
                    Connection::new(target.clone(), settings),
                    origin.clone(),
                )
            })
            .collect();
        Ok(ModelClient {
            endpoint: endpoint.to_owned(),
            clients,
            next: std::sync::atomic::AtomicUsize::new(0),
            breaker: Mutex::new(BreakerState {
                consecutive_failures: 0,
                open_until: None,
                probing: false,
                opens: 0,
            }),
            breaker_config,
            calls: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            refused_batches: AtomicU64::new(0),
        })
    }

    /// `ModelInfer` calls sent since start, and the rows they carried (more
    /// rows than calls: predictions sent together, see [`super::coalesce`]).
    pub fn calls_and_rows(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.rows.load(Ordering::Relaxed),
        )
    }

    /// Calls of several predictions the model-server refused since start
    /// (`max_rows` above the model's max batch size, most likely).
    pub fn refused_batches(&self) -> u64 {
        self.refused_batches.load(Ordering::Relaxed)
    }

    pub(crate) fn count_refused_batch(&self) {
        self.refused_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// The next connection's client, in turn.
    fn client(&self) -> GrpcInferenceServiceClient<Connection> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.clients[i % self.clients.len()].clone()
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether the breaker is open now (calls fail fast).
    pub fn breaker_open(&self) -> bool {
        self.breaker
            .lock()
            .map(|b| b.open_until.is_some_and(|t| Instant::now() < t))
            .unwrap_or(false)
    }

    /// The breaker's state now, and how often it has opened since start.
    pub fn circuit(&self) -> (CircuitState, u64) {
        let Ok(b) = self.breaker.lock() else {
            return (CircuitState::Closed, 0);
        };
        let state = match b.open_until {
            None => CircuitState::Closed,
            Some(_) if b.probing => CircuitState::HalfOpen,
            Some(t) if Instant::now() < t => CircuitState::Open,
            Some(_) => CircuitState::HalfOpen,
        };
        (state, b.opens)
    }

    fn admit(&self) -> Result<(), InferError> {
        let Ok(mut b) = self.breaker.lock() else {
            return Ok(());
        };
        match b.open_until {
            Some(t) if Instant::now() < t => Err(InferError::Unavailable {
                endpoint: self.endpoint.clone(),
                detail: format!(
                    "circuit open after {} consecutive failures; retrying in {:?}",
                    b.consecutive_failures,
                    t.saturating_duration_since(Instant::now())
                ),
            }),
            Some(_) => {
                // Half-open: let this call probe, keep others out meanwhile.
                b.open_until = Some(Instant::now() + self.breaker_config.cool_down);
                b.probing = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn record(&self, ok: bool) {
        let Ok(mut b) = self.breaker.lock() else {
            return;
        };
        let was_closed = b.open_until.is_none();
        b.probing = false;
        if ok {
            b.consecutive_failures = 0;
            b.open_until = None;
        } else {
            b.consecutive_failures = b.consecutive_failures.saturating_add(1);
            if b.consecutive_failures >= self.breaker_config.failures_to_open {
                b.open_until = Some(Instant::now() + self.breaker_config.cool_down);
                if was_closed {
                    b.opens = b.opens.saturating_add(1);
                }
            }
        }
    }

    fn map_status(&self, status: &tonic::Status, deadline: Duration) -> InferError {
        let endpoint = self.endpoint.clone();
        match status.code() {
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                InferError::DeadlineExceeded { endpoint, deadline }
            }
            _ if status.code() == tonic::Code::Unavailable || connection_failed(status) => {
                InferError::Unavailable {
                    endpoint,
                    detail: status.message().to_owned(),
                }
            }
            tonic::Code::ResourceExhausted => InferError::Overloaded {
                endpoint,
                detail: status.message().to_owned(),
            },
            tonic::Code::InvalidArgument => InferError::Refused {
                endpoint,
                detail: status.message().to_owned(),
            },
            _ => InferError::Failed {
                endpoint,
                detail: format!("{:?}: {}", status.code(), status.message()),
            },
        }
    }

    /// The model's metadata (inputs and outputs with datatypes and shapes).
    ///
    /// # Errors
    /// [`InferError`] if the call fails.
    pub async fn metadata(
        &self,
        model: &str,
        version: &str,
        deadline: Duration,
    ) -> Result<pb::ModelMetadataResponse, InferError> {
        let mut request = tonic::Request::new(pb::ModelMetadataRequest {
            name: model.to_owned(),
            version: version.to_owned(),
        });
        request.set_timeout(deadline);
        let mut client = self.client();
        let call = client.model_metadata(request);
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(self.map_status(&status, deadline)),
            Err(_) => Err(InferError::DeadlineExceeded {
                endpoint: self.endpoint.clone(),
                deadline,
            }),
        }
    }

    /// Whether the model (version) is ready on the server.
    pub async fn ready(&self, model: &str, version: &str, deadline: Duration) -> bool {
        let mut request = tonic::Request::new(pb::ModelReadyRequest {
            name: model.to_owned(),
            version: version.to_owned(),
        });
        request.set_timeout(deadline);
        let mut client = self.client();
        let call = client.model_ready(request);
        matches!(tokio::time::timeout(deadline, call).await, Ok(Ok(r)) if r.get_ref().ready)
    }

    /// Runs `model` on `rows` (row-major FP32, `width` columns) as input
    /// `input`, within `deadline`.
    ///
    /// # Errors
    /// [`InferError`]; never retried.
    pub async fn infer(
        &self,
        model: &str,
        version: &str,
        input: &str,
        rows: &[f32],
        width: usize,
        deadline: Duration,
    ) -> Result<InferOutputs, InferError> {
        self.admit()?;
        let n = rows.len().checked_div(width).unwrap_or(0);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(n as u64, Ordering::Relaxed);
        let mut raw = Vec::with_capacity(rows.len() * 4);
        for v in rows {
            raw.extend_from_slice(&v.to_le_bytes());
        }
        let mut request = tonic::Request::new(pb::ModelInferRequest {
            model_name: model.to_owned(),
            model_version: version.to_owned(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: input.to_owned(),
                datatype: "FP32".to_owned(),
                shape: vec![n as i64, width as i64],
                ..Default::default()
            }],
            raw_input_contents: vec![raw.into()],
            ..Default::default()
        });
        request.set_timeout(deadline);
        // The model-server continues this trace.
        telemetry::inject_metadata(&tracing::Span::current(), request.metadata_mut());
        let started = Instant::now();
        let mut client = self.client();
        let call = client.model_infer(request);
        let result = match tokio::time::timeout(deadline, call).await {
            Ok(Ok(r)) => decode(r.into_inner()).map_err(|detail| InferError::Failed {
                endpoint: self.endpoint.clone(),
                detail,
            }),
            Ok(Err(status)) => Err(self.map_status(&status, deadline)),
            Err(_) => Err(InferError::DeadlineExceeded {
                endpoint: self.endpoint.clone(),
                deadline,
            }),
        };
        // Only outages and timeouts count against the breaker; a refused
        // request says nothing about the server's health.
        self.record(!matches!(
            result,
            Err(InferError::Unavailable { .. } | InferError::DeadlineExceeded { .. })
        ));
        result.map(|(model_version, outputs)| InferOutputs {
            model_version,
            outputs,
            elapsed: started.elapsed(),
        })
    }
}

/// Whether a call's status comes from a connection that could not carry it
/// (a [`ConnError`] in its source chain).
fn connection_failed(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<ConnError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// A model-server endpoint as the config writes it: `http://host:port` (its
/// gRPC port, plaintext HTTP/2) or `unix:/absolute/path` (also
/// `unix:///absolute/path`, gRPC's spelling) for a model-server on the same
/// host listening on a Unix-domain socket. Returns where to connect and the
/// origin (scheme and authority) the HTTP/2 requests carry.
///
/// # Errors
/// [`EndpointError`], saying what is wrong and what to write instead.
pub fn parse_endpoint(endpoint: &str) -> Result<(Target, http::Uri), EndpointError> {
    let owned = || endpoint.to_owned();
    if let Some(rest) = endpoint.strip_prefix("unix:") {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() {
            return Err(EndpointError::NoSocketPath(owned()));
        }
        let path = std::path::PathBuf::from(path);
        if !path.is_absolute() {
            return Err(EndpointError::RelativeSocket(owned()));
        }
        return Ok((
            Target::Unix(path),
            http::Uri::from_static("http://localhost"),
        ));
    }
    let origin: http::Uri = endpoint
        .parse()
        .map_err(|e| EndpointError::NotUrl(owned(), Arc::new(e)))?;
    if origin.scheme_str() != Some("http") {
        return Err(EndpointError::NotHttp(owned()));
    }
    let host = origin
        .host()
        .ok_or_else(|| EndpointError::NoHost(owned()))?;
    let address = format!("{host}:{}", origin.port_u16().unwrap_or(80));
    Ok((Target::Tcp(address), origin))
}

fn decode(response: pb::ModelInferResponse) -> Result<(String, Vec<OutputTensor>), String> {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    for (i, out) in response.outputs.iter().enumerate() {
        let values = match response.raw_output_contents.get(i) {
            Some(raw) => decode_raw(&out.datatype, raw).ok_or_else(|| {
                format!("output {:?}: cannot decode raw {}", out.name, out.datatype)
            })?,
            None => {
                let c = out
                    .contents
                    .as_ref()
                    .ok_or_else(|| format!("output {:?} has no contents", out.name))?;
                match out.datatype.as_str() {
                    "FP32" => c.fp32_contents.iter().map(|v| f64::from(*v)).collect(),
                    "FP64" => c.fp64_contents.clone(),
                    "INT64" => c.int64_contents.iter().map(|v| *v as f64).collect(),
                    "INT32" => c.int_contents.iter().map(|v| f64::from(*v)).collect(),
                    "BOOL" => c
                        .bool_contents
                        .iter()
                        .map(|v| f64::from(u8::from(*v)))
                        .collect(),
                    other => {
                        return Err(format!(
                            "output {:?}: unsupported datatype {other}",
                            out.name
                        ));
                    }
                }
            }
        };
        outputs.push(OutputTensor {
            name: out.name.clone(),
            shape: out.shape.clone(),
            values,
        });
    }
    Ok((response.model_version, outputs))
}

fn decode_raw(datatype: &str, raw: &[u8]) -> Option<Vec<f64>> {
    fn chunks<const N: usize>(raw: &[u8]) -> Option<impl Iterator<Item = [u8; N]> + '_> {
        raw.len().is_multiple_of(N).then(|| {
            raw.chunks_exact(N).map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                a
            })
        })
    }
    Some(match datatype {
        "FP32" => chunks::<4>(raw)?
            .map(|b| f64::from(f32::from_le_bytes(b)))
            .collect(),
        "FP64" => chunks::<8>(raw)?.map(f64::from_le_bytes).collect(),
        "INT64" => chunks::<8>(raw)?
            .map(|b| i64::from_le_bytes(b) as f64)
            .collect(),
        "INT32" => chunks::<4>(raw)?
            .map(|b| f64::from(i32::from_le_bytes(b)))
            .collect(),
        "BOOL" => raw.iter().map(|b| f64::from(u8::from(*b != 0))).collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_tcp_urls_or_absolute_unix_socket_paths() {
        let tcp = parse_endpoint("http://127.0.0.1:8001").expect("a TCP endpoint");
        assert_eq!(tcp.0, Target::Tcp("127.0.0.1:8001".into()));
        assert_eq!(tcp.1.to_string(), "http://127.0.0.1:8001/");
        assert_eq!(
            parse_endpoint("http://ms").ok().map(|(t, _)| t),
            Some(Target::Tcp("ms:80".into()))
        );
        for uds in ["unix:/run/mlgw/ms.sock", "unix:///run/mlgw/ms.sock"] {
            let (target, origin) = parse_endpoint(uds).expect("a socket endpoint");
            assert_eq!(target, Target::Unix("/run/mlgw/ms.sock".into()), "{uds}");
            assert_eq!(target.to_string(), "unix:/run/mlgw/ms.sock");
            assert_eq!(origin.host(), Some("localhost"));
        }
        for (bad, says) in [
            ("unix:ms.sock", "must be absolute"),
            ("unix://", "names no socket path"),
            ("https://ms:8001", "only plaintext HTTP/2"),
            ("ms:8001", "only plaintext HTTP/2"),
            ("http://", "is not a URL"),
        ] {
            let got = parse_endpoint(bad).expect_err(bad).to_string();
            assert!(got.contains(says), "{bad}: {got}");
        }
    }

    #[tokio::test]
    async fn the_circuit_opens_after_consecutive_failures_and_a_probe_closes_it() {
        let cool_down = Duration::from_millis(50);
        let client = ModelClient::new(
            "http://127.0.0.1:9",
            Duration::from_millis(10),
            BreakerConfig {
                failures_to_open: 3,
                cool_down,
            },
        )
        .expect("valid URI");
        assert_eq!(client.circuit(), (CircuitState::Closed, 0));
        for _ in 0..2 {
            client.record(false);
        }
        assert_eq!(client.circuit().0, CircuitState::Closed, "2 of 3 failures");
        client.record(false);
        assert_eq!(client.circuit(), (CircuitState::Open, 1));
        assert!(client.admit().is_err(), "open: calls fail at once");
        // More failures while open do not count as another opening.
        client.record(false);
        assert_eq!(client.circuit(), (CircuitState::Open, 1));
        tokio::time::sleep(cool_down * 2).await;
        assert_eq!(client.circuit().0, CircuitState::HalfOpen, "cool-down over");
        assert!(client.admit().is_ok(), "one probe goes through");
        assert_eq!(client.circuit().0, CircuitState::HalfOpen, "probe out");
        assert!(client.admit().is_err(), "others wait for the probe");
        client.record(true);
        assert_eq!(client.circuit(), (CircuitState::Closed, 1));
    }
}
