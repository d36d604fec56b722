//! Reading and inspecting workflow definitions.

use serde_json::json;

use super::*;

const GOOD: &str = r#"
version: 1.0
description: Verify, drain, ticket.
input:
  - host
  - retries: 2
vars:
  - ticket: null
output:
  - ticket: <% ctx(ticket) %>
tasks:
  verify:
    action: core.local cmd="ping -c1 <% ctx(host) %>" timeout=10
    next:
      - when: <% succeeded() %>
        publish: status=ok
        do: drain, notify
      - when: <% failed() %>
        publish:
          - ticket: <% result().stderr %>
        do: fail
  drain:
    action: core.noop
    with:
      items: node in <% ctx().host.split(',') %>
      concurrency: 2
    retry:
      when: <% failed() %>
      count: <% ctx().retries %>
      delay: 1
    next:
      - do: [notify]
  notify:
    join: all
    action: core.echo
    input:
      message: "{{ ctx('status') }} for {{ ctx().host }}"
"#;

#[test]
fn a_good_workflow_reads_in_every_shape() {
    let (spec, issues) = inspect(GOOD);
    assert_eq!(issues, vec![]);
    let spec = spec.unwrap();
    assert_eq!(spec.version, "1.0");
    assert_eq!(
        spec.input,
        vec![("host".into(), None), ("retries".into(), Some(json!(2)))]
    );
    let verify = &spec.tasks["verify"];
    assert_eq!(verify.action.as_deref(), Some("core.local"));
    assert_eq!(
        verify.input,
        json!({"cmd": "ping -c1 <% ctx(host) %>", "timeout": 10})
    );
    assert_eq!(verify.next[0].next, vec!["drain", "notify"]);
    assert_eq!(verify.next[0].publish, vec![("status".into(), json!("ok"))]);
    let drain = &spec.tasks["drain"];
    let with = drain.with.as_ref().unwrap();
    assert_eq!(with.vars, vec!["node"]);
    assert_eq!(with.items, "<% ctx().host.split(',') %>");
    assert_eq!(with.concurrency, Some(json!(2)));
    assert_eq!(
        drain.retry.as_ref().unwrap().count,
        json!("<% ctx().retries %>")
    );
    assert_eq!(drain.next[0].next, vec!["notify"]);
    assert_eq!(spec.tasks["notify"].join, Some(Join::All));
    let bare = &spec.tasks["notify"].next;
    assert!(bare.is_empty());
}

fn issues(text: &str) -> Vec<Issue> {
    inspect(text).1
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = "version: 1.0\ntasks:\n  a:\n    action: core.noop\n    colour: red\n    next:\n      - do: b, nowhere\n  b:\n    action: core.noop\n    next:\n      - when: <% ctx().missing + %>\n        do: c\n  c:\n    join: sometimes\n";
    let found = issues(text);
    let summary: Vec<(IssueKind, &str)> = found
        .iter()
        .map(|i| (i.kind, i.spec_path.as_str()))
        .collect();
    assert!(
        summary.contains(&(IssueKind::Syntax, "tasks.a")),
        "{found:#?}"
    );
    assert!(
        summary.contains(&(IssueKind::Syntax, "tasks.c.join")),
        "{found:#?}"
    );
    assert!(
        summary.contains(&(IssueKind::Semantic, "tasks.a.next[0].do")),
        "{found:#?}"
    );
    assert!(
        summary.contains(&(IssueKind::Expression, "tasks.b.next[0].when")),
        "{found:#?}"
    );
    let colour = found.iter().find(|i| i.spec_path == "tasks.a").unwrap();
    assert_eq!(
        colour.message,
        "Additional properties are not allowed ('colour' was unexpected)"
    );
    assert_eq!(
        colour.schema_path,
        "properties.tasks.patternProperties.^\\w+$.additionalProperties"
    );
    assert_eq!(colour.line, Some(3));
    let join = found
        .iter()
        .find(|i| i.spec_path == "tasks.c.join")
        .unwrap();
    assert_eq!(
        join.message,
        "'sometimes' is not valid under any of the given schemas"
    );
    let bad_do = found
        .iter()
        .find(|i| i.spec_path == "tasks.a.next[0].do")
        .unwrap();
    assert_eq!(bad_do.message, "The task \"nowhere\" is not defined.");
    assert_eq!(bad_do.line, Some(7));
    let bad_expr = found
        .iter()
        .find(|i| i.kind == IssueKind::Expression)
        .unwrap();
    assert_eq!(
        bad_expr.message, "Parse error: unexpected end of statement",
        "{bad_expr:?}"
    );
    assert_eq!(
        bad_expr.expression.as_deref(),
        Some("<% ctx().missing + %>")
    );
    assert_eq!(bad_expr.line, Some(11));
    // Sorted as Orquesta sorts: by type, schema path, spec path.
    let kinds: Vec<IssueKind> = found.iter().map(|i| i.kind).collect();
    let mut sorted = kinds.clone();
    sorted.sort();
    assert_eq!(kinds, sorted);
}

#[test]
fn undefined_variables_are_context_errors_but_lambdas_are_not() {
    let text = "version: 1.0\ninput: [hosts]\ntasks:\n  a:\n    action: core.echo\n    input:\n      message: <% ctx().hosts.select($.name) %> <% ctx(nope) %> {{ 1 }}\n";
    let found = issues(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].kind, IssueKind::Expression, "mixed YAQL and Jinja");
    let text = "version: 1.0\ninput: [hosts]\ntasks:\n  a:\n    action: core.echo\n    input:\n      message: <% ctx().hosts.select($.name) %> <% ctx(nope) %> <% $.also_nope %> <% ctx().st2.user %>\n    next:\n      - publish: later=<% ctx(hosts) %>\n  b:\n    action: core.echo message=\"{{ ctx('later') }} {{ ctx().gone }}\"\n";
    let found = issues(text);
    let names: Vec<&str> = found
        .iter()
        .filter(|i| i.kind == IssueKind::Context)
        .map(|i| i.message.split('"').nth(1).unwrap_or_default())
        .collect();
    assert_eq!(names, vec!["nope", "also_nope", "gone"], "{found:#?}");
    let gone = found.last().unwrap();
    assert_eq!(
        (gone.spec_path.as_str(), gone.expression.as_deref()),
        ("tasks.b.input", Some("{{ ctx().gone }}"))
    );
    assert_eq!(gone.language, Some("jinja"));
    assert_eq!(
        gone.message,
        "Variable \"gone\" is referenced before assignment."
    );
}

#[test]
fn unreachable_tasks_and_cycles_without_an_entry() {
    let text = "version: 1.0\ntasks:\n  start:\n    action: core.noop\n  loop1:\n    action: core.noop\n    next:\n      - do: loop2\n  loop2:\n    action: core.noop\n    next:\n      - do: loop1\n";
    let found = issues(text);
    let paths: Vec<&str> = found.iter().map(|i| i.spec_path.as_str()).collect();
    assert_eq!(paths, vec!["tasks.loop1", "tasks.loop2"], "{found:#?}");
    assert!(found[0].message.contains("never run"));
    let text =
        "version: 1.0\ntasks:\n  a:\n    next:\n      - do: b\n  b:\n    next:\n      - do: a\n";
    let found = issues(text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0]
        .message
        .starts_with("Unable to identify any tasks to start"));
}

#[test]
fn top_level_shapes() {
    let found = issues("tasks: {}\nversion: 2\nextra: 1\n");
    let paths: Vec<&str> = found.iter().map(|i| i.spec_path.as_str()).collect();
    assert_eq!(paths, vec!["", "tasks", "version"], "{found:#?}");
    assert_eq!(
        found[0].message,
        "Additional properties are not allowed ('extra' was unexpected)"
    );
    assert_eq!(found[1].message, "{} does not have enough properties");
    assert_eq!(found[0].to_st2()["spec_path"], Value::Null);
    let found = issues("version: 1.0\ntasks:\n  a: [\n");
    assert_eq!(found[0].kind, IssueKind::Syntax);
    assert!(found[0].line.is_some(), "{found:#?}");
    let found = issues("version: 1.0\ntasks:\n  fail:\n    action: core.noop\n");
    assert_eq!(
        (found[0].kind, found[0].message.as_str()),
        (
            IssueKind::Semantic,
            "The task name \"fail\" is reserved with special function."
        ),
        "{found:#?}"
    );
}

#[test]
fn inline_parameters() {
    assert_eq!(
        spec::inline_params("a=1 b=\"two words\", c=<% ctx(x) %>; d=true").unwrap(),
        vec![
            ("a".into(), json!(1)),
            ("b".into(), json!("two words")),
            ("c".into(), json!("<% ctx(x) %>")),
            ("d".into(), json!(true)),
        ]
    );
    assert!(spec::inline_params("novalue").is_err());
}

/// Carries out a conductor's commands as the engine does, one at a time in
/// the order given; `outcome(action, input, attempt)` says how each action
/// run ends.
mod driver {
    use std::collections::HashMap;

    use serde_json::{Map, Value};

    use super::super::conductor::{self, Command, Flow, FlowState, ItemResult};
    use super::super::spec::WorkflowSpec;

    pub struct Driven {
        /// Tasks in the order their actions ran.
        pub ran: Vec<String>,
        /// The input of each action run, in the same order.
        pub inputs: Vec<Value>,
        /// Most action runs outstanding at once.
        pub peak: usize,
        pub state: FlowState,
        pub finish: Command,
    }

    pub fn drive(
        spec: &WorkflowSpec,
        input: &Map<String, Value>,
        mut outcome: impl FnMut(&str, &Value, u32) -> (bool, Value),
    ) -> Driven {
        let flow = Flow::new(spec);
        let (mut state, mut pending) = conductor::start(&flow, input, Map::new());
        let (mut ran, mut inputs, mut peak) = (Vec::new(), Vec::new(), 0);
        let mut results: HashMap<String, Value> = HashMap::new();
        loop {
            if let Some(finish) = pending.iter().find(|c| matches!(c, Command::Finish { .. })) {
                let finish = finish.clone();
                return Driven {
                    ran,
                    inputs,
                    peak,
                    state,
                    finish,
                };
            }
            peak = peak.max(
                pending
                    .iter()
                    .filter(|c| matches!(c, Command::Run { .. }))
                    .count(),
            );
            if pending.is_empty() {
                panic!("stuck: no command and no finish; state {state:#?}");
            }
            match pending.remove(0) {
                Command::Run {
                    run_id,
                    task,
                    action,
                    input,
                    attempt,
                    ..
                } => {
                    ran.push(task);
                    inputs.push(input.clone());
                    let (ok, result) = outcome(&action, &input, attempt);
                    results.insert(run_id.clone(), result.clone());
                    pending.extend(conductor::task_finished(
                        &flow, &mut state, &run_id, ok, result,
                    ));
                }
                Command::Gather { run_id } => {
                    let run = state.runs.iter().find(|r| r.id == run_id).unwrap();
                    let gathered = run
                        .items
                        .as_ref()
                        .unwrap()
                        .results(&run_id)
                        .map(|r| match r {
                            ItemResult::Execution(id) => results[&id].clone(),
                            ItemResult::Local(v) => v.clone(),
                            ItemResult::NotStarted => Value::Null,
                        })
                        .collect();
                    pending.extend(conductor::items_gathered(
                        &flow, &mut state, &run_id, gathered,
                    ));
                }
                _ => {}
            }
        }
    }
}

mod conducting {
    use serde_json::{json, Map, Value};

    use super::super::conductor::{self, Command, Flow, FlowState, FlowStatus};
    use super::super::spec::WorkflowSpec;

    fn spec(text: &str) -> WorkflowSpec {
        let (spec, issues) = super::super::inspect(text);
        assert!(issues.is_empty(), "{issues:#?}");
        spec.unwrap()
    }

    /// Runs a workflow to its end: the order actions ran in, the final
    /// state and the finish command.
    fn drive(
        spec: &WorkflowSpec,
        input: Value,
        outcome: impl FnMut(&str, &Value, u32) -> (bool, Value),
    ) -> (Vec<String>, FlowState, Command) {
        let Value::Object(input) = input else {
            panic!()
        };
        let d = super::driver::drive(spec, &input, outcome);
        (d.ran, d.state, d.finish)
    }

    fn ok(_: &str, input: &Value, _: u32) -> (bool, Value) {
        (
            true,
            json!({"stdout": input.get("cmd").cloned().unwrap_or(Value::Null)}),
        )
    }

    /// test_wiring_functions_task.py: a task reached by two transitions
    /// without a join runs on two routes (Orquesta's split), what follows
    /// stays on its route, `task(name)` reads the current route's run (or
    /// the one before the split), `task(name, route => n)` a given one; a
    /// loop stays on its route.
    #[test]
    fn a_split_task_runs_once_per_route_and_task_reads_the_route() {
        let s = spec("version: 1.0\ntasks:\n  first:\n    action: core.noop\n    next:\n      - do: [left, right]\n  left:\n    action: core.noop\n    next:\n      - do: shared\n  right:\n    action: core.noop\n    next:\n      - do: shared\n  shared:\n    action: core.noop\n    next:\n      - do: after\n  after:\n    action: core.local cmd=<% task(shared).task_id %>__<% task(shared).route %>/<% task(first).route %>\n  begin:\n    action: core.noop\n    next:\n      - do: again\n  again:\n    action: core.echo message=x\n    next:\n      - when: <% task(again).result.n < 2 %>\n        do: again\noutput:\n  - one: <% task(after, route => 1).result.stdout %>\n  - two: '{{ task(\"after\", route=2).result.stdout }}'\n  - loop: <% task(again).route %>\n");
        let mut loops = 0;
        let (ran, state, done) = drive(&s, json!({}), |action, input, _| match action {
            "core.local" => ok(action, input, 0),
            "core.echo" => {
                loops += 1;
                (true, json!({"n": loops}))
            }
            _ => (true, json!({})),
        });
        assert_eq!(loops, 2, "the loop ran twice");
        assert_eq!(ran.iter().filter(|t| *t == "shared").count(), 2, "{ran:?}");
        assert_eq!(
            state.routes,
            vec![vec!["left__t0".to_string()], vec!["right__t0".to_string()]]
        );
        let Command::Finish { result, .. } = done else {
            panic!()
        };
        assert_eq!(result["output"]["one"], "shared__1/0");
        assert_eq!(result["output"]["two"], "shared__2/0");
        assert_eq!(result["output"]["loop"], 0, "a loop is no split");
    }

    #[test]
    fn errors_name_the_route_their_task_ran_on() {
        let s = spec("version: 1.0\ntasks:\n  first:\n    action: core.noop\n    next:\n      - do: [left, right]\n  left:\n    action: core.noop\n    next:\n      - do: shared\n  right:\n    action: core.noop\n    next:\n      - do: shared\n  shared:\n    action: core.noop\n    next:\n      - when: <% result().value %>\n        do: after\n  after:\n    action: core.noop\n");
        let (_, _, done) = drive(&s, json!({}), |_, _, _| (true, json!({})));
        let Command::Finish { status, result } = done else {
            panic!()
        };
        assert_eq!(status, FlowStatus::Failed);
        let message = "YaqlEvaluationException: Unable to resolve key 'value' in expression '<% result().value %>' from context.";
        let mut errors = result["errors"].as_array().cloned().unwrap_or_default();
        errors.sort_by_key(|e| e["route"].as_u64());
        assert_eq!(
            errors,
            vec![
                json!({"type": "error", "message": message, "task_id": "shared", "route": 1, "task_transition_id": "after__t0"}),
                json!({"type": "error", "message": message, "task_id": "shared", "route": 2, "task_transition_id": "after__t0"}),
            ]
        );
    }

    #[test]
    fn sequential_with_publish_and_output() {
        let s = spec("version: 1.0\ninput: [who]\nvars:\n  - greeting: hello\noutput:\n  - said: <% ctx(said) %>\ntasks:\n  one:\n    action: core.local cmd=\"<% ctx(greeting) %> <% ctx(who) %>\"\n    next:\n      - when: <% succeeded() %>\n        publish: said=<% result().stdout %>\n        do: two\n  two:\n    action: core.noop\n");
        let (ran, state, done) = drive(&s, json!({"who": "ops"}), ok);
        assert_eq!(ran, vec!["one", "two"]);
        assert_eq!(state.status, FlowStatus::Succeeded);
        assert_eq!(
            done,
            Command::Finish {
                status: FlowStatus::Succeeded,
                result: json!({"output": {"said": "hello ops"}})
            }
        );
    }

    #[test]
    fn branches_on_failure_and_the_fail_command() {
        let s = spec("version: 1.0\ntasks:\n  check:\n    action: core.local cmd=false\n    next:\n      - when: <% succeeded() %>\n        do: happy\n      - when: <% failed() %>\n        publish: why=<% result().stderr %>\n        do: [cleanup, fail]\n  happy:\n    action: core.noop\n  cleanup:\n    action: core.noop\noutput:\n  - why: <% ctx(why) %>\n");
        let (ran, _, done) = drive(&s, json!({}), |action, _, _| {
            if action == "core.local" {
                (false, json!({"stderr": "boom"}))
            } else {
                (true, json!({}))
            }
        });
        // `fail` fails the workflow; cleanup, named next to it, still runs
        // (Orquesta's `run_on_fail`). Orquesta logs the failed run, then
        // the command as a failed task named `fail`.
        assert_eq!(ran, vec!["check", "cleanup"]);
        let Command::Finish { status, result } = done else {
            panic!()
        };
        assert_eq!(status, FlowStatus::Failed);
        assert_eq!(result["output"], json!({"why": "boom"}));
        assert_eq!(
            result["errors"],
            json!([
                {"type": "error", "message": "Execution failed. See result for details.", "task_id": "check", "result": {"stderr": "boom"}},
                {"type": "error", "message": "Execution failed. See result for details.", "task_id": "fail"}
            ])
        );
    }

    #[test]
    fn an_unhandled_failure_fails_the_workflow_with_its_result() {
        let s = spec("version: 1.0\ntasks:\n  a:\n    action: core.local cmd=false\n    next:\n      - when: <% succeeded() %>\n        do: b\n  b:\n    action: core.noop\n");
        let (ran, _, done) = drive(&s, json!({}), |_, _, _| (false, json!({"return_code": 1})));
        assert_eq!(ran, vec!["a"]);
        assert_eq!(
            done,
            Command::Finish {
                status: FlowStatus::Failed,
                result: json!({"errors": [{"type": "error", "message": "Execution failed. See result for details.", "task_id": "a", "result": {"return_code": 1}}], "output": null})
            }
        );
    }

    #[test]
    fn jinja_expressions_see_orquesta_functions() {
        let s = spec("version: 1.0\ninput: [who]\ntasks:\n  greet:\n    action: core.echo\n    input:\n      cmd: \"hi {{ ctx('who') }}\"\n    next:\n      - when: \"{{ succeeded() and result().stdout != '' }}\"\n        publish:\n          - said: \"{{ result().stdout }}\"\n          - count: \"{{ ctx().who | length }}\"\n        do: each\n  each:\n    with: \"{{ [1, 2] }}\"\n    action: core.echo\n    input:\n      cmd: \"n={{ item() }} {{ task_status('greet') }}\"\n    next:\n      - publish: items=\"{{ result() | map(attribute='stdout') | list }}\"\noutput:\n  - said: \"{{ ctx('said') }}\"\n  - count: \"{{ ctx('count') }}\"\n  - items: \"{{ ctx('items') }}\"\n");
        let (ran, _, done) = drive(&s, json!({"who": "ops"}), ok);
        assert_eq!(ran, vec!["greet", "each", "each"]);
        assert_eq!(
            done,
            Command::Finish {
                status: FlowStatus::Succeeded,
                result: json!({"output": {"said": "hi ops", "count": 3, "items": ["n=1 succeeded", "n=2 succeeded"]}})
            }
        );
    }

    #[test]
    fn a_transition_without_when_handles_a_failure() {
        let s = spec("version: 1.0\ntasks:\n  a:\n    action: core.local cmd=false\n    next:\n      - do: b\n  b:\n    action: core.noop\n");
        let (ran, _, done) = drive(&s, json!({}), |action, _, _| {
            (action != "core.local", json!({}))
        });
        assert_eq!(ran, vec!["a", "b"]);
        assert!(matches!(
            done,
            Command::Finish {
                status: FlowStatus::Succeeded,
                ..
            }
        ));
    }

    #[test]
    fn noop_remediates_and_continue_does_not() {
        let text = |cmd: &str| {
            format!("version: 1.0\ntasks:\n  a:\n    action: core.local cmd=false\n    next:\n      - when: <% failed() %>\n        do: {cmd}\n")
        };
        let (_, _, done) = drive(&spec(&text("noop")), json!({}), |_, _, _| {
            (false, json!({}))
        });
        assert!(matches!(
            done,
            Command::Finish {
                status: FlowStatus::Succeeded,
                ..
            }
        ));
        let (_, _, done) = drive(&spec(&text("continue")), json!({}), |_, _, _| {
            (false, json!({}))
        });
        assert!(matches!(
            done,
            Command::Finish {
                status: FlowStatus::Failed,
                ..
            }
        ));
    }

    #[test]
    fn join_waits_for_every_branch() {
        let s = spec("version: 1.0\ntasks:\n  start:\n    action: core.noop\n    next:\n      - do: [left, right]\n  left:\n    action: core.noop\n    next:\n      - do: merge\n  right:\n    action: core.noop\n    next:\n      - do: merge\n  merge:\n    join: all\n    action: core.noop\n");
        let (ran, state, done) = drive(&s, json!({}), ok);
        assert_eq!(ran, vec!["start", "left", "right", "merge"]);
        assert_eq!(state.runs.iter().filter(|r| r.task == "merge").count(), 1);
        assert!(matches!(
            done,
            Command::Finish {
                status: FlowStatus::Succeeded,
                ..
            }
        ));
        // Without a join, each inbound transition runs the task again.
        let s = spec("version: 1.0\ntasks:\n  start:\n    action: core.noop\n    next:\n      - do: [left, right]\n  left:\n    action: core.noop\n    next:\n      - do: merge\n  right:\n    action: core.noop\n    next:\n      - do: merge\n  merge:\n    action: core.noop\n");
        let (ran, _, _) = drive(&s, json!({}), ok);
        assert_eq!(ran.iter().filter(|t| *t == "merge").count(), 2);
    }

    #[test]
    fn retry_reruns_until_success_or_count() {
        let s = spec("version: 1.0\ntasks:\n  flaky:\n    action: core.local cmd=try\n    retry:\n      when: <% failed() %>\n      count: 3\n      delay: 2\n");
        let (ran, state, done) = drive(&s, json!({}), |_, _, attempt| {
            (attempt == 2, json!({"attempt": attempt}))
        });
        assert_eq!(ran.len(), 3);
        assert_eq!(
            state.runs.iter().map(|r| r.attempt).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert!(matches!(
            done,
            Command::Finish {
                status: FlowStatus::Succeeded,
                ..
            }
        ));
        let (ran, _, done) = drive(&s, json!({}), |_, _, _| (false, json!({})));
        assert_eq!(ran.len(), 4, "the first run and 3 retries");
        assert!(matches!(
            done,
            Command::Finish {
                status: FlowStatus::Failed,
                ..
            }
        ));
        // The retry's delay reaches the command.
        let (mut state, commands) = conductor::start(&Flow::new(&s), &Map::new(), Map::new());
        let Command::Run { run_id, .. } = &commands[0] else {
            panic!()
        };
        let next = conductor::task_finished(&Flow::new(&s), &mut state, run_id, false, json!({}));
        assert!(
            matches!(&next[0], Command::Run { delay: Some(d), attempt: 1, .. } if *d == 2.0),
            "{next:?}"
        );
    }

    #[test]
    fn a_replayed_event_changes_nothing() {
        let s = spec("version: 1.0\ntasks:\n  a:\n    action: core.noop\n    next:\n      - do: b\n  b:\n    action: core.noop\n");
        let (mut state, commands) = conductor::start(&Flow::new(&s), &Map::new(), Map::new());
        let Command::Run { run_id, .. } = &commands[0] else {
            panic!()
        };
        let first = conductor::task_finished(&Flow::new(&s), &mut state, run_id, true, json!({}));
        assert_eq!(first.len(), 1);
        let snapshot = state.clone();
        assert!(
            conductor::task_finished(&Flow::new(&s), &mut state, run_id, true, json!({}))
                .is_empty()
        );
        assert_eq!(state, snapshot);
    }

    #[test]
    fn input_problems_fail_at_the_start() {
        // An input given no value and no default is null, as in Orquesta
        // (the action's parameters say what is required).
        let s = spec("version: 1.0\ninput: [needed]\ntasks:\n  a:\n    action: core.noop\n");
        let (state, commands) = conductor::start(&Flow::new(&s), &Map::new(), Map::new());
        assert_eq!(state.status, FlowStatus::Running);
        assert_eq!(state.ctx["needed"], Value::Null);
        assert!(matches!(&commands[0], Command::Run { task, .. } if task == "a"));
        // An expression error fails its task with the message, not the engine.
        let s = spec("version: 1.0\ntasks:\n  a:\n    action: core.local cmd=<% 1 / 0 %>\n");
        let (_, commands) = conductor::start(&Flow::new(&s), &Map::new(), Map::new());
        let Command::Finish { status, result } = &commands[0] else {
            panic!("{commands:?}")
        };
        assert_eq!(*status, FlowStatus::Failed);
        assert!(
            result["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("division by zero"),
            "{result}"
        );
        assert_eq!(result["errors"][0]["task_id"], "a");
    }

    #[test]
    fn task_status_and_routing_tasks() {
        let s = spec("version: 1.0\ntasks:\n  a:\n    action: core.noop\n    next:\n      - do: route\n  route:\n    next:\n      - when: <% task_status(a) = 'succeeded' %>\n        do: b\n  b:\n    action: core.noop\n");
        let (ran, _, done) = drive(&s, json!({}), ok);
        assert_eq!(ran, vec!["a", "b"], "a task without an action only routes");
        assert!(matches!(
            done,
            Command::Finish {
                status: FlowStatus::Succeeded,
                ..
            }
        ));
    }
}

mod items {
    use serde_json::{json, Map, Value};

    use super::super::conductor::{self, Command, Flow, FlowStatus};

    fn spec(text: &str) -> super::super::spec::WorkflowSpec {
        let (spec, issues) = super::super::inspect(text);
        assert!(issues.is_empty(), "{issues:#?}");
        spec.unwrap()
    }

    /// Runs with every action finishing in the order started (echoing its
    /// message; failing on `fail_on`): inputs, peak concurrency, finish.
    fn drive_all(
        spec: &super::super::spec::WorkflowSpec,
        fail_on: Option<&str>,
    ) -> (Vec<Value>, usize, Command) {
        let d = super::driver::drive(spec, &Map::new(), |_, input, _| {
            let ok = fail_on.is_none_or(|f| input["message"] != f);
            (ok, json!({"stdout": input["message"]}))
        });
        (d.inputs, d.peak, d.finish)
    }

    #[test]
    fn items_run_with_their_values_and_results_keep_item_order() {
        let s = spec("version: 1.0\nvars:\n  - hosts: [a, b, c, d, e]\ntasks:\n  ping:\n    with:\n      items: host in <% ctx(hosts) %>\n      concurrency: 2\n    action: core.echo message=<% item(host) %>\n    next:\n      - when: <% succeeded() %>\n        publish: said=<% result().select($.stdout) %>\noutput:\n  - said: <% ctx(said) %>\n");
        let (inputs, peak, done) = drive_all(&s, None);
        assert_eq!(inputs.len(), 5);
        assert_eq!(peak, 2, "concurrency 2");
        assert_eq!(
            done,
            Command::Finish {
                status: FlowStatus::Succeeded,
                result: json!({"output": {"said": ["a", "b", "c", "d", "e"]}})
            }
        );
    }

    #[test]
    fn zipped_items_bind_each_name() {
        let s = spec("version: 1.0\ntasks:\n  pair:\n    with: x, y in <% zip([1, 2], ['one', 'two']) %>\n    action: core.echo\n    input:\n      message: <% str(item(x)) + '=' + item(y) %>\n    next:\n      - publish: seen=<% result().select($.stdout) %>\noutput:\n  - seen: <% ctx(seen) %>\n");
        let (_, _, done) = drive_all(&s, None);
        let Command::Finish { result, .. } = done else {
            panic!()
        };
        assert_eq!(result["output"]["seen"], json!(["1=one", "2=two"]));
    }

    #[test]
    fn a_failed_item_fails_the_task_and_starts_no_more_items() {
        let s = spec("version: 1.0\ntasks:\n  each:\n    with:\n      items: <% [a, b, c, d] %>\n      concurrency: 1\n    action: core.echo message=<% item() %>\n");
        let (inputs, _, done) = drive_all(&s, Some("b"));
        assert_eq!(inputs.len(), 2, "c and d never start");
        let Command::Finish { status, result } = done else {
            panic!()
        };
        assert_eq!(status, FlowStatus::Failed);
        assert_eq!(result["errors"][0]["task_id"], "each");
        assert_eq!(
            result["errors"][0]["result"],
            json!([{"stdout": "a"}, {"stdout": "b"}, null, null])
        );
    }

    #[test]
    fn no_items_succeeds_at_once_and_replays_change_nothing() {
        let s = spec("version: 1.0\ntasks:\n  none:\n    with: <% [] %>\n    action: core.noop\n");
        let (_, commands) = conductor::start(&Flow::new(&s), &Map::new(), Map::new());
        assert!(
            matches!(
                commands.as_slice(),
                [Command::Finish {
                    status: FlowStatus::Succeeded,
                    ..
                }]
            ),
            "{commands:?}"
        );
        let s =
            spec("version: 1.0\ntasks:\n  two:\n    with: <% [1, 2] %>\n    action: core.noop\n");
        let (mut state, commands) = conductor::start(&Flow::new(&s), &Map::new(), Map::new());
        assert_eq!(commands.len(), 2);
        let Command::Run { run_id, .. } = &commands[0] else {
            panic!()
        };
        assert_eq!(run_id, "two.0.0");
        assert!(
            conductor::task_finished(&Flow::new(&s), &mut state, run_id, true, json!(1)).is_empty()
        );
        let snapshot = state.clone();
        assert!(
            conductor::task_finished(&Flow::new(&s), &mut state, run_id, true, json!(1)).is_empty()
        );
        assert_eq!(state, snapshot);
    }
}

mod canceling {
    use serde_json::{json, Map};

    use super::super::conductor::{self, Command, Flow, FlowStatus};

    #[test]
    fn cancel_stops_running_runs_and_starts_nothing_more() {
        let (spec, _) = super::super::inspect("version: 1.0\ntasks:\n  a:\n    action: core.noop\n    next:\n      - do: b\n  each:\n    with: <% [1, 2, 3] %>\n    action: core.noop\n  b:\n    action: core.noop\n");
        let spec = spec.unwrap();
        let (mut state, started) = conductor::start(&Flow::new(&spec), &Map::new(), Map::new());
        assert_eq!(started.len(), 4, "a and three items");
        let Command::Run {
            run_id: first_item, ..
        } = &started[1]
        else {
            panic!()
        };
        conductor::task_finished(&Flow::new(&spec), &mut state, first_item, true, json!({}));
        let commands = conductor::cancel(&Flow::new(&spec), &mut state);
        assert_eq!(commands[0], Command::CancelParent, "the cancel cascades up");
        let stops: Vec<String> = commands[1..]
            .iter()
            .map(|c| match c {
                Command::Cancel { run_id } => run_id.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(stops, vec!["a.0", "each.0.1", "each.0.2"]);
        assert_eq!(state.status, FlowStatus::Canceling);
        // `a` ends: its transition to `b` does not run.
        assert!(
            conductor::task_finished(&Flow::new(&spec), &mut state, "a.0", true, json!({}))
                .is_empty()
        );
        assert!(conductor::task_finished(
            &Flow::new(&spec),
            &mut state,
            "each.0.1",
            false,
            json!({})
        )
        .is_empty());
        let last =
            conductor::task_finished(&Flow::new(&spec), &mut state, "each.0.2", false, json!({}));
        assert_eq!(
            last,
            vec![Command::Finish {
                status: FlowStatus::Canceled,
                result: json!({"output": null})
            }]
        );
        assert!(
            conductor::cancel(&Flow::new(&spec), &mut state).is_empty(),
            "once"
        );
    }
}

mod pausing {
    use std::sync::Arc;

    use serde_json::{json, Map};

    use super::super::conductor::{self, Command, Flow, FlowStatus, ItemResult, TaskStatus};
    use crate::template::{KeyValueLookup, KvScope, Renderer};

    fn spec(text: &str) -> super::super::spec::WorkflowSpec {
        let (spec, issues) = super::super::inspect(text);
        assert!(issues.is_empty(), "{issues:#?}");
        spec.unwrap()
    }

    fn runs(commands: &[Command]) -> Vec<String> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::Run { run_id, .. } => Some(run_id.clone()),
                _ => None,
            })
            .collect()
    }

    const TWO_BRANCHES: &str = "version: 1.0\ntasks:\n  a:\n    action: core.noop\n    next:\n      - do: a2\n  a2:\n    action: core.noop\n  child:\n    action: examples.sub\n";

    #[test]
    fn pause_holds_new_runs_until_resume_and_asks_children_to_pause() {
        let s = spec(TWO_BRANCHES);
        let flow = Flow::new(&s);
        let (mut state, started) = conductor::start(&flow, &Map::new(), Map::new());
        assert_eq!(runs(&started), vec!["a.0", "child.0"]);
        let paused = conductor::pause(&flow, &mut state);
        assert_eq!(
            paused,
            vec![
                Command::Status {
                    status: FlowStatus::Pausing
                },
                Command::Pause {
                    run_id: "a.0".into()
                },
                Command::Pause {
                    run_id: "child.0".into()
                },
            ]
        );
        // `a` ends while pausing: `a2` is decided but does not start.
        let after_a = conductor::task_finished(&flow, &mut state, "a.0", true, json!({}));
        assert!(runs(&after_a).is_empty(), "{after_a:?}");
        assert_eq!(state.status, FlowStatus::Pausing, "child still active");
        // The child workflow pauses: nothing is active any more.
        let after_child = conductor::task_paused(&flow, &mut state, "child.0");
        assert_eq!(
            after_child,
            vec![Command::Status {
                status: FlowStatus::Paused
            }]
        );
        assert_eq!(conductor::pause(&flow, &mut state), vec![], "once");
        // Resume: the child is asked to resume and a2 starts.
        let resumed = conductor::resume(&flow, &mut state);
        assert_eq!(state.status, FlowStatus::Running);
        assert!(resumed.contains(&Command::Resume {
            run_id: "child.0".into()
        }));
        assert_eq!(runs(&resumed), vec!["a2.0"]);
        assert!(conductor::task_resumed(&flow, &mut state, "child.0").is_empty());
        conductor::task_finished(&flow, &mut state, "child.0", true, json!({}));
        let end = conductor::task_finished(&flow, &mut state, "a2.0", true, json!({}));
        assert!(matches!(
            end.last(),
            Some(Command::Finish {
                status: FlowStatus::Succeeded,
                ..
            })
        ));
    }

    /// A pause that came before the start: nothing starts, the workflow
    /// is `paused` at once, and the resume starts what the start decided.
    #[test]
    fn a_workflow_paused_before_it_starts_starts_paused_and_resumes_from_its_first_tasks() {
        let s = spec(TWO_BRANCHES);
        let flow = Flow::new(&s);
        let (mut state, started) = conductor::start(&flow, &Map::new(), Map::new());
        let first = conductor::pause_at_start(&flow, &mut state, started);
        assert_eq!(
            first,
            vec![Command::Status {
                status: FlowStatus::Paused
            }]
        );
        assert_eq!(state.status, FlowStatus::Paused);
        assert!(conductor::pause(&flow, &mut state).is_empty());
        let resumed = conductor::resume(&flow, &mut state);
        assert_eq!(state.status, FlowStatus::Running);
        assert_eq!(runs(&resumed), vec!["a.0", "child.0"]);
        assert!(!resumed.iter().any(|c| matches!(c, Command::Resume { .. })));
        // A workflow that failed at start ends as it would have.
        let bad =
            spec("version: 1.0\nvars:\n  - x: <% 1/0 %>\ntasks:\n  a:\n    action: core.noop\n");
        let flow = Flow::new(&bad);
        let (mut state, started) = conductor::start(&flow, &Map::new(), Map::new());
        let ended = conductor::pause_at_start(&flow, &mut state, started.clone());
        assert_eq!(ended, started);
        assert_eq!(state.status, FlowStatus::Failed);
    }

    /// test_wiring_pause_and_resume.py's pauses from one subworkflow: a
    /// child workflow that pauses on its own leaves its workflow running
    /// (nothing else is asked to pause) until no other run is active;
    /// resuming the child runs the workflow again.
    #[test]
    fn a_child_paused_on_its_own_pauses_the_workflow_only_once_nothing_else_runs() {
        let s = spec(TWO_BRANCHES);
        let flow = Flow::new(&s);
        let (mut state, _) = conductor::start(&flow, &Map::new(), Map::new());
        assert_eq!(conductor::task_paused(&flow, &mut state, "child.0"), vec![]);
        assert_eq!(state.status, FlowStatus::Running);
        let after_a = conductor::task_finished(&flow, &mut state, "a.0", true, json!({}));
        assert_eq!(runs(&after_a), vec!["a2.0"], "the other branch goes on");
        let after_a2 = conductor::task_finished(&flow, &mut state, "a2.0", true, json!({}));
        assert_eq!(
            after_a2,
            vec![Command::Status {
                status: FlowStatus::Paused
            }]
        );
        let resumed = conductor::task_resumed(&flow, &mut state, "child.0");
        assert_eq!(
            resumed,
            vec![Command::Status {
                status: FlowStatus::Running
            }]
        );
        // The notice again (the sweep's, past the duplicate window): nothing.
        assert_eq!(
            conductor::task_resumed(&flow, &mut state, "child.0"),
            vec![]
        );
        let end = conductor::task_finished(&flow, &mut state, "child.0", true, json!({}));
        assert!(matches!(
            end.last(),
            Some(Command::Finish {
                status: FlowStatus::Succeeded,
                ..
            })
        ));
    }

    /// Orquesta: a pausing workflow whose last run ends is `paused`, and
    /// the resume ends it.
    #[test]
    fn a_pausing_workflow_whose_last_run_ends_is_paused_until_resumed() {
        let s = spec("version: 1.0\ntasks:\n  only:\n    action: core.noop\n");
        let flow = Flow::new(&s);
        let (mut state, _) = conductor::start(&flow, &Map::new(), Map::new());
        conductor::pause(&flow, &mut state);
        let ended = conductor::task_finished(&flow, &mut state, "only.0", true, json!({}));
        assert_eq!(
            ended,
            vec![Command::Status {
                status: FlowStatus::Paused
            }]
        );
        let resumed = conductor::resume(&flow, &mut state);
        assert_eq!(
            resumed,
            vec![
                Command::Status {
                    status: FlowStatus::Running
                },
                Command::Finish {
                    status: FlowStatus::Succeeded,
                    result: json!({"output": null})
                }
            ]
        );
    }

    #[test]
    fn a_pending_inquiry_pauses_the_workflow_and_its_answer_resumes_it() {
        let s = spec("version: 1.0\ntasks:\n  ask:\n    action: core.ask\n    next:\n      - when: <% succeeded() %>\n        publish: approved=<% result().response.approved %>\n        do: act\n  act:\n    action: core.noop\noutput:\n  - approved: <% ctx(approved) %>\n");
        let flow = Flow::new(&s);
        let (mut state, _) = conductor::start(&flow, &Map::new(), Map::new());
        let pending = conductor::task_pending(&flow, &mut state, "ask.0");
        assert_eq!(state.status, FlowStatus::Paused);
        assert_eq!(
            pending.last(),
            Some(&Command::Status {
                status: FlowStatus::Paused
            })
        );
        assert_eq!(state.runs[0].status, TaskStatus::Paused);
        let answered = conductor::task_finished(
            &flow,
            &mut state,
            "ask.0",
            true,
            json!({"response": {"approved": true}}),
        );
        assert_eq!(state.status, FlowStatus::Running);
        assert!(answered.contains(&Command::Status {
            status: FlowStatus::Running
        }));
        assert_eq!(runs(&answered), vec!["act.0"]);
        let end = conductor::task_finished(&flow, &mut state, "act.0", true, json!({}));
        assert_eq!(
            end,
            vec![Command::Finish {
                status: FlowStatus::Succeeded,
                result: json!({"output": {"approved": true}})
            }]
        );
    }

    #[test]
    fn items_stop_starting_while_paused_and_continue_on_resume() {
        let s = spec("version: 1.0\ntasks:\n  each:\n    with:\n      items: <% [1, 2, 3, 4] %>\n      concurrency: 2\n    action: core.noop\n");
        let flow = Flow::new(&s);
        let (mut state, started) = conductor::start(&flow, &Map::new(), Map::new());
        assert_eq!(runs(&started), vec!["each.0.0", "each.0.1"]);
        conductor::pause(&flow, &mut state);
        assert!(runs(&conductor::task_finished(
            &flow,
            &mut state,
            "each.0.0",
            true,
            json!(0)
        ))
        .is_empty());
        let last = conductor::task_finished(&flow, &mut state, "each.0.1", true, json!(1));
        assert_eq!(state.status, FlowStatus::Paused, "{last:?}");
        let resumed = conductor::resume(&flow, &mut state);
        assert_eq!(runs(&resumed), vec!["each.0.2", "each.0.3"]);
        conductor::task_finished(&flow, &mut state, "each.0.2", true, json!(2));
        let gather = conductor::task_finished(&flow, &mut state, "each.0.3", true, json!(3));
        assert_eq!(
            gather,
            vec![Command::Gather {
                run_id: "each.0".into()
            }]
        );
        let end = conductor::items_gathered(
            &flow,
            &mut state,
            "each.0",
            vec![json!(0), json!(1), json!(2), json!(3)],
        );
        assert!(matches!(
            end.last(),
            Some(Command::Finish {
                status: FlowStatus::Succeeded,
                ..
            })
        ));
        assert_eq!(state.runs[0].result, json!([0, 1, 2, 3]));
    }

    #[test]
    fn cancel_while_paused_drops_held_runs_and_cancels_paused_children() {
        let s = spec(TWO_BRANCHES);
        let flow = Flow::new(&s);
        let (mut state, _) = conductor::start(&flow, &Map::new(), Map::new());
        conductor::pause(&flow, &mut state);
        conductor::task_finished(&flow, &mut state, "a.0", true, json!({}));
        conductor::task_paused(&flow, &mut state, "child.0");
        assert_eq!(state.status, FlowStatus::Paused);
        let canceled = conductor::cancel(&flow, &mut state);
        assert_eq!(
            canceled,
            vec![
                Command::CancelParent,
                Command::Cancel {
                    run_id: "child.0".into()
                }
            ]
        );
        assert!(
            state.runs.iter().all(|r| r.task != "a2"),
            "a2 never started"
        );
        let end = conductor::task_finished(&flow, &mut state, "child.0", false, json!({}));
        assert_eq!(
            end,
            vec![Command::Finish {
                status: FlowStatus::Canceled,
                result: json!({"output": null})
            }]
        );
    }

    #[test]
    fn rerun_starts_from_the_failed_task_with_the_old_context() {
        let s = spec("version: 1.0\ntasks:\n  first:\n    action: core.noop\n    next:\n      - publish: got=<% result().v %>\n        do: second\n  second:\n    action: core.local cmd=<% ctx(got) %>\n    next:\n      - when: <% succeeded() %>\n        do: third\n  third:\n    action: core.noop\noutput:\n  - got: <% ctx(got) %>\n");
        let flow = Flow::new(&s);
        let (mut state, _) = conductor::start(&flow, &Map::new(), Map::new());
        conductor::task_finished(&flow, &mut state, "first.0", true, json!({"v": "x"}));
        let end = conductor::task_finished(&flow, &mut state, "second.0", false, json!({}));
        assert!(matches!(
            end.last(),
            Some(Command::Finish {
                status: FlowStatus::Failed,
                ..
            })
        ));
        let (running, _) = conductor::start(&flow, &Map::new(), Map::new());
        let err =
            conductor::rerun(&flow, &running, &["first".into()], &[], Map::new()).unwrap_err();
        assert!(err.contains("only a finished workflow"), "{err}");
        let err = conductor::rerun(&flow, &state, &["third".into()], &[], Map::new()).unwrap_err();
        assert!(err.contains("never ran"), "{err}");
        let (_, from_first) =
            conductor::rerun(&flow, &state, &["first".into()], &[], Map::new()).unwrap();
        assert!(
            matches!(from_first.first(), Some(Command::Run { run_id, .. }) if run_id == "first.1"),
            "a task that succeeded runs again too: {from_first:?}"
        );
        let (mut again, commands) =
            conductor::rerun(&flow, &state, &["second".into()], &[], Map::new()).unwrap();
        let Some(Command::Run { run_id, input, .. }) = commands.first() else {
            panic!("{commands:?}")
        };
        assert_eq!(run_id, "second.1");
        assert_eq!(input["cmd"], "x", "the old context");
        conductor::task_finished(&flow, &mut again, "second.1", true, json!({}));
        let end = conductor::task_finished(&flow, &mut again, "third.0", true, json!({}));
        assert_eq!(
            end,
            vec![Command::Finish {
                status: FlowStatus::Succeeded,
                result: json!({"output": {"got": "x"}})
            }]
        );
    }

    /// StackStorm's re-run of a with-items task: without `reset` only the
    /// items that failed run again, the others keep their results; with
    /// it every item runs again. A workflow that succeeded re-runs too.
    #[test]
    fn rerun_of_items_runs_the_failed_ones_unless_reset() {
        let s = spec("version: 1.0\ntasks:\n  each:\n    with: <% range(0, 4) %>\n    action: core.local cmd=<% item() %>\n");
        let flow = Flow::new(&s);
        let (mut state, started) = conductor::start(&flow, &Map::new(), Map::new());
        assert_eq!(started.len(), 4);
        for i in 0..4 {
            let run = format!("each.0.{i}");
            conductor::task_finished(&flow, &mut state, &run, i % 2 == 0, json!({}));
        }
        let results: Vec<_> = (0..4).map(|i| json!({"i": i})).collect();
        let end = conductor::items_gathered(&flow, &mut state, "each.0", results);
        assert!(matches!(
            end.last(),
            Some(Command::Finish {
                status: FlowStatus::Failed,
                ..
            })
        ));
        let run_ids = |commands: &[Command]| -> Vec<String> {
            commands
                .iter()
                .filter_map(|c| match c {
                    Command::Run { run_id, .. } => Some(run_id.clone()),
                    _ => None,
                })
                .collect()
        };
        let (_, reset) = conductor::rerun(
            &flow,
            &state,
            &["each".into()],
            &["each".into()],
            Map::new(),
        )
        .unwrap();
        assert_eq!(
            run_ids(&reset),
            ["each.1.0", "each.1.1", "each.1.2", "each.1.3"]
        );
        let (mut again, failed_only) =
            conductor::rerun(&flow, &state, &["each".into()], &[], Map::new()).unwrap();
        assert_eq!(run_ids(&failed_only), ["each.1.1", "each.1.3"]);
        conductor::task_finished(&flow, &mut again, "each.1.1", true, json!({}));
        let gather = conductor::task_finished(&flow, &mut again, "each.1.3", true, json!({}));
        assert_eq!(
            gather,
            vec![Command::Gather {
                run_id: "each.1".into()
            }]
        );
        let run = again.runs.iter().find(|r| r.id == "each.1").unwrap();
        let slots: Vec<_> = run.items.as_ref().unwrap().results("each.1").collect();
        assert_eq!(
            slots,
            vec![
                ItemResult::Local(&json!({"i": 0})),
                ItemResult::Execution("each.1.1".into()),
                ItemResult::Local(&json!({"i": 2})),
                ItemResult::Execution("each.1.3".into()),
            ]
        );
        let results = vec![json!({"i": 0}), json!(1), json!({"i": 2}), json!(3)];
        let end = conductor::items_gathered(&flow, &mut again, "each.1", results);
        assert!(matches!(
            end.last(),
            Some(Command::Finish {
                status: FlowStatus::Succeeded,
                ..
            })
        ));
        let (_, after_success) =
            conductor::rerun(&flow, &again, &["each".into()], &[], Map::new()).unwrap();
        assert!(
            run_ids(&after_success).is_empty(),
            "every item succeeded: none runs again"
        );
    }

    struct Keys;

    impl KeyValueLookup for Keys {
        fn get(&self, scope: KvScope, name: &str) -> Option<String> {
            match (scope, name) {
                (KvScope::System, "region") => Some("eu".into()),
                (KvScope::User(u), "token") if u == "ops" => Some("t-1".into()),
                _ => None,
            }
        }
    }

    #[test]
    fn st2kv_reads_system_and_user_keys_in_yaql_and_jinja() {
        let renderer = Renderer::new();
        let mut runtime = Map::new();
        runtime.insert("st2".into(), json!({"user": "ops"}));
        let s = spec("version: 1.0\ntasks:\n  t:\n    action: core.echo\n    input:\n      a: <% st2kv('system.region') %>\n      b: \"{{ st2kv('token') }}\"\n");
        let flow = Flow::new(&s).with_datastore(&renderer, Arc::new(Keys), None);
        let (_, commands) = conductor::start(&flow, &Map::new(), runtime.clone());
        let Some(Command::Run { input, .. }) = commands.first() else {
            panic!("{commands:?}")
        };
        assert_eq!(input, &json!({"a": "eu", "b": "t-1"}));
        let s = spec("version: 1.0\ntasks:\n  missing:\n    action: core.echo message=<% st2kv('system.nope') %>\n");
        let flow = Flow::new(&s).with_datastore(&renderer, Arc::new(Keys), None);
        let (_, commands) = conductor::start(&flow, &Map::new(), runtime);
        let [Command::Finish {
            status: FlowStatus::Failed,
            result,
        }] = &commands[..]
        else {
            panic!("{commands:?}")
        };
        let message = result["errors"][0]["message"].as_str().unwrap();
        assert!(
            // StackStorm names the key without its scope.
            message.contains("The key \"nope\" does not exist"),
            "{message}"
        );
    }

    /// Records what [`SecretScope::around`] saw: the task of each
    /// evaluation and the sealed values opened inside it.
    #[derive(Default)]
    struct Around(std::sync::Mutex<Vec<(Option<String>, Vec<String>)>>);

    impl conductor::SecretScope for Around {
        fn around(&self, task: Option<&str>, evaluate: &mut dyn FnMut()) {
            let ((), opened) = crate::secrets::track(evaluate);
            self.0
                .lock()
                .unwrap()
                .push((task.map(str::to_string), opened));
        }
    }

    #[test]
    fn st2kv_decrypt_is_evaluated_inside_the_secret_scope() {
        struct Sealed(String);
        impl KeyValueLookup for Sealed {
            fn get(&self, _: KvScope, name: &str) -> Option<String> {
                (name == "pw").then(|| self.0.clone())
            }
        }
        let cipher =
            crate::secrets::Cipher::from_hex(&crate::secrets::Cipher::generate_hex()).unwrap();
        let sealed = cipher.encrypt("s3cret");
        let renderer = Renderer::new();
        let mut runtime = Map::new();
        runtime.insert("st2".into(), json!({"user": "ops"}));
        let s = spec("version: 1.0\nvars:\n  - plain: <% 1 + 1 %>\ntasks:\n  t:\n    action: core.echo\n    input:\n      a: <% st2kv('system.pw', decrypt => true) %>\n      b: \"{{ st2kv('system.pw', decrypt=true) }}\"\n      c: <% ctx().plain %>\n");
        let around = Around::default();
        let flow = Flow::new(&s)
            .with_datastore(&renderer, Arc::new(Sealed(sealed.clone())), Some(cipher))
            .with_secret_scope(&around);
        let (_, commands) = conductor::start(&flow, &Map::new(), runtime);
        let Some(Command::Run { input, .. }) = commands.first() else {
            panic!("{commands:?}")
        };
        assert_eq!(input, &json!({"a": "s3cret", "b": "s3cret", "c": 2}));
        // One evaluation, the task's input (the vars read no datastore),
        // opening the secret twice.
        assert_eq!(
            *around.0.lock().unwrap(),
            vec![(Some("t".to_string()), vec![sealed.clone(), sealed])]
        );
    }

    #[test]
    fn decrypt_kv_of_a_carried_value_is_evaluated_inside_the_secret_scope() {
        let cipher =
            crate::secrets::Cipher::from_hex(&crate::secrets::Cipher::generate_hex()).unwrap();
        let sealed = cipher.encrypt("s3cret");
        let renderer = Renderer::with_cipher(cipher.clone());
        let s = spec("version: 1.0\ninput:\n  - sealed\ntasks:\n  t:\n    action: core.echo\n    input:\n      a: \"{{ ctx().sealed | decrypt_kv }}\"\n      b: \"{{ ctx().sealed }}\"\n");
        let around = Around::default();
        let flow = Flow::new(&s)
            .with_datastore(&renderer, Arc::new(Keys), Some(cipher))
            .with_secret_scope(&around);
        let mut given = Map::new();
        given.insert("sealed".into(), json!(sealed));
        let (_, commands) = conductor::start(&flow, &given, Map::new());
        let Some(Command::Run { input, .. }) = commands.first() else {
            panic!("{commands:?}")
        };
        assert_eq!(input, &json!({"a": "s3cret", "b": sealed}));
        // No `st2kv` in sight, yet the opening is inside the scope.
        assert_eq!(
            *around.0.lock().unwrap(),
            vec![(Some("t".to_string()), vec![sealed])]
        );
    }

    #[test]
    fn st2kv_reads_the_keys_of_the_user_the_workflow_started_as() {
        struct Tokens;
        impl KeyValueLookup for Tokens {
            fn get(&self, scope: KvScope, name: &str) -> Option<String> {
                match (scope, name) {
                    (KvScope::User(u), "token") => Some(format!("token-of-{u}")),
                    _ => None,
                }
            }
        }
        let renderer = Renderer::new();
        let mut runtime = Map::new();
        runtime.insert("st2".into(), json!({"user": "ops"}));
        // An input and a var named `st2` replace the context's `st2`...
        let s = spec("version: 1.0\ninput:\n  - st2\nvars:\n  - st2: {user: root}\ntasks:\n  t:\n    action: core.echo\n    input:\n      a: <% st2kv('token') %>\n      b: \"{{ st2kv('token') }}\"\n      c: <% ctx().st2.user %>\n");
        let flow = Flow::new(&s).with_datastore(&renderer, Arc::new(Tokens), None);
        let mut given = Map::new();
        given.insert("st2".into(), json!({"user": "admin"}));
        let (state, commands) = conductor::start(&flow, &given, runtime);
        let Some(Command::Run { input, .. }) = commands.first() else {
            panic!("{commands:?}")
        };
        // ...but not whose keys `st2kv()` reads.
        assert_eq!(
            input,
            &json!({"a": "token-of-ops", "b": "token-of-ops", "c": "root"})
        );
        assert_eq!(state.user, "ops");
        // A state stored before the user was kept reads it from the context.
        let mut stored = serde_json::to_value(&state).unwrap();
        stored.as_object_mut().unwrap().remove("user");
        stored["ctx"]["st2"] = json!({"user": "old"});
        stored["status"] = json!("succeeded");
        let old: conductor::FlowState = serde_json::from_value(stored).unwrap();
        assert_eq!(old.user, "");
        let (_, commands) = conductor::rerun(&flow, &old, &["t".into()], &[], Map::new()).unwrap();
        let Some(Command::Run { input, .. }) = commands.first() else {
            panic!("{commands:?}")
        };
        assert_eq!(input["a"], "token-of-old");
        // A re-run is the re-running user's.
        let mut finished = state.clone();
        finished.status = FlowStatus::Succeeded;
        let mut again = Map::new();
        again.insert("st2".into(), json!({"user": "ann"}));
        let (rerun, commands) =
            conductor::rerun(&flow, &finished, &["t".into()], &[], again).unwrap();
        assert_eq!(rerun.user, "ann");
        let Some(Command::Run { input, .. }) = commands.first() else {
            panic!("{commands:?}")
        };
        assert_eq!(input["a"], "token-of-ann");
    }
}

/// StackStorm's `examples.orquesta-fail-inspection`, whose errors its
/// wiring test `test_inspection_error` states exactly.
#[test]
fn inspection_errors_are_stackstorms() {
    let text = "version: 1.0\n\ndescription: A basic sequential workflow.\n\nvars:\n  - macro: polo\n\ntasks:\n  task1:\n    action: core.local cmd=<% ctx().foobar %>\n    next:\n      - when: <% succeeded() %>\n        do:\n          - task2\n  task2:\n    action: core.local\n    input:\n        - cmd: echo <% ctx().macro %>\n    next:\n      - when: <% <% succeeded() %>\n        do: task3\n  task3:\n    action: std.noop\n";
    let (spec, issues) = inspect(text);
    let contents = check_contents(&spec.unwrap(), |r| {
        (r == "core.local").then(|| {
            [("cmd", true)]
                .into_iter()
                .map(|(n, required)| {
                    (
                        n.to_string(),
                        crate::model::ParamSpec {
                            required,
                            ..Default::default()
                        },
                    )
                })
                .collect()
        })
    });
    let task = "properties.tasks.patternProperties.^\\w+$";
    assert_eq!(
        inspection_errors(&issues, contents),
        vec![
            json!({
                "type": "content",
                "message": "The action \"std.noop\" is not registered in the database.",
                "schema_path": format!("{task}.properties.action"),
                "spec_path": "tasks.task3.action",
            }),
            json!({
                "type": "context",
                "language": "yaql",
                "expression": "<% ctx().foobar %>",
                "message": "Variable \"foobar\" is referenced before assignment.",
                "schema_path": format!("{task}.properties.input"),
                "spec_path": "tasks.task1.input",
            }),
            json!({
                "type": "expression",
                "language": "yaql",
                "expression": "<% <% succeeded() %>",
                "message": "Parse error: unexpected '<' at position 0 of expression '<% succeeded()'",
                "schema_path": format!("{task}.properties.next.items.properties.when"),
                "spec_path": "tasks.task2.next[0].when",
            }),
            json!({
                "type": "syntax",
                "message": "[{'cmd': 'echo <% ctx().macro %>'}] is not valid under any of the given schemas",
                "schema_path": format!("{task}.properties.input.oneOf"),
                "spec_path": "tasks.task2.input",
            }),
        ]
    );
}

/// Syntax errors in jsonschema's words at Orquesta's paths; expression
/// and context errors as Orquesta's evaluators word them.
#[test]
fn syntax_expression_and_context_errors_in_orquestas_words() {
    let text = "version: 1.0\nvars:\n  - a: 1\n    b: 2\ntasks:\n  t:\n    action: core.noop\n    colour: red\n    size: 2\n    retry:\n      when: <% failed() %>\n    next:\n      - do: 5\n        publish: [1]\n      - when: <% ctx().__secret %> {{ 1 }}\n      - when: <% 1 ~ 2 %>\n        publish:\n          - x: <% ctx().__secret %>\n";
    let found: Vec<(String, String, String)> = issues(text)
        .into_iter()
        .map(|i| (i.spec_path, i.schema_path, i.message))
        .collect();
    let task = "properties.tasks.patternProperties.^\\w+$";
    let next = format!("{task}.properties.next.items");
    let expected = vec![
        (
            "tasks.t.next[1].when".to_string(),
            format!("{next}.properties.when"),
            "Expression with multiple types is not supported.".to_string(),
        ),
        (
            "tasks.t.next[2].when".to_string(),
            format!("{next}.properties.when"),
            "Lexical error: illegal character '~' at position 2".to_string(),
        ),
        (
            "tasks.t".to_string(),
            format!("{task}.additionalProperties"),
            "Additional properties are not allowed ('colour', 'size' were unexpected)".to_string(),
        ),
        (
            "tasks.t.next[0].do".to_string(),
            format!("{next}.properties.do.oneOf"),
            "5 is not valid under any of the given schemas".to_string(),
        ),
        (
            "tasks.t.next[0].publish".to_string(),
            format!("{next}.properties.publish.oneOf"),
            "[1] is not valid under any of the given schemas".to_string(),
        ),
        (
            "tasks.t.retry".to_string(),
            format!("{task}.properties.retry.required"),
            "'count' is a required property".to_string(),
        ),
        (
            "vars[0]".to_string(),
            "properties.vars.items.maxProperties".to_string(),
            "{'a': 1, 'b': 2} has too many properties".to_string(),
        ),
    ];
    let context: Vec<&(String, String, String)> = found
        .iter()
        .filter(|(_, _, m)| m.starts_with("Variable"))
        .collect();
    assert_eq!(
        context,
        vec![
            &(
                "tasks.t.next[2].publish[0]".to_string(),
                format!("{next}.properties.publish"),
                "Variable \"__secret\" that is prefixed with double underscores is considered a private variable and cannot be referenced.".to_string(),
            ),
            &(
                "tasks.t.next[2].publish[0]".to_string(),
                format!("{next}.properties.publish"),
                "Variable \"__secret\" is referenced before assignment.".to_string(),
            ),
        ],
        "{found:#?}"
    );
    let rest: Vec<(String, String, String)> = found
        .iter()
        .filter(|(_, _, m)| !m.starts_with("Variable"))
        .cloned()
        .collect();
    assert_eq!(rest, expected, "{found:#?}");
}
