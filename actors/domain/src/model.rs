//! Registered content: packs, actions, rules and trigger types, in
//! StackStorm's shapes.
//!
//! These types are both what the pack loader produces from YAML and what is
//! stored in the `content` bucket. Deserialisation from user YAML goes
//! through [`crate::loader`], which rejects unknown fields with file and
//! line; the types themselves tolerate unknown fields so that content stored
//! by a newer node still reads on an older one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::criteria::Criteria;

/// Version of the stored [`PackBundle`] layout.
pub const BUNDLE_VERSION: u32 = 1;

/// The pack that owns built-in trigger types and actions.
pub const SYSTEM_PACK: &str = "core";

/// `pack.yaml`: the manifest of a pack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackMeta {
    /// Unique reference of the pack (lowercase letters, digits, underscores).
    #[serde(rename = "ref")]
    pub pack_ref: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub author: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
    /// Every other `pack.yaml` field, kept as written (StackStorm allows
    /// additional properties in the manifest).
    #[serde(default, flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One parameter of an action or runner: a JSON-schema property plus
/// StackStorm's extras (`required`, `secret`, `immutable`, `position`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub secret: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub immutable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    #[serde(rename = "enum", default, skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<Value>>,
    /// Other JSON-schema keywords (`items`, `properties`, `pattern`,
    /// `minimum`...), kept as written.
    #[serde(default, flatten)]
    pub schema: BTreeMap<String, Value>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_true() -> bool {
    true
}

/// An action: metadata from `actions/<name>.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionDef {
    pub name: String,
    pub pack: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    pub runner_type: String,
    /// Path relative to `<pack>/actions/`; empty for runners without one.
    #[serde(default)]
    pub entry_point: String,
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Value>,
    /// Path of the metadata file relative to the pack root.
    #[serde(default)]
    pub metadata_file: String,
}

impl ActionDef {
    /// `pack.name`.
    pub fn reference(&self) -> String {
        format!("{}.{}", self.pack, self.name)
    }
}

/// `trigger:` of a rule: which trigger type, with which parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleTrigger {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub parameters: serde_json::Map<String, Value>,
}

/// `action:` of a rule: the action to run and its Jinja-templated
/// parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleAction {
    #[serde(rename = "ref")]
    pub action_ref: String,
    #[serde(default)]
    pub parameters: serde_json::Map<String, Value>,
}

/// `type:` of a rule (`standard` or `backstop`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleType {
    #[serde(rename = "ref")]
    pub kind: String,
    #[serde(default)]
    pub parameters: serde_json::Map<String, Value>,
}

impl Default for RuleType {
    fn default() -> Self {
        Self {
            kind: "standard".into(),
            parameters: serde_json::Map::new(),
        }
    }
}

/// A rule: trigger + criteria + action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleDef {
    pub name: String,
    pub pack: String,
    #[serde(default)]
    pub description: String,
    /// StackStorm's API default is `false`: a rule runs only once enabled.
    #[serde(default)]
    pub enabled: bool,
    #[serde(rename = "type", default)]
    pub rule_type: RuleType,
    pub trigger: RuleTrigger,
    #[serde(default)]
    pub criteria: Criteria,
    pub action: RuleAction,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub context: serde_json::Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Value>,
    #[serde(default)]
    pub metadata_file: String,
    /// When the rule last became enabled (created enabled, enabled, or
    /// registered enabled); `None` while disabled, and for rules stored
    /// before Squall recorded it (listening since always). A rule enforces
    /// only trigger instances that occurred since, so a timer never feeds
    /// it ticks from before it listened. Kept by Squall, never read from a
    /// pack file or an API body, and not shown by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled_since: Option<DateTime<Utc>>,
}

impl RuleDef {
    /// `pack.name`.
    pub fn reference(&self) -> String {
        format!("{}.{}", self.pack, self.name)
    }

    /// Whether the rule was listening when an event occurred at `at`: it
    /// is enabled, and was already when the event occurred.
    pub fn listened_at(&self, at: DateTime<Utc>) -> bool {
        self.enabled && self.enabled_since.is_none_or(|since| since <= at)
    }
}

/// A trigger type: the schema of one kind of event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerTypeDef {
    pub name: String,
    pub pack: String,
    #[serde(default)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Value>,
    #[serde(default)]
    pub metadata_file: String,
}

impl TriggerTypeDef {
    /// `pack.name`.
    pub fn reference(&self) -> String {
        format!("{}.{}", self.pack, self.name)
    }
}

/// A sensor: metadata from `sensors/<name>.yaml`, the Python class the
/// node runs in a process of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorDef {
    /// The class in `entry_point`; the sensor's name.
    pub class_name: String,
    pub pack: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The `.py` file, relative to the directory of the metadata file.
    pub entry_point: String,
    /// Seconds between polls of a `PollingSensor`; `None` for the class's
    /// own default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<u64>,
    /// References of the trigger types it dispatches.
    #[serde(default)]
    pub trigger_types: Vec<String>,
    /// Path of the metadata file relative to the pack root.
    #[serde(default)]
    pub metadata_file: String,
}

impl SensorDef {
    /// `pack.class_name`.
    pub fn reference(&self) -> String {
        format!("{}.{}", self.pack, self.class_name)
    }

    /// The `.py` file inside the pack directory `pack_dir`.
    pub fn file(&self, pack_dir: &std::path::Path) -> std::path::PathBuf {
        let meta = pack_dir.join(&self.metadata_file);
        meta.parent().unwrap_or(pack_dir).join(&self.entry_point)
    }
}

/// A policy: a rule about how an action's executions run (concurrency,
/// retry). See [`crate::policies`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyDef {
    pub name: String,
    pub pack: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The action it applies to, `pack.name`.
    pub resource_ref: String,
    pub policy_type: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub metadata_file: String,
}

impl PolicyDef {
    /// `pack.name`.
    pub fn reference(&self) -> String {
        format!("{}.{}", self.pack, self.name)
    }
}

/// Everything one pack registers, stored as one value so that a pack
/// changes atomically: a watcher sees the old pack or the new one, never a
/// mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackBundle {
    #[serde(default)]
    pub version: u32,
    pub pack: PackMeta,
    /// Absolute path of the pack directory on the node that registered it;
    /// script runners resolve `entry_point` below `<path>/actions/`.
    pub path: String,
    #[serde(default)]
    pub actions: Vec<ActionDef>,
    #[serde(default)]
    pub rules: Vec<RuleDef>,
    #[serde(default)]
    pub trigger_types: Vec<TriggerTypeDef>,
    #[serde(default)]
    pub policies: Vec<PolicyDef>,
    /// `config.schema.yaml`: config item name → parameter schema
    /// ([`crate::pack_config`]); `None` when the pack has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_schema: Option<Map<String, Value>>,
    /// The pack's sensors (always the files', like trigger types).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sensors: Vec<SensorDef>,
    /// The pack's action aliases (`aliases/*.yaml`, and those made through
    /// the API), see [`crate::aliases`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<crate::aliases::AliasDef>,
    /// What the pack's files defined when it was last registered from
    /// disk: `actions/<name>` or `rules/<name>` → digest of the definition.
    /// A node start updates only what changed on disk since
    /// ([`crate::registration`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registered: BTreeMap<String, String>,
    /// For a pack installed with `packs.install`: the digest of its files
    /// in the `packs` object store. Every node materialises them under its
    /// own data dir and runs the pack from there, whatever `path` says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<String>,
}
