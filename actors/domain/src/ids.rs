//! Identifiers in StackStorm's shape: 24 hex characters, like a MongoDB
//! ObjectId, whose first 8 encode the creation second so ids sort by time.
//!
//! Ids of effects are *derived from their cause* ([`derived`]) so that a
//! redelivered cause produces the same id and the effect is written once.

use sha2::{Digest, Sha256};

use crate::time::Timestamp;

/// A fresh random id stamped with `at`.
pub fn fresh(at: &Timestamp) -> String {
    let secs = at.timestamp().clamp(0, u32::MAX as i64) as u32;
    let tail: [u8; 8] = rand::random();
    format!("{secs:08x}{}", hex::encode(tail))
}

/// A deterministic id stamped with `at`, derived from `parts`: the same
/// inputs always give the same id.
pub fn derived(at: &Timestamp, parts: &[&str]) -> String {
    let secs = at.timestamp().clamp(0, u32::MAX as i64) as u32;
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    format!("{secs:08x}{}", hex::encode(&digest[..8]))
}

/// The creation second encoded in an id, if it is one of ours.
pub fn seconds_of(id: &str) -> Option<u32> {
    id.get(..8).and_then(|p| u32::from_str_radix(p, 16).ok())
}

/// Whether `s` has the shape of an id (24 lowercase hex characters).
pub fn is_id(s: &str) -> bool {
    s.len() == 24
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The partition (0..`partitions`) that owns `key`. Stable across nodes and
/// releases: FNV-1a over the bytes.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % partitions.max(1) as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::now;

    #[test]
    fn ids_have_object_id_shape_and_sort_by_time() {
        let t = now();
        let a = fresh(&t);
        assert!(is_id(&a), "{a}");
        assert_eq!(seconds_of(&a), Some(t.timestamp() as u32));
        let later = t + chrono::Duration::seconds(5);
        assert!(fresh(&later) > a);
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let t = now();
        assert_eq!(derived(&t, &["a", "b"]), derived(&t, &["a", "b"]));
        assert_ne!(derived(&t, &["a", "b"]), derived(&t, &["ab", ""]));
        assert!(is_id(&derived(&t, &["x"])));
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for k in ["a", "b", "0123456789abcdef01234567"] {
            let p = partition_of(k, 64);
            assert!(p < 64);
            assert_eq!(p, partition_of(k, 64));
        }
        assert_eq!(partition_of("anything", 1), 0);
    }
}
