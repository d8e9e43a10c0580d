//! What can go wrong in a store, and which of it is worth a retry.

use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The order changed since it was read (optimistic concurrency).
    #[error("the order changed concurrently")]
    Conflict,
    /// The database cannot be reached right now; safe to retry.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("stored order is unreadable")]
    Corrupt(#[from] serde_json::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// From the SQLite writer thread's connection (`group_commit.rs`).
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    /// The call this write was for had ended before the write's commit
    /// point (`grpc_platform::middleware::commit`): nothing was written.
    #[error("the call ended before its change was committed")]
    Abandoned,
    /// The shared transaction this write was grouped into (group commit)
    /// failed as a whole: nothing of it was stored.
    #[error("the shared write transaction failed")]
    Group {
        transient: bool,
        #[source]
        cause: Arc<StoreError>,
    },
}

impl StoreError {
    /// Trouble reaching the database, worth a retry (UNAVAILABLE).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Group { transient, .. } => *transient,
            // The write lock stayed taken past busy_timeout.
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }

    /// Splits transient connection trouble (UNAVAILABLE, retryable) from bugs.
    pub(super) fn classify(err: sqlx::Error) -> Self {
        use sqlx::Error as E;
        let transient = match &err {
            E::PoolTimedOut | E::PoolClosed | E::Io(_) | E::Tls(_) | E::WorkerCrashed => true,
            E::Database(db) => {
                let code = db.code().unwrap_or_default();
                // PostgreSQL: connection exceptions (08), shutdown (57P01-57P03),
                // serialization trouble (40001/40P01). SQLite: BUSY (5), LOCKED (6).
                code.starts_with("08")
                    || code.starts_with("57P")
                    || code == "40001"
                    || code == "40P01"
                    || code == "5"
                    || code == "6"
            }
            _ => false,
        };
        if transient {
            StoreError::Unavailable(err)
        } else {
            StoreError::Database(err)
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
