//! NATS servers for the tests.
//!
//! - [`NatsServer`]: a private `nats-server` started on a free port, stopped on drop,
//!   and restartable on the same port to simulate an outage. Started with command-line
//!   options ([`NatsServer::start_with`]) or a configuration file
//!   ([`NatsServer::start_with_config`]: TLS, NKey users, operator mode).
//! - [`TestNats`]: the server of a test that needs no special server options and never
//!   stops it: the server named by `HERALD_TEST_NATS_URL` when that is set (for
//!   example the machine's `nats://127.0.0.1:4222`), else a private one. Each
//!   `TestNats` has its own subject root (`t<unique>`), so tests sharing a server
//!   never see each other's traffic or anybody else's.
//!
//! The `nats-server` binary must be on PATH (`scripts/test` installs Debian's
//! `nats-server` when missing); a missing binary fails the test loudly, it never
//! skips.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};

/// Names an external NATS server for the tests that can share one.
pub const EXTERNAL_URL_VAR: &str = "HERALD_TEST_NATS_URL";

/// A running (or stopped) private NATS server.
pub struct NatsServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Extra `nats-server` arguments (e.g. `--user a --pass b`, or `-c FILE`).
    args: Vec<String>,
    /// Whether to start with `-js -sd DIR` (a config file says it itself instead).
    jetstream: bool,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl NatsServer {
    /// Starts a server with JetStream on a free port.
    pub fn start() -> Result<NatsServer> {
        Self::start_with(&[])
    }

    /// Starts a server with JetStream and extra `nats-server` arguments.
    pub fn start_with(args: &[&str]) -> Result<NatsServer> {
        let mut server = NatsServer {
            port: free_port()?,
            child: None,
            dir: tempfile::tempdir()?,
            args: args.iter().map(|a| a.to_string()).collect(),
            jetstream: true,
        };
        server.restart()?;
        Ok(server)
    }

    /// Starts a server from a configuration file with this text (written into the
    /// server's own temporary directory, [`NatsServer::dir`]). The address and port
    /// are set on the command line (`-a 127.0.0.1 -p PORT`), which overrides the
    /// file; JetStream is on only if the file turns it on.
    pub fn start_with_config(conf: &str) -> Result<NatsServer> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nats-server.conf");
        std::fs::write(&path, conf)?;
        let mut server = NatsServer {
            port: free_port()?,
            child: None,
            dir,
            args: vec!["-c".into(), path.display().to_string()],
            jetstream: false,
        };
        server.restart()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's temporary directory (its storage, its config file); removed when
    /// the server is dropped.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server again on the same port (after [`NatsServer::stop`]).
    pub fn restart(&mut self) -> Result<()> {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.jetstream {
            cmd.arg("-js").arg("-sd").arg(self.dir.path());
        }
        let log = std::fs::File::create(self.dir.path().join("nats-server.log"))?;
        let mut child = cmd
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start nats-server (is it installed? scripts/test installs it)")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "nats-server exited ({status}) before listening on {}:\n{}",
                    self.port,
                    self.log()
                );
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                bail!("nats-server did not listen on {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    /// What the server logged (its stderr) since it was last started.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default()
    }

    /// Stops the server (an outage).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client connection, for publishing from the test.
    pub async fn client(&self) -> Result<async_nats::Client> {
        Ok(async_nats::connect(self.url()).await?)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A subject root no other test (in this run or any other) uses: `t` and hex digits,
/// a valid subject token and a valid Herald topic token.
fn unique_root() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "t{:x}{:x}{:x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The NATS server of a test that needs no special server options and never stops
/// the server: `HERALD_TEST_NATS_URL` when set, else a private [`NatsServer`].
///
/// A test using it must keep every subject under [`TestNats::root`] (and every
/// JetStream stream it creates made through [`TestNats::create_stream`]), so that it
/// works on a server other things use.
pub struct TestNats {
    url: String,
    /// First token of every subject this test uses, `t<unique>`.
    pub root: String,
    /// Streams created through [`TestNats::create_stream`], deleted on drop from an
    /// external server.
    streams: Mutex<Vec<String>>,
    private: Option<NatsServer>,
}

impl TestNats {
    /// The external server when `HERALD_TEST_NATS_URL` is set, else a private one
    /// with JetStream.
    pub fn start() -> Result<TestNats> {
        let (url, private) = match std::env::var(EXTERNAL_URL_VAR) {
            Ok(url) if !url.trim().is_empty() => (url.trim().to_string(), None),
            _ => {
                let server = NatsServer::start()?;
                (server.url(), Some(server))
            }
        };
        Ok(TestNats {
            url,
            root: unique_root(),
            streams: Mutex::new(Vec::new()),
            private,
        })
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Whether this is the server named by `HERALD_TEST_NATS_URL`.
    pub fn is_external(&self) -> bool {
        self.private.is_none()
    }

    /// `root.rest`: a subject of this test.
    pub fn subject(&self, rest: &str) -> String {
        format!("{}.{rest}", self.root)
    }

    /// `root.`: the prefix of every subject of this test (a `strip_prefix`, a
    /// `subject_prefix`).
    pub fn prefix(&self) -> String {
        format!("{}.", self.root)
    }

    /// A stream name of this test: `NAME_root`.
    pub fn stream_name(&self, name: &str) -> String {
        format!("{name}_{}", self.root)
    }

    /// A client connection, for publishing from the test.
    pub async fn client(&self) -> Result<async_nats::Client> {
        async_nats::connect(&self.url)
            .await
            .with_context(|| format!("connect to {}", self.url))
    }

    /// Creates a JetStream stream (its name and subjects should come from
    /// [`TestNats::stream_name`] and [`TestNats::subject`]). On an external server it
    /// is deleted when this `TestNats` is dropped, and its messages expire after an
    /// hour in case a test dies before that.
    pub async fn create_stream(
        &self,
        js: &async_nats::jetstream::Context,
        mut config: async_nats::jetstream::stream::Config,
    ) -> Result<async_nats::jetstream::stream::Stream> {
        ensure!(
            config
                .subjects
                .iter()
                .all(|s| s.starts_with(&self.prefix())),
            "stream subjects must be under {}: {:?}",
            self.root,
            config.subjects
        );
        if config.max_age.is_zero() {
            config.max_age = Duration::from_secs(3600);
        }
        let name = config.name.clone();
        let stream = js.create_stream(config).await?;
        self.streams.lock().expect("streams").push(name);
        Ok(stream)
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let streams = std::mem::take(&mut *self.streams.lock().expect("streams"));
        if !self.is_external() || streams.is_empty() {
            return;
        }
        // Drop may run inside the test's runtime, which cannot be blocked on: clean
        // up from a thread with its own runtime.
        let url = self.url.clone();
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let client = async_nats::connect(&url).await?;
                let js = async_nats::jetstream::new(client);
                for name in streams {
                    let _ = js.delete_stream(&name).await;
                }
                anyhow::Ok(())
            })
        });
        let _ = cleanup.join();
    }
}
