//! Encryption of secret datastore values at rest: AES-256-GCM with a
//! cluster key, each value sealed with its own random nonce and stored as
//! hex of `nonce || ciphertext || tag`.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;

const NONCE_LEN: usize = 12;
/// Length of a key in hex.
pub const KEY_HEX_LEN: usize = 64;

/// Why a value or key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the encryption key must be {KEY_HEX_LEN} hex characters (256 bits)")]
    BadKey,
    #[error("the value is not something this cluster's key encrypted")]
    NotOurs,
}

/// The cluster's datastore key.
#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(..)")
    }
}

impl Cipher {
    /// A new random key, as hex, for a key file.
    pub fn generate_hex() -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        hex::encode(key)
    }

    /// The cipher for a hex key (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Cipher, SecretError> {
        let bytes = hex::decode(text.trim()).map_err(|_| SecretError::BadKey)?;
        if bytes.len() != 32 {
            return Err(SecretError::BadKey);
        }
        Ok(Cipher {
            aead: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)),
        })
    }

    /// Seals `plaintext`; every call gives a different result.
    pub fn encrypt(&self, plaintext: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .aead
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(sealed);
        hex::encode(out)
    }

    /// Opens a value [`Cipher::encrypt`] sealed with this key.
    pub fn decrypt(&self, sealed: &str) -> Result<String, SecretError> {
        let bytes = hex::decode(sealed.trim()).map_err(|_| SecretError::NotOurs)?;
        if bytes.len() <= NONCE_LEN {
            return Err(SecretError::NotOurs);
        }
        let (nonce, body) = bytes.split_at(NONCE_LEN);
        let plain = self
            .aead
            .decrypt(Nonce::from_slice(nonce), body)
            .map_err(|_| SecretError::NotOurs)?;
        let plain = String::from_utf8(plain).map_err(|_| SecretError::NotOurs)?;
        OPENED.with_borrow_mut(|opened| {
            if let Some(opened) = opened {
                opened.push(sealed.trim().to_string());
            }
        });
        Ok(plain)
    }
}

thread_local! {
    /// The sealed values opened on this thread within [`track`].
    static OPENED: std::cell::RefCell<Option<Vec<String>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` and returns, with its result, the sealed values (never the
/// plain ones) that [`Cipher::decrypt`] opened meanwhile on this thread:
/// what a caller audits. Nested calls each see their own.
pub fn track<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
    let outer = OPENED.replace(Some(Vec::new()));
    let result = f();
    let opened = OPENED.replace(outer).unwrap_or_default();
    OPENED.with_borrow_mut(|o| {
        if let Some(o) = o {
            o.extend(opened.iter().cloned());
        }
    });
    (result, opened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_reports_the_sealed_values_opened_within() {
        let c = Cipher::from_hex(&Cipher::generate_hex()).unwrap();
        let (a, b) = (c.encrypt("one"), c.encrypt("two"));
        assert_eq!(c.decrypt(&a).unwrap(), "one");
        let ((), outer) = track(|| {
            c.decrypt(&a).unwrap();
            let (plain, inner) = track(|| c.decrypt(&b).unwrap());
            assert_eq!(plain, "two");
            assert_eq!(inner, vec![b.clone()]);
            assert!(c.decrypt("00").is_err());
        });
        assert_eq!(outer, vec![a.clone(), b.clone()]);
        assert!(!outer.iter().any(|s| s.contains("one") || s.contains("two")));
    }

    #[test]
    fn round_trips_and_never_repeats() {
        let c = Cipher::from_hex(&Cipher::generate_hex()).unwrap();
        let a = c.encrypt("s3cr3t");
        let b = c.encrypt("s3cr3t");
        assert_ne!(a, b, "fresh nonce per value");
        assert!(!a.contains("s3cr3t"));
        assert_eq!(c.decrypt(&a).unwrap(), "s3cr3t");
        assert_eq!(c.decrypt(&b).unwrap(), "s3cr3t");
    }

    #[test]
    fn rejects_other_keys_tampering_and_bad_keys() {
        let c = Cipher::from_hex(&Cipher::generate_hex()).unwrap();
        let other = Cipher::from_hex(&Cipher::generate_hex()).unwrap();
        let sealed = c.encrypt("x");
        assert_eq!(other.decrypt(&sealed), Err(SecretError::NotOurs));
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            c.decrypt(&String::from_utf8(tampered).unwrap()),
            Err(SecretError::NotOurs)
        );
        assert_eq!(c.decrypt("plain text"), Err(SecretError::NotOurs));
        assert_eq!(Cipher::from_hex("abcd").unwrap_err(), SecretError::BadKey);
        assert_eq!(
            Cipher::from_hex(&"zz".repeat(32)).unwrap_err(),
            SecretError::BadKey
        );
    }
}
