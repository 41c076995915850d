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

/// `vtpga generate` of 6,000 messages of 500 users over 2 hours into `dir`, with `extra`
/// flags.
fn generate_small(dir: &str, extra: &[&str]) {
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

/// A cell holding more messages than `--max-in-flight` (70-minute cells of about 3,000
/// messages, at most 100 in flight): the source must take the rest of a cell it has begun
/// even when full, or the cell never closes and the replay waits for ever (it did). The
/// outputs are those of a replay without the bound; the run is killed after 120 s.
#[test]
fn a_cell_larger_than_max_in_flight_is_decided() {
    let tmp = tempdir();
    let dir = tmp.as_str();
    generate_small(dir, &[]);
    let mut args = replay_args(dir, "free");
    args.extend(["--epoch-ms".into(), "4194304".into()]);
    vtpga(&args.iter().map(String::as_str).collect::<Vec<_>>());
    for workers in ["1", "2"] {
        let tag = format!("bounded{workers}");
        let mut args = replay_args(dir, &tag);
        args.extend(
            [
                "--epoch-ms",
                "4194304",
                "--max-in-flight",
                "100",
                "--workers",
                workers,
            ]
            .map(String::from),
        );
        let mut child = Command::new(BIN)
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("vtpga replay runs");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let status = status.unwrap_or_else(|| {
            panic!("replay with --max-in-flight 100 and {workers} worker(s) did not end in 120 s")
        });
        assert!(status.success(), "replay failed: {status}");
        for kind in ["decisions-{}.jsonl", "analyses-{}.json", "balances-{}.csv"] {
            assert!(
                read(dir, kind.replace("{}", "free")) == read(dir, kind.replace("{}", &tag)),
                "{} differs from the replay without the bound",
                kind.replace("{}", &tag)
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Shadow rule sets (SPEC §12): `replay --shadow a --shadow b --shadow-out DIR` leaves
/// the decisions of record byte-identical to a replay without shadows, writes for each
/// shadow exactly what `replay --rules` with its set writes, and what-if rows equal to
/// the pairs of statuses of the two decision files, counted here.
#[test]
fn replay_with_shadows_equals_replays_with_their_rules() {
    let tmp = tempdir();
    let dir = tmp.as_str();
    generate_small(dir, &[]);
    let sets = [
        (
            "strict",
            r#"{"version": "strict", "risk_threshold": 0.3, "max_delay_ms": 500, "dedup_window_ms": 3600000}"#,
        ),
        (
            "loose/1",
            r#"{"version": "loose/1", "risk_threshold": 0.8, "max_delay_ms": 5000, "dedup_window_ms": 60000}"#,
        ),
        // Rules 1–3 as the record's (the defaults): they are shared.
        (
            "threshold",
            r#"{"version": "threshold", "risk_threshold": 0.4, "max_delay_ms": 1000, "dedup_window_ms": 300000}"#,
        ),
    ];
    for (i, (_, json)) in sets.iter().enumerate() {
        std::fs::write(format!("{dir}/shadow{i}.json"), json).expect("shadow file");
    }
    // Without shadows, then with both, on 1 and 2 workers.
    vtpga(
        &replay_args(dir, "plain")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    for w in ["1", "2"] {
        let mut args = replay_args(dir, &format!("s{w}"));
        args.extend([
            "--workers".into(),
            w.into(),
            "--shadow".into(),
            format!("{dir}/shadow0.json"),
            "--shadow".into(),
            format!("{dir}/shadow1.json"),
            "--shadow".into(),
            format!("{dir}/shadow2.json"),
            "--shadow-out".into(),
            format!("{dir}/shadows-w{w}"),
        ]);
        vtpga(&args.iter().map(String::as_str).collect::<Vec<_>>());
        for kind in ["decisions-{}.jsonl", "analyses-{}.json", "balances-{}.csv"] {
            assert!(
                read(dir, kind.replace("{}", "plain"))
                    == read(dir, kind.replace("{}", &format!("s{w}"))),
                "{} of record changed with shadows, {w} worker(s)",
                kind.replace("{}", "")
            );
        }
    }
    let primary = String::from_utf8(read(dir, "decisions-plain.jsonl".into())).expect("utf-8");
    for (i, (version, _)) in sets.iter().enumerate() {
        let mut args = replay_args(dir, &format!("rules{i}"));
        args.extend(["--rules".into(), format!("{dir}/shadow{i}.json")]);
        vtpga(&args.iter().map(String::as_str).collect::<Vec<_>>());
        // "loose/1" is written under "loose%2F1".
        let sub = version.replace('/', "%2F");
        for w in ["1", "2"] {
            for (mine, theirs) in [
                ("decisions.jsonl", format!("decisions-rules{i}.jsonl")),
                ("analyses.json", format!("analyses-rules{i}.json")),
                ("balances.csv", format!("balances-rules{i}.csv")),
            ] {
                assert!(
                    read(dir, format!("shadows-w{w}/{sub}/{mine}")) == read(dir, theirs.clone()),
                    "shadow {version}'s {mine} differs from replay --rules's {theirs}, {w} worker(s)"
                );
            }
        }
        let shadow =
            String::from_utf8(read(dir, format!("decisions-rules{i}.jsonl"))).expect("utf-8");
        let mut pairs: std::collections::BTreeMap<(String, String), (i64, i128)> =
            Default::default();
        let mut differ = 0;
        for (p, s) in primary.lines().zip(shadow.lines()) {
            let p: serde_json::Value = serde_json::from_str(p).expect("a decision");
            let s: serde_json::Value = serde_json::from_str(s).expect("a decision");
            assert_eq!(
                (&p["partition"], &p["offset"]),
                (&s["partition"], &s["offset"]),
                "the same message on the same line"
            );
            let statuses = (
                p["status"].as_str().expect("status").to_owned(),
                s["status"].as_str().expect("status").to_owned(),
            );
            differ += usize::from(statuses.0 != statuses.1);
            let row = pairs.entry(statuses).or_default();
            row.0 += 1;
            row.1 += i128::from(p["amount_cents"].as_i64().unwrap_or(0));
        }
        assert_eq!(primary.lines().count(), shadow.lines().count());
        assert!(differ > 0, "shadow {version} decides nothing differently");
        for w in ["1", "2"] {
            let what_if: serde_json::Value =
                serde_json::from_slice(&read(dir, format!("shadows-w{w}/{sub}/what_if.json")))
                    .expect("what-if JSON");
            let rows: std::collections::BTreeMap<(String, String), (i64, i128)> = what_if
                .as_array()
                .expect("rows")
                .iter()
                .map(|r| {
                    assert_eq!(r["shadow"], *version);
                    (
                        (
                            r["primary_status"].as_str().expect("status").to_owned(),
                            r["shadow_status"].as_str().expect("status").to_owned(),
                        ),
                        (
                            r["count"].as_i64().expect("count"),
                            r["amount_cents"].to_string().parse().expect("amount"),
                        ),
                    )
                })
                .collect();
            assert_eq!(rows, pairs, "what-if rows of {version}, {w} worker(s)");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Generates a capture (with `extra` flags), replays it with 1, 2 and 4 workers and with
/// 2 processes (on ports from `base_port`, a range of the test's own), checks the outputs
/// are byte-identical, and returns the decisions.
fn identical_outputs(extra: &[&str], base_port: u16) -> String {
    let tmp = tempdir();
    let dir = tmp.as_str();
    generate_small(dir, extra);
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
