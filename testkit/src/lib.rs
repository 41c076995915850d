//! Fixtures shared by the workspace's integration tests: a private PostgreSQL (its own
//! data directory in a temp dir) and a private redis-server, each on a free loopback port
//! and stopped by the test that started it (by its data directory's PID file, or by the
//! child's PID) when dropped.
//!
//! A dev-dependency only: no crate's library or the binary may depend on it.

#![warn(missing_docs)]

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port free on the loopback interface right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A path as the `&str` a command line takes (temp paths are UTF-8).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Runs a command as the `postgres` user when we are root (PostgreSQL refuses root).
fn pg_command(program: &str) -> Command {
    let bin = format!("/usr/lib/postgresql/15/bin/{program}");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &bin]);
        c
    } else {
        Command::new(bin)
    }
}

/// A private PostgreSQL of this test: its own data directory in a temp dir, loopback, a
/// free port; stopped (by the PID file of its data directory) when dropped.
pub struct Postgres {
    dir: tempfile::TempDir,
    /// The loopback port the server listens on.
    pub port: u16,
    /// The connection URL: user `vtpga` (trust authentication), database `postgres`.
    pub url: String,
}

impl Postgres {
    /// Creates a data directory (`initdb`, user `vtpga`, UTF-8) and starts the server on
    /// a free port; panics if either step fails.
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().expect("temp dir");
        let _ = Command::new("chown")
            .args(["postgres:", path_str(dir.path())])
            .status();
        let data = dir.path().join("data");
        let out = pg_command("initdb")
            .args([
                "-D",
                path_str(&data),
                "-U",
                "vtpga",
                "--auth=trust",
                "-E",
                "UTF8",
            ])
            .args(["--locale=C.UTF-8"])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let pg = Postgres {
            url: format!("postgres://vtpga@127.0.0.1:{port}/postgres"),
            port,
            dir,
        };
        pg.start_server();
        pg
    }

    fn start_server(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("server.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off",
            self.port,
            path_str(self.dir.path())
        );
        let out = pg_command("pg_ctl")
            .args([
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-w",
                "-o",
                &opts,
                "start",
            ])
            .output()
            .expect("pg_ctl runs");
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server (fast shutdown: open connections are cut).
    pub fn stop_server(&self) {
        let data = self.dir.path().join("data");
        let _ = pg_command("pg_ctl")
            .args(["-D", path_str(&data), "-m", "fast", "-w", "stop"])
            .output();
    }

    /// Stops the server, waits `down_for`, and starts it again on the same port and data.
    pub fn restart(&self, down_for: Duration) {
        self.stop_server();
        std::thread::sleep(down_for);
        self.start_server();
    }

    /// The server's data directory (for tests that configure it, e.g. TLS).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// A new connection to the server, without TLS.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url, postgres::NoTls)
            .expect("connect to the test PostgreSQL")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_server();
    }
}

/// A private redis-server of this test on a free loopback port; killed when dropped.
pub struct Redis {
    child: Option<Child>,
    /// The loopback port the server listens on.
    pub port: u16,
    /// The connection URL, `redis://127.0.0.1:{port}/`.
    pub url: String,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts a server on a free port, without persistence, and waits until it accepts
    /// connections.
    pub fn start() -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            url: String::new(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        r.url = format!("redis://127.0.0.1:{}/", r.port);
        r.start_server();
        r
    }

    /// Starts `redis-server` on this fixture's port (again, after [`Redis::kill`]) and
    /// waits up to 10 s for it to accept connections.
    pub fn start_server(&mut self) {
        // One server per fixture: a running one is stopped first.
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (scripts/setup.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not open its port"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL, by its PID).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP, by its PID): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a [`Redis::pause`]d server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// A new connection to the server.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection())
            .expect("connect to the test Redis")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
