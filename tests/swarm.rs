//! The Swarm engine's primitives on a real 3-node swarm (tests/support/swarm.rs,
//! shared by these tests): a colour's service by digest with one task per node, each
//! answering at its node's address and port from the host; scaling to 0 and back; a
//! pushed image run by digest; the deploy lock's compare-and-swap between two
//! runners on two managers; the cluster state labels read from another manager.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use cutover::Color;
use cutover::engine::Swarm;
use cutover::engine::swarm::{SwarmError, TaskEndpoint};
use cutover::lock::Owner;

use crate::support::swarm::{NODES, cluster, load_config};
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
async fn colour_service_runs_one_task_per_node_by_digest_and_scales_to_zero_and_back() {
    let Some(cluster) = cluster() else { return };
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
        .deploy_color(Color::Blue, &cluster.image_v1, "deploy-1", Some(&auth))
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
        .deploy_color(Color::Blue, &v2, "deploy-2", Some(&auth))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_lock_is_compare_and_swap_and_the_loser_names_the_holder() {
    let Some(cluster) = cluster() else { return };
    let service = unique_service("swl");
    // Two runners with their own state directories, on two different managers.
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = cluster
        .swarm(&cluster.config(dir_a.path(), &service, 0, ""))
        .await;
    let b = cluster
        .swarm(&cluster.config(dir_b.path(), &service, 1, ""))
        .await;
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
    names(&b.lock(&owner_b).await.unwrap_err(), "runs/a");
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
    let lock_b = b.lock(&owner_b).await.expect("b takes the free lock");
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
    let (ra, rb) = tokio::join!(a.lock(&owner_a), b.lock(&owner_b));
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

    // A holder that died leaves its lease to expire; then the next runner takes over
    // and learns whom it replaced.
    let dead = Owner {
        lease_until: "2001-01-01T00:00:00Z".to_owned(),
        ..owner_a.clone()
    };
    a.lock(&dead).await.expect("take with an expired lease");
    let lock_b = b
        .lock(&owner_b)
        .await
        .expect("an expired lease is taken over");
    assert_eq!(lock_b.took_over, Some(dead));
    b.release(lock_b).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_state_labels_round_trip_between_managers() {
    let Some(cluster) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let service = unique_service("sws");
    let writer_config = cluster.config(dir.path(), &service, 0, "replicas = 1");
    let writer = cluster.swarm(&writer_config).await;
    // Another runner, on another manager, with its own state directory.
    let other_dir = tempfile::tempdir().unwrap();
    let reader = cluster
        .swarm(&cluster.config(other_dir.path(), &service, 2, "replicas = 1"))
        .await;
    let auth = cluster.auth();

    assert!(matches!(
        writer.record_state(Color::Blue, None).await,
        Err(SwarmError::NoService { .. })
    ));
    for (color, deploy) in [(Color::Blue, "d1"), (Color::Green, "d2")] {
        writer
            .deploy_color(color, &cluster.image_v1, deploy, Some(&auth))
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
        .deploy_color(Color::Blue, &cluster.image_v1, "d3", Some(&auth))
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
