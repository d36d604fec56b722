//! The REST API: StackStorm's v1 paths and JSON shapes.
//!
//! Every route is mounted under `/api/v1` (one port for everything) and
//! under `/v1` (StackStorm's per-service layout behind a proxy that strips
//! `/api`). Errors are `{"faultstring": "..."}` with a status code that says
//! whose fault it is.

mod aliases;
mod audit;
pub mod auth;
mod configs;
mod content;
pub use content::pack_dirs;
mod edit;
mod enforcements;
mod error;
mod executions;
mod inquiries;
mod keys;
mod listing;
mod pack_install;
mod purge;
mod query;
mod rule_test;
mod sensors;
mod service_registry;
mod stream;
mod traces;
mod triggers;
mod ui;
mod workflows;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use squall_actors::auth::AuthStore;
use squall_actors::bus::Bus;
use squall_actors::catalog::CatalogHandle;
use squall_actors::cluster::ClusterView;
use squall_actors::configs::ConfigCache;
use squall_actors::history::HistoryHandle;
use squall_actors::keys::{KeyCache, KeyStore};
use squall_domain::aliases::AliasDef;
use squall_domain::model::{ActionDef, RuleDef};
use squall_domain::template::Renderer;

pub use error::ApiError;

/// Largest request body accepted (bigger ones get 413).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// What every handler can reach. Axum clones the state for every request:
/// this is one reference count.
#[derive(Clone)]
pub struct ApiState(Arc<ApiContext>);

impl ApiState {
    /// Shares `context` between handlers.
    pub fn new(context: ApiContext) -> ApiState {
        ApiState(Arc::new(context))
    }
}

impl std::ops::Deref for ApiState {
    type Target = ApiContext;

    fn deref(&self) -> &ApiContext {
        &self.0
    }
}

/// What an [`ApiState`] holds.
pub struct ApiContext {
    pub bus: Bus,
    pub catalog: CatalogHandle,
    pub renderer: Arc<Renderer>,
    /// The datastore as templates read it.
    pub kv: KeyCache,
    /// Every execution, summarised, for lists.
    pub history: HistoryHandle,
    /// Directories `POST /packs/register` looks in.
    pub pack_dirs: Vec<PathBuf>,
    /// Where pack config files are (`<dir>/<pack>.yaml`), if anywhere.
    pub configs_dir: Option<PathBuf>,
    /// Pack config values, mirrored.
    pub configs: ConfigCache,
    pub auth: AuthStore,
    /// Failed logins, for throttling password guesses.
    pub logins: squall_actors::logins::LoginThrottle,
    pub keys: KeyStore,
    /// Life of a token when the login names none.
    pub token_ttl: Duration,
    /// The cluster's nodes as this node sees them.
    pub cluster: ClusterView,
    /// This node's pack virtualenvs, built when a pack registers.
    pub virtualenvs: squall_runners::venv::Virtualenvs,
    /// The audit exporters this node runs, by destination.
    pub audit_exporters:
        std::collections::BTreeMap<String, squall_actors::audit::export::StateHandle>,
    /// The audit destinations this node's config names.
    pub audit_destinations: Vec<String>,
    /// Trigger instances, indexed for their list.
    pub instances: squall_actors::rule_history::InstanceHistory,
    /// Rule enforcements, indexed for their list.
    pub enforcements: squall_actors::rule_history::EnforcementHistory,
}

/// The whole API as a router.
pub fn app(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/", get(version))
        .route("/openapi.json", get(openapi_json))
        .route(
            "/executions",
            get(executions::list).post(executions::create),
        )
        .route(
            "/executions/{id}",
            get(executions::get_one)
                .put(executions::update)
                .delete(executions::cancel),
        )
        .route("/executions/{id}/children", get(executions::children))
        .route("/executions/{id}/output", get(executions::output))
        .route("/executions/{id}/re_run", post(executions::re_run))
        .route("/executions/{id}/workflow", get(workflows::graph))
        .route("/executions/purge", post(purge::executions))
        .route("/triggerinstances/purge", post(purge::trigger_instances))
        .route("/ruleenforcements/purge", post(purge::rule_enforcements))
        .route("/inquiries", get(inquiries::list))
        .route(
            "/inquiries/{id}",
            get(inquiries::get_one).put(inquiries::respond),
        )
        .route("/workflows/inspect", post(workflows::inspect))
        .route("/ruleenforcements", get(enforcements::list))
        .route("/ruleenforcements/{id}", get(enforcements::get_one))
        .route("/triggerinstances", get(triggers::list_instances))
        .route("/timers", get(triggers::list_timers))
        .route("/timers/{reference}", get(triggers::get_timer))
        .route("/user", get(auth::whoami))
        .route(
            "/actions",
            get(content::list_actions).post(edit::create::<ActionDef>),
        )
        .route(
            "/actions/{reference}",
            get(content::get_action)
                .put(edit::update::<ActionDef>)
                .delete(edit::delete::<ActionDef>),
        )
        .route(
            "/rules",
            get(content::list_rules).post(edit::create::<RuleDef>),
        )
        .route("/rules/test", post(rule_test::test))
        .route(
            "/rules/{reference}",
            get(content::get_rule)
                .put(edit::update::<RuleDef>)
                .delete(edit::delete::<RuleDef>),
        )
        .route("/packs", get(content::list_packs))
        .route("/packs/{reference}", get(content::get_pack))
        .route("/policies", get(content::list_policies))
        .route("/policies/{reference}", get(content::get_policy))
        .route("/policytypes", get(content::list_policy_types))
        .route("/policytypes/{reference}", get(content::get_policy_type))
        .route("/triggers", get(triggers::list_triggers))
        .route("/triggers/{reference}", get(triggers::get_trigger))
        .route("/triggerinstances/{id}/re_emit", post(triggers::re_emit))
        .route("/triggertypes/{reference}", get(content::get_trigger_type))
        .route("/packs/register", post(content::register_packs))
        .route("/packs/install", post(pack_install::install))
        .route("/packs/uninstall", post(pack_install::uninstall))
        .route("/configs", get(configs::list))
        .route("/configs/{pack}", get(configs::get_one).put(configs::put))
        .route("/config_schemas", get(configs::list_schemas))
        .route("/config_schemas/{pack}", get(configs::get_schema))
        .route("/triggertypes", get(content::list_trigger_types))
        .route("/sensortypes", get(sensors::list))
        .route("/sensortypes/{reference}", get(sensors::get_one))
        .route("/runnertypes", get(content::list_runner_types))
        .route("/runnertypes/{name}", get(content::get_runner_type))
        .route("/triggerinstances/{id}", get(triggers::get_instance))
        .route("/webhooks", get(triggers::list_webhooks))
        .route(
            "/webhooks/{*url}",
            get(triggers::get_webhook).post(triggers::fire_webhook),
        )
        .route(
            "/apikeys",
            get(auth::list_api_keys).post(auth::create_api_key),
        )
        .route(
            "/apikeys/{id}",
            get(auth::get_api_key)
                .put(auth::update_api_key)
                .delete(auth::delete_api_key),
        )
        .route("/users", get(auth::list_users).post(auth::create_user))
        .route(
            "/actionalias",
            get(aliases::list).post(edit::create::<AliasDef>),
        )
        .route("/actionalias/match", post(aliases::match_command))
        .route("/actionalias/help", get(aliases::help))
        .route(
            "/actionalias/{reference}",
            get(aliases::get_one)
                .put(edit::update::<AliasDef>)
                .delete(edit::delete::<AliasDef>),
        )
        .route("/aliasexecution", post(aliases::execute_named))
        .route(
            "/aliasexecution/match_and_execute",
            post(aliases::match_and_execute),
        )
        .route("/lockouts", get(auth::list_lockouts))
        .route(
            "/lockouts/{kind}/{name}",
            axum::routing::delete(auth::clear_lockout),
        )
        .route("/stream", get(stream::stream))
        .route("/service_registry/groups", get(service_registry::groups))
        .route(
            "/service_registry/groups/{group_id}/members",
            get(service_registry::members),
        )
        .route("/keys", get(keys::list))
        .route(
            "/keys/{*name}",
            get(keys::get_one).put(keys::set).delete(keys::delete),
        )
        .route("/audit/status", get(audit::status))
        .route("/traces", get(traces::list))
        .route("/traces/{id}", get(traces::get_one))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ));
    let router = Router::new()
        .nest("/stream/v1", stream_routes(&state))
        .nest("/api/v1", v1.clone())
        .nest("/v1", v1)
        .route("/auth/v1/tokens", post(auth::create_token))
        .route("/tokens", post(auth::create_token))
        .route("/metrics", get(metrics))
        .merge(ui::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(query::json_errors));
    crate::telemetry::observe(router).with_state(state)
}

/// The event stream's routes (`/stream`, `/executions/{id}/output`).
fn stream_routes(state: &ApiState) -> Router<ApiState> {
    Router::new()
        .route("/stream", get(stream::stream))
        .route("/executions/{id}/output", get(stream::output))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
}

/// What StackStorm's stream port (9102) serves: the stream under `/v1`
/// (and `/stream/v1`), where `/v1/executions/{id}/output` is the live
/// event stream rather than the API's plain text.
pub fn stream_app(state: ApiState) -> Router {
    Router::new()
        .nest("/v1", stream_routes(&state))
        .nest("/stream/v1", stream_routes(&state))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(query::json_errors))
        .with_state(state)
}

/// The router as served: a trailing slash is ignored (`/rules/` is
/// `/rules`), as StackStorm's API and clients expect.
/// Each request carries its client's address (`ConnectInfo`), which
/// login throttling counts failures by.
/// `/rules`), as StackStorm's API and clients expect; the peer's address
/// is kept for the audit trail.
pub fn into_service(
    app: Router,
) -> axum::extract::connect_info::IntoMakeServiceWithConnectInfo<
    tower_http::normalize_path::NormalizePath<Router>,
    std::net::SocketAddr,
> {
    use tower::Layer;
    axum::ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
        std::net::SocketAddr,
    >(tower_http::normalize_path::NormalizePathLayer::trim_trailing_slash().layer(app))
}

async fn version() -> Json<Value> {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "docs_url": "https://docs.stackstorm.com/",
        "product": "squall",
    }))
}

/// The OpenAPI document of every route (`openapi.yaml`, checked against
/// this file's routes by a test).
pub fn openapi() -> &'static Value {
    static DOC: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| {
        serde_yaml::from_str(include_str!("openapi.yaml"))
            .expect("openapi.yaml is valid YAML (a unit test parses it)")
    });
    &DOC
}

async fn openapi_json() -> Json<Value> {
    Json(openapi().clone())
}

async fn metrics(axum::extract::State(st): axum::extract::State<ApiState>) -> String {
    let mut out = squall_actors::metrics::render();
    out.push_str(&st.bus.ops.render());
    out
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `(method, path)` of every `.route(...)` in `source`, under `prefix`;
    /// `{*rest}` is written `{rest}` as OpenAPI does.
    fn routes_in(source: &str, prefix: &str) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for call in source.split(".route(").skip(1) {
            let Some(path) = call.split('"').nth(1) else {
                continue;
            };
            // The handlers: up to the call's closing parenthesis.
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(call.len(), |(i, _)| i);
            let path = format!("{prefix}{}", path.replace("{*", "{"));
            for method in ["get", "post", "put", "delete"] {
                if call[..end].contains(&format!("{method}(")) {
                    out.insert((method.to_string(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_served_routes() {
        let source = include_str!("mod.rs");
        let section = |from: &str, to: &str| {
            let start = source.find(from).expect("section start");
            let end = start + source[start..].find(to).expect("section end");
            &source[start..end]
        };
        let mut served = routes_in(
            section("let v1 = Router::new()", ".fallback(not_found)"),
            "/api/v1",
        );
        served.extend(routes_in(
            section("fn stream_routes", ".layer("),
            "/stream/v1",
        ));
        served.extend(routes_in(
            section(".nest(\"/v1\", v1)", ".fallback(not_found)"),
            "",
        ));
        // `/tokens` is the auth port's name for `/auth/v1/tokens`.
        served.remove(&("post".to_string(), "/tokens".to_string()));
        // The version document is `/api/v1/` (the router's `/`).
        served.remove(&("get".to_string(), "/api/v1/".to_string()));
        served.insert(("get".to_string(), "/api/v1/".to_string()));

        let doc = openapi();
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in ["get", "post", "put", "delete"] {
                if item.get(method).is_some() {
                    documented.insert((method.to_string(), path.clone()));
                }
            }
        }
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from openapi.yaml: {undocumented:?}"
        );
        assert!(
            unserved.is_empty(),
            "documented but not served: {unserved:?}"
        );
        assert!(served.len() > 50, "found only {} routes", served.len());
    }
}
