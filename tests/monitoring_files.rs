//! The Grafana dashboard, the Prometheus alert rules and docker-compose.yml
//! refer only to what exists: metrics teal exports and files in the repo.

use std::collections::BTreeSet;
use std::path::Path;

use teal::monitor::Monitor;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Metric names teal's /metrics can carry (families and their samples).
fn exported() -> BTreeSet<String> {
    let text = Monitor::new("s").metrics_text();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next(),
            None if !line.starts_with('#') => line.split(['{', ' ']).next(),
            None => None,
        };
        if let Some(n) = name {
            names.insert(n.to_owned());
        }
    }
    names
}

/// `teal_*` names used in a PromQL expression.
fn used(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("teal_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn dashboard_and_alerts_use_exported_metrics() {
    let exported = exported();
    assert!(exported.contains("teal_lag_bytes") && exported.contains("teal_up"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("monitoring/grafana/dashboards/teal.json")).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    let alerts = read("monitoring/alerts.yml");
    let alert_exprs: Vec<String> = alerts
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
        .map(str::to_owned)
        .collect();
    assert!(
        alert_exprs.len() >= 5,
        "lag, WAL retention, down, conflicts"
    );
    for needed in [
        "teal_lag_seconds",
        "teal_slot_retained_wal_bytes",
        "teal_up",
        "teal_apply_conflicts_total",
    ] {
        assert!(
            alert_exprs.iter().any(|e| e.contains(needed)),
            "an alert on {needed}"
        );
    }
    for expr in exprs.iter().chain(&alert_exprs) {
        for name in used(expr) {
            assert!(
                exported.contains(&name),
                "{name} (in {expr}) is not exported: {exported:?}"
            );
        }
    }
    // Every panel shows something lag-related or a counter teal has.
    assert!(exprs.len() >= 10);
}

#[test]
fn compose_mounts_files_that_exist() {
    let compose = read("docker-compose.yml");
    let mut mounts = 0;
    for line in compose.lines() {
        let Some(path) = line.trim().strip_prefix("- ./") else {
            continue;
        };
        let local = path.split(':').next().unwrap();
        assert!(
            Path::new(ROOT).join(local).exists(),
            "{local} is mounted but missing"
        );
        mounts += 1;
    }
    assert!(mounts >= 8, "{mounts} mounts");
    for service in [
        "blue:",
        "green:",
        "kafka:",
        "teal:",
        "prometheus:",
        "grafana:",
    ] {
        assert!(
            compose.contains(&format!("\n  {service}")),
            "service {service}"
        );
    }
}
