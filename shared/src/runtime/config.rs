//! Settings both binaries share, as `clap` argument groups (each flag also an env var).

use crate::retry::RetryPolicy;
use crate::signing::{KeyRing, TaskTrust};
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

/// The key ring that authenticates task messages (see [`crate::signing`]), the same on
/// producer-api and every worker. `Debug` shows key ids, never secrets.
#[derive(clap::Args, Clone)]
pub struct SigningArgs {
    /// Keys that sign and verify task messages, `key_id:secret,...` (ids of A-Z a-z 0-9 _ . -,
    /// secrets of 32+ bytes). The first key signs, every key verifies. Required unless
    /// --allow-unsigned-tasks.
    #[arg(long, env = "TASK_SIGNING_KEYS", hide_env_values = true)]
    pub task_signing_keys: Option<String>,

    /// Run without requiring signed task messages: a worker then accepts unsigned ones (a
    /// bad signature is still refused), producer-api may run without keys. Anyone who can
    /// publish to the broker can then order deletions.
    #[arg(long, env = "ALLOW_UNSIGNED_TASKS", default_value_t = false)]
    pub allow_unsigned_tasks: bool,
}

impl std::fmt::Debug for SigningArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningArgs")
            .field("task_signing_keys", &self.key_ring().ok().flatten())
            .field("allow_unsigned_tasks", &self.allow_unsigned_tasks)
            .finish()
    }
}

impl SigningArgs {
    /// The configured key ring; `None` when `TASK_SIGNING_KEYS` is unset or blank.
    pub fn key_ring(&self) -> Result<Option<KeyRing>, String> {
        match self.task_signing_keys.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(value) => KeyRing::parse(value).map(Some),
        }
    }

    /// What a consumer of task messages accepts; refuses to run without keys unless
    /// unsigned tasks are explicitly allowed.
    pub fn trust(&self) -> Result<TaskTrust, String> {
        let keys = self.key_ring()?;
        if keys.is_none() && !self.allow_unsigned_tasks {
            return Err("no task signing keys configured: set TASK_SIGNING_KEYS (`key_id:secret`, \
                 the same on producer-api and every worker; a secret of 32+ bytes, e.g. from \
                 `openssl rand -hex 32`), or pass --allow-unsigned-tasks (ALLOW_UNSIGNED_TASKS=true) \
                 to run without authenticating task messages"
                .into());
        }
        Ok(TaskTrust {
            keys,
            allow_unsigned: self.allow_unsigned_tasks,
        })
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
/// `RUNS_SCOPE_COLUMNS`: the columns tasks may narrow by (`scope`), each a plain SQL
/// identifier.
pub fn scope_columns(value: &str) -> Result<std::collections::BTreeSet<String>, String> {
    split_list(value)
        .into_iter()
        .map(|name| {
            if crate::tasks::is_identifier(&name) {
                Ok(name)
            } else {
                Err(format!(
                    "RUNS_SCOPE_COLUMNS: `{name}` is not a valid column name (letters, digits \
                     and `_`, not starting with a digit, at most 63 characters)"
                ))
            }
        })
        .collect()
}

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
    fn signing_keys_are_required_unless_unsigned_tasks_are_allowed() {
        let secret = "0123456789abcdef0123456789abcdef";
        let args = |keys: Option<&str>, allow: bool| SigningArgs {
            task_signing_keys: keys.map(String::from),
            allow_unsigned_tasks: allow,
        };
        for keys in [None, Some(""), Some("  ")] {
            let error = args(keys, false).trust().unwrap_err();
            assert!(error.contains("TASK_SIGNING_KEYS"), "{error}");
            assert!(error.contains("--allow-unsigned-tasks"), "{error}");
            let trust = args(keys, true).trust().unwrap();
            assert!(trust.keys.is_none() && trust.allow_unsigned);
        }
        let ok = args(Some(&format!("k1:{secret}")), false);
        let trust = ok.trust().unwrap();
        assert_eq!(trust.keys.unwrap().signing_key_id(), "k1");
        assert!(!trust.allow_unsigned);
        let shown = format!("{ok:?}");
        assert!(shown.contains("k1") && !shown.contains(secret), "{shown}");
        assert!(args(Some("k1:short"), true).trust().is_err());
    }

    #[test]
    fn lists_are_split_and_trimmed() {
        assert_eq!(split_list(" a, b ,,c"), vec!["a", "b", "c"]);
        assert!(split_list("").is_empty());
    }
}
