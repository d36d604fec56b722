//! A headless Chromium for the web UI tests, driven through Debian's
//! `chromedriver` over W3C WebDriver (plain HTTP and JSON, so the tests
//! need no client crate beyond reqwest). The driver listens on 127.0.0.1
//! on a free port and is killed on `Drop`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};

use crate::poll;

/// The key WebDriver names an element reference by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A running chromedriver with one browser session.
pub struct Browser {
    driver: Child,
    http: reqwest::Client,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.session)
    }
}

fn binary(var: &str, name: &str) -> Result<String> {
    if let Ok(path) = std::env::var(var) {
        return Ok(path);
    }
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return Ok(path.display().to_string());
        }
    }
    bail!("{name} not found (set {var}; ops/test installs Debian's chromium and chromium-driver)")
}

impl Browser {
    /// Starts chromedriver and a headless Chromium at 1280×800.
    pub async fn start() -> Result<Browser> {
        let driver_bin = binary("SQUALL_CHROMEDRIVER", "chromedriver")?;
        let chromium = binary("SQUALL_CHROMIUM", "chromium")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {driver_bin}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let root = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            http,
            session: String::new(),
        };
        poll(Duration::from_secs(20), || async {
            let r = browser.http.get(format!("{root}/status")).send().await;
            Ok(r.ok().filter(|r| r.status().is_success()).map(|_| ()))
        })
        .await
        .context("chromedriver did not come up")?;
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,800",
                         "--no-first-run", "--disable-extensions"],
            },
        }}});
        let created = browser
            .send("POST", &format!("{root}/session"), &caps)
            .await?;
        let id = created["sessionId"]
            .as_str()
            .context("no session id from chromedriver")?;
        browser.session = format!("{root}/session/{id}");
        Ok(browser)
    }

    async fn send(&self, method: &str, url: &str, body: &Value) -> Result<Value> {
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(body),
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("WebDriver {method} {url}: {status} {answer}");
        }
        Ok(answer["value"].clone())
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Result<Value> {
        self.send(method, &format!("{}{path}", self.session), &body)
            .await
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.command("POST", "/url", json!({"url": url})).await?;
        Ok(())
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page
    /// and returns what it returns.
    pub async fn eval(&self, script: &str, args: Value) -> Result<Value> {
        self.command(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    /// Polls `script` until it returns something truthy (not null, false,
    /// "" or 0), and returns that.
    /// On a timeout the error shows the page's text, to see why.
    pub async fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Result<Value> {
        let waited = poll(timeout, || async {
            let v = self.eval(script, json!([])).await?;
            let truthy =
                !matches!(&v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
            Ok(truthy.then_some(v))
        })
        .await;
        match waited {
            Ok(v) => Ok(v),
            Err(e) => {
                let page = self
                    .eval(
                        "return location.href + '\\n' + document.body.innerText",
                        json!([]),
                    )
                    .await
                    .unwrap_or_default();
                Err(e.context(format!(
                    "waiting for {what}; the page said:\n{}",
                    page.as_str().unwrap_or_default()
                )))
            }
        }
    }

    async fn element(&self, css: &str) -> Result<String> {
        let found = self
            .command(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await
            .with_context(|| format!("finding {css}"))?;
        found[ELEMENT]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no element reference for {css}: {found}"))
    }

    /// Types `text` into the element `css` names, as a person would
    /// (after clearing it).
    pub async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let el = self.element(css).await?;
        self.command("POST", &format!("/element/{el}/clear"), json!({}))
            .await?;
        self.command(
            "POST",
            &format!("/element/{el}/value"),
            json!({"text": text}),
        )
        .await?;
        Ok(())
    }

    /// Clicks the element `css` names.
    pub async fn click(&self, css: &str) -> Result<()> {
        // A live page may redraw the element between finding and
        // clicking it: find it again then.
        let mut tries = 0;
        loop {
            let el = self.element(css).await?;
            match self
                .command("POST", &format!("/element/{el}/click"), json!({}))
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if tries < 5 && format!("{e:#}").contains("stale element") => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Presses and releases `key` (a WebDriver key code such as
    /// [`Browser::TAB`]) on whatever has the focus, as a keyboard would.
    pub async fn press(&self, key: &str) -> Result<()> {
        self.command(
            "POST",
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                {"type": "keyDown", "value": key},
                {"type": "keyUp", "value": key},
            ]}]}),
        )
        .await?;
        Ok(())
    }

    /// WebDriver's Tab key.
    pub const TAB: &'static str = "\u{E004}";
    /// WebDriver's Enter key.
    pub const ENTER: &'static str = "\u{E007}";

    /// Makes the page `width`×`height` CSS pixels as a phone's screen is
    /// (Chrome's device emulation); `None` goes back to the window's size.
    pub async fn viewport(&self, size: Option<(u32, u32)>) -> Result<()> {
        let (cmd, params) = match size {
            Some((width, height)) => (
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": true}),
            ),
            None => ("Emulation.clearDeviceMetricsOverride", json!({})),
        };
        self.command(
            "POST",
            "/goog/cdp/execute",
            json!({"cmd": cmd, "params": params}),
        )
        .await?;
        Ok(())
    }

    /// Saves a PNG of the page at `path`.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let png = self.command("GET", "/screenshot", json!({})).await?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().context("screenshot is not base64 text")?)?;
        std::fs::write(path, bytes)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the browser with the driver's session, then the driver.
        if !self.session.is_empty() {
            let url = self.session.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async {
                        let _ = reqwest::Client::new().delete(&url).send().await;
                    });
                }
            })
            .join();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
