//! `--config teal.toml`: settings from a file, below flags and environment.
//!
//! Keys are the long flag names (`source`, `batch-max-changes`,
//! `conflict-table`, ...; `_` may stand for `-`). A value becomes the
//! flag's environment variable unless that variable is already set, so the
//! precedence is: command-line flag, then environment, then the file, then
//! the built-in default. Arrays are joined with the flag's delimiter (a
//! comma for comma-separated flags, a newline for those whose values may
//! hold commas, like `--kafka-property`).

use std::path::Path;

/// A config file that cannot be used; the message names the file and key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path} is not valid TOML at line {line}, column {column}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
    },
    #[error(
        "config file {path}: unknown key {key:?} (keys are the long flag names of this command: {known})"
    )]
    UnknownKey {
        path: String,
        key: String,
        known: String,
    },
    #[error("config file {path}: key {key:?} must be a string, number, boolean or array of those")]
    BadValue { path: String, key: String },
}

/// A long flag of the command, the environment variable it reads, and how
/// its repeated values are separated there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFlag {
    /// The long name (`batch-max-changes`).
    pub long: String,
    /// Its environment variable (`TEAL_BATCH_MAX_CHANGES`).
    pub env: String,
    /// What separates an array's items in the variable.
    pub delimiter: char,
}

/// The environment assignments `text` asks for, one per key of `flags`.
/// A syntax error names the line and column only: the line itself may hold
/// a password.
pub fn env_from_toml(
    path: &Path,
    text: &str,
    flags: &[FileFlag],
) -> Result<Vec<(String, String)>, ConfigFileError> {
    let shown = path.display().to_string();
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let at = e.span().map_or(0, |s| s.start.min(text.len()));
        let before = text.get(..at).unwrap_or(text);
        ConfigFileError::Syntax {
            path: shown.clone(),
            line: before.matches('\n').count() + 1,
            column: before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1,
        }
    })?;
    let mut out = Vec::with_capacity(table.len());
    for (key, value) in &table {
        let wanted = key.replace('_', "-");
        let Some(flag) = flags.iter().find(|f| f.long == wanted) else {
            let mut known: Vec<&str> = flags.iter().map(|f| f.long.as_str()).collect();
            known.sort_unstable();
            return Err(ConfigFileError::UnknownKey {
                path: shown,
                key: key.clone(),
                known: known.join(", "),
            });
        };
        let bad = || ConfigFileError::BadValue {
            path: shown.clone(),
            key: key.clone(),
        };
        let text = match value {
            // [mask."schema.table"] column = "rule": --mask schema.table.column=rule
            toml::Value::Table(tables) if flag.long == "mask" => {
                let mut entries = Vec::new();
                for (table, columns) in tables {
                    let toml::Value::Table(columns) = columns else {
                        return Err(bad());
                    };
                    for (column, rule) in columns {
                        let toml::Value::String(rule) = rule else {
                            return Err(bad());
                        };
                        entries.push(format!("{table}.{column}={rule}"));
                    }
                }
                entries.join(&flag.delimiter.to_string())
            }
            toml::Value::Array(items) => items
                .iter()
                .map(|v| scalar(v).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()?
                .join(&flag.delimiter.to_string()),
            other => scalar(other).ok_or_else(bad)?,
        };
        out.push((flag.env.clone(), text));
    }
    Ok(out)
}

/// Reads `path` and returns the assignments, as [`env_from_toml`].
pub fn env_from_file(
    path: &Path,
    flags: &[FileFlag],
) -> Result<Vec<(String, String)>, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigFileError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    env_from_toml(path, &text, flags)
}

fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> Vec<FileFlag> {
        [
            ("source", "TEAL_SOURCE_URL", ','),
            ("batch-max-changes", "TEAL_BATCH_MAX_CHANGES", ','),
            ("conflict-table", "TEAL_CONFLICT_TABLE", ','),
            ("create-slot", "TEAL_CREATE_SLOT", ','),
            ("kafka-property", "TEAL_KAFKA_PROPERTY", '\n'),
            ("mask", "TEAL_MASK", '\n'),
        ]
        .iter()
        .map(|(a, b, d)| FileFlag {
            long: a.to_string(),
            env: b.to_string(),
            delimiter: *d,
        })
        .collect()
    }

    #[test]
    fn keys_become_environment_assignments() {
        let text = r#"
source = "postgresql://blue/db"
batch_max_changes = 500
conflict-table = ["public.a=source-wins", "public.b=target-wins"]
create-slot = true
kafka-property = ["sasl.password=hun,ter2", "compression.type=lz4"]
"#;
        let mut got = env_from_toml(Path::new("t.toml"), text, &flags()).unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("TEAL_BATCH_MAX_CHANGES".to_owned(), "500".to_owned()),
                (
                    "TEAL_CONFLICT_TABLE".to_owned(),
                    "public.a=source-wins,public.b=target-wins".to_owned()
                ),
                ("TEAL_CREATE_SLOT".to_owned(), "true".to_owned()),
                (
                    "TEAL_KAFKA_PROPERTY".to_owned(),
                    "sasl.password=hun,ter2\ncompression.type=lz4".to_owned()
                ),
                (
                    "TEAL_SOURCE_URL".to_owned(),
                    "postgresql://blue/db".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn mask_tables_become_mask_entries() {
        let text = r#"
[mask."public.customer"]
email = "hash-email"
name  = "hash"
ssn   = "redact"

[mask."billing.card"]
memo = "constant:n/a"
"#;
        let got = env_from_toml(Path::new("t.toml"), text, &flags()).unwrap();
        assert_eq!(
            got,
            vec![(
                "TEAL_MASK".to_owned(),
                "billing.card.memo=constant:n/a\npublic.customer.email=hash-email\npublic.customer.name=hash\npublic.customer.ssn=redact".to_owned()
            )]
        );
        let e = env_from_toml(Path::new("t.toml"), "[mask]\nx = 1", &flags()).unwrap_err();
        assert!(matches!(e, ConfigFileError::BadValue { .. }), "{e}");
    }

    #[test]
    fn unknown_keys_bad_values_and_syntax_are_named() {
        let e = env_from_toml(Path::new("t.toml"), "sorce = \"x\"", &flags()).unwrap_err();
        assert!(e.to_string().contains("unknown key \"sorce\""), "{e}");
        assert!(e.to_string().contains("batch-max-changes"), "{e}");
        let e = env_from_toml(Path::new("t.toml"), "[source]\nx = 1", &flags()).unwrap_err();
        assert!(
            matches!(e, ConfigFileError::BadValue { ref key, .. } if key == "source"),
            "{e}"
        );
        let e = env_from_toml(Path::new("t.toml"), "source = ", &flags()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config file t.toml is not valid TOML"),
            "{e}"
        );
        // The line is not echoed: it may hold a password.
        let text = "batch-max-changes = 5\nsource = \"postgresql://u:hunter2@blue/db";
        let e = env_from_toml(Path::new("t.toml"), text, &flags()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config file t.toml is not valid TOML at line 2, column"),
            "{e}"
        );
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = env_from_file(Path::new("/nonexistent/teal.toml"), &flags()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/teal.toml"), "{e}");
    }
}
