//! The second try of a batch whose first try's connection failed: on a new connection,
//! after the first try's session is ended (see the intake's documentation).

use shared::envelope::TaskEnvelope;
use shared::runtime::db::connection_lost;
use uuid::Uuid;

use super::places::{self, Connections};
use super::IntakeError;
use crate::ledger::{self, TaskRow};

/// A new connection for the second try. If the first try's outcome is open (`first` is
/// its session), that session is ended from it first: it may still run the statement, or
/// wait to commit it, and once it has ended the first try's outcome is settled, so the
/// second can tell it. If no connection can be had for that, or the session did not end
/// in time, it is ended in the background.
pub(super) async fn second_connection(
    conns: &Connections,
    first: Option<places::Session>,
) -> Result<places::Kept, sqlx::Error> {
    let mut conn = match conns.open().await {
        Ok(conn) => conn,
        Err(error) => {
            if let Some(first) = first {
                conns.end_later(first);
            }
            return Err(error);
        }
    };
    let Some(first) = first else {
        return Ok(conn);
    };
    match conns.end(&mut conn.conn, &first).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(
                pid = first.pid,
                "the session of an enqueue statement given up on did not end in time; trying again anyway, and ending it in the background"
            );
            conns.end_later(first);
        }
        Err(error) if connection_lost(&error) => {
            conns.end_later(first);
            return Err(error);
        }
        Err(error) => {
            tracing::warn!(%error, "could not end the session of an enqueue statement given up on; ending it in the background");
            conns.end_later(first);
        }
    }
    Ok(conn)
}

pub(super) const AGAIN_FAILED: &str =
    "the ledger connection failed during the statement that stores \
    the task, and trying it again failed too";

/// The second try of a batch (tasks `ids`) whose first try's connection failed, on `conn`.
pub(super) async fn again(
    conns: &Connections,
    conn: &mut sqlx::PgConnection,
    tasks: &[(&TaskEnvelope, Option<&str>)],
    ids: &[Uuid],
    first_unknown: bool,
) -> Result<Vec<TaskRow>, IntakeError> {
    match conns.answer(ledger::tasks::enqueue_many(conn, tasks)).await {
        Ok(rows) => Ok(rows),
        Err(sqlx::Error::Database(conflict))
            if conflict.is_unique_violation()
                && conflict.constraint() == Some("cleanup_tasks_pkey") =>
        {
            // The first try committed; its answer was lost with its connection. (All or
            // nothing: every task of the batch is stored.) Its session may have been ended
            // while it waited for a synchronous standby, which commits it without the
            // standby's word: so the tasks are read back by a transaction whose commit
            // waits for the standby as any commit does, and so for the first try's.
            match conns
                .answer(ledger::tasks::get_tasks_once_durable(conn, ids))
                .await
            {
                Ok(rows) if rows.len() == ids.len() => {
                    tracing::info!(
                        tasks = ids.len(),
                        "an enqueue's first try had committed before its connection failed"
                    );
                    Ok(rows)
                }
                _ => Err(IntakeError::unknown(
                    "the task was stored before the ledger connection failed, but confirming \
                     it durable or reading it back failed",
                )),
            }
        }
        // The same statement failing on its data (or on a constraint other than the
        // tasks' ids) proves the first did not commit either. Any other error (a server
        // in recovery after a failover, a decoding error) does not.
        Err(sqlx::Error::Database(error))
            if error
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23")) =>
        {
            Err(sqlx::Error::Database(error).into())
        }
        // Neither committed: the second's answer is the server's own error.
        Err(error @ sqlx::Error::Database(_)) if !first_unknown => Err(error.into()),
        Err(error) => {
            tracing::warn!(%error, "the second try of an enqueue statement failed");
            Err(IntakeError::unknown(AGAIN_FAILED))
        }
    }
}
