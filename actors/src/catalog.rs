//! The catalog: an immutable, indexed snapshot of all registered content,
//! rebuilt whenever a pack changes in the `content` bucket and swapped in
//! atomically. Readers take an `Arc<Catalog>` and never block writers.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use squall_domain::model::{ActionDef, PackBundle, RuleDef, TriggerTypeDef};
use squall_domain::{ids, triggers};
use tokio::sync::watch;

/// An action and the directory of the pack it came from.
#[derive(Debug, Clone)]
pub struct CatalogAction {
    pub def: ActionDef,
    pub pack_path: PathBuf,
}

/// A rule with the ids the API and enforcements use.
#[derive(Debug, Clone)]
pub struct CatalogRule {
    pub def: RuleDef,
    pub id: String,
    /// Reference of the trigger (type + parameters) the rule listens to.
    pub trigger_ref: String,
}

/// A trigger: a trigger type with the parameters some rule gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub reference: String,
    pub trigger_type: String,
    pub parameters: Map<String, Value>,
    /// Since when some enabled rule has listened to it: the earliest
    /// `enabled_since` of its rules (`None`: since always, a rule stored
    /// before Squall recorded it).
    pub listening_since: Option<DateTime<Utc>>,
}

/// Indexed registered content.
#[derive(Debug, Default)]
pub struct Catalog {
    pub packs: BTreeMap<String, PackBundle>,
    pub actions: BTreeMap<String, CatalogAction>,
    pub rules: BTreeMap<String, Arc<CatalogRule>>,
    pub trigger_types: BTreeMap<String, TriggerTypeDef>,
    /// Enabled rules by trigger type reference.
    rules_by_type: HashMap<String, Vec<Arc<CatalogRule>>>,
}

/// Stable id of a piece of content, derived from its kind and reference.
pub fn content_id(kind: &str, reference: &str) -> String {
    ids::derived(&chrono::DateTime::UNIX_EPOCH, &[kind, reference])
}

impl Catalog {
    /// Builds the catalog from every registered pack.
    pub fn build(packs: BTreeMap<String, PackBundle>) -> Catalog {
        let mut cat = Catalog {
            trigger_types: triggers::builtin()
                .into_iter()
                .map(|t| (t.reference(), t))
                .collect(),
            ..Catalog::default()
        };
        for bundle in packs.values() {
            for a in &bundle.actions {
                cat.actions.insert(
                    a.reference(),
                    CatalogAction {
                        def: a.clone(),
                        pack_path: PathBuf::from(&bundle.path),
                    },
                );
            }
            for t in &bundle.trigger_types {
                cat.trigger_types.insert(t.reference(), t.clone());
            }
            for r in &bundle.rules {
                let rule = Arc::new(CatalogRule {
                    id: content_id("rule", &r.reference()),
                    trigger_ref: triggers::trigger_ref(&r.trigger.kind, &r.trigger.parameters),
                    def: r.clone(),
                });
                if r.enabled {
                    cat.rules_by_type
                        .entry(r.trigger.kind.clone())
                        .or_default()
                        .push(rule.clone());
                }
                cat.rules.insert(r.reference(), rule);
            }
        }
        cat.packs = packs;
        cat
    }

    /// Enabled rules listening to `trigger_type` with exactly these trigger
    /// parameters.
    pub fn rules_for<'a>(
        &'a self,
        trigger_type: &str,
        parameters: &'a Map<String, Value>,
    ) -> impl Iterator<Item = &'a Arc<CatalogRule>> + 'a {
        self.rules_by_type
            .get(trigger_type)
            .into_iter()
            .flatten()
            .filter(move |r| &r.def.trigger.parameters == parameters)
    }

    /// Every distinct trigger some enabled rule listens to, of any type.
    pub fn triggers(&self) -> Vec<Trigger> {
        self.rules_by_type
            .keys()
            .flat_map(|t| self.triggers_of_type(t))
            .collect()
    }

    /// Every distinct trigger some enabled rule listens to, of one type.
    pub fn triggers_of_type(&self, trigger_type: &str) -> Vec<Trigger> {
        let mut out: Vec<Trigger> = Vec::new();
        for r in self.rules_by_type.get(trigger_type).into_iter().flatten() {
            match out.iter_mut().find(|t| t.reference == r.trigger_ref) {
                Some(t) => {
                    t.listening_since = t.listening_since.min(r.def.enabled_since);
                }
                None => out.push(Trigger {
                    reference: r.trigger_ref.clone(),
                    trigger_type: trigger_type.to_string(),
                    parameters: r.def.trigger.parameters.clone(),
                    listening_since: r.def.enabled_since,
                }),
            }
        }
        out
    }
}

/// A shared, swappable catalog; subscribers hear of every swap.
#[derive(Debug, Clone)]
pub struct CatalogHandle(Arc<watch::Sender<Arc<Catalog>>>);

impl Default for CatalogHandle {
    fn default() -> Self {
        CatalogHandle(Arc::new(watch::Sender::new(Arc::new(Catalog::build(
            BTreeMap::new(),
        )))))
    }
}

impl CatalogHandle {
    /// The current snapshot.
    pub fn load(&self) -> Arc<Catalog> {
        self.0.borrow().clone()
    }

    /// Replaces the snapshot and wakes subscribers.
    pub fn store(&self, catalog: Catalog) {
        self.0.send_replace(Arc::new(catalog));
    }

    /// A receiver that sees every future swap.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Catalog>> {
        self.0.subscribe()
    }
}
