use super::*;

const PACK: &str = "name: ops\ndescription: d\nversion: 0.1\nauthor: me\n";

fn pack(files: &[(&str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (rel, text) in files {
        let path = root.path().join("ops").join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    root
}

fn errors(files: &[(&str, &str)]) -> Vec<LoadError> {
    let root = pack(files);
    load_pack(&root.path().join("ops")).unwrap_err().errors
}

/// The single error of `file`, asserting there is exactly one.
fn only_error(files: &[(&str, &str)]) -> LoadError {
    let mut errs = errors(files);
    assert_eq!(errs.len(), 1, "{errs:?}");
    errs.remove(0)
}

#[test]
fn aliases_are_checked_with_file_line_and_field() {
    let root = pack(&[
        ("pack.yaml", PACK),
        (
            "aliases/run.yaml",
            "name: run\naction_ref: core.local\nformats:\n  - display: run <cmd>\n    representation:\n      - run {{cmd}}\nack:\n  format: 'ran {{ execution.id }}'\n",
        ),
    ]);
    let bundle = load_pack(&root.path().join("ops")).unwrap();
    let alias = &bundle.aliases[0];
    assert_eq!(
        (
            alias.reference(),
            alias.metadata_file.as_str(),
            alias.enabled
        ),
        ("ops.run".to_string(), "aliases/run.yaml", true)
    );
    assert_eq!(alias.patterns()[0].representation, "run {{cmd}}");

    let errs = errors(&[
        ("pack.yaml", PACK),
        (
            "aliases/a.yaml",
            "name: a\naction_ref: core.local\nformats:\n  - run {{cmd}}\n  - broken {{x}} (\n",
        ),
        (
            "aliases/b.yaml",
            "name: b\naction_ref: core.local\ncolour: red\nformats:\n  - run {{command}}\n",
        ),
        (
            "aliases/c.yaml",
            "name: c\naction_ref: nodot\nformats:\n  - run  {{cmd}}\nack:\n  enabled: maybe\n",
        ),
    ]);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let find = |needle: &str| {
        shown
            .iter()
            .find(|e| e.contains(needle))
            .unwrap_or_else(|| panic!("no error with {needle:?} in {shown:#?}"))
    };
    assert!(find("formats.1").starts_with("ops/aliases/a.yaml:5: formats.1: format string"));
    assert!(find("colour").starts_with("ops/aliases/b.yaml:3: colour: unknown field"));
    assert!(find("\"nodot\"").starts_with("ops/aliases/c.yaml:2: action_ref:"));
    assert!(find("ack.enabled").starts_with("ops/aliases/c.yaml:6: ack.enabled:"));
    assert_eq!(errs.len(), 4, "{shown:#?}");

    // The same format in two aliases (whitespace aside): ambiguous.
    let e = only_error(&[
        ("pack.yaml", PACK),
        (
            "aliases/a.yaml",
            "name: a\naction_ref: core.local\nformats:\n  - run {{cmd}}\n",
        ),
        (
            "aliases/b.yaml",
            "name: b\naction_ref: core.local\nformats:\n  - \"run   {{cmd}}\"\n",
        ),
    ]);
    assert_eq!(
        e.to_string(),
        "ops/aliases/b.yaml:4: formats.0: format \"run   {{cmd}}\" is also a format of alias ops.a (aliases/a.yaml): every command it matches would be ambiguous"
    );
}

#[test]
fn loads_a_complete_pack() {
    let root = pack(&[
        ("pack.yaml", PACK),
        (
            "actions/hello.yaml",
            "name: hello\nrunner_type: local-shell-script\nentry_point: hello.sh\n\
             parameters:\n  who:\n    type: string\n    position: 0\n    default: world\n",
        ),
        ("actions/hello.sh", "#!/bin/sh\necho hi $1\n"),
        (
            "rules/on_hook.yaml",
            "name: on_hook\npack: ops\nenabled: true\ntrigger:\n  type: core.st2.webhook\n  parameters:\n    url: hook\n\
             criteria:\n  trigger.body.x:\n    type: eq\n    pattern: '{{ 1 + 1 }}'\naction:\n  ref: ops.hello\n  parameters:\n    who: '{{ trigger.body.who }}'\n",
        ),
        ("triggers/event.yaml", "name: event\npayload_schema:\n  type: object\n"),
        (
            "sensors/watch.yaml",
            "class_name: Watch\nentry_point: watch.py\npoll_interval: 20\ntrigger_types:\n  - name: watched\n    description: seen\n",
        ),
        ("sensors/watch.py", "class Watch: pass\n"),
        (
            "aliases/hello.yaml",
            "name: hello\naction_ref: ops.hello\nformats:\n  - greet {{who=world}}\n",
        ),
        ("README.md", "not yaml"),
    ]);
    let bundle = load_pack(&root.path().join("ops")).unwrap();
    assert_eq!(bundle.pack.pack_ref, "ops", "ref defaults to a valid name");
    assert_eq!(bundle.pack.version, "0.1.0");
    assert!(Path::new(&bundle.path).is_absolute());
    let action = &bundle.actions[0];
    assert_eq!(action.reference(), "ops.hello");
    assert!(action.enabled);
    assert_eq!(action.metadata_file, "actions/hello.yaml");
    assert_eq!(action.parameters["who"].position, Some(0));
    let rule = &bundle.rules[0];
    assert_eq!(rule.reference(), "ops.on_hook");
    assert_eq!(rule.trigger.parameters["url"], "hook");
    assert_eq!(rule.criteria["trigger.body.x"].operator, "eq");
    let names: Vec<&str> = bundle
        .trigger_types
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(names, ["event", "watched"]);
    assert_eq!(bundle.trigger_types[1].metadata_file, "sensors/watch.yaml");
    let sensor = &bundle.sensors[0];
    assert_eq!(sensor.reference(), "ops.Watch");
    assert!(sensor.enabled);
    assert_eq!(sensor.poll_interval, Some(20));
    assert_eq!(sensor.trigger_types, ["ops.watched"]);
    assert_eq!(
        sensor.file(Path::new(&bundle.path)),
        Path::new(&bundle.path).join("sensors/watch.py")
    );
}

#[test]
fn sensor_metadata_is_checked() {
    let errs = errors(&[
        ("pack.yaml", PACK),
        (
            "sensors/s.yaml",
            "class_name: 9S\nentry_point: gone.py\npoll_interval: 1\n",
        ),
        ("sensors/t.yaml", "entry_point: t.py\n"),
        ("sensors/t.py", ""),
    ]);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 4, "{shown:#?}");
    assert!(shown[0].contains("s.yaml:1: class_name: \"9S\" is not a Python class name"));
    assert!(shown[1].contains("s.yaml:2: entry_point: \"gone.py\": no such file"));
    assert!(
        shown[2].contains("s.yaml:3: poll_interval: Minimum possible poll_interval is 4 seconds")
    );
    assert!(shown[3].contains("t.yaml: class_name: missing"));
}

#[test]
fn notify_is_checked_against_stackstorms_schema() {
    let action = |notify: &str| format!("name: a\nrunner_type: local-shell-cmd\nnotify:\n{notify}");
    let good = action("  on-failure:\n    message: m\n    data: {x: 1}\n    routes: [ops]\n");
    let root = pack(&[("pack.yaml", PACK), ("actions/a.yaml", &good)]);
    let bundle = load_pack(&root.path().join("ops")).unwrap();
    assert_eq!(
        bundle.actions[0].notify.as_ref().unwrap()["on-failure"]["routes"][0],
        "ops"
    );
    let fields = |notify: &str| -> Vec<String> {
        errors(&[("pack.yaml", PACK), ("actions/a.yaml", &action(notify))])
            .into_iter()
            .map(|e| e.field.unwrap_or_default())
            .collect()
    };
    assert_eq!(fields("  on-fail:\n    routes: [x]\n"), ["notify.on-fail"]);
    assert_eq!(
        fields("  on-success:\n    message: [1]\n    data: 2\n    routes: ops\n    via: x\n"),
        [
            "notify.on-success.via",
            "notify.on-success.message",
            "notify.on-success.data",
            "notify.on-success.routes"
        ]
    );
}

#[test]
fn a_workflow_with_inspection_errors_registers_and_its_problems_are_reported() {
    // As in StackStorm the workflow registers (its execution fails with
    // the problems when it runs); registration reports them as warnings.
    let root = pack(&[
        ("pack.yaml", PACK),
        (
            "actions/flow.yaml",
            "name: flow\nrunner_type: orquesta\nentry_point: workflows/flow.yaml\n",
        ),
        (
            "actions/workflows/flow.yaml",
            "version: 1.0\ntasks:\n  a:\n    action: core.noop\n    next:\n      - do: b\n",
        ),
    ]);
    let dir = root.path().join("ops");
    let bundle = load_pack(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bundle.actions[0].name, "flow");
    let warnings = inspect_workflows(&dir, &bundle);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(
        warnings[0].file,
        Path::new("ops/actions/workflows/flow.yaml")
    );
    assert_eq!(warnings[0].line, Some(6));
    assert_eq!(warnings[0].field.as_deref(), Some("tasks.a.next[0].do"));
    assert!(
        warnings[0].message.contains("\"b\" is not defined"),
        "{warnings:?}"
    );
}

#[test]
fn a_rule_without_enabled_is_disabled() {
    let rule = parse_rule(
        Some("ops"),
        "name: r\ntrigger:\n  type: ops.event\naction:\n  ref: core.noop\n",
    )
    .unwrap();
    assert!(!rule.enabled);
    assert_eq!(rule.pack, "ops");
}

#[test]
fn the_shipped_packs_load() {
    let packs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs");
    for name in ["core", "examples"] {
        let bundle = load_pack(&packs.join(name)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bundle.pack.pack_ref, name);
        assert!(!bundle.actions.is_empty());
    }
}

#[test]
fn reports_every_error_of_every_file_at_once() {
    let errs = errors(&[
        ("pack.yaml", PACK),
        ("rules/broken.yaml", "name: broken\ntrigger: [unclosed\n"),
        (
            "actions/bad.yaml",
            "name: bad\nrunner_type: teleport\ncolour: blue\nparameters:\n  bad-name:\n    type: str\n",
        ),
    ]);
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 5, "{text:#?}");
    assert!(text
        .iter()
        .any(|t| t.starts_with("ops/rules/broken.yaml:") && t.contains("invalid YAML")));
    for (field, line, needle) in [
        ("runner_type", 2, "teleport"),
        ("colour", 3, "unknown field"),
        ("parameters.bad-name", 5, "letters, digits"),
        ("parameters.bad-name.type", 6, "\"str\" is not one of"),
    ] {
        let e = errs
            .iter()
            .find(|e| e.field.as_deref() == Some(field))
            .unwrap_or_else(|| panic!("no error for {field}: {text:#?}"));
        assert_eq!(e.file, Path::new("ops/actions/bad.yaml"));
        assert_eq!(e.line, Some(line), "{e}");
        assert!(e.message.contains(needle), "{e}");
    }
}

#[test]
fn the_summary_names_the_pack_and_counts() {
    let root = pack(&[("actions/a.yaml", "name: a\nrunner_type: noop\n")]);
    let err = load_pack(&root.path().join("ops")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("has 1 error:"), "{text}");
    assert!(text.contains("ops/pack.yaml: missing"), "{text}");
}

#[test]
fn yaml_syntax_errors_carry_the_parser_line() {
    let e = only_error(&[
        ("pack.yaml", PACK),
        ("rules/r.yaml", "name: r\n\ntrigger:\n  type: [x\n"),
    ]);
    assert_eq!(e.line, Some(5), "{e}");
    assert!(e.message.starts_with("invalid YAML"), "{e}");
}

#[test]
fn action_checks() {
    let cases: &[(&str, &str, &str)] = &[
        ("name: a\nrunner_type: local-shell-script\nentry_point: gone.sh\n", "entry_point", "actions/gone.sh does not exist"),
        ("name: a\nrunner_type: local-shell-script\n", "entry_point", "needs an entry_point"),
        ("name: a\npack: other\nrunner_type: noop\n", "pack", "in pack \"ops\""),
        ("runner_type: noop\n", "", "missing required field `name`"),
        ("name: a.b\nrunner_type: noop\n", "name", "dots"),
        ("name: a\n", "", "`runner_type`"),
        ("name: a\nrunner_type: noop\nparameters:\n  x:\n    type: string\n    secret: maybe\n", "parameters.x.secret", "true or false"),
        ("name: a\nrunner_type: noop\nparameters:\n  x:\n    position: 0\n  y:\n    position: 0\n", "parameters.y.position", "also used"),
        ("name: a\nrunner_type: noop\nparameters:\n  x:\n    tpye: string\n", "parameters.x.tpye", "unknown field"),
        ("name: a\nrunner_type: noop\nenabled: sometimes\n", "enabled", "invalid type"),
    ];
    for (text, field, needle) in cases {
        let e = only_error(&[("pack.yaml", PACK), ("actions/a.yaml", text)]);
        assert_eq!(e.field.as_deref().unwrap_or(""), *field, "{text}: {e}");
        assert!(e.message.contains(needle), "{text}: {e}");
    }
}

fn rule_with(trigger: &str, criteria: &str) -> String {
    format!("name: r\ntrigger:\n{trigger}\ncriteria:\n{criteria}\naction:\n  ref: core.noop\n")
}

#[test]
fn rule_checks() {
    let hook = "  type: core.st2.webhook\n  parameters:\n    url: x";
    let cases: Vec<(String, &str, &str)> = vec![
        (rule_with(hook, "  trigger.x:\n    type: roughly"), "criteria.trigger.x.type", "roughly"),
        (rule_with(hook, "  trigger.x:\n    pattern: 1"), "criteria.trigger.x", "`type`"),
        (rule_with(hook, "  trigger.x:\n    type: search\n    pattern:\n      item.a:\n        type: equals\n        pattern: 1"), "criteria.trigger.x", "condition"),
        (rule_with(hook, "  trigger.x:\n    type: search\n    condition: any\n    pattern:\n      item.a:\n        type: nearly"), "criteria.trigger.x.pattern.item.a.type", "nearly"),
        (rule_with(hook, "  trigger.x:\n    type: eq\n    pattern: '{{ oops'"), "criteria.trigger.x.pattern", "template error"),
        (rule_with("  type: core.st2.webhook", "  {}"), "trigger.parameters", "needs parameter `url`"),
        (rule_with("  type: core.st2.IntervalTimer\n  parameters:\n    unit: fortnights\n    delta: 1", "  {}"), "trigger.parameters.unit", "not one of"),
        (rule_with("  type: core.st2.IntervalTimer\n  parameters:\n    unit: seconds\n    delta: 0", "  {}"), "trigger.parameters.delta", "positive"),
        (rule_with("  type: core.st2.IntervalTimer\n  parameters:\n    unit: seconds\n    delta: soon", "  {}"), "trigger.parameters.delta", "integer"),
        (rule_with("  type: core.st2.CronTimer\n  parameters:\n    hour: 25", "  {}"), "trigger.parameters.hour", "out of range 0-23"),
        (rule_with("  type: core.st2.CronTimer\n  parameters:\n    day_of_week: funday", "  {}"), "trigger.parameters.day_of_week", "funday"),
        (rule_with("  type: core.st2.DateTimer\n  parameters:\n    date: tomorrow", "  {}"), "trigger.parameters.date", "not a date"),
        (rule_with("  type: core.st2.CronTimer\n  parameters:\n    hour: 1\n    timezone: Mars/Olympus", "  {}"), "trigger.parameters.timezone", "time zone"),
        (rule_with("  type: core.st2.webhook\n  parameters:\n    url: x\n    port: 1", "  {}"), "trigger.parameters.port", "no parameter"),
        (rule_with("  type: webhook", "  {}"), "trigger.type", "pack.name"),
        ("name: r\ntrigger:\n  type: a.b\naction:\n  ref: nodot\n".into(), "action.ref", "pack.action"),
        ("name: r\ntrigger:\n  type: a.b\naction:\n  ref: core.local\n  parameters:\n    cmd: '{% if %}'\n".into(), "action.parameters.cmd", "template error"),
        ("name: r\ntrigger:\n  type: a.b\n".into(), "", "`action`"),
        ("name: r\ntype:\n  ref: sometimes\ntrigger:\n  type: a.b\naction:\n  ref: a.b\n".into(), "type.ref", "standard, backstop"),
    ];
    for (text, field, needle) in &cases {
        let e = only_error(&[("pack.yaml", PACK), ("rules/r.yaml", text)]);
        assert_eq!(e.field.as_deref().unwrap_or(""), *field, "{text}\n{e}");
        assert!(e.message.contains(needle), "{text}\n{e}");
    }
}

/// StackStorm's test `fixtures` pack names a rule `tests.interval_timer`:
/// its ref is `<pack>.tests.interval_timer`.
#[test]
fn a_rule_name_may_hold_dots() {
    let text = "name: tests.interval_timer\ntrigger:\n  type: a.b\naction:\n  ref: core.noop\n";
    let root = pack(&[("pack.yaml", PACK), ("rules/r.yaml", text)]);
    let bundle = load_pack(&root.path().join("ops")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bundle.rules[0].reference(), "ops.tests.interval_timer");
}

#[test]
fn criteria_errors_point_at_the_operator_line() {
    let text = rule_with(
        "  type: core.st2.webhook\n  parameters:\n    url: x",
        "  trigger.a:\n    type: eq\n    pattern: 1\n  trigger.b:\n    type: roughly",
    );
    let e = only_error(&[("pack.yaml", PACK), ("rules/r.yaml", &text)]);
    let line = text.lines().position(|l| l.contains("roughly")).unwrap() + 1;
    assert_eq!(e.line, Some(line), "{e}");
}

#[test]
fn manifest_checks() {
    let cases = [
        ("name: My Pack\nversion: 1.0.0\n", "name", "add `ref:`"),
        (
            "name: x\nref: Bad-Ref\nversion: 1.0.0\n",
            "ref",
            "lowercase",
        ),
        ("name: x\nversion: one\n", "version", "semantic version"),
        (
            "name: x\ndescription: d\n",
            "version",
            "missing required field `version`",
        ),
        ("description: no name\nversion: 1.0.0\n", "", "`name`"),
    ];
    for (text, field, needle) in cases {
        let e = only_error(&[("pack.yaml", text)]);
        assert_eq!(e.field.as_deref().unwrap_or(""), field, "{text}: {e}");
        assert!(e.message.contains(needle), "{text}: {e}");
    }
}

#[test]
fn duplicate_names_are_rejected() {
    let e = only_error(&[
        ("pack.yaml", PACK),
        ("actions/a.yaml", "name: same\nrunner_type: noop\n"),
        ("actions/b.yaml", "\nname: same\nrunner_type: noop\n"),
    ]);
    assert_eq!(e.file, Path::new("ops/actions/b.yaml"));
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("also defined in actions/a.yaml"), "{e}");
}

#[test]
fn sensor_trigger_types_are_checked() {
    let e = only_error(&[
        ("pack.yaml", PACK),
        (
            "sensors/s.yaml",
            "class_name: S\nentry_point: s.py\ntrigger_types:\n  - description: no name\n",
        ),
        ("sensors/s.py", ""),
    ]);
    assert!(e.message.contains("`name`"), "{e}");
    assert_eq!(e.field.as_deref(), Some("trigger_types.0"));
}

#[test]
fn config_schemas_load_in_stackstorms_dialect() {
    let schema = "---\napi_key:\n  type: string\n  secret: true\n  required: true\n\
                  hosts:\n  type: array\n  items:\n    type: object\n    properties:\n\
                  \x20     name:\n        type: string\n        required: true\n";
    let root = pack(&[("pack.yaml", PACK), ("config.schema.yaml", schema)]);
    let bundle = load_pack(&root.path().join("ops")).unwrap();
    let loaded = bundle.config_schema.unwrap();
    assert_eq!(loaded["api_key"]["secret"], true);
    assert_eq!(
        loaded["hosts"]["items"]["properties"]["name"]["required"],
        true
    );
    // StackStorm's own examples pack schema loads.
    let examples =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/st2-examples/examples");
    let schema = load_pack(&examples).unwrap().config_schema.unwrap();
    assert_eq!(schema["region"]["default"], "us-east-1");
}

#[test]
fn config_schema_errors_come_all_at_once() {
    let schema = "api_key:\n  type: str\n  secret: yes please\n\
                  region:\n  type: [string, integer]\n  requried: true\n\
                  nested:\n  type: object\n  properties:\n    inner:\n      typo: 1\n\
                  bad-name:\n  type: string\n";
    let errs = errors(&[("pack.yaml", PACK), ("config.schema.yaml", schema)]);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "ops/config.schema.yaml:2: api_key.type: \"str\" is not one of array, boolean, integer, null, number, object, string",
            "ops/config.schema.yaml:3: api_key.secret: must be true or false",
            "ops/config.schema.yaml:6: region.requried: unknown field \"requried\"; expected one of: type, description, default, required, secret, immutable, position, enum, items, additionalItems, properties, patternProperties, additionalProperties, dependencies, pattern, format, minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf, minLength, maxLength, minItems, maxItems, uniqueItems, minProperties, maxProperties, anyOf, oneOf, allOf, not, title, $schema, id",
            "ops/config.schema.yaml:5: region.type: a list of types is not supported; use anyOf",
            "ops/config.schema.yaml:11: nested.properties.inner.typo: unknown field \"typo\"; expected one of: type, description, default, required, secret, immutable, position, enum, items, additionalItems, properties, patternProperties, additionalProperties, dependencies, pattern, format, minimum, maximum, exclusiveMinimum, exclusiveMaximum, multipleOf, minLength, maxLength, minItems, maxItems, uniqueItems, minProperties, maxProperties, anyOf, oneOf, allOf, not, title, $schema, id",
            "ops/config.schema.yaml:12: bad-name: item name \"bad-name\" may only contain letters, digits and underscores",
        ]
    );
}

#[test]
fn an_empty_config_schema_is_an_error() {
    for text in ["", "---\n", "# nothing\n"] {
        let err = only_error(&[("pack.yaml", PACK), ("config.schema.yaml", text)]);
        assert_eq!(err.file, Path::new("ops/config.schema.yaml"));
        assert!(err.message.contains("empty and invalid"), "{err}");
    }
}

#[test]
fn line_lookup_follows_nesting_and_dotted_keys() {
    let text = "name: x\naction:\n  name: inner\ncriteria:\n  trigger.body.name:\n    type: eq\n";
    assert_eq!(line_of(text, "name"), Some(1));
    assert_eq!(line_of(text, "action.name"), Some(3));
    assert_eq!(line_of(text, "criteria.trigger.body.name.type"), Some(6));
    assert_eq!(line_of(text, "criteria.missing"), Some(4));
    assert_eq!(line_of(text, ""), None);
}
