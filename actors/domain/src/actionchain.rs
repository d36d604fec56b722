//! ActionChain (the `action-chain` runner): StackStorm's linear chains, as
//! a pure conductor. A chain runs one node at a time: a node's action runs
//! as a child execution; when it ends, its result joins `__results` (and
//! the context under the node's name), its `publish` values join the
//! chain's variables, and `on-success` or `on-failure` names the next node.
//! The chain ends with the status of its last node (or `failed` when a
//! node cannot start), and its result is StackStorm's: `{tasks,
//! published}`, with `error` when the chain itself failed.
//!
//! A chain pauses as StackStorm's does: asked to pause, it is `pausing`
//! while its node runs to its end (a child chain or workflow is asked to
//! pause too), then `paused` with the next node staged; a node that pauses
//! (a child paused, an inquiry `pending`) pauses the chain. Resuming runs
//! the staged node (or asks the paused child to resume) as if nothing had
//! happened. A chain paused only because its node was (nobody asked) runs
//! again when that node runs again or ends: an answered inquiry resumes it.
//!
//! Like the Orquesta conductor, every function is state + event → new
//! state + [`ChainCommand`]s; the engine stores the state with its
//! commands before carrying them out (see `squall-actors`' `chains`).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::execution::Status;
use crate::template::{is_template, KeyValueLookup, Renderer, TemplateError};

/// A chain definition (the action's `entry_point` file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSpec {
    pub chain: Vec<ChainNode>,
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub vars: Option<Map<String, Value>>,
}

/// One node of a chain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainNode {
    pub name: String,
    #[serde(rename = "ref")]
    pub action: String,
    /// The old name of `parameters`.
    #[serde(default)]
    pub params: Option<Map<String, Value>>,
    #[serde(default)]
    pub parameters: Option<Map<String, Value>>,
    #[serde(rename = "on-success", default)]
    pub on_success: Option<String>,
    #[serde(rename = "on-failure", default)]
    pub on_failure: Option<String>,
    #[serde(default)]
    pub publish: Option<Map<String, Value>>,
    #[serde(default)]
    pub notify: Option<Value>,
    /// Documentation only (StackStorm's own examples carry it).
    #[serde(default)]
    pub description: Option<String>,
}

impl ChainNode {
    fn parameters(&self) -> Map<String, Value> {
        self.parameters
            .clone()
            .filter(|p| !p.is_empty())
            .or_else(|| self.params.clone())
            .unwrap_or_default()
    }
}

impl ChainSpec {
    /// Parses and checks a definition, as StackStorm's runner does before
    /// it starts: the node names `on-success`, `on-failure` and `default`
    /// refer to must exist (a Jinja name is only known at run time), and
    /// the default node is picked when none is named. The error says what
    /// is wrong, with the YAML line when the text does not parse.
    pub fn parse(text: &str, chain_name: &str) -> Result<ChainSpec, String> {
        let mut spec: ChainSpec = serde_yaml::from_str(text)
            .map_err(|e| format!("Failed to parse action chain definition: {e}"))?;
        for node in &spec.chain {
            if node.params.as_ref().is_some_and(|p| !p.is_empty())
                && node.parameters.as_ref().is_some_and(|p| !p.is_empty())
            {
                return Err(format!(
                    "task \"{}\": Either \"params\" or \"parameters\" attribute needs to be provided, but not both",
                    node.name
                ));
            }
        }
        if spec.default.is_none() {
            spec.default = spec.pick_default();
        }
        let Some(default) = spec.default.clone() else {
            return Err(format!("Failed to find default node in {chain_name}."));
        };
        let known = |name: &Option<String>| match name.as_deref() {
            None | Some("") => true,
            Some(n) => is_template(n) || spec.node(n).is_some(),
        };
        for node in &spec.chain {
            for (field, target) in [
                ("on-success", &node.on_success),
                ("on-failure", &node.on_failure),
            ] {
                if !known(target) {
                    return Err(format!(
                        "Unable to find node with name \"{}\" referenced in \"{field}\" in task \"{}\".",
                        target.as_deref().unwrap_or_default(),
                        node.name
                    ));
                }
            }
        }
        if !known(&Some(default.clone())) {
            return Err(format!(
                "Unable to find node with name \"{default}\" referenced in \"default\"."
            ));
        }
        Ok(spec)
    }

    /// StackStorm's default node: the first one nothing transitions to,
    /// else the first.
    fn pick_default(&self) -> Option<String> {
        let referenced: Vec<&str> = self
            .chain
            .iter()
            .flat_map(|n| [n.on_success.as_deref(), n.on_failure.as_deref()])
            .flatten()
            .collect();
        self.chain
            .iter()
            .find(|n| !referenced.contains(&n.name.as_str()))
            .or(self.chain.first())
            .map(|n| n.name.clone())
    }

    fn node(&self, name: &str) -> Option<&ChainNode> {
        self.chain.iter().find(|n| n.name == name)
    }
}

/// A chain's durable state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChainState {
    /// `running` until the chain ends, `pausing` or `paused` between;
    /// then its final status.
    pub status: Status,
    /// The chain action's own parameters.
    pub parameters: Map<String, Value>,
    /// What children see as `action_context.parent` (and their context's
    /// `parent`): the chain's execution id and its context.
    pub parent: Map<String, Value>,
    /// `vars`, rendered at start, plus everything published since.
    pub vars: Map<String, Value>,
    /// Each finished node's result, by node name (`__results`).
    pub results: Map<String, Value>,
    /// The `tasks` of the result, one per finished node run.
    pub tasks: Vec<Value>,
    /// The `published` of the result (`None`: `display_published` off).
    pub published: Option<Map<String, Value>>,
    /// The node run the chain waits on.
    pub current: Option<CurrentRun>,
    /// Node runs started so far (numbers run ids: a loop reruns a node).
    pub runs: u32,
    /// The status the chain ends with if nothing follows.
    pub last: Status,
    /// Why the chain itself failed (StackStorm's top-level `error`).
    pub error: Option<String>,
    /// A cancel was asked while a node ran.
    #[serde(default)]
    pub canceling: bool,
    /// A pause was asked (by a person or the chain's parent): the chain
    /// stays paused until it is resumed.
    #[serde(default)]
    pub held: bool,
    /// A node ended while the chain was held: what runs when it resumes.
    #[serde(default)]
    pub staged: Option<Staged>,
}

/// What a held chain does when it resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Staged {
    /// The node to run (`None`: the chain ends with its last status).
    pub next: Option<String>,
}

/// The node run in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CurrentRun {
    /// `<node>.<n>`: the child's execution id derives from it.
    pub run_id: String,
    pub node: String,
    pub created_at: String,
    /// Its execution paused (a child chain or workflow) or waits on a
    /// person (`pending`).
    #[serde(default)]
    pub paused: Option<PausedRun>,
}

/// A node run whose execution paused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PausedRun {
    pub execution_id: String,
    /// It waits on a person (an inquiry): resuming the chain cannot
    /// resume it, only an answer can.
    pub pending: bool,
}

/// What the engine must do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ChainCommand {
    /// Request the node's action as a child execution.
    Run {
        run_id: String,
        node: String,
        action: String,
        parameters: Map<String, Value>,
        /// The child's `context.chain`: the node as written (its
        /// `notify` included).
        chain: Value,
    },
    /// Cancel the running child.
    Cancel { run_id: String },
    /// Ask the running child to pause (it is only a chain or workflow
    /// that can).
    Pause { run_id: String },
    /// Ask the child to resume (when it is a paused chain or workflow).
    Resume { run_id: String },
    /// Write the chain execution's status (`pausing`, `paused`,
    /// `running`), and its result so far when it is `paused`.
    Status {
        status: Status,
        #[serde(default)]
        result: Option<Value>,
    },
    /// Write the chain execution's end.
    Finish { status: Status, result: Value },
}

/// Where a chain renders its Jinja: the renderer and the datastore.
pub struct ChainEnv<'a> {
    pub renderer: &'a Renderer,
    pub kv: &'a dyn KeyValueLookup,
    /// When node runs start or end (task `created_at` / `updated_at`).
    pub now: String,
}

/// Starts a chain: renders `vars` and runs the default node.
pub fn start(
    spec: &ChainSpec,
    env: &ChainEnv<'_>,
    parameters: Map<String, Value>,
    parent: Map<String, Value>,
    display_published: bool,
) -> (ChainState, Vec<ChainCommand>) {
    let (mut state, failed) = begin(spec, env, parameters, parent, display_published);
    if !failed.is_empty() {
        return (state, failed);
    }
    let first = spec.default.clone();
    let commands = advance(spec, env, &mut state, first.as_deref());
    (state, commands)
}

/// [`start`] for a chain whose pause came before it started (its
/// execution was `pausing` or `paused` when its start was handled): it is
/// held and `paused` at once, its default node staged for the resume, as
/// StackStorm's chain checks for a pause before each node. Its `vars`
/// are rendered first, so a chain that cannot start fails now.
pub fn start_held(
    spec: &ChainSpec,
    env: &ChainEnv<'_>,
    parameters: Map<String, Value>,
    parent: Map<String, Value>,
    display_published: bool,
) -> (ChainState, Vec<ChainCommand>) {
    let (mut state, failed) = begin(spec, env, parameters, parent, display_published);
    if !failed.is_empty() {
        return (state, failed);
    }
    state.held = true;
    state.staged = Some(Staged {
        next: spec.default.clone(),
    });
    let commands = set_paused(&mut state);
    (state, commands)
}

/// A new chain's state with its `vars` rendered, and the chain's end when
/// it failed rendering them (else nothing).
fn begin(
    spec: &ChainSpec,
    env: &ChainEnv<'_>,
    parameters: Map<String, Value>,
    parent: Map<String, Value>,
    display_published: bool,
) -> (ChainState, Vec<ChainCommand>) {
    let mut state = ChainState {
        status: Status::Running,
        parameters,
        parent,
        vars: Map::new(),
        results: Map::new(),
        tasks: Vec::new(),
        published: display_published.then(Map::new),
        current: None,
        runs: 0,
        last: Status::Failed,
        error: None,
        canceling: false,
        held: false,
        staged: None,
    };
    if let Some(vars) = spec.vars.as_ref().filter(|v| !v.is_empty()) {
        let ctx = Value::Object(state.parameters.clone());
        match env
            .renderer
            .render_value(&Value::Object(vars.clone()), &ctx, env.kv)
        {
            Ok(Value::Object(rendered)) => state.vars = rendered,
            Ok(_) => {}
            Err(e) => {
                let commands = fail(
                    &mut state,
                    format!("Failed initializing ``vars`` in chain. {e}"),
                );
                return (state, commands);
            }
        }
    }
    (state, Vec::new())
}

/// A node run ended with `status` and `result`.
pub fn task_finished(
    spec: &ChainSpec,
    env: &ChainEnv<'_>,
    state: &mut ChainState,
    execution_id: &str,
    run_id: &str,
    status: Status,
    result: Value,
) -> Vec<ChainCommand> {
    let Some(current) = state.current.take_if(|c| c.run_id == run_id) else {
        return Vec::new();
    };
    let Some(node) = spec.node(&current.node) else {
        return fail(
            state,
            format!("the chain has no node {:?} any more", current.node),
        );
    };
    state.results.insert(node.name.clone(), result.clone());
    state.tasks.push(task_entry(
        &node.name,
        Some(execution_id),
        &current.created_at,
        &env.now,
        status,
        result.clone(),
    ));
    // Published from whatever the action returned, as StackStorm does.
    if let Some(publish) = node.publish.as_ref().filter(|p| !p.is_empty()) {
        let mut ctx = state.parameters.clone();
        ctx.insert(node.name.clone(), result);
        ctx.extend(state.results.clone());
        ctx.extend(state.vars.clone());
        ctx.insert("__results".into(), Value::Object(state.results.clone()));
        match render_each(env, publish, &Value::Object(ctx)) {
            Ok(values) => {
                if let Some(published) = state.published.as_mut() {
                    published.extend(values.clone());
                }
                state.vars.extend(values);
            }
            Err((key, template, e)) => {
                return fail(
                    state,
                    format!(
                        "Failed rendering value for publish parameter \"{key}\" in task \"{}\" (template string={template}): {e}",
                        node.name
                    ),
                );
            }
        }
    }
    if state.canceling || status == Status::Canceled {
        return finish(state, Status::Canceled);
    }
    let was_paused = current.paused.is_some();
    let next = match status {
        Status::Succeeded => {
            state.last = Status::Succeeded;
            node.on_success.clone()
        }
        Status::Timeout => {
            state.last = Status::Timeout;
            node.on_failure.clone()
        }
        _ => {
            state.last = Status::Failed;
            node.on_failure.clone()
        }
    };
    go_on(spec, env, state, next, was_paused)
}

/// The node run could not be requested. An action that does not exist
/// fails the chain (StackStorm stops there); anything else fails the node,
/// and the chain goes on to its `on-failure`.
pub fn run_failed_to_start(
    spec: &ChainSpec,
    env: &ChainEnv<'_>,
    state: &mut ChainState,
    run_id: &str,
    unknown_action: bool,
    message: &str,
) -> Vec<ChainCommand> {
    let Some(current) = state.current.take_if(|c| c.run_id == run_id) else {
        return Vec::new();
    };
    let Some(node) = spec.node(&current.node) else {
        return fail(
            state,
            format!("the chain has no node {:?} any more", current.node),
        );
    };
    if unknown_action {
        return fail(
            state,
            format!(
                "Failed to run task \"{}\". Action with reference \"{}\" doesn't exist. {message}",
                node.name, node.action
            ),
        );
    }
    let error = json!({"error": format!("Failed running task \"{}\". {message}", node.name)});
    state.results.insert(node.name.clone(), error.clone());
    state.tasks.push(task_entry(
        &node.name,
        None,
        &current.created_at,
        &env.now,
        Status::Failed,
        error,
    ));
    state.last = Status::Failed;
    let next = node.on_failure.clone();
    go_on(spec, env, state, next, false)
}

/// A node has ended and `next` follows: it runs, unless the chain is held
/// (then it is staged and the chain is `paused`, as StackStorm's runner
/// stops after the node a pause found running). A chain paused only by
/// the node that ended (`was_paused`: an answered inquiry, a paused child
/// that ended) runs again.
fn go_on(
    spec: &ChainSpec,
    env: &ChainEnv<'_>,
    state: &mut ChainState,
    next: Option<String>,
    was_paused: bool,
) -> Vec<ChainCommand> {
    if state.held {
        state.staged = Some(Staged { next });
        return set_paused(state);
    }
    let mut commands = Vec::new();
    if was_paused && state.status == Status::Paused {
        state.status = Status::Running;
        commands.push(status_command(state));
    }
    commands.extend(advance(spec, env, state, next.as_deref()));
    commands
}

/// Someone (a person, or the chain's parent) asked the chain to pause:
/// nothing new starts; the node under way runs to its end, a child chain
/// or workflow being asked to pause; the chain is `paused` once it has
/// ended or paused. A chain already pausing or paused says so again.
pub fn pause(state: &mut ChainState) -> Vec<ChainCommand> {
    if state.status.is_completed() || state.canceling {
        return Vec::new();
    }
    state.held = true;
    if state.status != Status::Running {
        return vec![status_command(state)];
    }
    match &state.current {
        Some(current) if current.paused.is_none() => {
            let run_id = current.run_id.clone();
            state.status = Status::Pausing;
            vec![status_command(state), ChainCommand::Pause { run_id }]
        }
        _ => set_paused(state),
    }
}

/// Someone asked a pausing or paused chain to resume: the staged node
/// runs (or the chain ends, when none follows), a paused child is asked to
/// resume, and a node that is still running is waited on. A node waiting
/// on a person keeps the chain `paused`: only the answer resumes it. A
/// chain already running says so again.
pub fn resume(spec: &ChainSpec, env: &ChainEnv<'_>, state: &mut ChainState) -> Vec<ChainCommand> {
    if state.status.is_completed() || state.canceling {
        return Vec::new();
    }
    state.held = false;
    if state.status == Status::Running {
        return vec![status_command(state)];
    }
    match &state.current {
        Some(current) if current.paused.as_ref().is_some_and(|p| p.pending) => set_paused(state),
        Some(current) => {
            let run_id = current.run_id.clone();
            state.status = Status::Running;
            vec![status_command(state), ChainCommand::Resume { run_id }]
        }
        None => {
            state.status = Status::Running;
            let next = state.staged.take().and_then(|s| s.next);
            let mut commands = vec![status_command(state)];
            commands.extend(advance(spec, env, state, next.as_deref()));
            commands
        }
    }
}

/// The running node's execution paused (a child chain or workflow) or
/// went `pending` (an inquiry waits): the chain is `paused` too, as
/// StackStorm's is, its result listing that node as `paused` (or
/// `pending`). A repeat changes nothing.
pub fn task_paused(
    state: &mut ChainState,
    run_id: &str,
    execution_id: &str,
    pending: bool,
) -> Vec<ChainCommand> {
    if state.status.is_completed() {
        return Vec::new();
    }
    let Some(current) = state
        .current
        .as_mut()
        .filter(|c| c.run_id == run_id && c.paused.is_none())
    else {
        return Vec::new();
    };
    current.paused = Some(PausedRun {
        execution_id: execution_id.to_string(),
        pending,
    });
    set_paused(state)
}

/// The paused node's execution runs again (a child resumed on its own):
/// a chain paused only because of it runs again too; a held one stays
/// paused. A repeat changes nothing.
pub fn task_resumed(state: &mut ChainState, run_id: &str) -> Vec<ChainCommand> {
    if state.status.is_completed() {
        return Vec::new();
    }
    let Some(current) = state
        .current
        .as_mut()
        .filter(|c| c.run_id == run_id && c.paused.is_some())
    else {
        return Vec::new();
    };
    current.paused = None;
    if state.status == Status::Paused && !state.held {
        state.status = Status::Running;
    }
    vec![status_command(state)]
}

/// The chain is `paused` (unless a cancel is under way).
fn set_paused(state: &mut ChainState) -> Vec<ChainCommand> {
    if !state.canceling {
        state.status = Status::Paused;
    }
    vec![status_command(state)]
}

/// Writes the chain's status as it stands, with its result when paused.
fn status_command(state: &ChainState) -> ChainCommand {
    ChainCommand::Status {
        status: state.status,
        result: (state.status == Status::Paused).then(|| result(state)),
    }
}

/// Someone asked to cancel the chain: the running node is canceled and the
/// chain ends `canceled` when it has ended.
pub fn cancel(state: &mut ChainState) -> Vec<ChainCommand> {
    if state.status.is_completed() {
        return Vec::new();
    }
    match &state.current {
        Some(current) => {
            state.canceling = true;
            vec![ChainCommand::Cancel {
                run_id: current.run_id.clone(),
            }]
        }
        None => finish(state, Status::Canceled),
    }
}

/// Runs node `name` (`None`: the chain is over).
fn advance(
    spec: &ChainSpec,
    env: &ChainEnv<'_>,
    state: &mut ChainState,
    name: Option<&str>,
) -> Vec<ChainCommand> {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        let last = state.last;
        return finish(state, last);
    };
    let Some(node) = spec.node(name) else {
        return fail(
            state,
            format!(
                "Failed to get next node \"{name}\". Unable to find node with name \"{name}\"."
            ),
        );
    };
    let mut ctx = state.parameters.clone();
    ctx.extend(state.results.clone());
    ctx.extend(state.vars.clone());
    ctx.insert("__results".into(), Value::Object(state.results.clone()));
    ctx.insert(
        "action_context".into(),
        json!({"parent": Value::Object(state.parent.clone())}),
    );
    let parameters = match render_each(env, &node.parameters(), &Value::Object(ctx)) {
        Ok(p) => p,
        Err((key, template, e)) => {
            return fail(
                state,
                format!(
                    "Failed to run task \"{}\". Parameter rendering failed. Failed rendering value for action parameter \"{key}\" in task \"{}\" (template string={template}): {e}",
                    node.name, node.name
                ),
            );
        }
    };
    state.runs += 1;
    let run_id = format!("{}.{}", node.name, state.runs);
    state.current = Some(CurrentRun {
        run_id: run_id.clone(),
        node: node.name.clone(),
        created_at: env.now.clone(),
        paused: None,
    });
    let chain = serde_json::to_value(node).unwrap_or(Value::Null);
    vec![ChainCommand::Run {
        run_id,
        node: node.name.clone(),
        action: node.action.clone(),
        parameters,
        chain,
    }]
}

/// Renders each value of `mapping`; an error names its key and template.
fn render_each(
    env: &ChainEnv<'_>,
    mapping: &Map<String, Value>,
    ctx: &Value,
) -> Result<Map<String, Value>, (String, Value, TemplateError)> {
    mapping
        .iter()
        .map(|(k, v)| match env.renderer.render_value(v, ctx, env.kv) {
            Ok(rendered) => Ok((k.clone(), rendered)),
            Err(e) => Err((k.clone(), v.clone(), e)),
        })
        .collect()
}

fn task_entry(
    name: &str,
    execution_id: Option<&str>,
    created_at: &str,
    updated_at: &str,
    status: Status,
    result: Value,
) -> Value {
    json!({
        "id": name,
        "name": name,
        "execution_id": execution_id,
        "liveaction_id": execution_id,
        "workflow": null,
        "created_at": created_at,
        "updated_at": updated_at,
        "state": status,
        "result": result,
    })
}

/// Ends the chain `failed` with a top-level error.
fn fail(state: &mut ChainState, error: String) -> Vec<ChainCommand> {
    state.error = Some(error);
    finish(state, Status::Failed)
}

fn finish(state: &mut ChainState, status: Status) -> Vec<ChainCommand> {
    state.status = status;
    state.current = None;
    state.staged = None;
    vec![ChainCommand::Finish {
        status,
        result: result(state),
    }]
}

/// The chain's result as it stands (a node whose execution paused is
/// listed last, as StackStorm lists it while the chain is paused).
pub fn result(state: &ChainState) -> Value {
    let mut tasks = state.tasks.clone();
    if let Some(current) = &state.current {
        if let Some(paused) = &current.paused {
            let status = if paused.pending {
                Status::Pending
            } else {
                Status::Paused
            };
            tasks.push(task_entry(
                &current.node,
                Some(&paused.execution_id),
                &current.created_at,
                &current.created_at,
                status,
                Value::Null,
            ));
        }
    }
    let mut result = json!({ "tasks": tasks });
    if let Some(published) = &state.published {
        result["published"] = Value::Object(published.clone());
    }
    if let Some(error) = &state.error {
        result["error"] = json!(error);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::NoKeyValues;

    fn env(renderer: &Renderer) -> ChainEnv<'_> {
        ChainEnv {
            renderer,
            kv: &NoKeyValues,
            now: "2026-01-01T00:00:00.000000Z".into(),
        }
    }

    const ECHO: &str = r#"
chain:
  - name: c1
    ref: core.local
    parameters: {cmd: "echo {{ input1 }}"}
    publish: {first: "{{ c1.stdout }}"}
    on-success: c2
    on-failure: c3
  - name: c2
    ref: core.local
    params: {cmd: "echo {{ first }} {{ __results.c1.stdout }} {{ action_context.parent.execution_id }}"}
  - name: c3
    ref: core.local
    parameters: {cmd: "echo failed"}
"#;

    fn run_of(commands: &[ChainCommand]) -> (String, Map<String, Value>) {
        match commands {
            [ChainCommand::Run {
                run_id, parameters, ..
            }] => (run_id.clone(), parameters.clone()),
            other => panic!("expected one run, got {other:?}"),
        }
    }

    #[test]
    fn a_chain_runs_node_by_node_publishing_as_it_goes() {
        let spec = ChainSpec::parse(ECHO, "echo").unwrap();
        let r = Renderer::new();
        let env = env(&r);
        let parent = Map::from_iter([("execution_id".to_string(), json!("E"))]);
        let (mut state, cmds) = start(
            &spec,
            &env,
            Map::from_iter([("input1".to_string(), json!("hi"))]),
            parent,
            true,
        );
        let (run, params) = run_of(&cmds);
        assert_eq!(run, "c1.1");
        assert_eq!(params["cmd"], json!("echo hi"));
        let cmds = task_finished(
            &spec,
            &env,
            &mut state,
            "x1",
            &run,
            Status::Succeeded,
            json!({"stdout": "hi"}),
        );
        let (run, params) = run_of(&cmds);
        assert_eq!(run, "c2.2");
        assert_eq!(params["cmd"], json!("echo hi hi E"));
        let cmds = task_finished(
            &spec,
            &env,
            &mut state,
            "x2",
            &run,
            Status::Succeeded,
            json!({}),
        );
        let [ChainCommand::Finish { status, result }] = &cmds[..] else {
            panic!("{cmds:?}")
        };
        assert_eq!(*status, Status::Succeeded);
        assert_eq!(result["published"], json!({"first": "hi"}));
        let names: Vec<_> = result["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].clone())
            .collect();
        assert_eq!(names, [json!("c1"), json!("c2")]);
        assert_eq!(result["tasks"][0]["execution_id"], json!("x1"));
        assert_eq!(result["tasks"][0]["state"], json!("succeeded"));
    }

    #[test]
    fn a_failure_takes_on_failure_and_the_chain_ends_with_the_last_status() {
        let spec = ChainSpec::parse(ECHO, "echo").unwrap();
        let r = Renderer::new();
        let env = env(&r);
        let (mut state, cmds) = start(
            &spec,
            &env,
            Map::from_iter([("input1".to_string(), json!(1))]),
            Map::new(),
            true,
        );
        let (run, _) = run_of(&cmds);
        let cmds = task_finished(
            &spec,
            &env,
            &mut state,
            "x1",
            &run,
            Status::Failed,
            json!({"stdout": ""}),
        );
        let (run, _) = run_of(&cmds);
        assert_eq!(run, "c3.2");
        let cmds = task_finished(
            &spec,
            &env,
            &mut state,
            "x3",
            &run,
            Status::Succeeded,
            json!({}),
        );
        assert!(matches!(
            &cmds[..],
            [ChainCommand::Finish {
                status: Status::Succeeded,
                ..
            }]
        ));
        // A node that cannot even render its parameters fails the chain.
        let (mut state, _) = start(&spec, &env, Map::new(), Map::new(), true);
        assert_eq!(state.status, Status::Failed);
        let error = result(&state)["error"].as_str().unwrap().to_string();
        assert!(
            error.contains("task \"c1\"") && error.contains("input1"),
            "{error}"
        );
        assert!(cancel(&mut state).is_empty());
    }

    #[test]
    fn an_unknown_action_fails_the_chain_naming_task_and_action() {
        let spec = ChainSpec::parse(ECHO, "echo").unwrap();
        let r = Renderer::new();
        let env = env(&r);
        let (mut state, cmds) = start(
            &spec,
            &env,
            Map::from_iter([("input1".to_string(), json!(1))]),
            Map::new(),
            false,
        );
        let (run, _) = run_of(&cmds);
        let cmds = run_failed_to_start(&spec, &env, &mut state, &run, true, "no such action");
        let [ChainCommand::Finish { status, result }] = &cmds[..] else {
            panic!("{cmds:?}")
        };
        assert_eq!(*status, Status::Failed);
        assert_eq!(
            result["error"],
            json!("Failed to run task \"c1\". Action with reference \"core.local\" doesn't exist. no such action")
        );
        assert!(result.get("published").is_none());
    }

    fn status_of(command: &ChainCommand) -> Status {
        match command {
            ChainCommand::Status { status, .. } => *status,
            other => panic!("expected a status, got {other:?}"),
        }
    }

    fn started(spec: &ChainSpec, env: &ChainEnv<'_>) -> (ChainState, String) {
        let (state, cmds) = start(
            spec,
            env,
            Map::from_iter([("input1".to_string(), json!("hi"))]),
            Map::from_iter([("execution_id".to_string(), json!("E"))]),
            true,
        );
        let (run, _) = run_of(&cmds);
        (state, run)
    }

    #[test]
    fn a_chain_paused_before_it_starts_is_held_and_runs_its_first_node_on_resume() {
        let spec = ChainSpec::parse(ECHO, "echo").unwrap();
        let r = Renderer::new();
        let env = env(&r);
        let input = Map::from_iter([("input1".to_string(), json!("hi"))]);
        let (mut state, cmds) = start_held(&spec, &env, input.clone(), Map::new(), true);
        assert_eq!(status_of(&cmds[0]), Status::Paused);
        assert_eq!(cmds.len(), 1, "nothing runs: {cmds:?}");
        assert!(state.held && state.current.is_none());
        // Its own pause, repeated, changes nothing.
        assert_eq!(pause(&mut state).len(), 1);
        assert_eq!(state.status, Status::Paused);
        let cmds = resume(&spec, &env, &mut state);
        assert_eq!(status_of(&cmds[0]), Status::Running);
        let (run, params) = run_of(&cmds[1..]);
        assert_eq!(run, "c1.1");
        assert_eq!(params["cmd"], json!("echo hi"));
        // A chain whose vars cannot render fails at once, held or not.
        let bad = ChainSpec::parse(
            "vars: {x: \"{{ 1 / }}\"}\nchain:\n  - name: c1\n    ref: core.noop\n",
            "bad",
        )
        .unwrap();
        let (state, cmds) = start_held(&bad, &env, input, Map::new(), true);
        assert_eq!(state.status, Status::Failed);
        assert!(
            matches!(cmds[..], [ChainCommand::Finish { .. }]),
            "{cmds:?}"
        );
    }

    #[test]
    fn a_paused_chain_stops_after_its_node_and_resumes_where_it_was() {
        let spec = ChainSpec::parse(ECHO, "echo").unwrap();
        let r = Renderer::new();
        let env = env(&r);
        let (mut state, run) = started(&spec, &env);

        // Pausing: the running node is asked to pause (only a chain or a
        // workflow can) and runs on.
        let cmds = pause(&mut state);
        assert_eq!(
            cmds,
            [
                ChainCommand::Status {
                    status: Status::Pausing,
                    result: None
                },
                ChainCommand::Pause {
                    run_id: run.clone()
                }
            ]
        );
        assert_eq!(state.status, Status::Pausing);
        // A repeat says so again and asks nothing more.
        assert_eq!(status_of(&pause(&mut state)[0]), Status::Pausing);
        assert_eq!(pause(&mut state).len(), 1);

        // The node ends: the chain is paused, nothing new runs, and its
        // result so far goes with the status.
        let cmds = task_finished(
            &spec,
            &env,
            &mut state,
            "x1",
            &run,
            Status::Succeeded,
            json!({"stdout": "hi"}),
        );
        let [ChainCommand::Status {
            status: Status::Paused,
            result: Some(so_far),
        }] = &cmds[..]
        else {
            panic!("{cmds:?}")
        };
        assert_eq!(so_far["tasks"][0]["name"], json!("c1"));
        assert_eq!(so_far["published"], json!({"first": "hi"}));
        assert_eq!(state.status, Status::Paused);
        assert!(state.current.is_none());

        // The pause is durable: the state as stored and read back resumes.
        let mut state: ChainState =
            serde_json::from_value(serde_json::to_value(&state).unwrap()).unwrap();
        let cmds = resume(&spec, &env, &mut state);
        assert_eq!(status_of(&cmds[0]), Status::Running);
        let (run, params) = run_of(&cmds[1..]);
        assert_eq!(run, "c2.2", "on-success, as if nothing had happened");
        assert_eq!(params["cmd"], json!("echo hi hi E"));
        // The first node's end told again, or a second resume, starts
        // nothing twice.
        let replay = task_finished(
            &spec,
            &env,
            &mut state,
            "x1",
            "c1.1",
            Status::Succeeded,
            json!({"stdout": "hi"}),
        );
        assert!(replay.is_empty(), "{replay:?}");
        let again = resume(&spec, &env, &mut state);
        assert_eq!(
            again,
            [ChainCommand::Status {
                status: Status::Running,
                result: None
            }]
        );
        let cmds = task_finished(
            &spec,
            &env,
            &mut state,
            "x2",
            &run,
            Status::Succeeded,
            json!({}),
        );
        let [ChainCommand::Finish { status, result }] = &cmds[..] else {
            panic!("{cmds:?}")
        };
        assert_eq!(*status, Status::Succeeded);
        assert_eq!(result["tasks"].as_array().map(Vec::len), Some(2));
        assert_eq!(result["published"], json!({"first": "hi"}));
        assert!(
            pause(&mut state).is_empty(),
            "an ended chain does not pause"
        );
    }

    #[test]
    fn a_pause_after_the_last_node_and_a_failure_route_are_kept_for_the_resume() {
        let spec = ChainSpec::parse(ECHO, "echo").unwrap();
        let r = Renderer::new();
        let env = env(&r);
        let (mut state, run) = started(&spec, &env);
        pause(&mut state);
        task_finished(
            &spec,
            &env,
            &mut state,
            "x1",
            &run,
            Status::Failed,
            json!({"stdout": ""}),
        );
        assert_eq!(state.status, Status::Paused);
        let cmds = resume(&spec, &env, &mut state);
        let (run, _) = run_of(&cmds[1..]);
        assert_eq!(run, "c3.2", "on-failure");
        // Paused after the last node: the resume ends the chain with the
        // last node's status.
        pause(&mut state);
        let cmds = task_finished(
            &spec,
            &env,
            &mut state,
            "x3",
            &run,
            Status::Succeeded,
            json!({}),
        );
        assert_eq!(status_of(&cmds[0]), Status::Paused);
        let cmds = resume(&spec, &env, &mut state);
        assert!(matches!(
            &cmds[..],
            [
                ChainCommand::Status {
                    status: Status::Running,
                    ..
                },
                ChainCommand::Finish {
                    status: Status::Succeeded,
                    ..
                }
            ]
        ));
    }

    #[test]
    fn a_paused_child_pauses_the_chain_and_the_resume_goes_down_to_it() {
        let spec = ChainSpec::parse(ECHO, "echo").unwrap();
        let r = Renderer::new();
        let env = env(&r);
        let (mut state, run) = started(&spec, &env);
        pause(&mut state);
        let cmds = task_paused(&mut state, &run, "x1", false);
        let [ChainCommand::Status {
            status: Status::Paused,
            result: Some(so_far),
        }] = &cmds[..]
        else {
            panic!("{cmds:?}")
        };
        assert_eq!(so_far["tasks"][0]["state"], json!("paused"));
        assert_eq!(so_far["tasks"][0]["execution_id"], json!("x1"));
        assert!(
            task_paused(&mut state, &run, "x1", false).is_empty(),
            "a repeat"
        );
        // Asked to pause again, a paused chain says so again.
        assert_eq!(status_of(&pause(&mut state)[0]), Status::Paused);
        let cmds = resume(&spec, &env, &mut state);
        assert_eq!(
            cmds,
            [
                ChainCommand::Status {
                    status: Status::Running,
                    result: None
                },
                ChainCommand::Resume {
                    run_id: run.clone()
                }
            ]
        );
        assert_eq!(
            status_of(&task_resumed(&mut state, &run)[0]),
            Status::Running
        );
        assert!(task_resumed(&mut state, &run).is_empty(), "a repeat");
        let cmds = task_finished(
            &spec,
            &env,
            &mut state,
            "x1",
            &run,
            Status::Succeeded,
            json!({"stdout": "hi"}),
        );
        assert_eq!(run_of(&cmds).0, "c2.2");

        // A child paused on its own pauses the chain; it running again
        // runs the chain again (nobody asked the chain to pause).
        let (mut state, run) = started(&spec, &env);
        task_paused(&mut state, &run, "x1", false);
        assert_eq!(state.status, Status::Paused);
        assert_eq!(
            status_of(&task_resumed(&mut state, &run)[0]),
            Status::Running
        );
        assert_eq!(state.status, Status::Running);
        // ... but a chain a person paused stays paused.
        pause(&mut state);
        task_paused(&mut state, &run, "x1", false);
        task_resumed(&mut state, &run);
        assert_eq!(state.status, Status::Paused);
    }

    #[test]
    fn an_inquiry_pauses_the_chain_until_it_is_answered() {
        let spec = ChainSpec::parse(ECHO, "echo").unwrap();
        let r = Renderer::new();
        let env = env(&r);
        let (mut state, run) = started(&spec, &env);
        let cmds = task_paused(&mut state, &run, "x1", true);
        assert_eq!(status_of(&cmds[0]), Status::Paused);
        // Resuming cannot answer it: the chain stays paused.
        let cmds = resume(&spec, &env, &mut state);
        assert_eq!(
            cmds,
            [ChainCommand::Status {
                status: Status::Paused,
                result: Some(result(&state))
            }]
        );
        // The answer (the inquiry's end) runs the chain on.
        let cmds = task_finished(
            &spec,
            &env,
            &mut state,
            "x1",
            &run,
            Status::Succeeded,
            json!({"stdout": "yes"}),
        );
        assert_eq!(status_of(&cmds[0]), Status::Running);
        assert_eq!(run_of(&cmds[1..]).0, "c2.2");
        assert_eq!(state.status, Status::Running);
    }

    #[test]
    fn a_paused_chain_cancels() {
        let spec = ChainSpec::parse(ECHO, "echo").unwrap();
        let r = Renderer::new();
        let env = env(&r);
        // Paused between nodes: canceled at once, with what ran.
        let (mut state, run) = started(&spec, &env);
        pause(&mut state);
        task_finished(
            &spec,
            &env,
            &mut state,
            "x1",
            &run,
            Status::Succeeded,
            json!({"stdout": "hi"}),
        );
        let cmds = cancel(&mut state);
        let [ChainCommand::Finish { status, result }] = &cmds[..] else {
            panic!("{cmds:?}")
        };
        assert_eq!(*status, Status::Canceled);
        assert_eq!(result["tasks"].as_array().map(Vec::len), Some(1));
        assert!(resume(&spec, &env, &mut state).is_empty());
        // Paused on its child: the child is canceled, then the chain.
        let (mut state, run) = started(&spec, &env);
        pause(&mut state);
        task_paused(&mut state, &run, "x1", false);
        assert_eq!(
            cancel(&mut state),
            [ChainCommand::Cancel {
                run_id: run.clone()
            }]
        );
        assert!(pause(&mut state).is_empty());
        let cmds = task_finished(
            &spec,
            &env,
            &mut state,
            "x1",
            &run,
            Status::Canceled,
            json!({"stdout": ""}),
        );
        assert!(matches!(
            &cmds[..],
            [ChainCommand::Finish {
                status: Status::Canceled,
                ..
            }]
        ));
    }

    #[test]
    fn a_record_stored_before_pauses_existed_still_reads() {
        let spec = ChainSpec::parse(ECHO, "echo").unwrap();
        let r = Renderer::new();
        let env = env(&r);
        let (state, _) = started(&spec, &env);
        let mut stored = serde_json::to_value(&state).unwrap();
        let obj = stored.as_object_mut().unwrap();
        obj.remove("held");
        obj.remove("staged");
        obj["current"].as_object_mut().unwrap().remove("paused");
        let read: ChainState = serde_json::from_value(stored).unwrap();
        assert!(!read.held && read.staged.is_none());
        assert!(read.current.unwrap().paused.is_none());
    }

    #[test]
    fn definitions_are_checked_as_stackstorm_checks_them() {
        let bad = |text: &str| ChainSpec::parse(text, "x").unwrap_err();
        assert!(bad("chain: []").contains("Failed to find default node in x."));
        assert!(
            bad("chain:\n  - {name: a, ref: core.noop, on-success: b}\n").contains(
                "Unable to find node with name \"b\" referenced in \"on-success\" in task \"a\"."
            )
        );
        assert!(bad("chain:\n  - {name: a, ref: core.noop}\ndefault: z\n")
            .contains("referenced in \"default\""));
        assert!(bad("chain:\n  - {name: a, ref: core.noop, bogus: 1}\n").contains("bogus"));
        assert!(
            bad("chain:\n  - {name: a, ref: core.noop, params: {a: 1}, parameters: {b: 1}}\n")
                .contains("not both")
        );
        let spec = ChainSpec::parse(
            "chain:\n  - {name: a, ref: core.noop}\n  - {name: b, ref: core.noop, on-success: a}\n",
            "x",
        )
        .unwrap();
        assert_eq!(spec.default.as_deref(), Some("b"));
    }
}
