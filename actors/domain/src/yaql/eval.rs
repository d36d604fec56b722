//! Evaluating [`Expr`] over JSON values, with YAQL's standard functions.

use serde_json::{Map, Number, Value};

use super::parse::{Arg, BinOp, Expr, UnOp};
use super::{truthy, Host, YaqlError, LAMBDA_FUNCTIONS};

pub(super) struct Evaluator<'a> {
    pub host: &'a dyn Host,
}

fn num(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Value::from(f as i64)
    } else {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "dict",
    }
}

/// YAQL's `=`: numbers compare by value (`1 = 1.0`).
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Array(x), Value::Array(y)) => {
            for (a, b) in x.iter().zip(y) {
                match compare(a, b)? {
                    std::cmp::Ordering::Equal => continue,
                    other => return Some(other),
                }
            }
            Some(x.len().cmp(&y.len()))
        }
        _ => None,
    }
}

/// A value as a string the way Python's `str()` writes it for scalars.
fn to_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => other.to_string(),
    }
}

impl Evaluator<'_> {
    pub fn eval(&self, e: &Expr, data: &Value) -> Result<Value, YaqlError> {
        match e {
            Expr::Literal(v) => Ok(v.clone()),
            Expr::Var(None) => Ok(data.clone()),
            Expr::Var(Some(name)) => Ok(data.get(name).cloned().unwrap_or(Value::Null)),
            // YAQL's keyword strings: a bare name is its own text
            // (`ctx(st2)` is `ctx('st2')`).
            Expr::Name(n) => Ok(Value::String(n.clone())),
            Expr::List(items) => items
                .iter()
                .map(|i| self.eval(i, data))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Expr::Dict(pairs) => {
                let mut m = Map::new();
                for (k, v) in pairs {
                    m.insert(to_text(&self.eval(k, data)?), self.eval(v, data)?);
                }
                Ok(Value::Object(m))
            }
            Expr::Member(target, name, safe) => {
                member(&self.eval(target, data)?, name, *safe).map_err(|m| YaqlError::new(0, m))
            }
            Expr::Index(target, index) => {
                let t = self.eval(target, data)?;
                let i = self.eval(index, data)?;
                index_into(&t, &i).map_err(|m| YaqlError::new(0, m))
            }
            Expr::Unary(UnOp::Not, x) => Ok(Value::Bool(!truthy(&self.eval(x, data)?))),
            Expr::Unary(UnOp::Neg, x) => match self.eval(x, data)? {
                Value::Number(n) => Ok(n
                    .as_i64()
                    .map(|i| Value::from(-i))
                    .unwrap_or_else(|| num(-n.as_f64().unwrap_or(0.0)))),
                other => Err(YaqlError::new(
                    0,
                    format!("cannot negate a {}", type_name(&other)),
                )),
            },
            Expr::Binary(op, l, r, at) => self.binary(*op, l, r, data, *at),
            Expr::Call {
                name,
                receiver,
                args,
                at,
            } => self
                .call(name, receiver.as_deref(), args, data)
                .map_err(|m| YaqlError::new(*at, m)),
        }
    }

    fn binary(
        &self,
        op: BinOp,
        l: &Expr,
        r: &Expr,
        data: &Value,
        at: usize,
    ) -> Result<Value, YaqlError> {
        // `and` / `or` short-circuit and give back an operand, as Python's do.
        match op {
            BinOp::And => {
                let a = self.eval(l, data)?;
                return if truthy(&a) {
                    self.eval(r, data)
                } else {
                    Ok(a)
                };
            }
            BinOp::Or => {
                let a = self.eval(l, data)?;
                return if truthy(&a) {
                    Ok(a)
                } else {
                    self.eval(r, data)
                };
            }
            _ => {}
        }
        let (a, b) = (self.eval(l, data)?, self.eval(r, data)?);
        let fail = |m: String| YaqlError::new(at, m);
        let mismatch = |what: &str| {
            fail(format!(
                "cannot {what} {} and {}",
                type_name(&a),
                type_name(&b)
            ))
        };
        Ok(match op {
            BinOp::Eq => Value::Bool(equal(&a, &b)),
            BinOp::Ne => Value::Bool(!equal(&a, &b)),
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let ord = compare(&a, &b).ok_or_else(|| mismatch("compare"))?;
                Value::Bool(match op {
                    BinOp::Lt => ord.is_lt(),
                    BinOp::Le => ord.is_le(),
                    BinOp::Gt => ord.is_gt(),
                    _ => ord.is_ge(),
                })
            }
            BinOp::In => Value::Bool(match &b {
                Value::Array(items) => items.iter().any(|i| equal(i, &a)),
                Value::Object(m) => m.contains_key(&to_text(&a)),
                Value::String(s) => s.contains(&to_text(&a)),
                _ => return Err(mismatch("look for")),
            }),
            BinOp::Matches | BinOp::NotMatches => {
                let re = regex::Regex::new(&to_text(&b))
                    .map_err(|e| fail(format!("bad regular expression: {e}")))?;
                Value::Bool(re.is_match(&to_text(&a)) == (op == BinOp::Matches))
            }
            BinOp::Add => match (&a, &b) {
                (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
                    (Some(i), Some(j)) => i
                        .checked_add(j)
                        .map_or_else(|| num(i as f64 + j as f64), Value::from),
                    _ => num(x.as_f64().unwrap_or(0.0) + y.as_f64().unwrap_or(0.0)),
                },
                (Value::String(x), Value::String(y)) => Value::String(format!("{x}{y}")),
                (Value::Array(x), Value::Array(y)) => {
                    Value::Array(x.iter().chain(y).cloned().collect())
                }
                (Value::Object(x), Value::Object(y)) => {
                    let mut m = x.clone();
                    m.extend(y.clone());
                    Value::Object(m)
                }
                _ => return Err(mismatch("add")),
            },
            BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => {
                if let (BinOp::Mul, Value::String(s), Value::Number(n))
                | (BinOp::Mul, Value::Number(n), Value::String(s)) = (op, &a, &b)
                {
                    let times = n.as_u64().unwrap_or(0) as usize;
                    return Ok(Value::String(s.repeat(times)));
                }
                let (Value::Number(x), Value::Number(y)) = (&a, &b) else {
                    return Err(mismatch("do arithmetic on"));
                };
                let (fx, fy) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
                let ints = x.as_i64().zip(y.as_i64());
                match op {
                    BinOp::Sub => ints
                        .and_then(|(i, j)| i.checked_sub(j))
                        .map_or_else(|| num(fx - fy), Value::from),
                    BinOp::Mul => ints
                        .and_then(|(i, j)| i.checked_mul(j))
                        .map_or_else(|| num(fx * fy), Value::from),
                    _ if fy == 0.0 => return Err(fail("division by zero".into())),
                    BinOp::Div => Number::from_f64(fx / fy).map_or(Value::Null, Value::Number),
                    _ => ints
                        .map(|(i, j)| Value::from(i.rem_euclid(j)))
                        .unwrap_or_else(|| num(fx.rem_euclid(fy))),
                }
            }
            BinOp::And | BinOp::Or => Value::Null,
        })
    }

    /// Runs `lambda` with `$` bound to `item`.
    fn apply(&self, lambda: &Expr, item: &Value) -> Result<Value, String> {
        self.eval(lambda, item).map_err(|e| e.message)
    }

    fn call(
        &self,
        name: &str,
        receiver: Option<&Expr>,
        args: &[Arg],
        data: &Value,
    ) -> Result<Value, String> {
        let positional: Vec<&Expr> = args
            .iter()
            .filter_map(|a| match a {
                Arg::Positional(e) => Some(e),
                Arg::Named(..) => None,
            })
            .collect();
        let named = |key: &str| {
            args.iter().find_map(|a| match a {
                Arg::Named(k, e) if k == key => Some(e),
                _ => None,
            })
        };
        let eval = |e: &Expr| self.eval(e, data).map_err(|e| e.message);
        // The first argument: the receiver of a method call, else the
        // first positional one.
        let (first, rest): (Option<Value>, &[&Expr]) = match receiver {
            Some(r) => (Some(eval(r)?), &positional[..]),
            None => match positional.split_first() {
                Some((f, rest)) if LAMBDA_FUNCTIONS.contains(&name) => (Some(eval(f)?), rest),
                _ => (None, &positional[..]),
            },
        };
        if LAMBDA_FUNCTIONS.contains(&name) {
            let coll = first.ok_or_else(|| format!("{name}() needs a collection"))?;
            return self.lambda_call(name, &coll, rest.first().copied());
        }
        if name == "dict" && receiver.is_none() && positional.is_empty() {
            let mut m = Map::new();
            for a in args {
                if let Arg::Named(k, e) = a {
                    m.insert(k.clone(), eval(e)?);
                }
            }
            return Ok(Value::Object(m));
        }
        let mut values: Vec<Value> = first.into_iter().collect();
        for e in rest {
            values.push(eval(e)?);
        }
        let mut named_values = Map::new();
        for a in args {
            if let Arg::Named(k, e) = a {
                named_values.insert(k.clone(), eval(e)?);
            }
        }
        if let Some(result) = self.host.call_named(name, &values, &named_values) {
            return result;
        }
        let default = named("default").map(eval).transpose()?;
        builtin(name, &values, default)
    }

    fn lambda_call(
        &self,
        name: &str,
        coll: &Value,
        lambda: Option<&Expr>,
    ) -> Result<Value, String> {
        let items: Vec<Value> = match coll {
            Value::Array(a) => a.clone(),
            Value::Object(m) => m.keys().map(|k| Value::String(k.clone())).collect(),
            Value::Null => Vec::new(),
            other => return Err(format!("{name}() needs a list, got a {}", type_name(other))),
        };
        let test = |item: &Value| -> Result<bool, String> {
            match lambda {
                Some(l) => Ok(truthy(&self.apply(l, item)?)),
                None => Ok(truthy(item)),
            }
        };
        Ok(match name {
            "select" => {
                let l = lambda.ok_or("select() needs an expression")?;
                Value::Array(
                    items
                        .iter()
                        .map(|i| self.apply(l, i))
                        .collect::<Result<_, _>>()?,
                )
            }
            "selectMany" => {
                let l = lambda.ok_or("selectMany() needs an expression")?;
                let mut out = Vec::new();
                for i in &items {
                    match self.apply(l, i)? {
                        Value::Array(a) => out.extend(a),
                        other => out.push(other),
                    }
                }
                Value::Array(out)
            }
            "where" | "filter" => {
                let mut out = Vec::new();
                for i in items {
                    if test(&i)? {
                        out.push(i);
                    }
                }
                Value::Array(out)
            }
            "any" => {
                let mut found = false;
                for i in &items {
                    if test(i)? {
                        found = true;
                        break;
                    }
                }
                Value::Bool(found)
            }
            "all" => {
                let mut every = true;
                for i in &items {
                    if !test(i)? {
                        every = false;
                        break;
                    }
                }
                Value::Bool(every)
            }
            _ => {
                // orderBy / sortBy
                let mut keyed = Vec::new();
                for i in items {
                    let k = match lambda {
                        Some(l) => self.apply(l, &i)?,
                        None => i.clone(),
                    };
                    keyed.push((k, i));
                }
                keyed.sort_by(|(a, _), (b, _)| compare(a, b).unwrap_or(std::cmp::Ordering::Equal));
                Value::Array(keyed.into_iter().map(|(_, i)| i).collect())
            }
        })
    }
}

/// `a.b`. As YAQL under Orquesta: a key the dict lacks is an error
/// (Orquesta's "Unable to resolve key"), and so is a member of anything
/// but a dict; `a?.b` gives null instead.
fn member(target: &Value, name: &str, safe: bool) -> Result<Value, String> {
    match target {
        Value::Object(m) => match m.get(name) {
            Some(v) => Ok(v.clone()),
            None if safe => Ok(Value::Null),
            None => Err(format!("Unable to resolve key '{name}'")),
        },
        // On a list, the member of each element (YAQL maps over lists).
        Value::Array(items) => items
            .iter()
            .map(|i| member(i, name, safe))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        _ if safe => Ok(Value::Null),
        _ => Err(format!("Unknown function \"#property#{name}\"")),
    }
}

fn index_into(target: &Value, index: &Value) -> Result<Value, String> {
    match (target, index) {
        (Value::Array(items), Value::Number(n)) => {
            let i = n.as_i64().ok_or("a list index must be an integer")?;
            let len = items.len() as i64;
            let i = if i < 0 { len + i } else { i };
            items
                .get(usize::try_from(i).map_err(|_| format!("index {n} is out of range"))?)
                .cloned()
                .ok_or_else(|| format!("index {n} is out of range for a list of {len}"))
        }
        (Value::String(s), Value::Number(n)) => {
            let i = n.as_i64().ok_or("a string index must be an integer")?;
            let chars: Vec<char> = s.chars().collect();
            let i = if i < 0 { chars.len() as i64 + i } else { i };
            usize::try_from(i)
                .ok()
                .and_then(|i| chars.get(i))
                .map(|c| Value::String(c.to_string()))
                .ok_or_else(|| format!("index {n} is out of range"))
        }
        (Value::Object(m), key) => Ok(m.get(&to_text(key)).cloned().unwrap_or(Value::Null)),
        (t, i) => Err(format!(
            "cannot index a {} with a {}",
            type_name(t),
            type_name(i)
        )),
    }
}

fn want_str<'v>(name: &str, v: Option<&'v Value>) -> Result<&'v str, String> {
    v.and_then(Value::as_str)
        .ok_or_else(|| format!("{name}() needs a string"))
}

fn want_list<'v>(name: &str, v: Option<&'v Value>) -> Result<&'v Vec<Value>, String> {
    v.and_then(Value::as_array)
        .ok_or_else(|| format!("{name}() needs a list"))
}

fn want_dict<'v>(name: &str, v: Option<&'v Value>) -> Result<&'v Map<String, Value>, String> {
    v.and_then(Value::as_object)
        .ok_or_else(|| format!("{name}() needs a dict"))
}

/// YAQL's standard functions (the ones real packs use) and Orquesta's
/// host-independent ones (`json`, `zip`).
fn builtin(name: &str, a: &[Value], default: Option<Value>) -> Result<Value, String> {
    let arg = |i: usize| a.get(i);
    Ok(match name {
        "len" | "count" => Value::from(match arg(0) {
            Some(Value::Array(x)) => x.len(),
            Some(Value::Object(x)) => x.len(),
            Some(Value::String(x)) => x.chars().count(),
            Some(other) => return Err(format!("len() of a {}", type_name(other))),
            None => return Err("len() needs a value".into()),
        }),
        "str" | "string" => Value::String(arg(0).map(to_text).unwrap_or_default()),
        "abs" => match arg(0) {
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Value::from(i.abs()),
                None => Value::from(n.as_f64().unwrap_or(0.0).abs()),
            },
            _ => return Err("abs() needs a number".into()),
        },
        "int" => match arg(0) {
            Some(Value::Number(n)) => Value::from(n.as_f64().unwrap_or(0.0).trunc() as i64),
            Some(Value::String(s)) => Value::from(
                s.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("int(): {s:?} is not an integer"))?,
            ),
            Some(Value::Bool(b)) => Value::from(i64::from(*b)),
            Some(Value::Null) | None => Value::from(0),
            Some(other) => return Err(format!("int() of a {}", type_name(other))),
        },
        "float" => match arg(0) {
            Some(Value::Number(n)) => {
                Number::from_f64(n.as_f64().unwrap_or(0.0)).map_or(Value::Null, Value::Number)
            }
            Some(Value::String(s)) => Number::from_f64(
                s.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("float(): {s:?} is not a number"))?,
            )
            .map_or(Value::Null, Value::Number),
            _ => return Err("float() needs a number or string".into()),
        },
        "bool" => Value::Bool(arg(0).is_some_and(truthy)),
        "list" => match a {
            [Value::Array(x)] => Value::Array(x.clone()),
            _ => Value::Array(a.to_vec()),
        },
        "dict" => match arg(0) {
            Some(Value::Array(pairs)) => {
                let mut m = Map::new();
                for p in pairs {
                    match p.as_array().map(Vec::as_slice) {
                        Some([k, v]) => {
                            m.insert(to_text(k), v.clone());
                        }
                        _ => return Err("dict() takes a list of [key, value] pairs".into()),
                    }
                }
                Value::Object(m)
            }
            Some(Value::Object(m)) => Value::Object(m.clone()),
            _ => Value::Object(Map::new()),
        },
        "keys" => Value::Array(
            want_dict(name, arg(0))?
                .keys()
                .map(|k| Value::String(k.clone()))
                .collect(),
        ),
        "values" => Value::Array(want_dict(name, arg(0))?.values().cloned().collect()),
        "items" => Value::Array(
            want_dict(name, arg(0))?
                .iter()
                .map(|(k, v)| Value::Array(vec![Value::String(k.clone()), v.clone()]))
                .collect(),
        ),
        "get" => match (arg(0), arg(1)) {
            (Some(Value::Object(m)), Some(k)) => m
                .get(&to_text(k))
                .cloned()
                .or(arg(2).cloned())
                .or(default)
                .unwrap_or(Value::Null),
            _ => return Err("get() needs a dict and a key".into()),
        },
        "containsKey" => Value::Bool(
            want_dict(name, arg(0))?.contains_key(&to_text(arg(1).unwrap_or(&Value::Null))),
        ),
        "containsValue" => Value::Bool(
            want_dict(name, arg(0))?
                .values()
                .any(|v| equal(v, arg(1).unwrap_or(&Value::Null))),
        ),
        "contains" => match (arg(0), arg(1)) {
            (Some(Value::Array(x)), Some(v)) => Value::Bool(x.iter().any(|i| equal(i, v))),
            (Some(Value::String(s)), Some(v)) => Value::Bool(s.contains(&to_text(v))),
            (Some(Value::Object(m)), Some(v)) => Value::Bool(m.contains_key(&to_text(v))),
            _ => return Err("contains() needs a collection and a value".into()),
        },
        "isEmpty" => Value::Bool(!arg(0).is_some_and(truthy)),
        "first" => want_list(name, arg(0))?
            .first()
            .cloned()
            .or(arg(1).cloned())
            .or(default)
            .ok_or("first(): the list is empty")?,
        "last" => want_list(name, arg(0))?
            .last()
            .cloned()
            .or(arg(1).cloned())
            .or(default)
            .ok_or("last(): the list is empty")?,
        "distinct" => {
            let mut out: Vec<Value> = Vec::new();
            for v in want_list(name, arg(0))? {
                if !out.iter().any(|o| equal(o, v)) {
                    out.push(v.clone());
                }
            }
            Value::Array(out)
        }
        "flatten" => {
            let mut out = Vec::new();
            for v in want_list(name, arg(0))? {
                match v {
                    Value::Array(inner) => out.extend(inner.iter().cloned()),
                    other => out.push(other.clone()),
                }
            }
            Value::Array(out)
        }
        "reverse" => match arg(0) {
            Some(Value::Array(x)) => Value::Array(x.iter().rev().cloned().collect()),
            Some(Value::String(s)) => Value::String(s.chars().rev().collect()),
            _ => return Err("reverse() needs a list or string".into()),
        },
        "skip" | "take" => {
            let x = want_list(name, arg(0))?;
            let n = arg(1).and_then(Value::as_u64).unwrap_or(0) as usize;
            Value::Array(if name == "skip" {
                x.iter().skip(n).cloned().collect()
            } else {
                x.iter().take(n).cloned().collect()
            })
        }
        "sum" => {
            let mut total = 0.0;
            let mut all_ints = true;
            for v in want_list(name, arg(0))? {
                let n = v.as_f64().ok_or("sum() needs numbers")?;
                all_ints &= v.is_i64();
                total += n;
            }
            if all_ints {
                Value::from(total as i64)
            } else {
                num(total)
            }
        }
        "max" | "min" => {
            let items: Vec<Value> = match a {
                [Value::Array(x)] => x.clone(),
                _ => a.to_vec(),
            };
            let mut best: Option<Value> = None;
            for v in items {
                best = Some(match best {
                    None => v,
                    Some(b) => {
                        let ord =
                            compare(&v, &b).ok_or("max()/min() of values that do not compare")?;
                        if (name == "max" && ord.is_gt()) || (name == "min" && ord.is_lt()) {
                            v
                        } else {
                            b
                        }
                    }
                });
            }
            best.or(default).ok_or(format!("{name}() of nothing"))?
        }
        "range" => {
            let (start, stop) = match (
                arg(0).and_then(Value::as_i64),
                arg(1).and_then(Value::as_i64),
            ) {
                (Some(s), Some(e)) => (s, e),
                (Some(e), None) => (0, e),
                _ => return Err("range() needs integers".into()),
            };
            let step = arg(2).and_then(Value::as_i64).unwrap_or(1);
            if step == 0 {
                return Err("range(): step must not be 0".into());
            }
            let mut out = Vec::new();
            let mut i = start;
            while (step > 0 && i < stop) || (step < 0 && i > stop) {
                out.push(Value::from(i));
                i += step;
            }
            Value::Array(out)
        }
        "concat" => match arg(0) {
            Some(Value::Array(_)) => Value::Array(
                a.iter()
                    .flat_map(|v| v.as_array().cloned().unwrap_or_else(|| vec![v.clone()]))
                    .collect(),
            ),
            _ => Value::String(a.iter().map(to_text).collect()),
        },
        "join" => match (arg(0), arg(1)) {
            // `sep.join(list)` and `join(list, sep)` both occur.
            (Some(Value::String(sep)), Some(Value::Array(x)))
            | (Some(Value::Array(x)), Some(Value::String(sep))) => {
                Value::String(x.iter().map(to_text).collect::<Vec<_>>().join(sep))
            }
            _ => return Err("join() needs a list and a separator".into()),
        },
        "split" => {
            let s = want_str(name, arg(0))?;
            let parts: Vec<Value> = match arg(1).and_then(Value::as_str) {
                Some(sep) => s.split(sep).map(|p| Value::String(p.into())).collect(),
                None => s
                    .split_whitespace()
                    .map(|p| Value::String(p.into()))
                    .collect(),
            };
            Value::Array(parts)
        }
        "toUpper" | "upper" => Value::String(want_str(name, arg(0))?.to_uppercase()),
        "toLower" | "lower" => Value::String(want_str(name, arg(0))?.to_lowercase()),
        "trim" | "strip" => Value::String(want_str(name, arg(0))?.trim().to_string()),
        "startsWith" => Value::Bool(want_str(name, arg(0))?.starts_with(want_str(name, arg(1))?)),
        "endsWith" => Value::Bool(want_str(name, arg(0))?.ends_with(want_str(name, arg(1))?)),
        "replace" => Value::String(
            want_str(name, arg(0))?.replace(want_str(name, arg(1))?, want_str(name, arg(2))?),
        ),
        "indexOf" => match (arg(0), arg(1)) {
            (Some(Value::String(s)), Some(Value::String(sub))) => Value::from(
                s.find(sub.as_str())
                    .map_or(-1, |i| s[..i].chars().count() as i64),
            ),
            (Some(Value::Array(x)), Some(v)) => {
                Value::from(x.iter().position(|i| equal(i, v)).map_or(-1, |i| i as i64))
            }
            _ => return Err("indexOf() needs a string or list".into()),
        },
        "format" => {
            let mut out = want_str(name, arg(0))?.to_string();
            for (i, v) in a.iter().skip(1).enumerate() {
                out = out.replace(&format!("{{{i}}}"), &to_text(v));
            }
            out = out.replacen("{}", &a.get(1).map(to_text).unwrap_or_default(), 1);
            Value::String(out)
        }
        "regex" | "matches" => {
            let (s, pattern) = (want_str(name, arg(0))?, want_str(name, arg(1))?);
            let re =
                regex::Regex::new(pattern).map_err(|e| format!("bad regular expression: {e}"))?;
            Value::Bool(re.is_match(s))
        }
        "coalesce" => a
            .iter()
            .find(|v| !v.is_null())
            .cloned()
            .unwrap_or(Value::Null),
        "json" | "from_json_string" | "json_parse" => serde_json::from_str(want_str(name, arg(0))?)
            .map_err(|e| format!("{name}(): not JSON: {e}"))?,
        "to_json_string" | "json_dump" => {
            Value::String(arg(0).map(Value::to_string).unwrap_or_default())
        }
        // YAQL's `random()` (a float in [0, 1)) and `random(from, to)`
        // (an integer, both ends included).
        "random" => match (arg(0), arg(1)) {
            (None, None) => Value::from(rand::random::<f64>()),
            (Some(lo), Some(hi)) => match (lo.as_i64(), hi.as_i64()) {
                (Some(lo), Some(hi)) if lo <= hi => Value::from(rand::random_range(lo..=hi)),
                _ => return Err("random(from, to) takes two integers, from <= to".into()),
            },
            _ => return Err("random() takes no arguments or two".into()),
        },
        "zip" => {
            let lists: Vec<&Vec<Value>> = a
                .iter()
                .map(|v| v.as_array().ok_or("zip() takes lists"))
                .collect::<Result<_, _>>()?;
            let longest = lists.iter().map(|l| l.len()).max().unwrap_or(0);
            let pad = default.unwrap_or(Value::Null);
            Value::Array(
                (0..longest)
                    .map(|i| {
                        Value::Array(
                            lists
                                .iter()
                                .map(|l| l.get(i).cloned().unwrap_or_else(|| pad.clone()))
                                .collect(),
                        )
                    })
                    .collect(),
            )
        }
        // YAQL's NoFunctionRegisteredException text.
        _ => return Err(format!("Unknown function \"{name}\"")),
    })
}
