//! Registered content: actions, rules, packs, trigger types.

use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use squall_actors::catalog::{content_id, CatalogRule};
use squall_actors::{configs, content};
use squall_domain::model::{ActionDef, PackBundle, PolicyDef, TriggerTypeDef};
use squall_domain::policies;
use squall_domain::registration::Mode;

use super::error::{ApiError, ApiQuery};
use super::listing::{ListParams, Listed};
use super::ApiState;

pub fn action_view(a: &ActionDef) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), json!(content_id("action", &a.reference())));
        o.insert("ref".into(), json!(a.reference()));
        o.insert("uid".into(), json!(format!("action:{}:{}", a.pack, a.name)));
    }
    v
}

pub fn rule_view(r: &CatalogRule) -> Value {
    let mut v = serde_json::to_value(&r.def).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        // Squall's own bookkeeping: StackStorm's rule has no such field, and
        // a client sending the rule back would have it refused.
        o.remove("enabled_since");
        o.insert("id".into(), json!(r.id));
        o.insert("ref".into(), json!(r.def.reference()));
        o.insert(
            "uid".into(),
            json!(format!("rule:{}:{}", r.def.pack, r.def.name)),
        );
        if let Some(Value::Object(t)) = o.get_mut("trigger") {
            t.insert("ref".into(), json!(r.trigger_ref));
        }
    }
    v
}

fn pack_view(b: &PackBundle) -> Value {
    let mut v = serde_json::to_value(&b.pack).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), json!(content_id("pack", &b.pack.pack_ref)));
        o.insert("uid".into(), json!(format!("pack:{}", b.pack.pack_ref)));
        o.insert("path".into(), json!(b.path));
    }
    v
}

fn trigger_type_view(t: &TriggerTypeDef) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "id".into(),
            json!(content_id("trigger_type", &t.reference())),
        );
        o.insert("ref".into(), json!(t.reference()));
        o.insert(
            "uid".into(),
            json!(format!("trigger_type:{}:{}", t.pack, t.name)),
        );
    }
    v
}

/// Filters the content lists share.
#[derive(Debug, Default, Deserialize)]
pub struct ContentFilter {
    #[serde(default)]
    pack: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

impl ContentFilter {
    pub fn keeps(&self, pack: &str, name: &str) -> bool {
        self.pack.as_deref().is_none_or(|p| p == pack)
            && self.name.as_deref().is_none_or(|n| n == name)
    }
}

/// The item whose `pack.name` ref (or content id) is `reference`, viewed;
/// a 404 naming the `kind` otherwise.
pub fn find_by_ref<'a, T: 'a>(
    items: impl IntoIterator<Item = &'a T>,
    kind: &str,
    reference: &str,
    ref_of: impl Fn(&T) -> String,
    view: impl Fn(&T) -> Value,
) -> Result<Json<Value>, ApiError> {
    let id_kind = kind.replace(' ', "_");
    items
        .into_iter()
        .find(|item| {
            let r = ref_of(item);
            r == reference || content_id(&id_kind, &r) == reference
        })
        .map(|item| Json(view(item)))
        .ok_or_else(|| ApiError::NotFound(format!("{kind} {reference} not found")))
}

/// `GET /actions` (`pack`, `name` filter).
pub async fn list_actions(
    State(st): State<ApiState>,
    ApiQuery(list): ApiQuery<ListParams>,
    ApiQuery(f): ApiQuery<ContentFilter>,
) -> Result<Listed, ApiError> {
    let catalog = st.catalog.load();
    list.respond(
        catalog
            .actions
            .values()
            .filter(|a| f.keeps(&a.def.pack, &a.def.name))
            .map(|a| action_view(&a.def))
            .collect(),
    )
}

/// `GET /actions/{ref_or_id}`.
pub async fn get_action(
    State(st): State<ApiState>,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = st.catalog.load();
    find_by_ref(
        catalog.actions.values(),
        "action",
        &reference,
        |a| a.def.reference(),
        |a| action_view(&a.def),
    )
}

/// `GET /rules` (`pack`, `name` filter).
pub async fn list_rules(
    State(st): State<ApiState>,
    ApiQuery(list): ApiQuery<ListParams>,
    ApiQuery(f): ApiQuery<ContentFilter>,
) -> Result<Listed, ApiError> {
    let catalog = st.catalog.load();
    list.respond(
        catalog
            .rules
            .values()
            .filter(|r| f.keeps(&r.def.pack, &r.def.name))
            .map(|r| rule_view(r))
            .collect(),
    )
}

/// `GET /rules/{ref_or_id}`.
pub async fn get_rule(
    State(st): State<ApiState>,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = st.catalog.load();
    // A rule's id is derived like every content id.
    find_by_ref(
        catalog.rules.values(),
        "rule",
        &reference,
        |r| r.def.reference(),
        |r| rule_view(r),
    )
}

/// `GET /packs`.
pub async fn list_packs(
    State(st): State<ApiState>,
    ApiQuery(list): ApiQuery<ListParams>,
) -> Result<Listed, ApiError> {
    let catalog = st.catalog.load();
    list.respond(catalog.packs.values().map(pack_view).collect())
}

/// `GET /packs/{ref or id}`.
pub async fn get_pack(
    State(st): State<ApiState>,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = st.catalog.load();
    find_by_ref(
        catalog.packs.values(),
        "pack",
        &reference,
        |b| b.pack.pack_ref.clone(),
        pack_view,
    )
}

fn policy_view(p: &PolicyDef) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), json!(content_id("policy", &p.reference())));
        o.insert("ref".into(), json!(p.reference()));
        o.insert("uid".into(), json!(format!("policy:{}:{}", p.pack, p.name)));
    }
    v
}

/// Filters of `GET /policies`.
#[derive(Debug, Default, Deserialize)]
pub struct PolicyFilter {
    #[serde(default)]
    pack: Option<String>,
    #[serde(default)]
    resource_ref: Option<String>,
    #[serde(default)]
    policy_type: Option<String>,
}

/// `GET /policies` (`pack`, `resource_ref`, `policy_type` filter).
pub async fn list_policies(
    State(st): State<ApiState>,
    ApiQuery(list): ApiQuery<ListParams>,
    ApiQuery(f): ApiQuery<PolicyFilter>,
) -> Result<Listed, ApiError> {
    let catalog = st.catalog.load();
    list.respond(
        catalog
            .packs
            .values()
            .flat_map(|b| b.policies.iter())
            .filter(|p| {
                f.pack.as_deref().is_none_or(|x| x == p.pack)
                    && f.resource_ref
                        .as_deref()
                        .is_none_or(|x| x == p.resource_ref)
                    && f.policy_type.as_deref().is_none_or(|x| x == p.policy_type)
            })
            .map(policy_view)
            .collect(),
    )
}

/// `GET /policies/{ref or id}`.
pub async fn get_policy(
    State(st): State<ApiState>,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = st.catalog.load();
    find_by_ref(
        catalog.packs.values().flat_map(|b| b.policies.iter()),
        "policy",
        &reference,
        PolicyDef::reference,
        policy_view,
    )
}

fn policy_type_view(t: &policies::PolicyType) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), json!(content_id("policy_type", t.reference)));
        o.insert("uid".into(), json!(format!("policy_type:{}", t.reference)));
        o.insert("enabled".into(), json!(true));
        // StackStorm's shape: parameters as a JSON-schema-like mapping.
        let params: serde_json::Map<String, Value> = t
            .parameters
            .iter()
            .map(|p| {
                let mut spec = serde_json::to_value(p).unwrap_or_default();
                if let Some(s) = spec.as_object_mut() {
                    s.remove("name");
                }
                (p.name.to_string(), spec)
            })
            .collect();
        o.insert("parameters".into(), Value::Object(params));
    }
    v
}

/// `GET /policytypes`.
pub async fn list_policy_types(ApiQuery(list): ApiQuery<ListParams>) -> Result<Listed, ApiError> {
    list.respond(policies::all().iter().map(policy_type_view).collect())
}

/// `GET /policytypes/{ref or id}`.
pub async fn get_policy_type(Path(reference): Path<String>) -> Result<Json<Value>, ApiError> {
    find_by_ref(
        policies::all().iter(),
        "policy type",
        &reference,
        |t| t.reference.to_string(),
        policy_type_view,
    )
}

/// `GET /triggertypes` (`pack`, `name` filter).
pub async fn list_trigger_types(
    State(st): State<ApiState>,
    ApiQuery(list): ApiQuery<ListParams>,
    ApiQuery(f): ApiQuery<ContentFilter>,
) -> Result<Listed, ApiError> {
    let catalog = st.catalog.load();
    list.respond(
        catalog
            .trigger_types
            .values()
            .filter(|t| f.keeps(&t.pack, &t.name))
            .map(trigger_type_view)
            .collect(),
    )
}

/// `GET /triggertypes/{ref or id}`.
pub async fn get_trigger_type(
    State(st): State<ApiState>,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = st.catalog.load();
    find_by_ref(
        catalog.trigger_types.values(),
        "trigger type",
        &reference,
        TriggerTypeDef::reference,
        trigger_type_view,
    )
}

/// Query of `GET /runnertypes`.
#[derive(Debug, Default, Deserialize)]
pub struct RunnerTypeQuery {
    #[serde(default)]
    name: Option<String>,
}

fn runner_type_view(rt: &squall_domain::runner_types::RunnerType) -> Value {
    let mut v = serde_json::to_value(rt).unwrap_or_default();
    v["id"] = json!(format!("runnertype:{}", rt.name));
    v["uid"] = json!(format!("runner_type:{}", rt.name));
    v["runner_module"] = json!(rt.name.replace('-', "_"));
    v
}

/// `GET /runnertypes` (`name` filters), as StackStorm's CLI reads them to
/// type `st2 run` parameters.
pub async fn list_runner_types(
    ApiQuery(list): ApiQuery<ListParams>,
    ApiQuery(q): ApiQuery<RunnerTypeQuery>,
) -> Result<Listed, ApiError> {
    list.respond(
        squall_domain::runner_types::all()
            .iter()
            .filter(|rt| q.name.as_deref().is_none_or(|n| n == rt.name))
            .map(runner_type_view)
            .collect(),
    )
}

/// `GET /runnertypes/{name}`.
pub async fn get_runner_type(Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    squall_domain::runner_types::lookup(&name)
        .map(|rt| Json(runner_type_view(rt)))
        .ok_or_else(|| ApiError::NotFound(format!("no runner type {name:?}")))
}

/// Body of `POST /packs/register`.
/// StackStorm's `types` and `fail_on_failure` are accepted and ignored:
/// Squall registers all of a pack, and never a broken one.
#[derive(Debug, Default, Deserialize)]
pub struct RegisterBody {
    /// Pack names to register from the node's pack directories (all when
    /// empty).
    #[serde(default)]
    packs: Vec<String>,
}

/// `POST /packs/register`: (re)registers packs from the node's pack
/// directories. Each pack is validated whole; a broken pack is rejected
/// with every error and changes nothing. What the files define is written
/// over the stored definitions, content created through the API stays, and
/// `changes` lists what was added, changed or removed. Workflows with problems register
/// (as in StackStorm) and their problems come back as `warnings`.
pub async fn register_packs(
    State(st): State<ApiState>,
    raw: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    // StackStorm's CLI may send no body at all: that means every pack.
    let body: RegisterBody = if raw.iter().all(u8::is_ascii_whitespace) {
        RegisterBody::default()
    } else {
        serde_json::from_slice(&raw)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    let dirs = pack_dirs(&st.pack_dirs, &body.packs)?;
    let mut bundles = Vec::new();
    let mut errors = Vec::new();
    for dir in &dirs {
        let loaded = squall_domain::loader::load_pack(dir).and_then(|b| {
            let config = configs::read_file(st.configs_dir.as_deref(), dir, &b)?;
            Ok((b, config))
        });
        match loaded {
            Ok(b) => bundles.push(b),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::BadRequest(errors.join("\n")));
    }
    // Every pack's virtualenv is built before any pack is stored: a pack
    // whose requirements do not install registers nothing, and the
    // answer carries pip's error.
    for (dir, (b, _)) in dirs.iter().zip(&bundles) {
        if let Err(e) = st.virtualenvs.ensure(&b.pack.pack_ref, dir, true).await {
            errors.push(e.to_string());
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::BadRequest(errors.join("\n")));
    }
    let packs = bundles.len();
    let (mut actions, mut rules, mut trigger_types) = (0, 0, 0);
    let (mut warnings, mut changes, mut revision) = (Vec::new(), Vec::new(), 0);
    for (dir, (b, config)) in dirs.iter().zip(bundles) {
        warnings.extend(content::warn_of_workflow_problems(dir, &b));
        let (stored, changed, written) = content::store_pack(&st.bus, b, Mode::Explicit).await?;
        if let Some(config) = config {
            configs::store_file(&st.bus, st.keys.cipher(), config, Mode::Explicit).await?;
        }
        revision = revision.max(written);
        actions += stored.actions.len();
        rules += stored.rules.len();
        trigger_types += stored.trigger_types.len();
        changes.extend(changed);
    }
    super::edit::visible(&st, revision).await;
    Ok(Json(json!({
        "packs": packs,
        "actions": actions,
        "rules": rules,
        "triggers": trigger_types,
        "changes": changes,
        "warnings": warnings,
    })))
}

/// The pack directories to register: the named packs, or every pack in the
/// configured directories.
pub fn pack_dirs(roots: &[PathBuf], names: &[String]) -> Result<Vec<PathBuf>, ApiError> {
    let mut found = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join("pack.yaml").is_file())
            .collect();
        dirs.sort();
        found.extend(dirs);
    }
    if names.is_empty() {
        return Ok(found);
    }
    names
        .iter()
        .map(|n| {
            found
                .iter()
                .find(|d| d.file_name().is_some_and(|f| f == n.as_str()))
                .cloned()
                .ok_or_else(|| {
                    ApiError::NotFound(format!(
                        "pack {n:?} is not in the pack directories ({})",
                        roots
                            .iter()
                            .map(|r| r.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
        })
        .collect()
}
