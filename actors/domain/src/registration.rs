//! Registering a pack from disk over what is already stored: a merge, never
//! a replacement, so nothing made through the API is lost.
//!
//! A stored pack holds two kinds of actions and rules: those its files
//! define (`metadata_file` names the file) and those created through the
//! API (no file). Registration only ever touches the first kind:
//!
//! - **Explicit** (`POST /packs/register`, `st2 pack register`, `squall pack
//!   register`), as StackStorm's registrar: every definition on disk is
//!   added or written over the stored one, and a stored definition whose
//!   file is gone is removed. API-created content stays.
//! - **Start** (a node starting with `packs.register_on_start`): StackStorm
//!   re-registers nothing on a restart, so API edits and enable/disable
//!   changes survive it. Squall goes one step further for convenience: a
//!   file that changed (or appeared, or was deleted) since the pack was
//!   last registered is taken, as an explicit registration would; a file
//!   unchanged since then leaves the stored item as it is, edited,
//!   disabled or deleted through the API.
//!
//! Every change is reported ([`Change`]), so the answer and the log say
//! exactly what registration changed or removed.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::aliases::AliasDef;
use crate::model::{ActionDef, PackBundle, RuleDef};

/// Why a pack is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Someone asked: the files win.
    Explicit,
    /// A node started: only what changed on disk since the last
    /// registration is taken.
    Start,
}

/// What registration did to one action or rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// New on disk, not stored before.
    Added,
    /// Written over from its file; the fields that differed.
    Updated(Vec<String>),
    /// A file now defines what had been created through the API.
    ReplacedApiCreated,
    /// Its file is gone.
    Removed,
}

/// One change registration made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `action`, `rule` or `alias`.
    pub kind: &'static str,
    /// `pack.name`.
    pub reference: String,
    /// The file that defines (or defined) it, relative to the pack.
    pub file: String,
    pub what: ChangeKind,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, reference, file) = (self.kind, &self.reference, &self.file);
        match &self.what {
            ChangeKind::Added => write!(f, "{kind} {reference} added from {file}"),
            ChangeKind::Updated(fields) => write!(
                f,
                "{kind} {reference} updated from {file} ({} as the file says)",
                fields.join(", ")
            ),
            ChangeKind::ReplacedApiCreated => write!(
                f,
                "{kind} {reference}, created through the API, replaced by {file}"
            ),
            ChangeKind::Removed => write!(f, "{kind} {reference} removed: {file} is gone"),
        }
    }
}

impl Serialize for Change {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An action or a rule, as registration sees it.
pub trait Registrable: Clone + Serialize {
    /// `action`, `rule` or `alias`.
    const KIND: &'static str;
    /// The pack directory its files are in (`actions`, `rules`,
    /// `aliases`).
    const DIR: &'static str;
    fn name(&self) -> &str;
    fn reference(&self) -> String;
    /// The file that defines it; empty for content created through the API.
    fn file(&self) -> &str;
    /// The pack's items of this kind.
    fn items(bundle: &mut PackBundle) -> &mut Vec<Self>;
    /// Carries over what Squall keeps about an item across a change from
    /// `previous` (none when it is new), at `now`.
    fn carry_state(&mut self, previous: Option<&Self>, now: DateTime<Utc>);
    /// The definition as JSON, without what Squall keeps about it.
    fn definition(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Registrable for ActionDef {
    const KIND: &'static str = "action";
    const DIR: &'static str = "actions";
    fn name(&self) -> &str {
        &self.name
    }
    fn reference(&self) -> String {
        ActionDef::reference(self)
    }
    fn file(&self) -> &str {
        &self.metadata_file
    }
    fn items(bundle: &mut PackBundle) -> &mut Vec<Self> {
        &mut bundle.actions
    }
    fn carry_state(&mut self, _: Option<&Self>, _: DateTime<Utc>) {}
}

impl Registrable for RuleDef {
    const KIND: &'static str = "rule";
    const DIR: &'static str = "rules";
    fn name(&self) -> &str {
        &self.name
    }
    fn reference(&self) -> String {
        RuleDef::reference(self)
    }
    fn file(&self) -> &str {
        &self.metadata_file
    }
    fn items(bundle: &mut PackBundle) -> &mut Vec<Self> {
        &mut bundle.rules
    }
    /// A rule listens from the moment it becomes enabled: kept while it
    /// stays enabled, now when it was disabled or new, none while disabled.
    fn carry_state(&mut self, previous: Option<&Self>, now: DateTime<Utc>) {
        self.enabled_since = match previous {
            _ if !self.enabled => None,
            Some(p) if p.enabled => p.enabled_since,
            _ => Some(now),
        };
    }
    fn definition(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.remove("enabled_since");
        }
        v
    }
}

impl Registrable for AliasDef {
    const KIND: &'static str = "alias";
    const DIR: &'static str = "aliases";
    fn name(&self) -> &str {
        &self.name
    }
    fn reference(&self) -> String {
        AliasDef::reference(self)
    }
    fn file(&self) -> &str {
        &self.metadata_file
    }
    fn items(bundle: &mut PackBundle) -> &mut Vec<Self> {
        &mut bundle.aliases
    }
    fn carry_state(&mut self, _: Option<&Self>, _: DateTime<Utc>) {}
}

/// Key of an item in [`PackBundle::registered`].
fn registered_key<T: Registrable>(name: &str) -> String {
    format!("{}/{name}", T::DIR)
}

/// Digest of a definition, to see whether its file changed.
fn digest<T: Registrable>(item: &T) -> String {
    hex::encode(Sha256::digest(item.definition().to_string().as_bytes()))
}

/// The top-level fields in which two definitions differ.
fn differing_fields<T: Registrable>(a: &T, b: &T) -> Vec<String> {
    let (a, b) = (a.definition(), b.definition());
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut fields: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    fields.sort();
    fields.dedup();
    fields
}

/// Merges the pack read from disk into the stored one (an empty pack when
/// it was never registered) and returns the pack to store with what
/// changed. Trigger types, policies and the manifest have no API of their
/// own: they are always the files'.
pub fn merge(
    stored: &PackBundle,
    disk: PackBundle,
    mode: Mode,
    now: DateTime<Utc>,
) -> (PackBundle, Vec<Change>) {
    let mut out = disk.clone();
    out.actions = stored.actions.clone();
    out.rules = stored.rules.clone();
    out.aliases = stored.aliases.clone();
    out.registered = BTreeMap::new();
    let mut changes = Vec::new();
    merge_items::<ActionDef>(stored, &disk, mode, now, &mut out, &mut changes);
    merge_items::<RuleDef>(stored, &disk, mode, now, &mut out, &mut changes);
    merge_items::<AliasDef>(stored, &disk, mode, now, &mut out, &mut changes);
    (out, changes)
}

fn merge_items<T: Registrable>(
    stored: &PackBundle,
    disk: &PackBundle,
    mode: Mode,
    now: DateTime<Utc>,
    out: &mut PackBundle,
    changes: &mut Vec<Change>,
) {
    let on_disk = T::items(&mut disk.clone()).clone();
    let mut registered = BTreeMap::new();
    for mut item in on_disk.iter().cloned() {
        let key = registered_key::<T>(item.name());
        let digest = digest(&item);
        let before = stored.registered.get(&key);
        registered.insert(key, digest.clone());
        let items = T::items(out);
        let existing = items.iter().position(|i| i.name() == item.name());
        let take_file = match mode {
            Mode::Explicit => true,
            // Unchanged since the last registration, or (a pack stored
            // before Squall recorded digests) not known to have changed:
            // the stored item, whatever the API made of it, stays.
            Mode::Start => match before {
                Some(b) => *b != digest,
                None => existing.is_none(),
            },
        };
        if !take_file {
            continue;
        }
        let change = |what| Change {
            kind: T::KIND,
            reference: item.reference(),
            file: item.file().to_string(),
            what,
        };
        match existing {
            None => {
                changes.push(change(ChangeKind::Added));
                item.carry_state(None, now);
                items.push(item);
            }
            Some(i) => {
                let fields = differing_fields(&items[i], &item);
                if fields.is_empty() {
                    continue;
                }
                changes.push(change(if items[i].file().is_empty() {
                    ChangeKind::ReplacedApiCreated
                } else {
                    ChangeKind::Updated(fields)
                }));
                item.carry_state(Some(&items[i]), now);
                items[i] = item;
            }
        }
    }
    let items = T::items(out);
    items.retain(|item| {
        let gone = !item.file().is_empty()
            && !on_disk.iter().any(|d| d.name() == item.name())
            && (mode == Mode::Explicit
                || stored
                    .registered
                    .contains_key(&registered_key::<T>(item.name())));
        if gone {
            changes.push(Change {
                kind: T::KIND,
                reference: item.reference(),
                file: item.file().to_string(),
                what: ChangeKind::Removed,
            });
        }
        !gone
    });
    out.registered.extend(registered);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PackMeta, RuleAction, RuleTrigger, BUNDLE_VERSION};
    use chrono::TimeZone;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn rule(name: &str, file: &str, enabled: bool, action: &str) -> RuleDef {
        RuleDef {
            name: name.into(),
            pack: "p".into(),
            description: String::new(),
            enabled,
            rule_type: Default::default(),
            trigger: RuleTrigger {
                kind: "core.st2.webhook".into(),
                parameters: Default::default(),
            },
            criteria: Default::default(),
            action: RuleAction {
                action_ref: action.into(),
                parameters: Default::default(),
            },
            context: Default::default(),
            tags: vec![],
            metadata_file: file.into(),
            enabled_since: None,
        }
    }

    fn pack(rules: Vec<RuleDef>) -> PackBundle {
        PackBundle {
            version: BUNDLE_VERSION,
            pack: PackMeta {
                pack_ref: "p".into(),
                name: "p".into(),
                description: String::new(),
                version: "1.0.0".into(),
                author: String::new(),
                email: None,
                keywords: vec![],
                dependencies: vec![],
                extra: Default::default(),
            },
            path: "/packs/p".into(),
            actions: vec![],
            rules,
            trigger_types: vec![],
            policies: vec![],
            config_schema: None,
            sensors: vec![],
            aliases: vec![],
            registered: BTreeMap::new(),
            files: None,
        }
    }

    fn names(b: &PackBundle) -> Vec<&str> {
        b.rules.iter().map(|r| r.name.as_str()).collect()
    }

    fn find<'a>(b: &'a PackBundle, name: &str) -> &'a RuleDef {
        b.rules.iter().find(|r| r.name == name).unwrap()
    }

    /// The stored pack after a first registration of `disk`, then the API
    /// creating `api` and disabling `off`.
    fn registered_then_edited(disk: &PackBundle) -> PackBundle {
        let (mut stored, _) = merge(&pack(vec![]), disk.clone(), Mode::Start, at(0));
        stored.rules.push(rule("api", "", true, "core.noop"));
        stored
            .rules
            .iter_mut()
            .find(|r| r.name == "off")
            .unwrap()
            .enabled = false;
        stored
    }

    #[test]
    fn a_first_registration_adds_everything_and_enabled_rules_listen_from_now() {
        let disk = pack(vec![rule("a", "rules/a.yaml", true, "core.noop")]);
        let (stored, changes) = merge(&pack(vec![]), disk, Mode::Start, at(5));
        assert_eq!(names(&stored), ["a"]);
        assert_eq!(find(&stored, "a").enabled_since, Some(at(5)));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].to_string(), "rule p.a added from rules/a.yaml");
        assert!(stored.registered.contains_key("rules/a"));
    }

    #[test]
    fn a_start_keeps_api_content_and_edits_of_unchanged_files() {
        let disk = pack(vec![
            rule("a", "rules/a.yaml", true, "core.noop"),
            rule("off", "rules/off.yaml", true, "core.noop"),
        ]);
        let stored = registered_then_edited(&disk);
        let (after, changes) = merge(&stored, disk, Mode::Start, at(10));
        assert_eq!(changes, vec![]);
        assert_eq!(names(&after), ["a", "off", "api"]);
        assert!(!find(&after, "off").enabled);
        assert_eq!(find(&after, "a").enabled_since, Some(at(0)));
    }

    #[test]
    fn a_start_takes_files_that_changed_appeared_or_went() {
        let disk = pack(vec![
            rule("a", "rules/a.yaml", true, "core.noop"),
            rule("off", "rules/off.yaml", true, "core.noop"),
        ]);
        let stored = registered_then_edited(&disk);
        let disk = pack(vec![
            rule("a", "rules/a.yaml", true, "core.local"),
            rule("new", "rules/new.yaml", false, "core.noop"),
        ]);
        let (after, changes) = merge(&stored, disk, Mode::Start, at(10));
        let said: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                "rule p.a updated from rules/a.yaml (action as the file says)",
                "rule p.new added from rules/new.yaml",
                "rule p.off removed: rules/off.yaml is gone",
            ]
        );
        assert_eq!(names(&after), ["a", "api", "new"]);
        // Still enabled: it keeps listening since it was first enabled.
        assert_eq!(find(&after, "a").enabled_since, Some(at(0)));
        assert_eq!(find(&after, "new").enabled_since, None);
    }

    #[test]
    fn a_start_does_not_bring_back_a_rule_deleted_through_the_api() {
        let disk = pack(vec![rule("a", "rules/a.yaml", true, "core.noop")]);
        let (mut stored, _) = merge(&pack(vec![]), disk.clone(), Mode::Start, at(0));
        stored.rules.clear();
        let (after, changes) = merge(&stored, disk.clone(), Mode::Start, at(1));
        assert!(after.rules.is_empty() && changes.is_empty());
        // An explicit registration does, and says so.
        let (after, changes) = merge(&stored, disk, Mode::Explicit, at(2));
        assert_eq!(names(&after), ["a"]);
        assert_eq!(changes[0].what, ChangeKind::Added);
    }

    #[test]
    fn an_explicit_registration_writes_the_files_over_edits_and_says_what_it_changed() {
        let disk = pack(vec![
            rule("a", "rules/a.yaml", true, "core.noop"),
            rule("off", "rules/off.yaml", true, "core.noop"),
        ]);
        let stored = registered_then_edited(&disk);
        let (after, changes) = merge(&stored, disk, Mode::Explicit, at(20));
        let said: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            ["rule p.off updated from rules/off.yaml (enabled as the file says)"]
        );
        assert_eq!(names(&after), ["a", "off", "api"]);
        // Enabled again by the file: it listens from now, not from before.
        assert_eq!(find(&after, "off").enabled_since, Some(at(20)));
        assert_eq!(find(&after, "a").enabled_since, Some(at(0)));
    }

    #[test]
    fn a_file_named_like_api_content_replaces_it_and_a_stale_disk_item_goes() {
        let stored = pack(vec![
            rule("x", "", true, "core.noop"),
            rule("old", "rules/old.yaml", true, "core.noop"),
        ]);
        let disk = pack(vec![rule("x", "rules/x.yaml", true, "core.local")]);
        let (after, changes) = merge(&stored, disk, Mode::Explicit, at(1));
        let said: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                "rule p.x, created through the API, replaced by rules/x.yaml",
                "rule p.old removed: rules/old.yaml is gone",
            ]
        );
        assert_eq!(names(&after), ["x"]);
    }

    #[test]
    fn a_pack_stored_before_digests_keeps_its_items_on_start() {
        let mut stored = pack(vec![rule("a", "rules/a.yaml", false, "core.noop")]);
        stored.registered.clear();
        let disk = pack(vec![rule("a", "rules/a.yaml", true, "core.noop")]);
        let (after, changes) = merge(&stored, disk, Mode::Start, at(1));
        assert!(changes.is_empty());
        assert!(!find(&after, "a").enabled);
        assert!(after.registered.contains_key("rules/a"));
    }

    #[test]
    fn enabling_starts_listening_and_disabling_stops() {
        let mut r = rule("a", "", true, "core.noop");
        r.carry_state(None, at(1));
        assert_eq!(r.enabled_since, Some(at(1)));
        let mut same = r.clone();
        same.carry_state(Some(&r), at(2));
        assert_eq!(same.enabled_since, Some(at(1)));
        let mut off = rule("a", "", false, "core.noop");
        off.carry_state(Some(&r), at(3));
        assert_eq!(off.enabled_since, None);
        let mut on = rule("a", "", true, "core.noop");
        on.carry_state(Some(&off), at(4));
        assert_eq!(on.enabled_since, Some(at(4)));
    }
}
