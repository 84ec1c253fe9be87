//! The Swarm engine's primitives on a real 3-node swarm (tests/support/swarm.rs,
//! shared by these tests): a colour's service by digest with one task per node, each
//! answering at its node's address and port from the host; scaling to 0 and back; a
//! pushed image run by digest; the deploy lock's compare-and-swap between two
//! runners on two managers; the cluster state labels read from another manager.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use cutover::Color;
use cutover::engine::Swarm;
use cutover::engine::swarm::{SwarmError, TaskEndpoint};
use cutover::lock::Owner;

use crate::support::load::{Load, LoadConfig};
use crate::support::nginx::ExternalNginx;
use crate::support::service::{Output, Service};
use crate::support::swarm::{NODES, SwarmNode, cluster, exclusive, load_config};
use crate::support::{http_get, unique_service};

/// The most a task start or stop may take here before a test gives up.
const TASK_DEADLINE: Duration = Duration::from_secs(90);

/// Waits until `color` runs exactly `count` tasks, all of `image`.
async fn wait_tasks(swarm: &Swarm, color: Color, count: usize, image: &str) -> Vec<TaskEndpoint> {
    let deadline = Instant::now() + TASK_DEADLINE;
    loop {
        let tasks = swarm.running_tasks(color).await.expect("list tasks");
        if tasks.len() == count && tasks.iter().all(|t| t.image == image) {
            return tasks;
        }
        assert!(
            Instant::now() < deadline,
            "{color} did not run {count} tasks of {image} within {TASK_DEADLINE:?}: {tasks:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks every task for `/` until each answers 200 as `version`, from the host.
async fn assert_every_task_answers(tasks: &[TaskEndpoint], version: &str) {
    for task in tasks {
        let addr = task.addr();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer =
                tokio::task::spawn_blocking(move || http_get(addr, "/", Duration::from_secs(2)))
                    .await
                    .expect("probe thread");
            match answer {
                Ok(r) if r.status == 200 => {
                    assert_eq!(
                        r.header("X-Hello-Version"),
                        Some(version),
                        "task {} on {} ({addr})",
                        task.task_id,
                        task.hostname
                    );
                    break;
                }
                other => assert!(
                    Instant::now() < deadline,
                    "task {} on {} ({addr}) does not answer: {other:?}",
                    task.task_id,
                    task.hostname
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only keeps the link-cutting test out; nothing else in this runtime waits on it.
#[allow(clippy::await_holding_lock)]
async fn color_service_runs_one_task_per_node_by_digest_and_scales_to_zero_and_back() {
    let cluster = cluster();
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let service = unique_service("swc");
    let config = cluster.config(
        dir.path(),
        &service,
        0,
        "replicas = 3\nlabels = { team = \"web\" }",
    );
    let swarm = cluster.swarm(&config).await;
    let auth = cluster.auth();
    assert_eq!(swarm.check_cluster().await.unwrap().len(), NODES);

    let started = Instant::now();
    swarm
        .deploy_color(Color::Blue, &cluster.image_v1, "deploy-1", Some(&auth), &[])
        .await
        .expect("create blue");
    let tasks = wait_tasks(&swarm, Color::Blue, 3, &cluster.image_v1).await;
    let created = started.elapsed();
    // One task on every node, each at its node's address and blue's port.
    let addrs: BTreeSet<IpAddr> = tasks.iter().map(|t| t.node_addr).collect();
    let nodes: BTreeSet<IpAddr> = cluster.nodes.iter().map(|n| IpAddr::V4(n.addr)).collect();
    assert_eq!(addrs, nodes, "{tasks:#?}");
    let hostnames: BTreeSet<&str> = tasks.iter().map(|t| t.hostname.as_str()).collect();
    assert_eq!(hostnames.len(), NODES, "{tasks:#?}");
    let port = config.blue.host_port.unwrap();
    assert!(tasks.iter().all(|t| t.port == port), "{tasks:#?}");
    assert_every_task_answers(&tasks, "v1").await;

    // The spec as the deploy needs it: DNS round robin, host-mode port, one per node.
    let name = swarm.service_name(Color::Blue);
    let shape = crate::support::run_ok(&mut cluster.nodes[1].docker(&[
        "service",
        "inspect",
        &name,
        "--format",
        "{{.Spec.EndpointSpec.Mode}} {{(index .Spec.EndpointSpec.Ports 0).PublishMode}} {{.Spec.TaskTemplate.Placement.MaxReplicas}} {{.Spec.TaskTemplate.ContainerSpec.Image}}",
    ]));
    assert_eq!(
        shape.trim(),
        format!("dnsrr host 1 {}", cluster.image_v1),
        "{name}"
    );
    let labels = swarm.labels(Color::Blue).await.unwrap().unwrap().labels;
    assert_eq!(labels["team"], "web");
    assert_eq!(labels["cutover.color"], "blue");
    assert_eq!(labels["cutover.deploy-id"], "deploy-1");
    assert_eq!(labels["cutover.digest"], cluster.image_v1);

    // Retire: no task runs and no node answers on blue's port; the service stays.
    let started = Instant::now();
    swarm.retire(Color::Blue).await.expect("scale blue to 0");
    wait_tasks(&swarm, Color::Blue, 0, "").await;
    for task in &tasks {
        let addr = task.addr();
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(addr, "/health", Duration::from_secs(1)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "{addr} still answers after retire"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let retired = started.elapsed();
    assert!(swarm.labels(Color::Blue).await.unwrap().is_some());

    // Back up (a rollback): three tasks again, all answering.
    let started = Instant::now();
    swarm.resume(Color::Blue).await.expect("scale blue back");
    let tasks = wait_tasks(&swarm, Color::Blue, 3, &cluster.image_v1).await;
    assert_every_task_answers(&tasks, "v1").await;
    let resumed = started.elapsed();

    // A locally built image pushed and run by digest: every node runs the same bits.
    let v2 = swarm
        .push_image(&cluster.local_v2, &auth)
        .await
        .expect("push v2");
    assert!(v2.starts_with(&format!("{}@sha256:", cluster.repo)), "{v2}");
    let started = Instant::now();
    swarm
        .deploy_color(Color::Blue, &v2, "deploy-2", Some(&auth), &[])
        .await
        .expect("update blue to v2");
    let tasks = wait_tasks(&swarm, Color::Blue, 3, &v2).await;
    assert_every_task_answers(&tasks, "v2").await;
    let updated = started.elapsed();
    let labels = swarm.labels(Color::Blue).await.unwrap().unwrap().labels;
    assert_eq!(labels["cutover.digest"], v2);
    assert_eq!(labels["cutover.deploy-id"], "deploy-2");
    eprintln!(
        "swarm: 3 tasks running {:.1} s after create; retired in {:.1} s; back in {:.1} s; updated to v2 in {:.1} s",
        created.as_secs_f64(),
        retired.as_secs_f64(),
        resumed.as_secs_f64(),
        updated.as_secs_f64()
    );

    swarm.remove_color(Color::Blue).await.unwrap();
    assert!(swarm.labels(Color::Blue).await.unwrap().is_none());
    swarm
        .remove_color(Color::Blue)
        .await
        .expect("removing twice is fine");
}

/// Two runners of `service` with their own state directories, on two different
/// managers, with `engine` added to `[engine]`; the directories live as long as the
/// returned guard.
async fn two_runners(
    cluster: &crate::support::swarm::SwarmCluster,
    service: &str,
    engine: &str,
) -> ([tempfile::TempDir; 2], Swarm, Swarm) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a = cluster
        .swarm(&cluster.config(dirs[0].path(), service, 0, engine))
        .await;
    let b = cluster
        .swarm(&cluster.config(dirs[1].path(), service, 1, engine))
        .await;
    (dirs, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only keeps the link-cutting test out; nothing else in this runtime waits on it.
#[allow(clippy::await_holding_lock)]
async fn deploy_lock_is_compare_and_swap_and_the_loser_names_the_holder() {
    let cluster = cluster();
    let _serial = exclusive();
    let service = unique_service("swl");
    let (_dirs, a, b) = two_runners(cluster, &service, "").await;
    let owner_a = Owner::this_process("deploy", Some("https://ci.example/runs/a".to_owned()));
    let owner_b = Owner::this_process("deploy", Some("https://ci.example/runs/b".to_owned()));
    let names = |e: &SwarmError, run: &str| {
        assert!(
            matches!(e, SwarmError::LockHeld { .. }) && e.to_string().contains(run),
            "{e}"
        );
    };

    // Both see no lock; a creates it first, so b's create loses and names a.
    let (seen_a, seen_b) = (a.read_lock().await.unwrap(), b.read_lock().await.unwrap());
    assert!(seen_a.holder.is_none() && seen_b.holder.is_none());
    let mut lock_a = a.take_lock(&seen_a, &owner_a).await.expect("a takes it");
    names(&b.take_lock(&seen_b, &owner_b).await.unwrap_err(), "runs/a");
    names(&b.claim_lock(&owner_b).await.unwrap_err(), "runs/a");
    a.renew(&mut lock_a).await.expect("a renews");
    a.release(lock_a.clone()).await.expect("a releases");

    // Both read the free lock at one version; a writes first, and b's write, which
    // carries the now stale version, loses and names a.
    let (seen_a, seen_b) = (a.read_lock().await.unwrap(), b.read_lock().await.unwrap());
    assert_eq!(seen_a, seen_b);
    let lock_a2 = a
        .take_lock(&seen_a, &owner_a)
        .await
        .expect("a takes it again");
    names(&b.take_lock(&seen_b, &owner_b).await.unwrap_err(), "runs/a");
    a.release(lock_a2).await.unwrap();

    // b holds it now: a's old hold can neither renew nor release it.
    let lock_b = b.claim_lock(&owner_b).await.expect("b takes the free lock");
    let mut stale = lock_a.clone();
    let lost = a.renew(&mut stale).await.unwrap_err();
    assert!(
        matches!(lost, SwarmError::LockLost { .. }) && lost.to_string().contains("runs/b"),
        "{lost}"
    );
    assert!(matches!(
        a.release(lock_a).await,
        Err(SwarmError::LockLost { .. })
    ));
    b.release(lock_b).await.unwrap();

    // Both at once: exactly one wins, and the other names it.
    let (ra, rb) = tokio::join!(a.claim_lock(&owner_a), b.claim_lock(&owner_b));
    match (ra, rb) {
        (Ok(lock), Err(e)) => {
            names(&e, "runs/a");
            a.release(lock).await.unwrap();
        }
        (Err(e), Ok(lock)) => {
            names(&e, "runs/b");
            b.release(lock).await.unwrap();
        }
        (ra, rb) => panic!("exactly one runner must win: {ra:?} / {rb:?}"),
    }

    // An owner made long ago (a runner that waited for the lock longer than a lease)
    // still takes it with a lease that runs from now: the next runner is refused.
    let made_long_ago = Owner {
        lease_until: "2001-01-01T00:00:00Z".to_owned(),
        ..owner_a.clone()
    };
    let lock_a = a
        .claim_lock(&made_long_ago)
        .await
        .expect("a takes the free lock");
    names(&b.claim_lock(&owner_b).await.unwrap_err(), "runs/a");
    a.release(lock_a).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only keeps the link-cutting test out; nothing else in this runtime waits on it.
#[allow(clippy::await_holding_lock)]
async fn a_cluster_lock_whose_lease_ran_out_is_taken_over_and_its_old_holder_can_no_longer_renew() {
    let cluster = cluster();
    let _serial = exclusive();
    let service = unique_service("swx");
    let lease = "lock_lease = \"3s\"";
    let (_dirs, a, b) = two_runners(cluster, &service, lease).await;
    let owner_a = Owner::this_process("deploy", Some("https://ci.example/runs/a".to_owned()));
    let owner_b = Owner::this_process("deploy", Some("https://ci.example/runs/b".to_owned()));

    // a takes it and then hangs: nobody renews its lease.
    let mut hung = a.claim_lock(&owner_a).await.expect("a takes it");
    let refused = b.claim_lock(&owner_b).await.unwrap_err();
    assert!(refused.to_string().contains("runs/a"), "{refused}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let lock_b = b
        .claim_lock(&owner_b)
        .await
        .expect("an expired lease is taken over");
    assert_eq!(
        lock_b.took_over.as_ref().and_then(|o| o.run_url.as_deref()),
        Some("https://ci.example/runs/a")
    );
    // a wakes up: its renewal, its checks before a write, and its release all find
    // the lock lost, naming b.
    let lost = |e: SwarmError| {
        assert!(
            matches!(e, SwarmError::LockLost { .. }) && e.to_string().contains("runs/b"),
            "{e}"
        );
    };
    lost(a.renew(&mut hung).await.unwrap_err());
    lost(a.check_lock(&hung).await.unwrap_err());
    lost(a.release(hung).await.unwrap_err());
    b.check_lock(&lock_b).await.expect("b holds it");
    b.release(lock_b).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only keeps the link-cutting test out; nothing else in this runtime waits on it.
#[allow(clippy::await_holding_lock)]
async fn a_runner_that_waited_longer_than_the_lease_holds_the_lock_with_a_fresh_one() {
    let cluster = cluster();
    let _serial = exclusive();
    let service = unique_service("sww");
    let lease = "lock_lease = \"3s\"";
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let engine = |i: usize| {
        let config = cluster.config(dirs[i].path(), &service, i % 2, lease);
        async move {
            let host = config.engine.host.clone().expect("engine.host");
            let docker = cutover::docker::Docker::connect_to(&host).await.unwrap();
            cutover::engine::SwarmEngine::open(docker, config)
                .await
                .unwrap()
        }
    };
    use cutover::engine::Engine as _;
    let (a, b) = (engine(0).await, engine(1).await);
    let owner =
        |run: &str| Owner::this_process("deploy", Some(format!("https://ci.example/runs/{run}")));
    let (owner_a, owner_b) = (owner("a"), owner("b"));
    let held_a = a
        .take_lock(&owner_a, Duration::ZERO)
        .await
        .unwrap()
        .unwrap();
    // b queues behind a for longer than a lease, while a renews its own.
    let waiter = tokio::spawn(async move {
        let held = b.take_lock(&owner_b, Duration::from_secs(60)).await;
        (b, held)
    });
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        !waiter.is_finished(),
        "a renews its lease, so b still waits"
    );
    held_a.check().expect("a still holds it");
    held_a.release().await.expect("a releases it");
    let (b, held_b) = waiter.await.unwrap();
    let held_b = held_b.unwrap().unwrap();
    // Another 4 s: without b's renewals its lease would have run out by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let c = engine(2).await;
    let refused = c.take_lock(&owner("c"), Duration::ZERO).await.unwrap_err();
    assert!(refused.to_string().contains("runs/b"), "{refused}");
    assert_eq!(
        c.lock_holder().await.unwrap().and_then(|o| o.run_url),
        Some("https://ci.example/runs/b".to_owned())
    );
    held_b.check().expect("b still holds it");
    held_b.release().await.expect("b releases it");
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The guard only keeps the link-cutting test out; nothing else in this runtime waits on it.
#[allow(clippy::await_holding_lock)]
async fn cluster_state_labels_round_trip_between_managers() {
    let cluster = cluster();
    let _serial = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let service = unique_service("sws");
    let writer_config = cluster.config(dir.path(), &service, 0, "replicas = 1");
    let writer = cluster.swarm(&writer_config).await;
    // Another runner, on another manager, with its own state directory.
    let other_dir = tempfile::tempdir().unwrap();
    let reader = cluster
        .swarm(&cluster.config(other_dir.path(), &service, 1, "replicas = 1"))
        .await;
    let auth = cluster.auth();

    assert!(matches!(
        writer.record_state(Color::Blue, None).await,
        Err(SwarmError::NoService { .. })
    ));
    for (color, deploy) in [(Color::Blue, "d1"), (Color::Green, "d2")] {
        writer
            .deploy_color(color, &cluster.image_v1, deploy, Some(&auth), &[])
            .await
            .unwrap();
    }
    let state = reader.read_state().await.unwrap();
    assert_eq!((state.live, state.previous, state.serial), (None, None, 0));
    assert_eq!(state.images[&Color::Green], cluster.image_v1);

    writer.record_state(Color::Blue, None).await.unwrap();
    let state = reader.read_state().await.unwrap();
    assert_eq!(
        (state.live, state.previous, state.serial),
        (Some(Color::Blue), None, 1)
    );
    writer
        .record_state(Color::Green, Some(Color::Blue))
        .await
        .unwrap();
    let state = reader.read_state().await.unwrap();
    assert_eq!(
        (state.live, state.previous, state.serial),
        (Some(Color::Green), Some(Color::Blue), 2)
    );

    // Redeploying a colour keeps the recorded state.
    writer
        .deploy_color(Color::Blue, &cluster.image_v1, "d3", Some(&auth), &[])
        .await
        .unwrap();
    let again = reader.read_state().await.unwrap();
    assert_eq!(again, state);

    // Any label round-trips, set and removed, as a label-only update.
    let set = BTreeMap::from([("team".to_owned(), "payments".to_owned())]);
    writer.update_labels(Color::Green, &set, &[]).await.unwrap();
    let found = reader.labels(Color::Green).await.unwrap().unwrap();
    assert_eq!(found.labels["team"], "payments");
    writer
        .update_labels(Color::Green, &BTreeMap::new(), &["team"])
        .await
        .unwrap();
    let after = reader.labels(Color::Green).await.unwrap().unwrap();
    assert!(!after.labels.contains_key("team"));
    assert!(after.version > found.version, "{after:?} / {found:?}");

    // Three nodes and no registry: refused, saying why.
    let text = cluster
        .config_text(&service, 0, "replicas = 1")
        .lines()
        .filter(|l| {
            !l.starts_with("[image.registry]")
                && !l.contains("username")
                && !l.contains("password_env")
                && !l.starts_with("server")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let no_registry_dir = tempfile::tempdir().unwrap();
    let bare = cluster
        .swarm(&load_config(no_registry_dir.path(), &text))
        .await;
    let e = bare.check_cluster().await.unwrap_err();
    assert!(
        matches!(e, SwarmError::NeedsRegistry { nodes: NODES })
            && e.to_string().contains("each node pulls"),
        "{e}"
    );

    // An engine that is no Swarm manager (the machine's own) is named as such.
    let local = cutover::docker::Docker::connect_to("unix:///var/run/docker.sock")
        .await
        .expect("the machine's engine");
    let e = Swarm::new(local, writer_config.clone())
        .nodes()
        .await
        .unwrap_err();
    assert!(
        matches!(e, SwarmError::NotManager { .. }) && e.to_string().contains("not a Swarm manager"),
        "{e}"
    );

    for color in Color::BOTH {
        writer.remove_color(color).await.unwrap();
    }
}

/// `cutover status --output json` of `svc` on the swarm.
fn swarm_status(svc: &Service) -> serde_json::Value {
    let cluster = cluster();
    let out = svc.cutover_env(&["status", "--output", "json"], &cluster.env());
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status JSON: {e}\n{}\n{}", out.stdout, out.stderr))
}

/// The state of `color` in a status report.
fn color_state(status: &serde_json::Value, color: &str) -> String {
    status["colors"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["color"] == color))
        .map(|c| c["state"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[test]
fn three_replicas_deploy_v1_v2_v1_under_load_through_nginx_with_no_failed_request() {
    let cluster = cluster();
    let _serial = exclusive();
    let svc = cluster.service("swarm-e2e", 0, "", "");
    let deploy = |version: &str| {
        svc.cutover_env(
            &["deploy", "--build-arg", &format!("VERSION={version}")],
            &cluster.env(),
        )
    };
    let first = deploy("v1").success();
    assert!(first.stderr.contains("3 of 3 healthy"), "{}", first.stderr);
    let status = swarm_status(&svc);
    assert_eq!(status["live"]["color"], "blue", "{status:#}");
    assert_eq!(color_state(&status, "blue"), "3 of 3 task(s) running");

    let load = Load::start(LoadConfig {
        fast_rate: 150,
        fast_connections: 4,
        slow_connections: 3,
        slow_ms: (1000, 3000),
        max_duration: Duration::from_secs(300),
        ..LoadConfig::new(svc.proxy_addr())
    });
    std::thread::sleep(Duration::from_millis(1500));
    deploy("v2").success();
    let status = swarm_status(&svc);
    assert_eq!(status["live"]["color"], "green", "{status:#}");
    assert_eq!(color_state(&status, "green"), "3 of 3 task(s) running");
    assert_eq!(
        color_state(&status, "blue"),
        "0 of 0 task(s) running",
        "blue retired"
    );
    deploy("v1").success();
    // And back: green (v2, retired to 0 tasks) is scaled up again, judged, switched to.
    let back = svc.cutover_env(&["rollback"], &cluster.env()).success();
    assert!(back.stderr.contains("3 of 3 healthy"), "{}", back.stderr);
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();

    report.assert_none_failed();
    assert!(
        report.samples.len() > 300,
        "the load ran: {}",
        report.samples.len()
    );
    assert!(
        report.slow_ok() >= 4,
        "slow requests completed: {}",
        report.slow_ok()
    );
    let versions: BTreeSet<u16> = report.samples.iter().filter_map(|s| s.version).collect();
    assert!(versions.contains(&2), "v2 served under load: {versions:?}");

    // Every task of the live colour is in nginx's upstream, at its node's address.
    let upstream = std::fs::read_to_string(svc.conf_d.join(format!("{}-upstream.conf", svc.name)))
        .unwrap_or_default()
        + &std::fs::read_to_string(svc.conf_d.join("service-url.inc")).unwrap_or_default();
    for node in &cluster.nodes {
        assert!(
            upstream.contains(&format!("{}:{}", node.addr, svc.green)),
            "{} missing from the proxy files:\n{upstream}",
            node.addr
        );
    }
    // The cluster records the truth for any other runner.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let config = cutover::config::Config::load(&svc.config_path()).expect("config");
    let state = runtime
        .block_on(async { cluster.swarm(&config).await.read_state().await })
        .expect("read state");
    assert_eq!(
        (state.live, state.previous),
        (Some(Color::Green), Some(Color::Blue))
    );
}

/// Runners of one service on the swarm, each with its own state directory (another
/// CI agent) and a manager of its own, all switching one external nginx.
struct Runners {
    runners: Vec<Service>,
    _nginx: ExternalNginx,
}

impl Runners {
    fn new(prefix: &str, count: usize) -> Runners {
        let cluster = cluster();
        let nginx = ExternalNginx::start(([127, 0, 0, 1], 9).into());
        let reload = nginx.argv(&["-s", "reload"]);
        let mut first = cluster.service(prefix, 0, "", "");
        first.use_external(&nginx, &reload);
        let text = std::fs::read_to_string(first.config_path()).expect("config");
        let mut runners = vec![first];
        for n in 1..count {
            let mut other = Service::new(&format!("{prefix}-runner{n}"));
            // Same service, same front end; its own state directory (beside its own
            // config) and another manager.
            // Nodes 1 and 2 are the managers (node 3 is the one fault tests lose).
            let manager = cluster.nodes[n % 2].docker_host();
            let own = text.replace(&cluster.nodes[0].docker_host(), &manager);
            other.edit_config(|_| own);
            other.listen = runners[0].listen;
            other.conf_d = runners[0].conf_d.clone();
            runners.push(other);
        }
        Runners {
            runners,
            _nginx: nginx,
        }
    }

    fn deploy(&self, runner: usize, version: &str, fault: Option<&str>) -> Output {
        let cluster = cluster();
        let mut env: Vec<(&str, &str)> = cluster.env().to_vec();
        if let Some(fault) = fault {
            env.push(("CUTOVER_FAULT", fault));
        }
        self.runners[runner].cutover_env(
            &["deploy", "--build-arg", &format!("VERSION={version}")],
            &env,
        )
    }

    /// What the front end answers on `/`.
    fn answer(&self) -> String {
        self.runners[0].get("/").body.trim().to_owned()
    }
}

#[test]
fn two_runners_with_their_own_state_directories_never_deploy_at_once_and_follow_the_cluster() {
    let cluster = cluster();
    let _serial = exclusive();
    let runners = Runners::new("swarm-two", 2);
    // Started together: one deploys, the other is refused and names it.
    let spawn = |n: usize| {
        runners.runners[n].spawn_env(&["deploy", "--build-arg", "VERSION=v1"], &cluster.env())
    };
    let (a, b) = (spawn(0), spawn(1));
    let (a, b) = (a.wait(), b.wait());
    let (won, lost) = match (a.code, b.code) {
        (0, 6) => (0, b),
        (6, 0) => (1, a),
        _ => panic!(
            "expected one success and one lock refusal:\nA {}: {}\nB {}: {}",
            a.code, a.stderr, b.code, b.stderr
        ),
    };
    assert!(
        lost.stderr.contains("holds its lock in the swarm") && lost.stderr.contains("pid"),
        "{}",
        lost.stderr
    );
    assert_eq!(runners.answer(), "hello v1 from blue");

    // The other runner's state file knows nothing; the cluster's labels tell it blue
    // is live, so it deploys to green.
    let other = 1 - won;
    let out = runners.deploy(other, "v2", None).success();
    assert!(
        out.stderr.contains("another runner deployed since"),
        "{}",
        out.stderr
    );
    assert_eq!(runners.answer(), "hello v2 from green");
    // And the first runner's status tells the truth from the cluster, not its file.
    let status = swarm_status(&runners.runners[won]);
    assert_eq!(status["live"]["color"], "green", "{status:#}");
}

#[test]
fn a_runner_killed_at_each_step_is_recovered_by_another_with_its_own_state_directory() {
    // Built before the lock is taken, so that a build failure is reported as such.
    cluster();
    let _serial = exclusive();
    // Three runners take turns: one is killed, the next deploys, the third checks
    // `status`. A killed runner's journal stays in its state directory; when its turn
    // comes again, another runner has deployed since, so it is closed untouched —
    // except after every other kill, where the killed runner runs `cutover recover`
    // at once and reconciles its own journal against the cluster.
    let runners = Runners::new("swarm-kill", 3);
    runners.deploy(0, "v1", None).success();
    // The third runner has never deployed: `recover` from its empty state directory
    // (on the other manager) takes the live colour from the cluster's labels.
    let out = runners.runners[2].cutover_env(&["recover"], &cluster().env());
    let out = out.success();
    assert!(
        out.stderr
            .contains("blue is live, as the cluster records it"),
        "{}",
        out.stderr
    );
    let (mut live, mut version) = ("blue", 1);
    let other = |c: &str| if c == "blue" { "green" } else { "blue" };
    for (k, fault) in [
        "before:gate",
        "after:image",
        "after:select",
        "after:clear",
        "after:start",
        "after:health",
        "after:render",
        "after:validate",
        "after:switch",
        "after:verify",
        "after:drain",
        "after:retire",
        "after:prune",
    ]
    .into_iter()
    .enumerate()
    {
        let (killer, next, reader) = (k % 3, (k + 1) % 3, (k + 2) % 3);
        let killed = runners.deploy(killer, &format!("v{}", version + 1), Some(fault));
        assert_ne!(killed.code, 0, "killed {fault}: {}", killed.stderr);
        // From the switch on, nginx serves the killed run's target.
        let step = fault.split_once(':').map_or(fault, |(_, step)| step);
        if ["switch", "verify", "drain", "retire", "prune"].contains(&step) {
            (live, version) = (other(live), version + 1);
        }
        let expected = format!("hello v{version} from {live}");
        assert_eq!(runners.answer(), expected, "after a kill {fault}");
        if k % 2 == 1 {
            // `status` names the interrupted deploy before `recover` closes it.
            let status = swarm_status(&runners.runners[killer]);
            assert!(
                status["interrupted"]["deploy_id"].is_string(),
                "status after a kill {fault}: {status:#}"
            );
            let out = runners.runners[killer].cutover_env(&["recover"], &cluster().env());
            let out = out.success();
            assert!(
                out.stderr.contains("reconciled the interrupted deploy"),
                "recover after a kill {fault}: {}",
                out.stderr
            );
            assert_eq!(runners.answer(), expected, "recover after a kill {fault}");
            let status = swarm_status(&runners.runners[killer]);
            assert!(
                status["interrupted"].is_null(),
                "recover after {fault}: {status:#}"
            );
            assert_eq!(
                status["live"]["color"], live,
                "recover after {fault}: {status:#}"
            );
        }
        let out = runners.deploy(next, &format!("v{}", version + 1), None);
        let out = out.code(0);
        (live, version) = (other(live), version + 1);
        assert_eq!(
            runners.answer(),
            format!("hello v{version} from {live}"),
            "the deploy after a kill {fault}:\n{}",
            out.stderr
        );
        let status = swarm_status(&runners.runners[reader]);
        assert_eq!(status["live"]["color"], live, "after {fault}: {status:#}");
    }
}

/// Waits (90 s at most) until `svc`'s running deploy has journaled its health step.
fn wait_in_health_step(svc: &Service) {
    let in_health = Instant::now() + Duration::from_secs(90);
    while !std::fs::read_to_string(svc.state_file())
        .is_ok_and(|state| state.contains("\"step\": \"health\""))
    {
        assert!(
            Instant::now() < in_health,
            "the deploy never reached its health step"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deploys v2 with `min_healthy = 2` already set while `lost` is gone: it goes on
/// with two of three tasks, green serves, and the proxy files (returned) name no
/// task on `lost`.
fn goes_on_without(svc: &Service, lost: &SwarmNode) -> String {
    let cluster = cluster();
    let out = svc.cutover_env(&["deploy", "--build-arg", "VERSION=v2"], &cluster.env());
    let out = out.success();
    assert!(out.stderr.contains("2 of 3 healthy"), "{}", out.stderr);
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");
    let files: String = svc
        .proxy_files()
        .values()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    assert!(
        !files.contains(&format!("{}:{}", lost.addr, svc.green)),
        "{files}"
    );
    files
}

#[test]
fn a_node_cut_off_during_the_health_step_fails_it_by_quorum_naming_the_node_and_min_healthy_goes_on()
 {
    let cluster = cluster();
    let _serial = exclusive();
    let svc = cluster.service("swarm-cut", 0, "", "");
    svc.edit_config(|text| text.replace("deadline = \"60s\"", "deadline = \"20s\""));
    let deploy = |version: &str| {
        svc.cutover_env(
            &["deploy", "--build-arg", &format!("VERSION={version}")],
            &cluster.env(),
        )
    };
    deploy("v1").success();
    // Each task's first probe comes 15 s after it is seen running, so the node is cut
    // while the deploy waits in its health step, before its task there was judged.
    svc.edit_config(|text| text.replace("[health]\n", "[health]\nfirst_delay = \"15s\"\n"));
    let running = svc.spawn_env(&["deploy", "--build-arg", "VERSION=v2"], &cluster.env());
    wait_in_health_step(&svc);
    // Back however the test ends, for the tests after it.
    let lost_node = cluster.lose_node();
    let lost = lost_node.node();

    let out = running.wait().code(4);
    assert!(
        out.stderr.contains("of 3 green task(s)") && out.stderr.contains(&lost.hostname),
        "the error names the node that failed:\n{}",
        out.stderr
    );
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    let status = swarm_status(&svc);
    assert_eq!(status["live"]["color"], "blue", "{status:#}");

    // Two of three are enough when the config says so: the upstream holds those two.
    svc.edit_config(|text| {
        text.replace(
            "[health]\nfirst_delay = \"15s\"\n",
            "[health]\nmin_healthy = 2\n",
        )
    });
    let files = goes_on_without(&svc, lost);
    for node in &cluster.nodes[..2] {
        assert!(
            files.contains(&format!("{}:{}", node.addr, svc.green)),
            "{files}"
        );
    }
}

#[test]
fn a_nodes_engine_killed_during_the_health_step_loses_its_task_and_quorum_decides() {
    let cluster = cluster();
    let _serial = exclusive();
    let svc = cluster.service("swarm-engine", 0, "", "");
    // Each task's first probe comes 25 s after it is seen running: long enough for the
    // manager to give up on a node whose engine died (about 12 s here) first.
    svc.edit_config(|text| {
        text.replace(
            "deadline = \"60s\"",
            "deadline = \"45s\"\nfirst_delay = \"25s\"",
        )
    });
    let deploy = |version: &str| {
        svc.cutover_env(
            &["deploy", "--build-arg", &format!("VERSION={version}")],
            &cluster.env(),
        )
    };
    deploy("v1").success();
    let running = svc.spawn_env(&["deploy", "--build-arg", "VERSION=v2"], &cluster.env());
    // Node 3's green task answers (so cutover sees it running and waits to probe it)...
    let node = &cluster.nodes[NODES - 1];
    let task = SocketAddr::from((node.addr, svc.green));
    let answers = || {
        http_get(task, "/", Duration::from_secs(2))
            .is_ok_and(|r| r.body.trim() == "hello v2 from green")
    };
    let started = Instant::now() + Duration::from_secs(90);
    while !answers() {
        assert!(
            Instant::now() < started,
            "node 3's green task never answered on {task}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ... when its engine is killed. Started again however the test ends.
    let killed = cluster.kill_engine();
    // The app still answers: only the engine died ...
    assert!(answers(), "the app on {task} died with its engine");
    // ... but the cluster no longer counts it once the node is down.
    let down = cluster.wait_node_status(&node.hostname, "Down", Duration::from_secs(24));
    eprintln!(
        "node 3 marked down {:.1} s after its engine was killed",
        down.as_secs_f64()
    );

    let out = running.wait().code(4);
    assert!(
        out.stderr.contains("of 3 green task(s)")
            && (out.stderr.contains(&format!("on {} (", node.hostname))
                && out.stderr.contains("its node is down")
                || out
                    .stderr
                    .contains(&format!("nodes not ready: {}", node.hostname))),
        "the error names the node whose engine died, and why:\n{}",
        out.stderr
    );
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    let status = swarm_status(&svc);
    assert_eq!(status["live"]["color"], "blue", "{status:#}");
    assert!(status["interrupted"].is_null(), "{status:#}");

    // With two of three enough, the deploy goes on while the engine is still down,
    // and the upstream holds only the two tasks Swarm runs.
    svc.edit_config(|text| text.replace("first_delay = \"25s\"", "min_healthy = 2"));
    goes_on_without(&svc, node);
    drop(killed);
}

#[test]
fn a_node_lost_after_the_switch_is_skipped_by_nginx_and_costs_only_its_in_flight_requests() {
    let cluster = cluster();
    let _serial = exclusive();
    let svc = cluster.service("swarm-lost", 0, "", "");
    svc.cutover_env(&["deploy", "--build-arg", "VERSION=v1"], &cluster.env())
        .success();
    let load = Load::start(LoadConfig {
        fast_rate: 100,
        fast_connections: 4,
        slow_connections: 3,
        slow_ms: (1000, 3000),
        max_duration: Duration::from_secs(120),
        timeout: Duration::from_secs(8),
        ..LoadConfig::new(svc.proxy_addr())
    });
    std::thread::sleep(Duration::from_secs(3));
    let lost_node = cluster.lose_node();
    let lost = lost_node.node();
    let cut_at = load.elapsed().saturating_sub(lost_node.cut.elapsed());
    // Long enough for the requests caught on the lost node to time out, and for
    // nginx to route around it many times over.
    std::thread::sleep(Duration::from_secs(12));
    let report = load.stop();

    let failed = report.failed();
    let after_cut = report.samples.iter().filter(|s| s.at > cut_at).count();
    eprintln!(
        "node {} cut at {cut_at:?}: {} of {} requests failed, all started before the cut; {after_cut} after it, all answered",
        lost.hostname,
        failed.len(),
        report.samples.len()
    );
    // Only requests in flight on that node when it went away are lost: each started
    // before the cut, and there are at most as many as the load's connections.
    assert!(
        failed.iter().all(|s| s.at <= cut_at),
        "a request started after the cut failed: {:?}",
        failed
            .iter()
            .filter(|s| s.at > cut_at)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(failed.len() <= 4 + 3, "{} lost: {failed:?}", failed.len());
    assert!(after_cut > 300, "the load went on: {after_cut}");
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    let status = swarm_status(&svc);
    assert_eq!(status["live"]["color"], "blue", "{status:#}");
}

#[test]
fn a_canary_on_the_swarm_splits_traffic_across_both_colors_tasks_then_promotes() {
    let cluster = cluster();
    let _serial = exclusive();
    let strategy = "\n[strategy]\nkind = \"canary\"\nsteps = [\"30%\", \"pause 4s\", \"100%\"]\n";
    let svc = cluster.service("swarm-canary", 0, "", strategy);
    let deploy = |version: &str| {
        svc.cutover_env(
            &["deploy", "--build-arg", &format!("VERSION={version}")],
            &cluster.env(),
        )
    };
    deploy("v1").success();
    let load = Load::start(LoadConfig {
        fast_rate: 60,
        fast_connections: 2,
        slow_connections: 0,
        max_duration: Duration::from_secs(120),
        ..LoadConfig::new(svc.proxy_addr())
    });
    std::thread::sleep(Duration::from_millis(500));
    let out = deploy("v2").success();
    let report = load.stop();
    assert!(out.stderr.contains("30% → green"), "{}", out.stderr);
    report.assert_none_failed();
    // During the 30% step both versions answered, each from its colour's tasks.
    let versions: BTreeSet<u16> = report.samples.iter().filter_map(|s| s.version).collect();
    assert_eq!(
        versions,
        BTreeSet::from([1, 2]),
        "both versions served during the split"
    );
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");
}

/// `cutover deploy` of the hello app built with `VERSION=<version>` on the swarm.
fn deploy_on(
    cluster: &crate::support::swarm::SwarmCluster,
    svc: &Service,
    version: &str,
) -> Output {
    svc.cutover_env(
        &["deploy", "--build-arg", &format!("VERSION={version}")],
        &cluster.env(),
    )
}

#[test]
fn a_task_that_passed_and_then_exited_does_not_count_toward_min_healthy() {
    let cluster = cluster();
    let _serial = exclusive();
    let svc = cluster.service("swarm-exited", 0, "", "");
    let deploy = |version: &str| deploy_on(cluster, &svc, version);
    deploy("v1").success();
    // Swarm fills in the slot per task: task 1 listens after 10 s and passes, tasks 2
    // and 3 would listen after 20 s and 30 s. Every task exits 12 s after it starts, so
    // only task 1 ever passes, and it is gone 2 s later; Swarm's replacements (5 s
    // restart delay) would listen after the 14 s deadline. One of three is enough by
    // `min_healthy`, but only while it runs.
    svc.edit_config(|text| {
        text.replace(
            "[container.env]\n",
            "[container.env]\nHELLO_STARTUP_DELAY_MS = \"{{.Task.Slot}}0000\"\nHELLO_EXIT_AFTER_MS = \"12000\"\n",
        )
        .replace("deadline = \"60s\"", "deadline = \"14s\"\nmin_healthy = 1")
    });
    let started = Instant::now();
    let out = deploy("v2").code(4);
    assert!(
        out.stderr.contains("no longer running") || out.stderr.contains("of 3 green task(s)"),
        "the deploy fails by quorum, not counting the task that exited:\n{}",
        out.stderr
    );
    eprintln!("failed after {:?}", started.elapsed());
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    let status = swarm_status(&svc);
    assert_eq!(status["live"]["color"], "blue", "{status:#}");
}

#[test]
fn retire_on_a_swarm_returns_once_the_old_tasks_have_stopped() {
    let cluster = cluster();
    let _serial = exclusive();
    let svc = cluster.service("swarm-retire", 0, "", "");
    let deploy = |version: &str| deploy_on(cluster, &svc, version);
    deploy("v1").success();
    let out = deploy("v2").success();
    // The moment the deploy says blue's tasks are stopped, none of them still runs
    // (scaling to 0 only asks Swarm; its agents stop the containers afterwards).
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let config = cutover::config::Config::load(&svc.config_path()).expect("config");
    let counts = runtime
        .block_on(async { cluster.swarm(&config).await.task_counts(Color::Blue).await })
        .expect("task counts")
        .expect("blue's service stays for a rollback");
    assert_eq!(
        counts.alive, 0,
        "blue's tasks still run after the retire step said stopped:\n{}",
        out.stderr
    );
}

#[test]
fn a_deploy_whose_cluster_lock_was_taken_over_stops_at_the_next_step_and_exits_6() {
    let cluster = cluster();
    let _serial = exclusive();
    let svc = cluster.service("swarm-lost", 0, "lock_lease = \"3s\"", "");
    deploy_on(cluster, &svc, "v1").success();
    // v2's tasks listen only 20 s after they start: the deploy sits in its health step.
    svc.set_container_env("HELLO_STARTUP_DELAY_MS", "20000");
    let mut run = svc.spawn_env(&["deploy", "--build-arg", "VERSION=v2"], &cluster.env());
    svc.wait_for_lock_owner(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    assert!(run.ended().is_none(), "the deploy is still running");

    // The runner hangs (SIGSTOP) past its lease, and another runner takes the lock.
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &run.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    std::thread::sleep(Duration::from_secs(5));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut config = cutover::config::Config::load(&svc.config_path()).expect("config");
    // The other runner is this test, which does not renew: its lease must outlast
    // the rest of the test, or `status` below rightly shows no holder.
    config.engine.lock_lease = Some(cutover::config::Duration(Duration::from_secs(300)));
    let swarm = runtime.block_on(cluster.swarm(&config));
    let other = Owner {
        host: "another-runner".to_owned(),
        ..Owner::this_process("deploy", Some("https://ci.example/runs/other".to_owned()))
    };
    let taken = runtime
        .block_on(swarm.claim_lock(&other))
        .expect("the hung runner's lease ran out");
    signal("-CONT");

    // It learns at its next renewal, stops at the next step, writes nothing more, and
    // says who holds the lock.
    let out = run.wait();
    assert_eq!(out.code, 6, "{}", out.stderr);
    assert!(out.stderr.contains("runs/other"), "{}", out.stderr);
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    let state = runtime.block_on(swarm.read_state()).unwrap();
    assert_eq!(state.live, Some(Color::Blue), "the live record stays blue");

    // `status` on this machine shows the cluster lock's holder, though its own lock
    // file is free.
    let status = swarm_status(&svc);
    assert_eq!(status["live"]["color"], "blue", "{status:#}");
    assert_eq!(
        status["lock_owner"]["run_url"], "https://ci.example/runs/other",
        "{status:#}"
    );
    runtime.block_on(swarm.release(taken)).unwrap();
}

#[test]
fn plan_on_a_fresh_swarm_shows_the_upstream_file_the_deploy_then_writes() {
    let cluster = cluster();
    let _serial = exclusive();
    let svc = cluster.service("swarm-plan", 0, "", "");
    // No colour service exists yet: plan still answers, for the nodes Swarm would use.
    let plan = svc.cutover_env(&["plan"], &cluster.env()).success();
    assert!(plan.stdout.contains("tasks   3 on "), "{}", plan.stdout);
    assert!(plan.stdout.contains("upstream "), "{}", plan.stdout);
    let planned: std::collections::BTreeSet<String> = plan
        .stdout
        .lines()
        .filter_map(|l| l.trim_start_matches('+').trim().strip_prefix("server "))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .filter(|addr| addr.contains(':'))
        .collect();
    assert_eq!(planned.len(), 3, "a server line per node:\n{}", plan.stdout);

    deploy_on(cluster, &svc, "v1").success();
    let written: std::collections::BTreeSet<String> = svc
        .proxy_files()
        .values()
        .flat_map(|f| {
            String::from_utf8_lossy(f)
                .lines()
                .filter_map(|l| l.trim().strip_prefix("server "))
                .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
                .filter(|addr| addr.contains(':'))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(planned, written, "plan showed what the deploy wrote");
}

#[test]
fn a_run_killed_after_recording_its_color_live_is_finished_by_recover_not_superseded() {
    let cluster = cluster();
    let _serial = exclusive();
    let svc = cluster.service("swarm-recorded", 0, "", "");
    deploy_on(cluster, &svc, "v1").success();
    // Killed after it wrote the cluster's live record, before its drain step was
    // journaled: the record one above its start is its own.
    let mut env = cluster.env().to_vec();
    env.push(("CUTOVER_FAULT", "at:recorded-live"));
    let killed = svc.cutover_env(&["deploy", "--build-arg", "VERSION=v2"], &env);
    assert_ne!(killed.code, 0, "{}", killed.stderr);
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");

    let out = svc.cutover_env(&["recover"], &cluster.env()).success();
    assert!(
        out.stderr.contains("reconciled the interrupted deploy"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("superseded"), "{}", out.stderr);
    let status = swarm_status(&svc);
    assert!(status["interrupted"].is_null(), "{status:#}");
    assert_eq!(status["live"]["color"], "green", "{status:#}");
    assert_eq!(
        color_state(&status, "blue"),
        "0 of 0 task(s) running",
        "recover retired the old colour: {status:#}"
    );
    assert_eq!(svc.get("/").body.trim(), "hello v2 from green");
}

#[test]
fn a_node_lost_during_the_health_step_fails_the_deploy_once_its_task_cannot_be_placed_not_at_the_deadline()
 {
    let cluster = cluster();
    let _serial = exclusive();
    let svc = cluster.service("swarm-unplaced", 0, "", "");
    deploy_on(cluster, &svc, "v1").success();
    // A deadline far beyond the time Swarm takes to give a lost node up (about 14 s);
    // each task's first probe comes 15 s after it is seen running, so the node is cut
    // before its task there was judged.
    svc.edit_config(|text| {
        text.replace(
            "deadline = \"60s\"",
            "deadline = \"150s\"\nfirst_delay = \"15s\"",
        )
    });
    let running = svc.spawn_env(&["deploy", "--build-arg", "VERSION=v2"], &cluster.env());
    wait_in_health_step(&svc);
    let lost_node = cluster.lose_node();
    let lost = lost_node.node();
    let cut = Instant::now();

    let out = running.wait().code(4);
    let after = cut.elapsed();
    eprintln!("failed {:.1} s after the cut", after.as_secs_f64());
    assert!(
        out.stderr.contains("cannot be placed") && out.stderr.contains(&lost.hostname),
        "the error says the lost node's task has nowhere to go, naming the node:\n{}",
        out.stderr
    );
    // The deadline (150 s after the first probe) was not waited for.
    assert!(
        after < Duration::from_secs(100),
        "failed only {after:?} after the cut:\n{}",
        out.stderr
    );
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    let status = swarm_status(&svc);
    assert_eq!(status["live"]["color"], "blue", "{status:#}");
}

/// A Docker secret in the swarm, removed when dropped (after the services using it).
struct DockerSecret {
    host: String,
    name: String,
}

impl DockerSecret {
    fn create(host: &str, name: &str, value: &str) -> DockerSecret {
        use std::io::Write;
        let mut child = std::process::Command::new("docker")
            .args(["-H", host, "secret", "create", name, "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("docker secret create");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(value.as_bytes())
            .unwrap();
        assert!(
            child.wait().unwrap().success(),
            "docker secret create {name}"
        );
        DockerSecret {
            host: host.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl Drop for DockerSecret {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["-H", &self.host, "secret", "rm", &self.name])
            .output();
    }
}

#[test]
fn a_docker_secret_reaches_every_task_as_a_file_and_a_missing_one_stops_the_start() {
    let cluster = cluster();
    let _serial = exclusive();
    let host = cluster.nodes[0].docker_host();
    let name = format!("cutover-test-db-{}", std::process::id());
    // Declared before the service, so it is removed after the service's cleanup.
    let secret = DockerSecret::create(&host, &name, "db-pass-7d3a");
    let svc = cluster.service("swarm-secret", 0, "", "");
    let with_secret = |secret: &str| {
        svc.edit_config(|text| {
            let text = text.replace(
                "stop_grace = \"2s\"\n",
                &format!("stop_grace = \"2s\"\nsecrets = [\"{secret}\"]\n"),
            );
            // hello stays unhealthy unless the file is there and not empty.
            text.replace(
                "[container.env]\n",
                &format!("[container.env]\nHELLO_REQUIRE = \"/run/secrets/{secret}\"\n"),
            )
        });
    };
    with_secret(&secret.name);
    let out = deploy_on(cluster, &svc, "v1").success();
    assert!(out.stderr.contains("3 of 3 healthy"), "{}", out.stderr);
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    let status = swarm_status(&svc);
    assert!(!status.to_string().contains("db-pass-7d3a"), "{status:#}");

    // A secret the swarm does not have: exit 5 naming it, blue untouched.
    svc.edit_config(|text| text.replace(&name, "cutover-test-no-such-secret"));
    let out = deploy_on(cluster, &svc, "v2").code(5);
    assert!(
        out.stderr
            .contains("no Docker secret `cutover-test-no-such-secret`")
            && out.stderr.contains("docker secret create"),
        "{}",
        out.stderr
    );
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    drop(svc);
}

#[test]
fn a_failed_undo_before_the_switch_still_releases_the_cluster_lock() {
    let cluster = cluster();
    let _serial = exclusive();
    let svc = cluster.service("swarm-undo", 0, "", "");
    deploy_on(cluster, &svc, "v1").success();
    // v2 never gets healthy, and undoing its start fails (the engine "stops
    // answering" right then).
    svc.set_container_env("HELLO_HEALTH", "fail");
    svc.edit_config(|text| text.replace("deadline = \"60s\"", "deadline = \"3s\""));
    let mut env = cluster.env().to_vec();
    env.push(("CUTOVER_FAULT", "fail:undo"));
    let out = svc.cutover_env(&["deploy", "--build-arg", "VERSION=v2"], &env);
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("fail:undo"), "{}", out.stderr);
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");

    // The cluster lock was let go, not left to its 60 s lease: the next deploy runs.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let config = cutover::config::Config::load(&svc.config_path()).expect("config");
    let swarm = runtime.block_on(cluster.swarm(&config));
    let lock = runtime.block_on(swarm.read_lock()).unwrap();
    assert!(
        lock.holder.is_none(),
        "the failed run still holds the lock: {:?}",
        lock.holder
    );
    svc.edit_config(|text| text.replace("HELLO_HEALTH = \"fail\"\n", ""));
    let out = deploy_on(cluster, &svc, "v3").success();
    assert!(!out.stderr.contains("holds its lock"), "{}", out.stderr);
    assert_eq!(svc.get("/").body.trim(), "hello v3 from green");
}
