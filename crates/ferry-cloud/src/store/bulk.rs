//! Many rows in one statement, as ONE parameter: a JSON array.
//!
//! Multi-row writes and long `IN` lists used to be statements of hundreds of
//! parameters (`VALUES ($1, $2, …), …`, `IN ($2, …, $501)`). Two costs came
//! with them:
//! - SQLite finds a named parameter by a linear scan of the statement's
//!   parameters (`sqlite3_bind_parameter_name`, which sqlx calls for each),
//!   so binding n parameters costs n². At 100,000 users that was 10–12 % of
//!   the cloud's time in an import (`perf`, `examples/import_cost.rs`).
//! - A statement's text depended on its row count, so each count was
//!   prepared anew and crowded the statement cache.
//!
//! Here the rows go as one JSON array and the statement reads them with
//! the engine's own JSON functions (`json_each` on SQLite,
//! `jsonb_array_elements` on PostgreSQL): one parameter, one statement text
//! whatever the count. An `IN` list is a JSON array on SQLite only (see
//! [`Tx::rows_in`] for why PostgreSQL keeps its placeholders). Only a list
//! longer than [`ROWS_MAX`] is cut, so that no parameter nears
//! PostgreSQL's 256 MiB limit on a `jsonb` value (a drift repair may resend
//! every user of a domain in one call).

use sqlx::any::AnyRow;
use uuid::Uuid;

use super::{to_json, Dialect, StoreResult, Tx};

/// Rows (or list values) a statement takes at most: ~10 MB of users.
const ROWS_MAX: usize = 10_000;
/// Values of an `IN` list a PostgreSQL statement takes at most.
const PG_LIST_MAX: usize = 500;

/// A row's value as a JSON array element: text, an integer, or null.
pub(super) type Cell = serde_json::Value;

/// A text cell.
pub(super) fn text(s: impl Into<String>) -> Cell {
    Cell::String(s.into())
}

/// An optional text cell.
pub(super) fn opt_text(s: Option<impl Into<String>>) -> Cell {
    s.map_or(Cell::Null, text)
}

/// An integer cell (read with `?n` in a shape).
pub(super) fn int(n: i64) -> Cell {
    Cell::from(n)
}

/// Ids as the store keeps them (text).
pub(super) fn texts(ids: &[Uuid]) -> Vec<String> {
    ids.iter().map(Uuid::to_string).collect()
}

/// `sql` with its org term kept off SQLite's indexes where the list is of
/// ids (`org_id = $1 AND id IN ({in})` becomes `+org_id = $1 AND …`: a
/// unary `+` is SQLite's way to keep a term from choosing the index).
///
/// Without statistics SQLite takes an equality on an index's first column
/// for a handful of rows, and so read `dir_users` through its
/// `(org_id, home_domain)` index (every user of the org) rather than
/// through its key (the few hundred asked for): each push of an import
/// walked all the org's users, 0.025 s a push at the start of 100,000
/// users and 0.1 s at the end (`examples/import_cost.rs`). An id is a
/// key, so the list is always the narrower term. A list of other values
/// (`username_key`) keeps the org term, its index's first column.
fn sqlite_by_id(sql: &str) -> String {
    sql.replace("org_id = $1 AND id IN ({in})", "+org_id = $1 AND id IN ({in})")
}

impl Tx {
    /// `SELECT <shape> FROM <the rows bound at $p> WHERE true`, for an
    /// `INSERT … SELECT` of many rows. In `shape`, each `?` is the row's next
    /// cell as text and each `?n` as an integer; `$k` are the statement's
    /// other parameters, shared by every row. (`WHERE true` lets SQLite
    /// read a following `ON CONFLICT` as the upsert's, not a join's.)
    pub(super) fn select_rows(&self, shape: &str, p: usize) -> String {
        let mut cols = String::with_capacity(shape.len() * 4);
        let mut cell = 0usize;
        let mut chars = shape.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '?' {
                cols.push(c);
                continue;
            }
            if chars.peek() == Some(&'n') {
                chars.next();
                cols.push_str(&format!("CAST(r.value ->> {cell} AS BIGINT)"));
            } else {
                cols.push_str(&format!("(r.value ->> {cell})"));
            }
            cell += 1;
        }
        let from = match self.dialect() {
            Dialect::Sqlite => format!("json_each(${p}) AS r"),
            Dialect::Postgres => format!("jsonb_array_elements(${p}::jsonb) AS r(value)"),
        };
        format!("SELECT {cols} FROM {from} WHERE true")
    }

    /// Runs `sql`, whose `IN ({in})` stands for being one of `values`,
    /// with `head` bound first. SQLite reads the whole list as one JSON
    /// array (one statement, however long). PostgreSQL, which binds by
    /// position at no such cost, gets the values as placeholders, 500 a
    /// statement, as before: its planner sees a list of known length. Both
    /// other forms were measured worse there (`docs/BENCHMARKS.md`, runs 12
    /// and 13): a set-returning function's rows are a guess (100), and just
    /// after an import, on statistics taken while `memberships` was empty,
    /// a SCIM read planned with it took 0.35 s; `= ANY($n::text[])` made
    /// the import's read of its groups' members a scan of every membership
    /// (2–10 s a push).
    pub(super) async fn rows_in(&mut self, sql: &str, head: &[&str], values: &[String]) -> StoreResult<Vec<AnyRow>> {
        debug_assert!(sql.contains("IN ({in})"), "{sql}");
        let p = head.len() + 1;
        let mut out = Vec::new();
        if self.dialect() == Dialect::Sqlite {
            let sql = sqlite_by_id(sql).replace("{in}", &format!("SELECT value FROM json_each(${p})"));
            for chunk in values.chunks(ROWS_MAX) {
                let mut q = sqlx::query(&sql);
                for h in head {
                    q = q.bind(*h);
                }
                out.extend(q.bind(to_json(&chunk)?).fetch_all(self.conn()).await?);
            }
            return Ok(out);
        }
        for chunk in values.chunks(PG_LIST_MAX) {
            let list: Vec<String> = (p..p + chunk.len()).map(|i| format!("${i}")).collect();
            let sql = sql.replace("{in}", &list.join(", "));
            let mut q = sqlx::query(&sql);
            for h in head {
                q = q.bind(*h);
            }
            for v in chunk {
                q = q.bind(v.as_str());
            }
            out.extend(q.fetch_all(self.conn()).await?);
        }
        Ok(out)
    }

    /// Runs `sql` (an `INSERT … {rows}` or other statement whose `{rows}`
    /// is [`Tx::select_rows`] of `shape`) with `head` bound first and then
    /// `rows` as one parameter; returns what it returns. Nothing is run
    /// when there are no rows; more than [`ROWS_MAX`] are run in parts.
    pub(super) async fn write_rows(
        &mut self,
        sql: &str,
        shape: &str,
        head: Vec<Cell>,
        rows: &[Vec<Cell>],
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        let sql = sql.replace("{rows}", &self.select_rows(shape, head.len() + 1));
        let mut out = Vec::new();
        for chunk in rows.chunks(ROWS_MAX) {
            let mut q = sqlx::query(&sql);
            for h in &head {
                q = match h {
                    Cell::Null => q.bind(None::<String>),
                    Cell::Number(n) => q.bind(n.as_i64()),
                    Cell::String(s) => q.bind(s.clone()),
                    other => q.bind(other.to_string()),
                };
            }
            let json = serde_json::to_string(chunk).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
            out.extend(q.bind(json).fetch_all(self.conn()).await?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Row as _;

    use super::*;
    use crate::store::Store;

    /// What SQLite's planner does with a statement (`EXPLAIN QUERY PLAN`).
    async fn plan(store: &Store, sql: &str) -> String {
        let sql = sql.replace("{in}", "SELECT value FROM json_each($2)");
        let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
            .bind("org")
            .bind("[\"a\"]")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        rows.iter()
            .map(|r| r.try_get::<String, _>("detail").unwrap())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// By ids, SQLite reads users and groups by their keys, whatever the
    /// org holds: not through the org's `(org_id, home_domain)` index,
    /// which it takes without the `+` (the first plan is checked too, so
    /// this fails if SQLite ever plans the plain form well by itself and
    /// the `+` can go).
    #[tokio::test]
    async fn sqlite_reads_a_list_of_ids_by_key_not_by_org() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
        let store = Store::open(&url).await.unwrap();
        for (table, key) in [
            ("dir_users", "sqlite_autoindex_dir_users_1"),
            ("dir_groups", "sqlite_autoindex_dir_groups_1"),
        ] {
            let sql = format!("SELECT id FROM {table} WHERE org_id = $1 AND id IN ({{in}})");
            let plain = plan(&store, &sql).await;
            assert!(plain.contains("(org_id=?)"), "{table}: {plain}");
            let marked = plan(&store, &sqlite_by_id(&sql)).await;
            assert!(marked.contains(&format!("INDEX {key} (id=?)")), "{table}: {marked}");
        }
        // Another list keeps its org term, the first column of its index.
        let sql = "SELECT id FROM dir_users WHERE org_id = $1 AND username_key IN ({in})";
        assert_eq!(sqlite_by_id(sql), sql);
    }
}
