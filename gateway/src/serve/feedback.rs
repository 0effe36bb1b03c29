//! Feedback: ground truth for an earlier prediction, checked against the
//! prediction log (and the model's labels) and stored beside it.

use std::time::Duration;

use feature_store::log::{FeedbackRecord, Outcome, PredictionKey, unix_ms};
use feature_store::store::FullStore;

use super::{Core, FeedbackInput};
use crate::error::GatewayError;

impl<S: FullStore> Core<S> {
    /// Stores ground truth for a logged prediction.
    ///
    /// # Errors
    /// [`GatewayError::InvalidArgument`] naming the field,
    /// [`GatewayError::UnknownPrediction`] when no such prediction is
    /// logged, or the store's failure.
    pub async fn feedback(&self, input: FeedbackInput) -> Result<(), GatewayError> {
        let key = PredictionKey::parse(&input.prediction_id)
            .map_err(|e| GatewayError::InvalidArgument(format!("prediction_id: {e}")))?;
        let outcome = match input.outcome {
            None => {
                return Err(GatewayError::InvalidArgument(
                    "outcome: send `label` (a class) or `value` (a number)".to_owned(),
                ));
            }
            Some(Outcome::Label(l)) if l.is_empty() || l.len() > 256 => {
                return Err(GatewayError::InvalidArgument(format!(
                    "label: must be 1 to 256 bytes, got {}",
                    l.len()
                )));
            }
            Some(Outcome::Value(v)) if !v.is_finite() => {
                return Err(GatewayError::InvalidArgument(format!(
                    "value: {v} is not a finite number"
                )));
            }
            Some(o) => o,
        };
        let now = feature_store::store::now_micros();
        let observed_at = input.observed_at.unwrap_or(now);
        if observed_at > now + Duration::from_secs(300) {
            return Err(GatewayError::InvalidArgument(
                "observed_at_ms: more than 5 minutes in the future; send Unix milliseconds"
                    .to_owned(),
            ));
        }
        let store = self.enricher.reader().store();
        let store_err = |e: feature_store::store::StoreError| GatewayError::FeatureStore(e.into());
        let mut found = store
            .read_prediction(&input.prediction_id)
            .await
            .map_err(store_err)?;
        // A prediction made moments ago may still be in the log's buffer.
        let recent = unix_ms(now).saturating_sub(key.unix_ms) < 600_000;
        if let Some(log) = self.log.as_ref().filter(|_| found.is_none() && recent) {
            log.flush(Duration::from_secs(2)).await;
            found = store
                .read_prediction(&input.prediction_id)
                .await
                .map_err(store_err)?;
        }
        let prediction = found.ok_or_else(|| GatewayError::UnknownPrediction {
            prediction_id: input.prediction_id.clone(),
        })?;
        if let (Outcome::Label(label), Some(route)) = (&outcome, self.routes.get(&prediction.model))
        {
            let labels = &route.config.postprocess.labels;
            if !labels.is_empty() && !labels.contains(label) {
                return Err(GatewayError::InvalidArgument(format!(
                    "label: {label:?} is not a label of model {:?}; its labels are {}",
                    prediction.model,
                    labels.join(", ")
                )));
            }
        }
        let record = FeedbackRecord {
            prediction_id: input.prediction_id,
            outcome,
            observed_at,
            received_at: now,
            subject: input.subject,
        };
        store
            .write_feedback(&record, self.log_retention)
            .await
            .map_err(store_err)?;
        if let Some(p) = &self.publisher {
            p.feedback(&record);
        }
        Ok(())
    }
}
