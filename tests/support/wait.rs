//! Waiting for a condition on a server, with a deadline.

use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

/// Polls `sql` until it returns a row; panics after `timeout` saying `what`
/// (and the last error, if the query failed, e.g. on a table not created yet).
pub async fn until_row(
    client: &Client,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    timeout: Duration,
    what: &str,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let last_error = match client.query_opt(sql, params).await {
            Ok(Some(_)) => return,
            Ok(None) => None,
            Err(e) => Some(e),
        };
        assert!(
            Instant::now() < deadline,
            "{what} within {timeout:?} (last error: {last_error:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
