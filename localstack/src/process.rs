//! One emulator running as a child process on loopback.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::install::emulator_dir;
use crate::EmulatorError;

/// How many times to try again when a freshly picked port was taken meanwhile.
const PORT_ATTEMPTS: usize = 3;

/// An emulator child process, killed on drop.
#[derive(Debug)]
pub struct EmulatorProcess {
    service: &'static str,
    port: u16,
    child: Child,
    log_path: PathBuf,
}

impl EmulatorProcess {
    /// Starts `node localstack/run.js <service> <port>` on free ports and waits until it
    /// answers HTTP.
    pub(crate) async fn start(
        service: &'static str,
        timeout: Duration,
    ) -> Result<Self, EmulatorError> {
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            let mut process = Self::spawn(service, free_port()?, None)?;
            match process.wait_until_answering(timeout).await {
                Ok(()) => return Ok(process),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| unreachable_error(service)))
    }

    /// Starts dynalite persisting its tables in `data_dir` (created if missing), on
    /// `port` or a free one, and waits until it answers. Stopping it and starting it
    /// again on the same port and folder is a DynamoDB restart that keeps every item.
    pub async fn start_dynamodb_persistent(
        data_dir: &std::path::Path,
        port: Option<u16>,
    ) -> Result<Self, EmulatorError> {
        crate::install::ensure_installed().await?;
        std::fs::create_dir_all(data_dir).map_err(EmulatorError::io(format!(
            "creating {}",
            data_dir.display()
        )))?;
        let port = match port {
            Some(port) => port,
            None => free_port()?,
        };
        let mut process = Self::spawn("dynamodb", port, Some(data_dir))?;
        process.wait_until_answering(super::START_TIMEOUT).await?;
        Ok(process)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the emulator (SIGKILL) and waits until it is gone: a crash, not a shutdown.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn spawn(
        service: &'static str,
        port: u16,
        data_dir: Option<&std::path::Path>,
    ) -> Result<Self, EmulatorError> {
        let dir = emulator_dir();
        let log_path = std::env::temp_dir().join(format!(
            "kinesis-emulator-{}-{}-{}.log",
            service,
            std::process::id(),
            port
        ));
        let log = File::create(&log_path).map_err(EmulatorError::io(format!(
            "creating {}",
            log_path.display()
        )))?;
        let log_err = log
            .try_clone()
            .map_err(EmulatorError::io("duplicating a log handle"))?;
        let mut command = Command::new("node");
        command
            .arg(dir.join("run.js"))
            .arg(service)
            .arg(port.to_string())
            .env(
                "KINESIS_EMULATOR_PARENT_PID",
                std::process::id().to_string(),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if service == "kinesis" {
            command.arg(free_port()?.to_string());
        } else if let Some(data_dir) = data_dir {
            command.arg(data_dir);
        }
        let child = command.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => EmulatorError::NodeNotFound,
            _ => EmulatorError::io(format!("starting the {service} emulator"))(e),
        })?;
        tracing::debug!(service, port, log = %log_path.display(), "started emulator");
        Ok(EmulatorProcess {
            service,
            port,
            child,
            log_path,
        })
    }

    async fn wait_until_answering(&mut self, timeout: Duration) -> Result<(), EmulatorError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(self.not_answering(format!("it exited with {status}")));
            }
            // Our own process must say it holds the port: a port picked as free may have
            // been taken meanwhile by another server, which would answer the probe.
            if self.listening() && answers_http(self.port).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.not_answering(format!("no answer within {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the process logged that it listens on its port (`run.js` does, once bound).
    fn listening(&self) -> bool {
        let line = format!("run.js: listening on 127.0.0.1:{}\n", self.port);
        std::fs::read_to_string(&self.log_path).is_ok_and(|log| log.contains(&line))
    }

    fn not_answering(&self, reason: String) -> EmulatorError {
        EmulatorError::NotAnswering {
            service: self.service,
            port: self.port,
            reason,
            log: std::fs::read_to_string(&self.log_path).unwrap_or_default(),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log_path);
    }
}

fn unreachable_error(service: &'static str) -> EmulatorError {
    EmulatorError::NotAnswering {
        service,
        port: 0,
        reason: "no attempt was made".into(),
        log: String::new(),
    }
}

fn free_port() -> Result<u16, EmulatorError> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(EmulatorError::io("picking a free port"))
}

/// Whether something on the port answers an HTTP request with any response.
async fn answers_http(port: u16) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await?;
        Ok::<bool, std::io::Error>(buf[..n].starts_with(b"HTTP/"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}
