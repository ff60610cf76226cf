//! The store: every durable fact of the cloud directory.
//!
//! One implementation serves both databases. SQL is written once in the
//! common subset of SQLite and PostgreSQL (`$N` parameters, `RETURNING`,
//! `ON CONFLICT`, `IS NOT DISTINCT FROM`), run through sqlx's `Any` driver;
//! the few places where the engines differ branch on [`Dialect`]. The test
//! suite in `tests/store.rs` runs against both engines.
//!
//! All writes happen inside a [`Tx`]; a write and the change-feed and audit
//! rows it causes commit together or not at all.

mod accounts;
mod audit;
mod bulk;
mod directory;
mod domains;
mod held;
mod homes;
mod journal;
mod limits;
mod previews;
mod sync_errors;
mod upkeep;

use std::str::FromStr;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};
use uuid::Uuid;

pub use accounts::{Admin, Org, TokenKind, TokenRow};
pub use directory::{GroupRow, Link, Member, NewGroup, NewUser, UserQuery, UserRow};
pub use domains::{Agent, ConnectKeyProblem, ConnectKeyRow, Domain, DomainSettings, Lease, Quarantine};
pub use held::HeldDelete;
pub use journal::{AuditEntry, FeedLink, FeedRow};
pub use limits::FailureCount;
pub use previews::PREVIEW_TTL_MS;
pub use sync_errors::{retry_due, SyncErrorRow};
pub use upkeep::{DomainLag, Pruned, RetentionPolicy};

/// Migrations, in order; each runs once, in its own transaction.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("0001_init.sql")),
    (2, include_str!("0002_sealed_secrets.sql")),
    (3, include_str!("0003_link_base.sql")),
    (4, include_str!("0004_sync_errors.sql")),
    (5, include_str!("0005_home_domain.sql")),
    (6, include_str!("0006_cloud_deleted.sql")),
    (7, include_str!("0007_scope_previews.sql")),
    (8, include_str!("0008_scale_out.sql")),
    (9, include_str!("0009_link_digest.sql")),
    (10, include_str!("0010_org_counts.sql")),
    (11, include_str!("0011_membership_error_keys.sql")),
    (12, include_str!("0012_membership_org_key.sql")),
    (13, include_str!("0013_postgres_hot_keys.sql")),
    (14, include_str!("0014_postgres_membership_key.sql")),
];

/// The first line of a migration only PostgreSQL runs (SQLite records it
/// as applied and changes nothing).
const POSTGRES_ONLY: &str = "-- PostgreSQL only";

/// The PostgreSQL channel a commit that grew a feed notifies: every
/// instance listens on it and wakes its long-polls (`feed_wakeup.rs`).
pub const FEED_CHANNEL: &str = "ferry_feed";

/// How closely [`Store::analyze`] samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Statistics {
    /// Coarse, cheap: the tables' sizes and little more (during an import).
    Sizes,
    /// PostgreSQL's default sample (at an import's end).
    Full,
}

/// Which database engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite, the embedded default.
    Sqlite,
    /// PostgreSQL, for several cloud instances.
    Postgres,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The object does not exist (in this org).
    #[error("not found")]
    NotFound,
    /// A uniqueness rule or an optimistic-concurrency check failed.
    #[error("{0}")]
    Conflict(String),
    /// The database URL is not one we support.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    /// A stored value could not be read back.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::Conflict("an object with the same unique value exists".into())
            }
            _ => StoreError::Db(e),
        }
    }
}

/// Result of store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// A handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// Kept for the PostgreSQL listener's own connection; never logged.
    url: std::sync::Arc<str>,
}

impl Store {
    /// Opens (creating an SQLite file when needed) and migrates the database.
    pub async fn open(url: &str) -> StoreResult<Store> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        let pool = match dialect {
            Dialect::Sqlite => {
                if let Some(path) = sqlite_path(url) {
                    make_private(&path)?;
                }
                // Create the file if missing; WAL so readers never block the writer.
                let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
                let conn = sqlx::ConnectOptions::connect(&opts).await?;
                sqlx::Connection::close(conn).await?;
                // One connection: SQLite has one writer anyway, and a single
                // connection makes every transaction serializable without
                // SQLITE_BUSY retries.
                AnyPoolOptions::new()
                    .max_connections(1)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            conn.execute("PRAGMA busy_timeout = 5000").await?;
                            conn.execute("PRAGMA synchronous = NORMAL").await?;
                            // A bigger page cache (64 MiB, default 2 MiB) and
                            // WAL (checkpoint at 32 MiB, default 4 MiB): an
                            // import's index pages are written back once per
                            // checkpoint, and read from memory between. At
                            // 100,000 users the replay of an import's objects
                            // took 8.3 s with both, 9.4 s with the WAL alone
                            // and 10.5-11.2 s with neither
                            // (`examples/import_cost.rs`). Statement journals
                            // (each multi-row write in a transaction keeps
                            // one) in memory, not in a temporary file: 4 %
                            // off the objects again.
                            conn.execute("PRAGMA cache_size = -65536").await?;
                            conn.execute("PRAGMA wal_autocheckpoint = 8192").await?;
                            conn.execute("PRAGMA temp_store = MEMORY").await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?
            }
            // READ COMMITTED whatever the server's default: a group's
            // deletion relies on each statement seeing what is committed
            // when it starts (`Tx::delete_group`), which a snapshot taken at
            // the transaction's first statement would not.
            Dialect::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("SET default_transaction_isolation = 'read committed'")
                                .await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?
            }
        };
        let store = Store {
            pool,
            dialect,
            url: url.into(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The engine behind this store.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Starts a transaction (the wait for a connection is measured: with
    /// SQLite's one connection it is the queue every request stands in).
    pub async fn begin(&self) -> StoreResult<Tx> {
        let asked = std::time::Instant::now();
        let inner = self.pool.begin().await?;
        crate::metrics::global().store_acquire.observe(asked.elapsed());
        Ok(Tx {
            inner,
            dialect: self.dialect,
            began: std::time::Instant::now(),
        })
    }

    /// A listener on [`FEED_CHANNEL`] over a connection of its own
    /// (PostgreSQL only; `None` on SQLite, where one process is the only writer).
    pub async fn listen_feed(&self) -> StoreResult<Option<sqlx::postgres::PgListener>> {
        if self.dialect != Dialect::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen(FEED_CHANNEL).await?;
        Ok(Some(listener))
    }

    /// Refreshes the planner's statistics of the directory's tables
    /// (PostgreSQL; nothing on SQLite, whose planner keeps none unasked).
    /// An import grows them from empty faster than autovacuum looks (once a
    /// minute): plans made for a small `links` (a scan where the primary
    /// key answers) held a 100,000-user import to an eighth of its pace for
    /// a minute. ANALYZE samples; it blocks no reader or writer.
    ///
    /// [`Statistics::Sizes`] samples a tenth of the rows the default does
    /// (`default_statistics_target` 10): enough for what an import's
    /// lookups need, the tables' sizes, at a fifth of the cost (36 against
    /// 160 ms at 10,000 users). The statistics an import leaves behind are
    /// [`Statistics::Full`]'s, as autovacuum would take them.
    pub async fn analyze(&self, depth: Statistics) -> StoreResult<()> {
        if self.dialect == Dialect::Postgres {
            let mut tx = self.pool.begin().await?;
            if depth == Statistics::Sizes {
                // For this transaction only.
                (&mut *tx).execute("SET LOCAL default_statistics_target = 10").await?;
            }
            (&mut *tx)
                .execute("ANALYZE links, dir_users, dir_groups, memberships")
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await?;
        if self.dialect == Dialect::Postgres {
            // Several instances may start at once: one migrates, the others wait.
            conn.execute("SELECT pg_advisory_lock(7265727279)").await?;
        }
        let result = self.migrate_locked(&mut conn).await;
        if self.dialect == Dialect::Postgres {
            conn.execute("SELECT pg_advisory_unlock(7265727279)").await?;
        }
        result
    }

    async fn migrate_locked(&self, conn: &mut sqlx::AnyConnection) -> StoreResult<()> {
        conn.execute(
            "CREATE TABLE IF NOT EXISTS ferry_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await?;
        let applied: Vec<i64> = sqlx::query("SELECT version FROM ferry_migrations")
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|r| r.try_get::<i64, _>(0))
            .collect::<Result<_, _>>()?;
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            let skip = sql.starts_with(POSTGRES_ONLY) && self.dialect != Dialect::Postgres;
            for statement in split_sql(sql).into_iter().filter(|_| !skip) {
                tx.execute(statement.as_str()).await?;
            }
            sqlx::query("INSERT INTO ferry_migrations (version, applied_at) VALUES ($1, 0)")
                .bind(*version)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::info!(version, "applied database migration");
        }
        Ok(())
    }
}

/// Splits a migration into statements, dropping `--` comments.
fn split_sql(sql: &str) -> Vec<String> {
    let without_comments: String = sql
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The file of an SQLite URL (`sqlite://PATH`, `sqlite:PATH`), if it names one.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| std::path::PathBuf::from(path))
}

/// The database holds password hashes and sealed secrets: it, its WAL and
/// its shared-memory file are readable by the owner only. SQLite gives the
/// `-wal` and `-shm` files the mode of the database file, so creating that
/// one 0600 covers all three; files of an older install are restricted too.
fn make_private(db: &std::path::Path) -> StoreResult<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let io = |e: std::io::Error| StoreError::Db(sqlx::Error::Io(e));
        if !db.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(db)
                .map_err(io)?;
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut p = db.as_os_str().to_owned();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = db;
    Ok(())
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A transaction; dropped without [`Tx::commit`] it rolls back.
pub struct Tx {
    inner: Transaction<'static, Any>,
    dialect: Dialect,
    began: std::time::Instant,
}

impl Tx {
    /// Commits every write made through this transaction.
    pub async fn commit(self) -> StoreResult<()> {
        let committing = std::time::Instant::now();
        self.inner.commit().await?;
        let m = crate::metrics::global();
        m.store_commit.observe(committing.elapsed());
        m.store_transaction.observe(self.began.elapsed());
        Ok(())
    }

    /// The engine this transaction runs on.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    fn conn(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.inner
    }

    /// Marks a point to roll back to (one at a time): a write that fails
    /// after it can be undone without losing the transaction (on
    /// PostgreSQL a failed statement otherwise aborts the whole of it).
    pub async fn savepoint(&mut self) -> StoreResult<()> {
        self.conn().execute("SAVEPOINT ferry_step").await?;
        Ok(())
    }

    /// Undoes everything since [`Tx::savepoint`].
    pub async fn rollback_to_savepoint(&mut self) -> StoreResult<()> {
        self.conn().execute("ROLLBACK TO SAVEPOINT ferry_step").await?;
        self.conn().execute("RELEASE SAVEPOINT ferry_step").await?;
        Ok(())
    }

    /// Keeps everything since [`Tx::savepoint`].
    pub async fn release_savepoint(&mut self) -> StoreResult<()> {
        self.conn().execute("RELEASE SAVEPOINT ferry_step").await?;
        Ok(())
    }
}

fn get_uuid(row: &AnyRow, col: &str) -> StoreResult<Uuid> {
    let s: String = row.try_get(col)?;
    Uuid::parse_str(&s).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

fn get_opt_uuid(row: &AnyRow, col: &str) -> StoreResult<Option<Uuid>> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| Uuid::parse_str(&s).map_err(|e| StoreError::Corrupt(format!("{col}: {e}"))))
        .transpose()
}

fn get_json<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> StoreResult<T> {
    let s: String = row.try_get(col)?;
    serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sql_drops_comments_and_empty_statements() {
        let parts = split_sql("-- head\nCREATE TABLE a (x TEXT); -- tail\n\n;CREATE INDEX i ON a (x);");
        assert_eq!(parts, vec!["CREATE TABLE a (x TEXT)", "CREATE INDEX i ON a (x)"]);
    }

    #[test]
    fn redact_url_hides_the_password() {
        assert_eq!(
            redact_url("postgres://ferry:s3cret@127.0.0.1/ferry"),
            "postgres://ferry:***@127.0.0.1/ferry"
        );
        assert_eq!(redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }
}
