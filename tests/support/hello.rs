//! The hello example as test material: its static binary and image context, image
//! builds, and plain HTTP/1.1 requests to it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cutover::docker::{BuildRequest, Docker, ImageInfo, LABEL_SERVICE};

use super::workspace_root;

const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// A directory holding hello's `Dockerfile` and static `hello` binary, ready to build.
///
/// The binary is built once per test process into `target/hello-static` (its own
/// target dir, so the static flags never invalidate the normal build); the context
/// lives under that dir too, so tests never write into the source tree.
pub fn hello_context() -> &'static Path {
    static CONTEXT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match CONTEXT.get_or_init(prepare_context) {
        Ok(path) => path,
        Err(e) => panic!("cannot prepare the hello image context: {e}"),
    }
}

fn prepare_context() -> Result<PathBuf, String> {
    let root = workspace_root();
    let target_dir = root.join("target/hello-static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--release", "-p", "hello", "--target", TRIPLE])
        .arg("--target-dir")
        .arg(&target_dir)
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        // These would override the per-target flags and give a dynamic binary.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static",
        )
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build -p hello failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let binary = target_dir.join(TRIPLE).join("release/hello");
    let bytes = std::fs::read(&binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    if has_interpreter(&bytes) {
        return Err(format!(
            "{} is dynamically linked and would not start FROM scratch",
            binary.display()
        ));
    }
    let context = target_dir.join("context");
    std::fs::create_dir_all(&context).map_err(|e| format!("{}: {e}", context.display()))?;
    let dockerfile = root.join("examples/hello/image/Dockerfile");
    for (from, name) in [
        (dockerfile.as_path(), "Dockerfile"),
        (binary.as_path(), "hello"),
    ] {
        // Copy then rename: another test process may be building from this context.
        let tmp = context.join(format!(".{name}.{}", std::process::id()));
        std::fs::copy(from, &tmp)
            .map_err(|e| format!("{} -> {}: {e}", from.display(), tmp.display()))?;
        std::fs::rename(&tmp, context.join(name)).map_err(|e| format!("{}: {e}", tmp.display()))?;
    }
    Ok(context)
}

/// Whether an ELF64 file asks for a dynamic loader (has a `PT_INTERP` header).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    (0..phnum).any(|i| {
        let at = usize::try_from(phoff).expect("ELF offset fits") + i * phentsize;
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == PT_INTERP)
            .unwrap_or(true)
    })
}

/// Builds hello as `<service>:<version>` with `VERSION=<version>`, labelled for
/// `service` (so [`super::DockerCleanup`] removes it).
pub async fn build_hello_image(docker: &Docker, service: &str, version: &str) -> ImageInfo {
    let args = BTreeMap::from([("VERSION".to_owned(), version.to_owned())]);
    let labels = BTreeMap::from([(LABEL_SERVICE.to_owned(), service.to_owned())]);
    let tag = format!("{service}:{version}");
    let request = BuildRequest {
        context: hello_context(),
        dockerfile: "Dockerfile",
        args: &args,
        tag: &tag,
        labels: &labels,
    };
    let mut lines = Vec::new();
    let mut on_line = |l: &str| {
        // cutover's own notes (e.g. a retried build) are worth seeing in test output.
        if l.starts_with("cutover:") {
            eprintln!("{tag}: {l}");
        }
        lines.push(l.to_owned());
    };
    docker
        .build_image(&request, &mut on_line)
        .await
        .unwrap_or_else(|e| panic!("building {tag} failed: {e}\noutput: {lines:#?}"))
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header names (as sent) and values.
    pub headers: Vec<(String, String)>,
    /// The body as text.
    pub body: String,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on `addr` over a fresh connection (`Connection: close`).
///
/// # Errors
/// Connection failures, timeouts (`timeout` for connect and for each read) and
/// malformed responses.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<HttpResponse> {
    http_request(addr, "GET", path, &[], b"", timeout)
}

/// `method path` with extra `headers` and `body` over a fresh connection
/// (`Connection: close`). A `Content-Length` is added unless `headers` has one or a
/// `Transfer-Encoding` (then `body` must already be encoded).
///
/// # Errors
/// As [`http_get`].
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<HttpResponse> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let has_length = headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
    });
    if !has_length && (method != "GET" || !body.is_empty()) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of head"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Polls `GET path` every 50 ms until it answers 200 or `within` has passed.
///
/// # Errors
/// The last response or error when the deadline passed.
pub fn wait_for_http(
    addr: SocketAddr,
    path: &str,
    within: Duration,
) -> Result<HttpResponse, String> {
    let deadline = Instant::now() + within;
    loop {
        let last = match http_get(addr, path, Duration::from_secs(2)) {
            Ok(r) if r.status == 200 => return Ok(r),
            Ok(r) => format!("status {}: {}", r.status, r.body),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "GET http://{addr}{path} did not answer 200 within {within:?}; last: {last}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
