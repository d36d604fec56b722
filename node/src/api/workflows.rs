//! `POST /workflows/inspect`: an Orquesta definition in, every problem out
//! (an empty list when it is valid), as StackStorm's route answers.

use axum::body::Bytes;
use axum::Json;
use serde_json::Value;

use super::error::ApiError;

/// Inspects the definition sent as the body (YAML text).
pub async fn inspect(body: Bytes) -> Result<Json<Value>, ApiError> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::BadRequest("the workflow definition must be UTF-8 text".into()))?;
    if text.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "send the workflow definition (YAML) as the request body".into(),
        ));
    }
    let (_, issues) = squall_domain::orquesta::inspect(text);
    Ok(Json(serde_json::to_value(issues).unwrap_or_default()))
}
