//! What a user asks of a running workflow: cancel, pause and resume, and
//! a child's pause, pending inquiry or resume seen from the workflow.

use super::*;

/// Cancels the workflow: every running task run is told to stop, nothing
/// new starts, and it ends `canceled` when the last run has ended.
pub fn cancel(flow: &Flow<'_>, state: &mut FlowState) -> Vec<Command> {
    let mut commands = Vec::new();
    if !matches!(
        state.status,
        FlowStatus::Running | FlowStatus::Pausing | FlowStatus::Paused
    ) {
        return commands;
    }
    state.status = FlowStatus::Canceling;
    commands.push(Command::CancelParent);
    // Runs kept for the resume never started.
    let staged: Vec<String> = state.staged.drain(..).filter_map(run_id_of).collect();
    state.runs.retain(|r| !staged.contains(&r.id));
    for run in state
        .runs
        .iter()
        .filter(|r| matches!(r.status, TaskStatus::Running | TaskStatus::Paused))
    {
        match &run.items {
            Some(items) => commands.extend(
                (0..items.started)
                    .filter(|i| items.is_in_flight(*i))
                    .map(|i| Command::Cancel {
                        run_id: format!("{}.{i}", run.id),
                    }),
            ),
            None => commands.push(Command::Cancel {
                run_id: run.id.clone(),
            }),
        }
    }
    fail_idle_with_tasks(state);
    settle(flow, state, &mut commands);
    commands
}

pub(super) fn run_id_of(command: Command) -> Option<String> {
    match command {
        Command::Run { run_id, .. } => Some(run_id),
        _ => None,
    }
}

/// Pauses the workflow: nothing new starts, child workflows are asked to
/// pause, actions under way run to their end; it is `paused` once nothing
/// is active.
pub fn pause(flow: &Flow<'_>, state: &mut FlowState) -> Vec<Command> {
    let mut commands = Vec::new();
    if state.status != FlowStatus::Running {
        return commands;
    }
    state.status = FlowStatus::Pausing;
    commands.push(Command::Status {
        status: FlowStatus::Pausing,
    });
    commands.extend(
        active_run_ids(state)
            .into_iter()
            .map(|run_id| Command::Pause { run_id }),
    );
    settle(flow, state, &mut commands);
    commands
}

/// A workflow whose pause came before it started (its execution was
/// `pausing` or `paused` when its start was handled): the runs its start
/// decided (`commands`) are staged for the resume, as a pause would have
/// staged them, and with nothing active it is `paused` at once. What is
/// left of `commands` (a `paused` status, or the end of a workflow that
/// failed or finished at start) is returned.
pub fn pause_at_start(
    flow: &Flow<'_>,
    state: &mut FlowState,
    commands: Vec<Command>,
) -> Vec<Command> {
    if state.status != FlowStatus::Running {
        return commands;
    }
    let (runs, mut rest): (Vec<Command>, Vec<Command>) = commands
        .into_iter()
        .partition(|c| matches!(c, Command::Run { .. }));
    state.status = FlowStatus::Pausing;
    state.staged.extend(runs);
    settle(flow, state, &mut rest);
    rest
}

/// Resumes a pausing or paused workflow: paused child workflows are asked
/// to resume and the runs decided meanwhile start.
pub fn resume(flow: &Flow<'_>, state: &mut FlowState) -> Vec<Command> {
    resume_with(flow, state, true)
}

/// [`resume`]; `children`: also ask paused child workflows (and paused
/// items) to resume.
pub(super) fn resume_with(flow: &Flow<'_>, state: &mut FlowState, children: bool) -> Vec<Command> {
    let mut commands = Vec::new();
    if !matches!(state.status, FlowStatus::Pausing | FlowStatus::Paused) {
        return commands;
    }
    state.status = FlowStatus::Running;
    commands.push(Command::Status {
        status: FlowStatus::Running,
    });
    let mut with_items = Vec::new();
    for run in &state.runs {
        match (&run.items, run.status) {
            (None, TaskStatus::Paused) if children => commands.push(Command::Resume {
                run_id: run.id.clone(),
            }),
            (Some(items), TaskStatus::Running) => {
                if children {
                    commands.extend(
                        (0..items.started)
                            .filter(|i| items.paused.contains(*i))
                            .map(|i| Command::Resume {
                                run_id: format!("{}.{i}", run.id),
                            }),
                    );
                }
                with_items.push(run.id.clone());
            }
            _ => {}
        }
    }
    commands.append(&mut state.staged);
    for run_id in with_items {
        start_items(flow, state, &run_id, &mut commands);
    }
    settle(flow, state, &mut commands);
    commands
}

/// A task run's execution, a child workflow, paused: as in Orquesta the
/// workflow runs on while other runs are active, and is `paused` once
/// none is (the other branches are not asked to pause).
pub fn task_paused(flow: &Flow<'_>, state: &mut FlowState, run_id: &str) -> Vec<Command> {
    if !mark_paused(state, run_id, true) {
        return Vec::new();
    }
    let mut commands = Vec::new();
    settle(flow, state, &mut commands);
    commands
}

/// A task run's execution went `pending` (an inquiry waits for its
/// answer): the workflow pauses, as StackStorm's does for an inquiry.
pub fn task_pending(flow: &Flow<'_>, state: &mut FlowState, run_id: &str) -> Vec<Command> {
    if !mark_paused(state, run_id, true) {
        return Vec::new();
    }
    if state.status == FlowStatus::Running {
        return pause(flow, state);
    }
    let mut commands = Vec::new();
    settle(flow, state, &mut commands);
    commands
}

/// A paused task run's execution runs again (a child workflow resumed on
/// its own): a paused workflow runs again too, as Orquesta's does; its
/// other paused children stay paused.
pub fn task_resumed(flow: &Flow<'_>, state: &mut FlowState, run_id: &str) -> Vec<Command> {
    if !mark_paused(state, run_id, false) {
        return Vec::new();
    }
    resume_with(flow, state, false)
}

/// Marks task run (or item) `run_id` paused or running again; false when
/// it already was (a replay) or is not under way.
pub(super) fn mark_paused(state: &mut FlowState, run_id: &str, paused: bool) -> bool {
    if let Some((run, index)) = item_of(state, run_id) {
        return state.runs[run].items.as_mut().is_some_and(|items| {
            if paused {
                items.pause(index)
            } else {
                items.unpause(index)
            }
        });
    }
    let (from, to) = if paused {
        (TaskStatus::Running, TaskStatus::Paused)
    } else {
        (TaskStatus::Paused, TaskStatus::Running)
    };
    match state
        .runs
        .iter_mut()
        .find(|r| r.id == run_id && r.status == from)
    {
        Some(run) => {
            run.status = to;
            true
        }
        None => false,
    }
}
