//! Content changes through the API: create (`POST /rules`, `POST
//! /actions`), replace (`PUT /{kind}/{ref}`, which is also how StackStorm's
//! CLI enables and disables a rule) and delete (`DELETE /{kind}/{ref}`).
//!
//! Each body is validated exactly as the pack loader validates the pack's
//! YAML files (JSON is YAML), then stored in its pack's bundle, so every
//! node's catalog picks it up from the `content` bucket. Content created
//! here has no file: registering its pack from disk leaves it alone, and a
//! node restart undoes no edit (`squall_domain::registration`).

use std::path::Path as FsPath;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;
use squall_actors::catalog::{content_id, Catalog, CatalogRule};
use squall_actors::content;
use squall_domain::loader::{self, Problem};
use squall_domain::model::{ActionDef, RuleDef};
use squall_domain::registration::Registrable;
use squall_domain::time;

use super::content::{action_view, rule_view};
use super::error::{ApiError, ApiJson};
use super::ApiState;

/// The pack of content that names none, as in StackStorm.
const DEFAULT_PACK: &str = "default";

/// A kind of pack content the API edits.
pub trait Editable: Registrable {
    /// Fields StackStorm's API adds to what it returns, which a client
    /// sends back; `(outer, inner fields)`.
    const DERIVED: &'static [(&'static str, &'static [&'static str])];

    /// Validates a body as the loader validates the pack's file.
    fn parse(pack_dir: &FsPath, pack: &str, text: &str) -> Result<Self, Vec<Problem>>;
    /// Keeps what the stored item has that a body never carries.
    fn keep_stored(&mut self, stored: &Self);
    fn view(&self) -> Value;
    /// The reference of the registered item with this id.
    fn reference_of_id(catalog: &Catalog, id: &str) -> Option<String>;
    /// What the item may not be given the rest of the catalog.
    fn check(&self, _catalog: &Catalog) -> Result<(), ApiError> {
        Ok(())
    }
}

impl Editable for RuleDef {
    const DERIVED: &'static [(&'static str, &'static [&'static str])] =
        &[("trigger", &["ref", "description", "uid"])];

    fn parse(_: &FsPath, pack: &str, text: &str) -> Result<Self, Vec<Problem>> {
        loader::parse_rule(Some(pack), text)
    }
    fn keep_stored(&mut self, stored: &Self) {
        self.metadata_file = stored.metadata_file.clone();
    }
    fn reference_of_id(catalog: &Catalog, id: &str) -> Option<String> {
        catalog
            .rules
            .values()
            .find(|r| r.id == id)
            .map(|r| r.def.reference())
    }
    fn view(&self) -> Value {
        rule_view(&CatalogRule::new(self.clone()))
    }
}

impl Editable for ActionDef {
    const DERIVED: &'static [(&'static str, &'static [&'static str])] = &[];

    fn parse(pack_dir: &FsPath, pack: &str, text: &str) -> Result<Self, Vec<Problem>> {
        loader::parse_action(pack_dir, pack, text)
    }
    fn keep_stored(&mut self, stored: &Self) {
        self.metadata_file = stored.metadata_file.clone();
    }
    fn view(&self) -> Value {
        action_view(self)
    }
    fn reference_of_id(catalog: &Catalog, id: &str) -> Option<String> {
        catalog
            .actions
            .keys()
            .find(|r| content_id("action", r) == id)
            .cloned()
    }
}

fn parse<T: Editable>(st: &ApiState, body: &Value, pack: &str) -> Result<T, ApiError> {
    let mut body = body.clone();
    let Some(obj) = body.as_object_mut() else {
        return Err(ApiError::BadRequest(format!(
            "a {} must be a JSON object",
            T::KIND
        )));
    };
    for derived in ["id", "ref", "uid", "metadata_file"] {
        obj.remove(derived);
    }
    for (outer, inner) in T::DERIVED {
        if let Some(Value::Object(o)) = obj.get_mut(*outer) {
            for field in *inner {
                o.remove(*field);
            }
        }
    }
    let pack_dir = st
        .catalog
        .load()
        .packs
        .get(pack)
        .map(|b| b.path.clone())
        .unwrap_or_default();
    let text = serde_json::to_string(&body).unwrap_or_default();
    T::parse(FsPath::new(&pack_dir), pack, &text)
        .map_err(|problems| ApiError::BadRequest(Problem::join(&problems)))
}

/// `POST /{kind}s`: 201 with the item; 409 if it exists.
pub async fn create<T: Editable>(
    State(st): State<ApiState>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let pack = body["pack"].as_str().unwrap_or(DEFAULT_PACK).to_string();
    let mut item: T = parse(&st, &body, &pack)?;
    item.check(&st.catalog.load())?;
    item.carry_state(None, time::now());
    let ((), revision) = content::modify_pack(&st.bus, &pack, |bundle| {
        if T::items(bundle).iter().any(|r| r.name() == item.name()) {
            return Err(ApiError::Conflict(format!(
                "{} {} already exists; PUT /{}s/{} changes it",
                T::KIND,
                item.reference(),
                T::KIND,
                item.reference()
            )));
        }
        T::items(bundle).push(item.clone());
        Ok(())
    })
    .await??;
    visible(&st, revision).await;
    Ok((StatusCode::CREATED, Json(item.view())))
}

/// How long a content change may take to reach this node's catalog before
/// the API answers anyway (the change is stored either way). Local to
/// the API's content edits: a bound on one answer, not on the engine.
const VISIBLE_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Waits until this node's catalog holds a change stored at `revision`, so
/// that the caller's next request (run the new action, fire the new rule)
/// sees it.
pub async fn visible(st: &ApiState, revision: u64) {
    if !st.catalog.wait_for(revision, VISIBLE_WITHIN).await {
        tracing::warn!(
            revision,
            "a content change was slow to reach this node's catalog"
        );
    }
}

/// `pack.name`, or an id as StackStorm's CLI sends it, as a reference.
fn resolve<T: Editable>(st: &ApiState, ref_or_id: String) -> String {
    if ref_or_id.contains('.') {
        return ref_or_id;
    }
    T::reference_of_id(&st.catalog.load(), &ref_or_id).unwrap_or(ref_or_id)
}

fn split_ref<T: Editable>(reference: &str) -> Result<(&str, &str), ApiError> {
    reference
        .split_once('.')
        .filter(|(p, n)| !p.is_empty() && !n.is_empty())
        .ok_or_else(|| {
            ApiError::NotFound(format!("{} {reference} not found: use pack.name", T::KIND))
        })
}

/// `PUT /{kind}s/{ref or id}`: replaces the item (the body's name and pack
/// must match the reference).
pub async fn update<T: Editable>(
    State(st): State<ApiState>,
    Path(reference): Path<String>,
    ApiJson(mut body): ApiJson<Value>,
) -> Result<Json<Value>, ApiError> {
    let reference = resolve::<T>(&st, reference);
    let (pack, name) = split_ref::<T>(&reference)?;
    if let Some(obj) = body.as_object_mut() {
        obj.entry("name").or_insert_with(|| name.into());
        obj.entry("pack").or_insert_with(|| pack.into());
    }
    let item: T = parse(&st, &body, pack)?;
    if item.name() != name {
        return Err(ApiError::BadRequest(format!(
            "name: the body says {:?} but the URL names {} {reference}",
            item.name(),
            T::KIND
        )));
    }
    item.check(&st.catalog.load())?;
    let (stored, revision) = content::modify_pack(&st.bus, pack, |bundle| {
        match T::items(bundle).iter_mut().find(|r| r.name() == name) {
            Some(existing) => {
                let mut new = item.clone();
                new.keep_stored(existing);
                new.carry_state(Some(existing), time::now());
                *existing = new.clone();
                Ok(new)
            }
            None => Err(ApiError::NotFound(format!(
                "{} {reference} not found",
                T::KIND
            ))),
        }
    })
    .await??;
    visible(&st, revision).await;
    Ok(Json(stored.view()))
}

/// `DELETE /{kind}s/{ref or id}`: 204.
pub async fn delete<T: Editable>(
    State(st): State<ApiState>,
    Path(reference): Path<String>,
) -> Result<StatusCode, ApiError> {
    let reference = resolve::<T>(&st, reference);
    let (pack, name) = split_ref::<T>(&reference)?;
    let ((), revision) = content::modify_pack(&st.bus, pack, |bundle| {
        let items = T::items(bundle);
        let before = items.len();
        items.retain(|r| r.name() != name);
        if items.len() == before {
            return Err(ApiError::NotFound(format!(
                "{} {reference} not found",
                T::KIND
            )));
        }
        Ok(())
    })
    .await??;
    visible(&st, revision).await;
    Ok(StatusCode::NO_CONTENT)
}
