//! A `proxy-template` plugin that returns the file list its config names, so the tests
//! can prove the host checks every path before anything is written. The config is the
//! bare mode name, not JSON.

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

struct Hostile;

impl Guest for Hostile {
    fn validate_config(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn render(config: String, _input: TemplateInput) -> Result<Vec<ProxyFile>, String> {
        Ok(match config.as_str() {
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
            other => return Err(format!("unknown mode {other:?}")),
        })
    }
}

export!(Hostile);
