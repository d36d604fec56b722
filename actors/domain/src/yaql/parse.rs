//! YAQL's grammar: tokens, then a precedence-climbing parser into [`Expr`].
//!
//! Precedence, loosest first: `or`; `and`; `not`; comparisons (`=`, `!=`,
//! `<`, `<=`, `>`, `>=`, `in`, `=~`, `!~`); `+ -`; `* / mod`; unary `-`;
//! then postfix `.name`, `.method(args)`, `[index]`, `?.name`.

use super::YaqlError;
use serde_json::Value;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Literal(Value),
    /// `$` (the context) or `$name` (a variable).
    Var(Option<String>),
    /// A bare name: a keyword string, its own text.
    Name(String),
    List(Vec<Expr>),
    /// `{a => 1}`.
    Dict(Vec<(Expr, Expr)>),
    /// `x.name` (a key of a dict, or of each dict in a list).
    Member(Box<Expr>, String, bool),
    /// `x[i]` (list index, or dict key).
    Index(Box<Expr>, Box<Expr>),
    /// `f(args)` or, with a receiver, `x.f(args)`.
    Call {
        name: String,
        receiver: Option<Box<Expr>>,
        args: Vec<Arg>,
        at: usize,
    },
    Unary(UnOp, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>, usize),
}

/// A call argument: positional, or `name => value`.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Positional(Expr),
    Named(String, Expr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnOp {
    Neg,
    Not,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Matches,
    NotMatches,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(Value),
    Str(String),
    Ident(String),
    Var(Option<String>),
    Op(&'static str),
    End,
}

const OPS: [&str; 22] = [
    "=>", "!=", "<=", ">=", "=~", "!~", "?.", "=", "<", ">", "+", "-", "*", "/", "(", ")", "[",
    "]", "{", "}", ",", ".",
];

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, YaqlError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                // `1.len()` is not a float: a dot must be followed by a digit.
                if chars[i] == '.' && !chars.get(i + 1).is_some_and(char::is_ascii_digit) {
                    break;
                }
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let n = if text.contains('.') {
                text.parse::<f64>().ok().map(Value::from)
            } else {
                text.parse::<i64>().ok().map(Value::from)
            };
            let n = n.ok_or_else(|| YaqlError::new(start, format!("bad number {text:?}")))?;
            out.push((Tok::Num(n), start));
            continue;
        }
        if c == '\'' || c == '"' || c == '`' {
            i += 1;
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None => return Err(YaqlError::new(start, "unterminated string")),
                    Some('\\') => {
                        // Known escapes; any other keeps its backslash, as
                        // in Python (so regular expressions read as written).
                        let esc = chars.get(i + 1).copied().unwrap_or('\\');
                        match esc {
                            'n' => s.push('\n'),
                            't' => s.push('\t'),
                            '\\' | '\'' | '"' | '`' => s.push(esc),
                            other => {
                                s.push('\\');
                                s.push(other);
                            }
                        }
                        i += 2;
                    }
                    Some(q) if *q == c => {
                        i += 1;
                        break;
                    }
                    Some(ch) => {
                        s.push(*ch);
                        i += 1;
                    }
                }
            }
            out.push((Tok::Str(s), start));
            continue;
        }
        if c == '$' {
            i += 1;
            let name_start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let name: String = chars[name_start..i].iter().collect();
            out.push((Tok::Var((!name.is_empty()).then_some(name)), start));
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((Tok::Ident(chars[start..i].iter().collect()), start));
            continue;
        }
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        match OPS.iter().find(|op| rest.starts_with(**op)) {
            Some(op) => {
                out.push((Tok::Op(op), start));
                i += op.chars().count();
            }
            None => return Err(YaqlError::new(start, format!("unexpected character {c:?}"))),
        }
    }
    out.push((Tok::End, chars.len()));
    Ok(out)
}

/// Parses one YAQL expression.
pub fn parse(src: &str) -> Result<Expr, YaqlError> {
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
    };
    let e = p.expr(0)?;
    match p.peek() {
        Tok::End => Ok(e),
        t => Err(YaqlError::new(
            p.at(),
            format!("unexpected {}", describe(t)),
        )),
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(n) => format!("number {n}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Ident(s) => format!("{s:?}"),
        Tok::Var(Some(v)) => format!("${v}"),
        Tok::Var(None) => "$".into(),
        Tok::Op(o) => format!("{o:?}"),
        Tok::End => "end of expression".into(),
    }
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

/// Binding power of an infix operator, and the operator.
fn infix(t: &Tok) -> Option<(u8, BinOp)> {
    Some(match t {
        Tok::Ident(w) if w == "or" => (1, BinOp::Or),
        Tok::Ident(w) if w == "and" => (2, BinOp::And),
        Tok::Op("=") => (4, BinOp::Eq),
        Tok::Op("!=") => (4, BinOp::Ne),
        Tok::Op("<") => (4, BinOp::Lt),
        Tok::Op("<=") => (4, BinOp::Le),
        Tok::Op(">") => (4, BinOp::Gt),
        Tok::Op(">=") => (4, BinOp::Ge),
        Tok::Op("=~") => (4, BinOp::Matches),
        Tok::Op("!~") => (4, BinOp::NotMatches),
        Tok::Ident(w) if w == "in" => (4, BinOp::In),
        Tok::Op("+") => (5, BinOp::Add),
        Tok::Op("-") => (5, BinOp::Sub),
        Tok::Op("*") => (6, BinOp::Mul),
        Tok::Op("/") => (6, BinOp::Div),
        Tok::Ident(w) if w == "mod" => (6, BinOp::Mod),
        _ => return None,
    })
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].0
    }

    fn at(&self) -> usize {
        self.toks[self.pos].1
    }

    fn next(&mut self) -> (Tok, usize) {
        let t = self.toks[self.pos].clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn expect(&mut self, op: &'static str) -> Result<(), YaqlError> {
        match self.peek() {
            Tok::Op(o) if *o == op => {
                self.next();
                Ok(())
            }
            t => Err(YaqlError::new(
                self.at(),
                format!("expected {op:?}, found {}", describe(t)),
            )),
        }
    }

    fn expr(&mut self, min: u8) -> Result<Expr, YaqlError> {
        let mut left = self.prefix()?;
        while let Some((bp, op)) = infix(self.peek()) {
            if bp < min {
                break;
            }
            let at = self.at();
            self.next();
            let right = self.expr(bp + 1)?;
            left = Expr::Binary(op, Box::new(left), Box::new(right), at);
        }
        Ok(left)
    }

    fn prefix(&mut self) -> Result<Expr, YaqlError> {
        match self.peek().clone() {
            Tok::Ident(w) if w == "not" => {
                self.next();
                Ok(Expr::Unary(UnOp::Not, Box::new(self.expr(3)?)))
            }
            Tok::Op("-") => {
                self.next();
                Ok(Expr::Unary(UnOp::Neg, Box::new(self.expr(7)?)))
            }
            _ => {
                let primary = self.primary()?;
                self.postfix(primary)
            }
        }
    }

    fn args(&mut self) -> Result<Vec<Arg>, YaqlError> {
        self.expect("(")?;
        let mut args = Vec::new();
        if matches!(self.peek(), Tok::Op(")")) {
            self.next();
            return Ok(args);
        }
        loop {
            let named = match (
                self.peek().clone(),
                &self.toks.get(self.pos + 1).map(|t| &t.0),
            ) {
                (Tok::Ident(name), Some(Tok::Op("=>"))) => Some(name),
                _ => None,
            };
            match named {
                Some(name) => {
                    self.next();
                    self.next();
                    args.push(Arg::Named(name, self.expr(0)?));
                }
                None => args.push(Arg::Positional(self.expr(0)?)),
            }
            match self.next() {
                (Tok::Op(","), _) => continue,
                (Tok::Op(")"), _) => return Ok(args),
                (t, at) => {
                    return Err(YaqlError::new(
                        at,
                        format!(
                            "expected \",\" or \")\" in arguments, found {}",
                            describe(&t)
                        ),
                    ))
                }
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, YaqlError> {
        let (tok, at) = self.next();
        match tok {
            Tok::Num(n) => Ok(Expr::Literal(n)),
            Tok::Str(s) => Ok(Expr::Literal(Value::String(s))),
            Tok::Var(v) => Ok(Expr::Var(v)),
            Tok::Ident(w) => match w.as_str() {
                "true" => Ok(Expr::Literal(Value::Bool(true))),
                "false" => Ok(Expr::Literal(Value::Bool(false))),
                "null" => Ok(Expr::Literal(Value::Null)),
                _ if matches!(self.peek(), Tok::Op("(")) => {
                    let args = self.args()?;
                    Ok(Expr::Call {
                        name: w,
                        receiver: None,
                        args,
                        at,
                    })
                }
                _ => Ok(Expr::Name(w)),
            },
            Tok::Op("(") => {
                let e = self.expr(0)?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                if !matches!(self.peek(), Tok::Op("]")) {
                    loop {
                        items.push(self.expr(0)?);
                        if matches!(self.peek(), Tok::Op(",")) {
                            self.next();
                        } else {
                            break;
                        }
                    }
                }
                self.expect("]")?;
                Ok(Expr::List(items))
            }
            Tok::Op("{") => {
                let mut pairs = Vec::new();
                if !matches!(self.peek(), Tok::Op("}")) {
                    loop {
                        let key = match self.peek().clone() {
                            Tok::Ident(name) => {
                                self.next();
                                Expr::Literal(Value::String(name))
                            }
                            _ => self.expr(0)?,
                        };
                        self.expect("=>")?;
                        pairs.push((key, self.expr(0)?));
                        if matches!(self.peek(), Tok::Op(",")) {
                            self.next();
                        } else {
                            break;
                        }
                    }
                }
                self.expect("}")?;
                Ok(Expr::Dict(pairs))
            }
            t => Err(YaqlError::new(at, format!("unexpected {}", describe(&t)))),
        }
    }

    fn postfix(&mut self, mut e: Expr) -> Result<Expr, YaqlError> {
        loop {
            match self.peek().clone() {
                Tok::Op(op @ ("." | "?.")) => {
                    self.next();
                    let (name, at) = match self.next() {
                        (Tok::Ident(n), at) => (n, at),
                        (t, at) => {
                            return Err(YaqlError::new(
                                at,
                                format!("expected a name after {op:?}, found {}", describe(&t)),
                            ))
                        }
                    };
                    if matches!(self.peek(), Tok::Op("(")) {
                        let args = self.args()?;
                        e = Expr::Call {
                            name,
                            receiver: Some(Box::new(e)),
                            args,
                            at,
                        };
                    } else {
                        e = Expr::Member(Box::new(e), name, op == "?.");
                    }
                }
                Tok::Op("[") => {
                    self.next();
                    let index = self.expr(0)?;
                    self.expect("]")?;
                    e = Expr::Index(Box::new(e), Box::new(index));
                }
                _ => return Ok(e),
            }
        }
    }
}
