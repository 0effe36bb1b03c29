//! The routing admin API (reads for viewers, changes for admins), one core for both fronts: list
//! models with their routing, show one with its history, apply a change
//! (canary weight, promote, shadows, pilots, rollback), and the
//! shadow-vs-primary report from the prediction log. REST under
//! `/v1/admin/models/…`, gRPC `gateway.v1.RoutingAdminService`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use feature_store::store::{FullStore, LogWindow};
use proto::gateway::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tonic::{Request, Response, Status};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use crate::apidoc::AdminErrors;
use crate::auth::Caller;
use crate::error::GatewayError;
use crate::metrics::Front;
use crate::rollout::change::{RoutingAction, RoutingChange, RoutingDocument};
use crate::rollout::report::{ShadowReport, compare};
use crate::rollout::{RoutingTable, percent};
use crate::serve::Core;
use crate::state::AppState;

/// Longest the model-server checks of a change may take (within the
/// request's own timeout, of which they get three quarters).
const VERSION_CHECK_DEADLINE: Duration = Duration::from_secs(3);
/// Longest window a shadow report reads.
const MAX_REPORT_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// Log records a shadow report reads at most.
const MAX_REPORT_RECORDS: usize = 500_000;

/// A model's stored routing with (a tail of) its history.
#[derive(Debug, Clone)]
pub struct RoutingView {
    /// The model.
    pub model: String,
    /// The document's revision.
    pub revision: i64,
    /// The revision this gateway serves now (behind `revision` until its
    /// next poll when another replica made the change).
    pub served_revision: i64,
    /// The document.
    pub document: RoutingDocument,
}

/// The routing admin operations both fronts call, over the prediction
/// path's live routing.
pub struct RoutingAdmin<'a, S> {
    core: &'a Core<S>,
}

impl<'a, S: FullStore> RoutingAdmin<'a, S> {
    /// The operations over `core`.
    pub fn new(core: &'a Core<S>) -> Self {
        RoutingAdmin { core }
    }

    fn known_model(&self, model: &str) -> Result<(), GatewayError> {
        if self.core.serves(model) {
            Ok(())
        } else {
            Err(GatewayError::UnknownModel {
                model: model.to_owned(),
                known: self.core.model_names().join(", "),
            })
        }
    }

    /// The stored routing of `model` (history trimmed to the newest
    /// `history_limit`, 0 = all).
    ///
    /// # Errors
    /// Unknown model, store failure.
    pub async fn routing_view(
        &self,
        model: &str,
        history_limit: usize,
    ) -> Result<RoutingView, GatewayError> {
        self.known_model(model)?;
        let (revision, mut document) = self.core.routing().document(model).await?;
        if history_limit > 0 && document.history.len() > history_limit {
            let extra = document.history.len() - history_limit;
            document.history.drain(..extra);
        }
        let served_revision = self.core.routing().current(model).map_or(0, |s| s.revision);
        Ok(RoutingView {
            model: model.to_owned(),
            revision,
            served_revision,
            document,
        })
    }

    /// Applies `action` to `model` as `caller`, after checking the versions
    /// it brings into service on their model-servers.
    ///
    /// # Errors
    /// Unknown model, a change that does not fit, a failed version check, a
    /// conflict, the store.
    pub async fn change_routing(
        &self,
        model: &str,
        action: &RoutingAction,
        caller: &Caller,
        reason: Option<String>,
    ) -> Result<RoutingChange, GatewayError> {
        self.known_model(model)?;
        let core = self.core;
        let deadline = VERSION_CHECK_DEADLINE.min(core.request_timeout().mul_f64(0.75));
        let check = |versions: Vec<String>| async move {
            core.check_versions(model, &versions, deadline).await
        };
        Ok(core
            .routing()
            .apply(model, action, &caller.subject, reason, check)
            .await?)
    }

    /// Compares each shadow version of `model` with the answers it
    /// shadowed, over the last `window` of the prediction log.
    ///
    /// # Errors
    /// Unknown model, a window out of range, the store.
    pub async fn shadow_report(
        &self,
        model: &str,
        window: Duration,
    ) -> Result<ShadowReport, GatewayError> {
        self.known_model(model)?;
        if window.is_zero() || window > MAX_REPORT_WINDOW {
            return Err(GatewayError::InvalidArgument(format!(
                "window_s: {} is outside 1..={}",
                window.as_secs(),
                MAX_REPORT_WINDOW.as_secs()
            )));
        }
        if let Some(log) = self.core.prediction_log() {
            // Records still in the buffer count too.
            log.flush(Duration::from_secs(2)).await;
        }
        let to = SystemTime::now() + Duration::from_secs(1);
        let from = to - window;
        let entries = self
            .core
            .enricher()
            .reader()
            .store()
            .read_log(LogWindow {
                from,
                to,
                limit: MAX_REPORT_RECORDS,
            })
            .await
            .map_err(|e| GatewayError::FeatureStore(e.into()))?;
        Ok(compare(model, &entries))
    }
}

// JSON (REST). Fields are in alphabetical order: these answers were first
// written as `serde_json::Value`s, whose keys sort.

/// A routing table as JSON, the canary's share in percent.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RoutingTable)]
pub struct TableJson {
    /// The canary, if any.
    pub canary: Option<CanaryJson>,
    /// Pilot versions and their groups.
    pub pilots: Vec<PilotJson>,
    /// Shadow versions (called silently).
    pub shadows: Vec<String>,
    /// The stable version.
    pub stable: String,
    /// What keeps a caller on one side of the canary split.
    #[schema(value_type = String, example = "subject")]
    pub sticky_by: &'static str,
}

/// The canary of a routing table.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Canary)]
pub struct CanaryJson {
    /// Its share of the traffic in percent.
    pub percent: f64,
    /// The same share as text, e.g. "12.5%".
    pub share: String,
    /// The canary version.
    pub version: String,
}

/// A pilot version of a routing table.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Pilot)]
pub struct PilotJson {
    /// Whether members of its groups get it without asking.
    pub auto: bool,
    /// The groups that may use it.
    pub groups: Vec<String>,
    /// The pilot version.
    pub version: String,
}

/// One change of a model's routing.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RoutingChange)]
pub struct ChangeJson {
    /// The table after the change.
    pub after: TableJson,
    /// When, Unix milliseconds.
    pub at_ms: u64,
    /// The table before (none for the first).
    pub before: Option<TableJson>,
    /// Who made it.
    pub by: String,
    /// Why, if given.
    pub reason: Option<String>,
    /// The document's revision after the change.
    pub revision: i64,
    /// What changed, in words.
    pub what: String,
}

/// A model's routing with (a tail of) its history.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RoutingState)]
pub struct ViewJson {
    /// The routing now.
    pub current: TableJson,
    /// Changes, oldest first.
    pub history: Vec<ChangeJson>,
    /// The model.
    pub model: String,
    /// The document's revision.
    pub revision: i64,
    /// The revision this gateway serves (behind `revision` until its next
    /// poll when another replica made the change).
    pub served_revision: i64,
}

/// Every model with its routing and latest change.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = RoutingList)]
pub struct ListJson {
    /// One entry per model.
    pub models: Vec<ViewJson>,
}

/// A table as JSON, the canary's share in percent.
pub fn table_json(t: &RoutingTable) -> TableJson {
    TableJson {
        canary: t.canary.as_ref().map(|c| CanaryJson {
            percent: f64::from(c.basis_points) / 100.0,
            share: percent(c.basis_points),
            version: c.version.clone(),
        }),
        pilots: t
            .pilots
            .iter()
            .map(|p| PilotJson {
                auto: p.auto,
                groups: p.groups.clone(),
                version: p.version.clone(),
            })
            .collect(),
        shadows: t.shadows.clone(),
        stable: t.stable.clone(),
        sticky_by: t.sticky_by.as_str(),
    }
}

fn change_json(c: &RoutingChange) -> ChangeJson {
    ChangeJson {
        after: table_json(&c.after),
        at_ms: c.at_ms,
        before: c.before.as_ref().map(table_json),
        by: c.by.clone(),
        reason: c.reason.clone(),
        revision: c.revision,
        what: c.what.clone(),
    }
}

fn view_json(v: &RoutingView) -> ViewJson {
    ViewJson {
        current: table_json(&v.document.current),
        history: v.document.history.iter().map(change_json).collect(),
        model: v.model.clone(),
        revision: v.revision,
        served_revision: v.served_revision,
    }
}

/// The REST routes of the routing admin API (merged behind the auth
/// middleware by the REST front's router).
pub fn routes<S: FullStore>() -> OpenApiRouter<Arc<AppState<S>>> {
    use crate::typed_routes;
    OpenApiRouter::new()
        .routes(typed_routes!(S; rest_list))
        .routes(typed_routes!(S; rest_get, rest_change))
        .routes(typed_routes!(S; rest_shadow_report))
}

/// `GET /v1/admin/models`: every model with its routing and latest change.
#[utoipa::path(
    get,
    path = "/v1/admin/models",
    operation_id = "list_routing",
    summary = "Every model with its routing and latest change",
    responses((status = 200, description = "The models", body = ListJson), AdminErrors),
)]
pub async fn rest_list<S: FullStore>(
    State(state): State<Arc<AppState<S>>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ListJson>, GatewayError> {
    let result: Result<ListJson, GatewayError> = async {
        state.authz.view(Front::Rest, &caller)?;
        let admin = RoutingAdmin::new(&state.core);
        let mut models = Vec::new();
        for m in state.core.model_names() {
            models.push(view_json(&admin.routing_view(m, 1).await?));
        }
        Ok(ListJson { models })
    }
    .await;
    Ok(Json(result?))
}

/// Query of `GET /v1/admin/models/{model}/routing`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Newest changes to return (0 or absent: all).
    #[serde(default)]
    pub history_limit: usize,
}

/// `GET /v1/admin/models/{model}/routing`: the routing and its history.
#[utoipa::path(
    get,
    path = "/v1/admin/models/{model}/routing",
    operation_id = "get_routing",
    summary = "A model's routing and its history",
    params(("model" = String, Path, description = "The model's name", example = "fraud"), HistoryQuery),
    responses((status = 200, description = "The routing", body = ViewJson), AdminErrors),
)]
pub async fn rest_get<S: FullStore>(
    State(state): State<Arc<AppState<S>>>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ViewJson>, GatewayError> {
    let result: Result<ViewJson, GatewayError> = async {
        state.authz.view(Front::Rest, &caller)?;
        let admin = RoutingAdmin::new(&state.core);
        let Query(q) = query.map_err(|e| GatewayError::InvalidArgument(e.body_text()))?;
        Ok(view_json(
            &admin.routing_view(&model, q.history_limit).await?,
        ))
    }
    .await;
    Ok(Json(result?))
}

/// The body of `POST /v1/admin/models/{model}/routing`: one action
/// (`{"action": "set_canary", "version": "2", "percent": 10}`) and an
/// optional `reason`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(as = RoutingChangeRequest, example = json!({"action": "set_canary", "version": "2", "percent": 10, "reason": "try v2"}))]
pub struct ChangeBody {
    /// Why, for the history.
    #[serde(default)]
    pub reason: Option<String>,
    /// The action: `action` names it (set_stable, set_canary,
    /// set_canary_percent, promote, remove_canary, add_shadow,
    /// remove_shadow, add_pilot, remove_pilot, rollback), with its fields
    /// (`version`, `percent`, `groups`, `auto`) beside it.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub action: Value,
}

/// `POST /v1/admin/models/{model}/routing`: apply one change; answers the
/// new routing with the change last in its history.
#[utoipa::path(
    post,
    path = "/v1/admin/models/{model}/routing",
    operation_id = "change_routing",
    summary = "Apply one routing change",
    params(("model" = String, Path, description = "The model's name", example = "fraud")),
    request_body = ChangeBody,
    responses((status = 200, description = "The new routing, the change last in its history", body = ViewJson), AdminErrors),
)]
pub async fn rest_change<S: FullStore>(
    State(state): State<Arc<AppState<S>>>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
    body: Result<Json<ChangeBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ViewJson>, GatewayError> {
    let result: Result<ViewJson, GatewayError> = async {
        state.authz.admin(Front::Rest, &caller)?;
        let admin = RoutingAdmin::new(&state.core);
        let Json(body) = body.map_err(|e| {
            GatewayError::InvalidArgument(format!("request body: {}", e.body_text()))
        })?;
        let action: RoutingAction = serde_json::from_value(body.action).map_err(|e| {
            GatewayError::InvalidArgument(format!(
                "request body: {e}; actions: set_stable, set_canary, set_canary_percent, promote, remove_canary, add_shadow, remove_shadow, add_pilot, remove_pilot, rollback"
            ))
        })?;
        admin
            .change_routing(&model, &action, &caller, body.reason)
            .await?;
        Ok(view_json(&admin.routing_view(&model, 20).await?))
    }
    .await;
    Ok(Json(result?))
}

/// Query of `GET /v1/admin/models/{model}/shadow-report`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// The window in seconds, ending now (default 3600).
    #[serde(default = "hour")]
    pub window_s: u64,
}

fn hour() -> u64 {
    3600
}

/// `GET /v1/admin/models/{model}/shadow-report`: shadow vs primary
/// (agreement, score difference, model-server latency) from the log.
#[utoipa::path(
    get,
    path = "/v1/admin/models/{model}/shadow-report",
    operation_id = "shadow_report",
    summary = "Shadow versions vs the primary, from the prediction log",
    params(("model" = String, Path, description = "The model's name", example = "fraud"), ReportQuery),
    responses(
        (status = 200, description = "The report: the model's ShadowReport with the window", body = Object),
        AdminErrors,
    ),
)]
pub async fn rest_shadow_report<S: FullStore>(
    State(state): State<Arc<AppState<S>>>,
    Extension(caller): Extension<Caller>,
    Path(model): Path<String>,
    query: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, GatewayError> {
    let result: Result<Value, GatewayError> = async {
        state.authz.view(Front::Rest, &caller)?;
        let admin = RoutingAdmin::new(&state.core);
        let Query(q) = query.map_err(|e| GatewayError::InvalidArgument(e.body_text()))?;
        let report = admin
            .shadow_report(&model, Duration::from_secs(q.window_s))
            .await?;
        let mut v = serde_json::to_value(&report).map_err(GatewayError::Report)?;
        v["window_s"] = json!(q.window_s);
        Ok(v)
    }
    .await;
    Ok(Json(result?))
}

// gRPC.

fn table_pb(t: &RoutingTable) -> pb::RoutingTable {
    pb::RoutingTable {
        stable: t.stable.clone(),
        canary: t.canary.as_ref().map(|c| pb::Canary {
            version: c.version.clone(),
            percent: f64::from(c.basis_points) / 100.0,
        }),
        shadows: t.shadows.clone(),
        pilots: t
            .pilots
            .iter()
            .map(|p| pb::PilotVersion {
                version: p.version.clone(),
                groups: p.groups.clone(),
                auto: p.auto,
            })
            .collect(),
        sticky_by: t.sticky_by.as_str().to_owned(),
    }
}

fn state_pb(v: &RoutingView) -> pb::RoutingState {
    pb::RoutingState {
        model: v.model.clone(),
        revision: v.revision,
        served_revision: v.served_revision,
        current: Some(table_pb(&v.document.current)),
        history: v
            .document
            .history
            .iter()
            .map(|c| pb::RoutingChange {
                revision: c.revision,
                at_ms: i64::try_from(c.at_ms).unwrap_or(i64::MAX),
                by: c.by.clone(),
                what: c.what.clone(),
                reason: c.reason.clone().unwrap_or_default(),
                before: c.before.as_ref().map(table_pb),
                after: Some(table_pb(&c.after)),
            })
            .collect(),
    }
}

fn action_from_pb(
    a: Option<pb::change_routing_request::Action>,
) -> Result<RoutingAction, GatewayError> {
    use pb::change_routing_request::Action as A;
    Ok(match a {
        None => {
            return Err(GatewayError::InvalidArgument(
                "action: not set; send one of set_stable, set_canary, set_canary_percent, promote, remove_canary, add_shadow, remove_shadow, add_pilot, remove_pilot, rollback".into(),
            ));
        }
        Some(A::SetStable(x)) => RoutingAction::SetStable { version: x.version },
        Some(A::SetCanary(x)) => RoutingAction::SetCanary {
            version: x.version,
            percent: x.percent,
        },
        Some(A::SetCanaryPercent(x)) => RoutingAction::SetCanaryPercent { percent: x.percent },
        Some(A::Promote(_)) => RoutingAction::Promote {},
        Some(A::RemoveCanary(_)) => RoutingAction::RemoveCanary {},
        Some(A::AddShadow(x)) => RoutingAction::AddShadow { version: x.version },
        Some(A::RemoveShadow(x)) => RoutingAction::RemoveShadow { version: x.version },
        Some(A::AddPilot(x)) => RoutingAction::AddPilot {
            version: x.version,
            groups: x.groups,
            auto: !x.manual_only,
        },
        Some(A::RemovePilot(x)) => RoutingAction::RemovePilot { version: x.version },
        Some(A::Rollback(_)) => RoutingAction::Rollback {},
    })
}

/// `gateway.v1.RoutingAdminService` over the prediction path's routing.
pub struct RoutingAdminGrpc<S> {
    state: Arc<AppState<S>>,
}

impl<S> RoutingAdminGrpc<S> {
    /// Serves `state`.
    pub fn new(state: Arc<AppState<S>>) -> Self {
        RoutingAdminGrpc { state }
    }
}

impl<S: FullStore> RoutingAdminGrpc<S> {
    /// The request's caller, if the policy lets it use the admin API.
    fn admin<M>(&self, request: &Request<M>) -> Result<Caller, GatewayError> {
        let caller = Caller::of(request.extensions())?;
        self.state.authz.admin(Front::Grpc, caller)?;
        Ok(caller.clone())
    }

    /// The request's caller, if the policy lets it read the admin API.
    fn viewer<M>(&self, request: &Request<M>) -> Result<Caller, GatewayError> {
        let caller = Caller::of(request.extensions())?;
        self.state.authz.view(Front::Grpc, caller)?;
        Ok(caller.clone())
    }

    fn routing(&self) -> RoutingAdmin<'_, S> {
        RoutingAdmin::new(&self.state.core)
    }

    /// Turns a result into the gRPC answer.
    fn answer<T>(result: Result<T, GatewayError>) -> Result<Response<T>, Status> {
        result.map(Response::new).map_err(GatewayError::into_status)
    }
}

#[tonic::async_trait]
impl<S: FullStore> pb::routing_admin_service_server::RoutingAdminService for RoutingAdminGrpc<S> {
    async fn list_routing(
        &self,
        request: Request<pb::ListRoutingRequest>,
    ) -> Result<Response<pb::ListRoutingResponse>, Status> {
        let caller = self.viewer(&request);
        let result = async {
            caller?;
            let mut models = Vec::new();
            for m in self.state.core.model_names() {
                models.push(state_pb(&self.routing().routing_view(m, 1).await?));
            }
            Ok(pb::ListRoutingResponse { models })
        }
        .await;
        Self::answer(result)
    }

    async fn get_routing(
        &self,
        request: Request<pb::GetRoutingRequest>,
    ) -> Result<Response<pb::RoutingState>, Status> {
        let caller = self.viewer(&request);
        let r = request.into_inner();
        let result = async {
            caller?;
            let limit = r.history_limit as usize;
            Ok(state_pb(
                &self.routing().routing_view(&r.model, limit).await?,
            ))
        }
        .await;
        Self::answer(result)
    }

    async fn change_routing(
        &self,
        request: Request<pb::ChangeRoutingRequest>,
    ) -> Result<Response<pb::RoutingState>, Status> {
        let caller = self.admin(&request);
        let r = request.into_inner();
        let result = async {
            let caller = caller?;
            let action = action_from_pb(r.action)?;
            let reason = (!r.reason.is_empty()).then_some(r.reason);
            self.routing()
                .change_routing(&r.model, &action, &caller, reason)
                .await?;
            Ok(state_pb(&self.routing().routing_view(&r.model, 20).await?))
        }
        .await;
        Self::answer(result)
    }
}
