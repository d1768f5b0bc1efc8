//! Dev-only helpers: a private `redis-server` per test, killed on drop, and `wait_for`
//! polling with a deadline instead of sleeps.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A `redis-server` of the test's own on a free port. Never a shared Redis: pub/sub is not
/// scoped by database, and shared state would force tests to run one at a time.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// A port the OS says is free now, and never one this process was given before: tests run
/// on parallel threads, and the OS may hand the port it just gave one of them to the next
/// caller before the first test's server has bound it.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        let port = l.local_addr().expect("local addr").port();
        if GIVEN.lock().map_or(true, |mut given| given.insert(port)) {
            return port;
        }
    }
}

impl RedisServer {
    /// Starts a non-persistent server and waits until it answers. Panics (failing the
    /// test loudly) when `redis-server` is missing: tests never skip silently.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts one with extra `redis-server` arguments (`["--appendonly", "yes"]`).
    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut s = Self {
            child: None,
            port: 0,
            dir,
        };
        for _ in 0..20 {
            s.port = free_port();
            if s.spawn(extra) {
                return s;
            }
        }
        panic!("could not start redis-server (is it installed? `apt-get install redis-server`)");
    }

    fn spawn(&mut self, extra: &[&str]) -> bool {
        let port = self.port.to_string();
        let mut args = vec!["--port", port.as_str()];
        args.extend_from_slice(extra);
        self.spawn_with(&args, true)
    }

    /// Whether this server's own process answers on its port, else it is stopped. `plain`:
    /// it speaks plain RESP, so its pid can be asked (a TLS-only one cannot).
    fn wait_ready(&mut self, plain: bool) -> bool {
        let ready = match self.child.as_mut() {
            Some(child) => answers_within(self.port, child, Duration::from_secs(10), plain),
            None => false,
        };
        if !ready {
            self.stop();
        }
        ready
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A server that speaks only TLS, with a fresh self-signed certificate (made with the
    /// `openssl` command). Returns it with a `rediss://` URL that skips certificate checks.
    pub fn start_tls() -> (Self, String) {
        let certs = tempfile::tempdir().expect("temp dir for certificates");
        let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl must be installed to test TLS");
        assert!(ok.success(), "openssl could not make a certificate");
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        // The TLS port is the server's port; plain TCP is off.
        let mut s = Self {
            child: None,
            port: 0,
            dir: certs,
        };
        for _ in 0..20 {
            s.port = free_port();
            let port = s.port.to_string();
            let args = [
                "--port",
                "0",
                "--tls-port",
                &port,
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-auth-clients",
                "no",
            ];
            if s.spawn_with(&args, false) {
                let url = format!("rediss://127.0.0.1:{}/#insecure", s.port);
                return (s, url);
            }
        }
        panic!("could not start a TLS redis-server");
    }

    /// Starts `redis-server` with exactly `args` (plus a data folder) and waits until it answers.
    fn spawn_with(&mut self, args: &[&str], plain: bool) -> bool {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed to run Kiln's tests");
        self.child = Some(child);
        self.wait_ready(plain)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server (like a crash) and starts a fresh one on the same port.
    pub fn restart(&mut self, extra: &[&str]) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.spawn(extra) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not come back on port {}", self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A small pool onto this server, for assertions.
    pub fn pool(&self) -> deadpool_redis::Pool {
        deadpool_redis::Config::from_url(self.url())
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .expect("pool")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Sentinel of the test's own, monitoring a [`RedisServer`] as `mymaster`.
pub struct SentinelServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SentinelServer {
    /// Starts a sentinel for the master on `master_port` and waits until it knows it.
    pub fn start(master_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for sentinel");
        let conf = dir.path().join("sentinel.conf");
        for _ in 0..20 {
            let port = free_port();
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master_port} 1\nsentinel down-after-milliseconds mymaster 1000\n"
                ),
            )
            .expect("sentinel config");
            let mut child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel");
            if answers_within(port, &mut child, Duration::from_secs(10), true) {
                return Self {
                    child,
                    port,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis sentinel did not start");
    }

    /// The URL services take to reach the master through this sentinel.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName=mymaster",
            self.port
        )
    }
}

impl Drop for SentinelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `child` answers on `port` (true), or it exits or `within` passes (false).
/// With `plain`, the answer must come from `child` itself (`INFO server` names the pid): a
/// port free a moment ago may have been taken by another test's server meanwhile, and a
/// server that cannot bind exits only after that one already accepted our connection.
/// Synchronous: servers are started before a test's runtime does anything.
fn answers_within(port: u16, child: &mut Child, within: Duration, plain: bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if plain {
            if let Some(pid) = server_pid(port) {
                return pid == child.id();
            }
        } else if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// The pid of the Redis server answering plain RESP on `port`, if one does.
fn server_pid(port: u16) -> Option<u32> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    conn.write_all(b"INFO server\r\n").ok()?;
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&reply);
        let pid = text
            .split("process_id:")
            .nth(1)
            .and_then(|rest| rest.split_once("\r\n"))
            .and_then(|(pid, _)| pid.trim().parse().ok());
        if pid.is_some() {
            return pid;
        }
    }
}

/// Polls `check` until it yields `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every key in the server with its type and a canonical dump of its value, to assert
/// that a refused request changed nothing.
pub async fn snapshot(pool: &deadpool_redis::Pool) -> Vec<(String, String)> {
    use deadpool_redis::redis;
    let mut c = pool.get().await.expect("redis connection");
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await
            .expect("SCAN");
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    keys.sort();
    let mut out = Vec::new();
    for k in keys {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(&k)
            .query_async(&mut c)
            .await
            .expect("DUMP");
        out.push((k, format!("{dump:?}")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_answered_by_another_server_is_not_taken_for_ours() {
        let theirs = RedisServer::start();
        // A process of ours that never listens, on a port another server already holds: what
        // a server that lost the race for its port looks like before it exits.
        let mut ours = Command::new("sleep").arg("30").spawn().expect("sleep");
        assert!(!answers_within(
            theirs.port(),
            &mut ours,
            Duration::from_secs(5),
            true
        ));
        let _ = ours.kill();
        let _ = ours.wait();
        let mut again = RedisServer {
            child: None,
            port: theirs.port(),
            dir: tempfile::tempdir().expect("dir"),
        };
        assert!(!again.spawn(&[]), "a second server cannot have the port");
        assert!(again.child.is_none(), "the loser is stopped");
        assert_eq!(
            server_pid(theirs.port()),
            theirs.child.as_ref().map(Child::id)
        );
    }

    #[test]
    fn a_port_is_handed_out_once() {
        let ports: BTreeSet<u16> = (0..200).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 200);
    }
}
