//! Pack virtualenvs: each pack with Python content gets its own, at
//! `<data dir>/virtualenvs/<pack>` (the shared contract: its `bin/python`
//! is the pack's interpreter), made with the machine's `python3 -m venv`,
//! holding StackStorm's base requirement (`six`) and the pack's
//! `requirements.txt`. The virtualenv has no pip of its own: the
//! interpreter's pip (22.3 or later) installs into it with `--python`,
//! which spares seconds of bootstrapping pip into every one.
//!
//! A virtualenv is identified by a digest of what goes into it (the
//! interpreter's version, the requirements, the install options). Each
//! build goes into its own directory `.<pack>-<digest>`; once pip succeeded
//! the name `<pack>` (a symlink) is swapped to it in one rename, so a
//! running action never sees a half-built virtualenv and a failed build
//! leaves the previous one in use. The last failure of a digest is
//! remembered, so executions fail at once with pip's error instead of
//! retrying pip each time; registering the pack again retries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::process::Command;

/// StackStorm's `BASE_PACK_REQUIREMENTS`.
const BASE_REQUIREMENTS: &[&str] = &["six>=1.9.0,<2.0"];

/// Packs StackStorm runs with its own interpreter (`SYSTEM_PACK_NAMES`).
const SYSTEM_PACKS: &[&str] = &["core", "packs", "linux", "chatops"];

/// File in a finished virtualenv holding its digest.
const READY_MARKER: &str = ".squall-venv";

/// Longest a `venv` or `pip` step may take.
/// Local to the runner crate, which sits below the engine and does not
/// see `squall_actors::timing`; only this module uses it.
const STEP_TIMEOUT: Duration = Duration::from_secs(900);

/// Bumped when the way virtualenvs are built changes, so every one is
/// rebuilt.
const LAYOUT_VERSION: &str = "1";

/// How pack virtualenvs are built on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VenvSettings {
    /// The interpreter whose `-m venv` creates them and whose pip installs
    /// into them (default `python3`).
    pub python: PathBuf,
    /// Install offline from this directory of wheels
    /// (`pip --no-index --find-links`); `None` uses the package index.
    pub wheel_dir: Option<PathBuf>,
    /// Let the pack see the interpreter's own packages, as StackStorm's
    /// default `--system-site-packages` does.
    pub system_site_packages: bool,
    /// Start Python actions from a warm fork server per pack interpreter
    /// (see `forkserver`), falling back to a cold start; false: always cold.
    pub fork_server: bool,
}

impl Default for VenvSettings {
    fn default() -> Self {
        VenvSettings {
            python: PathBuf::from("python3"),
            wheel_dir: None,
            system_site_packages: true,
            fork_server: true,
        }
    }
}

/// Why a pack's virtualenv could not be built.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum VenvError {
    #[error("pack {pack}: cannot create its virtualenv {path}: {message}")]
    Create {
        pack: String,
        path: PathBuf,
        message: String,
    },
    #[error("pack {pack}: failed to install requirements from \"{file}\": {output}")]
    Install {
        pack: String,
        file: String,
        /// What pip said.
        output: String,
    },
    #[error("pack {pack}: {what} {path}: {message}")]
    Io {
        pack: String,
        what: &'static str,
        path: PathBuf,
        message: String,
    },
}

/// The pack virtualenvs of one node. Cheap to clone; builds of one pack
/// are serialised, waiting callers get the build's outcome.
#[derive(Debug, Clone)]
pub struct Virtualenvs {
    inner: Arc<Inner>,
}

/// A pack's build lock, holding its last failed build (digest, error).
type PackLock = Arc<tokio::sync::Mutex<Option<(String, VenvError)>>>;

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    settings: VenvSettings,
    /// One lock per pack.
    packs: Mutex<HashMap<String, PackLock>>,
    /// `python --version` of [`VenvSettings::python`], read once.
    interpreter: tokio::sync::OnceCell<Result<String, String>>,
}

impl Virtualenvs {
    /// The virtualenvs under `<data_dir>/virtualenvs`.
    pub fn new(data_dir: &Path, settings: VenvSettings) -> Virtualenvs {
        Virtualenvs {
            inner: Arc::new(Inner {
                root: data_dir.join("virtualenvs"),
                settings,
                packs: Mutex::new(HashMap::new()),
                interpreter: tokio::sync::OnceCell::new(),
            }),
        }
    }

    /// How they are built.
    pub fn settings(&self) -> &VenvSettings {
        &self.inner.settings
    }

    /// `<data dir>/virtualenvs/<pack>`, the pack's virtualenv.
    pub fn dir(&self, pack: &str) -> PathBuf {
        self.inner.root.join(pack)
    }

    /// Whether `pack` (in `pack_dir`) gets a virtualenv: a pack other than
    /// StackStorm's system packs with a `requirements.txt` or Python files
    /// under `actions/` or `sensors/`.
    pub fn wanted(pack: &str, pack_dir: &Path) -> bool {
        if SYSTEM_PACKS.contains(&pack) || pack_dir.as_os_str().is_empty() {
            return false;
        }
        pack_dir.join("requirements.txt").is_file()
            || has_python(&pack_dir.join("actions"), 3)
            || has_python(&pack_dir.join("sensors"), 3)
    }

    /// The virtualenv an execution of `pack` runs in: once any build of it
    /// in progress has ended, the current one; when there is none yet, the
    /// outcome of building it now (a failed build's error at once). `None`
    /// when the pack needs none. A build that failed while an older
    /// virtualenv exists leaves that one in use.
    pub async fn ready(&self, pack: &str, pack_dir: &Path) -> Result<Option<PathBuf>, VenvError> {
        if !Virtualenvs::wanted(pack, pack_dir) {
            return Ok(None);
        }
        {
            let lock = self.lock(pack);
            let failed = lock.lock().await;
            let link = self.dir(pack);
            if ready_digest(&link).is_some() {
                return Ok(Some(link));
            }
            if let Some((_, e)) = failed.as_ref() {
                return Err(e.clone());
            }
        }
        self.ensure(pack, pack_dir, false).await
    }

    /// Makes sure `pack`'s virtualenv matches its requirements, building it
    /// if not; returns its directory, or `None` when the pack needs none.
    /// A digest whose build failed fails again at once with the same error
    /// unless `retry_failed` (a registration) asks for another attempt.
    pub async fn ensure(
        &self,
        pack: &str,
        pack_dir: &Path,
        retry_failed: bool,
    ) -> Result<Option<PathBuf>, VenvError> {
        if !Virtualenvs::wanted(pack, pack_dir) {
            return Ok(None);
        }
        let lock = self.lock(pack);
        let mut failed = lock.lock().await;
        let digest = self.digest(pack, pack_dir).await?;
        let link = self.dir(pack);
        if ready_digest(&link).as_deref() == Some(digest.as_str()) {
            return Ok(Some(link));
        }
        if let Some((d, e)) = failed.as_ref() {
            if *d == digest && !retry_failed {
                return Err(e.clone());
            }
        }
        match self.build(pack, pack_dir, &digest).await {
            Ok(()) => {
                *failed = None;
                Ok(Some(link))
            }
            Err(e) => {
                tracing::error!(pack, error = %e, "pack virtualenv not built; the previous one, if any, stays in use");
                *failed = Some((digest, e.clone()));
                Err(e)
            }
        }
    }

    /// Removes `pack`'s virtualenv and every build of it, and forgets its
    /// last failure: the pack was uninstalled.
    pub async fn remove(&self, pack: &str) {
        let lock = self.lock(pack);
        let mut failed = lock.lock().await;
        *failed = None;
        let link = self.dir(pack);
        if link.is_symlink() {
            if let Err(e) = std::fs::remove_file(&link) {
                tracing::warn!(pack, error = %e, "the virtualenv's link could not be removed");
            }
        }
        remove_old_builds(&self.inner.root, pack, "", None).await;
    }

    /// The pack's build lock, holding its last failed build.
    fn lock(&self, pack: &str) -> PackLock {
        let mut packs = self
            .inner
            .packs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        packs.entry(pack.to_string()).or_default().clone()
    }

    /// A digest of everything that goes into the pack's virtualenv.
    async fn digest(&self, pack: &str, pack_dir: &Path) -> Result<String, VenvError> {
        let interpreter = self
            .inner
            .interpreter
            .get_or_init(|| interpreter_version(self.inner.settings.python.clone()))
            .await
            .clone()
            .map_err(|message| VenvError::Create {
                pack: pack.to_string(),
                path: self.dir(pack),
                message,
            })?;
        let file = pack_dir.join("requirements.txt");
        let requirements = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(VenvError::Io {
                    pack: pack.to_string(),
                    what: "cannot read",
                    path: file,
                    message: e.to_string(),
                })
            }
        };
        let s = &self.inner.settings;
        let mut hash = Sha256::new();
        for part in [
            LAYOUT_VERSION.as_bytes(),
            interpreter.as_bytes(),
            s.python.as_os_str().as_encoded_bytes(),
            &[u8::from(s.system_site_packages)],
            s.wheel_dir
                .as_ref()
                .map_or(&[][..], |w| w.as_os_str().as_encoded_bytes()),
            BASE_REQUIREMENTS.join("\n").as_bytes(),
            &requirements,
        ] {
            hash.update(part);
            hash.update([0]);
        }
        Ok(hex::encode(&hash.finalize()[..8]))
    }

    /// Builds the virtualenv of `digest` in its own directory and swaps
    /// `<pack>` to it.
    async fn build(&self, pack: &str, pack_dir: &Path, digest: &str) -> Result<(), VenvError> {
        let root = &self.inner.root;
        let s = &self.inner.settings;
        let name = format!(".{pack}-{digest}");
        let target = root.join(&name);
        let io = |what: &'static str, path: &Path, e: std::io::Error| VenvError::Io {
            pack: pack.to_string(),
            what,
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        tracing::info!(pack, path = %target.display(), "building the pack's virtualenv");
        let started = std::time::Instant::now();
        if target.exists() {
            // A build that was interrupted.
            tokio::fs::remove_dir_all(&target)
                .await
                .map_err(|e| io("cannot remove", &target, e))?;
        }
        tokio::fs::create_dir_all(root)
            .await
            .map_err(|e| io("cannot create", root, e))?;
        // Without pip of its own: bootstrapping pip into every virtualenv
        // costs seconds; the interpreter's pip installs into it instead.
        let mut venv = Command::new(&s.python);
        venv.args(["-m", "venv", "--without-pip"]);
        if s.system_site_packages {
            venv.arg("--system-site-packages");
        }
        venv.arg(&target);
        if let Err(message) = step(venv).await {
            let _ = tokio::fs::remove_dir_all(&target).await;
            return Err(VenvError::Create {
                pack: pack.to_string(),
                path: target,
                message,
            });
        }
        let requirements = pack_dir.join("requirements.txt");
        let mut pip = Command::new(&s.python);
        pip.args(["-m", "pip", "--python"])
            .arg(target.join("bin").join("python"))
            .args(["install", "--disable-pip-version-check", "--no-input"]);
        if let Some(wheels) = &s.wheel_dir {
            pip.arg("--no-index").arg("--find-links").arg(wheels);
        }
        pip.args(BASE_REQUIREMENTS);
        if requirements.is_file() {
            pip.args(["-U", "-r"]).arg(&requirements);
        }
        if let Err(output) = step(pip).await {
            let _ = tokio::fs::remove_dir_all(&target).await;
            return Err(VenvError::Install {
                pack: pack.to_string(),
                file: requirements.display().to_string(),
                output,
            });
        }
        let marker = target.join(READY_MARKER);
        tokio::fs::write(&marker, digest)
            .await
            .map_err(|e| io("cannot write", &marker, e))?;
        let link = self.dir(pack);
        let previous = std::fs::read_link(&link).ok();
        swap_link(&link, Path::new(&name)).map_err(|e| io("cannot point", &link, e))?;
        remove_old_builds(root, pack, &name, previous.as_deref()).await;
        tracing::info!(pack, path = %target.display(), seconds = started.elapsed().as_secs_f64(),
            "pack virtualenv ready");
        Ok(())
    }
}

/// Whether `dir` holds a `.py` file, looking `depth` levels down.
fn has_python(dir: &Path, depth: u32) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        let path = e.path();
        if path.is_dir() {
            depth > 0 && has_python(&path, depth - 1)
        } else {
            path.extension().is_some_and(|x| x == "py")
        }
    })
}

/// The digest a finished virtualenv at `link` was built from.
fn ready_digest(link: &Path) -> Option<String> {
    std::fs::read_to_string(link.join(READY_MARKER))
        .ok()
        .map(|d| d.trim().to_string())
}

/// `python --version`, or why it cannot run.
async fn interpreter_version(python: PathBuf) -> Result<String, String> {
    let mut cmd = Command::new(&python);
    cmd.arg("--version");
    step(cmd)
        .await
        .map(|out| out.trim().to_string())
        .map_err(|e| format!("{}: {e}", python.display()))
}

/// Runs one build step to its end: its output, or what it said when it
/// failed (stderr, else stdout).
async fn step(mut cmd: Command) -> Result<String, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let what = format!("{:?}", cmd.as_std().get_program());
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let out = match tokio::time::timeout(STEP_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("{what}: {e}")),
        Err(_) => {
            return Err(format!(
                "{what} did not finish within {} seconds",
                STEP_TIMEOUT.as_secs()
            ))
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(if stderr.is_empty() {
        stdout.trim().to_string()
    } else {
        stderr
    })
}

/// Points the symlink `link` at `target` in one rename.
fn swap_link(link: &Path, target: &Path) -> std::io::Result<()> {
    let staging = link.with_file_name(format!(
        ".{}.link-{}",
        link.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&staging);
    std::os::unix::fs::symlink(target, &staging)?;
    // A real directory in the way (made by hand) cannot be renamed over.
    if link.is_dir() && std::fs::symlink_metadata(link)?.is_dir() {
        std::fs::remove_dir_all(link)?;
    }
    std::fs::rename(&staging, link)
}

/// Removes the pack's builds other than `current` and `previous` (which
/// actions started before the swap may still be using).
async fn remove_old_builds(root: &Path, pack: &str, current: &str, previous: Option<&Path>) {
    let prefix = format!(".{pack}-");
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        // `.<pack>-<digest>` only: 16 hex digits, so another pack whose
        // name extends this one (`a` and `a-b`) is not touched.
        let is_build = rest.len() == 16 && rest.chars().all(|c| c.is_ascii_hexdigit());
        if !is_build || name == current || previous.is_some_and(|p| p == Path::new(&name)) {
            continue;
        }
        if let Err(e) = tokio::fs::remove_dir_all(entry.path()).await {
            tracing::warn!(pack, path = %entry.path().display(), error = %e,
                "an old virtualenv could not be removed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (rel, text) in files {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
            std::fs::write(path, text).expect("write");
        }
        dir
    }

    #[test]
    fn only_packs_with_python_content_get_one() {
        let py = pack(&[("actions/a.py", "")]);
        let deep = pack(&[("sensors/sub/s.py", "")]);
        let reqs = pack(&[("requirements.txt", "six\n")]);
        let shell = pack(&[("actions/a.sh", "")]);
        assert!(Virtualenvs::wanted("p", py.path()));
        assert!(Virtualenvs::wanted("p", deep.path()));
        assert!(Virtualenvs::wanted("p", reqs.path()));
        assert!(!Virtualenvs::wanted("p", shell.path()));
        assert!(!Virtualenvs::wanted("core", py.path()), "a system pack");
    }

    #[tokio::test]
    async fn installs_offline_from_a_wheel_directory() {
        let wheels = tempfile::tempdir().expect("wheels");
        let download = tokio::process::Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "-q", "-d"])
            .arg(wheels.path())
            .arg("tabulate==0.9.0")
            .output()
            .await
            .expect("pip runs");
        assert!(download.status.success(), "{download:?}");
        let data = tempfile::tempdir().expect("data");
        let venvs = Virtualenvs::new(
            data.path(),
            VenvSettings {
                wheel_dir: Some(wheels.path().to_path_buf()),
                ..VenvSettings::default()
            },
        );
        let dir = pack(&[("requirements.txt", "tabulate==0.9.0\n")]);
        let venv = venvs
            .ensure("p", dir.path(), true)
            .await
            .expect("installed from the wheels")
            .expect("wanted");
        let probe = std::process::Command::new(venv.join("bin/python"))
            .args(["-c", "import tabulate; print(tabulate.__version__)"])
            .output()
            .expect("runs");
        assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "0.9.0");
        // The index is never asked: a package on PyPI but not among the
        // wheels does not install.
        std::fs::write(dir.path().join("requirements.txt"), "text-unidecode==1.3\n")
            .expect("write");
        let e = venvs
            .ensure("p", dir.path(), true)
            .await
            .expect_err("offline");
        assert!(e.to_string().contains("text-unidecode"), "{e}");
    }

    #[tokio::test]
    async fn builds_once_per_requirements_and_keeps_the_last_good_one() {
        let data = tempfile::tempdir().expect("data");
        let dir = pack(&[("actions/a.py", ""), ("requirements.txt", "six\n")]);
        let venvs = Virtualenvs::new(data.path(), VenvSettings::default());
        let venv = venvs
            .ensure("p", dir.path(), false)
            .await
            .expect("built")
            .expect("wanted");
        assert_eq!(venv, data.path().join("virtualenvs/p"));
        let probe = std::process::Command::new(venv.join("bin/python"))
            .args(["-c", "import six, sys; print(sys.prefix)"])
            .output()
            .expect("runs");
        assert!(probe.status.success(), "{probe:?}");
        let first = std::fs::read_link(&venv).expect("a symlink");

        // Unchanged: nothing is rebuilt.
        venvs.ensure("p", dir.path(), false).await.expect("ready");
        assert_eq!(std::fs::read_link(&venv).expect("link"), first);

        // A requirement pip cannot find: pip's error, the old one stays.
        std::fs::write(
            dir.path().join("requirements.txt"),
            "squall-no-such-package-anywhere==1.0\n",
        )
        .expect("write");
        let err = venvs
            .ensure("p", dir.path(), false)
            .await
            .expect_err("cannot install");
        let VenvError::Install { output, .. } = &err else {
            panic!("{err}")
        };
        assert!(
            output.contains("squall-no-such-package-anywhere"),
            "{output}"
        );
        assert_eq!(std::fs::read_link(&venv).expect("link"), first);
        assert!(venv.join("bin/python").is_file());
        // Remembered: the same error at once, without pip.
        let started = std::time::Instant::now();
        let again = venvs
            .ensure("p", dir.path(), false)
            .await
            .expect_err("still failing");
        assert_eq!(again, err);
        assert!(started.elapsed() < Duration::from_millis(500));
        // Executions keep the last good one.
        assert_eq!(
            venvs.ready("p", dir.path()).await.expect("usable"),
            Some(venv.clone())
        );
        // A pack whose only build failed fails its executions with pip's
        // error.
        let other = pack(&[("requirements.txt", "squall-no-such-package-anywhere==1.0\n")]);
        let e = venvs.ready("q", other.path()).await.expect_err("no venv");
        assert!(
            e.to_string().contains("squall-no-such-package-anywhere"),
            "{e}"
        );
        let builds: Vec<_> = std::fs::read_dir(data.path().join("virtualenvs"))
            .expect("root")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".p-"))
            .collect();
        assert_eq!(builds.len(), 1, "the failed build is removed: {builds:?}");
    }
}
