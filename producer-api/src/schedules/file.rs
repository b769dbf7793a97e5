//! Declarative schedules (`SCHEDULES_FILE`), for GitOps: a YAML file applied at start-up
//! and on SIGHUP. It creates or updates every schedule it lists (`managed_by: file`) and
//! removes the file-managed schedules it no longer lists; the API refuses to change them.
//!
//! ```yaml
//! schedules:
//!   - name: nightly-runs
//!     kind: cleanup_runs
//!     params: {max_age_hours: 720}
//!     cron: "30 2 * * *"
//!     timezone: Europe/Berlin
//! ```
//!
//! The whole file is checked before anything is written, and written in one transaction:
//! one bad entry (or a name an API schedule already has) and nothing changes, with an
//! error naming the entry and field.

use std::collections::BTreeSet;
use std::path::Path;

use chrono::Utc;
use serde::Deserialize;
use shared::tasks::ValidationRules;
use sqlx::PgPool;

use crate::http::schedules::{check, check_name, ScheduleBody};
use crate::ledger::schedules::{self, ScheduleSpec, Written};

/// Who manages the schedules this module writes.
pub const SOURCE: &str = "file";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    schedules: Vec<ScheduleBody>,
}

/// What applying the file changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
}

/// Read and check the whole file.
pub fn load(path: &Path, rules: &ValidationRules) -> anyhow::Result<Vec<(String, ScheduleSpec)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("SCHEDULES_FILE {}: {e}", path.display()))?;
    parse(&text, rules).map_err(|e| anyhow::anyhow!("SCHEDULES_FILE {}: {e}", path.display()))
}

/// Check every entry of a schedules document.
pub fn parse(text: &str, rules: &ValidationRules) -> anyhow::Result<Vec<(String, ScheduleSpec)>> {
    // An empty or truncated file must not read as "no schedules" (which removes them
    // all): the `schedules` key must hold a list, `[]` to remove every one.
    let document: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| anyhow::anyhow!("not a schedules file: {e}"))?;
    if !document
        .get("schedules")
        .is_some_and(serde_yaml_ng::Value::is_sequence)
    {
        anyhow::bail!(
            "not a schedules file: it needs a `schedules:` list (`schedules: []` removes every \
             schedule the file manages)"
        );
    }
    let file: ScheduleFile = serde_yaml_ng::from_value(document)
        .map_err(|e| anyhow::anyhow!("not a schedules file: {e}"))?;
    let mut seen = BTreeSet::new();
    let mut specs = Vec::new();
    for (i, mut body) in file.schedules.into_iter().enumerate() {
        let at = |detail: String| anyhow::anyhow!("schedule #{} {detail}", i + 1);
        let name = body
            .name
            .take()
            .ok_or_else(|| at("has no `name`".to_owned()))?;
        check_name(&name).map_err(|e| at(format!("(`{name}`): {e}")))?;
        if !seen.insert(name.clone()) {
            return Err(at(format!("(`{name}`) is listed twice")));
        }
        let spec = check(rules, body).map_err(|e| {
            let field = e.problem().field.unwrap_or_default();
            at(format!("(`{name}`), field `{field}`: {e}"))
        })?;
        specs.push((name, spec));
    }
    Ok(specs)
}

/// Write checked schedules as the file's, and remove the file's schedules it no longer
/// lists, in one transaction: a name another source manages, or any error, and nothing
/// changes.
pub async fn apply(pool: &PgPool, specs: &[(String, ScheduleSpec)]) -> anyhow::Result<Applied> {
    let mut tx = pool.begin().await?;
    let mut applied = Applied::default();
    let now = Utc::now();
    for (name, spec) in specs {
        let before = schedules::get(pool, name).await?;
        match schedules::write_in(
            &mut tx,
            name,
            spec,
            true,
            SOURCE,
            Some("schedules-file"),
            now,
        )
        .await?
        {
            Written::Created(_) => applied.created.push(name.clone()),
            Written::Replaced(after) => {
                if before.is_some_and(|b| b.updated_at == after.updated_at) {
                    applied.unchanged.push(name.clone());
                } else {
                    applied.updated.push(name.clone());
                }
            }
            Written::Managed(by) => anyhow::bail!(
                "SCHEDULES_FILE lists `{name}`, which {} manages; delete it there \
                 (DELETE /schedules/{name}) or rename it in the file",
                if by == "api" {
                    "the API".to_owned()
                } else {
                    format!("`{by}`")
                }
            ),
            Written::Exists => anyhow::bail!("schedule `{name}` changed meanwhile; try again"),
        }
    }
    let listed: Vec<String> = specs.iter().map(|(name, _)| name.clone()).collect();
    applied.removed = schedules::remove_unlisted(&mut tx, &listed).await?;
    tx.commit().await?;
    Ok(applied)
}

/// Load and apply, logging what changed.
pub async fn sync(pool: &PgPool, path: &Path, rules: &ValidationRules) -> anyhow::Result<Applied> {
    let specs = load(path, rules)?;
    let applied = apply(pool, &specs).await?;
    tracing::info!(
        file = %path.display(),
        created = ?applied.created,
        updated = ?applied.updated,
        removed = ?applied.removed,
        unchanged = applied.unchanged.len(),
        "schedules file applied"
    );
    Ok(applied)
}
