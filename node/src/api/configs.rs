//! Pack configs and config schemas, in StackStorm's shapes:
//! `GET /configs`, `GET|PUT /configs/{pack}` (`{id, pack, values}`,
//! `secret: true` items masked unless an admin asks with `show_secrets`),
//! `GET /config_schemas[/{pack}]` (`{id, pack, attributes}`).

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde_json::{json, Map, Value};
use squall_actors::auth::Principal;
use squall_actors::catalog::content_id;
use squall_actors::configs::{self, StoredConfig};
use squall_domain::model::PackBundle;
use squall_domain::pack_config;
use squall_domain::secrets::Cipher;

use super::auth::ShowSecrets;
use super::error::{ApiError, ApiQuery};
use super::listing::{ListParams, Listed};
use super::ApiState;

/// `{id, pack, values}`: secrets masked, or (`show`) opened with `cipher`.
fn config_view(
    pack: &str,
    stored: &StoredConfig,
    bundle: Option<&PackBundle>,
    show: Option<&Cipher>,
) -> Result<Value, ApiError> {
    let schema = bundle
        .and_then(|b| b.config_schema.clone())
        .unwrap_or_default();
    let values = match show {
        Some(cipher) => stored.open(pack, Some(cipher)).map_err(|e| {
            ApiError::Internal(format!("{e}; was the datastore key file replaced?"))
        })?,
        None => pack_config::mask(&stored.values, &schema),
    };
    Ok(json!({"id": content_id("config", pack), "pack": pack, "values": values}))
}

fn schema_view(pack: &str, schema: &Map<String, Value>) -> Value {
    json!({"id": content_id("config_schema", pack), "pack": pack, "attributes": schema})
}

/// `GET /configs`: every stored pack config.
pub async fn list(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    ApiQuery(list): ApiQuery<ListParams>,
    ApiQuery(secrets): ApiQuery<ShowSecrets>,
) -> Result<Listed, ApiError> {
    let catalog = st.catalog.load();
    let show = secrets.shown(&me).then(|| st.keys.cipher());
    list.respond(
        st.configs
            .all()
            .iter()
            .map(|(pack, stored)| config_view(pack, stored, catalog.packs.get(pack), show))
            .collect::<Result<_, _>>()?,
    )
}

/// `GET /configs/{pack}`.
pub async fn get_one(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(pack): Path<String>,
    ApiQuery(secrets): ApiQuery<ShowSecrets>,
) -> Result<Json<Value>, ApiError> {
    let catalog = st.catalog.load();
    let bundle = registered(&catalog.packs, &pack)?;
    let stored = st.configs.get(&pack).ok_or_else(|| {
        ApiError::NotFound(format!(
            "pack {pack:?} has no config; set one with PUT /api/v1/configs/{pack} or a {pack}.yaml in the configs directory"
        ))
    })?;
    let show = secrets.shown(&me).then(|| st.keys.cipher());
    config_view(&pack, &stored, Some(bundle), show).map(Json)
}

/// `PUT /configs/{pack}`: the body is the values. They are checked against
/// the pack's schema (every problem named by field), stored with the
/// schema's defaults filled, and written to the configs directory when the
/// node has one.
pub async fn put(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    Path(pack): Path<String>,
    ApiQuery(secrets): ApiQuery<ShowSecrets>,
    raw: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let values: Map<String, Value> = serde_json::from_slice(&raw).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid JSON body: {e}; expected an object of config values"
        ))
    })?;
    let catalog = st.catalog.load();
    let bundle = registered(&catalog.packs, &pack)?;
    let values = match &bundle.config_schema {
        Some(schema) => pack_config::validate(&values, schema).map_err(|problems| {
            ApiError::BadRequest(format!(
                "config for pack {pack:?} does not match its schema: {}",
                problems
                    .iter()
                    .map(|(field, message)| format!("{field}: {message}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?,
        None => values,
    };
    if let Some(dir) = &st.configs_dir {
        configs::write_file(dir, &pack, &values).map_err(|e| {
            ApiError::Internal(format!(
                "cannot write the config file of pack {pack:?} in {}: {e}",
                dir.display()
            ))
        })?;
    }
    // The digest of the file last registered stays: other nodes' files
    // were not edited, so their restarts keep this value.
    let digest = st.configs.get(&pack).and_then(|c| c.file_digest);
    let cipher = st.keys.cipher();
    configs::put(
        &st.bus,
        cipher,
        &pack,
        bundle.config_schema.as_ref(),
        &values,
        digest,
    )
    .await?;
    tracing::info!(pack = %pack, user = %me.user, "pack config set through the API");
    let stored = StoredConfig {
        v: configs::CONFIG_VERSION,
        values,
        sealed: Vec::new(),
        file_digest: None,
    };
    let show = secrets.shown(&me).then_some(cipher);
    config_view(&pack, &stored, Some(bundle), show).map(Json)
}

/// `GET /config_schemas`: the schemas of every pack that has one.
pub async fn list_schemas(
    State(st): State<ApiState>,
    ApiQuery(list): ApiQuery<ListParams>,
) -> Result<Listed, ApiError> {
    let catalog = st.catalog.load();
    list.respond(
        catalog
            .packs
            .iter()
            .filter_map(|(pack, b)| b.config_schema.as_ref().map(|s| schema_view(pack, s)))
            .collect(),
    )
}

/// `GET /config_schemas/{pack}`.
pub async fn get_schema(
    State(st): State<ApiState>,
    Path(pack): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = st.catalog.load();
    let bundle = registered(&catalog.packs, &pack)?;
    bundle
        .config_schema
        .as_ref()
        .map(|s| Json(schema_view(&pack, s)))
        .ok_or_else(|| ApiError::NotFound(format!("pack {pack:?} has no config.schema.yaml")))
}

fn registered<'a>(
    packs: &'a std::collections::BTreeMap<String, PackBundle>,
    pack: &str,
) -> Result<&'a PackBundle, ApiError> {
    packs
        .get(pack)
        .ok_or_else(|| ApiError::NotFound(format!("pack {pack:?} is not registered")))
}
