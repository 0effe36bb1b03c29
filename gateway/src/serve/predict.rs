//! One prediction, and a batch of them: the policy check (a pilot version
//! only for its groups), route → enrich → infer → post-process within the
//! request's budget, the prediction log record, and shadow copies sent off
//! the caller's path.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use feature_store::definitions::ScoringKey;
use feature_store::log::{LoggedOutput, PredictionRecord, PredictionSource};
use feature_store::store::FullStore;
use tracing::Instrument as _;

use super::{Core, PredictInput, Prediction, Route};
use crate::auth::{Api, Caller};
use crate::config::PrecomputedMode;
use crate::enrich::Enriched;
use crate::error::GatewayError;
use crate::metrics::{Front, Lookup};
use crate::postprocess::Processed;
use crate::predlog::PredictionLog;
use crate::rollout::{self, RouteKey, RouteKind, StickyBy};

impl<S: FullStore> Core<S> {
    /// Predicts for `input` on behalf of `caller` (come in through `front`)
    /// within `deadline` (capped by the configured request timeout), after
    /// the policy check; a successful answer's latencies are recorded.
    ///
    /// # Errors
    /// [`GatewayError`]: denied, unknown model, bad input, feature store or
    /// model-server failure, deadline.
    pub async fn predict(
        &self,
        front: Front,
        caller: &Caller,
        input: &PredictInput,
        deadline: Option<Duration>,
    ) -> Result<Prediction, GatewayError> {
        let started = std::time::Instant::now();
        self.admit(front, caller, input)?;
        let prediction = self.predict_within(input, deadline).await?;
        self.metrics
            .prediction(started.elapsed(), prediction.model_time);
        Ok(prediction)
    }

    /// Predicts for each of `inputs` (one model's entities) at once, after
    /// checking every one against the policy; fails as a whole with the
    /// first error.
    ///
    /// # Errors
    /// As [`Core::predict`].
    pub async fn predict_batch(
        &self,
        front: Front,
        caller: &Caller,
        inputs: &[PredictInput],
        deadline: Option<Duration>,
    ) -> Result<Vec<Prediction>, GatewayError> {
        for input in inputs {
            self.admit(front, caller, input)?;
        }
        self.metrics.batch_entities(inputs.len());
        let answers =
            futures_util::future::join_all(inputs.iter().map(|i| self.predict_within(i, deadline)))
                .await;
        answers.into_iter().collect()
    }

    /// Checks a prediction to be made later as [`Core::predict`] checks it
    /// (policy, model, version, entity and request features) without doing
    /// it; the entity's store key, which keys the queued request.
    ///
    /// # Errors
    /// As [`Core::predict`]'s checks.
    pub fn check_queued(
        &self,
        front: Front,
        caller: &Caller,
        input: &PredictInput,
    ) -> Result<String, GatewayError> {
        let route = self.route(&input.model)?;
        self.admit(front, caller, input)?;
        Ok(self
            .enricher
            .check_request(&route.features, &input.keys, &input.request_features)?)
    }

    /// The store key of `model`'s entity for `keys`.
    ///
    /// # Errors
    /// An unknown model, or keys that do not fit its entity.
    pub fn entity_key_of(
        &self,
        model: &str,
        keys: &std::collections::HashMap<String, String>,
    ) -> Result<String, GatewayError> {
        let route = self.route(model)?;
        Ok(self.enricher.entity_key(&route.features, keys)?)
    }

    /// Predicts for `input` accepted earlier by [`Core::check_queued`]
    /// (the policy was checked then, for the caller named in `input`)
    /// within `deadline`.
    ///
    /// # Errors
    /// As [`Core::predict`], but for the policy.
    pub async fn predict_queued(
        &self,
        input: &PredictInput,
        deadline: Duration,
    ) -> Result<Prediction, GatewayError> {
        let started = std::time::Instant::now();
        let prediction = self.predict_within(input, Some(deadline)).await?;
        self.metrics
            .prediction(started.elapsed(), prediction.model_time);
        Ok(prediction)
    }

    /// The policy check of one prediction, before any work is done; an
    /// unknown model is left to the prediction (404).
    fn admit(
        &self,
        front: Front,
        caller: &Caller,
        input: &PredictInput,
    ) -> Result<(), GatewayError> {
        let Some(route) = self.routes.get(&input.model) else {
            return Ok(());
        };
        crate::metrics::note_model(route.slot);
        self.authz.predict(front, caller, &input.model)?;
        // A pilot version asked for by a caller outside its groups is a
        // policy denial too (counted with the others).
        self.check_explicit_version(input).inspect_err(|e| {
            if e.is_denial() {
                self.authz.count_denied(front, Api::Predict);
            }
        })
    }

    /// Whether the caller of `input` may have the version it asks for
    /// explicitly (a pilot version only for its groups), checked before any
    /// work is done; nothing to check without an explicit version.
    ///
    /// # Errors
    /// [`GatewayError::PermissionDenied`] for a pilot version outside the
    /// caller's groups, [`GatewayError::UnknownVersion`] for a version the
    /// routing does not serve.
    fn check_explicit_version(&self, input: &PredictInput) -> Result<(), GatewayError> {
        if input.model_version.is_empty() {
            return Ok(());
        }
        let Some(served) = self.routing.current(&input.model) else {
            return Ok(());
        };
        rollout::choose(
            &served.table,
            &input.model,
            RouteKey {
                subject: &input.subject,
                groups: &input.groups,
                entity: "",
                explicit: &input.model_version,
            },
        )
        .map(drop)
        .map_err(GatewayError::from)
    }

    /// Predicts for one entity within `deadline` (capped by the configured
    /// request timeout), without a policy check.
    async fn predict_within(
        &self,
        input: &PredictInput,
        deadline: Option<Duration>,
    ) -> Result<Prediction, GatewayError> {
        let budget = deadline.map_or(self.request_timeout, |d| d.min(self.request_timeout));
        match tokio::time::timeout(budget, self.predict_inner(input, budget)).await {
            Ok(result) => result,
            Err(_) => Err(GatewayError::DeadlineExceeded),
        }
    }

    async fn predict_inner(
        &self,
        input: &PredictInput,
        budget: Duration,
    ) -> Result<Prediction, GatewayError> {
        let started = tokio::time::Instant::now();
        let route = self.route(&input.model)?;
        crate::metrics::note_model(route.slot);
        let served = self.routing.current(&input.model).ok_or_else(|| {
            GatewayError::RoutingDamaged(format!("model {:?} has no routing", input.model))
        })?;
        let table = &served.table;
        // The entity key is hashed only when a canary splits by entity.
        let sticky_entity = if table.canary.is_some() && table.sticky_by == StickyBy::Entity {
            self.enricher.entity_key(&route.features, &input.keys)?
        } else {
            String::new()
        };
        let (version, kind) = tracing::info_span!("route").in_scope(|| {
            rollout::choose(
                table,
                &route.config.name,
                RouteKey {
                    subject: &input.subject,
                    groups: &input.groups,
                    entity: &sticky_entity,
                    explicit: &input.model_version,
                },
            )
        })?;
        let now = SystemTime::now();
        let mut enriched: Option<Enriched> = None;
        if let Some(scores) = &route.scores {
            // The key: an entity's before any read; a combination's from
            // the assembled row (kept for a live answer).
            let key = match &scores.job().key {
                ScoringKey::Entity if !input.request_features.is_empty() => {
                    Err(Lookup::RequestFeatures)
                }
                ScoringKey::Entity if sticky_entity.is_empty() => {
                    Ok(self.enricher.entity_key(&route.features, &input.keys)?)
                }
                ScoringKey::Entity => Ok(sticky_entity.clone()),
                ScoringKey::Combination(_) => {
                    let e = self.enrich(route, input, now).await?;
                    let key = scores.job().key.of_row(&e.entity_key, &e.row);
                    enriched = Some(e);
                    Ok(key)
                }
            };
            let found = match key {
                Ok(key) => self
                    .precomputed
                    .lookup(
                        self.enricher.reader(),
                        scores,
                        route.slot.number(),
                        &key,
                        version,
                        now,
                    )
                    .instrument(tracing::info_span!("precomputed"))
                    .await
                    .map(|hit| {
                        let entity = enriched.as_ref().map_or(key, |e| e.entity_key.clone());
                        (hit, entity)
                    }),
                Err(reason) => Err(reason),
            };
            self.metrics.precomputed(
                route.slot,
                found
                    .as_ref()
                    .map_or_else(|reason| *reason, |_| Lookup::Hit),
            );
            match found {
                Ok((hit, entity)) => {
                    let prediction = Prediction {
                        prediction_id: uuid::Uuid::now_v7().to_string(),
                        model: route.config.name.clone(),
                        model_version: hit.model_version.clone(),
                        outputs: hit.outputs.clone(),
                        view_ages: enriched
                            .as_ref()
                            .map_or_else(Vec::new, |e| e.view_ages.clone()),
                        defaulted: enriched
                            .as_ref()
                            .map_or_else(Vec::new, |e| e.defaulted.clone()),
                        row: enriched.map_or_else(Vec::new, |e| e.row),
                        model_time: Duration::ZERO,
                        route: kind,
                        source: PredictionSource::Precomputed {
                            batch_id: hit.batch_id.to_string(),
                        },
                        precomputed_age: Some(hit.age(now)),
                    };
                    if let Some(log) = &self.log {
                        let _log_span = tracing::info_span!("log").entered();
                        log.record(record(input, &prediction, entity));
                    }
                    return Ok(prediction);
                }
                Err(reason) if route.config.precomputed == PrecomputedMode::Only => {
                    return Err(GatewayError::NotPrecomputed {
                        model: route.config.name.clone(),
                        reason: reason.as_str(),
                    });
                }
                Err(_) => {}
            }
        }
        let enriched = match enriched {
            Some(e) => e,
            None => self.enrich(route, input, now).await?,
        };
        let left = budget.saturating_sub(started.elapsed());
        let model_deadline = left.min(route.config.timeout);
        let answer = route
            .client(version)?
            .infer_row(
                &route.config.name,
                version,
                route.features.input().name(),
                &enriched.row,
                route.config.coalesce,
                model_deadline,
            )
            .instrument(tracing::info_span!("infer", endpoint = %route.config.endpoint_of(version), version = %version, route = kind.as_str()))
            .await?;
        let outputs = tracing::info_span!("postprocess")
            .in_scope(|| {
                route
                    .config
                    .postprocess
                    .apply(&answer.outputs.outputs, answer.row)
            })
            .map_err(|detail| GatewayError::BadModelAnswer {
                model: route.config.name.clone(),
                detail,
            })?;
        let prediction = Prediction {
            prediction_id: uuid::Uuid::now_v7().to_string(),
            model: route.config.name.clone(),
            model_version: answer.outputs.model_version.clone(),
            outputs,
            view_ages: enriched.view_ages,
            defaulted: enriched.defaulted,
            row: enriched.row,
            model_time: answer.elapsed,
            route: kind,
            source: PredictionSource::Live,
            precomputed_age: None,
        };
        if let Some(log) = &self.log {
            // Building and queueing the log record is its own stage.
            let _log_span = tracing::info_span!("log").entered();
            let record = record(input, &prediction, enriched.entity_key);
            if !table.shadows.is_empty() {
                self.shadow(route, &table.shadows, &record, log);
            }
            log.record(record);
        }
        Ok(prediction)
    }

    /// The caller's row for `route`'s model.
    async fn enrich(
        &self,
        route: &Route,
        input: &PredictInput,
        now: SystemTime,
    ) -> Result<Enriched, GatewayError> {
        Ok(self
            .enricher
            .enrich(&route.features, &input.keys, &input.request_features, now)
            .instrument(tracing::info_span!("enrich", model = %route.config.name))
            .await?)
    }

    /// Sends a copy of an answered call's input to each shadow version, on
    /// tasks of their own bounded by the shadow pool; a full pool drops the
    /// copy (counted). Each answer is logged as a `shadow` record naming the
    /// prediction it shadowed. Nothing here can delay or fail the caller.
    fn shadow(
        &self,
        route: &Arc<Route>,
        versions: &[String],
        primary: &PredictionRecord,
        log: &Arc<PredictionLog>,
    ) {
        for version in versions {
            let Some(permit) = self.shadows.try_start(&route.config.name, version) else {
                continue;
            };
            let (route, pool, log) = (
                Arc::clone(route),
                Arc::clone(&self.shadows),
                Arc::clone(log),
            );
            let version = version.clone();
            let mut record = primary.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let m = &route.config;
                let result = async {
                    let answer = route
                        .shadow_client(&version)?
                        .infer_row(
                            &m.name,
                            &version,
                            route.features.input().name(),
                            &record.inputs,
                            m.coalesce,
                            pool.timeout(),
                        )
                        .await?;
                    let outputs = m
                        .postprocess
                        .apply(&answer.outputs.outputs, answer.row)
                        .map_err(|detail| GatewayError::BadModelAnswer {
                            model: m.name.clone(),
                            detail,
                        })?;
                    Ok::<_, GatewayError>((
                        answer.outputs.model_version.clone(),
                        answer.elapsed,
                        outputs,
                    ))
                }
                .await;
                match result {
                    Ok((answered_version, elapsed, outputs)) => {
                        pool.finished(&m.name, &version, true);
                        record.shadow_of = Some(std::mem::take(&mut record.prediction_id));
                        record.prediction_id = uuid::Uuid::now_v7().to_string();
                        record.at = feature_store::store::now_micros();
                        record.model_version = answered_version;
                        record.route = RouteKind::Shadow.as_str().to_owned();
                        record.outputs = logged(&outputs);
                        record.model_time_us = Some(micros(elapsed));
                        log.record(record);
                    }
                    Err(e) => {
                        pool.finished(&m.name, &version, false);
                        tracing::debug!(model = %m.name, version = %version, "shadow call failed: {e}");
                    }
                }
            });
        }
    }
}

/// The prediction log record of an answer to `input`.
fn record(input: &PredictInput, prediction: &Prediction, entity: String) -> PredictionRecord {
    PredictionRecord {
        prediction_id: prediction.prediction_id.clone(),
        at: feature_store::store::now_micros(),
        subject: input.subject.clone(),
        model: prediction.model.clone(),
        model_version: prediction.model_version.clone(),
        route: prediction.route.as_str().to_owned(),
        entity,
        inputs: prediction.row.clone(),
        view_ages_ms: prediction
            .view_ages
            .iter()
            .map(|(v, age)| {
                (
                    v.clone(),
                    age.map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
                )
            })
            .collect(),
        defaulted: prediction.defaulted.clone(),
        outputs: logged(&prediction.outputs),
        shadow_of: None,
        model_time_us: (prediction.source == PredictionSource::Live)
            .then(|| micros(prediction.model_time)),
        source: prediction.source.clone(),
    }
}

fn logged(outputs: &[Processed]) -> Vec<LoggedOutput> {
    outputs
        .iter()
        .map(|o| LoggedOutput {
            name: o.name.clone(),
            label: (!o.label.is_empty()).then(|| o.label.clone()),
            score: o.score,
        })
        .collect()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
