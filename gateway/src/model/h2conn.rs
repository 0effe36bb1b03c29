//! One HTTP/2 connection to a model-server, driven through hyper directly.
//!
//! tonic's `Channel` puts a `tower::buffer` task in front of its connection:
//! each call is handed to that task, which starts it on the connection's
//! task. Here a call starts on the connection's task directly (hyper's
//! `SendRequest` is a handle to it that any task may use): one task hand-off
//! less on every model call.
//!
//! The connection is made on first use and again after it closed (the
//! server restarted, a keep-alive ping went unanswered); one caller makes it
//! while the others wait for that attempt. A failure to connect, or a
//! connection lost under a call, answers UNAVAILABLE naming the address,
//! with a typed [`ConnError`] as the status's source (so the client decides
//! "unavailable" from the error's type, never from its text).
//!
//! The connection runs over TCP, or over a Unix-domain socket to a
//! model-server on the same host (a sidecar): the same HTTP/2 and gRPC, with
//! the kernel's loopback TCP stack left out of every call.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tonic::body::Body;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a connection could not carry a call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// No connection was made within the connect timeout.
    #[error("cannot connect to {address}: no connection within {timeout:?}")]
    ConnectTimeout {
        /// Where.
        address: String,
        /// The timeout.
        timeout: Duration,
    },
    /// Connecting (or the HTTP/2 handshake) failed.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// Where.
        address: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The connection failed under a call.
    #[error("connection to {address} failed: {source}")]
    Lost {
        /// Where.
        address: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
}

impl ConnError {
    /// The UNAVAILABLE status a call answers, with this error as its source.
    fn into_status(self) -> tonic::Status {
        let mut status = tonic::Status::unavailable(self.to_string());
        status.set_source(Arc::new(self));
        status
    }
}

/// Where a connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `host:port` over TCP (with TCP_NODELAY).
    Tcp(String),
    /// A Unix-domain socket's path.
    Unix(PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(address) => f.write_str(address),
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How a connection is made and kept.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    /// Bound on the connect and the HTTP/2 handshake.
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval, also while idle; an unanswered ping closes the
    /// connection, and the next call makes a new one.
    pub keep_alive_interval: Duration,
}

/// A lazily made, self-renewing HTTP/2 connection: a `tower::Service` for
/// tonic's generated clients (use them `with_origin`, so requests carry the
/// scheme and authority HTTP/2 needs).
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

struct Shared {
    target: Target,
    /// The target as error messages name it.
    address: String,
    settings: ConnSettings,
    /// The open connection's handle, if one was made.
    sender: Mutex<Option<SendRequest<Body>>>,
    /// Held while connecting: one attempt at a time.
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("address", &self.shared.address)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection to `target`, made on first use.
    pub fn new(target: Target, settings: ConnSettings) -> Self {
        Connection {
            shared: Arc::new(Shared {
                address: target.to_string(),
                target,
                settings,
                sender: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The handle of the open connection, if it is still open.
    fn open(&self) -> Option<SendRequest<Body>> {
        let sender = self
            .shared
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        sender.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    async fn sender(&self) -> Result<SendRequest<Body>, ConnError> {
        if let Some(s) = self.open() {
            return Ok(s);
        }
        let _one = self.shared.connecting.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(s) = self.open() {
            return Ok(s);
        }
        let address = &self.shared.address;
        let timeout = self.shared.settings.connect_timeout;
        let sender = tokio::time::timeout(timeout, self.connect())
            .await
            .map_err(|_| ConnError::ConnectTimeout {
                address: address.clone(),
                timeout,
            })?
            .map_err(|source| ConnError::Connect {
                address: address.clone(),
                source,
            })?;
        *self
            .shared
            .sender
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(sender.clone());
        Ok(sender)
    }

    async fn connect(&self) -> Result<SendRequest<Body>, BoxError> {
        match &self.shared.target {
            Target::Tcp(address) => {
                let stream = tokio::net::TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                self.handshake(stream).await
            }
            #[cfg(unix)]
            Target::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await?;
                self.handshake(stream).await
            }
            #[cfg(not(unix))]
            Target::Unix(_) => Err("Unix-domain sockets need a Unix host".into()),
        }
    }

    async fn handshake<T>(&self, stream: T) -> Result<SendRequest<Body>, BoxError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(self.shared.settings.keep_alive_interval)
            .keep_alive_while_idle(true)
            .handshake(TokioIo::new(stream))
            .await?;
        let address = self.shared.address.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%address, error = %e, "model-server connection closed");
            }
        });
        Ok(sender)
    }
}

impl tower::Service<http::Request<Body>> for Connection {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is the connection's, checked per call in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut sender = this.sender().await.map_err(ConnError::into_status)?;
            let lost = |source: hyper::Error| {
                ConnError::Lost {
                    address: this.shared.address.clone(),
                    source,
                }
                .into_status()
            };
            sender.ready().await.map_err(lost)?;
            Ok(sender.send_request(request).await.map_err(lost)?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::inference as pb;
    use proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;

    #[tokio::test]
    async fn a_server_that_is_not_there_answers_unavailable_naming_the_address() {
        // A port that was free a moment ago: nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let address = format!("127.0.0.1:{port}");
        let settings = ConnSettings {
            connect_timeout: Duration::from_secs(2),
            keep_alive_interval: Duration::from_secs(30),
        };
        let origin: http::Uri = format!("http://{address}").parse().expect("a URI");
        let mut client = GrpcInferenceServiceClient::with_origin(
            Connection::new(Target::Tcp(address.clone()), settings),
            origin,
        );
        for _ in 0..2 {
            let status = client
                .server_live(pb::ServerLiveRequest {})
                .await
                .expect_err("nothing listens");
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            let source = std::error::Error::source(&status).expect("a typed source");
            assert!(source.is::<ConnError>(), "{source:?}");
            assert!(
                status
                    .message()
                    .contains(&format!("cannot connect to {address}")),
                "{}",
                status.message()
            );
        }
    }
}
