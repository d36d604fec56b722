//! A KV bucket mirrored in memory: loaded whole at start, then kept current
//! by a watch that resumes from the last revision it saw. Readers that must
//! answer synchronously (templates reading the datastore) or fast (the
//! execution history behind `GET /executions`) read the mirror, never the
//! bucket; a write reaches the mirror milliseconds after it is stored.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio::sync::watch;

use crate::bus::bucket_state;
use crate::error::{bus_err, EngineError};
use crate::timing::{REWATCH_DELAY, STALL_CHECK};

/// State built from a bucket's entries, one entry at a time, in revision
/// order. Applying an entry twice must leave the same state.
pub trait Mirror: Default + Send + Sync + 'static {
    /// Folds one put, delete or purge into the state.
    fn apply(&mut self, entry: &kv::Entry);

    /// A bulk load begins (entries arrive in revision order, many at once).
    fn loading(&mut self) {}

    /// The bulk load has caught up with the bucket.
    fn loaded(&mut self) {}
}

/// The live copy of one bucket.
pub struct Mirrored<M> {
    state: Arc<RwLock<M>>,
    /// Whether the state has caught up with the bucket.
    ready: watch::Receiver<bool>,
    /// The last revision folded into the state.
    applied: watch::Receiver<u64>,
    _watch: Arc<AbortOnDrop>,
}

impl<M> Clone for Mirrored<M> {
    fn clone(&self) -> Self {
        Mirrored {
            state: Arc::clone(&self.state),
            ready: self.ready.clone(),
            applied: self.applied.clone(),
            _watch: Arc::clone(&self._watch),
        }
    }
}

impl<M> std::fmt::Debug for Mirrored<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirrored")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl<M> Mirrored<M> {
    /// Whether the state has caught up with the bucket.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the state has caught up with the bucket.
    pub async fn ready(&self) {
        // An error: the loading task is gone (the mirror is being
        // dropped), so nothing is left to wait for.
        let _ = self.ready.clone().wait_for(|r| *r).await;
    }

    /// Waits until the state holds revision `revision` (a bucket's last
    /// when a request came), at most `limit`.
    pub async fn reach(&self, revision: u64, limit: Duration) {
        reach(&self.applied, revision, limit).await;
    }
}

/// Waits until `applied` (a sequence folded in, announced as each is)
/// reaches `target`, at most `limit`: a sequence the stream no longer
/// holds never comes, so the wait is bounded, not an error.
pub async fn reach(applied: &watch::Receiver<u64>, target: u64, limit: Duration) {
    let mut applied = applied.clone();
    // Err: the follower is gone; Elapsed: the limit. Either way, go on.
    let _ = tokio::time::timeout(limit, applied.wait_for(|a| *a >= target)).await;
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<M: Mirror> Mirrored<M> {
    /// Loads what `store` holds now, then follows it. Returns once the
    /// current contents are in the mirror. `what` names the bucket in logs.
    pub async fn start(store: &kv::Store, what: &'static str) -> Result<Self, EngineError> {
        let state: Arc<RwLock<M>> = Arc::default();
        let (applied_tx, applied) = watch::channel(0);
        let mut watch = store
            .watch_with_history(">")
            .await
            .map_err(|e| bus_err(&format!("watch {what}"), e))?;
        let present = bucket_state(store).await?.messages;
        let mut last_revision = 0;
        let mut loaded = 0;
        while loaded < present {
            match watch.next().await {
                Some(Ok(entry)) => {
                    last_revision = entry.revision;
                    write(&state).apply(&entry);
                    loaded += 1;
                    if entry.delta == 0 {
                        break;
                    }
                }
                Some(Err(e)) => return Err(bus_err(&format!("watch {what}"), e)),
                None => break,
            }
        }
        applied_tx.send_replace(last_revision);
        let task = tokio::spawn(follow(
            store.clone(),
            what,
            Arc::clone(&state),
            watch,
            last_revision,
            applied_tx,
        ));
        Ok(Mirrored {
            state,
            ready: watch::channel(true).1,
            applied,
            _watch: Arc::new(AbortOnDrop(task)),
        })
    }

    /// Starts from `initial`, which reflects the bucket up to revision
    /// `after` (0: nothing), and returns at once: the entries since are
    /// loaded in the background, and [`Mirrored::is_ready`] says when the
    /// state has caught up with the bucket.
    pub fn start_from(store: &kv::Store, what: &'static str, initial: M, after: u64) -> Self {
        Mirrored::start_with(store, what, async move { (initial, after) })
    }

    /// Like [`Mirrored::start_from`], with the initial state and its
    /// revision given by `load` (a snapshot decoded on a blocking thread),
    /// so the caller goes on meanwhile; not ready before `load` is done.
    pub fn start_with(
        store: &kv::Store,
        what: &'static str,
        load: impl std::future::Future<Output = (M, u64)> + Send + 'static,
    ) -> Self {
        let state: Arc<RwLock<M>> = Arc::default();
        let (caught_up, ready) = watch::channel(false);
        let (applied_tx, applied) = watch::channel(0);
        let kv = store.clone();
        let live = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let (initial, after) = load.await;
            *write(&live) = initial;
            applied_tx.send_replace(after);
            let (watch, last) = loop {
                match catch_up(&kv, what, &live, after, &applied_tx).await {
                    Ok(done) => break done,
                    Err(e) => {
                        tracing::warn!(bucket = what, error = %e, "loading failed; retrying");
                        tokio::time::sleep(REWATCH_DELAY).await;
                    }
                }
            };
            write(&live).loaded();
            caught_up.send_replace(true);
            tracing::info!(bucket = what, revision = last, "mirror loaded");
            follow(kv, what, live, watch, last, applied_tx).await;
        });
        Mirrored {
            state,
            ready,
            applied,
            _watch: Arc::new(AbortOnDrop(task)),
        }
    }

    /// The current state, for a short read.
    pub fn read(&self) -> RwLockReadGuard<'_, M> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until `done` holds of the state, checked now and after each
    /// entry folded in, at most `limit`; whether it came to hold.
    pub async fn until(&self, limit: Duration, done: impl Fn(&M) -> bool) -> bool {
        let mut applied = self.applied.clone();
        let held = tokio::time::timeout(limit, applied.wait_for(|_| done(&self.read()))).await;
        matches!(held, Ok(Ok(_)))
    }

    /// The state, for a change no bucket entry reports (what a stream
    /// purge or an age limit removed).
    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, M> {
        write(&self.state)
    }
}

fn write<M>(state: &RwLock<M>) -> std::sync::RwLockWriteGuard<'_, M> {
    state.write().unwrap_or_else(PoisonError::into_inner)
}

/// Folds into `state` every entry after revision `after` up to the
/// bucket's last; the watch (to follow on with) and the last revision.
async fn catch_up<M: Mirror>(
    kv: &kv::Store,
    what: &'static str,
    state: &RwLock<M>,
    after: u64,
    applied: &watch::Sender<u64>,
) -> Result<(kv::Watch, u64), EngineError> {
    let target = bucket_state(kv).await?.last_sequence;
    let mut watch = if after == 0 {
        kv.watch_with_history(">").await
    } else {
        kv.watch_all_from_revision(after + 1).await
    }
    .map_err(|e| bus_err(&format!("watch {what}"), e))?;
    write(state).loading();
    let mut last = after;
    while last < target {
        match tokio::time::timeout(STALL_CHECK, watch.next()).await {
            Ok(Some(Ok(entry))) => {
                last = entry.revision;
                write(state).apply(&entry);
                applied.send_replace(last);
                if entry.delta == 0 {
                    break;
                }
            }
            Ok(Some(Err(e))) => return Err(bus_err(&format!("watch {what}"), e)),
            Ok(None) => break,
            // Nothing more arrives: what was there is all loaded.
            Err(_) => break,
        }
    }
    Ok((watch, last))
}

/// Follows `watch` into `live` for ever, watching again from the last
/// revision seen when the watch ends or stalls.
async fn follow<M: Mirror>(
    kv: kv::Store,
    what: &'static str,
    live: Arc<RwLock<M>>,
    mut watch: kv::Watch,
    mut last_revision: u64,
    applied: watch::Sender<u64>,
) {
    let mut check =
        tokio::time::interval_at(tokio::time::Instant::now() + STALL_CHECK, STALL_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The revision seen at the previous check: no progress since
    // while the bucket has newer entries means a stalled watch.
    let mut at_last_check = last_revision;
    loop {
        let stalled = loop {
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                        last_revision = entry.revision;
                        write(&live).apply(&entry);
                        applied.send_replace(last_revision);
                    }
                    Some(Err(e)) => tracing::warn!(bucket = what, error = %e, "watch error"),
                    None => break false,
                },
                _ = check.tick() => {
                    let behind = bucket_state(&kv)
                        .await
                        .is_ok_and(|s| s.last_sequence > last_revision);
                    if behind && last_revision == at_last_check {
                        break true;
                    }
                    at_last_check = last_revision;
                }
            }
        };
        if stalled {
            tracing::warn!(
                bucket = what,
                revision = last_revision,
                "watch stalled behind the bucket (a server went away?); watching again"
            );
        } else {
            tokio::time::sleep(REWATCH_DELAY).await;
        }
        match kv.watch_all_from_revision(last_revision + 1).await {
            Ok(w) => watch = w,
            Err(e) => tracing::warn!(bucket = what, error = %e, "cannot watch; retrying"),
        }
    }
}
