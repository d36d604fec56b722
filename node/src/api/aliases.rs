//! Action aliases and the routes chat bots call, in StackStorm's shapes:
//! `/actionalias` (list, get, create, replace, delete), `/actionalias/match`,
//! `/actionalias/help`, `/aliasexecution` and
//! `/aliasexecution/match_and_execute` (StackStorm's
//! `st2api/controllers/v1/actionalias.py` and `aliasexecution.py`).
//!
//! An alias execution is an ordinary execution of the alias's action whose
//! `context` names the alias (`action_alias_ref`), the chat user
//! (`api_user`) and the channel (`source_channel`), and whose `notify`
//! sends its end to the bot's `notification_route` with the user and the
//! channel: StackStorm's `chatops` pack turns that notification into the
//! result message on the event stream the bot reads. Who runs it: the
//! caller (the bot's account), as in StackStorm; an admin's key or token
//! may run it as the chat user it names. Observers cannot run aliases (the
//! guard's role table); they may list, read and match them.

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use squall_actors::audit::decrypt;
use squall_actors::auth::{Principal, Role};
use squall_actors::catalog::{content_id, Catalog};
use squall_actors::executions::{self, ExecutionSpec};
use squall_domain::aliases::{self, AliasDef, AliasError, AliasMatch, CompiledAlias};
use squall_domain::loader::{self, Problem};

use super::content::{find_by_ref, ContentFilter};
use super::edit::Editable;
use super::error::{ApiError, ApiJson, ApiQuery};
use super::executions::view as execution_view;
use super::listing::{ListParams, Listed};
use super::ApiState;

/// The API view of an alias: the definition plus `id`, `ref`, `uid`.
pub fn alias_view(a: &AliasDef) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), json!(alias_id(&a.reference())));
        o.insert("ref".into(), json!(a.reference()));
        o.insert(
            "uid".into(),
            json!(format!("action_alias:{}:{}", a.pack, a.name)),
        );
    }
    v
}

fn alias_id(reference: &str) -> String {
    content_id("action_alias", reference)
}

impl Editable for AliasDef {
    const DERIVED: &'static [(&'static str, &'static [&'static str])] = &[];

    fn parse(_: &std::path::Path, pack: &str, text: &str) -> Result<Self, Vec<Problem>> {
        loader::parse_alias(Some(pack), text)
    }
    fn keep_stored(&mut self, stored: &Self) {
        self.metadata_file = stored.metadata_file.clone();
    }
    fn view(&self) -> Value {
        alias_view(self)
    }
    fn reference_of_id(catalog: &Catalog, id: &str) -> Option<String> {
        catalog.aliases.keys().find(|r| alias_id(r) == id).cloned()
    }
    /// A format another enabled alias already has would make every
    /// command it matches ambiguous.
    fn check(&self, catalog: &Catalog) -> Result<(), ApiError> {
        let normal = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        for p in self
            .patterns()
            .iter()
            .filter(|p| !p.representation.is_empty())
        {
            let mine = normal(&p.representation);
            let other = catalog
                .aliases
                .values()
                .filter(|a| a.def.enabled && a.def.reference() != self.reference())
                .find(|a| {
                    a.patterns
                        .iter()
                        .any(|(q, _)| normal(&q.representation) == mine)
                });
            if let Some(other) = other {
                return Err(ApiError::Conflict(format!(
                    "formats: {:?} is already a format of alias {}: every command it matches would be ambiguous",
                    p.representation,
                    other.def.reference()
                )));
            }
        }
        Ok(())
    }
}

/// `GET /actionalias` (`pack`, `name` filter).
pub async fn list(
    State(st): State<ApiState>,
    ApiQuery(list): ApiQuery<ListParams>,
    ApiQuery(f): ApiQuery<ContentFilter>,
) -> Result<Listed, ApiError> {
    let catalog = st.catalog.load();
    list.respond(
        catalog
            .aliases
            .values()
            .filter(|a| f.keeps(&a.def.pack, &a.def.name))
            .map(|a| alias_view(&a.def))
            .collect(),
    )
}

/// `GET /actionalias/{ref or id}`.
pub async fn get_one(
    State(st): State<ApiState>,
    UrlPath(reference): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = st.catalog.load();
    find_by_ref(
        catalog.aliases.values(),
        "action alias",
        &reference,
        |a| a.def.reference(),
        |a| alias_view(&a.def),
    )
}

/// Body of `POST /actionalias/match`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchBody {
    command: String,
}

fn match_error(e: AliasError) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

/// `POST /actionalias/match`: the alias and format a command names.
pub async fn match_command(
    State(st): State<ApiState>,
    ApiJson(body): ApiJson<MatchBody>,
) -> Result<Json<Value>, ApiError> {
    let catalog = st.catalog.load();
    let m = aliases::match_command(&body.command, aliases_of(&catalog)).map_err(match_error)?;
    Ok(Json(json!({
        "actionalias": alias_view(&m.alias.def),
        "display": m.pattern.display,
        "representation": m.pattern.representation,
    })))
}

fn aliases_of(catalog: &Catalog) -> impl Iterator<Item = &CompiledAlias> + Clone {
    catalog.aliases.values().map(AsRef::as_ref)
}

/// Query of `GET /actionalias/help`.
#[derive(Debug, Default, Deserialize)]
pub struct HelpQuery {
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    pack: Option<String>,
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    offset: Option<String>,
}

fn count(name: &str, value: Option<&str>) -> Result<usize, ApiError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(0),
        Some(v) => v.parse().map_err(|_| {
            ApiError::BadRequest(format!("{name}: must be a whole number, got {v:?}"))
        }),
    }
}

/// `GET /actionalias/help`: `{available, helpstrings}`.
pub async fn help(
    State(st): State<ApiState>,
    ApiQuery(q): ApiQuery<HelpQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = count("limit", q.limit.as_deref())?;
    let offset = count("offset", q.offset.as_deref())?;
    let catalog = st.catalog.load();
    let (available, helpstrings) = aliases::help(
        catalog.aliases.values().map(|a| &a.def),
        q.filter.as_deref(),
        q.pack.as_deref(),
        limit,
        offset,
    )
    .map_err(|e| ApiError::BadRequest(format!("filter: {e}")))?;
    Ok(Json(
        json!({"available": available, "helpstrings": helpstrings}),
    ))
}

/// Body of `POST /aliasexecution/match_and_execute`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchAndExecuteBody {
    command: String,
    #[serde(default)]
    user: Option<String>,
    source_channel: String,
    #[serde(default)]
    source_context: Option<Value>,
    #[serde(default)]
    notification_channel: Option<String>,
    #[serde(default)]
    notification_route: Option<String>,
}

/// Body of `POST /aliasexecution`: the alias and format already chosen.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasExecutionBody {
    name: String,
    format: String,
    command: String,
    #[serde(default)]
    user: Option<String>,
    source_channel: String,
    #[serde(default)]
    source_context: Option<Value>,
    #[serde(default)]
    notification_channel: Option<String>,
    #[serde(default)]
    notification_route: Option<String>,
}

/// Who asked, from where, and where the result goes.
struct Chat {
    command: String,
    user: Option<String>,
    source_channel: String,
    source_context: Option<Value>,
    route: Option<String>,
}

/// `POST /aliasexecution/match_and_execute`: 201 `{results: [...]}`, one
/// per execution.
pub async fn match_and_execute(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    ApiJson(body): ApiJson<MatchAndExecuteBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let catalog = st.catalog.load();
    let m = aliases::match_command(&body.command, aliases_of(&catalog)).map_err(match_error)?;
    let chat = Chat {
        route: body.notification_route.or(body.notification_channel),
        command: body.command,
        user: body.user,
        source_channel: body.source_channel,
        source_context: body.source_context,
    };
    let results = execute(&st, &catalog, &me, &m, chat).await?;
    Ok((StatusCode::CREATED, Json(json!({ "results": results }))))
}

/// `POST /aliasexecution`: 201 with the one result.
pub async fn execute_named(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    ApiJson(body): ApiJson<AliasExecutionBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let catalog = st.catalog.load();
    let alias = catalog
        .aliases
        .values()
        .find(|a| a.def.name == body.name)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "Unable to identify action alias with name \"{}\".",
                body.name
            ))
        })?;
    if !alias.def.enabled {
        return Err(ApiError::BadRequest(format!(
            "Action alias with name \"{}\" is disabled.",
            body.name
        )));
    }
    let (pattern, format) = alias
        .patterns
        .iter()
        .find(|(p, _)| p.representation == body.format)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Format string \"{}\" is not available on the alias \"{}\"",
                body.format, body.name
            ))
        })?;
    let format = format.as_ref().ok_or_else(|| {
        ApiError::BadRequest(format!(
            "format: {:?} of alias {} does not compile",
            body.format,
            alias.def.reference()
        ))
    })?;
    let m = AliasMatch {
        alias,
        pattern,
        format,
    };
    let chat = Chat {
        route: body.notification_route.or(body.notification_channel),
        command: body.command,
        user: body.user,
        source_channel: body.source_channel,
        source_context: body.source_context,
    };
    let mut results = execute(&st, &catalog, &me, &m, chat).await?;
    Ok((StatusCode::CREATED, Json(results.remove(0))))
}

/// Requests the executions a matched command asks for and renders each
/// one's `ack`. Every parameter set is checked before any execution is
/// requested, so a bad command runs nothing.
async fn execute(
    st: &ApiState,
    catalog: &Catalog,
    me: &Principal,
    m: &AliasMatch<'_>,
    chat: Chat,
) -> Result<Vec<Value>, ApiError> {
    let alias = &m.alias.def;
    let sets = m.parameters(&chat.command).map_err(match_error)?;
    let chat_user = chat.user.filter(|u| !u.is_empty());
    // The chat user runs it only through an admin's credentials; anyone
    // else's alias executions are their own, the chat user recorded.
    let user = match &chat_user {
        Some(u) if me.role >= Role::Admin => u.clone(),
        _ => me.user.clone(),
    };
    let mut context = Map::new();
    context.insert(
        "action_alias_ref".into(),
        json!({"id": alias_id(&alias.reference()), "name": alias.name}),
    );
    context.insert(
        "api_user".into(),
        json!(chat_user.clone().unwrap_or_else(|| me.user.clone())),
    );
    context.insert("user".into(), json!(user));
    context.insert("source_channel".into(), json!(chat.source_channel));
    let notify = chat.route.as_ref().map(|route| {
        json!({"on-complete": {
            "routes": [route],
            "data": {
                "user": chat_user,
                "source_channel": chat.source_channel,
                "source_context": chat.source_context,
            },
        }})
    });
    let immutable = match &alias.immutable_parameters {
        Some(p) if !p.is_empty() => {
            // What it opens is audited as the user's, for the action.
            let who = decrypt::For {
                user: user.clone(),
                action: Some(alias.action_ref.clone()),
                purpose: "alias_parameters",
                ..Default::default()
            };
            let rendered = decrypt::audited(&st.kv, who, || {
                st.renderer.render_value(
                    &Value::Object(p.clone()),
                    &Value::Object(context.clone()),
                    &st.kv,
                )
            })
            .map_err(|e| ApiError::BadRequest(format!("immutable_parameters: {e}")))?;
            rendered.as_object().cloned().unwrap_or_default()
        }
        _ => Map::new(),
    };
    let action = catalog.actions.get(&alias.action_ref).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "action_ref: alias {} runs action {}, which is not registered",
            alias.reference(),
            alias.action_ref
        ))
    })?;
    let mut records = Vec::new();
    for mut params in sets {
        let overridden: Vec<&str> = immutable
            .keys()
            .filter(|k| params.contains_key(*k))
            .map(String::as_str)
            .collect();
        if !overridden.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "Immutable arguments cannot be overriden: {}",
                overridden.join(",")
            )));
        }
        params.extend(immutable.clone());
        // StackStorm's alias cast: "a, b" is the list [a, b].
        for (name, value) in params.iter_mut() {
            let is_array = action
                .def
                .parameters
                .get(name)
                .and_then(|p| p.kind.as_deref())
                == Some("array");
            if let (true, Value::String(s)) = (is_array, &value) {
                if !s.trim_start().starts_with('[') {
                    *value = json!(s.split(',').map(str::trim).collect::<Vec<_>>());
                }
            }
        }
        let spec = ExecutionSpec {
            action_ref: alias.action_ref.clone(),
            parameters: params,
            user: Some(user.clone()),
            context: context.clone(),
            notify: notify.clone(),
            ..ExecutionSpec::default()
        };
        records.push(executions::prepare(
            catalog,
            &st.renderer,
            &st.kv,
            &st.configs,
            spec,
        )?);
    }
    let mut results = Vec::new();
    for record in records {
        let stored = executions::submit(&st.bus, record).await?;
        let mut result = json!({
            "execution": execution_view(&stored, false),
            "actionalias": alias_view(alias),
        });
        if let Some(ack) = &alias.ack {
            let who = decrypt::For::execution(&stored, "alias_ack");
            decrypt::audited(&st.kv, who, || render_ack(st, ack, &mut result));
        }
        results.push(result);
    }
    Ok(results)
}

/// `message` and `extra` from the alias's `ack`, rendered with the result
/// (`execution`, `actionalias`), or StackStorm's note of why not.
fn render_ack(st: &ApiState, ack: &Map<String, Value>, result: &mut Value) {
    let ctx = result.clone();
    if let Some(Value::String(format)) = ack.get("format") {
        let message = match st.renderer.render_str(format, &ctx, &st.kv) {
            Ok(m) => m,
            Err(e) => format!("Cannot render \"format\" in field \"ack\" for alias. {e}"),
        };
        result["message"] = json!(message);
    }
    if let Some(extra) = ack.get("extra") {
        result["extra"] = match st.renderer.render_value(extra, &ctx, &st.kv) {
            Ok(v) => v,
            Err(e) => json!(format!(
                "Cannot render \"extra\" in field \"ack\" for alias. {e}"
            )),
        };
    }
}
