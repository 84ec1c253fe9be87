//! A 3-node Docker Swarm for the cluster tests, built once per test process and
//! shared by every test that asks for it ([`cluster`]).
//!
//! Everything lives on addresses and in namespaces it makes (DESIGN.md §8):
//!
//! - a "lan" network namespace holding a bridge. The bridge is not in the root
//!   namespace because there `br_netfilter` sends bridged frames through the host's
//!   `FORWARD` chain, whose policy Docker sets to DROP; in a namespace of its own the
//!   chain is empty and the host's firewall is never touched;
//! - one veth from the root namespace into the bridge, `10.231.X.1/24`, where the
//!   host reaches the nodes and where the registry listens;
//! - three node namespaces, `10.231.X.11`–`13`, each with a private `dockerd`
//!   (entered with `nsenter --net=`, not `ip netns exec`, which remounts /sys; a UTS
//!   namespace of its own so each node has its own host name), its own data-root,
//!   exec-root, pid file and socket, fuse-overlayfs, and `insecure-registries` for the
//!   registry;
//! - `swarm init` on node 1, `join` of node 2 as a manager and of node 3 as a worker,
//!   through bollard on each node's socket (node 3 is the one fault tests take off
//!   the network: a worker's loss never touches the managers' raft);
//! - Debian's `docker-registry` with htpasswd auth on `10.231.X.1:5000`, and hello
//!   v1 and v2 built by node 1's engine, v1 pushed (the nodes pull it by digest).
//!
//! Teardown is one shell script, written before anything is created: a reaper
//! process runs it when this test process exits however it exits (its stdin is a
//! pipe only this process holds), and the next run runs it for a run that left
//! things behind. It removes the services, leaves the swarm, kills each dockerd (and
//! its containerd) by pid file, container shims a killed engine left, the registry by pid, unmounts the fuse-overlayfs
//! mounts under the run's directory and deletes the link and the namespaces (the
//! bridge and the nodes' links go with them).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cutover::config::Config;
use cutover::docker::{Docker, RegistryAuth};
use cutover::engine::Swarm;
use cutover::secret::Secret;

use super::nginx::is_root;
use super::remote::private_dockerd_args;
use super::service::Service;
use super::{TestRegistry, build_hello_image, require_tool, run_ok};

/// Where each run keeps its directory: `<ROOT>/<pid>`.
const ROOT: &str = "/tmp/cutover-swarm";
/// How many nodes the cluster has.
pub const NODES: usize = 3;
/// The registry's port on the bridge address.
const REGISTRY_PORT: u16 = 5000;
/// The user the registry accepts.
const REGISTRY_USER: &str = "swarm";
/// The environment variable the tests' configs name for the registry password (a
/// config must name one; a deploy run as a child process would be given it).
pub const PASSWORD_ENV: &str = "CUTOVER_SWARM_TEST_PASSWORD";

/// One node: a dockerd in its own network namespace.
#[derive(Debug)]
pub struct SwarmNode {
    /// Its address on the bridge (and its advertised swarm address).
    pub addr: Ipv4Addr,
    /// Its host name.
    pub hostname: String,
    /// Its directory (data-root, exec-root, socket, pid file, log).
    dir: PathBuf,
    /// Its network namespace.
    netns: String,
    /// Its dockerd (nsenter and unshare exec it), kept so a test may stop it; the
    /// teardown script kills it by pid file.
    dockerd: Option<Child>,
}

impl SwarmNode {
    /// `unix://<socket>`, for `engine.host` or `Docker::connect_to`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    /// Cuts (`false`) or restores (`true`) this node's only link: it drops off the
    /// bridge, as a machine whose network fails does (packets vanish, no reset).
    pub fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        run_ok(Command::new("ip").args(["-n", &self.netns, "link", "set", "eth0", state]));
    }

    /// The docker CLI on this node's engine.
    pub fn docker(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H").arg(self.docker_host()).args(args);
        cmd
    }

    /// What its dockerd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }
}

/// The shared cluster. See the module docs.
pub struct SwarmCluster {
    /// Node 1 is where the swarm was initialised; nodes 1 and 2 are managers, node 3
    /// a worker.
    pub nodes: Vec<SwarmNode>,
    /// The host's address on the bridge.
    pub host_addr: Ipv4Addr,
    /// The registry, `10.231.X.1:5000`.
    pub registry: SocketAddr,
    /// Its password. The configs name [`PASSWORD_ENV`], but this process never sets it
    /// (`set_var` is unsafe in edition 2024 and unsafe code is denied): the tests hand
    /// the password to the primitives in a [`RegistryAuth`] ([`SwarmCluster::auth`]).
    pub password: Secret,
    /// `10.231.X.1:5000/hello`.
    pub repo: String,
    /// hello v1 on the registry, by digest.
    pub image_v1: String,
    /// hello v2, built by node 1's engine and not pushed: `<repo>:v2`.
    pub local_v2: String,
    /// How long building it took.
    pub up_time: Duration,
    /// Its registry: never dropped; the teardown script kills it by pid.
    _registry: TestRegistry,
    /// Node engines a test killed and started again ([`SwarmCluster::kill_engine`]).
    restarted: std::sync::Mutex<Vec<Child>>,
    /// The process that tears the cluster down once this one exits.
    _reaper: Reaper,
}

impl SwarmCluster {
    /// The registry credentials, as cutover sends them.
    pub fn auth(&self) -> RegistryAuth {
        RegistryAuth {
            server: self.registry.to_string(),
            username: REGISTRY_USER.to_owned(),
            password: self.password.clone(),
        }
    }

    /// The text of a config for `service` on this swarm, reached through node
    /// `node`'s socket (0-based), with the registry and `engine` added to `[engine]`.
    pub fn config_text(&self, service: &str, node: usize, engine: &str) -> String {
        format!(
            r#"service = "{service}"
state_dir = "state"
[image]
ref = "{image}"
[image.registry]
server = "{registry}"
username = "{REGISTRY_USER}"
password_env = "{PASSWORD_ENV}"
[container]
port = 8080
env = {{ HELLO_PORT = "8080" }}
stop_grace = "2s"
[engine]
kind = "swarm"
host = "{host}"
{engine}
[blue]
host_port = {blue}
[green]
host_port = {green}
[proxy]
mode = "managed"
listen = "127.0.0.1:{listen}"
"#,
            image = self.image_v1,
            registry = self.registry,
            host = self.nodes[node].docker_host(),
            blue = super::free_port(),
            green = super::free_port(),
            listen = super::free_port(),
        )
    }

    /// [`SwarmCluster::config_text`] written into `dir` and loaded.
    pub fn config(&self, dir: &Path, service: &str, node: usize, engine: &str) -> Config {
        load_config(dir, &self.config_text(service, node, engine))
    }

    /// The Swarm primitives for `config`, through the manager its `engine.host` names.
    pub async fn swarm(&self, config: &Config) -> Swarm {
        let host = config.engine.host.as_deref().expect("engine.host");
        let docker = Docker::connect_to(host)
            .await
            .unwrap_or_else(|e| panic!("connect to {host}: {e}"));
        Swarm::new(docker, config.clone())
    }
}

impl SwarmCluster {
    /// A service for the cutover binary on this swarm, reached through node `node`'s
    /// socket: hello built from `examples/` on that node's engine and pushed to the
    /// registry, 3 replicas, the managed nginx on loopback; `engine` is added to
    /// `[engine]`, `extra` at the end. Run it with [`SwarmCluster::env`].
    pub fn service(&self, prefix: &str, node: usize, engine: &str, extra: &str) -> Service {
        let svc = Service::new(prefix);
        let text = format!(
            r#"service = "{name}"

[image]
build = {{ context = "{context}", args = {{ VERSION = "dev" }} }}
keep = 2

[image.registry]
server = "{registry}"
username = "{REGISTRY_USER}"
password_env = "{PASSWORD_ENV}"

[container]
port = 8080
stop_grace = "2s"

[container.env]

[engine]
kind = "swarm"
host = "{host}"
replicas = 3
{engine}

[blue]
host_port = {blue}

[green]
host_port = {green}

[health]
path = "/health"
interval = "100ms"
deadline = "60s"

[proxy]
mode = "managed"
listen = "127.0.0.1:{listen}"

[verify]
expect_header = "X-Hello-Color: {{color}}"

[drain]
timeout = "10s"
{extra}"#,
            name = svc.name,
            context = super::hello_context().display(),
            registry = self.registry,
            host = self.nodes[node].docker_host(),
            blue = svc.blue,
            green = svc.green,
            listen = svc.listen,
        );
        svc.edit_config(|_| text);
        svc
    }

    /// Takes node 3, the worker, off the network until the returned guard drops: its
    /// only link is cut, so packets vanish with no reset, as when a machine's network
    /// fails. Only the worker is ever lost: losing a manager and its return can force
    /// a raft election, which this loaded 2-core machine was seen to take longer to
    /// finish than any deploy waits (and demoting one first, longer than a minute).
    /// The guard restores the link and waits until the node is ready again.
    pub fn lose_node(&self) -> LostNode<'_> {
        let index = NODES - 1;
        self.nodes[index].set_link(false);
        LostNode {
            cluster: self,
            index,
            cut: Instant::now(),
        }
    }

    /// Kills node 3's dockerd with SIGKILL (its pid file; its containerd goes with it,
    /// its containers' shims stay) until the returned guard drops, as when a node's
    /// engine crashes: the node's apps may still answer, but no manager hears from it
    /// and, after its heartbeat runs out, Swarm marks it down and gives up its tasks.
    /// Node 3, the worker, for the reason [`SwarmCluster::lose_node`] gives. The guard
    /// starts the engine again on the same data-root (it rejoins the swarm by itself)
    /// and waits until every node is ready.
    pub fn kill_engine(&self) -> KilledEngine<'_> {
        let index = NODES - 1;
        let node = &self.nodes[index];
        let pid = std::fs::read_to_string(node.dir.join("docker.pid"))
            .expect("node 3's docker.pid")
            .trim()
            .to_owned();
        run_ok(Command::new("kill").args(["-KILL", &pid]));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}/exe")).exists() {
            assert!(Instant::now() < deadline, "dockerd {pid} outlived SIGKILL");
            std::thread::sleep(Duration::from_millis(20));
        }
        // A dead daemon's pid file stops the next one from starting ("pid file found")
        // while its pid is still a zombie of this process.
        std::fs::remove_file(node.dir.join("docker.pid")).expect("remove node 3's docker.pid");
        KilledEngine {
            cluster: self,
            index,
            killed: Instant::now(),
        }
    }

    /// Waits until node 1 sees `hostname` with `status` (`Down`, `Ready`); a panic
    /// after `within`.
    pub fn wait_node_status(&self, hostname: &str, status: &str, within: Duration) -> Duration {
        let started = Instant::now();
        let wanted = format!("{hostname} {status} ");
        if let Err(text) =
            self.wait_for(within, |text| text.lines().any(|l| l.starts_with(&wanted)))
        {
            panic!("{hostname} was not {status} within {within:?}:\n{text}");
        }
        started.elapsed()
    }

    /// Waits (a minute at most) until `ready` accepts `docker node ls` as node 1 sees
    /// it: one line per node, `<hostname> <status> <role>`.
    fn wait_until(&self, ready: impl Fn(&str) -> bool) {
        if let Err(text) = self.wait_for(Duration::from_secs(60), ready) {
            panic!("the swarm did not settle:\n{text}");
        }
    }

    /// Polls `docker node ls` until `ready` accepts it; its last text when `within`
    /// ran out first.
    fn wait_for(&self, within: Duration, ready: impl Fn(&str) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let out = self.nodes[0]
                .docker(&[
                    "node",
                    "ls",
                    "--format",
                    "{{.Hostname}} {{.Status}} {{if .ManagerStatus}}Manager{{else}}Worker{{end}}",
                ])
                .output()
                .expect("docker node ls");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && ready(&text) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(text);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// The environment a cutover process needs on this swarm: the registry password.
    pub fn env(&self) -> [(&'static str, &str); 1] {
        [(PASSWORD_ENV, self.password.expose())]
    }
}

/// A node taken off the network by [`SwarmCluster::lose_node`]; back when dropped.
pub struct LostNode<'a> {
    cluster: &'a SwarmCluster,
    index: usize,
    /// Just after its link went down.
    pub cut: Instant,
}

impl LostNode<'_> {
    /// The node.
    pub fn node(&self) -> &SwarmNode {
        &self.cluster.nodes[self.index]
    }
}

impl Drop for LostNode<'_> {
    fn drop(&mut self) {
        self.node().set_link(true);
        self.cluster
            .wait_until(|text| text.lines().filter(|l| l.contains(" Ready ")).count() == NODES);
    }
}

/// A node whose engine [`SwarmCluster::kill_engine`] killed; started again when
/// dropped.
pub struct KilledEngine<'a> {
    cluster: &'a SwarmCluster,
    index: usize,
    /// Just after its dockerd died.
    pub killed: Instant,
}

impl KilledEngine<'_> {
    /// The node.
    pub fn node(&self) -> &SwarmNode {
        &self.cluster.nodes[self.index]
    }
}

impl Drop for KilledEngine<'_> {
    fn drop(&mut self) {
        let node = self.node();
        let dockerd = require_tool("dockerd", "docker.io");
        // Kept like the first one (the teardown script kills it by its pid file).
        let restarted = start_dockerd(&dockerd, node, &node.netns, self.cluster.registry);
        self.cluster
            .restarted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(restarted);
        let all_ready =
            |text: &str| text.lines().filter(|l| l.contains(" Ready ")).count() == NODES;
        if let Err(text) = self.cluster.wait_for(Duration::from_secs(60), all_ready) {
            panic!(
                "node 3's engine, started again, did not rejoin:\n{text}\nits log:\n{}",
                node.log()
            );
        }
    }
}

/// Held by every test that deploys to the shared swarm through the binary, so that
/// one that cuts a node's link never runs beside another.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes `text` as `dir/cutover.toml` and loads it.
pub fn load_config(dir: &Path, text: &str) -> Config {
    let path = dir.join("cutover.toml");
    std::fs::write(&path, text).expect("write cutover.toml");
    Config::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The shared cluster, built on first use.
///
/// # Panics
/// When this machine cannot run it (the test is not root) or building it fails, with
/// the reason: a swarm test that cannot run fails rather than passing having tested
/// nothing (every caller sees the same message).
pub fn cluster() -> &'static SwarmCluster {
    assert!(
        is_root(),
        "the swarm tests start dockerd in network namespaces the test creates, which needs root; run them as root (CI does)"
    );
    static CLUSTER: OnceLock<Result<SwarmCluster, String>> = OnceLock::new();
    let built = CLUSTER.get_or_init(|| {
        // A thread of its own: the build blocks on a runtime of its own, which must
        // not be started inside a test's runtime; a panic comes back as the error.
        std::thread::spawn(build).join().map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "the swarm build panicked".to_owned())
        })
    });
    match built {
        Ok(cluster) => cluster,
        Err(e) => panic!("the 3-node swarm test cluster could not be built: {e}"),
    }
}

/// Names of one run's namespaces and links.
struct Names {
    lan: String,
    nodes: Vec<String>,
    /// The root namespace's end of the link into the bridge.
    uplink: String,
}

impl Names {
    fn for_run(id: u32) -> Names {
        let id = id % 1_000_000;
        Names {
            lan: format!("cutsw{id}-lan"),
            nodes: (1..=NODES).map(|n| format!("cutsw{id}-n{n}")).collect(),
            // Interface names have at most 15 bytes.
            uplink: format!("cswup{id}"),
        }
    }
}

fn build() -> SwarmCluster {
    let started = Instant::now();
    require_tool("ip", "iproute2");
    require_tool("nsenter", "util-linux");
    require_tool("unshare", "util-linux");
    require_tool("fuse-overlayfs", "fuse-overlayfs");
    let dockerd = require_tool("dockerd", "docker.io");
    clean_up_crashed_runs();

    let id = std::process::id();
    let dir = Path::new(ROOT).join(id.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the swarm run directory");
    let names = Names::for_run(id);
    std::fs::write(dir.join("teardown.sh"), teardown_script(&dir, &names)).expect("teardown.sh");
    // From here on, whatever happens to this process, the reaper tears down.
    let reaper = start_reaper(&dir);

    let subnet = free_subnet();
    let host_addr = Ipv4Addr::new(10, 231, subnet, 1);
    let registry: SocketAddr = (host_addr, REGISTRY_PORT).into();
    let mut nodes: Vec<SwarmNode> = (1..=NODES)
        .map(|n| SwarmNode {
            addr: Ipv4Addr::new(10, 231, subnet, 10 + u8::try_from(n).expect("3 nodes")),
            hostname: format!("cutover-swarm-n{n}"),
            dir: dir.join(format!("n{n}")),
            netns: names.nodes[n - 1].clone(),
            dockerd: None,
        })
        .collect();
    make_network(&names, host_addr, &nodes);
    for (node, netns) in nodes.iter_mut().zip(&names.nodes) {
        node.dockerd = Some(start_dockerd(&dockerd, node, netns, registry));
    }

    let password = format!("pw-{id}-{}", started.elapsed().as_nanos());
    let registry_process = TestRegistry::start_at(registry, REGISTRY_USER, &password);
    std::fs::write(dir.join("registry.pid"), registry_process.pid().to_string())
        .expect("registry.pid");
    std::fs::write(
        dir.join("registry.dir"),
        registry_process.data_dir().display().to_string(),
    )
    .expect("registry.dir");
    let repo = format!("{registry}/hello");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the swarm build");
    let (image_v1, local_v2) = runtime.block_on(async {
        form_swarm(&nodes).await;
        let node1 = Docker::connect_to(&nodes[0].docker_host())
            .await
            .expect("connect to node 1");
        let v1 = build_hello_image(&node1, &repo, "v1").await;
        let v2 = build_hello_image(&node1, &repo, "v2").await;
        let auth = RegistryAuth {
            server: registry.to_string(),
            username: REGISTRY_USER.to_owned(),
            password: Secret::new(&password),
        };
        let tag = format!("{repo}:v1");
        let digest = node1
            .push_image(&tag, &auth)
            .await
            .unwrap_or_else(|e| panic!("push {tag}: {e}"))
            .unwrap_or_else(|| panic!("the registry gave no digest for {tag}"));
        assert!(!v1.id.is_empty() && !v2.id.is_empty());
        (format!("{repo}@{digest}"), format!("{repo}:v2"))
    });
    let up_time = started.elapsed();
    eprintln!(
        "swarm test cluster: {NODES} nodes on 10.231.{subnet}.0/24, registry {registry}, up in {:.1} s",
        up_time.as_secs_f64()
    );
    SwarmCluster {
        nodes,
        host_addr,
        registry,
        password: Secret::new(&password),
        repo,
        image_v1,
        local_v2,
        up_time,
        _registry: registry_process,
        restarted: std::sync::Mutex::new(Vec::new()),
        _reaper: reaper,
    }
}

/// Runs the teardown script of every earlier run whose process is gone.
fn clean_up_crashed_runs() {
    let Ok(entries) = std::fs::read_dir(ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let (pid, is_log) = match name.strip_suffix(".teardown.log") {
            Some(pid) => (pid, true),
            None => (name.as_str(), false),
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() && pid != std::process::id() {
            continue;
        }
        if is_log {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        let script = entry.path().join("teardown.sh");
        if script.exists() {
            eprintln!(
                "swarm test cluster: tearing down what run {pid} left behind ({})",
                entry.path().display()
            );
            let _ = Command::new("sh").arg(&script).output();
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// The script that removes everything a run creates; every step tolerates what is
/// already gone, so it can run twice or on a half-built cluster.
fn teardown_script(dir: &Path, names: &Names) -> String {
    let d = dir.display();
    let namespaces = std::iter::once(&names.lan)
        .chain(&names.nodes)
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        r#"#!/bin/sh
# Tears down the swarm test cluster of {d} (tests/support/swarm.rs).
d='{d}'
echo "teardown started $(date +%s.%N)"
manager="unix://$d/n1/docker.sock"
services=$(timeout 10 docker -H "$manager" service ls -q 2>/dev/null)
[ -n "$services" ] && timeout 30 docker -H "$manager" service rm $services >/dev/null 2>&1
for n in 3 2 1; do
  timeout 15 docker -H "unix://$d/n$n/docker.sock" swarm leave --force >/dev/null 2>&1
done
pids=""
for n in 1 2 3; do
  for f in "$d/n$n/docker.pid" "$d/n$n/exec/containerd/containerd.pid"; do
    [ -f "$f" ] && pids="$pids $(cat "$f")"
  done
done
[ -f "$d/registry.pid" ] && pids="$pids $(cat "$d/registry.pid")"
for p in $pids; do kill "$p" 2>/dev/null; done
for p in $pids; do
  i=0
  while kill -0 "$p" 2>/dev/null && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done
  kill -9 "$p" 2>/dev/null
done
# A node whose engine a test killed may leave its containers' shims behind (its
# engine started again normally takes them over): kill those of this run and their
# containers.
ps -eo pid=,args= | awk -v d="$d/" '$2 ~ /containerd-shim/ && index($0, d) {{ print $1 }}' |
  while read -r s; do pkill -KILL -P "$s" 2>/dev/null; kill -KILL "$s" 2>/dev/null; done
awk -v d="$d/" 'index($2, d) == 1 {{ print $2 }}' /proc/mounts | sort -r | while read -r m; do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
done
ps -eo pid=,args= | awk -v d="$d/" '$2 ~ /fuse-overlayfs/ && index($0, d) {{ print $1 }}' |
  xargs -r kill 2>/dev/null
ip link del {uplink} 2>/dev/null
for ns in {namespaces}; do ip netns del "$ns" 2>/dev/null; done
[ -f "$d/registry.dir" ] && rm -rf "$(cat "$d/registry.dir")"
rm -rf "$d"
echo "teardown finished $(date +%s.%N)"
"#,
        uplink = names.uplink,
    )
}

/// A process that waits for its stdin to close (this process exiting, however) and
/// then runs the teardown; in a process group of its own, so a Ctrl-C to the tests
/// does not stop it. Its output goes to `<ROOT>/<pid>.teardown.log`.
fn start_reaper(dir: &Path) -> Reaper {
    let log = PathBuf::from(format!("{}.teardown.log", dir.display()));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"cat >/dev/null; exec sh "$0/teardown.sh" >"$1" 2>&1"#)
        .arg(dir)
        .arg(&log)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start the swarm teardown reaper");
    Reaper {
        stdin: child.stdin.take().expect("the reaper's stdin"),
        _process: child,
    }
}

/// The teardown reaper: its stdin is closed when this process exits.
struct Reaper {
    /// Held open until this process exits.
    stdin: ChildStdin,
    /// Never waited for: it outlives this process on purpose.
    _process: Child,
}

/// A `10.231.X.0/24` no interface of this namespace uses yet.
fn free_subnet() -> u8 {
    let used = run_ok(Command::new("ip").args(["-o", "-4", "addr", "show"]));
    let start = std::process::id() % 250;
    (0..250u32)
        .map(|i| (start + i) % 250 + 1)
        .find(|n| !used.contains(&format!("10.231.{n}.")))
        .and_then(|n| u8::try_from(n).ok())
        .expect("a free 10.231.x.0/24")
}

fn make_network(names: &Names, host_addr: Ipv4Addr, nodes: &[SwarmNode]) {
    let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
    let in_ns = |ns: &str, args: &[&str]| run_ok(Command::new("ip").args(["-n", ns]).args(args));
    let lan = names.lan.as_str();
    ip(&["netns", "add", lan]);
    in_ns(lan, &["link", "add", "name", "lanbr", "type", "bridge"]);
    in_ns(lan, &["link", "set", "lanbr", "up"]);
    ip(&[
        "link",
        "add",
        &names.uplink,
        "type",
        "veth",
        "peer",
        "name",
        "uplink",
        "netns",
        lan,
    ]);
    in_ns(lan, &["link", "set", "uplink", "master", "lanbr", "up"]);
    ip(&[
        "addr",
        "add",
        &format!("{host_addr}/24"),
        "dev",
        &names.uplink,
    ]);
    ip(&["link", "set", &names.uplink, "up"]);
    for (n, (node, netns)) in nodes.iter().zip(&names.nodes).enumerate() {
        let port = format!("node{}", n + 1);
        ip(&["netns", "add", netns]);
        in_ns(
            lan,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", netns,
            ],
        );
        in_ns(lan, &["link", "set", &port, "master", "lanbr", "up"]);
        in_ns(
            netns,
            &["addr", "add", &format!("{}/24", node.addr), "dev", "eth0"],
        );
        in_ns(netns, &["link", "set", "eth0", "up"]);
        in_ns(netns, &["link", "set", "lo", "up"]);
    }
}

fn start_dockerd(dockerd: &Path, node: &SwarmNode, netns: &str, registry: SocketAddr) -> Child {
    let d = &node.dir;
    std::fs::create_dir_all(d).expect("node directory");
    // Not the machine's daemon.json (it pins a data-root): only the registry, which
    // speaks plain HTTP.
    std::fs::write(
        d.join("daemon.json"),
        format!("{{\"insecure-registries\": [\"{registry}\"]}}"),
    )
    .expect("daemon.json");
    let log = std::fs::File::create(d.join("dockerd.log")).expect("dockerd.log");
    // Only the network namespace (see the module docs) plus a UTS namespace, so the
    // node's host name is its own; the child is reaped by the teardown's kill.
    Command::new("nsenter")
        .arg(format!("--net=/var/run/netns/{netns}"))
        .args([
            "unshare",
            "--uts",
            "--",
            "sh",
            "-c",
            r#"hostname "$0" && exec "$@""#,
        ])
        .arg(&node.hostname)
        .arg(dockerd)
        .args(private_dockerd_args(d))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("start dockerd")
}

/// A bollard client on `node`'s socket at the engine's API version (20.10: 1.41).
fn bollard_client(node: &SwarmNode) -> bollard::Docker {
    let socket = node.dir.join("docker.sock");
    bollard::Docker::connect_with_unix(
        &socket.display().to_string(),
        120,
        &bollard::ClientVersion {
            major_version: 1,
            minor_version: 41,
        },
    )
    .expect("a bollard client")
}

/// Waits for every dockerd, initialises the swarm on node 1, joins nodes 2 and 3 as
/// managers, and waits until all three are ready.
async fn form_swarm(nodes: &[SwarmNode]) {
    use bollard::models::{SwarmInitRequest, SwarmJoinRequest};
    let mut clients = Vec::new();
    for node in nodes {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // bollard refuses a socket that does not exist yet.
            if node.dir.join("docker.sock").exists() {
                let client = bollard_client(node);
                if client.ping().await.is_ok() {
                    clients.push(client);
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "dockerd of {} did not answer within 60 s: {}",
                node.hostname,
                node.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let manager = &nodes[0];
    clients[0]
        .init_swarm(SwarmInitRequest {
            listen_addr: Some(format!("{}:2377", manager.addr)),
            advertise_addr: Some(manager.addr.to_string()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("swarm init on {}: {e}: {}", manager.hostname, manager.log()));
    let tokens = clients[0]
        .inspect_swarm()
        .await
        .expect("inspect the swarm")
        .join_tokens
        .expect("join tokens");
    // Node 2 joins as a manager, node 3 as a worker: the one the fault tests take off
    // the network, which must never disturb the managers' raft (see `lose_node`).
    for (n, (client, node)) in clients.iter().zip(nodes).enumerate().skip(1) {
        let token = if n + 1 == NODES {
            tokens.worker.clone()
        } else {
            tokens.manager.clone()
        }
        .expect("a join token");
        client
            .join_swarm(SwarmJoinRequest {
                listen_addr: Some(format!("{}:2377", node.addr)),
                advertise_addr: Some(node.addr.to_string()),
                remote_addrs: Some(vec![format!("{}:2377", manager.addr)]),
                join_token: Some(token),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("swarm join of {}: {e}: {}", node.hostname, node.log()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes_seen = clients[0]
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await
            .expect("list nodes");
        let ready = nodes_seen
            .iter()
            .filter(|n| {
                matches!(
                    n.status.as_ref().and_then(|s| s.state),
                    Some(bollard::models::NodeState::READY)
                )
            })
            .count();
        if ready == NODES {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ready} of {NODES} swarm nodes ready after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
