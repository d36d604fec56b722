//! StackStorm's own `examples` pack (`tests/fixtures/st2-examples`, copied
//! unchanged from StackStorm/st2) registers on a real node, and its Orquesta
//! workflows run through the REST API with the results Orquesta gives.
//!
//! The expected statuses and results are the ones StackStorm's integration
//! tests state (`st2tests/integration/orquesta/test_wiring*.py`); where
//! those tests state none, the expectation is read off the workflow and
//! says so.
//!
//! Not run here, and why:
//! - need what the system `python3` lacks: `orquesta-mock-create-vm`
//!   (`examples.python-mock-create-vm` imports `eventlet`, which StackStorm
//!   installs in its virtualenv);
//! - `orquesta-data-flow-large-data` names `examples.load_and_print_fixture`,
//!   which the pack does not define (its action is
//!   `python_runner_load_and_print_fixture`);
//! - needs the `python-script`, `remote-shell-cmd` and
//!   `remote-shell-script` runners: `orquesta-streaming-demo`;
//! - needs the `fixtures` pack of StackStorm's test suite:
//!   `render_config_context`;
//! - `orquesta-ask-multiple-parameters`, `orquesta-test-pause-resume`: no
//!   StackStorm integration test runs them, so there is no expectation to
//!   compare;
//! - differ, known: Squall's one workflow context is not Orquesta's
//!   per-branch contexts (a publish on one branch is visible on another),
//!   which no example here shows.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use squall_tests::{poll, repo_root, TestNode};

/// The fixture's pack directory and the repository's `core` pack, without
/// Squall's own `examples` pack (same name).
fn pack_dirs(root: &std::path::Path) -> Result<Vec<PathBuf>> {
    let core = root.join("core");
    std::os::unix::fs::symlink(repo_root().join("packs/core"), &core)?;
    Ok(vec![
        root.to_path_buf(),
        repo_root().join("tests/fixtures/st2-examples"),
    ])
}

const PUBLIC_URL: &str = "https://st2.example.test:8443";

async fn start() -> Result<(TestNode, tempfile::TempDir)> {
    let packs = tempfile::tempdir()?;
    let dirs = pack_dirs(packs.path())?;
    let node = TestNode::start_with(dirs, |cfg| {
        cfg.api.public_url = Some(PUBLIC_URL.to_string());
    })
    .await?;
    Ok((node, packs))
}

/// Orquesta's message for `<% abs(8).value %>`.
const ABS_VALUE: &str = "YaqlEvaluationException: Unable to evaluate expression '<% abs(8).value %>'. NoFunctionRegisteredException: Unknown function \"#property#value\"";

/// One workflow run and what Orquesta gives for it.
struct Case {
    action: &'static str,
    input: Value,
    status: &'static str,
    result: Value,
}

fn case(action: &'static str, input: Value, status: &'static str, result: Value) -> Case {
    Case {
        action,
        input,
        status,
        result,
    }
}

/// The result of a core.local task that ran `exit 1`.
fn exit_1() -> Value {
    json!({"failed": true, "return_code": 1, "stderr": "", "stdout": "", "succeeded": false})
}

fn failed_task(task: &str, result: Value) -> Value {
    json!({
        "type": "error",
        "task_id": task,
        "message": "Execution failed. See result for details.",
        "result": result,
    })
}

fn fail_command() -> Value {
    json!({"type": "error", "task_id": "fail", "message": "Execution failed. See result for details."})
}

fn cases() -> Vec<Case> {
    let thanos = "Thanos, All your base are belong to us!";
    let unicode = "床前明月光 疑是地上霜 舉頭望明月 低頭思故鄉";
    let members = ["Lakshmi", "Lindsay", "Tomaz", "Matt", "Drew"];
    let futile: Vec<String> = members
        .iter()
        .map(|m| format!("{m}, resistance is futile!"))
        .collect();
    let json_str = r#"{"foo": {"bar": "foobar"}}"#;
    // test_wiring_functions_task.py: `task()` with Orquesta's routes, and
    // a boolean written into text as Python writes it.
    let task_functions = json!({"output": {
        "last_task4_result": "False",
        "task9__1__parent": "task8__1",
        "task9__2__parent": "task8__2",
        "that_task_by_name": "task1",
        "this_task_by_name": "task1",
        "this_task_no_arg": "task1",
    }});
    let json_obj = json!({"foo": {"bar": "foobar"}});
    let yaml_str = "foo:\n  bar: foobar\n";
    let data_functions = json!({
        "data_json_str_1": json_str,
        "data_json_str_2": json_str,
        "data_json_str_3": json_str,
        "data_json_obj_1": json_obj,
        "data_json_obj_2": json_obj,
        "data_json_obj_3": json_obj,
        "data_json_obj_4": json_obj,
        "data_yaml_str_1": yaml_str,
        "data_yaml_str_2": yaml_str,
        "data_query_1": ["foobar"],
        "data_none_str": "%*****__%NONE%__*****%",
        "data_str": "foobar",
    });
    let mut jinja_data_functions = data_functions.clone();
    jinja_data_functions["data_pipe_str_1"] = json!(json_str);
    jinja_data_functions["data_list_str"] = json!("- a: 1\n  b: 2\n- x: 3\n  y: 4\n");
    let regex =
        json!({"match": true, "replace": "wxyz", "search": true, "substring": "668 Infinite Dr"});
    let version = json!({
        "compare_equal": 0,
        "compare_more_than": -1,
        "compare_less_than": 1,
        "equal": true,
        "more_than": false,
        "less_than": false,
        "match": true,
        "bump_major": "1.0.0",
        "bump_minor": "0.11.0",
        "bump_patch": "0.10.1",
        "strip_patch": "0.10",
    });
    let message = "$%#&@#$!!!";
    vec![
        case(
            "examples.orquesta-test-yaql-task-functions",
            json!({}),
            "succeeded",
            task_functions.clone(),
        ),
        case(
            "examples.orquesta-test-jinja-task-functions",
            json!({}),
            "succeeded",
            task_functions,
        ),
        // test_wiring.py
        case(
            "examples.orquesta-sequential",
            json!({"name": "Thanos"}),
            "succeeded",
            json!({"output": {"greeting": thanos}}),
        ),
        case(
            "examples.orquesta-join",
            json!({}),
            "succeeded",
            json!({"output": {"messages": [
                "Fee fi fo fum",
                "I smell the blood of an English man",
                "Be alive, or be he dead",
                "I'll grind his bones to make my bread",
            ]}}),
        ),
        case(
            "examples.orquesta-rollback-retry",
            json!({}),
            "succeeded",
            json!({"output": null}),
        ),
        case(
            "examples.orquesta-test-action-less-tasks",
            json!({"name": "Thanos"}),
            "succeeded",
            json!({"output": {"greeting": thanos.to_uppercase()}}),
        ),
        case(
            "examples.orquesta-output-on-error",
            json!({}),
            "failed",
            json!({"errors": [failed_task("task2", exit_1())], "output": {"progress": 25}}),
        ),
        case(
            "examples.orquesta-test-field-escaping",
            json!({}),
            "succeeded",
            json!({"output": {
                "wf.hostname.with.periods": {
                    "hostname.domain.tld": "vars.value.with.periods",
                    "hostname2.domain.tld": {"stdout": "vars.nested.value.with.periods"},
                },
                "wf.output.with.periods": "vars.nested.value.with.periods",
            }}),
        ),
        // test_wiring_data_flow.py
        case(
            "examples.orquesta-data-flow",
            json!({"a1": "fee fi fo fum"}),
            "succeeded",
            json!({"output": {"a5": "fee fi fo fum", "b5": "fee fi fo fum"}}),
        ),
        case(
            "examples.orquesta-data-flow",
            json!({"a1": unicode}),
            "succeeded",
            json!({"output": {"a5": unicode, "b5": unicode}}),
        ),
        case(
            "examples.orquesta-sequential",
            json!({"name": "薩諾斯"}),
            "succeeded",
            json!({"output": {"greeting": "薩諾斯, All your base are belong to us!"}}),
        ),
        // test_wiring_delay.py
        case(
            "examples.orquesta-delay",
            json!({"name": "Thanos", "delay": 1}),
            "succeeded",
            json!({"output": {"greeting": thanos}}),
        ),
        // test_wiring_error_handling.py
        case(
            "examples.orquesta-remediate-then-fail",
            json!({}),
            "failed",
            json!({"errors": [failed_task("task1", exit_1()), fail_command()], "output": null}),
        ),
        case(
            "examples.orquesta-error-handling-fail-manually",
            json!({"cmd": "exit 1"}),
            "failed",
            json!({
                "errors": [failed_task("task1", exit_1()), fail_command()],
                "output": {"message": message},
            }),
        ),
        case(
            "examples.orquesta-error-handling-continue",
            json!({"cmd": "exit 1"}),
            "failed",
            json!({"errors": [failed_task("task1", exit_1())], "output": {"message": message}}),
        ),
        case(
            "examples.orquesta-error-handling-noop",
            json!({"cmd": "exit 1"}),
            "succeeded",
            json!({"output": {"message": message}}),
        ),
        // test_wiring_functions.py
        case(
            "examples.orquesta-test-yaql-data-functions",
            json!({}),
            "succeeded",
            json!({"output": data_functions}),
        ),
        case(
            "examples.orquesta-test-jinja-data-functions",
            json!({}),
            "succeeded",
            json!({"output": jinja_data_functions}),
        ),
        case(
            "examples.orquesta-test-yaql-path-functions",
            json!({}),
            "succeeded",
            json!({"output": {"basename": "file.txt", "dirname": "/path/to/some"}}),
        ),
        case(
            "examples.orquesta-test-jinja-path-functions",
            json!({}),
            "succeeded",
            json!({"output": {"basename": "file.txt", "dirname": "/path/to/some"}}),
        ),
        case(
            "examples.orquesta-test-yaql-regex-functions",
            json!({}),
            "succeeded",
            json!({"output": regex}),
        ),
        case(
            "examples.orquesta-test-jinja-regex-functions",
            json!({}),
            "succeeded",
            json!({"output": regex}),
        ),
        case(
            "examples.orquesta-test-yaql-time-functions",
            json!({}),
            "succeeded",
            json!({"output": {"time": "3h25m45s"}}),
        ),
        case(
            "examples.orquesta-test-jinja-time-functions",
            json!({}),
            "succeeded",
            json!({"output": {"time": "3h25m45s"}}),
        ),
        case(
            "examples.orquesta-test-yaql-version-functions",
            json!({}),
            "succeeded",
            json!({"output": version}),
        ),
        case(
            "examples.orquesta-test-jinja-version-functions",
            json!({}),
            "succeeded",
            json!({"output": version}),
        ),
        // test_wiring_with_items.py
        case(
            "examples.orquesta-with-items",
            json!({"members": members}),
            "succeeded",
            json!({"output": {"items": futile}}),
        ),
        case(
            "examples.orquesta-test-subworkflow-empty-with-items",
            json!({}),
            "succeeded",
            json!({"output": null}),
        ),
        // test_wiring_error_handling.py
        case(
            "examples.orquesta-fail-input-rendering",
            json!({}),
            "failed",
            json!({"errors": [{"type": "error", "message": ABS_VALUE}], "output": null}),
        ),
        case(
            "examples.orquesta-fail-vars-rendering",
            json!({}),
            "failed",
            json!({"errors": [{"type": "error", "message": ABS_VALUE}], "output": null}),
        ),
        case(
            "examples.orquesta-fail-output-rendering",
            json!({"name": "Thanos"}),
            "failed",
            json!({"errors": [{"type": "error", "message": ABS_VALUE}], "output": null}),
        ),
        case(
            "examples.orquesta-fail-task-transition",
            json!({"name": "Thanos"}),
            "failed",
            json!({"errors": [{
                "type": "error",
                "message": "YaqlEvaluationException: Unable to resolve key 'value' in expression '<% succeeded() and result().value %>' from context.",
                "task_transition_id": "task2__t0",
                "task_id": "task1",
                "route": 0,
            }], "output": {"greeting": null}}),
        ),
        case(
            "examples.orquesta-fail-task-publish",
            json!({"name": "Thanos"}),
            "failed",
            json!({"errors": [{
                "type": "error",
                "message": "YaqlEvaluationException: Unable to resolve key 'value' in expression '<% result().value %>' from context.",
                "task_transition_id": "task2__t0",
                "task_id": "task1",
                "route": 0,
            }], "output": {"greeting": null}}),
        ),
        case(
            "examples.orquesta-fail-inspection-task-contents",
            json!({"name": "Thanos"}),
            "failed",
            json!({"errors": [
                {
                    "type": "content",
                    "message": "The action reference \"echo\" is not formatted correctly.",
                    "schema_path": "properties.tasks.patternProperties.^\\w+$.properties.action",
                    "spec_path": "tasks.task1.action",
                },
                {
                    "type": "content",
                    "message": "The action \"core.echoz\" is not registered in the database.",
                    "schema_path": "properties.tasks.patternProperties.^\\w+$.properties.action",
                    "spec_path": "tasks.task2.action",
                },
                {
                    "type": "content",
                    "message": "Action \"core.echo\" is missing required input \"message\".",
                    "schema_path": "properties.tasks.patternProperties.^\\w+$.properties.input",
                    "spec_path": "tasks.task3.input",
                },
                {
                    "type": "content",
                    "message": "Action \"core.echo\" has unexpected input \"messages\".",
                    "schema_path": "properties.tasks.patternProperties.^\\w+$.properties.input.patternProperties.^\\w+$",
                    "spec_path": "tasks.task3.input.messages",
                },
            ], "output": null}),
        ),
        // test_inspection_error: Orquesta's syntax, expression and context
        // errors with StackStorm's content errors, before anything runs.
        case(
            "examples.orquesta-fail-inspection",
            json!({}),
            "failed",
            json!({"errors": [
                {
                    "type": "content",
                    "message": "The action \"std.noop\" is not registered in the database.",
                    "schema_path": "properties.tasks.patternProperties.^\\w+$.properties.action",
                    "spec_path": "tasks.task3.action",
                },
                {
                    "type": "context",
                    "language": "yaql",
                    "expression": "<% ctx().foobar %>",
                    "message": "Variable \"foobar\" is referenced before assignment.",
                    "schema_path": "properties.tasks.patternProperties.^\\w+$.properties.input",
                    "spec_path": "tasks.task1.input",
                },
                {
                    "type": "expression",
                    "language": "yaql",
                    "expression": "<% <% succeeded() %>",
                    "message": "Parse error: unexpected '<' at position 0 of expression '<% succeeded()'",
                    "schema_path": "properties.tasks.patternProperties.^\\w+$.properties.next.items.properties.when",
                    "spec_path": "tasks.task2.next[0].when",
                },
                {
                    "type": "syntax",
                    "message": "[{'cmd': 'echo <% ctx().macro %>'}] is not valid under any of the given schemas",
                    "schema_path": "properties.tasks.patternProperties.^\\w+$.properties.input.oneOf",
                    "spec_path": "tasks.task2.input",
                },
            ], "output": null}),
        ),
        case(
            "examples.orquesta-fail-start-task",
            json!({"name": "Thanos"}),
            "failed",
            json!({"errors": [
                {
                    "type": "error",
                    "message": "YaqlEvaluationException: Unable to evaluate expression '<% ctx().name.value %>'. NoFunctionRegisteredException: Unknown function \"#property#value\"",
                    "task_id": "task1",
                    "route": 0,
                },
                {
                    "type": "error",
                    "message": "YaqlEvaluationException: Unable to resolve key 'greeting' in expression '<% ctx().greeting %>' from context.",
                },
            ], "output": null}),
        ),
        // test_wiring_functions_task.py
        case(
            "examples.orquesta-test-yaql-task-nonexistent",
            json!({}),
            "failed",
            json!({"errors": [{
                "type": "error",
                "message": "YaqlEvaluationException: Unable to evaluate expression '<% task(\"task0\") %>'. ExpressionEvaluationException: Unable to find task execution for \"task0\".",
                "task_transition_id": "continue__t0",
                "task_id": "task1",
                "route": 0,
            }], "output": null}),
        ),
        case(
            "examples.orquesta-test-jinja-task-nonexistent",
            json!({}),
            "failed",
            json!({"errors": [{
                "type": "error",
                "message": "JinjaEvaluationException: Unable to evaluate expression '{{ task(\"task0\") }}'. ExpressionEvaluationException: Unable to find task execution for \"task0\".",
                "task_transition_id": "continue__t0",
                "task_id": "task1",
                "route": 0,
            }], "output": null}),
        ),
        // Read off the workflows (StackStorm's tests state no result).
        case(
            "examples.orquesta-with-items-concurrency",
            json!({}),
            "succeeded",
            json!({"output": {"items": futile[..3]}}),
        ),
        case(
            "examples.orquesta-basic",
            json!({"cmd": "echo hi"}),
            "succeeded",
            json!({"output": {"stdout": "hi"}}),
        ),
        case(
            "examples.orquesta-examples",
            json!({}),
            "succeeded",
            json!({"output": null}),
        ),
        case(
            "examples.orquesta-fail-manually",
            json!({}),
            "failed",
            json!({"errors": [failed_task("task1", exit_1()), fail_command()], "output": null}),
        ),
    ]
}

/// Creates an execution of `action`; returns its id and the status the
/// creation answered with.
async fn create(node: &TestNode, action: &str, input: &Value) -> Result<(String, String)> {
    let (status, created) = node
        .post(
            "executions",
            &json!({"action": action, "parameters": input}),
        )
        .await?;
    anyhow::ensure!(status == 201, "{action}: {status} {created}");
    let id = created["id"].as_str().context("id")?.to_string();
    let first = created["status"].as_str().unwrap_or_default().to_string();
    Ok((id, first))
}

async fn finished(node: &TestNode, id: &str) -> Result<Value> {
    poll(Duration::from_secs(90), || async {
        let (_, e) = node.get(&format!("executions/{id}")).await?;
        let done = matches!(
            e["status"].as_str(),
            Some("succeeded" | "failed" | "canceled" | "timeout" | "abandoned")
        );
        Ok(done.then_some(e))
    })
    .await
}

/// Every child execution of `id` (and their children) for task `task`.
async fn task_runs(node: &TestNode, id: &str, task: &str) -> Result<Vec<Value>> {
    let (_, list) = node.get(&format!("executions/{id}/children")).await?;
    Ok(list
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c["parent"] == id && c["context"]["orquesta"]["task_name"] == task)
        .collect())
}

#[tokio::test]
async fn stackstorms_examples_pack_registers_unchanged() -> Result<()> {
    let (node, _packs) = start().await?;
    let (status, actions) = node.get("actions?pack=examples&limit=-1").await?;
    assert_eq!(status, 200, "{actions}");
    let registered = actions.as_array().map(Vec::len).unwrap_or_default();
    let files =
        std::fs::read_dir(repo_root().join("tests/fixtures/st2-examples/examples/actions"))?
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.ends_with(".yaml") || name.ends_with(".yml")
            })
            .count();
    assert_eq!(registered, files, "one action per metadata file");
    let (_, rules) = node.get("rules?pack=examples").await?;
    assert_eq!(rules.as_array().map(Vec::len), Some(6), "{rules}");
    // Its action alias, and a command it matches.
    let (status, m) = node
        .post(
            "actionalias/match",
            &json!({"command": "run \"uname -a\" on web-1,web-2"}),
        )
        .await?;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["actionalias"]["ref"], "examples.remote_shell_cmd", "{m}");
    assert_eq!(m["representation"], "run {{cmd}} on {{hosts}}", "{m}");
    Ok(())
}

#[tokio::test]
async fn stackstorms_example_workflows_give_orquestas_results() -> Result<()> {
    let (node, _packs) = start().await?;
    let cases = cases();
    let mut started = Vec::new();
    for c in &cases {
        started.push(create(&node, c.action, &c.input).await?);
    }
    let mut differences = Vec::new();
    for (c, (id, first)) in cases.iter().zip(&started) {
        if !matches!(first.as_str(), "requested" | "scheduled") {
            differences.push(format!("{}: created as {first}", c.action));
        }
        let done = finished(&node, id).await?;
        let got = json!({"status": done["status"], "result": done["result"]});
        let want = json!({"status": c.status, "result": c.result});
        if got != want {
            differences.push(format!(
                "{} {}:\n  got  {got}\n  want {want}",
                c.action, c.input
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    Ok(())
}

#[tokio::test]
async fn the_st2_runtime_context_names_the_execution_and_the_public_api() -> Result<()> {
    let (node, _packs) = start().await?;
    let (id, first) = create(&node, "examples.orquesta-st2-ctx", &json!({})).await?;
    assert!(
        matches!(first.as_str(), "requested" | "scheduled"),
        "{first}"
    );
    let done = finished(&node, &id).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["result"],
        json!({"output": {"callback": format!("{PUBLIC_URL}/v1/executions/{id}")}})
    );
    Ok(())
}

#[tokio::test]
async fn stackstorms_example_workflows_run_their_tasks_as_orquesta_does() -> Result<()> {
    let (node, _packs) = start().await?;

    // test_wiring.py test_subworkflow.
    let (sub, _) = create(&node, "examples.orquesta-subworkflow", &json!({})).await?;
    // test_wiring_task_retry.py.
    let (retry, _) = create(&node, "examples.orquesta-task-retry", &json!({})).await?;
    let (exhausted, _) =
        create(&node, "examples.orquesta-task-retry-exhausted", &json!({})).await?;
    // test_wiring_with_items.py test_with_items_failure.
    let (items, _) = create(
        &node,
        "examples.orquesta-test-with-items-failure",
        &json!({}),
    )
    .await?;

    let done = finished(&node, &sub).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    for task in ["start", "finish"] {
        let runs = task_runs(&node, &sub, task).await?;
        assert_eq!(runs.len(), 1, "{task}");
        assert_eq!(runs[0]["status"], "succeeded");
    }
    let inner = task_runs(&node, &sub, "subworkflow").await?;
    assert_eq!(inner.len(), 1);
    assert_eq!(inner[0]["status"], "succeeded");
    let inner_id = inner[0]["id"].as_str().context("id")?;
    for task in ["task1", "task2", "task3"] {
        let runs = task_runs(&node, inner_id, task).await?;
        assert_eq!(runs.len(), 1, "{task}");
        assert_eq!(runs[0]["status"], "succeeded");
    }

    let done = finished(&node, &retry).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(task_runs(&node, &retry, "check").await?.len() > 1);

    let done = finished(&node, &exhausted).await?;
    assert_eq!(done["status"], "failed", "{done}");
    let checks: Vec<Value> = task_runs(&node, &exhausted, "check")
        .await?
        .iter()
        .map(|c| c["status"].clone())
        .collect();
    assert_eq!(checks, vec![json!("failed"); 3]);
    assert!(task_runs(&node, &exhausted, "delete").await?.is_empty());

    let done = finished(&node, &items).await?;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(task_runs(&node, &items, "task1").await?.len(), 10);
    Ok(())
}

/// test_wiring_with_items.py test_with_items_concurrency: each item waits
/// for its file to go; with concurrency 2, deleting files lets the next
/// items start, two at a time.
#[tokio::test]
async fn with_items_concurrency_starts_items_as_others_end() -> Result<()> {
    let (node, _packs) = start().await?;
    let dir = tempfile::tempdir()?;
    let files: Vec<PathBuf> = (0..5).map(|i| dir.path().join(format!("f{i}"))).collect();
    for f in &files {
        std::fs::write(f, "")?;
    }
    let (id, _) = create(
        &node,
        "examples.orquesta-test-with-items",
        &json!({"tempfiles": files, "concurrency": 2}),
    )
    .await?;
    let started = |n: usize| {
        let node = &node;
        let id = id.clone();
        poll(Duration::from_secs(30), move || {
            let id = id.clone();
            async move {
                let runs = task_runs(node, &id, "task1").await?.len();
                anyhow::ensure!(runs <= n, "{runs} items started, at most {n} expected");
                Ok((runs == n).then_some(()))
            }
        })
    };
    started(2).await?;
    for f in &files[..2] {
        std::fs::remove_file(f)?;
    }
    started(4).await?;
    for f in &files[2..4] {
        std::fs::remove_file(f)?;
    }
    started(5).await?;
    std::fs::remove_file(&files[4])?;
    let done = finished(&node, &id).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"], json!({"output": null}));
    Ok(())
}

/// The `python-script` runner runs the pack's Python actions: `isprime`
/// imports from the pack's `lib/` and returns a bare value.
#[tokio::test]
async fn a_python_action_of_the_pack_runs() -> Result<()> {
    let (node, _packs) = start().await?;
    for (value, prime) in [(7, true), (9, false)] {
        let (id, first) = create(&node, "examples.isprime", &json!({"value": value})).await?;
        assert!(
            matches!(first.as_str(), "requested" | "scheduled"),
            "{first}"
        );
        let done = finished(&node, &id).await?;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["result"]["result"], json!(prime), "{done}");
        assert_eq!(done["result"]["exit_code"], 0);
    }
    Ok(())
}

/// test_wiring_functions_st2kv.py: `st2kv()` reads system and user keys,
/// opens secrets with `decrypt`, fails on a missing key, and gives the
/// `default` instead when one is named.
#[tokio::test]
async fn st2kv_reads_the_datastore_as_in_stackstorm() -> Result<()> {
    let (node, _packs) = start().await?;
    let put = |name: &'static str, body: Value| {
        let node = &node;
        async move {
            let (status, answer) = node
                .call(
                    &node.http,
                    reqwest::Method::PUT,
                    &format!("keys/{name}"),
                    Some(&body),
                )
                .await?;
            anyhow::ensure!(status == 200 || status == 201, "{name}: {status} {answer}");
            anyhow::Ok(())
        }
    };
    put("lakshmi", json!({"value": "kanahansnasnasdlsajks"})).await?;
    put("winson", json!({"value": "SoDiamondEng", "scope": "user"})).await?;
    put("kami", json!({"value": "eggplant", "secret": true})).await?;
    let cases = [
        (
            "examples.orquesta-st2kv",
            json!({"key_name": "system.lakshmi"}),
            "succeeded",
            json!({"output": {"value": "kanahansnasnasdlsajks"}}),
        ),
        (
            "examples.orquesta-st2kv",
            json!({"key_name": "winson"}),
            "succeeded",
            json!({"output": {"value": "SoDiamondEng"}}),
        ),
        (
            "examples.orquesta-st2kv",
            json!({"key_name": "system.kami", "decrypt": true}),
            "succeeded",
            json!({"output": {"value": "eggplant"}}),
        ),
        (
            "examples.orquesta-st2kv-default",
            json!({"key_name": "system.matt", "decrypt": true, "default": "stone"}),
            "succeeded",
            json!({"output": {"value_from_yaql": "stone", "value_from_jinja": "stone"}}),
        ),
        (
            "examples.orquesta-st2kv-default",
            json!({"key_name": "system.matt", "decrypt": true, "default": ""}),
            "succeeded",
            json!({"output": {"value_from_yaql": "", "value_from_jinja": ""}}),
        ),
    ];
    for (action, input, status, result) in cases {
        let (id, _) = create(&node, action, &input).await?;
        let done = finished(&node, &id).await?;
        assert_eq!(
            json!({"status": done["status"], "result": done["result"]}),
            json!({"status": status, "result": result}),
            "{action} {input}"
        );
    }
    let (id, _) = create(
        &node,
        "examples.orquesta-st2kv",
        &json!({"key_name": "system.matt", "decrypt": true}),
    )
    .await?;
    let done = finished(&node, &id).await?;
    assert_eq!(done["status"], "failed", "{done}");
    let message = done["result"]["errors"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("The key \"matt\" does not exist in the StackStorm datastore."),
        "{done}"
    );
    Ok(())
}

/// Polls execution `id` until its status is `status`.
async fn reaches(node: &TestNode, id: &str, status: &str) -> Result<Value> {
    poll(Duration::from_secs(30), || async {
        let (_, e) = node.get(&format!("executions/{id}")).await?;
        Ok((e["status"] == status).then_some(e))
    })
    .await
}

/// The run of task `task` of workflow `id` once it is `status`.
async fn task_reaches(node: &TestNode, id: &str, task: &str, status: &str) -> Result<Value> {
    poll(Duration::from_secs(30), || async {
        let runs = task_runs(node, id, task).await?;
        Ok(runs.into_iter().find(|r| r["status"] == status))
    })
    .await
}

async fn respond(node: &TestNode, inquiry: &Value) -> Result<()> {
    let id = inquiry["id"].as_str().context("inquiry id")?;
    let (status, body) = node
        .call(
            &node.http,
            reqwest::Method::PUT,
            &format!("inquiries/{id}"),
            Some(&json!({"response": {"approved": true}})),
        )
        .await?;
    anyhow::ensure!(status == 200, "answering {id}: {status} {body}");
    Ok(())
}

/// test_wiring_inquiry.py: a `core.ask` task pauses its workflow (and the
/// workflows above it) until answered; then it runs on to success.
#[tokio::test]
async fn inquiries_pause_the_examples_until_answered() -> Result<()> {
    let (node, _packs) = start().await?;

    let (basic, _) = create(&node, "examples.orquesta-ask-basic", &json!({})).await?;
    reaches(&node, &basic, "paused").await?;
    respond(
        &node,
        &task_reaches(&node, &basic, "get_approval", "pending").await?,
    )
    .await?;
    let done = reaches(&node, &basic, "succeeded").await?;
    assert_eq!(done["result"], json!({"output": null}));

    let (consecutive, _) = create(&node, "examples.orquesta-ask-consecutive", &json!({})).await?;
    reaches(&node, &consecutive, "paused").await?;
    respond(
        &node,
        &task_reaches(&node, &consecutive, "get_approval", "pending").await?,
    )
    .await?;
    let second = task_reaches(&node, &consecutive, "get_confirmation", "pending").await?;
    reaches(&node, &consecutive, "paused").await?;
    respond(&node, &second).await?;
    reaches(&node, &consecutive, "succeeded").await?;

    let (parallel, _) = create(&node, "examples.orquesta-ask-parallel", &json!({})).await?;
    reaches(&node, &parallel, "paused").await?;
    respond(
        &node,
        &task_reaches(&node, &parallel, "ask_jack", "pending").await?,
    )
    .await?;
    task_reaches(&node, &parallel, "ask_jack", "succeeded").await?;
    respond(
        &node,
        &task_reaches(&node, &parallel, "ask_jill", "pending").await?,
    )
    .await?;
    task_reaches(&node, &parallel, "ask_jill", "succeeded").await?;
    reaches(&node, &parallel, "succeeded").await?;

    let (nested, _) = create(&node, "examples.orquesta-ask-nested", &json!({})).await?;
    reaches(&node, &nested, "paused").await?;
    let inner = task_reaches(&node, &nested, "get_approval", "paused").await?;
    let inner_id = inner["id"].as_str().context("id")?;
    respond(
        &node,
        &task_reaches(&node, inner_id, "get_approval", "pending").await?,
    )
    .await?;
    reaches(&node, &nested, "succeeded").await?;
    Ok(())
}

async fn set_status(node: &TestNode, id: &str, status: &str) -> Result<()> {
    let (code, body) = node
        .call(
            &node.http,
            reqwest::Method::PUT,
            &format!("executions/{id}"),
            Some(&json!({"status": status})),
        )
        .await?;
    anyhow::ensure!(code == 200, "{status} {id}: {code} {body}");
    Ok(())
}

/// Polls execution `id` until its status is one of `statuses`.
async fn reaches_any(node: &TestNode, id: &str, statuses: &[&str]) -> Result<Value> {
    poll(Duration::from_secs(30), || async {
        let (_, e) = node.get(&format!("executions/{id}")).await?;
        Ok(statuses.iter().any(|s| e["status"] == *s).then_some(e))
    })
    .await
}

/// test_wiring_pause_and_resume.py test_pause_and_resume,
/// test_pause_and_resume_cascade_to_subworkflow and _from_subworkflow: a
/// paused workflow lets its running task finish (a child workflow pauses
/// too), stays paused, and runs to success once resumed.
#[tokio::test]
async fn pause_and_resume_as_stackstorms_wiring_tests_drive_them() -> Result<()> {
    let (node, _packs) = start().await?;
    let dir = tempfile::tempdir()?;

    for (action, nested) in [
        ("examples.orquesta-test-pause", false),
        ("examples.orquesta-test-pause-subworkflow", true),
    ] {
        let file = dir.path().join(if nested { "nested" } else { "plain" });
        std::fs::write(&file, "")?;
        let (id, _) = create(&node, action, &json!({"tempfile": file})).await?;
        let task1 = task_reaches(&node, &id, "task1", "running").await?;
        let task1_id = task1["id"].as_str().context("id")?.to_string();
        set_status(&node, &id, "pausing").await?;
        reaches_any(&node, &id, &["pausing", "paused"]).await?;
        if nested {
            reaches_any(&node, &task1_id, &["pausing", "paused"]).await?;
        }
        std::fs::remove_file(&file)?;
        if nested {
            reaches(&node, &task1_id, "paused").await?;
        }
        reaches(&node, &id, "paused").await?;
        set_status(&node, &id, "resuming").await?;
        if nested {
            reaches(&node, &task1_id, "succeeded").await?;
        }
        let done = reaches(&node, &id, "succeeded").await?;
        assert_eq!(done["result"], json!({"output": null}), "{action}");
    }

    // test_pause_and_resume_cascade_from_subworkflow: pausing the child
    // leaves the parent running until the child is paused, then the
    // parent is paused too; resuming the child finishes both.
    let file = dir.path().join("child");
    std::fs::write(&file, "")?;
    let (id, _) = create(
        &node,
        "examples.orquesta-test-pause-subworkflow",
        &json!({"tempfile": file}),
    )
    .await?;
    let task1 = task_reaches(&node, &id, "task1", "running").await?;
    let task1_id = task1["id"].as_str().context("id")?.to_string();
    set_status(&node, &task1_id, "pausing").await?;
    reaches(&node, &id, "running").await?;
    reaches_any(&node, &task1_id, &["pausing", "paused"]).await?;
    std::fs::remove_file(&file)?;
    reaches(&node, &task1_id, "paused").await?;
    reaches(&node, &id, "paused").await?;
    set_status(&node, &task1_id, "resuming").await?;
    reaches(&node, &task1_id, "succeeded").await?;
    reaches(&node, &id, "succeeded").await?;

    // test_pause_from_1_of_2_subworkflows_and_resume_subworkflow_when_
    // workflow_paused: a paused child leaves its parent and the other
    // child running; the parent is paused once the other child is done,
    // and resuming the child alone finishes everything.
    let (file1, file2) = (dir.path().join("x"), dir.path().join("y"));
    std::fs::write(&file1, "")?;
    std::fs::write(&file2, "")?;
    let (id, _) = create(
        &node,
        "examples.orquesta-test-pause-subworkflows",
        &json!({"file1": file1, "file2": file2}),
    )
    .await?;
    let sub1 = task_reaches(&node, &id, "task1", "running").await?;
    let sub2 = task_reaches(&node, &id, "task2", "running").await?;
    let (sub1, sub2) = (
        sub1["id"].as_str().context("id")?.to_string(),
        sub2["id"].as_str().context("id")?.to_string(),
    );
    set_status(&node, &sub1, "pausing").await?;
    std::fs::remove_file(&file1)?;
    reaches(&node, &sub1, "paused").await?;
    let (_, parent) = node.get(&format!("executions/{id}")).await?;
    assert_eq!(parent["status"], "running", "{parent}");
    let (_, other) = node.get(&format!("executions/{sub2}")).await?;
    assert_eq!(other["status"], "running", "not asked to pause: {other}");
    std::fs::remove_file(&file2)?;
    reaches(&node, &sub2, "succeeded").await?;
    reaches(&node, &id, "paused").await?;
    set_status(&node, &sub1, "resuming").await?;
    reaches(&node, &sub1, "succeeded").await?;
    reaches(&node, &id, "succeeded").await?;

    // test_with_items_pause_and_resume: the items under way finish, and
    // the workflow is then `paused`, not over, until resumed.
    let files = [dir.path().join("item0"), dir.path().join("item1")];
    for f in &files {
        std::fs::write(f, "")?;
    }
    let (id, _) = create(
        &node,
        "examples.orquesta-test-with-items",
        &json!({"tempfiles": files}),
    )
    .await?;
    poll(Duration::from_secs(30), || async {
        Ok((task_runs(&node, &id, "task1").await?.len() == 2).then_some(()))
    })
    .await?;
    set_status(&node, &id, "pausing").await?;
    reaches(&node, &id, "pausing").await?;
    for f in &files {
        std::fs::remove_file(f)?;
    }
    reaches(&node, &id, "paused").await?;
    let items = task_runs(&node, &id, "task1").await?;
    assert!(
        items.iter().all(|i| i["status"] == "succeeded"),
        "{items:?}"
    );
    set_status(&node, &id, "resuming").await?;
    reaches(&node, &id, "succeeded").await?;
    Ok(())
}

/// test_wiring_rerun.py test_rerun_workflow, test_rerun_task and
/// test_rerun_task_of_workflow_already_succeeded: a failed
/// workflow re-run whole, or from its failed task, succeeds once the cause
/// is gone.
#[tokio::test]
async fn a_failed_example_reruns_whole_or_from_its_failed_task() -> Result<()> {
    let (node, _packs) = start().await?;
    let dir = tempfile::tempdir()?;
    for (tasks, first_code) in [
        (json!([]), "1"),
        (json!(["task2"]), "1"),
        (json!(["task2"]), "0"),
    ] {
        let file = dir.path().join("code");
        std::fs::write(&file, first_code)?;
        let (id, _) = create(
            &node,
            "examples.orquesta-test-rerun",
            &json!({"tempfile": file}),
        )
        .await?;
        let first = finished(&node, &id).await?;
        let want = if first_code == "1" {
            "failed"
        } else {
            "succeeded"
        };
        assert_eq!(first["status"], want);
        std::fs::write(&file, "0")?;
        let (status, again) = node
            .post(&format!("executions/{id}/re_run"), &json!({"tasks": tasks}))
            .await?;
        assert_eq!(status, 201, "{again}");
        let again_id = again["id"].as_str().context("id")?;
        assert_ne!(again_id, id);
        // test_rerun_workflow: a new workflow execution; test_rerun_task
        // and _of_workflow_already_succeeded: the same one, continued.
        let workflow_execution = &first["context"]["workflow_execution"];
        assert_eq!(workflow_execution, &json!(id));
        let same = again["context"]["workflow_execution"] == *workflow_execution;
        assert_eq!(same, tasks != json!([]), "{again}");
        let done = reaches(&node, again_id, "succeeded").await?;
        assert_eq!(done["result"], json!({"output": null}), "{tasks}");
    }
    Ok(())
}

/// test_wiring_rerun.py test_rerun_and_reset_with_items_task: re-running
/// a with-items task with `reset` runs every item again, and
/// test_rerun_and_resume_with_items_task: without it only the two items
/// that failed run again.
#[tokio::test]
async fn a_with_items_example_reruns_every_item_when_reset_else_the_failed_ones() -> Result<()> {
    let (node, _packs) = start().await?;
    let dir = tempfile::tempdir()?;
    for (reset, rerun) in [(json!(["task1"]), 4), (json!([]), 2)] {
        let file = dir.path().join("code");
        std::fs::write(&file, "1")?;
        let (id, _) = create(
            &node,
            "examples.orquesta-test-rerun-with-items",
            &json!({"tempfile": file}),
        )
        .await?;
        reaches(&node, &id, "failed").await?;
        std::fs::write(&file, "0")?;
        let (status, again) = node
            .post(
                &format!("executions/{id}/re_run"),
                &json!({"tasks": ["task1"], "reset": reset}),
            )
            .await?;
        assert_eq!(status, 201, "{again}");
        let again_id = again["id"].as_str().context("id")?.to_string();
        reaches(&node, &again_id, "succeeded").await?;
        let runs = task_runs(&node, &again_id, "task1").await?;
        assert_eq!(runs.len(), rerun, "reset {reset}: {runs:?}");
        assert!(runs.iter().all(|r| r["status"] == "succeeded"));
    }
    Ok(())
}

/// test_wiring_delay.py test_task_delay_workflow_cancellation and
/// test_task_delay_task_cancellation: a task with a delay is `delayed`
/// while it waits; canceling the workflow, or the task itself, cancels
/// both.
#[tokio::test]
async fn a_delayed_task_waits_delayed_and_cancels() -> Result<()> {
    let (node, _packs) = start().await?;
    for cancel_the_task in [false, true] {
        let (id, _) = create(
            &node,
            "examples.orquesta-delay",
            &json!({"name": "Thanos", "delay": 300}),
        )
        .await?;
        let task1 = task_reaches(&node, &id, "task1", "delayed").await?;
        let task1_id = task1["id"].as_str().context("id")?.to_string();
        let target = if cancel_the_task { &task1_id } else { &id };
        let r = node
            .http
            .delete(format!("{}/executions/{target}", node.base))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        reaches(&node, &task1_id, "canceled").await?;
        let done = reaches(&node, &id, "canceled").await?;
        assert_eq!(done["result"], json!({"output": null}));
    }
    Ok(())
}

/// test_wiring_cancel.py test_cancellation and
/// test_cancellation_cascade_up_to_workflow_with_other_subworkflow: a
/// canceled workflow lets its running action finish (it stays `canceling`
/// until then, and the action succeeds); canceling one of two child
/// workflows cascades up to the parent and across to the other child.
#[tokio::test]
async fn cancel_lets_running_actions_finish_and_cascades_up_and_across() -> Result<()> {
    let (node, _packs) = start().await?;
    let dir = tempfile::tempdir()?;
    let cancel = |id: String| {
        let node = &node;
        async move {
            let r = node
                .http
                .delete(format!("{}/executions/{id}", node.base))
                .send()
                .await?;
            anyhow::ensure!(r.status() == 200, "cancel {id}: {}", r.status());
            anyhow::Ok(())
        }
    };

    let file = dir.path().join("plain");
    std::fs::write(&file, "")?;
    let (id, _) = create(
        &node,
        "examples.orquesta-test-cancel",
        &json!({"tempfile": file, "message": "foobar"}),
    )
    .await?;
    let task1 = task_reaches(&node, &id, "task1", "running").await?;
    cancel(id.clone()).await?;
    reaches(&node, &id, "canceling").await?;
    let (_, still) = node
        .get(&format!(
            "executions/{}",
            task1["id"].as_str().context("id")?
        ))
        .await?;
    assert_eq!(still["status"], "running", "the action is not killed");
    std::fs::remove_file(&file)?;
    let done = reaches(&node, &id, "canceled").await?;
    assert_eq!(done["result"], json!({"output": null}));
    task_reaches(&node, &id, "task1", "succeeded").await?;
    assert!(
        task_runs(&node, &id, "task2").await?.is_empty(),
        "nothing new starts"
    );

    let file = dir.path().join("nested");
    std::fs::write(&file, "")?;
    let (id, _) = create(
        &node,
        "examples.orquesta-test-cancel-subworkflows",
        &json!({"file1": file, "file2": file}),
    )
    .await?;
    let sub1 = task_reaches(&node, &id, "task1", "running").await?;
    let sub2 = task_reaches(&node, &id, "task2", "running").await?;
    let (sub1, sub2) = (
        sub1["id"].as_str().context("id")?.to_string(),
        sub2["id"].as_str().context("id")?.to_string(),
    );
    cancel(sub1.clone()).await?;
    reaches(&node, &sub1, "canceling").await?;
    reaches(&node, &id, "canceling").await?;
    reaches(&node, &sub2, "canceling").await?;
    std::fs::remove_file(&file)?;
    reaches(&node, &sub1, "canceled").await?;
    reaches(&node, &sub2, "canceled").await?;
    reaches(&node, &id, "canceled").await?;
    Ok(())
}

/// test_wiring_data_flow.py test_data_flow_big_data_size: a 100,000-char
/// value copied through input, vars, publishes and output (its workflow's
/// record passes NATS's 1 MiB message limit, so it is stored in parts)
/// comes back intact.
#[tokio::test]
async fn a_large_value_flows_through_a_workflow_intact() -> Result<()> {
    let (node, _packs) = start().await?;
    let data: String = (0..100_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    let (id, _) = create(&node, "examples.orquesta-data-flow", &json!({"a1": data})).await?;
    let done = finished(&node, &id).await?;
    assert_eq!(done["status"], "succeeded");
    assert!(
        done["result"] == json!({"output": {"a5": data, "b5": data}}),
        "the value changed on the way"
    );
    Ok(())
}
