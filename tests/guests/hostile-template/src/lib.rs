//! A `proxy-template` plugin that returns the file list its config names, so the tests
//! can prove the host checks every path and every file before anything is written. The
//! config is the bare mode name or `{"mode":"<name>"}` (what `config = { mode = "..." }`
//! in cutover.toml becomes).

// wit-bindgen's generated glue is the only `unsafe` here.
#![allow(unsafe_code)]
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "proxy-template",
    path: "../../../wit/v0.1.0",
});

fn file(path: &str, contents: &str) -> ProxyFile {
    ProxyFile {
        path: path.to_owned(),
        contents: contents.to_owned(),
    }
}

/// The mode named by `config`.
fn mode(config: &str) -> &str {
    config
        .strip_prefix("{\"mode\":\"")
        .and_then(|rest| rest.strip_suffix("\"}"))
        .unwrap_or(config)
}

/// `set $service_url` for the target, as the default template writes it.
fn service_url(input: &TemplateInput) -> String {
    format!(
        "set $service_url http://{}:{};\n",
        input.target.address, input.target.port
    )
}

struct Hostile;

impl Guest for Hostile {
    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn render(config: String, input: TemplateInput) -> Result<Vec<ProxyFile>, String> {
        Ok(match mode(&config) {
            "ok" => vec![file(
                "service-url.inc",
                "set $service_url http://127.0.0.1:1;\n",
            )],
            "traversal" => vec![file("../../etc/cron.d/evil", "* * * * * root sh\n")],
            "absolute" => vec![file("/etc/nginx/nginx.conf", "events {}\n")],
            "nul" => vec![file("a.inc", "set $x 1;\0")],
            "many" => (0..100).map(|i| file(&format!("f{i}.inc"), "")).collect(),
            "duplicate" => vec![file("a.inc", "1"), file("a.inc", "2")],
            "huge" => vec![file("a.inc", &"#".repeat(1 << 20))],
            // Closes the block it is included in and opens a server of its own.
            "break-out" => vec![file(
                "service-url.inc",
                &format!(
                    "{}}}\nserver {{ listen 127.0.0.1:1; return 200 \"owned\"; }}\nlocation /x {{\n",
                    service_url(&input)
                ),
            )],
            // Valid nginx that sends every request elsewhere: only verify can tell.
            "hijack" => vec![file(
                "service-url.inc",
                &format!("{}return 302 http://evil.invalid/;\n", service_url(&input)),
            )],
            other => return Err(format!("unknown mode {other:?}")),
        })
    }
}

export!(Hostile);
