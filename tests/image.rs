//! The image of cutover itself (`examples/ci/image`): the static musl binary FROM
//! scratch, run as a CI job would `docker run` it, against this machine's engine
//! through the mounted socket. `.ci/run` builds the image with the recipe's
//! `build.sh` and then runs these (they are ignored in the plain test command, which
//! does not build it).

use std::process::Command;
use std::time::Instant;

use crate::support::service::Service;

/// The image under test: `$CUTOVER_IMAGE`, else what build.sh tags.
fn image() -> String {
    std::env::var("CUTOVER_IMAGE").unwrap_or_else(|_| "cutover:latest".to_owned())
}

/// `docker run --rm` of the image with `args`, as README shows it for a runner on the
/// deploy host: on the host's network (its loopback is where the test's nginx
/// listens) and pid namespace (status checks that nginx by its pid), the engine's
/// socket mounted, and the service's directory at the same path so the paths in its
/// config hold.
fn run_in_image(svc: &Service, args: &[&str]) -> (i32, String, String) {
    let dir = svc.base.display().to_string();
    let context = crate::support::hello_context().display().to_string();
    let out = Command::new("docker")
        .args(["run", "--rm", "--network", "host", "--pid", "host"])
        .args(["-v", "/var/run/docker.sock:/var/run/docker.sock"])
        .args(["-v", &format!("{dir}:{dir}")])
        .args(["-v", &format!("{context}:{context}:ro")])
        .args(["-w", &dir])
        .arg(image())
        .args(args)
        .output()
        .expect("docker run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs the image examples/ci/image/build.sh builds; .ci/run builds it and runs this"]
fn the_scratch_image_is_this_version_and_plans_and_reads_status_through_the_mounted_socket() {
    let svc = Service::new("image");
    let started = Instant::now();
    let (code, stdout, stderr) = run_in_image(&svc, &["--version"]);
    eprintln!("docker run … --version took {:?}", started.elapsed());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("cutover {}", env!("CARGO_PKG_VERSION")),
        "{stderr}"
    );

    // plan runs the built-in gate, selector and template plugins (wasmtime in the
    // static binary) and asks the engine what runs.
    let (code, stdout, stderr) = run_in_image(&svc, &["plan"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("gate    allow"), "{stdout}");
    assert!(stdout.contains("target  blue"), "{stdout}");

    // A deploy from the host's binary; the image's `status` sees it through the socket.
    svc.deploy("v1").success();
    let (code, stdout, stderr) = run_in_image(&svc, &["status", "--output", "json"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let status: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    assert_eq!(status["live"]["color"], "blue", "{status:#}");
    assert_eq!(status["service"], svc.name.as_str(), "{status:#}");
}
