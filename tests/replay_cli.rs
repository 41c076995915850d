//! `vtpga generate` then `vtpga replay` through the real binary: byte-identical outputs for
//! 1, 2 and 4 workers and for 2 processes on localhost (SPEC §9), and every status occurs.

use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_vtpga");

fn vtpga(args: &[&str]) {
    let status = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .status()
        .expect("vtpga runs");
    assert!(status.success(), "vtpga {args:?} failed: {status}");
}

fn replay_args(dir: &str, tag: &str) -> Vec<String> {
    vec![
        "replay".into(),
        "--input".into(),
        format!("{dir}/capture.jsonl"),
        "--regions".into(),
        format!("{dir}/regions.csv"),
        "--users".into(),
        format!("{dir}/users.csv"),
        "--decisions".into(),
        format!("{dir}/decisions-{tag}.jsonl"),
        "--analyses".into(),
        format!("{dir}/analyses-{tag}.json"),
        "--balances".into(),
        format!("{dir}/balances-{tag}.csv"),
    ]
}

fn read(dir: &str, name: String) -> Vec<u8> {
    std::fs::read(Path::new(dir).join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn replay_is_identical_for_any_worker_and_process_count() {
    let decisions = identical_outputs(&[], 24_700);
    assert!(decisions.contains("\"rules_version\":\"default\""));
}

/// The same with live changes (SPEC §11): a capture with control records of every kind
/// (generated at 2 per second of arrival time over the 2 hours) among its messages.
#[test]
fn replay_with_live_changes_is_identical_for_any_worker_and_process_count() {
    let decisions = identical_outputs(&["--control-rate", "2"], 25_100);
    let versions: std::collections::BTreeSet<&str> = decisions
        .lines()
        .filter_map(|l| l.split("\"rules_version\":\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert!(
        versions.len() > 3 && versions.contains("default"),
        "rule sets change over the capture: {versions:?}"
    );
}

/// Generates a capture (with `extra` flags), replays it with 1, 2 and 4 workers and with
/// 2 processes (on ports from `base_port`, a range of the test's own), checks the outputs
/// are byte-identical, and returns the decisions.
fn identical_outputs(extra: &[&str], base_port: u16) -> String {
    let tmp = tempdir();
    let dir = tmp.as_str();
    let mut args = vec![
        "generate",
        "--out",
        dir,
        "--count",
        "6000",
        "--users",
        "500",
        "--span-hours",
        "2",
    ];
    args.extend_from_slice(extra);
    vtpga(&args);
    for w in ["1", "2", "4"] {
        let mut args = replay_args(dir, &format!("w{w}"));
        args.extend(["--workers".into(), w.into()]);
        vtpga(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    // Two processes of one worker each, on a port range of this test's own.
    let port = base_port + (std::process::id() % 200) as u16 * 2;
    let children: Vec<_> = (0..2)
        .map(|p| {
            let mut args = replay_args(dir, "p2");
            args.extend([
                "--processes".into(),
                "2".into(),
                "--process".into(),
                p.to_string(),
                "--base-port".into(),
                port.to_string(),
            ]);
            Command::new(BIN)
                .args(&args)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn a cluster process")
        })
        .collect();
    for mut child in children {
        assert!(
            child.wait().expect("wait").success(),
            "cluster process failed"
        );
    }
    for kind in ["decisions-{}.jsonl", "analyses-{}.json", "balances-{}.csv"] {
        let base = read(dir, kind.replace("{}", "w1"));
        assert!(!base.is_empty());
        for tag in ["w2", "w4", "p2"] {
            assert!(
                base == read(dir, kind.replace("{}", tag)),
                "{} differs from the 1-worker output",
                kind.replace("{}", tag)
            );
        }
    }
    let decisions = String::from_utf8(read(dir, "decisions-w1.jsonl".into())).expect("utf-8");
    assert_eq!(decisions.lines().count(), 6000);
    for status in [
        "invalid",
        "late",
        "duplicate",
        "unknown_reference",
        "stale",
        "insufficient_balance",
        "insufficient_limit",
        "rejected_risk",
        "approved",
    ] {
        assert!(
            decisions.contains(&format!("\"status\":\"{status}\"")),
            "no {status} decision"
        );
    }
    let analyses: serde_json::Value =
        serde_json::from_slice(&read(dir, "analyses-w1.json".into())).expect("analyses JSON");
    assert_eq!(analyses.as_object().expect("object").len(), 10);
    let _ = std::fs::remove_dir_all(dir);
    decisions
}

/// A fresh directory under the system temp dir (no extra crate for one helper).
fn tempdir() -> String {
    let dir = std::env::temp_dir().join(format!(
        "vtpga-replay-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.to_string_lossy().into_owned()
}
