//! Shared pieces of the load benchmarks: an open- and closed-loop driver
//! with a latency tally ([`load`]), the demo customers and their requests
//! ([`demo`]), gRPC channels and the bearer token ([`grpc_client`]), starting
//! the release gateway and model-server and reading their CPU time
//! ([`process`]), a Cassandra node of the bench's own ([`cassandra`]), `/metrics` scraping ([`prometheus`]), environment knobs
//! ([`knobs`]) and the report's numbers, machine note and SVG plots
//! ([`report`]).
//!
//! A benchmark in `benches/benches/` drives a target like this:
//!
//! ```no_run
//! use std::sync::Arc;
//! use benches::load::{self, Load, Outcome};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let http = reqwest::Client::new();
//! // Any async call works: call `k` of the run returns how it ended.
//! let target = Arc::new(load::call_fn(move |k: u64| {
//!     let http = http.clone();
//!     async move {
//!         match http.get(format!("http://127.0.0.1:8080/item/{k}")).send().await {
//!             Ok(r) if r.status().is_success() => Outcome::Ok,
//!             Ok(r) if r.status().as_u16() == 429 => Outcome::Shed,
//!             Ok(r) => Outcome::failed(r.status().as_str()),
//!             Err(_) => Outcome::failed("transport"),
//!         }
//!     }
//! }));
//! // 1,000 calls a second for 4 s (plus 0.5 s unmeasured warm-up), latency
//! // from each call's intended send time.
//! let m = load::run(&target, Load::Open { rate: 1000.0 }, 4.0).await?;
//! println!("p99 {:.2} ms, shed {}, errors {}", m.p_ms(0.99), m.shed, m.errors_text());
//! # Ok(()) }
//! ```

pub mod cassandra;
pub mod demo;
pub mod grpc_client;
pub mod knobs;
pub mod load;
pub mod process;
pub mod prometheus;
pub mod report;
