//! The Docker primitives against the real engine (Docker 20.10, API 1.41): builds,
//! containers of each colour on loopback ports, graceful stops, networks with fixed
//! IPs, image listing and removal, and a real registry round trip.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cutover::Color;
use cutover::config::{Config, NetworkConfig};
use cutover::docker::{
    BuildRequest, ContainerInfo, ContainerSpec, Docker, DockerError, ImageInfo, LABEL_COLOR,
    LABEL_SERVICE, RegistryAuth, container_name, service_labels,
};
use cutover::secret::Secret;

use crate::support::{
    DockerCleanup, TestRegistry, build_hello_image, free_port, hello_context, http_get, run_ok,
    unique_service, wait_for_http,
};

async fn docker() -> Docker {
    Docker::connect(&Default::default())
        .await
        .unwrap_or_else(|e| panic!("these tests need the Docker engine: {e}"))
}

/// hello as `service`'s `color`, published on `127.0.0.1:<port>`.
fn hello_spec(service: &str, color: Color, image: &str, port: u16) -> ContainerSpec {
    ContainerSpec {
        name: container_name(service, color),
        image: image.to_owned(),
        labels: service_labels(service, Some(color), "test-deploy"),
        env: vec![
            ("CUTOVER_SERVICE".to_owned(), service.to_owned()),
            ("CUTOVER_COLOR".to_owned(), color.to_string()),
            ("CUTOVER_DEPLOY_ID".to_owned(), "test-deploy".to_owned()),
        ],
        secret_env: Vec::new(),
        binds: Vec::new(),
        port: 8080,
        publish: Some(SocketAddr::from(([127, 0, 0, 1], port))),
        network: None,
        ip: None,
        command: None,
        stop_grace: Duration::from_secs(10),
    }
}

/// Polls until `name` is no longer running (at most `within`).
async fn wait_stopped(docker: &Docker, name: &str, within: Duration) -> ContainerInfo {
    let deadline = Instant::now() + within;
    loop {
        let info = docker
            .inspect_container(name)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("container {name} disappeared"));
        if !info.running {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "{name} still running after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn image_env(reference: &str) -> String {
    run_ok(Command::new("docker").args([
        "image",
        "inspect",
        "--format",
        "{{json .Config.Env}}",
        reference,
    ]))
}

#[tokio::test]
async fn build_passes_args_and_labels_and_streams_output() {
    let service = unique_service("build");
    let _cleanup = DockerCleanup::new(&service);
    let docker = docker().await;
    let args = BTreeMap::from([("VERSION".to_owned(), "v-build-42".to_owned())]);
    let labels = service_labels(&service, None, "d-build");
    let tag = format!("{service}:t1");
    let mut lines = Vec::new();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap_or(i64::MAX);
    let image = docker
        .build_image(
            &BuildRequest {
                context: hello_context(),
                dockerfile: "Dockerfile",
                args: &args,
                tag: &tag,
                labels: &labels,
            },
            &mut |l: &str| lines.push(l.to_owned()),
        )
        .await
        .unwrap();
    assert!(
        lines.iter().any(|l| l.starts_with("Step 1/")),
        "builder output was not streamed: {lines:?}"
    );
    assert!(image.id.starts_with("sha256:"), "{image:?}");
    assert!(image.tags.contains(&tag), "{image:?}");
    assert_eq!(image.labels.get(LABEL_SERVICE), Some(&service));
    assert!(
        (started - 120..=started + 120).contains(&image.created),
        "created {} is not about now ({started})",
        image.created
    );
    let env = image_env(&tag);
    assert!(env.contains("HELLO_VERSION=v-build-42"), "{env}");

    assert_eq!(docker.inspect_image(&image.id).await.unwrap(), Some(image));
    assert_eq!(
        docker
            .inspect_image(&format!("{service}:missing"))
            .await
            .unwrap(),
        None
    );
}

async fn build_error(dockerfile: &str) -> (DockerError, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    let service = unique_service("badbuild");
    let _cleanup = DockerCleanup::new(&service);
    let tag = format!("{service}:bad");
    let empty = BTreeMap::new();
    let labels = service_labels(&service, None, "d-bad");
    let err = docker()
        .await
        .build_image(
            &BuildRequest {
                context: dir.path(),
                dockerfile: "Dockerfile",
                args: &empty,
                tag: &tag,
                labels: &labels,
            },
            &mut |_: &str| {},
        )
        .await
        .expect_err("the build should fail");
    (err, tag)
}

#[tokio::test]
async fn bad_dockerfile_fails_with_the_builders_message() {
    let (err, tag) = build_error("FORM scratch\n").await;
    assert!(matches!(err, DockerError::Build { .. }), "{err:?}");
    assert!(!err.is_environment());
    let message = err.to_string();
    assert!(message.contains(&tag), "{message}");
    assert!(message.contains("unknown instruction"), "{message}");
    assert!(message.to_lowercase().contains("form"), "{message}");
}

#[tokio::test]
async fn failing_build_step_reports_the_last_output_lines() {
    let (err, _) = build_error("FROM scratch\nCOPY missing-file /x\n").await;
    let DockerError::Build { last_lines, .. } = &err else {
        panic!("expected a build error, got {err:?}");
    };
    assert!(
        last_lines.iter().any(|l| l.contains("COPY missing-file")),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("missing-file"), "{message}");
    assert!(message.contains("last build output"), "{message}");
}

#[tokio::test]
async fn color_container_serves_version_and_color_on_a_loopback_port() {
    let service = unique_service("run");
    let _cleanup = DockerCleanup::new(&service);
    let docker = docker().await;
    let image = build_hello_image(&docker, &service, "v-run-1").await;
    let port = free_port();
    let spec = hello_spec(&service, Color::Blue, &format!("{service}:v-run-1"), port);
    let id = docker.run_container(&spec).await.unwrap();

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let response = wait_for_http(addr, "/", Duration::from_secs(20)).unwrap();
    assert_eq!(response.body, "hello v-run-1 from blue\n");
    assert_eq!(response.header("X-Hello-Version"), Some("v-run-1"));
    assert_eq!(response.header("X-Hello-Color"), Some("blue"));
    assert_eq!(
        http_get(addr, "/health", Duration::from_secs(2))
            .unwrap()
            .status,
        200
    );

    let info = docker.inspect_container(&spec.name).await.unwrap().unwrap();
    assert_eq!(info.id, id);
    assert_eq!(info.name, format!("{service}-blue"));
    assert!(info.running);
    assert_eq!(info.status, "running");
    assert_eq!(info.exit_code, None);
    assert_eq!(info.image, spec.image);
    assert_eq!(info.image_id, image.id);
    assert_eq!(
        info.labels.get(LABEL_COLOR).map(String::as_str),
        Some("blue")
    );
    assert!(info.ip.is_some(), "{info:?}");

    assert_eq!(service_containers(&service), vec![info.name.clone()]);

    // Same name again: refused, and the running one is untouched.
    let again = docker.run_container(&spec).await.unwrap_err();
    assert!(matches!(again, DockerError::InUse { .. }), "{again:?}");

    docker.remove_container(&spec.name).await.unwrap();
    assert_eq!(docker.inspect_container(&spec.name).await.unwrap(), None);
    docker.remove_container(&spec.name).await.unwrap();
    docker
        .stop_container(&spec.name, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(service_containers(&service).is_empty());
}

#[tokio::test]
async fn stop_lets_an_in_flight_request_finish_and_exits_zero() {
    let service = unique_service("stop");
    let _cleanup = DockerCleanup::new(&service);
    let docker = docker().await;
    build_hello_image(&docker, &service, "v-stop").await;
    let port = free_port();
    let spec = hello_spec(&service, Color::Green, &format!("{service}:v-stop"), port);
    docker.run_container(&spec).await.unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_http(addr, "/health", Duration::from_secs(20)).unwrap();

    let slow = std::thread::spawn(move || http_get(addr, "/slow?ms=2000", Duration::from_secs(15)));
    // Give the request time to reach the app before SIGTERM.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    docker
        .stop_container(&spec.name, Duration::from_secs(10))
        .await
        .unwrap();
    let stop_took = started.elapsed();

    let response = slow.join().unwrap().expect("the in-flight request failed");
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.body, "slept 2000 ms\n");
    assert_eq!(response.header("Connection"), Some("close"));
    // Graceful: the app exited by itself once the request was done, long before the
    // engine would have killed it.
    assert!(
        stop_took < Duration::from_secs(8),
        "stop took {stop_took:?}"
    );
    let info = docker.inspect_container(&spec.name).await.unwrap().unwrap();
    assert!(!info.running);
    assert_eq!(info.status, "exited");
    assert_eq!(info.exit_code, Some(0), "{info:?}");
    // Stopping a stopped container is fine.
    docker
        .stop_container(&spec.name, Duration::from_secs(1))
        .await
        .unwrap();
}

#[tokio::test]
async fn port_taken_by_another_process_is_port_in_use() {
    let service = unique_service("port");
    let _cleanup = DockerCleanup::new(&service);
    let docker = docker().await;
    build_hello_image(&docker, &service, "v-port").await;
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let spec = hello_spec(&service, Color::Blue, &format!("{service}:v-port"), port);

    let err = docker.run_container(&spec).await.unwrap_err();
    match &err {
        DockerError::PortInUse {
            port: p, container, ..
        } => {
            assert_eq!(*p, port);
            assert_eq!(container, &spec.name);
        }
        other => panic!("expected PortInUse, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("host_port"), "{message}");
    // The container created before the failed start is gone again.
    assert_eq!(docker.inspect_container(&spec.name).await.unwrap(), None);
    drop(squatter);
}

#[tokio::test]
async fn missing_image_is_not_found() {
    let service = unique_service("noimage");
    let _cleanup = DockerCleanup::new(&service);
    let docker = docker().await;
    let spec = hello_spec(
        &service,
        Color::Blue,
        &format!("{service}:absent"),
        free_port(),
    );
    let err = docker.run_container(&spec).await.unwrap_err();
    assert!(
        matches!(&err, DockerError::NotFound { kind: "image", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&spec.image), "{err}");
}

#[tokio::test]
async fn app_that_exits_after_start_shows_exit_code_and_logs() {
    let service = unique_service("exit");
    let _cleanup = DockerCleanup::new(&service);
    let docker = docker().await;
    build_hello_image(&docker, &service, "v-exit").await;
    let mut spec = hello_spec(
        &service,
        Color::Blue,
        &format!("{service}:v-exit"),
        free_port(),
    );
    spec.env
        .push(("HELLO_EXIT_AFTER_MS".to_owned(), "300".to_owned()));
    docker.run_container(&spec).await.unwrap();

    let info = wait_stopped(&docker, &spec.name, Duration::from_secs(20)).await;
    assert_eq!(info.status, "exited");
    assert_eq!(info.exit_code, Some(3), "{info:?}");
    let logs = docker.container_logs(&spec.name, 50).await.unwrap();
    assert!(logs.contains("listening on"), "{logs}");
    assert!(logs.contains("exiting with code 3"), "{logs}");
    let last = docker.container_logs(&spec.name, 1).await.unwrap();
    assert_eq!(last.lines().count(), 1, "{last}");

    let err = docker
        .container_logs(&format!("{service}-nothing"), 5)
        .await
        .unwrap_err();
    assert!(matches!(err, DockerError::NotFound { .. }), "{err:?}");
}

/// A /24 in 10.231.0.0/16, which Docker's default address pools do not use, chosen
/// per process so parallel runs do not collide.
fn test_subnet() -> (String, String, Ipv4Addr) {
    let third = (std::process::id() % 250) as u8;
    (
        format!("10.231.{third}.0/24"),
        format!("10.231.{third}.1"),
        Ipv4Addr::new(10, 231, third, 42),
    )
}

#[tokio::test]
async fn network_with_subnet_and_fixed_ip() {
    let service = unique_service("net");
    let _cleanup = DockerCleanup::new(&service);
    let docker = docker().await;
    build_hello_image(&docker, &service, "v-net").await;
    let (subnet, gateway, ip) = test_subnet();
    let net = NetworkConfig {
        name: format!("{service}-net"),
        subnet: Some(subnet.clone()),
        gateway: Some(gateway),
    };
    assert!(docker.ensure_network(&net, &service).await.unwrap());
    assert!(!docker.ensure_network(&net, &service).await.unwrap());
    let other = NetworkConfig {
        subnet: Some("10.232.0.0/24".to_owned()),
        ..net.clone()
    };
    let err = docker.ensure_network(&other, &service).await.unwrap_err();
    assert!(
        matches!(err, DockerError::NetworkMismatch { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&subnet), "{err}");

    let port = free_port();
    let mut spec = hello_spec(&service, Color::Green, &format!("{service}:v-net"), port);
    spec.network = Some(net.name.clone());
    spec.ip = Some(ip);
    docker.run_container(&spec).await.unwrap();
    let info = docker.inspect_container(&spec.name).await.unwrap().unwrap();
    assert_eq!(info.ip, Some(ip.to_string()));
    let response = wait_for_http(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "/",
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(response.body, "hello v-net from green\n");

    let err = docker.remove_network(&net.name).await.unwrap_err();
    assert!(matches!(err, DockerError::InUse { .. }), "{err:?}");
    docker.remove_container(&spec.name).await.unwrap();
    docker.remove_network(&net.name).await.unwrap();
    docker.remove_network(&net.name).await.unwrap();
}

#[tokio::test]
async fn service_images_are_listed_newest_first_and_removed() {
    let service = unique_service("images");
    let _cleanup = DockerCleanup::new(&service);
    let docker = docker().await;
    let older = build_hello_image(&docker, &service, "v-old").await;
    // Image creation times have one-second resolution in listings.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let newer = build_hello_image(&docker, &service, "v-new").await;
    assert_ne!(older.id, newer.id);

    let ids = |images: Vec<ImageInfo>| images.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let listed = docker.list_service_images(&service).await.unwrap();
    assert_eq!(ids(listed.clone()), [newer.id.clone(), older.id.clone()]);
    assert!(listed[0].tags.contains(&format!("{service}:v-new")));
    assert_eq!(listed[0].labels.get(LABEL_SERVICE), Some(&service));

    // A second tag does not keep the image alive.
    tag(&older.id, &format!("{service}-alias:x"));
    docker.remove_image(&older.id).await.unwrap();
    assert_eq!(
        ids(docker.list_service_images(&service).await.unwrap()),
        std::slice::from_ref(&newer.id)
    );
    docker.remove_image(&older.id).await.unwrap();

    // An image a (stopped) container uses stays.
    let spec = hello_spec(&service, Color::Blue, &newer.id, free_port());
    docker.run_container(&spec).await.unwrap();
    docker
        .stop_container(&spec.name, Duration::from_secs(5))
        .await
        .unwrap();
    let err = docker.remove_image(&newer.id).await.unwrap_err();
    assert!(matches!(err, DockerError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains(&spec.name), "{err}");
    assert!(docker.inspect_image(&newer.id).await.unwrap().is_some());
    docker.remove_container(&spec.name).await.unwrap();
    docker.remove_image(&newer.id).await.unwrap();
    assert!(
        docker
            .list_service_images(&service)
            .await
            .unwrap()
            .is_empty()
    );

    assert_eq!(docker.inspect_image(&older.id).await.unwrap(), None);
}

#[tokio::test]
async fn registry_round_trip_with_credentials_never_shows_the_password() {
    const PASSWORD: &str = "pw-Zq8-not-in-any-output";
    const WRONG: &str = "wrong-pw-Kx3-not-in-any-output";
    let service = unique_service("reg");
    let _cleanup = DockerCleanup::new(&service);
    let registry = TestRegistry::start("cutover-ci", PASSWORD);
    assert_eq!(
        registry.v2_status(),
        Some(401),
        "the registry must demand auth"
    );
    let docker = docker().await;
    let image = build_hello_image(&docker, &service, "v-reg").await;
    let repo = format!("{}/{service}", registry.addr);
    let reference = format!("{repo}:v-reg");
    tag(&image.id, &reference);

    let auth = RegistryAuth {
        server: registry.addr.to_string(),
        username: registry.username.clone(),
        password: registry.password.clone(),
    };
    let wrong = RegistryAuth {
        password: Secret::new(WRONG),
        ..auth.clone()
    };
    let mut outputs = vec![format!("{auth:?}"), format!("{wrong:?}")];

    let err = docker.push_image(&reference, &wrong).await.unwrap_err();
    assert!(matches!(err, DockerError::Registry { .. }), "{err:?}");
    assert!(!err.is_environment());
    let message = err.to_string();
    assert!(
        message.contains("unauthorized") || message.contains("authentication"),
        "{message}"
    );
    outputs.extend([message, format!("{err:?}")]);

    let digest = docker
        .push_image(&reference, &auth)
        .await
        .unwrap()
        .expect("the push should report a digest");
    assert!(digest.starts_with("sha256:"), "{digest}");

    // Delete every local copy, then pull it back from the registry.
    docker.remove_image(&image.id).await.unwrap();
    assert_eq!(docker.inspect_image(&reference).await.unwrap(), None);

    let err = docker.pull_image(&reference, None).await.unwrap_err();
    assert!(matches!(err, DockerError::Registry { .. }), "{err:?}");
    outputs.extend([err.to_string(), format!("{err:?}")]);
    let err = docker
        .pull_image(&reference, Some(&wrong))
        .await
        .unwrap_err();
    outputs.extend([err.to_string(), format!("{err:?}")]);

    let pulled = docker.pull_image(&reference, Some(&auth)).await.unwrap();
    assert_eq!(pulled.id, image.id);
    assert!(pulled.tags.contains(&reference), "{pulled:?}");
    assert!(
        pulled.digests.contains(&format!("{repo}@{digest}")),
        "{pulled:?}"
    );
    assert_eq!(pulled.labels.get(LABEL_SERVICE), Some(&service));

    let missing = format!("{repo}:never-pushed");
    let err = docker.pull_image(&missing, Some(&auth)).await.unwrap_err();
    assert!(matches!(err, DockerError::Registry { .. }), "{err:?}");
    outputs.extend([err.to_string(), format!("{err:?}")]);
    let err = docker.push_image(&missing, &auth).await.unwrap_err();
    assert!(matches!(err, DockerError::NotFound { .. }), "{err:?}");
    outputs.extend([err.to_string(), format!("{err:?}")]);

    for text in &outputs {
        assert!(!text.contains(PASSWORD), "password leaked: {text}");
        assert!(!text.contains(WRONG), "wrong password leaked: {text}");
    }
    let registry_log = registry.log();
    assert!(!registry_log.contains(PASSWORD), "{registry_log}");
}

#[tokio::test]
async fn registry_credentials_are_not_sent_with_a_pull_from_another_registry() {
    const CONFIGURED_USER: &str = "configured-user-Jd4";
    const CONFIGURED_PW: &str = "configured-pw-Rt7-for-its-own-registry";
    let service = unique_service("reg-other");
    let _cleanup = DockerCleanup::new(&service);
    let configured = TestRegistry::start(CONFIGURED_USER, CONFIGURED_PW);
    let other = TestRegistry::start("other-user", "other-pw-Mn2");
    let auth_for = |registry: &TestRegistry| RegistryAuth {
        server: registry.addr.to_string(),
        username: registry.username.clone(),
        password: registry.password.clone(),
    };
    let (configured_auth, other_auth) = (auth_for(&configured), auth_for(&other));

    let docker = docker().await;
    let image = build_hello_image(&docker, &service, "v-other").await;
    let repo = format!("{}/{service}", other.addr);
    let reference = format!("{repo}:v-other");
    tag(&image.id, &reference);
    docker.push_image(&reference, &other_auth).await.unwrap();
    docker.remove_image(&image.id).await.unwrap();

    // The other registry logs the user of every credential it refuses, so the check
    // below can fail: here the configured user is (deliberately) sent to it.
    let misaddressed = RegistryAuth {
        server: other.addr.to_string(),
        ..configured_auth.clone()
    };
    docker
        .pull_image(&reference, Some(&misaddressed))
        .await
        .unwrap_err();
    let log = other.log();
    assert!(
        log.contains("error authenticating user") && log.contains(CONFIGURED_USER),
        "{log}"
    );
    let seen = log.len();

    // `image.registry` is the configured one; the image is on the other: no
    // credentials go with the pull, so the other registry refuses it unnamed.
    let err = docker
        .pull_image(&reference, Some(&configured_auth))
        .await
        .unwrap_err();
    assert!(matches!(err, DockerError::Registry { .. }), "{err:?}");
    assert!(!err.to_string().contains(CONFIGURED_PW), "{err}");
    let log = other.log();
    assert!(
        !log[seen..].contains(CONFIGURED_USER),
        "the configured registry's credentials were sent to {}: {}",
        other.addr,
        &log[seen..]
    );

    let pulled = docker
        .pull_image(&reference, Some(&other_auth))
        .await
        .unwrap();
    assert_eq!(pulled.id, image.id);
    let log = configured.log() + &other.log();
    assert!(!log.contains(CONFIGURED_PW), "{log}");
}

#[test]
fn hello_example_config_loads() {
    let path = crate::support::workspace_root().join("examples/hello/cutover.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.service, "hello");
    assert_eq!(config.upstream(Color::Blue).to_string(), "127.0.0.1:18081");
    assert_eq!(config.upstream(Color::Green).to_string(), "127.0.0.1:18082");
    assert_eq!(config.container.port, 8080);
    let build = config.image.build.as_ref().expect("hello is built");
    let context = config.resolve(&build.context);
    assert!(
        context.join(&build.dockerfile).is_file(),
        "{}",
        context.display()
    );
    assert_eq!(
        config.verify.expect_header.as_deref(),
        Some("X-Hello-Color: {color}")
    );
    assert_eq!(Path::new(&build.context), Path::new("image"));
}

/// Tags an image with the docker CLI (cutover itself never retags).
fn tag(image: &str, reference: &str) {
    crate::support::run_ok(Command::new("docker").args(["tag", image, reference]));
}

/// The names of `service`'s containers, running or not, from the docker CLI.
fn service_containers(service: &str) -> Vec<String> {
    crate::support::run_ok(Command::new("docker").args([
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("label={LABEL_SERVICE}={service}"),
    ]))
    .lines()
    .map(str::to_owned)
    .collect()
}
