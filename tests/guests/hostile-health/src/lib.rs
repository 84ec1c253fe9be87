//! A `health-policy` plugin that misbehaves in the way its config names, so the tests
//! can prove the sandbox contains it. The config is the bare mode name, not JSON.
//!
//! Modes: `ok`, `reject` (refuses its config), `loop`, `alloc`, `huge`, `snoop`,
//! `sleep`, `wait-for-time`, `panic`, `exit`, `log`, `log-flood`, `escape`, `count`.

// wit-bindgen's generated glue is the only `unsafe` here.
#![allow(unsafe_code)]
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "health-policy",
    path: "../../../wit/v0.1.0",
});

use cutover::plugin::host::log;
use cutover::plugin::types::LogLevel;

struct Hostile;

impl Guest for Hostile {
    fn validate_config(config: String) -> Result<(), String> {
        match config.as_str() {
            "reject" => Err("mode `reject` refuses every config".to_owned()),
            "huge-reject" => Err("r".repeat(5 << 20)),
            _ => Ok(()),
        }
    }

    fn evaluate(config: String, _input: HealthInput) -> HealthVerdict {
        match config.as_str() {
            "ok" => HealthVerdict::Healthy,
            "loop" => loop {
                std::hint::black_box(0);
            },
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(std::hint::black_box(vec![1; 1 << 20]));
                }
            }
            "huge" => HealthVerdict::NotYet("x".repeat(5 << 20)),
            "snoop" => {
                let passwd = std::fs::read_to_string("/etc/passwd");
                let home = std::env::var("HOME");
                let vars = std::env::vars().count();
                let args = std::env::args().count();
                let cwd = std::env::current_dir().ok();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs());
                let socket = std::net::TcpStream::connect("127.0.0.1:22").map(drop);
                HealthVerdict::NotYet(format!(
                    "passwd={} home={} vars={vars} args={args} cwd={cwd:?} now={now:?} socket={}",
                    passwd.is_ok(),
                    home.is_ok(),
                    socket.is_ok()
                ))
            }
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                HealthVerdict::NotYet("slept".to_owned())
            }
            "wait-for-time" => {
                let start = std::time::Instant::now();
                while start.elapsed().is_zero() {
                    std::hint::black_box(0);
                }
                HealthVerdict::NotYet("time passed".to_owned())
            }
            "panic" => panic!("hostile plugin panicked on purpose"),
            "exit" => std::process::exit(3),
            "log" => {
                log(LogLevel::Info, "probe looks fine");
                log(LogLevel::Warn, "forged\nline \u{1b}[31mred");
                HealthVerdict::Healthy
            }
            "log-flood" => {
                let line = "y".repeat(1024);
                for _ in 0..1000 {
                    log(LogLevel::Info, &line);
                }
                HealthVerdict::Healthy
            }
            "count" => {
                // Counts calls in a static and on the heap: a fresh instance per call
                // must start both from scratch.
                static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                static HEAP: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
                let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let mut heap = HEAP.lock().unwrap_or_else(|e| e.into_inner());
                heap.extend_from_slice(&[7; 1000]);
                HealthVerdict::NotYet(format!("call {calls}, heap {}", heap.len()))
            }
            "escape" => HealthVerdict::Failed("clear \u{1b}[2J screen\nforged line".to_owned()),
            other => HealthVerdict::Failed(format!("unknown mode {other:?}")),
        }
    }
}

export!(Hostile);
