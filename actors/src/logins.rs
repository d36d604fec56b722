//! Failed-login throttling, per user and per client address, shared by
//! every node through the `logins` bucket.
//!
//! Each password check first records an attempt ([`Bucket::modify`]:
//! compare-and-swap, so parallel guesses on any node count one by one), then the caller reports
//! success (the user's record is forgotten, the address's attempt taken
//! back) or leaves the failure counted. Past a free number of failures a
//! subject is held back, for [`FIRST_BACKOFF`] doubling with every further
//! failure; past [`Limits::lock_after`] failures it is locked for
//! [`LOCK_TIME`]. While held back, attempts are refused without checking
//! the password. An admin lifts a hold with [`LoginThrottle::clear`].
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
/// How long the bucket keeps a record at all.
pub const LOGINS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
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

/// The first hold after the free failures; each further failure doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(30);
/// How long a lock lasts; also how long after its last failure a record
/// is forgotten.
pub const LOCK_TIME: Duration = Duration::from_secs(15 * 60);

/// When a subject is held back and locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Failures allowed before the first back-off.
    pub free: u32,
    /// Failures after which the subject is locked for [`LOCK_TIME`].
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

    fn limits(&self) -> Limits {
        match self {
            Subject::User(_) => USER_LIMITS,
            Subject::Address(_) => ADDRESS_LIMITS,
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
    /// [`LOCK_TIME`] and no longer holding anything back.
    fn current(self, now: &Timestamp) -> Option<Failures> {
        let quiet = self.last + chrono::Duration::from_std(LOCK_TIME).unwrap_or_default();
        let held = self.until.is_some_and(|u| u > *now);
        (held || quiet > *now).then_some(self)
    }

    /// With `count` failures, the hold from `now` as `limits` set it.
    fn with_count(count: u32, limits: Limits, now: Timestamp) -> Failures {
        let hold = if count >= limits.lock_after {
            Some(LOCK_TIME)
        } else if count >= limits.free {
            Some(FIRST_BACKOFF.saturating_mul(1 << (count - limits.free).min(16)))
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
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginThrottle")
    }
}

impl LoginThrottle {
    /// The `logins` bucket (opened by [`Bus::open`]).
    pub fn open(bus: &Bus) -> Result<LoginThrottle, EngineError> {
        Ok(LoginThrottle {
            bucket: Bucket::new(bus.bucket(LOGINS_BUCKET)?.clone()),
        })
    }

    async fn read(&self, subject: &Subject) -> Result<Option<Failures>, EngineError> {
        let now = time::now();
        Ok(self
            .bucket
            .get(&subject.key())
            .await?
            .and_then(|(f, _)| f.current(&now)))
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
                        locked: f.count >= subject.limits().lock_after,
                        subject: subject.clone(),
                        until,
                        failures: f.count,
                    }));
                }
            }
        }
        for subject in &subjects {
            let limits = subject.limits();
            self.bucket
                .modify(&subject.key(), |f| {
                    let now = time::now();
                    let count = f.and_then(|f| f.current(&now)).map_or(0, |f| f.count);
                    let next = Failures::with_count(count.saturating_add(1), limits, now);
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
                    let limits = subject.limits();
                    self.bucket
                        .modify(&subject.key(), |f| match f {
                            Some(f) if f.count > 0 => {
                                Change::Write(Failures::with_count(f.count - 1, limits, f.last), ())
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
        let hold = |count| {
            Failures::with_count(count, USER_LIMITS, now)
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
        let old = Failures::with_count(3, USER_LIMITS, long_ago);
        assert_eq!(old.current(&now), None);
        let recent = Failures::with_count(3, USER_LIMITS, now);
        assert!(recent.current(&now).is_some());
        let mut held = Failures::with_count(12, USER_LIMITS, long_ago);
        held.until = Some(now + chrono::Duration::minutes(1));
        assert!(held.current(&now).is_some());
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
