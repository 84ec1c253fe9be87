//! The zero-downtime promise, checked in CI: deploys under sustained load, with slow
//! requests in flight at every switch, lose no request. Outcomes are asserted, never
//! timings (the benchmark reports those).

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::load::{Load, LoadConfig};
use crate::support::service::Service;

#[test]
fn three_deploys_under_load_lose_no_request() {
    let svc = Service::new("e2e-zdt");
    svc.deploy("v1").success();

    let target: SocketAddr = ([127, 0, 0, 1], svc.listen).into();
    let load = Load::start(LoadConfig {
        fast_rate: 200,
        fast_connections: 4,
        slow_connections: 3,
        slow_ms: (1000, 3000),
        max_duration: Duration::from_secs(240),
        ..LoadConfig::new(target)
    });
    std::thread::sleep(Duration::from_millis(1500));
    for version in ["v2", "v3", "v4"] {
        svc.deploy(version).success();
    }
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();

    report.assert_none_failed();
    assert!(
        report.samples.len() > 500,
        "the load ran: {}",
        report.samples.len()
    );
    // Each switch had slow requests in flight; they all completed with 2xx.
    assert!(
        report.slow_ok() >= 6,
        "slow requests completed: {}",
        report.slow_ok()
    );
    assert_eq!(svc.get("/").body.trim(), "hello v4 from green");
}
