//! `teal ddl install | uninstall | resolve`: the event trigger on blue that
//! sends each DDL statement into the stream, and the record on green of a
//! statement run by hand.
//!
//! ```text
//! blue: sql_drop          ─▶ <schema>.teal_ddl_sql_drop: were published objects dropped? (a setting, this transaction)
//!       ddl_command_end   ─▶ <schema>.teal_ddl_command_end: {tag, published, statement, search_path}
//!                            ─▶ <schema>.teal_ddl_emit (SECURITY DEFINER) ─▶ pg_logical_emit_message(true, 'teal.ddl', ...)
//! ```
//!
//! "Published" is decided on blue when the statement runs: an object of a
//! table the publication publishes (`pg_get_publication_tables`, so FOR ALL
//! TABLES, FOR TABLES IN SCHEMA and table lists alike); a sequence, a
//! dropped table or index, or any other object (a type, a function) in a
//! schema it publishes whole (all of them for FOR ALL TABLES). Every firing is
//! sent, published or not: apply counts them to find each one's statement
//! in a query string holding several. The trigger never fails blue's DDL: a
//! failure to emit is a WARNING on blue (and the schema difference then
//! stops apply, naming the ALTER to run).

use tokio_postgres::Client;

use crate::event::quote_ident;
use crate::lsn::Lsn;
use crate::source::quote_sql_literal;
use crate::store::Store;

/// Event trigger names on blue.
pub const TRIGGERS: [&str; 2] = ["teal_ddl_command_end", "teal_ddl_sql_drop"];

/// The statements that install the trigger for `publication` into
/// `schema` on a server of `server_version_num` `version`.
pub fn install_sql(schema: &str, publication: &str, version: i32) -> String {
    let s = quote_ident(schema);
    let p = quote_sql_literal(publication);
    // FOR TABLES IN SCHEMA exists from PostgreSQL 15 on.
    let in_schema = |nsp: &str| {
        if version >= 150000 {
            format!(
                " OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_namespace pn \
                 WHERE pn.pnpubid = p.oid AND pn.pnnspid = {nsp})"
            )
        } else {
            String::new()
        }
    };
    format!(
        "CREATE SCHEMA IF NOT EXISTS {s};
CREATE OR REPLACE FUNCTION {s}.teal_ddl_emit(content text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $teal$
BEGIN
  PERFORM pg_catalog.pg_logical_emit_message(true, 'teal.ddl', content);
END $teal$;
CREATE OR REPLACE FUNCTION {s}.teal_ddl_covers(rel oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog AS $teal$
  SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_get_publication_tables({p}) g
                 WHERE g.relid = coalesce((SELECT i.indrelid FROM pg_catalog.pg_index i WHERE i.indexrelid = rel), rel))
      OR EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_publication p ON p.pubname = {p}
                 WHERE c.oid = rel AND c.relkind = 'S' AND (p.puballtables{seq_schema}))
$teal$;
CREATE OR REPLACE FUNCTION {s}.teal_ddl_covers_schema(nsp text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog AS $teal$
  SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication p WHERE p.pubname = {p}
                 AND (p.puballtables{drop_schema}))
$teal$;
CREATE OR REPLACE FUNCTION {s}.teal_ddl_sql_drop() RETURNS event_trigger LANGUAGE plpgsql AS $teal$
DECLARE published boolean;
BEGIN
  SELECT coalesce(bool_or(NOT d.is_temporary AND d.object_type IN ('table', 'index', 'sequence')
                          AND {s}.teal_ddl_covers_schema(d.schema_name)), false)
    INTO published FROM pg_catalog.pg_event_trigger_dropped_objects() d WHERE d.original;
  PERFORM pg_catalog.set_config('teal.ddl_dropped', CASE WHEN published THEN 'published' ELSE '' END, true);
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING 'teal: could not tell whether the dropped objects are published: %', SQLERRM;
END $teal$;
CREATE OR REPLACE FUNCTION {s}.teal_ddl_command_end() RETURNS event_trigger LANGUAGE plpgsql AS $teal$
DECLARE published boolean := false;
BEGIN
  IF tg_tag LIKE 'DROP %' THEN
    published := pg_catalog.current_setting('teal.ddl_dropped', true) = 'published';
    PERFORM pg_catalog.set_config('teal.ddl_dropped', '', true);
  ELSIF tg_tag = 'ALTER PUBLICATION' THEN
    published := EXISTS (SELECT 1 FROM pg_catalog.pg_event_trigger_ddl_commands() c
                         WHERE c.object_identity = {p} OR c.object_identity LIKE '% in publication ' || {p});
  ELSE
    SELECT coalesce(bool_or(NOT c.in_extension AND c.schema_name NOT LIKE 'pg\\_temp%'
                            AND CASE WHEN c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                                     THEN {s}.teal_ddl_covers(c.objid)
                                     ELSE c.schema_name IS NOT NULL AND {s}.teal_ddl_covers_schema(c.schema_name) END), false)
      INTO published FROM pg_catalog.pg_event_trigger_ddl_commands() c;
  END IF;
  PERFORM {s}.teal_ddl_emit(pg_catalog.jsonb_build_object(
    'tag', tg_tag, 'published', published, 'statement', pg_catalog.current_query(),
    'search_path', pg_catalog.current_setting('search_path'))::text);
EXCEPTION WHEN OTHERS THEN
  RAISE WARNING 'teal: the DDL was not sent to the stream (green will stop at the difference): %', SQLERRM;
END $teal$;
DROP EVENT TRIGGER IF EXISTS teal_ddl_sql_drop;
DROP EVENT TRIGGER IF EXISTS teal_ddl_command_end;
CREATE EVENT TRIGGER teal_ddl_sql_drop ON sql_drop EXECUTE FUNCTION {s}.teal_ddl_sql_drop();
CREATE EVENT TRIGGER teal_ddl_command_end ON ddl_command_end EXECUTE FUNCTION {s}.teal_ddl_command_end();",
        seq_schema = in_schema("c.relnamespace"),
        drop_schema = in_schema("(SELECT n.oid FROM pg_catalog.pg_namespace n WHERE n.nspname = nsp)"),
    )
}

/// The statements that remove it.
pub fn uninstall_sql(schema: &str) -> String {
    let s = quote_ident(schema);
    format!(
        "DROP EVENT TRIGGER IF EXISTS teal_ddl_command_end;
DROP EVENT TRIGGER IF EXISTS teal_ddl_sql_drop;
DROP FUNCTION IF EXISTS {s}.teal_ddl_command_end();
DROP FUNCTION IF EXISTS {s}.teal_ddl_sql_drop();
DROP FUNCTION IF EXISTS {s}.teal_ddl_covers(oid);
DROP FUNCTION IF EXISTS {s}.teal_ddl_covers_schema(text);
DROP FUNCTION IF EXISTS {s}.teal_ddl_emit(text);"
    )
}

/// Installs the trigger on blue (a superuser: event triggers need one),
/// in one transaction.
pub async fn install(
    blue: &mut Client,
    schema: &str,
    publication: &str,
) -> Result<(), tokio_postgres::Error> {
    let version: i32 = blue
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    let tx = blue.transaction().await?;
    tx.batch_execute(&install_sql(schema, publication, version))
        .await?;
    tx.commit().await
}

/// Removes it, in one transaction.
pub async fn uninstall(blue: &mut Client, schema: &str) -> Result<(), tokio_postgres::Error> {
    let tx = blue.transaction().await?;
    tx.batch_execute(&uninstall_sql(schema)).await?;
    tx.commit().await
}

/// Records on green that the DDL at `lsn` was run by hand: apply skips it.
pub async fn resolve(
    green: &mut Client,
    store: &Store,
    slot: &str,
    lsn: Lsn,
) -> Result<(), crate::store::StoreError> {
    store.migrate(green).await?;
    green
        .execute(
            &format!(
                "INSERT INTO {}.ddl (slot, lsn, tag, how) VALUES ($1, $2::text::pg_lsn, 'resolved by hand', 'resolved')",
                store.quoted()
            ),
            &[&slot, &lsn.to_string()],
        )
        .await
        .map_err(|e| crate::store::StoreError::Sql {
            context: "recording the DDL as resolved".into(),
            source: e,
        })?;
    Ok(())
}
