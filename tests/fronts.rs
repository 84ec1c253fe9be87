//! Several nginx front ends (`[[proxy.extra]]`) switched as one: the managed nginx
//! plus external ones the tests start, real deploys, real HTTP on loopback.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cutover::cli::exit;

use crate::support::http_get;
use crate::support::nginx::ExternalNginx;
use crate::support::service::Service;

/// `[[proxy.extra]]` for `nginx`, with `test` and `reload` as its commands.
fn extra(name: &str, nginx: &ExternalNginx, test: &[String], reload: &[String]) -> String {
    format!(
        "\n[[proxy.extra]]\nname = \"{name}\"\nconfig_dir = {:?}\npid_file = {:?}\n\
         test_command = {test:?}\nreload_command = {reload:?}\nverify_url = \"http://{}/\"\n",
        nginx.conf_d,
        nginx.pid_file(),
        nginx.listen,
    )
}

/// `extra` with the commands that really test and reload `nginx`.
fn working(name: &str, nginx: &ExternalNginx) -> String {
    extra(
        name,
        nginx,
        &nginx.argv(&["-t", "-q"]),
        &nginx.argv(&["-s", "reload"]),
    )
}

/// A command that prints `message` and fails, as a refusing nginx (or ssh) would.
fn refusing(message: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("echo '{message}' >&2; exit 1"),
    ]
}

/// `GET /` through `nginx`: (body, colour header).
#[track_caller]
fn through(nginx: &ExternalNginx) -> (String, Option<String>) {
    let r = http_get(nginx.listen, "/", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("GET / through {}: {e}", nginx.listen));
    assert_eq!(r.status, 200, "{}", r.body);
    let color = r.header("x-hello-color").map(str::to_owned);
    (r.body.trim().to_owned(), color)
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("conf.d exists")
        .map(|e| {
            let e = e.expect("dir entry");
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).expect("read file"))
        })
        .collect()
}

#[test]
fn a_deploy_switches_every_front_end_and_serves_through_each() {
    let svc = Service::new("fronts-ok");
    let lb2 = ExternalNginx::start(([127, 0, 0, 1], svc.blue).into());
    svc.append_config(&working("lb2", &lb2));

    let out = svc.deploy("v1").success();
    assert!(out.stderr.contains("proxy serves blue"), "{}", out.stderr);
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    assert_eq!(
        through(&lb2),
        ("hello v1 from blue".to_owned(), Some("blue".to_owned()))
    );

    svc.deploy("v2").success();
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");
    assert_eq!(
        through(&lb2),
        ("hello v2 from green".to_owned(), Some("green".to_owned()))
    );
    // Both front ends were given the same rendered files.
    assert_eq!(files(&lb2.conf_d), svc.proxy_files());
    let st = svc.status();
    assert_eq!(st["live"]["color"], "green");
    assert!(st["problems"].as_array().unwrap().is_empty(), "{st:#}");
}

#[test]
fn a_front_end_that_refuses_rolls_every_front_end_back() {
    let svc = Service::new("fronts-fail");
    let lb2 = ExternalNginx::start(([127, 0, 0, 1], svc.blue).into());
    let lb3 = ExternalNginx::start(([127, 0, 0, 1], svc.blue).into());
    svc.append_config(&working("lb2", &lb2));
    svc.append_config(&working("lb3", &lb3));
    svc.deploy("v1").success();
    let serving = ("hello v1 from blue".to_owned(), Some("blue".to_owned()));
    assert_eq!(through(&lb3), serving);

    let fronts = [&lb2, &lb3];
    let before = svc.baseline();
    let before_files: Vec<_> = fronts.iter().map(|n| files(&n.conf_d)).collect();
    let assert_all_unchanged = |outcomes: &[&str]| {
        svc.assert_unchanged(&before, outcomes);
        for (nginx, files_before) in fronts.iter().zip(&before_files) {
            assert_eq!(through(nginx), serving);
            assert!(
                &files(&nginx.conf_d) == files_before,
                "{}'s files must be byte-identical",
                nginx.conf_d.display()
            );
        }
    };

    // lb3's config test fails after lb2 and the managed nginx passed theirs: every
    // front end gets its files back and none is reloaded.
    let good = working("lb3", &lb3);
    let reload = lb3.argv(&["-s", "reload"]);
    let bad_test = extra("lb3", &lb3, &refusing("lb3: nginx -t failed"), &reload);
    svc.edit_config(|t| t.replace(&good, &bad_test));
    deploy_fails_naming_lb3(&svc, "lb3: nginx -t failed");
    assert_all_unchanged(&["failed"]);

    // lb3's reload fails after the managed nginx and lb2 switched to green: all are
    // restored and reloaded, and the deploy is rolled back.
    let test = lb3.argv(&["-t", "-q"]);
    let bad_reload = extra("lb3", &lb3, &test, &refusing("lb3: reload refused"));
    svc.edit_config(|t| t.replace(&bad_test, &bad_reload));
    deploy_fails_naming_lb3(&svc, "lb3: reload refused");
    assert_all_unchanged(&["rolled-back"]);

    // Every front end switched, but the target cannot be verified through lb3 (its
    // URL reaches nothing): all are restored and reloaded, and the deploy rolled back.
    let nothing = format!("http://127.0.0.1:{}/", crate::support::free_port());
    svc.edit_config(|t| {
        t.replace(&bad_reload, &good)
            .replace(&format!("http://{}/", lb3.listen), &nothing)
            .replace("[verify]\n", "[verify]\ntimeout = \"1s\"\n")
    });
    deploy_fails_naming_lb3(&svc, &nothing);
    assert_all_unchanged(&["rolled-back"]);
}

/// `[[proxy.extra]]` for `nginx` (started with a small tmpfs `conf.d`) whose config
/// test passes and then fills that tmpfs, so putting its previous files back fails.
fn filling_up(name: &str, nginx: &ExternalNginx) -> String {
    let test = nginx.argv(&["-t", "-q"]).join(" ");
    let filler = nginx.conf_d.join("zz-filler");
    let script = format!(
        "{test} && {{ head -c 1048576 /dev/zero > {} 2>/dev/null; true; }}",
        filler.display()
    );
    extra(
        name,
        nginx,
        &["sh".into(), "-c".into(), script],
        &nginx.argv(&["-s", "reload"]),
    )
}

#[test]
fn a_front_end_that_cannot_be_restored_does_not_stop_the_others_being_restored() {
    let svc = Service::new("fronts-restore");
    let blue = ([127, 0, 0, 1], svc.blue).into();
    // In order: the managed nginx, lb2 and lb4 (whose disks fill up once their config
    // test passed), lb3 between them, and lb5, whose config test fails.
    let lb2 = ExternalNginx::start_with(blue, Some("64k"));
    let lb3 = ExternalNginx::start(blue);
    let lb4 = ExternalNginx::start_with(blue, Some("64k"));
    let lb5 = ExternalNginx::start(blue);
    for (name, nginx) in [("lb2", &lb2), ("lb3", &lb3), ("lb4", &lb4), ("lb5", &lb5)] {
        svc.append_config(&working(name, nginx));
    }
    svc.deploy("v1").success();
    let managed_before = svc.proxy_files();
    let lb3_before = files(&lb3.conf_d);

    svc.edit_config(|t| {
        let reload = lb5.argv(&["-s", "reload"]);
        t.replace(&working("lb2", &lb2), &filling_up("lb2", &lb2))
            .replace(&working("lb4", &lb4), &filling_up("lb4", &lb4))
            .replace(
                &working("lb5", &lb5),
                &extra("lb5", &lb5, &refusing("lb5: nginx -t failed"), &reload),
            )
    });
    let out = svc.deploy("v2");
    for nginx in [&lb2, &lb4] {
        std::fs::remove_file(nginx.conf_d.join("zz-filler")).expect("the filler was written");
    }
    // The machine (a full disk) kept two front ends from being restored.
    let out = out.code(exit::ENVIRONMENT.into());
    // lb3 comes after lb2, whose restore failed: it got its files back all the same.
    assert!(
        files(&lb3.conf_d) == lb3_before,
        "lb3's files must be byte-identical"
    );
    assert!(
        svc.proxy_files() == managed_before,
        "the managed nginx's files are back"
    );
    for part in [
        "lb5: nginx -t failed",
        "putting the previous proxy files back failed too",
        "front end `lb2`",
        "front end `lb4`",
        "No space left on device",
    ] {
        assert!(out.stderr.contains(part), "{part:?} in:\n{}", out.stderr);
    }
    for nginx in [&lb3, &lb5] {
        assert_eq!(
            through(nginx),
            ("hello v1 from blue".to_owned(), Some("blue".to_owned()))
        );
    }
}

/// A v2 deploy exits 4 with an error that names lb3 and shows what it printed.
#[track_caller]
fn deploy_fails_naming_lb3(svc: &Service, printed: &str) {
    let out = svc.deploy("v2").code(4);
    assert!(
        out.stderr.contains("front end `lb3`") && out.stderr.contains(printed),
        "{}",
        out.stderr
    );
}

#[test]
fn recover_after_a_kill_restores_every_front_end_from_the_journal() {
    let svc = Service::new("fronts-crash");
    let lb2 = ExternalNginx::start(([127, 0, 0, 1], svc.blue).into());
    svc.append_config(&working("lb2", &lb2));
    svc.deploy("v1").success();
    let before = svc.proxy_files();
    let lb2_before = files(&lb2.conf_d);

    // Killed after both front ends switched to green, before verifying.
    let out = svc.cutover_env(
        &["deploy", "--build-arg", "VERSION=v2"],
        &[("CUTOVER_FAULT", "after:switch")],
    );
    assert_eq!(out.code, -1, "killed by a signal\n{}", out.stderr);
    assert_eq!(through(&lb2).1.as_deref(), Some("green"));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(svc.state_file()).expect("state file"))
            .expect("state JSON");
    let mut fronts: Vec<_> = state["in_progress"]["saved_files"]
        .as_array()
        .expect("the journal kept the files")
        .iter()
        .map(|f| f["front"].as_str().unwrap_or("proxy"))
        .collect();
    // Each front end's files (the include and the pooled upstream block), in order.
    fronts.dedup();
    assert_eq!(fronts, ["proxy", "lb2"], "{state:#}");

    // The target dies before the next run, so recovery must switch back: every
    // front end gets its own saved files and is reloaded.
    let green = format!("{}-green", svc.name);
    let rm = std::process::Command::new("docker")
        .args(["rm", "-f", &green])
        .output()
        .expect("docker runs");
    assert!(rm.status.success(), "{rm:?}");
    let out = svc.cutover(&["recover"]).success();
    assert!(
        out.stderr.contains("restored the previous proxy config"),
        "{}",
        out.stderr
    );
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    assert_eq!(
        through(&lb2),
        ("hello v1 from blue".to_owned(), Some("blue".to_owned()))
    );
    assert!(
        svc.proxy_files() == before,
        "the managed nginx's files are back"
    );
    assert!(files(&lb2.conf_d) == lb2_before, "lb2's files are back");
}
