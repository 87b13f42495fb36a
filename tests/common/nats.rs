//! A private `nats-server` for tests: started on a free port, stopped on drop, and
//! restartable on the same port to simulate an outage. The binary must be on PATH
//! (`scripts/test` installs Debian's `nats-server` when missing); a missing binary
//! fails the test loudly, it never skips.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

/// A running (or stopped) private NATS server.
pub struct NatsServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Extra `nats-server` arguments (e.g. `--user a --pass b`).
    args: Vec<String>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl NatsServer {
    /// Starts a server with JetStream on a free port.
    pub fn start() -> Result<NatsServer> {
        Self::start_with(&[])
    }

    /// Starts a server with extra `nats-server` arguments.
    pub fn start_with(args: &[&str]) -> Result<NatsServer> {
        let mut server = NatsServer {
            port: free_port()?,
            child: None,
            dir: tempfile::tempdir()?,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        server.restart()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server again on the same port (after [`NatsServer::stop`]).
    pub fn restart(&mut self) -> Result<()> {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start nats-server (is it installed? scripts/test installs it)")?;
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("nats-server did not listen on {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
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
