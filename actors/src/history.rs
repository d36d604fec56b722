//! Execution history: every execution record summarised in memory, ordered
//! by request time, so `GET /executions` pages and filters (status, action,
//! rule, trigger instance, parent, user, time range) without reading the
//! bucket. The records stay in the `executions` bucket; a page reads only
//! the records it shows. Kept current by a [`Mirrored`] watch.

use std::collections::{BTreeSet, HashMap};

use async_nats::jetstream::kv;
use serde::Deserialize;
use squall_domain::execution::Status;
use squall_domain::time::{serde_ts, Timestamp};

use crate::bus::Bus;
use crate::error::EngineError;
use crate::mirror::{Mirror, Mirrored};

/// The fields of an execution record that lists filter on. Read from the
/// stored record, skipping everything else (results can be large).
#[derive(Debug, Clone, Deserialize)]
pub struct Summary {
    pub id: String,
    #[serde(with = "serde_ts")]
    pub start_timestamp: Timestamp,
    pub status: Status,
    pub action: ActionRef,
    pub runner: RunnerName,
    #[serde(default)]
    pub rule: Option<Reference>,
    #[serde(default)]
    pub trigger_instance: Option<InstanceRef>,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    context: UserContext,
}

impl Summary {
    /// The user the execution runs for.
    pub fn user(&self) -> Option<&str> {
        self.context.user.as_deref()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ActionRef {
    #[serde(rename = "ref")]
    pub action_ref: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RunnerName {
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Reference {
    pub id: String,
    #[serde(rename = "ref")]
    pub reference: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InstanceRef {
    pub id: String,
    pub trigger: String,
    pub trigger_type: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct UserContext {
    #[serde(default)]
    user: Option<String>,
}

/// Which executions a list shows. Every `Some` must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub id: Option<String>,
    pub status: Option<Status>,
    pub action: Option<String>,
    pub runner: Option<String>,
    /// A rule's ref or id.
    pub rule: Option<String>,
    pub trigger_instance: Option<String>,
    pub trigger: Option<String>,
    pub trigger_type: Option<String>,
    /// `Some(None)`: top-level executions only (StackStorm's `parent=null`).
    pub parent: Option<Option<String>>,
    pub user: Option<String>,
    /// Requested strictly after.
    pub after: Option<Timestamp>,
    /// Requested strictly before.
    pub before: Option<Timestamp>,
}

impl Filter {
    /// Whether `s` is shown.
    pub fn keeps(&self, s: &Summary) -> bool {
        fn eq(want: &Option<String>, have: Option<&str>) -> bool {
            want.as_deref().is_none_or(|w| have == Some(w))
        }
        eq(&self.id, Some(&s.id))
            && self.status.is_none_or(|st| st == s.status)
            && eq(&self.action, Some(&s.action.action_ref))
            && eq(&self.runner, Some(&s.runner.name))
            && self.rule.as_deref().is_none_or(|r| {
                s.rule
                    .as_ref()
                    .is_some_and(|rule| rule.reference == r || rule.id == r)
            })
            && eq(
                &self.trigger_instance,
                s.trigger_instance.as_ref().map(|t| t.id.as_str()),
            )
            && eq(
                &self.trigger,
                s.trigger_instance.as_ref().map(|t| t.trigger.as_str()),
            )
            && eq(
                &self.trigger_type,
                s.trigger_instance.as_ref().map(|t| t.trigger_type.as_str()),
            )
            && self
                .parent
                .as_ref()
                .is_none_or(|p| p.as_deref() == s.parent.as_deref())
            && eq(&self.user, s.user())
            && self.after.is_none_or(|t| s.start_timestamp > t)
            && self.before.is_none_or(|t| s.start_timestamp < t)
    }

    fn is_empty(&self) -> bool {
        self.id.is_none()
            && self.status.is_none()
            && self.action.is_none()
            && self.runner.is_none()
            && self.rule.is_none()
            && self.trigger_instance.is_none()
            && self.trigger.is_none()
            && self.trigger_type.is_none()
            && self.parent.is_none()
            && self.user.is_none()
            && self.after.is_none()
            && self.before.is_none()
    }
}

/// One page of a list: the ids shown, in order, and how many match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub ids: Vec<String>,
    pub total: usize,
}

type Ordered = BTreeSet<(Timestamp, String)>;

/// Every execution, summarised.
#[derive(Default)]
pub struct History {
    by_id: HashMap<String, Summary>,
    order: Ordered,
    children: HashMap<String, Ordered>,
}

impl History {
    /// Number of executions recorded.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no execution is recorded.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The executions `filter` keeps, newest first unless `ascending`,
    /// skipping `offset` and showing at most `limit`.
    pub fn page(&self, filter: &Filter, ascending: bool, offset: usize, limit: usize) -> Page {
        let ordered: Box<dyn Iterator<Item = &(Timestamp, String)>> = if ascending {
            Box::new(self.order.iter())
        } else {
            Box::new(self.order.iter().rev())
        };
        if filter.is_empty() {
            let ids = ordered
                .skip(offset)
                .take(limit)
                .map(|(_, id)| id.clone())
                .collect();
            return Page {
                ids,
                total: self.by_id.len(),
            };
        }
        let mut ids = Vec::new();
        let mut total = 0;
        for (_, id) in ordered {
            if !self.by_id.get(id).is_some_and(|s| filter.keeps(s)) {
                continue;
            }
            if total >= offset && ids.len() < limit {
                ids.push(id.clone());
            }
            total += 1;
        }
        Page { ids, total }
    }

    /// The descendants of `id`, parents before their children, oldest
    /// first; `depth` levels down (`None`: all).
    pub fn descendants(&self, id: &str, depth: Option<usize>) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_children(id, depth, &mut out);
        out
    }

    fn collect_children(&self, id: &str, depth: Option<usize>, out: &mut Vec<String>) {
        if depth == Some(0) {
            return;
        }
        for (_, child) in self.children.get(id).into_iter().flatten() {
            out.push(child.clone());
            self.collect_children(child, depth.map(|d| d - 1), out);
        }
    }

    /// The summary of one execution.
    pub fn get(&self, id: &str) -> Option<&Summary> {
        self.by_id.get(id)
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            let key = (old.start_timestamp, old.id);
            self.order.remove(&key);
            if let Some(parent) = old.parent {
                if let Some(siblings) = self.children.get_mut(&parent) {
                    siblings.remove(&key);
                    if siblings.is_empty() {
                        self.children.remove(&parent);
                    }
                }
            }
        }
    }

    fn insert(&mut self, summary: Summary) {
        self.remove(&summary.id);
        let key = (summary.start_timestamp, summary.id.clone());
        self.order.insert(key.clone());
        if let Some(parent) = &summary.parent {
            self.children.entry(parent.clone()).or_default().insert(key);
        }
        self.by_id.insert(summary.id.clone(), summary);
    }
}

impl Mirror for History {
    fn apply(&mut self, entry: &kv::Entry) {
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<Summary>(&entry.value) {
                Ok(summary) => self.insert(summary),
                Err(e) => {
                    tracing::warn!(key = %entry.key, error = %e, "unreadable execution record")
                }
            },
            kv::Operation::Delete | kv::Operation::Purge => self.remove(&entry.key),
        }
    }
}

/// The node's live execution history.
pub type HistoryHandle = Mirrored<History>;

/// Loads the history from the `executions` bucket and follows it.
pub async fn start(bus: &Bus) -> Result<HistoryHandle, EngineError> {
    Mirrored::start(&bus.executions, "executions").await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary(id: &str, second: u32, status: &str, parent: Option<&str>) -> Summary {
        serde_json::from_value(json!({
            "id": id,
            "start_timestamp": format!("2026-01-01T00:00:{second:02}.000000Z"),
            "status": status,
            "action": {"ref": if parent.is_some() { "core.noop" } else { "core.local" }},
            "runner": {"name": "local-shell-cmd"},
            "parent": parent,
            "context": {"user": "alice"},
            "result": {"stdout": "large and skipped"},
        }))
        .unwrap()
    }

    fn history() -> History {
        let mut h = History::default();
        h.insert(summary("a", 1, "succeeded", None));
        h.insert(summary("b", 2, "failed", None));
        h.insert(summary("c", 3, "succeeded", Some("a")));
        h.insert(summary("d", 4, "running", Some("c")));
        h
    }

    #[test]
    fn pages_newest_first_and_counts_every_match() {
        let h = history();
        let all = h.page(&Filter::default(), false, 1, 2);
        assert_eq!(all.ids, vec!["c", "b"]);
        assert_eq!(all.total, 4);
        let asc = h.page(&Filter::default(), true, 0, 10);
        assert_eq!(asc.ids, vec!["a", "b", "c", "d"]);
        let ok = Filter {
            status: Some(Status::Succeeded),
            ..Filter::default()
        };
        assert_eq!(
            h.page(&ok, false, 0, 1),
            Page {
                ids: vec!["c".into()],
                total: 2
            }
        );
    }

    #[test]
    fn filters_by_parent_action_user_and_time() {
        let h = history();
        let top = Filter {
            parent: Some(None),
            ..Filter::default()
        };
        assert_eq!(h.page(&top, true, 0, 10).ids, vec!["a", "b"]);
        let under_a = Filter {
            parent: Some(Some("a".into())),
            action: Some("core.noop".into()),
            user: Some("alice".into()),
            ..Filter::default()
        };
        assert_eq!(h.page(&under_a, true, 0, 10).ids, vec!["c"]);
        let window = Filter {
            after: Some(h.get("a").unwrap().start_timestamp),
            before: Some(h.get("d").unwrap().start_timestamp),
            ..Filter::default()
        };
        assert_eq!(h.page(&window, true, 0, 10).ids, vec!["b", "c"]);
        let nobody = Filter {
            user: Some("bob".into()),
            ..Filter::default()
        };
        assert_eq!(h.page(&nobody, true, 0, 10).total, 0);
    }

    #[test]
    fn descendants_follow_depth_and_updates_replace() {
        let mut h = history();
        assert_eq!(h.descendants("a", None), vec!["c", "d"]);
        assert_eq!(h.descendants("a", Some(1)), vec!["c"]);
        h.insert(summary("d", 4, "succeeded", Some("c")));
        assert_eq!(h.len(), 4);
        assert_eq!(h.get("d").unwrap().status, Status::Succeeded);
        h.remove("c");
        assert_eq!(h.descendants("a", None), Vec::<String>::new());
        assert_eq!(h.page(&Filter::default(), true, 0, 10).total, 3);
    }
}
