//! Registered content: writing packs into the `content` bucket, and the
//! [`ContentWatcher`] actor that keeps every node's [`Catalog`] in step with
//! it, so a registration on any node changes rules everywhere without a
//! restart.

use std::collections::BTreeMap;
use std::path::Path;

use async_nats::jetstream::kv;
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::convert::Infallible;

use squall_domain::loader;
use squall_domain::model::{PackBundle, PackMeta, BUNDLE_VERSION};
use squall_domain::registration::{self, Change, Mode};
use squall_domain::secrets::Cipher;
use squall_domain::time;

use crate::bus::{from_bytes, Bucket, Bus, Change as BucketChange};
use crate::catalog::{Catalog, CatalogHandle};
use crate::error::{bus_err, EngineError};
use crate::pack_files::PackFiles;
use crate::pump::Pump;
use squall_runners::venv::Virtualenvs;

/// Key of a pack in the `content` bucket.
pub fn pack_key(pack_ref: &str) -> String {
    format!("packs.{pack_ref}")
}

/// What registering one pack did.
#[derive(Debug)]
pub struct Registered {
    /// The pack as stored now.
    pub bundle: PackBundle,
    /// What registration changed or removed, one line each.
    pub changes: Vec<Change>,
    /// Problems of the pack's workflows (they register anyway).
    pub warnings: Vec<String>,
}

/// Loads the pack in `dir` and its config file from `configs_dir`
/// (`<pack>.yaml`; literal secrets sealed with `cipher`), validates all of
/// it, builds its virtualenv (when it has Python content) and, only if all
/// succeeded, merges it into the stored pack as `mode` says
/// ([`squall_domain::registration`]): content created through the API is
/// never lost.
pub async fn register_pack(
    bus: &Bus,
    dir: &Path,
    configs_dir: Option<&Path>,
    cipher: &Cipher,
    mode: Mode,
    venvs: &Virtualenvs,
) -> Result<Registered, EngineError> {
    let bundle = loader::load_pack(dir)?;
    let config = crate::configs::read_file(configs_dir, dir, &bundle)?;
    venvs.ensure(&bundle.pack.pack_ref, dir, true).await?;
    let warnings = warn_of_workflow_problems(dir, &bundle);
    let (bundle, changes, _) = store_pack(bus, bundle, mode).await?;
    if let Some(config) = config {
        crate::configs::store_file(bus, cipher, config, mode).await?;
    }
    Ok(Registered {
        bundle,
        changes,
        warnings,
    })
}

/// Logs the problems of a pack's workflows (they register anyway, as in
/// StackStorm, and fail when run); returns them as `file:line: field:
/// message` lines.
pub fn warn_of_workflow_problems(dir: &Path, bundle: &PackBundle) -> Vec<String> {
    loader::inspect_workflows(dir, bundle)
        .iter()
        .map(|w| {
            tracing::warn!(pack = %bundle.pack.pack_ref, problem = %w,
                "workflow registered with a problem; it fails when run");
            w.to_string()
        })
        .collect()
}

/// Merges an already validated pack read from disk into the stored one,
/// atomically (a concurrent API edit is re-read, never overwritten), and
/// logs every change.
pub async fn store_pack(
    bus: &Bus,
    disk: PackBundle,
    mode: Mode,
) -> Result<(PackBundle, Vec<Change>, u64), EngineError> {
    let now = time::now();
    let pack_ref = disk.pack.pack_ref.clone();
    let Ok(((bundle, changes), revision)) = modify_pack(bus, &pack_ref, |stored| {
        let (merged, changes) = registration::merge(stored, disk.clone(), mode, now);
        *stored = merged.clone();
        Ok::<_, Infallible>((merged, changes))
    })
    .await?;
    for change in &changes {
        tracing::info!(pack = %pack_ref, %change, "registration changed content");
    }
    tracing::info!(pack = %pack_ref, actions = bundle.actions.len(),
        rules = bundle.rules.len(), policies = bundle.policies.len(),
        changes = changes.len(), "pack registered");
    Ok((bundle, changes, revision))
}

/// Changes one registered pack with `change`, atomically: the bundle is
/// re-read and `change` re-applied if another writer got there first
/// ([`Bucket::modify`]). A pack that is not registered starts empty
/// (StackStorm's `default` pack holds API-made content that names no
/// pack). Returns `change`'s answer and the bucket revision that holds the
/// result (for
/// [`CatalogHandle::wait_for`](crate::catalog::CatalogHandle::wait_for)).
pub async fn modify_pack<T, E>(
    bus: &Bus,
    pack_ref: &str,
    mut change: impl FnMut(&mut PackBundle) -> Result<T, E>,
) -> Result<Result<(T, u64), E>, EngineError> {
    let packs: Bucket<PackBundle> = Bucket::new(bus.content.clone());
    let (answer, revision) = packs
        .modify(&pack_key(pack_ref), |current| {
            let existed = current.is_some();
            let mut bundle = current.unwrap_or_else(|| empty_pack(pack_ref));
            let before = existed.then(|| bundle.clone());
            match change(&mut bundle) {
                Err(e) => BucketChange::Keep(Err(e)),
                Ok(out) if before.as_ref() == Some(&bundle) => BucketChange::Keep(Ok(out)),
                Ok(out) => BucketChange::Write(bundle, Ok(out)),
            }
        })
        .await?;
    Ok(answer.map(|out| (out, revision)))
}

fn empty_pack(pack_ref: &str) -> PackBundle {
    PackBundle {
        version: BUNDLE_VERSION,
        pack: PackMeta {
            pack_ref: pack_ref.to_string(),
            name: pack_ref.to_string(),
            description: "Content created through the API.".into(),
            version: "0.0.0".into(),
            author: String::new(),
            email: None,
            keywords: vec![],
            dependencies: vec![],
            extra: BTreeMap::new(),
        },
        path: String::new(),
        actions: vec![],
        rules: vec![],
        trigger_types: vec![],
        policies: vec![],
        config_schema: None,
        sensors: vec![],
        aliases: vec![],
        registered: BTreeMap::new(),
        files: None,
    }
}

/// Reads every registered pack.
pub async fn load_all(bus: &Bus) -> Result<BTreeMap<String, PackBundle>, EngineError> {
    let mut packs = BTreeMap::new();
    let mut keys = bus
        .content
        .keys()
        .await
        .map_err(|e| bus_err("list content", e))?;
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| bus_err("list content", e))?;
        if let Some(bytes) = bus
            .content
            .get(&key)
            .await
            .map_err(|e| bus_err("read content", e))?
        {
            let bundle: PackBundle = from_bytes(&key, &bytes)?;
            packs.insert(bundle.pack.pack_ref.clone(), bundle);
        }
    }
    Ok(packs)
}

/// Points an installed pack at this node's copy of its files, fetching
/// them from the `packs` object store first when the node does not have
/// them. A failure is logged: the pack's runs then fail on its missing
/// files, and the next change of the pack (or a restart) tries again.
async fn localise(files: &PackFiles, bundle: &mut PackBundle) {
    let Some(digest) = bundle.files.clone() else {
        return;
    };
    let pack = bundle.pack.pack_ref.clone();
    bundle.path = files.dir(&pack).to_string_lossy().to_string();
    if let Err(e) = files.materialise(&pack, &digest).await {
        tracing::error!(pack, error = %e, "cannot put the installed pack's files on this node");
    }
}

/// Keeps the node's catalog equal to the `content` bucket, and this node's
/// copies of installed packs' files equal to the `packs` object store.
#[derive(Debug)]
pub struct ContentWatcher;

/// Messages of [`ContentWatcher`].
#[derive(Debug)]
pub enum ContentMsg {
    Changed(Result<kv::Entry, kv::WatcherError>),
    WatchEnded,
}

/// State of [`ContentWatcher`].
#[derive(Debug)]
pub struct ContentState {
    bus: Bus,
    packs: BTreeMap<String, PackBundle>,
    catalog: CatalogHandle,
    files: PackFiles,
    _pump: Pump,
}

impl Actor for ContentWatcher {
    type Msg = ContentMsg;
    type State = ContentState;
    type Arguments = (Bus, CatalogHandle, PackFiles);

    async fn pre_start(
        &self,
        myself: ActorRef<ContentMsg>,
        (bus, catalog, files): (Bus, CatalogHandle, PackFiles),
    ) -> Result<ContentState, ActorProcessingErr> {
        // Remember where the bucket is, load everything up to there, then
        // watch from that point on: nothing between the two is missed.
        let last = crate::bus::bucket_state(&bus.content).await?.last_sequence;
        let mut packs = load_all(&bus).await?;
        for bundle in packs.values_mut() {
            localise(&files, bundle).await;
        }
        files
            .prune(
                &packs
                    .values()
                    .filter(|b| b.files.is_some())
                    .map(|b| b.pack.pack_ref.clone())
                    .collect(),
            )
            .await;
        let mut snapshot = Catalog::build(packs.clone());
        snapshot.revision = last;
        bus.set_end_listeners(snapshot.end_listeners());
        catalog.store(snapshot);
        let watch = bus
            .content
            .watch_all_from_revision(last + 1)
            .await
            .map_err(|e| bus_err("watch content", e))?;
        let pump = Pump::start(watch, myself, ContentMsg::Changed, ContentMsg::WatchEnded);
        Ok(ContentState {
            bus,
            packs,
            catalog,
            files,
            _pump: pump,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ContentMsg>,
        msg: ContentMsg,
        state: &mut ContentState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ContentMsg::Changed(Ok(entry)) => {
                let Some(pack_ref) = entry.key.strip_prefix("packs.") else {
                    return Ok(());
                };
                match entry.operation {
                    kv::Operation::Put => {
                        let mut bundle: PackBundle = from_bytes(&entry.key, &entry.value)?;
                        localise(&state.files, &mut bundle).await;
                        let was_installed = state
                            .packs
                            .insert(pack_ref.to_string(), bundle)
                            .is_some_and(|old| old.files.is_some());
                        if was_installed && state.packs[pack_ref].files.is_none() {
                            state.files.forget(pack_ref).await;
                        }
                    }
                    kv::Operation::Delete | kv::Operation::Purge => {
                        if state
                            .packs
                            .remove(pack_ref)
                            .is_some_and(|b| b.files.is_some())
                        {
                            state.files.forget(pack_ref).await;
                        }
                    }
                }
                let mut snapshot = Catalog::rebuild(state.packs.clone(), &state.catalog.load());
                snapshot.revision = entry.revision;
                state.bus.set_end_listeners(snapshot.end_listeners());
                state.catalog.store(snapshot);
                tracing::debug!(pack = pack_ref, "catalog rebuilt");
                Ok(())
            }
            // Failing hands the problem to the supervisor, which restarts
            // the watcher from a fresh load of the bucket.
            ContentMsg::Changed(Err(e)) => Err(Box::new(bus_err("watch content", e))),
            ContentMsg::WatchEnded => Err(Box::new(bus_err("watch content", "watch ended"))),
        }
    }
}
