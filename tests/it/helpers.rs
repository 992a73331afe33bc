//! `spawn_app`: the real binary on port 0 with a temp dir; the port is read
//! from its "inlet listening on" line, so there is no sleep after spawning.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const ADMIN_TOKEN: &str = "test-admin-token";

pub struct TestApp {
    pub addr: String,
    pub dir: PathBuf,
    pub child: Child,
    pub client: reqwest::Client,
    /// Keeps the temp dir alive; `None` when the dir is owned by the caller.
    _temp: Option<tempfile::TempDir>,
    stderr_log: PathBuf,
}

/// A full config: `[workers]` gets `workers` (a 3 s lease unless given),
/// then `rest` (sources with their actions, in order).
pub fn config(workers: &str, rest: &str) -> String {
    let lease = if workers.contains("lease") {
        ""
    } else {
        "lease = \"3s\"\n"
    };
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"5s\"\n\
         [store]\nurl = \"sqlite://inlet.db\"\nbusy_timeout = \"500ms\"\n\
         [workers]\n{lease}{workers}\n{rest}\n"
    )
}

/// A config with one unsigned `sms` source, the store in `dir`, and `extra`
/// TOML appended (more sections or `[[sources]]`).
pub fn config_with(extra: &str) -> String {
    config(
        "",
        &format!("{extra}\n[[sources]]\nname = \"sms\"\nprovider = \"sms-gateway\"\n"),
    )
}

impl TestApp {
    /// Starts `inlet serve` in a fresh temp dir with `config`.
    pub async fn spawn(config: &str) -> TestApp {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().to_path_buf();
        let mut app = Self::spawn_in(&dir, config).await;
        app._temp = Some(temp);
        app
    }

    /// Starts `inlet serve` in `dir` (which may hold an earlier run's store).
    pub async fn spawn_in(dir: &Path, config: &str) -> TestApp {
        std::fs::write(dir.join("inlet.toml"), config).expect("write config");
        let stderr_log = dir.join(format!("stderr-{}.log", uuid_like()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_inlet"))
            .args(["serve", "--config", "inlet.toml"])
            .current_dir(dir)
            .env("INLET_SERVER__ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).expect("stderr log"))
            .spawn()
            .expect("spawn inlet");
        let stdout = child.stdout.take().expect("stdout");
        let addr = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let line = lines.next().and_then(|l| l.ok()).unwrap_or_default();
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            line
        })
        .await
        .unwrap();
        let addr = addr
            .strip_prefix("inlet listening on ")
            .unwrap_or_else(|| {
                panic!(
                    "inlet did not start: {addr:?}; stderr: {}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                )
            })
            .to_string();
        TestApp {
            addr,
            dir: dir.to_path_buf(),
            child,
            client: reqwest::Client::new(),
            _temp: None,
            stderr_log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.addr, path)
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("inlet.db")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// POSTs a JSON body to `/hooks/{source}`; returns status and JSON body.
    pub async fn post_json(&self, source: &str, body: &str) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(&format!("/hooks/{source}")))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn admin(&self, path: &str) -> Value {
        let r = self
            .client
            .get(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin request");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.expect("admin json")
    }

    pub async fn health(&self) -> Value {
        self.client
            .get(self.url("/health"))
            .send()
            .await
            .expect("health")
            .json()
            .await
            .expect("health json")
    }

    /// The status of `GET /ready`.
    pub async fn ready_status(&self) -> u16 {
        self.client
            .get(self.url("/ready"))
            .send()
            .await
            .expect("ready")
            .status()
            .as_u16()
    }

    /// The `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of the first `/metrics` sample whose line starts with
    /// `series` (a name, or a name and the start of its labels) and
    /// contains `label`; `None` when there is none.
    pub async fn metric(&self, series: &str, label: &str) -> Option<f64> {
        self.metrics_text()
            .await
            .lines()
            .find(|l| l.starts_with(series) && l.contains(label))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Waits (bounded) until the series with `label` reaches `value`.
    pub async fn wait_for_metric(&self, series: &str, label: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.metric(series, label).await.unwrap_or(0.0) < value {
            assert!(
                Instant::now() < deadline,
                "{series}{label} never reached {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until no job is pending or in flight.
    pub async fn wait_idle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let h = self.health().await;
            if h["queue"]["pending"] == 0 && h["queue"]["in_flight"] == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "queue never drained: {h}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every stored message, newest first, across pages.
    pub async fn all_messages(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/messages?limit=500&cursor={c}"),
                None => "/v1/messages?limit=500".to_string(),
            };
            let page = self.admin(&path).await;
            out.extend(page["items"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "inlet did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// One sms-gateway message as the app sends it.
pub fn sms(guid: &str, text: &str) -> Value {
    sms_from(guid, "+15551234567", text)
}

/// [`sms`] from another number.
pub fn sms_from(guid: &str, number: &str, text: &str) -> Value {
    json!({"date": "2026-11-25", "hour": "10:00", "time_received": "1764064800",
           "message": text, "number": number, "guid": guid})
}

pub fn batch(items: &[Value]) -> String {
    json!({ "messages": items }).to_string()
}
