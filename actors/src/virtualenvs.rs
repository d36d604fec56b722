//! Keeps this node's pack virtualenvs in step with the registered content:
//! whenever the catalog changes, every pack with Python content gets its
//! virtualenv built or rebuilt (when its requirements changed), one pack at
//! a time, off the executions' path. An execution that arrives while its
//! pack's virtualenv builds waits for that build (see the `python-script`
//! runner); a pack whose build failed fails its executions with pip's error
//! until it is registered again or its requirements change.

use squall_runners::venv::Virtualenvs;
use tokio_util::sync::CancellationToken;

use crate::catalog::CatalogHandle;

/// Builds the virtualenvs of the catalog's packs now and after every
/// change, until `shutdown`.
pub async fn keep(catalog: CatalogHandle, venvs: Virtualenvs, shutdown: CancellationToken) {
    let mut changes = catalog.subscribe();
    loop {
        let packs: Vec<(String, std::path::PathBuf)> = changes
            .borrow_and_update()
            .packs
            .values()
            .map(|b| (b.pack.pack_ref.clone(), std::path::PathBuf::from(&b.path)))
            .collect();
        for (pack, dir) in packs {
            tokio::select! {
                // Failures are logged by `ensure` and remembered for the
                // pack's executions.
                _ = venvs.ensure(&pack, &dir, false) => {}
                () = shutdown.cancelled() => return,
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}
