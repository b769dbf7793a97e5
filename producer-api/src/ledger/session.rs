//! How each of this process's ledger sessions is set up when it connects: the pool's,
//! and the intake's own.

use std::time::Duration;

use sqlx::PgConnection;

/// The settings a new ledger session gets.
#[derive(Debug, Clone, Copy)]
pub struct SessionSetup {
    /// PostgreSQL ends a session idle in a transaction for longer
    /// (`idle_in_transaction_session_timeout`).
    pub idle_in_transaction_limit: Duration,
    /// This process runs a relay, which what it writes to the outbox wakes in-process.
    pub relay_here: bool,
}

impl SessionSetup {
    pub async fn apply(self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        // A session that stops talking in the middle of a transaction (this process cut
        // off from the database by a partition) would hold its row locks until PostgreSQL
        // notices the connection is dead, hours with the default keepalives: the relay's
        // claimed outbox rows, which every other replica then skips. PostgreSQL ends such
        // a session once it has been idle in a transaction longer than any transaction of
        // this process waits between two statements (the relay's, across its publish).
        sqlx::query("SELECT set_config('idle_in_transaction_session_timeout', $1, false)")
            .bind(format!("{}ms", self.idle_in_transaction_limit.as_millis()))
            .execute(&mut *conn)
            .await?;
        // With a relay in this process, what this process writes to the outbox wakes that
        // relay in-process (`AppState::outbox_written`), not by NOTIFY: see the migration
        // `outbox_wakeup`.
        if self.relay_here {
            sqlx::query("SELECT set_config('cleanup.outbox_wakeup', 'local', false)")
                .execute(conn)
                .await?;
        }
        Ok(())
    }
}
