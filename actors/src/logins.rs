//! Failed-login throttling, per user and per client address, shared by
//! every node through the `logins` bucket.
//!
//! Each password check first records an attempt ([`Bucket::modify`]:
//! compare-and-swap, so parallel guesses on any node count one by one), then the caller reports
//! success (the user's record is forgotten, the address's attempt taken
//! back) or leaves the failure counted. Past a free number of failures a
//! subject is held back, for [`Throttling::first_backoff`] seconds doubling
//! with every further failure; past [`Limits::lock_after`] failures it is
//! locked for [`Throttling::lock_time`] seconds. While held back, attempts
//! are refused without checking the password. An admin lifts a hold with
//! [`LoginThrottle::clear`]. The numbers are node.yaml's
//! `auth.login_throttling` ([`Throttling`]).
//!
//! | bucket | key | value |
//! | --- | --- | --- |
//! | `logins` | `user.<hex name>` / `address.<hex address>` | [`Failures`] (the bucket forgets after a day) |

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use squall_domain::time::{self, Timestamp};

use crate::bus::{Bucket, Bus, Change};
use crate::error::{bus_err, EngineError};

/// KV bucket of failed logins.
pub const LOGINS_BUCKET: &str = "logins";
pub use crate::timing::LOGINS_MAX_AGE;
/// The buckets this module keeps, as created with `replicas` replicas.
pub fn buckets(replicas: usize) -> Vec<kv::Config> {
    vec![kv::Config {
        max_age: LOGINS_MAX_AGE,
        ..crate::bus::bucket(
            LOGINS_BUCKET,
            "Failed logins by user and by client address; entries expire.",
            1,
            replicas,
        )
    }]
}

/// When a subject is held back and locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Failures allowed before the first back-off.
    pub free: u32,
    /// Failures after which the subject is locked for
    /// [`Throttling::lock_time`].
    pub lock_after: u32,
}

/// Per user: five wrong passwords, then back-off, locked at the tenth.
pub const USER_LIMITS: Limits = Limits {
    free: 5,
    lock_after: 10,
};
/// Per client address (many users may share one, behind a NAT): twenty,
/// then back-off, locked at the fiftieth.
pub const ADDRESS_LIMITS: Limits = Limits {
    free: 20,
    lock_after: 50,
};

/// node.yaml's `auth.login_throttling`: the limits per user and per
/// client address, and how long holds last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Throttling {
    /// Per user name.
    pub user: Limits,
    /// Per client address.
    pub address: Limits,
    /// Seconds of the first hold after the free failures; each further
    /// failure doubles it (default 30).
    pub first_backoff: u64,
    /// Seconds a lock lasts; also how long after its last failure a
    /// record is forgotten (default 900).
    pub lock_time: u64,
}

impl Default for Throttling {
    fn default() -> Self {
        Throttling {
            user: USER_LIMITS,
            address: ADDRESS_LIMITS,
            first_backoff: 30,
            lock_time: 15 * 60,
        }
    }
}

impl Throttling {
    /// What is wrong with these settings, naming the field.
    pub fn check(&self) -> Result<(), String> {
        for (name, l) in [("user", self.user), ("address", self.address)] {
            if l.lock_after == 0 || l.free > l.lock_after {
                return Err(format!(
                    "auth.login_throttling.{name}: lock_after ({}) must be at least 1 and at least free ({})",
                    l.lock_after, l.free
                ));
            }
        }
        if self.first_backoff == 0 || self.first_backoff > self.lock_time {
            return Err(format!(
                "auth.login_throttling.first_backoff ({} s) must be at least 1 and at most lock_time ({} s)",
                self.first_backoff, self.lock_time
            ));
        }
        if self.lock_time > LOGINS_MAX_AGE.as_secs() {
            return Err(format!(
                "auth.login_throttling.lock_time ({} s) must be at most {} s (a day: the bucket forgets after that)",
                self.lock_time,
                LOGINS_MAX_AGE.as_secs()
            ));
        }
        Ok(())
    }

    fn limits(&self, subject: &Subject) -> Limits {
        match subject {
            Subject::User(_) => self.user,
            Subject::Address(_) => self.address,
        }
    }

    fn lock(&self) -> Duration {
        Duration::from_secs(self.lock_time)
    }

    /// With `count` failures of a subject held to `limits`, its record
    /// from `now`.
    fn failures(&self, count: u32, limits: Limits, now: Timestamp) -> Failures {
        let hold = if count >= limits.lock_after {
            Some(self.lock())
        } else if count >= limits.free {
            Some(
                Duration::from_secs(self.first_backoff)
                    .saturating_mul(1 << (count - limits.free).min(16))
                    .min(self.lock()),
            )
        } else {
            None
        };
        Failures {
            count,
            last: now,
            until: hold.map(|h| now + chrono::Duration::from_std(h).unwrap_or_default()),
        }
    }
}

/// Who failed: a user name or a client address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum Subject {
    User(String),
    Address(String),
}

impl Subject {
    fn key(&self) -> String {
        match self {
            Subject::User(n) => format!("user.{}", hex::encode(n)),
            Subject::Address(a) => format!("address.{}", hex::encode(a)),
        }
    }

    fn from_key(key: &str) -> Option<Subject> {
        let (kind, name) = key.split_once('.')?;
        let name = String::from_utf8(hex::decode(name).ok()?).ok()?;
        match kind {
            "user" => Some(Subject::User(name)),
            "address" => Some(Subject::Address(name)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::User(n) => write!(f, "user {n:?}"),
            Subject::Address(a) => write!(f, "client address {a}"),
        }
    }
}

/// A subject's recent failures, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    /// Failed attempts (an attempt under way counts until it succeeds).
    pub count: u32,
    /// The latest attempt.
    pub last: Timestamp,
    /// Attempts are refused until then.
    #[serde(default)]
    pub until: Option<Timestamp>,
}

impl Failures {
    /// The record as it stands at `now`: forgotten once it is older than
    /// `forget` and no longer holding anything back.
    fn current(self, now: &Timestamp, forget: Duration) -> Option<Failures> {
        let quiet = self.last + chrono::Duration::from_std(forget).unwrap_or_default();
        let held = self.until.is_some_and(|u| u > *now);
        (held || quiet > *now).then_some(self)
    }
}

/// Why an attempt was refused before its password was looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub subject: Subject,
    /// Locked (rather than backing off).
    pub locked: bool,
    /// Until when attempts are refused.
    pub until: Timestamp,
    pub failures: u32,
}

impl Refusal {
    /// Whole seconds until the hold ends (at least one).
    pub fn retry_after(&self) -> u64 {
        let left = (self.until - time::now()).num_milliseconds().max(0) as u64;
        left.div_ceil(1000).max(1)
    }
}

/// An attempt recorded by [`LoginThrottle::begin`], to report on.
#[derive(Debug)]
pub struct Attempt {
    subjects: Vec<Subject>,
}

/// The cluster's failed logins.
#[derive(Clone)]
pub struct LoginThrottle {
    bucket: Bucket<Failures>,
    settings: Throttling,
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginThrottle")
    }
}

impl LoginThrottle {
    /// The `logins` bucket (opened by [`Bus::open`]), held to `settings`.
    pub fn open(bus: &Bus, settings: Throttling) -> Result<LoginThrottle, EngineError> {
        Ok(LoginThrottle {
            bucket: Bucket::new(bus.bucket(LOGINS_BUCKET)?.clone()),
            settings,
        })
    }

    async fn read(&self, subject: &Subject) -> Result<Option<Failures>, EngineError> {
        let now = time::now();
        Ok(self
            .bucket
            .get(&subject.key())
            .await?
            .and_then(|(f, _)| f.current(&now, self.settings.lock())))
    }

    /// Before a password check: refuses if `user` or `address` is held
    /// back, else counts the attempt as a failure until
    /// [`LoginThrottle::succeeded`] says otherwise.
    pub async fn begin(
        &self,
        user: &str,
        address: Option<&str>,
    ) -> Result<Result<Attempt, Refusal>, EngineError> {
        let mut subjects = vec![Subject::User(user.to_string())];
        subjects.extend(address.map(|a| Subject::Address(a.to_string())));
        let now = time::now();
        for subject in &subjects {
            if let Some(f) = self.read(subject).await? {
                if let Some(until) = f.until.filter(|u| *u > now) {
                    return Ok(Err(Refusal {
                        locked: f.count >= self.settings.limits(subject).lock_after,
                        subject: subject.clone(),
                        until,
                        failures: f.count,
                    }));
                }
            }
        }
        let settings = self.settings;
        for subject in &subjects {
            let limits = settings.limits(subject);
            self.bucket
                .modify(&subject.key(), |f| {
                    let now = time::now();
                    let count = f
                        .and_then(|f| f.current(&now, settings.lock()))
                        .map_or(0, |f| f.count);
                    let next = settings.failures(count.saturating_add(1), limits, now);
                    Change::Write(next, ())
                })
                .await?;
        }
        Ok(Ok(Attempt { subjects }))
    }

    /// The attempt's password was right: the user's failures are
    /// forgotten and the address's attempt is taken back.
    pub async fn succeeded(&self, attempt: Attempt) -> Result<(), EngineError> {
        for subject in &attempt.subjects {
            match subject {
                Subject::User(_) => {
                    self.bucket
                        .raw()
                        .purge(subject.key())
                        .await
                        .map_err(|e| bus_err("forget failed logins", e))?;
                }
                Subject::Address(_) => {
                    let settings = self.settings;
                    let limits = settings.limits(subject);
                    self.bucket
                        .modify(&subject.key(), |f| match f {
                            Some(f) if f.count > 0 => {
                                Change::Write(settings.failures(f.count - 1, limits, f.last), ())
                            }
                            _ => Change::Keep(()),
                        })
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Every subject with recent failures.
    pub async fn list(&self) -> Result<Vec<(Subject, Failures)>, EngineError> {
        let mut keys = self
            .bucket
            .raw()
            .keys()
            .await
            .map_err(|e| bus_err("list logins", e))?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| bus_err("list logins", e))?;
            let Some(subject) = Subject::from_key(&key) else {
                continue;
            };
            if let Some(f) = self.read(&subject).await? {
                out.push((subject, f));
            }
        }
        Ok(out)
    }

    /// Forgets a subject's failures, lifting any hold; false if it had
    /// none.
    pub async fn clear(&self, subject: &Subject) -> Result<bool, EngineError> {
        if self.read(subject).await?.is_none() {
            return Ok(false);
        }
        self.bucket
            .raw()
            .purge(subject.key())
            .await
            .map_err(|e| bus_err("clear logins", e))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_grow_then_lock() {
        let now = time::now();
        let t = Throttling::default();
        let hold = |count| {
            t.failures(count, USER_LIMITS, now)
                .until
                .map(|u| (u - now).num_seconds())
        };
        assert_eq!(hold(4), None);
        assert_eq!(hold(5), Some(30));
        assert_eq!(hold(6), Some(60));
        assert_eq!(hold(8), Some(240));
        assert_eq!(hold(9), Some(480));
        assert_eq!(hold(10), Some(900));
        assert_eq!(hold(40), Some(900));
    }

    #[test]
    fn old_records_are_forgotten_unless_holding() {
        let now = time::now();
        let long_ago = now - chrono::Duration::hours(1);
        let t = Throttling::default();
        let old = t.failures(3, USER_LIMITS, long_ago);
        assert_eq!(old.current(&now, t.lock()), None);
        let recent = t.failures(3, USER_LIMITS, now);
        assert!(recent.current(&now, t.lock()).is_some());
        let mut held = t.failures(12, USER_LIMITS, long_ago);
        held.until = Some(now + chrono::Duration::minutes(1));
        assert!(held.current(&now, t.lock()).is_some());
    }

    #[test]
    fn settings_are_checked_and_holds_capped() {
        let mut t = Throttling::default();
        assert_eq!(t.check(), Ok(()));
        t.user = Limits {
            free: 3,
            lock_after: 20,
        };
        t.first_backoff = 10;
        t.lock_time = 60;
        let now = time::now();
        let hold = |count| {
            t.failures(count, t.user, now)
                .until
                .map(|u| (u - now).num_seconds())
        };
        assert_eq!((hold(2), hold(3), hold(4)), (None, Some(10), Some(20)));
        assert_eq!(hold(9), Some(60), "a back-off never outlasts a lock");
        for (bad, field) in [
            (
                Throttling {
                    user: Limits {
                        free: 6,
                        lock_after: 5,
                    },
                    ..Throttling::default()
                },
                "login_throttling.user",
            ),
            (
                Throttling {
                    first_backoff: 0,
                    ..Throttling::default()
                },
                "first_backoff",
            ),
            (
                Throttling {
                    lock_time: 2 * 86_400,
                    ..Throttling::default()
                },
                "lock_time",
            ),
        ] {
            let err = bad.check().unwrap_err();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn subjects_round_trip_through_keys() {
        for s in [
            Subject::User("al ice".into()),
            Subject::Address("::1".into()),
        ] {
            assert_eq!(Subject::from_key(&s.key()), Some(s));
        }
    }
}
