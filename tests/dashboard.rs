//! The dashboard in a real browser: `vtpga run` embedded (generator, no services) serves
//! it; headless Chromium, driven through chromedriver's WebDriver API, opens it, waits for
//! the ten analyses to be drawn, sees the numbers change while the generator runs, and
//! finds the approved count equal to `/api/analyses`'s once it stops. Screenshots are
//! saved to `target/test-artifacts/` (not committed).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{free_port, json_of, spawn_quiet, wait_port, Killed, BIN};

/// Ends the WebDriver session (and so its browser) when the test ends, even by a panic:
/// killing chromedriver alone would leave Chromium running.
struct Session {
    driver_port: u16,
    id: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.driver_port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                stream,
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.id
            );
            let mut answer = [0u8; 1024];
            let _ = stream.read(&mut answer);
        }
    }
}

/// The approved count according to the API.
fn api_approved(port: u16) -> i64 {
    let analyses = json_of(port, "GET", "/api/analyses", None);
    analyses["status_counts"]
        .as_array()
        .expect("status_counts")
        .iter()
        .find(|r| r["status"] == "approved")
        .and_then(|r| r["count"].as_i64())
        .expect("an approved row")
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter_map(value) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn dashboard_draws_every_analysis_and_follows_the_pipeline() {
    let web = free_port();
    let _pipeline = Killed(spawn_quiet(
        Command::new(BIN).args([
            "run",
            "--rate",
            "1500",
            "--count",
            "9000",
            "--generated-users",
            "2000",
            "--hold",
            "--web-listen",
            &format!("127.0.0.1:{web}"),
        ]),
        "vtpga run starts",
    ));
    wait_port(web, "the dashboard");
    let driver_port = free_port();
    let _driver = Killed(
        Command::new("chromedriver")
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts (scripts/setup.sh installs chromium-driver)"),
    );
    wait_port(driver_port, "chromedriver");
    let profile = tempfile::tempdir().expect("temp dir");
    let session = json_of(
        driver_port,
        "POST",
        "/session",
        Some(&json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update",
                         "--disable-sync", "--disable-quic", "--window-size=1366,768",
                         format!("--user-data-dir={}", profile.path().display())]
            }
        }}})),
    );
    let id = session["value"]["sessionId"]
        .as_str()
        .expect("a session id")
        .to_owned();
    let _session = Session {
        driver_port,
        id: id.clone(),
    };
    let at = |p: &str| format!("/session/{id}{p}");
    json_of(
        driver_port,
        "POST",
        &at("/url"),
        Some(&json!({"url": format!("http://127.0.0.1:{web}/")})),
    );
    let page = |script: &str| -> Value {
        json_of(
            driver_port,
            "POST",
            &at("/execute/sync"),
            Some(&json!({"script": script, "args": []})),
        )["value"]
            .clone()
    };
    let shown = || -> (i64, i64) {
        let v = page(
            "return [document.querySelectorAll('[id^=\"chart-\"][data-drawn=\"true\"]').length,
                     Number(document.getElementById('approved-count').dataset.value)]",
        );
        (v[0].as_i64().unwrap_or(0), v[1].as_i64().unwrap_or(-1))
    };
    // Every analysis drawn, with data.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (drawn, first) = loop {
        let (drawn, approved) = shown();
        if drawn == 10 && approved > 0 {
            break (drawn, approved);
        }
        assert!(
            Instant::now() < deadline,
            "only {drawn} of 10 analyses drawn (approved shown: {approved})"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(drawn, 10);
    let names = page(
        "return Array.from(document.querySelectorAll('[id^=\"chart-\"][data-drawn=\"true\"]')).map(e => e.id)",
    );
    for name in vtpga_dataflow::analyses::NAMES {
        assert!(
            names
                .as_array()
                .expect("ids")
                .iter()
                .any(|v| v == &json!(format!("chart-{name}"))),
            "{name} is drawn: {names}"
        );
    }
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifacts dir");
    let shot = json_of(driver_port, "GET", &at("/screenshot"), None);
    std::fs::write(
        artifacts.join("dashboard-running.png"),
        base64_decode(shot["value"].as_str().expect("PNG base64")),
    )
    .expect("screenshot");
    // The numbers move while the generator runs.
    std::thread::sleep(Duration::from_millis(1500));
    let (_, second) = shown();
    assert!(
        second > first,
        "approved count did not move: {first} then {second}"
    );
    // Once the generator is done, the page agrees with the API.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = json_of(web, "GET", "/api/health", None);
        if health["decisions"].as_u64() == Some(9000) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish: {health}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let api = api_approved(web);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, approved) = shown();
        if approved == api {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page shows {approved} approved, the API {api}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let shot = json_of(driver_port, "GET", &at("/screenshot"), None);
    std::fs::write(
        artifacts.join("dashboard.png"),
        base64_decode(shot["value"].as_str().expect("PNG base64")),
    )
    .expect("screenshot");
    // A phone-sized window still draws everything.
    json_of(
        driver_port,
        "POST",
        &at("/window/rect"),
        Some(&json!({"width": 390, "height": 844})),
    );
    std::thread::sleep(Duration::from_millis(500));
    let (drawn, _) = shown();
    assert_eq!(drawn, 10, "every analysis drawn at phone width");
    let shot = json_of(driver_port, "GET", &at("/screenshot"), None);
    std::fs::write(
        artifacts.join("dashboard-phone.png"),
        base64_decode(shot["value"].as_str().expect("PNG base64")),
    )
    .expect("screenshot");
}
