//! Secrets for the containers (`container.env_from`, `container.env_file`): they reach
//! the real app (hello's `HELLO_REQUIRE` keeps it unhealthy without them), and their
//! values appear in no output or file of cutover's; a missing one is a config error
//! before anything is built.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::support::service::Service;

const DATABASE_URL: &str = "postgres://app:db-pass-5f1e@db/app";
const SECRET_KEY_BASE: &str = "kb-9c2d7e51a0";

/// A service whose app needs `DATABASE_URL` (from the runner's environment) and
/// `SECRET_KEY_BASE` (from `app.env`, mode `mode`) to be healthy.
fn needing_secrets(prefix: &str, mode: u32) -> Service {
    let svc = Service::new(prefix);
    let env_file = svc.base.join("app.env");
    std::fs::write(
        &env_file,
        format!("# for hello\nSECRET_KEY_BASE={SECRET_KEY_BASE}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(mode)).unwrap();
    svc.edit_config(|text| {
        text.replace(
            "stop_grace = \"5s\"\n",
            "stop_grace = \"5s\"\nenv_from = [\"DATABASE_URL\"]\nenv_file = \"app.env\"\n",
        )
        .replace(
            "[container.env]\n",
            "[container.env]\nHELLO_REQUIRE = \"DATABASE_URL,SECRET_KEY_BASE\"\n",
        )
    });
    svc
}

/// Every file under `dir`, as text.
fn every_file(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            every_file(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
}

#[test]
fn env_from_and_env_file_reach_the_app_and_their_values_appear_nowhere_else() {
    let svc = needing_secrets("secrets", 0o600);
    let out = svc.cutover_env(
        &["--output", "json", "deploy", "--build-arg", "VERSION=v1"],
        &[("DATABASE_URL", DATABASE_URL)],
    );
    let out = out.success();
    // Healthy, so the app saw both.
    assert_eq!(svc.get("/").body.trim(), "hello v1 from blue");
    let inspect = Command::new("docker")
        .args(["inspect", "--format", "{{json .Config.Env}}"])
        .arg(format!("{}-blue", svc.name))
        .output()
        .unwrap();
    let env = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        env.contains(&format!("DATABASE_URL={DATABASE_URL}"))
            && env.contains(&format!("SECRET_KEY_BASE={SECRET_KEY_BASE}")),
        "{env}"
    );

    // `status` and `history` too, then every file cutover wrote.
    let status = svc.cutover(&["--output", "json", "status"]).success();
    let history = svc.cutover(&["history"]).success();
    let mut seen = vec![
        ("deploy stdout".to_owned(), out.stdout),
        ("deploy stderr".to_owned(), out.stderr),
        ("status".to_owned(), status.stdout),
        ("history".to_owned(), history.stdout),
    ];
    every_file(&svc.state_dir(), &mut seen);
    for (name, text) in &seen {
        for secret in [DATABASE_URL, SECRET_KEY_BASE] {
            assert!(!text.contains(secret), "{name} shows a secret:\n{text}");
        }
    }
}

#[test]
fn a_missing_secret_is_a_config_error_before_anything_is_built() {
    let svc = needing_secrets("secrets-missing", 0o600);
    let out = svc
        .cutover_env(
            &["--output", "json", "deploy", "--build-arg", "VERSION=v1"],
            &[("DATABASE_URL", "")],
        )
        .code(5);
    // With `--output json` the reason is in the `finished` event.
    assert!(
        out.stdout.contains("`DATABASE_URL`") && out.stdout.contains("container.env_from"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("\"step\":\"image\""),
        "nothing was built:\n{}",
        out.stdout
    );
    assert!(svc.containers().is_empty(), "{:?}", svc.containers());

    // An env file others can read is refused the same way, naming it.
    let open = needing_secrets("secrets-open", 0o644);
    let out = open
        .cutover_env(&["deploy"], &[("DATABASE_URL", DATABASE_URL)])
        .code(5);
    assert!(
        out.stderr.contains("container.env_file") && out.stderr.contains("chmod 600"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(SECRET_KEY_BASE), "{}", out.stderr);
    assert!(open.containers().is_empty(), "{:?}", open.containers());
}
