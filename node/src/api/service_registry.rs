//! `/service_registry`: the cluster's nodes, in StackStorm's shapes. A
//! group is a role (`api`, `rules`, `workflows`, `runners`, `sensors`); its
//! members are the live nodes that have it, with their capabilities: roles,
//! runner pools, partitions owned by role, start and last heartbeat.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use squall_actors::cluster::{MemberView, Role};
use squall_domain::time;

use super::error::ApiError;
use super::ApiState;

/// `GET /service_registry/groups`: `{"groups": [role, ...]}`, the roles
/// some live node has.
pub async fn groups(State(st): State<ApiState>) -> Json<Value> {
    let members = st.cluster.members();
    let groups: Vec<&str> = Role::ALL
        .into_iter()
        .filter(|r| {
            members
                .iter()
                .any(|m| m.alive && m.member.roles.contains(r))
        })
        .map(Role::as_str)
        .collect();
    Json(json!({ "groups": groups }))
}

/// `GET /service_registry/groups/{group_id}/members`: `{"members": [...]}`;
/// 404 for a group no live node is in.
pub async fn members(
    State(st): State<ApiState>,
    Path(group_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::NotFound(format!("Group with ID \"{group_id}\" not found."));
    let role = Role::parse(&group_id).map_err(|_| not_found())?;
    let members: Vec<Value> = st
        .cluster
        .members()
        .iter()
        .filter(|m| m.alive && m.member.roles.contains(&role))
        .map(|m| member(role, m))
        .collect();
    if members.is_empty() {
        return Err(not_found());
    }
    Ok(Json(json!({ "members": members })))
}

fn member(role: Role, view: &MemberView) -> Value {
    let m = &view.member;
    json!({
        "group_id": role.as_str(),
        "member_id": m.name,
        "capabilities": {
            "hostname": m.name,
            "roles": m.roles,
            "pools": m.pools,
            "partitions": m.partitions,
            "api_url": m.api_url,
            "incarnation": m.incarnation,
            "started_at": time::format(&m.started_at),
            "last_heartbeat": time::format(&m.heartbeat_at),
        },
    })
}
