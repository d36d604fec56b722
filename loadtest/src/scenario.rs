//! Scenario files: what load, how much, and why (`goal`). Unknown fields
//! are errors, named with the file and line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::LoadError;

/// One scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// What the scenario shows, in a sentence or two.
    pub goal: String,
    pub load: Load,
    /// The run stops waiting for executions after this long.
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
}

fn default_timeout() -> u64 {
    300
}

/// The kind of load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Load {
    Webhook(WebhookLoad),
    ApiList(ApiListLoad),
    Workflow(WorkflowLoad),
}

/// Runs of a workflow action through `POST /api/v1/executions`; latency
/// is each workflow execution's own (requested → finished).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowLoad {
    /// The workflow action (`pack.name`).
    pub action: String,
    #[serde(default)]
    pub parameters: serde_json::Map<String, serde_json::Value>,
    pub count: usize,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

/// Webhooks fired at a node; executions counted from its records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookLoad {
    /// The webhook's `url` parameter (`POST /api/v1/webhooks/<url>`).
    pub url: String,
    /// The rule whose executions are counted; generated rules when absent.
    #[serde(default)]
    pub rule: Option<String>,
    /// Webhooks to send.
    pub count: usize,
    /// Most webhooks in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Open loop: webhooks per second, each due at a fixed time and its
    /// latency measured from then. Closed loop when absent.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Rules created for the run (and deleted after).
    #[serde(default)]
    pub generated_rules: Option<GeneratedRules>,
}

fn default_concurrency() -> usize {
    32
}

/// Many rules on one webhook, a share of them matching every payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratedRules {
    pub count: usize,
    pub matching_percent: f64,
}

/// Concurrent history queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiListLoad {
    /// Path under `/api/v1/`, e.g. `executions?limit=50`.
    pub query: String,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    pub duration_s: u64,
    /// Executions stored before measuring (created with webhook-noop's rule
    /// when fewer exist).
    #[serde(default)]
    pub seed: usize,
}

/// Where the shipped scenarios are.
pub fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

impl Scenario {
    /// Reads a scenario from a path, or by name from the shipped ones.
    pub fn load(name_or_path: &str) -> Result<Scenario, LoadError> {
        let path = if Path::new(name_or_path).is_file() {
            PathBuf::from(name_or_path)
        } else {
            shipped_dir().join(format!("{name_or_path}.yaml"))
        };
        let text = std::fs::read_to_string(&path).map_err(|e| LoadError::Scenario {
            file: path.display().to_string(),
            message: format!(
                "cannot read it ({e}); shipped scenarios: {}",
                shipped().join(", ")
            ),
        })?;
        Scenario::parse(&text).map_err(|message| LoadError::Scenario {
            file: path.display().to_string(),
            message,
        })
    }

    /// Parses a scenario's text; errors carry the line.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let scenario: Scenario = serde_yaml::from_str(text).map_err(|e| match e.location() {
            Some(at) => format!("line {}: {e}", at.line()),
            None => e.to_string(),
        })?;
        scenario.check()?;
        Ok(scenario)
    }

    fn check(&self) -> Result<(), String> {
        match &self.load {
            Load::Webhook(w) => {
                if w.count == 0 || w.concurrency == 0 {
                    return Err("load.webhook: count and concurrency must be at least 1".into());
                }
                if w.rate.is_some_and(|r| r <= 0.0) {
                    return Err("load.webhook.rate: must be more than 0 webhooks per second".into());
                }
                match (&w.rule, &w.generated_rules) {
                    (None, None) => Err(
                        "load.webhook: name the `rule` whose executions count, or `generated_rules`"
                            .into(),
                    ),
                    (Some(_), Some(_)) => Err(
                        "load.webhook: `rule` and `generated_rules` exclude each other".into(),
                    ),
                    (_, Some(g)) if g.count == 0 || !(0.0..=100.0).contains(&g.matching_percent) => {
                        Err("load.webhook.generated_rules: count ≥ 1, matching_percent 0..100".into())
                    }
                    _ => Ok(()),
                }
            }
            Load::Workflow(w) => {
                if w.count == 0 || w.concurrency == 0 {
                    return Err("load.workflow: count and concurrency must be at least 1".into());
                }
                Ok(())
            }
            Load::ApiList(a) => {
                if a.concurrency == 0 || a.duration_s == 0 {
                    return Err(
                        "load.api_list: concurrency and duration_s must be at least 1".into(),
                    );
                }
                Ok(())
            }
        }
    }
}

/// Names of the shipped scenarios.
pub fn shipped() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(shipped_dir())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".yaml"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_scenario_parses() {
        let names = shipped();
        assert!(names.len() >= 8, "{names:?}");
        for name in names {
            Scenario::load(&name).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        let err = Scenario::parse("name: x\ngoal: y\nload:\n  kind: webhook\n  url: a\n  rule: r\n  count: 1\n  speed: 9\n")
            .unwrap_err();
        assert!(err.contains("line") && err.contains("speed"), "{err}");
        let err =
            Scenario::parse("name: x\ngoal: y\nload:\n  kind: webhook\n  url: a\n  count: 1\n")
                .unwrap_err();
        assert!(err.contains("rule"), "{err}");
        let err = Scenario::parse("name: x\ngoal: y\nload:\n  kind: webhook\n  url: a\n  rule: r\n  count: 1\n  rate: 0\n")
            .unwrap_err();
        assert!(err.contains("rate"), "{err}");
    }
}
