//! A deployable test service: a temp directory with a `cutover.toml` for the hello
//! example (unique name, free ports, managed nginx on loopback), a builder-style way
//! to run the real `cutover` binary against it, and a Drop that takes everything down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::nginx::ExternalNginx;
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
    /// Its output, if it has already ended (for a test that waits on something the
    /// run should reach, to say why it never did).
    pub fn ended(&mut self) -> Option<Output> {
        use std::io::Read;
        let status = self.child.try_wait().ok().flatten()?;
        let read = |pipe: Option<&mut dyn Read>| {
            let mut text = String::new();
            if let Some(pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        };
        Some(Output {
            code: status.code().unwrap_or(-1),
            stdout: read(self.child.stdout.as_mut().map(|p| p as &mut dyn Read)),
            stderr: read(self.child.stderr.as_mut().map(|p| p as &mut dyn Read)),
        })
    }

    /// Its process id (to stop and continue it, as a hung runner).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs it (no cleanup of any kind runs) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

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

/// What was serving before a fault, to prove afterwards that nothing changed.
#[derive(Debug)]
pub struct Baseline {
    /// The body of `GET /` through nginx.
    pub body: String,
    /// Every rendered proxy file, byte for byte.
    pub files: BTreeMap<String, Vec<u8>>,
    /// The live colour's container, as `name id`.
    pub live_container: String,
}

/// A service under test.
pub struct Service {
    pub name: String,
    pub dir: tempfile::TempDir,
    /// The directory holding `cutover.toml` (the temp dir, or a subdirectory of it).
    pub base: PathBuf,
    /// Where the proxy's rendered files are (the managed nginx's `conf.d` unless
    /// [`Service::use_external`] pointed it elsewhere).
    pub conf_d: PathBuf,
    pub listen: u16,
    pub blue: u16,
    pub green: u16,
    _cleanup: DockerCleanup,
}

impl Service {
    /// A fresh service with its own name, ports and state directory.
    pub fn new(prefix: &str) -> Service {
        Service::new_in(prefix, "")
    }

    /// As [`Service::new`], with the config (and so the state directory) in `subdir`
    /// of the temp dir, e.g. a name with spaces.
    pub fn new_in(prefix: &str, subdir: &str) -> Service {
        let name = unique_service(prefix);
        let cleanup = DockerCleanup::new(&name);
        let dir = tempfile::tempdir().expect("temp dir");
        let base = dir.path().join(subdir);
        std::fs::create_dir_all(&base).expect("create the config directory");
        let svc = Service {
            conf_d: base.join(".cutover/nginx/conf.d"),
            base,
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
        self.base.join("cutover.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.base.join(".cutover")
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

    /// Points `[image.registry]` at `registry` as user `cutover`, its password read
    /// from the environment variable `var`.
    pub fn use_registry(&self, registry: &super::TestRegistry, var: &str) {
        self.append_config(&format!(
            "\n[image.registry]\nserver = \"{}\"\nusername = \"cutover\"\npassword_env = \"{var}\"\n",
            registry.addr
        ));
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
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The facts of whatever CI runs the tests must not reach the deploys.
        for var in cutover::ci::SYSTEM_MARKERS {
            cmd.env_remove(var);
        }
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

    /// Starts `cutover <args>` with extra environment variables, without waiting.
    pub fn spawn_env(&self, args: &[&str], env: &[(&str, &str)]) -> Running {
        let child = self
            .command(args)
            .envs(env.iter().copied())
            .spawn()
            .expect("spawn cutover");
        Running { child }
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

    /// Records what serves now: the live colour must be answering through nginx.
    #[track_caller]
    pub fn baseline(&self) -> Baseline {
        let r = self.get("/");
        assert_eq!(
            r.status, 200,
            "the live colour serves before the fault: {}",
            r.body
        );
        let live = self.status()["live"]["color"]
            .as_str()
            .expect("a live colour before the fault")
            .to_owned();
        Baseline {
            body: r.body,
            files: self.proxy_files(),
            live_container: self.container_of(&live),
        }
    }

    /// Asserts that what served at `before` still serves, unchanged: the same answer
    /// through nginx, byte-identical proxy files, the same live container, no
    /// container left in the idle slot, and a status report without problems or an
    /// interrupted deploy whose last record has one of `outcomes`.
    #[track_caller]
    pub fn assert_unchanged(&self, before: &Baseline, outcomes: &[&str]) {
        let r = self.get("/");
        assert_eq!(
            (r.status, &r.body),
            (200, &before.body),
            "the live colour must keep answering through nginx"
        );
        assert!(
            self.proxy_files() == before.files,
            "the proxy files must be byte-identical"
        );
        let st = self.status();
        assert!(st["problems"].as_array().unwrap().is_empty(), "{st:#}");
        assert!(st["interrupted"].is_null(), "{st:#}");
        let live = st["live"]["color"].as_str().expect("still a live colour");
        assert_eq!(st["proxy"]["target"], live, "{st:#}");
        assert_eq!(self.container_of(live), before.live_container);
        let idle = if live == "blue" { "green" } else { "blue" };
        let idle_state = st["colors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["color"] == idle)
            .map(|c| c["state"].as_str().unwrap().to_owned());
        assert_ne!(
            idle_state.as_deref(),
            Some("running"),
            "the failed deploy's container must not be left running: {st:#}"
        );
        let last = st["recent"]
            .as_array()
            .unwrap()
            .last()
            .and_then(|r| r["outcome"].as_str())
            .unwrap_or_default();
        assert!(outcomes.contains(&last), "last outcome {last:?}: {st:#}");
    }

    /// The `name id` of `color`'s container.
    fn container_of(&self, color: &str) -> String {
        let prefix = format!("{}-{color} ", self.name);
        self.containers()
            .into_iter()
            .find(|c| c.starts_with(&prefix))
            .map(|c| c.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("no {color} container: {:?}", self.containers()))
    }

    /// Switches the config to external mode against `nginx`, an nginx the test
    /// started, with `reload` as `proxy.reload_command`; [`Service::get`] and
    /// [`Service::proxy_files`] follow.
    pub fn use_external(&mut self, nginx: &ExternalNginx, reload: &[String]) {
        let managed = format!(
            "[proxy]\nmode = \"managed\"\nlisten = \"127.0.0.1:{}\"\n",
            self.listen
        );
        let external = format!(
            "[proxy]\nmode = \"external\"\nconfig_dir = {:?}\npid_file = {:?}\n\
             test_command = {:?}\nreload_command = {reload:?}\n",
            nginx.conf_d,
            nginx.pid_file(),
            nginx.argv(&["-t", "-q"]),
        );
        let verify = format!("[verify]\nurl = \"http://{}/\"\n", nginx.listen);
        self.edit_config(|text| {
            assert!(text.contains(&managed), "the config is in managed mode");
            // The test's nginx is the original write-up's: its include already holds
            // a `service-url.inc`, which cutover keeps using by that name.
            let pin = if text.contains("[plugins.proxy-template]") {
                ""
            } else {
                "\n[plugins.proxy-template]\nsource = \"builtin:nginx-service-url\"\n\
                 [plugins.proxy-template.config]\nfile = \"service-url.inc\"\n"
            };
            text.replace(&managed, &external)
                .replace("[verify]\n", &verify)
                + pin
        });
        self.listen = nginx.listen.port();
        self.conf_d = nginx.conf_d.clone();
    }

    /// Every file in the proxy's rendered-config directory, by name.
    pub fn proxy_files(&self) -> BTreeMap<String, Vec<u8>> {
        let dir = &self.conf_d;
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir).expect("conf.d exists") {
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
