//! Execution history: every execution record summarised in a compact
//! in-memory index, so `GET /executions` pages and filters (status, action,
//! runner, rule, trigger instance, trigger, trigger type, parent, user,
//! time range) without reading the bucket.
//!
//! Each execution gets an ordinal; a summary row holds its time and its
//! field values as interned symbols; every field value has a roaring
//! bitmap of the ordinals that carry it, so a filter on several fields is
//! an intersection of compressed bitmaps and `X-Total-Count` is the
//! cardinality of the result. `by_time` holds the ordinals in request-time
//! order for paging. The newest [`CACHED_RECORDS`] records are also kept
//! whole (as stored bytes); older pages read their records from the
//! `executions` bucket in one batched request ([`read_records`]).
//!
//! The index is kept current by a [`Mirrored`] watch. It can be saved to a
//! snapshot file ([`History::snapshot`]) and loaded from one at start, so a
//! restart replays only what changed since; a snapshot that is corrupt
//! (checksum) or belongs to another bucket or a later revision is ignored
//! and the bucket replayed. Until the index has caught up it says so
//! ([`HistoryHandle::is_ready`]) and lists answer 503.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use roaring::RoaringBitmap;
use serde::Deserialize;
use squall_domain::execution::Status;
use squall_domain::time::{serde_opt_ts, serde_ts, Timestamp};

use crate::bus::{Bus, BusOp};
use crate::error::{bus_err, EngineError};
use crate::mirror::{Mirror, Mirrored};
pub use crate::snapshot::SnapshotError;
use crate::snapshot::{self, bitmap_of, In, Origin, Out};

/// The fields of an execution record that lists filter on. Read from the
/// stored record, skipping everything else (results can be large).
#[derive(Debug, Clone, Deserialize)]
pub struct Summary {
    pub id: String,
    #[serde(with = "serde_ts")]
    pub start_timestamp: Timestamp,
    #[serde(default, with = "serde_opt_ts")]
    pub end_timestamp: Option<Timestamp>,
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

/// One page of a list: the ids shown, in order, and how many match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub ids: Vec<String>,
    pub total: usize,
}

/// How many of the newest records a node keeps whole (about 1.5 KB each
/// for a shell action's record).
pub const CACHED_RECORDS: usize = 20_000;

/// Up to this many candidates, a page sorts the candidates rather than
/// walking the time order.
const SORT_LIMIT: u64 = 4096;

/// An interned string.
pub(crate) type Sym = u32;
/// No value.
pub(crate) const NO_SYM: Sym = Sym::MAX;

/// Field values, each stored once.
#[derive(Debug, Default)]
pub(crate) struct Symbols {
    by_text: HashMap<Box<str>, Sym>,
    texts: Vec<Box<str>>,
}

impl Symbols {
    pub(crate) fn intern(&mut self, text: &str) -> Sym {
        if let Some(s) = self.by_text.get(text) {
            return *s;
        }
        let s = self.texts.len() as Sym;
        self.texts.push(text.into());
        self.by_text.insert(text.into(), s);
        s
    }

    fn intern_opt(&mut self, text: Option<&str>) -> Sym {
        text.map_or(NO_SYM, |t| self.intern(t))
    }

    pub(crate) fn find(&self, text: &str) -> Option<Sym> {
        self.by_text.get(text).copied()
    }

    pub(crate) fn text(&self, s: Sym) -> Option<&str> {
        self.texts.get(s as usize).map(|t| &**t)
    }

    /// How many values are interned.
    pub(crate) fn len(&self) -> usize {
        self.texts.len()
    }

    /// Writes the table to a snapshot.
    pub(crate) fn save(&self, out: &mut Out) {
        out.u32(self.texts.len() as u32);
        for t in &self.texts {
            out.str(t);
        }
    }

    /// Reads a table [`Symbols::save`] wrote.
    pub(crate) fn load(r: &mut In<'_>) -> Result<Symbols, SnapshotError> {
        let mut symbols = Symbols::default();
        let n = r.u32()? as usize;
        for _ in 0..n {
            let t = r.str()?;
            symbols.intern(t);
        }
        if symbols.texts.len() != n {
            return Err(SnapshotError::Corrupt("repeated symbol".into()));
        }
        Ok(symbols)
    }
}

/// The low-cardinality fields lists filter on, each value with a bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Field {
    Status,
    Action,
    Runner,
    /// Indexed under both the rule's ref and its id.
    Rule,
    Trigger,
    TriggerType,
    User,
}

/// The ordinals of a value that few executions share (a trigger
/// instance, a parent): one ordinal stored inline, more as a bitmap.
#[derive(Debug)]
pub(crate) enum Posting {
    One(u32),
    Many(RoaringBitmap),
}

impl Posting {
    pub(crate) fn add(&mut self, ord: u32) {
        match self {
            Posting::One(o) if *o == ord => {}
            Posting::One(o) => *self = Posting::Many([*o, ord].into_iter().collect()),
            Posting::Many(b) => {
                b.insert(ord);
            }
        }
    }

    /// Removes `ord`; whether the posting is now empty.
    pub(crate) fn remove(&mut self, ord: u32) -> bool {
        match self {
            Posting::One(o) => *o == ord,
            Posting::Many(b) => {
                b.remove(ord);
                b.is_empty()
            }
        }
    }

    pub(crate) fn bitmap(&self) -> RoaringBitmap {
        match self {
            Posting::One(o) => [*o].into_iter().collect(),
            Posting::Many(b) => b.clone(),
        }
    }

    /// The ordinals, borrowed when they are a bitmap already.
    pub(crate) fn ordinals(&self) -> Cow<'_, RoaringBitmap> {
        match self {
            Posting::One(o) => Cow::Owned([*o].into_iter().collect()),
            Posting::Many(b) => Cow::Borrowed(b),
        }
    }
}

/// One execution, summarised.
#[derive(Debug)]
struct Row {
    id: Box<str>,
    start: Timestamp,
    end: Option<Timestamp>,
    status: Status,
    action: Sym,
    runner: Sym,
    rule_ref: Sym,
    rule_id: Sym,
    trigger: Sym,
    trigger_type: Sym,
    user: Sym,
    trigger_instance: Option<Box<str>>,
    parent: Option<Box<str>>,
}

impl Row {
    fn terms(&self, status: Sym) -> [(Field, Sym); 8] {
        [
            (Field::Status, status),
            (Field::Action, self.action),
            (Field::Runner, self.runner),
            (Field::Rule, self.rule_ref),
            (Field::Rule, self.rule_id),
            (Field::Trigger, self.trigger),
            (Field::TriggerType, self.trigger_type),
            (Field::User, self.user),
        ]
    }
}

/// What retention needs to know of one execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub status: Status,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    pub runner: String,
    pub parent: Option<String>,
}

/// Which executions a purge removes (StackStorm's `st2-purge-executions`):
/// finished ones requested and ended before `before`.
#[derive(Debug, Clone)]
pub struct PurgeFilter {
    pub before: Timestamp,
    pub action: Option<String>,
    /// One finished status; `None`: any finished status.
    pub status: Option<Status>,
}

/// Every execution, summarised and indexed; the newest also whole.
#[derive(Debug)]
pub struct History {
    /// By ordinal. A deleted execution's row stays (out of every index)
    /// until the next compaction.
    rows: Vec<Row>,
    ids: HashMap<Box<str>, u32>,
    live: RoaringBitmap,
    /// Ordinals by (request time, id), deleted ones included until the
    /// next compaction. Unsorted while a load is under way.
    by_time: Vec<u32>,
    sorted: bool,
    dead: usize,
    symbols: Symbols,
    terms: HashMap<(Field, Sym), RoaringBitmap>,
    top_level: RoaringBitmap,
    instances: HashMap<Box<str>, Posting>,
    children: HashMap<Box<str>, Posting>,
    cached: HashMap<u32, Bytes>,
    cached_order: BTreeSet<(Timestamp, u32)>,
    cache_limit: usize,
    /// The last bucket revision applied.
    revision: u64,
    /// The revision of the snapshot this was loaded from.
    loaded_revision: Option<u64>,
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
            rows: Vec::new(),
            ids: HashMap::new(),
            live: RoaringBitmap::new(),
            by_time: Vec::new(),
            sorted: true,
            dead: 0,
            symbols: Symbols::default(),
            terms: HashMap::new(),
            top_level: RoaringBitmap::new(),
            instances: HashMap::new(),
            children: HashMap::new(),
            cached: HashMap::new(),
            cached_order: BTreeSet::new(),
            cache_limit,
            revision: 0,
            loaded_revision: None,
        }
    }

    /// The stored bytes of a record, when it is among the newest.
    pub fn record_bytes(&self, id: &str) -> Option<Bytes> {
        self.ids.get(id).and_then(|o| self.cached.get(o)).cloned()
    }

    /// Number of executions recorded.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no execution is recorded.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether execution `id` is recorded.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    /// The last bucket revision folded in.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The indexed fields of execution `id`, as its record gives them.
    pub fn summary(&self, id: &str) -> Option<Summary> {
        let row = &self.rows[*self.ids.get(id)? as usize];
        let text = |sym: Sym| self.symbols.text(sym).unwrap_or("").to_string();
        let rule = (!text(row.rule_ref).is_empty()).then(|| Reference {
            id: text(row.rule_id),
            reference: text(row.rule_ref),
        });
        Some(Summary {
            id: row.id.to_string(),
            start_timestamp: row.start,
            end_timestamp: row.end,
            status: row.status,
            action: ActionRef {
                action_ref: text(row.action),
            },
            runner: RunnerName {
                name: text(row.runner),
            },
            rule,
            trigger_instance: row.trigger_instance.as_deref().map(|ti| InstanceRef {
                id: ti.to_string(),
                trigger: text(row.trigger),
                trigger_type: text(row.trigger_type),
            }),
            parent: row.parent.as_deref().map(str::to_string),
            context: UserContext {
                user: (!text(row.user).is_empty()).then(|| text(row.user)),
            },
        })
    }

    /// What retention needs to know of execution `id`.
    pub fn info(&self, id: &str) -> Option<Info> {
        let row = &self.rows[*self.ids.get(id)? as usize];
        Some(Info {
            status: row.status,
            start: row.start,
            end: row.end,
            runner: self.symbols.text(row.runner).unwrap_or("").to_string(),
            parent: row.parent.as_deref().map(str::to_string),
        })
    }

    fn cmp_ord(&self, a: u32, b: u32) -> Ordering {
        let (ra, rb) = (&self.rows[a as usize], &self.rows[b as usize]);
        ra.start.cmp(&rb.start).then_with(|| ra.id.cmp(&rb.id))
    }

    /// The ordinals an equality filter keeps, before the time range;
    /// `None` when a named value is unknown (nothing matches).
    fn candidates(&self, filter: &Filter) -> Option<Cow<'_, RoaringBitmap>> {
        let mut sets: Vec<Cow<'_, RoaringBitmap>> = Vec::new();
        if let Some(id) = &filter.id {
            sets.push(Cow::Owned(
                [*self.ids.get(id.as_str())?].into_iter().collect(),
            ));
        }
        let mut term = |field: Field, value: Option<&str>| -> Option<()> {
            if let Some(v) = value {
                let sym = self.symbols.find(v)?;
                sets.push(Cow::Borrowed(self.terms.get(&(field, sym))?));
            }
            Some(())
        };
        term(Field::Status, filter.status.map(Status::as_str))?;
        term(Field::Action, filter.action.as_deref())?;
        term(Field::Runner, filter.runner.as_deref())?;
        term(Field::Rule, filter.rule.as_deref())?;
        term(Field::Trigger, filter.trigger.as_deref())?;
        term(Field::TriggerType, filter.trigger_type.as_deref())?;
        term(Field::User, filter.user.as_deref())?;
        if let Some(t) = &filter.trigger_instance {
            sets.push(Cow::Owned(self.instances.get(t.as_str())?.bitmap()));
        }
        match &filter.parent {
            None => {}
            Some(None) => sets.push(Cow::Borrowed(&self.top_level)),
            Some(Some(p)) => sets.push(Cow::Owned(self.children.get(p.as_str())?.bitmap())),
        }
        sets.sort_by_key(|s| s.len());
        let mut sets = sets.into_iter();
        let Some(first) = sets.next() else {
            return Some(Cow::Borrowed(&self.live));
        };
        Some(sets.fold(first, |acc, s| Cow::Owned(acc.into_owned() & &*s)))
    }

    /// The executions `filter` keeps, newest first unless `ascending`,
    /// skipping `offset` and showing at most `limit`, and how many it
    /// keeps. Equality constraints intersect their bitmaps; a few
    /// candidates are sorted, many are found by walking the time order.
    pub fn page(&self, filter: &Filter, ascending: bool, offset: usize, limit: usize) -> Page {
        let Some(cand) = self.candidates(filter) else {
            return Page {
                ids: vec![],
                total: 0,
            };
        };
        let start = |o: u32| self.rows[o as usize].start;
        let in_range = |t: Timestamp| {
            filter.after.is_none_or(|a| t > a) && filter.before.is_none_or(|b| t < b)
        };
        let lo = filter
            .after
            .map_or(0, |a| self.by_time.partition_point(|o| start(*o) <= a));
        let hi = filter.before.map_or(self.by_time.len(), |b| {
            self.by_time.partition_point(|o| start(*o) < b)
        });
        let hi = hi.max(lo);
        let span = (hi - lo) as u64;
        if self.dead == 0 && std::ptr::eq(&*cand, &self.live) {
            // No equality filter and no deleted rows in the order: the
            // page is a slice of it, however deep.
            let slice = &self.by_time[lo..hi];
            let ords: Box<dyn Iterator<Item = &u32>> = if ascending {
                Box::new(slice.iter().skip(offset).take(limit))
            } else {
                Box::new(slice.iter().rev().skip(offset).take(limit))
            };
            return Page {
                ids: self.ids_of(ords.copied()),
                total: slice.len(),
            };
        }
        if cand.len() <= SORT_LIMIT || cand.len().saturating_mul(16) < span {
            let mut ords: Vec<u32> = cand.iter().filter(|o| in_range(start(*o))).collect();
            ords.sort_unstable_by(|a, b| self.cmp_ord(*a, *b));
            if !ascending {
                ords.reverse();
            }
            return Page {
                total: ords.len(),
                ids: self.ids_of(ords.into_iter().skip(offset).take(limit)),
            };
        }
        let slice = &self.by_time[lo..hi];
        let walk: Box<dyn Iterator<Item = &u32>> = if ascending {
            Box::new(slice.iter())
        } else {
            Box::new(slice.iter().rev())
        };
        let matching = walk.copied().filter(|o| cand.contains(*o));
        if lo == 0 && hi == self.by_time.len() {
            // The whole order: the count is the bitmap's.
            let ids = self.ids_of(matching.skip(offset).take(limit));
            return Page {
                ids,
                total: cand.len() as usize,
            };
        }
        let mut ids = Vec::new();
        let mut total = 0;
        for o in matching {
            if total >= offset && ids.len() < limit {
                ids.push(self.rows[o as usize].id.to_string());
            }
            total += 1;
        }
        Page { ids, total }
    }

    fn ids_of(&self, ords: impl Iterator<Item = u32>) -> Vec<String> {
        ords.map(|o| self.rows[o as usize].id.to_string()).collect()
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
        let Some(posting) = self.children.get(id) else {
            return;
        };
        let mut ords: Vec<u32> = posting.bitmap().iter().collect();
        ords.sort_unstable_by(|a, b| self.cmp_ord(*a, *b));
        for o in ords {
            let child = self.rows[o as usize].id.to_string();
            out.push(child.clone());
            self.collect_children(&child, depth.map(|d| d - 1), out);
        }
    }

    /// The oldest executions a purge of `filter` would remove as roots
    /// (top-level, or whose parent is gone), after `cursor` (a previous
    /// call's last id) in time order, at most `limit`. A root's
    /// descendants go with it; retention checks them.
    pub fn purgeable(
        &self,
        filter: &PurgeFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Vec<String> {
        let from = match cursor.and_then(|c| self.ids.get(c)) {
            Some(c) => self
                .by_time
                .partition_point(|o| self.cmp_ord(*o, *c).is_le()),
            None => 0,
        };
        let action = filter.action.as_deref().map(|a| self.symbols.find(a));
        if action == Some(None) {
            return vec![];
        }
        self.by_time[from..]
            .iter()
            .map(|o| (*o, &self.rows[*o as usize]))
            .take_while(|(_, r)| r.start < filter.before)
            .filter(|(o, r)| {
                self.live.contains(*o)
                    && r.status.is_completed()
                    && filter.status.is_none_or(|s| s == r.status)
                    && r.end.is_some_and(|e| e < filter.before)
                    && action.is_none_or(|a| a == Some(r.action))
                    && r.parent
                        .as_deref()
                        .is_none_or(|p| !self.ids.contains_key(p))
            })
            .take(limit)
            .map(|(_, r)| r.id.to_string())
            .collect()
    }

    fn index(&mut self, o: u32) {
        let row = &self.rows[o as usize];
        let status = self.symbols.find(row.status.as_str()).unwrap_or(NO_SYM);
        for term in row.terms(status) {
            if term.1 != NO_SYM {
                self.terms.entry(term).or_default().insert(o);
            }
        }
        match &row.parent {
            None => {
                self.top_level.insert(o);
            }
            Some(p) => add_posting(&mut self.children, p, o),
        }
        if let Some(t) = &row.trigger_instance {
            add_posting(&mut self.instances, t, o);
        }
        self.live.insert(o);
    }

    fn unindex(&mut self, o: u32) {
        let row = &self.rows[o as usize];
        let status = self.symbols.find(row.status.as_str()).unwrap_or(NO_SYM);
        for term in row.terms(status) {
            if let Some(set) = self.terms.get_mut(&term) {
                set.remove(o);
                if set.is_empty() {
                    self.terms.remove(&term);
                }
            }
        }
        let drop_posting = |map: &mut HashMap<Box<str>, Posting>, key: &str| {
            if map.get_mut(key).is_some_and(|p| p.remove(o)) {
                map.remove(key);
            }
        };
        match &row.parent {
            None => {
                self.top_level.remove(o);
            }
            Some(p) => drop_posting(&mut self.children, p),
        }
        if let Some(t) = &row.trigger_instance {
            drop_posting(&mut self.instances, t);
        }
        self.live.remove(o);
    }

    fn row_of(&mut self, s: &Summary) -> Row {
        let sym = &mut self.symbols;
        sym.intern(s.status.as_str());
        let instance = s.trigger_instance.as_ref();
        Row {
            id: s.id.as_str().into(),
            start: s.start_timestamp,
            end: s.end_timestamp,
            status: s.status,
            action: sym.intern(&s.action.action_ref),
            runner: sym.intern(&s.runner.name),
            rule_ref: sym.intern_opt(s.rule.as_ref().map(|r| r.reference.as_str())),
            rule_id: sym.intern_opt(s.rule.as_ref().map(|r| r.id.as_str())),
            trigger: sym.intern_opt(instance.map(|t| t.trigger.as_str())),
            trigger_type: sym.intern_opt(instance.map(|t| t.trigger_type.as_str())),
            user: sym.intern_opt(s.user()),
            trigger_instance: instance.map(|t| t.id.as_str().into()),
            parent: s.parent.as_deref().map(Into::into),
        }
    }

    /// Removes execution `id`.
    fn remove(&mut self, id: &str) {
        let Some(o) = self.ids.remove(id) else {
            return;
        };
        self.unindex(o);
        if self.cached.remove(&o).is_some() {
            self.cached_order.remove(&(self.rows[o as usize].start, o));
        }
        self.dead += 1;
        if self.sorted && self.dead > 1024 && self.dead > self.ids.len() / 4 {
            self.compact();
        }
    }

    fn insert(&mut self, summary: Summary, bytes: Bytes) {
        let row = self.row_of(&summary);
        let o = match self.ids.get(summary.id.as_str()).copied() {
            Some(o) if self.rows[o as usize].start == row.start => {
                self.unindex(o);
                self.rows[o as usize] = row;
                o
            }
            existing => {
                if existing.is_some() {
                    self.remove(&summary.id);
                }
                let o = self.rows.len() as u32;
                self.rows.push(row);
                self.ids.insert(summary.id.as_str().into(), o);
                if self.sorted {
                    let at = self
                        .by_time
                        .partition_point(|x| self.cmp_ord(*x, o).is_lt());
                    self.by_time.insert(at, o);
                } else {
                    self.by_time.push(o);
                }
                o
            }
        };
        self.index(o);
        let key = (summary.start_timestamp, o);
        self.cached.insert(o, bytes);
        self.cached_order.insert(key);
        while self.cached_order.len() > self.cache_limit {
            if let Some((_, oldest)) = self.cached_order.pop_first() {
                self.cached.remove(&oldest);
            }
        }
    }

    /// Drops deleted rows: renumbers the live ones in time order and
    /// rebuilds every index.
    fn compact(&mut self) {
        let mut old: Vec<Option<Row>> = std::mem::take(&mut self.rows)
            .into_iter()
            .map(Some)
            .collect();
        let mut renumber = HashMap::with_capacity(self.ids.len());
        for o in std::mem::take(&mut self.by_time) {
            if self.live.contains(o) {
                if let Some(row) = old[o as usize].take() {
                    renumber.insert(o, self.rows.len() as u32);
                    self.rows.push(row);
                }
            }
        }
        self.ids.clear();
        self.live.clear();
        self.terms.clear();
        self.top_level.clear();
        self.instances.clear();
        self.children.clear();
        self.dead = 0;
        for o in 0..self.rows.len() as u32 {
            self.ids.insert(self.rows[o as usize].id.clone(), o);
            self.by_time.push(o);
            self.index(o);
        }
        self.cached = std::mem::take(&mut self.cached)
            .into_iter()
            .filter_map(|(o, b)| Some((*renumber.get(&o)?, b)))
            .collect();
        self.cached_order = std::mem::take(&mut self.cached_order)
            .into_iter()
            .filter_map(|(t, o)| Some((t, *renumber.get(&o)?)))
            .collect();
    }
}

impl Mirror for History {
    fn apply(&mut self, entry: &kv::Entry) {
        self.revision = self.revision.max(entry.revision);
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

    fn loading(&mut self) {
        self.sorted = false;
    }

    fn loaded(&mut self) {
        if !self.sorted {
            let mut by_time = std::mem::take(&mut self.by_time);
            by_time.sort_unstable_by(|a, b| self.cmp_ord(*a, *b));
            self.by_time = by_time;
            self.sorted = true;
        }
        if self.dead > 1024 && self.dead > self.ids.len() / 4 {
            self.compact();
        }
    }
}

/// The kind of a history snapshot file.
const MAGIC: &[u8; 8] = b"SQHIST01";

/// The fields with a bitmap per value, in [`Row::terms`]' order.
const FIELDS: [Field; 7] = [
    Field::Status,
    Field::Action,
    Field::Runner,
    Field::Rule,
    Field::Trigger,
    Field::TriggerType,
    Field::User,
];

impl History {
    /// The index as a snapshot file's bytes: its live rows in time order,
    /// taken at `origin` (the bucket it was built from, and the revision
    /// it reflects: [`History::revision`]). Records kept whole are not
    /// saved.
    pub fn snapshot(&self, origin: &Origin) -> Vec<u8> {
        let mut out = Out::new(MAGIC, origin, self.ids.len() * 96);
        self.symbols.save(&mut out);
        out.u32(self.ids.len() as u32);
        for o in &self.by_time {
            if !self.live.contains(*o) {
                continue;
            }
            let r = &self.rows[*o as usize];
            out.str(&r.id);
            out.time(&r.start);
            out.opt_time(r.end.as_ref());
            out.u8(Status::ALL.iter().position(|s| *s == r.status).unwrap_or(0) as u8);
            for s in [
                r.action,
                r.runner,
                r.rule_ref,
                r.rule_id,
                r.trigger,
                r.trigger_type,
                r.user,
            ] {
                out.u32(s);
            }
            out.opt_str(r.trigger_instance.as_deref());
            out.opt_str(r.parent.as_deref());
        }
        out.finish()
    }

    /// Reads a snapshot made by [`History::snapshot`], checking its
    /// checksum and its shape; where it was taken is for the caller to
    /// check ([`Origin::check`]). The rows come in time order, so each
    /// field value's ordinals come ascending and its bitmap is built in
    /// one go.
    pub fn decode(bytes: &[u8]) -> Result<(History, Origin), SnapshotError> {
        let (mut r, origin) = In::open(bytes, MAGIC)?;
        let mut h = History {
            revision: origin.seq,
            loaded_revision: Some(origin.seq),
            symbols: Symbols::load(&mut r)?,
            ..History::default()
        };
        let status_syms: Vec<Sym> = Status::ALL
            .iter()
            .map(|s| h.symbols.intern(s.as_str()))
            .collect();
        let count = h.symbols.texts.len();
        let nrows = r.u32()?;
        // Bounded by what the bytes can hold (at least 30 bytes a row).
        let expected = (nrows as usize).min(r.remaining() / 30);
        h.rows.reserve(expected);
        h.ids.reserve(expected);
        // The ordinals of each (field, symbol), ascending.
        let mut postings: Vec<Vec<u32>> = vec![Vec::new(); FIELDS.len() * count];
        let mut top_level = Vec::with_capacity(expected);
        for o in 0..nrows {
            let id: Box<str> = r.str()?.into();
            let start = r.time()?;
            let end = r.opt_time()?;
            let status_at = r.u8()? as usize;
            let status = *Status::ALL
                .get(status_at)
                .ok_or_else(|| SnapshotError::Corrupt("unknown status".into()))?;
            let mut syms = [0; 7];
            for s in &mut syms {
                *s = r.sym(count)?;
            }
            let row = Row {
                id: id.clone(),
                start,
                end,
                status,
                action: syms[0],
                runner: syms[1],
                rule_ref: syms[2],
                rule_id: syms[3],
                trigger: syms[4],
                trigger_type: syms[5],
                user: syms[6],
                trigger_instance: r.opt_str()?.map(Into::into),
                parent: r.opt_str()?.map(Into::into),
            };
            if let Some(prev) = h.rows.last() {
                if (&prev.start, &*prev.id) >= (&row.start, &*row.id) {
                    return Err(SnapshotError::Corrupt("rows out of order".into()));
                }
            }
            if h.ids.insert(id, o).is_some() {
                return Err(SnapshotError::Corrupt("repeated execution".into()));
            }
            for (field, sym) in row.terms(status_syms[status_at]) {
                if sym != NO_SYM {
                    postings[field as usize * count + sym as usize].push(o);
                }
            }
            match &row.parent {
                None => top_level.push(o),
                Some(p) => add_posting(&mut h.children, p, o),
            }
            if let Some(t) = &row.trigger_instance {
                add_posting(&mut h.instances, t, o);
            }
            h.rows.push(row);
        }
        r.end()?;
        for (at, ords) in postings.into_iter().enumerate() {
            if !ords.is_empty() {
                let key = (FIELDS[at / count], (at % count) as Sym);
                h.terms.insert(key, bitmap_of(ords));
            }
        }
        h.top_level = bitmap_of(top_level);
        h.live.insert_range(0..nrows);
        h.by_time = (0..nrows).collect();
        Ok((h, origin))
    }

    /// [`History::decode`], then [`Origin::check`] against `bucket`,
    /// whose last revision is `last_revision`.
    pub fn from_snapshot(
        bytes: &[u8],
        bucket: &str,
        last_revision: u64,
    ) -> Result<History, SnapshotError> {
        let (h, origin) = History::decode(bytes)?;
        origin.check(bucket, last_revision)?;
        Ok(h)
    }
}

/// Adds ordinal `o` to `key`'s posting in `map`.
fn add_posting(map: &mut HashMap<Box<str>, Posting>, key: &str, o: u32) {
    match map.get_mut(key) {
        Some(posting) => posting.add(o),
        None => {
            map.insert(key.into(), Posting::One(o));
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

/// The identity of the `executions` bucket a snapshot must match, and
/// its last revision.
async fn bucket_identity(bus: &Bus) -> Result<(String, u64), EngineError> {
    let now = snapshot::origin_of(&bus.executions.raw().stream).await?;
    Ok((now.stream, now.seq))
}

/// The snapshot file under a node's data directory.
pub fn snapshot_path(data_dir: &Path) -> PathBuf {
    data_dir.join("history").join("executions.snapshot")
}

/// A history snapshot being read and decoded on a blocking thread,
/// started before the bus is open so it overlaps the rest of a start;
/// [`start`] checks it against the bucket.
#[derive(Debug)]
pub struct Preload(tokio::task::JoinHandle<Option<(History, Origin)>>);

/// Starts reading and decoding the snapshot at `path`.
pub fn preload(path: &Path) -> Preload {
    let path = path.to_path_buf();
    Preload(tokio::task::spawn_blocking(move || load_snapshot(&path)))
}

/// Starts the history: from the `preloaded` snapshot when it is sound and
/// of this bucket (then only what changed since is replayed), else from
/// the whole bucket. Returns at once; the handle is ready when it has
/// caught up.
pub async fn start(bus: &Bus, preloaded: Option<Preload>) -> Result<HistoryHandle, EngineError> {
    let (bucket, last) = bucket_identity(bus).await?;
    Ok(Mirrored::start_with(
        bus.executions.raw(),
        "executions",
        async move {
            let decoded = match preloaded {
                Some(Preload(task)) => task.await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "reading the history snapshot failed");
                    None
                }),
                None => None,
            };
            let history = decoded
                .and_then(|(h, origin)| match origin.check(&bucket, last) {
                    Ok(()) => Some(h),
                    Err(e) => {
                        tracing::warn!(error = %e, "history snapshot not used; replaying the bucket");
                        None
                    }
                })
                .unwrap_or_default();
            let from = history.revision;
            (history, from)
        },
    ))
}

/// The history saved at `path`, when it is there and sound.
fn load_snapshot(path: &Path) -> Option<(History, Origin)> {
    let started = std::time::Instant::now();
    let bytes = snapshot::read_file(path)?;
    match History::decode(&bytes) {
        Ok((h, origin)) => {
            tracing::info!(path = %path.display(), executions = h.len(), revision = h.revision,
                took_ms = started.elapsed().as_millis() as u64, "history snapshot decoded");
            Some((h, origin))
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e,
                "history snapshot not used; replaying the bucket");
            None
        }
    }
}

/// Saves the history to `path` every `period` while it changes, and once
/// more at `stop`. Written to a temporary file and renamed, so a crash
/// leaves the previous snapshot.
pub async fn keep_snapshots(
    bus: Bus,
    history: HistoryHandle,
    path: PathBuf,
    period: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    snapshot::keep(period, stop, "executions", |saved| {
        // A start that loaded the snapshot and found nothing new since
        // has nothing to write.
        let (revision, loaded) = {
            let h = history.read();
            (h.revision(), h.loaded_revision)
        };
        let changed = history.is_ready() && saved != Some(revision) && loaded != Some(revision);
        let (bus, history, path) = (bus.clone(), history.clone(), path.clone());
        async move {
            if !changed {
                return Ok(None);
            }
            save_snapshot(&bus, &history, &path).await.map(Some)
        }
    })
    .await;
}

/// Writes one snapshot of `history` to `path`; the revision it reflects.
pub async fn save_snapshot(
    bus: &Bus,
    history: &HistoryHandle,
    path: &Path,
) -> Result<u64, EngineError> {
    let (bucket, _) = bucket_identity(bus).await?;
    let (bytes, rev) = {
        let h = history.read();
        let origin = Origin {
            stream: bucket,
            seq: h.revision(),
        };
        (h.snapshot(&origin), origin.seq)
    };
    snapshot::save(path, bytes).await?;
    Ok(rev)
}

/// The stored bytes of the records `ids` that exist, read from the
/// `executions` bucket in batched direct gets ([`read_last`]), however
/// many there are; deleted ones are left out.
pub async fn read_records(
    bus: &Bus,
    ids: &[String],
) -> Result<HashMap<String, Bytes>, EngineError> {
    let prefix = format!("$KV.{}.", crate::bus::EXECUTIONS_BUCKET);
    let subjects: Vec<String> = ids.iter().map(|id| format!("{prefix}{id}")).collect();
    let stream = format!("KV_{}", crate::bus::EXECUTIONS_BUCKET);
    Ok(read_last(bus, &stream, &subjects)
        .await?
        .into_iter()
        .filter_map(|(subject, bytes)| Some((subject.strip_prefix(&prefix)?.to_string(), bytes)))
        .collect())
}

/// Subjects one batched read asks for: a request naming them all stays
/// far below the server's payload limit (1 MiB by default), which a page
/// of every execution (`limit=-1`) would pass.
const READ_BATCH: usize = 1000;

/// Batched reads in flight at once for one request.
const READS_IN_FLIGHT: usize = 4;

/// The last message of each of `subjects` in `stream` (a stream with
/// direct gets allowed), by subject, in batched direct gets (`multi_last`,
/// [`READ_BATCH`] subjects each); subjects with none, or whose last is a
/// KV delete or purge marker, are left out.
pub async fn read_last(
    bus: &Bus,
    stream: &str,
    subjects: &[String],
) -> Result<HashMap<String, Bytes>, EngineError> {
    let mut batches = subjects.chunks(READ_BATCH);
    let mut reads = futures::stream::FuturesUnordered::new();
    let mut out = HashMap::with_capacity(subjects.len());
    loop {
        while reads.len() < READS_IN_FLIGHT {
            let Some(batch) = batches.next() else { break };
            reads.push(read_batch(bus, stream, batch));
        }
        match reads.next().await {
            Some(read) => out.extend(read?),
            None => return Ok(out),
        }
    }
}

/// One batched direct get of `subjects`' last messages.
async fn read_batch(
    bus: &Bus,
    stream: &str,
    subjects: &[String],
) -> Result<HashMap<String, Bytes>, EngineError> {
    let mut out = HashMap::new();
    if subjects.is_empty() {
        return Ok(out);
    }
    bus.ops.count(BusOp::Get);
    let request = serde_json::json!({ "multi_last": subjects, "batch": subjects.len() });
    let inbox = bus.client.new_inbox();
    let mut replies = bus
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| bus_err("batched read", e))?;
    bus.client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            request.to_string().into(),
        )
        .await
        .map_err(|e| bus_err("batched read", e))?;
    let deadline = tokio::time::Instant::now() + crate::timing::CALL_TIMEOUT;
    loop {
        let msg = match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(_) => {
                return Err(bus_err(
                    &format!("batched read of {stream}"),
                    "no answer in time",
                ))
            }
        };
        let headers = msg.headers.as_ref();
        let header = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
        if msg.status.is_some_and(|s| s.as_u16() != 200) {
            // 204: end of batch; 404: none of them exists.
            break;
        }
        let Some(subject) = header("Nats-Subject") else {
            continue;
        };
        let deleted = matches!(header("KV-Operation"), Some("DEL") | Some("PURGE"));
        if !deleted && !msg.payload.is_empty() {
            out.insert(subject.to_string(), msg.payload.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    impl Filter {
        /// Whether `s` is shown: the brute-force reading of a filter.
        fn keeps(&self, s: &Summary) -> bool {
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

    fn start_of(h: &History, id: &str) -> Timestamp {
        h.rows[h.ids[id] as usize].start
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
            after: Some(start_of(&h, "a")),
            before: Some(start_of(&h, "d")),
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
        assert_eq!(h.info("d").unwrap().status, Status::Succeeded);
        h.remove("c");
        assert_eq!(h.descendants("a", None), Vec::<String>::new());
        assert_eq!(h.page(&Filter::default(), true, 0, 10).total, 3);
    }

    fn many(n: u32) -> (History, Vec<Summary>) {
        let statuses = ["succeeded", "failed", "running"];
        let actions = ["core.noop", "core.local", "x.y"];
        let mut h = History::with_cache(10);
        let mut all = Vec::new();
        for i in 0..n {
            let parent = (i % 7 == 0 && i > 0).then(|| format!("{:024}", i - 1));
            let value = json!({
                "id": format!("{i:024}"),
                // Some share a second: ties order by id.
                "start_timestamp": format!("2026-01-01T{:02}:{:02}:{:02}.000000Z", i / 7200, i / 120 % 60, i / 2 % 60),
                "status": statuses[(i % 3) as usize],
                "action": {"ref": actions[(i / 3 % 3) as usize]},
                "runner": {"name": "noop"},
                "parent": parent,
                "rule": (i % 2 == 0).then(|| json!({"id": "r1", "ref": "p.r"})),
                "trigger_instance": (i % 4 == 0).then(|| json!({"id": format!("ti{}", i / 8), "trigger": "t", "trigger_type": if i % 3 == 0 { "tt1" } else { "tt2" }})),
                "context": {"user": if i % 5 == 0 { "bob" } else { "alice" }},
            });
            let s: Summary = serde_json::from_value(value.clone()).unwrap();
            all.push(s.clone());
            put(&mut h, (s, Bytes::from(value.to_string())));
        }
        (h, all)
    }

    fn check_against_brute_force(h: &History, all: &[Summary]) {
        let at = |i: usize| all.get(i).map(|s| s.start_timestamp);
        let filters = [
            Filter::default(),
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
                user: Some("alice".into()),
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
                after: at(100),
                action: Some("core.noop".into()),
                ..Filter::default()
            },
            Filter {
                after: at(50),
                before: at(all.len() - 40),
                ..Filter::default()
            },
            Filter {
                trigger_type: Some("tt1".into()),
                trigger: Some("t".into()),
                ..Filter::default()
            },
            Filter {
                trigger_instance: Some("ti3".into()),
                ..Filter::default()
            },
            Filter {
                id: Some(format!("{:024}", 12)),
                status: Some(Status::Succeeded),
                ..Filter::default()
            },
        ];
        let live: Vec<&Summary> = all.iter().filter(|s| h.contains(&s.id)).collect();
        for filter in &filters {
            for (ascending, offset, limit) in [
                (false, 0, 5),
                (true, 3, 7),
                (false, 40, 100),
                (true, 0, usize::MAX),
                (false, 5000, 10),
            ] {
                let mut want: Vec<&&Summary> = live.iter().filter(|s| filter.keeps(s)).collect();
                want.sort_by_key(|s| (s.start_timestamp, s.id.clone()));
                if !ascending {
                    want.reverse();
                }
                let expected = Page {
                    ids: want
                        .iter()
                        .skip(offset)
                        .take(limit)
                        .map(|s| s.id.clone())
                        .collect(),
                    total: want.len(),
                };
                assert_eq!(
                    h.page(filter, ascending, offset, limit),
                    expected,
                    "{filter:?} {ascending} {offset} {limit}"
                );
            }
        }
    }

    #[test]
    fn indexed_pages_equal_a_brute_force_filter() {
        // Small enough to sort, and large enough to walk the time order.
        for n in [300, 12_000] {
            let (mut h, all) = many(n);
            check_against_brute_force(&h, &all);
            for s in all.iter().filter(|s| s.id.ends_with('3')) {
                h.remove(&s.id);
            }
            check_against_brute_force(&h, &all);
        }
    }

    #[test]
    fn a_snapshot_round_trips_and_a_damaged_one_is_refused() {
        let (mut h, all) = many(3000);
        for s in all.iter().take(100) {
            h.remove(&s.id);
        }
        h.revision = 4242;
        let bytes = h.snapshot(&Origin {
            stream: "KV_executions:t1".into(),
            seq: h.revision,
        });
        let back = History::from_snapshot(&bytes, "KV_executions:t1", 5000).unwrap();
        assert_eq!(back.revision(), 4242);
        assert_eq!(back.len(), h.len());
        check_against_brute_force(&back, &all);
        assert_eq!(
            back.descendants(&all[6].id, None),
            h.descendants(&all[6].id, None)
        );
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 1;
        assert!(matches!(
            History::from_snapshot(&flipped, "KV_executions:t1", 5000),
            Err(SnapshotError::Corrupt(_))
        ));
        assert!(matches!(
            History::from_snapshot(&bytes[..bytes.len() - 1], "KV_executions:t1", 5000),
            Err(SnapshotError::Corrupt(_))
        ));
        assert!(matches!(
            History::from_snapshot(&bytes, "KV_executions:t2", 5000),
            Err(SnapshotError::OtherStream { .. })
        ));
        assert!(matches!(
            History::from_snapshot(&bytes, "KV_executions:t1", 4000),
            Err(SnapshotError::Ahead { .. })
        ));
    }

    #[test]
    fn purgeable_roots_are_old_finished_and_top_level_or_orphaned() {
        let mut h = history();
        let mut end = |id: &str, second: u32| {
            let o = h.ids[id];
            h.rows[o as usize].end = Some(
                squall_domain::time::parse(&format!("2026-01-01T00:00:{second:02}Z")).unwrap(),
            );
        };
        end("a", 5);
        end("b", 2);
        end("c", 3);
        let before = squall_domain::time::parse("2026-01-01T00:00:10Z").unwrap();
        let all = PurgeFilter {
            before,
            action: None,
            status: None,
        };
        // c is a's child: it goes with a, not as a root; d runs.
        assert_eq!(h.purgeable(&all, None, 10), vec!["a", "b"]);
        assert_eq!(h.purgeable(&all, Some("a"), 10), vec!["b"]);
        let early = PurgeFilter {
            before: squall_domain::time::parse("2026-01-01T00:00:04Z").unwrap(),
            ..all.clone()
        };
        // a ended after the cut.
        assert_eq!(h.purgeable(&early, None, 10), vec!["b"]);
        let failed = PurgeFilter {
            status: Some(Status::Failed),
            ..all.clone()
        };
        assert_eq!(h.purgeable(&failed, None, 10), vec!["b"]);
        h.remove("a");
        // c's parent is gone: c is a root now.
        assert_eq!(h.purgeable(&all, None, 10), vec!["b", "c"]);
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
