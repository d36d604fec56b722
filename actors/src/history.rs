//! Execution history: every execution record summarised in memory, ordered
//! by request time, so `GET /executions` pages and filters (status, action,
//! rule, trigger instance, parent, user, time range) without reading the
//! bucket. The newest [`CACHED_RECORDS`] records are also kept whole (as
//! stored bytes), so the pages people look at most cost no bus round trip;
//! older pages read their records from the `executions` bucket. Kept
//! current by a [`Mirrored`] watch.

use std::collections::{BTreeSet, HashMap};

use async_nats::jetstream::kv;
use bytes::Bytes;
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
}

/// One page of a list: the ids shown, in order, and how many match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub ids: Vec<String>,
    pub total: usize,
}

type Ordered = BTreeSet<(Timestamp, String)>;

/// How many of the newest records a node keeps whole (about 1.5 KB each
/// for a shell action's record).
pub const CACHED_RECORDS: usize = 20_000;

/// The fields lists filter on by equality, each with an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Field {
    Status,
    Action,
    Runner,
    /// Indexed under both the rule's ref and its id.
    Rule,
    TriggerInstance,
    /// `""` for top-level executions.
    Parent,
    User,
}

/// The index entries of one execution.
fn index_terms(s: &Summary) -> Vec<(Field, String)> {
    let mut terms = vec![
        (Field::Status, s.status.as_str().to_string()),
        (Field::Action, s.action.action_ref.clone()),
        (Field::Runner, s.runner.name.clone()),
        (Field::Parent, s.parent.clone().unwrap_or_default()),
    ];
    if let Some(rule) = &s.rule {
        terms.push((Field::Rule, rule.reference.clone()));
        terms.push((Field::Rule, rule.id.clone()));
    }
    if let Some(t) = &s.trigger_instance {
        terms.push((Field::TriggerInstance, t.id.clone()));
    }
    if let Some(user) = s.user() {
        terms.push((Field::User, user.to_string()));
    }
    terms
}

impl Filter {
    /// The indexed equality constraints, and whether they are all of it.
    fn index_terms(&self) -> (Vec<(Field, String)>, bool) {
        let mut terms = Vec::new();
        let mut push = |field, value: &Option<String>| {
            if let Some(v) = value {
                terms.push((field, v.clone()));
            }
        };
        push(Field::Status, &self.status.map(|s| s.as_str().to_string()));
        push(Field::Action, &self.action);
        push(Field::Runner, &self.runner);
        push(Field::Rule, &self.rule);
        push(Field::TriggerInstance, &self.trigger_instance);
        push(
            Field::Parent,
            &self.parent.as_ref().map(|p| p.clone().unwrap_or_default()),
        );
        push(Field::User, &self.user);
        let unindexed = self.id.is_some()
            || self.trigger.is_some()
            || self.trigger_type.is_some()
            || self.after.is_some()
            || self.before.is_some();
        (terms, !unindexed)
    }
}

/// Every execution, summarised and indexed; the newest also whole.
pub struct History {
    by_id: HashMap<String, Summary>,
    order: Ordered,
    indices: HashMap<(Field, String), Ordered>,
    cached: HashMap<String, Bytes>,
    cached_order: Ordered,
    cache_limit: usize,
}

impl Default for History {
    fn default() -> Self {
        History::with_cache(CACHED_RECORDS)
    }
}

impl History {
    /// An empty history keeping at most `cache_limit` records whole.
    pub fn with_cache(cache_limit: usize) -> History {
        History {
            by_id: HashMap::new(),
            order: Ordered::new(),
            indices: HashMap::new(),
            cached: HashMap::new(),
            cached_order: Ordered::new(),
            cache_limit,
        }
    }

    /// The stored bytes of a record, when it is among the newest.
    pub fn record_bytes(&self, id: &str) -> Option<Bytes> {
        self.cached.get(id).cloned()
    }

    /// Number of executions recorded.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no execution is recorded.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The executions `filter` keeps, newest first unless `ascending`,
    /// skipping `offset` and showing at most `limit`. Walks the smallest
    /// index among the filter's equality constraints (everything when it
    /// has none); a filter that is one indexed constraint costs only the
    /// page.
    pub fn page(&self, filter: &Filter, ascending: bool, offset: usize, limit: usize) -> Page {
        static EMPTY: Ordered = Ordered::new();
        let (terms, all_indexed) = filter.index_terms();
        let candidates = terms
            .iter()
            .map(|t| self.indices.get(t).unwrap_or(&EMPTY))
            .min_by_key(|set| set.len())
            .unwrap_or(&self.order);
        let ordered: Box<dyn Iterator<Item = &(Timestamp, String)>> = if ascending {
            Box::new(candidates.iter())
        } else {
            Box::new(candidates.iter().rev())
        };
        if all_indexed && terms.len() <= 1 {
            let ids = ordered
                .skip(offset)
                .take(limit)
                .map(|(_, id)| id.clone())
                .collect();
            return Page {
                ids,
                total: candidates.len(),
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
        if depth == Some(0) || id.is_empty() {
            return;
        }
        let key = (Field::Parent, id.to_string());
        for (_, child) in self.indices.get(&key).into_iter().flatten() {
            out.push(child.clone());
            self.collect_children(child, depth.map(|d| d - 1), out);
        }
    }

    /// The summary of one execution.
    pub fn get(&self, id: &str) -> Option<&Summary> {
        self.by_id.get(id)
    }

    fn remove(&mut self, id: &str) {
        let Some(old) = self.by_id.remove(id) else {
            return;
        };
        let key = (old.start_timestamp, old.id.clone());
        self.order.remove(&key);
        if self.cached.remove(id).is_some() {
            self.cached_order.remove(&key);
        }
        for term in index_terms(&old) {
            if let Some(set) = self.indices.get_mut(&term) {
                set.remove(&key);
                if set.is_empty() {
                    self.indices.remove(&term);
                }
            }
        }
    }

    fn insert(&mut self, summary: Summary, bytes: Bytes) {
        self.remove(&summary.id);
        let key = (summary.start_timestamp, summary.id.clone());
        self.order.insert(key.clone());
        for term in index_terms(&summary) {
            self.indices.entry(term).or_default().insert(key.clone());
        }
        self.cached.insert(summary.id.clone(), bytes);
        self.cached_order.insert(key);
        while self.cached_order.len() > self.cache_limit {
            if let Some((_, oldest)) = self.cached_order.pop_first() {
                self.cached.remove(&oldest);
            }
        }
        self.by_id.insert(summary.id.clone(), summary);
    }
}

impl Mirror for History {
    fn apply(&mut self, entry: &kv::Entry) {
        match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<Summary>(&entry.value) {
                Ok(summary) => self.insert(summary, entry.value.clone()),
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

/// Runs `sweep` with the current time every `period` until `stop`: the
/// sweeps API nodes make over the history (inquiry expiry, orphaned
/// executions). A failed sweep is logged as `what` and tried next period.
pub async fn sweep_every<F, Fut>(
    period: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
    what: &str,
    mut sweep: F,
) where
    F: FnMut(Timestamp) -> Fut,
    Fut: std::future::Future<Output = Result<usize, EngineError>>,
{
    let mut every = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = sweep(squall_domain::time::now()).await {
            tracing::warn!(error = %e, "{what} failed");
        }
    }
}

/// Loads the history from the `executions` bucket and follows it.
pub async fn start(bus: &Bus) -> Result<HistoryHandle, EngineError> {
    Mirrored::start(bus.executions.raw(), "executions").await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(id: &str, second: u32, status: &str, parent: Option<&str>) -> (Summary, Bytes) {
        let value = json!({
            "id": id,
            "start_timestamp": format!("2026-01-01T00:00:{second:02}.000000Z"),
            "status": status,
            "action": {"ref": if parent.is_some() { "core.noop" } else { "core.local" }},
            "runner": {"name": "local-shell-cmd"},
            "parent": parent,
            "context": {"user": "alice"},
            "result": {"stdout": "large and skipped"},
        });
        let bytes = Bytes::from(value.to_string());
        (serde_json::from_value(value).unwrap(), bytes)
    }

    fn put(h: &mut History, (summary, bytes): (Summary, Bytes)) {
        h.insert(summary, bytes);
    }

    fn history() -> History {
        let mut h = History::with_cache(2);
        put(&mut h, record("a", 1, "succeeded", None));
        put(&mut h, record("b", 2, "failed", None));
        put(&mut h, record("c", 3, "succeeded", Some("a")));
        put(&mut h, record("d", 4, "running", Some("c")));
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
        put(&mut h, record("d", 4, "succeeded", Some("c")));
        assert_eq!(h.len(), 4);
        assert_eq!(h.get("d").unwrap().status, Status::Succeeded);
        h.remove("c");
        assert_eq!(h.descendants("a", None), Vec::<String>::new());
        assert_eq!(h.page(&Filter::default(), true, 0, 10).total, 3);
    }

    #[test]
    fn indexed_pages_equal_a_full_scan() {
        let statuses = ["succeeded", "failed", "running"];
        let actions = ["core.noop", "core.local", "x.y"];
        let mut h = History::with_cache(10);
        for i in 0..300u32 {
            let parent = (i % 7 == 0 && i > 0).then(|| format!("{:024}", i - 1));
            let value = json!({
                "id": format!("{i:024}"),
                "start_timestamp": format!("2026-01-01T00:{:02}:{:02}.000000Z", i / 60, i % 60),
                "status": statuses[(i % 3) as usize],
                "action": {"ref": actions[(i / 3 % 3) as usize]},
                "runner": {"name": "noop"},
                "parent": parent,
                "rule": (i % 2 == 0).then(|| json!({"id": "r1", "ref": "p.r"})),
                "context": {"user": if i % 5 == 0 { "bob" } else { "alice" }},
            });
            put(
                &mut h,
                (
                    serde_json::from_value(value.clone()).unwrap(),
                    Bytes::from(value.to_string()),
                ),
            );
        }
        let filters = [
            Filter {
                action: Some("core.local".into()),
                ..Filter::default()
            },
            Filter {
                status: Some(Status::Failed),
                user: Some("bob".into()),
                ..Filter::default()
            },
            Filter {
                rule: Some("r1".into()),
                ..Filter::default()
            },
            Filter {
                rule: Some("p.r".into()),
                action: Some("x.y".into()),
                ..Filter::default()
            },
            Filter {
                parent: Some(None),
                status: Some(Status::Running),
                ..Filter::default()
            },
            Filter {
                parent: Some(Some(format!("{:024}", 6))),
                ..Filter::default()
            },
            Filter {
                user: Some("nobody".into()),
                ..Filter::default()
            },
            Filter {
                after: h.get(&format!("{:024}", 100)).map(|s| s.start_timestamp),
                action: Some("core.noop".into()),
                ..Filter::default()
            },
        ];
        for filter in &filters {
            for (ascending, offset, limit) in [(false, 0, 5), (true, 3, 7), (false, 40, 100)] {
                let mut all: Vec<&Summary> = h.by_id.values().filter(|s| filter.keeps(s)).collect();
                all.sort_by_key(|s| (s.start_timestamp, s.id.clone()));
                if !ascending {
                    all.reverse();
                }
                let expected = Page {
                    ids: all
                        .iter()
                        .skip(offset)
                        .take(limit)
                        .map(|s| s.id.clone())
                        .collect(),
                    total: all.len(),
                };
                assert_eq!(
                    h.page(filter, ascending, offset, limit),
                    expected,
                    "{filter:?}"
                );
            }
        }
    }

    #[test]
    fn only_the_newest_records_are_kept_whole() {
        let mut h = history();
        assert!(h.record_bytes("a").is_none() && h.record_bytes("b").is_none());
        let d = h.record_bytes("d").expect("newest is cached");
        assert!(String::from_utf8_lossy(&d).contains("\"running\""));
        // An update replaces the cached bytes; a newer record pushes out the oldest.
        put(&mut h, record("d", 4, "succeeded", Some("c")));
        assert!(String::from_utf8_lossy(&h.record_bytes("d").unwrap()).contains("\"succeeded\""));
        put(&mut h, record("e", 5, "succeeded", None));
        assert!(h.record_bytes("c").is_none());
        assert!(h.record_bytes("d").is_some() && h.record_bytes("e").is_some());
        h.remove("e");
        assert!(h.record_bytes("e").is_none());
    }
}
