//! What the node's supervisor and the cluster coordinator say to each
//! other: the supervisor's children, its messages, and calls bounded in
//! time. The coordinator decides which partitions the node owns and tells
//! the supervisor (`Own`, `Disown`, `Fence`); the supervisor starts the
//! coordinator. Both depend on this protocol, not on each other.

use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};

use crate::error::EngineError;

/// One child of the supervisor, as it can be (re)started.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Child {
    Content,
    Rules(u32),
    Workflows(u32),
    Runners(String),
    Timers(u32),
}

impl Child {
    /// Whether the child runs only while the node holds a lease.
    pub fn partitioned(&self) -> bool {
        matches!(
            self,
            Child::Rules(_) | Child::Workflows(_) | Child::Timers(_)
        )
    }
}

/// Messages of the node's supervisor ([`crate::node::NodeSupervisor`]).
#[derive(Debug)]
pub enum NodeMsg {
    Restart(Child),
    /// Answered once every child has started (messages are handled only
    /// after `post_start`, and in order after any `Own`).
    Ready(RpcReplyPort<()>),
    /// The node took a partition's lease: start its actor.
    Own(Child),
    /// The node gives up these partitions: answered once their actors
    /// have stopped.
    Disown(Vec<Child>, RpcReplyPort<()>),
    /// The node can no longer vouch for its leases (its coordinator
    /// failed): every partition actor stops; answered once they have.
    Fence(RpcReplyPort<()>),
}

/// Calls the supervisor, giving up after `timeout`.
pub async fn call_within<T: Send + 'static>(
    supervisor: &ActorRef<NodeMsg>,
    timeout: Duration,
    msg: impl FnOnce(RpcReplyPort<T>) -> NodeMsg,
) -> Result<T, EngineError> {
    match supervisor.call(msg, Some(timeout)).await {
        Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
        Ok(ractor::rpc::CallResult::Timeout) => Err(EngineError::Config(format!(
            "the node's supervisor did not answer within {timeout:?}"
        ))),
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
            Err(EngineError::Config("the node's supervisor is gone".into()))
        }
    }
}
