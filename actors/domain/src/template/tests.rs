use super::kv::KvKey;
use super::*;
use serde_json::json;

/// A datastore held in memory.
#[derive(Default)]
struct MapKv(BTreeMap<KvKey, String>);

impl MapKv {
    fn with(mut self, scope: KvScope, name: &str, value: &str) -> Self {
        self.0.insert((scope, name.to_string()), value.to_string());
        self
    }
}

impl KeyValueLookup for MapKv {
    fn get(&self, scope: KvScope, name: &str) -> Option<String> {
        self.0.get(&(scope, name.to_string())).cloned()
    }
}

fn render(template: &str, ctx: Json) -> String {
    Renderer::new()
        .render_str(template, &ctx, &NoKeyValues)
        .unwrap_or_else(|e| panic!("{template}: {e}"))
}

fn value(template: &str, ctx: Json) -> Json {
    Renderer::new()
        .render_value(&json!(template), &ctx, &NoKeyValues)
        .unwrap_or_else(|e| panic!("{template}: {e}"))
}

#[test]
fn renders_trigger_fields() {
    let ctx = json!({"trigger": {"body": {"name": "st2"}}});
    assert_eq!(render("hello {{ trigger.body.name }}", ctx), "hello st2");
}

#[test]
fn strict_undefined_names_the_expression() {
    let err = Renderer::new()
        .render_str(
            "a\n{{ trigger.body.nmae }}",
            &json!({"trigger": {"body": {}}}),
            &NoKeyValues,
        )
        .unwrap_err();
    assert!(err.message.contains("undefined"), "{err}");
    assert!(err.message.contains("trigger.body.nmae"), "{err}");
    assert_eq!(err.line, Some(2));
    assert_eq!(err.template, "a\n{{ trigger.body.nmae }}");
    let err = Renderer::new()
        .render_value(&json!("{{ nope }}"), &json!({}), &NoKeyValues)
        .unwrap_err();
    assert!(err.message.contains("`nope`"), "{err}");
}

#[test]
fn syntax_errors_are_reported() {
    let r = Renderer::new();
    assert!(r.check_syntax("{{ a }}").is_ok());
    let err = r.check_syntax("{% if a %}").unwrap_err();
    assert!(err.message.contains("syntax"), "{err}");
    assert!(r.render_str("{{ a ", &json!({}), &NoKeyValues).is_err());
}

#[test]
fn trims_and_strips_blocks() {
    let t = "x\n    {% if true %}\n  y\n    {% endif %}\nz";
    assert_eq!(render(t, json!({})), "x\n  y\nz");
}

#[test]
fn prints_values_like_python() {
    let ctx = json!({"t": true, "f": false, "n": null, "i": 3, "x": 1.0, "l": ["a", 1],
                     "d": {"k": "it's"}});
    assert_eq!(
        render("{{t}} {{f}} {{n}} {{i}} {{x}} {{l}} {{d}}", ctx.clone()),
        "True False None 3 1.0 ['a', 1] {'k': \"it's\"}"
    );
    assert_eq!(render("{{ t | string }}", ctx), "True");
    assert_eq!(python_float(1e20), "1e+20");
    assert_eq!(python_float(1.5e-7), "1.5e-07");
    assert_eq!(python_float(0.1), "0.1");
    assert_eq!(python_float(-0.0), "-0.0");
}

#[test]
fn native_types_for_single_expressions() {
    let ctx = json!({"trigger": {"n": 5, "b": true, "l": [1, 2], "d": {"a": 1}, "s": "x"}});
    assert_eq!(value("{{ trigger.n }}", ctx.clone()), json!(5));
    assert_eq!(value("{{trigger.b}}", ctx.clone()), json!(true));
    assert_eq!(value("{{ trigger.l }}", ctx.clone()), json!([1, 2]));
    assert_eq!(value("{{- trigger.d -}}", ctx.clone()), json!({"a": 1}));
    assert_eq!(value("{{ trigger.n + 1 }}", ctx.clone()), json!(6));
    assert_eq!(value("{{ trigger.s }}", ctx.clone()), json!("x"));
    assert_eq!(value("{{ none }}", ctx.clone()), json!(null));
    assert!(value("{{ 5.0 }}", ctx.clone()).is_f64());
    assert_eq!(value("{{ 2 ** 70 }}", ctx.clone()), json!(2f64.powi(70)));
    // Anything else renders to text; a list in text stays text.
    assert_eq!(value("n={{ trigger.n }}", ctx.clone()), json!("n=5"));
    assert_eq!(value(" {{ trigger.n }}", ctx.clone()), json!(" 5"));
    assert_eq!(
        value("{{ trigger.n }}{{ trigger.n }}", ctx.clone()),
        json!("55")
    );
    assert_eq!(value("{{ trigger.l }} ", ctx.clone()), json!("[1, 2] "));
    assert_eq!(value("plain", ctx.clone()), json!("plain"));
}

#[test]
fn renders_nested_values_and_keys() {
    let r = Renderer::new();
    let ctx = json!({"a": 1, "k": "key"});
    let v = json!({"x": ["{{ a }}", "a={{ a }}", 2, null], "{{ k }}": {"y": "{{ a > 0 }}"}});
    assert_eq!(
        r.render_value(&v, &ctx, &NoKeyValues).unwrap(),
        json!({"x": [1, "a=1", 2, null], "key": {"y": true}})
    );
}

#[test]
fn datastore_values_are_read_lazily() {
    let kv = MapKv::default()
        .with(KvScope::System, "greeting", "hi")
        .with(KvScope::System, "a.b", "nested")
        .with(KvScope::System, "which", "greeting")
        .with(KvScope::User("alice".into()), "token", "s3cr3t");
    let r = Renderer::new();
    let ctx = json!({"action_context": {"user": "alice"}});
    let out = r
        .render_str(
            "{{ st2kv.system.greeting }} {{ st2kv.system.a.b }} [{{ st2kv.system.missing }}] \
             {{ st2kv.user.token | decrypt_kv }} {{ st2kv.system[st2kv.system.which] }}",
            &ctx,
            &kv,
        )
        .unwrap();
    assert_eq!(out, "hi nested [] s3cr3t hi");
    assert_eq!(
        r.render_value(&json!("{{ st2kv.system.missing }}"), &ctx, &kv)
            .unwrap(),
        json!("")
    );
    // api_user wins over user.
    let ctx = json!({"action_context": {"user": "bob", "api_user": "alice"}});
    assert_eq!(
        r.render_str("{{ st2kv.user.token }}", &ctx, &kv).unwrap(),
        "s3cr3t"
    );
    // Without a user, st2kv.user is undefined.
    assert!(r
        .render_str("{{ st2kv.user.token }}", &json!({}), &kv)
        .is_err());
    // decrypt_kv on a missing key names it.
    let err = r
        .render_str("{{ st2kv.system.nope | decrypt_kv }}", &ctx, &kv)
        .unwrap_err();
    assert!(err.message.contains("\"nope\" doesn't exist"), "{err}");
}

#[test]
fn lists_variables() {
    let vars = Renderer::new()
        .variables("echo {{ message }} {% set x = 1 %}{{ x }} {{ st2kv.system.k }}")
        .unwrap();
    assert_eq!(vars, ["message", "st2kv"].map(String::from).into());
}

#[test]
fn json_and_yaml_filters() {
    let ctx = json!({"d": {"b": [1, 2.5], "a": "é\"x"}, "s": "{\"k\": [1]}", "y": "k: [1, two]"});
    assert_eq!(
        render("{{ (s | from_json_string).k[0] }}", ctx.clone()),
        "1"
    );
    assert_eq!(
        render("{{ (y | from_yaml_string).k[1] }}", ctx.clone()),
        "two"
    );
    assert_eq!(
        render("{{ d | to_json_string(sort_keys=True) }}", ctx.clone()),
        r#"{"a": "\u00e9\"x","b": [1,2.5]}"#
    );
    assert_eq!(
        render("{{ d.b | to_json_string(2) }}", ctx.clone()),
        "[\n  1,\n  2.5\n]"
    );
    assert_eq!(render("{{ d.b | to_complex }}", ctx.clone()), "[1, 2.5]");
    assert_eq!(
        render("{{ d.a | json_escape }}", ctx.clone()),
        r#"\u00e9\"x"#
    );
    assert_eq!(
        render("{{ d.b | to_yaml_string }}", ctx.clone()),
        "- 1\n- 2.5\n"
    );
    assert_eq!(
        render("{{ d | to_yaml_string(indent=4) }}", ctx.clone()),
        "a: é\"x\nb:\n- 1\n- 2.5\n"
    );
    assert!(Renderer::new()
        .render_str("{{ 'nope' | from_json_string }}", &ctx, &NoKeyValues)
        .is_err());
}

#[test]
fn jsonpath_query_filter() {
    let ctx = json!({"d": {"hosts": [{"name": "a"}, {"name": "b"}]}});
    assert_eq!(
        value("{{ d | jsonpath_query('hosts[*].name') }}", ctx.clone()),
        json!(["a", "b"])
    );
    assert_eq!(
        value("{{ d | jsonpath_query('$.hosts[1].name') }}", ctx.clone()),
        json!(["b"])
    );
    assert_eq!(value("{{ d | jsonpath_query('nope') }}", ctx), json!(null));
}

#[test]
fn use_none_renders_null() {
    let ctx = json!({"n": null, "v": 1});
    assert_eq!(value("{{ n | use_none }}", ctx.clone()), json!(null));
    assert_eq!(value("{{ v | use_none }}", ctx.clone()), json!(1));
    assert_eq!(render("{{ n | use_none }}", ctx), NONE_MAGIC_VALUE);
}

#[test]
fn regex_filters() {
    let ctx = json!({"s": "v1.2.3-rc", "n": 42});
    assert_eq!(render("{{ s | regex_match('v\\d') }}", ctx.clone()), "True");
    assert_eq!(render("{{ s | regex_match('\\d') }}", ctx.clone()), "False");
    assert_eq!(
        render("{{ s | regex_match('V1', ignorecase=True) }}", ctx.clone()),
        "True"
    );
    assert_eq!(
        render("{{ s | regex_search('\\d\\.\\d') }}", ctx.clone()),
        "True"
    );
    assert_eq!(render("{{ n | regex_search('^4') }}", ctx.clone()), "True");
    assert_eq!(
        render(r"{{ s | regex_replace('(\d)\.', '\\1_') }}", ctx.clone()),
        "v1_2_3-rc"
    );
    assert_eq!(
        render(
            r"{{ s | regex_replace('(?P<x>rc)', '[\\g<x>]') }}",
            ctx.clone()
        ),
        "v1.2.3-[rc]"
    );
    assert_eq!(render("{{ s | regex_substring('\\d') }}", ctx.clone()), "1");
    assert_eq!(
        render("{{ s | regex_substring('\\d', -1) }}", ctx.clone()),
        "3"
    );
    assert_eq!(
        render("{{ s | regex_substring('(\\d)\\.(\\d)') }}", ctx.clone()),
        "['1', '2']"
    );
    assert_eq!(
        render("{{ s | regex_substring('(?<=-)\\w+') }}", ctx.clone()),
        "rc",
        "look-behind, as Python supports"
    );
    let r = Renderer::new();
    assert!(r
        .render_str("{{ s | regex_substring('x') }}", &ctx, &NoKeyValues)
        .is_err());
    assert!(r
        .render_str("{{ s | regex_search('(') }}", &ctx, &NoKeyValues)
        .is_err());
    assert!(r
        .render_str(r"{{ s | regex_replace('x', '\\2') }}", &ctx, &NoKeyValues)
        .is_err());
}

#[test]
fn human_time_filter() {
    for (input, expected) in [
        ("0", "0s"),
        ("0.5", "0.5\u{3bc}s"),
        ("10", "10s"),
        ("65", "1m5s"),
        ("3725", "1h2m5s"),
        ("90061", "1d1h1m1s"),
        ("31626061", "1y1d1h1m1s"),
        ("59.6", "1m0s"),
    ] {
        assert_eq!(
            render(
                &format!("{{{{ {input} | to_human_time_from_seconds }}}}"),
                json!({})
            ),
            expected
        );
    }
    assert!(Renderer::new()
        .render_str(
            "{{ 'x' | to_human_time_from_seconds }}",
            &json!({}),
            &NoKeyValues
        )
        .is_err());
}

#[test]
fn version_filters() {
    let ctx = json!({});
    assert_eq!(
        render("{{ '1.2.3' | version_compare('1.10.0') }}", ctx.clone()),
        "-1"
    );
    assert_eq!(
        render(
            "{{ '1.2.3' | version_compare('1.2.3+build') }}",
            ctx.clone()
        ),
        "0"
    );
    assert_eq!(
        render("{{ '2.0.0' | version_more_than('1.9.9') }}", ctx.clone()),
        "True"
    );
    assert_eq!(
        render(
            "{{ '1.0.0-rc.1' | version_less_than('1.0.0') }}",
            ctx.clone()
        ),
        "True"
    );
    assert_eq!(
        render("{{ '1.0.0' | version_equal('1.0.0') }}", ctx.clone()),
        "True"
    );
    assert_eq!(
        render("{{ '1.5.0' | version_match('>=1.2.0') }}", ctx.clone()),
        "True"
    );
    assert_eq!(
        render("{{ '1.5.0' | version_match('<1.2.0') }}", ctx.clone()),
        "False"
    );
    assert_eq!(
        render("{{ '1.5.0' | version_match('1.5.0') }}", ctx.clone()),
        "True"
    );
    assert_eq!(
        render("{{ '1.5.0' | version_match('!=1.5.0') }}", ctx.clone()),
        "False"
    );
    assert_eq!(
        render("{{ '1.2.3' | version_bump_major }}", ctx.clone()),
        "2.0.0"
    );
    assert_eq!(
        render("{{ '1.2.3' | version_bump_minor }}", ctx.clone()),
        "1.3.0"
    );
    assert_eq!(
        render("{{ '1.2.3-rc' | version_bump_patch }}", ctx.clone()),
        "1.2.4"
    );
    assert_eq!(
        render("{{ '1.2.3' | version_strip_patch }}", ctx.clone()),
        "1.2"
    );
    let r = Renderer::new();
    assert!(r
        .render_str("{{ '1.2' | version_bump_major }}", &ctx, &NoKeyValues)
        .is_err());
    assert!(r
        .render_str("{{ '1.2.0' | version_match('~1') }}", &ctx, &NoKeyValues)
        .is_err());
}

#[test]
fn path_filters() {
    for (path, base, dir) in [
        ("/a/b/c.txt", "c.txt", "/a/b"),
        ("/a/b/", "", "/a/b"),
        ("c.txt", "c.txt", ""),
        ("/c", "c", "/"),
        ("a//b", "b", "a"),
    ] {
        let ctx = json!({ "p": path });
        assert_eq!(render("{{ p | basename }}", ctx.clone()), base, "{path}");
        assert_eq!(render("{{ p | dirname }}", ctx), dir, "{path}");
    }
}

#[test]
fn python_methods_and_in_test() {
    let ctx = json!({"s": " a,b ", "d": {"k": 1}});
    assert_eq!(
        render("{{ s.strip().split(',') }}", ctx.clone()),
        "['a', 'b']"
    );
    assert_eq!(
        render(
            "{% for k, v in d.items() %}{{k}}={{v}}{% endfor %}",
            ctx.clone()
        ),
        "k=1"
    );
    assert_eq!(render("{{ d.get('x', 'dflt') }}", ctx.clone()), "dflt");
    assert_eq!(render("{{ 'a' is in ['a', 'b'] }}", ctx), "True");
}

#[test]
fn json_paths() {
    let doc = json!({"trigger": {"body": {"name": "st2", "X-Hub": "h", "a b": 1},
                                 "items": [{"x": 1}, {"x": 2}]}});
    let find = |p: &str| {
        JsonPath::parse(p)
            .unwrap_or_else(|e| panic!("{e}"))
            .find(&doc)
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(find("trigger.body.name"), vec![json!("st2")]);
    assert_eq!(find("$.trigger.body.X-Hub"), vec![json!("h")]);
    assert_eq!(find("trigger.body['a b']"), vec![json!(1)]);
    assert_eq!(find("trigger.body.'a b'"), vec![json!(1)]);
    assert_eq!(find("trigger[\"body\"].name"), vec![json!("st2")]);
    assert_eq!(find("trigger.items[0].x"), vec![json!(1)]);
    assert_eq!(find("trigger.items[-1].x"), vec![json!(2)]);
    assert_eq!(find("trigger.items[*].x"), vec![json!(1), json!(2)]);
    assert_eq!(find("trigger..x"), vec![json!(1), json!(2)]);
    assert_eq!(find("trigger.body.*").len(), 3);
    assert!(find("trigger.nope.name").is_empty());
    assert!(find("trigger.items[5]").is_empty());
    assert!(find("trigger.body[0]").is_empty());
    for bad in ["trigger.", "trigger[0", "trigger[x]", "a b"] {
        assert!(JsonPath::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn decrypt_kv_opens_sealed_secrets_only_when_asked() {
    let cipher = Cipher::from_hex(&Cipher::generate_hex()).unwrap();
    let sealed = cipher.encrypt("s3cr3t");
    let kv = MapKv(BTreeMap::from([(
        (KvScope::System, "pw".to_string()),
        sealed.clone(),
    )]));
    let r = Renderer::with_cipher(cipher);
    let ctx = json!({});
    assert_eq!(
        r.render_str("{{ st2kv.system.pw }}", &ctx, &kv).unwrap(),
        sealed
    );
    assert_eq!(
        r.render_str("{{ st2kv.system.pw | decrypt_kv }}", &ctx, &kv)
            .unwrap(),
        "s3cr3t"
    );
    let missing = r.render_str("{{ st2kv.system.nope | decrypt_kv }}", &ctx, &kv);
    assert!(missing.unwrap_err().to_string().contains("doesn't exist"));
    let plain = MapKv(BTreeMap::from([(
        (KvScope::System, "pw".to_string()),
        "open".to_string(),
    )]));
    let err = r
        .render_str("{{ st2kv.system.pw | decrypt_kv }}", &ctx, &plain)
        .unwrap_err();
    assert!(err.to_string().contains("marked secret"), "{err}");
}

/// `render_compiled` of `value` gives what `render_value` gives,
/// results and errors alike.
fn assert_compiled_agrees(r: &Renderer, value: &Json, ctx: &Json, kv: &dyn KeyValueLookup) {
    let compiled = CompiledValue::new(value);
    assert_eq!(compiled.source(), value);
    let reference = r.render_value(value, ctx, kv);
    if let Ok(expected) = &reference {
        // Rendered by the compiled templates, not by the fallback.
        let direct = with_datastore(ctx, &Extras::new(), kv, |root| {
            r.render_node(&compiled.node, root)
        });
        assert_eq!(direct.as_ref().ok(), Some(expected), "{value}: {direct:?}");
    }
    // Twice: the second render reads the templates the first one cached.
    for _ in 0..2 {
        assert_eq!(r.render_compiled(&compiled, ctx, kv), reference, "{value}");
    }
}

#[test]
fn compiled_values_render_as_the_reference() {
    let ctx = json!({
        "trigger": {"body": {"name": "st2", "count": 3, "tags": ["a", "b"],
                             "nested": {"k": [1, {"x": null}]}, "flag": true, "f": 1.5},
                    "headers": {"X-Event": "push"}},
        "rule": {"ref": "p.r", "name": "r", "pack": "p"},
    });
    let kv =
        MapKv::default()
            .with(KvScope::System, "env", "prod")
            .with(KvScope::System, "count", "7");
    let renderers = [Renderer::new(), Renderer::new().keeping_none_marker()];
    let cases = [
        json!("plain text"),
        json!(""),
        json!(12),
        json!(null),
        json!(true),
        json!({"a": [1, "x", {"b": null}]}),
        json!(NONE_MAGIC_VALUE),
        json!("{{ trigger.body.name }}"),
        json!("{{trigger.body.count}}"),
        json!("{{- trigger.body.count -}}"),
        json!("{{ trigger.body.count + 1 }}"),
        json!("{{ trigger.body.tags }}"),
        json!("{{ trigger.body.nested }}"),
        json!("{{ trigger.body.flag }}"),
        json!("{{ trigger.body.f }}"),
        json!("{{ trigger.body.nested.k[1].x }}"),
        json!("{{ trigger.headers['X-Event'] }}"),
        json!("{{ trigger.body.name if trigger.body.flag else 'no' }}"),
        json!("{{ trigger.body.tags | join(',') }}"),
        json!("{{ trigger.body.tags | length > 1 }}"),
        json!("{{ '' | use_none }}"),
        json!("x {{ '' | use_none }}"),
        json!("{{ st2kv.system.env }}"),
        json!("{{ st2kv.system.count | int + 1 }}"),
        json!("{{ st2kv.system.missing }}"),
        json!("{{ st2kv.system.env }}-{{ st2kv.system.count }}"),
        json!("{{ trigger.body.name }} has {{ trigger.body.count }} {% if trigger.body.flag %}yes{% endif %}"),
        json!("{% for t in trigger.body.tags %}{{ t }}{% endfor %}"),
        json!("{# a comment #}"),
        json!("{{ [1, 2] }}"),
        json!("{{ (1, 2) }}"),
        json!("{{ {'a': trigger.body.count} }}"),
        json!("{{ rule.ref }}"),
        json!({"{{ trigger.body.name }}": "{{ trigger.body.count }}", "fixed": "x", "n": 1}),
        json!(["{{ trigger.body.count }}", "x", 1, ["{{ rule.name }}"]]),
        json!({"same": "{{ 1 }}", "{{ 'same' }}": 2}),
        json!({"deep": {"deeper": ["{{ trigger.body.tags[0] }}", {"k": "{{ st2kv.system.env }}"}]}}),
        // Errors: the same messages as the reference.
        json!("{{ trigger.body.nope }}"),
        json!("{{ trigger.nope.deeper }}"),
        json!("x {{ trigger.body.nope }} y"),
        json!("{{ nope }}"),
        json!("{{ trigger.body. }}"),
        json!("{{ a) + (b }}"),
        json!("{{ 1, 2 }}"),
        json!("{{ trigger.body.count | no_such_filter }}"),
        json!("{% if %}"),
        json!("{{ trigger.body.name }"),
        json!({"ok": "{{ trigger.body.count }}", "bad": "{{ trigger.body.nope }}"}),
        json!(["{{ 1 }}", "{{ missing }}"]),
    ];
    for r in &renderers {
        for case in &cases {
            assert_compiled_agrees(r, case, &ctx, &kv);
        }
    }
}

#[test]
fn compiled_values_without_markup_are_literals() {
    for value in [
        json!("text"),
        json!({"a": ["b", 1, null], "c": {"d": true}}),
        json!([]),
    ] {
        assert_eq!(CompiledValue::new(&value).node, Node::Literal(value));
    }
    assert!(!matches!(
        CompiledValue::new(&json!(NONE_MAGIC_VALUE)).node,
        Node::Literal(_)
    ));
    assert!(!matches!(
        CompiledValue::new(&json!({"{{ k }}": 1})).node,
        Node::Literal(_)
    ));
}

#[test]
fn the_loader_serves_only_cached_names() {
    let r = Renderer::new();
    let err = r
        .render_str("{% include 'x' %}", &json!({}), &NoKeyValues)
        .unwrap_err();
    assert!(err.message.contains("not found"), "{err}");
}

#[test]
fn find_in_selects_what_find_selects_in_the_built_object() {
    let value = json!({"a": {"b": [1, {"c": 2}], "c": 3}, "c": [4], "x-y": 5});
    let root = json!({"trigger": value});
    for path in [
        "",
        "$",
        "trigger",
        "trigger.a",
        "trigger.a.b[1].c",
        "trigger.a.b[-1]",
        "trigger['x-y']",
        "trigger.x-y",
        "trigger.*",
        "*",
        "*.a",
        "[0]",
        "other",
        "other.a",
        "..c",
        "$..c",
        "trigger..c",
        "..trigger",
        "..*",
        "trigger.a.*",
        "[*]",
        "$[*].c",
        "trigger.nope",
        "trigger.a.b[5]",
        "trigger.a[0]",
        "trigger.c[0]",
        "trigger.c[-2]",
        "trigger.x-y.z",
    ] {
        let path = JsonPath::parse(path).unwrap();
        match path.find_in("trigger", &value) {
            Some(found) => assert_eq!(found, path.find(&root), "{path:?}"),
            None => assert_eq!(path.find(&root), vec![&root], "{path:?}"),
        }
        assert_eq!(
            path.first_in("trigger", &value),
            path.find_in("trigger", &value)
                .map(|found| found.first().copied()),
            "first_in of {path:?}"
        );
    }
}
