//! The work of `packs.install` and `packs.uninstall`, StackStorm's pack
//! management workflows: the engine runner `pack-management`, behind the
//! actions `packs.deploy` and `packs.remove` that the two Orquesta
//! workflows of Squall's `packs` pack run as their one task (so the
//! official CLI, which follows a workflow's tasks, shows them and their
//! errors; `POST /packs/install` and `/packs/uninstall` start the
//! workflows). An install fetches each source (a git URL, `file://`
//! URL or path of a git repository, at an optional `=<ref>`; or a plain
//! directory), validates the pack with the loader, installs its
//! `pack.yaml` dependencies first, builds its virtualenv, stores its files
//! in the `packs` object store ([`crate::pack_files`]) and only then
//! registers it: a failing install leaves the installed version in place.
//! The result holds what StackStorm's `packs.install` workflow outputs
//! (`packs_list`, `message`, `conflict_list`, `warning_list`), which the
//! workflow publishes and the official `st2 pack install` reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::future::BoxFuture;
use serde_json::{json, Value};
use thiserror::Error;
use tokio::process::Command;

use squall_domain::execution::Status;
use squall_domain::loader::{self, LoadErrors};
use squall_domain::model::PackBundle;
use squall_domain::registration::Mode;
use squall_runners::venv::{VenvError, Virtualenvs};
use squall_runners::{OutputChunk, OutputStream, RunOutcome, RunRequest, Runner};

use crate::bus::{from_bytes, Bus};
use crate::catalog::CatalogHandle;
use crate::content::{pack_key, store_pack, warn_of_workflow_problems};
use crate::error::EngineError;
use crate::pack_files::{self, FilesError, PackFiles};
use crate::timing::CATALOG_WAIT;

/// How deep dependencies of dependencies go (StackStorm's `nested`).
const MAX_NESTING: usize = 10;

/// Default time an install may take (StackStorm's `timeout` of
/// `packs.install`).
const DEFAULT_TIMEOUT: u64 = 600;

/// Packs StackStorm refuses to remove (`SYSTEM_PACK_NAMES`).
const SYSTEM_PACKS: &[&str] = &["core", "packs", "linux", "chatops"];

/// Why a pack could not be installed or removed.
#[derive(Debug, Error)]
pub enum InstallError {
    #[error("\"{0}\": installing a pack by name needs the StackStorm Exchange index, which Squall does not read; give its git URL (such as https://github.com/StackStorm-Exchange/stackstorm-{0}) or a file:// URL or path")]
    ExchangeName(String),
    #[error("\"{0}\": an owner/repo name means a GitHub repository, which Squall does not guess; give the git URL (such as https://github.com/{0}) or a file:// URL or path")]
    OwnerRepo(String),
    #[error("\"{0}\": not a pack source; give a git URL (https://, ssh://, git@), a file:// URL or an absolute path, optionally followed by =<ref>")]
    BadSource(String),
    #[error("Local pack directory \"{0}\" doesn't exist")]
    NoDirectory(PathBuf),
    #[error("\"{spec}\": {path} is a plain directory, not a git repository, so it has no ref \"{git_ref}\"")]
    RefOnDirectory {
        spec: String,
        path: PathBuf,
        git_ref: String,
    },
    #[error("git {step} of {url} failed: {output}")]
    Git {
        url: String,
        step: &'static str,
        output: String,
    },
    #[error("\"{git_ref}\" is not a valid version, hash, tag or branch in {url}.{available}")]
    BadRef {
        git_ref: String,
        url: String,
        /// ` Available versions are: ...`, or empty.
        available: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("Pack \"{pack}\" requires Python {wanted}, but the Python of this cluster's packs is 3 (install with force to try anyway)")]
    Python { pack: String, wanted: String },
    #[error("Unable to install packs due to conflicts: pack \"{pack}\" requires {dependency} version {wanted}, but version {installed} is installed. Install that version first, or install with skip_dependencies (`st2 pack install --skip-dependencies`).")]
    Conflict {
        pack: String,
        dependency: String,
        wanted: String,
        installed: String,
    },
    #[error("pack \"{pack}\" is registered from the directory {path}, not installed; change it there (or remove it from the node's pack directories first)")]
    DirectoryPack { pack: String, path: String },
    #[error("Removal of system pack \"{0}\" is not allowed")]
    SystemPack(String),
    #[error("\"{0}\" is the name of a system pack, which an install cannot replace")]
    SystemPackInstall(String),
    #[error("pack \"{0}\" is not installed")]
    NotInstalled(String),
    #[error("dependency \"{dependency}\" of pack \"{pack}\" could not be installed: {error}")]
    Dependency {
        pack: String,
        dependency: String,
        error: Box<InstallError>,
    },
    #[error("dependencies nest deeper than {MAX_NESTING} levels at \"{0}\"")]
    TooDeep(String),
    #[error("{what} {path}: {message}")]
    Io {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error(transparent)]
    Venv(#[from] VenvError),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("the install took longer than its timeout of {0} s")]
    Timeout(u64),
}

/// Where a pack comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A git repository (URL, `file://` URL or local path), at a ref.
    Git {
        url: String,
        git_ref: Option<String>,
    },
    /// A plain directory, copied as it is.
    Dir(PathBuf),
}

/// Reads one item of `packs`: `<source>[=<ref>]`.
pub fn parse_source(spec: &str) -> Result<Source, InstallError> {
    let spec = spec.trim();
    let (place, git_ref) = match spec.split_once('=') {
        Some((p, r)) if !r.is_empty() => (p, Some(r.to_string())),
        Some((p, _)) => (p, None),
        None => (spec, None),
    };
    if let Some(r) = &git_ref {
        if r.starts_with('-') || r.chars().any(char::is_whitespace) {
            return Err(InstallError::BadRef {
                git_ref: r.clone(),
                url: place.to_string(),
                available: String::new(),
            });
        }
    }
    let local = place
        .strip_prefix("file://")
        .or_else(|| place.starts_with('/').then_some(place));
    if let Some(path) = local {
        let path = PathBuf::from(path);
        if !path.is_dir() {
            return Err(InstallError::NoDirectory(path));
        }
        if is_git_repo(&path) {
            return Ok(Source::Git {
                url: place.to_string(),
                git_ref,
            });
        }
        return match git_ref {
            Some(git_ref) => Err(InstallError::RefOnDirectory {
                spec: spec.to_string(),
                path,
                git_ref,
            }),
            None => Ok(Source::Dir(path)),
        };
    }
    let remote = ["https://", "http://", "ssh://", "git://", "git@", "gitlab@"];
    if remote.iter().any(|p| place.starts_with(p)) {
        return Ok(Source::Git {
            url: place.to_string(),
            git_ref,
        });
    }
    let valid_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    match place.split('/').collect::<Vec<_>>()[..] {
        [name] if valid_name(name) => Err(InstallError::ExchangeName(name.to_string())),
        [owner, repo] if valid_name(owner) && valid_name(repo) => {
            Err(InstallError::OwnerRepo(place.to_string()))
        }
        _ => Err(InstallError::BadSource(spec.to_string())),
    }
}

/// A working tree or a bare repository.
fn is_git_repo(path: &Path) -> bool {
    path.join(".git").exists() || (path.join("HEAD").is_file() && path.join("objects").is_dir())
}

/// `1.2.3` (StackStorm's PACK_VERSION_REGEX, roughly: semver core).
fn is_version(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// A version without a leading `v`, for comparing.
fn bare_version(v: &str) -> &str {
    v.strip_prefix('v').unwrap_or(v)
}

/// The `pack-management` runner.
#[derive(Debug, Clone)]
pub struct PackManagement {
    bus: Bus,
    files: PackFiles,
    venvs: Virtualenvs,
    catalog: CatalogHandle,
    /// `<data dir>/pack-install`, where sources are fetched.
    staging: PathBuf,
}

impl PackManagement {
    pub fn new(
        bus: Bus,
        files: PackFiles,
        venvs: Virtualenvs,
        catalog: CatalogHandle,
        data_dir: &Path,
    ) -> PackManagement {
        PackManagement {
            bus,
            files,
            venvs,
            catalog,
            staging: data_dir.join("pack-install"),
        }
    }
}

/// The `packs` parameter: a list of strings.
fn packs_param(req: &RunRequest) -> Result<Vec<String>, InstallError> {
    match req.parameters.get("packs") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    InstallError::Invalid(format!("packs: every item must be a string, got {v}"))
                })
            })
            .collect(),
        _ => Err(InstallError::Invalid(
            "packs: a non-empty list of packs is required".into(),
        )),
    }
}

fn flag(req: &RunRequest, name: &str) -> bool {
    req.parameters
        .get(name)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// One install's state: what it installed, its warnings.
struct Install<'a> {
    mgmt: &'a PackManagement,
    req: &'a RunRequest,
    force: bool,
    skip_dependencies: bool,
    installed: Vec<String>,
    warnings: Vec<String>,
    fetched: usize,
}

impl Install<'_> {
    /// Tells the execution's live output what is happening.
    fn say(&self, line: String) {
        tracing::info!(execution = %self.req.execution_id, "{line}");
        if let Some(out) = &self.req.output {
            let _ = out.send(OutputChunk {
                stream: OutputStream::Stdout,
                data: format!("{line}\n"),
            });
        }
    }

    /// Installs the pack `spec` names, its dependencies first.
    fn install<'b>(
        &'b mut self,
        spec: &'b str,
        depth: usize,
    ) -> BoxFuture<'b, Result<String, InstallError>> {
        Box::pin(async move {
            let source = parse_source(spec)?;
            self.fetched += 1;
            let stage = self
                .mgmt
                .staging
                .join(format!("{}-{}", self.req.execution_id, self.fetched));
            let outcome = self.install_from(spec, &source, &stage, depth).await;
            if stage.exists() {
                let _ = std::fs::remove_dir_all(&stage);
            }
            outcome
        })
    }

    async fn install_from(
        &mut self,
        spec: &str,
        source: &Source,
        stage: &Path,
        depth: usize,
    ) -> Result<String, InstallError> {
        let dir = match source {
            Source::Dir(dir) => {
                self.say(format!("reading the pack directory {}", dir.display()));
                dir.clone()
            }
            Source::Git { url, git_ref } => {
                self.say(format!(
                    "cloning {url}{}",
                    git_ref
                        .as_ref()
                        .map(|r| format!(" at {r}"))
                        .unwrap_or_default()
                ));
                clone(url, git_ref.as_deref(), stage).await?;
                stage.to_path_buf()
            }
        };
        let bundle = loader::load_pack(&dir).map_err(|e| invalid(&e, &dir, spec))?;
        let pack = bundle.pack.pack_ref.clone();
        if SYSTEM_PACKS.contains(&pack.as_str()) {
            return Err(InstallError::SystemPackInstall(pack));
        }
        if !self.force {
            check_python(&bundle)?;
        }
        if let Some(stored) = self.stored(&pack).await? {
            if stored.files.is_none() && !stored.path.is_empty() {
                return Err(InstallError::DirectoryPack {
                    pack,
                    path: stored.path,
                });
            }
        }
        if !self.skip_dependencies {
            for dependency in &bundle.pack.dependencies {
                self.dependency(&pack, dependency, depth).await?;
            }
        }
        let archive = pack_files::archive(&dir).map_err(|e| InstallError::Io {
            what: "cannot read",
            path: dir.clone(),
            message: e.to_string(),
        })?;
        if archive.len() > pack_files::MAX_ARCHIVE {
            return Err(FilesError::TooLarge {
                pack,
                size: archive.len(),
            }
            .into());
        }
        let digest = pack_files::digest_of(&archive);
        let placed = self.mgmt.files.place(&pack, &digest, &archive)?;
        self.say(format!("setting up the virtualenv of pack {pack}"));
        self.mgmt.venvs.ensure(&pack, &placed, true).await?;
        self.mgmt.files.upload(&pack, &digest, &archive).await?;
        let mut bundle = bundle;
        bundle.files = Some(digest.clone());
        bundle.path = self.mgmt.files.dir(&pack).to_string_lossy().to_string();
        self.warnings
            .extend(warn_of_workflow_problems(&placed, &bundle));
        self.say(format!("registering pack {pack}"));
        let version = bundle.pack.version.clone();
        let (_, _, revision) = store_pack(&self.mgmt.bus, bundle, Mode::Explicit).await?;
        if !self.mgmt.catalog.wait_for(revision, CATALOG_WAIT).await {
            tracing::warn!(pack, "the catalog did not show the installed pack in time");
        }
        self.say(format!("installed pack {pack} {version} ({digest})"));
        self.installed.push(pack.clone());
        Ok(pack)
    }

    /// The stored pack `pack`, if any.
    async fn stored(&self, pack: &str) -> Result<Option<PackBundle>, InstallError> {
        let key = pack_key(pack);
        let entry = self
            .mgmt
            .bus
            .content
            .entry(&key)
            .await
            .map_err(|e| crate::error::bus_err("read pack", e))?;
        Ok(match entry {
            Some(e) if e.operation == kv::Operation::Put => Some(from_bytes(&key, &e.value)?),
            _ => None,
        })
    }

    /// Installs one of `pack`'s dependencies unless it is installed at the
    /// version asked for (a different version is a conflict).
    async fn dependency(
        &mut self,
        pack: &str,
        dependency: &str,
        depth: usize,
    ) -> Result<(), InstallError> {
        let (place, wanted) = match dependency.split_once('=') {
            Some((p, v)) => (p, Some(v)),
            None => (dependency, None),
        };
        let name = place
            .trim_end_matches('/')
            .rsplit(['/', ':'])
            .next()
            .unwrap_or(place)
            .trim_end_matches(".git");
        let mut existing = None;
        for candidate in [Some(name), name.strip_prefix("stackstorm-")]
            .into_iter()
            .flatten()
        {
            if let Some(stored) = self.stored(candidate).await? {
                existing = Some(stored);
                break;
            }
        }
        if let Some(stored) = existing {
            match wanted {
                Some(w) if bare_version(w) != bare_version(&stored.pack.version) => {
                    return Err(InstallError::Conflict {
                        pack: pack.to_string(),
                        dependency: stored.pack.pack_ref,
                        wanted: w.to_string(),
                        installed: stored.pack.version,
                    })
                }
                _ => return Ok(()),
            }
        }
        if depth + 1 >= MAX_NESTING {
            return Err(InstallError::TooDeep(dependency.to_string()));
        }
        self.say(format!("installing {dependency}, a dependency of {pack}"));
        match self.install(dependency, depth + 1).await {
            Ok(_) => Ok(()),
            Err(error) => Err(InstallError::Dependency {
                pack: pack.to_string(),
                dependency: dependency.to_string(),
                error: Box::new(error),
            }),
        }
    }
}

/// The loader's errors, with the staging directory replaced by the source.
fn invalid(errors: &LoadErrors, dir: &Path, spec: &str) -> InstallError {
    let text = errors.to_string();
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let shown = spec.split_once('=').map_or(spec, |(p, _)| p);
    let mut text = text
        .replace(&canonical.to_string_lossy().to_string(), shown)
        .replace(&dir.to_string_lossy().to_string(), shown);
    // Each problem names its file below the pack directory's name.
    if let Some(name) = canonical.file_name() {
        let name = format!("\n  {}/", name.to_string_lossy());
        text = text.replace(&name, &format!("\n  {shown}/"));
    }
    InstallError::Invalid(text)
}

/// StackStorm's `verify_pack_version` for `python_versions`.
fn check_python(bundle: &PackBundle) -> Result<(), InstallError> {
    let Some(Value::Array(versions)) = bundle.pack.extra.get("python_versions") else {
        return Ok(());
    };
    let versions: Vec<String> = versions
        .iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect();
    if versions.is_empty() || versions.iter().any(|v| v.starts_with('3')) {
        return Ok(());
    }
    Err(InstallError::Python {
        pack: bundle.pack.pack_ref.clone(),
        wanted: versions.join(", "),
    })
}

/// Runs `git` with `args` (no prompts); its output, or why it failed.
async fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("git");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    let out = cmd
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_ASKPASS", "/bin/echo")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Clones `url` into `dest` and checks out `git_ref` as StackStorm
/// resolves it: a branch, then a commit or tag, then tag `v<ref>`.
async fn clone(url: &str, git_ref: Option<&str>, dest: &Path) -> Result<(), InstallError> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| InstallError::Io {
            what: "cannot clear",
            path: dest.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| InstallError::Io {
            what: "cannot create",
            path: parent.to_path_buf(),
            message: e.to_string(),
        })?;
    }
    let target = dest.to_string_lossy().to_string();
    git(None, &["clone", "--quiet", "--", url, &target])
        .await
        .map_err(|output| InstallError::Git {
            url: url.to_string(),
            step: "clone",
            output,
        })?;
    let Some(wanted) = git_ref else {
        return Ok(());
    };
    let mut candidates = vec![format!("origin/{wanted}"), wanted.to_string()];
    if is_version(wanted) {
        candidates.push(format!("v{wanted}"));
    }
    let mut commit = None;
    for candidate in &candidates {
        let spec = format!("{candidate}^{{commit}}");
        if let Ok(sha) = git(Some(dest), &["rev-parse", "--verify", "--quiet", &spec]).await {
            commit = Some(sha);
            break;
        }
    }
    let Some(commit) = commit else {
        let tags = git(Some(dest), &["tag", "--list", "v*", "--sort=-v:refname"])
            .await
            .unwrap_or_default();
        let tags: Vec<&str> = tags.lines().filter(|t| !t.is_empty()).collect();
        return Err(InstallError::BadRef {
            git_ref: wanted.to_string(),
            url: url.to_string(),
            available: if tags.is_empty() {
                String::new()
            } else {
                format!(" Available versions are: {}.", tags.join(", "))
            },
        });
    };
    git(Some(dest), &["checkout", "--quiet", "--detach", &commit])
        .await
        .map_err(|output| InstallError::Git {
            url: url.to_string(),
            step: "checkout",
            output,
        })?;
    Ok(())
}

fn failed(error: &InstallError) -> RunOutcome {
    RunOutcome {
        status: Status::Failed,
        result: json!({ "error": error.to_string() }),
    }
}

impl PackManagement {
    async fn run_install(&self, req: RunRequest) -> RunOutcome {
        let packs = match packs_param(&req) {
            Ok(p) => p,
            Err(e) => return failed(&e),
        };
        let mut install = Install {
            mgmt: self,
            req: &req,
            force: flag(&req, "force"),
            skip_dependencies: flag(&req, "skip_dependencies"),
            installed: Vec::new(),
            warnings: Vec::new(),
            fetched: 0,
        };
        for spec in &packs {
            if let Err(e) = install.install(spec, 0).await {
                tracing::warn!(execution = %req.execution_id, pack = %spec, error = %e,
                    "pack not installed");
                return failed(&e);
            }
        }
        RunOutcome {
            status: Status::Succeeded,
            result: json!({
                "packs_list": install.installed,
                "message": "Successfully installed packs",
                "conflict_list": null,
                "warning_list": install.warnings,
            }),
        }
    }

    async fn run_uninstall(&self, req: RunRequest) -> RunOutcome {
        let packs = match packs_param(&req) {
            Ok(p) => p,
            Err(e) => return failed(&e),
        };
        for pack in &packs {
            if let Err(e) = self.uninstall(pack).await {
                tracing::warn!(execution = %req.execution_id, pack, error = %e,
                    "pack not uninstalled");
                return failed(&e);
            }
        }
        RunOutcome {
            status: Status::Succeeded,
            result: json!({
                "packs": packs,
                "message": "Successfully uninstalled packs",
            }),
        }
    }

    /// Removes an installed pack: its content (every node's catalog drops
    /// it, and every node its files), then its files in the object store.
    async fn uninstall(&self, pack: &str) -> Result<(), InstallError> {
        if SYSTEM_PACKS.contains(&pack) {
            return Err(InstallError::SystemPack(pack.to_string()));
        }
        let key = pack_key(pack);
        let entry = self
            .bus
            .content
            .entry(&key)
            .await
            .map_err(|e| crate::error::bus_err("read pack", e))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Err(InstallError::NotInstalled(pack.to_string()));
        };
        let stored: PackBundle = from_bytes(&key, &entry.value)?;
        if stored.files.is_none() && !stored.path.is_empty() {
            return Err(InstallError::DirectoryPack {
                pack: pack.to_string(),
                path: stored.path,
            });
        }
        self.bus
            .content
            .delete_expect_revision(&key, Some(entry.revision))
            .await
            .map_err(|e| crate::error::bus_err("remove pack", e))?;
        self.files.delete(pack).await?;
        let mut catalog = self.catalog.subscribe();
        let gone = tokio::time::timeout(
            CATALOG_WAIT,
            catalog.wait_for(|c| !c.packs.contains_key(pack)),
        )
        .await;
        if !matches!(gone, Ok(Ok(_))) {
            tracing::warn!(
                pack,
                "the catalog did not drop the uninstalled pack in time"
            );
        }
        tracing::info!(pack, "pack uninstalled");
        Ok(())
    }
}

impl Runner for PackManagement {
    fn name(&self) -> &'static str {
        "pack-management"
    }

    fn run(&self, req: RunRequest) -> BoxFuture<'static, RunOutcome> {
        let me = self.clone();
        Box::pin(async move {
            let timeout = req
                .parameters
                .get("timeout")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_TIMEOUT);
            let cancel = req.cancel.clone();
            let work = async {
                match req.action.entry_point.as_str() {
                    "install" => me.run_install(req).await,
                    "uninstall" => me.run_uninstall(req).await,
                    other => failed(&InstallError::Invalid(format!(
                        "entry_point: the pack-management runner does \"install\" or \"uninstall\", not {other:?}"
                    ))),
                }
            };
            tokio::select! {
                outcome = tokio::time::timeout(Duration::from_secs(timeout), work) => match outcome {
                    Ok(outcome) => outcome,
                    Err(_) => RunOutcome {
                        status: Status::Timeout,
                        result: failed(&InstallError::Timeout(timeout)).result,
                    },
                },
                () = cancel.cancelled() => RunOutcome {
                    status: Status::Canceled,
                    result: json!({"error": "canceled"}),
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_read_as_stackstorm_reads_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plain = dir.path().join("plain");
        std::fs::create_dir_all(&plain).expect("dir");
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join(".git")).expect("dir");
        let p = plain.display();
        let r = repo.display();
        assert_eq!(
            parse_source(&format!("file://{p}")).expect("dir"),
            Source::Dir(plain.clone())
        );
        assert_eq!(
            parse_source(&format!("file://{r}=v1.0.0")).expect("git"),
            Source::Git {
                url: format!("file://{r}"),
                git_ref: Some("v1.0.0".into())
            }
        );
        assert_eq!(
            parse_source(&format!("{r}")).expect("git path"),
            Source::Git {
                url: r.to_string(),
                git_ref: None
            }
        );
        assert_eq!(
            parse_source("https://github.com/StackStorm-Exchange/stackstorm-csv=1.0.0")
                .expect("url"),
            Source::Git {
                url: "https://github.com/StackStorm-Exchange/stackstorm-csv".into(),
                git_ref: Some("1.0.0".into())
            }
        );
        let e = parse_source("StackStorm-Exchange/stackstorm-csv").expect_err("owner/repo");
        assert!(matches!(e, InstallError::OwnerRepo(_)));
        assert!(e
            .to_string()
            .contains("https://github.com/StackStorm-Exchange/stackstorm-csv"));
        assert!(matches!(
            parse_source("csv").expect_err("name"),
            InstallError::ExchangeName(_)
        ));
        assert!(matches!(
            parse_source(&format!("file://{p}=v1")).expect_err("ref on a directory"),
            InstallError::RefOnDirectory { .. }
        ));
        assert!(matches!(
            parse_source(&format!("file://{p}/nope")).expect_err("missing"),
            InstallError::NoDirectory(_)
        ));
        assert!(matches!(
            parse_source(&format!("file://{r}=--upload-pack=x")).expect_err("option"),
            InstallError::BadRef { .. }
        ));
        assert!(matches!(
            parse_source("a b c").expect_err("garbage"),
            InstallError::BadSource(_)
        ));
    }

    #[test]
    fn versions_compare_without_their_v() {
        assert!(is_version("1.0.0"));
        assert!(!is_version("v1.0.0"));
        assert!(!is_version("master"));
        assert_eq!(bare_version("v1.2.3"), bare_version("1.2.3"));
    }
}
