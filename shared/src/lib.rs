//! What the producer API and the workers must agree on (the contract): task kinds and
//! their parameters, the message envelope and its signatures, events, the AMQP topology's
//! names, and the retry policy. Run-time helpers both binaries use live apart, in
//! [`runtime`] (feature `runtime`).

pub mod cancel;
pub mod envelope;
pub mod events;
pub mod results;
pub mod retry;
pub mod signing;
pub mod tasks;
pub mod topology;

#[cfg(feature = "runtime")]
pub mod runtime;

/// Version of this build, reported by `cleanup_build_info` and worker heartbeats.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
