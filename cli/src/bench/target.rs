//! The broker a bench run loads: one at `--url`, or a `wharf serve` child process on a
//! temporary data dir. A separate process, so that its RSS can be read and the client's work
//! is not counted as the broker's (the peers in the side-by-side runner run the same way).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

pub struct Target {
    pub url: String,
    /// The broker's process id, when known (`--url` with `--pid`, or the child).
    pub pid: Option<u32>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    /// A broker at `url`; `pid` lets RSS be read when it runs on this machine.
    pub fn external(url: String, pid: Option<u32>) -> Target {
        Target {
            url,
            pid,
            child: None,
            _dir: None,
        }
    }

    /// Starts `wharf serve` (this same executable) on a temporary data dir with `extra`
    /// config lines, and waits for its "listening" line.
    pub fn spawn(extra: &str) -> anyhow::Result<Target> {
        let dir = tempfile::tempdir().context("cannot make a temporary data dir")?;
        let config = dir.path().join("config.toml");
        let data = dir.path().join("data");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nlog_level = \"info\"\n{extra}\n",
                data.display().to_string()
            ),
        )
        .context("cannot write the bench broker's config")?;
        let exe = std::env::current_exe().context("cannot find the wharf executable")?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start wharf serve")?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("no stderr from wharf serve"))?;
        let (tx, rx) = std::sync::mpsc::channel::<Result<String, String>>();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && line.contains("listening") {
                    if let Some(url) = line.split_whitespace().find_map(|w| w.strip_prefix("url="))
                    {
                        let _receiver_waits = tx.send(Ok(url.to_owned()));
                        sent = true;
                    }
                }
                if !sent {
                    seen.push(line);
                }
                // Later lines are read and dropped so the broker never blocks on a full pipe.
            }
            if !sent {
                let _receiver_waits = tx.send(Err(seen.join("\n")));
            }
        });
        let pid = child.id();
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(url)) => Ok(Target {
                url,
                pid: Some(pid),
                child: Some(child),
                _dir: Some(dir),
            }),
            Ok(Err(log)) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("wharf serve did not start:\n{log}")
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("wharf serve did not report listening within 30 s")
            }
        }
    }

    /// The broker's resident set now, in bytes.
    pub fn rss(&self) -> Option<u64> {
        self.pid.and_then(rss_of)
    }

    /// Samples the broker's RSS every 50 ms until the returned guard is dropped; the guard
    /// reports the peak.
    pub fn watch_rss(&self) -> RssWatch {
        let peak = Arc::new(AtomicU64::new(self.rss().unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        if let Some(pid) = self.pid {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = rss_of(pid) {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        RssWatch { peak, stop }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct RssWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssWatch {
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// VmRSS of a process from /proc (Linux only; None elsewhere or once it has exited).
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time (user + system, seconds) used so far by this process (the client) and by the
/// broker: a scenario takes one when its measured part starts and reports the difference per
/// event, so that the load generator's own cost is on the record next to the broker's (both
/// share the machine's cores).
#[derive(Clone, Copy)]
pub struct CpuMark {
    client: f64,
    broker: Option<f64>,
}

impl Target {
    pub fn cpu_mark(&self) -> CpuMark {
        CpuMark {
            client: own_cpu_seconds(),
            broker: self.pid.and_then(cpu_seconds_of),
        }
    }

    /// Microseconds of CPU per unit since `mark` (`client_cpu_us`, `broker_cpu_us`).
    pub fn cpu_since(
        &self,
        mark: CpuMark,
        units: u64,
        extra: &mut serde_json::Map<String, serde_json::Value>,
    ) {
        let per = |seconds: f64| seconds.max(0.0) * 1e6 / units.max(1) as f64;
        extra.insert(
            "client_cpu_us".into(),
            per(own_cpu_seconds() - mark.client).into(),
        );
        if let (Some(before), Some(now)) = (mark.broker, self.pid.and_then(cpu_seconds_of)) {
            extra.insert("broker_cpu_us".into(), per(now - before).into());
        }
    }
}

/// This process's CPU time so far, every thread.
fn own_cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return 0.0;
        }
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Another process's CPU time so far, from /proc (Linux only).
fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields after it start past the last ')';
    // utime and stime are the 12th and 13th of those.
    let mut after = stat
        .get(stat.rfind(')')? + 2..)?
        .split_whitespace()
        .skip(11);
    let utime: f64 = after.next()?.parse().ok()?;
    let stime: f64 = after.next()?.parse().ok()?;
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}
