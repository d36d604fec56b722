//! The runner types StackStorm defines, with their parameters, so that any
//! StackStorm pack registers; `available` says whether Squall can run it yet.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};

use crate::model::ParamSpec;

/// A runner type as `/api/v1/runnertypes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunnerType {
    pub name: &'static str,
    pub description: &'static str,
    pub enabled: bool,
    /// Whether this build of Squall accepts runs of this runner (the WinRM
    /// runners' runs fail at once as not supported yet).
    #[serde(skip)]
    pub available: bool,
    pub runner_parameters: BTreeMap<String, ParamSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_key: Option<&'static str>,
}

fn p(kind: &str, default: Option<Value>) -> ParamSpec {
    ParamSpec {
        kind: Some(kind.to_string()),
        default,
        ..ParamSpec::default()
    }
}

/// The response schema of an inquiry that names none (StackStorm's).
pub fn default_inquiry_schema() -> Value {
    json!({
        "title": "response_data",
        "type": "object",
        "properties": {
            "continue": {
                "type": "boolean",
                "description": "Would you like to continue the workflow?",
                "required": true
            }
        }
    })
}

fn secret(kind: &str) -> ParamSpec {
    ParamSpec {
        secret: true,
        ..p(kind, None)
    }
}

fn required(kind: &str) -> ParamSpec {
    ParamSpec {
        required: true,
        ..p(kind, None)
    }
}

fn params(entries: Vec<(&str, ParamSpec)>) -> BTreeMap<String, ParamSpec> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

fn local_common() -> Vec<(&'static str, ParamSpec)> {
    vec![
        ("cwd", p("string", None)),
        ("env", p("object", None)),
        ("kwarg_op", p("string", Some(json!("--")))),
        ("sudo", p("boolean", Some(json!(false)))),
        ("sudo_password", secret("string")),
        ("timeout", p("integer", Some(json!(60)))),
    ]
}

fn remote_common() -> Vec<(&'static str, ParamSpec)> {
    vec![
        ("bastion_host", p("string", None)),
        ("cwd", p("string", Some(json!("/tmp")))),
        ("dir", p("string", Some(json!("/tmp")))),
        ("env", p("object", None)),
        ("hosts", required("string")),
        ("kwarg_op", p("string", Some(json!("--")))),
        (
            "parallel",
            ParamSpec {
                immutable: true,
                ..p("boolean", Some(json!(false)))
            },
        ),
        ("passphrase", secret("string")),
        ("password", secret("string")),
        ("port", p("integer", None)),
        ("private_key", secret("string")),
        ("sudo", p("boolean", Some(json!(false)))),
        ("sudo_password", secret("string")),
        ("timeout", p("integer", Some(json!(60)))),
        ("username", p("string", None)),
    ]
}

fn winrm_common(with_cmd: bool) -> Vec<(&'static str, ParamSpec)> {
    let mut v = vec![
        ("cwd", p("string", None)),
        ("env", p("object", None)),
        ("host", required("string")),
        ("kwarg_op", p("string", Some(json!("-")))),
        (
            "password",
            ParamSpec {
                required: true,
                ..secret("string")
            },
        ),
        ("port", p("integer", Some(json!(5986)))),
        ("scheme", p("string", Some(json!("https")))),
        ("timeout", p("integer", Some(json!(60)))),
        ("transport", p("string", Some(json!("ntlm")))),
        ("username", required("string")),
        ("verify_ssl_cert", p("boolean", Some(json!(true)))),
    ];
    if with_cmd {
        v.push(("cmd", p("string", None)));
    }
    v
}

/// Runner types the engine provides itself (not a runner in
/// `squall-runners`): workflows (Orquesta and ActionChain), and
/// `announcement`, which publishes on the bus, and `pack-management`
/// (`packs.install`, `packs.uninstall`), which writes packs to the bus.
pub const ENGINE_RUNNERS: [&str; 4] = [
    "orquesta",
    "action-chain",
    "announcement",
    "pack-management",
];

/// Every runner type Squall knows, available or not (built once).
pub fn all() -> &'static [RunnerType] {
    static ALL: std::sync::LazyLock<Vec<RunnerType>> = std::sync::LazyLock::new(build);
    &ALL
}

fn build() -> Vec<RunnerType> {
    let mut local_cmd = local_common();
    local_cmd.push(("cmd", p("string", None)));
    let mut local_script = local_common();
    local_script.push(("debug", p("boolean", Some(json!(false)))));
    local_script.push(("content_version", p("string", None)));
    let mut remote_cmd = remote_common();
    remote_cmd.push(("cmd", p("string", None)));
    let rt = |name, description, available, runner_parameters, output_key| RunnerType {
        name,
        description,
        enabled: true,
        available,
        runner_parameters,
        output_key,
    };
    vec![
        rt(
            "noop",
            "A runner that does nothing.",
            true,
            params(vec![]),
            None,
        ),
        rt(
            "local-shell-cmd",
            "A runner to execute local shell commands.",
            true,
            params(local_cmd),
            None,
        ),
        rt(
            "local-shell-script",
            "A runner to execute local shell scripts.",
            true,
            params(local_script),
            None,
        ),
        rt(
            "remote-shell-cmd",
            "A remote execution runner that executes commands on remote hosts.",
            true,
            params(remote_cmd),
            None,
        ),
        rt(
            "remote-shell-script",
            "A remote execution runner that executes scripts on remote hosts.",
            true,
            params(remote_common()),
            None,
        ),
        rt(
            "python-script",
            "A runner for launching python actions.",
            true,
            params(vec![
                ("debug", p("boolean", Some(json!(false)))),
                ("content_version", p("string", None)),
                ("env", p("object", None)),
                ("timeout", p("integer", Some(json!(600)))),
                ("log_level", p("string", Some(json!("DEBUG")))),
            ]),
            Some("result"),
        ),
        rt(
            "http-request",
            "A HTTP client for running HTTP actions.",
            true,
            params(vec![
                ("allow_redirects", p("boolean", Some(json!(false)))),
                ("cookies", p("object", None)),
                ("headers", p("object", None)),
                ("http_proxy", p("string", None)),
                ("https_proxy", p("string", None)),
                ("password", secret("string")),
                ("url", required("string")),
                ("username", p("string", None)),
                ("verify_ssl_cert", p("boolean", Some(json!(true)))),
                ("url_hosts_blacklist", p("array", None)),
                ("url_hosts_whitelist", p("array", None)),
            ]),
            Some("body"),
        ),
        rt(
            "orquesta",
            "A runner for executing orquesta workflows.",
            true,
            params(vec![("notify", p("array", Some(json!([]))))]),
            Some("output"),
        ),
        rt(
            "action-chain",
            "A runner for launching linear action chains.",
            true,
            params(vec![
                ("display_published", p("boolean", Some(json!(true)))),
                ("skip_notify", p("array", Some(json!([])))),
            ]),
            Some("published"),
        ),
        rt(
            "inquirer",
            "A runner that pauses a workflow until a response is given.",
            true,
            params(vec![
                ("schema", p("object", Some(default_inquiry_schema()))),
                ("route", p("string", Some(json!("")))),
                ("roles", p("array", Some(json!([])))),
                ("users", p("array", Some(json!([])))),
                ("ttl", p("integer", Some(json!(1440)))),
            ]),
            None,
        ),
        rt(
            "announcement",
            "A runner for emitting an announcement event on the stream.",
            true,
            params(vec![
                ("experimental", p("boolean", Some(json!(false)))),
                ("route", p("string", Some(json!("general")))),
            ]),
            None,
        ),
        rt(
            "winrm-cmd",
            "A remote execution runner that executes commands on Windows hosts.",
            true,
            params(winrm_common(true)),
            None,
        ),
        rt(
            "winrm-ps-cmd",
            "A remote execution runner that executes PowerShell commands on Windows hosts.",
            true,
            params(winrm_common(true)),
            None,
        ),
        rt(
            "winrm-ps-script",
            "A remote execution runner that executes PowerShell scripts on Windows hosts.",
            true,
            params(winrm_common(false)),
            None,
        ),
        rt(
            "pack-management",
            "Squall's runner of packs.install and packs.uninstall: installs packs from git or a directory for every node of the cluster, or removes them.",
            true,
            params(vec![]),
            None,
        ),
    ]
}

/// Looks a runner type up by name; `orchestra` is an alias of `orquesta`.
pub fn lookup(name: &str) -> Option<&'static RunnerType> {
    let name = if name == "orchestra" {
        "orquesta"
    } else {
        name
    };
    all().iter().find(|r| r.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_stackstorm_runners_and_aliases() {
        assert!(lookup("local-shell-cmd").unwrap().available);
        assert_eq!(lookup("orchestra").unwrap().name, "orquesta");
        assert!(lookup("python-script").is_some());
        assert!(lookup("nope").is_none());
        let local = lookup("local-shell-cmd").unwrap();
        assert_eq!(local.runner_parameters["timeout"].default, Some(json!(60)));
        assert!(local.runner_parameters["sudo_password"].secret);
        let remote = lookup("remote-shell-cmd").unwrap();
        assert!(remote.available);
        for secret in ["password", "private_key", "passphrase", "sudo_password"] {
            assert!(remote.runner_parameters[secret].secret, "{secret}");
        }
        assert!(remote.runner_parameters["hosts"].required);
        assert!(remote.runner_parameters["parallel"].immutable);
    }
}
