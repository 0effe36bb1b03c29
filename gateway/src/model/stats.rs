//! What `/metrics` shows of the model-server clients: each client's circuit
//! breaker and call counts ([`ClientStatus`]), rendered by [`render`].

use std::fmt::Write as _;

use telemetry::prom::{header, label};

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

/// Writes each model-server client's circuit breaker and call counts.
pub fn render(out: &mut String, clients: &[ClientStatus<'_>]) {
    type Value = fn(&ClientStatus<'_>) -> u64;
    let families: [(&str, &str, &str, Value); 5] = [
        (
            "mlgw_model_circuit_state",
            "gauge",
            "Circuit breaker of each model-server client: 0 closed, 1 open (calls fail at once), 2 half-open (one probe out).",
            |c| u64::from(c.state.gauge()),
        ),
        (
            "mlgw_model_circuit_opens_total",
            "counter",
            "Times each circuit breaker opened after consecutive failures.",
            |c| c.opens,
        ),
        (
            "mlgw_model_calls_total",
            "counter",
            "ModelInfer calls sent by each model-server client.",
            |c| c.calls,
        ),
        (
            "mlgw_model_call_rows_total",
            "counter",
            "Rows those calls carried; more than calls when predictions were sent together ([model.coalesce]).",
            |c| c.rows,
        ),
        (
            "mlgw_model_coalesced_calls_refused_total",
            "counter",
            "Calls of several predictions the model-server refused (INVALID_ARGUMENT, most likely [model.coalesce] max_rows above the model's max batch size); their rows were sent again alone and the row limit halved.",
            |c| c.refused_batches,
        ),
    ];
    for (name, kind, help, value) in families {
        header(out, name, kind, help);
        for c in clients {
            let _ = writeln!(
                out,
                "{name}{{pool=\"{}\",endpoint=\"{}\"}} {}",
                c.pool,
                label(c.endpoint),
                value(c)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_has_its_circuit_and_counts() {
        let client = |pool, state, opens, calls, rows| ClientStatus {
            pool,
            endpoint: "http://m:1",
            state,
            opens,
            calls,
            rows,
            refused_batches: 3,
        };
        let mut text = String::new();
        render(
            &mut text,
            &[
                client("callers", CircuitState::Open, 2, 40, 100),
                client("shadow", CircuitState::Closed, 0, 7, 7),
            ],
        );
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
    }
}
