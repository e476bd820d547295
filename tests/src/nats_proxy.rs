//! A TCP proxy between a broker and one NATS node that loses answers: the first message
//! from the server whose payload contains a needle is not passed on, as a JetStream cluster
//! sometimes loses the answer to a request it carried out (nats-server#8350). Everything
//! else passes unchanged, both ways.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A running proxy; it lives as long as the test process.
pub struct AnswerDroppingProxy {
    pub url: String,
    dropped: Arc<AtomicUsize>,
}

impl AnswerDroppingProxy {
    /// Proxies to `nats://127.0.0.1:<port>`, dropping the first server message (over all
    /// connections) whose payload contains `needle`.
    pub fn start(port: u16, needle: &str) -> AnswerDroppingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let url = format!(
            "nats://{}",
            listener.local_addr().expect("the proxy's address")
        );
        let dropped = Arc::new(AtomicUsize::new(0));
        let (needle, count) = (needle.as_bytes().to_vec(), dropped.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
                    continue;
                };
                let (needle, count) = (needle.clone(), count.clone());
                pass_both_ways(client, server, needle, count);
            }
        });
        AnswerDroppingProxy { url, dropped }
    }

    /// How many messages it dropped so far.
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

fn pass_both_ways(
    client: TcpStream,
    server: TcpStream,
    needle: Vec<u8>,
    dropped: Arc<AtomicUsize>,
) {
    let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_in, &mut server_out);
        let _ = server_out.shutdown(Shutdown::Both);
    });
    std::thread::spawn(move || {
        let mut to_client = client;
        let _ = pass_server_messages(server, &mut to_client, &needle, &dropped);
        let _ = to_client.shutdown(Shutdown::Both);
    });
}

/// Copies the server's protocol lines and messages to the client, but for the one dropped.
fn pass_server_messages(
    server: TcpStream,
    to_client: &mut TcpStream,
    needle: &[u8],
    dropped: &AtomicUsize,
) -> std::io::Result<()> {
    let mut from_server = BufReader::new(server);
    let mut line = Vec::new();
    loop {
        line.clear();
        if from_server.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        // `MSG <subject> <sid> [reply] <bytes>` and `HMSG … <header bytes> <total bytes>`:
        // the last number is what follows, before its CRLF.
        let is_message = line.starts_with(b"MSG ") || line.starts_with(b"HMSG ");
        let size = is_message
            .then(|| {
                std::str::from_utf8(&line)
                    .ok()?
                    .split_whitespace()
                    .last()?
                    .parse::<usize>()
                    .ok()
            })
            .flatten();
        let Some(size) = size else {
            to_client.write_all(&line)?;
            continue;
        };
        let mut body = vec![0; size + 2];
        from_server.read_exact(&mut body)?;
        let carries_needle = body.windows(needle.len()).any(|w| w == needle);
        if carries_needle
            && dropped
                .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            continue;
        }
        to_client.write_all(&line)?;
        to_client.write_all(&body)?;
    }
}
