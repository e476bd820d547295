//! SIGHUP reloads `[auth]` (tokens) and the TLS certificate from the config file without a
//! restart: new connections get the new ones, open connections keep working, and a config
//! that does not load leaves the running settings in place.

use std::process::Command;
use std::sync::Arc;

use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wharf_tests::{base_config, data_dir, wharf_bin, Broker, Client};

fn hash(token: &str) -> String {
    let out = Command::new(wharf_bin())
        .args(["token", "hash", token])
        .output()
        .expect("run wharf token hash");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn hangup(broker: &Broker) {
    let status = Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .expect("run kill -HUP");
    assert!(status.success());
}

/// Rewrites the broker's config file: the test base plus `extra`.
fn rewrite(broker: &Broker, data: &std::path::Path, extra: &str) {
    std::fs::write(
        &broker.config_path,
        format!("{}{extra}\n", base_config(data)),
    )
    .expect("rewrite the config");
}

fn tokens(name: &str, token: &str) -> String {
    format!(
        "[auth]\nenabled = true\n[[auth.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\npublish = [\">\"]\n",
        hash(token)
    )
}

async fn with_bearer(url: &str, token: &str) -> Result<Client, String> {
    let mut request = url.into_client_request().expect("URL");
    let value = format!("Bearer {token}").parse().expect("header");
    request.headers_mut().insert("authorization", value);
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Client::from_stream(ws)),
        Err(e) => Err(e.to_string()),
    }
}

const OLD: &str = "old-token-0123456789";
const NEW: &str = "new-token-0123456789";

#[tokio::test]
async fn tokens_are_replaced_without_a_restart() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &tokens("old", OLD));
    let mut open = with_bearer(&broker.url, OLD).await.expect("old token");

    rewrite(&broker, &data, &tokens("new", NEW));
    hangup(&broker);
    broker.wait_for_log("SIGHUP: reloaded");
    let err = with_bearer(&broker.url, OLD)
        .await
        .err()
        .expect("old token refused");
    assert!(err.contains("401"), "{err}");
    let mut fresh = with_bearer(&broker.url, NEW).await.expect("new token");
    assert_eq!(fresh.publish("t", json!(1)).await, 1);
    // The connection opened with the old token keeps its authentication.
    assert_eq!(open.publish("t", json!(2)).await, 2);

    // A config that does not load changes nothing.
    rewrite(
        &broker,
        &data,
        "[auth]\nenabled = true\ntokens = \"not a list\"",
    );
    hangup(&broker);
    broker.wait_for_log("SIGHUP: reload failed");
    assert!(with_bearer(&broker.url, NEW).await.is_ok());
}

fn connector(cert: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).expect("a root");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Whether a TLS client trusting only `cert` completes a handshake with the broker.
async fn trusts(addr: &str, cert: &CertificateDer<'static>) -> bool {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("a name");
    connector(cert).connect(name, tcp).await.is_ok()
}

#[tokio::test]
async fn the_certificate_is_replaced_without_a_restart() {
    let (tmp, data) = data_dir();
    let cert_path = tmp.path().join("cert.pem");
    let key_path = tmp.path().join("key.pem");
    let first = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    std::fs::write(&cert_path, first.cert.pem()).expect("write cert");
    std::fs::write(&key_path, first.signing_key.serialize_pem()).expect("write key");
    let tls = format!(
        "tls_cert = {:?}\ntls_key = {:?}",
        cert_path.display().to_string(),
        key_path.display().to_string()
    );
    let broker = Broker::start(&data, &tls);
    let addr = broker
        .url
        .trim_start_matches("wss://")
        .trim_end_matches("/ws")
        .to_owned();
    assert!(trusts(&addr, first.cert.der()).await);

    let second = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    std::fs::write(&cert_path, second.cert.pem()).expect("write cert");
    std::fs::write(&key_path, second.signing_key.serialize_pem()).expect("write key");
    rewrite(&broker, &data, &tls);
    hangup(&broker);
    broker.wait_for_log("SIGHUP: reloaded");
    assert!(trusts(&addr, second.cert.der()).await);
    assert!(!trusts(&addr, first.cert.der()).await);
}
