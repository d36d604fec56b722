//! What a client command prints: tables and YAML for people, JSON for
//! scripts, and a quiet end when the reader of its output has gone.

use serde_json::{json, Value};

/// One column of a listing: its header and where its value is.
pub type Column = (&'static str, &'static str);

/// Prints one object: YAML for people, JSON for scripts.
pub fn show(value: &Value, as_json: bool) {
    if as_json {
        println!("{}", pretty(value));
    } else {
        print_yaml(value, 0);
    }
}

/// A JSON value in a table cell: strings quoted, so that `"5"` and `5`
/// and an empty string stay distinguishable.
pub(super) fn shown(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        other => other.to_string(),
    }
}

/// What a shell reports for a command killed by `SIGPIPE` (128 + 13).
const CLOSED_PIPE_EXIT: i32 = 141;

/// Makes a client command end quietly, as Unix tools do, when whoever
/// reads its output has gone (`squall execution list | head`): printing
/// to a closed pipe panics in Rust, and this hook turns that panic into
/// exit status 141 without a message. Other panics are reported as usual.
pub fn exit_quietly_when_stdout_closes() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if stdout_closed() {
            std::process::exit(CLOSED_PIPE_EXIT);
        }
        report(info);
    }));
}

/// Whether standard output is a pipe nobody reads any more.
fn stdout_closed() -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::POLLOUT)];
    poll(&mut fds, PollTimeout::ZERO).is_ok()
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLERR))
}

/// Prints executions as a table; under `root`, ids are indented by depth
/// as StackStorm's CLI shows a workflow's tasks. Returns how many.
pub(super) fn print_executions(list: &Value, root: Option<&str>) -> usize {
    let items: Vec<&Value> = list.as_array().into_iter().flatten().collect();
    let depth_of = |e: &Value| {
        let mut depth = 0;
        let mut parent = e["parent"].as_str();
        while let Some(p) = parent.filter(|p| Some(*p) != root) {
            depth += 1;
            parent = items
                .iter()
                .find(|x| x["id"].as_str() == Some(p))
                .and_then(|x| x["parent"].as_str());
        }
        depth
    };
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            let indent = if root.is_some() {
                "  ".repeat(depth_of(e))
            } else {
                String::new()
            };
            let mut row = vec![
                format!("{indent}{}", field(e, "/id")),
                field(e, "/action/ref"),
                field(e, "/context/user"),
                status_with_elapsed(e),
                field(e, "/start_timestamp"),
                field(e, "/end_timestamp"),
            ];
            if root.is_some() {
                row.insert(1, field(e, "/context/orquesta/task_name"));
            }
            row
        })
        .collect();
    let mut headers = vec![
        "id",
        "action.ref",
        "context.user",
        "status",
        "start_timestamp",
        "end_timestamp",
    ];
    if root.is_some() {
        headers.insert(1, "task");
    }
    print_table(&headers, &rows);
    rows.len()
}

pub(super) fn field(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn status_with_elapsed(e: &Value) -> String {
    let status = field(e, "/status");
    match e.get("elapsed_seconds").and_then(Value::as_f64) {
        Some(s) => format!("{status} ({s:.0}s elapsed)"),
        None => status,
    }
}

pub(super) fn print_execution(exec: &Value, as_json: bool) {
    if as_json {
        println!("{}", pretty(exec));
        return;
    }
    println!("id: {}", field(exec, "/id"));
    println!("action.ref: {}", field(exec, "/action/ref"));
    let params = exec.get("parameters").cloned().unwrap_or(json!({}));
    if params.as_object().is_some_and(|p| !p.is_empty()) {
        println!("parameters:");
        print_yaml(&params, 2);
    } else {
        println!("parameters: None");
    }
    println!("status: {}", status_with_elapsed(exec));
    println!("start_timestamp: {}", field(exec, "/start_timestamp"));
    println!("end_timestamp: {}", field(exec, "/end_timestamp"));
    println!("result:");
    print_yaml(exec.get("result").unwrap_or(&Value::Null), 2);
}

pub(super) fn print_yaml(v: &Value, indent: usize) {
    let text = serde_yaml::to_string(v).unwrap_or_default();
    for line in text.lines() {
        println!("{:indent$}{line}", "");
    }
}

pub(super) fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Prints rows under headers, columns padded to their widest cell.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    println!("{}", line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for row in rows {
        println!("{}", line(row.clone()));
    }
}
