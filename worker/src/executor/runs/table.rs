//! The runs table as configured: its name and columns, validated as SQL identifiers and
//! quoted, and the statuses that count as finished.

use std::collections::{BTreeMap, BTreeSet};

/// The configured names, unquoted, as the catalog spells them.
#[derive(Debug, Clone)]
pub struct ColumnNames {
    pub id: String,
    pub status: String,
    pub timestamp: String,
}

/// The runs table as configured, with every identifier validated and quoted.
#[derive(Debug, Clone)]
pub struct RunsTable {
    pub(super) table: String,
    pub(super) id: String,
    pub(super) status: String,
    pub(super) timestamp: String,
    pub(super) names: ColumnNames,
    pub(super) terminal_statuses: Vec<String>,
    /// RUNS_SCOPE_COLUMNS: unquoted name → quoted.
    pub(super) scope: BTreeMap<String, String>,
    /// RUNS_PROGRESS_TABLE, quoted, when set ([`super::progress`]).
    pub(super) progress: Option<String>,
}

impl RunsTable {
    pub fn new(
        table: &str,
        id: &str,
        status: &str,
        timestamp: &str,
        terminal_statuses: Vec<String>,
        scope_columns: BTreeSet<String>,
    ) -> anyhow::Result<Self> {
        let parts: Vec<&str> = table.split('.').collect();
        if parts.len() > 2 {
            anyhow::bail!("RUNS_TABLE `{table}` must be `table` or `schema.table`");
        }
        let table = parts
            .iter()
            .map(|p| quote_ident(p, "RUNS_TABLE"))
            .collect::<anyhow::Result<Vec<_>>>()?
            .join(".");
        if terminal_statuses.is_empty() {
            anyhow::bail!("RUNS_TERMINAL_STATUSES must name at least one status");
        }
        Ok(Self {
            table,
            id: quote_ident(id, "RUNS_ID_COLUMN")?,
            status: quote_ident(status, "RUNS_STATUS_COLUMN")?,
            timestamp: quote_ident(timestamp, "RUNS_TIMESTAMP_COLUMN")?,
            names: ColumnNames {
                id: id.to_owned(),
                status: status.to_owned(),
                timestamp: timestamp.to_owned(),
            },
            terminal_statuses,
            scope: scope_columns
                .into_iter()
                .map(|name| {
                    let quoted = quote_ident(&name, "RUNS_SCOPE_COLUMNS")?;
                    Ok((name, quoted))
                })
                .collect::<anyhow::Result<_>>()?,
            progress: None,
        })
    }

    /// RUNS_PROGRESS_TABLE (`table` or `schema.table`) instead of the default
    /// `cleanup_runs_progress` beside the runs table.
    pub fn with_progress_table(mut self, name: &str) -> anyhow::Result<Self> {
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 {
            anyhow::bail!("RUNS_PROGRESS_TABLE `{name}` must be `table` or `schema.table`");
        }
        let progress = parts
            .iter()
            .map(|p| quote_ident(p, "RUNS_PROGRESS_TABLE"))
            .collect::<anyhow::Result<Vec<_>>>()?
            .join(".");
        if progress == self.table {
            anyhow::bail!("RUNS_PROGRESS_TABLE must not be the runs table");
        }
        self.progress = Some(progress);
        Ok(self)
    }

    pub fn terminal_statuses(&self) -> &[String] {
        &self.terminal_statuses
    }

    /// The columns tasks may narrow by (unquoted).
    pub fn scope_columns(&self) -> impl Iterator<Item = &String> {
        self.scope.keys()
    }
}

/// A plain SQL identifier (letters, digits, `_`, not starting with a digit, at most 63
/// bytes), returned double-quoted.
pub fn quote_ident(name: &str, setting: &str) -> anyhow::Result<String> {
    if !shared::tasks::is_identifier(name) {
        anyhow::bail!(
            "{setting} `{name}` is not a valid SQL identifier (letters, digits and `_`, \
             not starting with a digit, at most 63 characters)"
        );
    }
    Ok(format!("\"{name}\""))
}
