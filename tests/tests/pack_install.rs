//! `st2 pack install` on real nodes: StackStorm Exchange packs
//! (`tests/fixtures/exchange`, unchanged) made into git repositories and
//! installed with the official `st2 pack install file://...`, with real
//! git and real pip; their actions run with the official `st2 run`; bad
//! sources and broken packs fail with clear errors and leave the installed
//! version in place; `st2 pack remove` and `squall pack install|uninstall`;
//! and, on a two-node cluster, a pack installed through one node runs its
//! script action on the other.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use squall_tests::cluster::{admin_client, spec_in, NodeProcess};
use squall_tests::{
    login, poll, repo_root, squall_binary, st2, st2_json, st2_login, write_pack, NatsServer,
    TestNode,
};

/// Runs `git args...` in `dir`.
fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=squall-tests",
            "-c",
            "user.email=tests@localhost",
        ])
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running git")?;
    anyhow::ensure!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Copies `from` into `to` (files and directories).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A git repository in `root/<name>` holding the files of `source`, one
/// commit tagged `v<tag>`.
fn repo_of(root: &Path, name: &str, source: &Path, tag: &str) -> Result<PathBuf> {
    let dir = root.join(name);
    copy_tree(source, &dir)?;
    git(&dir, &["init", "--quiet", "--initial-branch=master"])?;
    git(&dir, &["add", "-A"])?;
    git(&dir, &["commit", "--quiet", "-m", "release"])?;
    git(&dir, &["tag", &format!("v{tag}")])?;
    Ok(dir)
}

fn commit_all(dir: &Path, message: &str) -> Result<()> {
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "--quiet", "-m", message])
}

fn exchange(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/exchange").join(name)
}

/// `squall --url ... --token ... args...`: (success, stdout + stderr).
async fn squall(root: &str, token: &str, args: &[&str]) -> Result<(bool, String)> {
    let out = tokio::process::Command::new(squall_binary()?)
        .args(["--url", root, "--token", token])
        .args(args)
        .env_remove("SQUALL_API_KEY")
        .stdin(Stdio::null())
        .output()
        .await?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// The error of the newest `packs.deploy` execution (the install step of
/// `packs.install`).
async fn install_error(node: &TestNode) -> Result<String> {
    let execs = node.executions().await?;
    let newest = execs
        .iter()
        .filter(|e| e["action"]["ref"] == "packs.deploy")
        .max_by_key(|e| {
            e["start_timestamp"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .context("no packs.deploy execution")?;
    assert_eq!(newest["status"], "failed", "{newest}");
    Ok(newest["result"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// The installed version of `pack` (None when not registered).
async fn version(node: &TestNode, pack: &str) -> Result<Option<String>> {
    let (status, body) = node.get(&format!("packs/{pack}")).await?;
    Ok((status == 200).then(|| body["version"].as_str().unwrap_or_default().to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn st2_pack_install_installs_exchange_packs_from_git() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let home = tempfile::tempdir()?;
    let home = home.path();
    let repos = tempfile::tempdir()?;
    st2_login(&node, home).await?;

    let csv = repo_of(repos.path(), "stackstorm-csv", &exchange("csv"), "1.0.0")?;
    let xml = repo_of(repos.path(), "stackstorm-xml", &exchange("xml"), "1.0.0")?;
    let syslog = repo_of(
        repos.path(),
        "stackstorm-syslog_client",
        &exchange("syslog_client"),
        "1.0.0",
    )?;
    // A later commit on xml's default branch: `=1.0.0` must install the
    // release (tag v1.0.0), not this.
    let manifest = std::fs::read_to_string(xml.join("pack.yaml"))?;
    std::fs::write(
        xml.join("pack.yaml"),
        manifest.replace("version: 1.0.0", "version: 1.1.0"),
    )?;
    commit_all(&xml, "next")?;

    // One pack, then two at once with a ref: the official CLI follows the
    // execution to its end and shows the installed packs.
    let csv_url = format!("file://{}", csv.display());
    let (ok, out, err) = st2(&node, home, &["pack", "install", &csv_url]).await?;
    assert!(ok, "st2 pack install csv: {out}{err}");
    assert!(
        out.contains("csv") && out.contains("CSV utilities"),
        "{out}"
    );
    let xml_url = format!("file://{}=1.0.0", xml.display());
    let syslog_url = format!("file://{}", syslog.display());
    let (ok, out, err) = st2(&node, home, &["pack", "install", &xml_url, &syslog_url]).await?;
    assert!(ok, "st2 pack install xml syslog_client: {out}{err}");
    assert!(
        out.contains("xml") && out.contains("syslog_client"),
        "{out}"
    );
    assert_eq!(version(&node, "xml").await?.as_deref(), Some("1.0.0"));
    assert_eq!(
        version(&node, "syslog_client").await?.as_deref(),
        Some("1.0.0")
    );
    let execs = node.executions().await?;
    let installs: Vec<&Value> = execs
        .iter()
        .filter(|e| e["action"]["ref"] == "packs.install")
        .collect();
    assert_eq!(installs.len(), 2, "{execs:?}");
    let last = installs
        .iter()
        .find(|e| {
            e["parameters"]["packs"]
                .as_array()
                .is_some_and(|p| p.len() == 2)
        })
        .context("the two-pack install")?;
    assert_eq!(last["status"], "succeeded");
    assert_eq!(
        last["result"]["output"]["packs_list"],
        json!(["xml", "syslog_client"])
    );

    // Their Python actions run in their virtualenvs (xml's requirement,
    // xmltodict, came from pip), from the node's copy of their files.
    let run = st2_json(&node, home, &["run", "csv.parse", "data=a,b\nc,d"]).await?;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"]["result"], json!([["a", "b"], ["c", "d"]]));
    let run = st2_json(&node, home, &["run", "xml.parse", "data=<a><b>1</b></a>"]).await?;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["result"]["result"], json!({"a": {"b": "1"}}));
    let venv = node.config.data_dir.join("virtualenvs/xml/bin/python");
    assert!(venv.exists(), "xml's virtualenv");
    let installed = node.config.data_dir.join("packs/csv");
    assert!(installed.join("actions/parse.py").is_file());
    assert!(!installed.join(".git").exists());
    let (status, action) = node.get("actions/syslog_client.write_syslog").await?;
    assert_eq!(status, 200, "{action}");

    // Bad input: each a clear error, the installed csv untouched.
    let csv_files = std::fs::read_link(&installed)?;
    let broken = repo_of(repos.path(), "broken-csv", &exchange("csv"), "2.0.0")?;
    std::fs::write(
        broken.join("pack.yaml"),
        "---\nref: csv\nname: csv\ndescription: broken\nversion: 2.0.0\nauthor: x\nkeywords: [unclosed\n",
    )?;
    commit_all(&broken, "broken")?;
    let broken_url = format!("file://{}", broken.display());
    let (ok, out, err) = st2(&node, home, &["pack", "install", &broken_url]).await?;
    assert!(!ok, "a broken pack.yaml must fail: {out}{err}");
    let error = install_error(&node).await?;
    assert!(out.contains(&error), "the CLI shows the error: {out}");
    assert!(
        error.contains(&format!("{broken_url}/pack.yaml:8: invalid YAML")),
        "names the file and line: {error}"
    );
    assert_eq!(version(&node, "csv").await?.as_deref(), Some("1.0.0"));
    assert_eq!(std::fs::read_link(&installed)?, csv_files);
    let run = st2_json(&node, home, &["run", "csv.parse", "data=x,y"]).await?;
    assert_eq!(run["result"]["result"], json!([["x", "y"]]), "{run}");

    let unknown = format!("file://{}=9.9.9", xml.display());
    let (ok, out, err) = st2(&node, home, &["pack", "install", &unknown]).await?;
    assert!(!ok, "{out}{err}");
    let error = install_error(&node).await?;
    assert!(
        error.contains("\"9.9.9\" is not a valid version, hash, tag or branch"),
        "{error}"
    );
    assert!(error.contains("Available versions are: v1.0.0."), "{error}");
    assert_eq!(version(&node, "xml").await?.as_deref(), Some("1.0.0"));

    let (ok, out, err) = st2(
        &node,
        home,
        &["pack", "install", "StackStorm-Exchange/stackstorm-csv"],
    )
    .await?;
    assert!(!ok, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("https://github.com/StackStorm-Exchange/stackstorm-csv"),
        "says which git URL to use: {out}{err}"
    );

    let needs = write_pack(
        repos.path(),
        "needsdep",
        &[
            (
                "pack.yaml",
                &format!(
                    "ref: needsdep\nname: needsdep\ndescription: d\nversion: 1.0.0\nauthor: t\ndependencies:\n  - file://{}/missing\n",
                    repos.path().display()
                ),
            ),
            ("actions/hi.yaml", "name: hi\nrunner_type: local-shell-cmd\nparameters:\n  cmd:\n    default: echo hi\n"),
        ],
    )?;
    let needs_url = format!("file://{}", needs.display());
    let (ok, out, err) = st2(&node, home, &["pack", "install", &needs_url]).await?;
    assert!(!ok, "{out}{err}");
    let error = install_error(&node).await?;
    assert!(
        error.starts_with("dependency \"file://") && error.contains("doesn't exist"),
        "{error}"
    );
    assert_eq!(version(&node, "needsdep").await?, None);

    // `squall pack install` of a plain directory, a dependency installed
    // first; `squall pack uninstall`.
    let token = login(&node.root, "admin", &node.admin_password).await?;
    let base = write_pack(
        repos.path(),
        "basepack",
        &[
            (
                "pack.yaml",
                "ref: basepack\nname: basepack\ndescription: b\nversion: 0.1.0\nauthor: t\n",
            ),
            ("actions/hello.sh", "#!/bin/sh\necho \"hello from $0\"\n"),
            (
                "actions/hello.yaml",
                "name: hello\nrunner_type: local-shell-script\nentry_point: hello.sh\n",
            ),
        ],
    )?;
    let top = write_pack(
        repos.path(),
        "toppack",
        &[(
            "pack.yaml",
            &format!(
                "ref: toppack\nname: toppack\ndescription: t\nversion: 0.1.0\nauthor: t\ndependencies:\n  - file://{}\n",
                base.display()
            ),
        )],
    )?;
    let (ok, out) = squall(
        &node.root,
        &token,
        &["pack", "install", &top.display().to_string()],
    )
    .await?;
    assert!(ok, "squall pack install: {out}");
    assert!(out.contains("succeeded"), "{out}");
    assert_eq!(version(&node, "basepack").await?.as_deref(), Some("0.1.0"));
    assert_eq!(version(&node, "toppack").await?.as_deref(), Some("0.1.0"));
    let run = st2_json(&node, home, &["run", "basepack.hello"]).await?;
    assert_eq!(run["status"], "succeeded", "{run}");
    let (ok, out) = squall(&node.root, &token, &["pack", "uninstall", "toppack"]).await?;
    assert!(ok, "squall pack uninstall: {out}");
    assert_eq!(version(&node, "toppack").await?, None);
    let (ok, out) = squall(&node.root, &token, &["pack", "uninstall", "core"]).await?;
    assert!(!ok && out.contains("system pack"), "{out}");

    // `st2 pack remove`: gone from the API and from the node's disk.
    let (ok, out, err) = st2(&node, home, &["pack", "remove", "csv"]).await?;
    assert!(ok, "st2 pack remove csv: {out}{err}");
    assert_eq!(version(&node, "csv").await?, None);
    assert!(!installed.exists(), "csv's files are removed");
    assert!(
        !node.config.data_dir.join("virtualenvs/csv").exists(),
        "and its virtualenv"
    );
    let (status, _) = node.get("actions/csv.parse").await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pack_installed_through_one_node_runs_on_another() -> Result<()> {
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let spec = spec_in(dir.path(), nats.url(), 1, 8);
    // `a` runs the default pool (the install), `b` only the pool the
    // pack's action asks for: the action can run nowhere but on `b`.
    let a = NodeProcess::start(&spec, "a", "")?;
    let api_a = admin_client(&spec, &a).await?;
    let b = NodeProcess::start(&spec, "b", "runners:\n  pools: [far]\n")?;
    let api_b = admin_client(&spec, &b).await?;
    let packs = tempfile::tempdir()?;
    let pack = write_pack(
        packs.path(),
        "travels",
        &[
            ("pack.yaml", "ref: travels\nname: travels\ndescription: t\nversion: 1.0.0\nauthor: t\n"),
            ("actions/where.sh", "#!/bin/sh\necho \"running $0\"\n"),
            (
                "actions/where.yaml",
                "name: where\nrunner_type: local-shell-script\nentry_point: where.sh\ntags:\n  - name: squall.pool\n    value: far\n",
            ),
        ],
    )?;
    git(&pack, &["init", "--quiet"])?;
    commit_all(&pack, "travels")?;

    let post = |api: &squall_tests::cluster::Api, path: &str, body: Value| {
        let (http, url) = (api.http.clone(), format!("{}/{path}", api.base));
        async move {
            let r = http.post(url).json(&body).send().await?;
            let status = r.status().as_u16();
            Ok::<_, anyhow::Error>((status, r.json::<Value>().await?))
        }
    };
    let finished = |api: &squall_tests::cluster::Api, id: String| {
        let api = api.clone();
        async move {
            poll(Duration::from_secs(120), || async {
                let e = api.get(&format!("executions/{id}")).await?;
                let done = !matches!(
                    e["status"].as_str(),
                    Some("requested" | "scheduled" | "running" | "delayed")
                );
                Ok(done.then_some(e))
            })
            .await
        }
    };
    let (status, started) = post(
        &api_a,
        "packs/install",
        json!({"packs": [format!("file://{}", pack.display())]}),
    )
    .await?;
    assert_eq!(status, 202, "{started}");
    let install = finished(
        &api_a,
        started["execution_id"].as_str().unwrap_or_default().into(),
    )
    .await?;
    assert_eq!(install["status"], "succeeded", "{install}\n{}", a.log());

    // Requested through `a`, run by `b` from its own copy of the files.
    let (status, run) = post(&api_a, "executions", json!({"action": "travels.where"})).await?;
    assert_eq!(status, 201, "{run}");
    let run = finished(&api_b, run["id"].as_str().unwrap_or_default().into()).await?;
    assert_eq!(run["status"], "succeeded", "{run}\n{}", b.log());
    let copy = dir.path().join("b-data/packs/travels");
    let stdout = run["result"]["stdout"].as_str().unwrap_or_default();
    assert!(stdout.contains("b-data/packs/travels"), "{stdout}");
    assert!(copy.join("actions/where.sh").is_file());

    // A node that joins later gets the installed packs at its start: `a`
    // leaves, `c` (the default pool now) runs an Exchange pack's Python
    // action from its own copy, in a virtualenv it built itself.
    let repos = tempfile::tempdir()?;
    let csv = repo_of(repos.path(), "stackstorm-csv", &exchange("csv"), "1.0.0")?;
    let (status, started) = post(
        &api_b,
        "packs/install",
        json!({"packs": [format!("file://{}=1.0.0", csv.display())]}),
    )
    .await?;
    assert_eq!(status, 202, "{started}");
    let install = finished(
        &api_b,
        started["execution_id"].as_str().unwrap_or_default().into(),
    )
    .await?;
    assert_eq!(install["status"], "succeeded", "{install}\n{}", a.log());
    let mut a = a;
    a.stop()?;
    let c = NodeProcess::start(&spec, "c", "")?;
    let api_c = admin_client(&spec, &c).await?;
    let (status, run) = post(
        &api_c,
        "executions",
        json!({"action": "csv.parse", "parameters": {"data": "a,b"}}),
    )
    .await?;
    assert_eq!(status, 201, "{run}");
    let run = finished(&api_c, run["id"].as_str().unwrap_or_default().into()).await?;
    assert_eq!(run["status"], "succeeded", "{run}\n{}", c.log());
    assert_eq!(run["result"]["result"], json!([["a", "b"]]));
    assert!(dir
        .path()
        .join("c-data/virtualenvs/csv/bin/python")
        .exists());

    // Uninstalled through `b`: gone from the disks of the nodes up, and
    // from `a`'s when it starts again.
    for pack in ["travels", "csv"] {
        let (status, started) = post(&api_b, "packs/uninstall", json!({"packs": [pack]})).await?;
        assert_eq!(status, 202, "{started}");
        let removal = finished(
            &api_b,
            started["execution_id"].as_str().unwrap_or_default().into(),
        )
        .await?;
        assert_eq!(removal["status"], "succeeded", "{removal}");
    }
    let gone = |node: &str, pack: &str| {
        !dir.path()
            .join(format!("{node}-data/packs/{pack}"))
            .exists()
    };
    poll(Duration::from_secs(30), || async {
        Ok((gone("b", "travels") && gone("c", "travels") && gone("c", "csv")).then_some(()))
    })
    .await
    .context("the pack's files stayed on a node")?;
    assert!(!gone("a", "csv"), "a was down: it still has csv");
    let a = NodeProcess::start(&spec, "a", "")?;
    admin_client(&spec, &a).await?;
    poll(Duration::from_secs(30), || async {
        Ok((gone("a", "travels") && gone("a", "csv")).then_some(()))
    })
    .await
    .context("a kept the files of packs uninstalled while it was down")?;
    Ok(())
}
