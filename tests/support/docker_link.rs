//! A Docker engine link that a test can cut: a unix socket that forwards every
//! connection to the machine's engine until [`DockerLink::cut`], after which every
//! open connection is shut and new ones are refused. cutover sees exactly what it
//! sees when the engine goes away mid-deploy.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// The machine's engine.
const ENGINE: &str = "/var/run/docker.sock";

/// A forwarding socket to the engine; see the module docs.
pub struct DockerLink {
    dir: tempfile::TempDir,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<UnixStream>>>,
}

impl DockerLink {
    /// Starts forwarding.
    pub fn start() -> DockerLink {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = UnixListener::bind(dir.path().join("docker.sock")).expect("bind link");
        let cut = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (cut2, open2) = (cut.clone(), open.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if cut2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { break };
                let Ok(engine) = UnixStream::connect(ENGINE) else {
                    continue;
                };
                let mut tracked = open2.lock().unwrap();
                for s in [&client, &engine] {
                    if let Ok(s) = s.try_clone() {
                        tracked.push(s);
                    }
                }
                pipe(&client, &engine);
                pipe(&engine, &client);
            }
        });
        DockerLink { dir, cut, open }
    }

    /// `DOCKER_HOST` for a cutover that goes through the link.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// Cuts the link: open connections are shut, new ones refused.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let _ = std::fs::remove_file(self.socket());
        // Wake the accept loop so it sees the flag and ends.
        let _ = UnixStream::connect(self.socket());
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for DockerLink {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies `from` to `to` on a thread until either side closes.
fn pipe(from: &UnixStream, to: &UnixStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    thread::spawn(move || {
        let _: io::Result<u64> = io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}
