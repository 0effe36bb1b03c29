//! Pushes: fresh values and raw events of a dynamic view, validated
//! against the view's declarations and written in order.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use feature_store::aggregate::Event;
use feature_store::definitions::FeatureValue;
use feature_store::reader::ReadError;
use feature_store::store::FullStore;

use super::{Core, PushCounts, PushEvent, PushRow};
use crate::enrich::EnrichError;
use crate::error::GatewayError;

impl<S: FullStore> Core<S> {
    /// Writes fresh values (`rows`) and raw events (`events`) of dynamic view
    /// `view`, one by one in order, rows first; stops at the first bad one
    /// (those before it are written) and says which.
    ///
    /// # Errors
    /// [`GatewayError::UnknownView`], [`GatewayError::InvalidArgument`] naming
    /// `rows[i]…` or `events[i]…`, or the store's failure.
    pub async fn push(
        &self,
        view_name: &str,
        rows: &[PushRow],
        events: &[PushEvent],
    ) -> Result<PushCounts, GatewayError> {
        let defs = self.enricher.definitions();
        let view = defs
            .view(view_name)
            .filter(|v| !v.is_static())
            .ok_or_else(|| GatewayError::UnknownView {
                view: view_name.to_owned(),
                known: defs
                    .dynamic_views()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let entity = defs.entity(&view.entity).ok_or_else(|| {
            GatewayError::InvalidArgument(format!("view {view_name:?} has no entity"))
        })?;
        let entity_key = |keys: &HashMap<String, String>| -> Result<String, String> {
            for k in keys.keys() {
                if !entity.keys.contains(k) {
                    return Err(format!(
                        "entity.keys: unknown key {k:?}; entity {:?} is keyed by {}",
                        entity.name,
                        entity.keys.join(", ")
                    ));
                }
            }
            let mut parts = Vec::with_capacity(entity.keys.len());
            for k in &entity.keys {
                match keys.get(k) {
                    Some(v) if !v.is_empty() => parts.push(v.as_str()),
                    _ => return Err(format!("entity.keys: missing key {k:?}")),
                }
            }
            Ok(parts.join(&feature_store::source::KEY_SEPARATOR.to_string()))
        };
        let mut written = PushCounts::default();
        for (i, row) in rows.iter().enumerate() {
            let bad = |m: String| GatewayError::InvalidArgument(format!("rows[{i}].{m}"));
            let key = entity_key(&row.keys).map_err(bad)?;
            if row.values.is_empty() {
                return Err(bad("values: empty; send at least one feature".to_owned()));
            }
            let mut values = Vec::with_capacity(row.values.len());
            for (name, v) in &row.values {
                let spec = view.feature(name).ok_or_else(|| {
                    bad(format!(
                        "values.{name}: view {view_name:?} has no such feature"
                    ))
                })?;
                if let Some(a) = &spec.aggregate {
                    return Err(bad(format!(
                        "values.{name}: computed by the feature store ({} of {} over {}); push events carrying {:?} instead",
                        a.function,
                        a.of,
                        feature_store::tuner::controller::human(a.window),
                        a.of
                    )));
                }
                let typed = v.typed(spec.feature_type).ok_or_else(|| {
                    bad(format!(
                        "values.{name}: expected {}, got {v:?}",
                        spec.feature_type
                    ))
                })?;
                values.push((name.clone(), typed));
            }
            let at = row.event_time.unwrap_or_else(SystemTime::now);
            self.enricher
                .reader()
                .push(view_name, &key, &values, at)
                .await
                .map_err(GatewayError::FeatureStore)?;
            written.rows += 1;
        }
        for (i, event) in events.iter().enumerate() {
            let bad = |m: String| GatewayError::InvalidArgument(format!("events[{i}].{m}"));
            let key = entity_key(&event.keys).map_err(bad)?;
            let fields: BTreeMap<String, FeatureValue> = event
                .fields
                .iter()
                .map(|(name, v)| (name.clone(), v.untyped()))
                .collect();
            let at = event
                .event_time
                .unwrap_or_else(feature_store::store::now_micros);
            let id = Some(event.event_id.clone()).filter(|id| !id.is_empty());
            let stored = Event::new(&key, id, at, fields);
            self.enricher
                .reader()
                .push_event(view_name, &key, &stored)
                .await
                .map_err(|e| match e {
                    ReadError::EventField { field, problem, .. } => {
                        bad(format!("fields.{field}: {problem}"))
                    }
                    ReadError::NoEventFields { known, .. } => bad(format!(
                        "fields: empty; send at least one of the fields the aggregates read: {known}"
                    )),
                    ReadError::EventIdTooLong { .. } => bad(format!("event_id: {e}")),
                    ReadError::NoAggregates { .. } => bad(e.to_string()),
                    ReadError::Store(_) => GatewayError::FeatureStore(e),
                    other => GatewayError::Input(EnrichError::Read(other)),
                })?;
            written.events += 1;
        }
        Ok(written)
    }
}
