//! The dashboard in a real browser: `vtpga run` embedded (generator, no services) serves
//! it; headless Chromium, driven through chromedriver's WebDriver API, opens it, waits for
//! the ten analyses to be drawn, sees the numbers change while the generator runs, and
//! finds the approved count equal to `/api/analyses`'s once it stops; and it draws the
//! live dataflow with the operators `/api/dataflow` reports. Screenshots are saved to
//! `target/test-artifacts/` (not committed).

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{free_port, json_of, spawn_quiet, wait_port, Killed, BIN};

/// Headless Chromium on a page, through chromedriver. Dropping it ends the WebDriver
/// session (and so its browser) even on a panic, then kills chromedriver: killing
/// chromedriver alone would leave Chromium running.
struct Browser {
    driver_port: u16,
    id: String,
    artifacts: PathBuf,
    _profile: tempfile::TempDir,
    _driver: Killed,
}

impl Browser {
    /// Opens the dashboard served at `web`, in a 1366×768 window.
    fn open(web: u16) -> Browser {
        let driver_port = free_port();
        let driver = Killed(
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
        let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .join("test-artifacts");
        std::fs::create_dir_all(&artifacts).expect("artifacts dir");
        let browser = Browser {
            driver_port,
            id,
            artifacts,
            _profile: profile,
            _driver: driver,
        };
        browser.call(
            "POST",
            "/url",
            Some(&json!({"url": format!("http://127.0.0.1:{web}/")})),
        );
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        json_of(
            self.driver_port,
            method,
            &format!("/session/{}{path}", self.id),
            body,
        )["value"]
            .clone()
    }

    /// What a script run in the page returns.
    fn page(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }

    /// Saves the window's screenshot as `name` in the test artifacts; returns its bytes.
    fn screenshot(&self, name: &str) -> Vec<u8> {
        let png = base64_decode(
            self.call("GET", "/screenshot", None)
                .as_str()
                .expect("PNG base64"),
        );
        std::fs::write(self.artifacts.join(name), &png).expect("screenshot");
        png
    }

    /// Saves the screenshot of the element `css` selects (scrolled into view).
    fn element_screenshot(&self, css: &str, name: &str) -> Vec<u8> {
        let found = self.call(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        );
        let element = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{css} is on the page: {found}"))
            .to_owned();
        let png = base64_decode(
            self.call("GET", &format!("/element/{element}/screenshot"), None)
                .as_str()
                .expect("PNG base64"),
        );
        std::fs::write(self.artifacts.join(name), &png).expect("screenshot");
        png
    }

    fn resize(&self, width: u32, height: u32) {
        self.call(
            "POST",
            "/window/rect",
            Some(&json!({"width": width, "height": height})),
        );
    }
}

impl Drop for Browser {
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

/// Waits (up to a minute) until the run served at `web` has decided `count` messages.
fn wait_decided(web: u16, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = json_of(web, "GET", "/api/health", None);
        if health["decisions"].as_u64() == Some(count) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish: {health}"
        );
        std::thread::sleep(Duration::from_millis(200));
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
            "24000",
            "--generated-users",
            "2000",
            "--hold",
            "--web-listen",
            &format!("127.0.0.1:{web}"),
        ]),
        "vtpga run starts",
    ));
    wait_port(web, "the dashboard");
    let browser = Browser::open(web);
    let page = |script: &str| browser.page(script);
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
    browser.screenshot("dashboard-running.png");
    // The numbers move while the generator runs.
    std::thread::sleep(Duration::from_millis(1500));
    let (_, second) = shown();
    assert!(
        second > first,
        "approved count did not move: {first} then {second}"
    );
    // Once the generator is done, the page agrees with the API.
    wait_decided(web, 24000);
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
    browser.screenshot("dashboard.png");
    // A phone-sized window still draws everything.
    browser.resize(390, 844);
    std::thread::sleep(Duration::from_millis(500));
    let (drawn, _) = shown();
    assert_eq!(drawn, 10, "every analysis drawn at phone width");
    browser.screenshot("dashboard-phone.png");
}

#[test]
fn dashboard_draws_the_live_dataflow_of_two_workers() {
    let web = free_port();
    let _pipeline = Killed(spawn_quiet(
        Command::new(BIN).args([
            "run",
            "--workers",
            "2",
            "--rate",
            "4000",
            "--count",
            "200000",
            "--generated-users",
            "5000",
            "--hold",
            "--web-listen",
            &format!("127.0.0.1:{web}"),
        ]),
        "vtpga run starts",
    ));
    wait_port(web, "the dashboard");
    let browser = Browser::open(web);
    // (updates of the drawing, records into the Decide node as the page shows them)
    let drawn = || -> (i64, i64) {
        let v = browser.page(
            "var svg = document.getElementById('dataflow-graph');
             var decide = svg && svg.querySelector('.df-node[data-name=\"Decide\"]');
             return [svg && svg.dataset.drawn === 'true' ? Number(svg.dataset.updates) : 0,
                     decide ? Number(decide.dataset.recordsIn) : -1]",
        );
        (v[0].as_i64().unwrap_or(0), v[1].as_i64().unwrap_or(-1))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (first_updates, first_records) = loop {
        let (updates, records) = drawn();
        if updates > 0 && records > 0 {
            break (updates, records);
        }
        assert!(
            Instant::now() < deadline,
            "the dataflow is not drawn with records into Decide ({updates} updates, {records} records)"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // The operators on the page are those of /api/dataflow, by name and by id.
    let on_page: BTreeSet<(String, String)> = browser
        .page(
            "return Array.from(document.querySelectorAll('#dataflow-graph .df-node')).map(
               g => [g.dataset.id, g.querySelector('.df-name').textContent])",
        )
        .as_array()
        .expect("nodes")
        .iter()
        .map(|p| {
            (
                p[0].as_str().expect("id").to_owned(),
                p[1].as_str().expect("name").to_owned(),
            )
        })
        .collect();
    let api = json_of(web, "GET", "/api/dataflow", None);
    let in_api: BTreeSet<(String, String)> = api["operators"]
        .as_array()
        .expect("operators")
        .iter()
        .map(|o| {
            (
                o["id"].to_string(),
                o["name"].as_str().expect("name").to_owned(),
            )
        })
        .collect();
    assert_eq!(on_page, in_api, "the page draws the operators of the API");
    for name in ["FeedSource", "Dedup", "Decide", "Tally"] {
        assert!(
            on_page.iter().any(|(_, n)| n == name),
            "{name} is drawn: {on_page:?}"
        );
    }
    // Every channel is drawn between the operators the API says it joins.
    let edges_on_page: BTreeSet<(String, String, String)> = browser
        .page(
            "return Array.from(document.querySelectorAll('#dataflow-graph path.df-edge')).map(
               p => [p.dataset.id, p.dataset.from, p.dataset.to])",
        )
        .as_array()
        .expect("edges")
        .iter()
        .map(|p| {
            (
                p[0].as_str().expect("id").to_owned(),
                p[1].as_str().expect("from").to_owned(),
                p[2].as_str().expect("to").to_owned(),
            )
        })
        .collect();
    let edges_in_api: BTreeSet<(String, String, String)> = api["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["id"].to_string(),
                e["from"].to_string(),
                e["to"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        edges_on_page, edges_in_api,
        "the page draws the API's channels"
    );
    let feedback = browser.page(
        "return document.querySelectorAll('#dataflow-graph path.df-edge.df-feedback').length",
    );
    assert!(
        feedback.as_i64().unwrap_or(0) >= 1,
        "the credits' feedback edge is drawn"
    );
    // Under load the drawing changes between two screenshots.
    let one = browser.element_screenshot("#dataflow-card", "dataflow-1.png");
    std::thread::sleep(Duration::from_millis(2500));
    let (second_updates, second_records) = drawn();
    let two = browser.element_screenshot("#dataflow-card", "dataflow-2.png");
    assert!(
        second_updates >= first_updates + 2,
        "redrawn at least once a second: {first_updates} then {second_updates} updates"
    );
    assert!(
        second_records > first_records,
        "records into Decide on the page did not grow: {first_records} then {second_records}"
    );
    assert_ne!(one, two, "the two screenshots of the graph are the same");
    // Tapping Decide shows its figures per worker: one row per worker and the sum.
    browser.page(
        "document.querySelector('#dataflow-graph .df-node[data-name=\"Decide\"]')
           .dispatchEvent(new MouseEvent('click', {bubbles: true}))",
    );
    let detail = browser.page(
        "var d = document.getElementById('df-detail');
         return [d.querySelector('b') ? d.querySelector('b').textContent : '',
                 d.querySelectorAll('table.df-workers tbody tr').length]",
    );
    assert_eq!(detail[0], "Decide", "the detail is Decide's: {detail}");
    assert_eq!(detail[1], 3, "two workers and their sum: {detail}");
    browser.element_screenshot("#dataflow-card", "dataflow-decide.png");
    // A phone still draws it (scrolling sideways) with the detail.
    browser.resize(390, 844);
    std::thread::sleep(Duration::from_millis(1500));
    let (phone_updates, _) = drawn();
    assert!(phone_updates > second_updates, "still redrawn on a phone");
    browser.element_screenshot("#dataflow-card", "dataflow-phone.png");
}

/// The What-if card (SPEC §12) of `vtpga run --shadow`: once the generator is done, the
/// figures the page shows per shadow are those of `/api/whatif`.
#[test]
fn dashboard_shows_the_what_if_of_a_shadow() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shadow = dir.path().join("strict.json");
    std::fs::write(
        &shadow,
        r#"{"version": "strict", "risk_threshold": 0.3, "max_delay_ms": 1000, "dedup_window_ms": 300000}"#,
    )
    .expect("shadow file");
    let web = free_port();
    let _pipeline = Killed(spawn_quiet(
        Command::new(BIN).args([
            "run",
            "--rate",
            "3000",
            "--count",
            "12000",
            "--generated-users",
            "2000",
            "--hold",
            "--shadow",
            common::path_str(&shadow),
            "--web-listen",
            &format!("127.0.0.1:{web}"),
        ]),
        "vtpga run starts",
    ));
    wait_port(web, "the dashboard");
    let browser = Browser::open(web);
    wait_decided(web, 12000);
    // What the API says, summed as the card sums it.
    let api = json_of(web, "GET", "/api/whatif", None);
    let shadows = api["shadows"].as_array().expect("shadows");
    assert_eq!(shadows.len(), 1, "one shadow: {api}");
    assert_eq!(shadows[0]["version"], "strict");
    let rows = shadows[0]["what_if"].as_array().expect("what-if rows");
    let sum = |keep: &dyn Fn(&str, &str) -> bool, field: &str| -> i64 {
        rows.iter()
            .filter(|r| {
                keep(
                    r["primary_status"].as_str().expect("status"),
                    r["shadow_status"].as_str().expect("status"),
                )
            })
            .map(|r| r[field].as_i64().expect("an integer"))
            .sum()
    };
    let want = [
        sum(&|_, _| true, "count"),
        sum(&|p, s| p != s, "count"),
        sum(&|p, s| p == "approved" && s != "approved", "count"),
        sum(&|p, s| p == "approved" && s != "approved", "amount_cents"),
        sum(&|p, s| p != "approved" && s == "approved", "count"),
    ];
    assert_eq!(want[0], 12000, "every message is in a what-if row");
    assert!(
        want[2] > 0,
        "the stricter shadow blocks some approvals: {api}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let shown = loop {
        let v = browser.page(
            "var s = document.querySelector('#whatif-card .wi-shadow[data-version=\"strict\"]');
             if (!s || document.getElementById('whatif-card').hidden) return null;
             return ['.wi-total', '.wi-changed', '.wi-approved-to-rejected', '.wi-blocked-amount',
                     '.wi-rejected-to-approved'].map(c => Number(s.querySelector(c).dataset.value));",
        );
        let shown: Option<Vec<i64>> = v
            .as_array()
            .map(|a| a.iter().map(|x| x.as_i64().unwrap_or(-1)).collect());
        if shown.as_deref() == Some(&want[..]) {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "the card shows {shown:?}, the API {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(shown.as_deref(), Some(&want[..]));
    // Its changed pairs are the API's.
    let pairs = browser.page(
        "return Array.from(document.querySelectorAll('#whatif-card .wi-shadow[data-version=\"strict\"] table.wi-pairs tbody tr[data-primary]'))
           .map(r => [r.dataset.primary, r.dataset.shadow, Number(r.dataset.count)])",
    );
    let mut on_page: Vec<(String, String, i64)> = pairs
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r[0].as_str().expect("primary").to_owned(),
                r[1].as_str().expect("shadow").to_owned(),
                r[2].as_i64().expect("count"),
            )
        })
        .collect();
    let mut in_api: Vec<(String, String, i64)> = rows
        .iter()
        .filter(|r| r["primary_status"] != r["shadow_status"])
        .map(|r| {
            (
                r["primary_status"].as_str().expect("status").to_owned(),
                r["shadow_status"].as_str().expect("status").to_owned(),
                r["count"].as_i64().expect("count"),
            )
        })
        .collect();
    on_page.sort();
    in_api.sort();
    assert_eq!(
        on_page, in_api,
        "the changed pairs on the page are the API's"
    );
    // The promotion the card offers: its command, run as it is shown (with --dry-run, no
    // broker here), builds the `rules` record of the shadow's set from the API.
    let promote = browser.page(
        "return document.querySelector('#whatif-card .wi-shadow[data-version=\"strict\"] .wi-promote code').textContent",
    );
    let promote = promote.as_str().expect("the promote command");
    let words: Vec<&str> = promote.split_whitespace().collect();
    assert_eq!(
        words[..5],
        ["vtpga", "control", "rules", "--from-shadow", "strict"],
        "{promote}"
    );
    let mut argv = vec!["control", "--dry-run"];
    argv.extend_from_slice(&words[2..]);
    let out = common::run_ok(Command::new(BIN).args(&argv), "the card's promote command");
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let record: Value = serde_json::from_str(
        printed
            .trim()
            .strip_prefix("key strict: ")
            .unwrap_or_else(|| panic!("one record keyed by the version: {printed}")),
    )
    .expect("the record is JSON");
    assert_eq!(
        record,
        json!({"type": "rules", "version": "strict", "risk_threshold": 0.3,
                           "max_delay_ms": 1000, "dedup_window_ms": 300000}),
        "the shadow's set as a rules record"
    );
    browser.element_screenshot("#whatif-card", "whatif.png");
}
