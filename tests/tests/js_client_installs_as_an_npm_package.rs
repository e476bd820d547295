//! The JS client is an npm package: `npm pack` in clients/js makes a tarball of the module,
//! its types and README at the workspace's version; it installs into a new project with no
//! network (`npm install --offline`), imports by name in Node and talks to a real broker,
//! which serves the very same file at /wharf.js. Without node and npm the test says so and
//! passes, unless WHARF_REQUIRE_NODE is set (CI sets it).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};
use wharf_tests::{data_dir, Broker};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// npm, kept off the network and away from the user's cache and config.
fn npm(dir: &Path, cache: &Path, args: &[&str]) -> Output {
    let out = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .env("npm_config_cache", cache)
        .env("npm_config_userconfig", cache.join("npmrc"))
        .env("npm_config_offline", "true")
        .env("npm_config_audit", "false")
        .env("npm_config_fund", "false")
        .env("npm_config_update_notifier", "false")
        .output()
        .expect("run npm");
    assert!(
        out.status.success(),
        "npm {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// GET `path` from the broker's HTTP side; the body.
fn http_get(url: &str, path: &str) -> Vec<u8> {
    let addr = url.trim_start_matches("ws://").trim_end_matches("/ws");
    let mut stream = TcpStream::connect(addr).expect("connect to the broker");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    response[split + 4..].to_vec()
}

const PROBE: &str = r#"
import { WharfClient, WharfError } from 'wharf-client';
const client = new WharfClient(process.env.WHARF_URL);
await client.connect();
const got = new Promise((resolve) => {
  client.subscribe('npm.>', { consumer: 'npm-probe' }, (event) => resolve(event));
});
const seq = await client.publish('npm.installed', { from: 'tarball' });
const event = await got;
await client.flush();
client.close();
console.log(JSON.stringify({ seq, event: { seq: event.seq, topic: event.topic, payload: event.payload }, error: typeof WharfError }));
"#;

#[test]
fn the_packed_client_installs_offline_and_talks_to_a_broker() {
    if !have("node") || !have("npm") {
        assert!(
            std::env::var_os("WHARF_REQUIRE_NODE").is_none(),
            "WHARF_REQUIRE_NODE is set but node or npm is not installed"
        );
        eprintln!("skipped: node and npm are needed to pack and install the JS client");
        return;
    }
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js");
    let tmp = tempfile::tempdir().expect("temp dir");
    let cache = tmp.path().join("npm-cache");
    std::fs::create_dir_all(&cache).expect("cache dir");

    // Pack.
    let packed = npm(
        &js,
        &cache,
        &[
            "pack",
            "--json",
            "--pack-destination",
            &tmp.path().display().to_string(),
        ],
    );
    let report: Value = serde_json::from_slice(&packed.stdout).expect("npm pack --json");
    let report = &report[0];
    assert_eq!(report["name"], "wharf-client");
    assert_eq!(
        report["version"],
        env!("CARGO_PKG_VERSION"),
        "package.json's version is the workspace version"
    );
    let mut files: Vec<&str> = report["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path"))
        .collect();
    files.sort_unstable();
    assert_eq!(
        files,
        ["README.md", "package.json", "wharf.d.ts", "wharf.js"]
    );
    let tarball: PathBuf = tmp
        .path()
        .join(report["filename"].as_str().expect("filename"));

    // Install into a new project, offline.
    let project = tmp.path().join("project");
    std::fs::create_dir_all(&project).expect("project dir");
    std::fs::write(
        project.join("package.json"),
        json!({"name":"probe","version":"1.0.0","private":true,"type":"module"}).to_string(),
    )
    .expect("write package.json");
    npm(
        &project,
        &cache,
        &["install", "--offline", &tarball.display().to_string()],
    );
    let installed = project.join("node_modules/wharf-client");
    assert!(installed.join("wharf.d.ts").exists(), "types are installed");
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(installed.join("package.json")).expect("installed package.json"),
    )
    .expect("JSON");
    assert_eq!(manifest["type"], "module");
    assert_eq!(manifest["types"], "./wharf.d.ts");

    // Import it by name and talk to a real broker.
    let (_data_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    std::fs::write(project.join("probe.mjs"), PROBE).expect("write probe");
    let version = Command::new("node")
        .arg("--version")
        .output()
        .expect("node --version");
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    let mut node = Command::new("node");
    if version.starts_with("v20.") || version.starts_with("v21.") {
        node.arg("--experimental-websocket");
    }
    let out = node
        .arg("probe.mjs")
        .current_dir(&project)
        .env("WHARF_URL", &broker.url)
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).expect("the probe's JSON line");
    assert_eq!(result["seq"], 1, "{result}");
    assert_eq!(
        result["event"],
        json!({"seq":1,"topic":"npm.installed","payload":{"from":"tarball"}})
    );
    assert_eq!(result["error"], "function");

    // The broker serves the very file the package ships.
    let shipped = std::fs::read(installed.join("wharf.js")).expect("installed wharf.js");
    assert_eq!(
        shipped,
        std::fs::read(js.join("wharf.js")).expect("clients/js/wharf.js")
    );
    assert!(
        http_get(&broker.url, "/wharf.js") == shipped,
        "/wharf.js differs from the package"
    );
}
