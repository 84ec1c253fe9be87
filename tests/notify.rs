//! `[[notify]]` end to end: real deploys (Docker, managed nginx) posting to webhook
//! receivers this test runs on loopback — one that answers 200, one that answers
//! 500 and one that never answers. Each selected outcome is one POST with the right
//! body, unselected ones send nothing, a receiver that fails never changes the exit
//! code, and the webhook URLs appear in no output and no file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::service::{Output, Service};

/// How a receiver answers.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    ServerError,
    /// Reads the request and holds the connection without answering.
    Hang,
}

/// A webhook receiver on loopback, keeping every request body it got.
struct Receiver {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start(answer: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        // Detached: it lives as long as the test binary; every connection gets its
        // own thread so a hanging answer does not block the retries.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || serve(stream, answer, &kept));
            }
        });
        Receiver { addr, bodies }
    }

    /// The URL a deploy gets through the environment; its path is a marker the test
    /// looks for in every output and file.
    fn url(&self, marker: &str) -> String {
        format!("http://{}/hooks/{marker}", self.addr)
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, answer: Answer, kept: &Mutex<Vec<Value>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(&stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    kept.lock()
        .unwrap()
        .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
    let status = match answer {
        Answer::Ok => "200 OK",
        Answer::ServerError => "500 Internal Server Error",
        Answer::Hang => {
            std::thread::sleep(Duration::from_secs(5));
            return;
        }
    };
    let _ = (&stream).write_all(
        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
    );
}

/// Every file under `dir`, recursively, as bytes.
fn files_under(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
}

fn warnings(out: &Output) -> Vec<&str> {
    out.stderr
        .lines()
        .filter(|l| l.contains("was not delivered"))
        .collect()
}

#[test]
fn each_selected_outcome_is_posted_once_and_a_failing_webhook_changes_nothing() {
    let svc = Service::new("notify");
    let ok = Receiver::start(Answer::Ok);
    let failing = Receiver::start(Answer::ServerError);
    let hanging = Receiver::start(Answer::Hang);
    let markers = ["s3cret-ok-7f2a", "s3cret-500-91bc", "s3cret-hang-c0de"];
    let urls = [
        ok.url(markers[0]),
        failing.url(markers[1]),
        hanging.url(markers[2]),
    ];
    let env = [
        ("HOOK_OK", urls[0].as_str()),
        ("HOOK_500", urls[1].as_str()),
        ("HOOK_HANG", urls[2].as_str()),
    ];
    svc.append_config(
        r#"
[[notify]]
url_env = "HOOK_OK"
format = "json"
on = ["denied", "failed"]

[[notify]]
url_env = "HOOK_500"
timeout = "300ms"

[[notify]]
url_env = "HOOK_HANG"
format = "json"
on = ["succeeded"]
timeout = "300ms"
"#,
    );
    let deploy = |version: &str| {
        svc.cutover_env(
            &["deploy", "--build-arg", &format!("VERSION={version}")],
            &env,
        )
    };
    let mut outputs = Vec::new();

    // Succeeded: only the hanging receiver asked for it; three attempts, one
    // warning, exit 0.
    let out = deploy("v1").success();
    assert_eq!(hanging.bodies().len(), 3, "retried up to three attempts");
    assert_eq!(hanging.bodies()[0]["outcome"], "succeeded");
    assert_eq!(hanging.bodies()[0]["service"], svc.name.as_str());
    assert!(ok.bodies().is_empty() && failing.bodies().is_empty());
    let warned = warnings(&out);
    assert_eq!(warned.len(), 1, "{}", out.stderr);
    assert!(
        warned[0].contains("$HOOK_HANG") && warned[0].contains("no answer within 300ms"),
        "{}",
        warned[0]
    );
    outputs.push(out);

    // Denied: the json receiver gets the audit entry with the gate's reason.
    let gate = crate::metrics::CICD_GATE;
    svc.append_config(gate);
    let out = deploy("v2").code(3);
    assert!(warnings(&out).is_empty(), "{}", out.stderr);
    let got = ok.bodies();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["service"], svc.name.as_str());
    assert_eq!(got[0]["outcome"], "denied");
    assert_eq!(got[0]["kind"], "deploy");
    assert!(
        got[0]["reason"].as_str().unwrap().contains("cicd"),
        "{}",
        got[0]
    );
    assert_eq!(got[0]["steps"][0]["step"], "gate");
    outputs.push(out);

    // Failed: the json receiver gets it, and the 500 receiver (slack format, the
    // default outcomes) is tried three times; the exit code is still 4.
    svc.edit_config(|text| text.replace(gate, ""));
    svc.set_container_env("HELLO_HEALTH", "fail");
    let out = deploy("v3").code(4);
    let got = ok.bodies();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1]["outcome"], "failed");
    assert_eq!(got[1]["target"], "green");
    assert!(got[1]["reason"].as_str().unwrap().contains("health"));
    let slack = failing.bodies();
    assert_eq!(slack.len(), 3, "{slack:?}");
    let text = slack[0]["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("deploy of *{}* failed", svc.name)),
        "{text}"
    );
    let warned = warnings(&out);
    assert_eq!(warned.len(), 1, "{}", out.stderr);
    assert!(warned[0].contains("HTTP 500"), "{}", warned[0]);
    assert_eq!(hanging.bodies().len(), 3, "nothing more for succeeded-only");
    outputs.push(out);

    // The URLs are secrets: in no output, no state, audit or nginx file.
    let mut files = Vec::new();
    files_under(svc.dir.path(), &mut files);
    for marker in markers {
        for out in &outputs {
            assert!(!out.stdout.contains(marker) && !out.stderr.contains(marker));
        }
        for (path, bytes) in &files {
            assert!(
                !String::from_utf8_lossy(bytes).contains(marker),
                "{path} holds a webhook URL"
            );
        }
    }
    let audit = std::fs::read_to_string(svc.state_dir().join("audit.jsonl")).unwrap();
    assert_eq!(audit.lines().count(), 3, "the outcome was recorded first");
}

/// A deploy whose verification through nginx fails after the switch is rolled back
/// (the previous proxy files restored and reloaded, blue serving again): exactly one
/// POST to each webhook that selected `rolled-back` — the json receiver explicitly,
/// the slack one by the default outcomes — and none to a webhook that did not.
#[test]
fn a_rolled_back_deploy_is_posted_once_to_the_webhooks_that_selected_it() {
    let svc = Service::new("notify-rb");
    let selected = Receiver::start(Answer::Ok);
    let by_default = Receiver::start(Answer::Ok);
    let unselected = Receiver::start(Answer::Ok);
    let urls = [
        selected.url("rb-selected"),
        by_default.url("rb-default"),
        unselected.url("rb-unselected"),
    ];
    let env = [
        ("HOOK_RB", urls[0].as_str()),
        ("HOOK_DEFAULT", urls[1].as_str()),
        ("HOOK_OTHERS", urls[2].as_str()),
    ];
    svc.append_config(
        r#"
[[notify]]
url_env = "HOOK_RB"
format = "json"
on = ["rolled-back"]

[[notify]]
url_env = "HOOK_DEFAULT"

[[notify]]
url_env = "HOOK_OTHERS"
format = "json"
on = ["succeeded", "failed", "denied", "interrupted"]
"#,
    );
    let deploy = |version: &str| {
        svc.cutover_env(
            &["deploy", "--build-arg", &format!("VERSION={version}")],
            &env,
        )
    };
    deploy("v1").success();
    assert_eq!(unselected.bodies().len(), 1, "succeeded was selected there");
    assert!(selected.bodies().is_empty() && by_default.bodies().is_empty());

    // Green starts and is healthy, traffic switches to it, and the verification
    // through nginx never sees the body it expects: the switch is undone.
    svc.edit_config(|text| {
        text.replace(
            "[verify]\n",
            "[verify]\nexpect_body = \"a body hello never answers\"\ntimeout = \"2s\"\n",
        )
    });
    let out = deploy("v2").code(4);
    assert!(warnings(&out).is_empty(), "{}", out.stderr);
    assert_eq!(
        svc.get("/").body.trim(),
        "hello v1 from blue",
        "rolled back"
    );

    let got = selected.bodies();
    assert_eq!(got.len(), 1, "{got:?}");
    let body = &got[0];
    assert_eq!(body["service"], svc.name.as_str());
    assert_eq!(body["kind"], "deploy");
    assert_eq!(body["outcome"], "rolled-back");
    assert_eq!(body["target"], "green");
    assert!(
        body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("did not serve green")),
        "{body}"
    );
    let steps: Vec<&str> = body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert!(
        steps.ends_with(&["switch", "verify"]),
        "ended at the verification after the switch: {steps:?}"
    );
    let audit = std::fs::read_to_string(svc.state_dir().join("audit.jsonl")).unwrap();
    let last: Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!(body["deploy_id"], last["deploy_id"], "the recorded outcome");

    let slack = by_default.bodies();
    assert_eq!(slack.len(), 1, "{slack:?}");
    let text = slack[0]["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("deploy of *{}* rolled-back", svc.name)),
        "{text}"
    );
    assert_eq!(
        unselected.bodies().len(),
        1,
        "nothing for rolled-back there"
    );
}
