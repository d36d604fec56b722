//! Installed packs' files, for every node. `packs.install` puts each pack
//! it installs into the `packs` JetStream object store as one archive
//! (object `<pack ref>`, its digest in the object's metadata) before it
//! stores the pack in the `content` bucket with that digest
//! ([`PackBundle::files`](squall_domain::model::PackBundle)). Every node's
//! content watcher materialises an installed pack it does not have yet
//! under `<data dir>/packs/` before its catalog names the pack, and runs
//! the pack's actions and sensors from there; an uninstalled pack's files
//! are removed from every node.
//!
//! On disk, `<data dir>/packs/.<ref>-<digest>/` holds one version of a
//! pack, complete once its marker file is written; `<data dir>/packs/<ref>`
//! is a symlink to the current version, swapped in one rename, so a run
//! never sees half a pack. The archive is our own simple format: for each
//! regular file, in path order, a JSON header line `{"path", "mode",
//! "size"}` and then the file's bytes (the same tree gives the same
//! digest).

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use async_nats::jetstream::object_store::{self, ObjectMetadata, ObjectStore};
use async_nats::jetstream::stream;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::io::AsyncReadExt;

use squall_runners::venv::Virtualenvs;

use crate::bus::Bus;
use crate::error::{bus_err, EngineError};

/// The object store holding installed packs.
pub const BUCKET: &str = "packs";

/// The stream behind the `packs` object store, as JetStream's object
/// store layout has it (`OBJ_<bucket>`: chunks and metadata subjects,
/// roll-ups for metadata, direct gets), with `replicas` replicas.
pub fn streams(replicas: usize) -> Vec<stream::Config> {
    vec![stream::Config {
        name: format!("OBJ_{BUCKET}"),
        description: Some("Files of the packs installed with packs.install".into()),
        subjects: vec![format!("$O.{BUCKET}.C.>"), format!("$O.{BUCKET}.M.>")],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        allow_direct: true,
        ..Default::default()
    }]
}

/// Metadata key of an object's archive digest.
const DIGEST_KEY: &str = "squall-digest";

/// File in a complete materialised version, holding its digest.
const READY_MARKER: &str = ".squall-pack";

/// Largest archive accepted (a pack with more is refused at install).
pub const MAX_ARCHIVE: usize = 64 * 1024 * 1024;

/// What went wrong with a pack's files.
#[derive(Debug, Error)]
pub enum FilesError {
    #[error("pack {pack}: {what} {path}: {message}")]
    Io {
        pack: String,
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("pack {pack}: the stored archive is unreadable: {message}")]
    Archive { pack: String, message: String },
    #[error("pack {pack}: {op} in the `packs` object store failed: {message}")]
    Store {
        pack: String,
        op: &'static str,
        message: String,
    },
    #[error(
        "pack {pack}: its files are {size} bytes archived, more than the {MAX_ARCHIVE} allowed"
    )]
    TooLarge { pack: String, size: usize },
}

/// One file's header in an archive.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    path: String,
    mode: u32,
    size: usize,
}

/// The `packs` object store and this node's materialised packs.
#[derive(Clone)]
pub struct PackFiles {
    store: ObjectStore,
    root: PathBuf,
    /// The node's pack virtualenvs: an uninstalled pack's go with its files.
    venvs: Virtualenvs,
}

impl std::fmt::Debug for PackFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackFiles")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl PackFiles {
    /// Opens the `packs` object store (declared by [`streams`], created
    /// with the node's layout); materialised packs go under
    /// `<data_dir>/packs`.
    pub async fn open(
        bus: &Bus,
        data_dir: &Path,
        venvs: Virtualenvs,
    ) -> Result<PackFiles, EngineError> {
        let store = bus
            .js
            .get_object_store(BUCKET)
            .await
            .map_err(|e| bus_err("open the packs object store", e))?;
        Ok(PackFiles {
            store,
            root: data_dir.join("packs"),
            venvs,
        })
    }

    /// `<data dir>/packs`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<data dir>/packs/<pack>`, where this node runs an installed pack.
    pub fn dir(&self, pack: &str) -> PathBuf {
        self.root.join(pack)
    }

    fn version_dir(&self, pack: &str, digest: &str) -> PathBuf {
        self.root.join(format!(".{pack}-{digest}"))
    }

    /// Unpacks `archive` as version `digest` of `pack` on this node (if it
    /// is not there yet), without making it current; returns its directory.
    pub fn place(&self, pack: &str, digest: &str, archive: &[u8]) -> Result<PathBuf, FilesError> {
        let dir = self.version_dir(pack, digest);
        if ready_digest(&dir).as_deref() == Some(digest) {
            return Ok(dir);
        }
        let io = |what, path: &Path, e: std::io::Error| FilesError::Io {
            pack: pack.to_string(),
            what,
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io("cannot clear", &dir, e))?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, e))?;
        unpack(archive, &dir).map_err(|message| FilesError::Archive {
            pack: pack.to_string(),
            message,
        })?;
        let marker = dir.join(READY_MARKER);
        std::fs::write(&marker, digest).map_err(|e| io("cannot write", &marker, e))?;
        Ok(dir)
    }

    /// Makes version `digest` of `pack` this node's current one, fetching
    /// it from the object store if the node does not have it; returns
    /// `<data dir>/packs/<pack>`. Older versions are removed, but for the
    /// one just replaced (a run may still be reading it).
    pub async fn materialise(&self, pack: &str, digest: &str) -> Result<PathBuf, FilesError> {
        let link = self.dir(pack);
        if current_digest(&link).as_deref() == Some(digest) {
            return Ok(link);
        }
        let version = self.version_dir(pack, digest);
        if ready_digest(&version).as_deref() != Some(digest) {
            let archive = self.download(pack).await?;
            let found = digest_of(&archive);
            if found != digest {
                // A newer install replaced the object; its own content
                // entry follows, and takes this version then.
                tracing::info!(pack, wanted = digest, found = %found,
                    "the stored files are newer than this pack entry");
            }
            self.place(pack, &found, &archive)?;
            return self.swap(pack, &found);
        }
        self.swap(pack, digest)
    }

    /// Points `<data dir>/packs/<pack>` at version `digest`, atomically.
    fn swap(&self, pack: &str, digest: &str) -> Result<PathBuf, FilesError> {
        let link = self.dir(pack);
        let previous = current_digest(&link);
        let io = |what, path: &Path, e: std::io::Error| FilesError::Io {
            pack: pack.to_string(),
            what,
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let temp = self.root.join(format!(".{pack}.link"));
        let _ = std::fs::remove_file(&temp);
        std::os::unix::fs::symlink(format!(".{pack}-{digest}"), &temp)
            .map_err(|e| io("cannot link", &temp, e))?;
        if link.is_dir() && !link.is_symlink() {
            std::fs::remove_dir_all(&link).map_err(|e| io("cannot replace", &link, e))?;
        }
        std::fs::rename(&temp, &link).map_err(|e| io("cannot swap", &link, e))?;
        let keep: BTreeSet<String> = [Some(digest.to_string()), previous]
            .into_iter()
            .flatten()
            .collect();
        self.remove_versions(pack, &keep);
        tracing::info!(pack, digest, "pack files in place");
        Ok(link)
    }

    /// Removes `pack`'s files and virtualenv from this node.
    pub async fn forget(&self, pack: &str) {
        let link = self.dir(pack);
        if link.is_symlink() {
            if let Err(e) = std::fs::remove_file(&link) {
                tracing::warn!(pack, error = %e, "cannot remove the pack's link");
            }
        }
        self.remove_versions(pack, &BTreeSet::new());
        self.venvs.remove(pack).await;
        tracing::info!(pack, "pack files and virtualenv removed");
    }

    /// Removes the files of every pack but `installed` from this node (a
    /// node that was down while a pack was uninstalled).
    pub async fn prune(&self, installed: &BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        let mut gone = BTreeSet::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if entry.path().is_symlink() && !name.starts_with('.') && !installed.contains(&name) {
                gone.insert(name);
            }
        }
        for pack in gone {
            self.forget(&pack).await;
        }
    }

    fn remove_versions(&self, pack: &str, keep: &BTreeSet<String>) {
        let prefix = format!(".{pack}-");
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(digest) = name.strip_prefix(&prefix) else {
                continue;
            };
            // A digest is hex: `.<pack>-<digest>` never names another
            // pack's version (refs may hold `_`, never `-`).
            if digest.contains('-') || keep.contains(digest) {
                continue;
            }
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(pack, path = %entry.path().display(), error = %e,
                    "cannot remove an old version of the pack");
            }
        }
    }

    /// Stores `archive` (digest `digest`) as `pack`'s files.
    pub async fn upload(&self, pack: &str, digest: &str, archive: &[u8]) -> Result<(), FilesError> {
        let meta = ObjectMetadata {
            name: pack.to_string(),
            description: Some(format!("files of pack {pack}")),
            metadata: [(DIGEST_KEY.to_string(), digest.to_string())].into(),
            ..Default::default()
        };
        let mut reader = archive;
        self.store
            .put(meta, &mut reader)
            .await
            .map_err(|e| FilesError::Store {
                pack: pack.to_string(),
                op: "storing the files",
                message: e.to_string(),
            })?;
        Ok(())
    }

    /// Reads `pack`'s archive from the object store.
    async fn download(&self, pack: &str) -> Result<Vec<u8>, FilesError> {
        let err = |op, e: String| FilesError::Store {
            pack: pack.to_string(),
            op,
            message: e,
        };
        let mut object = self
            .store
            .get(pack)
            .await
            .map_err(|e| err("reading the files", e.to_string()))?;
        let mut archive = Vec::new();
        object
            .read_to_end(&mut archive)
            .await
            .map_err(|e| err("reading the files", e.to_string()))?;
        Ok(archive)
    }

    /// Deletes `pack`'s files from the object store (absent is fine).
    pub async fn delete(&self, pack: &str) -> Result<(), FilesError> {
        match self.store.delete(pack).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(FilesError::Store {
                pack: pack.to_string(),
                op: "deleting the files",
                message: e.to_string(),
            }),
        }
    }
}

/// The digest of an archive (hex SHA-256, first 32 characters).
pub fn digest_of(archive: &[u8]) -> String {
    hex::encode(Sha256::digest(archive))[..32].to_string()
}

/// The digest a complete version directory was written with.
fn ready_digest(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(READY_MARKER)).ok()
}

/// The digest of the version `link` points at, when complete.
fn current_digest(link: &Path) -> Option<String> {
    link.is_symlink().then(|| ready_digest(link)).flatten()
}

/// Archives the pack in `dir`: every regular file but those under `.git`,
/// in path order (symlinks are followed). Returns the archive.
pub fn archive(dir: &Path) -> Result<Vec<u8>, std::io::Error> {
    let mut files = Vec::new();
    collect(dir, Path::new(""), &mut files, 0)?;
    files.sort();
    let mut out = Vec::new();
    for rel in files {
        let path = dir.join(&rel);
        let bytes = std::fs::read(&path)?;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        let header = Entry {
            path: rel.to_string_lossy().to_string(),
            mode,
            size: bytes.len(),
        };
        serde_json::to_writer(&mut out, &header).map_err(std::io::Error::other)?;
        out.push(b'\n');
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// Deepest directory nesting archived (a symlink loop ends here).
const MAX_DEPTH: usize = 32;

fn collect(
    root: &Path,
    rel: &Path,
    files: &mut Vec<PathBuf>,
    depth: usize,
) -> Result<(), std::io::Error> {
    if depth > MAX_DEPTH {
        return Err(std::io::Error::other(format!(
            "{}: directories nested deeper than {MAX_DEPTH} (a symlink loop?)",
            root.join(rel).display()
        )));
    }
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        if rel.as_os_str().is_empty() && (name == ".git" || name == READY_MARKER) {
            continue;
        }
        let child = rel.join(&name);
        let meta = std::fs::metadata(entry.path())?;
        if meta.is_dir() {
            collect(root, &child, files, depth + 1)?;
        } else if meta.is_file() {
            files.push(child);
        }
    }
    Ok(())
}

/// Writes the files of `archive` under `dest`.
fn unpack(archive: &[u8], dest: &Path) -> Result<(), String> {
    let mut rest = archive;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|b| *b == b'\n')
            .ok_or("a header without its end")?;
        let entry: Entry =
            serde_json::from_slice(&rest[..end]).map_err(|e| format!("bad header: {e}"))?;
        rest = &rest[end + 1..];
        if rest.len() < entry.size {
            return Err(format!("{}: truncated", entry.path));
        }
        let rel = Path::new(&entry.path);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(format!("{}: not a path inside the pack", entry.path));
        }
        let path = dest.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        let mut file =
            std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        file.write_all(&rest[..entry.size])
            .map_err(|e| format!("{}: {e}", path.display()))?;
        file.set_permissions(std::fs::Permissions::from_mode(entry.mode))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        rest = &rest[entry.size..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_unpacks_to_the_same_tree_without_git() {
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(src.path().join("actions/lib")).expect("dirs");
        std::fs::create_dir_all(src.path().join(".git")).expect("dirs");
        std::fs::write(src.path().join("pack.yaml"), "name: p\n").expect("write");
        std::fs::write(src.path().join("actions/lib/x.py"), "X = 1\n").expect("write");
        std::fs::write(src.path().join("actions/run.sh"), "#!/bin/sh\necho hi\n").expect("write");
        std::fs::set_permissions(
            src.path().join("actions/run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        std::fs::write(src.path().join(".git/HEAD"), "ref\n").expect("write");
        let a = archive(src.path()).expect("archive");
        assert_eq!(
            digest_of(&a),
            digest_of(&archive(src.path()).expect("again"))
        );
        let dest = tempfile::tempdir().expect("tempdir");
        unpack(&a, dest.path()).expect("unpack");
        assert_eq!(
            std::fs::read_to_string(dest.path().join("actions/lib/x.py")).expect("read"),
            "X = 1\n"
        );
        let mode = std::fs::metadata(dest.path().join("actions/run.sh"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(!dest.path().join(".git").exists());
    }

    #[test]
    fn an_archive_cannot_write_outside_its_directory() {
        let mut a = Vec::new();
        a.extend_from_slice(br#"{"path":"../evil","mode":420,"size":1}"#);
        a.extend_from_slice(b"\nx");
        let dest = tempfile::tempdir().expect("tempdir");
        let err = unpack(&a, &dest.path().join("in")).expect_err("refused");
        assert!(err.contains("not a path inside the pack"), "{err}");
        let truncated = br#"{"path":"a","mode":420,"size":9}
x"#;
        assert!(unpack(truncated, dest.path())
            .expect_err("short")
            .contains("truncated"));
    }
}
