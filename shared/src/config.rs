//! Settings both binaries share, as `clap` argument groups (each flag also an env var).

use crate::retry::RetryPolicy;
use crate::topology::{Topology, DEFAULT_DELIVERY_LIMIT};

/// How to reach RabbitMQ and which names to use there.
#[derive(clap::Args, Debug, Clone)]
pub struct AmqpArgs {
    /// RabbitMQ URL. A 15 s heartbeat is added unless the URL has a `heartbeat` parameter.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub amqp_url: String,

    /// Prefix of every exchange and queue name, so tenants and tests can share a broker.
    #[arg(long, env = "AMQP_PREFIX", default_value = "cleanup")]
    pub amqp_prefix: String,

    /// Deliveries of one task message before the quorum queue dead-letters it (stops crash
    /// loops). Changing it on an existing queue needs the queue re-created or a policy.
    #[arg(long, env = "AMQP_DELIVERY_LIMIT", default_value_t = DEFAULT_DELIVERY_LIMIT)]
    pub amqp_delivery_limit: u32,
}

impl AmqpArgs {
    pub fn topology(&self) -> Result<Topology, String> {
        Topology::new(&self.amqp_prefix, self.amqp_delivery_limit)
    }

    /// The URL without its password, for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.amqp_url)
    }
}

/// The exponential delays between attempts of a task (the worker computes them; the
/// number of attempts is the producer's `MAX_ATTEMPTS`, carried in each task).
#[derive(clap::Args, Debug, Clone)]
pub struct RetryArgs {
    /// Delay before the second attempt (e.g. `2s`, `500ms`).
    #[arg(long, env = "RETRY_INITIAL_DELAY", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry_initial_delay: std::time::Duration,

    /// Factor by which the delay grows with each attempt.
    #[arg(long, env = "RETRY_MULTIPLIER", default_value_t = 2.0)]
    pub retry_multiplier: f64,

    /// Longest delay between two attempts.
    #[arg(long, env = "RETRY_MAX_DELAY", default_value = "5m", value_parser = humantime::parse_duration)]
    pub retry_max_delay: std::time::Duration,

    /// Randomization of each delay, in [0, 1): 0.2 means ±20 %, so retries do not stampede.
    #[arg(long, env = "RETRY_JITTER", default_value_t = 0.2)]
    pub retry_jitter: f64,
}

impl RetryArgs {
    /// The policy with these delays and `max_attempts` attempts.
    pub fn policy(&self, max_attempts: u32) -> Result<RetryPolicy, String> {
        let policy = RetryPolicy {
            initial_delay: self.retry_initial_delay,
            multiplier: self.retry_multiplier,
            max_delay: self.retry_max_delay,
            jitter: self.retry_jitter,
            max_attempts,
        };
        policy.validate()?;
        Ok(policy)
    }
}

/// Replace the password of a URL (`scheme://user:secret@host`) with `***`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}://{}:***{}",
            &url[..scheme_end],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_owned(),
    }
}

/// Split a comma-separated list, trimming blanks and dropping empty items.
pub fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://u:p@h/db?x=1"),
            "postgres://u:***@h/db?x=1"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn lists_are_split_and_trimmed() {
        assert_eq!(split_list(" a, b ,,c"), vec!["a", "b", "c"]);
        assert!(split_list("").is_empty());
    }
}
