//! `POST /packs/install` and `POST /packs/uninstall`: StackStorm's pack
//! management routes. Each starts an execution of `packs.install` or
//! `packs.uninstall` (the `pack-management` runner,
//! `squall_actors::pack_install`) and answers 202 with its id, which the
//! official `st2 pack install` follows on the stream to its end. Sources
//! that cannot work here (`owner/repo` and Exchange names: no index, no
//! guessing GitHub) are refused at once.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use squall_actors::auth::Principal;
use squall_actors::executions::{self, ExecutionSpec};
use squall_actors::pack_install::{parse_source, InstallError};

use super::error::{ApiError, ApiJson};
use super::ApiState;

/// Body of `POST /packs/install` (StackStorm's `PackInstallRequestAPI`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallBody {
    packs: Vec<String>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    skip_dependencies: bool,
}

/// Body of `POST /packs/uninstall` (StackStorm's `PackAsyncAPI` request).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninstallBody {
    packs: Vec<String>,
}

fn need_packs(packs: &[String]) -> Result<(), ApiError> {
    if packs.is_empty() || packs.iter().any(|p| p.trim().is_empty()) {
        return Err(ApiError::BadRequest(
            "packs: give at least one pack, and no empty names".into(),
        ));
    }
    Ok(())
}

/// Starts `action` with `parameters` as the caller; 202 `{execution_id}`.
async fn start(
    st: &ApiState,
    me: Principal,
    action: &str,
    parameters: Map<String, Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let catalog = st.catalog.load();
    let spec = ExecutionSpec {
        action_ref: action.to_string(),
        parameters,
        user: Some(me.user),
        ..ExecutionSpec::default()
    };
    let record = executions::prepare(&catalog, &st.renderer, &st.kv, &st.configs, spec)?;
    let stored = executions::submit(&st.bus, record).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "execution_id": stored.id })),
    ))
}

/// `POST /packs/install`: runs `packs.install`.
pub async fn install(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    ApiJson(body): ApiJson<InstallBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    need_packs(&body.packs)?;
    // Sources that can never work are refused now; anything else (a
    // missing directory, a bad ref) is for the install to find, on the
    // node that runs it.
    for spec in &body.packs {
        if let Err(
            e @ (InstallError::ExchangeName(_)
            | InstallError::OwnerRepo(_)
            | InstallError::BadSource(_)),
        ) = parse_source(spec)
        {
            return Err(ApiError::BadRequest(format!("packs: {e}")));
        }
    }
    let mut parameters = Map::new();
    parameters.insert("packs".into(), json!(body.packs));
    if body.force {
        parameters.insert("force".into(), json!(true));
    }
    if body.skip_dependencies {
        parameters.insert("skip_dependencies".into(), json!(true));
    }
    start(&st, me, "packs.install", parameters).await
}

/// `POST /packs/uninstall`: runs `packs.uninstall`.
pub async fn uninstall(
    State(st): State<ApiState>,
    Extension(me): Extension<Principal>,
    ApiJson(body): ApiJson<UninstallBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    need_packs(&body.packs)?;
    let mut parameters = Map::new();
    parameters.insert("packs".into(), json!(body.packs));
    start(&st, me, "packs.uninstall", parameters).await
}
