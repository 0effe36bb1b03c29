//! Demo data: the same customer profiles as deploy/local/run.sh, keyed
//! `c-NNNNNNN`, loaded into a store by a refresh run, and the requests that
//! ask about them.
//!
//! - [`customer_id`], [`profile`]: customer `i`'s key and static features.
//! - [`load_profiles`]: writes `customers` profiles as CSV and loads them
//!   through the `customer_profile_daily` refresh (returns the seconds taken);
//!   [`load_embedded_profiles`] does so into a new embedded store; a bench's
//!   other CSV files are written with [`write_csv`].
//! - [`predict_request`]: the gateway's gRPC `Predict` for a customer with
//!   request features varied by the call number; [`model_request`]: the FP32
//!   row the gateway assembles for the same call, for V2 `ModelInfer`
//!   straight to a model-server; [`request_values`]: those request features.
//! - [`load_activity`]: recent activity (pushed values and raw events) for
//!   the dynamic view; [`predict_json`]: the REST body of a predict call.
//! - [`Keys`]: which customer call `k` asks for (a hot set, or never
//!   repeated).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use feature_store::definitions::FeatureDefinitions;
use feature_store::refresh::{self, RefreshOptions, RefreshOutcome};
use feature_store::store::AnyStore;
use feature_store::store::embedded::EmbeddedStore;
use feature_store::store::prelude::*;
use proto::gateway::v1 as gw;
use proto::inference as inf;
use rig::workspace_root;

/// The model every demo request asks for.
pub const MODEL: &str = "fraud_detector";

/// The store key of customer `i`: `c-0000042`.
pub fn customer_id(i: u64) -> String {
    format!("c-{i:07}")
}

/// account_age_days, avg_txn_amount_30d, txn_count_30d, chargeback_count_1y,
/// home_country_risk of customer `i`.
pub fn profile(i: u64) -> [f32; 5] {
    [
        (30 + (i * 37) % 3000) as f32,
        (15 + (i * 13) % 200) as f32 + 0.5,
        ((i * 7) % 90) as f32,
        if i.is_multiple_of(23) { 2.0 } else { 0.0 },
        ((i * 11) % 100) as f32 / 100.0,
    ]
}

/// The header of the `customer_profile` refresh's CSV input.
pub const PROFILE_HEADER: &str = "customer_id,account_age_days,avg_txn_amount_30d,txn_count_30d,chargeback_count_1y,home_country_risk";

/// Writes a CSV file: `header`, then one line per row.
///
/// # Errors
/// On I/O errors.
pub fn write_csv(path: &Path, header: &str, rows: impl IntoIterator<Item = String>) -> Result<()> {
    use std::io::Write as _;
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    writeln!(w, "{header}")?;
    for row in rows {
        writeln!(w, "{row}")?;
    }
    w.flush()?;
    Ok(())
}

/// Writes customers `0..customers` as the refresh's CSV input.
///
/// # Errors
/// On I/O errors.
pub fn write_profiles(path: &Path, customers: u64) -> Result<()> {
    let rows = (0..customers).map(|i| {
        let p = profile(i);
        let id = customer_id(i);
        format!("{id},{},{:.2},{},{},{:.2}", p[0], p[1], p[2], p[3], p[4])
    });
    write_csv(path, PROFILE_HEADER, rows)
}

/// Loads customers `0..customers` into a new embedded store at `redb` (see
/// [`load_profiles`]); returns the seconds the refresh took. The store is
/// closed again, for a gateway to open.
///
/// # Errors
/// When the store cannot be opened or the load fails.
pub async fn load_embedded_profiles(redb: &Path, customers: u64, scratch: &Path) -> Result<f64> {
    let store = AnyStore::Embedded(Arc::new(EmbeddedStore::open(redb)?));
    load_profiles(&store, customers, scratch).await
}

/// Applies the schema and loads customers `0..customers` into `store` by a
/// forced refresh run (the CSV is written in `scratch` and removed after);
/// returns the seconds the refresh took.
///
/// # Errors
/// When the definitions, the store or the refresh fail, or not every row
/// was written.
pub async fn load_profiles(store: &AnyStore, customers: u64, scratch: &Path) -> Result<f64> {
    let defs =
        FeatureDefinitions::load(&workspace_root().join("feature-store/definitions/fraud.toml"))?;
    store.apply_schema().await?;
    let csv = scratch.join(format!("profiles-{customers}.csv"));
    write_profiles(&csv, customers)?;
    let started = Instant::now();
    let outcome = refresh::run(
        store,
        &defs,
        "customer_profile_daily",
        None,
        &csv,
        &RefreshOptions {
            script_version: "bench".into(),
            force: true,
            ..RefreshOptions::default()
        },
        &|_| {},
    )
    .await?;
    let RefreshOutcome::Loaded(batch) = outcome else {
        bail!("the demo refresh did not load");
    };
    if batch.rows_written != customers {
        bail!("loaded {} of {customers} customers", batch.rows_written);
    }
    let _ = std::fs::remove_file(&csv);
    Ok(started.elapsed().as_secs_f64())
}

/// The request-time features of call `k` (varied so no two calls are alike):
/// amount, is_card_present, hour_of_day, distance_from_home_km.
pub fn request_values(k: u64) -> (f64, bool, i64, f64) {
    (
        5.0 + (k % 997) as f64 * 1.3,
        !k.is_multiple_of(3),
        (k % 24) as i64,
        (k % 200) as f64 * 0.7,
    )
}

/// The gateway `Predict` request of call `k` for `customer` (default
/// version).
pub fn predict_request(customer: u64, k: u64) -> gw::PredictRequest {
    use gw::feature_value::Kind;
    let fv = |k: Kind| gw::FeatureValue { kind: Some(k) };
    let (amount, card, hour, distance) = request_values(k);
    gw::PredictRequest {
        model: MODEL.into(),
        model_version: String::new(),
        entity: Some(gw::EntityKey {
            keys: HashMap::from([("customer_id".into(), customer_id(customer))]),
        }),
        request_features: HashMap::from([
            ("amount".into(), fv(Kind::DoubleValue(amount))),
            ("is_card_present".into(), fv(Kind::BoolValue(card))),
            ("hour_of_day".into(), fv(Kind::Int64Value(hour))),
            (
                "distance_from_home_km".into(),
                fv(Kind::DoubleValue(distance)),
            ),
        ]),
    }
}

/// The FP32 row the gateway assembles for the same call: the profile, the
/// activity defaults (no dynamic values are loaded), the request features
/// with merchant_category_risk defaulted.
pub fn model_request(customer: u64, k: u64) -> inf::ModelInferRequest {
    let p = profile(customer);
    let store = [p[0], p[1], p[2], p[3], p[4], 0.0, 0.0, 0.0, 0.0, 1440.0];
    row_request("", &model_row(&store, k))
}

/// The model's 15 inputs for call `k`: the 10 store features (profile, then
/// activity), then the request features of [`request_values`] with
/// merchant_category_risk defaulted (0.21), in the order the gateway
/// assembles them.
pub fn model_row(store: &[f32; 10], k: u64) -> Vec<f32> {
    let (amount, card, hour, distance) = request_values(k);
    let mut row = store.to_vec();
    row.extend([
        amount as f32,
        0.21,
        f32::from(u8::from(card)),
        hour as f32,
        distance as f32,
    ]);
    row
}

/// A single-row V2 `ModelInfer` for `fraud_detector` at `version` (`""`:
/// the server's default): `row` as the raw FP32 input `features` [1, n].
pub fn row_request(version: &str, row: &[f32]) -> inf::ModelInferRequest {
    inf::ModelInferRequest {
        model_name: MODEL.into(),
        model_version: version.into(),
        inputs: vec![inf::model_infer_request::InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: vec![1, row.len() as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![row.iter().flat_map(|x| x.to_le_bytes()).collect()],
        ..Default::default()
    }
}

/// Which customer each call asks for.
pub enum Keys {
    /// `k % count`: a small hot set, warmed into the row cache.
    Hot {
        /// Size of the hot set.
        count: u64,
    },
    /// Never repeated: a permutation of all loaded customers, walked by a
    /// counter shared by every step of the run.
    Fresh {
        /// Customers loaded.
        customers: u64,
        /// The shared counter.
        next: Arc<AtomicU64>,
    },
}

impl Keys {
    /// [`Keys::Fresh`] over `customers`, from the start.
    pub fn fresh(customers: u64) -> Self {
        Keys::Fresh {
            customers,
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The customer call `k` asks for.
    pub fn customer(&self, k: u64) -> u64 {
        match self {
            Keys::Hot { count } => k % count,
            Keys::Fresh { customers, next } => {
                let n = next.fetch_add(1, Ordering::Relaxed) % customers;
                // n ↦ n·p mod N is a permutation when p (a prime above any
                // N used here) shares no factor with N; it spreads the reads
                // over the whole key range instead of walking it in order.
                ((u128::from(n) * 2_654_435_761) % u128::from(*customers)) as u64
            }
        }
    }
}

/// The dynamic view the demo's activity goes to.
pub const ACTIVITY_VIEW: &str = "customer_activity";

/// Writes customer `i`'s recent activity for every customer below
/// `customers`: the view's two pushed values and `events` raw events
/// (transactions with an amount, and every fifth a failed authentication)
/// spread over the last 23 hours, a quarter of them inside the last hour, so
/// each windowed aggregate reads events at serving time. Returns the seconds
/// taken.
///
/// # Errors
/// When a write fails.
pub async fn load_activity(store: &AnyStore, customers: u64, events: u64) -> Result<f64> {
    use feature_store::aggregate::Event;
    use feature_store::definitions::FeatureValue;
    use feature_store::store::{DynamicWrite, EventWrite};
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};
    const LANES: u64 = 4;
    let started = Instant::now();
    let now = SystemTime::now();
    let expires_at = now + Duration::from_secs(48 * 3600);
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..LANES {
        let store = store.clone();
        tasks.spawn(async move {
            let mut i = lane;
            while i < customers {
                let key = customer_id(i);
                let values = [
                    (
                        "distinct_merchants_24h".to_owned(),
                        FeatureValue::Int64((i % 9) as i64 + 1),
                    ),
                    (
                        "minutes_since_last_txn".to_owned(),
                        FeatureValue::Float32((i % 600) as f32),
                    ),
                ];
                retried(&format!("the activity of {key}"), || {
                    store.write_dynamic(DynamicWrite {
                        view: ACTIVITY_VIEW,
                        entity_key: &key,
                        values: &values,
                        event_time: now,
                        expires_at,
                    })
                })
                .await?;
                let made: Vec<Event> = (0..events)
                    .map(|e| {
                        // A quarter inside the last hour, the rest up to 23 h back.
                        let age_s = if e % 4 == 0 {
                            60 + (e * 97 + i) % 3000
                        } else {
                            3600 + (e * 4001 + i * 13) % (22 * 3600)
                        };
                        let fields = if e % 5 == 4 {
                            BTreeMap::from([(
                                "failed_auth_id".to_owned(),
                                FeatureValue::String(format!("f-{i}-{e}")),
                            )])
                        } else {
                            BTreeMap::from([
                                (
                                    "transaction_id".to_owned(),
                                    FeatureValue::String(format!("t-{i}-{e}")),
                                ),
                                (
                                    "amount".to_owned(),
                                    FeatureValue::Float64(5.0 + ((i + e) % 400) as f64 * 0.75),
                                ),
                            ])
                        };
                        Event::new(&key, None, now - Duration::from_secs(age_s), fields)
                    })
                    .collect();
                let writes: Vec<EventWrite<'_>> = made
                    .iter()
                    .map(|event| EventWrite {
                        view: ACTIVITY_VIEW,
                        entity_key: &key,
                        event,
                        expires_at,
                    })
                    .collect();
                retried(&format!("the events of {key}"), || {
                    store.write_events(&writes)
                })
                .await?;
                i += LANES;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Runs a store write until it succeeds, 8 attempts at most, 1, 2, … s
/// apart: a fresh node busy with a bulk load times writes out now and then,
/// and set-up is not what a bench measures (the writes are idempotent).
async fn retried<F, Fut>(what: &str, write: F) -> Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), feature_store::store::StoreError>>,
{
    let mut attempt = 0;
    loop {
        match write().await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < 7 => {
                attempt += 1;
                eprintln!("writing {what}: {e}; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(attempt)).await;
            }
            Err(e) => bail!("writing {what}, 8 attempts: {e:#}"),
        }
    }
}

/// The REST body of `POST /v1/models/fraud_detector/predict` for call `k`
/// about `customer`: the same request as [`predict_request`].
pub fn predict_json(customer: u64, k: u64) -> serde_json::Value {
    let (amount, card, hour, distance) = request_values(k);
    serde_json::json!({
        "entity": {"customer_id": customer_id(customer)},
        "request_features": {
            "amount": amount, "is_card_present": card, "hour_of_day": hour,
            "distance_from_home_km": distance,
        },
    })
}
