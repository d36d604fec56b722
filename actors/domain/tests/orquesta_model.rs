//! The conductor against a reference model of Orquesta's semantics, on
//! random workflow graphs finished in random orders.
//!
//! The model is deliberately small and plain: tasks whose action succeeds
//! or fails per a script, `next` transitions (`when` succeeded, failed or
//! none; `do` lists with tasks and engine commands; constant `publish`),
//! `join: all`, `retry` on failure, and fail-fast. It
//! follows Orquesta (`orquesta/conducting.py`, `orquesta/machines.py`):
//! - the start tasks are those no transition leads to;
//! - a failed run of a task with `retry` left runs the task again (while
//!   the workflow is not failing) and takes no transition;
//! - when a run ends, every transition whose `when` holds publishes, and
//!   the tasks it names are staged: one run per task per event, however
//!   many taken transitions name it;
//! - a join task runs once a transition from every task that leads to it
//!   has been taken;
//! - a failed run is remediated when a taken transition leads to a task
//!   or to `noop`; otherwise the workflow fails: nothing more starts, the
//!   runs already under way finish, and the workflow ends `failed`;
//! - `fail` fails the workflow, but the tasks staged by the same event
//!   still run (`run_on_fail`); `continue` does nothing; a failing
//!   workflow still stages tasks (a join counts what arrives) but runs
//!   none otherwise;
//! - with no failure left unremediated it ends `succeeded` when nothing
//!   runs any more.
//!
//! The test drives `conductor::start` and `conductor::task_finished`
//! through the same choices as the model and compares, after every event,
//! the runs under way, and at the end the status, how many times each
//! task ran and what was published.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{json, Map, Value};
use squall_domain::orquesta::conductor::{self, Command, Flow, FlowStatus};
use squall_domain::orquesta::{inspect, WorkflowSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Succeeded,
    Failed,
    Always,
}

impl When {
    fn holds(self, succeeded: bool) -> bool {
        match self {
            When::Succeeded => succeeded,
            When::Failed => !succeeded,
            When::Always => true,
        }
    }
}

/// Orquesta's engine commands a transition may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Noop,
    Continue,
    Fail,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Noop => "noop",
            Engine::Continue => "continue",
            Engine::Fail => "fail",
        }
    }
}

#[derive(Debug, Clone)]
struct Transition {
    when: When,
    targets: Vec<usize>,
    engine: Option<Engine>,
    publish: bool,
}

#[derive(Debug, Clone)]
struct Task {
    join: bool,
    /// `retry: {when: <% failed() %>, count: n}`.
    retry: Option<u32>,
    next: Vec<Transition>,
    /// The outcome of the task's 1st, 2nd, ... finished run (cycling).
    script: Vec<bool>,
}

#[derive(Debug, Clone)]
struct Graph {
    tasks: Vec<Task>,
}

fn name(task: usize) -> String {
    format!("t{task}")
}

fn published_name(task: usize, route: usize) -> String {
    format!("p_{task}_{route}")
}

impl Graph {
    /// The distinct tasks with a transition to `task`.
    fn sources(&self, task: usize) -> BTreeSet<usize> {
        self.tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.next.iter().any(|n| n.targets.contains(&task)))
            .map(|(i, _)| i)
            .collect()
    }

    /// Keeps `join` only where Orquesta's meaning is plain: at least two
    /// tasks lead to the join and each of them runs at most once (a task
    /// reached twice would put its runs on separate routes, which the model
    /// leaves out).
    fn normalise(mut self) -> Graph {
        let mut may_repeat = vec![false; self.tasks.len()];
        for t in 0..self.tasks.len() {
            let sources = self.sources(t);
            let repeating_source = sources.iter().any(|s| may_repeat[*s]);
            if self.tasks[t].join && (sources.len() < 2 || repeating_source) {
                self.tasks[t].join = false;
            }
            may_repeat[t] = !self.tasks[t].join && (sources.len() > 1 || repeating_source);
        }
        self
    }

    fn yaml(&self) -> String {
        let mut y = String::from("version: 1.0\ntasks:\n");
        for (i, task) in self.tasks.iter().enumerate() {
            y.push_str(&format!("  {}:\n    action: core.noop\n", name(i)));
            if task.join {
                y.push_str("    join: all\n");
            }
            if let Some(count) = task.retry {
                y.push_str(&format!(
                    "    retry:\n      when: <% failed() %>\n      count: {count}\n"
                ));
            }
            if task.next.is_empty() {
                continue;
            }
            y.push_str("    next:\n");
            for (route, t) in task.next.iter().enumerate() {
                let when = match t.when {
                    When::Succeeded => "<% succeeded() %>",
                    When::Failed => "<% failed() %>",
                    When::Always => "",
                };
                let mut lines = Vec::new();
                if !when.is_empty() {
                    lines.push(format!("when: {when}"));
                }
                if t.publish {
                    lines.push(format!(
                        "publish:\n          - {}: {route}",
                        published_name(i, route)
                    ));
                }
                let mut targets: Vec<String> = t.targets.iter().map(|x| name(*x)).collect();
                targets.extend(t.engine.map(|e| e.name().to_string()));
                if !targets.is_empty() {
                    lines.push(format!("do: {}", targets.join(", ")));
                }
                if lines.is_empty() {
                    lines.push("publish: []".into());
                }
                y.push_str(&format!("      - {}\n", lines.join("\n        ")));
            }
        }
        y
    }
}

/// The reference model's run of one workflow.
#[derive(Debug, Default)]
struct Model {
    /// (task, attempt) of each run under way, in start order.
    running: Vec<(usize, u32)>,
    runs: BTreeMap<usize, usize>,
    finished: BTreeMap<usize, usize>,
    arrived: BTreeMap<usize, BTreeSet<usize>>,
    published: BTreeMap<String, Value>,
    failed: bool,
}

impl Model {
    fn start(graph: &Graph) -> Model {
        let mut m = Model::default();
        for t in 0..graph.tasks.len() {
            if graph.sources(t).is_empty() {
                m.launch(t, 0);
            }
        }
        m
    }

    fn launch(&mut self, task: usize, attempt: u32) {
        self.running.push((task, attempt));
        *self.runs.entry(task).or_default() += 1;
    }

    /// The outcome of the next run of `task` to finish.
    fn outcome(&self, graph: &Graph, task: usize) -> bool {
        let script = &graph.tasks[task].script;
        script[self.finished.get(&task).copied().unwrap_or(0) % script.len()]
    }

    /// Finishes run `at` of those under way; returns its outcome.
    fn finish(&mut self, graph: &Graph, at: usize) -> bool {
        let (task, attempt) = self.running.remove(at);
        let succeeded = self.outcome(graph, task);
        *self.finished.entry(task).or_default() += 1;
        // A retried failure takes no transition (and fails nothing).
        if let Some(count) = graph.tasks[task].retry {
            if !succeeded && attempt < count {
                if !self.failed {
                    self.launch(task, attempt + 1);
                }
                return succeeded;
            }
        }
        let mut staged = BTreeSet::new();
        let mut remediated = succeeded;
        let mut manual_fail = false;
        for (route, t) in graph.tasks[task].next.iter().enumerate() {
            if !t.when.holds(succeeded) {
                continue;
            }
            if t.publish {
                self.published
                    .insert(published_name(task, route), json!(route));
            }
            staged.extend(t.targets.iter().copied());
            remediated |= !t.targets.is_empty();
            match t.engine {
                Some(Engine::Noop) => remediated = true,
                Some(Engine::Fail) => {
                    remediated = true;
                    manual_fail = true;
                }
                Some(Engine::Continue) | None => {}
            }
        }
        if !remediated {
            self.failed = true;
        }
        // A failing workflow still stages (a join still counts what
        // arrives) but runs only what a `fail` of this event names.
        let runs = !self.failed || manual_fail;
        self.failed |= manual_fail;
        for next in staged {
            let ready = if graph.tasks[next].join {
                let arrived = self.arrived.entry(next).or_default();
                arrived.insert(task);
                *arrived == graph.sources(next)
            } else {
                true
            };
            if ready && runs {
                self.launch(next, 0);
            }
        }
        succeeded
    }

    fn status(&self) -> FlowStatus {
        if self.failed {
            FlowStatus::Failed
        } else {
            FlowStatus::Succeeded
        }
    }
}

fn graph_strategy() -> impl Strategy<Value = Graph> {
    (1usize..=7)
        .prop_flat_map(|n| {
            let task = move |i: usize| {
                let transition = (
                    prop_oneof![
                        Just(When::Succeeded),
                        Just(When::Failed),
                        Just(When::Always)
                    ],
                    proptest::collection::vec(any::<bool>(), n - i - 1),
                    prop_oneof![
                        4 => Just(None),
                        1 => Just(Some(Engine::Noop)),
                        1 => Just(Some(Engine::Continue)),
                        1 => Just(Some(Engine::Fail)),
                    ],
                    any::<bool>(),
                )
                    .prop_map(move |(when, mask, engine, publish)| Transition {
                        when,
                        targets: mask
                            .iter()
                            .enumerate()
                            .filter(|(_, on)| **on)
                            .map(|(k, _)| i + 1 + k)
                            .collect(),
                        engine,
                        publish,
                    });
                (
                    any::<bool>(),
                    prop_oneof![3 => Just(None), 1 => (1u32..=2).prop_map(Some)],
                    proptest::collection::vec(transition, 0..=2),
                    proptest::collection::vec(prop::bool::weighted(0.75), 1..=3),
                )
                    .prop_map(|(join, retry, next, script)| Task {
                        join,
                        retry,
                        next,
                        script,
                    })
            };
            (0..n).map(task).collect::<Vec<_>>()
        })
        .prop_map(|tasks| Graph { tasks }.normalise())
}

/// The run id, task and attempt of each `Run` command, and the `Finish`,
/// if any.
fn collect(
    commands: Vec<Command>,
    running: &mut Vec<(String, (usize, u32))>,
    finish: &mut Vec<FlowStatus>,
) {
    for c in commands {
        match c {
            Command::Run {
                run_id,
                task,
                attempt,
                ..
            } => {
                let index = task[1..].parse().expect("task name t<i>");
                running.push((run_id, (index, attempt)));
            }
            Command::Finish { status, .. } => finish.push(status),
            other => panic!("nothing cancels, pauses or iterates here: {other:?}"),
        }
    }
}

fn multiset<T: Ord>(tasks: impl Iterator<Item = T>) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for t in tasks {
        *m.entry(t).or_default() += 1;
    }
    m
}

fn check(graph: &Graph, choices: &[usize]) -> Result<(), TestCaseError> {
    let yaml = graph.yaml();
    let (spec, issues) = inspect(&yaml);
    prop_assert!(issues.is_empty(), "{issues:?}\n{yaml}");
    let spec: WorkflowSpec = spec.expect("a spec");

    let mut model = Model::start(graph);
    let flow = Flow::new(&spec);
    let (mut state, commands) = conductor::start(&flow, &Map::new(), Map::new());
    let mut running = Vec::new();
    let mut finish = Vec::new();
    collect(commands, &mut running, &mut finish);

    let mut step = 0;
    while !model.running.is_empty() {
        prop_assert_eq!(
            multiset(running.iter().map(|(_, t)| *t)),
            multiset(model.running.iter().copied()),
            "runs under way differ at step {}\n{}",
            step,
            yaml
        );
        prop_assert!(finish.is_empty(), "finished early\n{}", yaml);
        let chosen = choices[step % choices.len()] % model.running.len();
        let run = model.running[chosen];
        let at = running
            .iter()
            .position(|(_, r)| *r == run)
            .expect("the conductor runs it too");
        let (run_id, _) = running.remove(at);
        let succeeded = model.finish(graph, chosen);
        let commands = conductor::task_finished(&flow, &mut state, &run_id, succeeded, Value::Null);
        collect(commands, &mut running, &mut finish);
        step += 1;
    }
    prop_assert!(
        running.is_empty(),
        "the conductor still runs {running:?}\n{yaml}"
    );
    prop_assert_eq!(finish, vec![model.status()], "final status\n{}", yaml);
    prop_assert_eq!(
        multiset(
            state
                .runs
                .iter()
                .map(|r| r.task[1..].parse().expect("t<i>"))
        ),
        model.runs.clone(),
        "runs per task\n{}",
        yaml
    );
    let published: BTreeMap<String, Value> = state
        .ctx
        .iter()
        .filter(|(k, _)| k.starts_with("p_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    prop_assert_eq!(published, model.published.clone(), "published\n{}", yaml);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn the_conductor_agrees_with_the_reference_model(
        graph in graph_strategy(),
        choices in proptest::collection::vec(any::<usize>(), 1..16),
    ) {
        check(&graph, &choices)?;
    }
}

/// Found by the property test: two taken transitions naming the same task
/// ran it twice; Orquesta stages it once per event.
#[test]
fn a_task_named_by_two_taken_transitions_runs_once() {
    let (spec, issues) = inspect(
        "version: 1.0\ntasks:\n  a:\n    action: core.noop\n    next:\n      - do: b\n      - when: <% succeeded() %>\n        do: b\n  b:\n    action: core.noop\n",
    );
    assert!(issues.is_empty(), "{issues:?}");
    let spec = spec.expect("a spec");
    let flow = Flow::new(&spec);
    let (mut state, started) = conductor::start(&flow, &Map::new(), Map::new());
    assert_eq!(started.len(), 1);
    let next = conductor::task_finished(&flow, &mut state, "a.0", true, Value::Null);
    let runs: Vec<&str> = next
        .iter()
        .filter_map(|c| match c {
            Command::Run { task, .. } => Some(task.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(runs, vec!["b"]);
}
