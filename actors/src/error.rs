//! The engine's error type.

use thiserror::Error;

/// Everything that can go wrong inside the engine.
#[derive(Debug, Error)]
pub enum EngineError {
    /// A NATS / JetStream operation failed; usually transient.
    #[error("{op} failed: {message}")]
    Bus { op: String, message: String },
    /// A stored value could not be read or written as JSON.
    #[error("stored value {key} is unreadable: {message}")]
    Corrupt { key: String, message: String },
    /// The node's configuration contradicts the cluster.
    #[error("{0}")]
    Config(String),
    /// The action named does not exist or is disabled.
    #[error("action {0:?} is not registered")]
    UnknownAction(String),
    /// The action exists but cannot run here.
    #[error("{0}")]
    NotRunnable(String),
    /// Parameters failed validation or rendering.
    #[error(transparent)]
    Params(#[from] squall_domain::params::ParamError),
    /// A pack failed validation.
    #[error(transparent)]
    Pack(#[from] squall_domain::loader::LoadErrors),
    /// A pack's config could not be resolved for a run.
    #[error(transparent)]
    PackConfig(#[from] squall_domain::pack_config::ConfigError),
    /// A pack's virtualenv could not be built (pip's error inside).
    #[error(transparent)]
    Virtualenv(#[from] squall_runners::venv::VenvError),
}

impl EngineError {
    /// Whether trying again later may succeed (the bus was unavailable),
    /// as opposed to a problem with the input that will never go away.
    pub fn is_retryable(&self) -> bool {
        matches!(self, EngineError::Bus { .. })
    }
}

/// Wraps a NATS error with the operation that failed.
pub fn bus_err(op: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::Bus {
        op: op.to_string(),
        message: e.to_string(),
    }
}
