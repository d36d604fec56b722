//! A compact index over records a stream or bucket keeps in sequence
//! order (trigger instances, rule enforcements), behind their lists: per
//! record an ordinal, its id, time and stream sequence, and per value of
//! each filtered field a posting of the ordinals that carry it. A filter
//! intersects postings (`X-Total-Count` is the cardinality), a page is
//! sorted or walked in time order, and only the page's records are read.
//! The execution history ([`crate::history`]) is the same idea with more
//! fields and a whole-record cache. Both are saved to snapshot files
//! ([`crate::snapshot`]) so a restart reads only what came since.
//!
//! Ordinals follow stream sequences (an update is a new ordinal), so the
//! records a stream purge or its age limit removed, which no watch
//! reports, are the lowest ordinals: [`RecordIndex::forget_before`] drops
//! them given the stream's first sequence.

use std::borrow::Cow;
use std::collections::HashMap;

use roaring::RoaringBitmap;
use squall_domain::time::Timestamp;

use crate::history::{Posting, Sym, Symbols, NO_SYM};
use crate::snapshot::{bitmap_of, In, Origin, Out, SnapshotError};

/// How many fields an index filters on, at most.
pub const FIELDS: usize = 4;

/// Up to this many candidates, a page sorts the candidates rather than
/// walking the time order.
const SORT_LIMIT: u64 = 4096;

/// One record as the index takes it.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub id: &'a str,
    pub time: Timestamp,
    /// The stream sequence (a bucket's revision) it is stored at.
    pub seq: u64,
    /// Its value of each filtered field.
    pub fields: [Option<&'a str>; FIELDS],
}

/// Which records a list shows. Every `Some` must match.
#[derive(Debug, Clone, Default)]
pub struct Query<'a> {
    pub fields: [Option<&'a str>; FIELDS],
    /// Time strictly after.
    pub after: Option<Timestamp>,
    /// Time strictly before.
    pub before: Option<Timestamp>,
    /// Time equal to.
    pub at: Option<Timestamp>,
    /// Only these ordinals.
    pub within: Option<RoaringBitmap>,
    /// None of these ordinals.
    pub without: Option<RoaringBitmap>,
}

/// A record on a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub id: String,
    pub seq: u64,
    pub fields: [Option<String>; FIELDS],
}

/// One page of a list and how many records match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexPage {
    pub hits: Vec<Hit>,
    pub total: usize,
}

#[derive(Debug)]
struct Row {
    id: Box<str>,
    time: Timestamp,
    seq: u64,
    syms: [Sym; FIELDS],
}

/// The index: rows by ordinal, postings per field value, the time order.
#[derive(Debug, Default)]
pub struct RecordIndex {
    /// By ordinal, in stream order. A removed record's row stays (out of
    /// every posting) until the next compaction.
    rows: Vec<Row>,
    ids: HashMap<Box<str>, u32>,
    live: RoaringBitmap,
    /// Ordinals by (time, id), removed ones included until the next
    /// compaction. Unsorted while a load is under way.
    by_time: Vec<u32>,
    unsorted: bool,
    dead: usize,
    /// Ordinals below this were checked against the stream's first
    /// sequence.
    checked: usize,
    symbols: Symbols,
    postings: HashMap<(u8, Sym), Posting>,
}

impl RecordIndex {
    /// Number of records indexed.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no record is indexed.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Adds `entry`, replacing the record of the same id.
    pub fn insert(&mut self, entry: Entry<'_>) {
        self.remove(entry.id);
        let mut syms = [NO_SYM; FIELDS];
        for (s, v) in syms.iter_mut().zip(entry.fields) {
            if let Some(v) = v {
                *s = self.symbols.intern(v);
            }
        }
        let o = self.rows.len() as u32;
        self.rows.push(Row {
            id: entry.id.into(),
            time: entry.time,
            seq: entry.seq,
            syms,
        });
        self.ids.insert(entry.id.into(), o);
        if self.unsorted {
            self.by_time.push(o);
        } else {
            let at = self
                .by_time
                .partition_point(|x| self.cmp_ord(*x, o).is_lt());
            self.by_time.insert(at, o);
        }
        self.index(o);
    }

    /// Removes the record `id`.
    pub fn remove(&mut self, id: &str) {
        let Some(o) = self.ids.remove(id) else {
            return;
        };
        self.unindex(o);
        self.dead += 1;
        if !self.unsorted && self.dead > 1024 && self.dead > self.ids.len() / 4 {
            self.compact();
        }
    }

    /// A bulk load begins: the time order is sorted once at its end.
    pub fn loading(&mut self) {
        self.unsorted = true;
    }

    /// The bulk load is done.
    pub fn loaded(&mut self) {
        if self.unsorted {
            let mut by_time = std::mem::take(&mut self.by_time);
            by_time.sort_unstable_by(|a, b| self.cmp_ord(*a, *b));
            self.by_time = by_time;
            self.unsorted = false;
        }
        if self.dead > 1024 && self.dead > self.ids.len() / 4 {
            self.compact();
        }
    }

    /// Whether records stored before sequence `first` are still indexed.
    pub fn stale_before(&self, first: u64) -> bool {
        self.rows.get(self.checked).is_some_and(|r| r.seq < first)
    }

    /// Drops the records stored before sequence `first` (the stream's
    /// first now: older ones were purged or aged out).
    pub fn forget_before(&mut self, first: u64) {
        let mut gone = Vec::new();
        while let Some(row) = self.rows.get(self.checked).filter(|r| r.seq < first) {
            if self.ids.get(&row.id) == Some(&(self.checked as u32)) {
                gone.push(row.id.clone());
            }
            self.checked += 1;
        }
        for id in gone {
            self.remove(&id);
        }
        // A compaction meanwhile renumbered the rows: what is left below
        // `first` is removed, skip it again.
        while self.rows.get(self.checked).is_some_and(|r| r.seq < first) {
            self.checked += 1;
        }
    }

    /// The first ordinal stored after sequence `seq`.
    pub fn first_after(&self, seq: u64) -> u32 {
        self.rows.partition_point(|r| r.seq <= seq) as u32
    }

    /// The live ordinals whose `field` is `value`, from ordinal `from` on.
    pub fn with_value_from(&self, field: usize, value: &str, from: u32) -> RoaringBitmap {
        let Some(set) = self
            .symbols
            .find(value)
            .and_then(|s| self.postings.get(&(field as u8, s)))
        else {
            return RoaringBitmap::new();
        };
        let mut out = set.bitmap();
        out.remove_range(..from);
        out
    }

    /// The values `field` takes among live records.
    pub fn values(&self, field: usize) -> Vec<String> {
        let mut out: Vec<String> = self
            .postings
            .keys()
            .filter(|(f, _)| *f as usize == field)
            .filter_map(|(_, s)| self.symbols.text(*s).map(str::to_string))
            .collect();
        out.sort();
        out
    }

    fn cmp_ord(&self, a: u32, b: u32) -> std::cmp::Ordering {
        let (ra, rb) = (&self.rows[a as usize], &self.rows[b as usize]);
        ra.time.cmp(&rb.time).then_with(|| ra.id.cmp(&rb.id))
    }

    fn index(&mut self, o: u32) {
        let syms = self.rows[o as usize].syms;
        for (f, s) in syms.into_iter().enumerate() {
            if s == NO_SYM {
                continue;
            }
            match self.postings.get_mut(&(f as u8, s)) {
                Some(p) => p.add(o),
                None => {
                    self.postings.insert((f as u8, s), Posting::One(o));
                }
            }
        }
        self.live.insert(o);
    }

    fn unindex(&mut self, o: u32) {
        let syms = self.rows[o as usize].syms;
        for (f, s) in syms.into_iter().enumerate() {
            let key = (f as u8, s);
            if self.postings.get_mut(&key).is_some_and(|p| p.remove(o)) {
                self.postings.remove(&key);
            }
        }
        self.live.remove(o);
    }

    /// Drops removed rows: renumbers the live ones in stream order and
    /// rebuilds the postings, the time order and the symbols.
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.rows);
        let old_symbols = std::mem::take(&mut self.symbols);
        let mut renumber = vec![u32::MAX; old.len()];
        for (o, mut row) in old.into_iter().enumerate() {
            if !self.live.contains(o as u32) {
                continue;
            }
            for s in &mut row.syms {
                if let Some(text) = old_symbols.text(*s) {
                    *s = self.symbols.intern(text);
                }
            }
            renumber[o] = self.rows.len() as u32;
            self.rows.push(row);
        }
        self.by_time = std::mem::take(&mut self.by_time)
            .into_iter()
            .map(|o| renumber[o as usize])
            .filter(|o| *o != u32::MAX)
            .collect();
        self.ids.clear();
        self.live.clear();
        self.postings.clear();
        self.dead = 0;
        self.checked = 0;
        for o in 0..self.rows.len() as u32 {
            self.ids.insert(self.rows[o as usize].id.clone(), o);
            self.index(o);
        }
    }

    /// The ordinals `query`'s equality constraints keep; `None` when a
    /// named value is unknown (nothing matches).
    fn candidates<'s>(&'s self, query: &'s Query<'_>) -> Option<Cow<'s, RoaringBitmap>> {
        let mut sets: Vec<Cow<'_, RoaringBitmap>> = Vec::new();
        for (f, v) in query.fields.iter().enumerate() {
            if let Some(v) = v {
                let s = self.symbols.find(v)?;
                sets.push(self.postings.get(&(f as u8, s))?.ordinals());
            }
        }
        if let Some(w) = &query.within {
            // Postings hold live ordinals only; `within` may not.
            sets.push(Cow::Borrowed(w));
            sets.push(Cow::Borrowed(&self.live));
        }
        sets.sort_by_key(|s| s.len());
        let mut sets = sets.into_iter();
        let first = match sets.next() {
            Some(first) => sets.fold(first, |acc, s| Cow::Owned(acc.into_owned() & &*s)),
            None => Cow::Borrowed(&self.live),
        };
        Some(match &query.without {
            Some(w) => Cow::Owned(first.into_owned() - w),
            None => first,
        })
    }

    fn hit(&self, o: u32) -> Hit {
        let row = &self.rows[o as usize];
        Hit {
            id: row.id.to_string(),
            seq: row.seq,
            fields: row.syms.map(|s| self.symbols.text(s).map(str::to_string)),
        }
    }

    /// The records `query` keeps, newest first unless `ascending`,
    /// skipping `offset` and showing at most `limit`, and how many it
    /// keeps.
    pub fn page(
        &self,
        query: &Query<'_>,
        ascending: bool,
        offset: usize,
        limit: usize,
    ) -> IndexPage {
        let Some(cand) = self.candidates(query) else {
            return IndexPage {
                hits: vec![],
                total: 0,
            };
        };
        let time = |o: &u32| self.rows[*o as usize].time;
        let mut lo = 0;
        let mut hi = self.by_time.len();
        if let Some(a) = query.after {
            lo = lo.max(self.by_time.partition_point(|o| time(o) <= a));
        }
        if let Some(b) = query.before {
            hi = hi.min(self.by_time.partition_point(|o| time(o) < b));
        }
        if let Some(t) = query.at {
            lo = lo.max(self.by_time.partition_point(|o| time(o) < t));
            hi = hi.min(self.by_time.partition_point(|o| time(o) <= t));
        }
        let hi = hi.max(lo);
        let slice = &self.by_time[lo..hi];
        let ordered = |ords: Box<dyn Iterator<Item = u32> + '_>| -> Vec<Hit> {
            ords.skip(offset).take(limit).map(|o| self.hit(o)).collect()
        };
        if self.dead == 0 && std::ptr::eq(&*cand, &self.live) {
            // Nothing filtered but time, nothing removed: a slice.
            let ords: Box<dyn Iterator<Item = u32>> = if ascending {
                Box::new(slice.iter().copied())
            } else {
                Box::new(slice.iter().rev().copied())
            };
            return IndexPage {
                hits: ordered(ords),
                total: slice.len(),
            };
        }
        if cand.len() <= SORT_LIMIT || cand.len().saturating_mul(16) < slice.len() as u64 {
            let in_range = |o: &u32| {
                let t = time(o);
                query.after.is_none_or(|a| t > a)
                    && query.before.is_none_or(|b| t < b)
                    && query.at.is_none_or(|at| t == at)
            };
            let mut ords: Vec<u32> = cand.iter().filter(in_range).collect();
            ords.sort_unstable_by(|a, b| self.cmp_ord(*a, *b));
            if !ascending {
                ords.reverse();
            }
            return IndexPage {
                total: ords.len(),
                hits: ordered(Box::new(ords.into_iter())),
            };
        }
        let walk: Box<dyn Iterator<Item = u32>> = if ascending {
            Box::new(slice.iter().copied())
        } else {
            Box::new(slice.iter().rev().copied())
        };
        let mut matching = walk.filter(|o| cand.contains(*o));
        if lo == 0 && hi == self.by_time.len() {
            // The whole order: the count is the bitmap's.
            return IndexPage {
                hits: ordered(Box::new(matching)),
                total: cand.len() as usize,
            };
        }
        let mut hits = Vec::new();
        let mut total = 0;
        for o in matching.by_ref() {
            if total >= offset && hits.len() < limit {
                hits.push(self.hit(o));
            }
            total += 1;
        }
        IndexPage { hits, total }
    }
}

impl RecordIndex {
    /// The index as a snapshot file's bytes of kind `magic`, taken at
    /// `origin` (the stream's identity and the last sequence folded in):
    /// the symbols and the live rows in stream order.
    pub fn snapshot(&self, magic: &[u8; 8], origin: &Origin) -> Vec<u8> {
        let mut out = Out::new(magic, origin, self.ids.len() * 64);
        self.symbols.save(&mut out);
        out.u32(self.ids.len() as u32);
        for o in &self.live {
            let row = &self.rows[o as usize];
            out.str(&row.id);
            out.time(&row.time);
            out.u64(row.seq);
            for s in row.syms {
                out.u32(s);
            }
        }
        out.finish()
    }

    /// Reads a snapshot of kind `magic` made by [`RecordIndex::snapshot`],
    /// checking its checksum and shape; where it was taken is for the
    /// caller to check ([`Origin::check`]). Rows come in stream order, so
    /// each value's ordinals come ascending and its posting is built in
    /// one go.
    pub fn decode(bytes: &[u8], magic: &[u8; 8]) -> Result<(RecordIndex, Origin), SnapshotError> {
        let (mut r, origin) = In::open(bytes, magic)?;
        let mut index = RecordIndex {
            symbols: Symbols::load(&mut r)?,
            ..RecordIndex::default()
        };
        let count = index.symbols.len();
        let nrows = r.u32()?;
        // Bounded by what the bytes can hold (at least 36 bytes a row).
        let expected = (nrows as usize).min(r.remaining() / 36);
        index.rows.reserve(expected);
        index.ids.reserve(expected);
        let mut postings: Vec<Vec<u32>> = vec![Vec::new(); FIELDS * count];
        for o in 0..nrows {
            let id: Box<str> = r.str()?.into();
            let time = r.time()?;
            let seq = r.u64()?;
            let mut syms = [NO_SYM; FIELDS];
            for s in &mut syms {
                *s = r.sym(count)?;
            }
            if index.rows.last().is_some_and(|prev| prev.seq >= seq) {
                return Err(SnapshotError::Corrupt("rows out of order".into()));
            }
            if index.ids.insert(id.clone(), o).is_some() {
                return Err(SnapshotError::Corrupt("repeated record".into()));
            }
            for (f, s) in syms.iter().enumerate() {
                if *s != NO_SYM {
                    postings[f * count + *s as usize].push(o);
                }
            }
            index.rows.push(Row {
                id,
                time,
                seq,
                syms,
            });
        }
        r.end()?;
        for (at, ords) in postings.into_iter().enumerate() {
            let posting = match ords.as_slice() {
                [] => continue,
                [one] => Posting::One(*one),
                _ => Posting::Many(bitmap_of(ords)),
            };
            index
                .postings
                .insert(((at / count) as u8, (at % count) as Sym), posting);
        }
        index.live.insert_range(0..nrows);
        let mut by_time: Vec<u32> = (0..nrows).collect();
        by_time.sort_unstable_by(|a, b| index.cmp_ord(*a, *b));
        index.by_time = by_time;
        Ok((index, origin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as the brute force sees it.
    #[derive(Debug, Clone)]
    struct Rec {
        id: String,
        time: Timestamp,
        seq: u64,
        fields: [Option<String>; FIELDS],
    }

    fn keeps(q: &Query<'_>, r: &Rec, ord: u32) -> bool {
        q.fields
            .iter()
            .zip(&r.fields)
            .all(|(want, have)| want.is_none_or(|w| have.as_deref() == Some(w)))
            && q.after.is_none_or(|a| r.time > a)
            && q.before.is_none_or(|b| r.time < b)
            && q.at.is_none_or(|t| r.time == t)
            && q.within.as_ref().is_none_or(|w| w.contains(ord))
            && q.without.as_ref().is_none_or(|w| !w.contains(ord))
    }

    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n as u64) as usize
        }
    }

    fn at(second: usize) -> Timestamp {
        chrono::DateTime::from_timestamp(1_700_000_000 + second as i64, 0).unwrap_or_default()
    }

    fn entry(r: &Rec) -> Entry<'_> {
        Entry {
            id: &r.id,
            time: r.time,
            seq: r.seq,
            fields: [0, 1, 2, 3].map(|f| r.fields[f].as_deref()),
        }
    }

    /// Compares every page of random queries with the brute force over
    /// `recs` (the live ones, by ordinal as `idx` numbered them).
    fn check(idx: &RecordIndex, recs: &[Rec], rng: &mut Lcg) {
        let live: Vec<(&Rec, u32)> = recs
            .iter()
            .filter_map(|r| idx.ids.get(r.id.as_str()).map(|o| (r, *o)))
            .collect();
        let by_id: HashMap<&str, &Rec> = live.iter().map(|(r, _)| (r.id.as_str(), *r)).collect();
        for _ in 0..100 {
            let pick = |rng: &mut Lcg| &live[rng.next(live.len())].0;
            let mut q = Query::default();
            let mut values = Vec::new();
            for _ in 0..rng.next(3) {
                let f = rng.next(FIELDS);
                values.push((f, pick(rng).fields[f].clone()));
            }
            for (f, v) in &values {
                q.fields[*f] = v.as_deref();
            }
            match rng.next(6) {
                0 => q.after = Some(pick(rng).time),
                1 => q.before = Some(pick(rng).time),
                2 => q.at = Some(pick(rng).time),
                3 => q.within = Some((0..idx.rows.len() as u32).filter(|o| o % 3 == 0).collect()),
                4 => q.without = Some(idx.with_value_from(0, "a1", idx.first_after(50))),
                _ => {}
            }
            let ascending = rng.next(2) == 0;
            let (offset, limit) = [(0, 10), (rng.next(40), 25), (0, usize::MAX)][rng.next(3)];
            let mut want: Vec<&(&Rec, u32)> =
                live.iter().filter(|(r, o)| keeps(&q, r, *o)).collect();
            want.sort_by(|a, b| (a.0.time, &a.0.id).cmp(&(b.0.time, &b.0.id)));
            if !ascending {
                want.reverse();
            }
            let page = idx.page(&q, ascending, offset, limit);
            let ids: Vec<&str> = page.hits.iter().map(|h| h.id.as_str()).collect();
            let expected: Vec<&str> = want
                .iter()
                .skip(offset)
                .take(limit)
                .map(|(r, _)| r.id.as_str())
                .collect();
            assert_eq!(page.total, want.len(), "{q:?}");
            assert_eq!(ids, expected, "{q:?} {ascending} {offset} {limit}");
            for h in &page.hits {
                let r = by_id.get(h.id.as_str());
                assert_eq!(r.map(|r| (&r.fields, r.seq)), Some((&h.fields, h.seq)));
            }
        }
    }

    #[test]
    fn pages_equal_a_brute_force_filter_through_updates_purges_and_compaction() {
        // Small enough to sort, and large enough to walk the time order.
        for n in [200, 7000] {
            let mut rng = Lcg(7);
            let mut idx = RecordIndex::default();
            let mut recs: Vec<Rec> = Vec::new();
            idx.loading();
            for i in 0..n {
                let r = Rec {
                    id: format!("r{i:06}"),
                    // Close to stream order, with ties and stragglers.
                    time: at(i / 2 + rng.next(5)),
                    seq: i as u64 + 1,
                    fields: [
                        Some(format!("a{}", rng.next(4))),
                        (rng.next(3) > 0).then(|| format!("b{}", rng.next(20))),
                        Some(format!("c{i}")),
                        (i % 2 == 0).then(|| "d".to_string()),
                    ],
                };
                idx.insert(entry(&r));
                recs.push(r);
            }
            idx.loaded();
            check(&idx, &recs, &mut rng);
            // Updates are new sequences; removals leave rows to compact.
            let mut seq = n as u64;
            for i in (0..n).step_by(7) {
                seq += 1;
                recs[i].seq = seq;
                recs[i].fields[0] = Some("a9".into());
                idx.insert(entry(&recs[i]));
            }
            for r in recs.iter().skip(3).step_by(3) {
                idx.remove(&r.id);
            }
            check(&idx, &recs, &mut rng);
            // A snapshot gives the same answers; a damaged one is refused.
            let origin = Origin {
                stream: "S:1".into(),
                seq,
            };
            let bytes = idx.snapshot(b"SQTEST01", &origin);
            let (back, at) = RecordIndex::decode(&bytes, b"SQTEST01").unwrap();
            assert_eq!((at, back.len()), (origin, idx.len()));
            check(&back, &recs, &mut rng);
            let mut flipped = bytes.clone();
            flipped[bytes.len() / 3] ^= 1;
            assert!(RecordIndex::decode(&flipped, b"SQTEST01").is_err());
            assert!(RecordIndex::decode(&bytes, b"SQOTHER1").is_err());
            let mut idx = back;
            // A purge below a sequence: what was stored before it goes.
            let first = n as u64 / 2;
            assert!(idx.stale_before(first));
            idx.forget_before(first);
            assert!(!idx.stale_before(first));
            recs.retain(|r| r.seq >= first);
            check(&idx, &recs, &mut rng);
            assert!(idx.len() <= recs.len());
        }
    }

    #[test]
    fn values_and_first_after_follow_the_records() {
        let mut idx = RecordIndex::default();
        for (i, f) in ["x", "y", "x"].iter().enumerate() {
            let id = format!("i{i}");
            idx.insert(Entry {
                id: &id,
                time: at(i),
                seq: 10 + i as u64,
                fields: [Some(f), None, None, None],
            });
        }
        assert_eq!(idx.values(0), vec!["x", "y"]);
        assert_eq!(idx.first_after(10), 1);
        let late_x = idx.with_value_from(0, "x", idx.first_after(10));
        assert_eq!(late_x.iter().collect::<Vec<_>>(), vec![2]);
        idx.remove("i1");
        assert_eq!(idx.values(0), vec!["x"]);
        assert!(idx.with_value_from(0, "y", 0).is_empty());
    }
}
