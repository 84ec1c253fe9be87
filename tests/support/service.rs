//! A deployable test service: a temp directory with a `cutover.toml` for the hello
//! example (unique name, free ports, managed nginx on loopback), a builder-style way
//! to run the real `cutover` binary against it, and a Drop that takes everything down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{DockerCleanup, HttpResponse, free_port, hello_context, http_get, unique_service};

/// The outcome of one `cutover` run.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Asserts exit code 0.
    #[track_caller]
    pub fn success(self) -> Output {
        self.code(0)
    }

    /// Asserts the exit code.
    #[track_caller]
    pub fn code(self, expected: i32) -> Output {
        assert_eq!(
            self.code, expected,
            "cutover exited {} (expected {expected})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// A `cutover` run in the background.
pub struct Running {
    child: Child,
}

impl Running {
    /// Waits for it to end.
    pub fn wait(self) -> Output {
        collect(self.child.wait_with_output().expect("cutover ran"))
    }
}

fn collect(out: std::process::Output) -> Output {
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Where the compiled plugins are cached across the tests' cutover runs.
pub fn plugin_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-plugin-cache")
}

/// A service under test.
pub struct Service {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub listen: u16,
    pub blue: u16,
    pub green: u16,
    _cleanup: DockerCleanup,
}

impl Service {
    /// A fresh service with its own name, ports and state directory.
    pub fn new(prefix: &str) -> Service {
        let name = unique_service(prefix);
        let cleanup = DockerCleanup::new(&name);
        let dir = tempfile::tempdir().expect("temp dir");
        let svc = Service {
            listen: free_port(),
            blue: free_port(),
            green: free_port(),
            name,
            dir,
            _cleanup: cleanup,
        };
        std::fs::write(svc.config_path(), svc.default_config()).expect("write config");
        svc
    }

    fn default_config(&self) -> String {
        format!(
            r#"service = "{name}"

[image]
build = {{ context = "{context}", args = {{ VERSION = "dev" }} }}
keep = 2

[container]
port = 8080
stop_grace = "5s"

[container.env]

[blue]
host_port = {blue}

[green]
host_port = {green}

[health]
path = "/health"
interval = "50ms"
deadline = "15s"

[proxy]
mode = "managed"
listen = "127.0.0.1:{listen}"

[verify]
expect_header = "X-Hello-Color: {{color}}"

[drain]
timeout = "10s"
"#,
            name = self.name,
            context = hello_context().display(),
            blue = self.blue,
            green = self.green,
            listen = self.listen,
        )
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("cutover.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".cutover")
    }

    pub fn state_file(&self) -> PathBuf {
        self.state_dir().join("state.json")
    }

    /// Rewrites the config.
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(self.config_path()).expect("read config");
        std::fs::write(self.config_path(), edit(text)).expect("write config");
    }

    /// Appends TOML to the config.
    pub fn append_config(&self, extra: &str) {
        self.edit_config(|text| text + extra);
    }

    /// Sets an environment variable for the app's containers.
    pub fn set_container_env(&self, key: &str, value: &str) {
        self.edit_config(|text| {
            text.replace(
                "[container.env]\n",
                &format!("[container.env]\n{key} = \"{value}\"\n"),
            )
        });
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
        cmd.arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("CUTOVER_CACHE_DIR", plugin_cache_dir())
            .env_remove("CUTOVER_CONFIG")
            // The facts of whatever CI runs the tests must not reach the deploys.
            .env_remove("GITHUB_ACTIONS")
            .env_remove("GITLAB_CI")
            .env_remove("JENKINS_URL")
            .env_remove("JENKINS_HOME")
            .env_remove("CUTOVER_SERVE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `cutover <args>` and waits.
    pub fn cutover(&self, args: &[&str]) -> Output {
        self.cutover_env(args, &[])
    }

    /// Runs `cutover <args>` with extra environment variables and waits.
    pub fn cutover_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        collect(cmd.output().expect("run cutover"))
    }

    /// Deploys the hello app built with `VERSION=<version>`.
    pub fn deploy(&self, version: &str) -> Output {
        self.cutover(&["deploy", "--build-arg", &format!("VERSION={version}")])
    }

    /// Starts a deploy without waiting for it.
    pub fn spawn_deploy(&self, version: &str) -> Running {
        let child = self
            .command(&["deploy", "--build-arg", &format!("VERSION={version}")])
            .spawn()
            .expect("spawn cutover");
        Running { child }
    }

    /// `cutover status --output json`.
    pub fn status(&self) -> Value {
        let out = self.cutover(&["status", "--output", "json"]);
        assert!(
            out.code == 0 || out.code == 1,
            "status failed: {}\n{}",
            out.code,
            out.stderr
        );
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status JSON: {e}\n{}", out.stdout))
    }

    /// The managed nginx's address.
    pub fn proxy_addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.listen).into()
    }

    /// `GET path` through the managed nginx, on a fresh connection.
    #[track_caller]
    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.proxy_addr(), path, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("GET {path} through nginx: {e}"))
    }

    /// Every file in the managed nginx's rendered-config directory, by name.
    pub fn proxy_files(&self) -> BTreeMap<String, Vec<u8>> {
        let dir = self.state_dir().join("nginx/conf.d");
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).expect("conf.d exists") {
            let entry = entry.expect("dir entry");
            let name = entry.file_name().to_string_lossy().into_owned();
            files.insert(name, std::fs::read(entry.path()).expect("read file"));
        }
        files
    }

    /// The service's containers as `name id status`, sorted.
    pub fn containers(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args([
                "ps",
                "-a",
                "--no-trunc",
                "--format",
                "{{.Names}} {{.ID}} {{.Status}}",
            ])
            .arg("--filter")
            .arg(format!("label=cutover.service={}", self.name))
            .output()
            .expect("docker ps");
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    /// Waits until some process holds the deploy lock.
    pub fn wait_for_lock_owner(&self, timeout: Duration) {
        let lock = self.state_dir().join("lock");
        let start = Instant::now();
        while start.elapsed() < timeout {
            if std::fs::read(&lock).is_ok_and(|b| !b.is_empty()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no deploy took the lock within {timeout:?}");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.cutover(&["down", "--images"]);
        // Belt and braces: never leave an nginx behind, even if `down` failed.
        let pid_file = self.state_dir().join("nginx/nginx.pid");
        if let Ok(pid) = std::fs::read_to_string(pid_file) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}
