//! A throwaway `redis-server` on a 127.0.0.1 port chosen by the OS, for tests of the Redis
//! backend. When `redis-server` is not installed, [`RedisServer::start`] says so loudly on
//! stderr and returns `None`; CI installs it, so there the tests always run.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`, killed on drop.
pub struct RedisServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl RedisServer {
    /// Starts `redis-server` with append-only persistence (fsync always) in `dir`.
    pub fn start(dir: &Path) -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
        Self::start_on(dir, port)
    }

    /// Starts `redis-server` on `port` with its files in `dir` (used to restart it).
    pub fn start_on(dir: &Path, port: u16) -> Option<Self> {
        Self::start_with(dir, &["--port", &port.to_string()], port)
    }

    /// Starts `redis-server` with `args` (which must make it listen on `port`), its files in
    /// `dir`: for a TLS port or a password.
    pub fn start_with(dir: &Path, args: &[&str], port: u16) -> Option<Self> {
        let spawned = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(args)
            .args(["--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                eprintln!("\n*** SKIPPED: redis-server could not be started ({e}). Install it (apt-get install redis-server) to run the Redis backend tests. ***\n");
                return None;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                eprintln!("\n*** redis-server did not start listening on port {port} ***\n");
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self { child, port })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
