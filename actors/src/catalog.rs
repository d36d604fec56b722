//! The catalog: an immutable, indexed snapshot of all registered content,
//! rebuilt whenever a pack changes in the `content` bucket and swapped in
//! atomically. Readers take an `Arc<Catalog>` and never block writers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use squall_domain::aliases::CompiledAlias;
use squall_domain::criteria::CompiledCriteria;
use squall_domain::model::{ActionDef, PackBundle, RuleDef, TriggerTypeDef};
use squall_domain::notify::{EndListeners, ACTION_TRIGGER};
use squall_domain::policies::{self, Enforced};
use squall_domain::template::CompiledValue;
use squall_domain::{ids, triggers};
use tokio::sync::watch;

/// An action and the directory of the pack it came from.
#[derive(Debug, Clone)]
pub struct CatalogAction {
    pub def: ActionDef,
    pub pack_path: PathBuf,
}

/// A rule with the ids the API and enforcements use, and its criteria and
/// action parameters compiled for the rule partition.
#[derive(Debug, Clone)]
pub struct CatalogRule {
    pub def: RuleDef,
    pub id: String,
    /// Reference of the trigger (type + parameters) the rule listens to.
    pub trigger_ref: String,
    /// `def.criteria`, compiled.
    pub criteria: CompiledCriteria,
    /// `def.action.parameters`, compiled.
    pub parameters: CompiledValue,
}

impl CatalogRule {
    pub fn new(def: RuleDef) -> Self {
        Self {
            id: content_id("rule", &def.reference()),
            trigger_ref: triggers::trigger_ref(&def.trigger.kind, &def.trigger.parameters),
            criteria: CompiledCriteria::compile(&def.criteria),
            parameters: CompiledValue::new(&Value::Object(def.action.parameters.clone())),
            def,
        }
    }
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
    /// Action aliases by reference, their formats compiled once.
    pub aliases: BTreeMap<String, Arc<CompiledAlias>>,
    /// Enabled rules by trigger type reference, grouped by their trigger
    /// parameters (groups in order of their first rule, rules in catalog
    /// order within a group): a trigger instance compares its parameters
    /// once per distinct set, not once per rule.
    rules_by_type: HashMap<String, Vec<RuleGroup>>,
    /// Enabled policies by the action they apply to: (policy ref, what it
    /// enforces), ordered by policy ref.
    policies: HashMap<String, Vec<(String, Enforced)>>,
    /// The `content` bucket revision this snapshot reflects.
    pub revision: u64,
    /// The webhook triggers enabled rules listen to, by URL (the `url`
    /// parameter without surrounding slashes).
    webhooks: HashMap<String, Vec<Trigger>>,
}

/// The enabled rules of one trigger type that share trigger parameters.
#[derive(Debug)]
struct RuleGroup {
    parameters: Map<String, Value>,
    rules: Vec<Arc<CatalogRule>>,
}

/// Stable id of a piece of content, derived from its kind and reference.
pub fn content_id(kind: &str, reference: &str) -> String {
    ids::derived(&chrono::DateTime::UNIX_EPOCH, &[kind, reference])
}

impl Catalog {
    /// Builds the catalog from every registered pack.
    pub fn build(packs: BTreeMap<String, PackBundle>) -> Catalog {
        Catalog::rebuild(packs, &Catalog::default())
    }

    /// Builds the catalog from every registered pack, taking each rule and
    /// alias whose definition is unchanged from `previous` as it is: a
    /// content change compiles only the rules (criteria regexes, templates)
    /// and aliases (format regexes) it changed, not every one again.
    pub fn rebuild(packs: BTreeMap<String, PackBundle>, previous: &Catalog) -> Catalog {
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
            for a in &bundle.aliases {
                let reference = a.reference();
                let alias = match previous.aliases.get(&reference) {
                    Some(kept) if kept.def == *a => kept.clone(),
                    _ => Arc::new(CompiledAlias::new(a.clone())),
                };
                cat.aliases.insert(reference, alias);
            }
            for p in &bundle.policies {
                if let Some(enforced) = policies::enforced(p) {
                    cat.policies
                        .entry(p.resource_ref.clone())
                        .or_default()
                        .push((p.reference(), enforced));
                }
            }
            for r in &bundle.rules {
                let reference = r.reference();
                let rule = match previous.rules.get(&reference) {
                    Some(kept) if kept.def == *r => kept.clone(),
                    _ => Arc::new(CatalogRule::new(r.clone())),
                };
                if r.enabled {
                    let groups = cat.rules_by_type.entry(r.trigger.kind.clone()).or_default();
                    match groups
                        .iter_mut()
                        .find(|g| g.parameters == r.trigger.parameters)
                    {
                        Some(group) => group.rules.push(rule.clone()),
                        None => groups.push(RuleGroup {
                            parameters: r.trigger.parameters.clone(),
                            rules: vec![rule.clone()],
                        }),
                    }
                }
                cat.rules.insert(reference, rule);
            }
        }
        for webhook in cat.triggers_of_type(triggers::WEBHOOK) {
            if let Some(url) = webhook_url(&webhook) {
                cat.webhooks
                    .entry(url.to_string())
                    .or_default()
                    .push(webhook);
            }
        }
        for list in cat.policies.values_mut() {
            list.sort_by(|a, b| a.0.cmp(&b.0));
        }
        cat.packs = packs;
        cat
    }

    /// Whether some enabled rule listens to `trigger_type`.
    pub fn listens_to(&self, trigger_type: &str) -> bool {
        self.rules_by_type.contains_key(trigger_type)
    }

    /// Who reacts to executions' ends under this catalog.
    pub fn end_listeners(&self) -> EndListeners {
        EndListeners {
            rules: self.listens_to(ACTION_TRIGGER),
            retried: self.retried_actions(),
            unknown: false,
        }
    }

    /// The actions an enabled `action.retry` policy applies to.
    pub fn retried_actions(&self) -> HashSet<String> {
        self.policies
            .iter()
            .filter(|(_, list)| {
                list.iter()
                    .any(|(_, e)| matches!(e, Enforced::Retry { .. }))
            })
            .map(|(action, _)| action.clone())
            .collect()
    }

    /// Whether the policy `policy_ref` is registered and enabled.
    pub fn enforces(&self, policy_ref: &str) -> bool {
        self.policies
            .values()
            .any(|list| list.iter().any(|(r, _)| r == policy_ref))
    }

    /// The enabled policies of action `action_ref`, by policy ref (empty
    /// for most actions: one map lookup).
    pub fn policies_for(&self, action_ref: &str) -> &[(String, Enforced)] {
        self.policies.get(action_ref).map_or(&[], Vec::as_slice)
    }

    /// The webhook triggers registered at `url` (without surrounding
    /// slashes).
    pub fn webhooks_at(&self, url: &str) -> &[Trigger] {
        self.webhooks.get(url).map_or(&[], Vec::as_slice)
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
            .find(move |g| &g.parameters == parameters)
            .into_iter()
            .flat_map(|g| &g.rules)
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
        let groups = self.rules_by_type.get(trigger_type).into_iter().flatten();
        for r in groups.flat_map(|g| &g.rules) {
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

/// The `url` parameter of a webhook trigger, without surrounding slashes.
fn webhook_url(t: &Trigger) -> Option<&str> {
    t.parameters
        .get("url")
        .and_then(Value::as_str)
        .map(|u| u.trim_matches('/'))
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

    /// Waits (at most `timeout`) until the snapshot reflects the `content`
    /// bucket at `revision` or later: a change made through this node is
    /// visible to its next request. False when it took longer.
    pub async fn wait_for(&self, revision: u64, timeout: std::time::Duration) -> bool {
        let mut rx = self.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| c.revision >= revision))
            .await
            .is_ok_and(|seen| seen.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use squall_domain::template::{NoKeyValues, Renderer};

    fn rule(name: &str, url: &str, enabled: bool) -> Value {
        json!({
            "name": name, "pack": "p", "enabled": enabled,
            "trigger": {"type": triggers::WEBHOOK, "parameters": {"url": url}},
            "criteria": {"trigger.body.n": {"type": "gt", "pattern": 1}},
            "action": {"ref": "core.local", "parameters": {"cmd": "echo {{ trigger.body.n }}"}},
        })
    }

    fn catalog(rules: Vec<Value>) -> Catalog {
        let bundle: PackBundle = serde_json::from_value(json!({
            "pack": {"ref": "p", "name": "p", "version": "1.0.0"},
            "path": "/packs/p",
            "rules": rules,
        }))
        .expect("bundle");
        Catalog::build(BTreeMap::from([("p".to_string(), bundle)]))
    }

    #[test]
    fn webhooks_are_indexed_by_url_without_slashes() {
        let cat = catalog(vec![
            rule("a", "hook", true),
            rule("b", "/hook/", true),
            rule("c", "hook", true),
            rule("d", "other", true),
            rule("e", "off", false),
        ]);
        let at_hook: Vec<_> = cat
            .webhooks_at("hook")
            .iter()
            .map(|t| t.parameters["url"].clone())
            .collect();
        assert_eq!(
            at_hook,
            [json!("hook"), json!("/hook/")],
            "one trigger per distinct parameters"
        );
        assert_eq!(cat.webhooks_at("other").len(), 1);
        assert!(
            cat.webhooks_at("off").is_empty(),
            "disabled rules listen to nothing"
        );
        assert!(cat.webhooks_at("nope").is_empty());
        let scanned: Vec<_> = cat
            .triggers_of_type(triggers::WEBHOOK)
            .into_iter()
            .filter(|t| webhook_url(t) == Some("hook"))
            .collect();
        assert_eq!(cat.webhooks_at("hook"), scanned.as_slice());
    }

    fn with_trigger(name: &str, kind: &str, params: Value, enabled: bool) -> Value {
        let mut r = rule(name, "", enabled);
        r["trigger"] = json!({"type": kind, "parameters": params});
        r
    }

    #[test]
    fn rules_for_gives_exactly_the_rules_a_full_scan_gives() {
        let kinds = [triggers::WEBHOOK, "core.st2.IntervalTimer", "p.custom"];
        let params = [
            json!({}),
            json!({"url": "a"}),
            json!({"url": "b"}),
            json!({"url": "a", "x": 1}),
            json!({"unit": "seconds", "delta": 5}),
        ];
        // Rules spread over every (type, parameters) pair, some disabled,
        // interleaved so that groups are not contiguous in catalog order.
        let rules: Vec<Value> = (0..60)
            .map(|i| {
                with_trigger(
                    &format!("r{i:02}"),
                    kinds[i % kinds.len()],
                    params[(i * 7) % params.len()].clone(),
                    i % 5 != 3,
                )
            })
            .collect();
        let cat = catalog(rules);
        let bundle = &cat.packs["p"];
        for kind in kinds {
            for p in &params {
                let p = p.as_object().unwrap();
                let scanned: Vec<String> = bundle
                    .rules
                    .iter()
                    .filter(|r| r.enabled && r.trigger.kind == kind && &r.trigger.parameters == p)
                    .map(|r| r.reference())
                    .collect();
                let indexed: Vec<String> =
                    cat.rules_for(kind, p).map(|r| r.def.reference()).collect();
                assert_eq!(indexed, scanned, "{kind} {p:?}");
            }
            let distinct: Vec<_> = cat
                .triggers_of_type(kind)
                .into_iter()
                .map(|t| t.parameters)
                .collect();
            let mut seen: Vec<Map<String, Value>> = Vec::new();
            for r in bundle
                .rules
                .iter()
                .filter(|r| r.enabled && r.trigger.kind == kind)
            {
                if !seen.contains(&r.trigger.parameters) {
                    seen.push(r.trigger.parameters.clone());
                }
            }
            assert_eq!(distinct, seen, "triggers of {kind}, in first-rule order");
        }
        assert_eq!(cat.rules_for("nope", &Map::new()).count(), 0);
    }

    #[test]
    fn a_rebuild_compiles_only_the_rules_and_aliases_that_changed() {
        let mut changed = rule("b", "hook", true);
        changed["criteria"] = json!({"trigger.body.n": {"type": "gt", "pattern": 5}});
        let alias = |name: &str, format: &str| json!({"name": name, "pack": "p", "action_ref": "core.local", "formats": [format]});
        let bundle = |rules: Vec<Value>, aliases: Vec<Value>| -> PackBundle {
            serde_json::from_value(json!({
                "pack": {"ref": "p", "name": "p", "version": "1.0.0"},
                "path": "/packs/p",
                "rules": rules,
                "aliases": aliases,
            }))
            .expect("bundle")
        };
        let before = Catalog::build(BTreeMap::from([(
            "p".to_string(),
            bundle(
                vec![rule("a", "hook", true), rule("b", "hook", true)],
                vec![alias("x", "run {{cmd}}"), alias("y", "say {{what}}")],
            ),
        )]));
        let after = Catalog::rebuild(
            BTreeMap::from([(
                "p".to_string(),
                bundle(
                    vec![rule("a", "hook", true), changed, rule("c", "hook", true)],
                    vec![alias("x", "run {{cmd}}"), alias("y", "shout {{what}}")],
                ),
            )]),
            &before,
        );
        assert!(Arc::ptr_eq(&before.aliases["p.x"], &after.aliases["p.x"]));
        assert!(!Arc::ptr_eq(&before.aliases["p.y"], &after.aliases["p.y"]));
        assert_eq!(
            serde_json::to_value(&after.aliases["p.y"].def.formats).unwrap(),
            json!(["shout {{what}}"])
        );
        assert!(Arc::ptr_eq(&before.rules["p.a"], &after.rules["p.a"]));
        assert!(!Arc::ptr_eq(&before.rules["p.b"], &after.rules["p.b"]));
        let renderer = Renderer::new();
        let n3 = json!({"body": {"n": 3}});
        assert!(before.rules["p.b"]
            .criteria
            .matches(&n3, &renderer, &NoKeyValues)
            .unwrap());
        assert!(!after.rules["p.b"]
            .criteria
            .matches(&n3, &renderer, &NoKeyValues)
            .unwrap());
        let hook = json!({"url": "hook"});
        let listening: Vec<_> = after
            .rules_for(triggers::WEBHOOK, hook.as_object().unwrap())
            .map(|r| r.def.name.clone())
            .collect();
        assert_eq!(listening, ["a", "b", "c"]);
    }

    #[test]
    fn rules_carry_their_compiled_criteria_and_parameters() {
        let cat = catalog(vec![rule("a", "hook", true)]);
        let rule = &cat.rules["p.a"];
        let renderer = Renderer::new();
        assert!(rule
            .criteria
            .matches(&json!({"body": {"n": 2}}), &renderer, &NoKeyValues)
            .unwrap());
        assert!(!rule
            .criteria
            .matches(&json!({"body": {"n": 1}}), &renderer, &NoKeyValues)
            .unwrap());
        let params = renderer
            .render_compiled(
                &rule.parameters,
                &json!({"trigger": {"body": {"n": 2}}}),
                &NoKeyValues,
            )
            .unwrap();
        assert_eq!(params, json!({"cmd": "echo 2"}));
    }
}
