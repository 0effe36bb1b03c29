//! Enrichment: turning an entity key and the caller's request features into
//! the model's input row.
//!
//! For a model's declared input columns, the static views (through the row
//! cache) and dynamic views of its entity are read concurrently, request
//! features are checked against their declarations, and every column gets its
//! value converted to FP32 — or its declared default, with the reason recorded
//! so the caller sees which features were defaulted and how old each view was.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use feature_store::definitions::{
    ColumnSource, FeatureDefinitions, FeatureType, FeatureValue, ModelFeatures,
};
use feature_store::freshness::{ResolvedView, StoredRow, resolve_view};
use feature_store::reader::{FeatureReader, ReadError};
use feature_store::source::KEY_SEPARATOR;
use feature_store::store::FullStore;

/// A value sent by the caller, before it is checked against its declaration.
#[derive(Debug, Clone, PartialEq)]
pub enum WireValue {
    /// A number with a fraction (JSON number with `.`/exponent, proto double).
    Double(f64),
    /// A whole number.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// Text.
    Text(String),
}

impl WireValue {
    /// The protobuf form.
    pub fn to_proto(&self) -> proto::gateway::v1::FeatureValue {
        use proto::gateway::v1::feature_value::Kind;
        proto::gateway::v1::FeatureValue {
            kind: Some(match self {
                WireValue::Double(d) => Kind::DoubleValue(*d),
                WireValue::Int(i) => Kind::Int64Value(*i),
                WireValue::Bool(b) => Kind::BoolValue(*b),
                WireValue::Text(t) => Kind::StringValue(t.clone()),
            }),
        }
    }

    /// A protobuf feature value; None when no value is set.
    pub fn from_proto(v: &proto::gateway::v1::FeatureValue) -> Option<Self> {
        use proto::gateway::v1::feature_value::Kind;
        Some(match v.kind.as_ref()? {
            Kind::DoubleValue(d) => WireValue::Double(*d),
            Kind::Int64Value(i) => WireValue::Int(*i),
            Kind::BoolValue(b) => WireValue::Bool(*b),
            Kind::StringValue(s) => WireValue::Text(s.clone()),
        })
    }

    fn describe(&self) -> String {
        match self {
            WireValue::Double(v) => format!("the number {v}"),
            WireValue::Int(v) => format!("the whole number {v}"),
            WireValue::Bool(v) => format!("the boolean {v}"),
            WireValue::Text(v) => format!("the text {v:?}"),
        }
    }

    /// The value as sent, without a declared type (raw event fields): a
    /// double as float64, a whole number as int64.
    pub fn untyped(&self) -> FeatureValue {
        match self {
            WireValue::Double(v) => FeatureValue::Float64(*v),
            WireValue::Int(v) => FeatureValue::Int64(*v),
            WireValue::Bool(v) => FeatureValue::Bool(*v),
            WireValue::Text(v) => FeatureValue::String(v.clone()),
        }
    }

    /// The value as `ty`, if it fits (whole numbers become floats; an
    /// integral double becomes an int64; nothing becomes a bool or string
    /// implicitly).
    pub fn typed(&self, ty: FeatureType) -> Option<FeatureValue> {
        Some(match (ty, self) {
            (FeatureType::Float32, WireValue::Double(v)) => {
                let f = *v as f32;
                if !f.is_finite() {
                    return None;
                }
                FeatureValue::Float32(f)
            }
            (FeatureType::Float32, WireValue::Int(v)) => FeatureValue::Float32(*v as f32),
            (FeatureType::Float64, WireValue::Double(v)) if v.is_finite() => {
                FeatureValue::Float64(*v)
            }
            (FeatureType::Float64, WireValue::Int(v)) => FeatureValue::Float64(*v as f64),
            (FeatureType::Int64, WireValue::Int(v)) => FeatureValue::Int64(*v),
            (FeatureType::Int64, WireValue::Double(v)) if v.fract() == 0.0 && v.abs() < 9.0e15 => {
                FeatureValue::Int64(*v as i64)
            }
            (FeatureType::Bool, WireValue::Bool(v)) => FeatureValue::Bool(*v),
            (FeatureType::String, WireValue::Text(v)) => FeatureValue::String(v.clone()),
            _ => return None,
        })
    }
}

/// Why a request cannot be enriched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrichError {
    /// A key column of the model's entity is missing.
    #[error("entity.keys: missing key {key:?} of entity {entity:?}")]
    MissingKey {
        /// The key column.
        key: String,
        /// The entity.
        entity: String,
    },
    /// A key name the model's entity does not have.
    #[error("entity.keys: unknown key {key:?}; entity {entity:?} is keyed by {expected}")]
    UnknownKey {
        /// The key sent.
        key: String,
        /// The entity.
        entity: String,
        /// Its key columns.
        expected: String,
    },
    /// An empty key value.
    #[error("entity.keys.{key}: must not be empty")]
    EmptyKey {
        /// The key column.
        key: String,
    },
    /// A request feature the model does not use.
    #[error("request_features.{name}: not an input of model {model:?}; it takes {expected}")]
    UnknownRequestFeature {
        /// The feature sent.
        name: String,
        /// The model.
        model: String,
        /// Its request features.
        expected: String,
    },
    /// A required request feature is missing.
    #[error("request_features.{name}: required by model {model:?} and missing ({ty})")]
    MissingRequestFeature {
        /// The feature.
        name: String,
        /// The model.
        model: String,
        /// Its declared type.
        ty: FeatureType,
    },
    /// A request feature of the wrong type.
    #[error("request_features.{name}: expected {expected}, got {found}")]
    WrongRequestType {
        /// The feature.
        name: String,
        /// Declared type.
        expected: FeatureType,
        /// What was sent.
        found: String,
    },
    /// Reading the features failed.
    #[error(transparent)]
    Read(#[from] ReadError),
}

/// The assembled input row and what the caller should know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Enriched {
    /// FP32 values in the model's column order.
    pub row: Vec<f32>,
    /// Age of each view's row (None: the entity has no row), in read order.
    pub view_ages: Vec<(String, Option<Duration>)>,
    /// Columns (`view.feature` / `request.name`) that got their default.
    pub defaulted: Vec<String>,
    /// The store key the views were read with.
    pub entity_key: String,
}

/// Assembles model inputs from the feature store and the request.
pub struct Enricher<S> {
    reader: Arc<FeatureReader<S>>,
}

impl<S: FullStore> Enricher<S> {
    /// Enriches with `reader`.
    pub fn new(reader: Arc<FeatureReader<S>>) -> Self {
        Enricher { reader }
    }

    /// The reader (for pushes, stats and readiness).
    pub fn reader(&self) -> &Arc<FeatureReader<S>> {
        &self.reader
    }

    /// The definitions served.
    pub fn definitions(&self) -> &FeatureDefinitions {
        self.reader.definitions()
    }

    /// The store key of `model`'s entity from the caller's key map (key
    /// values in the entity's declared order), checked as [`Self::enrich`]
    /// checks it.
    ///
    /// # Errors
    /// [`EnrichError`] naming an unknown, missing or empty key.
    pub fn entity_key(
        &self,
        model: &ModelFeatures,
        keys: &HashMap<String, String>,
    ) -> Result<String, EnrichError> {
        entity_key(self.reader.definitions(), model, keys)
    }

    /// Checks the entity `keys` and request features of a call to `model`
    /// as [`Self::enrich`] would, without reading the store; the entity's
    /// store key ("" for a model without entity).
    ///
    /// # Errors
    /// [`EnrichError`] naming the offending field.
    pub fn check_request(
        &self,
        model: &ModelFeatures,
        keys: &HashMap<String, String>,
        request: &HashMap<String, WireValue>,
    ) -> Result<String, EnrichError> {
        let key = entity_key(self.reader.definitions(), model, keys)?;
        request_columns(model, request)?;
        Ok(key)
    }

    /// Builds the input row of `model` for the entity `keys` and the caller's
    /// request features, reading the model's views concurrently.
    ///
    /// # Errors
    /// [`EnrichError`] naming the offending field, or the store's failure.
    pub async fn enrich(
        &self,
        model: &ModelFeatures,
        keys: &HashMap<String, String>,
        request: &HashMap<String, WireValue>,
        now: SystemTime,
    ) -> Result<Enriched, EnrichError> {
        let entity_key = entity_key(self.reader.definitions(), model, keys)?;
        self.enrich_key(model, entity_key, request, now).await
    }

    /// As [`Self::enrich`], for an entity key already joined (as stored).
    ///
    /// # Errors
    /// As [`Self::enrich`].
    pub async fn enrich_key(
        &self,
        model: &ModelFeatures,
        entity_key: String,
        request: &HashMap<String, WireValue>,
        now: SystemTime,
    ) -> Result<Enriched, EnrichError> {
        // Request features first: a bad request never costs a store read.
        let (row, defaulted) = request_columns(model, request)?;
        let views = model_views(model);
        let resolved = self.reader.read_many(&views, &entity_key, now).await?;
        Ok(assemble(model, row, defaulted, &resolved, entity_key))
    }

    /// The row of `model` for `entity_key` when the rows of some of its
    /// static views are already at hand (`known`: view name and row, read in
    /// bulk by a batch job): those views are resolved from them as a read
    /// would resolve them, the others are read, and the row is assembled by
    /// the same code as [`Self::enrich`]'s.
    ///
    /// # Errors
    /// As [`Self::enrich`].
    pub async fn enrich_known(
        &self,
        model: &ModelFeatures,
        entity_key: String,
        request: &HashMap<String, WireValue>,
        known: (&str, &StoredRow),
        now: SystemTime,
    ) -> Result<Enriched, EnrichError> {
        let (row, defaulted) = request_columns(model, request)?;
        let defs = self.reader.definitions();
        let mut resolved = Vec::new();
        for name in model_views(model) {
            if name == known.0 {
                let view = defs
                    .view(name)
                    .ok_or_else(|| EnrichError::Read(ReadError::UnknownView(name.to_owned())))?;
                resolved.push(resolve_view(view, Some(known.1), now));
            } else {
                resolved.push(self.reader.read(name, &entity_key, now).await?);
            }
        }
        Ok(assemble(model, row, defaulted, &resolved, entity_key))
    }
}

/// The model's views in read order: static, then dynamic.
fn model_views(model: &ModelFeatures) -> Vec<&str> {
    model
        .static_views()
        .iter()
        .chain(model.dynamic_views())
        .map(String::as_str)
        .collect()
}

/// The row with the request columns filled (checked against their
/// declarations, defaults where absent), and the columns defaulted so far.
fn request_columns(
    model: &ModelFeatures,
    request: &HashMap<String, WireValue>,
) -> Result<(Vec<f32>, Vec<String>), EnrichError> {
    let input = model.input();
    for name in request.keys() {
        let known = input
            .columns()
            .iter()
            .any(|c| c.source == ColumnSource::Request && &c.name == name);
        if !known {
            let expected = input
                .columns()
                .iter()
                .filter(|c| c.source == ColumnSource::Request)
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(EnrichError::UnknownRequestFeature {
                name: name.clone(),
                model: model.name().to_owned(),
                expected,
            });
        }
    }
    let mut row = vec![0f32; input.width()];
    let mut defaulted = Vec::new();
    for (i, col) in input.columns().iter().enumerate() {
        if col.source != ColumnSource::Request {
            continue;
        }
        match request.get(&col.name) {
            Some(v) => {
                let typed =
                    v.typed(col.feature_type)
                        .ok_or_else(|| EnrichError::WrongRequestType {
                            name: col.name.clone(),
                            expected: col.feature_type,
                            found: v.describe(),
                        })?;
                row[i] = typed
                    .to_f32()
                    .ok_or_else(|| EnrichError::WrongRequestType {
                        name: col.name.clone(),
                        expected: col.feature_type,
                        found: format!("{} (out of FP32 range)", v.describe()),
                    })?;
            }
            None => match col.default {
                Some(d) => {
                    row[i] = d;
                    defaulted.push(col.reference.clone());
                }
                None => {
                    return Err(EnrichError::MissingRequestFeature {
                        name: col.name.clone(),
                        model: model.name().to_owned(),
                        ty: col.feature_type,
                    });
                }
            },
        }
    }
    Ok((row, defaulted))
}

/// Fills the view columns of `row` from the resolved views (their values,
/// or the column's default where missing or stale) and says what it used.
fn assemble(
    model: &ModelFeatures,
    mut row: Vec<f32>,
    mut defaulted: Vec<String>,
    resolved: &[ResolvedView<'_>],
    entity_key: String,
) -> Enriched {
    for (i, col) in model.input().columns().iter().enumerate() {
        let view = match &col.source {
            ColumnSource::StaticView(v) | ColumnSource::DynamicView(v) => v,
            ColumnSource::Request => continue,
        };
        let feature = resolved
            .iter()
            .find(|r| r.view == view.as_str())
            .and_then(|r| r.feature(&col.name));
        let (value, was_defaulted) = match feature {
            Some(f) => (f.value.to_f32(), f.state.is_defaulted()),
            None => (None, true),
        };
        match value {
            Some(v) if !was_defaulted => row[i] = v,
            _ => {
                row[i] = col.default.unwrap_or(0.0);
                defaulted.push(col.reference.clone());
            }
        }
    }
    Enriched {
        row,
        view_ages: resolved
            .iter()
            .map(|r: &ResolvedView| (r.view.to_owned(), r.age))
            .collect(),
        defaulted,
        entity_key,
    }
}

/// The store key of the model's entity from the caller's key map.
fn entity_key(
    defs: &FeatureDefinitions,
    model: &ModelFeatures,
    keys: &HashMap<String, String>,
) -> Result<String, EnrichError> {
    let Some(entity) = model.entities().first().and_then(|e| defs.entity(e)) else {
        // A model fed only by request features needs no key.
        return Ok(String::new());
    };
    for k in keys.keys() {
        if !entity.keys.contains(k) {
            return Err(EnrichError::UnknownKey {
                key: k.clone(),
                entity: entity.name.clone(),
                expected: entity.keys.join(", "),
            });
        }
    }
    let mut parts = Vec::with_capacity(entity.keys.len());
    for k in &entity.keys {
        let v = keys.get(k).ok_or_else(|| EnrichError::MissingKey {
            key: k.clone(),
            entity: entity.name.clone(),
        })?;
        if v.is_empty() {
            return Err(EnrichError::EmptyKey { key: k.clone() });
        }
        parts.push(v.as_str());
    }
    Ok(parts.join(&KEY_SEPARATOR.to_string()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use feature_store::reader::ReaderConfig;
    use feature_store::refresh::{self, RefreshOptions};
    use feature_store::store::embedded::EmbeddedStore;
    use feature_store::store::prelude::*;

    use super::*;

    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn enricher(tag: &str) -> (Dir, Enricher<EmbeddedStore>) {
        let dir = std::env::temp_dir().join(format!("mlgw_enrich_{tag}_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let defs = FeatureDefinitions::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../feature-store/definitions/fraud.toml"),
        )
        .unwrap();
        let store = EmbeddedStore::open(&dir.join("f.redb")).unwrap();
        store.apply_schema().await.unwrap();
        let csv = dir.join("p.csv");
        std::fs::write(
            &csv,
            "customer_id,account_age_days,avg_txn_amount_30d,txn_count_30d,chargeback_count_1y,home_country_risk\nc-1,400,52.5,31,2,0.25\n",
        )
        .unwrap();
        refresh::run(
            &store,
            &defs,
            "customer_profile_daily",
            None,
            &csv,
            &RefreshOptions::default(),
            &|_| {},
        )
        .await
        .unwrap();
        let reader = FeatureReader::new(Arc::new(store), Arc::new(defs), ReaderConfig::default())
            .await
            .unwrap();
        (Dir(dir), Enricher::new(Arc::new(reader)))
    }

    fn request() -> HashMap<String, WireValue> {
        [
            ("amount", WireValue::Double(980.0)),
            ("is_card_present", WireValue::Bool(false)),
            ("hour_of_day", WireValue::Int(3)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn keys(id: &str) -> HashMap<String, String> {
        HashMap::from([("customer_id".to_owned(), id.to_owned())])
    }

    #[tokio::test]
    async fn row_follows_the_model_column_order_with_defaults_reported() {
        let (_dir, e) = enricher("order").await;
        let model = e.definitions().model("fraud_detector").unwrap().clone();
        let now = SystemTime::now();
        e.reader()
            .push(
                "customer_activity",
                "c-1",
                &[("distinct_merchants_24h".into(), FeatureValue::Int64(6))],
                now,
            )
            .await
            .unwrap();
        let out = e
            .enrich(&model, &keys("c-1"), &request(), now)
            .await
            .unwrap();
        assert_eq!(
            out.row,
            vec![
                400.0, 52.5, 31.0, 2.0, 0.25, 0.0, 0.0, 6.0, 0.0, 1440.0, 980.0, 0.21, 0.0, 3.0,
                10.0
            ]
        );
        assert_eq!(
            out.defaulted,
            vec![
                "request.merchant_category_risk",
                "request.distance_from_home_km",
                "customer_activity.txn_count_1h",
                "customer_activity.txn_amount_sum_1h",
                "customer_activity.failed_auth_count_24h",
                "customer_activity.minutes_since_last_txn",
            ]
        );
        assert_eq!(out.view_ages.len(), 2);
        assert!(out.view_ages.iter().all(|(_, age)| age.is_some()));
        // An unknown customer: every view default, flagged.
        let unknown = e
            .enrich(&model, &keys("c-404"), &request(), now)
            .await
            .unwrap();
        assert_eq!(&unknown.row[..5], &[1.0, 45.0, 0.0, 0.0, 0.18]);
        assert!(unknown.view_ages.iter().all(|(_, age)| age.is_none()));
        assert_eq!(unknown.defaulted.len(), 12);
    }

    #[tokio::test]
    async fn bad_requests_name_the_field() {
        let (_dir, e) = enricher("bad").await;
        let model = e.definitions().model("fraud_detector").unwrap().clone();
        let now = SystemTime::now();
        let err = |keys: HashMap<String, String>, req: HashMap<String, WireValue>| {
            let e = &e;
            let model = model.clone();
            async move {
                e.enrich(&model, &keys, &req, now)
                    .await
                    .unwrap_err()
                    .to_string()
            }
        };
        assert_eq!(
            err(HashMap::from([("user_id".into(), "u".into())]), request()).await,
            "entity.keys: unknown key \"user_id\"; entity \"customer\" is keyed by customer_id"
        );
        assert_eq!(
            err(HashMap::new(), request()).await,
            "entity.keys: missing key \"customer_id\" of entity \"customer\""
        );
        let mut r = request();
        r.remove("amount");
        assert_eq!(
            err(keys("c-1"), r).await,
            "request_features.amount: required by model \"fraud_detector\" and missing (float64)"
        );
        let mut r = request();
        r.insert("is_card_present".into(), WireValue::Text("yes".into()));
        assert_eq!(
            err(keys("c-1"), r).await,
            "request_features.is_card_present: expected bool, got the text \"yes\""
        );
        let mut r = request();
        r.insert("hour_of_day".into(), WireValue::Double(3.5));
        assert_eq!(
            err(keys("c-1"), r).await,
            "request_features.hour_of_day: expected int64, got the number 3.5"
        );
        let mut r = request();
        r.insert("colour".into(), WireValue::Text("red".into()));
        assert!(
            err(keys("c-1"), r)
                .await
                .starts_with("request_features.colour: not an input of model \"fraud_detector\"")
        );
    }
}
