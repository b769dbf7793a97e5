//! The task-signing keys of the tests.

/// The task-signing key ring every test component shares (`TASK_SIGNING_KEYS`): `test-new`
/// signs, both verify (as in the middle of a key rotation).
pub const SIGNING_KEYS: &str = "test-new:new-secret-0123456789abcdef0123456789,\
                                test-old:old-secret-0123456789abcdef0123456789";

/// [`SIGNING_KEYS`] parsed.
pub fn key_ring() -> shared::signing::KeyRing {
    shared::signing::KeyRing::parse(SIGNING_KEYS).unwrap()
}
