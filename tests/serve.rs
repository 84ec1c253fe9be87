//! `cutover serve` end to end: the real binary on a loopback port with its secret in
//! its environment; a local bare repository as the "remote"; the server's checkout a
//! clone of it whose `cutover.toml` deploys the hello app (real Docker, managed
//! nginx); signed GitHub push payloads and generic triggers posted over loopback.
//!
//! Each fixture kills its server on drop, then takes the service down (`cutover down
//! --images` through the `Service` guard) and removes its repositories.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cutover::serve::ServeConfig;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::git::Repo;
use crate::support::service::{Service, plugin_cache_dir};
use crate::support::{HttpResponse, free_port, http_request, unique_service};

const SECRET_ENV: &str = "CUTOVER_TEST_WEBHOOK_SECRET";
const MAX_BODY: usize = 64 * 1024;
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// A deploy here builds an image and waits for health: seconds, not minutes, but the
/// machine is shared with the other tests.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(240);

/// A running `cutover serve`; killed (and reaped) on drop.
struct ServeProcess {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl ServeProcess {
    /// Starts `cutover serve <conf>` listening on `addr` with `env` (its secrets) and
    /// waits until it answers; its log goes next to `conf`. `open_files` lowers its
    /// descriptor limit (`ulimit -n`), as a small machine's would be.
    fn start(
        conf: &Path,
        addr: SocketAddr,
        env: &[(&str, &str)],
        open_files: Option<u32>,
    ) -> ServeProcess {
        let log = conf.with_file_name("server.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let bin = env!("CARGO_BIN_EXE_cutover");
        let mut cmd = match open_files {
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), bin]);
                sh
            }
            None => Command::new(bin),
        };
        cmd.arg("serve")
            .arg(conf)
            .envs(env.iter().copied())
            .env("CUTOVER_CACHE_DIR", plugin_cache_dir())
            .env_remove("CUTOVER_CONFIG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        for var in cutover::ci::SYSTEM_MARKERS {
            cmd.env_remove(var);
        }
        let child = cmd.spawn().expect("start cutover serve");
        let mut server = ServeProcess { child, addr, log };
        wait_until_serving(&mut server);
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for the exit code.
    fn terminate(&mut self, within: Duration) -> Option<i32> {
        self.signal_stop();
        self.wait_exit(within)
    }

    /// Sends SIGTERM (the server starts its shutdown).
    fn signal_stop(&self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
    }

    /// Waits (bounded) for the exit code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A server, the service it deploys, the bare "remote" and a developer's clone.
/// Field order is drop order: the server dies before the service is taken down.
struct Fixture {
    server: ServeProcess,
    svc: Service,
    work: Repo,
    _origin: Repo,
    _work_dir: tempfile::TempDir,
    conf_dir: tempfile::TempDir,
    /// The repository's name as configured (GitHub's `owner/name`).
    name: String,
    secret: String,
    base_config: String,
}

impl Fixture {
    /// `gate` is appended to the repository's `cutover.toml`.
    fn start(prefix: &str, gate: &str) -> Fixture {
        Fixture::start_with(prefix, gate, [127, 0, 0, 1].into(), "", &[])
    }

    /// As [`Fixture::start`], the server listening on `ip` with `extra` appended to
    /// its config (top-level keys first, then more `[[repository]]` tables) and `env`
    /// added to its environment.
    fn start_with(
        prefix: &str,
        gate: &str,
        ip: std::net::IpAddr,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Fixture {
        let svc = Service::new(prefix);
        let base_config = std::fs::read_to_string(svc.config_path()).unwrap() + gate;
        // The checkout supplies the config from now on.
        std::fs::remove_file(svc.config_path()).unwrap();

        let origin = Repo::bare();
        let work_dir = tempfile::tempdir().unwrap();
        let work = Repo::clone_into(&origin, &work_dir.path().join("app"));
        std::fs::write(work.path().join(".gitignore"), ".cutover/\n").unwrap();
        work.git(&["add", ".gitignore"]);
        let name = format!("Team/{}", unique_service("app"));
        // Commit the first config, push, and make the server's checkout a clone.
        let first = base_config.replace("VERSION = \"dev\"", "VERSION = \"v0\"");
        work.commit("cutover.toml", &first, "v0");
        work.git(&["push", "-q", "origin", "main"]);
        Repo::clone_into(&origin, svc.dir.path());

        let conf_dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = conf_dir.path().join("cutover-serve.toml");
        std::fs::write(
            &conf,
            format!(
                "listen = \"{listen}\"\nsecret_env = \"{SECRET_ENV}\"\nmax_body_bytes = {MAX_BODY}\n\
                 lock_wait = \"2m\"\nshutdown_grace = \"4m\"\n{extra}\n[[repository]]\nname = \"{name}\"\n\
                 checkout = \"{checkout}\"\nrefs = [\"refs/heads/main\", \"refs/tags/*\"]\n",
                listen = SocketAddr::new(ip, port),
                checkout = svc.dir.path().display(),
            ),
        )
        .unwrap();
        let secret = format!("whsec-{}", unique_service("s"));
        let mut all = vec![(SECRET_ENV, secret.as_str())];
        all.extend_from_slice(env);
        // Reached on loopback whatever `ip` is (0.0.0.0 includes it).
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let server = ServeProcess::start(&conf, addr, &all, None);
        Fixture {
            server,
            svc,
            work,
            _origin: origin,
            _work_dir: work_dir,
            conf_dir,
            name,
            secret,
            base_config,
        }
    }

    /// Starts the server again on its config, address and secret (after it exited).
    fn restart(&mut self) {
        let conf = self.conf_dir.path().join("cutover-serve.toml");
        let env = [(SECRET_ENV, self.secret.as_str())];
        self.server = ServeProcess::start(&conf, self.server.addr, &env, None);
    }

    /// Polls (bounded) until the server's log has a line containing `text`.
    #[track_caller]
    fn wait_log(&self, text: &str) {
        let deadline = Instant::now() + DEPLOY_TIMEOUT;
        while !self.server.log_text().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no `{text}` in the log within {DEPLOY_TIMEOUT:?}:\n{}",
                self.server.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Commits a config deploying `version` and pushes it; returns the commit's sha.
    fn push_version(&self, version: &str) -> String {
        let text = self
            .base_config
            .replace("VERSION = \"dev\"", &format!("VERSION = \"{version}\""));
        let sha = self.work.commit("cutover.toml", &text, version);
        self.work.git(&["push", "-q", "origin", "main"]);
        sha
    }

    /// POSTs `body` to `path` with `headers`.
    fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
        let mut all = vec![("Content-Type", "application/json")];
        all.extend_from_slice(headers);
        http_request(self.server.addr, "POST", path, &all, body, HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.server.log_text()))
    }

    /// Posts a push event signed with the server's secret.
    fn github(&self, event: &str, delivery: &str, body: &[u8]) -> HttpResponse {
        let signature = sign(&self.secret, body);
        self.post(
            "/hooks/github",
            &[
                ("X-GitHub-Event", event),
                ("X-GitHub-Delivery", delivery),
                ("X-Hub-Signature-256", &signature),
                ("User-Agent", "GitHub-Hookshot/test"),
            ],
            body,
        )
    }

    /// Posts a signed push of `sha` on `git_ref` for the configured repository.
    fn push_event(&self, git_ref: &str, sha: &str, delivery: &str) -> HttpResponse {
        self.github("push", delivery, &push_payload(&self.name, git_ref, sha))
    }

    /// `GET /deploys`'s list.
    fn deploys(&self) -> Vec<Value> {
        let r = http_request(self.server.addr, "GET", "/deploys", &[], b"", HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET /deploys: {e}\n{}", self.server.log_text()));
        assert_eq!(r.status, 200, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        v["deploys"].as_array().unwrap().clone()
    }

    fn run_of(&self, delivery: &str) -> Option<Value> {
        self.deploys()
            .into_iter()
            .find(|r| r["delivery"] == delivery)
    }

    /// Polls until the run of `delivery` is in one of `states`; returns it.
    #[track_caller]
    fn wait_state(&self, delivery: &str, states: &[&str]) -> Value {
        let deadline = Instant::now() + DEPLOY_TIMEOUT;
        loop {
            if let Some(run) = self.run_of(delivery)
                && states.contains(&run["state"].as_str().unwrap_or(""))
            {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "delivery {delivery} not {states:?} within {DEPLOY_TIMEOUT:?}: {:?}\nserver log:\n{}",
                self.run_of(delivery),
                self.server.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The service's audit log entries.
    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(self.svc.state_dir().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The server's log as JSON lines; every line must be JSON.
    fn log_events(&self) -> Vec<Value> {
        self.server
            .log_text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}")))
            .collect()
    }

    /// Asserts that the secret appears nowhere the server or its deploys write: the
    /// server's log and state directory, the service's state file and audit log.
    #[track_caller]
    fn assert_secret_never_written(&self) {
        let log = self.server.log_text();
        assert!(!log.is_empty(), "the server logs something");
        assert!(
            !log.contains(&self.secret),
            "the secret is in the server log"
        );
        let serve_state = std::fs::read_dir(self.conf_dir.path().join(".cutover-serve"))
            .unwrap()
            .map(|e| e.unwrap().path());
        let service_state = ["audit.jsonl", "state.json"].map(|f| self.svc.state_dir().join(f));
        for path in serve_state.chain(service_state) {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!text.contains(&self.secret), "{}", path.display());
        }
    }
}

/// `X-Hub-Signature-256` for `body` under `secret`.
fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A GitHub push payload for `after` on `git_ref` of `repository`.
fn push_payload(repository: &str, git_ref: &str, after: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "ref": git_ref,
        "before": "0000000000000000000000000000000000000000",
        "after": after,
        "created": false,
        "deleted": false,
        "forced": false,
        "repository": { "full_name": repository, "name": "app" },
        "pusher": { "name": "dev", "email": "dev@example.com" },
        "sender": { "login": "dev" },
        "head_commit": { "id": after, "message": "change" },
        "commits": [],
    }))
    .unwrap()
}

/// Waits (bounded) until `/healthz` answers; panics with the log if the server exits.
fn wait_until_serving(server: &mut ServeProcess) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!(
                "cutover serve exited with {status} before serving:\n{}",
                server.log_text()
            );
        }
        if let Ok(r) = http_request(
            server.addr,
            "GET",
            "/healthz",
            &[],
            b"",
            Duration::from_secs(2),
        ) && r.status == 200
        {
            assert_eq!(r.body.trim(), "ok");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cutover serve did not answer on {} within 30 s:\n{}",
            server.addr,
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A delivery id unique in this test process.
fn delivery() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "d{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        unique_service("x")
    )
}

/// Prints (for the record) and checks a finished run's webhook-to-deploy latency.
#[track_caller]
fn report_latency(what: &str, run: &Value) {
    let latency = run["start_latency_ms"].as_u64().expect("start latency");
    let queued = run["queued_ms"].as_u64().expect("queue time");
    assert!(latency >= queued, "{run}");
    eprintln!(
        "serve latency ({what}): accepted -> deploy started {latency} ms, queued {queued} ms"
    );
}

fn short(sha: &str) -> &str {
    &sha[..12]
}

#[test]
fn signed_push_deploys_its_sha_and_everything_else_is_refused() {
    let f = Fixture::start("serve-push", "");
    let sha = f.push_version("v1");
    let body = push_payload(&f.name, "refs/heads/main", &sha);
    let id = delivery();

    // Refused before anything is queued: a wrong secret, a malformed signature, no
    // signature, a signature over another body, too large (declared or streamed).
    let signed = sign(&f.secret, &body);
    let post = |signature: Option<&str>, extra: &[(&str, &str)], payload: &[u8]| {
        let mut headers = vec![
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", id.as_str()),
        ];
        headers.extend(signature.map(|s| ("X-Hub-Signature-256", s)));
        headers.extend_from_slice(extra);
        f.post("/hooks/github", &headers, payload)
    };
    let tampered = push_payload(&f.name, "refs/heads/main", &"b".repeat(40));
    for (what, r) in [
        (
            "a wrong secret",
            post(Some(&sign("not the secret", &body)), &[], &body),
        ),
        ("a malformed signature", post(Some("sha256=zz"), &[], &body)),
        ("no signature", post(None, &[], &body)),
        (
            "a signature over another body",
            post(Some(&signed), &[], &tampered),
        ),
    ] {
        assert_eq!(r.status, 401, "{what}: {}", r.body);
    }
    // Declared too large: refused on the header, before the body is read.
    let too_long = (MAX_BODY + 1).to_string();
    let r = post(Some(&signed), &[("Content-Length", &too_long)], b"");
    assert_eq!(r.status, 413, "{}", r.body);
    // Streamed too large (chunked, no length): refused once the limit is passed.
    let mut chunked = format!("{:x}\r\n", MAX_BODY + 1).into_bytes();
    chunked.extend(std::iter::repeat_n(b' ', MAX_BODY + 1));
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let r = post(Some(&signed), &[("Transfer-Encoding", "chunked")], &chunked);
    assert_eq!(r.status, 413, "{}", r.body);
    // Unknown repository, correctly signed.
    let other = push_payload("team/unknown", "refs/heads/main", &sha);
    let r = f.github("push", &delivery(), &other);
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(r.body.contains("team/unknown"), "{}", r.body);
    // Ping and other events do not deploy.
    assert_eq!(
        f.github("ping", &delivery(), b"{\"zen\":\"ok\"}").status,
        200
    );
    assert_eq!(f.github("issues", &delivery(), b"{}").status, 202);
    assert!(f.deploys().is_empty(), "nothing was queued");
    assert!(f.audit().is_empty(), "nothing ran");

    // The real push, and the same body again.
    let r = f.github("push", &id, &body);
    assert_eq!(r.status, 202, "{}", r.body);
    let run = f.wait_state(&id, &["finished"]);
    assert_eq!(
        run["outcome"],
        "succeeded",
        "{run}\n{}",
        f.server.log_text()
    );
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["sha"], sha.as_str());
    assert_eq!(run["commit"], sha.as_str());
    assert_eq!(run["ref"], "refs/heads/main");
    assert_eq!(run["actor"], "dev");
    report_latency("push", &run);

    // Replays: the same delivery; the same body under a new delivery id (the header
    // is not signed); the same delivery id with another body.
    let mut changed: Value = serde_json::from_slice(&body).unwrap();
    changed["before"] = json!("1".repeat(40));
    let changed = serde_json::to_vec(&changed).unwrap();
    for (what, r) in [
        ("same delivery", f.github("push", &id, &body)),
        (
            "same body, new delivery id",
            f.github("push", &delivery(), &body),
        ),
        (
            "same delivery id, other body",
            f.github("push", &id, &changed),
        ),
    ] {
        assert_eq!(r.status, 200, "{what}: {}", r.body);
        assert!(r.body.contains("duplicate"), "{what}: {}", r.body);
    }

    // What ran: that sha, recorded in the audit log, live through nginx.
    let audit = f.audit();
    assert_eq!(audit.len(), 1, "{audit:?}");
    let entry = &audit[0];
    assert_eq!(entry["deploy_id"], run["deploy_id"]);
    assert_eq!(entry["git_sha"], sha.as_str());
    assert_eq!(entry["outcome"], "succeeded");
    assert_eq!(entry["actor"]["via"], "cutover-serve");
    assert_eq!(entry["actor"]["name"], "dev");
    let image = entry["image"].as_str().unwrap();
    assert!(
        image.starts_with(&format!("{}:{}", f.svc.name, short(&sha))),
        "{image}"
    );
    assert_eq!(f.svc.status()["live"]["image_ref"], image);
    assert_eq!(f.svc.get("/").body.trim(), "hello v1 from blue");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(f.deploys().len(), 1, "replays queued nothing");
    assert_eq!(f.audit().len(), 1, "replays ran nothing");

    // Logs: JSON lines that carry the delivery id; never the secret.
    let events = f.log_events();
    assert!(
        events
            .iter()
            .any(|e| e["fields"]["message"] == "deploy started"
                && e["span"]["delivery"] == id.as_str()),
        "{}",
        f.server.log_text()
    );
    f.assert_secret_never_written();
}

#[test]
fn gate_sees_a_pushed_tag_and_shutdown_waits_for_the_running_deploy() {
    let mut f = Fixture::start(
        "serve-tag",
        "\n[plugins.deploy-gate]\nsource = \"builtin:tag-pattern\"\nconfig = { pattern = \"cicd\" }\n",
    );
    let sha = f.push_version("v1");

    // A branch push (through the generic trigger): the commit has no tag yet.
    let trigger = serde_json::to_vec(&json!({
        "repository": f.name.to_lowercase(),
        "ref": "refs/heads/main",
        "sha": sha,
        "delivery": "trigger-1",
        "actor": "release-bot",
    }))
    .unwrap();
    let r = f.post(
        "/hooks/trigger",
        &[("X-Hub-Signature-256", &sign(&f.secret, &trigger))],
        &trigger,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let denied = f.wait_state("trigger-1", &["finished"]);
    assert_eq!(denied["outcome"], "denied", "{denied}");
    assert_eq!(denied["exit_code"], 3);
    let reason = denied["reason"].as_str().unwrap();
    assert!(reason.contains("HEAD has no tags"), "{reason}");
    report_latency("trigger, denied", &denied);

    // Tag the commit (annotated, as a release would be) and push the tag: GitHub
    // sends the tag object's sha as `after`.
    f.work.git(&["tag", "-a", "v1-cicd", "-m", "release v1"]);
    f.work.git(&["push", "-q", "origin", "v1-cicd"]);
    let tag_object = f.work.rev("v1-cicd");
    assert_ne!(tag_object, sha);
    let id = delivery();
    let r = f.push_event("refs/tags/v1-cicd", &tag_object, &id);
    assert_eq!(r.status, 202, "{}", r.body);
    f.wait_state(&id, &["running"]);

    // Stop the server while the deploy runs: it must finish, then the server exits 0.
    let code = f.server.terminate(DEPLOY_TIMEOUT);
    assert_eq!(code, Some(0), "{}", f.server.log_text());
    let audit = f.audit();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(audit[0]["outcome"], "denied");
    assert_eq!(audit[0]["git_sha"], sha.as_str());
    assert_eq!(audit[0]["actor"]["name"], "release-bot");
    assert_eq!(audit[1]["outcome"], "succeeded", "{}", f.server.log_text());
    assert_eq!(
        audit[1]["git_sha"],
        sha.as_str(),
        "the tag was peeled to its commit"
    );
    assert_eq!(f.svc.get("/").body.trim(), "hello v1 from blue");

    // The log shows the order: shutdown requested, then the deploy finished.
    let events = f.log_events();
    let at = |message: &str, delivery: Option<&str>| {
        events
            .iter()
            .position(|e| {
                e["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
                    && delivery.is_none_or(|d| e["span"]["delivery"] == d)
            })
            .unwrap_or_else(|| panic!("no `{message}` in the log:\n{}", f.server.log_text()))
    };
    assert!(at("shutting down", None) < at("deploy finished", Some(&id)));
    assert!(at("deploy finished", Some(&id)) < at("stopped", None));
    f.assert_secret_never_written();
}

/// Regression (issue 19, bug 4): at shutdown `cancel_pending` forgot a queued push's
/// delivery id but kept its body digest, so GitHub's "Redeliver" of it after a
/// restart answered `duplicate` and the push was lost; so was one whose fetch failed.
/// A push that did not run must be deliverable again; one that ran must never run
/// twice, also after a restart.
#[test]
fn deliveries_and_bodies_are_remembered_across_restarts() {
    let mut f = Fixture::start("serve-redeliver", "");
    // Holding the service's deploy lock keeps the first push's deploy waiting (the
    // worker busy), so the second push stays queued until the shutdown drops it.
    std::fs::create_dir_all(f.svc.state_dir()).unwrap();
    let held = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(f.svc.state_dir().join("lock"))
        .unwrap();
    held.lock().unwrap();

    let ran_sha = f.push_version("v1");
    let ran = delivery();
    let ran_body = push_payload(&f.name, "refs/heads/main", &ran_sha);
    let r = f.github("push", &ran, &ran_body);
    assert_eq!(r.status, 202, "{}", r.body);
    f.wait_state(&ran, &["running"]);
    let dropped_sha = f.push_version("v2");
    let dropped = delivery();
    let dropped_body = push_payload(&f.name, "refs/heads/main", &dropped_sha);
    let r = f.github("push", &dropped, &dropped_body);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(f.run_of(&dropped).unwrap()["state"], "queued");

    // Stop the server: the queued push is dropped; then the running one may finish.
    f.server.signal_stop();
    f.wait_log("queued push dropped at shutdown");
    drop(held);
    assert_eq!(
        f.server.wait_exit(DEPLOY_TIMEOUT),
        Some(0),
        "{}",
        f.server.log_text()
    );
    let audit = f.audit();
    assert_eq!(audit.len(), 1, "only the first push ran: {audit:?}");
    assert_eq!(audit[0]["outcome"], "succeeded", "{}", f.server.log_text());

    f.restart();
    // A push whose fetch finds no such commit did not run: accepted again.
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let missing_id = delivery();
    let missing_body = push_payload(&f.name, "refs/heads/main", missing);
    for attempt in 1..=2 {
        let r = f.github("push", &missing_id, &missing_body);
        assert_eq!(r.status, 202, "attempt {attempt}: {}", r.body);
        let run = f.wait_state(&missing_id, &["finished"]);
        assert_eq!(run["outcome"], "failed", "{run}");
        assert!(
            run["reason"].as_str().unwrap().contains("is not in"),
            "{run}"
        );
    }
    // The push that ran is a duplicate, by delivery id and by body.
    for id in [ran.clone(), delivery()] {
        let r = f.github("push", &id, &ran_body);
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(
            serde_json::from_str::<Value>(&r.body).unwrap()["status"],
            "duplicate"
        );
    }
    // The dropped one is redelivered (same delivery id, same body) and deploys.
    let r = f.github("push", &dropped, &dropped_body);
    assert_eq!(
        r.status, 202,
        "the dropped push is deliverable again: {}",
        r.body
    );
    let run = f.wait_state(&dropped, &["finished"]);
    assert_eq!(
        run["outcome"],
        "succeeded",
        "{run}\n{}",
        f.server.log_text()
    );
    assert_eq!(f.svc.get("/").body.trim().split(' ').nth(1), Some("v2"));
    // Having run, it is now a duplicate too.
    let r = f.github("push", &dropped, &dropped_body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(f.audit().len(), 2);
}

#[test]
fn burst_of_five_pushes_runs_one_queues_one_and_ends_on_the_newest() {
    let f = Fixture::start("serve-burst", "");
    let mut pushes = Vec::new();
    let mut worst = (0, 0);
    let mut check = |runs: &[Value]| {
        let count = |state: &str| runs.iter().filter(|r| r["state"] == state).count();
        let (running, queued) = (count("running"), count("queued"));
        assert!(running <= 1 && queued <= 1, "{runs:#?}");
        worst = (worst.0.max(running), worst.1.max(queued));
    };
    for k in 1..=5 {
        let sha = f.push_version(&format!("v{k}"));
        let id = delivery();
        let r = f.push_event("refs/heads/main", &sha, &id);
        assert_eq!(r.status, 202, "{}", r.body);
        check(&f.deploys());
        pushes.push((id, sha));
    }
    let deadline = Instant::now() + DEPLOY_TIMEOUT * 2;
    let runs = loop {
        let runs = f.deploys();
        check(&runs);
        if runs
            .iter()
            .all(|r| r["state"] == "finished" || r["state"] == "superseded")
        {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "the burst did not settle: {runs:#?}\n{}",
            f.server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(runs.len(), 5, "{runs:#?}");
    assert_eq!(worst, (1, 1), "a deploy ran while another push waited");
    let (last_id, last_sha) = pushes.last().unwrap();
    let last = runs
        .iter()
        .find(|r| r["delivery"] == last_id.as_str())
        .unwrap();
    assert_eq!(last["state"], "finished");
    assert_eq!(last["outcome"], "succeeded", "{last}");
    for run in &runs {
        if run["state"] == "finished" {
            report_latency("burst", run);
        }
        if run["state"] == "superseded" {
            assert_eq!(run["deploy_id"], Value::Null, "a superseded push never ran");
        }
    }
    let ran: Vec<&Value> = runs.iter().filter(|r| r["state"] == "finished").collect();
    assert!(
        ran.len() >= 2 && ran.len() < 5,
        "first and newest ran, some were skipped: {runs:#?}"
    );

    // The live version is the newest sha.
    assert_eq!(f.svc.get("/").body.trim().split(' ').nth(1), Some("v5"));
    let live = f.svc.status()["live"]["image_ref"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(live.contains(&format!(":{}", short(last_sha))), "{live}");
    let audit = f.audit();
    assert_eq!(audit.len(), ran.len());
    assert_eq!(audit.last().unwrap()["git_sha"], last_sha.as_str());

    // From the server's own log: deploys never overlapped.
    let mut running = 0;
    for event in f.log_events() {
        match event["fields"]["message"].as_str() {
            Some("deploy taken from the queue") => {
                running += 1;
                assert_eq!(running, 1, "two deploys at once:\n{}", f.server.log_text());
            }
            Some("deploy finished") => running -= 1,
            _ => {}
        }
    }
    f.assert_secret_never_written();
}

#[test]
fn example_serve_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/serve/cutover-serve.toml");
    let config = ServeConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.secret_env, "CUTOVER_WEBHOOK_SECRET");
    assert!(!config.repositories.is_empty());
    for repo in &config.repositories {
        assert!(repo.checkout.is_absolute(), "{}", repo.checkout.display());
    }
}

/// A server over a plain git checkout, for the HTTP side without Docker: a push it
/// queues fails at `git fetch` (the checkout has no remote), which these tests ignore.
struct Plain {
    server: ServeProcess,
    secret: String,
    name: String,
    /// The service the checkout's `cutover.toml` names (its views are served).
    service: String,
    sha: String,
    _repo: Repo,
    _conf_dir: tempfile::TempDir,
}

impl Plain {
    /// `extra` goes into the config's top level; `env` is added to the secret.
    fn start(extra: &str, env: &[(&str, &str)], open_files: Option<u32>) -> Plain {
        let repo = Repo::new();
        let service = unique_service("plain-svc");
        // Never deployed; it lets the server show the service's views.
        repo.commit(
            "cutover.toml",
            &format!(
                "service = \"{service}\"\n[image]\nref = \"busybox:latest\"\n[container]\nport = 8080\n\
                 [proxy]\nmode = \"managed\"\nlisten = \"127.0.0.1:1\"\n"
            ),
            "config",
        );
        let sha = repo.commit("README", "plain\n", "one");
        let conf_dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let conf = conf_dir.path().join("cutover-serve.toml");
        let name = format!("team/{}", unique_service("plain"));
        std::fs::write(
            &conf,
            format!(
                "listen = \"{addr}\"\nsecret_env = \"{SECRET_ENV}\"\n{extra}\n\
                 [[repository]]\nname = \"{name}\"\ncheckout = \"{checkout}\"\n",
                checkout = repo.path().display(),
            ),
        )
        .unwrap();
        let secret = format!("whsec-{}", unique_service("s"));
        let mut all = vec![(SECRET_ENV, secret.as_str())];
        all.extend_from_slice(env);
        let server = ServeProcess::start(&conf, addr, &all, open_files);
        Plain {
            server,
            secret,
            name,
            service,
            sha,
            _repo: repo,
            _conf_dir: conf_dir,
        }
    }

    /// Posts a signed push of the checkout's commit under a new delivery id.
    fn signed_push(&self, timeout: Duration) -> std::io::Result<(String, HttpResponse)> {
        let id = delivery();
        let body = push_payload(&self.name, "refs/heads/main", &self.sha);
        let signature = sign(&self.secret, &body);
        let headers = [
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", id.as_str()),
            ("X-Hub-Signature-256", signature.as_str()),
        ];
        http_request(
            self.server.addr,
            "POST",
            "/hooks/github",
            &headers,
            &body,
            timeout,
        )
        .map(|r| (id, r))
    }

    /// How many descriptors the server has open.
    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.server.child.id()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }
}

/// A request line and one header, never finished: what a slowloris client sends.
const HALF_SENT: &[u8] = b"POST /hooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\n";

/// Regression (bug 11): serve had no header-read timeout and no connection cap, so one
/// client holding thousands of half-sent requests used up its file descriptors and
/// every webhook failed until the client let go.
#[test]
fn half_sent_requests_neither_exhaust_descriptors_nor_keep_a_signed_webhook_out() {
    const OPEN_FILES: u32 = 256;
    const FLOOD: usize = 3000;
    let f = Plain::start("header_timeout = \"1s\"\n", &[], Some(OPEN_FILES));
    assert!(
        f.server
            .log_text()
            .contains("max_connections lowered to fit the open-file limit"),
        "the default cap (256) does not fit under {OPEN_FILES} descriptors:\n{}",
        f.server.log_text()
    );

    // One half-sent request is closed by the server once `header_timeout` passes.
    let mut lone = std::net::TcpStream::connect(f.server.addr).unwrap();
    lone.write_all(HALF_SENT).unwrap();
    lone.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let began = Instant::now();
    let mut buf = [0u8; 512];
    let closed = match lone.read(&mut buf) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    let waited = began.elapsed();
    assert!(
        closed && waited < Duration::from_secs(5),
        "a half-sent request was still open after {waited:?}"
    );

    // The flood: FLOOD connections each holding a half-sent request, opened as fast as
    // loopback allows, held until told to stop (or 60 s), then dropped.
    let stop = Arc::new(AtomicBool::new(false));
    let tried = Arc::new(AtomicUsize::new(0));
    let flood = {
        let (stop, tried, addr) = (stop.clone(), tried.clone(), f.server.addr);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut held = Vec::with_capacity(FLOOD);
            let mut refused = 0;
            for _ in 0..FLOOD {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(mut conn) => {
                        let _ = conn.write_all(HALF_SENT);
                        held.push(conn);
                    }
                    Err(_) => refused += 1,
                }
                tried.fetch_add(1, Ordering::Relaxed);
            }
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            (held.len(), refused)
        })
    };
    let mut peak_fds = 0;
    let wait_for = |count: usize, peak_fds: &mut usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while tried.load(Ordering::Relaxed) < count && Instant::now() < deadline {
            *peak_fds = (*peak_fds).max(f.open_fds());
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for(FLOOD / 3, &mut peak_fds);

    // A signed webhook in the middle of the flood is answered, promptly.
    let began = Instant::now();
    let pushed = f.signed_push(Duration::from_secs(10));
    let latency = began.elapsed();
    wait_for(FLOOD, &mut peak_fds);
    peak_fds = peak_fds.max(f.open_fds());
    stop.store(true, Ordering::Relaxed);
    let (held, refused) = flood.join().unwrap();
    eprintln!(
        "slowloris: {held} half-sent connections opened ({refused} refused); server fds peak \
         {peak_fds} of {OPEN_FILES}; signed webhook answered in {} ms",
        latency.as_millis()
    );
    let (id, r) = pushed.unwrap_or_else(|e| {
        panic!(
            "the signed webhook got no answer during the flood ({e}):\n{}",
            f.server.log_text()
        )
    });
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.body.contains("queued"), "{}", r.body);
    assert!(
        held >= FLOOD / 2,
        "the flood reached only {held} connections"
    );
    assert!(
        peak_fds < OPEN_FILES as usize,
        "the server reached its descriptor limit ({peak_fds})"
    );
    // Still healthy after the flood, and the push is on record.
    let r = http_request(f.server.addr, "GET", "/deploys", &[], b"", HTTP_TIMEOUT).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(&id), "{}", r.body);
    assert!(!f.server.log_text().contains(&f.secret));
}

#[test]
fn deploys_need_the_bearer_token_once_one_is_configured() {
    const TOKEN_ENV: &str = "CUTOVER_TEST_DEPLOYS_TOKEN";
    let token = format!("tok-{}", unique_service("t"));
    let f = Plain::start(
        &format!("deploys_token_env = \"{TOKEN_ENV}\"\n"),
        &[(TOKEN_ENV, &token)],
        None,
    );
    let get = |authorization: Option<&str>| {
        let headers: Vec<(&str, &str)> = authorization
            .map(|a| ("Authorization", a))
            .into_iter()
            .collect();
        http_request(
            f.server.addr,
            "GET",
            "/deploys",
            &headers,
            b"",
            HTTP_TIMEOUT,
        )
        .unwrap()
    };
    let wrong = format!("Bearer {token}x");
    for (what, r) in [
        ("no token", get(None)),
        ("a wrong token", get(Some(&wrong))),
        ("the token, not as a bearer", get(Some(&token))),
    ] {
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert!(!r.body.contains(&token), "{what}: {}", r.body);
    }
    let r = get(Some(&format!("Bearer {token}")));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("\"deploys\""), "{}", r.body);
    // Webhooks are unaffected: they carry their own signature.
    let (_, r) = f.signed_push(HTTP_TIMEOUT).unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let log = f.server.log_text();
    assert!(log.contains("refused GET /deploys"), "{log}");
    assert!(!log.contains(&token), "the token is in the server log");
    assert!(!log.contains(&f.secret), "the secret is in the server log");
}

/// The `Set-Cookie` of a response, as the `Cookie` header a browser would send back.
fn cookie_of(r: &HttpResponse) -> String {
    let set = r.header("set-cookie").expect("a Set-Cookie header");
    set.split(';').next().unwrap().trim().to_owned()
}

/// Regression-proofs the operator's views under `serve` (issue 14): one server, two
/// repositories — one deployed through a signed webhook, one from a terminal (a
/// success and a gate denial) — and a bearer token. `/` lists both services,
/// `/services/<service>/` is each one's dashboard page, its `events` stream carries a
/// running deploy, and `/metrics` counts each service apart. A client that is not on
/// loopback gets in with the token as a bearer header or, like a browser, by posting
/// it to `login` for a cookie; the token is in no log and no response.
#[test]
fn serve_shows_every_service_its_dashboard_and_metrics_and_lets_a_browser_in_with_the_token() {
    const TOKEN_ENV: &str = "CUTOVER_TEST_VIEWS_TOKEN";
    let token = format!("view-tok-{}", unique_service("t"));
    // The second repository: never pushed, deployed from its own directory.
    let other = Service::new("serve-views-b");
    let f = Fixture::start_with(
        "serve-views",
        "",
        [0, 0, 0, 0].into(),
        &format!(
            "deploys_token_env = \"{TOKEN_ENV}\"\n\n[[repository]]\nname = \"team/{}\"\ncheckout = \"{}\"\n",
            other.name,
            other.dir.path().display()
        ),
        &[(TOKEN_ENV, &token)],
    );
    let sha = f.push_version("v1");
    let id = delivery();
    assert_eq!(f.push_event("refs/heads/main", &sha, &id).status, 202);
    // `/deploys` needs the token now; the fixture's helper sends none.
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    let deadline = Instant::now() + DEPLOY_TIMEOUT;
    loop {
        let r = http_request(f.server.addr, "GET", "/deploys", &auth, b"", HTTP_TIMEOUT).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body.contains("\"finished\"") {
            assert!(r.body.contains("\"succeeded\""), "{}", r.body);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}\n{}",
            r.body,
            f.server.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let (a, b) = (f.svc.name.as_str(), other.name.as_str());
    let remote: SocketAddr = (
        crate::dashboard::non_loopback_address(),
        f.server.addr.port(),
    )
        .into();
    let get = |addr: SocketAddr, path: &str, headers: &[(&str, &str)]| {
        http_request(addr, "GET", path, headers, b"", HTTP_TIMEOUT)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    };
    let page_a = format!("/services/{a}/");
    let mut responses = Vec::new();

    // Without the token nobody reads, loopback included; a wrong one changes nothing.
    let wrong = format!("Bearer {token}x");
    for addr in [f.server.addr, remote] {
        for path in ["/", page_a.as_str(), "/metrics", "/deploys"] {
            for headers in [&[][..], &[("Authorization", wrong.as_str())][..]] {
                let r = get(addr, path, headers);
                assert_eq!(
                    r.status, 401,
                    "{path} from {addr} with {headers:?}: {}",
                    r.body
                );
                responses.push(r);
            }
        }
    }
    // The bearer header works from anywhere.
    let r = get(remote, "/metrics", &auth);
    assert_eq!(r.status, 200, "{}", r.body);

    // A browser that is not on loopback: the page answers 401 with a login form that
    // posts back to the root's `login` and returns to the page.
    let html = [("Accept", "text/html,application/xhtml+xml")];
    let r = get(remote, &page_a, &html);
    assert_eq!(r.status, 401);
    assert!(r.body.contains("action=\"../../login\""), "{}", r.body);
    assert!(
        r.body.contains(&format!("value=\"services/{a}/\"")),
        "{}",
        r.body
    );
    responses.push(r);
    let form = |token: &str| format!("next=services%2F{a}%2F&token={token}");
    let post = |body: &str| {
        http_request(
            remote,
            "POST",
            "/login",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            body.as_bytes(),
            HTTP_TIMEOUT,
        )
        .unwrap()
    };
    let r = post(&form(&format!("{token}x")));
    assert_eq!(r.status, 401, "a wrong token: {}", r.body);
    assert!(r.header("set-cookie").is_none());
    responses.push(r);
    let r = post(&form(&token));
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some(format!("services/{a}/").as_str())
    );
    let set_cookie = r.header("set-cookie").unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = cookie_of(&r);
    responses.push(r);
    let with_cookie = [("Cookie", cookie.as_str()), html[0]];

    // The service's page: the same dashboard `cutover dashboard` serves.
    let r = get(remote, &page_a, &with_cookie);
    assert_eq!(r.status, 200, "{}", r.body);
    let audit = f.audit();
    assert!(r.body.contains("data-live=\"blue\""), "{}", r.body);
    assert!(r.body.contains(&format!(
        "data-deploy=\"{}\"",
        audit[0]["deploy_id"].as_str().unwrap()
    )));
    assert!(r.body.contains("<rect class=\"step"), "step bars");
    assert!(
        r.body.contains("href=\"../../\""),
        "a link back to every service"
    );
    assert!(r.body.contains("EventSource('events')"));
    responses.push(r);
    let r = get(f.server.addr, &format!("/services/{a}"), &with_cookie);
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some(format!("{a}/").as_str()));
    assert_eq!(
        get(remote, "/services/no-such-service/", &with_cookie).status,
        404
    );
    // The cookie opens `/deploys` too: one rule for every view.
    assert_eq!(get(remote, "/deploys", &with_cookie).status, 200);

    // The second service's events stream, while it deploys from a terminal.
    let mut events = std::net::TcpStream::connect(remote).unwrap();
    write!(
        events,
        "GET /services/{b}/events HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let deploy = other.spawn_deploy("v1");
    let seen = crate::dashboard::read_events(events, "\"event\":\"finished\"", DEPLOY_TIMEOUT);
    deploy.wait().success();
    assert!(
        seen.iter().any(|e| e.contains("\"event\":\"started\"")),
        "{seen:#?}"
    );
    assert!(
        seen.last().unwrap().contains("\"live\":\"blue\""),
        "{seen:#?}"
    );
    other.append_config(crate::metrics::CICD_GATE);
    other.deploy("v2").code(3);

    // The index: both services, their live colour, linked to their pages.
    let r = get(remote, "/", &with_cookie);
    assert_eq!(r.status, 200, "{}", r.body);
    let repository_b = format!("team/{b}");
    for (service, repository) in [(a, f.name.as_str()), (b, repository_b.as_str())] {
        assert!(
            r.body.contains(&format!("href=\"services/{service}/\"")),
            "{}",
            r.body
        );
        assert!(
            r.body.contains(&format!(
                "data-repository=\"{repository}\" data-live=\"blue\""
            )),
            "{}",
            r.body
        );
    }
    assert!(
        r.body
            .contains("<span class=\"badge denied\">denied</span>"),
        "{}",
        r.body
    );
    responses.push(r);

    // One /metrics, each service under its own label.
    let r = get(remote, "/metrics", &with_cookie);
    assert_eq!(r.status, 200, "{}", r.body);
    let scrape = crate::metrics::parse(&r.body);
    let deploys = |service: &str, outcome: &str| {
        crate::metrics::sample(
            &scrape,
            "cutover_deploys_total",
            &[
                ("service", service),
                ("kind", "deploy"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(deploys(a, "succeeded"), 1.0, "{}", r.body);
    assert_eq!(deploys(b, "succeeded"), 1.0, "{}", r.body);
    assert_eq!(deploys(b, "denied"), 1.0, "{}", r.body);
    let denied_a = scrape.samples.iter().any(|s| {
        s.metric == "cutover_deploys_total"
            && s.labels.get("service") == Some(a)
            && s.labels.get("outcome") == Some("denied")
    });
    assert!(!denied_a, "the denial was the other service's");
    for service in [a, b] {
        let live = |color| {
            crate::metrics::sample(
                &scrape,
                "cutover_live",
                &[("service", service), ("color", color)],
            )
        };
        assert_eq!((live("blue"), live("green")), (1.0, 0.0), "{service}");
        let gate = crate::metrics::sample(
            &scrape,
            "cutover_step_duration_seconds_count",
            &[("service", service), ("step", "gate")],
        );
        assert_eq!(gate, if service == a { 1.0 } else { 2.0 }, "{service}");
    }
    responses.push(r);

    // The token: in no response and nowhere in the log, which records the refusals
    // and the login.
    for r in &responses {
        assert!(!r.body.contains(&token), "{}", r.body);
        assert!(
            r.headers.iter().all(|(_, v)| !v.contains(&token)),
            "{:?}",
            r.headers
        );
    }
    let log = f.server.log_text();
    assert!(!log.contains(&token), "the token is in the server log");
    assert!(log.contains("logged in with the token"), "{log}");
    assert!(log.contains("refused a login with a wrong token"), "{log}");
    assert!(
        log.contains("refused a read of the operator's views"),
        "{log}"
    );
    f.assert_secret_never_written();
}

/// Opens `GET path` on a connection of its own and returns it once the response head
/// has arrived (an event stream: the body never ends).
fn open_stream(addr: SocketAddr, path: &str, headers: &str) -> (std::net::TcpStream, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{headers}\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

/// Whether `stream` is still open: no EOF and no reset within a short wait.
fn still_open(stream: &mut std::net::TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) => {
                return matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

/// Regression (issue 19, bug 8): an open event stream counted as an idle connection,
/// so at the cap the server asked it to close gracefully (which never finishes),
/// blocked its accept loop for 2 s and then refused the webhook.
#[test]
fn open_event_streams_at_the_connection_cap_do_not_keep_a_webhook_out() {
    // A cap of 8 allows 2 event streams (a quarter).
    let f = Plain::start("max_connections = 8\n", &[], None);
    let path = format!("/services/{}/events", f.service);
    let mut streams: Vec<_> = (0..2)
        .map(|_| {
            let (stream, head) = open_stream(f.server.addr, &path, "");
            assert!(
                head.starts_with("HTTP/1.1 200"),
                "{head}\n{}",
                f.server.log_text()
            );
            stream
        })
        .collect();
    // The rest of the cap: connections with a half-sent request, newer than the streams.
    let _half: Vec<_> = (0..6)
        .map(|_| {
            let mut conn = std::net::TcpStream::connect(f.server.addr).unwrap();
            conn.write_all(HALF_SENT).unwrap();
            conn
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let began = Instant::now();
    let pushed = f.signed_push(Duration::from_secs(10));
    let latency = began.elapsed();
    let (_, r) = pushed.unwrap_or_else(|e| {
        panic!(
            "the webhook at the cap got no answer ({e}, after {latency:?}):\n{}",
            f.server.log_text()
        )
    });
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        latency < Duration::from_secs(1),
        "the webhook waited {latency:?} at the cap"
    );
    for (i, stream) in streams.iter_mut().enumerate() {
        assert!(
            still_open(stream),
            "event stream {i} was closed to make room"
        );
    }
}

/// Regression: `/services/%2F%2Fevil.example` answered `Location: //evil.example/`,
/// which a browser follows to another site. Only a served, plainly named service is
/// redirected (to its own page, relatively); anything else is 404 without a Location.
#[test]
fn services_path_never_redirects_to_another_site() {
    let f = Plain::start("", &[], None);
    for path in [
        "/services/%2F%2Fevil.example",
        "/services/%2F%2Fevil.example%2F",
        "/services/%5C%5Cevil.example",
        "/services/https:%2F%2Fevil.example",
        "/services/no-such-service",
    ] {
        let r = http_request(f.server.addr, "GET", path, &[], b"", HTTP_TIMEOUT).unwrap();
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert!(r.header("location").is_none(), "{path}: {:?}", r.headers);
    }
    let path = format!("/services/{}", f.service);
    let r = http_request(f.server.addr, "GET", &path, &[], b"", HTTP_TIMEOUT).unwrap();
    assert_eq!(r.status, 308, "{}", r.body);
    assert_eq!(
        r.header("location"),
        Some(format!("{}/", f.service).as_str())
    );
}

/// Polls `GET /deploys` on `addr` (bounded) until the run of `delivery` is finished.
#[track_caller]
fn wait_finished(server: &ServeProcess, delivery: &str) -> Value {
    let deadline = Instant::now() + HTTP_TIMEOUT;
    loop {
        let r = http_request(server.addr, "GET", "/deploys", &[], b"", HTTP_TIMEOUT).unwrap();
        let v: Value = serde_json::from_str(&r.body).unwrap();
        if let Some(run) = v["deploys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["delivery"] == delivery && r["state"] == "finished")
        {
            return run.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{delivery} not finished: {}\n{}",
            r.body,
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Regression (serve's trust boundary): the deploy config was read from the pushed
/// commit and every ref deployed, so whoever could push any branch chose the commands
/// the serve host runs (`proxy.test_command`, …). Now only `refs/heads/main` deploys
/// by default, and a pushed config that changes a pinned key is refused before it is
/// checked out, naming the key, and stays redeliverable. No Docker: a refused push
/// never reaches a deploy.
#[test]
fn push_changing_a_pinned_command_is_refused_before_checkout_and_other_branches_are_ignored() {
    let service = unique_service("pinned");
    let config = format!(
        "service = \"{service}\"\n[image]\nref = \"busybox:latest\"\n[container]\nport = 8080\n\
         [proxy]\nmode = \"managed\"\nlisten = \"127.0.0.1:1\"\n"
    );
    let origin = Repo::bare();
    let work_dir = tempfile::tempdir().unwrap();
    let work = Repo::clone_into(&origin, &work_dir.path().join("app"));
    let trusted_sha = work.commit("cutover.toml", &config, "trusted");
    work.git(&["push", "-q", "origin", "main"]);
    let checkout = Repo::clone_into(&origin, &work_dir.path().join("checkout"));
    let conf_dir = tempfile::tempdir().unwrap();
    // The trusted config lives on the serve host, outside the checkout.
    std::fs::write(conf_dir.path().join("trusted.toml"), &config).unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let conf = conf_dir.path().join("cutover-serve.toml");
    let name = format!("team/{}", unique_service("pinned"));
    std::fs::write(
        &conf,
        format!(
            "listen = \"{addr}\"\nsecret_env = \"{SECRET_ENV}\"\n[[repository]]\nname = \"{name}\"\n\
             checkout = \"{}\"\ntrusted_config = \"trusted.toml\"\n",
            checkout.path().display()
        ),
    )
    .unwrap();
    let secret = format!("whsec-{}", unique_service("s"));
    let server = ServeProcess::start(&conf, addr, &[(SECRET_ENV, secret.as_str())], None);
    let push = |git_ref: &str, sha: &str, id: &str| {
        let body = push_payload(&name, git_ref, sha);
        let headers = [
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", id),
            ("X-Hub-Signature-256", &sign(&secret, &body)),
        ];
        http_request(addr, "POST", "/hooks/github", &headers, &body, HTTP_TIMEOUT).unwrap()
    };

    // A pusher's command, where the serve host would run it at the proxy step.
    let marker = work_dir.path().join("pwned");
    let evil = config.replace(
        "[proxy]\n",
        &format!(
            "[proxy]\ntest_command = [\"sh\", \"-c\", \"touch {}\"]\n",
            marker.display()
        ),
    );
    work.git(&["checkout", "-q", "-b", "feature"]);
    let feature_sha = work.commit("cutover.toml", &evil, "on a branch");
    work.git(&["push", "-q", "origin", "feature"]);
    let r = push("refs/heads/feature", &feature_sha, &delivery());
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(
        r.body.contains("ignored"),
        "a branch is not deployed by default: {}",
        r.body
    );

    work.git(&["checkout", "-q", "main"]);
    let evil_sha = work.commit("cutover.toml", &evil, "on main");
    work.git(&["push", "-q", "origin", "main"]);
    let id = delivery();
    let r = push("refs/heads/main", &evil_sha, &id);
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.body.contains("queued"), "{}", r.body);
    let run = wait_finished(&server, &id);
    assert_eq!(run["outcome"], "failed", "{run}");
    let reason = run["reason"].as_str().unwrap();
    assert!(reason.contains("`proxy.test_command`"), "{reason}");
    assert!(reason.contains("trusted.toml"), "{reason}");
    assert!(run["deploy_id"].is_null(), "no deploy started: {run}");
    assert_eq!(
        checkout.rev("HEAD"),
        trusted_sha,
        "the refused commit was never checked out"
    );
    assert!(!marker.exists(), "the pusher's command ran");
    assert!(
        server
            .log_text()
            .contains("refused a push that changes a pinned key"),
        "{}",
        server.log_text()
    );
    // Refused, not run: GitHub's "Redeliver" is accepted again.
    let r = push("refs/heads/main", &evil_sha, &id);
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(r.body.contains("queued"), "a redelivery: {}", r.body);
}

/// Regression (DNS rebinding): with no token, `/deploys` and the views answered any
/// loopback client whatever host it named. Now a host that is neither loopback nor in
/// `allowed_hosts` gets 421; the signed webhook is not checked (its HMAC is).
#[test]
fn without_a_token_a_rebound_host_name_gets_421_but_a_signed_webhook_does_not() {
    use crate::dashboard::status_as_host;
    let f = Plain::start("allowed_hosts = [\"deploy.example\"]\n", &[], None);
    let addr = f.server.addr;
    let page = format!("/services/{}/", f.service);
    for path in ["/", "/deploys", "/metrics", page.as_str()] {
        assert_eq!(
            status_as_host(addr, "GET", path, "evil.example", &[], b""),
            421,
            "{path}"
        );
        // A service page of a never-deployed service may answer 503: not refused.
        let local = status_as_host(
            addr,
            "GET",
            path,
            &format!("localhost:{}", addr.port()),
            &[],
            b"",
        );
        assert!(
            local == 200 || (path == page && local == 503),
            "{path}: {local}"
        );
    }
    assert_eq!(
        status_as_host(addr, "GET", "/deploys", "deploy.example", &[], b""),
        200
    );
    let body = push_payload(&f.name, "refs/heads/main", &f.sha);
    let signature = sign(&f.secret, &body);
    let status = status_as_host(
        addr,
        "POST",
        "/hooks/github",
        "evil.example",
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", &delivery()),
            ("X-Hub-Signature-256", &signature),
        ],
        &body,
    );
    assert_eq!(status, 202, "{}", f.server.log_text());
}

/// Regression (sessions): the login cookie was a fixed digest of the token, the same
/// for every login, valid until the token changed, and wrong tokens could be tried
/// without limit. Now each login gets its own signed, expiring session, `logout` ends
/// it, and a sixth wrong token within a minute from one address gets 429.
#[test]
fn a_login_session_ends_at_logout_and_wrong_tokens_are_limited() {
    const TOKEN_ENV: &str = "CUTOVER_TEST_SESSION_TOKEN";
    let token = format!("tok-{}", unique_service("t"));
    let f = Plain::start(
        &format!("deploys_token_env = \"{TOKEN_ENV}\"\n"),
        &[(TOKEN_ENV, &token)],
        None,
    );
    let addr = f.server.addr;
    let post = |path: &str, body: &str, cookie: Option<&str>| {
        let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
        headers.extend(cookie.map(|c| ("Cookie", c)));
        http_request(addr, "POST", path, &headers, body.as_bytes(), HTTP_TIMEOUT).unwrap()
    };
    let deploys = |cookie: &str| {
        http_request(
            addr,
            "GET",
            "/deploys",
            &[("Cookie", cookie)],
            b"",
            HTTP_TIMEOUT,
        )
        .unwrap()
        .status
    };
    let login = |token: &str| post("/login", &format!("token={token}&next="), None);

    let r = login(&token);
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(
        r.header("set-cookie").unwrap().contains("Max-Age=43200"),
        "{:?}",
        r.headers
    );
    let first = cookie_of(&r);
    let second = cookie_of(&login(&token));
    assert_ne!(first, second, "each login is its own session");
    assert!(!first.contains(&token));
    assert_eq!(deploys(&first), 200);
    assert_eq!(deploys(&second), 200);

    let r = post("/logout", "", Some(&first));
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.header("location"), Some("login"));
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(deploys(&first), 401, "a logged-out session is revoked");
    assert_eq!(deploys(&second), 200, "the other login goes on");

    for _ in 0..5 {
        assert_eq!(login(&format!("{token}x")).status, 401);
    }
    let r = login(&format!("{token}x"));
    assert_eq!(r.status, 429, "{}", r.body);
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(
        login(&token).status,
        429,
        "the right token waits too: the limit is per address"
    );
    assert!(!f.server.log_text().contains(&token));
}
