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
    let tmp = tempdir();
    let dir = tmp.as_str();
    vtpga(&[
        "generate",
        "--out",
        dir,
        "--count",
        "6000",
        "--users",
        "500",
        "--span-hours",
        "2",
    ]);
    for w in ["1", "2", "4"] {
        let mut args = replay_args(dir, &format!("w{w}"));
        args.extend(["--workers".into(), w.into()]);
        vtpga(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    // Two processes of one worker each, on a port range of this test's own.
    let port = 24_700 + (std::process::id() % 200) as u16 * 2;
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
