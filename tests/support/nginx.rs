//! nginx helpers for tests: a guard that stops an nginx by its pid file, the process
//! table as the kernel shows it, an nginx the test configures itself (for external
//! mode), and a directory lock that holds for root too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Whether the tests run as root (CI does).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Stops (SIGTERM, then SIGKILL) the nginx whose pid file this names, however the test
/// ends.
pub struct NginxGuard {
    /// The pid file of the nginx to stop.
    pub pid_file: PathBuf,
}

impl Drop for NginxGuard {
    fn drop(&mut self) {
        let Some(pid) = master_pid(&self.pid_file) else {
            return;
        };
        let workers = children(pid);
        let target = rustix::process::Pid::from_raw(pid).unwrap();
        let _ = rustix::process::kill_process(target, rustix::process::Signal::TERM);
        for _ in 0..500 {
            if !alive(pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for p in std::iter::once(pid).chain(workers) {
            if let Some(p) = rustix::process::Pid::from_raw(p) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
}

/// The pid in `pid_file` when it names a live nginx master.
pub fn master_pid(pid_file: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline)
        .starts_with("nginx: master")
        .then_some(pid)
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Whether `pid` runs (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|f| f[0] != "Z")
}

/// The nginx workers of a master, as the kernel lists them.
pub fn children(master: i32) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&pid| stat_fields(pid).is_some_and(|f| f[0] != "Z" && f[1] == master.to_string()))
        .collect();
    out.sort();
    out
}

/// Makes a directory refuse new entries, for root too: `chattr +i` (root ignores
/// permission bits, but not the immutable attribute). Undone on drop so the temporary
/// directory can be removed.
pub struct Immutable(PathBuf);

impl Immutable {
    /// Locks `dir` until the guard drops.
    pub fn set(dir: &Path) -> Immutable {
        if is_root() {
            let status = std::process::Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .status()
                .expect("chattr (e2fsprogs) runs");
            assert!(
                status.success(),
                "chattr +i {} failed; this test needs a filesystem with the immutable attribute (ext4, xfs, btrfs)",
                dir.display()
            );
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        Immutable(dir.to_owned())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        if is_root() {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.0)
                .status();
        } else {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
        }
    }
}

/// An nginx the test configures and starts itself, for external mode: it listens on a
/// free loopback port and includes `conf.d/*.inc` inside `location /`, which sets
/// `$service_url` (what cutover's default template writes), and `conf.d/*.conf` at
/// http level (where upstream blocks go). Stopped on drop.
pub struct ExternalNginx {
    // Fields drop in order: nginx must be stopped while its pid file still exists,
    // and a tmpfs unmounted before its directory is removed.
    _guard: NginxGuard,
    _tmpfs: Option<Tmpfs>,
    /// Its prefix: `nginx.conf`, `nginx.pid`, `error.log`, temp files.
    pub dir: tempfile::TempDir,
    /// Where the rendered files go.
    pub conf_d: PathBuf,
    /// Where it listens.
    pub listen: SocketAddr,
    /// `nginx -p <dir> -c <conf> -e <log>`: add `-t` or `-s reload`.
    pub base: Vec<String>,
}

impl ExternalNginx {
    /// Starts it with `service-url.inc` pointing at `upstream`.
    pub fn start(upstream: SocketAddr) -> ExternalNginx {
        ExternalNginx::start_with(upstream, None)
    }

    /// As [`ExternalNginx::start`], with `conf.d` on a tmpfs of `size` (e.g. `"64k"`)
    /// when given, so a test can fill it up.
    pub fn start_with(upstream: SocketAddr, conf_d_size: Option<&str>) -> ExternalNginx {
        ExternalNginx::launch(upstream, conf_d_size, true)
    }

    /// As [`ExternalNginx::start`], laid out like the original write-up's nginx: no
    /// `X-Cutover-Upstream` header, so nothing in a response names the backend.
    pub fn start_without_upstream_header(upstream: SocketAddr) -> ExternalNginx {
        ExternalNginx::launch(upstream, None, false)
    }

    fn launch(
        upstream: SocketAddr,
        conf_d_size: Option<&str>,
        upstream_header: bool,
    ) -> ExternalNginx {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let conf_d = root.join("conf.d");
        std::fs::create_dir(&conf_d).expect("create conf.d");
        let tmpfs = conf_d_size.map(|size| Tmpfs::mount(&conf_d, size));
        let listen: SocketAddr = ([127, 0, 0, 1], super::free_port()).into();
        let p = |name: &str| root.join(name).display().to_string();
        let conf = format!(
            "{user}pid {pid};\nerror_log {err};\nevents {{}}\nhttp {{\n access_log off;\n\
             client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; fastcgi_temp_path {t}/fcgi;\n\
             uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;\n\
             include {conf_d}/*.conf;\n\
             server {{ listen {listen};\n  location / {{ include {conf_d}/*.inc; proxy_pass $service_url;\n\
             {header} }} }}\n}}\n",
            user = if is_root() { "user root;\n" } else { "" },
            pid = p("nginx.pid"),
            err = p("error.log"),
            t = root.display(),
            conf_d = conf_d.display(),
            header = if upstream_header {
                "add_header X-Cutover-Upstream $upstream_addr always;"
            } else {
                ""
            },
        );
        std::fs::write(root.join("nginx.conf"), conf).expect("write nginx.conf");
        std::fs::write(
            conf_d.join("service-url.inc"),
            format!("# written by the test\nset $service_url http://{upstream};\n"),
        )
        .expect("write service-url.inc");
        let base: Vec<String> = vec![
            "nginx".into(),
            "-p".into(),
            p(""),
            "-c".into(),
            p("nginx.conf"),
            "-e".into(),
            p("error.log"),
        ];
        let guard = NginxGuard {
            pid_file: root.join("nginx.pid"),
        };
        let status = Command::new(&base[0])
            .args(&base[1..])
            .status()
            .expect("nginx runs");
        assert!(status.success(), "nginx did not start");
        // nginx writes its pid file after it daemonized.
        for _ in 0..500 {
            if master_pid(&guard.pid_file).is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        ExternalNginx {
            dir,
            conf_d,
            listen,
            base,
            _guard: guard,
            _tmpfs: tmpfs,
        }
    }

    /// Its start command plus `extra`, e.g. `["-s", "reload"]`.
    pub fn argv(&self, extra: &[&str]) -> Vec<String> {
        let mut v = self.base.clone();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    /// Its pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.path().join("nginx.pid")
    }
}

/// A tmpfs mounted on a directory for the life of the guard.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0755"))
            .arg("tmpfs")
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a {size} tmpfs on {} failed; this test needs root with CAP_SYS_ADMIN (CI runs as root)",
            dir.display()
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: nothing may keep the directory busy past the test.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem holding `dir` until a write fails with "no space left".
pub fn fill_up(dir: &Path) {
    use std::io::Write;
    let mut filler = std::fs::File::create(dir.join("zz-filler")).expect("create the filler");
    let chunk = [0u8; 4096];
    // Bounded: the tmpfs this is used on holds a few pages.
    for _ in 0..100_000 {
        if let Err(e) = filler.write_all(&chunk).and_then(|()| filler.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "expected ENOSPC, got {e}");
            return;
        }
    }
    panic!("{} did not fill up", dir.display());
}

/// An nginx that terminates TLS on a free loopback port with the given certificate
/// and key and proxies every request to `backend` over plain HTTP, logging each
/// request to `access.log`. Stopped on drop.
pub struct TlsProxy {
    _guard: NginxGuard,
    /// Its prefix: `nginx.conf`, the certificate and key, logs.
    pub dir: tempfile::TempDir,
    /// Where it listens for TLS.
    pub listen: SocketAddr,
}

impl TlsProxy {
    /// Starts it; `cert_pem` is the server's certificate chain, `key_pem` its key.
    pub fn start(backend: SocketAddr, cert_pem: &str, key_pem: &str) -> TlsProxy {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let p = |name: &str| root.join(name).display().to_string();
        std::fs::write(root.join("cert.pem"), cert_pem).expect("write cert.pem");
        std::fs::write(root.join("key.pem"), key_pem).expect("write key.pem");
        let listen: SocketAddr = ([127, 0, 0, 1], super::free_port()).into();
        let conf = format!(
            "{user}pid {pid};\nerror_log {err};\nevents {{}}\nhttp {{\n access_log {access};\n\
             client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; fastcgi_temp_path {t}/fcgi;\n\
             uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;\n\
             server {{ listen {listen} ssl;\n  ssl_certificate {cert}; ssl_certificate_key {key};\n\
             location / {{ proxy_pass http://{backend}; }} }}\n}}\n",
            user = if is_root() { "user root;\n" } else { "" },
            pid = p("nginx.pid"),
            err = p("error.log"),
            access = p("access.log"),
            t = root.display(),
            cert = p("cert.pem"),
            key = p("key.pem"),
        );
        std::fs::write(root.join("nginx.conf"), conf).expect("write nginx.conf");
        let guard = NginxGuard {
            pid_file: root.join("nginx.pid"),
        };
        let out = Command::new("nginx")
            .args(["-p", &p(""), "-c", &p("nginx.conf"), "-e", &p("error.log")])
            .output()
            .expect("nginx runs");
        assert!(
            out.status.success(),
            "the TLS nginx did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..500 {
            if master_pid(&guard.pid_file).is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        TlsProxy {
            _guard: guard,
            dir,
            listen,
        }
    }

    /// The requests it logged so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}
