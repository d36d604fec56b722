//! `/sensortypes`: the packs' Python sensors in StackStorm's SensorType
//! shape, with where and how each runs (`state`, `node`, `pid`,
//! `restarts`, `last_error`, `last_stderr`, `dispatched`, `rejected`...)
//! from the `sensors` bucket the owning node writes.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use squall_actors::bus::SENSORS_BUCKET;
use squall_actors::catalog::content_id;
use squall_actors::error::bus_err;
use squall_actors::sensor_host::{read_status, SensorStatus};
use squall_domain::model::SensorDef;

use super::content::ContentFilter;
use super::error::{ApiError, ApiQuery};
use super::listing::{ListParams, Listed};
use super::ApiState;

/// Every sensor of the catalog with its pack's directory.
fn sensors(st: &ApiState) -> Vec<(SensorDef, String)> {
    st.catalog
        .load()
        .packs
        .values()
        .flat_map(|b| b.sensors.iter().map(|s| (s.clone(), b.path.clone())))
        .collect()
}

async fn view(st: &ApiState, sensor: &SensorDef, pack_path: &str) -> Result<Value, ApiError> {
    let bucket = st
        .bus
        .js
        .get_key_value(SENSORS_BUCKET)
        .await
        .map_err(|e| bus_err("open bucket sensors", e))?;
    let reference = sensor.reference();
    let status = read_status(&bucket, &reference).await?;
    let file = sensor.file(std::path::Path::new(pack_path));
    let mut v = json!({
        "id": content_id("sensor_type", &reference),
        "uid": format!("sensor_type:{}:{}", sensor.pack, sensor.class_name),
        "ref": reference,
        "pack": sensor.pack,
        "name": sensor.class_name,
        "description": sensor.description,
        "artifact_uri": format!("file://{}", file.display()),
        "entry_point": sensor.entry_point,
        "enabled": sensor.enabled,
        "trigger_types": sensor.trigger_types,
        "metadata_file": sensor.metadata_file,
    });
    let o = v.as_object_mut().expect("an object");
    if let Some(n) = sensor.poll_interval {
        o.insert("poll_interval".into(), json!(n));
    }
    let state = match (&status, sensor.enabled) {
        (_, false) => "disabled".to_string(),
        (Some(s), true) => s.state.clone(),
        (None, true) => "pending".to_string(),
    };
    o.insert("state".into(), json!(state));
    if let Some(s) = status {
        let SensorStatus {
            node,
            pid,
            restarts,
            last_error,
            last_stderr,
            next_start_at,
            dispatched,
            rejected,
            last_rejection,
            updated_at,
            ..
        } = s;
        o.insert("node".into(), json!(node));
        o.insert("pid".into(), json!(pid));
        o.insert("restarts".into(), json!(restarts));
        o.insert("last_error".into(), json!(last_error));
        o.insert("last_stderr".into(), json!(last_stderr));
        o.insert(
            "next_start_at".into(),
            json!(next_start_at.as_ref().map(squall_domain::time::format)),
        );
        o.insert("dispatched".into(), json!(dispatched));
        o.insert("rejected".into(), json!(rejected));
        o.insert("last_rejection".into(), json!(last_rejection));
        o.insert(
            "state_updated_at".into(),
            json!(squall_domain::time::format(&updated_at)),
        );
    }
    Ok(v)
}

/// `GET /sensortypes` (`pack`, `name` filter).
pub async fn list(
    State(st): State<ApiState>,
    ApiQuery(list): ApiQuery<ListParams>,
    ApiQuery(f): ApiQuery<ContentFilter>,
) -> Result<Listed, ApiError> {
    let mut items = Vec::new();
    for (sensor, path) in sensors(&st)
        .iter()
        .filter(|(s, _)| f.keeps(&s.pack, &s.class_name))
    {
        items.push(view(&st, sensor, path).await?);
    }
    list.respond(items)
}

/// `GET /sensortypes/{ref or id}`.
pub async fn get_one(
    State(st): State<ApiState>,
    Path(reference): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let all = sensors(&st);
    let found = all.iter().find(|(s, _)| {
        let r = s.reference();
        r == reference || content_id("sensor_type", &r) == reference
    });
    match found {
        Some((sensor, path)) => Ok(Json(view(&st, sensor, path).await?)),
        None => Err(ApiError::NotFound(format!(
            "sensor type {reference} not found"
        ))),
    }
}
