//! The conductor: Orquesta's semantics as a pure state machine. Given a
//! workflow's state and one event (started, or a task finished), it
//! returns the new state and the commands to carry out (run a task's
//! action, finish the workflow). No I/O: the engine persists the state and
//! carries the commands out idempotently (every task run has an id derived
//! from the workflow, the task and its attempt), so replaying an event
//! after a crash cannot run anything twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::spec::{Join, TaskSpec, WorkflowSpec, ENGINE_COMMANDS};
use crate::secrets::Cipher;
use crate::template::{KeyValueLookup, KvScope, NoKeyValues, Renderer};
use crate::yaql::{self, Host};

mod control;
mod events;
mod schedule;
mod scope;
mod start;

pub use control::*;
pub use events::*;
use schedule::*;
use scope::*;
pub use start::*;

/// Where a workflow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowStatus {
    Running,
    /// Pause asked: nothing new starts; ends `paused` once no task is
    /// active (paused child workflows and pending inquiries do not count).
    Pausing,
    Paused,
    Succeeded,
    Failed,
    /// Cancel asked: no new task starts; ends `canceled` once the running
    /// ones have ended.
    Canceling,
    Canceled,
}

impl FlowStatus {
    /// Succeeded, failed or canceled: nothing more happens.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            FlowStatus::Succeeded | FlowStatus::Failed | FlowStatus::Canceled
        )
    }

    /// Pausing or paused.
    pub fn is_paused(self) -> bool {
        matches!(self, FlowStatus::Pausing | FlowStatus::Paused)
    }
}

/// Where one task run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Running,
    /// Its execution is a paused workflow or a pending inquiry.
    Paused,
    Succeeded,
    Failed,
}

/// One run of a task (a task can run more than once: retries, or several
/// inbound transitions without a join).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRun {
    /// `<task>.<n>`: unique within the workflow, stable across replays.
    pub id: String,
    pub task: String,
    pub status: TaskStatus,
    #[serde(default)]
    pub result: Value,
    /// 0 for the first run, then one more per retry.
    pub attempt: u32,
    /// Orquesta's route: 0, or a branch a split task was reached on (see
    /// [`FlowState::routes`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub route: usize,
    /// A `with` task's items and their progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Items>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// A set of item indexes, one bit each: 10,000 items take 1,250 bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Marks(Vec<u64>);

impl Marks {
    pub fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Adds `i`; false when it was there already.
    fn insert(&mut self, i: usize) -> bool {
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, 0);
        }
        let (word, bit) = (&mut self.0[i / 64], 1 << (i % 64));
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }

    fn remove(&mut self, i: usize) -> bool {
        let Some(word) = self.0.get_mut(i / 64) else {
            return false;
        };
        let bit = 1 << (i % 64);
        let had = *word & bit != 0;
        *word &= !bit;
        had
    }
}

/// The items of one run of a `with` task. Item `i` runs as
/// `<run id>.<i>`; at most `concurrency` at once; the task's result is the
/// list of the items' results, in item order.
///
/// The state keeps no item results: each item's end only sets a mark, so
/// the record written per item stays small however many items there are.
/// When the last item ends the conductor asks for the results
/// ([`Command::Gather`]); whoever drives it reads them (the engine, from
/// the items' executions) and hands them to [`items_gathered`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Items {
    /// What `item()` is for each item. Never serialized: they never change
    /// after the task starts, so the engine stores them once, beside the
    /// workflow's record (see `values_stored`), instead of in every write.
    #[serde(skip)]
    pub values: Vec<Value>,
    /// How many items there are.
    pub count: usize,
    /// Whether the engine has stored `values`.
    #[serde(default)]
    pub values_stored: bool,
    /// Items started so far (they start in order).
    pub started: usize,
    pub concurrency: usize,
    #[serde(default)]
    ended: Marks,
    #[serde(default)]
    failed: Marks,
    /// Items whose execution is paused (a child workflow, an inquiry).
    #[serde(default)]
    paused: Marks,
    #[serde(default)]
    ended_count: usize,
    #[serde(default)]
    failed_count: usize,
    #[serde(default)]
    paused_count: usize,
    /// Results of items that ran no execution (no action, or the item
    /// could not start), by index.
    #[serde(default)]
    pub local: BTreeMap<usize, Value>,
    /// The results have been asked for.
    #[serde(default)]
    gathering: bool,
}

/// Where one item's result is, for [`Command::Gather`].
#[derive(Debug, Clone, PartialEq)]
pub enum ItemResult<'a> {
    /// In the execution of task run `<run id>.<index>`.
    Execution(String),
    /// Known already (the item ran no execution).
    Local(&'a Value),
    /// The item never started.
    NotStarted,
}

impl Items {
    fn new(values: Vec<Value>, concurrency: usize) -> Items {
        Items {
            count: values.len(),
            values,
            values_stored: false,
            started: 0,
            concurrency,
            ended: Marks::default(),
            failed: Marks::default(),
            paused: Marks::default(),
            ended_count: 0,
            failed_count: 0,
            paused_count: 0,
            local: BTreeMap::new(),
            gathering: false,
        }
    }

    /// Items started and not ended.
    fn in_flight(&self) -> usize {
        self.started - self.ended_count
    }

    /// Items started, not ended and not paused.
    fn active(&self) -> usize {
        self.in_flight() - self.paused_count
    }

    fn failed(&self) -> bool {
        self.failed_count > 0
    }

    /// Items started and not ended, by index.
    pub fn in_flight_indexes(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.started).filter(|i| !self.ended.contains(*i))
    }

    /// Whether item `index`'s execution is known paused (or waiting on a
    /// person).
    pub fn is_paused(&self, index: usize) -> bool {
        self.paused.contains(index)
    }

    /// Whether item `index` has started and not ended.
    fn is_in_flight(&self, index: usize) -> bool {
        index < self.started && !self.ended.contains(index)
    }

    /// Marks in-flight item `index` paused; false if it was already.
    fn pause(&mut self, index: usize) -> bool {
        let fresh = self.is_in_flight(index) && self.paused.insert(index);
        self.paused_count += usize::from(fresh);
        fresh
    }

    /// Marks item `index` running again; false if it was not paused.
    fn unpause(&mut self, index: usize) -> bool {
        let had = self.paused.remove(index);
        self.paused_count -= usize::from(had);
        had
    }

    fn end(&mut self, index: usize, succeeded: bool) {
        if self.ended.insert(index) {
            self.ended_count += 1;
            if !succeeded && self.failed.insert(index) {
                self.failed_count += 1;
            }
            if self.paused.remove(index) {
                self.paused_count -= 1;
            }
        }
    }

    /// Where each item's result is, in item order (`run_id` is the task
    /// run's id).
    pub fn results<'a>(&'a self, run_id: &'a str) -> impl Iterator<Item = ItemResult<'a>> + 'a {
        (0..self.count).map(move |i| match self.local.get(&i) {
            Some(v) => ItemResult::Local(v),
            None if i < self.started => ItemResult::Execution(format!("{run_id}.{i}")),
            None => ItemResult::NotStarted,
        })
    }
}

/// A workflow's whole state, as the engine stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowState {
    pub status: FlowStatus,
    pub ctx: Map<String, Value>,
    pub runs: Vec<TaskRun>,
    /// Inbound transitions that have arrived at each join task.
    #[serde(default)]
    pub joins: BTreeMap<String, u32>,
    #[serde(default)]
    pub errors: Vec<Value>,
    /// Runs per task name so far, for run ids.
    #[serde(default)]
    pub counts: BTreeMap<String, u32>,
    /// Task runs decided while pausing or paused: they start on resume.
    #[serde(default)]
    pub staged: Vec<Command>,
    /// How many entries of `errors` are failed runs that a transition or a
    /// retry took on. Orquesta logs every failed run; these fail nothing,
    /// and the log is shown only if something else fails the workflow.
    #[serde(default)]
    pub remediated: usize,
    /// Runs started next to a `fail` command: they run although the
    /// workflow is failing (Orquesta's `run_on_fail`), so a task can
    /// remediate and fail in one transition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_on_fail: Vec<String>,
    /// Orquesta's routes 1, 2, ...: a task reached by several transitions
    /// without a join (a split) runs once per arrival, each on a route of
    /// its own, named by the transitions (`<task>__t<n>`) that led there;
    /// what follows it stays on that route. Route 0 is the start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Vec<String>>,
    /// The user the workflow runs as (`st2.user` of the context it started
    /// with), whose keys `st2kv()` reads. Kept apart from the context,
    /// which an input, a var or a publish named `st2` may overwrite.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
}

impl FlowState {
    /// Whether an error fails the workflow: nothing new starts.
    pub fn failing(&self) -> bool {
        self.errors.len() > self.remediated
    }
}

/// Something the engine must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Run `action` with `input` as task run `run_id`.
    Run {
        run_id: String,
        task: String,
        action: String,
        input: Value,
        attempt: u32,
        /// Seconds to wait first.
        delay: Option<f64>,
    },
    /// The workflow is being canceled: cancel task run `run_id` if it is
    /// a workflow or has not started yet; an action under way runs to its
    /// end (StackStorm's `task_cancelable`), and the workflow waits for it.
    Cancel { run_id: String },
    /// The workflow is being canceled: so is the workflow it is a task of,
    /// if any (StackStorm cascades a cancel up to the root, whose cancel
    /// then reaches the other child workflows).
    CancelParent,
    /// Pause task run `run_id` if it is a workflow (others run on).
    Pause { run_id: String },
    /// Resume task run `run_id` if it is a paused workflow.
    Resume { run_id: String },
    /// The items of `with` task run `run_id` have all ended: read their
    /// results ([`Items::results`]) and hand them to [`items_gathered`].
    Gather { run_id: String },
    /// The workflow is now `status` (pausing, paused, or running again).
    Status { status: FlowStatus },
    /// The workflow is over; `result` is its execution result
    /// (`{output}` or `{errors, output}`).
    Finish { status: FlowStatus, result: Value },
}

/// A workflow definition and what its expressions may read besides the
/// workflow's own state: the datastore for `st2kv()`.
pub struct Flow<'a> {
    pub spec: &'a WorkflowSpec,
    renderer: &'a Renderer,
    kv: Arc<dyn KeyValueLookup>,
    cipher: Option<Cipher>,
    secrets: Option<&'a dyn SecretScope>,
}

/// What runs each evaluation of a workflow's expressions that reads the
/// datastore (mentions `st2kv`), so that the one who built the [`Flow`]
/// can account for the secrets opened inside: the engine audits them
/// (squall-actors' `audit::decrypt`), this crate knows nothing of audit.
pub trait SecretScope: Sync {
    /// Runs `evaluate` (once), an evaluation of task `task`'s expressions
    /// (`None`: the workflow's own `input`, `vars` or `output`).
    fn around(&self, task: Option<&str>, evaluate: &mut dyn FnMut());
}

static PLAIN: std::sync::LazyLock<Renderer> = std::sync::LazyLock::new(Renderer::new);

impl<'a> Flow<'a> {
    /// `spec` with an empty datastore.
    pub fn new(spec: &'a WorkflowSpec) -> Flow<'a> {
        Flow {
            spec,
            renderer: &PLAIN,
            kv: Arc::new(NoKeyValues),
            cipher: None,
            secrets: None,
        }
    }

    /// Expressions that read the datastore are evaluated inside
    /// `secrets` ([`SecretScope::around`]).
    pub fn with_secret_scope(self, secrets: &'a dyn SecretScope) -> Flow<'a> {
        Flow {
            secrets: Some(secrets),
            ..self
        }
    }

    /// Expressions read the datastore `kv` (`st2kv()`); `cipher` opens
    /// secrets for `st2kv(key, decrypt=true)`; Jinja renders with
    /// `renderer`.
    pub fn with_datastore(
        self,
        renderer: &'a Renderer,
        kv: Arc<dyn KeyValueLookup>,
        cipher: Option<Cipher>,
    ) -> Flow<'a> {
        Flow {
            renderer,
            kv,
            cipher,
            ..self
        }
    }
}
