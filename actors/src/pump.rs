//! Feeding an actor from an async stream.
//!
//! An actor cannot await an endless stream inside a handler and still hear
//! its supervisor, so a small task owned by the actor reads the stream and
//! posts each item as a message. The actor keeps the [`Pump`] in its state;
//! dropping it (when the actor stops) aborts the task.

use futures::{Stream, StreamExt};
use ractor::ActorRef;
use tokio::task::JoinHandle;

/// The task that feeds an actor; aborted on drop.
#[derive(Debug)]
pub struct Pump(JoinHandle<()>);

impl Pump {
    /// Posts `wrap(item)` to `actor` for every item of `stream`, then
    /// `end(...)` once the stream ends so the actor can decide what to do.
    pub fn start<S, T, M>(
        stream: S,
        actor: ActorRef<M>,
        wrap: impl Fn(T) -> M + Send + 'static,
        end: M,
    ) -> Pump
    where
        S: Stream<Item = T> + Send + 'static,
        T: Send + 'static,
        M: ractor::Message,
    {
        Pump(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if actor.cast(wrap(item)).is_err() {
                    return;
                }
            }
            let _ = actor.cast(end);
        }))
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        self.0.abort();
    }
}
