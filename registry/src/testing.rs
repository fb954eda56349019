//! Test support shared by this crate's and the CLI's integration tests:
//! Debian's `docker-registry` started on an ephemeral loopback port, and a
//! throttling TCP proxy to interrupt transfers at a predictable point.
//! Not used by quern itself.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `QUERN_REQUIRE_EXTERNAL=1` (set by CI) turns a missing external tool into a failure.
pub fn require_external() -> bool {
    std::env::var("QUERN_REQUIRE_EXTERNAL").is_ok_and(|v| v == "1")
}

/// Print a skip notice, or panic when external tools are required.
pub fn missing(tool: &str) {
    if require_external() {
        panic!("{tool} is required (QUERN_REQUIRE_EXTERNAL=1) but not available");
    }
    eprintln!("SKIPPED: {tool} not available (set QUERN_REQUIRE_EXTERNAL=1 to require it)");
}

pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Poll `GET /v2/` until it answers (bounded: 10 s).
pub fn wait_ready(host: &str) -> bool {
    for _ in 0..200 {
        match ureq::get(&format!("http://{host}/v2/"))
            .timeout(Duration::from_millis(500))
            .call()
        {
            Ok(_) | Err(ureq::Error::Status(_, _)) => return true,
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    false
}

/// A docker-registry child process with its own storage; killed on drop.
pub struct DockerRegistry {
    pub host: String,
    pub storage: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl DockerRegistry {
    pub const BIN: &'static str = "/usr/bin/docker-registry";

    pub fn available() -> bool {
        std::path::Path::new(Self::BIN).exists()
    }

    /// Start one on a free loopback port (3 tries); None when it is not installed.
    pub fn start() -> io::Result<Option<DockerRegistry>> {
        if !Self::available() {
            return Ok(None);
        }
        for _ in 0..3 {
            let dir = tempfile::tempdir()?;
            let storage = dir.path().join("storage");
            let port = free_port()?;
            let cfg = dir.path().join("config.yml");
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    storage.display()
                ),
            )?;
            let child = Command::new(Self::BIN)
                .arg("serve")
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let r = DockerRegistry {
                host: format!("127.0.0.1:{port}"),
                storage,
                child,
                _dir: dir,
            };
            if wait_ready(&r.host) {
                return Ok(Some(r));
            }
        }
        Err(io::Error::other(
            "docker-registry did not start on loopback after 3 attempts",
        ))
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP proxy that forwards at most `bytes_per_sec` in each
/// direction, so a test can kill a client or server mid-transfer.
pub struct SlowProxy {
    pub addr: String,
    stop: Arc<AtomicBool>,
    rate: Arc<AtomicU64>,
}

impl SlowProxy {
    pub fn start(target: &str, bytes_per_sec: u64) -> io::Result<SlowProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let rate = Arc::new(AtomicU64::new(bytes_per_sec));
        let (target, stop2, rate2) = (target.to_string(), stop.clone(), rate.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(&target) else {
                            continue;
                        };
                        let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                            (Ok(c), Ok(s)) => (c, s),
                            _ => continue,
                        };
                        let (st1, st2) = (stop2.clone(), stop2.clone());
                        let (r1, r2) = (rate2.clone(), rate2.clone());
                        std::thread::spawn(move || pump(client, server, r1, st1));
                        std::thread::spawn(move || pump(s2, c2, r2, st2));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(SlowProxy { addr, stop, rate })
    }

    /// Change the rate of every connection, open or future.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copy in 16 KiB steps, sleeping to hold the rate; ends with either side or on stop.
fn pump(mut from: TcpStream, mut to: TcpStream, rate: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 16 << 10];
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    while !stop.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                let r = rate.load(Ordering::Relaxed).max(1);
                std::thread::sleep(Duration::from_micros(n as u64 * 1_000_000 / r));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
