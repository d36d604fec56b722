//! The remote runners against real OpenSSH servers on 127.0.0.1: two
//! "hosts" (two sshd ports), parallel and serial runs, password and key
//! logins, sudo, failing and unreachable hosts, timeouts that kill the
//! remote command, script upload, host key checking, connection reuse, and
//! credentials kept out of everything the API shows.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use serde_json::{json, Value};
use squall::config::SshConfig;
use squall_tests::sshd::{client_key, test_user, ClientKey, Sshd, TEST_USER};
use squall_tests::{free_port, poll, write_pack, TestNode};

const PACK: &str =
    "ref: remote\nname: remote\ndescription: Remote runner tests\nversion: 0.1.0\nauthor: tests\n";

const CMD: &str = "
name: cmd
runner_type: remote-shell-cmd
description: Runs a command on remote hosts (core.remote).
enabled: true
parameters:
  cmd:
    type: string
    required: true
";

const CMD_PARALLEL: &str = "
name: cmd_parallel
runner_type: remote-shell-cmd
description: Runs a command on remote hosts at once.
enabled: true
parameters:
  cmd:
    type: string
    required: true
  parallel:
    type: boolean
    default: true
    immutable: true
";

const SCRIPT: &str = "
name: script
runner_type: remote-shell-script
description: Uploads and runs a script.
enabled: true
entry_point: show_args.sh
parameters:
  who:
    type: string
    position: 0
  count:
    type: integer
    position: 1
  loud:
    type: boolean
  mode:
    type: string
";

const SCRIPT_BODY: &str = "#!/bin/bash
for a in \"$@\"; do echo \"[$a]\"; done
echo \"dir=$(dirname \"$0\")\"
echo \"pwd=$(pwd)\"
echo \"pack=$ST2_ACTION_PACK_NAME\"
. \"$(dirname \"$0\")/lib/greet.sh\"
greet
\"$(dirname \"$0\")/lib/tool.sh\"
echo \"data=$(cat \"$(dirname \"$0\")/lib/sub/data.txt\")\"
";

const BROKEN_LIB: &str = "
name: broken_lib
runner_type: remote-shell-script
description: A script whose lib directory cannot be read.
enabled: true
entry_point: broken/run.sh
";

/// A node, two sshd "hosts" that know the test keys, and the keys.
struct Rig {
    node: TestNode,
    a: Sshd,
    b: Sshd,
    /// An ed25519 key without passphrase.
    key: ClientKey,
    /// An RSA key encrypted with [`PASSPHRASE`].
    locked: ClientKey,
    password: String,
    dir: tempfile::TempDir,
}

const PASSPHRASE: &str = "correct horse battery staple";

impl Rig {
    /// Both hosts are in the node's known_hosts file; `configure` may
    /// change the node's SSH settings further.
    async fn start(configure: impl FnOnce(&mut SshConfig, &Path)) -> Result<Rig> {
        let password = test_user()?.password.clone();
        let dir = tempfile::tempdir()?;
        let key = client_key(dir.path(), "id_ed25519", "ed25519", None)?;
        let locked = client_key(dir.path(), "id_rsa", "rsa", Some(PASSPHRASE))?;
        let keys = [key.public.as_str(), locked.public.as_str()];
        let (a, b) = (Sshd::start(&keys)?, Sshd::start(&keys)?);
        let known_hosts = dir.path().join("known_hosts");
        std::fs::write(
            &known_hosts,
            format!("{}{}", a.known_hosts_line(), b.known_hosts_line()),
        )?;
        let packs = dir.path().join("packs");
        write_pack(
            &packs,
            "remote",
            &[
                ("pack.yaml", PACK),
                ("actions/cmd.yaml", CMD),
                ("actions/cmd_parallel.yaml", CMD_PARALLEL),
                ("actions/script.yaml", SCRIPT),
                ("actions/show_args.sh", SCRIPT_BODY),
                // Beside the script: goes with it, modes kept.
                (
                    "actions/lib/greet.sh",
                    "greet() { echo \"hello from lib\"; }\n",
                ),
                ("actions/lib/tool.sh", "#!/bin/sh\necho \"tool ran\"\n"),
                ("actions/lib/sub/data.txt", "nested\n"),
                ("actions/broken_lib.yaml", BROKEN_LIB),
                ("actions/broken/run.sh", "#!/bin/sh\necho never\n"),
            ],
        )?;
        // A lib directory that cannot be packed: a link to nothing.
        std::fs::create_dir_all(packs.join("remote/actions/broken/lib"))?;
        std::os::unix::fs::symlink(
            "/nonexistent/helper.sh",
            packs.join("remote/actions/broken/lib/helper.sh"),
        )?;
        std::fs::set_permissions(
            packs.join("remote/actions/lib/tool.sh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let mut ssh = SshConfig {
            user: Some(TEST_USER.to_string()),
            known_hosts: Some(known_hosts),
            ..SshConfig::default()
        };
        configure(&mut ssh, dir.path());
        let node = TestNode::start_with(vec![packs], |c| c.runners.ssh = ssh).await?;
        Ok(Rig {
            node,
            a,
            b,
            key,
            locked,
            password,
            dir,
        })
    }

    fn both(&self) -> String {
        format!("{},{}", self.a.host(), self.b.host())
    }

    /// Runs `action` with `parameters` and returns the finished execution.
    async fn run(&self, action: &str, parameters: Value) -> Result<Value> {
        let (status, e) = self
            .node
            .post(
                "executions",
                &json!({"action": action, "parameters": parameters}),
            )
            .await?;
        anyhow::ensure!(status == 201, "{status}: {e}");
        let id = e["id"].as_str().context("execution id")?;
        self.node.finished(id).await
    }
}

fn error_of(result: &Value) -> String {
    result["error"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_command_runs_on_two_hosts_with_key_or_password() -> Result<()> {
    let rig = Rig::start(|_, _| {}).await?;
    let cmd = "echo \"hi from port ${SSH_CONNECTION##* }\"; echo warn >&2";
    let logins = [
        json!({"private_key": rig.key.private_path}),
        json!({"private_key": rig.key.private}),
        json!({"private_key": rig.locked.private, "passphrase": PASSPHRASE}),
        json!({"private_key": rig.locked.private_path, "passphrase": PASSPHRASE}),
        json!({"password": rig.password, "username": TEST_USER}),
    ];
    for login in logins {
        let mut params = login.clone();
        params["hosts"] = json!(rig.both());
        params["cmd"] = json!(cmd);
        let e = rig.run("remote.cmd", params).await?;
        assert_eq!(e["status"], "succeeded", "{e}");
        let result = e["result"].as_object().context("result")?;
        assert_eq!(result.len(), 2, "{e}");
        for sshd in [&rig.a, &rig.b] {
            assert_eq!(
                result[&sshd.host()],
                json!({"stdout": format!("hi from port {}", sshd.port), "stderr": "warn",
                       "return_code": 0, "succeeded": true, "failed": false}),
                "{e}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn parallel_runs_hosts_at_once_and_serial_one_after_the_other() -> Result<()> {
    let rig = Rig::start(|_, _| {}).await?;
    let params = json!({"hosts": rig.both(), "cmd": "sleep 1.5; echo done",
                        "private_key": rig.key.private});
    // Warm the pool so that handshakes do not blur the timing.
    rig.run("remote.cmd", params.clone()).await?;
    let started = Instant::now();
    let e = rig.run("remote.cmd_parallel", params.clone()).await?;
    let parallel = started.elapsed();
    assert_eq!(e["status"], "succeeded", "{e}");
    let started = Instant::now();
    let e = rig.run("remote.cmd", params).await?;
    let serial = started.elapsed();
    assert_eq!(e["status"], "succeeded", "{e}");
    assert!(
        parallel < Duration::from_millis(2900),
        "parallel took {parallel:?}"
    );
    assert!(serial >= Duration::from_secs(3), "serial took {serial:?}");
    Ok(())
}

#[tokio::test]
async fn one_failing_or_unreachable_host_fails_the_execution() -> Result<()> {
    let rig = Rig::start(|_, _| {}).await?;
    let cmd = format!(
        "if [ \"${{SSH_CONNECTION##* }}\" = {} ]; then echo broke >&2; exit 3; fi; echo fine",
        rig.a.port
    );
    let e = rig
        .run(
            "remote.cmd",
            json!({"hosts": rig.both(), "cmd": cmd, "private_key": rig.key.private}),
        )
        .await?;
    assert_eq!(e["status"], "failed", "{e}");
    let r = &e["result"];
    assert_eq!(r[rig.a.host()]["return_code"], 3, "{e}");
    assert_eq!(r[rig.a.host()]["failed"], true, "{e}");
    assert_eq!(r[rig.a.host()]["stderr"], "broke", "{e}");
    assert_eq!(r[rig.b.host()]["succeeded"], true, "{e}");

    let dead = format!("127.0.0.1:{}", free_port()?);
    let e = rig
        .run(
            "remote.cmd",
            json!({"hosts": format!("{},{dead}", rig.a.host()), "cmd": "echo up",
                   "private_key": rig.key.private}),
        )
        .await?;
    assert_eq!(e["status"], "failed", "{e}");
    let r = &e["result"];
    assert_eq!(r[rig.a.host()]["stdout"], "up", "{e}");
    assert_eq!(r[&dead]["return_code"], 255, "{e}");
    assert_eq!(r[&dead]["timeout"], false, "{e}");
    let error = error_of(&r[&dead]);
    assert!(
        error.contains(&format!("Failed connecting to host {dead}")) && error.contains("refused"),
        "{error}"
    );
    Ok(())
}

#[tokio::test]
async fn a_timeout_kills_the_remote_command() -> Result<()> {
    let rig = Rig::start(|_, _| {}).await?;
    let pid_file = rig.dir.path().join("remote.pid");
    std::fs::set_permissions(
        rig.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )?;
    let started = Instant::now();
    let e = rig
        .run(
            "remote.cmd",
            json!({"hosts": rig.a.host(), "timeout": 1, "private_key": rig.key.private,
                   "cmd": format!("sleep 300 & echo $! > {}; echo before; wait", pid_file.display())}),
        )
        .await?;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(e["status"], "timeout", "{e}");
    let r = &e["result"][rig.a.host()];
    assert_eq!(r["timeout"], true, "{e}");
    assert_eq!(r["return_code"], -9, "{e}");
    assert_eq!(r["stdout"], "before", "{e}");
    assert!(error_of(r).contains("didn't finish in 1 seconds"), "{e}");
    let pid: i32 = std::fs::read_to_string(&pid_file)?.trim().parse()?;
    poll(Duration::from_secs(10), || async move {
        Ok((kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH)).then_some(()))
    })
    .await
    .with_context(|| format!("remote sleep {pid} survived the timeout"))?;
    Ok(())
}

#[tokio::test]
async fn a_script_and_its_lib_are_uploaded_run_with_its_arguments_and_removed() -> Result<()> {
    let rig = Rig::start(|_, _| {}).await?;
    let e = rig
        .run(
            "remote.script",
            json!({"hosts": rig.both(), "private_key": rig.key.private, "who": "web 3",
                   "count": 2, "loud": true, "mode": "it's", "cwd": "/"}),
        )
        .await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    let id = e["id"].as_str().context("id")?;
    for sshd in [&rig.a, &rig.b] {
        let out = e["result"][sshd.host()]["stdout"]
            .as_str()
            .context("stdout")?;
        assert_eq!(
            out,
            format!(
                "[--loud]\n[--mode=it's]\n[web 3]\n[2]\ndir=/tmp/{id}\npwd=/\npack=remote\n\
                 hello from lib\ntool ran\ndata=nested"
            ),
            "{e}"
        );
    }
    assert!(
        !Path::new("/tmp").join(id).exists(),
        "the remote script directory was left behind"
    );
    Ok(())
}

#[tokio::test]
async fn sudo_uses_the_password_given_and_reports_a_wrong_one() -> Result<()> {
    let rig = Rig::start(|_, _| {}).await?;
    let base = json!({"hosts": rig.a.host(), "private_key": rig.key.private, "sudo": true,
                      "cmd": "id -u; echo \"$GREETING\"", "env": {"GREETING": "hello there"}});
    let mut good = base.clone();
    good["sudo_password"] = json!(rig.password);
    let e = rig.run("remote.cmd", good).await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"][rig.a.host()]["stdout"], "0\nhello there", "{e}");

    let mut wrong = base.clone();
    wrong["sudo_password"] = json!("not-the-password");
    let e = rig.run("remote.cmd", wrong).await?;
    assert_eq!(e["status"], "failed", "{e}");
    let error = error_of(&e["result"][rig.a.host()]);
    assert!(error.contains("Invalid sudo password"), "{e}");
    assert!(!e.to_string().contains("not-the-password"), "{e}");

    let e = rig.run("remote.cmd", base).await?;
    assert_eq!(e["status"], "failed", "{e}");
    let stderr = e["result"][rig.a.host()]["stderr"].to_string();
    assert!(stderr.contains("password is required"), "{e}");
    Ok(())
}

#[tokio::test]
async fn host_keys_not_in_known_hosts_are_refused() -> Result<()> {
    let keys_dir = tempfile::tempdir()?;
    let key = client_key(keys_dir.path(), "id", "ed25519", None)?;
    let stranger = Sshd::start(&[key.public.as_str()])?;
    // B is recorded with A's key: a changed key.
    let rig = Rig::start(|_, _| {}).await?;
    let forged = format!(
        "{}[127.0.0.1]:{} {}\n",
        rig.a.known_hosts_line(),
        rig.b.port,
        rig.a.host_key
    );
    std::fs::write(rig.dir.path().join("known_hosts"), forged)?;
    let e = rig
        .run(
            "remote.cmd",
            json!({"hosts": format!("{},{}", rig.b.host(), stranger.host()),
                   "cmd": "echo should not run", "private_key": rig.key.private}),
        )
        .await?;
    assert_eq!(e["status"], "failed", "{e}");
    let changed = error_of(&e["result"][rig.b.host()]);
    assert!(
        changed.contains("does not match the key recorded") && changed.contains("known_hosts:2"),
        "{changed}"
    );
    let unknown = error_of(&e["result"][stranger.host()]);
    assert!(
        unknown.contains("is not in known_hosts") && unknown.contains("SHA256:"),
        "{unknown}"
    );

    // The explicit opt-out lets the stranger in.
    let open = Rig::start(|ssh, _| ssh.strict_host_key_checking = false).await?;
    let e = open
        .run(
            "remote.cmd",
            json!({"hosts": stranger.host(), "cmd": "echo in", "private_key": key.private}),
        )
        .await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    Ok(())
}

#[tokio::test]
async fn credentials_never_appear_in_api_output() -> Result<()> {
    let rig = Rig::start(|_, _| {}).await?;
    let key_body: String = rig
        .locked
        .private
        .lines()
        .nth(3)
        .context("a key line")?
        .to_string();
    let runs = [
        json!({"hosts": rig.a.host(), "cmd": "true", "password": rig.password,
               "sudo": true, "sudo_password": rig.password}),
        json!({"hosts": rig.a.host(), "cmd": "true", "private_key": rig.locked.private,
               "passphrase": PASSPHRASE}),
    ];
    for params in runs {
        let e = rig.run("remote.cmd", params).await?;
        assert_eq!(e["status"], "succeeded", "{e}");
        let id = e["id"].as_str().context("id")?;
        let (_, one) = rig.node.get(&format!("executions/{id}")).await?;
        let (_, all) = rig.node.get("executions?limit=-1").await?;
        for shown in [one.to_string(), all.to_string()] {
            for secret in [rig.password.as_str(), PASSPHRASE, key_body.as_str()] {
                assert!(!shown.contains(secret), "a secret leaked: {shown}");
            }
        }
        for name in ["password", "sudo_password", "private_key", "passphrase"] {
            if one["parameters"].get(name).is_some() {
                assert_eq!(one["parameters"][name], "********", "{one}");
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn bad_input_fails_with_an_error_naming_the_field() -> Result<()> {
    let rig = Rig::start(|_, _| {}).await?;
    let cases = [
        (
            json!({"hosts": " , ", "cmd": "true", "password": "x"}),
            "parameter `hosts` names no host",
        ),
        (
            json!({"hosts": "127.0.0.1:notaport", "cmd": "true", "password": "x"}),
            "parameter `hosts`",
        ),
        (
            json!({"hosts": rig.a.host(), "cmd": "true", "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"}),
            "parameter `private_key` is not a private key",
        ),
        (
            json!({"hosts": rig.a.host(), "cmd": "true", "private_key": "/no/such/key"}),
            "parameter `private_key` is neither",
        ),
        (
            json!({"hosts": rig.a.host(), "cmd": "true", "private_key": rig.locked.private}),
            "is encrypted: give its `passphrase`",
        ),
        (
            json!({"hosts": rig.a.host(), "cmd": "true", "private_key": rig.locked.private, "passphrase": "nope"}),
            "parameter `passphrase` does not open",
        ),
        (
            json!({"hosts": rig.a.host(), "cmd": "true"}),
            "no SSH credentials",
        ),
        (
            json!({"hosts": rig.a.host(), "cmd": "true", "password": "wrong"}),
            "authentication as `squall-ssh-test`",
        ),
    ];
    for (params, needle) in cases {
        let e = rig.run("remote.cmd", params.clone()).await?;
        assert_eq!(e["status"], "failed", "{params}: {e}");
        let text = e["result"].to_string();
        assert!(text.contains(needle), "{params}: {e}");
    }
    // A script whose lib directory cannot be packed runs nowhere.
    let e = rig
        .run(
            "remote.broken_lib",
            json!({"hosts": rig.a.host(), "private_key": rig.key.private}),
        )
        .await?;
    assert_eq!(e["status"], "failed", "{e}");
    let text = e["result"].to_string();
    assert!(
        text.contains("cannot pack") && text.contains("actions/broken/lib"),
        "{e}"
    );
    // `hosts` is required: the API refuses a run without it.
    let (status, body) = rig
        .node
        .post(
            "executions",
            &json!({"action": "remote.cmd", "parameters": {"cmd": "true"}}),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert!(body["faultstring"].to_string().contains("hosts"), "{body}");
    Ok(())
}

#[tokio::test]
async fn a_bastion_host_carries_the_connection() -> Result<()> {
    let rig = Rig::start(|_, _| {}).await?;
    let e = rig
        .run(
            "remote.cmd",
            json!({"hosts": rig.b.host(), "bastion_host": rig.a.host(), "cmd": "echo via",
                   "private_key": rig.key.private}),
        )
        .await?;
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["result"][rig.b.host()]["stdout"], "via", "{e}");

    let dead = format!("127.0.0.1:{}", free_port()?);
    let e = rig
        .run(
            "remote.cmd",
            json!({"hosts": rig.b.host(), "bastion_host": dead, "cmd": "echo via",
                   "private_key": rig.key.private}),
        )
        .await?;
    assert_eq!(e["status"], "failed", "{e}");
    let error = error_of(&e["result"][rig.b.host()]);
    assert!(
        error.contains(&format!("cannot connect to {dead}")),
        "{error}"
    );
    Ok(())
}

/// The client port the remote host saw, which tells connections apart.
async fn client_port(rig: &Rig) -> Result<String> {
    let e = rig
        .run(
            "remote.cmd",
            json!({"hosts": rig.a.host(), "cmd": "echo ${SSH_CONNECTION#* }",
                   "private_key": rig.key.private}),
        )
        .await?;
    anyhow::ensure!(e["status"] == "succeeded", "{e}");
    let seen = e["result"][rig.a.host()]["stdout"].to_string();
    Ok(seen
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

#[tokio::test]
async fn connections_are_reused_and_a_broken_one_is_replaced() -> Result<()> {
    let rig = Rig::start(|_, _| {}).await?;
    let first = client_port(&rig).await?;
    assert_eq!(
        client_port(&rig).await?,
        first,
        "the pooled connection was not reused"
    );
    rig.a.drop_connections()?;
    let after = client_port(&rig).await?;
    assert_ne!(after, first, "a dropped connection cannot carry a new run");
    assert_eq!(client_port(&rig).await?, after);

    poll(Duration::from_secs(10), || async {
        Ok((rig.a.connections()? == 1).then_some(()))
    })
    .await
    .context("one pooled connection to the host")?;

    // Without reuse, each run has its own connection, closed when it ends.
    let fresh = Rig::start(|ssh, _| ssh.pool_idle_timeout = 0).await?;
    assert_ne!(client_port(&fresh).await?, client_port(&fresh).await?);
    poll(Duration::from_secs(10), || async {
        Ok((fresh.a.connections()? == 0).then_some(()))
    })
    .await
    .context("connections left open without reuse")?;
    Ok(())
}

/// Runs per second of a `core.remote`-style action against one sshd, with
/// and without connection reuse. A measurement, not a check:
/// `cargo test -p squall-tests --test remote_runner -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement"]
async fn measure_runs_per_second_with_and_without_reuse() -> Result<()> {
    const RUNS: usize = 40;
    for idle in [60, 0] {
        let rig = Rig::start(|ssh, _| ssh.pool_idle_timeout = idle).await?;
        let params = json!({"hosts": rig.a.host(), "cmd": "echo ok",
                            "private_key": rig.key.private});
        rig.run("remote.cmd", params.clone()).await?;
        let started = Instant::now();
        for _ in 0..RUNS {
            let e = rig.run("remote.cmd", params.clone()).await?;
            anyhow::ensure!(e["status"] == "succeeded", "{e}");
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "pool_idle_timeout={idle}: {RUNS} sequential runs in {secs:.2} s = {:.1} runs/s",
            RUNS as f64 / secs
        );
    }
    Ok(())
}
