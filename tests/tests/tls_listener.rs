//! `wss://` and `https://` with rustls, tested with a certificate the test makes (rcgen).

use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use wharf_tests::{data_dir, Broker, Client};

fn connector(cert: &CertificateDer<'static>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(cert.clone()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn the_listener_speaks_tls_when_given_a_certificate() {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (tmp, data) = data_dir();
    let cert_path = tmp.path().join("cert.pem");
    let key_path = tmp.path().join("key.pem");
    std::fs::write(&cert_path, generated.cert.pem()).unwrap();
    std::fs::write(&key_path, generated.signing_key.serialize_pem()).unwrap();
    let broker = Broker::start(
        &data,
        &format!(
            "tls_cert = {:?}\ntls_key = {:?}",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
    );
    assert!(broker.url.starts_with("wss://"), "{}", broker.url);
    let addr = broker
        .url
        .trim_start_matches("wss://")
        .trim_end_matches("/ws")
        .to_owned();
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let tls = connector(generated.cert.der());
    let name = ServerName::try_from("localhost").unwrap();

    // WebSocket over TLS: publish and receive.
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let stream = tls.connect(name.clone(), tcp).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("wss://localhost:{port}/ws"), stream)
        .await
        .unwrap();
    let mut c = Client::from_stream_any(ws);
    c.subscribe("secure.*", None).await;
    assert_eq!(c.publish("secure.x", json!({"ok": true})).await, 1);
    assert_eq!(c.events(1).await[0]["payload"], json!({"ok": true}));

    // HTTPS for the rest.
    let tcp = TcpStream::connect(&addr).await.unwrap();
    let mut stream = tls.connect(name, tcp).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // Plain WebSocket to the TLS port fails.
    assert!(tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .is_err());
}

#[test]
fn half_a_tls_config_is_refused_by_name() {
    let out = std::process::Command::new(wharf_tests::wharf_bin())
        .args(["serve", "--check-config", "--config", "/dev/null"])
        .env("WHARF_TLS_CERT", "/tmp/cert.pem")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls_key"));
}
