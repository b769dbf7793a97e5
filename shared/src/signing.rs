//! Authenticated task messages: HMAC-SHA256 over the exact message body, with a key ring.
//!
//! Whoever can publish to the broker's tasks exchange could otherwise order deletions
//! without an API token. producer-api signs every task message it publishes and workers
//! sign the continuations they publish, with the FIRST key of `TASK_SIGNING_KEYS`; a worker
//! accepts a message signed with ANY key of its ring. Rotation: add the new key second
//! everywhere, then move it first everywhere, then drop the old one.
//!
//! The signature travels in two AMQP headers: [`KEY_ID_HEADER`] (text) and
//! [`SIGNATURE_HEADER`] (lowercase hex of the MAC).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header naming the key a task message was signed with.
pub const KEY_ID_HEADER: &str = "x-cleanup-key-id";
/// Header holding the HMAC-SHA256 of the message body, lowercase hex.
pub const SIGNATURE_HEADER: &str = "x-cleanup-signature";
/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// Longest key id accepted.
pub const MAX_KEY_ID_LEN: usize = 64;

type HmacSha256 = Hmac<Sha256>;

/// One named secret.
#[derive(Clone)]
struct Key {
    id: String,
    secret: Vec<u8>,
}

impl Key {
    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.secret).expect("HMAC accepts keys of any length")
    }
}

/// The keys of `TASK_SIGNING_KEYS`: the first signs, every one verifies. Never empty.
/// `Debug` shows the key ids only.
#[derive(Clone)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("key_ids", &self.key_ids())
            .finish_non_exhaustive()
    }
}

/// A signature to attach to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub key_id: String,
    /// Lowercase hex of the MAC.
    pub hex: String,
}

impl Signature {
    /// The AMQP headers that carry this signature.
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            (KEY_ID_HEADER, self.key_id.clone()),
            (SIGNATURE_HEADER, self.hex.clone()),
        ]
    }
}

/// Why a message's signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("unsigned task message refused: TASK_SIGNING_KEYS requires a signature")]
    Unsigned,
    #[error("signed with unknown key id `{0}`")]
    UnknownKey(String),
    #[error("bad signature (key id `{0}`)")]
    BadSignature(String),
}

fn valid_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl KeyRing {
    /// Parse `key_id:secret,key_id:secret,...`: ids `[A-Za-z0-9_.-]{1,64}` and unique,
    /// secrets at least [`MIN_SECRET_BYTES`] bytes (a secret may contain `:` but not `,`).
    /// Error messages never contain a secret.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut keys: Vec<Key> = Vec::new();
        for (position, entry) in value.split(',').map(str::trim).enumerate() {
            let position = position + 1;
            if entry.is_empty() {
                continue;
            }
            let Some((id, secret)) = entry.split_once(':') else {
                return Err(format!(
                    "TASK_SIGNING_KEYS entry #{position} must look like key_id:secret"
                ));
            };
            let (id, secret) = (id.trim(), secret.trim());
            if !valid_key_id(id) {
                return Err(format!(
                    "TASK_SIGNING_KEYS entry #{position}: the key id must be 1-{MAX_KEY_ID_LEN} \
                     characters of A-Z, a-z, 0-9, `_`, `.` or `-`"
                ));
            }
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "TASK_SIGNING_KEYS: the secret of key `{id}` is too short: use at least \
                     {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
                ));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(format!("TASK_SIGNING_KEYS names key `{id}` twice"));
            }
            keys.push(Key {
                id: id.to_owned(),
                secret: secret.as_bytes().to_vec(),
            });
        }
        if keys.is_empty() {
            return Err("TASK_SIGNING_KEYS holds no key".into());
        }
        Ok(Self { keys })
    }

    /// Id of the key that signs (the first).
    pub fn signing_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Ids of every key, signing key first.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }

    /// Sign `body` with the first key.
    pub fn sign(&self, body: &[u8]) -> Signature {
        let key = &self.keys[0];
        let mut mac = key.mac();
        mac.update(body);
        Signature {
            key_id: key.id.clone(),
            hex: hex::encode(mac.finalize().into_bytes()),
        }
    }

    /// Check that `signature_hex` is the MAC of `body` under the key `key_id` (constant
    /// time). A signature that is not hex is simply a bad signature.
    pub fn verify(
        &self,
        body: &[u8],
        key_id: &str,
        signature_hex: &str,
    ) -> Result<(), VerifyError> {
        let Some(key) = self.keys.iter().find(|k| k.id == key_id) else {
            return Err(VerifyError::UnknownKey(printable(key_id)));
        };
        let bad = || VerifyError::BadSignature(key.id.clone());
        let signature = hex::decode(signature_hex).map_err(|_| bad())?;
        let mut mac = key.mac();
        mac.update(body);
        mac.verify_slice(&signature).map_err(|_| bad())
    }
}

/// A key id as received, safe to put in a log line or a reason (bounded, no controls).
fn printable(id: &str) -> String {
    id.chars()
        .take(MAX_KEY_ID_LEN)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// What a consumer of task messages accepts: a key ring to verify with, and whether
/// unsigned messages pass (`ALLOW_UNSIGNED_TASKS`). A message with a signature that does
/// not verify is refused either way.
#[derive(Debug, Clone)]
pub struct TaskTrust {
    pub keys: Option<KeyRing>,
    pub allow_unsigned: bool,
}

/// How a message passed [`TaskTrust::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Signed with this key, and the signature matches.
    Signed { key_id: String },
    /// Unsigned, and unsigned messages are allowed.
    Unsigned,
}

impl TaskTrust {
    /// Sign with the first key, when there is one.
    pub fn sign(&self, body: &[u8]) -> Option<Signature> {
        self.keys.as_ref().map(|k| k.sign(body))
    }

    /// Verify a message from its body and headers.
    pub fn check(
        &self,
        body: &[u8],
        headers: Option<&dyn Headers>,
    ) -> Result<Verified, VerifyError> {
        let key_id = headers.and_then(|h| h.text(KEY_ID_HEADER));
        let signature = headers.and_then(|h| h.text(SIGNATURE_HEADER));
        match (key_id, signature) {
            (None, None) if self.allow_unsigned => Ok(Verified::Unsigned),
            (None, None) => Err(VerifyError::Unsigned),
            (Some(key_id), signature) => {
                let Some(keys) = &self.keys else {
                    return Err(VerifyError::UnknownKey(printable(&key_id)));
                };
                keys.verify(body, &key_id, signature.as_deref().unwrap_or_default())?;
                Ok(Verified::Signed { key_id })
            }
            // A signature without a key id cannot be checked.
            (None, Some(_)) => Err(VerifyError::UnknownKey(String::new())),
        }
    }
}

/// A message's headers, as text: AMQP field tables implement it (in
/// `shared::runtime::amqp`), and so do plain maps.
pub trait Headers {
    fn text(&self, key: &str) -> Option<String>;
}

impl Headers for std::collections::BTreeMap<String, String> {
    fn text(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "0123456789abcdef0123456789abcdef";
    const NEW: &str = "fedcba9876543210fedcba9876543210-new";

    fn ring(value: &str) -> KeyRing {
        KeyRing::parse(value).unwrap()
    }

    fn headers(signature: &Signature) -> std::collections::BTreeMap<String, String> {
        signature
            .headers()
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect()
    }

    #[test]
    fn key_rings_parse_and_the_first_key_signs() {
        let keys = ring(&format!(" k2:{NEW} , k1:{OLD},"));
        assert_eq!(keys.key_ids(), vec!["k2", "k1"]);
        assert_eq!(keys.signing_key_id(), "k2");
        assert_eq!(keys.sign(b"body").key_id, "k2");
        // A secret may contain ':'.
        let keys = ring(&format!("a.b_c-1:{OLD}:x"));
        assert_eq!(keys.signing_key_id(), "a.b_c-1");
    }

    #[test]
    fn bad_key_rings_are_refused_without_showing_secrets() {
        for (value, expected) in [
            ("", "no key"),
            (" , ", "no key"),
            ("nocolon", "key_id:secret"),
            (&format!(":{OLD}"), "key id"),
            (&format!("bad id:{OLD}"), "key id"),
            (&format!("{}:{OLD}", "k".repeat(65)), "key id"),
            ("k1:short-secret", "too short"),
            (&format!("k1:{OLD},k1:{NEW}"), "twice"),
        ] {
            let error = KeyRing::parse(value).unwrap_err();
            assert!(error.contains(expected), "{value}: {error}");
            assert!(
                !error.contains(OLD) && !error.contains("short-secret"),
                "{error}"
            );
        }
    }

    #[test]
    fn debug_never_prints_secrets() {
        let keys = ring(&format!("k1:{OLD}"));
        let shown = format!(
            "{keys:?} {:?}",
            TaskTrust {
                keys: Some(keys.clone()),
                allow_unsigned: false
            }
        );
        assert!(shown.contains("k1"), "{shown}");
        assert!(!shown.contains(OLD), "{shown}");
    }

    #[test]
    fn signatures_verify_and_tampering_is_detected() {
        let keys = ring(&format!("k1:{OLD}"));
        let body = br#"{"task_id":"x","max_age_hours":24}"#;
        let signature = keys.sign(body);
        assert_eq!(signature.hex.len(), 64);
        assert!(signature
            .hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(keys.verify(body, "k1", &signature.hex), Ok(()));
        let tampered = br#"{"task_id":"x","max_age_hours":1}"#;
        assert_eq!(
            keys.verify(tampered, "k1", &signature.hex),
            Err(VerifyError::BadSignature("k1".into()))
        );
        assert_eq!(
            keys.verify(body, "k1", "not hex"),
            Err(VerifyError::BadSignature("k1".into()))
        );
        assert_eq!(
            keys.verify(body, "k9", &signature.hex),
            Err(VerifyError::UnknownKey("k9".into()))
        );
        // Another secret under the same id does not verify.
        let other = ring(&format!("k1:{NEW}"));
        assert!(other.verify(body, "k1", &signature.hex).is_err());
    }

    #[test]
    fn every_key_of_the_ring_verifies_for_rotation() {
        let old = ring(&format!("k1:{OLD}"));
        let rotated = ring(&format!("k2:{NEW},k1:{OLD}"));
        let body = b"task";
        let by_old = old.sign(body);
        assert_eq!(rotated.verify(body, &by_old.key_id, &by_old.hex), Ok(()));
        let by_new = rotated.sign(body);
        assert_eq!(by_new.key_id, "k2");
        assert_eq!(
            old.verify(body, &by_new.key_id, &by_new.hex),
            Err(VerifyError::UnknownKey("k2".into()))
        );
    }

    #[test]
    fn trust_checks_headers() {
        let keys = ring(&format!("k1:{OLD}"));
        let body = b"task";
        let signed = headers(&keys.sign(body));
        let strict = TaskTrust {
            keys: Some(keys.clone()),
            allow_unsigned: false,
        };
        assert_eq!(
            strict.check(body, Some(&signed)),
            Ok(Verified::Signed {
                key_id: "k1".into()
            })
        );
        assert_eq!(strict.check(body, None), Err(VerifyError::Unsigned));
        assert_eq!(
            strict.check(body, Some(&std::collections::BTreeMap::new())),
            Err(VerifyError::Unsigned)
        );
        assert!(matches!(
            strict.check(b"other", Some(&signed)),
            Err(VerifyError::BadSignature(_))
        ));
        let lenient = TaskTrust {
            keys: Some(keys),
            allow_unsigned: true,
        };
        assert_eq!(lenient.check(body, None), Ok(Verified::Unsigned));
        // A bad signature is refused even when unsigned messages are allowed.
        assert!(matches!(
            lenient.check(b"other", Some(&signed)),
            Err(VerifyError::BadSignature(_))
        ));
        let keyless = TaskTrust {
            keys: None,
            allow_unsigned: true,
        };
        assert_eq!(keyless.check(body, None), Ok(Verified::Unsigned));
        assert_eq!(
            keyless.check(body, Some(&signed)),
            Err(VerifyError::UnknownKey("k1".into()))
        );
        assert!(keyless.sign(body).is_none());
    }
}
