//! `teal demo`, the README's first command, run as a user would.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Throwaway cluster directories the demo left in the temporary directory.
fn leftovers() -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("teal-demo-"))
        .collect()
}

/// Runs the demo, stops it with Ctrl-C (SIGINT) while the writers run: it
/// still catches green up, verifies it equals blue and that the books
/// balance on both sides, exits 0 and removes its clusters.
#[test]
fn demo_streams_verifies_and_cleans_up_on_ctrl_c() {
    crate::support::tap::init_logging();
    let before = leftovers();
    let bin = crate::support::cluster::default_bin();
    let mut child = Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["demo", "--duration", "120s", "--writers", "2", "--pg-bin"])
        .arg(&bin.dir)
        .env_remove("TEAL_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("teal demo starts");
    let mut stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let started = Instant::now();
    // Two live lines, then Ctrl-C.
    let mut live = 0;
    while live < 2 {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("demo ended early:\n{}", seen.join("\n")))
            .unwrap();
        if line.contains("transfers (")
            && line.contains("green behind blue's WAL:")
            && line.contains("teal_lag_bytes")
        {
            live += 1;
        }
        seen.push(line);
        assert!(started.elapsed() < Duration::from_secs(90), "demo too slow");
    }
    // SAFETY: kill with a valid pid of our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    seen.extend(lines.map(Result::unwrap));
    let status = child.wait().unwrap();
    let out = seen.join("\n");
    let stderr = stderr.join().unwrap();
    assert!(
        status.success(),
        "demo failed ({status:?}):\n{out}\n{stderr}"
    );
    // Its report alone: no INFO log lines interleaved (issue 18.8).
    assert!(!stderr.contains("INFO"), "{stderr}");
    assert!(out.contains("== interrupted"), "{out}");
    for table in ["accounts", "transfers", "ledger"] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(table))
            .unwrap_or_else(|| panic!("no verification line for {table}:\n{out}"));
        assert!(line.ends_with("equal"), "{line}");
    }
    for side in ["blue ", "green"] {
        let books = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{side} ledger debits")))
            .unwrap_or_else(|| panic!("no books line for {side}:\n{out}"));
        assert!(
            books.contains(" = credits") && books.contains("balances sum to 1000000.00"),
            "{books}"
        );
    }
    assert!(out.contains("== green equals blue"), "{out}");
    // Some transfers were made and streamed.
    let transfers: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("== writers stopped after "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no transfer count:\n{out}"));
    assert!(transfers > 0, "{out}");
    assert_eq!(leftovers(), before, "the demo removed its clusters");
}

/// Without server binaries the demo names what to install.
#[test]
fn demo_without_server_binaries_names_the_package() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["demo", "--pg-bin"])
        .arg(empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("apt-get install -y postgresql") && stderr.contains("lacks postgres"),
        "{stderr}"
    );
}
