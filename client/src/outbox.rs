//! The persistent outbox (`Options::outbox`): publishes written to a file before they are
//! sent, so that a publish the process made survives the process, the way the Python
//! client's `outbox=` file does (the same journal format).
//!
//! The file is a journal of JSON lines. `{"add": KEY, "frame": {...}, "at": UNIX_SECONDS}` is
//! appended and synced before a publish is sent (KEY is its first msg_id, the frame the
//! publish request without its id); `{"done": KEY}` is appended once the broker confirmed it
//! or refused it for good. On opening, every `add` without its `done` is pending again, in
//! the order it was made, and the driver sends it first, with the msg_ids it had, so the
//! broker stores it once (inside its `dedup_window`). A crash may leave the last line half
//! written: its publish was never sent (the line is synced first), so it is cut off; damage
//! anywhere else is refused. When nothing is pending the file is emptied; when it holds many
//! more finished entries than pending ones it is rewritten (a new file renamed over it). A
//! lock on `PATH.lock` keeps two clients from sending the same entries.
//!
//! Only the driver task touches it: blocking file calls, each a short append (and one
//! fdatasync per publish, the price of surviving a crash).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::value::RawValue;
use wharf_protocol::Request;

use crate::Error;

/// Rewrite the file once it holds this many lines and four times as many as are pending.
const REWRITE_LINES: usize = 1000;

pub(crate) struct Outbox {
    path: PathBuf,
    file: File,
    /// Held for the outbox's life: the lock on `PATH.lock`.
    _lock: File,
    /// Pending entries by the order they were added: (order, key) -> (frame, at).
    pending: BTreeMap<u64, (String, String, f64)>,
    /// Where each key is in `pending`.
    order_of: std::collections::HashMap<String, u64>,
    next: u64,
    lines: usize,
}

#[derive(Deserialize)]
struct Record<'a> {
    #[serde(default)]
    add: Option<String>,
    #[serde(default, borrow)]
    frame: Option<&'a RawValue>,
    #[serde(default)]
    at: Option<f64>,
    #[serde(default)]
    done: Option<String>,
}

fn failed(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Outbox(format!("{}: {what}: {e}", path.display()))
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The first msg_id of a publish: its key in the outbox. `None` for what is not a publish
/// with msg_ids (it is not kept).
pub(crate) fn key_of(request: &Request) -> Option<String> {
    match request {
        Request::Publish { event, .. } => event.msg_id.clone(),
        Request::PublishBatch { events, .. } if events.iter().all(|e| e.msg_id.is_some()) => {
            events.first().and_then(|e| e.msg_id.clone())
        }
        _ => None,
    }
}

impl Outbox {
    /// Opens (or creates) the journal at `path`, locked for this client.
    pub(crate) fn open(path: &Path) -> Result<Outbox, Error> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| failed(path, "cannot open its lock file", e))?;
        if lock.try_lock().is_err() {
            return Err(Error::Outbox(format!(
                "{}: in use by another client (another process, or a client of this one that \
                 was not closed)",
                path.display()
            )));
        }
        let mut outbox = Outbox {
            path: path.to_owned(),
            file: OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(path)
                .map_err(|e| failed(path, "cannot open", e))?,
            _lock: lock,
            pending: BTreeMap::new(),
            order_of: std::collections::HashMap::new(),
            next: 0,
            lines: 0,
        };
        outbox.load()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The file's name survives a crash too.
            if let Ok(dir) = File::open(dir) {
                let _best_effort = dir.sync_all();
            }
        }
        Ok(outbox)
    }

    fn load(&mut self) -> Result<(), Error> {
        let mut data = Vec::new();
        self.file
            .read_to_end(&mut data)
            .map_err(|e| failed(&self.path, "cannot read", e))?;
        let whole = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for (number, line) in data[..whole].split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let damaged = |why: String| {
                Error::Outbox(format!(
                    "{} line {} is not an outbox record: {why}",
                    self.path.display(),
                    number + 1
                ))
            };
            let record: Record =
                serde_json::from_slice(line).map_err(|e| damaged(e.to_string()))?;
            match record {
                Record {
                    add: Some(key),
                    frame: Some(frame),
                    at,
                    ..
                } => {
                    self.insert(key, frame.get().to_owned(), at.unwrap_or(0.0));
                }
                Record {
                    done: Some(key), ..
                } => {
                    self.remove(&key);
                }
                _ => return Err(damaged("neither add nor done".into())),
            }
            self.lines += 1;
        }
        if whole < data.len() {
            // A torn last line: cut off, so that the next record starts on its own line.
            self.file
                .set_len(whole as u64)
                .and_then(|()| self.file.sync_data())
                .map_err(|e| failed(&self.path, "cannot cut its torn last line", e))?;
        }
        Ok(())
    }

    fn insert(&mut self, key: String, frame: String, at: f64) {
        self.remove(&key);
        self.next += 1;
        self.order_of.insert(key.clone(), self.next);
        self.pending.insert(self.next, (key, frame, at));
    }

    fn remove(&mut self, key: &str) -> bool {
        match self.order_of.remove(key) {
            Some(order) => self.pending.remove(&order).is_some(),
            None => false,
        }
    }

    /// What a previous client left, in the order it was published: key and request.
    /// An entry whose frame does not read as a request (another client's format) is not
    /// sent and stays in the file: neither it nor the client is lost over it.
    pub(crate) fn entries(&self) -> Vec<(String, Request)> {
        self.pending
            .values()
            .filter_map(|(key, frame, _)| {
                let request = wharf_protocol::parse_request(frame).ok()?;
                Some((key.clone(), request))
            })
            .collect()
    }

    fn append(&mut self, line: &str, sync: bool) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.file.write_all(&bytes)?;
        if sync {
            self.file.sync_data()?;
        }
        self.lines += 1;
        Ok(())
    }

    /// Records a publish durably before it is sent.
    pub(crate) fn add(&mut self, key: &str, request: &Request) -> Result<(), Error> {
        let mut frame = request.clone();
        frame.set_id(None);
        let frame = frame.to_json();
        let at = now_seconds();
        let quoted = serde_json::to_string(key).map_err(|e| failed(&self.path, "key", e))?;
        let line = format!(r#"{{"add":{quoted},"frame":{frame},"at":{at}}}"#);
        self.append(&line, true)
            .map_err(|e| failed(&self.path, "cannot write", e))?;
        self.insert(key.to_owned(), frame, at);
        Ok(())
    }

    /// Records a publish confirmed or refused for good. Not synced: lost in a crash, the
    /// entry is sent again with its msg_ids, and the broker's dedup window stores it once.
    pub(crate) fn done(&mut self, key: &str) -> Result<(), Error> {
        if !self.remove(key) {
            return Ok(());
        }
        let written = if self.pending.is_empty() {
            // Nothing pending: start over with an empty file.
            self.lines = 0;
            self.file.set_len(0)
        } else {
            let quoted = serde_json::to_string(key).map_err(|e| failed(&self.path, "key", e))?;
            self.append(&format!(r#"{{"done":{quoted}}}"#), false)
        };
        written.map_err(|e| failed(&self.path, "cannot write", e))?;
        if self.lines >= REWRITE_LINES && self.lines >= 4 * self.pending.len() {
            self.rewrite()?;
        }
        Ok(())
    }

    /// The pending entries alone, in a new file renamed over the old one.
    fn rewrite(&mut self) -> Result<(), Error> {
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut text = String::new();
        for (key, frame, at) in self.pending.values() {
            let quoted = serde_json::to_string(key).map_err(|e| failed(&self.path, "key", e))?;
            text.push_str(&format!(r#"{{"add":{quoted},"frame":{frame},"at":{at}}}"#));
            text.push('\n');
        }
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        });
        written
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| failed(&self.path, "cannot rewrite", e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if let Ok(dir) = File::open(dir) {
                let _best_effort = dir.sync_all();
            }
        }
        self.file = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&self.path)
            .map_err(|e| failed(&self.path, "cannot open", e))?;
        self.lines = self.pending.len();
        Ok(())
    }
}
