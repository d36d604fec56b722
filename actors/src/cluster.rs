//! The cluster: membership and partition ownership.
//!
//! Every node heartbeats its [`Member`] entry into the `nodes` bucket
//! every [`HEARTBEAT_EVERY`]. Each partitioned role (rules, workflows,
//! sensors) has one lease key per partition in the `partitions` bucket
//! (`<role>.<partition>` → [`Lease`]: owner, incarnation, epoch), written
//! only with compare-and-swap on the key's revision. A lease is not
//! rewritten to stay valid: it lives as long as its owner's heartbeat.
//!
//! Timing (the argument that two nodes never process one partition at
//! once): a node counts its leases valid until `s + LEASE_TTL -
//! FENCE_MARGIN`, where `s` is when it *sent* its last heartbeat that the
//! server acknowledged; past that it stops every partition actor (it
//! fences itself). Another node judges an owner dead only after seeing the
//! owner's heartbeat entry keep one revision for `LEASE_TTL` on its own
//! monotonic clock, counted from when it first saw that revision, which is
//! after the server stored it, which is after the owner sent it. So the
//! taker acts at `>= s + LEASE_TTL`, at least `FENCE_MARGIN` after the
//! owner stopped. No wall clocks are compared. Taking a lease is a
//! compare-and-swap on the revision the taker read, so of two nodes
//! racing for a partition exactly one wins, and a node starts a
//! partition's actor only after its own write of that lease succeeded.
//!
//! Assignment: each node computes the same quotas from the live members
//! of a role (`partitions / n`, the remainder to the first names in
//! order); a node above its quota stops and releases its surplus, a node
//! below it claims free or dead partitions. Partitions move only to fill a
//! quota, so a join or a leave moves about `partitions / n` of them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use async_nats::jetstream::kv;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use squall_domain::ids;
use squall_domain::time::{self, Timestamp};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::{from_bytes, to_bytes, Bus};
use crate::error::{bus_err, EngineError};
use crate::lease::LeaseValidity;
use crate::mirror::{Mirror, Mirrored};
use crate::supervision::{call_within, Child, NodeMsg};
use crate::timing::{CALL_TIMEOUT, FENCE_MARGIN, HEARTBEAT_EVERY, HEARTBEAT_TIMEOUT, LEASE_TTL};

/// KV bucket of node heartbeats.
pub const NODES_BUCKET: &str = "nodes";
/// KV bucket of partition leases.
pub const LEASES_BUCKET: &str = "partitions";

/// The buckets this module keeps, as created with `replicas` replicas.
pub fn buckets(replicas: usize) -> Vec<kv::Config> {
    vec![
        kv::Config {
            max_age: crate::timing::NODE_ENTRY_MAX_AGE,
            ..crate::bus::bucket(
                NODES_BUCKET,
                "Node heartbeats: roles, pools, partitions owned.",
                1,
                replicas,
            )
        },
        crate::bus::bucket(
            LEASES_BUCKET,
            "Partition leases by role and partition (compare-and-swap only).",
            1,
            replicas,
        ),
    ]
}

/// What a node does. Every node keeps the catalog; the rest is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves the REST API.
    Api,
    /// Owns rule partitions (triggers → enforcements).
    Rules,
    /// Owns workflow partitions.
    Workflows,
    /// Runs executions from its runner pools.
    Runners,
    /// Owns sensor partitions: the interval, date and cron timers
    /// (Squall's built-in sensors), each timer in the partition of its
    /// trigger reference, and the packs' Python sensors, each in the
    /// partition of its reference.
    #[serde(alias = "timers")]
    Sensors,
}

impl Role {
    /// Every role, as a node started without `--roles` has them.
    pub const ALL: [Role; 5] = [
        Role::Api,
        Role::Rules,
        Role::Workflows,
        Role::Runners,
        Role::Sensors,
    ];

    /// The role's name, as in configs and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Rules => "rules",
            Role::Workflows => "workflows",
            Role::Runners => "runners",
            Role::Sensors => "sensors",
        }
    }

    /// Parses a role name; `timers` is another name for `sensors`.
    pub fn parse(name: &str) -> Result<Role, String> {
        match name.trim() {
            "api" => Ok(Role::Api),
            "rules" => Ok(Role::Rules),
            "workflows" => Ok(Role::Workflows),
            "runners" => Ok(Role::Runners),
            "sensors" | "timers" => Ok(Role::Sensors),
            other => Err(format!(
                "unknown role {other:?} (roles: api, rules, workflows, runners, sensors or timers)"
            )),
        }
    }

    /// Whether the role's work is divided by partition leases.
    pub fn partitioned(self) -> bool {
        matches!(self, Role::Rules | Role::Workflows | Role::Sensors)
    }

    /// The actor that does partition `p` of this role.
    fn child(self, p: u32) -> Option<Child> {
        match self {
            Role::Rules => Some(Child::Rules(p)),
            Role::Workflows => Some(Child::Workflows(p)),
            Role::Sensors => Some(Child::Timers(p)),
            Role::Api | Role::Runners => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's heartbeat entry (wire format: unknown fields tolerated).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    #[serde(default)]
    pub v: u32,
    pub name: String,
    /// Random per process start: a new incarnation of a name means the
    /// previous one is gone.
    pub incarnation: String,
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default)]
    pub pools: Vec<String>,
    #[serde(default)]
    pub api_url: Option<String>,
    #[serde(with = "time::serde_ts")]
    pub started_at: Timestamp,
    #[serde(with = "time::serde_ts")]
    pub heartbeat_at: Timestamp,
    /// Partitions owned, by role.
    #[serde(default)]
    pub partitions: BTreeMap<Role, Vec<u32>>,
}

/// One partition's lease (wire format).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lease {
    #[serde(default)]
    pub v: u32,
    /// Owning node, `None` once released.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub incarnation: Option<String>,
    /// Bumped by every change of owner.
    #[serde(default)]
    pub epoch: u64,
}

/// Whether `name` can name a node: it is a key in the `nodes` bucket and
/// the last tokens of the subject other nodes ask it about its runs on, so
/// letters, digits, `-` and `_`, in dot-separated parts (host names fit).
pub fn is_node_name(name: &str) -> bool {
    name.split('.').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// The lease key of partition `p` of `role`.
pub fn lease_key(role: Role, p: u32) -> String {
    format!("{}.{p}", role.as_str())
}

fn parse_lease_key(key: &str) -> Option<(Role, u32)> {
    let (role, p) = key.split_once('.')?;
    Some((Role::parse(role).ok()?, p.parse().ok()?))
}

/// The `nodes` bucket in memory: entry and revision by name.
#[derive(Debug, Default)]
pub struct Members(BTreeMap<String, (Member, u64)>);

impl Mirror for Members {
    fn apply(&mut self, entry: &kv::Entry) {
        match entry.operation {
            kv::Operation::Put => match from_bytes::<Member>(&entry.key, &entry.value) {
                Ok(m) => {
                    self.0.insert(entry.key.clone(), (m, entry.revision));
                }
                Err(e) => tracing::warn!(error = %e, "unreadable node entry"),
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                self.0.remove(&entry.key);
            }
        }
    }
}

/// The `partitions` bucket in memory: lease and revision by role and
/// partition.
#[derive(Debug, Default)]
pub struct Leases(BTreeMap<(Role, u32), (Lease, u64)>);

impl Mirror for Leases {
    fn apply(&mut self, entry: &kv::Entry) {
        let Some(key) = parse_lease_key(&entry.key) else {
            return;
        };
        match entry.operation {
            kv::Operation::Put => match from_bytes::<Lease>(&entry.key, &entry.value) {
                Ok(l) => {
                    self.0.insert(key, (l, entry.revision));
                }
                Err(e) => tracing::warn!(error = %e, "unreadable lease"),
            },
            kv::Operation::Delete | kv::Operation::Purge => {
                self.0.remove(&key);
            }
        }
    }
}

/// How many of `count` partitions `me` should own among the live `names`
/// (which include `me`): an even share, the remainder to the first names
/// in order.
pub fn quota(names: &BTreeSet<String>, me: &str, count: u32) -> u32 {
    let n = names.len().max(1) as u32;
    let rank = names.iter().position(|x| x == me).unwrap_or(0) as u32;
    count / n + u32::from(rank < count % n)
}

/// What a node changes this round for one role.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Partitions to stop and release.
    pub release: Vec<u32>,
    /// Partitions to try to take, in order.
    pub claim: Vec<u32>,
}

/// Moves only what the quota requires: releases the surplus (highest
/// partitions first), or claims the shortfall from `claimable` in an
/// order particular to `me`, so that nodes claiming at once rarely race
/// for the same partition.
pub fn plan(me: &str, quota: u32, held: &BTreeSet<u32>, claimable: &[u32]) -> Plan {
    let held_n = held.len() as u32;
    if held_n > quota {
        return Plan {
            release: held
                .iter()
                .rev()
                .take((held_n - quota) as usize)
                .copied()
                .collect(),
            claim: vec![],
        };
    }
    let mut order: Vec<u32> = claimable.to_vec();
    order.sort_by_key(|p| ids::partition_of(&format!("{me}/{p}"), u32::MAX));
    order.truncate((quota - held_n) as usize);
    Plan {
        release: vec![],
        claim: order,
    }
}

/// When this node last saw each member's entry change, on its own clock.
#[derive(Debug, Default)]
struct Sightings {
    seen: HashMap<String, Sighting>,
    /// Incarnations replaced by a newer one of the same name: gone.
    superseded: HashSet<String>,
}

#[derive(Debug)]
struct Sighting {
    /// Revision of the entry; 0 for an owner named by a lease whose entry
    /// was never seen.
    revision: u64,
    incarnation: String,
    since: Instant,
    /// The entry was deleted (the node left) or expired.
    gone: bool,
}

impl Sightings {
    fn observe(&mut self, members: &Members, leases: &Leases, now: Instant) {
        for (name, (m, rev)) in &members.0 {
            match self.seen.get_mut(name) {
                Some(s) if s.revision == *rev => {}
                Some(s) => {
                    if s.incarnation != m.incarnation && !s.incarnation.is_empty() {
                        self.superseded.insert(s.incarnation.clone());
                    }
                    *s = Sighting {
                        revision: *rev,
                        incarnation: m.incarnation.clone(),
                        since: now,
                        gone: false,
                    };
                }
                None => {
                    self.seen.insert(
                        name.clone(),
                        Sighting {
                            revision: *rev,
                            incarnation: m.incarnation.clone(),
                            since: now,
                            gone: false,
                        },
                    );
                }
            }
        }
        for (name, s) in &mut self.seen {
            if s.revision != 0 && !members.0.contains_key(name) {
                s.gone = true;
            }
        }
        for (lease, _) in leases.0.values() {
            if let Some(owner) = &lease.owner {
                self.seen.entry(owner.clone()).or_insert_with(|| Sighting {
                    revision: 0,
                    incarnation: String::new(),
                    since: now,
                    gone: false,
                });
            }
        }
    }

    /// Whether `name` heartbeated within `LEASE_TTL` as this node saw it.
    fn live(&self, name: &str, now: Instant) -> bool {
        self.seen
            .get(name)
            .is_some_and(|s| !s.gone && now.duration_since(s.since) < LEASE_TTL)
    }
}

/// One node as the cluster sees it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    #[serde(flatten)]
    pub member: Member,
    /// Whether its heartbeat is current, as this node sees it.
    pub alive: bool,
}

/// The cluster as this node last saw it, for the API.
#[derive(Debug, Clone, Default)]
pub struct ClusterView(Arc<RwLock<Vec<MemberView>>>);

impl ClusterView {
    /// Every node with an entry, by name.
    pub fn members(&self) -> Vec<MemberView> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, members: Vec<MemberView>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = members;
    }
}

/// This node's side of the cluster: heartbeats, leases, and which
/// partition actors the supervisor runs.
pub struct Coordinator {
    bus: Bus,
    nodes: kv::Store,
    leases_kv: kv::Store,
    members: Mirrored<Members>,
    leases: Mirrored<Leases>,
    me: Member,
    sightings: Sightings,
    /// Leases this node holds, with the revision of its write.
    held: BTreeMap<(Role, u32), u64>,
    /// Until when the last acknowledged heartbeat keeps the leases.
    lease: LeaseValidity,
    supervisor: ActorRef<NodeMsg>,
    view: ClusterView,
}

impl fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator")
            .field("node", &self.me.name)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

impl Coordinator {
    /// Opens the buckets and their mirrors for node `me`.
    pub async fn open(
        bus: &Bus,
        me: Member,
        supervisor: ActorRef<NodeMsg>,
        lease: LeaseValidity,
    ) -> Result<Coordinator, EngineError> {
        let open = |name: &'static str| {
            let js = bus.js.clone();
            async move {
                js.get_key_value(name)
                    .await
                    .map_err(|e| bus_err(&format!("open bucket {name}"), e))
            }
        };
        let nodes = open(NODES_BUCKET).await?;
        let leases_kv = open(LEASES_BUCKET).await?;
        Ok(Coordinator {
            members: Mirrored::start(&nodes, NODES_BUCKET).await?,
            leases: Mirrored::start(&leases_kv, LEASES_BUCKET).await?,
            bus: bus.clone(),
            nodes,
            leases_kv,
            me,
            sightings: Sightings::default(),
            held: BTreeMap::new(),
            lease,
            supervisor,
            view: ClusterView::default(),
        })
    }

    /// The view the API reads.
    pub fn view(&self) -> ClusterView {
        self.view.clone()
    }

    /// This node, as it heartbeats.
    pub fn member(&self) -> Member {
        self.me.clone()
    }

    /// Keeps `view` (the one the API already reads) current, instead of a
    /// new one: for a coordinator that replaces a failed one.
    pub fn sharing_view(mut self, view: ClusterView) -> Coordinator {
        self.view = view;
        self
    }

    /// Heartbeats and rebalances every `HEARTBEAT_EVERY` until `stop`,
    /// then stops and releases every partition and leaves.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(HEARTBEAT_EVERY) => self.round().await,
            }
        }
        self.leave().await;
    }

    /// One heartbeat and one rebalancing step.
    pub async fn round(&mut self) {
        self.heartbeat().await;
        if !self.valid(Instant::now()) {
            if !self.held.is_empty() {
                tracing::warn!(node = %self.me.name, partitions = self.held.len(),
                    "no heartbeat acknowledged in time; stopping every partition");
                let all: Vec<_> = self.held.keys().copied().collect();
                self.stop(&all).await;
                self.held.clear();
            }
            return;
        }
        let now = Instant::now();
        self.sightings
            .observe(&self.members.read(), &self.leases.read(), now);
        self.publish_view(now);
        for role in self.me.roles.clone() {
            if role.partitioned() {
                self.balance(role, now).await;
            }
        }
    }

    fn valid(&self, now: Instant) -> bool {
        self.lease.valid_at(now)
    }

    async fn heartbeat(&mut self) {
        let mut partitions: BTreeMap<Role, Vec<u32>> = BTreeMap::new();
        for (role, p) in self.held.keys() {
            partitions.entry(*role).or_default().push(*p);
        }
        self.me.partitions = partitions;
        self.me.heartbeat_at = time::now();
        let Ok(bytes) = to_bytes(&self.me) else {
            return;
        };
        let sent = Instant::now();
        match tokio::time::timeout(HEARTBEAT_TIMEOUT, self.nodes.put(&self.me.name, bytes)).await {
            Ok(Ok(_)) => self.lease.hold_until(sent + LEASE_TTL - FENCE_MARGIN),
            Ok(Err(e)) => tracing::warn!(error = %e, "heartbeat failed"),
            Err(_) => {
                tracing::warn!(timeout = ?HEARTBEAT_TIMEOUT, "heartbeat not acknowledged in time")
            }
        }
    }

    fn publish_view(&self, now: Instant) {
        let members = self.members.read();
        let view = members
            .0
            .values()
            .map(|(m, _)| MemberView {
                alive: m.name == self.me.name || self.sightings.live(&m.name, now),
                member: m.clone(),
            })
            .collect();
        self.view.set(view);
    }

    /// Whether this node may take a partition whose lease is `lease`.
    fn claimable(&self, lease: Option<&Lease>, now: Instant) -> bool {
        let Some(lease) = lease else { return true };
        let Some(owner) = &lease.owner else {
            return true;
        };
        if *owner == self.me.name {
            // Ours from an earlier life of this node, or ours before it
            // fenced itself: either way nobody is running it.
            return true;
        }
        if lease
            .incarnation
            .as_ref()
            .is_some_and(|i| self.sightings.superseded.contains(i))
        {
            return true;
        }
        !self.sightings.live(owner, now)
    }

    async fn balance(&mut self, role: Role, now: Instant) {
        let count = self.bus.partitions;
        let names: BTreeSet<String> = {
            let members = self.members.read();
            members
                .0
                .values()
                .filter(|(m, _)| m.roles.contains(&role) && self.sightings.live(&m.name, now))
                .map(|(m, _)| m.name.clone())
                .chain([self.me.name.clone()])
                .collect()
        };
        let quota = quota(&names, &self.me.name, count);
        // A lease that now names someone else was taken: stop at once.
        let lost: Vec<(Role, u32)> = {
            let leases = self.leases.read();
            self.held
                .iter()
                .filter(|(key, rev)| {
                    leases.0.get(key).is_some_and(|(l, r)| {
                        r > rev && l.incarnation.as_ref() != Some(&self.me.incarnation)
                    })
                })
                .map(|(key, _)| *key)
                .collect()
        };
        if !lost.is_empty() {
            tracing::warn!(role = %role, partitions = ?lost, "leases taken by another node; stopping");
            self.stop(&lost).await;
            for key in &lost {
                self.held.remove(key);
            }
        }
        let held: BTreeSet<u32> = self
            .held
            .keys()
            .filter(|(r, _)| *r == role)
            .map(|(_, p)| *p)
            .collect();
        let claimable: Vec<u32> = {
            let leases = self.leases.read();
            (0..count)
                .filter(|p| !held.contains(p))
                .filter(|p| self.claimable(leases.0.get(&(role, *p)).map(|(l, _)| l), now))
                .collect()
        };
        let plan = plan(&self.me.name, quota, &held, &claimable);
        if !plan.release.is_empty() {
            let keys: Vec<_> = plan.release.iter().map(|p| (role, *p)).collect();
            self.stop(&keys).await;
            for key in keys {
                if let Some(rev) = self.held.remove(&key) {
                    self.release(key, rev).await;
                }
            }
            tracing::info!(role = %role, partitions = ?plan.release, quota, "released partitions");
        }
        let mut claimed = Vec::new();
        for p in plan.claim {
            if !self.valid(Instant::now()) {
                break;
            }
            if let Some(rev) = self.claim(role, p).await {
                self.held.insert((role, p), rev);
                if let Some(child) = role.child(p) {
                    let _ = self.supervisor.cast(NodeMsg::Own(child));
                }
                claimed.push(p);
            }
        }
        if !claimed.is_empty() {
            tracing::info!(role = %role, partitions = ?claimed, quota, "took partitions");
        }
    }

    /// Takes partition `p` of `role` by compare-and-swap on the revision
    /// this node last saw; the new revision, or `None` if someone else
    /// wrote it first.
    async fn claim(&self, role: Role, p: u32) -> Option<u64> {
        let key = lease_key(role, p);
        let current = self.leases.read().0.get(&(role, p)).cloned();
        let lease = Lease {
            v: 1,
            owner: Some(self.me.name.clone()),
            incarnation: Some(self.me.incarnation.clone()),
            epoch: current.as_ref().map_or(0, |(l, _)| l.epoch) + 1,
        };
        let bytes = to_bytes(&lease).ok()?;
        let written = match current {
            None => self.leases_kv.create(&key, bytes).await.ok(),
            Some((_, rev)) => self.leases_kv.update(&key, bytes, rev).await.ok(),
        };
        if written.is_none() {
            tracing::debug!(key = %key, "lost the race for a lease");
        }
        written
    }

    /// Writes a held lease back as free (after its actor stopped).
    async fn release(&self, (role, p): (Role, u32), rev: u64) {
        let epoch = self
            .leases
            .read()
            .0
            .get(&(role, p))
            .map_or(0, |(l, _)| l.epoch);
        let free = Lease {
            v: 1,
            owner: None,
            incarnation: None,
            epoch,
        };
        let Ok(bytes) = to_bytes(&free) else { return };
        if let Err(e) = self.leases_kv.update(lease_key(role, p), bytes, rev).await {
            tracing::warn!(role = %role, partition = p, error = %e, "releasing a lease failed");
        }
    }

    /// Stops the actors of `keys` and waits until they have stopped.
    async fn stop(&self, keys: &[(Role, u32)]) {
        let children: Vec<Child> = keys.iter().filter_map(|(r, p)| r.child(*p)).collect();
        let disown = |reply| NodeMsg::Disown(children, reply);
        if let Err(e) = call_within(&self.supervisor, CALL_TIMEOUT, disown).await {
            tracing::warn!(error = %e, "stopping partitions failed");
        }
    }

    /// Stops and releases every partition and removes this node's entry.
    async fn leave(mut self) {
        let keys: Vec<_> = self.held.keys().copied().collect();
        self.stop(&keys).await;
        for (key, rev) in std::mem::take(&mut self.held) {
            self.release(key, rev).await;
        }
        if let Err(e) = self.nodes.delete(&self.me.name).await {
            tracing::warn!(error = %e, "removing the node entry failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn names(n: &[&str]) -> BTreeSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn quotas_split_evenly_and_sum_to_the_count() {
        let all = names(&["a", "b", "c"]);
        let q: Vec<u32> = ["a", "b", "c"].iter().map(|m| quota(&all, m, 64)).collect();
        assert_eq!(q, vec![22, 21, 21]);
        assert_eq!(quota(&names(&["a"]), "a", 64), 64);
    }

    #[test]
    fn a_node_above_quota_releases_only_the_surplus() {
        let held: BTreeSet<u32> = (0..64).collect();
        let p = plan("a", 32, &held, &[]);
        assert_eq!(p.release.len(), 32);
        assert!(p.claim.is_empty());
        assert!(p.release.iter().all(|x| *x >= 32));
    }

    #[test]
    fn a_node_below_quota_claims_only_the_shortfall() {
        let held: BTreeSet<u32> = (0..10).collect();
        let claimable: Vec<u32> = (10..64).collect();
        let p = plan("b", 21, &held, &claimable);
        assert!(p.release.is_empty());
        assert_eq!(p.claim.len(), 11);
        let p = plan("b", 10, &held, &claimable);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn claim_orders_differ_between_nodes() {
        let claimable: Vec<u32> = (0..64).collect();
        let a = plan("a", 8, &BTreeSet::new(), &claimable).claim;
        let b = plan("b", 8, &BTreeSet::new(), &claimable).claim;
        assert_ne!(a, b);
    }

    #[test]
    fn joining_moves_about_a_share() {
        // Three nodes split 64; a fourth joins: every old node gives up
        // only its surplus, and the newcomer takes exactly its quota.
        let before = names(&["a", "b", "c"]);
        let after = names(&["a", "b", "c", "d"]);
        let moved: u32 = ["a", "b", "c"]
            .iter()
            .map(|m| quota(&before, m, 64) - quota(&after, m, 64))
            .sum();
        assert_eq!(moved, quota(&after, "d", 64));
        assert_eq!(moved, 16);
    }

    fn member(name: &str, incarnation: &str) -> Member {
        Member {
            v: 1,
            name: name.into(),
            incarnation: incarnation.into(),
            roles: vec![Role::Rules],
            pools: vec![],
            api_url: None,
            started_at: time::now(),
            heartbeat_at: time::now(),
            partitions: BTreeMap::new(),
        }
    }

    fn members(entries: &[(&str, &str, u64)]) -> Members {
        Members(
            entries
                .iter()
                .map(|(n, i, rev)| (n.to_string(), (member(n, i), *rev)))
                .collect(),
        )
    }

    #[test]
    fn a_member_is_dead_once_its_revision_stood_still_for_the_ttl() {
        let t0 = Instant::now();
        let mut seen = Sightings::default();
        let leases = Leases::default();
        seen.observe(&members(&[("a", "i1", 5)]), &leases, t0);
        assert!(seen.live("a", t0 + LEASE_TTL - Duration::from_millis(1)));
        assert!(!seen.live("a", t0 + LEASE_TTL));
        // A new heartbeat restarts the clock from when it is seen.
        let t1 = t0 + Duration::from_secs(3);
        seen.observe(&members(&[("a", "i1", 6)]), &leases, t1);
        assert!(seen.live("a", t0 + LEASE_TTL));
        assert!(!seen.live("a", t1 + LEASE_TTL));
        // The same revision seen again later does not.
        seen.observe(
            &members(&[("a", "i1", 6)]),
            &leases,
            t1 + Duration::from_secs(4),
        );
        assert!(!seen.live("a", t1 + LEASE_TTL));
    }

    #[test]
    fn a_deleted_entry_is_dead_at_once_and_a_restart_supersedes() {
        let t0 = Instant::now();
        let mut seen = Sightings::default();
        let leases = Leases::default();
        seen.observe(&members(&[("a", "i1", 1), ("b", "j1", 2)]), &leases, t0);
        seen.observe(&members(&[("a", "i2", 3)]), &leases, t0);
        assert!(!seen.live("b", t0), "b left");
        assert!(seen.live("a", t0));
        assert!(seen.superseded.contains("i1"));
        assert!(!seen.superseded.contains("i2"));
    }

    #[test]
    fn an_owner_never_seen_is_dead_only_after_the_ttl() {
        let t0 = Instant::now();
        let mut seen = Sightings::default();
        let mut leases = Leases::default();
        let lease = Lease {
            v: 1,
            owner: Some("ghost".into()),
            incarnation: Some("g1".into()),
            epoch: 3,
        };
        leases.0.insert((Role::Rules, 0), (lease, 9));
        seen.observe(&Members::default(), &leases, t0);
        assert!(seen.live("ghost", t0 + Duration::from_secs(1)));
        assert!(!seen.live("ghost", t0 + LEASE_TTL));
    }

    #[test]
    fn roles_parse_and_reject_unknown() {
        assert_eq!(Role::parse("timers"), Ok(Role::Sensors));
        assert_eq!(Role::parse("api"), Ok(Role::Api));
        assert!(Role::parse("cook").is_err());
        assert_eq!(parse_lease_key("rules.12"), Some((Role::Rules, 12)));
        assert_eq!(
            parse_lease_key(&lease_key(Role::Sensors, 3)),
            Some((Role::Sensors, 3))
        );
    }
}
