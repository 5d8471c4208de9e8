//! Secrets given on the command line, where every local user can read them
//! (`ps`, /proc): which flags hold one, and the warning that says where to
//! put each instead.

use teal::config::ConnInfo;

/// Kafka properties whose value is a secret (or holds one).
fn is_secret_kafka_property(name: &str) -> bool {
    let name = name.trim().to_ascii_lowercase();
    name.contains("password")
        || name.contains("secret")
        || name == "ssl.key.pem"
        || name == "sasl.oauthbearer.config"
}

/// The flags given on the command line, where every local user can read
/// them (`ps`, /proc), with a secret in their value: a password in a
/// connection string, the metrics token, a secret Kafka property. Values
/// from the environment or the configuration file are not counted.
pub(crate) fn secrets_on_command_line(matches: &clap::ArgMatches) -> Vec<&'static str> {
    use clap::parser::ValueSource;
    let mut found = Vec::new();
    let mut next = Some(matches);
    while let Some(m) = next {
        let given = |id: &str| {
            m.ids().any(|i| i.as_str() == id)
                && m.value_source(id) == Some(ValueSource::CommandLine)
        };
        for (id, flag) in [("source", "--source"), ("target", "--target")] {
            let has_password = given(id)
                && m.get_one::<String>(id).is_some_and(|s| {
                    ConnInfo::parse_with_env(s, &|_| None).is_ok_and(|c| c.password.is_some())
                });
            if has_password && !found.contains(&flag) {
                found.push(flag);
            }
        }
        if given("metrics_token") && !found.contains(&"--metrics-token") {
            found.push("--metrics-token");
        }
        if given("kafka_property")
            && m.get_many::<String>("kafka_property").is_some_and(|mut v| {
                v.any(|p| {
                    p.lines()
                        .any(|l| is_secret_kafka_property(l.split('=').next().unwrap_or("")))
                })
            })
            && !found.contains(&"--kafka-property")
        {
            found.push("--kafka-property");
        }
        next = m.subcommand().map(|(_, sub)| sub);
    }
    found
}

/// The warning for [`secrets_on_command_line`]'s flags: where to put each
/// secret instead.
pub(crate) fn command_line_secrets_warning(flags: &[&str]) -> String {
    let instead: Vec<&str> = flags
        .iter()
        .map(|f| match *f {
            "--source" => "TEAL_SOURCE_URL or a password file (PGPASSFILE, ~/.pgpass) for blue",
            "--target" => "TEAL_TARGET_URL or a password file (PGPASSFILE, ~/.pgpass) for green",
            "--metrics-token" => "TEAL_METRICS_TOKEN",
            _ => "TEAL_KAFKA_PROPERTY (one property per line) or the configuration file",
        })
        .collect();
    format!(
        "a secret is on the command line ({}), where other local users can read it (ps, /proc); use {} instead",
        flags.join(", "),
        instead.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::super::Cli;
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn flags(args: &[&str], env: &[(&str, &str)]) -> Vec<&'static str> {
        // The environment is the process's: set and clear around the parse.
        for (k, v) in env {
            // SAFETY: unit tests of this module touch no other variables,
            // and these names are read by no other test.
            unsafe { std::env::set_var(k, v) };
        }
        let matches = Cli::command().try_get_matches_from(args).unwrap();
        for (k, _) in env {
            // SAFETY: as above.
            unsafe { std::env::remove_var(k) };
        }
        assert!(Cli::from_arg_matches(&matches).is_ok());
        secrets_on_command_line(&matches)
    }

    /// Issue 19.9: which flags put a secret where `ps` shows it.
    #[test]
    fn secrets_on_the_command_line_are_found() {
        let base = ["teal", "stream", "--slot", "s", "--publication", "p"];
        fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
            [base, extra].concat()
        }
        assert_eq!(
            flags(
                &with(
                    &base,
                    &[
                        "--source",
                        "postgresql://u:hunter2@blue/db",
                        "--target",
                        "host=green user=u password=x",
                        "--metrics-token",
                        "t0ken",
                        "--kafka-brokers",
                        "k:9092",
                        "--kafka-property",
                        "sasl.password=hun,ter2",
                    ]
                ),
                &[]
            ),
            [
                "--source",
                "--target",
                "--metrics-token",
                "--kafka-property"
            ]
        );
        // No password in the strings, harmless properties: nothing.
        assert!(
            flags(
                &with(
                    &base,
                    &[
                        "--source",
                        "postgresql://u@blue/db",
                        "--target",
                        "host=green user=u passfile=/p",
                        "--kafka-brokers",
                        "k:9092",
                        "--kafka-property",
                        "acks=all",
                    ]
                ),
                &[]
            )
            .is_empty()
        );
        // From the environment: nothing.
        assert!(
            flags(
                &with(&base, &["--target", "host=green user=u"]),
                &[("TEAL_SOURCE_URL", "postgresql://u:hunter2@blue/db")]
            )
            .is_empty()
        );
        // teal status and teal tail too.
        assert_eq!(
            flags(
                &[
                    "teal",
                    "status",
                    "--metrics-token",
                    "t",
                    "--target",
                    "postgresql://u:p@g/d"
                ],
                &[]
            ),
            ["--target", "--metrics-token"]
        );
        let warning = command_line_secrets_warning(&["--source", "--metrics-token"]);
        assert!(
            warning.contains("TEAL_SOURCE_URL") && warning.contains("TEAL_METRICS_TOKEN"),
            "{warning}"
        );
    }
}
