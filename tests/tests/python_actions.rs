//! StackStorm Python actions on a real node: the `python-script` runner's
//! protocol, `action_service` against the node's datastore API, pack
//! virtualenvs built with the machine's `python3 -m venv` and pip.

use std::time::Duration;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use squall_tests::{login, poll, repo_root, write_pack, TestNode};

/// An action's metadata: `python-script`, `<name>.py`, `params` (YAML
/// mapping lines under `parameters:`).
fn action_yaml(name: &str, params: &str) -> String {
    format!(
        "name: {name}\npack: pyacts\nrunner_type: python-script\nentry_point: {name}.py\nparameters:\n{params}"
    )
}

/// The `pyacts` pack: one action per protocol case.
fn pyacts(root: &Path) -> Result<PathBuf> {
    let base = "from st2common.runners.base_action import Action\n\n";
    let files: Vec<(String, String)> = vec![
        ("pack.yaml".into(), "ref: pyacts\nname: pyacts\ndescription: Python protocol cases\nversion: 1.0.0\nauthor: ops\n".into()),
        (
            "actions/config_only.py".into(),
            "class Legacy(object):\n    def __init__(self, config):\n        self.config = config\n\n    def run(self, who):\n        return 'hello %s, service %s' % (who, type(self.action_service).__name__)\n".into(),
        ),
        ("actions/config_only.yaml".into(), action_yaml("config_only", "  who:\n    type: string\n")),
        (
            "actions/refuse.py".into(),
            format!("{base}class Refuse(Action):\n    def run(self):\n        return (False, {{'why': 'refused'}})\n"),
        ),
        ("actions/refuse.yaml".into(), action_yaml("refuse", "  {}\n")),
        (
            "actions/bad_status.py".into(),
            format!("{base}class Bad(Action):\n    def run(self):\n        return ('maybe', 1)\n"),
        ),
        ("actions/bad_status.yaml".into(), action_yaml("bad_status", "  {}\n")),
        (
            "actions/garbage.py".into(),
            format!("{base}import os, sys\n\nclass Garbage(Action):\n    def run(self):\n        sys.stdout.write('%%%% not a result {{\\n')\n        sys.stdout.flush()\n        os._exit(0)\n"),
        ),
        ("actions/garbage.yaml".into(), action_yaml("garbage", "  {}\n")),
        (
            "actions/big.py".into(),
            format!("{base}import sys\n\nclass Big(Action):\n    def run(self, data):\n        return {{'length': len(data), 'stdin': '--stdin-parameters' in sys.argv}}\n"),
        ),
        ("actions/big.yaml".into(), action_yaml("big", "  data:\n    type: string\n")),
        (
            "actions/counter.py".into(),
            format!("{base}class Counter(Action):\n    def run(self, step):\n        svc = self.action_service\n        before = svc.get_value('count')\n        count = int(before or 0) + step\n        svc.set_value('count', count)\n        svc.set_value('scratch', 'x')\n        names = sorted(kv.name for kv in svc.list_values())\n        deleted = svc.delete_value('scratch')\n        return {{'before': before, 'count': count, 'names': names, 'deleted': deleted, 'user': svc.get_user_info()['username']}}\n"),
        ),
        ("actions/counter.yaml".into(), action_yaml("counter", "  step:\n    type: integer\n")),
        (
            "actions/logs.py".into(),
            format!("{base}class Logs(Action):\n    def run(self):\n        self.logger.debug('debug-line')\n        self.logger.info('info-line')\n        self.logger.warning('warning-line')\n        return True\n"),
        ),
        ("actions/logs.yaml".into(), action_yaml("logs", "  {}\n")),
        (
            "actions/spawner.py".into(),
            format!("{base}import subprocess, time\n\nclass Spawner(Action):\n    def run(self):\n        child = subprocess.Popen(['sleep', '300'])\n        print('child', child.pid, flush=True)\n        time.sleep(300)\n"),
        ),
        ("actions/spawner.yaml".into(), action_yaml("spawner", "  {}\n")),
    ];
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    write_pack(root, "pyacts", &files)
}

/// A node whose API listens where its public URL says (actions call it),
/// with the repository's `core` pack and `extra` pack directories.
async fn node_with_public_api(extra: Vec<PathBuf>) -> Result<TestNode> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut dirs = vec![repo_root().join("packs")];
    dirs.extend(extra);
    TestNode::start_with(dirs, |cfg| {
        cfg.api.listen = format!("127.0.0.1:{port}").parse().expect("address");
    })
    .await
}

/// Runs `action` with `parameters` and waits for its end.
async fn execute(node: &TestNode, action: &str, parameters: Value) -> Result<Value> {
    let (status, body) = node
        .post(
            "executions",
            &json!({"action": action, "parameters": parameters}),
        )
        .await?;
    anyhow::ensure!(status == 201, "running {action}: {status} {body}");
    let id = body["id"].as_str().context("execution id")?;
    let done = node.finished(id).await?;
    Ok(done)
}

/// StackStorm's protocol through a node: legacy constructors, status
/// pairs, a bad status, output without a result, parameters on stdin,
/// log levels.
#[tokio::test]
async fn python_actions_follow_stackstorms_protocol() -> Result<()> {
    let packs = tempfile::tempdir()?;
    pyacts(packs.path())?;
    let node = TestNode::start(vec![packs.path().to_path_buf()]).await?;

    let e = execute(&node, "pyacts.config_only", json!({"who": "ops"})).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"]["result"], "hello ops, service ActionService");
    assert_eq!(e["result"]["exit_code"], 0);

    let e = execute(&node, "pyacts.refuse", json!({})).await?;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(e["result"]["result"], json!({"why": "refused"}));
    assert_eq!(e["result"]["exit_code"], 0);

    let e = execute(&node, "pyacts.bad_status", json!({})).await?;
    assert_eq!(e["status"], "failed", "{e}");
    assert_eq!(e["result"]["exit_code"], 220);
    let error = e["result"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("must either be True or False, got: maybe"),
        "{e}"
    );

    let e = execute(&node, "pyacts.garbage", json!({})).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"]["result"], "None");
    assert_eq!(e["result"]["stdout"], "%%%% not a result {\n");

    let data = "y".repeat(300_000);
    let e = execute(&node, "pyacts.big", json!({"data": data})).await?;
    assert_eq!(e["status"], "succeeded", "{}", e["result"]["stderr"]);
    assert_eq!(
        e["result"]["result"],
        json!({"length": 300_000, "stdin": true})
    );

    let e = execute(&node, "pyacts.logs", json!({"log_level": "WARNING"})).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    let stderr = e["result"]["stderr"].as_str().unwrap_or_default();
    assert!(
        stderr.contains("actions.python.Logs: WARNING  warning-line"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("info-line") && !stderr.contains("debug-line"),
        "{stderr}"
    );
    let e = execute(&node, "pyacts.logs", json!({})).await?;
    let stderr = e["result"]["stderr"].as_str().unwrap_or_default();
    assert!(
        stderr.contains("debug-line") && stderr.contains("info-line"),
        "{stderr}"
    );
    Ok(())
}

/// `action_service` reads and writes the datastore as the execution's
/// user, under `<pack>.<Class>:`; what one run stores the next one reads.
#[tokio::test]
async fn action_service_state_persists_across_runs() -> Result<()> {
    let packs = tempfile::tempdir()?;
    pyacts(packs.path())?;
    let node = node_with_public_api(vec![packs.path().to_path_buf()]).await?;

    let first = execute(&node, "pyacts.counter", json!({"step": 2})).await?;
    assert_eq!(first["status"], "succeeded", "{first}");
    let r = &first["result"]["result"];
    assert_eq!(r["before"], Value::Null, "{first}");
    assert_eq!(r["count"], 2);
    assert_eq!(
        r["names"],
        json!(["pyacts.Counter:count", "pyacts.Counter:scratch"])
    );
    assert_eq!(r["deleted"], true);
    assert_eq!(r["user"], "admin");

    let second = execute(&node, "pyacts.counter", json!({"step": 3})).await?;
    assert_eq!(second["status"], "succeeded", "{second}");
    assert_eq!(second["result"]["result"]["before"], "2");
    assert_eq!(second["result"]["result"]["count"], 5);
    let (status, kv) = node.get("keys/pyacts.Counter:count").await?;
    assert_eq!((status, &kv["value"]), (200, &json!("5")));
    let (status, _) = node.get("keys/pyacts.Counter:scratch").await?;
    assert_eq!(status, 404, "deleted by the action");
    Ok(())
}

/// A timeout kills the action and every process it started (the process
/// group), and the execution says so.
#[tokio::test]
async fn a_timeout_kills_the_actions_children() -> Result<()> {
    let packs = tempfile::tempdir()?;
    pyacts(packs.path())?;
    let node = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    let e = execute(&node, "pyacts.spawner", json!({"timeout": 2})).await?;
    assert_eq!(e["status"], "timeout", "{e}");
    assert_eq!(
        e["result"]["error"],
        "Action failed to complete in 2 seconds"
    );
    let pid: i32 = e["result"]["stdout"]
        .as_str()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .context("the action printed its child's pid")?;
    // Killed: gone, or a zombie until init reaps it.
    poll(Duration::from_secs(10), || async move {
        let dead = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z'))
        });
        Ok(dead.then_some(()))
    })
    .await
    .with_context(|| format!("the action's child {pid} outlived the timeout"))?;
    Ok(())
}

/// `st2common.services.datastore.DatastoreService` (the client behind
/// `action_service` and `sensor_service`) against the node's `/keys` and
/// `/user`: key prefixing, secrets, TTL, listing, scopes, errors.
#[tokio::test]
async fn the_datastore_client_speaks_the_keys_api() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let token = login(&node.root, "admin", &node.admin_password).await?;
    let lib = squall_runners::pylib::install(&node.dir.path().join("pylib"))?;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("python3")
            .arg(repo_root().join("tests/python/datastore_check.py"))
            .arg(&node.base)
            .arg(&token)
            .env("PYTHONPATH", &lib)
            .output(),
    )
    .await
    .context("the check did not finish")??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "ok");
    // What the client wrote is what the API holds, under the local prefix.
    let (status, secret) = node.get("keys/mypack.MyClass:secret").await?;
    assert_eq!(status, 200, "{secret}");
    assert_eq!(secret["secret"], true);
    assert_ne!(secret["value"], "s3");
    let (status, global) = node.get("keys/global").await?;
    assert_eq!((status, &global["value"]), (200, &Value::from("g")));
    let (status, _) = node.get("keys/mypack.MyClass:count").await?;
    assert_eq!(status, 404, "the deleted key is gone");
    Ok(())
}

/// The `venvpack` pack: one action reporting what its interpreter sees,
/// `requirements` as its requirements.txt.
fn venvpack(root: &Path, requirements: &str) -> Result<PathBuf> {
    write_pack(
        root,
        "venvpack",
        &[
            ("pack.yaml", "ref: venvpack\nname: venvpack\ndescription: a pack with requirements\nversion: 1.0.0\nauthor: ops\n"),
            ("requirements.txt", requirements),
            (
                "actions/versions.py",
                "import sys\n\nimport six\nimport tabulate\nfrom st2common.runners.base_action import Action\n\nclass Versions(Action):\n    def run(self):\n        return {'tabulate': tabulate.__version__, 'six': six.__version__, 'prefix': sys.prefix}\n",
            ),
            (
                "actions/versions.yaml",
                "name: versions\npack: venvpack\nrunner_type: python-script\nentry_point: versions.py\n",
            ),
        ],
    )
}

/// A pack's requirements live in its own virtualenv, built with pip when
/// the pack registers and again when its requirements change; a
/// requirement that does not install fails the registration with pip's
/// error (API and CLI), registers nothing, and the previous virtualenv
/// stays in use.
#[tokio::test]
async fn pack_requirements_install_into_the_packs_virtualenv() -> Result<()> {
    let packs = tempfile::tempdir()?;
    let dir = venvpack(packs.path(), "tabulate==0.9.0\n")?;
    pyacts(packs.path())?;
    let node = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    let venv = node.config.data_dir.join("virtualenvs").join("venvpack");

    // Registered at start: the virtualenv is there before the first run.
    assert!(venv.join("bin/python").is_file());
    let e = execute(&node, "venvpack.versions", json!({})).await?;
    assert_eq!(e["status"], "succeeded", "{}", e["result"]["stderr"]);
    assert_eq!(e["result"]["result"]["tabulate"], "0.9.0");
    assert_eq!(
        e["result"]["result"]["prefix"],
        json!(venv.display().to_string())
    );

    // Requirements that do not install: refused with pip's own error.
    std::fs::write(
        dir.join("requirements.txt"),
        "tabulate==0.8.10\nsquall-no-such-package-anywhere==1.0\n",
    )?;
    let (status, body) = node
        .post("packs/register", &json!({"packs": ["venvpack"]}))
        .await?;
    assert_eq!(status, 400, "{body}");
    let fault = body["faultstring"].as_str().unwrap_or_default();
    assert!(
        fault.contains("failed to install requirements from")
            && fault.contains(
                "No matching distribution found for squall-no-such-package-anywhere==1.0"
            ),
        "{fault}"
    );
    let home = tempfile::tempdir()?;
    let token = login(&node.root, "admin", &node.admin_password).await?;
    let cli = tokio::process::Command::new(squall_tests::st2_cli_binary()?)
        .args(["pack", "register", "venvpack"])
        .env("HOME", home.path())
        .env("ST2_API_URL", format!("{}/v1", node.root))
        .env("ST2_AUTH_TOKEN", &token)
        .env_remove("ST2_API_KEY")
        .output()
        .await?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&cli.stdout),
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(!cli.status.success(), "{said}");
    assert!(
        said.contains("No matching distribution found for squall-no-such-package-anywhere"),
        "{said}"
    );
    // The previous virtualenv is still the pack's, and runs.
    let e = execute(&node, "venvpack.versions", json!({})).await?;
    assert_eq!(e["status"], "succeeded", "{}", e["result"]["stderr"]);
    assert_eq!(e["result"]["result"]["tabulate"], "0.9.0");
    // Nothing else was disturbed.
    let e = execute(&node, "pyacts.refuse", json!({})).await?;
    assert_eq!(e["result"]["result"], json!({"why": "refused"}), "{e}");

    // Changed requirements that install: a new virtualenv, swapped in.
    std::fs::write(dir.join("requirements.txt"), "tabulate==0.8.10\n")?;
    let (status, body) = node
        .post("packs/register", &json!({"packs": ["venvpack"]}))
        .await?;
    assert_eq!(status, 200, "{body}");
    let e = execute(&node, "venvpack.versions", json!({})).await?;
    assert_eq!(e["status"], "succeeded", "{}", e["result"]["stderr"]);
    assert_eq!(e["result"]["result"]["tabulate"], "0.8.10");
    Ok(())
}

/// StackStorm's own `examples` pack (`tests/fixtures/st2-examples`,
/// unchanged): its Python actions that need neither config nor network run
/// in the pack's virtualenv (built from its requirements.txt at
/// registration) with the results StackStorm gives.
#[tokio::test]
async fn stackstorms_example_python_actions_run_unchanged() -> Result<()> {
    let root = tempfile::tempdir()?;
    std::os::unix::fs::symlink(repo_root().join("packs/core"), root.path().join("core"))?;
    let node = TestNode::start_with(
        vec![
            root.path().to_path_buf(),
            repo_root().join("tests/fixtures/st2-examples"),
        ],
        |_| {},
    )
    .await?;
    let venv = node.config.data_dir.join("virtualenvs").join("examples");

    // pack lib/ on the path (`from environ import get_environ`).
    let e = execute(&node, "examples.isprime", json!({"value": 7})).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"]["result"], true);
    let e = execute(&node, "examples.isprime", json!({"value": 8})).await?;
    assert_eq!(e["result"]["result"], false);

    let e = execute(&node, "examples.object_return", json!({})).await?;
    assert_eq!(
        e["result"]["result"],
        json!({"a": "b", "c": {"d": "e", "f": 1, "g": true}})
    );
    let e = execute(
        &node,
        "examples.json_string_to_object",
        json!({"json_str": "{\"a\": [1, 2]}"}),
    )
    .await?;
    assert_eq!(e["result"]["result"], json!({"a": [1, 2]}), "{e}");
    let e = execute(
        &node,
        "examples.yaml_string_to_object",
        json!({"yaml_str": "a: [1, 2]\n"}),
    )
    .await?;
    assert_eq!(e["result"]["result"], json!({"a": [1, 2]}), "{e}");

    // The pack's own interpreter: its virtualenv.
    let e = execute(
        &node,
        "examples.python_runner_print_python_version",
        json!({}),
    )
    .await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    let stdout = e["result"]["stdout"].as_str().unwrap_or_default();
    assert!(
        stdout.contains(&format!(
            "Using Python executable: {}",
            venv.join("bin/python").display()
        )),
        "{stdout}"
    );
    assert_eq!(e["result"]["result"], Value::Null);

    // (status, result) pairs.
    let e = execute(
        &node,
        "examples.forloop_increase_index_and_check_condition",
        json!({"index": "2", "pagesize": "2", "input": {"a": 1, "b": 2}}),
    )
    .await?;
    assert_eq!(
        (&e["status"], &e["result"]["result"]),
        (&json!("succeeded"), &json!(3)),
        "{e}"
    );
    let e = execute(
        &node,
        "examples.forloop_increase_index_and_check_condition",
        json!({"index": "2", "pagesize": "5", "input": {"a": 1}}),
    )
    .await?;
    assert_eq!(
        (&e["status"], &e["result"]["result"]),
        (&json!("failed"), &json!("Breaking out of the loop")),
        "{e}"
    );

    let e = execute(
        &node,
        "examples.python_runner_print_to_stdout_and_stderr",
        json!({"count": 2, "sleep_delay": 0.01}),
    )
    .await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"]["stdout"], "stdout -> Line: 2\n", "{e}");
    assert!(
        e["result"]["stderr"]
            .as_str()
            .unwrap_or_default()
            .contains("stderr -> Line: 1\n"),
        "{e}"
    );
    Ok(())
}

/// StackStorm's `core.inject_trigger`, unchanged: through
/// `datastore_service.get_api_client()` it posts to `/webhooks/st2`, and
/// the trigger it names fires its rules.
#[tokio::test]
async fn core_inject_trigger_fires_the_rules_of_the_trigger_it_names() -> Result<()> {
    let packs = tempfile::tempdir()?;
    write_pack(
        packs.path(),
        "injected",
        &[
            (
                "pack.yaml",
                "ref: injected\nname: injected\ndescription: inject tests\nversion: 1.0.0\nauthor: ops\n",
            ),
            (
                "triggers/ping.yaml",
                "name: ping\npack: injected\ndescription: a ping\npayload_schema:\n  type: object\n",
            ),
            (
                "rules/on_ping.yaml",
                "name: on_ping\npack: injected\nenabled: true\ntrigger:\n  type: injected.ping\naction:\n  ref: core.local\n  parameters:\n    cmd: \"echo pinged by {{ trigger.who }}\"\n",
            ),
        ],
    )?;
    let node = node_with_public_api(vec![packs.path().to_path_buf()]).await?;
    let injected = execute(
        &node,
        "core.inject_trigger",
        json!({"trigger": "injected.ping", "payload": {"who": "core.inject_trigger"}}),
    )
    .await?;
    assert_eq!(injected["status"], "succeeded", "{injected}");
    let reaction = poll(Duration::from_secs(30), || async {
        let (_, list) = node.get("executions?action=core.local").await?;
        Ok(list
            .as_array()
            .and_then(|l| l.iter().find(|e| e["rule"]["ref"] == "injected.on_ping"))
            .cloned())
    })
    .await?;
    let done = node
        .finished(reaction["id"].as_str().context("id")?)
        .await?;
    assert_eq!(done["result"]["stdout"], "pinged by core.inject_trigger");
    Ok(())
}
