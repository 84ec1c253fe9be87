//! Docker helpers for tests: unique service names, free loopback ports, a guard that
//! removes everything labelled for a service, and a throwaway registry.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cutover::docker::LABEL_SERVICE;
use cutover::secret::Secret;

use super::require_tool;

/// A service name no other test (in this or another process) uses: `prefix-<pid>-<n><t>`.
pub fn unique_service(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_micros())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}{t:x}", std::process::id())
}

/// A loopback port that was free a moment ago and that no other caller in this test
/// process has been given. The kernel may hand the same ephemeral port to two binds in
/// a row once the first is closed, so a test asking for a proxy port and a colour port
/// could get one port twice (a CI run failed on exactly that).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("cannot bind 127.0.0.1:0 to find a free port");
        if given.insert(port) {
            return port;
        }
    }
}

/// On drop (also when the test panicked) removes every container, image and network
/// labelled `cutover.service=<service>`, through the `docker` CLI so that it needs no
/// async runtime.
pub struct DockerCleanup {
    service: String,
}

impl DockerCleanup {
    /// Guards `service`; create it before the first resource.
    pub fn new(service: &str) -> DockerCleanup {
        require_tool("docker", "docker.io");
        DockerCleanup {
            service: service.to_owned(),
        }
    }

    fn ids(&self, list: &[&str]) -> Vec<String> {
        let filter = format!("label={LABEL_SERVICE}={}", self.service);
        let output = Command::new("docker")
            .args(list)
            .args(["--filter", &filter])
            .output();
        match output {
            Ok(o) if o.status.success() => {
                let mut ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                ids.sort();
                ids.dedup();
                ids
            }
            Ok(o) => {
                eprintln!(
                    "cleanup of {}: docker {list:?} failed: {}",
                    self.service,
                    String::from_utf8_lossy(&o.stderr)
                );
                Vec::new()
            }
            Err(e) => {
                eprintln!("cleanup of {}: cannot run docker: {e}", self.service);
                Vec::new()
            }
        }
    }

    fn remove(&self, remove: &[&str], ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        match Command::new("docker").args(remove).args(&ids).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "cleanup of {}: docker {remove:?} failed: {}",
                self.service,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("cleanup of {}: cannot run docker: {e}", self.service),
        }
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        // Containers first: they hold their images and networks.
        self.remove(&["rm", "-f", "-v"], self.ids(&["ps", "-aq"]));
        self.remove(&["rmi", "-f"], self.ids(&["images", "-q"]));
        self.remove(&["network", "rm"], self.ids(&["network", "ls", "-q"]));
    }
}

/// Debian's `docker-registry` on a loopback port with htpasswd auth; killed on drop.
pub struct TestRegistry {
    /// Where it listens (`127.0.0.1:<port>`).
    pub addr: SocketAddr,
    /// The user it accepts.
    pub username: String,
    /// That user's password.
    pub password: Secret,
    child: Child,
    dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts a registry on a free loopback port and waits until it answers (401 on
    /// `/v2/`).
    pub fn start(username: &str, password: &str) -> TestRegistry {
        Self::start_at(
            ([127, 0, 0, 1], super::free_port()).into(),
            username,
            password,
        )
    }

    /// Starts a registry listening on `addr` (an address a test made, such as the
    /// swarm cluster's bridge) and waits until it answers.
    pub fn start_at(addr: SocketAddr, username: &str, password: &str) -> TestRegistry {
        let registry = require_tool("docker-registry", "docker-registry");
        let htpasswd = require_tool("htpasswd", "apache2-utils");
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        // The password goes through stdin (-i), never through argv.
        let mut hash = Command::new(htpasswd)
            .args(["-B", "-i", "-n", username])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot run htpasswd");
        hash.stdin
            .take()
            .expect("piped stdin")
            .write_all(password.as_bytes())
            .expect("cannot write the password to htpasswd");
        let hash = hash.wait_with_output().expect("htpasswd failed");
        assert!(hash.status.success(), "htpasswd failed: {hash:?}");
        std::fs::write(dir.path().join("htpasswd"), &hash.stdout).expect("cannot write htpasswd");

        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: cutover-test\n    path: {htpasswd}\n",
            root = dir.path().join("data").display(),
            htpasswd = dir.path().join("htpasswd").display(),
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("cannot write the registry config");
        let log = std::fs::File::create(dir.path().join("registry.log"))
            .expect("cannot create the registry log");
        let child = Command::new(registry)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("cannot start docker-registry");
        let mut registry = TestRegistry {
            addr,
            username: username.to_owned(),
            password: Secret::new(password),
            child,
            dir,
        };
        registry.wait_ready();
        registry
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("cannot poll docker-registry") {
                panic!(
                    "docker-registry exited with {status} before serving: {}",
                    self.log()
                );
            }
            if self.v2_status().is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on {} within 20 s: {}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The status of an unauthenticated `GET /v2/` (401 when auth is on).
    pub fn v2_status(&self) -> Option<u16> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            stream,
            "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
