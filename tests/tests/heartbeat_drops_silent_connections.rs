//! A connection that stops answering pings (a half-open socket) is dropped, so it cannot
//! hold a durable consumer forever.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use wharf_tests::{data_dir, Broker};

#[test]
fn a_client_that_never_answers_pings_is_closed() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(
        &data,
        "heartbeat_interval = \"100ms\"\nheartbeat_timeout = \"100ms\"",
    );
    let addr = broker
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned();
    // A raw socket: it completes the handshake and then never writes again, so no pong.
    let mut sock = TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        sock,
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!("the broker never closed the silent connection: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(
        text.contains("heartbeat timeout"),
        "no close reason in {text:?}"
    );
    // Pings came first (opcode 0x9), then the close.
    assert!(seen.windows(2).any(|w| w == [0x89, 0x00]), "no ping seen");
    assert!(started.elapsed() < Duration::from_secs(5));
}
