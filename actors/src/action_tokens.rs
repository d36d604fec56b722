//! The API token of one execution's run (`ST2_ACTION_AUTH_TOKEN`): issued
//! while the runner claims the execution, so storing it costs the run no
//! round trip of its own, and revoked in the background once the process
//! has ended, so the run's end waits for no revoke either.
//!
//! Both ends are guards: a token whose issue was started but never handed
//! out (the claim failed, the run stopped early) and a token handed out
//! are revoked when dropped, with retries; one whose revoke keeps failing
//! expires at its TTL (the action's timeout plus [`TOKEN_MARGIN`]).

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::auth::AuthStore;
use crate::error::EngineError;
use crate::timing::{DEFAULT_TOKEN_TTL, TOKEN_MARGIN, TOKEN_REVOKE_RETRIES};

/// How long an action's token lives: its `timeout` parameter (seconds)
/// plus [`TOKEN_MARGIN`], or StackStorm's service token TTL without one.
pub fn ttl(parameters: &serde_json::Map<String, serde_json::Value>) -> Duration {
    parameters
        .get("timeout")
        .and_then(serde_json::Value::as_u64)
        .filter(|t| *t > 0)
        .map_or(DEFAULT_TOKEN_TTL, |t| Duration::from_secs(t) + TOKEN_MARGIN)
}

/// A token being issued, on its own task so that the caller's next bus
/// operation (the claim) runs meanwhile.
#[derive(Debug)]
pub struct Pending {
    issue: Option<JoinHandle<Result<String, EngineError>>>,
    auth: AuthStore,
    tasks: TaskTracker,
}

impl Pending {
    /// Starts issuing a token for `user` valid for `ttl`; a revoke, when
    /// it comes, is a task of `tasks` (shutdown waits for those).
    pub fn start(auth: &AuthStore, tasks: &TaskTracker, user: &str, ttl: Duration) -> Pending {
        let (store, user) = (auth.clone(), user.to_string());
        let issue = tokio::spawn(async move {
            store
                .issue_action_token(&user, ttl)
                .await
                .map(|(token, _)| token)
        });
        Pending {
            issue: Some(issue),
            auth: auth.clone(),
            tasks: tasks.clone(),
        }
    }

    /// The token, once stored.
    pub async fn issued(mut self) -> Result<Issued, String> {
        let Some(issue) = self.issue.take() else {
            return Err("the token was already taken".into());
        };
        match issue.await {
            Ok(Ok(value)) => Ok(Issued {
                value: Some(value),
                auth: self.auth.clone(),
                tasks: self.tasks.clone(),
            }),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("the task issuing it failed: {e}")),
        }
    }
}

impl Drop for Pending {
    /// Never handed out: revoked as soon as it is stored.
    fn drop(&mut self) {
        if let Some(issue) = self.issue.take() {
            let auth = self.auth.clone();
            self.tasks.spawn(async move {
                if let Ok(Ok(value)) = issue.await {
                    revoke(&auth, &value).await;
                }
            });
        }
    }
}

/// A stored token, revoked (in the background) when dropped.
#[derive(Debug)]
pub struct Issued {
    value: Option<String>,
    auth: AuthStore,
    tasks: TaskTracker,
}

impl Issued {
    /// The token's value, for the action's environment.
    pub fn value(&self) -> &str {
        self.value.as_deref().unwrap_or_default()
    }
}

impl Drop for Issued {
    fn drop(&mut self) {
        if let Some(value) = self.value.take() {
            let auth = self.auth.clone();
            self.tasks.spawn(async move { revoke(&auth, &value).await });
        }
    }
}

/// Revokes `value`, trying again after each of [`TOKEN_REVOKE_RETRIES`].
async fn revoke(auth: &AuthStore, value: &str) {
    let mut waits = TOKEN_REVOKE_RETRIES.iter();
    loop {
        match auth.revoke_token(value).await {
            Ok(()) => return,
            Err(e) => match waits.next() {
                Some(wait) => tokio::time::sleep(*wait).await,
                None => {
                    tracing::warn!(error = %e, "the action's API token could not be revoked; it expires on its own");
                    return;
                }
            },
        }
    }
}
