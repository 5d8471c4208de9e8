//! Masking: per-column rules applied to every change before it leaves the
//! capture stage, and to every row `teal sync` copies, so that an unmasked
//! value never reaches green, Kafka, `teal.conflicts`, logs or `/status`.
//!
//! ```text
//! assembler ──Event::Changes──▶ Masker (per relation: which columns, which rule) ──▶ apply, Kafka
//! teal sync: blue COPY (text) ──row──▶ mask_copy_row ──▶ green COPY
//! ```
//!
//! Rules come from `--mask schema.table.column=rule` or the config file's
//! `[mask."schema.table"]` tables; the key from `TEAL_MASK_KEY` or
//! `--mask-key-file` (never the command line). See [`rule`] for the rules.
//! A rule that maps many values to one (null, constant, redact) may not
//! mask a column of a unique index or the replica identity: checked when
//! teal starts ([`check_catalog`]) and again for each relation blue sends.

pub mod copy;
pub mod rule;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub use rule::{MaskKey, Rule, TypeClass};

use crate::event::{Change, ChangeKind, Column, OldRow, QualifiedName, Relation, RowImage};

/// Why masking refused a table or a value; names the table and column,
/// never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("masking {table}.{column}: {reason}")]
pub struct MaskError {
    /// `schema.table`.
    pub table: String,
    /// The column.
    pub column: String,
    /// What is wrong.
    pub reason: String,
}

/// The rules and the key.
#[derive(Debug, Clone)]
pub struct MaskConfig {
    /// Per table, per column.
    tables: BTreeMap<(String, String), BTreeMap<String, Rule>>,
    key: MaskKey,
}

/// The environment variable holding the mask key.
pub const KEY_ENV: &str = "TEAL_MASK_KEY";

impl MaskConfig {
    /// Rules from `schema.table.column=rule` entries (the table part may
    /// not hold a dot; the rule starts after the first `=`).
    pub fn parse(entries: &[String], key: MaskKey) -> Result<MaskConfig, String> {
        let mut tables: BTreeMap<(String, String), BTreeMap<String, Rule>> = BTreeMap::new();
        for entry in entries {
            let (target, rule) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?} is not schema.table.column=rule"))?;
            let (table, column) = target
                .rsplit_once('.')
                .ok_or_else(|| format!("{target:?} is not schema.table.column"))?;
            let (schema, name) = table
                .split_once('.')
                .ok_or_else(|| format!("{target:?} is not schema.table.column"))?;
            if [schema, name, column].iter().any(|p| p.is_empty()) {
                return Err(format!("{target:?} is not schema.table.column"));
            }
            let rule = Rule::parse(rule.trim()).map_err(|e| format!("{target}: {e}"))?;
            let previous = tables
                .entry((schema.to_owned(), name.to_owned()))
                .or_default()
                .insert(column.to_owned(), rule);
            if previous.is_some() {
                return Err(format!("{target} has two rules"));
            }
        }
        Ok(MaskConfig { tables, key })
    }

    /// The rules of `table`, if it has any.
    pub fn table(&self, table: &QualifiedName) -> Option<&BTreeMap<String, Rule>> {
        self.tables
            .get(&(table.namespace.clone(), table.name.clone()))
    }

    /// Every masked table with its rules.
    pub fn tables(&self) -> impl Iterator<Item = (QualifiedName, &BTreeMap<String, Rule>)> {
        self.tables.iter().map(|((s, t), rules)| {
            (
                QualifiedName {
                    namespace: s.clone(),
                    name: t.clone(),
                },
                rules,
            )
        })
    }

    /// The key.
    pub fn key(&self) -> &MaskKey {
        &self.key
    }
}

/// The key from `key_file` (its contents, surrounding whitespace trimmed)
/// or else [`KEY_ENV`] (looked up through `env`).
pub fn load_key(
    key_file: Option<&std::path::Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<MaskKey, String> {
    let bytes = match key_file {
        Some(path) => std::fs::read(path)
            .map_err(|e| format!("cannot read the mask key file {}: {e}", path.display()))?
            .trim_ascii()
            .to_vec(),
        None => env(KEY_ENV)
            .ok_or_else(|| {
                format!("masking rules need a key: set {KEY_ENV} or mask-key-file (never on the command line)")
            })?
            .trim()
            .as_bytes()
            .to_vec(),
    };
    MaskKey::new(&bytes)
}

/// How one column is masked.
#[derive(Debug, Clone)]
pub(crate) struct ColumnMask {
    pub(crate) rule: Rule,
    pub(crate) ty: TypeClass,
    pub(crate) max_len: Option<usize>,
}

impl ColumnMask {
    /// `column`'s mask under `rule`, or why it cannot have one.
    pub(crate) fn new(
        table: &QualifiedName,
        column: &str,
        rule: &Rule,
        ty: TypeClass,
        type_modifier: i32,
        type_oid: u32,
    ) -> Result<ColumnMask, MaskError> {
        if let Some(reason) = rule.refuses(ty) {
            return Err(MaskError {
                table: table.to_string(),
                column: column.to_owned(),
                reason: format!("rule {} cannot mask its type: {reason}", rule.name()),
            });
        }
        // varchar(n) and char(n): typmod is n + 4.
        let max_len = matches!(type_oid, 1043 | 1042)
            .then(|| usize::try_from(type_modifier - 4).ok())
            .flatten()
            .filter(|n| *n > 0);
        Ok(ColumnMask {
            rule: rule.clone(),
            ty,
            max_len,
        })
    }

    pub(crate) fn apply(
        &self,
        key: &MaskKey,
        table: &QualifiedName,
        column: &str,
        value: &[u8],
    ) -> Result<rule::Masked, MaskError> {
        rule::mask(&self.rule, self.ty, self.max_len, key, value).map_err(|e| MaskError {
            table: table.to_string(),
            column: column.to_owned(),
            reason: e.0,
        })
    }
}

/// Which of a relation's columns are masked, by position.
struct Plan {
    columns: Vec<Option<ColumnMask>>,
}

/// Masks the changes of masked tables, in place. One per capture.
pub struct Masker {
    config: Arc<MaskConfig>,
    /// Per relation id: the relation version the plan was made for.
    plans: HashMap<u32, (u64, Option<Arc<Plan>>)>,
}

impl Masker {
    /// A masker of `config`'s tables.
    pub fn new(config: Arc<MaskConfig>) -> Masker {
        Masker {
            config,
            plans: HashMap::new(),
        }
    }

    fn plan(&mut self, relation: &Relation) -> Result<Option<Arc<Plan>>, MaskError> {
        if let Some((version, plan)) = self.plans.get(&relation.rel_id) {
            if *version == relation.version {
                return Ok(plan.clone());
            }
        }
        let plan = match self.config.table(&relation.name) {
            None => None,
            Some(rules) => Some(Arc::new(plan_for(relation, rules)?)),
        };
        self.plans
            .insert(relation.rel_id, (relation.version, plan.clone()));
        Ok(plan)
    }

    /// Masks `change` when its table is masked.
    pub fn mask_change(&mut self, change: &mut Change) -> Result<(), MaskError> {
        // The config, not the key, is cloned: a pointer per change.
        let config = Arc::clone(&self.config);
        let key = &config.key;
        match &mut change.kind {
            ChangeKind::Insert { relation, new } => {
                if let Some(plan) = self.plan(relation)? {
                    *new = mask_image(&plan, key, relation, new)?;
                }
            }
            ChangeKind::Update { relation, old, new } => {
                if let Some(plan) = self.plan(relation)? {
                    *new = mask_image(&plan, key, relation, new)?;
                    if let Some(old) = old.as_mut() {
                        mask_old(&plan, key, relation, old)?;
                    }
                }
            }
            ChangeKind::Delete { relation, old } => {
                if let Some(plan) = self.plan(relation)? {
                    mask_old(&plan, key, relation, old)?;
                }
            }
            ChangeKind::Truncate { .. } | ChangeKind::Message(_) => {}
        }
        Ok(())
    }
}

fn plan_for(relation: &Relation, rules: &BTreeMap<String, Rule>) -> Result<Plan, MaskError> {
    let table = &relation.name;
    for column in rules.keys() {
        if !relation.columns.iter().any(|c| &c.name == column) {
            return Err(MaskError {
                table: table.to_string(),
                column: column.clone(),
                reason: "blue's table has no such column (a rule for a column that does not exist would mask nothing)".into(),
            });
        }
    }
    let columns = relation
        .columns
        .iter()
        .map(|c: &Column| {
            let Some(rule) = rules.get(&c.name) else {
                return Ok(None);
            };
            // Under REPLICA IDENTITY FULL every column is "key"; a unique
            // index there is caught by check_catalog.
            if c.is_key
                && relation.replica_identity != crate::event::ReplicaIdentity::Full
                && !rule.preserves_uniqueness()
            {
                return Err(non_injective(table, &c.name, rule, "the replica identity"));
            }
            let ty = TypeClass::of(c.type_oid, c.type_name.as_ref().map(|n| n.name.as_str()));
            ColumnMask::new(table, &c.name, rule, ty, c.type_modifier, c.type_oid).map(Some)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Plan { columns })
}

fn non_injective(table: &QualifiedName, column: &str, rule: &Rule, what: &str) -> MaskError {
    MaskError {
        table: table.to_string(),
        column: column.to_owned(),
        reason: format!(
            "rule {} maps many values to one, and the column is part of {what}: green would refuse the duplicates. Use hash, hash-email or hash-phone (they keep values apart)",
            rule.name()
        ),
    }
}

fn mask_old(
    plan: &Plan,
    key: &MaskKey,
    relation: &Relation,
    old: &mut OldRow,
) -> Result<(), MaskError> {
    match old {
        OldRow::Key(image) | OldRow::Full(image) => {
            *image = mask_image(plan, key, relation, image)?;
        }
    }
    Ok(())
}

fn mask_image(
    plan: &Plan,
    key: &MaskKey,
    relation: &Relation,
    image: &RowImage,
) -> Result<RowImage, MaskError> {
    use crate::event::{Cell, CellKind, Value};
    let mut data = Vec::with_capacity(image.data_len() + 64);
    let mut cells = Vec::with_capacity(image.len());
    for (i, value) in image.values().enumerate() {
        let mask = plan.columns.get(i).and_then(Option::as_ref);
        let push = |data: &mut Vec<u8>, kind: CellKind, bytes: &[u8]| {
            let start = data.len() as u32;
            data.extend_from_slice(bytes);
            Cell {
                kind,
                start,
                len: bytes.len() as u32,
            }
        };
        let cell = match (value, mask) {
            (Value::Null, _) => push(&mut data, CellKind::Null, &[]),
            (Value::UnchangedToast, _) => push(&mut data, CellKind::UnchangedToast, &[]),
            (Value::Text(t), None) => push(&mut data, CellKind::Text, t),
            (Value::Binary(b), None) => push(&mut data, CellKind::Binary, b),
            (Value::Text(t), Some(m)) => {
                let column = &relation.columns[i].name;
                match m.apply(key, &relation.name, column, t)? {
                    Some(masked) => push(&mut data, CellKind::Text, &masked),
                    None => push(&mut data, CellKind::Null, &[]),
                }
            }
            (Value::Binary(_), Some(_)) => {
                return Err(MaskError {
                    table: relation.name.to_string(),
                    column: relation.columns[i].name.clone(),
                    reason: "the value arrived in binary; masking needs pgoutput's text format (leave --binary off)".into(),
                });
            }
        };
        cells.push(cell);
    }
    RowImage::from_parts(bytes::Bytes::from(data), cells).map_err(|e| MaskError {
        table: relation.name.to_string(),
        column: String::new(),
        reason: e.to_string(),
    })
}

/// Checks the rules against blue's catalog before anything streams or is
/// copied: every masked table and column exists, each rule fits its
/// column's type, no rule that maps many values to one masks a column of
/// a unique index, the primary key or a NOT NULL column (null).
pub async fn check_catalog(
    client: &tokio_postgres::Client,
    config: &MaskConfig,
) -> Result<(), MaskError> {
    for (table, rules) in config.tables() {
        let sql_error = |e: tokio_postgres::Error| MaskError {
            table: table.to_string(),
            column: String::new(),
            reason: format!("cannot read blue's catalog: {}", crate::error::Report(&e)),
        };
        let rows = client
            .query(
                "SELECT a.attname, a.atttypid::oid, t.typname::text, a.atttypmod, a.attnotnull, \
                        EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                                WHERE i.indrelid = c.oid AND (i.indisunique OR i.indisprimary) \
                                  AND a.attnum = ANY (i.indkey)) \
                 FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                 JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&table.namespace, &table.name],
            )
            .await
            .map_err(sql_error)?;
        if rows.is_empty() {
            return Err(MaskError {
                table: table.to_string(),
                column: rules.keys().next().cloned().unwrap_or_default(),
                reason: "blue has no such table".into(),
            });
        }
        for (column, rule) in rules {
            let Some(row) = rows.iter().find(|r| r.get::<_, String>(0) == *column) else {
                return Err(MaskError {
                    table: table.to_string(),
                    column: column.clone(),
                    reason: "blue's table has no such column".into(),
                });
            };
            let type_oid: u32 = row.get(1);
            let type_name: String = row.get(2);
            let ty = TypeClass::of(type_oid, Some(&type_name));
            ColumnMask::new(&table, column, rule, ty, row.get(3), type_oid)?;
            if row.get::<_, bool>(5) && !rule.preserves_uniqueness() {
                return Err(non_injective(
                    &table,
                    column,
                    rule,
                    "a unique index or the primary key",
                ));
            }
            if row.get::<_, bool>(4) && *rule == Rule::Null {
                return Err(MaskError {
                    table: table.to_string(),
                    column: column.clone(),
                    reason: "rule null on a NOT NULL column: green would refuse every row; use constant:VALUE or a hash".into(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MaskKey {
        MaskKey::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn entries_parse_into_tables_and_columns() {
        let c = MaskConfig::parse(
            &[
                "public.customer.email=hash-email".into(),
                "public.customer.ssn=redact".into(),
                "billing.card.note=constant:a=b".into(),
            ],
            key(),
        )
        .unwrap();
        let customer = c
            .table(&QualifiedName {
                namespace: "public".into(),
                name: "customer".into(),
            })
            .unwrap();
        assert_eq!(customer["email"], Rule::HashEmail);
        assert_eq!(customer["ssn"], Rule::Redact);
        let card = c
            .table(&QualifiedName {
                namespace: "billing".into(),
                name: "card".into(),
            })
            .unwrap();
        assert_eq!(card["note"], Rule::Constant("a=b".into()));
        for bad in [
            "customer.email=hash",
            "public.customer.email",
            "public.t.c=md5",
            ".t.c=hash",
        ] {
            assert!(MaskConfig::parse(&[bad.into()], key()).is_err(), "{bad}");
        }
        assert!(
            MaskConfig::parse(&["a.b.c=hash".into(), "a.b.c=null".into()], key())
                .unwrap_err()
                .contains("two rules")
        );
    }

    #[test]
    fn the_key_comes_from_a_file_or_the_environment_never_empty() {
        let none = |_: &str| None;
        assert!(load_key(None, &none).unwrap_err().contains(KEY_ENV));
        let env = |k: &str| (k == KEY_ENV).then(|| "0123456789abcdef-more".to_owned());
        load_key(None, &env).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "short\n").unwrap();
        assert!(
            load_key(Some(&path), &env)
                .unwrap_err()
                .contains("at least 16")
        );
    }
}
