//! Pack config end to end: `config.schema.yaml` registered with its pack,
//! values from the configs directory and from `PUT /configs/{pack}`,
//! masking and `show_secrets`, the config a Python action gets (`st2kv`
//! rendered, secrets decrypted, defaults filled), `config_context` in
//! parameter defaults, and every rejection: a config file or a PUT that
//! breaks the schema, a stored config the schema no longer accepts, a
//! dynamic value reading a missing key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{json, Value};
use squall_tests::{poll, repo_root, st2_login, write_pack, TestNode};

fn fault(body: &Value) -> &str {
    body["faultstring"].as_str().unwrap_or_default()
}

const SCHEMA: &str = "---
api_key:
  description: API key, read from a secret datastore key.
  type: string
  secret: true
  required: true
region:
  type: string
  default: us-east-1
retries:
  type: integer
  default: 3
owner_token:
  type: string
greeting:
  type: string
";

/// A pack whose Python action returns its config, and whose shell action
/// reads `config_context` in a parameter default (so it needs the config
/// before it is even requested).
fn demo_pack(root: &Path, schema: &str) -> Result<PathBuf> {
    write_pack(
        root,
        "cfgdemo",
        &[
            (
                "pack.yaml",
                "name: cfgdemo\ndescription: pack config demo\nversion: 1.0.0\nauthor: squall\n",
            ),
            ("config.schema.yaml", schema),
            (
                "actions/show_config.yaml",
                "name: show_config\nrunner_type: python-script\nentry_point: show_config.py\n",
            ),
            (
                "actions/show_config.py",
                "from st2common.runners.base_action import Action\n\n\n\
                 class ShowConfig(Action):\n    def run(self):\n        \
                 return {\"config\": self.config}\n",
            ),
            (
                "actions/echo_region.yaml",
                "name: echo_region\nrunner_type: local-shell-cmd\n\
                 parameters:\n  cmd:\n    default: \"echo region={{ config_context.region }}\"\n",
            ),
        ],
    )
}

/// A node with the `core` pack, the packs in `pack_root` and a configs
/// directory.
async fn node_with(pack_root: &Path, configs: &Path) -> Result<TestNode> {
    let dirs = vec![repo_root().join("packs"), pack_root.to_path_buf()];
    node_with_dirs(dirs, configs).await
}

async fn node_with_dirs(dirs: Vec<PathBuf>, configs: &Path) -> Result<TestNode> {
    let configs = configs.to_path_buf();
    TestNode::start_with(dirs, move |cfg| cfg.packs.configs_dir = Some(configs)).await
}

async fn put_key(node: &TestNode, name: &str, body: Value) -> Result<()> {
    let (status, out) = node
        .call(
            &node.http,
            Method::PUT,
            &format!("keys/{name}"),
            Some(&body),
        )
        .await?;
    anyhow::ensure!(status == 200, "key {name}: {status} {out}");
    Ok(())
}

async fn run(node: &TestNode, action: &str) -> Result<Value> {
    let (status, e) = node.post("executions", &json!({"action": action})).await?;
    anyhow::ensure!(status == 201, "{status} {e}");
    node.finished(e["id"].as_str().context("execution id")?)
        .await
}

async fn register(node: &TestNode) -> Result<(u16, Value)> {
    node.post("packs/register", &json!({"packs": ["cfgdemo"]}))
        .await
}

/// Waits until the node's copy of the configs has `pack`'s `values`.
async fn stored(node: &TestNode, pack: &str, values: &Value) -> Result<()> {
    poll(Duration::from_secs(10), || async {
        let (status, c) = node
            .get(&format!("configs/{pack}?show_secrets=true"))
            .await?;
        Ok((status == 200 && &c["values"] == values).then_some(()))
    })
    .await
}

#[tokio::test]
async fn stackstorms_examples_schema_with_a_configs_directory() -> Result<()> {
    let configs = tempfile::tempdir()?;
    std::fs::write(
        configs.path().join("examples.yaml"),
        "---\napi_key: \"key-123\"\napi_secret: \"s3cret-456\"\n",
    )?;
    // StackStorm's pack alone: Squall's own `examples` pack has its name.
    let fixtures = repo_root().join("tests/fixtures/st2-examples");
    let node = node_with_dirs(vec![fixtures], configs.path()).await?;

    let (status, schema) = node.get("config_schemas/examples").await?;
    assert_eq!(status, 200, "{schema}");
    assert_eq!(schema["pack"], "examples");
    assert_eq!(schema["attributes"]["region"]["default"], "us-east-1");
    assert_eq!(schema["attributes"]["api_key"]["secret"], true);
    let (_, schemas) = node.get("config_schemas").await?;
    let packs: Vec<&str> = schemas
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["pack"].as_str())
        .collect();
    assert!(packs.contains(&"examples"), "{schemas}");
    assert!(!packs.contains(&"core"), "core has no schema: {schemas}");

    // Secrets masked; the schema's default filled.
    let (status, config) = node.get("configs/examples").await?;
    assert_eq!(status, 200, "{config}");
    assert_eq!(
        config["values"],
        json!({"api_key": "********", "api_secret": "********", "region": "us-east-1"})
    );
    let (_, opened) = node.get("configs/examples?show_secrets=true").await?;
    assert_eq!(opened["values"]["api_secret"], "s3cret-456");
    let (_, all) = node.get("configs").await?;
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    assert_eq!(all[0]["values"]["api_key"], "********");

    // StackStorm's own Python action prints the config it was given.
    let e = run(&node, "examples.print_config").await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(
        e["result"]["stdout"],
        "=========\n{'api_key': 'key-123', 'api_secret': 's3cret-456', 'region': 'us-east-1'}\n=========\n"
    );
    // Opening the config's secrets for the run is on the audit trail:
    // which items, for which execution and user, never the values.
    let run_id = e["id"].as_str().context("execution id")?.to_string();
    let js = async_nats::jetstream::new(async_nats::connect(node.nats.url()).await?);
    let opened = poll(Duration::from_secs(20), || {
        let (js, run_id) = (js.clone(), run_id.clone());
        async move {
            let mut stream = js.get_stream("AUDIT").await?;
            let last = stream.info().await?.state.last_sequence;
            let mut found = Vec::new();
            for seq in 1..=last {
                let Ok(m) = stream.get_raw_message(seq).await else {
                    continue;
                };
                if m.subject.as_str() == "squall.audit.pack_config.decrypted" {
                    let text = String::from_utf8_lossy(&m.payload).to_string();
                    found.push(serde_json::from_str::<Value>(&text)?);
                }
            }
            found.retain(|ev| ev["data"]["execution"] == run_id.as_str());
            Ok((found.len() >= 2).then_some(found))
        }
    })
    .await?;
    let items: std::collections::BTreeSet<&str> = opened
        .iter()
        .filter_map(|ev| ev["data"]["item"].as_str())
        .collect();
    assert_eq!(items, ["api_key", "api_secret"].into(), "{opened:?}");
    for ev in &opened {
        assert_eq!(ev["actor"]["user"], "admin", "{ev}");
        assert_eq!(ev["object"]["kind"], "pack_config");
        assert!(!ev.to_string().contains("s3cret-456"), "{ev}");
    }

    // Only admins see secrets; the request is refused, not quietly masked.
    let observer = node.user("olive", "observer").await?;
    let (status, body) = node
        .call(
            &observer,
            Method::GET,
            "configs/examples?show_secrets=true",
            None,
        )
        .await?;
    assert_eq!(status, 403, "{body}");
    let (status, masked) = node
        .call(&observer, Method::GET, "configs/examples", None)
        .await?;
    assert_eq!(status, 200);
    assert_eq!(masked["values"]["api_secret"], "********");

    // StackStorm's client library reads both shapes.
    let script = "import json, os, sys\n\
        from st2client.client import Client\n\
        c = Client(api_url=os.environ['API'], token=os.environ['TOKEN'])\n\
        s = c.managers['ConfigSchema'].get_by_ref_or_id('examples')\n\
        cfg = [x for x in c.managers['Config'].get_all() if x.pack == 'examples'][0]\n\
        print(json.dumps({'attributes': s.attributes, 'values': cfg.values}))\n";
    let cli = squall_tests::st2_cli_binary()?;
    let python = cli.with_file_name("python");
    let token = squall_tests::login(&node.root, "admin", &node.admin_password).await?;
    let out = tokio::process::Command::new(&python)
        .args(["-c", script])
        .env("API", format!("{}/v1", node.root))
        .env("TOKEN", token)
        .output()
        .await
        .with_context(|| format!("running {}", python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "st2client failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read: Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(read["attributes"]["region"]["default"], "us-east-1");
    assert_eq!(read["values"]["api_key"], "********");

    // The CLI's `st2 pack config` reads the schema first: a pack without
    // one is reported as StackStorm reports it. (Its interactive form then
    // needs an old prompt_toolkit, a client-side matter.)
    let home = tempfile::tempdir()?;
    st2_login(&node, home.path()).await?;
    let (ok, out, err) =
        squall_tests::st2(&node, home.path(), &["pack", "config", "nosuchpack"]).await?;
    assert!(!ok, "{out}{err}");
    assert!(
        out.contains("Pack \"nosuchpack\" doesn't exist or doesn't have a config schema defined."),
        "{out}{err}"
    );
    Ok(())
}

#[tokio::test]
async fn a_python_action_gets_its_config_rendered_decrypted_and_defaulted() -> Result<()> {
    let packs = tempfile::tempdir()?;
    demo_pack(packs.path(), SCHEMA)?;
    let configs = tempfile::tempdir()?;
    std::fs::write(
        configs.path().join("cfgdemo.yaml"),
        "---\napi_key: \"{{ st2kv.system.cfgdemo_key }}\"\nregion: \"{{ st2kv.system.region }}\"\n\
         owner_token: \"{{ st2kv.user.token | decrypt_kv }}\"\n",
    )?;
    let node = node_with(packs.path(), configs.path()).await?;
    put_key(
        &node,
        "cfgdemo_key",
        json!({"value": "k-0f3c9", "secret": true}),
    )
    .await?;
    put_key(&node, "region", json!({"value": "eu-west-1"})).await?;
    put_key(
        &node,
        "token",
        json!({"value": "admins-token", "secret": true, "scope": "user"}),
    )
    .await?;

    let e = run(&node, "cfgdemo.show_config").await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(
        e["result"]["result"]["config"],
        json!({"api_key": "k-0f3c9", "region": "eu-west-1", "retries": 3,
               "owner_token": "admins-token"})
    );
    // The resolved config is in no record: only what the action returned.
    let record = e.to_string();
    assert_eq!(record.matches("k-0f3c9").count(), 1, "{record}");

    // `config_context` in a parameter default, rendered as the run's
    // parameters are (any runner).
    let e = run(&node, "cfgdemo.echo_region").await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["parameters"]["cmd"], "echo region=eu-west-1");
    assert_eq!(e["result"]["stdout"], "region=eu-west-1");

    // A dynamic value reading a key that does not exist through
    // decrypt_kv fails the run, naming the pack and the field.
    let (status, body) = node
        .call(
            &node.http,
            Method::PUT,
            "configs/cfgdemo",
            Some(&json!({"api_key": "{{ st2kv.system.cfgdemo_key }}",
                         "greeting": "{{ st2kv.system.nope | decrypt_kv }}"})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    stored(
        &node,
        "cfgdemo",
        &json!({"api_key": "{{ st2kv.system.cfgdemo_key }}",
                "greeting": "{{ st2kv.system.nope | decrypt_kv }}",
                "region": "us-east-1", "retries": 3}),
    )
    .await?;
    let e = run(&node, "cfgdemo.show_config").await?;
    assert_eq!(e["status"], "failed", "{e}");
    let error = e["result"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("key \"greeting\"")
            && error.contains("pack \"cfgdemo\"")
            && error.contains("Referenced datastore item \"nope\" doesn't exist"),
        "{e}"
    );
    // The same failure stops a run whose parameters read config_context
    // before it is requested.
    let (status, body) = node
        .post("executions", &json!({"action": "cfgdemo.echo_region"}))
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).contains("key \"greeting\""), "{body}");
    Ok(())
}

#[tokio::test]
async fn put_validates_stores_masks_and_writes_the_file() -> Result<()> {
    let packs = tempfile::tempdir()?;
    demo_pack(packs.path(), SCHEMA)?;
    let configs = tempfile::tempdir()?;
    let node = node_with(packs.path(), configs.path()).await?;

    let (status, none) = node.get("configs/cfgdemo").await?;
    assert_eq!(status, 404, "{none}");
    assert!(fault(&none).contains("has no config"), "{none}");

    // Every problem, by field.
    let (status, body) = node
        .call(
            &node.http,
            Method::PUT,
            "configs/cfgdemo",
            Some(&json!({"retries": "many", "region": 7})),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    let fault_text = fault(&body);
    assert!(
        fault_text.contains("region: must be string or null, got 7")
            && fault_text.contains("retries: must be integer or null, got \"many\"")
            && fault_text.contains("api_key: is required"),
        "{body}"
    );
    // A secret's value is not echoed back.
    let (status, body) = node
        .call(
            &node.http,
            Method::PUT,
            "configs/cfgdemo",
            Some(&json!({"api_key": 991177})),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        fault(&body).contains("api_key: must be string (the value is secret and not shown)")
            && !body.to_string().contains("991177"),
        "{body}"
    );
    let (status, body) = node
        .call(
            &node.http,
            Method::PUT,
            "configs/cfgdemo",
            Some(&json!(["not", "an", "object"])),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).contains("expected an object"), "{body}");
    let (status, body) = node
        .call(
            &node.http,
            Method::PUT,
            "configs/nosuchpack",
            Some(&json!({})),
        )
        .await?;
    assert_eq!(status, 404, "{body}");
    assert!(fault(&body).contains("not registered"), "{body}");
    // Setting a config is for admins.
    let operator = node.user("otto", "operator").await?;
    let (status, body) = node
        .call(
            &operator,
            Method::PUT,
            "configs/cfgdemo",
            Some(&json!({"api_key": "x"})),
        )
        .await?;
    assert_eq!(status, 403, "{body}");

    let (status, set) = node
        .call(
            &node.http,
            Method::PUT,
            "configs/cfgdemo",
            Some(&json!({"api_key": "plain-secret", "greeting": "hi"})),
        )
        .await?;
    assert_eq!(status, 200, "{set}");
    assert_eq!(
        set["values"],
        json!({"api_key": "********", "greeting": "hi", "region": "us-east-1", "retries": 3})
    );
    let values = json!({"api_key": "plain-secret", "greeting": "hi",
                        "region": "us-east-1", "retries": 3});
    stored(&node, "cfgdemo", &values).await?;
    let (_, masked) = node.get("configs/cfgdemo").await?;
    assert_eq!(masked["values"]["api_key"], "********");
    // At rest the literal secret is sealed.
    let bus = node
        .node
        .as_ref()
        .map(|n| n.bus.clone())
        .context("stopped")?;
    let raw = bus
        .js
        .get_key_value("configs")
        .await?
        .get("cfgdemo")
        .await?
        .context("no stored config")?;
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        raw.contains("\"greeting\":\"hi\"") && !raw.contains("plain-secret"),
        "{raw}"
    );
    // Written where a registration reads it back.
    let file = std::fs::read_to_string(configs.path().join("cfgdemo.yaml"))?;
    assert!(file.contains("greeting: hi"), "{file}");
    let (status, body) = register(&node).await?;
    assert_eq!(status, 200, "{body}");
    stored(&node, "cfgdemo", &values).await?;
    let e = run(&node, "cfgdemo.show_config").await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"]["result"]["config"], values);

    // A node start takes its file only when it differs from the one last
    // registered: a value set through the API (here, as if on another
    // node: this node's file is put back as registered) survives it.
    let mut node = node;
    let file = configs.path().join("cfgdemo.yaml");
    let registered_text = std::fs::read_to_string(&file)?;
    let (status, body) = node
        .call(
            &node.http,
            Method::PUT,
            "configs/cfgdemo",
            Some(&json!({"api_key": "plain-secret", "greeting": "from the API"})),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    let from_api = json!({"api_key": "plain-secret", "greeting": "from the API",
                          "region": "us-east-1", "retries": 3});
    stored(&node, "cfgdemo", &from_api).await?;
    assert!(std::fs::read_to_string(&file)?.contains("from the API"));
    std::fs::write(&file, &registered_text)?;
    node.restart().await?;
    stored(&node, "cfgdemo", &from_api).await?;
    // An edited file is taken.
    node.stop().await;
    std::fs::write(&file, "api_key: edited-secret\n")?;
    node.restart().await?;
    stored(
        &node,
        "cfgdemo",
        &json!({"api_key": "edited-secret", "region": "us-east-1", "retries": 3}),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn configs_that_break_the_schema_are_refused_or_fail_their_runs() -> Result<()> {
    let packs = tempfile::tempdir()?;
    let dir = demo_pack(packs.path(), SCHEMA)?;
    let configs = tempfile::tempdir()?;
    let node = node_with(packs.path(), configs.path()).await?;

    // A config file that breaks the schema fails the pack's registration,
    // naming the file, the line and the field.
    let file = configs.path().join("cfgdemo.yaml");
    std::fs::write(&file, "---\napi_key: k\nretries: lots\n")?;
    let (status, body) = register(&node).await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        fault(&body).contains(&format!(
            "{}:3: retries: must be integer or null, got \"lots\"",
            file.display()
        )),
        "{body}"
    );
    std::fs::write(&file, "---\napi_key: k\nretries: 5\n")?;
    let (status, body) = register(&node).await?;
    assert_eq!(status, 200, "{body}");
    stored(
        &node,
        "cfgdemo",
        &json!({"api_key": "k", "retries": 5, "region": "us-east-1"}),
    )
    .await?;

    // The schema changes under a stored config: `retries` becomes a
    // string and a new item is required. The run fails, naming both.
    std::fs::remove_file(&file)?;
    let changed = SCHEMA.replace("type: integer\n  default: 3", "type: string")
        + "zone:\n  type: string\n  required: true\n";
    std::fs::write(dir.join("config.schema.yaml"), changed)?;
    let (status, body) = register(&node).await?;
    assert_eq!(status, 200, "{body}");
    let (_, schema) = node.get("config_schemas/cfgdemo").await?;
    assert_eq!(schema["attributes"]["zone"]["required"], true, "{schema}");
    let e = run(&node, "cfgdemo.show_config").await?;
    assert_eq!(e["status"], "failed", "{e}");
    let error = e["result"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("config for pack \"cfgdemo\" does not match its schema")
            && error.contains("retries: must be string or null, got 5")
            && error.contains("zone: is required"),
        "{e}"
    );

    // An empty schema file is refused, as StackStorm refuses it.
    std::fs::write(dir.join("config.schema.yaml"), "---\n")?;
    let (status, body) = register(&node).await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        fault(&body).contains("cfgdemo/config.schema.yaml: the config schema is empty and invalid"),
        "{body}"
    );
    Ok(())
}
