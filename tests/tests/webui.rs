//! The web UI in a real headless Chromium against a real node, and the
//! failed-login throttling behind its login form and the API's token route.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{json, Value};
use squall_tests::browser::Browser;
use squall_tests::{login, write_pack, TestNode};

const WAIT: Duration = Duration::from_secs(30);

fn fault(body: &Value) -> &str {
    body["faultstring"].as_str().unwrap_or_default()
}

/// `POST /auth/v1/tokens` as `user` → (status, Retry-After, body).
async fn try_login(
    node: &TestNode,
    user: &str,
    password: &str,
) -> Result<(u16, Option<u64>, Value)> {
    let r = reqwest::Client::new()
        .post(format!("{}/auth/v1/tokens", node.root))
        .basic_auth(user, Some(password))
        .send()
        .await?;
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("Retry-After")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    Ok((status, retry, r.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn failed_logins_back_off_then_lock_until_an_admin_lifts_it() -> Result<()> {
    let node = TestNode::start(vec![]).await?;
    let observer = node.user("olga", "observer").await?;
    let (status, _) = node
        .post(
            "users",
            &json!({"name": "bob", "password": "bob-password", "role": "operator"}),
        )
        .await?;
    assert_eq!(status, 201);

    // Five wrong passwords are plain 401s.
    for _ in 0..5 {
        let (status, retry, body) = try_login(&node, "bob", "guess").await?;
        assert_eq!(status, 401, "{body}");
        assert_eq!(retry, None);
    }
    // The sixth attempt is refused before the password is looked at, even
    // the right one, with how long to wait and who can lift it.
    for password in ["guess", "bob-password"] {
        let (status, retry, body) = try_login(&node, "bob", password).await?;
        assert_eq!(status, 429, "{body}");
        let retry = retry.context("429 without Retry-After")?;
        assert!((1..=30).contains(&retry), "Retry-After {retry}");
        let msg = fault(&body);
        assert!(
            msg.contains("too many failed logins for user \"bob\""),
            "{msg}"
        );
        assert!(msg.contains("squall lockout clear user bob"), "{msg}");
        assert!(msg.contains("DELETE /api/v1/lockouts/user/bob"), "{msg}");
    }
    // The UI's login route is throttled alike.
    let r = reqwest::Client::new()
        .post(format!("{}/ui/login", node.root))
        .json(&json!({"username": "bob", "password": "bob-password"}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().get("Retry-After").is_some());
    // The UI's cookie: HttpOnly, SameSite=Strict, Secure behind HTTPS.
    let r = reqwest::Client::new()
        .post(format!("{}/ui/login", node.root))
        .header("X-Forwarded-Proto", "https")
        .json(&json!({"username": "olga", "password": "olga-password"}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r
        .headers()
        .get("set-cookie")
        .context("no cookie")?
        .to_str()?
        .to_string();
    for part in [
        "auth-token=",
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Path=/",
    ] {
        assert!(cookie.contains(part), "{part} missing: {cookie}");
    }
    let r = reqwest::Client::new()
        .post(format!("{}/ui/login", node.root))
        .json(&json!({"username": "olga", "password": "olga-password", "extra": 1}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 400, "unknown fields are refused");
    // Other users are not held back by bob's failures.
    login(&node.root, "olga", "olga-password").await?;

    // Only an admin sees and lifts holds.
    let (status, body) = node.call(&observer, Method::GET, "lockouts", None).await?;
    assert_eq!(status, 403, "{body}");
    let (status, body) = node
        .call(&observer, Method::DELETE, "lockouts/user/bob", None)
        .await?;
    assert_eq!(status, 403, "{body}");
    let (status, list) = node.get("lockouts").await?;
    assert_eq!(status, 200, "{list}");
    let bob = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["kind"] == "user" && r["name"] == "bob")
        .with_context(|| format!("bob is not listed: {list}"))?;
    assert_eq!(bob["failures"], 5, "{bob}");
    assert!(bob["held_until"].is_string(), "{bob}");
    let (status, body) = node
        .call(&node.http, Method::DELETE, "lockouts/user/bob", None)
        .await?;
    assert_eq!(status, 204, "{body}");
    let (status, body) = node
        .call(&node.http, Method::DELETE, "lockouts/user/bob", None)
        .await?;
    assert_eq!(status, 404, "{body}");
    assert_eq!(fault(&body), "user \"bob\" has no recent failed logins");
    let (status, body) = node
        .call(&node.http, Method::DELETE, "lockouts/group/bob", None)
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(fault(&body).starts_with("kind: \"group\""), "{body}");
    let (status, _, body) = try_login(&node, "bob", "bob-password").await?;
    assert_eq!(status, 201, "{body}");

    // Failures against many names from one address hold the address back.
    for i in 0..15 {
        let (status, _, body) = try_login(&node, &format!("nobody{i}"), "guess").await?;
        assert_eq!(status, 401, "{body}");
    }
    let (status, _, body) = try_login(&node, "nobody-else", "guess").await?;
    assert_eq!(status, 429, "{body}");
    assert!(fault(&body).contains("client address 127.0.0.1"), "{body}");
    // The CLI lists and lifts holds too.
    let admin = login(&node.root, "admin", &node.admin_password).await;
    assert!(admin.is_err(), "the held address let the admin in");
    let token = {
        // An admin token issued before the hold still works.
        let (_, key) = node.post("apikeys", &json!({})).await?;
        key["key"].as_str().context("no API key")?.to_string()
    };
    let cli = |args: &'static [&'static str]| {
        let (root, token) = (node.root.clone(), token.clone());
        let home = node.dir.path().to_path_buf();
        async move {
            let out = tokio::process::Command::new(squall_tests::squall_binary()?)
                .args(["--url", &root, "--api-key", &token])
                .args(args)
                .env_remove("SQUALL_AUTH_TOKEN")
                .env("XDG_CONFIG_HOME", &home)
                .stdin(std::process::Stdio::null())
                .output()
                .await?;
            anyhow::ensure!(
                out.status.success(),
                "squall {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            anyhow::Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
    };
    let listed = cli(&["lockout", "list"]).await?;
    assert!(
        listed.contains("address") && listed.contains("127.0.0.1"),
        "{listed}"
    );
    let cleared = cli(&["lockout", "clear", "address", "127.0.0.1"]).await?;
    assert!(cleared.contains("forgotten"), "{cleared}");
    let (status, _, body) = try_login(&node, "bob", "bob-password").await?;
    assert_eq!(status, 201, "{body}");
    Ok(())
}

/// A three-task workflow whose middle task takes a while, one that asks a
/// person, and a webhook rule.
fn workflow_pack(root: &std::path::Path) -> Result<()> {
    write_pack(
        root,
        "uiflows",
        &[
            ("pack.yaml", "name: uiflows\nversion: 0.1.0\n"),
            (
                "actions/three.yaml",
                "name: three\nrunner_type: orquesta\nentry_point: workflows/three.yaml\n",
            ),
            (
                "actions/workflows/three.yaml",
                "version: 1.0\ntasks:\n  fetch:\n    action: core.local cmd=\"echo fetched\"\n    next:\n      - when: <% succeeded() %>\n        do: build\n  build:\n    action: core.local cmd=\"sleep 4; echo built\"\n    next:\n      - when: <% succeeded() %>\n        do: report\n  report:\n    action: core.noop\n",
            ),
            (
                "actions/approve.yaml",
                "name: approve\nrunner_type: orquesta\nentry_point: workflows/approve.yaml\n",
            ),
            (
                "actions/workflows/approve.yaml",
                "version: 1.0\ntasks:\n  ask:\n    action: core.ask\n    next:\n      - when: <% succeeded() %>\n        do: finish\n  finish:\n    action: core.noop\n",
            ),
            (
                "rules/on_hook.yaml",
                "name: on_hook\npack: uiflows\nenabled: true\ntrigger:\n  type: core.st2.webhook\n  parameters:\n    url: uihook\naction:\n  ref: core.local\n  parameters:\n    cmd: echo hooked\n",
            ),
        ],
    )?;
    Ok(())
}

async fn start(node: &TestNode, action: &str, parameters: Value) -> Result<String> {
    let (status, body) = node
        .post(
            "executions",
            &json!({"action": action, "parameters": parameters}),
        )
        .await?;
    anyhow::ensure!(status == 201, "starting {action}: {status} {body}");
    Ok(body["id"].as_str().context("no id")?.to_string())
}

/// How many items `GET <path>` lists.
async fn listed(node: &TestNode, path: &str) -> Result<usize> {
    let (_, all) = node.get(path).await?;
    Ok(all.as_array().map_or(0, Vec::len))
}

/// The text of the first element `css` names, or "".
fn text_of(css: &str) -> String {
    format!("const e = document.querySelector({css:?}); return e ? e.textContent : '';")
}

async fn log_in(browser: &Browser, user: &str, password: &str) -> Result<()> {
    browser
        .wait_for("the login form", &text_of("#login-title"), WAIT)
        .await?;
    browser.type_into("#username", user).await?;
    browser.type_into("#password", password).await?;
    browser.click("#login-submit").await
}

#[tokio::test]
async fn the_web_ui_in_headless_chromium() -> Result<()> {
    let packs = tempfile::tempdir()?;
    workflow_pack(packs.path())?;
    let node = TestNode::start(vec![packs.path().to_path_buf()]).await?;
    node.user("watcher", "observer").await?;
    let shots = node.dir.path().join("screenshots");
    std::fs::create_dir_all(&shots)?;
    let browser = Browser::start().await?;

    // Assets are compiled in and the page loads with no other origin.
    let index = reqwest::get(format!("{}/", node.root)).await?;
    assert_eq!(index.status().as_u16(), 200);
    let csp = index
        .headers()
        .get("content-security-policy")
        .context("no CSP")?;
    assert!(csp.to_str()?.contains("default-src 'self'"));

    browser.goto(&format!("{}/", node.root)).await?;
    // A wrong password says so; the sixth is throttled, visibly.
    for _ in 0..5 {
        log_in(&browser, "watcher", "not-it").await?;
        browser
            .wait_for("the wrong-password message", &text_of("#login-error"), WAIT)
            .await?;
        browser
            .eval(
                "document.getElementById('login-error').textContent = ''",
                json!([]),
            )
            .await?;
    }
    log_in(&browser, "watcher", "not-it").await?;
    let throttled = browser
        .wait_for("the throttling message", &text_of("#login-error"), WAIT)
        .await?;
    assert!(
        throttled
            .as_str()
            .is_some_and(|t| t.contains("too many failed logins")),
        "{throttled}"
    );
    browser
        .screenshot(&shots.join("login-throttled.png"))
        .await?;
    let (status, _) = node
        .call(&node.http, Method::DELETE, "lockouts/user/watcher", None)
        .await?;
    assert_eq!(status, 204);

    // The admin signs in; the role is shown; the token never reaches a
    // script (HttpOnly cookie).
    log_in(&browser, "admin", &node.admin_password).await?;
    let role = browser
        .wait_for("the role", &text_of("#role"), WAIT)
        .await?;
    assert_eq!(role, "admin");
    let cookies = browser.eval("return document.cookie", json!([])).await?;
    assert_eq!(cookies, "", "the token cookie is visible to scripts");
    browser
        .wait_for(
            "the live stream",
            "const l = document.getElementById('live'); return l && l.dataset.state === 'open';",
            WAIT,
        )
        .await?;

    // An execution started through the API appears without reload, and
    // its status changes live.
    let echo = start(
        &node,
        "core.local",
        json!({"cmd": "echo hello-from-ui; echo oops >&2"}),
    )
    .await?;
    browser
        .wait_for(
            "the new execution's row to say succeeded",
            &format!(
                "const r = document.querySelector('#history-rows tr[data-id=\"{echo}\"] .status'); \
                 return r && r.dataset.status === 'succeeded';"
            ),
            WAIT,
        )
        .await?;
    let first = browser
        .eval(
            "return document.querySelector('#history-rows tr').dataset.id",
            json!([]),
        )
        .await?;
    assert_eq!(first, json!(echo), "the newest execution is first");
    // Status is readable without colour: a word, not only a colour.
    let word = browser
        .eval(
            &format!("return document.querySelector('#history-rows tr[data-id=\"{echo}\"] .status').textContent"),
            json!([]),
        )
        .await?;
    assert!(
        word.as_str().is_some_and(|w| w.contains("succeeded")),
        "{word}"
    );
    browser.screenshot(&shots.join("history.png")).await?;

    // First paint of the history, as the browser measured it.
    browser.eval("location.reload()", json!([])).await?;
    let timing = browser
        .wait_for(
            "the history's first page",
            "const m = performance.getEntriesByName('history-rendered')[0]; \
             const p = performance.getEntriesByName('first-contentful-paint')[0]; \
             return m && {rendered: m.startTime, fcp: p ? p.startTime : null};",
            WAIT,
        )
        .await?;
    eprintln!("history timing (ms since navigation start): {timing}");

    // The execution page: result, both output streams, timing, no
    // secrets.
    browser
        .goto(&format!("{}/#/executions/{echo}", node.root))
        .await?;
    let stdout = browser
        .wait_for("stdout", &text_of("#stdout"), WAIT)
        .await?;
    assert!(
        stdout.as_str().is_some_and(|s| s.contains("hello-from-ui")),
        "{stdout}"
    );
    let stderr = browser
        .wait_for("stderr", &text_of("#stderr"), WAIT)
        .await?;
    assert!(
        stderr.as_str().is_some_and(|s| s.contains("oops")),
        "{stderr}"
    );
    let result = browser
        .wait_for("the result tree", &text_of("#exec-result details"), WAIT)
        .await?;
    assert!(
        result
            .as_str()
            .is_some_and(|s| s.contains("\"return_code\"")),
        "{result}"
    );
    let steps = browser
        .eval(
            "return document.querySelectorAll('#exec-timing li').length",
            json!([]),
        )
        .await?;
    assert!(
        steps.as_u64().is_some_and(|n| n >= 2),
        "timing rows: {steps}"
    );
    browser.screenshot(&shots.join("execution.png")).await?;

    // A large output: the page keeps its tail and offers all of it.
    let big = start(
        &node,
        "core.local",
        json!({"cmd": "head -c 3000000 /dev/zero | tr '\\0' x; echo END-MARK"}),
    )
    .await?;
    node.finished(&big).await?;
    browser
        .goto(&format!("{}/#/executions/{big}", node.root))
        .await?;
    let tail = browser
        .wait_for(
            "the output's tail and the download link",
            "const n = document.querySelector('#output-note a[download]'); \
             const o = document.getElementById('stdout').textContent; \
             return n && o.includes('END-MARK') && o.length;",
            WAIT,
        )
        .await?;
    assert!(
        tail.as_u64().is_some_and(|n| n <= 256 * 1024),
        "kept {tail} characters"
    );

    // A running one streams its output and is cancelled from the page.
    let slow = start(
        &node,
        "core.local",
        json!({"cmd": "echo started-slow; sleep 60"}),
    )
    .await?;
    browser
        .goto(&format!("{}/#/executions/{slow}", node.root))
        .await?;
    browser
        .wait_for(
            "the slow one's live output",
            "return document.getElementById('stdout').textContent.includes('started-slow')",
            WAIT,
        )
        .await?;
    browser.click("#cancel").await?;
    browser
        .wait_for(
            "the page to show it canceled",
            "const s = document.querySelector('#exec-status .status'); return s && s.dataset.status === 'canceled';",
            WAIT,
        )
        .await?;
    let (_, slow_now) = node.get(&format!("executions/{slow}")).await?;
    assert_eq!(slow_now["status"], "canceled");

    // A workflow: its graph from the definition, tasks coloured and
    // labelled by status, live.
    let flow = start(&node, "uiflows.three", json!({})).await?;
    browser
        .goto(&format!("{}/#/executions/{flow}", node.root))
        .await?;
    let tasks = browser
        .wait_for(
            "three tasks in the graph",
            "const t = [...document.querySelectorAll('#task-graph g.task')].map(g => g.dataset.task); return t.length === 3 && t;",
            WAIT,
        )
        .await?;
    assert_eq!(tasks, json!(["fetch", "build", "report"]));
    browser
        .wait_for(
            "build running",
            "const g = document.querySelector('#task-graph g[data-task=\"build\"]'); return g && g.dataset.status === 'running';",
            WAIT,
        )
        .await?;
    browser
        .screenshot(&shots.join("workflow-running.png"))
        .await?;
    browser
        .wait_for(
            "every task succeeded, labelled in words",
            "const g = [...document.querySelectorAll('#task-graph g.task')]; \
             return g.length === 3 && g.every(t => t.dataset.status === 'succeeded' && t.textContent.includes('succeeded'));",
            WAIT,
        )
        .await?;
    let arrows = browser
        .eval(
            "return document.querySelectorAll('#task-graph path.edge').length",
            json!([]),
        )
        .await?;
    assert_eq!(arrows, 2);
    browser.screenshot(&shots.join("workflow.png")).await?;

    // A webhook-triggered execution appears in the history without
    // reload, caused by its rule.
    browser.goto(&format!("{}/#/", node.root)).await?;
    browser
        .wait_for(
            "the live stream",
            "const l = document.getElementById('live'); return l && l.dataset.state === 'open';",
            WAIT,
        )
        .await?;
    let (status, body) = node.post("webhooks/uihook", &json!({"n": 1})).await?;
    assert_eq!(status, 202, "{body}");
    browser
        .wait_for(
            "the webhook's execution in the history",
            "return [...document.querySelectorAll('#history-rows tr')].some(r => r.textContent.includes('uiflows.on_hook'));",
            WAIT,
        )
        .await?;

    // The rule disabled from its page: a webhook then starts nothing.
    browser.goto(&format!("{}/#/rules", node.root)).await?;
    let toggle = "[id=\"enable-uiflows.on_hook\"]";
    browser
        .wait_for(
            "the rule's switch",
            &format!("return document.querySelector({toggle:?})?.checked === true"),
            WAIT,
        )
        .await?;
    browser.click(toggle).await?;
    browser
        .wait_for("the rule disabled", &text_of("#rules-message"), WAIT)
        .await?;
    let (_, rule) = node.get("rules/uiflows.on_hook").await?;
    assert_eq!(rule["enabled"], false, "{rule}");
    let before = listed(&node, "executions?rule=uiflows.on_hook&limit=-1").await?;
    let (status, _) = node.post("webhooks/uihook", &json!({"n": 2})).await?;
    assert!(status == 202 || status == 404, "webhook answered {status}");
    node.rules_idle().await?;
    assert_eq!(
        listed(&node, "executions?rule=uiflows.on_hook&limit=-1").await?,
        before,
        "a disabled rule started something"
    );
    browser.screenshot(&shots.join("rules.png")).await?;

    // The run form from core.local's schema: a wrong type shows beside its
    // field and sends nothing; a right one starts it and its output
    // streams in.
    browser
        .goto(&format!("{}/#/actions/core.local", node.root))
        .await?;
    browser
        .wait_for(
            "the run form",
            "return document.getElementById('p-cmd')",
            WAIT,
        )
        .await?;
    let required = browser
        .eval(
            "return document.querySelector('[data-field=\"cmd\"] label').textContent",
            json!([]),
        )
        .await?;
    assert!(
        required.as_str().is_some_and(|t| t.contains('*')),
        "cmd not marked required: {required}"
    );
    let ran_before = listed(&node, "executions?action=core.local&limit=-1").await?;
    browser.type_into("#p-cmd", "echo from-the-form").await?;
    browser.type_into("#p-timeout", "soon").await?;
    browser.click("#run").await?;
    let complaint = browser
        .wait_for(
            "the timeout field's error",
            &text_of("#p-timeout-error"),
            WAIT,
        )
        .await?;
    assert!(
        complaint
            .as_str()
            .is_some_and(|t| t.contains("must be an integer")),
        "{complaint}"
    );
    browser
        .screenshot(&shots.join("run-form-error.png"))
        .await?;
    assert_eq!(
        listed(&node, "executions?action=core.local&limit=-1").await?,
        ran_before,
        "a wrong form was sent"
    );
    browser.type_into("#p-timeout", "30").await?;
    browser.click("#run").await?;
    browser
        .wait_for(
            "the new execution's output",
            "return location.hash.startsWith('#/executions/') && document.getElementById('stdout')?.textContent.includes('from-the-form')",
            WAIT,
        )
        .await?;
    assert_eq!(
        listed(&node, "executions?action=core.local&limit=-1").await?,
        ran_before + 1
    );

    // A session that ends mid-page: the login opens over the page and
    // what was typed stays.
    browser.click("#rerun").await?;
    browser
        .type_into("#rerun-params", "{\"cmd\": \"echo kept-text\"}")
        .await?;
    browser
        .eval(
            "return fetch('/ui/logout', {method: 'POST'}).then(r => r.status)",
            json!([]),
        )
        .await?;
    browser.click("#rerun-form button[type=submit]").await?;
    browser
        .wait_for(
            "the login over the page",
            "return document.querySelector('.overlay #login-form')",
            WAIT,
        )
        .await?;
    browser.type_into("#password", &node.admin_password).await?;
    browser.click("#login-submit").await?;
    browser
        .wait_for(
            "the page back, as it was",
            "return !document.querySelector('.overlay') && document.getElementById('rerun-params')?.value.includes('kept-text')",
            WAIT,
        )
        .await?;

    // An inquiry answered through the form from its schema: the workflow
    // resumes.
    let asking = start(&node, "uiflows.approve", json!({})).await?;
    squall_tests::poll(WAIT, || async {
        let (_, pending) = node.get("inquiries").await?;
        Ok(pending
            .as_array()
            .is_some_and(|p| !p.is_empty())
            .then_some(()))
    })
    .await?;
    browser.goto(&format!("{}/#/inquiries", node.root)).await?;
    let inquiry_form = "form[data-inquiry]";
    browser
        .wait_for(
            "the pending inquiry's form",
            &format!("return document.querySelector({inquiry_form:?})"),
            WAIT,
        )
        .await?;
    browser.screenshot(&shots.join("inquiry.png")).await?;
    browser
        .click(&format!("{inquiry_form} input[name=continue]"))
        .await?;
    browser
        .click(&format!("{inquiry_form} button[type=submit]"))
        .await?;
    browser
        .wait_for(
            "the answer accepted",
            "return document.body.textContent.includes('Answered; the workflow resumes.')",
            WAIT,
        )
        .await?;
    let done = node.finished(&asking).await?;
    assert_eq!(done["status"], "succeeded", "{done}");

    // An observer sees the same pages without the buttons they cannot use.
    browser.click("#logout").await?;
    log_in(&browser, "watcher", "watcher-password").await?;
    browser
        .wait_for(
            "the observer's role",
            "const r = document.getElementById('role'); return r && r.textContent === 'observer';",
            WAIT,
        )
        .await?;
    browser
        .goto(&format!("{}/#/executions/{slow}", node.root))
        .await?;
    browser
        .wait_for(
            "the page to render",
            "return document.querySelector('#exec-status .status')",
            WAIT,
        )
        .await?;
    let buttons = browser
        .eval(
            "return document.querySelectorAll('main button').length",
            json!([]),
        )
        .await?;
    assert_eq!(buttons, 0, "an observer sees buttons");
    browser.screenshot(&shots.join("observer.png")).await?;
    eprintln!("screenshots in {}", shots.display());
    if let Ok(keep) = std::env::var("SQUALL_UI_SCREENSHOTS") {
        for entry in std::fs::read_dir(&shots)? {
            let entry = entry?;
            std::fs::copy(
                entry.path(),
                std::path::Path::new(&keep).join(entry.file_name()),
            )?;
        }
    }
    Ok(())
}

/// A measurement, not a check (speed is never asserted): stores
/// `SQUALL_UI_SEED` executions (default 100,000, through the load
/// generator's webhook-noop rule), then prints how long the history takes
/// to paint in Chromium and to scroll in five more pages. Run:
/// `cargo test -p squall-tests --test webui -- --ignored --nocapture history_paint`
#[tokio::test]
#[ignore = "a measurement that stores 100,000 executions first"]
async fn history_paint_with_a_large_history() -> Result<()> {
    let seed: usize = std::env::var("SQUALL_UI_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let node = TestNode::start(vec![squall_tests::repo_root().join("loadtest/packs")]).await?;
    let target = squall_loadtest::target::Target::connect(
        &node.root,
        "admin",
        &node.admin_password,
        Some(node.nats.url()),
        None,
    )
    .await?;
    let load = squall_loadtest::scenario::WebhookLoad {
        url: "loadtest/noop".into(),
        rule: Some("loadtest.webhook_noop".into()),
        count: seed,
        concurrency: 32,
        rate: None,
        generated_rules: None,
    };
    let seeded = std::time::Instant::now();
    squall_loadtest::webhook::run(&target, &load, Duration::from_secs(3600)).await?;
    let (_, one) = node.get("executions?limit=1").await?;
    eprintln!(
        "stored {seed} executions in {:.0} s (newest {})",
        seeded.elapsed().as_secs_f64(),
        one[0]["id"]
    );
    let browser = Browser::start().await?;
    browser.goto(&format!("{}/", node.root)).await?;
    log_in(&browser, "admin", &node.admin_password).await?;
    browser
        .wait_for("the role", &text_of("#role"), WAIT)
        .await?;
    for round in 0..3 {
        browser.eval("location.reload()", json!([])).await?;
        let timing = browser
            .wait_for(
                "the history's first page",
                "const m = performance.getEntriesByName('history-rendered')[0]; \
                 const p = performance.getEntriesByName('first-contentful-paint')[0]; \
                 const n = performance.getEntriesByType('navigation')[0]; \
                 return m && {history_rendered_ms: m.startTime, first_contentful_paint_ms: p ? p.startTime : null, \
                              transferred_bytes: performance.getEntriesByType('resource').reduce((s, r) => s + r.transferSize, n.transferSize)};",
                WAIT,
            )
            .await?;
        eprintln!("round {round}: {timing}");
    }
    let scrolled = browser
        .eval(
            "const t0 = performance.now(); \
             const want = document.querySelectorAll('#history-rows tr').length + 250; \
             return new Promise((done) => { \
               const step = () => { \
                 window.scrollTo(0, document.body.scrollHeight); \
                 if (document.querySelectorAll('#history-rows tr').length >= want) done(performance.now() - t0); \
                 else setTimeout(step, 10); \
               }; step(); });",
            json!([]),
        )
        .await?;
    eprintln!("five more pages by scrolling: {scrolled} ms");
    let count = browser.eval(&text_of("#history-count"), json!([])).await?;
    eprintln!("history says: {count}");
    Ok(())
}
