//! Sweeps: reconcile a partition's running workflows with their tasks'
//! records, reporting again a task's end, pause or resume its workflow
//! (Orquesta's or a chain) never heard.

use std::collections::HashMap;

use squall_domain::execution::Status;
use squall_domain::ids;
use squall_domain::orquesta::conductor::{FlowState, TaskStatus};

use super::partition::PartitionMemory;
use super::record::read_record;
use crate::bus::Bus;
use crate::error::EngineError;
use crate::flow_events::notify_parent;

/// What a sweep needs of a partition's memory: the running workflows, and
/// the states of those it keeps in memory.
pub(super) struct SweepSnapshot {
    active: Vec<String>,
    flows: HashMap<String, FlowState>,
    chains: crate::chains::ChainCache,
}

impl SweepSnapshot {
    pub(super) fn of(memory: &PartitionMemory) -> SweepSnapshot {
        let mut flows = HashMap::new();
        let mut chains = crate::chains::ChainCache::new();
        for id in &memory.active {
            if let Some((record, _)) = memory.cache.records.get(id) {
                flows.insert(id.clone(), record.state.clone());
            } else if let Some(chain) = memory.chains.get(id) {
                chains.insert(id.clone(), chain.clone());
            }
        }
        SweepSnapshot {
            active: memory.active.iter().cloned().collect(),
            flows,
            chains,
        }
    }
}

/// Reconciles the partition's running workflows with their tasks'
/// records: a task whose record says it ended (or paused) without its
/// workflow having heard — its writer died between the write and the
/// publish — is reported again (same message ids: a report that was not
/// lost changes nothing). Returns the workflows that finished, to leave
/// the running set.
pub(super) async fn sweep(bus: &Bus, snapshot: SweepSnapshot) -> Result<Vec<String>, EngineError> {
    let mut finished = Vec::new();
    for id in &snapshot.active {
        if !snapshot.flows.contains_key(id) {
            if let Some(view) = crate::chains::sweep_view(bus, &snapshot.chains, id).await? {
                if view.ended {
                    finished.push(id.clone());
                } else if let Some(child) = view.waited {
                    match bus.execution(&child).await? {
                        // Ended, paused while its chain thinks it runs, or
                        // running while its chain thinks it paused.
                        Some((record, _)) if unheard(&record.status, view.waited_paused) => {
                            notify_parent(bus, &record).await?;
                        }
                        _ => {}
                    }
                }
                continue;
            }
        }
        let record = match snapshot.flows.get(id) {
            Some(state) => Some(state.clone()),
            None => read_record(bus, id).await?.map(|(r, _)| r.state),
        };
        let Some(flow) = record.filter(|f| !f.status.is_finished()) else {
            finished.push(id.clone());
            continue;
        };
        let Some((workflow, _)) = bus.execution(id).await? else {
            finished.push(id.clone());
            continue;
        };
        for (run_id, waiting) in outstanding_runs(&flow) {
            let child = ids::derived(&workflow.start_timestamp, &[&workflow.id, &run_id]);
            let Some((record, _)) = bus.execution(&child).await? else {
                continue;
            };
            if unheard(&record.status, waiting == TaskStatus::Paused) {
                notify_parent(bus, &record).await?;
            }
        }
    }
    Ok(finished)
}

/// Whether a task run's execution in `status` changed unheard by its
/// parent, which believes it `paused` (or else running): it ended, it
/// paused (or waits on a person) while its parent thinks it runs, or it
/// runs again while its parent thinks it paused. [`notify_parent`] tells
/// which, with the message id the lost notice had, so a notice that was
/// not lost changes nothing; the parent's conductor ignores a repeat.
fn unheard(status: &Status, paused: bool) -> bool {
    status.is_completed()
        || match status {
            Status::Paused | Status::Pending => !paused,
            Status::Running => paused,
            _ => false,
        }
}

/// Task runs (items included) a workflow still waits on, with what it
/// believes of each (an item is paused when its bit says so).
pub(super) fn outstanding_runs(flow: &FlowState) -> Vec<(String, TaskStatus)> {
    let mut runs = Vec::new();
    for run in &flow.runs {
        if !matches!(run.status, TaskStatus::Running | TaskStatus::Paused) {
            continue;
        }
        match &run.items {
            Some(items) => runs.extend(items.in_flight_indexes().map(|i| {
                let status = if items.is_paused(i) {
                    TaskStatus::Paused
                } else {
                    TaskStatus::Running
                };
                (format!("{}.{i}", run.id), status)
            })),
            None => runs.push((run.id.clone(), run.status)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_unheard_when_the_record_and_the_parent_disagree() {
        for (status, paused, expected) in [
            (Status::Succeeded, false, true),
            (Status::Canceled, true, true),
            (Status::Paused, false, true),
            (Status::Pending, false, true),
            (Status::Paused, true, false),
            (Status::Pending, true, false),
            (Status::Running, true, true),
            (Status::Running, false, false),
            (Status::Pausing, false, false),
            (Status::Resuming, true, false),
        ] {
            assert_eq!(unheard(&status, paused), expected, "{status:?} {paused}");
        }
    }
}
