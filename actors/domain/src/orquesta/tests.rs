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
        summary.contains(&(IssueKind::Syntax, "tasks.a.colour")),
        "{found:#?}"
    );
    assert!(
        summary.contains(&(IssueKind::Syntax, "tasks.c.join")),
        "{found:#?}"
    );
    assert!(
        summary.contains(&(IssueKind::Semantic, "tasks.a.next.0.do")),
        "{found:#?}"
    );
    assert!(
        summary.contains(&(IssueKind::Expression, "tasks.b.next.0.when")),
        "{found:#?}"
    );
    let colour = found
        .iter()
        .find(|i| i.spec_path == "tasks.a.colour")
        .unwrap();
    assert_eq!(colour.line, Some(5));
    let bad_do = found
        .iter()
        .find(|i| i.spec_path == "tasks.a.next.0.do")
        .unwrap();
    assert!(bad_do.message.contains("\"nowhere\""), "{bad_do:?}");
    let bad_expr = found
        .iter()
        .find(|i| i.kind == IssueKind::Expression)
        .unwrap();
    assert!(bad_expr.message.contains("position"), "{bad_expr:?}");
    assert_eq!(bad_expr.line, Some(11));
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
    assert_eq!(names, vec!["also_nope", "nope", "gone"], "{found:#?}");
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
    assert!(found[0].message.contains("no task can start"));
}

#[test]
fn top_level_shapes() {
    let found = issues("tasks: {}\nversion: 2\nextra: 1\n");
    let paths: Vec<&str> = found.iter().map(|i| i.spec_path.as_str()).collect();
    assert_eq!(paths, vec!["extra", "version", "tasks"], "{found:#?}");
    let found = issues("version: 1.0\ntasks:\n  a: [\n");
    assert_eq!(found[0].kind, IssueKind::Syntax);
    assert!(found[0].line.is_some(), "{found:#?}");
    let found = issues("version: 1.0\ntasks:\n  fail:\n    action: core.noop\n");
    assert!(found[0].message.contains("engine command"), "{found:#?}");
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
