//! What `/metrics` shows of the model-server clients: each client's circuit
//! breaker and call counts ([`ClientStatus`]), taken before each scrape into
//! [`ClientFamilies`], a `prometheus-client` collector.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::infer::CircuitState;

/// One model-server client as `/metrics` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStatus<'a> {
    /// `callers` or `shadow`.
    pub pool: &'static str,
    /// Its endpoint.
    pub endpoint: &'a str,
    /// Its circuit breaker now.
    pub state: CircuitState,
    /// Times the breaker opened since start.
    pub opens: u64,
    /// `ModelInfer` calls sent since start.
    pub calls: u64,
    /// Rows those calls carried (more than calls: predictions sent together).
    pub rows: u64,
    /// Calls of several predictions the model-server refused.
    pub refused_batches: u64,
}

/// One client's labels and numbers, owned (taken at a scrape).
#[derive(Debug)]
struct Row {
    pool: &'static str,
    endpoint: String,
    /// Circuit state, opens, calls, rows, refused batches.
    values: [u64; 5],
}

/// The model-server clients as one scrape saw them.
#[derive(Debug)]
pub struct ClientFamilies(Vec<Row>);

impl From<&[ClientStatus<'_>]> for ClientFamilies {
    fn from(clients: &[ClientStatus<'_>]) -> Self {
        ClientFamilies(
            clients
                .iter()
                .map(|c| Row {
                    pool: c.pool,
                    endpoint: c.endpoint.to_owned(),
                    values: [
                        u64::from(c.state.gauge()),
                        c.opens,
                        c.calls,
                        c.rows,
                        c.refused_batches,
                    ],
                })
                .collect(),
        )
    }
}

impl Collector for ClientFamilies {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let families: [(&str, MetricType, &str); 5] = [
            (
                "mlgw_model_circuit_state",
                MetricType::Gauge,
                "Circuit breaker of each model-server client: 0 closed, 1 open (calls fail at once), 2 half-open (one probe out).",
            ),
            (
                "mlgw_model_circuit_opens",
                MetricType::Counter,
                "Times each circuit breaker opened after consecutive failures.",
            ),
            (
                "mlgw_model_calls",
                MetricType::Counter,
                "ModelInfer calls sent by each model-server client.",
            ),
            (
                "mlgw_model_call_rows",
                MetricType::Counter,
                "Rows those calls carried; more than calls when predictions were sent together ([model.coalesce]).",
            ),
            (
                "mlgw_model_coalesced_calls_refused",
                MetricType::Counter,
                "Calls of several predictions the model-server refused (INVALID_ARGUMENT, most likely [model.coalesce] max_rows above the model's max batch size); their rows were sent again alone and the row limit halved.",
            ),
        ];
        for (i, (name, kind, help)) in families.into_iter().enumerate() {
            let is_gauge = matches!(kind, MetricType::Gauge);
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for row in &self.0 {
                let labels = [("pool", row.pool), ("endpoint", row.endpoint.as_str())];
                let v = row.values[i];
                let metric = family.encode_family(&labels)?;
                if is_gauge {
                    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(metric)?;
                } else {
                    ConstCounter::new(v).encode(metric)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_has_its_circuit_and_counts() -> std::fmt::Result {
        let client = |pool, state, opens, calls, rows| ClientStatus {
            pool,
            endpoint: "http://m:1",
            state,
            opens,
            calls,
            rows,
            refused_batches: 3,
        };
        let clients = [
            client("callers", CircuitState::Open, 2, 40, 100),
            client("shadow", CircuitState::Closed, 0, 7, 7),
        ];
        let mut registry = telemetry::prom::Registry::default();
        registry.register_collector(Box::new(ClientFamilies::from(&clients[..])));
        let text = telemetry::prom::encode(&registry)?;
        assert!(
            text.contains("mlgw_model_circuit_state{pool=\"callers\",endpoint=\"http://m:1\"} 1")
        );
        assert!(text.contains(
            "mlgw_model_circuit_opens_total{pool=\"callers\",endpoint=\"http://m:1\"} 2"
        ));
        assert!(
            text.contains("mlgw_model_calls_total{pool=\"callers\",endpoint=\"http://m:1\"} 40")
        );
        assert!(
            text.contains(
                "mlgw_model_call_rows_total{pool=\"callers\",endpoint=\"http://m:1\"} 100"
            )
        );
        assert!(text.contains(
            "mlgw_model_coalesced_calls_refused_total{pool=\"shadow\",endpoint=\"http://m:1\"} 3"
        ));
        Ok(())
    }
}
