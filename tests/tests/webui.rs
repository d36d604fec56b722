//! The web UI in a real headless Chromium against a real node, and the
//! failed-login throttling behind its login form and the API's token route.

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{json, Value};
use squall_actors::logins::Limits;
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
    // The limits come from node.yaml's auth.login_throttling.
    let node = TestNode::start_with(vec![squall_tests::repo_root().join("packs")], |c| {
        let t = &mut c.auth.login_throttling;
        t.user = Limits {
            free: 4,
            lock_after: 8,
        };
        t.address = Limits {
            free: 10,
            lock_after: 30,
        };
        t.first_backoff = 20;
    })
    .await?;
    let observer = node.user("olga", "observer").await?;
    let (status, _) = node
        .post(
            "users",
            &json!({"name": "bob", "password": "bob-password", "role": "operator"}),
        )
        .await?;
    assert_eq!(status, 201);

    // Four wrong passwords are plain 401s.
    for _ in 0..4 {
        let (status, retry, body) = try_login(&node, "bob", "guess").await?;
        assert_eq!(status, 401, "{body}");
        assert_eq!(retry, None);
    }
    // The fifth attempt is refused before the password is looked at, even
    // the right one, with how long to wait and who can lift it.
    for password in ["guess", "bob-password"] {
        let (status, retry, body) = try_login(&node, "bob", password).await?;
        assert_eq!(status, 429, "{body}");
        let retry = retry.context("429 without Retry-After")?;
        assert!((1..=20).contains(&retry), "Retry-After {retry}");
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
    assert_eq!(bob["failures"], 4, "{bob}");
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
    for i in 0..6 {
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
/// person, one whose first task fails until a file exists, an ActionChain
/// whose first node waits for a file, an action with array and object
/// parameters, and a webhook rule.
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
                "actions/flaky.yaml",
                "name: flaky\nrunner_type: orquesta\nentry_point: workflows/flaky.yaml\nparameters:\n  path:\n    type: string\n    required: true\n",
            ),
            (
                "actions/workflows/flaky.yaml",
                "version: 1.0\ninput:\n  - path\ntasks:\n  check:\n    action: core.local\n    input:\n      cmd: test -f <% ctx().path %> && echo found\n    next:\n      - when: <% succeeded() %>\n        do: finish\n  finish:\n    action: core.noop\n",
            ),
            (
                "actions/chain.yaml",
                "name: chain\nrunner_type: action-chain\nentry_point: chains/chain.yaml\nparameters:\n  flag:\n    type: string\n    required: true\n",
            ),
            (
                "actions/chains/chain.yaml",
                "chain:\n  - name: slow\n    ref: core.local\n    params:\n      cmd: \"while [ ! -f {{ flag }} ]; do sleep 0.05; done; echo slow\"\n      timeout: 120\n    on-success: last\n  - name: last\n    ref: core.noop\n",
            ),
            (
                "actions/typed.yaml",
                "name: typed\nrunner_type: noop\nentry_point: ''\nparameters:\n  hosts:\n    type: array\n    items:\n      type: string\n    required: true\n  opts:\n    type: object\n    properties:\n      retries:\n        type: integer\n",
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

/// Signs in through the login form, submitting it with Enter.
async fn log_in(browser: &Browser, user: &str, password: &str) -> Result<()> {
    browser
        .wait_for("the login form", &text_of("#login-title"), WAIT)
        .await?;
    browser.type_into("#username", user).await?;
    browser
        .type_into("#password", &format!("{password}{}", Browser::ENTER))
        .await
}

/// The browser on one node's UI, with the steps every check repeats.
struct Page<'a> {
    browser: &'a Browser,
    root: String,
    shots: std::path::PathBuf,
}

impl Page<'_> {
    /// Opens `#/<path>` (or `/` for "").
    async fn open(&self, path: &str) -> Result<()> {
        self.browser.goto(&format!("{}/#/{path}", self.root)).await
    }

    /// Waits until `script` returns something truthy.
    async fn wait(&self, what: &str, script: &str) -> Result<Value> {
        self.browser.wait_for(what, script, WAIT).await
    }

    /// Waits until the element `css` names has text, and returns it.
    async fn text(&self, what: &str, css: &str) -> Result<String> {
        let got = self.wait(what, &text_of(css)).await?;
        Ok(got.as_str().unwrap_or_default().to_string())
    }

    /// Waits until the element `css` names has some text containing `part`.
    async fn text_has(&self, what: &str, css: &str, part: &str) -> Result<()> {
        let script = format!(
            "const e = document.querySelector({css:?}); return !!e && e.textContent.includes({part:?});"
        );
        self.wait(what, &script).await.map(drop)
    }

    /// [`Page::text_has`] for each `(what, css, part)`, in order.
    async fn texts_have(&self, checks: &[(&str, &str, &str)]) -> Result<()> {
        for (what, css, part) in checks {
            self.text_has(what, css, part).await?;
        }
        Ok(())
    }

    /// Waits until the element `css` names says `status` (`data-status`).
    async fn status(&self, what: &str, css: &str, status: &str) -> Result<()> {
        let script = format!(
            "const e = document.querySelector({css:?}); return !!e && e.dataset.status === {status:?};"
        );
        self.wait(what, &script).await.map(drop)
    }

    /// Waits until the history follows the event stream.
    async fn live(&self) -> Result<()> {
        self.wait(
            "the history's live stream",
            "const l = document.getElementById('live'); return !!l && l.dataset.state === 'open';",
        )
        .await
        .map(drop)
    }

    /// Waits until the execution page shows `status`.
    async fn execution_is(&self, status: &str) -> Result<()> {
        self.status(
            &format!("the execution {status}"),
            "#exec-status .status",
            status,
        )
        .await
    }

    /// Runs `script` in the page.
    async fn js(&self, script: &str) -> Result<Value> {
        self.browser.eval(script, json!([])).await
    }

    async fn shot(&self, name: &str) -> Result<()> {
        self.browser
            .screenshot(&self.shots.join(format!("{name}.png")))
            .await
    }

    /// Buttons and switches in the page's content other than search
    /// forms' (what an observer must not see).
    async fn writing_controls(&self) -> Result<u64> {
        let n = self
            .js(
                "return [...document.querySelectorAll('main button, main input[role=switch]')] \
                 .filter(b => !b.closest('form[role=search]')).length",
            )
            .await?;
        n.as_u64().context("not a count")
    }

    /// At a phone's 390×844 the page does not scroll sideways, nor does
    /// any table; saves a screenshot as `name`.
    async fn fits_a_phone(&self, name: &str) -> Result<()> {
        self.browser.viewport(Some((390, 844))).await?;
        let widths = self
            .js("const d = document.documentElement; \
                 return {page: d.scrollWidth, view: innerWidth, \
                         tables: [...document.querySelectorAll('.table-wrap')] \
                           .filter(w => w.scrollWidth > w.clientWidth + 1).length};")
            .await?;
        self.shot(name).await?;
        self.browser.viewport(None).await?;
        assert_eq!(widths["view"], 390, "{widths}");
        assert!(
            widths["page"].as_u64() <= widths["view"].as_u64() && widths["tables"] == 0,
            "{name} scrolls sideways at 390 px: {widths}"
        );
        Ok(())
    }

    /// Presses Tab until every visible control of the page has had the
    /// focus, each with a visible focus ring; returns how many there are.
    async fn tab_through(&self, what: &str) -> Result<usize> {
        let controls = self
            .js("const all = [...document.querySelectorAll('a[href], button, input, select, textarea, summary, [tabindex=\"0\"]')] \
                   .filter(e => !e.disabled && e.getClientRects().length); \
                 all.forEach((e, i) => { e.dataset.kb = i; }); \
                 document.activeElement?.blur(); \
                 return all.length;")
            .await?
            .as_u64()
            .context("no count")? as usize;
        let mut reached = std::collections::BTreeSet::new();
        for _ in 0..controls * 2 + 4 {
            self.browser.press(Browser::TAB).await?;
            let at = self
                .js("const e = document.activeElement; \
                     if (!e || e.dataset.kb === undefined) return null; \
                     const s = getComputedStyle(e); \
                     return [Number(e.dataset.kb), s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2, e.outerHTML.slice(0, 80)];")
                .await?;
            if let Some(n) = at[0].as_u64() {
                assert_eq!(at[1], true, "{what}: no visible focus on {}", at[2]);
                reached.insert(n as usize);
            }
            if reached.len() == controls {
                return Ok(controls);
            }
        }
        let missed = self
            .js("return [...document.querySelectorAll('[data-kb]')].map(e => e.outerHTML.slice(0, 80))")
            .await?;
        anyhow::bail!("{what}: Tab reached {reached:?} of {controls} controls: {missed}")
    }
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
    let page = Page {
        browser: &browser,
        root: node.root.clone(),
        shots: shots.clone(),
    };

    // Assets are compiled in and the page loads with no other origin.
    let index = reqwest::get(format!("{}/", node.root)).await?;
    assert_eq!(index.status().as_u16(), 200);
    let csp = index
        .headers()
        .get("content-security-policy")
        .context("no CSP")?;
    assert!(csp.to_str()?.contains("default-src 'self'"));

    page.open("").await?;
    // A wrong password says so; the sixth is throttled, visibly.
    for _ in 0..5 {
        log_in(&browser, "watcher", "not-it").await?;
        page.text("the wrong-password message", "#login-error")
            .await?;
        page.js("document.getElementById('login-error').textContent = ''")
            .await?;
    }
    log_in(&browser, "watcher", "not-it").await?;
    let throttled = page.text("the throttling message", "#login-error").await?;
    assert!(throttled.contains("too many failed logins"), "{throttled}");
    page.shot("login-throttled").await?;
    let (status, _) = node
        .call(&node.http, Method::DELETE, "lockouts/user/watcher", None)
        .await?;
    assert_eq!(status, 204);

    // The admin signs in; the role is shown; the token never reaches a
    // script (HttpOnly cookie).
    log_in(&browser, "admin", &node.admin_password).await?;
    assert_eq!(page.text("the role", "#role").await?, "admin");
    let cookies = page.js("return document.cookie").await?;
    assert_eq!(cookies, "", "the token cookie is visible to scripts");
    page.live().await?;

    // An execution started through the API appears without reload, and
    // its status changes live.
    let echo = start(
        &node,
        "core.local",
        json!({"cmd": "echo hello-from-ui; echo oops >&2"}),
    )
    .await?;
    let echo_row = format!("#history-rows tr[data-id=\"{echo}\"] .status");
    page.status("the new execution's row", &echo_row, "succeeded")
        .await?;
    let first = page
        .js("return document.querySelector('#history-rows tr').dataset.id")
        .await?;
    assert_eq!(first, json!(echo), "the newest execution is first");
    // Status is readable without colour: a word, not only a colour.
    let word = page.text("the status word", &echo_row).await?;
    assert!(word.contains("succeeded"), "{word}");
    page.shot("history").await?;
    page.fits_a_phone("history-phone").await?;

    // First paint of the history, as the browser measured it.
    page.js("location.reload()").await?;
    let timing = page
        .wait(
            "the history's first page",
            "const m = performance.getEntriesByName('history-rendered')[0]; \
             const p = performance.getEntriesByName('first-contentful-paint')[0]; \
             return m && {rendered: m.startTime, fcp: p ? p.startTime : null};",
        )
        .await?;
    eprintln!("history timing (ms since navigation start): {timing}");

    // The execution page: result, both output streams, timing, no
    // secrets.
    page.open(&format!("executions/{echo}")).await?;
    page.texts_have(&[
        ("stdout", "#stdout", "hello-from-ui"),
        ("stderr", "#stderr", "oops"),
        ("the result tree", "#exec-result details", "\"return_code\""),
    ])
    .await?;
    let steps = page
        .js("return document.querySelectorAll('#exec-timing li').length")
        .await?;
    assert!(
        steps.as_u64().is_some_and(|n| n >= 2),
        "timing rows: {steps}"
    );
    page.shot("execution").await?;
    page.fits_a_phone("execution-phone").await?;

    // A large output: the page keeps its tail and offers all of it.
    let big = start(
        &node,
        "core.local",
        json!({"cmd": "head -c 3000000 /dev/zero | tr '\\0' x; echo END-MARK"}),
    )
    .await?;
    node.finished(&big).await?;
    page.open(&format!("executions/{big}")).await?;
    let tail = page
        .wait(
            "the output's tail and the download link",
            "const n = document.querySelector('#output-note a[download]'); \
             const o = document.getElementById('stdout').textContent; \
             return n && o.includes('END-MARK') && o.length;",
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
    page.open(&format!("executions/{slow}")).await?;
    page.text_has("the slow one's live output", "#stdout", "started-slow")
        .await?;
    browser.click("#cancel").await?;
    page.execution_is("canceled").await?;
    let (_, slow_now) = node.get(&format!("executions/{slow}")).await?;
    assert_eq!(slow_now["status"], "canceled");

    // A workflow: its graph from the definition, tasks coloured and
    // labelled by status, live; paused and resumed from the page.
    let flow = start(&node, "uiflows.three", json!({})).await?;
    page.open(&format!("executions/{flow}")).await?;
    let tasks = page
        .wait(
            "three tasks in the graph",
            "const t = [...document.querySelectorAll('#task-graph g.task')].map(g => g.dataset.task); return t.length === 3 && t;",
        )
        .await?;
    assert_eq!(tasks, json!(["fetch", "build", "report"]));
    page.status(
        "build running",
        "#task-graph g[data-task=\"build\"]",
        "running",
    )
    .await?;
    page.shot("workflow-running").await?;
    browser.click("#pause").await?;
    // It pauses once the running task is done, before the next starts.
    page.execution_is("paused").await?;
    let report = page
        .js("return document.querySelector('#task-graph g[data-task=\"report\"]').dataset.status")
        .await?;
    assert_eq!(report, "not-run", "a paused workflow went on");
    page.shot("workflow-paused").await?;
    browser.click("#resume").await?;
    page.wait(
        "every task succeeded, labelled in words",
        "const g = [...document.querySelectorAll('#task-graph g.task')]; \
         return g.length === 3 && g.every(t => t.dataset.status === 'succeeded' && t.textContent.includes('succeeded'));",
    )
    .await?;
    let arrows = page
        .js("return document.querySelectorAll('#task-graph path.edge').length")
        .await?;
    assert_eq!(arrows, 2);
    page.execution_is("succeeded").await?;
    page.shot("workflow").await?;

    // An ActionChain pauses and resumes from its page too.
    let flags = tempfile::tempdir()?;
    let flag = flags.path().join("slow-may-end");
    let chain = start(
        &node,
        "uiflows.chain",
        json!({"flag": flag.to_string_lossy()}),
    )
    .await?;
    page.open(&format!("executions/{chain}")).await?;
    page.execution_is("running").await?;
    browser.click("#pause").await?;
    // Pausing while its node runs; paused once the node is done, before
    // the next starts.
    page.execution_is("pausing").await?;
    std::fs::write(&flag, "")?;
    page.execution_is("paused").await?;
    browser.click("#resume").await?;
    page.execution_is("succeeded").await?;
    let (_, ran) = node.get(&format!("executions/{chain}")).await?;
    let tasks: Vec<&str> = ran["result"]["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(tasks, ["slow", "last"], "{ran}");

    // A failed workflow re-run from its failed task, once what it
    // checks is there: the task runs again and the workflow succeeds.
    let flag = node.dir.path().join("flag");
    let flaky = start(
        &node,
        "uiflows.flaky",
        json!({"path": flag.display().to_string()}),
    )
    .await?;
    page.open(&format!("executions/{flaky}")).await?;
    page.execution_is("failed").await?;
    page.status(
        "the failed task in the list",
        "#task-rows tr[data-task=\"check\"] .status",
        "failed",
    )
    .await?;
    std::fs::write(&flag, "here")?;
    browser.click("#rerun").await?;
    browser.click("#rerun-failed").await?;
    browser.click("#rerun-form button[type=submit]").await?;
    let again = page
        .wait(
            "the re-run's page",
            &format!(
                "const m = location.hash.match(/executions\\/([^/?]+)/); return m && m[1] !== {flaky:?} && m[1];"
            ),
        )
        .await?;
    let again = again.as_str().context("no id")?.to_string();
    page.execution_is("succeeded").await?;
    let (_, rerun) = node.get(&format!("executions/{again}")).await?;
    assert_eq!(
        rerun["context"]["re_run"]["tasks"],
        json!(["check"]),
        "{rerun}"
    );
    assert_eq!(rerun["status"], "succeeded", "{rerun}");

    // A webhook-triggered execution appears in the history without
    // reload, caused by its rule.
    page.open("").await?;
    page.live().await?;
    let (status, body) = node.post("webhooks/uihook", &json!({"n": 1})).await?;
    assert_eq!(status, 202, "{body}");
    page.text_has(
        "the webhook's execution in the history",
        "#history-rows",
        "uiflows.on_hook",
    )
    .await?;

    // Packs: the list, one pack's page, registering from the pack
    // directories.
    page.open("packs").await?;
    page.text_has("the pack list", "#pack-rows", "uiflows")
        .await?;
    browser
        .type_into("#register-packs", &format!("uiflows{}", Browser::ENTER))
        .await?;
    page.text_has(
        "the registration's answer",
        "#register-message",
        "Registered 1 pack(s)",
    )
    .await?;
    page.open("packs/uiflows").await?;
    page.texts_have(&[
        ("the pack's actions", "#pack-actions", "uiflows.three"),
        ("the pack's rules", "#pack-rules", "uiflows.on_hook"),
    ])
    .await?;
    page.shot("pack").await?;

    // A rule's page: its trigger, criteria and action; disabled there, a
    // webhook then starts nothing.
    page.open("rules/uiflows.on_hook").await?;
    page.texts_have(&[
        ("the rule's trigger", "#rule-detail", "uihook"),
        ("the rule's action", "#rule-detail", "echo hooked"),
    ])
    .await?;
    let toggle = "[id=\"enable-uiflows.on_hook\"]";
    page.wait(
        "the rule's switch",
        &format!("return document.querySelector({toggle:?})?.checked === true"),
    )
    .await?;
    browser.click(toggle).await?;
    page.text_has("the rule disabled", "#rules-message", "disabled")
        .await?;
    let (_, rule) = node.get("rules/uiflows.on_hook").await?;
    assert_eq!(rule["enabled"], false, "{rule}");
    page.shot("rule").await?;
    page.open("rules").await?;
    page.text_has(
        "the list saying so",
        "tr[data-rule=\"uiflows.on_hook\"]",
        "disabled",
    )
    .await?;
    let before = listed(&node, "executions?rule=uiflows.on_hook&limit=-1").await?;
    let (status, _) = node.post("webhooks/uihook", &json!({"n": 2})).await?;
    assert!(status == 202 || status == 404, "webhook answered {status}");

    // The first webhook's trigger instance: payload, what it set off,
    // re-emitted from the page.
    let (_, hooks) = node.get("triggerinstances?limit=-1").await?;
    let hook = hooks
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["payload"]["body"]["n"] == 1)
        .with_context(|| format!("no instance of the first webhook: {hooks}"))?;
    let hook = hook["id"].as_str().context("no id")?.to_string();
    page.open("triggerinstances").await?;
    page.text_has("the instance list", "#instance-rows", &hook)
        .await?;
    page.open(&format!("triggerinstances/{hook}")).await?;
    page.texts_have(&[
        ("the payload", "#instance-payload", "\"n\""),
        (
            "the enforcement",
            "#instance-enforcements",
            "uiflows.on_hook",
        ),
    ])
    .await?;
    browser.click("#re-emit").await?;
    let resent = page.text("the re-emitted instance", "#re-emitted").await?;
    let (status, copy) = node.get(&format!("triggerinstances/{resent}")).await?;
    assert_eq!(status, 200, "{copy}");
    assert_eq!(copy["payload"]["__context"]["original_id"], json!(hook));
    assert_eq!(copy["payload"]["body"]["n"], 1, "{copy}");
    page.shot("trigger-instance").await?;
    node.rules_idle().await?;
    assert_eq!(
        listed(&node, "executions?rule=uiflows.on_hook&limit=-1").await?,
        before,
        "a disabled rule started something"
    );

    // The datastore: set with Enter, a secret sealed until asked for,
    // deleted; every control reached by Tab, with a visible focus.
    page.open("keys").await?;
    page.wait("the key form", "return document.getElementById('key-name')")
        .await?;
    browser.type_into("#key-name", "ui.plain").await?;
    browser
        .type_into("#key-value", &format!("plain-value{}", Browser::ENTER))
        .await?;
    page.text_has("the plain key", "#key-rows", "plain-value")
        .await?;
    browser.type_into("#key-name", "ui.secret").await?;
    browser.type_into("#key-value", "hunter2").await?;
    browser.click("#key-secret").await?;
    browser.click("#key-set").await?;
    let secret_row = "tr[data-key=\"ui.secret\"]";
    let sealed = page.text("the secret's row", secret_row).await?;
    assert!(
        sealed.contains("(secret)") && !sealed.contains("hunter2"),
        "{sealed}"
    );
    let (_, stored) = node.get("keys/ui.secret").await?;
    assert_eq!(stored["encrypted"], true, "{stored}");
    browser.click(&format!("{secret_row} button.show")).await?;
    page.text_has("the secret, asked for", secret_row, "hunter2")
        .await?;
    browser.click(&format!("{secret_row} button.show")).await?;
    page.wait(
        "the secret sealed again",
        &format!("return !document.querySelector({secret_row:?}).textContent.includes('hunter2')"),
    )
    .await?;
    let controls = page.tab_through("the datastore page").await?;
    assert!(controls > 15, "only {controls} controls");
    page.shot("datastore").await?;
    browser
        .click("tr[data-key=\"ui.plain\"] button.delete")
        .await?;
    page.wait(
        "the plain key gone",
        "return !document.querySelector('tr[data-key=\"ui.plain\"]')",
    )
    .await?;
    let (status, _) = node.get("keys/ui.plain").await?;
    assert_eq!(status, 404);

    // The run form from core.local's schema: a wrong type shows beside its
    // field and sends nothing; a right one starts it and its output
    // streams in.
    page.open("actions/core.local").await?;
    page.wait("the run form", "return document.getElementById('p-cmd')")
        .await?;
    let required = page
        .text("cmd's label", "[data-field=\"cmd\"] label")
        .await?;
    assert!(
        required.contains('*'),
        "cmd not marked required: {required}"
    );
    let ran_before = listed(&node, "executions?action=core.local&limit=-1").await?;
    browser.type_into("#p-cmd", "echo from-the-form").await?;
    browser.type_into("#p-timeout", "soon").await?;
    browser.click("#run").await?;
    let complaint = page
        .text("the timeout field's error", "#p-timeout-error")
        .await?;
    assert!(complaint.contains("must be an integer"), "{complaint}");
    page.shot("run-form-error").await?;
    assert_eq!(
        listed(&node, "executions?action=core.local&limit=-1").await?,
        ran_before,
        "a wrong form was sent"
    );
    browser.type_into("#p-timeout", "30").await?;
    browser.click("#run").await?;
    page.wait(
        "the new execution's output",
        "return location.hash.startsWith('#/executions/') && document.getElementById('stdout')?.textContent.includes('from-the-form')",
    )
    .await?;
    assert_eq!(
        listed(&node, "executions?action=core.local&limit=-1").await?,
        ran_before + 1
    );

    // Arrays and objects are JSON checked against their schema while
    // typed; Run refuses until they are right.
    page.open("actions/uiflows.typed").await?;
    page.wait(
        "the typed form",
        "return document.getElementById('p-hosts')",
    )
    .await?;
    browser.type_into("#p-hosts", "[\"web1\", 3]").await?;
    page.text_has(
        "the item's error, while typing",
        "#p-hosts-error",
        "hosts[1]: must be a string, not 3",
    )
    .await?;
    browser.type_into("#p-opts", "{\"retries\": \"x\"").await?;
    page.text_has("the JSON error", "#p-opts-error", "must be JSON")
        .await?;
    browser.click("#run").await?;
    page.text_has("the refusal", "#run-error", "nothing was sent")
        .await?;
    page.shot("run-form-json-error").await?;
    assert_eq!(
        listed(&node, "executions?action=uiflows.typed&limit=-1").await?,
        0
    );
    browser
        .type_into("#p-hosts", "[\"web1\", \"web2\"]")
        .await?;
    browser.type_into("#p-opts", "{\"retries\": \"x\"}").await?;
    page.text_has(
        "the property's error",
        "#p-opts-error",
        "opts.retries: must be an integer",
    )
    .await?;
    browser.type_into("#p-opts", "{\"retries\": 2}").await?;
    let controls = page.tab_through("the run form").await?;
    assert!(controls > 10, "only {controls} controls");
    browser.click("#run").await?;
    page.wait(
        "the typed run's page",
        "return location.hash.startsWith('#/executions/')",
    )
    .await?;
    page.execution_is("succeeded").await?;
    let (_, typed) = node.get("executions?action=uiflows.typed&limit=-1").await?;
    assert_eq!(
        typed[0]["parameters"],
        json!({"hosts": ["web1", "web2"], "opts": {"retries": 2}})
    );

    // A session that ends mid-page: the login opens over the page and
    // what was typed stays.
    browser.click("#rerun").await?;
    browser
        .type_into("#rerun-params", "{\"cmd\": \"echo kept-text\"}")
        .await?;
    page.js("return fetch('/ui/logout', {method: 'POST'}).then(r => r.status)")
        .await?;
    browser.click("#rerun-form button[type=submit]").await?;
    page.wait(
        "the login over the page",
        "return document.querySelector('.overlay #login-form')",
    )
    .await?;
    browser.type_into("#password", &node.admin_password).await?;
    browser.click("#login-submit").await?;
    page.wait(
        "the page back, as it was",
        "return !document.querySelector('.overlay') && document.getElementById('rerun-params')?.value.includes('kept-text')",
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
    page.open("inquiries").await?;
    let inquiry_form = "form[data-inquiry]";
    page.wait(
        "the pending inquiry's form",
        &format!("return document.querySelector({inquiry_form:?})"),
    )
    .await?;
    page.shot("inquiry").await?;
    browser
        .click(&format!("{inquiry_form} input[name=continue]"))
        .await?;
    browser
        .click(&format!("{inquiry_form} button[type=submit]"))
        .await?;
    page.text_has(
        "the answer accepted",
        "main",
        "Answered; the workflow resumes.",
    )
    .await?;
    let done = node.finished(&asking).await?;
    assert_eq!(done["status"], "succeeded", "{done}");

    // An observer sees the same pages without the buttons they cannot use.
    browser.click("#logout").await?;
    log_in(&browser, "watcher", "watcher-password").await?;
    page.text_has("the observer's role", "#role", "observer")
        .await?;
    for (path, ready) in [
        (format!("executions/{slow}"), "#exec-status .status"),
        ("rules/uiflows.on_hook".to_string(), "#rule-detail dl"),
        ("rules".to_string(), "#rule-rows tr"),
        ("packs".to_string(), "#pack-rows tr"),
        ("packs/uiflows".to_string(), "#pack-actions li"),
        (format!("triggerinstances/{hook}"), "#instance-payload"),
        ("keys".to_string(), "tr[data-key=\"ui.secret\"]"),
    ] {
        page.open(&path).await?;
        page.wait(
            &format!("{path} to render"),
            &format!("return document.querySelector({ready:?})"),
        )
        .await?;
        assert_eq!(
            page.writing_controls().await?,
            0,
            "an observer sees buttons on {path}"
        );
    }
    let sealed = page
        .text("the sealed secret", "tr[data-key=\"ui.secret\"]")
        .await?;
    assert!(!sealed.contains("hunter2"), "{sealed}");
    page.shot("observer").await?;
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
    let seeded = std::time::Instant::now();
    // In rounds of 10,000: each round reads back only its own executions.
    let mut stored = 0;
    while stored < seed {
        let load = squall_loadtest::scenario::WebhookLoad {
            url: "loadtest/noop".into(),
            rule: Some("loadtest.webhook_noop".into()),
            count: (seed - stored).min(10_000),
            concurrency: 32,
            rate: None,
            generated_rules: None,
        };
        squall_loadtest::webhook::run(&target, &load, Duration::from_secs(3600)).await?;
        stored += load.count;
    }
    let (_, one) = node.get("executions?limit=1").await?;
    eprintln!(
        "stored {seed} executions in {:.0} s (newest {})",
        seeded.elapsed().as_secs_f64(),
        one[0]["id"]
    );
    let browser = Browser::start().await?;
    let page = Page {
        browser: &browser,
        root: node.root.clone(),
        shots: node.dir.path().to_path_buf(),
    };
    page.open("").await?;
    log_in(&browser, "admin", &node.admin_password).await?;
    page.text("the role", "#role").await?;
    for round in 0..3 {
        page.js("location.reload()").await?;
        let timing = page
            .wait(
                "the history's first page",
                "const m = performance.getEntriesByName('history-rendered')[0]; \
                 const p = performance.getEntriesByName('first-contentful-paint')[0]; \
                 const n = performance.getEntriesByType('navigation')[0]; \
                 return m && {history_rendered_ms: m.startTime, first_contentful_paint_ms: p ? p.startTime : null, \
                              transferred_bytes: performance.getEntriesByType('resource').reduce((s, r) => s + r.transferSize, n.transferSize)};",
            )
            .await?;
        eprintln!("round {round}: {timing}");
    }
    let want = page
        .js("return document.querySelectorAll('#history-rows tr').length + 250")
        .await?;
    let scrolling = std::time::Instant::now();
    // Each look scrolls to the bottom, as a reader holding End would.
    page.wait(
        "five more pages",
        &format!(
            "window.scrollTo(0, document.body.scrollHeight); \
             return document.querySelectorAll('#history-rows tr').length >= {want};"
        ),
    )
    .await?;
    let scrolled = scrolling.elapsed().as_millis();
    eprintln!("five more pages by scrolling: {scrolled} ms");
    let count = page.text("the count", "#history-count").await?;
    eprintln!("history says: {count}");
    Ok(())
}
