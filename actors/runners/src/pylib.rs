//! The Python files Squall's Python runner and sensors load: our wrappers
//! and the small compatibility package that stands in for the StackStorm
//! modules packs import (`st2common`, `st2reactor`). They are compiled into
//! the binary and written, once per content, to
//! `<data dir>/python/<content hash>/`, the directory put first on the
//! Python path of every action and sensor process. A node never runs files
//! another build wrote: a different content is a different directory.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Every file, by path relative to the installed directory.
const FILES: &[(&str, &str)] = &[
    (
        "python_action_wrapper.py",
        include_str!("../python/python_action_wrapper.py"),
    ),
    (
        "python_fork_server.py",
        include_str!("../python/python_fork_server.py"),
    ),
    (
        "st2common/__init__.py",
        include_str!("../python/st2common/__init__.py"),
    ),
    (
        "st2common/exceptions/__init__.py",
        include_str!("../python/st2common/exceptions/__init__.py"),
    ),
    (
        "st2common/exceptions/action.py",
        include_str!("../python/st2common/exceptions/action.py"),
    ),
    (
        "st2common/exceptions/keyvalue.py",
        include_str!("../python/st2common/exceptions/keyvalue.py"),
    ),
    (
        "st2common/runners/__init__.py",
        include_str!("../python/st2common/runners/__init__.py"),
    ),
    (
        "st2common/runners/base_action.py",
        include_str!("../python/st2common/runners/base_action.py"),
    ),
    (
        "st2common/runners/utils.py",
        include_str!("../python/st2common/runners/utils.py"),
    ),
    (
        "st2common/services/__init__.py",
        include_str!("../python/st2common/services/__init__.py"),
    ),
    (
        "st2common/services/datastore.py",
        include_str!("../python/st2common/services/datastore.py"),
    ),
    (
        "st2common/util/__init__.py",
        include_str!("../python/st2common/util/__init__.py"),
    ),
    (
        "st2common/util/date.py",
        include_str!("../python/st2common/util/date.py"),
    ),
    (
        "st2common/util/isotime.py",
        include_str!("../python/st2common/util/isotime.py"),
    ),
    (
        "st2common/util/jinja.py",
        include_str!("../python/st2common/util/jinja.py"),
    ),
    (SENSOR_WRAPPER, include_str!("../python/sensor_wrapper.py")),
    (
        "st2reactor/__init__.py",
        include_str!("../python/st2reactor/__init__.py"),
    ),
    (
        "st2reactor/sensor/__init__.py",
        include_str!("../python/st2reactor/sensor/__init__.py"),
    ),
    (
        "st2reactor/sensor/base.py",
        include_str!("../python/st2reactor/sensor/base.py"),
    ),
];

/// The action wrapper's file name in the installed directory.
pub const ACTION_WRAPPER: &str = "python_action_wrapper.py";

/// The sensor wrapper's file name in the installed directory.
pub const SENSOR_WRAPPER: &str = "sensor_wrapper.py";

/// Writes the files under `data_dir` unless this content is already there,
/// and returns the directory. Safe to call from several tasks or processes
/// at once: each call writes to its own temporary directory, renamed into
/// place.
pub fn install(data_dir: &Path) -> io::Result<PathBuf> {
    let root = data_dir.join("python");
    let dir = root.join(content_hash());
    if dir.is_dir() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&root)?;
    // Unique per call: tasks of one process may install at once.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let staging = root.join(format!(".staging-{}-{call}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    for (rel, text) in FILES {
        let path = staging.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, text)?;
    }
    match std::fs::rename(&staging, &dir) {
        Ok(()) => Ok(dir),
        // Another process installed the same content first.
        Err(_) if dir.is_dir() => {
            std::fs::remove_dir_all(&staging)?;
            Ok(dir)
        }
        Err(e) => Err(e),
    }
}

/// A digest of every path and text, so a changed file gets a new directory.
fn content_hash() -> String {
    let mut hash = Sha256::new();
    for (rel, text) in FILES {
        hash.update(rel.as_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
        hash.update([0]);
    }
    hex::encode(&hash.finalize()[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_once_per_content() {
        let data = tempfile::tempdir().expect("temp dir");
        let dir = install(data.path()).expect("installed");
        assert!(dir.join(ACTION_WRAPPER).is_file());
        assert_eq!(install(data.path()).expect("installed again"), dir);
        let entries = std::fs::read_dir(data.path().join("python"))
            .expect("python dir")
            .count();
        assert_eq!(entries, 1, "no staging directory is left behind");
    }

    #[test]
    fn concurrent_installs_all_succeed() {
        let data = tempfile::tempdir().expect("temp dir");
        let dirs: Vec<PathBuf> = std::thread::scope(|s| {
            let installs: Vec<_> = (0..8).map(|_| s.spawn(|| install(data.path()))).collect();
            installs
                .into_iter()
                .map(|t| t.join().expect("no panic").expect("installed"))
                .collect()
        });
        assert!(dirs
            .iter()
            .all(|d| *d == dirs[0] && d.join(ACTION_WRAPPER).is_file()));
    }

    #[test]
    fn every_python_file_of_the_source_tree_is_installed() {
        fn walk(dir: &Path, root: &Path, found: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("readable").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, root, found);
                } else if path.extension().is_some_and(|e| e == "py") {
                    let rel = path.strip_prefix(root).expect("under root");
                    found.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
        let mut on_disk = Vec::new();
        walk(&root, &root, &mut on_disk);
        on_disk.sort();
        let mut listed: Vec<String> = FILES.iter().map(|(rel, _)| rel.to_string()).collect();
        listed.sort();
        assert_eq!(
            on_disk, listed,
            "pylib::FILES lists every file under python/"
        );
    }
}
