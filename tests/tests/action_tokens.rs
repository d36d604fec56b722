//! An execution's API token (`squall_actors::action_tokens`) against a real
//! nats-server: usable once issued, revoked in the background when its
//! guard drops, and revoked even when it was never handed out.

use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use squall_actors::action_tokens::Pending;
use squall_actors::auth::{AuthStore, TOKENS_BUCKET};
use squall_actors::bus::Bus;
use squall_tests::{poll, NatsServer};
use tokio_util::task::TaskTracker;

/// How many tokens the bucket holds (revoked ones are purged).
async fn stored_tokens(bus: &Bus) -> Result<usize> {
    let bucket = bus.js.get_key_value(TOKENS_BUCKET).await?;
    let mut keys = bucket.keys().await?;
    let mut n = 0;
    while let Some(key) = keys.next().await {
        key?;
        n += 1;
    }
    Ok(n)
}

#[tokio::test]
async fn a_runs_token_works_until_its_guard_drops_and_one_never_handed_out_is_revoked() -> Result<()>
{
    let nats = NatsServer::start()?;
    let client = async_nats::connect(nats.url()).await?;
    let bus = Bus::open(client, squall_actors::node::layout(1), 4).await?;
    let auth = AuthStore::open(&bus).await?;
    let tasks = TaskTracker::new();

    // Issued for the rules' user, who has no account: usable at once.
    let issued = Pending::start(&auth, &tasks, "stanley", Duration::from_secs(60))
        .issued()
        .await
        .map_err(anyhow::Error::msg)?;
    let value = issued.value().to_string();
    let (principal, _) = auth
        .resolve_token(&value)
        .await?
        .context("a fresh token resolves")?;
    assert_eq!(principal.user, "stanley");
    assert_eq!(stored_tokens(&bus).await?, 1);

    // Dropped when the process ends: refused shortly after.
    drop(issued);
    poll(Duration::from_secs(10), || async {
        Ok(auth.resolve_token(&value).await?.is_none().then_some(()))
    })
    .await?;

    // A token whose run never started (a lost claim) is revoked once
    // stored, and the node's shutdown waits for that.
    drop(Pending::start(
        &auth,
        &tasks,
        "stanley",
        Duration::from_secs(60),
    ));
    tasks.close();
    tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await?;
    assert_eq!(stored_tokens(&bus).await?, 0);
    Ok(())
}
