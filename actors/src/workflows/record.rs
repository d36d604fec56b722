//! A workflow's durable record in the `workflows` bucket: reading it (from
//! its parts when it is big), storing it by compare-and-swap, and the item
//! values of its `with` runs beside it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use squall_domain::orquesta::conductor::{Command, FlowState, TaskStatus};
use squall_domain::{ids, time};

use crate::bus::{from_bytes, to_bytes, Bus, BusOp};
use crate::error::{bus_err, EngineError};

/// A workflow's durable record in the `workflows` bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkflowRecord {
    #[serde(default)]
    pub v: u32,
    pub id: String,
    /// The definition as it was when the workflow started: later pack
    /// changes do not touch a running workflow, and any node can resume it.
    pub definition: String,
    pub state: FlowState,
    /// Commands decided but perhaps not yet carried out.
    #[serde(default)]
    pub outbox: Vec<Command>,
    /// Where the stored copy's parts are, when it is stored in parts.
    #[serde(skip)]
    pub(super) parts: Option<Parts>,
}

/// A record bigger than [`PART_BYTES`] (a workflow passing large values)
/// is stored in parts, `<id>.part.<generation>.<n>`, written before the
/// record's own entry, which then holds only this (by compare-and-swap, as
/// always). Each write uses a new generation, so a writer that loses the
/// compare-and-swap never touches the parts of the one that won.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Parts {
    pub(super) generation: String,
    pub(super) count: usize,
}

/// The entry of a record stored in parts.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct PartsHead {
    pub(super) parts: Parts,
}

/// Bytes of a record stored in one entry at most, and of each part of a
/// bigger one: well below NATS's default message limit (1 MiB).
pub(super) const PART_BYTES: usize = 512 * 1024;

pub(super) fn part_key(id: &str, parts: &Parts, n: usize) -> String {
    format!("{id}.part.{}.{n}", parts.generation)
}

/// Deletes the parts of a stored copy that is no longer the record (the
/// one replaced, or one that lost its compare-and-swap). Left behind, a
/// part is only wasted space: a failure is logged, not returned.
pub(super) async fn drop_parts(bus: &Bus, id: &str, parts: &Parts) {
    for n in 0..parts.count {
        if let Err(e) = bus.workflows.purge(part_key(id, parts, n)).await {
            tracing::warn!(workflow = %id, error = %e, "could not delete an old part of a workflow record");
        }
    }
}

/// Reads a workflow's record, from its parts when it is stored in parts.
pub(super) async fn read_record(
    bus: &Bus,
    id: &str,
) -> Result<Option<(WorkflowRecord, u64)>, EngineError> {
    let Some((value, revision)) = read_entry::<Value>(bus, id).await? else {
        return Ok(None);
    };
    if value.get("state").is_some() || value.get("parts").is_none() {
        let record = serde_json::from_value(value).map_err(|e| EngineError::Corrupt {
            key: id.to_string(),
            message: e.to_string(),
        })?;
        return Ok(Some((record, revision)));
    }
    let head: PartsHead = serde_json::from_value(value).map_err(|e| EngineError::Corrupt {
        key: id.to_string(),
        message: e.to_string(),
    })?;
    let mut bytes = Vec::new();
    for n in 0..head.parts.count {
        let key = part_key(id, &head.parts, n);
        bus.ops.count(BusOp::Get);
        let part = bus
            .workflows
            .get(&key)
            .await
            .map_err(|e| bus_err("read workflow part", e))?
            .ok_or_else(|| EngineError::Corrupt {
                key: key.clone(),
                message: "a part of the workflow record is missing".into(),
            })?;
        bytes.extend_from_slice(&part);
    }
    let mut record: WorkflowRecord = from_bytes(id, &bytes)?;
    record.parts = Some(head.parts);
    Ok(Some((record, revision)))
}

/// Key of the values of with-items run `run_id` of workflow `id`, beside
/// the workflow's record.
pub(super) fn items_key(id: &str, run_id: &str) -> String {
    format!("{id}.items.{run_id}")
}

/// Reads a workflow's record and the item values of its `with` runs.
pub(super) async fn load(
    bus: &Bus,
    id: &str,
) -> Result<Option<(WorkflowRecord, u64)>, EngineError> {
    let Some((mut record, revision)) = read_record(bus, id).await? else {
        return Ok(None);
    };
    for run in &mut record.state.runs {
        let Some(items) = run.items.as_mut() else {
            continue;
        };
        if items.values.len() == items.count || run.status != TaskStatus::Running {
            continue;
        }
        match read_entry::<Vec<Value>>(bus, &items_key(id, &run.id)).await? {
            Some((values, _)) => items.values = values,
            None => {
                return Err(bus_err(
                    "read workflow items",
                    format!("the items of {} in workflow {id} are missing", run.id),
                ))
            }
        }
    }
    Ok(Some((record, revision)))
}

pub(super) async fn read_entry<T: serde::de::DeserializeOwned>(
    bus: &Bus,
    key: &str,
) -> Result<Option<(T, u64)>, EngineError> {
    bus.ops.count(BusOp::Get);
    match bus
        .workflows
        .entry(key)
        .await
        .map_err(|e| bus_err("read workflow", e))?
    {
        Some(e) if e.operation == async_nats::jetstream::kv::Operation::Put => {
            Ok(Some((from_bytes(key, &e.value)?, e.revision)))
        }
        _ => Ok(None),
    }
}

/// Stores `record` over `revision` (0: create); its new revision, or
/// `None` when someone else wrote first. Item values of `with` runs that
/// started since the last write are stored first, beside the record, once.
pub(super) async fn store(
    bus: &Bus,
    record: &mut WorkflowRecord,
    revision: u64,
) -> Result<Option<u64>, EngineError> {
    use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
    for run in &mut record.state.runs {
        if let Some(items) = run.items.as_mut().filter(|i| !i.values_stored) {
            bus.ops.count(BusOp::Put);
            bus.workflows
                .put(items_key(&record.id, &run.id), to_bytes(&items.values)?)
                .await
                .map_err(|e| bus_err("store workflow items", e))?;
            items.values_stored = true;
        }
    }
    let mut bytes = to_bytes(&*record)?;
    let mut parts = None;
    if bytes.len() > PART_BYTES {
        let new = Parts {
            generation: ids::fresh(&time::now()),
            count: bytes.len().div_ceil(PART_BYTES),
        };
        for (n, chunk) in bytes.chunks(PART_BYTES).enumerate() {
            bus.ops.count(BusOp::Put);
            bus.workflows
                .put(part_key(&record.id, &new, n), chunk.to_vec().into())
                .await
                .map_err(|e| bus_err("store workflow part", e))?;
        }
        bytes = to_bytes(&PartsHead { parts: new.clone() })?;
        parts = Some(new);
    }
    bus.ops.count(if revision == 0 {
        BusOp::Create
    } else {
        BusOp::Update
    });
    let stored = if revision == 0 {
        match bus.workflows.create(&record.id, bytes).await {
            Ok(r) => Some(r),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => None,
            Err(e) => return Err(bus_err("store workflow", e)),
        }
    } else {
        match bus.workflows.update(&record.id, bytes, revision).await {
            Ok(r) => Some(r),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => None,
            Err(e) => return Err(bus_err("store workflow", e)),
        }
    };
    let stale = match stored {
        Some(_) => std::mem::replace(&mut record.parts, parts),
        None => parts,
    };
    if let Some(stale) = stale {
        drop_parts(bus, &record.id, &stale).await;
    }
    Ok(stored)
}
