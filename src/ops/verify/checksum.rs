//! Comparing blue and green: per table, the row count and an
//! order-independent checksum of the rows' text.

use tokio_postgres::Client;

/// A table's row count and checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSum {
    /// Rows.
    pub rows: i64,
    /// md5 of the sorted md5s of the rows' text.
    pub checksum: String,
}

/// Row count and order-independent checksum of `table` (quoted, possibly
/// schema-qualified). Sets the session's output formats to canonical ones.
pub async fn table_sum(client: &Client, table: &str) -> Result<TableSum, tokio_postgres::Error> {
    // The same canonical text form on both sides.
    client
        .batch_execute(&crate::config::canonical_format_statements())
        .await?;
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(md5(string_agg(h, '' ORDER BY h)), '') \
                 FROM (SELECT md5(t::text) AS h FROM {table} t) s"
            ),
            &[],
        )
        .await?;
    Ok(TableSum {
        rows: row.get(0),
        checksum: row.get(1),
    })
}
