//! Remote Docker engines for tests, all on addresses the test makes:
//!
//! - [`TestSshd`]: an `sshd` from Debian's openssh-server on a free loopback port, with
//!   its own config, host key and authorized key in a temp dir, and an `ssh` wrapper
//!   that points the client at a config of the test's (ssh reads `~/.ssh` from the
//!   passwd entry, not from `HOME`, so a wrapper first on `PATH` is the way in).
//!   Behind it is the machine's engine: the remote's `docker system dial-stdio`.
//! - [`PrivateDockerd`]: a second `dockerd` in a network namespace the test creates,
//!   listening with `--tlsverify` on the namespace's address with certificates from a
//!   CA the test makes; its own data-root, exec-root, pid file and socket, so it never
//!   touches the machine's engine. Dropping it removes the namespace, the link and
//!   every fuse-overlayfs mount it left.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::nginx::is_root;
use super::{free_port, require_tool, run_ok};

/// An sshd on `127.0.0.1:<port>` that lets `root` in with a key the test made.
pub struct TestSshd {
    dir: tempfile::TempDir,
    child: Child,
    /// The port it listens on.
    pub port: u16,
}

impl TestSshd {
    /// Starts it; panics with what to install when sshd or ssh is missing.
    pub fn start() -> TestSshd {
        assert!(
            is_root(),
            "the ssh engine test logs in as root: run it as root"
        );
        let sshd = require_tool("sshd", "openssh-server");
        let ssh = require_tool("ssh", "openssh-client");
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        for key in ["host_key", "id"] {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", ""])
                    .arg("-f")
                    .arg(d.join(key)),
            );
        }
        std::fs::copy(d.join("id.pub"), d.join("authorized_keys")).expect("authorized_keys");
        // sshd running as root wants its privilege-separation directory, which the
        // package's service unit creates at boot; nothing here boots it.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");

        // Another process may take the free port before sshd binds it: try again.
        for _ in 0..5 {
            let port = free_port();
            std::fs::write(
                d.join("sshd_config"),
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
                     PidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n\
                     StrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n",
                    d = d.display()
                ),
            )
            .expect("sshd_config");
            let log = std::fs::File::create(d.join("sshd.log")).expect("sshd.log");
            let mut child = Command::new(&sshd)
                .args(["-D", "-e", "-f"])
                .arg(d.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sshd");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let host_key = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
                    let key: Vec<&str> = host_key.split_whitespace().take(2).collect();
                    std::fs::write(
                        d.join("known_hosts"),
                        format!("[127.0.0.1]:{port} {}\n", key.join(" ")),
                    )
                    .unwrap();
                    std::fs::write(d.join("unknown_hosts"), "").unwrap();
                    let sshd = TestSshd { dir, child, port };
                    sshd.write_client("trusted", "known_hosts", "yes", &ssh);
                    // A lax user config, which would take and record any new key.
                    sshd.write_client("untrusted", "unknown_hosts", "accept-new", &ssh);
                    return sshd;
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "sshd did not start: {}",
            std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
        );
    }

    /// An ssh client config using the test's key and `known_hosts` file, with
    /// `StrictHostKeyChecking <strict>`, and a `<name>/ssh` wrapper that runs `ssh`
    /// with it.
    fn write_client(&self, name: &str, known_hosts: &str, strict: &str, ssh: &Path) {
        let d = self.dir.path();
        let config = d.join(format!("{name}.ssh_config"));
        std::fs::write(
            &config,
            format!(
                "Host *\n  IdentityFile {d}/id\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile {d}/{known_hosts}\n  GlobalKnownHostsFile /dev/null\n  \
                 StrictHostKeyChecking {strict}\n",
                d = d.display()
            ),
        )
        .unwrap();
        let bin = d.join(name);
        std::fs::create_dir_all(&bin).unwrap();
        let wrapper = bin.join("ssh");
        let mut file = std::fs::File::create(&wrapper).unwrap();
        write!(
            file,
            "#!/bin/sh\nexec {} -F {} \"$@\"\n",
            ssh.display(),
            config.display()
        )
        .unwrap();
        drop(file);
        run_ok(Command::new("chmod").arg("+x").arg(&wrapper));
    }

    /// `DOCKER_HOST` for the engine behind this sshd.
    pub fn docker_host(&self) -> String {
        format!("ssh://root@127.0.0.1:{}", self.port)
    }

    /// `PATH` with the ssh wrapper first: with `trusted`, the client knows the host
    /// key; without, its `known_hosts` is empty and its config would accept (and
    /// record) a new host key (`StrictHostKeyChecking accept-new`).
    pub fn path_env(&self, trusted: bool) -> String {
        let bin = self
            .dir
            .path()
            .join(if trusted { "trusted" } else { "untrusted" });
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// The untrusted client's `known_hosts` file (empty unless a key was recorded).
    pub fn untrusted_known_hosts(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("unknown_hosts")).unwrap_or_default()
    }

    /// What sshd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for TestSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The PEM files of a private CA, an engine certificate for one IP address, and a
/// client certificate, as `dockerd --tlsverify` and the docker CLI take them.
pub struct TestCerts {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

impl TestCerts {
    /// A new CA that signed a server certificate for `ip` and a client certificate.
    pub fn new(ip: Ipv4Addr) -> TestCerts {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cutover test engine CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let server = CertificateParams::new(vec![ip.to_string()])
            .expect("server params")
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        let client_key = KeyPair::generate().expect("client key");
        let client = CertificateParams::new(Vec::new())
            .expect("client params")
            .signed_by(&client_key, &issuer)
            .expect("client certificate");
        TestCerts {
            ca: ca.pem(),
            server_cert: server.pem(),
            server_key: server_key.serialize_pem(),
            client_cert: client.pem(),
            client_key: client_key.serialize_pem(),
        }
    }

    /// Writes the client's files as the docker CLI names them in `DOCKER_CERT_PATH`:
    /// `ca.pem`, `cert.pem`, `key.pem`.
    pub fn write_client(&self, dir: &Path) {
        std::fs::create_dir_all(dir).expect("create the cert directory");
        for (name, pem) in [
            ("ca.pem", &self.ca),
            ("cert.pem", &self.client_cert),
            ("key.pem", &self.client_key),
        ] {
            std::fs::write(dir.join(name), pem).expect("write a client PEM file");
        }
    }
}

/// A dockerd in its own network namespace, with TLS on `<addr>:2376`.
pub struct PrivateDockerd {
    dir: tempfile::TempDir,
    /// dockerd itself (nsenter execs it), reaped on drop.
    child: Option<Child>,
    /// The namespace's (and the interface's) name.
    netns: String,
    /// The host's end of the link into the namespace.
    link: String,
    /// The namespace's address: the engine listens here, and containers publish here.
    pub addr: Ipv4Addr,
    /// The certificates it was started with.
    pub certs: TestCerts,
}

impl PrivateDockerd {
    /// Makes the namespace and its link, the certificates, and starts dockerd; waits
    /// until it answers on its unix socket.
    pub fn start() -> PrivateDockerd {
        assert!(
            is_root(),
            "the TLS engine test starts its own dockerd in a network namespace: run it as root"
        );
        let dockerd = require_tool("dockerd", "docker.io");
        require_tool("ip", "iproute2");
        require_tool("nsenter", "util-linux");
        let id = std::process::id();
        let netns = format!("cutns{}", id % 1_000_000);
        let link = format!("cutv{}", id % 1_000_000);
        let peer = format!("cutp{}", id % 1_000_000);
        // A /24 of 10.234.0.0/16 that no interface here uses yet.
        let used = run_ok(Command::new("ip").args(["-o", "-4", "addr", "show"]));
        let subnet = (0..250u32)
            .map(|i| (id + i) % 250 + 1)
            .find(|n| !used.contains(&format!("10.234.{n}.")))
            .expect("a free 10.234.x.0/24");
        let host_addr = format!("10.234.{subnet}.1/24");
        let addr = Ipv4Addr::new(10, 234, u8::try_from(subnet).expect("1..=250"), 2);
        let certs = TestCerts::new(addr);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut engine = PrivateDockerd {
            dir,
            child: None,
            netns,
            link,
            addr,
            certs,
        };
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(args));
        let in_ns = |args: &[&str]| {
            run_ok(
                Command::new("ip")
                    .args(["netns", "exec", &engine.netns, "ip"])
                    .args(args),
            )
        };
        ip(&["netns", "add", &engine.netns]);
        ip(&[
            "link",
            "add",
            &engine.link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        ip(&["link", "set", &peer, "netns", &engine.netns]);
        ip(&["addr", "add", &host_addr, "dev", &engine.link]);
        ip(&["link", "set", &engine.link, "up"]);
        in_ns(&["addr", "add", &format!("{addr}/24"), "dev", &peer]);
        in_ns(&["link", "set", &peer, "up"]);
        in_ns(&["link", "set", "lo", "up"]);

        let d = engine.dir.path();
        for (name, pem) in [
            ("ca.pem", &engine.certs.ca),
            ("server-cert.pem", &engine.certs.server_cert),
            ("server-key.pem", &engine.certs.server_key),
        ] {
            std::fs::write(d.join(name), pem).unwrap();
        }
        // The machine's daemon.json pins a data-root: this engine reads an empty one.
        std::fs::write(d.join("daemon.json"), "{}").unwrap();
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        // Only the network namespace: `ip netns exec` remounts /sys and dockerd then
        // finds no devices cgroup (DESIGN.md §8). Its default bridge is private to
        // the namespace, and so are the iptables rules it writes.
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", engine.netns))
            .arg(dockerd)
            .args(private_dockerd_args(d))
            .arg("-H")
            .arg(format!("tcp://{addr}:2376"))
            .arg("--tlsverify")
            .arg("--tlscacert")
            .arg(d.join("ca.pem"))
            .arg("--tlscert")
            .arg(d.join("server-cert.pem"))
            .arg("--tlskey")
            .arg(d.join("server-key.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        engine.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = engine
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok && TcpStream::connect(engine.tls_addr()).is_ok() {
                return engine;
            }
            assert!(
                Instant::now() < deadline,
                "the private dockerd did not start within 60 s: {}",
                engine.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The TLS address, `<addr>:2376`.
    pub fn tls_addr(&self) -> SocketAddr {
        (self.addr, 2376).into()
    }

    /// `DOCKER_HOST` / `engine.host` for the TLS endpoint.
    pub fn docker_host(&self) -> String {
        format!("tcp://{}", self.tls_addr())
    }

    /// The docker CLI on this engine's unix socket.
    pub fn docker(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("docker");
        cmd.arg("-H")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("docker.sock").display()
            ))
            .args(args);
        cmd
    }

    /// Copies `reference` from the machine's engine into this one
    /// (`docker save | docker load`): this engine cannot pull.
    pub fn load_image(&self, reference: &str) {
        let mut save = Command::new("docker")
            .args(["save", reference])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let stdout = save.stdout.take().expect("docker save's stdout");
        let load = self
            .docker(&["load", "--quiet"])
            .stdin(stdout)
            .output()
            .expect("docker load");
        assert!(
            save.wait().expect("docker save").success(),
            "docker save {reference}"
        );
        assert!(
            load.status.success(),
            "docker load: {}",
            String::from_utf8_lossy(&load.stderr)
        );
    }

    /// What dockerd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        let d = self.dir.path().to_owned();
        // Containers first, so no shim outlives the engine.
        if let Ok(out) = self.docker(&["ps", "-aq"]).output() {
            let ids = String::from_utf8_lossy(&out.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = self.docker(&["rm", "-f"]).args(&ids).output();
            }
        }
        if let Some(pid) = std::fs::read_to_string(d.join("docker.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        if let Some(mut child) = self.child.take() {
            // dockerd is this child (nsenter execs it): wait for it to exit, reaping it.
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        unmount_under(&d);
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

/// The arguments of a dockerd that keeps everything under `d` and never touches the
/// machine's engine: `d/daemon.json` (the machine's pins a data-root), data-root,
/// exec-root, pid file and the socket `d/docker.sock`, on fuse-overlayfs.
pub fn private_dockerd_args(d: &Path) -> Vec<std::ffi::OsString> {
    let path = |name: &str| d.join(name).into_os_string();
    vec![
        "--config-file".into(),
        path("daemon.json"),
        "--data-root".into(),
        path("data"),
        "--exec-root".into(),
        path("exec"),
        "--pidfile".into(),
        path("docker.pid"),
        "-H".into(),
        format!("unix://{}", d.join("docker.sock").display()).into(),
        "--storage-driver".into(),
        "fuse-overlayfs".into(),
    ]
}

/// Unmounts every mount point under `dir`, deepest first (fuse-overlayfs leaves its
/// data-root mounted, and a layer's merged directory may be left behind too).
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut points: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        let _ = Command::new("umount").arg(&point).output();
        let _ = Command::new("umount").arg("-l").arg(&point).output();
    }
}
