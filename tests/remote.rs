//! Remote engines for real: a full deploy through `ssh://` (sshd from Debian on
//! loopback, a key and known_hosts file the test makes, the machine's engine behind it
//! through the remote's `docker system dial-stdio`), and `status` plus a deploy through
//! `tcp://` with TLS (a private dockerd with `--tlsverify` in a network namespace, a CA
//! and certificates the test makes). Each also shows what a bad key or CA reports.

use std::process::Command;

use serde_json::Value;

use crate::support::remote::{PrivateDockerd, TestSshd};
use crate::support::service::{Output, Service};
use crate::support::{DockerCleanup, build_hello_image};

/// The exit code of an environment problem (the engine unreachable).
const ENVIRONMENT: i32 = 7;

fn json(out: &Output) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("JSON: {e}\n{}", out.stdout))
}

#[test]
fn ssh_engine_runs_a_full_deploy_and_a_switch() {
    let sshd = TestSshd::start();
    let svc = Service::new("e2e-ssh");
    let host = sshd.docker_host();
    let path = sshd.path_env(true);
    let env = [("DOCKER_HOST", host.as_str()), ("PATH", path.as_str())];
    let deploy = |version: &str| {
        svc.cutover_env(
            &["deploy", "--build-arg", &format!("VERSION={version}")],
            &env,
        )
    };

    // The image is built, and the colour started, stopped and removed, through ssh.
    deploy("v1").success();
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    deploy("v2").success();
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");
    let st = json(
        &svc.cutover_env(&["status", "--output", "json"], &env)
            .success(),
    );
    assert_eq!(st["live"]["color"], "green", "{st:#}");
    assert!(st["problems"].as_array().unwrap().is_empty(), "{st:#}");
    let log = sshd.log();
    assert!(
        log.contains("Accepted publickey for root from 127.0.0.1"),
        "the deploys must have gone through the test's sshd: {log}"
    );

    // A host key the client does not know, with a user config that would accept
    // new keys: refused all the same (never added), and the error names the host
    // and what to check; what serves is untouched.
    let untrusted = sshd.path_env(false);
    let out = svc
        .cutover_env(
            &["deploy", "--build-arg", "VERSION=v3"],
            &[("DOCKER_HOST", host.as_str()), ("PATH", untrusted.as_str())],
        )
        .code(ENVIRONMENT);
    for needle in [
        host.as_str(),
        "Host key verification failed",
        "known_hosts",
        "docker CLI",
    ] {
        assert!(out.stderr.contains(needle), "{needle:?}: {}", out.stderr);
    }
    assert_eq!(
        sshd.untrusted_known_hosts(),
        "",
        "no host key may be recorded"
    );
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");
}

#[test]
fn tls_engine_shows_status_and_deploys_and_refuses_an_unknown_ca() {
    let engine = PrivateDockerd::start();
    let svc = Service::new("e2e-tlsengine");
    let _machine_images = DockerCleanup::new(&svc.name);
    let tag = format!("{}:v1", svc.name);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let docker = cutover::docker::Docker::connect(&Default::default())
            .await
            .expect("the machine's engine");
        build_hello_image(&docker, &svc.name, "v1").await
    });
    engine.load_image(&tag);
    engine.certs.write_client(&svc.base.join("certs"));
    let addr = engine.addr;
    let engine_table = format!(
        "\n[engine]\nhost = \"{}\"\ntls = {{ ca = \"certs/ca.pem\", cert = \"certs/cert.pem\", key = \"certs/key.pem\" }}\n",
        engine.docker_host()
    );
    svc.edit_config(|text| {
        let text: String = text
            .lines()
            .map(|line| match line {
                l if l.starts_with("build = ") => format!("ref = \"{tag}\"\n"),
                // The colours publish on the namespace's address, where nginx reaches them.
                "[blue]" | "[green]" => format!("{line}\nhost_ip = \"{addr}\"\n"),
                l => format!("{l}\n"),
            })
            .collect();
        text + &engine_table
    });

    let st = json(&svc.cutover(&["status", "--output", "json"]).success());
    assert!(st["live"].is_null(), "{st:#}");
    svc.cutover(&["deploy"]).success();
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");

    // The colour runs in the private engine, not in the machine's.
    let label = format!("label=cutover.service={}", svc.name);
    let ps = |cmd: &mut Command| {
        let out = cmd
            .args(["ps", "-q", "--filter", &label])
            .output()
            .expect("docker ps");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(!ps(&mut engine.docker(&[])).is_empty());
    assert!(ps(&mut Command::new("docker")).is_empty());

    // The docker CLI's variables instead of the config's table.
    let certs = svc.base.join("certs");
    let env_host = engine.docker_host();
    let env = [
        ("DOCKER_HOST", env_host.as_str()),
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_CERT_PATH", certs.to_str().unwrap()),
    ];
    svc.edit_config(|text| text.replace(&engine_table, ""));
    let st = json(
        &svc.cutover_env(&["status", "--output", "json"], &env)
            .success(),
    );
    assert_eq!(st["live"]["color"], "blue", "{st:#}");

    // A CA that did not sign the engine's certificate: refused, naming the host and
    // the certificate files to check.
    let other = crate::support::remote::TestCerts::new(addr);
    std::fs::write(certs.join("ca.pem"), other.ca).unwrap();
    let out = svc.cutover_env(&["status"], &env).code(ENVIRONMENT);
    for needle in [
        env_host.as_str(),
        "with TLS",
        "invalid peer certificate",
        "--tlsverify",
    ] {
        assert!(out.stderr.contains(needle), "{needle:?}: {}", out.stderr);
    }
    // Put the CA back so the service's teardown reaches the engine.
    engine.certs.write_client(&certs);
    svc.append_config(&engine_table);
}
