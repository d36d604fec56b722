//! A KV bucket mirrored in memory: loaded whole at start, then kept current
//! by a watch that resumes from the last revision it saw. Readers that must
//! answer synchronously (templates reading the datastore) or fast (the
//! execution history behind `GET /executions`) read the mirror, never the
//! bucket; a write reaches the mirror milliseconds after it is stored.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

use async_nats::jetstream::kv;
use futures::StreamExt;

use crate::bus::bucket_state;
use crate::error::{bus_err, EngineError};
use crate::timing::{REWATCH_DELAY, STALL_CHECK};

/// State built from a bucket's entries, one entry at a time, in revision
/// order. Applying an entry twice must leave the same state.
pub trait Mirror: Default + Send + Sync + 'static {
    /// Folds one put, delete or purge into the state.
    fn apply(&mut self, entry: &kv::Entry);
}

/// The live copy of one bucket.
pub struct Mirrored<M> {
    state: Arc<RwLock<M>>,
    _watch: Arc<AbortOnDrop>,
}

impl<M> Clone for Mirrored<M> {
    fn clone(&self) -> Self {
        Mirrored {
            state: Arc::clone(&self.state),
            _watch: Arc::clone(&self._watch),
        }
    }
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
        let kv = store.clone();
        let live = Arc::clone(&state);
        let task = tokio::spawn(async move {
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
        });
        Ok(Mirrored {
            state,
            _watch: Arc::new(AbortOnDrop(task)),
        })
    }

    /// The current state, for a short read.
    pub fn read(&self) -> RwLockReadGuard<'_, M> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }
}

fn write<M>(state: &RwLock<M>) -> std::sync::RwLockWriteGuard<'_, M> {
    state.write().unwrap_or_else(PoisonError::into_inner)
}
