//! The schema both SQL stores share: their migrations (the DDL, under
//! `migrations/`), the statements on its tables, and the form of an order's
//! stored document.
//!
//! Every statement here is one text for both backends: sqlx accepts `$N`
//! placeholders on SQLite too, and so does rusqlite (the SQLite writer
//! thread, `group_commit.rs`).

use super::error::Result;
use crate::domain::Order;

/// A new order's row, unless the caller registered its `request_id` before.
macro_rules! insert_order {
    () => {
        "INSERT INTO orders \
         (id, customer_id, status, version, request_id, request_fingerprint, doc) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (customer_id, request_id) DO NOTHING"
    };
}
/// SQLite's writer tells an insert from a conflict by the rows changed
/// (`RETURNING` costs SQLite a temporary table per statement).
pub(super) const INSERT_ORDER_ROW: &str = insert_order!();
/// sqlx (PostgreSQL) tells them apart by the row returned.
pub(super) const INSERT_ORDER: &str = concat!(insert_order!(), " RETURNING id");
pub(super) const FIND_BY_REQUEST: &str = "SELECT doc, request_fingerprint FROM orders \
     WHERE customer_id = $1 AND request_id = $2";
pub(super) const INSERT_VERSION: &str =
    "INSERT INTO order_versions (order_id, version, doc) VALUES ($1, $2, $3)";
pub(super) const UPDATE_ORDER: &str =
    "UPDATE orders SET status = $1, version = $2, doc = $3 WHERE id = $4 AND version = $5";
pub(super) const GET_ORDER: &str = "SELECT doc FROM orders WHERE id = $1";
pub(super) const HISTORY: &str =
    "SELECT doc FROM order_versions WHERE order_id = $1 AND version > $2 ORDER BY version";
pub(super) const INSERT_KEY: &str =
    "INSERT INTO service_keys (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
pub(super) const GET_KEY: &str = "SELECT value FROM service_keys WHERE name = $1";
pub(super) const CURSOR_KEY_NAME: &str = "page_token_hmac";

/// An order from its stored document (the `doc` column).
pub(super) fn decode(doc: &str) -> Result<Order> {
    Ok(serde_json::from_str(doc)?)
}

/// Brings a SQLite database to this release's schema.
pub(super) async fn migrate_sqlite(pool: &sqlx::SqlitePool) -> Result<()> {
    // As on PostgreSQL: a release rolled back starts on the database the
    // newer one expanded (docs/migrations.md).
    let mut migrator = sqlx::migrate!("migrations/sqlite");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}

/// Brings a PostgreSQL database to this release's schema.
pub(super) async fn migrate_postgres(pool: &sqlx::PgPool) -> Result<()> {
    // sqlx takes an advisory lock, so replicas starting together migrate
    // once. Migrations only expand the schema (docs/migrations.md), so a
    // replica of the previous release, restarted during a rolling
    // upgrade, still starts on a database a newer release has migrated:
    // migrations it does not know are not an error.
    let mut migrator = sqlx::migrate!("migrations/postgres");
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}
