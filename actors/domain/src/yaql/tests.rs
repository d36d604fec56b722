//! One test per construct, with the values Orquesta's YAQL gives.

use serde_json::{json, Value};

use super::*;

fn data() -> Value {
    json!({
        "n": 3,
        "name": "web-1",
        "hosts": [{"name": "a", "up": true, "load": 2}, {"name": "b", "up": false, "load": 7}],
        "tags": ["x", "y"],
        "cfg": {"region": "eu", "size": 2},
        "empty": [],
        "nothing": null,
    })
}

fn ev(src: &str) -> Value {
    evaluate(src, &data(), &NoHost).unwrap_or_else(|e| panic!("{src}: {e}"))
}

fn err(src: &str) -> YaqlError {
    evaluate(src, &data(), &NoHost).expect_err(src)
}

#[test]
fn literals() {
    assert_eq!(ev("1"), json!(1));
    assert_eq!(ev("2.5"), json!(2.5));
    assert_eq!(ev("'single'"), json!("single"));
    assert_eq!(ev("\"double\""), json!("double"));
    assert_eq!(ev("true and not false"), json!(true));
    assert_eq!(ev("null"), Value::Null);
    assert_eq!(ev("[1, 'a', [2]]"), json!([1, "a", [2]]));
    assert_eq!(ev("{a => 1, 'b c' => [2]}"), json!({"a": 1, "b c": [2]}));
    assert_eq!(ev("'it\\'s'"), json!("it's"));
}

#[test]
fn context_and_members() {
    assert_eq!(ev("$.n"), json!(3));
    assert_eq!(ev("$n"), json!(3));
    assert_eq!(ev("$.cfg.region"), json!("eu"));
    // A key the dict lacks is an error (YAQL's `d[key]`), a member of a
    // non-dict is an unknown `#property#` function; `?.` gives null.
    assert!(err("$.missing")
        .message
        .contains("Unable to resolve key 'missing'"));
    assert!(err("$.cfg.missing.deeper").message.contains("'missing'"));
    assert!(err("$.name.x").message.contains("#property#x"));
    assert_eq!(ev("$.nothing?.x"), Value::Null);
    assert_eq!(ev("$.hosts.name"), json!(["a", "b"]));
    assert_eq!(ev("$"), data());
}

#[test]
fn indexing() {
    assert_eq!(ev("$.tags[0]"), json!("x"));
    assert_eq!(ev("$.tags[-1]"), json!("y"));
    assert_eq!(ev("$.cfg['size']"), json!(2));
    assert_eq!(ev("$.name[0]"), json!("w"));
    let e = err("$.tags[5]");
    assert!(e.message.contains("out of range"), "{e}");
}

#[test]
fn arithmetic() {
    assert_eq!(ev("$.n + 2 * 3"), json!(9));
    assert_eq!(ev("($.n + 2) * 3"), json!(15));
    assert_eq!(ev("7 - 10"), json!(-3));
    assert_eq!(ev("-$.n"), json!(-3));
    assert_eq!(ev("7 / 2"), json!(3.5));
    assert_eq!(ev("7 mod 3"), json!(1));
    assert_eq!(ev("'a' + 'b'"), json!("ab"));
    assert_eq!(ev("'ab' * 2"), json!("abab"));
    assert_eq!(ev("[1] + [2]"), json!([1, 2]));
    assert_eq!(ev("{a => 1} + {b => 2}"), json!({"a": 1, "b": 2}));
    assert!(err("1 / 0").message.contains("division by zero"));
    assert!(err("'a' - 1")
        .message
        .contains("cannot do arithmetic on string and number"));
}

#[test]
fn comparisons_and_logic() {
    assert_eq!(ev("$.n = 3"), json!(true));
    assert_eq!(ev("$.n = 3.0"), json!(true));
    assert_eq!(ev("$.n != 3"), json!(false));
    assert_eq!(ev("$.n > 2 and $.n <= 3"), json!(true));
    assert_eq!(ev("'b' > 'a'"), json!(true));
    assert_eq!(ev("'x' in $.tags"), json!(true));
    assert_eq!(ev("'region' in $.cfg"), json!(true));
    assert_eq!(ev("'eb' in $.name"), json!(true));
    assert_eq!(ev("$.name =~ '^web-\\d$'"), json!(true));
    assert_eq!(ev("$.name !~ '^db'"), json!(true));
    // `and`/`or` return an operand, as in Python.
    assert_eq!(ev("$.nothing or 'fallback'"), json!("fallback"));
    assert_eq!(ev("$.n and $.name"), json!("web-1"));
    assert_eq!(ev("not $.empty"), json!(true));
    assert!(err("'a' < 1").message.contains("cannot compare"));
}

#[test]
fn lambdas() {
    assert_eq!(ev("$.hosts.select($.name)"), json!(["a", "b"]));
    assert_eq!(ev("$.hosts.where($.up).select($.name)"), json!(["a"]));
    assert_eq!(ev("$.hosts.where($.load > 5).len()"), json!(1));
    assert_eq!(ev("$.hosts.any($.load > 5)"), json!(true));
    assert_eq!(ev("$.hosts.all($.up)"), json!(false));
    assert_eq!(
        ev("$.hosts.orderBy(-$.load).select($.name)"),
        json!(["b", "a"])
    );
    assert_eq!(ev("select([1, 2, 3], $ * 10)"), json!([10, 20, 30]));
    assert_eq!(ev("[[1], [2, 3]].selectMany($)"), json!([1, 2, 3]));
    assert_eq!(ev("[0, 1, '', 'a'].where($)"), json!([1, "a"]));
}

#[test]
fn collection_functions() {
    assert_eq!(ev("len($.tags)"), json!(2));
    assert_eq!(ev("$.tags.len()"), json!(2));
    assert_eq!(ev("$.cfg.keys()"), json!(["region", "size"]));
    assert_eq!(ev("$.cfg.values()"), json!(["eu", 2]));
    assert_eq!(ev("$.cfg.items()"), json!([["region", "eu"], ["size", 2]]));
    assert_eq!(ev("$.cfg.containsKey('size')"), json!(true));
    assert_eq!(ev("$.cfg.get('zone', 'none')"), json!("none"));
    assert_eq!(ev("dict(a => 1, b => $.n)"), json!({"a": 1, "b": 3}));
    assert_eq!(ev("dict([['k', 1]])"), json!({"k": 1}));
    assert_eq!(ev("list(1, 2)"), json!([1, 2]));
    assert_eq!(ev("concat([1], [2, 3])"), json!([1, 2, 3]));
    assert_eq!(ev("concat('a', 'b', 1)"), json!("ab1"));
    assert_eq!(ev("[3, 1, 3].distinct()"), json!([3, 1]));
    assert_eq!(ev("[[1], 2].flatten()"), json!([1, 2]));
    assert_eq!(ev("[1, 2, 3].skip(1).take(1)"), json!([2]));
    assert_eq!(ev("[1, 2, 3].sum()"), json!(6));
    assert_eq!(ev("max([1, 5, 2])"), json!(5));
    assert_eq!(ev("min(4, 2)"), json!(2));
    assert_eq!(ev("range(3)"), json!([0, 1, 2]));
    assert_eq!(ev("$.empty.first(default => 'none')"), json!("none"));
    assert_eq!(ev("$.tags.last()"), json!("y"));
    assert_eq!(ev("$.tags.contains('y')"), json!(true));
    assert_eq!(ev("$.empty.isEmpty()"), json!(true));
    assert_eq!(ev("coalesce($.nothing, $.n)"), json!(3));
    assert_eq!(ev("zip([1, 2], ['a'])"), json!([[1, "a"], [2, null]]));
}

#[test]
fn string_functions() {
    assert_eq!(ev("$.name.toUpper()"), json!("WEB-1"));
    assert_eq!(ev("'  x '.trim()"), json!("x"));
    assert_eq!(ev("'a,b'.split(',')"), json!(["a", "b"]));
    assert_eq!(ev("','.join($.tags)"), json!("x,y"));
    assert_eq!(ev("join($.tags, '-')"), json!("x-y"));
    assert_eq!(ev("$.name.startsWith('web')"), json!(true));
    assert_eq!(ev("$.name.replace('web', 'db')"), json!("db-1"));
    assert_eq!(ev("$.name.indexOf('-')"), json!(3));
    assert_eq!(ev("'{0}-{1}'.format('a', 2)"), json!("a-2"));
    assert_eq!(ev("str(5) + 'x'"), json!("5x"));
    assert_eq!(ev("int('42') + 1"), json!(43));
    assert_eq!(ev("json('{\"a\": [1]}').a"), json!([1]));
    assert_eq!(ev("to_json_string({a => 1})"), json!("{\"a\":1}"));
    assert_eq!(ev("regex($.name, '\\d')"), json!(true));
}

struct Orquesta;

impl Host for Orquesta {
    fn call(&self, name: &str, args: &[Value]) -> Option<Result<Value, String>> {
        match name {
            "ctx" => Some(Ok(match args.first() {
                Some(Value::String(k)) => data()[k.as_str()].clone(),
                _ => data(),
            })),
            "succeeded" => Some(Ok(json!(true))),
            _ => None,
        }
    }
}

#[test]
fn host_functions() {
    let ev =
        |src: &str| evaluate(src, &json!({}), &Orquesta).unwrap_or_else(|e| panic!("{src}: {e}"));
    assert_eq!(ev("ctx().n"), json!(3));
    assert_eq!(
        ev("ctx(name)"),
        json!("web-1"),
        "a bare name is a keyword string"
    );
    assert_eq!(ev("ctx('name')"), json!("web-1"));
    assert_eq!(ev("succeeded() and ctx().n > 1"), json!(true));
    assert_eq!(ev("ctx().hosts.select($.name)"), json!(["a", "b"]));
}

#[test]
fn errors_name_their_position() {
    let e = err("$.n +");
    assert_eq!(e.position, 5);
    assert!(e.message.contains("end of expression"), "{e}");
    let e = err("$.n ** 2");
    assert_eq!(e.position, 5);
    let e = err("'open");
    assert_eq!((e.position, e.message.as_str()), (0, "unterminated string"));
    let e = err("$.tags.nosuch()");
    assert_eq!(e.position, 7);
    assert_eq!(e.message, "Unknown function \"nosuch\"");
    let e = err("len(1)");
    assert!(e.message.contains("len() of a number"), "{e}");
    let e = err("[1, 2");
    assert!(e.message.contains("expected \"]\""), "{e}");
    assert_eq!(err("1 # 2").position, 2);
}

#[test]
fn render_keeps_types_and_interpolates() {
    let data = data();
    let r = |v: Value| render(&v, &data, &NoHost).unwrap_or_else(|e| panic!("{v}: {e}"));
    assert_eq!(r(json!("<% $.n %>")), json!(3));
    assert_eq!(r(json!("  <% $.tags %> ")), json!(["x", "y"]));
    assert_eq!(
        r(json!("host <% $.name %> has <% $.n %> cpus")),
        json!("host web-1 has 3 cpus")
    );
    assert_eq!(
        r(json!({"a": ["<% $.cfg.region %>", 1], "<% $.name %>": true})),
        json!({"a": ["eu", 1], "web-1": true})
    );
    assert_eq!(r(json!("no expressions")), json!("no expressions"));
    let e = render(&json!("x <% $.n + %>"), &data, &NoHost).unwrap_err();
    assert_eq!(e.position, 11, "{e}");
    let e = render(&json!("x <% $.n"), &data, &NoHost).unwrap_err();
    assert!(e.message.contains("closing"), "{e}");
}

/// Orquesta writes a value into the text around its expression with
/// Python's `str()`: the task-functions test echoes `False`, not `false`.
#[test]
fn values_in_text_are_written_as_python_does() {
    let text = |src: &str| render(&json!(src), &data(), &NoHost).unwrap();
    assert_eq!(text("echo \"<% false %>\""), json!("echo \"False\""));
    assert_eq!(text("<% null %>!"), json!("None!"));
    assert_eq!(
        text("cfg: <% $.cfg %>"),
        json!("cfg: {'region': 'eu', 'size': 2}")
    );
    assert_eq!(text("<% 1 %> + <% 2.5 %>"), json!("1 + 2.5"));
    assert_eq!(
        text("<% false %>"),
        json!(false),
        "a whole expression keeps its type"
    );
}
